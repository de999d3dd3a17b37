//! How a run came out, step by step: what the summary prints and `--json` and `--junit`
//! write. A run settles on a [`RunResult`]; the command turns it into an exit code through
//! `crate::report`.

use std::collections::BTreeMap;

use guardlab_engine::trace::Investigation;
use guardlab_lab_api::Backend;
use serde::Serialize;

/// How a step came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepResult {
    Passed,
    /// Its snapshot was (re)written.
    Updated,
    /// Its snapshot differs.
    Mismatch,
    /// A check failed (a wait timed out, the pool saw no one, a deviation has no trace).
    Failed,
    /// The lab or a driver broke.
    Error,
    /// Not run, after an error.
    Skipped,
    /// Not run: the step is for other backends (`backends:` in the scenario file).
    NotApplicable,
}

impl StepResult {
    pub fn word(self) -> &'static str {
        match self {
            StepResult::Passed => "passed",
            StepResult::Updated => "updated",
            StepResult::Mismatch => "MISMATCH",
            StepResult::Failed => "FAILED",
            StepResult::Error => "ERROR",
            StepResult::Skipped => "skipped",
            StepResult::NotApplicable => "not applicable",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct StepReport {
    pub index: usize,
    pub name: String,
    pub action: &'static str,
    pub result: StepResult,
    pub duration_ms: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
}

/// How a whole run came out (`result` in the JSON report).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunResult {
    /// Every step that ran passed (or wrote its snapshot).
    Pass,
    /// A snapshot differs or a check failed: the question was answered "no".
    Mismatch,
    /// The lab or a driver broke, or the run could not start.
    Error,
}

/// The whole run, for the summary, `--json` and `--junit`.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    pub scenario: String,
    pub backend: Backend,
    pub result: RunResult,
    pub duration_ms: u64,
    pub steps: Vec<StepReport>,
    /// An error before or after the steps (a lab that would not come up, a bad recording).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deviations: Option<guardlab_engine::deviation::DeviationReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub investigation: Option<Investigation>,
    /// The snapshot texts of this run, by snapshot name (normalized).
    pub snapshots: BTreeMap<String, String>,
    /// The step before which the person running it stopped (`--step`); it and those after it
    /// did not run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
}

impl RunReport {
    pub fn new(scenario: &str, backend: Backend) -> Self {
        RunReport {
            scenario: scenario.into(),
            backend,
            result: RunResult::Error,
            duration_ms: 0,
            steps: Vec::new(),
            error: None,
            deviations: None,
            investigation: None,
            snapshots: BTreeMap::new(),
            stopped: None,
        }
    }

    /// A run that could not start: `error` says why.
    pub fn failed(scenario: &str, backend: Backend, error: impl std::fmt::Display) -> Self {
        let mut report = RunReport::new(scenario, backend);
        report.error = Some(error.to_string());
        report.settle();
        report
    }

    /// How the run came out, from its steps and its error: set once the run is over.
    pub fn settle(&mut self) {
        self.result =
            if self.error.is_some() || self.steps.iter().any(|s| s.result == StepResult::Error) {
                RunResult::Error
            } else if self
                .steps
                .iter()
                .any(|s| matches!(s.result, StepResult::Mismatch | StepResult::Failed))
            {
                RunResult::Mismatch
            } else {
                RunResult::Pass
            };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_runs_result_is_written_as_the_json_report_always_wrote_it() {
        let words: Vec<String> = [RunResult::Pass, RunResult::Mismatch, RunResult::Error]
            .iter()
            .map(|r| serde_json::to_string(r).unwrap())
            .collect();
        assert_eq!(words, ["\"pass\"", "\"mismatch\"", "\"error\""]);
    }
}
