//! The `guardlab` binary: parse the command line, run the command, map the outcome to an exit code.
#![allow(unsafe_code)] // the default SIGPIPE disposition, restored before any thread

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
    if cli.no_install {
        // What every part of guardlab reads (the host checks of a scenario's lab too) and what
        // a re-run through sudo keeps (it preserves the environment).
        // SAFETY: at start-up, before any thread exists.
        unsafe { std::env::set_var(guardlab_host::NO_INSTALL_ENV, "1") };
    }
    report::exit(guardlab::commands::run(cli.command, cli.no_install))
}
