//! AFL++ entry point of the `scenario_file` target (see `guardlab_fuzz::scenario_file`); built by `fuzz-run`.

fn main() {
    afl::fuzz!(|data: &[u8]| guardlab_fuzz::scenario_file(data));
}
