//! The runner: goes through a scenario's steps, takes the sensor's events from a backend (a
//! live lab, or a recording), drives the engine, and checks snapshots.
//!
//! The backend does what touches the world (the lab, the notebook, the terminals, the pool)
//! and hands over events; everything else (fingerprints, the policy, deviations, responses,
//! traces, snapshots) happens here, the same way for every backend, so a replay checks the
//! same things as a live run.
//!
//! Events are consumed step by step: a step takes the events that arrive while it waits for
//! its conditions, and at its end those already there. A live run records exactly these
//! (see [`super::recording`]) so that a replay gives every step the same events.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use guardlab_engine::deviation::Finding;
use guardlab_engine::fingerprint::{FingerprintBuilder, fingerprints_of_groups, process_name};
use guardlab_engine::model::{DeviationType, FingerprintGroup, Policy};
use guardlab_engine::policy;
use guardlab_engine::trace::{Investigation, Investigator};
use guardlab_events::{Event, EventBody, ProcessKey};
use guardlab_lab_api::Backend;
use serde::Serialize;
use serde_json::Value as Json;

use crate::console::{Console, seconds, textwrap};

use super::backend::{CheckFailure, ScenarioBackend, StepError};
use super::file::{Action, Condition, Scenario, Step, TerminalCommand};
use super::recording::{FACT_POOL_CLIENTS, FACT_TERMINAL_OUTPUT, RecordingWriter};
use super::snapshot::{Comparison, Redactor, SnapshotDir, yaml, yaml_documents};

/// Whether to run the next step, as a person in a workshop answers (`--step`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pace {
    Run,
    Stop,
}

/// Pauses before each step until a person says go on: a trainer walks a room through the
/// scenario one step at a time, and learners look at the notebook and the sensor's findings in
/// between. It reads lines without blocking the runtime, so the lab's events keep flowing
/// while it waits.
pub struct Pacer {
    input: Box<dyn tokio::io::AsyncBufRead + Unpin + Send>,
}

impl Pacer {
    /// Answers typed on standard input.
    pub fn stdin() -> Self {
        Self::from_reader(tokio::io::BufReader::new(tokio::io::stdin()))
    }

    pub fn from_reader(input: impl tokio::io::AsyncBufRead + Unpin + Send + 'static) -> Self {
        Pacer {
            input: Box::new(input),
        }
    }

    /// Enter runs the step; `q` (or the end of input) stops the run here.
    async fn ask(&mut self, out: &Console) -> Pace {
        use tokio::io::AsyncBufReadExt;
        out.line("       Press Enter to run this step (q and Enter to stop here).");
        let mut line = String::new();
        match self.input.read_line(&mut line).await {
            Ok(0) | Err(_) => Pace::Stop,
            Ok(_) if matches!(line.trim(), "q" | "quit" | "stop") => Pace::Stop,
            Ok(_) => Pace::Run,
        }
    }
}

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

/// How to treat snapshots.
pub struct SnapshotMode {
    pub dir: SnapshotDir,
    pub update: bool,
    /// The scenario file, written into the snapshots' metadata.
    pub source: String,
}

/// What the runner knows about processes and names, for wait conditions and messages.
#[derive(Default)]
struct Names {
    /// Names a process answers to (its process name, its exe's and argv[0]'s basenames).
    processes: HashMap<ProcessKey, Vec<String>>,
    /// DNS names by address, from the answers seen.
    dns: HashMap<IpAddr, Vec<String>>,
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

impl Names {
    fn observe(&mut self, event: &Event) {
        match &event.body {
            EventBody::Exec(x) => {
                let mut names = vec![process_name(x).to_string(), basename(&x.exe).to_string()];
                if let Some(a) = x.argv.first() {
                    names.push(basename(a).to_string());
                }
                names.dedup();
                self.processes.insert(x.key, names);
            }
            EventBody::Dns(d) => {
                for a in &d.addresses {
                    let list = self.dns.entry(*a).or_default();
                    if !list.contains(&d.name) {
                        list.push(d.name.clone());
                    }
                }
            }
            _ => {}
        }
    }

    fn is(&self, key: &ProcessKey, name: &str) -> bool {
        self.processes
            .get(key)
            .is_some_and(|n| n.iter().any(|x| x == name))
    }

    fn name(&self, key: &ProcessKey) -> &str {
        self.processes
            .get(key)
            .and_then(|n| n.first())
            .map(String::as_str)
            .unwrap_or("?")
    }

    fn remote(&self, ip: &IpAddr) -> String {
        match self.dns.get(ip).and_then(|n| n.last()) {
            Some(name) => format!("{name} ({ip})"),
            None => ip.to_string(),
        }
    }

    fn matches(&self, condition: &Condition, event: &Event) -> bool {
        match (condition, &event.body) {
            (Condition::Exec(n), EventBody::Exec(x)) => self.is(&x.key, n),
            (Condition::Exit(n), EventBody::Exit(x)) => self.is(&x.key, n),
            (Condition::Connect(target), EventBody::Connect(c)) => {
                let (host, port) = split_host_port(target);
                let host_ok = host == "*"
                    || host
                        .parse::<IpAddr>()
                        .map(|ip| ip == c.remote_ip)
                        .unwrap_or(false)
                    || self
                        .dns
                        .get(&c.remote_ip)
                        .is_some_and(|names| names.iter().any(|n| n == host));
                host_ok && port.is_none_or(|p| p == c.remote_port)
            }
            (Condition::Listen(p), EventBody::Listen(l)) => l.port == *p,
            (Condition::Container(_), EventBody::Container(_)) => true,
            _ => false,
        }
    }
}

/// `host:port` -> (host, Some(port)); a bare host or IPv6 address has no port.
fn split_host_port(target: &str) -> (&str, Option<u16>) {
    match target.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => match port.parse() {
            Ok(p) => (host, Some(p)),
            Err(_) => (target, None),
        },
        _ => (target, None),
    }
}

/// The engine side of a run.
struct Engine {
    fingerprinter: Option<FingerprintBuilder>,
    /// The events the fingerprints were learned from (the baseline window).
    baseline: Vec<Event>,
    groups: Vec<FingerprintGroup>,
    investigator: Investigator,
    policy: Option<Policy>,
    redactor: Redactor,
    names: Names,
    /// Where the previous `expect_deviations` left off.
    seen_deviations: usize,
    seen_flags: usize,
    seen_decisions: usize,
    seen_audit: usize,
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
    /// Set: pause before each step (`--step`).
    pacer: Option<Pacer>,
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
        Runner {
            scenario,
            backend,
            snapshots,
            recorder,
            out,
            engine: Engine {
                fingerprinter: Some(FingerprintBuilder::new()),
                baseline: Vec::new(),
                groups: Vec::new(),
                investigator: Investigator::new(&[]).expect("no policy is always valid"),
                policy: None,
                redactor: Redactor::default(),
                names: Names::default(),
                seen_deviations: 0,
                seen_flags: 0,
                seen_decisions: 0,
                seen_audit: 0,
            },
            terminals: Vec::new(),
            history: Vec::new(),
            pacer: None,
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
            if let Some(pacer) = self.pacer.as_mut()
                && pacer.ask(&self.out).await == Pace::Stop
            {
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
                        self.step(step, &mut facts, &mut diff).await
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
        if let Err(e) = self.backend.finish(keep_lab, &self.out).await {
            self.report.error = Some(format!("tearing the lab down: {e}"));
        }
        if let Some(r) = self.recorder.take()
            && let Err(e) = r.finish()
        {
            self.report.error = Some(format!("recording: {e}"));
        }
        if self.engine.policy.is_some() {
            self.report.deviations = Some(self.engine.investigator.matcher_mut().report());
            if self.report.investigation.is_none() {
                self.report.investigation = Some(self.engine.investigator.finish());
            }
        }
        self.report.duration_ms = started.elapsed().as_millis() as u64;
        self.report.settle();
        self.report
    }

    /// Take one event: engine, names, recording, responses.
    async fn observe(&mut self, event: Event) -> Result<(), StepError> {
        if let Some(r) = self.recorder.as_mut() {
            r.event(&event)?;
        }
        if let EventBody::Container(info) = &event.body {
            self.engine.redactor.learn(info);
        }
        self.engine.names.observe(&event);
        self.history.push(event.clone());
        if let Some(fp) = self.engine.fingerprinter.as_mut() {
            fp.observe(&event);
            self.engine.baseline.push(event.clone());
        }
        let findings = self.engine.investigator.observe(&event);
        for finding in findings {
            self.respond(&event, finding).await?;
        }
        Ok(())
    }

    /// Say what a finding is, and carry out what the policy decided.
    async fn respond(&mut self, event: &Event, finding: Finding) -> Result<(), StepError> {
        if finding.new {
            let what = match (&event.body, finding.kind) {
                (EventBody::Connect(c) | EventBody::Accept(c), _) => {
                    format!(
                        "{} {}:{}",
                        self.engine.names.name(&c.process),
                        self.engine.names.remote(&c.remote_ip),
                        c.remote_port
                    )
                }
                (_, DeviationType::Process) => {
                    format!(
                        "{} (pid {})",
                        self.engine.names.name(&finding.process),
                        finding.process.pid()
                    )
                }
                _ => String::new(),
            };
            self.out.detail(format!(
                "new {} deviation {}: {what}",
                kind_word(finding.kind),
                finding.deviation_uid
            ));
        }
        for flag in &finding.flags {
            self.out
                .detail(format!("raised: {} (pid {})", flag_line(flag), flag.pid));
        }
        for decision in &finding.decisions {
            if !decision.initiated {
                self.out.detail(decision.message.clone());
                continue;
            }
            match self.backend.carry_out(decision).await {
                Ok(done) => self.out.detail(format!("{} -> {done}", decision.message)),
                Err(StepError::Check(failure)) => {
                    self.messages
                        .push(format!("{}: {failure}", decision.message));
                    self.failed = true;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn drain(&mut self) -> Result<(), StepError> {
        for event in self.backend.drain().await? {
            self.observe(event).await?;
        }
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

    async fn step(
        &mut self,
        step: &Step,
        facts: &mut BTreeMap<String, Json>,
        diff: &mut Option<StepDiff>,
    ) -> Result<(), StepError> {
        match &step.action {
            Action::LabUp(up) => {
                self.backend.lab_up(&self.out).await?;
                // A lab whose events do not flow could not run: that is an error, not a finding.
                match self
                    .wait_for(&up.wait_for, up.timeout.0, "the lab's events")
                    .await
                {
                    Err(StepError::Check(failure)) if self.backend.is_live() => {
                        Err(StepError::LabSilent(failure))
                    }
                    other => other,
                }
            }
            Action::NotebookCell(cell) => {
                self.out
                    .detail(format!("cell: {}", cell.code.lines().next().unwrap_or("")));
                self.backend
                    .notebook_cell(&cell.code, cell.timeout.0, &self.out)
                    .await?;
                self.wait_for(&cell.wait_for, cell.timeout.0, "after the cell")
                    .await
            }
            Action::Terminal(t) => {
                if !self.terminals.contains(&t.session) {
                    self.terminals.push(t.session.clone());
                }
                let mut outputs = Vec::new();
                for command in &t.commands {
                    self.out.detail(format!("$ {}", command.run));
                    let output = self
                        .backend
                        .terminal_command(&t.session, command, &self.out)
                        .await?;
                    outputs.push(Json::String(clip(&output, RECORDED_OUTPUT)));
                    facts.insert(FACT_TERMINAL_OUTPUT.into(), Json::Array(outputs.clone()));
                    let program = TerminalCommand::program(&command.run);
                    if let Some(line) = missing_program(&output, &program) {
                        // The image lacks the program (the tutorial's `ping`, or a tool a
                        // custom image leaves out): nothing ran, so there is nothing to wait
                        // for. What the attacker did not get to run shows in the snapshots.
                        self.out.detail(format!(
                            "`{program}` is not in this image ({line}): nothing ran, not waiting for its events"
                        ));
                        continue;
                    }
                    if let Err(e) = self
                        .wait_for(
                            &command.wait_for,
                            command.timeout.0,
                            &format!("`{}`", command.run),
                        )
                        .await
                    {
                        match e {
                            StepError::Check(failure) => {
                                // Go on with the next command: the rest of the step still tells.
                                self.messages.push(failure.to_string());
                                self.failed = true;
                            }
                            lab => return Err(lab),
                        }
                    }
                }
                Ok(())
            }
            Action::WaitEvents(w) => self.wait_for(&w.wait_for, w.timeout.0, "waiting").await,
            Action::Fingerprint(s) => {
                self.drain().await?;
                let builder = self.engine.fingerprinter.take().unwrap_or_default();
                self.engine.groups = builder.finish_grouped();
                let fps = fingerprints_of_groups(&self.engine.groups);
                for fp in &fps {
                    self.out.detail(format!(
                        "fingerprint {} ({} processes, {} egress, {} ingress)",
                        fp.metadata.name,
                        count_nodes(&fp.spec.process_policy),
                        fp.spec.network_policy.egress.len(),
                        fp.spec.network_policy.ingress.len()
                    ));
                }
                if fps.is_empty() {
                    return Err(CheckFailure::NoFingerprint.into());
                }
                let values: Vec<_> = self
                    .engine
                    .groups
                    .iter()
                    .map(|g| self.engine.redactor.value(g))
                    .collect();
                *diff = self.check_snapshot(step, &s.snapshot, &yaml_documents(&values));
                Ok(())
            }
            Action::CreatePolicy(c) => {
                self.drain().await?;
                let mut fps = fingerprints_of_groups(&self.engine.groups);
                if let Some(pattern) = &c.image {
                    fps.retain(|f| {
                        let image = f
                            .spec
                            .container_selector
                            .as_ref()
                            .and_then(|s| s.image.as_deref())
                            .unwrap_or("");
                        guardlab_engine::glob::glob_match(pattern, image)
                    });
                }
                let policy = policy::create_policy(&fps, Some(&c.name), c.mode.into()).map_err(
                    |source| CheckFailure::Policy {
                        what: "creating the policy",
                        source,
                    },
                )?;
                self.out.detail(format!(
                    "policy {} ({}), uid {}",
                    policy.metadata.name,
                    policy::status(&policy),
                    policy::policy_uid(&policy)
                ));
                // The baseline, replayed against its own policy, must deviate nowhere.
                let check = guardlab_engine::deviation::find_deviations(
                    std::slice::from_ref(&policy),
                    &self.engine.baseline,
                )
                .map_err(|source| CheckFailure::Policy {
                    what: "the new policy",
                    source,
                })?;
                if check.unique() > 0 {
                    self.failed = true;
                    for d in check.deviations() {
                        self.messages.push(format!(
                            "the baseline deviates from its own policy: {} {}",
                            kind_word(d.metadata.kind),
                            serde_json::to_string(&d.spec).unwrap_or_default()
                        ));
                    }
                } else {
                    self.out.detail(format!(
                        "the baseline ({} events) replayed against the policy: 0 deviations",
                        self.engine.baseline.len()
                    ));
                }
                self.engine
                    .investigator
                    .matcher_mut()
                    .set_policy(&policy)
                    .map_err(|source| CheckFailure::Policy {
                        what: "the new policy",
                        source,
                    })?;
                if let Some(name) = &c.snapshot {
                    let text = yaml(&self.engine.redactor.value(&policy));
                    *diff = self.check_snapshot(step, name, &text);
                }
                self.engine.policy = Some(policy);
                Ok(())
            }
            Action::SetMode(m) => {
                self.drain().await?;
                self.change_policy(|p| policy::set_mode(p, (*m).into()))
            }
            Action::Enable(_) => {
                self.drain().await?;
                self.change_policy(|p| policy::set_enabled(p, true))
            }
            Action::Disable(_) => {
                self.drain().await?;
                self.change_policy(|p| policy::set_enabled(p, false))
            }
            Action::ExpectDeviations(s) => {
                self.drain().await?;
                let text = self.deviations_since_last();
                *diff = self.check_snapshot(step, &s.snapshot, &text);
                Ok(())
            }
            Action::Investigate(s) => {
                self.drain().await?;
                let investigation = self.engine.investigator.finish();
                for d in &investigation.deviations {
                    if d.chain.is_empty() {
                        self.failed = true;
                        self.messages.push(format!(
                            "{} deviation {} has no trace: its process started before the sensor saw it",
                            kind_word(d.kind),
                            d.deviation_uid
                        ));
                    }
                }
                self.out.detail(format!(
                    "{} deviations traced",
                    investigation.deviations.len()
                ));
                let text = yaml(&self.engine.redactor.value(&trace_snapshot(&investigation)));
                *diff = self.check_snapshot(step, &s.snapshot, &text);
                // The report shows the investigation as this step saw it (a later `disable`
                // would leave its processes unlabelled).
                self.report.investigation = Some(investigation);
                Ok(())
            }
            Action::CheckPoolReached(check) => {
                // The sensor's side first (the miner's connection), then the pool's.
                self.wait_for_seen(&check.wait_for, check.timeout.0, "the pool check")
                    .await?;
                let clients = self.backend.pool_clients(check).await?;
                facts.insert(FACT_POOL_CLIENTS.into(), Json::Array(clients.clone()));
                let matching: Vec<&Json> = clients
                    .iter()
                    .filter(|c| match &check.user {
                        Some(u) => c.get("user").and_then(Json::as_str) == Some(u.as_str()),
                        None => true,
                    })
                    .collect();
                for c in &matching {
                    self.out.detail(format!(
                        "pool client: user {} agent {} shares accepted {}",
                        c.get("user").and_then(Json::as_str).unwrap_or("-"),
                        c.get("user_agent").and_then(Json::as_str).unwrap_or("-"),
                        c.get("shares_accepted").and_then(Json::as_u64).unwrap_or(0)
                    ));
                }
                if matching.len() < check.clients {
                    return Err(CheckFailure::PoolClients {
                        seen: matching.len(),
                        user: check.user.clone(),
                        expected: check.clients,
                    }
                    .into());
                }
                Ok(())
            }
        }
    }

    fn change_policy(&mut self, change: impl FnOnce(&mut Policy)) -> Result<(), StepError> {
        let Some(policy) = self.engine.policy.as_mut() else {
            return Err(CheckFailure::NoPolicy.into());
        };
        change(policy);
        self.out.detail(format!(
            "policy {} is now {}",
            policy.metadata.name,
            policy::status(policy)
        ));
        self.engine
            .investigator
            .matcher_mut()
            .set_policy(policy)
            .map_err(|source| {
                CheckFailure::Policy {
                    what: "the policy",
                    source,
                }
                .into()
            })
    }

    /// The snapshot text of an `expect_deviations` step: the policy's counts, and what is new
    /// since the previous such step.
    fn deviations_since_last(&mut self) -> String {
        let report = self.engine.investigator.matcher_mut().report();
        let e = &mut self.engine;
        let all: Vec<_> = report
            .policies
            .iter()
            .flat_map(|p| p.deviations.iter())
            .collect();
        let new: Vec<_> = all.iter().skip(e.seen_deviations).copied().collect();
        let flags = &report.flags[e.seen_flags.min(report.flags.len())..];
        let decisions = &report.decisions[e.seen_decisions.min(report.decisions.len())..];
        let audit = &report.audit_log[e.seen_audit.min(report.audit_log.len())..];
        for p in &report.policies {
            self.out.detail(format!(
                "policy {} ({}): {}/{} deviations (unique/total), {} new",
                p.name,
                p.status,
                p.unique,
                p.total,
                new.len()
            ));
        }
        #[derive(Serialize)]
        struct PolicyCounts<'r> {
            policy: &'r str,
            status: &'r str,
            unique: usize,
            total: u64,
        }
        #[derive(Serialize)]
        struct Expectation<'r> {
            policies: Vec<PolicyCounts<'r>>,
            new_deviations: Vec<&'r guardlab_engine::deviation::DeviationRecord>,
            red_flags: Vec<String>,
            actions: Vec<&'r str>,
            audit_log: &'r [String],
        }
        let value = e.redactor.value(&Expectation {
            policies: report
                .policies
                .iter()
                .map(|p| PolicyCounts {
                    policy: &p.name,
                    status: &p.status,
                    unique: p.unique,
                    total: p.total,
                })
                .collect(),
            new_deviations: new,
            red_flags: flags.iter().map(flag_line).collect(),
            actions: decisions.iter().map(|d| d.message.as_str()).collect(),
            audit_log: audit,
        });
        e.seen_deviations = all.len();
        e.seen_flags = report.flags.len();
        e.seen_decisions = report.decisions.len();
        e.seen_audit = report.audit_log.len();
        yaml(&value)
    }

    fn check_snapshot(&mut self, step: &Step, name: &str, text: &str) -> Option<StepDiff> {
        self.report
            .snapshots
            .insert(name.to_string(), text.to_string());
        let description = format!(
            "step {:?}: {}",
            step.name,
            step.explain
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        );
        match self.snapshots.dir.check(
            name,
            text,
            self.snapshots.update,
            &self.snapshots.source,
            &description,
        ) {
            Ok(Comparison::Matches) => None,
            Ok(Comparison::Written) => Some(StepDiff::Written),
            Ok(Comparison::Differs { diff }) => Some(StepDiff::Differs(diff)),
            Ok(Comparison::Missing) => Some(StepDiff::Missing),
            Err(e) => {
                self.failed = true;
                self.messages.push(format!(
                    "snapshot {}: {e}",
                    self.snapshots.dir.path(name).display()
                ));
                None
            }
        }
    }
}

/// How much of a terminal command's output a recording keeps.
const RECORDED_OUTPUT: usize = 2000;

fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

/// The shell's "command not found" line for `program` in a command's output, if the shell
/// said so (bash: `bash: ping: command not found`; dash and busybox: `sh: 1: ping: not found`).
pub fn missing_program<'o>(output: &'o str, program: &str) -> Option<&'o str> {
    if program.is_empty() {
        return None;
    }
    // The program is a whole field of the message: `id` is not missing when `uuid` is.
    let bash = format!(": {program}: command not found");
    let sh = format!(": {program}: not found");
    // Ubuntu's command-not-found hook, where an image has it.
    let ubuntu = format!("Command '{program}' not found");
    output.lines().map(str::trim).find(|l| {
        l.ends_with(&bash) || l.ends_with(&sh) || l.starts_with(&ubuntu) || *l == &bash[2..]
    })
}

/// A flag in one line: `high red flag: process deviation dev:... by id (/usr/bin/id) in minimal-notebook`.
fn flag_line(f: &guardlab_engine::deviation::Flag) -> String {
    format!(
        "{} {} flag: {} deviation {} by {} ({}) in {}",
        severity_word(f.severity),
        match f.class {
            guardlab_engine::deviation::FlagClass::Red => "red",
            guardlab_engine::deviation::FlagClass::Ops => "ops",
        },
        kind_word(f.kind),
        f.deviation_uid,
        if f.process.is_empty() {
            "?"
        } else {
            &f.process
        },
        f.exe,
        f.container_name
    )
}

pub fn severity_word(s: guardlab_engine::model::Severity) -> &'static str {
    use guardlab_engine::model::Severity::*;
    match s {
        Critical => "critical",
        High => "high",
        Medium => "medium",
        Low => "low",
        Info => "info",
    }
}

/// The investigation as the trace snapshot holds it: per deviation, the chain from the
/// container's root process as one line per program (`name [policy node] user: command
/// line`), and the connections; then the flags and actions. Pids and times are left out:
/// they differ on every run.
fn trace_snapshot(inv: &Investigation) -> TraceSnapshot {
    use guardlab_engine::fingerprint::Direction;
    let connection = |c: &guardlab_engine::trace::TraceConnection| {
        let remote = match &c.dns {
            Some(name) => format!("{name} ({})", c.ip),
            None => c.ip.clone(),
        };
        let refused = if c.refused { " refused" } else { "" };
        match c.direction {
            Direction::Egress => format!("egress {} {remote}:{}{refused}", c.protocol, c.port),
            Direction::Ingress => format!(
                "ingress {} from {remote} to port {}{refused}",
                c.protocol, c.port
            ),
        }
    };
    TraceSnapshot {
        deviations: inv
            .deviations
            .iter()
            .map(|d| TracedDeviation {
                deviation: d.deviation_uid.clone(),
                kind: kind_word(d.kind),
                policy: d.policy_name.clone(),
                count: d.count,
                container: format!(
                    "{} ({}) pod {}/{}",
                    d.container.container_name,
                    d.container.image,
                    d.container.namespace,
                    d.container.pod
                ),
                trace: d
                    .chain
                    .iter()
                    .map(|p| {
                        let node = match (&p.node, p.deviant) {
                            (Some(id), false) => format!(" [{id}]"),
                            (Some(id), true) => format!(" [NEW {id}]"),
                            (None, _) => String::new(),
                        };
                        let ended = p
                            .ended
                            .as_deref()
                            .map(|e| format!(", {e}"))
                            .unwrap_or_default();
                        let exe = if p.args.first() == Some(&p.exe) {
                            String::new()
                        } else {
                            format!(" (exe {})", p.exe)
                        };
                        format!(
                            "{}{node} {}{ended}: {}{exe}",
                            p.name,
                            p.euser,
                            p.args.join(" ")
                        )
                    })
                    .collect(),
                connection: d.connection.as_ref().map(connection),
                connections: {
                    // Each distinct connection once: retries and reconnects differ only in time.
                    let mut lines: Vec<String> = Vec::new();
                    for line in d.connections.iter().map(connection) {
                        if !lines.contains(&line) {
                            lines.push(line);
                        }
                    }
                    lines
                },
            })
            .collect(),
        red_flags: inv
            .flags
            .iter()
            .map(|f| {
                format!(
                    "{} {} flag: {} deviation {} by {}",
                    severity_word(f.severity),
                    match f.class {
                        guardlab_engine::deviation::FlagClass::Red => "red",
                        guardlab_engine::deviation::FlagClass::Ops => "ops",
                    },
                    kind_word(f.kind),
                    f.deviation_uid,
                    f.process
                )
            })
            .collect(),
        actions: inv.decisions.iter().map(|d| d.message.clone()).collect(),
    }
}

#[derive(Serialize)]
struct TraceSnapshot {
    deviations: Vec<TracedDeviation>,
    red_flags: Vec<String>,
    actions: Vec<String>,
}

#[derive(Serialize)]
struct TracedDeviation {
    deviation: String,
    #[serde(rename = "type")]
    kind: &'static str,
    policy: String,
    count: u64,
    container: String,
    trace: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    connection: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    connections: Vec<String>,
}

enum StepDiff {
    Written,
    Differs(String),
    Missing,
}

fn count_nodes(nodes: &[guardlab_engine::model::ProcessNode]) -> usize {
    nodes
        .iter()
        .map(|n| 1 + n.children.as_deref().map(count_nodes).unwrap_or(0))
        .sum()
}

pub fn kind_word(kind: DeviationType) -> &'static str {
    match kind {
        DeviationType::Process => "process",
        DeviationType::Ingress => "ingress",
        DeviationType::Egress => "egress",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_program_is_told_by_the_shells_words() {
        let bash = "ping -n 3 sourceforge.net\r\nbash: ping: command not found\r\n";
        assert_eq!(
            missing_program(bash, "ping"),
            Some("bash: ping: command not found")
        );
        assert_eq!(
            missing_program("sh: 1: ps: not found\n", "ps"),
            Some("sh: 1: ps: not found")
        );
        assert!(
            missing_program(
                "Command 'ping' not found, but can be installed with:",
                "ping"
            )
            .is_some()
        );
        // Another program's message (also one whose name ends like it), a missing file, or
        // the words in ordinary output: no.
        assert_eq!(missing_program("bash: uuid: command not found", "id"), None);
        assert_eq!(missing_program("sh: 1: uuid: not found", "id"), None);
        assert_eq!(
            missing_program("id: command not found", "id"),
            Some("id: command not found")
        );
        assert_eq!(missing_program(bash, "curl"), None);
        assert_eq!(
            missing_program("bash: ./minerd: No such file or directory", "minerd"),
            None
        );
        assert_eq!(
            missing_program("grep: command not found in the manual\n", "grep"),
            None
        );
        assert_eq!(missing_program("anything", ""), None);
    }

    /// The committed recording of a live run, replayed with `answers` typed at the pauses.
    fn paced_replay(answers: &'static [u8]) -> RunReport {
        use super::super::{file, recording, replay, snapshot};
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

        // The end of the input stops too (a closed terminal must not run the rest unasked).
        let report = paced_replay(b"\n");
        assert_eq!(report.stopped.as_deref(), Some("baseline-hello"));
    }

    #[test]
    fn a_runs_result_is_written_as_the_json_report_always_wrote_it() {
        let words: Vec<String> = [RunResult::Pass, RunResult::Mismatch, RunResult::Error]
            .iter()
            .map(|r| serde_json::to_string(r).unwrap())
            .collect();
        assert_eq!(words, ["\"pass\"", "\"mismatch\"", "\"error\""]);
    }

    #[test]
    fn recorded_output_is_clipped_on_a_char_boundary() {
        assert_eq!(clip("héllo", 2), "hé…");
        assert_eq!(clip("short", 10), "short");
    }
}
