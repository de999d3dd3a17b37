//! AFL++ entry point of the `control` target (see `guardlab_fuzz::control`); built by `fuzz-run`.

fn main() {
    afl::fuzz!(|data: &[u8]| guardlab_fuzz::control(data));
}
