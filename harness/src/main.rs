//! The `guardlab` binary: parse the command line, run the command, map the outcome to an exit code.

use std::process::ExitCode;

use clap::Parser;
use guardlab::cli::Cli;
use guardlab::report;

fn main() -> ExitCode {
    // Output piped into `head` or `less` that closes early should end guardlab quietly, as it
    // does any Unix tool, not make `println!` panic on EPIPE.
    // SAFETY: restoring the default disposition of one signal at start-up, before any thread.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    match guardlab::commands::run(cli.command) {
        Ok(outcome) => outcome.exit_code(),
        Err(failure) => report::fail(&failure),
    }
}
