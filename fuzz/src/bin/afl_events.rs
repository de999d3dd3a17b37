//! AFL++ entry point of the `events` target (see `guardlab_fuzz::events`); built by `fuzz-run`.

fn main() {
    afl::fuzz!(|data: &[u8]| guardlab_fuzz::events(data));
}
