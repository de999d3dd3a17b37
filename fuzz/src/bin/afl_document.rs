//! AFL++ entry point of the `document` target (see `guardlab_fuzz::document`); built by `fuzz-run`.

fn main() {
    afl::fuzz!(|data: &[u8]| guardlab_fuzz::document(data));
}
