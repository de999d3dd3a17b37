//! The live backends: a lab from `guardlab-lab` (the local one: namespaces and a cgroup on this
//! host, with the eBPF sensor) or from `guardlab-kind` (a kind cluster, or an existing one, with
//! the sensor as a DaemonSet), the notebook and its terminals driven through Jupyter's own APIs
//! as a learner's browser would (on kind, through the port-forward at 127.0.0.1:1234; see
//! [`super::workbench`]).
//!
//! Waiting is bounded and event-driven: after each action the runner takes the sensor's
//! events until the step's conditions are met (for a terminal command, by default the exit of
//! the program it started), never a fixed sleep.
//!
//! A run always starts from a fresh pod, so that the baseline holds only the baseline: a lab
//! that is already up (an earlier `--keep-lab`) is torn down and brought up again (the image
//! is cached, so this is quick). At the end the lab is torn down unless `--keep-lab`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use guardlab_engine::deviation::{ActionKind, Decision};
use guardlab_events::Event;
use guardlab_kind::{KindLab, KindOptions};
use guardlab_lab::{LocalLab, LocalLabOptions};
use guardlab_lab_api::{Backend, Lab, LabAction, LabError, LabInfo};
use serde_json::Value as Json;
use tokio::sync::mpsc;

use crate::console::Console;

use super::backend::{CheckFailure, ScenarioBackend, StepError};
use super::file::{CheckPoolReached, Scenario, Step, TerminalCommand};
use super::workbench::{JupyterWorkbench, Workbench};

/// What differs between the live labs behind [`LabBackend`]: the words of their messages and
/// whether they have a mining pool to ask. The rest (up, down, events, responses) is the
/// [`Lab`] interface.
#[allow(async_fn_in_trait)] // Used through generics only.
pub trait LiveLab: Lab {
    /// How the lab is named in errors about bringing it up: `the local lab`, `the kind lab`.
    const LAB: &'static str;
    /// Said when a lab is up already, before it is torn down to start afresh.
    const ALREADY_UP: &'static str;
    /// How the event source is named when subscribing to it fails.
    const EVENTS: &'static str;
    /// The event stream is asked for before any `lab_up` step (said with `(no lab_up step
    /// ran)`).
    const EVENTS_NOT_FLOWING: &'static str;
    /// The event stream ended.
    const EVENTS_ENDED: &'static str;
    /// The lab in `Tearing ... down.`: `the lab`, `the kind lab`.
    const TEAR_DOWN: &'static str;

    /// Said at the end of a `--keep-lab` run, with the notebook's address.
    fn kept_up(notebook_url: &str) -> String;

    /// Why the event stream ended, when the lab knows (said after [`Self::EVENTS_ENDED`]).
    fn events_ended_why(&self) -> Option<String> {
        None
    }

    /// The lab's mining pool's clients, waiting up to the check's timeout for enough of them.
    async fn pool_clients(&mut self, check: &CheckPoolReached) -> Result<Vec<Json>, StepError>;
}

impl LiveLab for LocalLab {
    const LAB: &'static str = "the local lab";
    const ALREADY_UP: &'static str =
        "a lab is up already: bringing it up afresh so that the baseline starts clean";
    const EVENTS: &'static str = "the local lab";
    const EVENTS_NOT_FLOWING: &'static str = "the lab's events are not flowing";
    const EVENTS_ENDED: &'static str = "the lab's event stream ended (did the lab daemon stop?)";
    const TEAR_DOWN: &'static str = "the lab";

    fn kept_up(notebook_url: &str) -> String {
        format!(
            "The lab stays up (--keep-lab): open {notebook_url} ; `guardlab lab down` removes it."
        )
    }

    async fn pool_clients(&mut self, check: &CheckPoolReached) -> Result<Vec<Json>, StepError> {
        let deadline = Instant::now() + check.timeout.0;
        loop {
            let visitors = self.visitors().await.map_err(lab_err("the lab's pool"))?;
            let enough = visitors
                .pool
                .iter()
                .filter(|c| {
                    check
                        .user
                        .as_ref()
                        .is_none_or(|u| c.get("user").and_then(Json::as_str) == Some(u))
                })
                .count()
                >= check.clients;
            if enough || Instant::now() >= deadline {
                return Ok(visitors.pool);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl LiveLab for KindLab {
    const LAB: &'static str = "the kind lab";
    const ALREADY_UP: &'static str =
        "a kind lab is up already: bringing it up afresh so that the baseline starts clean";
    const EVENTS: &'static str = "the sensor's events";
    const EVENTS_NOT_FLOWING: &'static str = "the sensor's events are not flowing";
    const EVENTS_ENDED: &'static str =
        "the sensor's event stream ended (is the guardlab-sensor DaemonSet still running?)";
    const TEAR_DOWN: &'static str = "the kind lab";

    fn events_ended_why(&self) -> Option<String> {
        self.event_stream_failure()
    }

    fn kept_up(notebook_url: &str) -> String {
        format!(
            "The kind lab stays up (--keep-lab), but the port-forward ends with this run: \
             `guardlab lab up --backend kind` forwards {notebook_url} again; `guardlab lab down --backend kind` removes it."
        )
    }

    async fn pool_clients(&mut self, check: &CheckPoolReached) -> Result<Vec<Json>, StepError> {
        // The local lab runs its own mining pool in a network namespace; a cluster has none
        // (and guardlab sends no traffic to a real one), so there is nobody to ask.
        Err(CheckFailure::NoPool {
            backend: Backend::Kind,
            clients: check.clients,
        }
        .into())
    }
}

/// A live lab as a scenario backend: the lab, what it runs, its events and the notebook.
pub struct LabBackend<L> {
    lab: L,
    info: Option<LabInfo>,
    events: Option<mpsc::Receiver<Event>>,
    workbench: Option<JupyterWorkbench>,
    /// The lab was brought up by this run (so it is ours to tear down).
    started: bool,
}

/// The local lab as a scenario backend.
pub type LocalBackend = LabBackend<LocalLab>;

/// The kind lab (`guardlab-kind`) as a scenario backend: the same steps against the real
/// `jupyter/minimal-notebook` image on a Kubernetes cluster, with the sensor's DaemonSet
/// streaming the pod's events through a port-forward, and responses carried out through the API
/// (pod deletion) or by the sensor on the pod's node (process kills).
pub type KindBackend = LabBackend<KindLab>;

/// The lab's name: the scenario's namespace, else its name.
fn lab_name(scenario: &Scenario) -> String {
    scenario
        .lab
        .namespace
        .clone()
        .unwrap_or_else(|| scenario.name.clone())
}

impl LabBackend<LocalLab> {
    pub fn new(scenario: &Scenario) -> Result<Self, LabError> {
        let lab = LocalLab::new(LocalLabOptions::new(&lab_name(scenario)))?;
        Ok(LabBackend::with_lab(lab))
    }
}

impl LabBackend<KindLab> {
    pub fn new(scenario: &Scenario) -> Self {
        let mut options = KindOptions::default();
        if let Some(namespace) = &scenario.lab.namespace {
            options.namespace = namespace.clone();
        }
        LabBackend::with_lab(KindLab::new(options))
    }
}

impl<L: LiveLab> LabBackend<L> {
    fn with_lab(lab: L) -> Self {
        LabBackend {
            lab,
            info: None,
            events: None,
            workbench: None,
            started: false,
        }
    }

    fn workbench(&mut self) -> Result<&mut JupyterWorkbench, StepError> {
        self.workbench.as_mut().ok_or(StepError::BeforeLabUp {
            what: "the notebook is not connected",
        })
    }
}

/// What the engine decided, as the lab interface says it (every response action has a word
/// there).
pub fn lab_action(decision: &Decision) -> LabAction {
    let t = &decision.target;
    match decision.action {
        ActionKind::AgentKillProcess => LabAction::KillProcess { pid: t.pid },
        ActionKind::AgentKillProcessTree => LabAction::KillProcessTree { pid: t.pid },
        ActionKind::AgentKillPod => LabAction::KillPod {
            namespace: t.namespace.clone(),
            name: t.pod.clone(),
        },
        ActionKind::AgentKillProcessGroup => LabAction::KillProcessGroup { pid: t.pid },
    }
}

fn lab_err(what: &str) -> impl Fn(LabError) -> StepError + '_ {
    move |source| StepError::Lab {
        what: what.to_string(),
        source,
    }
}

impl<L: LiveLab> ScenarioBackend for LabBackend<L> {
    fn backend(&self) -> Backend {
        self.lab.backend()
    }

    fn begin_step(&mut self, _index: usize, _step: &Step) -> Result<(), StepError> {
        Ok(())
    }

    fn end_step(&mut self, _index: usize, _step: &Step, _facts: &BTreeMap<String, Json>) {}

    async fn lab_up(&mut self, out: &Console) -> Result<(), StepError> {
        let progress = out.progress();
        // A lab left up by `lab up` or --keep-lab is removed first: the baseline must start
        // from a fresh pod.
        if self.lab.status().await.map_err(lab_err(L::LAB))?.is_some() {
            out.detail(L::ALREADY_UP);
            self.lab.down(&progress).await.map_err(lab_err(L::LAB))?;
        }
        self.started = true;
        let info = self.lab.up(&progress).await.map_err(lab_err(L::LAB))?;
        out.detail(format!("notebook: {}", info.notebook_url));
        for pod in &info.pods {
            out.detail(format!(
                "pod {}/{} ({})",
                pod.namespace, pod.name, pod.image
            ));
        }
        self.events = Some(self.lab.events().await.map_err(lab_err(L::EVENTS))?);
        self.workbench = Some(JupyterWorkbench::connect(&info.notebook_url).await?);
        self.info = Some(info);
        Ok(())
    }

    async fn notebook_cell(
        &mut self,
        code: &str,
        timeout: Duration,
        out: &Console,
    ) -> Result<(), StepError> {
        let output =
            guardlab_jupyter::screen_text(&self.workbench()?.run_cell(code, timeout).await?);
        for line in output.lines().take(5) {
            out.detail(format!("| {line}"));
        }
        Ok(())
    }

    async fn terminal_command(
        &mut self,
        session: &str,
        command: &TerminalCommand,
        out: &Console,
    ) -> Result<String, StepError> {
        let output = self.workbench()?.terminal_command(session, command).await?;
        for line in output.lines().take(3) {
            out.detail(format!("| {line}"));
        }
        Ok(output)
    }

    async fn next_event(&mut self, deadline: Instant) -> Result<Option<Event>, StepError> {
        let Some(rx) = self.events.as_mut() else {
            return Err(StepError::BeforeLabUp {
                what: L::EVENTS_NOT_FLOWING,
            });
        };
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(e)) => Ok(Some(e)),
            Ok(None) => Err(StepError::EventsEnded {
                what: L::EVENTS_ENDED,
                why: self.lab.events_ended_why(),
            }),
            Err(_) => Ok(None),
        }
    }

    async fn drain(&mut self) -> Result<Vec<Event>, StepError> {
        let mut out = Vec::new();
        if let Some(rx) = self.events.as_mut() {
            while let Ok(e) = rx.try_recv() {
                out.push(e);
            }
        }
        Ok(out)
    }

    async fn carry_out(&mut self, decision: &Decision) -> Result<String, StepError> {
        let action = lab_action(decision);
        self.lab
            .carry_out(&action)
            .await
            .map(|()| format!("carried out: {action:?}"))
            .map_err(|source| {
                CheckFailure::Action {
                    action,
                    source: Box::new(source),
                }
                .into()
            })
    }

    async fn pool_clients(&mut self, check: &CheckPoolReached) -> Result<Vec<Json>, StepError> {
        self.lab.pool_clients(check).await
    }

    async fn finish(&mut self, keep: bool, out: &Console) -> Result<(), StepError> {
        if let Some(mut w) = self.workbench.take() {
            w.close().await;
        }
        self.events = None;
        if keep {
            if let Some(info) = &self.info {
                out.line(L::kept_up(&info.notebook_url));
            }
            return Ok(());
        }
        if !self.started {
            return Ok(());
        }
        out.line(format!("Tearing {} down.", L::TEAR_DOWN));
        self.lab
            .down(&out.progress())
            .await
            .map_err(|source| StepError::Lab {
                what: format!("tearing {} down", L::TEAR_DOWN),
                source,
            })
    }
}
