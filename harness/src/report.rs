//! The reporting layer at the edge: every command ends in an [`Outcome`] or a [`Failure`], and
//! both map to one exit code: 0 ok, 1 the question asked was answered "no" (deviations found, a
//! check or snapshot failed), 2 bad input or the lab could not run.

use std::fmt;
use std::process::ExitCode;

/// How a command that ran to the end came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing to report: exit 0.
    Clean,
    /// Deviations found, a file invalid, a snapshot differs: exit 1.
    Findings,
}

impl Outcome {
    pub fn exit_code(self) -> ExitCode {
        match self {
            Outcome::Clean => ExitCode::SUCCESS,
            Outcome::Findings => ExitCode::from(1),
        }
    }
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
        // The error and its causes, one line each, as a user reads them.
        write!(f, "{}", self.0)?;
        for cause in self.0.chain().skip(1) {
            write!(f, "\n  caused by: {cause}")?;
        }
        Ok(())
    }
}

pub type CommandResult = Result<Outcome, Failure>;

/// Print a failure to stderr and give its exit code. The running phase's last output goes
/// first when the failure does not quote it.
pub fn fail(failure: &Failure) -> ExitCode {
    crate::console::failure(&failure.to_string());
    eprintln!("guardlab: {failure}");
    ExitCode::from(2)
}
