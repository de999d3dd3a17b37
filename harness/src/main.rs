//! The `guardlab` binary: parse the command line, run the command, map the outcome to an exit code.

use std::process::ExitCode;

use clap::Parser;
use guardlab::cli::Cli;
use guardlab::report;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match guardlab::commands::run(cli.command) {
        Ok(outcome) => outcome.exit_code(),
        Err(failure) => report::fail(&failure),
    }
}
