//! Taking one event: the recording, the names, the engine, flags and the latency figures, and
//! what the engine decided to carry out. The runner takes the events it reads itself this way
//! ([`Runner::observe`]), and so does a backend while an action runs ([`EventSink`]): the
//! engine sees an action's events as they come, not once the action returned (issue 16).

use guardlab_engine::deviation::{ActionKind, Finding};
use guardlab_engine::model::DeviationType;
use guardlab_events::{Event, EventBody};
use guardlab_kernel_policy::agreement::Agreement;

use crate::console::Console;

use super::super::backend::{EventSink, Response, ScenarioBackend, StepError};
use super::super::latency::{EntryId, LatencyRecorder};
use super::super::recording::RecordingWriter;
use super::super::run_report::EventCounts;
use super::super::snapshot_text::{flag_line, kind_word};
use super::{Engine, Runner};

/// The parts of a run that taking an event changes, borrowed from the runner apart from its
/// backend (which hands events to it while an action runs).
pub(super) struct Taker<'r> {
    /// Where the run says what it does.
    pub(super) out: &'r Console,
    live: bool,
    recorder: &'r mut Option<RecordingWriter>,
    engine: &'r mut Engine,
    history: &'r mut Vec<Event>,
    counts: &'r mut EventCounts,
    latency: &'r mut LatencyRecorder,
    agreement: &'r mut Agreement,
    messages: &'r mut Vec<String>,
    failed: &'r mut bool,
}

impl<B: ScenarioBackend> Runner<'_, B> {
    /// The backend, and the rest of the run as a [`Taker`] of events.
    pub(super) fn taker(&mut self) -> (&mut B, Taker<'_>) {
        let live = self.backend.is_live();
        (
            &mut self.backend,
            Taker {
                out: &self.out,
                live,
                recorder: &mut self.recorder,
                engine: &mut self.engine,
                history: &mut self.history,
                counts: &mut self.report.events,
                latency: &mut self.latency,
                agreement: &mut self.kernel.agreement,
                messages: &mut self.messages,
                failed: &mut self.failed,
            },
        )
    }

    /// Take one event the runner read: engine, names, recording, responses carried out.
    /// Every event before it was checked against the conditions waited for (see
    /// [`Runner::wait_for`]).
    pub(super) async fn observe(&mut self, event: Event) -> Result<(), StepError> {
        let (backend, mut taker) = self.taker();
        for response in taker.event(event)? {
            let outcome = backend.carry_out(response.decision()).await;
            taker.carried_out(response, outcome)?;
        }
        self.checked = self.history.len();
        Ok(())
    }
}

impl Taker<'_> {
    /// The wall clock, for the latency figures: a live run's only (a replay has no clock of
    /// the run it replays).
    fn clock(&self) -> Option<u64> {
        self.live.then(guardlab_host::unix_time_ns)
    }

    /// Say what a finding is; the decisions to carry out.
    fn respond(
        &mut self,
        event: &Event,
        finding: Finding,
        entry: Option<EntryId>,
        to_carry_out: &mut Vec<Response>,
    ) {
        if finding.new {
            let names = &self.engine.names;
            let what = match (&event.body, finding.kind) {
                (EventBody::Connect(c) | EventBody::Accept(c), _) => {
                    format!(
                        "{} {}:{}",
                        names.name(&c.process),
                        names.remote(&c.remote_ip),
                        c.remote_port
                    )
                }
                (_, DeviationType::Process) => {
                    format!(
                        "{} (pid {})",
                        names.name(&finding.process),
                        finding.process.pid()
                    )
                }
                _ => String::new(),
            };
            let stopped = match (finding.prevented, finding.kind) {
                (false, _) => "",
                (true, DeviationType::Process) => " (prevented: the kernel killed it at exec)",
                (true, _) => " (prevented: the kernel refused the connection)",
            };
            self.out.detail(format!(
                "new {} deviation {}: {what}{stopped}",
                kind_word(finding.kind),
                finding.deviation_uid
            ));
        }
        for flag in &finding.flags {
            self.out
                .detail(format!("raised: {} (pid {})", flag_line(flag), flag.pid));
        }
        if let Some(entry) = entry
            && !finding.flags.is_empty()
        {
            self.latency.flagged(entry, self.clock());
        }
        for decision in finding.decisions {
            if finding.prevented
                && decision.initiated
                && decision.action == ActionKind::AgentKillProcess
            {
                // The kernel stopped it before user space could: nothing is left to kill.
                self.out.detail(format!(
                    "{} -> not needed: the kernel stopped it",
                    decision.message
                ));
                continue;
            }
            if !decision.initiated {
                self.out.detail(decision.message.clone());
                continue;
            }
            to_carry_out.push(Response { decision, entry });
        }
    }
}

impl EventSink for Taker<'_> {
    fn event(&mut self, event: Event) -> Result<Vec<Response>, StepError> {
        self.counts.observe(&event);
        if let Some(r) = self.recorder.as_mut() {
            r.event(&event)?;
        }
        if let EventBody::Container(info) = &event.body {
            self.engine.redactor.learn(info);
        }
        self.engine.names.observe(&event);
        let findings = self.engine.store.update(|s| s.observe(&event));
        self.agreement.observe(&event, &findings);
        let decided = self.clock();
        self.latency.event(&event);
        let mut to_carry_out = Vec::new();
        for finding in findings {
            let entry = self.latency.finding(&event, &finding, decided);
            self.respond(&event, finding, entry, &mut to_carry_out);
        }
        self.history.push(event);
        Ok(to_carry_out)
    }

    fn carried_out(
        &mut self,
        response: Response,
        outcome: Result<String, StepError>,
    ) -> Result<(), StepError> {
        match outcome {
            Ok(done) => {
                if let Some(entry) = response.entry {
                    self.latency.killed(entry, self.clock());
                }
                self.out
                    .detail(format!("{} -> {done}", response.decision.message));
                Ok(())
            }
            Err(StepError::Check(failure)) => {
                self.messages
                    .push(format!("{}: {failure}", response.decision.message));
                *self.failed = true;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::time::{Duration, Instant};

    use guardlab_engine::deviation::Decision;
    use guardlab_engine::policy::KillAction;
    use guardlab_guard_console::SharedStore;
    use guardlab_lab_api::Backend;
    use serde_json::Value as Json;

    use super::super::super::file::{CheckPoolReached, Scenario, Step, TerminalCommand};
    use super::super::super::recording::{self, Recording};
    use super::super::super::replay::ReplayBackend;
    use super::super::super::run_report::RunReport;
    use super::super::super::snapshot::SnapshotDir;
    use super::super::{Runner, SnapshotMode};
    use super::*;

    /// A recording replayed as a live lab hands it over (`hand_over`): every event of a step
    /// that is still to come goes to the sink during the step's first action (cell or terminal
    /// command), and the backend carries out the responses itself. Either way it counts the
    /// responses, and before the step `kill_from` (if any) adds a kill to the policy.
    struct DuringActions {
        inner: ReplayBackend,
        hand_over: bool,
        store: SharedStore,
        kill_from: Option<&'static str>,
        carried_out: usize,
        carried_out_in_actions: usize,
    }

    impl DuringActions {
        async fn hand_over(&mut self, sink: &mut dyn EventSink) -> Result<(), StepError> {
            if !self.hand_over {
                return Ok(());
            }
            for event in self.inner.drain().await? {
                for response in sink.event(event)? {
                    self.carried_out += 1;
                    self.carried_out_in_actions += 1;
                    let outcome = self.inner.carry_out(response.decision()).await;
                    sink.carried_out(response, outcome)?;
                }
            }
            Ok(())
        }
    }

    impl ScenarioBackend for &mut DuringActions {
        fn backend(&self) -> Backend {
            self.inner.backend()
        }
        fn runs(&self, step: &Step) -> bool {
            self.inner.runs(step)
        }
        fn begin_step(&mut self, index: usize, step: &Step) -> Result<(), StepError> {
            if Some(step.name.as_str()) == self.kill_from {
                self.store
                    .update(|s| {
                        let uid = guardlab_engine::policy::policy_uid(s.latest_policy()?);
                        s.change_policy(&uid, |p| {
                            guardlab_engine::policy::add_kill_action(
                                p,
                                KillAction::AgentKillProcess,
                            )
                        })
                        .ok()
                        .map(|_| ())
                    })
                    .expect("a policy to add the kill to");
            }
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
            self.hand_over(events).await?;
            self.inner.notebook_cell(code, timeout, out, events).await
        }
        async fn terminal_command(
            &mut self,
            session: &str,
            command: &TerminalCommand,
            out: &Console,
            events: &mut dyn EventSink,
        ) -> Result<String, StepError> {
            self.hand_over(events).await?;
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
            self.carried_out += 1;
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
        async fn finish(&mut self, keep: bool, out: &Console) -> Result<(), StepError> {
            self.inner.finish(keep, out).await
        }
    }

    fn root() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    /// Run `name`'s committed recording on `backend` (with its store), recording it again at
    /// `again`.
    fn run(
        scenario: &Scenario,
        name: &str,
        backend: &mut DuringActions,
        again: &Path,
    ) -> RunReport {
        let header = recording::read_recording(&root().join(format!("scenarios/{name}.ndjson")))
            .unwrap()
            .header;
        let writer = recording::RecordingWriter::create(again, &header).unwrap();
        let snapshots = SnapshotMode {
            dir: SnapshotDir::new(root().join(format!("snapshots/{name}"))),
            update: false,
            source: format!("scenarios/{name}.yaml"),
        };
        let store = backend.store.clone();
        let runner = Runner::new(
            scenario,
            backend,
            snapshots,
            Some(writer),
            Console { quiet: true },
        )
        .with_store(store);
        guardlab_host::runtime(1)
            .unwrap()
            .block_on(runner.run(false))
    }

    fn events_by_step(recording: &Recording) -> Vec<(String, Vec<Event>)> {
        recording
            .steps
            .iter()
            .map(|s| (s.name.clone(), s.events.clone()))
            .collect()
    }

    /// Events handed over while an action runs are taken as the runner's own reads would be:
    /// the same results, snapshots, findings and responses (carried out by the backend, in
    /// the action), and a recording with the same events in each step, in the same order (so
    /// that a replay of it lines up).
    #[test]
    fn events_handed_over_during_actions_count_as_read_by_the_runner() {
        let dir = tempfile::tempdir().unwrap();
        // The step from which the policy kills in user space (the prevented scenario's kernel
        // kills leave nothing to carry out).
        for (name, kill_from) in [
            ("cryptominer", Some("attack")),
            ("cryptominer-prevented", None),
        ] {
            let scenario = crate::scenario::file::load_scenario(
                &root().join(format!("scenarios/{name}.yaml")),
            )
            .unwrap();
            let read = || {
                recording::read_recording(&root().join(format!("scenarios/{name}.ndjson"))).unwrap()
            };
            let file = format!("{name}.ndjson");
            let backend = |hand_over| DuringActions {
                inner: ReplayBackend::new(&scenario, read(), &file).unwrap(),
                hand_over,
                store: SharedStore::new(guardlab_policy_store::PolicyStore::default()),
                kill_from,
                carried_out: 0,
                carried_out_in_actions: 0,
            };
            let mut by_runner = backend(false);
            let plain_at = dir.path().join(format!("{name}-plain.ndjson"));
            let plain = run(&scenario, name, &mut by_runner, &plain_at);
            let mut during = backend(true);
            let during_at = dir.path().join(format!("{name}-during.ndjson"));
            let report = run(&scenario, name, &mut during, &during_at);

            let results = |r: &RunReport| -> Vec<_> {
                r.steps
                    .iter()
                    .map(|s| (s.name.clone(), s.result, s.messages.clone()))
                    .collect()
            };
            assert_eq!(results(&report), results(&plain), "{name}");
            assert_eq!(report.result, plain.result, "{name}");
            assert_eq!(report.snapshots, plain.snapshots, "{name}");
            let deviations = |r: &RunReport| r.latency.as_ref().unwrap().deviations.len();
            assert_eq!(deviations(&report), deviations(&plain), "{name}");
            assert!(deviations(&report) > 0, "{name}: no deviation");
            // The recordings agree step by step, with each other and with the one replayed.
            let recorded = recording::read_recording(&during_at).unwrap();
            assert_eq!(
                events_by_step(&recorded),
                events_by_step(&recording::read_recording(&plain_at).unwrap()),
                "{name}"
            );
            assert_eq!(events_by_step(&recorded), events_by_step(&read()), "{name}");
            // The same kills, all carried out by the backend during the attack's actions.
            assert_eq!(by_runner.carried_out_in_actions, 0, "{name}");
            assert_eq!(
                by_runner.carried_out > 0,
                kill_from.is_some(),
                "{name}: {} kills",
                by_runner.carried_out
            );
            assert_eq!(during.carried_out, by_runner.carried_out, "{name}");
            assert_eq!(during.carried_out_in_actions, during.carried_out, "{name}");
        }
    }
}
