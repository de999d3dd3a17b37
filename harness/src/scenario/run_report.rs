//! How a run came out, step by step: what the summary prints and `--json` and `--junit`
//! write. A run settles on a [`RunResult`]; the command turns it into an exit code through
//! `crate::report`.

use std::collections::BTreeMap;

use guardlab_engine::trace::Investigation;
use guardlab_events::{Event, EventBody};
use guardlab_lab::local::LabCounters;
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
    /// Events were lost on their way from the kernel to the engine: every check saw a stream
    /// with holes, so the run answers neither "yes" (a lost event may be a deviation nobody
    /// saw) nor "no" (a lost event may be why a snapshot differs). Exit 2, as a lab that could
    /// not run: the lab could not watch the whole run.
    Incomplete,
    /// The lab or a driver broke, or the run could not start.
    Error,
}

/// What the run's event stream carried and what was lost of it (`events` in the JSON report).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EventCounts {
    /// Events the run took, `lost` events included.
    pub received: u64,
    /// What the stream said it lost: the sum of its `lost` events (the sensor's ring buffer was
    /// full, the run took events too slowly, the lab's replay history was at its bound).
    pub lost: u64,
    /// The lab's own counters at the end of the run (the local lab; `None` for a recording or
    /// a cluster, where the stream's `lost` events are all there is).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lab: Option<LabCounters>,
    /// Events the engine could not keep within its limits. The engine does not count them yet:
    /// always `null` until it does (then a count, included in [`EventCounts::lost_total`]).
    pub engine_dropped: Option<u64>,
}

impl EventCounts {
    /// One event of the run.
    pub fn observe(&mut self, event: &Event) {
        self.received += 1;
        if let EventBody::Lost(lost) = &event.body {
            self.lost += lost.count;
        }
    }

    /// At least how many events the run lost. The sensor's drops reach the stream as `lost`
    /// events, except those of its last moments, which only its counter has: the larger of
    /// the two counts them once. Records the sensor could not read, and what the engine
    /// dropped, are in no `lost` event: they add up.
    pub fn lost_total(&self) -> u64 {
        let (dropped, unreadable) = self
            .lab
            .map(|lab| (lab.sensor_dropped, lab.sensor_unreadable))
            .unwrap_or((0, 0));
        self.lost.max(dropped) + unreadable + self.engine_dropped.unwrap_or(0)
    }

    /// `12840 events, none lost` or `12840 events, at least 31 LOST (...)`, for the summary.
    pub fn describe(&self) -> String {
        match self.lost_total() {
            0 => format!("{} events, none lost", self.received),
            n => {
                let mut parts = vec![format!("{} said lost in the stream", self.lost)];
                if let Some(lab) = &self.lab {
                    parts.push(format!(
                        "{} dropped with the sensor's ring buffer full, {} unreadable",
                        lab.sensor_dropped, lab.sensor_unreadable
                    ));
                }
                if let Some(engine) = self.engine_dropped {
                    parts.push(format!("{engine} dropped by the engine"));
                }
                format!(
                    "{} events, at least {n} LOST ({})",
                    self.received,
                    parts.join("; ")
                )
            }
        }
    }
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
    /// What the event stream carried and lost: a run that lost events is [`RunResult::Incomplete`].
    pub events: EventCounts,
    /// How long each deviation took to be decided, flagged and killed (set at the end of a
    /// run; never in a snapshot: it differs from run to run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<super::latency::LatencyReport>,
    /// Whether every event the kernel stopped is a finding of the engine (a run that
    /// enforced a policy in the kernel, or a replay of one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agreement: Option<guardlab_kernel_policy::agreement::Agreement>,
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
            events: EventCounts::default(),
            latency: None,
            agreement: None,
        }
    }

    /// A run that could not start: `error` says why.
    pub fn failed(scenario: &str, backend: Backend, error: impl std::fmt::Display) -> Self {
        let mut report = RunReport::new(scenario, backend);
        report.error = Some(error.to_string());
        report.settle();
        report
    }

    /// How the run came out, from its steps, its error and its events: set once the run is
    /// over. A broken lab comes first; then lost events (they make any other answer unsure);
    /// then failed checks.
    pub fn settle(&mut self) {
        self.result =
            if self.error.is_some() || self.steps.iter().any(|s| s.result == StepResult::Error) {
                RunResult::Error
            } else if self.events.lost_total() > 0 {
                RunResult::Incomplete
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
        let words: Vec<String> = [
            RunResult::Pass,
            RunResult::Mismatch,
            RunResult::Incomplete,
            RunResult::Error,
        ]
        .iter()
        .map(|r| serde_json::to_string(r).unwrap())
        .collect();
        assert_eq!(
            words,
            ["\"pass\"", "\"mismatch\"", "\"incomplete\"", "\"error\""]
        );
    }

    fn step(result: StepResult) -> StepReport {
        StepReport {
            index: 0,
            name: "s".into(),
            action: "wait",
            result,
            duration_ms: 0,
            messages: Vec::new(),
            snapshot: None,
            diff: None,
        }
    }

    fn lost(count: u64) -> Event {
        Event::new(
            1,
            EventBody::Lost(guardlab_events::Lost { count, cpu: None }),
        )
    }

    #[test]
    fn a_run_that_lost_events_is_incomplete_whatever_its_checks_said() {
        let settled = |steps: Vec<StepReport>, events: EventCounts| {
            let mut report = RunReport::new("t", Backend::Replay);
            report.steps = steps;
            report.events = events;
            report.settle();
            report.result
        };
        let mut lossy = EventCounts::default();
        lossy.observe(&lost(3));
        lossy.observe(&Event::new(
            2,
            EventBody::Container(guardlab_events::ContainerInfo::default()),
        ));
        assert_eq!((lossy.received, lossy.lost, lossy.lost_total()), (2, 3, 3));
        let clean = EventCounts {
            received: 10,
            ..Default::default()
        };
        assert_eq!(
            settled(vec![step(StepResult::Passed)], clean.clone()),
            RunResult::Pass
        );
        assert_eq!(
            settled(vec![step(StepResult::Passed)], lossy.clone()),
            RunResult::Incomplete
        );
        assert_eq!(
            settled(vec![step(StepResult::Mismatch)], lossy.clone()),
            RunResult::Incomplete,
            "a mismatch may come from what was lost"
        );
        assert_eq!(
            settled(vec![step(StepResult::Error)], lossy),
            RunResult::Error
        );
        // Lost only as the lab counts it (its last drops, unreadable records) is lost too.
        let counted = EventCounts {
            received: 10,
            lab: Some(LabCounters {
                sensor_unreadable: 1,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(counted.lost_total(), 1);
        assert_eq!(
            settled(vec![step(StepResult::Passed)], counted),
            RunResult::Incomplete
        );
        // Drops said in the stream and counted by the sensor are the same drops.
        let both = EventCounts {
            received: 10,
            lost: 5,
            lab: Some(LabCounters {
                sensor_dropped: 7,
                ..Default::default()
            }),
            engine_dropped: Some(2),
        };
        assert_eq!(both.lost_total(), 9);
        assert!(
            both.describe()
                .starts_with("10 events, at least 9 LOST (5 said lost"),
            "{}",
            both.describe()
        );
        assert_eq!(clean.describe(), "10 events, none lost");
    }
}
