//! The live backends: a lab from `guardlab-lab` (the local one: namespaces and a cgroup on this
//! host, with the eBPF sensor) or from `guardlab-kind` (a kind cluster, or an existing one, with
//! the sensor as a DaemonSet), the notebook and its terminals driven through Jupyter's own APIs
//! as a learner's browser would (on kind, through the port-forward at 127.0.0.1:1234).
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
use guardlab_jupyter::{JupyterClient, JupyterError, Kernel, Terminal};
use guardlab_kind::{KindLab, KindOptions};
use guardlab_lab::{Lab, LabAction, LabInfo, LocalLab, LocalLabOptions};

use crate::report::ConsoleProgress;
use serde_json::Value as Json;
use tokio::sync::mpsc;

use super::file::{CheckPoolReached, Scenario, Step, TerminalCommand};
use super::runner::{Backend, BackendError, Console};

/// What a live run needs from the notebook: cells and terminals, through Jupyter's APIs.
#[allow(async_fn_in_trait)] // Used through generics only.
pub trait Workbench {
    /// Run a cell in the notebook's kernel (started on first use); returns its output.
    async fn run_cell(&mut self, code: &str, timeout: Duration) -> Result<String, BackendError>;
    /// Type a command line into the terminal of a session (opened on first use). A foreground
    /// command is waited for (the shell's prompt); a background one is left running.
    async fn terminal_command(
        &mut self,
        session: &str,
        command: &TerminalCommand,
    ) -> Result<String, BackendError>;
    /// End what still runs in the terminals, close them and the kernel.
    async fn close(&mut self);
}

/// How long a background command gets to show its first output before it is left running.
const BACKGROUND_GRACE: Duration = Duration::from_millis(500);

/// The Jupyter driver (`guardlab-jupyter`) as the scenario's [`Workbench`].
pub struct JupyterWorkbench {
    client: JupyterClient,
    kernel: Option<Kernel>,
    /// Open terminals by session name, and whether a background command still runs there.
    terminals: Vec<(String, Terminal, bool)>,
}

fn driver(what: &str) -> impl Fn(JupyterError) -> BackendError + '_ {
    move |e| BackendError::Lab(format!("{what}: {e}"))
}

impl JupyterWorkbench {
    pub async fn connect(url: &str) -> Result<Self, BackendError> {
        let client = JupyterClient::new(url).map_err(driver("the notebook"))?;
        client
            .wait_until_up(Duration::from_secs(60))
            .await
            .map_err(driver("the notebook"))?;
        Ok(JupyterWorkbench {
            client,
            kernel: None,
            terminals: Vec::new(),
        })
    }
}

impl Workbench for JupyterWorkbench {
    async fn run_cell(&mut self, code: &str, timeout: Duration) -> Result<String, BackendError> {
        if self.kernel.is_none() {
            self.kernel = Some(
                self.client
                    .start_kernel()
                    .await
                    .map_err(driver("starting a kernel"))?,
            );
        }
        let kernel = self.kernel.as_mut().expect("started above");
        let cell = kernel
            .run_cell(code, timeout)
            .await
            .map_err(driver("running the cell"))?;
        let mut output = cell.stdout.clone();
        output.push_str(&cell.stderr);
        if let Some(e) = &cell.error {
            return Err(BackendError::Check(format!(
                "the cell failed: {}: {}",
                e.ename, e.evalue
            )));
        }
        if cell.status != "ok" {
            return Err(BackendError::Check(format!(
                "the cell ended with status {:?}",
                cell.status
            )));
        }
        Ok(output)
    }

    async fn terminal_command(
        &mut self,
        session: &str,
        command: &TerminalCommand,
    ) -> Result<String, BackendError> {
        let index = match self
            .terminals
            .iter()
            .position(|(name, _, _)| name == session)
        {
            Some(i) => i,
            None => {
                let t = self
                    .client
                    .open_terminal()
                    .await
                    .map_err(driver("opening a terminal"))?;
                self.terminals.push((session.to_string(), t, false));
                self.terminals.len() - 1
            }
        };
        let (_, terminal, busy) = &mut self.terminals[index];
        if *busy {
            // The background command of an earlier line still runs: end it first, as a person
            // would with Ctrl-C.
            terminal
                .interrupt(Duration::from_secs(10))
                .await
                .map_err(driver("Ctrl-C in the terminal"))?;
            *busy = false;
        }
        let answers: Vec<(&str, &str)> = command
            .answers
            .iter()
            .map(|a| (a.prompt.as_str(), a.reply.as_str()))
            .collect();
        let limit = if command.background {
            BACKGROUND_GRACE
        } else {
            command.timeout.0
        };
        match terminal.run_answering(&command.run, &answers, limit).await {
            Ok(result) => {
                let mut out = result.output;
                if result.exit_status != 0 {
                    out.push_str(&format!("\n(exit status {})", result.exit_status));
                }
                Ok(out)
            }
            Err(JupyterError::Timeout { partial, .. }) if command.background => {
                *busy = true;
                Ok(partial)
            }
            Err(e @ JupyterError::Timeout { .. }) => Err(BackendError::Check(format!(
                "`{}` did not finish: {e}",
                command.run
            ))),
            Err(e) => Err(driver("the terminal")(e)),
        }
    }

    async fn close(&mut self) {
        for (_, mut terminal, busy) in self.terminals.drain(..) {
            if busy {
                let _ = terminal.interrupt(Duration::from_secs(5)).await;
            }
            let _ = terminal.close().await;
        }
        if let Some(kernel) = self.kernel.take() {
            let _ = kernel.close().await;
        }
    }
}

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
    /// The event stream is asked for before any `lab_up` step.
    const EVENTS_NOT_FLOWING: &'static str;
    /// The event stream ended.
    const EVENTS_ENDED: &'static str;
    /// The lab in `Tearing ... down.`: `the lab`, `the kind lab`.
    const TEAR_DOWN: &'static str;

    /// Said at the end of a `--keep-lab` run, with the notebook's address.
    fn kept_up(notebook_url: &str) -> String;

    /// Said when the event stream ended: [`Self::EVENTS_ENDED`], and why, when the lab knows.
    fn events_ended(&self) -> String {
        Self::EVENTS_ENDED.to_string()
    }

    /// The lab's mining pool's clients, waiting up to the check's timeout for enough of them.
    async fn pool_clients(&mut self, check: &CheckPoolReached) -> Result<Vec<Json>, BackendError>;
}

impl LiveLab for LocalLab {
    const LAB: &'static str = "the local lab";
    const ALREADY_UP: &'static str =
        "a lab is up already: bringing it up afresh so that the baseline starts clean";
    const EVENTS: &'static str = "the local lab";
    const EVENTS_NOT_FLOWING: &'static str =
        "the lab's events are not flowing (no lab_up step ran)";
    const EVENTS_ENDED: &'static str = "the lab's event stream ended (did the lab daemon stop?)";
    const TEAR_DOWN: &'static str = "the lab";

    fn kept_up(notebook_url: &str) -> String {
        format!(
            "The lab stays up (--keep-lab): open {notebook_url} ; `guardlab lab down` removes it."
        )
    }

    async fn pool_clients(&mut self, check: &CheckPoolReached) -> Result<Vec<Json>, BackendError> {
        let deadline = Instant::now() + check.timeout.0;
        loop {
            let visitors = self
                .visitors()
                .await
                .map_err(|e| BackendError::Lab(format!("the lab's pool: {e}")))?;
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
    const EVENTS_NOT_FLOWING: &'static str =
        "the sensor's events are not flowing (no lab_up step ran)";
    const EVENTS_ENDED: &'static str =
        "the sensor's event stream ended (is the guardlab-sensor DaemonSet still running?)";
    const TEAR_DOWN: &'static str = "the kind lab";

    fn events_ended(&self) -> String {
        match self.event_stream_failure() {
            Some(why) => format!("{}: {why}", Self::EVENTS_ENDED),
            None => Self::EVENTS_ENDED.to_string(),
        }
    }

    fn kept_up(notebook_url: &str) -> String {
        format!(
            "The kind lab stays up (--keep-lab), but the port-forward ends with this run: \
             `guardlab lab up --backend kind` forwards {notebook_url} again; `guardlab lab down --backend kind` removes it."
        )
    }

    async fn pool_clients(&mut self, check: &CheckPoolReached) -> Result<Vec<Json>, BackendError> {
        // The local lab runs its own mining pool in a network namespace; a cluster has none
        // (and guardlab sends no traffic to a real one), so there is nobody to ask.
        Err(BackendError::Check(format!(
            "the kind lab has no mining pool of its own to ask whether {} client(s) logged in: this check only runs on the local backend",
            check.clients
        )))
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
    pub fn new(scenario: &Scenario) -> Result<Self, String> {
        let lab =
            LocalLab::new(LocalLabOptions::new(&lab_name(scenario))).map_err(|e| e.to_string())?;
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

    fn workbench(&mut self) -> Result<&mut JupyterWorkbench, BackendError> {
        self.workbench.as_mut().ok_or_else(|| {
            BackendError::Lab("the notebook is not connected (no lab_up step ran)".into())
        })
    }
}

/// What the engine decided, as the lab interface says it (`None` would be an action it has no
/// word for; every response action has one now).
pub fn lab_action(decision: &Decision) -> Option<LabAction> {
    let t = &decision.target;
    match decision.action {
        ActionKind::AgentKillProcess => Some(LabAction::KillProcess { pid: t.pid }),
        ActionKind::AgentKillProcessTree => Some(LabAction::KillProcessTree { pid: t.pid }),
        ActionKind::AgentKillPod => Some(LabAction::KillPod {
            namespace: t.namespace.clone(),
            name: t.pod.clone(),
        }),
        ActionKind::AgentKillProcessGroup => Some(LabAction::KillProcessGroup { pid: t.pid }),
    }
}

fn lab_err(what: &str) -> impl Fn(guardlab_lab::LabError) -> BackendError + '_ {
    move |e| BackendError::Lab(format!("{what}: {e}"))
}

impl<L: LiveLab> Backend for LabBackend<L> {
    fn name(&self) -> &'static str {
        self.lab.backend().name()
    }

    fn is_live(&self) -> bool {
        true
    }

    fn begin_step(&mut self, _index: usize, _step: &Step) -> Result<(), BackendError> {
        Ok(())
    }

    fn end_step(&mut self, _index: usize, _step: &Step, _facts: &BTreeMap<String, Json>) {}

    async fn lab_up(&mut self, out: &Console) -> Result<(), BackendError> {
        let progress = ConsoleProgress { quiet: out.quiet };
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
    ) -> Result<(), BackendError> {
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
    ) -> Result<String, BackendError> {
        let output = self.workbench()?.terminal_command(session, command).await?;
        for line in output.lines().take(3) {
            out.detail(format!("| {line}"));
        }
        Ok(output)
    }

    async fn next_event(&mut self, deadline: Instant) -> Result<Option<Event>, BackendError> {
        let Some(rx) = self.events.as_mut() else {
            return Err(BackendError::Lab(L::EVENTS_NOT_FLOWING.into()));
        };
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(e)) => Ok(Some(e)),
            Ok(None) => Err(BackendError::Lab(self.lab.events_ended())),
            Err(_) => Ok(None),
        }
    }

    async fn drain(&mut self) -> Result<Vec<Event>, BackendError> {
        let mut out = Vec::new();
        if let Some(rx) = self.events.as_mut() {
            while let Ok(e) = rx.try_recv() {
                out.push(e);
            }
        }
        Ok(out)
    }

    async fn carry_out(&mut self, decision: &Decision) -> Result<String, BackendError> {
        let Some(action) = lab_action(decision) else {
            return Err(BackendError::Check(format!(
                "{} is not something the lab interface can carry out",
                decision.action.as_str()
            )));
        };
        self.lab
            .carry_out(&action)
            .await
            .map(|()| format!("carried out: {action:?}"))
            .map_err(|e| BackendError::Check(format!("carrying out {action:?}: {e}")))
    }

    async fn pool_clients(&mut self, check: &CheckPoolReached) -> Result<Vec<Json>, BackendError> {
        self.lab.pool_clients(check).await
    }

    async fn finish(&mut self, keep: bool, out: &Console) -> Result<(), BackendError> {
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
            .down(&ConsoleProgress { quiet: out.quiet })
            .await
            .map_err(|e| BackendError::Lab(format!("tearing {} down: {e}", L::TEAR_DOWN)))
    }
}
