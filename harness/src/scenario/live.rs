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
//!
//! On the local backend the lab a run brings up belongs to the run (unless `--keep-lab`): if
//! the run's process ends without taking it down (killed), the lab's daemon removes it. A lab
//! that belongs to another run still going is refused, not taken from it. A run stopped by
//! SIGINT or SIGTERM takes its lab down ([`Stoppable`]).

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
use crate::signals::StopSignals;

use super::backend::{CheckFailure, EventSink, ScenarioBackend, StepError};
use super::file::{CheckPoolReached, Scenario, Step, TerminalCommand};
use super::stop::{LabAfterStop, Stoppable};
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
    /// How a person removes the lab: `` `guardlab lab down` ``.
    const DOWN: &'static str;
    /// How a person looks at the lab: `` `guardlab lab status` ``.
    const STATUS: &'static str;
    /// What becomes of a lab whose taking down a second signal stopped.
    const ABANDONED: &'static str;

    /// Said at the end of a `--keep-lab` run, with the notebook's address.
    fn kept_up(notebook_url: &str) -> String;

    /// Refuses a lab that another run still going owns (it would be taken from that run).
    fn check_not_in_use(&self) -> Result<(), LabError> {
        Ok(())
    }

    /// `down`, and what it removed in one phrase (`removed lab cryptominer: ...`).
    async fn take_down(&mut self) -> Result<String, LabError>;

    /// What the lab lost or could not do since it started, when it counts that.
    async fn counters(&self) -> Option<guardlab_lab::local::LabCounters> {
        None
    }

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
    const DOWN: &'static str = "`guardlab lab down`";
    const STATUS: &'static str = "`guardlab lab status`";
    const ABANDONED: &'static str = "the lab's daemon removes what is left once this run has \
         ended; `guardlab lab status` shows it, `guardlab lab down` removes it";

    fn kept_up(notebook_url: &str) -> String {
        format!(
            "The lab stays up (--keep-lab): open {notebook_url} ; `guardlab lab down` removes it."
        )
    }

    fn check_not_in_use(&self) -> Result<(), LabError> {
        match self.in_use_by_another()? {
            Some(owner) => Err(guardlab_lab::local::InUse {
                lab: self.options().lab.clone(),
                owner,
            }
            .into()),
            None => Ok(()),
        }
    }

    async fn take_down(&mut self) -> Result<String, LabError> {
        Ok(LocalLab::take_down(self, &guardlab_lab::NoProgress)
            .await?
            .to_string())
    }

    async fn counters(&self) -> Option<guardlab_lab::local::LabCounters> {
        // A lab that cannot say (its daemon is gone) has no counters to give.
        self.daemon_status()
            .await
            .ok()
            .flatten()
            .map(|status| status.counters)
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
            // Expecting none: only the whole timeout without a client says so.
            let enough = enough && check.clients > 0;
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
    const DOWN: &'static str = "`guardlab lab down --backend kind`";
    const STATUS: &'static str = "`guardlab lab status --backend kind`";
    const ABANDONED: &'static str =
        "what `up` applied stays on the cluster: `guardlab lab down --backend kind` removes it";

    async fn take_down(&mut self) -> Result<String, LabError> {
        // What `up` created, as its state file records it, before `down` removes the record.
        let created = guardlab_kind::state::LabState::load(&self.options().state_file())
            .ok()
            .flatten()
            .map(|state| state.created_objects_newest_first().len())
            .unwrap_or(0);
        self.down(&guardlab_lab::NoProgress).await?;
        Ok(format!(
            "removed the kind lab: the {created} objects `up` created deleted"
        ))
    }

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

/// Who a local lab belongs to: the run, unless it is kept (`--keep-lab`).
fn owner_of_run(scenario: &Scenario, keep_lab: bool) -> Option<String> {
    (!keep_lab).then(|| format!("guardlab scenario {}", scenario.name))
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

/// An environment variable's value, when it is set.
fn env_value(name: &str) -> Result<Option<String>, LabError> {
    match std::env::var(name) {
        Ok(value) => Ok(Some(value)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(bad_env(name, "it is not UTF-8".into())),
    }
}

/// Where `GUARDLAB_NOTEBOOK_ADDRESS` asks the local lab's notebook to be forwarded, if it does
/// (`scenario` and `lab up` read it; tests set `127.0.0.1:0`, any free port).
pub fn notebook_address_from_env() -> Result<Option<std::net::SocketAddr>, LabError> {
    let Some(text) = env_value(super::ENV_NOTEBOOK_ADDRESS)? else {
        return Ok(None);
    };
    text.parse().map(Some).map_err(|_| {
        bad_env(
            super::ENV_NOTEBOOK_ADDRESS,
            format!("{text:?} is not an address and port such as 127.0.0.1:1234"),
        )
    })
}

fn bad_env(name: &str, message: String) -> LabError {
    LabError::Input {
        file: None,
        line: None,
        field: Some(name.to_string()),
        message,
    }
}

impl LabBackend<LocalLab> {
    /// The scenario's local lab; it belongs to the run unless `keep_lab`.
    pub fn new(scenario: &Scenario, keep_lab: bool) -> Result<Self, LabError> {
        let name = env_value(super::ENV_LAB)?.unwrap_or_else(|| lab_name(scenario));
        let mut options = LocalLabOptions::new(&name);
        if let Some(address) = notebook_address_from_env()? {
            options.forward = Some(address);
        }
        options.owned_by = owner_of_run(scenario, keep_lab);
        Ok(LabBackend::with_lab(LocalLab::new(options)?))
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
    /// The scenario's backend on a lab made by the caller (tests: a kind lab on a fake API).
    pub fn with_lab(lab: L) -> Self {
        LabBackend {
            lab,
            info: None,
            events: None,
            workbench: None,
            started: false,
        }
    }
}

/// The notebook, once a `lab_up` step connected it.
fn connected(workbench: &mut Option<JupyterWorkbench>) -> Result<&mut JupyterWorkbench, StepError> {
    workbench.as_mut().ok_or(StepError::BeforeLabUp {
        what: "the notebook is not connected",
    })
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

/// Carry out what the engine decided through the lab; returns what was done.
async fn carry_out(lab: &mut impl Lab, decision: &Decision) -> Result<String, StepError> {
    let action = lab_action(decision);
    lab.carry_out(&action)
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

/// Run `action` (a cell, a terminal command), handing the lab's events to `sink` as they come
/// and carrying out at once the responses it decides, so that the engine flags and kills while
/// the action still runs. Events the action leaves in the channel are read by the runner after
/// it, in order. A sink that fails stops the action (the run stops).
async fn hand_over_while<T>(
    action: impl std::future::Future<Output = Result<T, StepError>>,
    lab: &mut impl Lab,
    events: &mut Option<mpsc::Receiver<Event>>,
    sink: &mut dyn EventSink,
) -> Result<T, StepError> {
    tokio::pin!(action);
    let Some(rx) = events.as_mut() else {
        return action.await;
    };
    loop {
        tokio::select! {
            done = &mut action => return done,
            event = rx.recv() => match event {
                Some(event) => {
                    for response in sink.event(event)? {
                        let outcome = carry_out(lab, response.decision()).await;
                        sink.carried_out(response, outcome)?;
                    }
                }
                // The stream ended: the next read of events says so and why.
                None => return action.await,
            },
        }
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
        self.lab.check_not_in_use().map_err(lab_err(L::LAB))?;
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
        events: &mut dyn EventSink,
    ) -> Result<(), StepError> {
        let LabBackend {
            lab,
            events: rx,
            workbench,
            ..
        } = self;
        let workbench = connected(workbench)?;
        let output = hand_over_while(workbench.run_cell(code, timeout), lab, rx, events).await?;
        out.output(&guardlab_jupyter::screen_text(&output), 5);
        Ok(())
    }

    async fn terminal_command(
        &mut self,
        session: &str,
        command: &TerminalCommand,
        out: &Console,
        events: &mut dyn EventSink,
    ) -> Result<String, StepError> {
        let LabBackend {
            lab,
            events: rx,
            workbench,
            ..
        } = self;
        let workbench = connected(workbench)?;
        let run = workbench.terminal_command(session, command);
        let output = hand_over_while(run, lab, rx, events).await?;
        out.output(&output, 3);
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
        carry_out(&mut self.lab, decision).await
    }

    async fn pool_clients(&mut self, check: &CheckPoolReached) -> Result<Vec<Json>, StepError> {
        self.lab.pool_clients(check).await
    }

    async fn apply_kernel_policy(
        &mut self,
        policy: Option<&guardlab_lab_api::KernelPolicy>,
    ) -> Result<(), StepError> {
        const WHAT: &str = "enforcing the policy in the kernel";
        // The pods running now (a killed pod is replaced under a new name).
        let info = match self.lab.status().await.map_err(lab_err(WHAT))? {
            Some(info) => info,
            None => self.info.clone().ok_or(StepError::BeforeLabUp {
                what: "no pod to enforce the policy on",
            })?,
        };
        let enforcement = guardlab_lab_api::Enforcement {
            executables: None,
            destinations: None,
            policy: policy.cloned(),
        };
        for pod in &info.pods {
            self.lab
                .enforce(pod, &enforcement)
                .await
                .map_err(lab_err(WHAT))?;
        }
        Ok(())
    }

    async fn lab_counters(&mut self) -> Option<guardlab_lab::local::LabCounters> {
        if self.started {
            self.lab.counters().await
        } else {
            None
        }
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

impl<L: LiveLab> Stoppable for LabBackend<L> {
    async fn stop_lab(&mut self, keep_lab: bool, signals: &mut StopSignals) -> LabAfterStop {
        if let Some(mut workbench) = self.workbench.take() {
            // Closing the notebook's connections is a courtesy; the lab goes anyway.
            let _ = tokio::time::timeout(Duration::from_secs(2), workbench.close()).await;
        }
        self.events = None;
        if !self.started {
            return LabAfterStop::NoLab;
        }
        if keep_lab {
            return LabAfterStop::Kept {
                how: format!(
                    "{} stays (--keep-lab): {} shows it, {} removes it",
                    L::TEAR_DOWN,
                    L::STATUS,
                    L::DOWN
                ),
            };
        }
        tokio::select! {
            removed = self.lab.take_down() => match removed {
                Ok(what) => LabAfterStop::Removed { what },
                Err(e) => LabAfterStop::NotRemoved {
                    error: e.to_string(),
                    how: format!("{} removes what is left", L::DOWN),
                },
            },
            signal = signals.next() => LabAfterStop::Abandoned {
                signal,
                how: L::ABANDONED.to_string(),
            },
        }
    }
}
