//! The runner: goes through a scenario's steps, takes the sensor's events from a backend (a
//! live lab, or a recording), drives the engine, and checks snapshots.
//!
//! The backend does what touches the world (the lab, the notebook, the terminals, the pool)
//! and hands over events; everything else (fingerprints, the policy, deviations, responses,
//! traces, snapshots) happens here, the same way for every backend, so a replay checks the
//! same things as a live run. What each action does is in [`actions`].
//!
//! Events are consumed step by step: a step takes the events that arrive while an action runs
//! (the backend hands them over as they come, [`super::backend::EventSink`]), while it waits for its
//! conditions, and at its end those already there. A live run records exactly these, in
//! order (see [`super::recording`]), so that a replay gives every step the same events; a
//! wait checks the events of the action before it first, as a replay reads them.

mod actions;
mod kernel;
mod taker;
mod workshop;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use guardlab_events::Event;
use guardlab_guard_console::SharedStore;
use guardlab_policy_store::PolicyStore;

use crate::console::{Console, seconds, textwrap};

use super::backend::{CheckFailure, ScenarioBackend, StepError};
use super::documents_out::DocumentsOut;
use super::file::{Condition, Scenario};
use super::latency::{LatencyClock, LatencyRecorder};
use super::names::Names;
use super::pace::{Pace, Pacer};
use super::recording::RecordingWriter;
use super::run_report::{RunReport, StepReport, StepResult};
use super::snapshot::{Redactor, SnapshotDir};
use super::snapshot_text::SeenSoFar;

/// How to treat snapshots.
pub struct SnapshotMode {
    pub dir: SnapshotDir,
    pub update: bool,
    /// The scenario file, written into the snapshots' metadata.
    pub source: String,
}

enum StepDiff {
    Written,
    Differs(String),
    Missing,
}

/// The engine side of a run.
struct Engine {
    /// Fingerprints, the policy, deviations, flags: the lab's one store, which a console
    /// (`--console`) shares.
    store: SharedStore,
    redactor: Redactor,
    names: Names,
    /// Where the previous `expect_deviations` left off.
    seen: SeenSoFar,
}

/// The state of a run.
pub struct Runner<'a, B: ScenarioBackend> {
    scenario: &'a Scenario,
    backend: B,
    snapshots: SnapshotMode,
    recorder: Option<RecordingWriter>,
    out: Console,
    engine: Engine,
    terminals: Vec<String>,
    /// Messages of the step that runs.
    messages: Vec<String>,
    /// A check of the step that runs failed.
    failed: bool,
    report: RunReport,
    /// Every event taken so far, for conditions that may have been met before their step.
    history: Vec<Event>,
    /// How many events of `history` were checked against conditions waited for: those
    /// after came during an action (see [`super::backend::EventSink`]), and the next wait checks them first.
    checked: usize,
    /// Set: pause before each step (`--step`).
    pacer: Option<Pacer>,
    /// Set: write the run's documents as files (`--out`).
    documents_out: Option<DocumentsOut>,
    /// The policy the learner made in the console while the runner waited (workshop mode),
    /// for the `create_policy` step to go on with.
    learner_made_policy: Option<String>,
    /// Set: a console serves the run's store at this address (workshop mode with `--step`).
    console_url: Option<String>,
    /// Set: write the run as one HTML page (`--html`).
    html: Option<std::path::PathBuf>,
    /// Each deviation's times, from its kernel event to its flag and kill.
    latency: LatencyRecorder,
    /// The step that runs (1-based) and how many there are, for the console's workshop banner.
    step_at: (usize, usize),
    /// A person typed in the pod (workshop mode): from then on a snapshot is met when what it
    /// has is there, and the rest is said as extra.
    person_acted: bool,
    /// What the kernel enforces of the policy.
    kernel: kernel::KernelSync,
}

impl<'a, B: ScenarioBackend> Runner<'a, B> {
    pub fn new(
        scenario: &'a Scenario,
        backend: B,
        snapshots: SnapshotMode,
        recorder: Option<RecordingWriter>,
        out: Console,
    ) -> Self {
        let report = RunReport::new(&scenario.name, backend.backend());
        let latency = LatencyRecorder::new(if backend.is_live() {
            LatencyClock::Live
        } else {
            LatencyClock::Recording
        });
        Runner {
            scenario,
            backend,
            snapshots,
            recorder,
            out,
            engine: Engine {
                store: SharedStore::new(PolicyStore::default()),
                redactor: Redactor::default(),
                names: Names::default(),
                seen: SeenSoFar::default(),
            },
            terminals: Vec::new(),
            history: Vec::new(),
            checked: 0,
            pacer: None,
            documents_out: None,
            learner_made_policy: None,
            console_url: None,
            html: None,
            latency,
            step_at: (0, 0),
            person_acted: false,
            kernel: kernel::KernelSync::default(),
            messages: Vec::new(),
            failed: false,
            report,
        }
    }

    /// Pause before each step until `pacer` says go on.
    pub fn with_pacer(mut self, pacer: Pacer) -> Self {
        self.pacer = Some(pacer);
        self
    }

    /// Run the engine within `limits` (`--limit`) rather than its defaults.
    pub fn with_limits(mut self, limits: guardlab_engine::limits::Limits) -> Self {
        self.engine.store = SharedStore::new(PolicyStore::new(limits));
        self
    }

    /// Keep the run's fingerprints, policy and findings in `store`, which the console at
    /// `url` serves (`--console`).
    pub fn with_console(mut self, store: SharedStore, url: String) -> Self {
        self.engine.store = store;
        self.console_url = Some(url);
        self
    }

    /// Keep the run's fingerprints, policy and findings in `store`, which the caller shares
    /// (a program that changes the policy while the run goes, as `just bench-latency` does).
    pub fn with_store(mut self, store: SharedStore) -> Self {
        self.engine.store = store;
        self
    }

    /// Write the run as one self-contained HTML page (`--html`).
    pub fn with_html(mut self, path: std::path::PathBuf) -> Self {
        self.html = Some(path);
        self
    }

    /// Write the run's documents under a directory (`--out`).
    pub fn with_documents_out(mut self, out: DocumentsOut) -> Self {
        self.documents_out = Some(out);
        self
    }

    /// The policy as `step` left it, into `--out`; a failure to write fails the step.
    fn write_policy_out(&mut self, step: &str) {
        let policy = self.engine.store.read(|s| s.latest_policy().cloned());
        if let (Some(out), Some(policy)) = (self.documents_out.as_mut(), &policy)
            && let Err(e) = out.policy(step, policy)
        {
            self.messages.push(e.to_string());
            self.failed = true;
        }
    }

    /// Run every step; then tear down (unless `keep_lab`). Never fails: what went wrong is in
    /// the report.
    pub async fn run(mut self, keep_lab: bool) -> RunReport {
        let started = Instant::now();
        let total = self.scenario.steps.len();
        let mut stopped = false;
        for (index, step) in self.scenario.steps.iter().enumerate() {
            if stopped {
                self.report.steps.push(StepReport {
                    index,
                    name: step.name.clone(),
                    action: step.action.key(),
                    result: StepResult::Skipped,
                    duration_ms: 0,
                    messages: Vec::new(),
                    snapshot: None,
                    diff: None,
                });
                continue;
            }
            if !self.backend.runs(step) {
                let only: Vec<_> = step.backends.iter().map(|b| b.name()).collect();
                let why = format!(
                    "runs only on the {} backend{}",
                    only.join(", "),
                    if only.len() == 1 { "" } else { "s" }
                );
                self.out.line(format!(
                    "[{:>2}/{total}] {} ({}): not applicable, {why}",
                    index + 1,
                    step.name,
                    step.action.key()
                ));
                // A recording keeps every step, so that a replay lines its steps up by index.
                if let Some(r) = self.recorder.as_mut()
                    && let Err(e) = r
                        .begin_step(index, &step.name)
                        .and_then(|()| r.end_step(index, &step.name, &BTreeMap::new()))
                {
                    self.report.error = Some(format!("recording: {e}"));
                }
                self.report.steps.push(StepReport {
                    index,
                    name: step.name.clone(),
                    action: step.action.key(),
                    result: StepResult::NotApplicable,
                    duration_ms: 0,
                    messages: vec![why],
                    snapshot: None,
                    diff: None,
                });
                continue;
            }
            self.out.line(format!(
                "[{:>2}/{total}] {} ({})",
                index + 1,
                step.name,
                step.action.key()
            ));
            for line in textwrap(&step.explain, 88) {
                self.out.line(format!("       {line}"));
            }
            self.step_at = (index + 1, total);
            if self.pause(step).await == Pace::Stop {
                self.report.stopped = Some(step.name.clone());
                stopped = true;
                self.report.steps.push(StepReport {
                    index,
                    name: step.name.clone(),
                    action: step.action.key(),
                    result: StepResult::Skipped,
                    duration_ms: 0,
                    messages: vec!["stopped here (--step)".into()],
                    snapshot: None,
                    diff: None,
                });
                continue;
            }
            let t0 = Instant::now();
            self.messages.clear();
            self.failed = false;
            let mut facts = BTreeMap::new();
            let mut diff = None;
            let outcome = match self.backend.begin_step(index, step) {
                Ok(()) => {
                    if let Some(r) = self.recorder.as_mut()
                        && let Err(e) = r.begin_step(index, &step.name)
                    {
                        Err(StepError::Recording(e))
                    } else {
                        let outcome = self.step(step, &mut facts, &mut diff).await;
                        // The step may have changed the policy (or the console did).
                        match self.sync_kernel_policy().await {
                            Err(e) if !e.is_check() => Err(e),
                            Err(e) => outcome.and(Err(e)),
                            Ok(()) => outcome,
                        }
                    }
                }
                Err(e) => Err(e),
            };
            // The events already there belong to this step (also after a failed check).
            let drained = match &outcome {
                Err(e) if !e.is_check() => Ok(()),
                _ => self.drain().await,
            };
            let outcome = outcome.and(drained);
            self.backend.end_step(index, step, &facts);
            if let Some(r) = self.recorder.as_mut()
                && let Err(e) = r.end_step(index, &step.name, &facts)
            {
                self.messages.push(format!("recording: {e}"));
            }
            let mut result = match (&outcome, &diff) {
                (Err(e), _) if e.is_check() => {
                    self.messages.push(e.to_string());
                    StepResult::Failed
                }
                (Err(e), _) => {
                    self.messages.push(e.to_string());
                    stopped = true;
                    StepResult::Error
                }
                (Ok(()), Some(StepDiff::Differs(_))) => StepResult::Mismatch,
                (Ok(()), Some(StepDiff::Missing)) => StepResult::Mismatch,
                (Ok(()), Some(StepDiff::Written)) => StepResult::Updated,
                (Ok(()), None) => StepResult::Passed,
            };
            if self.failed && result == StepResult::Passed {
                result = StepResult::Failed;
            }
            let elapsed = t0.elapsed();
            let snapshot = step
                .action
                .snapshot()
                .map(|s| super::file::display_path(&self.snapshots.dir.path(s)));
            let mark = match result {
                StepResult::Passed => "ok",
                StepResult::Updated => "ok (snapshot written)",
                _ => result.word(),
            };
            for m in &self.messages {
                self.out.detail(format!("! {m}"));
            }
            if let Some(StepDiff::Differs(d)) = &diff {
                self.out.line(format!(
                    "       snapshot mismatch in step {} {:?} ({}):",
                    index + 1,
                    step.name,
                    snapshot.as_deref().unwrap_or("?")
                ));
                for line in d.lines() {
                    self.out.line(format!("         {line}"));
                }
            }
            if let Some(StepDiff::Missing) = &diff {
                self.out.detail(format!(
                    "! no snapshot {} yet: run with --update-snapshots to write it",
                    snapshot.as_deref().unwrap_or("?")
                ));
            }
            self.out
                .line(format!("       => {mark} in {}", seconds(elapsed)));
            self.report.steps.push(StepReport {
                index,
                name: step.name.clone(),
                action: step.action.key(),
                result,
                duration_ms: elapsed.as_millis() as u64,
                messages: std::mem::take(&mut self.messages),
                snapshot,
                diff: match diff {
                    Some(StepDiff::Differs(d)) => Some(d),
                    Some(StepDiff::Missing) => Some("(no snapshot file)".into()),
                    _ => None,
                },
            });
        }
        // What the lab lost, asked before it goes.
        self.report.events.lab = self.backend.lab_counters().await;
        if let Err(e) = self.backend.finish(keep_lab, &self.out).await {
            self.report.error = Some(format!("tearing the lab down: {e}"));
        }
        if let Some(r) = self.recorder.take()
            && let Err(e) = r.finish()
        {
            self.report.error = Some(format!("recording: {e}"));
        }
        if self.engine.store.read(|s| !s.policies().is_empty()) {
            self.report.deviations = Some(self.engine.store.update(|s| s.deviation_report()));
            if self.report.investigation.is_none() {
                self.report.investigation = Some(self.engine.store.read(|s| s.investigation()));
            }
        }
        if let Some(out) = self.documents_out.take() {
            let groups = self.engine.store.read(|s| s.fingerprint_groups());
            match out.finish(
                &groups,
                self.report.deviations.as_ref(),
                self.report.investigation.as_ref(),
            ) {
                Ok(files) => self.out.line(format!(
                    "wrote {} documents under {} (--out)",
                    files.len(),
                    out.dir().display()
                )),
                Err(e) => self.report.error = Some(e.to_string()),
            }
        }
        // A replay has no kernel policy of its own, but the stopped events of its recording.
        if self.kernel.ever || self.kernel.agreement.stopped > 0 {
            self.out.line(self.kernel.agreement.summary());
            self.report.agreement = Some(self.kernel.agreement.clone());
        }
        self.report.duration_ms = started.elapsed().as_millis() as u64;
        self.report.latency = Some(self.latency.report());
        self.report.settle();
        if let Some(path) = self.html.take() {
            let (groups, policy) = self
                .engine
                .store
                .read(|s| (s.fingerprint_groups(), s.latest_policy().cloned()));
            let inputs = super::html_report::HtmlInputs {
                report: &self.report,
                groups: &groups,
                policy: policy.as_ref(),
            };
            match super::html_report::write(&path, &inputs) {
                Ok(()) => self
                    .out
                    .line(format!("wrote the run's page {} (--html)", path.display())),
                Err(e) => {
                    // The run's answer stands; the page that could not be written is said.
                    self.report.error = Some(format!("--html {}: {e}", path.display()));
                    self.report.settle();
                }
            }
        }
        self.report
    }

    async fn drain(&mut self) -> Result<(), StepError> {
        for event in self.backend.drain().await? {
            self.observe(event).await?;
        }
        self.checked = self.history.len();
        Ok(())
    }

    /// Take events until every condition was met, or the timeout.
    async fn wait_for(
        &mut self,
        conditions: &[Condition],
        timeout: Duration,
        what: &str,
    ) -> Result<(), StepError> {
        let mut pending: Vec<&Condition> = conditions.iter().collect();
        let deadline = Instant::now() + timeout;
        // First the events a backend handed over during the action before, in order, as a
        // replay reads them from its recording; up to the one that meets the last condition.
        while !pending.is_empty() && self.checked < self.history.len() {
            let event = &self.history[self.checked];
            pending.retain(|c| !self.engine.names.matches(c, event));
            self.checked += 1;
        }
        while !pending.is_empty() {
            let Some(event) = self.backend.next_event(deadline).await? else {
                return Err(CheckFailure::NotSeen {
                    what: what.to_string(),
                    missing: pending.into_iter().cloned().collect(),
                    within: self.backend.is_live().then_some(timeout),
                }
                .into());
            };
            self.engine.names.observe(&event);
            pending.retain(|c| !self.engine.names.matches(c, &event));
            self.observe(event).await?;
        }
        Ok(())
    }

    /// As [`Self::wait_for`], but a condition an earlier event of the run met counts as met
    /// (a check after the fact: the events may have come with the step before).
    async fn wait_for_seen(
        &mut self,
        conditions: &[Condition],
        timeout: Duration,
        what: &str,
    ) -> Result<(), StepError> {
        let pending: Vec<Condition> = conditions
            .iter()
            .filter(|c| !self.history.iter().any(|e| self.engine.names.matches(c, e)))
            .cloned()
            .collect();
        self.wait_for(&pending, timeout, what).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::pace::Pacer;
    use crate::scenario::run_report::RunResult;

    /// The committed recording of a live run, replayed with `answers` typed at the pauses.
    fn paced_replay(answers: &'static [u8]) -> RunReport {
        use crate::scenario::{file, recording, replay, snapshot};
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let scenario = file::load_scenario(&root.join("scenarios/cryptominer.yaml")).unwrap();
        let rec = recording::read_recording(&root.join("scenarios/cryptominer.ndjson")).unwrap();
        let backend = replay::ReplayBackend::new(&scenario, rec, "cryptominer.ndjson").unwrap();
        let snapshots = SnapshotMode {
            dir: snapshot::SnapshotDir::new(root.join("snapshots/cryptominer")),
            update: false,
            source: "scenarios/cryptominer.yaml".into(),
        };
        let runner = Runner::new(&scenario, backend, snapshots, None, Console { quiet: true })
            .with_pacer(Pacer::from_reader(answers));
        guardlab_host::runtime(1)
            .unwrap()
            .block_on(runner.run(false))
    }

    #[test]
    fn a_paced_run_goes_on_at_enter_and_stops_at_q() {
        let report = paced_replay(b"\n\n\nq\n");
        let results: Vec<_> = report.steps.iter().map(|s| s.result).collect();
        assert_eq!(results[..3], [StepResult::Passed; 3]);
        assert!(results[3..].iter().all(|r| *r == StepResult::Skipped));
        assert_eq!(report.steps.len(), 13);
        assert_eq!(report.stopped.as_deref(), Some("fingerprint"));
        assert_eq!(report.steps[3].messages, ["stopped here (--step)"]);
        assert_eq!(report.result, RunResult::Pass);

        // Enter at every step runs them all, as without pauses.
        let report = paced_replay(&[b'\n'; 13]);
        assert_eq!(report.stopped, None);
        assert_eq!(report.result, RunResult::Pass, "{:?}", report.steps);
        assert!(report.steps.iter().all(|s| s.result == StepResult::Passed));

        // A replay has no clock of the live run: its deviations are there, without times.
        let latency = report
            .latency
            .as_ref()
            .expect("a finished run has latency figures");
        assert_eq!(
            latency.clock,
            crate::scenario::latency::LatencyClock::Recording
        );
        assert!(!latency.deviations.is_empty());
        assert!(
            latency
                .deviations
                .iter()
                .all(|d| d.decided_ms.is_none() && d.flag_ms.is_none() && d.kill_ms.is_none())
        );
        assert_eq!((latency.to_decision, latency.to_flag), (None, None));

        // The end of the input stops too (a closed terminal must not run the rest unasked).
        let report = paced_replay(b"\n");
        assert_eq!(report.stopped.as_deref(), Some("baseline-hello"));
    }
}
