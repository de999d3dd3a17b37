//! A run stopped by SIGINT or SIGTERM (see [`crate::signals`]): the runner is dropped where it
//! waits (the step it was in ends there), the backend it borrowed takes its lab down (unless
//! `--keep-lab`), and the run ends in a [`StoppedRun`] whose one line says where it stopped and
//! what it cleaned.
//!
//! The runner drives a [`Tracked`] borrow of the backend, so that the backend outlives the
//! runner (its lab is still at hand to take down) and the step that was running is known.

use guardlab_guard_console::{ConsoleServer, SharedStore};
use guardlab_policy_store::PolicyStore;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use guardlab_engine::deviation::Decision;
use guardlab_events::Event;
use guardlab_lab_api::Backend;
use serde_json::Value as Json;

use crate::console::Console;
use crate::signals::{StopSignal, StopSignals};

use super::backend::{EventSink, ScenarioBackend, StepError};
use super::file::{CheckPoolReached, Scenario, Step, TerminalCommand};
use super::recording::RecordingWriter;
use super::runner::{Runner, SnapshotMode};
use super::{RunOptions, RunReport};

/// How a run ended.
#[derive(Debug)]
pub enum RunEnd {
    /// It ran to the end (or stopped at `--step`'s `q`, or broke): its report.
    Finished(Box<RunReport>),
    /// A signal stopped it.
    Stopped(StoppedRun),
}

/// A run a signal stopped, and what became of its lab.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoppedRun {
    pub scenario: String,
    pub signal: StopSignal,
    /// The step that was running (counted from 1) and its name; `None` before the first.
    pub step: Option<(usize, String)>,
    /// How many steps the scenario has.
    pub steps: usize,
    pub lab: LabAfterStop,
}

/// What a stopped run did with its lab.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LabAfterStop {
    /// The run had brought up no lab (or has none: a replay).
    NoLab,
    /// Taken down: what was removed.
    Removed { what: String },
    /// Left up (`--keep-lab`); `how` says how to take it down.
    Kept { how: String },
    /// Taking it down failed; `how` says what to do.
    NotRemoved { error: String, how: String },
    /// A second signal stopped the taking down; `how` says what happens to what is left.
    Abandoned { signal: StopSignal, how: String },
}

impl StoppedRun {
    /// The run's last line: `stopped by SIGINT in step 6/13 (terminal-ls) of scenario
    /// cryptominer: removed lab cryptominer: ...`.
    pub fn line(&self) -> String {
        let place = match &self.step {
            Some((number, name)) => format!("in step {number}/{} ({name})", self.steps),
            None => "before its first step".into(),
        };
        let lab = match &self.lab {
            LabAfterStop::NoLab => "no lab to take down".to_string(),
            LabAfterStop::Removed { what } => what.clone(),
            LabAfterStop::Kept { how } => how.clone(),
            LabAfterStop::NotRemoved { error, how } => {
                format!("taking the lab down failed: {error}; {how}")
            }
            LabAfterStop::Abandoned { signal, how } => {
                format!("{} stopped taking the lab down: {how}", signal.name())
            }
        };
        format!(
            "stopped by {} {place} of scenario {}: {lab}",
            self.signal.name(),
            self.scenario
        )
    }
}

/// A backend whose lab a stopped run takes down.
#[allow(async_fn_in_trait)] // Used through generics only.
pub trait Stoppable: ScenarioBackend {
    /// The run was stopped: take the lab down (unless `keep_lab`), and say what became of it.
    /// A further request from `signals` stops the taking down.
    async fn stop_lab(&mut self, keep_lab: bool, signals: &mut StopSignals) -> LabAfterStop;
}

/// A recording has no lab: stopping it leaves nothing to clean.
impl Stoppable for super::replay::ReplayBackend {
    async fn stop_lab(&mut self, _keep_lab: bool, _signals: &mut StopSignals) -> LabAfterStop {
        LabAfterStop::NoLab
    }
}

/// The step that runs, as the runner began it.
type CurrentStep = Arc<Mutex<Option<(usize, String)>>>;

/// The backend as the runner drives it in a stoppable run: a borrow, which notes each step the
/// runner begins.
pub struct Tracked<'a, B> {
    inner: &'a mut B,
    step: CurrentStep,
}

impl<B: ScenarioBackend> ScenarioBackend for Tracked<'_, B> {
    fn backend(&self) -> Backend {
        self.inner.backend()
    }
    fn is_live(&self) -> bool {
        self.inner.is_live()
    }
    fn runs(&self, step: &Step) -> bool {
        self.inner.runs(step)
    }
    fn begin_step(&mut self, index: usize, step: &Step) -> Result<(), StepError> {
        *self.step.lock().unwrap_or_else(|e| e.into_inner()) = Some((index + 1, step.name.clone()));
        self.inner.begin_step(index, step)
    }
    fn end_step(&mut self, index: usize, step: &Step, facts: &BTreeMap<String, Json>) {
        self.inner.end_step(index, step, facts)
    }
    async fn lab_up(&mut self, out: &Console) -> Result<(), StepError> {
        self.inner.lab_up(out).await
    }
    async fn notebook_cell(
        &mut self,
        code: &str,
        timeout: Duration,
        out: &Console,
        events: &mut dyn EventSink,
    ) -> Result<(), StepError> {
        self.inner.notebook_cell(code, timeout, out, events).await
    }
    async fn terminal_command(
        &mut self,
        session: &str,
        command: &TerminalCommand,
        out: &Console,
        events: &mut dyn EventSink,
    ) -> Result<String, StepError> {
        self.inner
            .terminal_command(session, command, out, events)
            .await
    }
    async fn next_event(&mut self, deadline: Instant) -> Result<Option<Event>, StepError> {
        self.inner.next_event(deadline).await
    }
    async fn drain(&mut self) -> Result<Vec<Event>, StepError> {
        self.inner.drain().await
    }
    async fn carry_out(&mut self, decision: &Decision) -> Result<String, StepError> {
        self.inner.carry_out(decision).await
    }
    async fn pool_clients(&mut self, check: &CheckPoolReached) -> Result<Vec<Json>, StepError> {
        self.inner.pool_clients(check).await
    }
    async fn apply_kernel_policy(
        &mut self,
        policy: Option<&guardlab_lab_api::KernelPolicy>,
    ) -> Result<(), StepError> {
        self.inner.apply_kernel_policy(policy).await
    }
    async fn lab_counters(&mut self) -> Option<guardlab_lab::local::LabCounters> {
        self.inner.lab_counters().await
    }
    async fn finish(&mut self, keep: bool, out: &Console) -> Result<(), StepError> {
        self.inner.finish(keep, out).await
    }
}

/// What a run needs besides its backend.
pub(super) struct RunParts<'a> {
    pub scenario: &'a Scenario,
    pub snapshots: SnapshotMode,
    pub recorder: Option<RecordingWriter>,
    pub console: Console,
    pub options: &'a RunOptions,
    /// Where the run's documents go (`--out`).
    pub out: Option<super::documents_out::DocumentsOut>,
}

/// Run the scenario on `backend` until it ends or `signals` asks to stop; then take the lab
/// down (see the module documentation).
pub(super) async fn run_stoppable<B: Stoppable>(
    backend: &mut B,
    parts: RunParts<'_>,
    signals: &mut StopSignals,
) -> RunEnd {
    let step = CurrentStep::default();
    let stopped = {
        let tracked = Tracked {
            inner: &mut *backend,
            step: step.clone(),
        };
        let runner = Runner::new(
            parts.scenario,
            tracked,
            parts.snapshots,
            parts.recorder,
            parts.console,
        )
        .with_limits(parts.options.limits);
        // The console serves the run's store for as long as the run lasts.
        let (runner, _console) = match &parts.options.console {
            Some(options) => {
                let store = SharedStore::new(PolicyStore::new(parts.options.limits));
                match ConsoleServer::start(store.clone(), options.clone()).await {
                    Ok(server) => {
                        let url = server.url();
                        parts.console.line(format!("guard console: {url}"));
                        (runner.with_console(store, url), Some(server))
                    }
                    Err(e) => {
                        return RunEnd::Finished(Box::new(RunReport::failed(
                            &parts.scenario.name,
                            parts.options.backend,
                            format!("the guard console: {e}"),
                        )));
                    }
                }
            }
            None => (runner, None),
        };
        let run = super::drive(runner, parts.options, parts.out);
        tokio::select! {
            report = run => return RunEnd::Finished(Box::new(report)),
            signal = signals.next() => signal,
        }
        // The runner (and with it the step it was in) is dropped here.
    };
    let lab = backend.stop_lab(parts.options.keep_lab, signals).await;
    let step = step.lock().unwrap_or_else(|e| e.into_inner()).clone();
    RunEnd::Stopped(StoppedRun {
        scenario: parts.scenario.name.clone(),
        signal: stopped,
        step,
        steps: parts.scenario.steps.len(),
        lab,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stopped(step: Option<(usize, &str)>, lab: LabAfterStop) -> String {
        StoppedRun {
            scenario: "cryptominer".into(),
            signal: StopSignal::Interrupt,
            step: step.map(|(n, s)| (n, s.to_string())),
            steps: 13,
            lab,
        }
        .line()
    }

    #[test]
    fn a_stopped_run_says_where_it_was_and_what_became_of_its_lab() {
        assert_eq!(
            stopped(
                Some((6, "terminal-ls")),
                LabAfterStop::Removed {
                    what: "removed lab cryptominer: 4 processes ended".into()
                }
            ),
            "stopped by SIGINT in step 6/13 (terminal-ls) of scenario cryptominer: removed lab \
             cryptominer: 4 processes ended"
        );
        assert_eq!(
            stopped(None, LabAfterStop::NoLab),
            "stopped by SIGINT before its first step of scenario cryptominer: no lab to take down"
        );
        assert_eq!(
            stopped(
                Some((1, "setup")),
                LabAfterStop::Abandoned {
                    signal: StopSignal::Terminate,
                    how: "`guardlab lab down` removes it".into()
                }
            ),
            "stopped by SIGINT in step 1/13 (setup) of scenario cryptominer: SIGTERM stopped \
             taking the lab down: `guardlab lab down` removes it"
        );
    }
}
