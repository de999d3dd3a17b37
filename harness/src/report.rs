//! The reporting layer at the edge, and the only place that decides how errors look and what
//! exit code a command gets: every command ends in an [`Outcome`] or a [`Failure`], and
//! [`exit`] maps it to 0 ok, 1 the question asked was answered "no" (deviations found, a file
//! invalid, a check or snapshot failed), 2 bad input or the lab could not run (a run whose
//! sensor lost events too: it cannot answer either way), and 130 or 143 for a command stopped
//! by SIGINT or SIGTERM (128 + the signal, as a shell reports it; see [`crate::signals`]).
//! Only this module writes `guardlab: ...` lines ([`exit`], [`problem`]).

use std::fmt;
use std::process::ExitCode;

use crate::signals::StopSignal;

/// How a command that ran to the end (or was stopped) came out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing to report: exit 0.
    Clean,
    /// Deviations found, a file invalid, a snapshot differs: exit 1.
    Findings,
    /// Stopped by a signal, after cleaning up: exit 128 + the signal.
    Stopped(Stopped),
}

/// A command stopped by SIGINT or SIGTERM, and its one line: where it was and what it cleaned
/// (or left, and how to remove it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stopped {
    pub signal: StopSignal,
    pub said: String,
}

/// A command that could not do its work: bad input, a missing tool, a lab that would not run.
/// Always exit 2.
#[derive(Debug)]
pub struct Failure(pub anyhow::Error);

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(err: E) -> Self {
        Failure(err.into())
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The error and its causes, one line each, as a user reads them; a cause whose text
        // the line above already quotes (an error that says "part: cause") is not said twice.
        let mut said = self.0.to_string();
        write!(f, "{said}")?;
        for cause in self.0.chain().skip(1) {
            let text = cause.to_string();
            if said.contains(&text) {
                continue;
            }
            write!(f, "\n  caused by: {text}")?;
            said = text;
        }
        Ok(())
    }
}

pub type CommandResult = Result<Outcome, Failure>;

/// The exit code of a command's result.
pub fn exit_code(result: &CommandResult) -> u8 {
    match result {
        Ok(Outcome::Clean) => 0,
        Ok(Outcome::Findings) => 1,
        Ok(Outcome::Stopped(stopped)) => stopped.signal.exit_code(),
        Err(_) => 2,
    }
}

/// End a command: say its failure, if any, on stderr (the running phase's last output first,
/// when the failure does not quote it), and give its exit code.
pub fn exit(result: CommandResult) -> ExitCode {
    match &result {
        Err(failure) => {
            let text = failure.to_string();
            crate::console::failure(&text);
            eprintln!("guardlab: {text}");
        }
        Ok(Outcome::Stopped(stopped)) => {
            crate::console::failure(&stopped.said);
            eprintln!("guardlab: {}", stopped.said);
        }
        Ok(_) => {}
    }
    ExitCode::from(exit_code(&result))
}

/// A problem that does not end the command (one broken file among several): said as an error
/// line now; the command ends in [`Outcome::Findings`].
pub fn problem(text: &dyn fmt::Display) {
    eprintln!("guardlab: {text}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_and_failures_map_to_the_documented_exit_codes() {
        assert_eq!(exit_code(&Ok(Outcome::Clean)), 0);
        assert_eq!(exit_code(&Ok(Outcome::Findings)), 1);
        assert_eq!(exit_code(&Err(Failure(anyhow::anyhow!("no lab")))), 2);
        let stopped = |signal| {
            exit_code(&Ok(Outcome::Stopped(Stopped {
                signal,
                said: "stopped".into(),
            })))
        };
        assert_eq!(stopped(StopSignal::Interrupt), 130);
        assert_eq!(stopped(StopSignal::Terminate), 143);
    }

    #[test]
    fn a_failure_says_its_causes_one_per_line() {
        let err = anyhow::anyhow!("the disk is full").context("writing run.json");
        assert_eq!(
            Failure(err).to_string(),
            "writing run.json\n  caused by: the disk is full"
        );
    }

    #[test]
    fn a_cause_the_error_already_quotes_is_not_said_again() {
        let io = std::io::Error::other("connection refused");
        let lab = guardlab_lab_api::LabError::backend("the lab daemon", io);
        let err = anyhow::Error::new(lab).context("lab status");
        assert_eq!(
            Failure(err).to_string(),
            "lab status\n  caused by: the lab daemon: connection refused"
        );
    }
}
