//! What each command does. `run` dispatches a parsed command line.

pub mod clean;
pub mod doctor;
pub mod files;
pub mod guard_console;
pub mod image;
pub mod lab;
pub mod scenario;

use crate::cli::{Command, ImageCommand, LabCommand, PolicyCommand};
use crate::report::{CommandResult, Outcome};
use lab::LabVerb;

/// `no_install`: the global `--no-install` (installs, mounts and module loads refused).
pub fn run(command: Command, no_install: bool) -> CommandResult {
    match command {
        Command::Validate {
            files: paths,
            strict,
        } => files::validate(&paths, strict),
        Command::Fingerprint {
            events,
            ungrouped,
            limits,
        } => files::fingerprint(&events, ungrouped, limits.limits()),
        Command::Policy(PolicyCommand::Create { from, name, mode }) => {
            files::policy_create(&from, name.as_deref(), mode)
        }
        Command::Merge { policy, with } => files::merge(&policy, &with),
        Command::Deviations {
            policy,
            events,
            json,
            limits,
        } => files::deviations(&policy, &events, json, limits.limits()),
        Command::Investigate {
            policy,
            events,
            json,
            limits,
        } => files::investigate(&policy, &events, json, limits.limits()),
        Command::Lab(LabCommand::Up(args)) => lab::run(LabVerb::Up, &args, no_install),
        Command::Lab(LabCommand::Down(args)) => lab::run(LabVerb::Down, &args, no_install),
        Command::Lab(LabCommand::Status(args)) => lab::run(LabVerb::Status, &args, no_install),
        Command::Doctor => doctor::run(no_install),
        Command::Clean(args) => clean::run(&args),
        Command::Lab(LabCommand::Daemon(args)) => {
            guardlab_lab::daemon_main(guardlab_lab::DaemonOptions {
                lab_dir: args.lab_dir,
            })?;
            Ok(Outcome::Clean)
        }
        Command::Scenario(args) => scenario::run(&args),
        Command::Console(args) => guard_console::run(&args, no_install),
        Command::Image(ImageCommand::Lock { recipe }) => image::lock(&recipe),
    }
}
