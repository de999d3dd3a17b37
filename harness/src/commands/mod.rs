//! What each command does. `run` dispatches a parsed command line.

pub mod files;

use crate::cli::{Command, LabCommand, PolicyCommand};
use crate::report::{CommandResult, Failure};

pub fn run(command: Command) -> CommandResult {
    match command {
        Command::Validate { files: paths } => files::validate(&paths),
        Command::Fingerprint { events, ungrouped } => files::fingerprint(&events, ungrouped),
        Command::Policy(PolicyCommand::Create { from, name, mode }) => {
            files::policy_create(&from, name.as_deref(), mode)
        }
        Command::Merge { policy, with } => files::merge(&policy, &with),
        Command::Deviations { policy, events, json } => files::deviations(&policy, &events, json),
        Command::Investigate { policy, events, json } => files::investigate(&policy, &events, json),
        Command::Lab(LabCommand::Daemon { .. }) | Command::Lab(_) | Command::Scenario(_) => Err(Failure(
            anyhow::anyhow!("this command is not wired yet"),
        )),
    }
}
