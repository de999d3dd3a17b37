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

/// The local lab as a scenario backend.
pub struct LocalBackend {
    lab: LocalLab,
    info: Option<LabInfo>,
    events: Option<mpsc::Receiver<Event>>,
    workbench: Option<JupyterWorkbench>,
    /// The lab was brought up by this run (so it is ours to tear down).
    started: bool,
}

/// The lab's name: the scenario's namespace, else its name.
fn lab_name(scenario: &Scenario) -> String {
    scenario
        .lab
        .namespace
        .clone()
        .unwrap_or_else(|| scenario.name.clone())
}

impl LocalBackend {
    pub fn new(scenario: &Scenario) -> Result<Self, String> {
        let lab =
            LocalLab::new(LocalLabOptions::new(&lab_name(scenario))).map_err(|e| e.to_string())?;
        Ok(LocalBackend {
            lab,
            info: None,
            events: None,
            workbench: None,
            started: false,
        })
    }

    fn workbench(&mut self) -> Result<&mut JupyterWorkbench, BackendError> {
        self.workbench.as_mut().ok_or_else(|| {
            BackendError::Lab("the notebook is not connected (no lab_up step ran)".into())
        })
    }
}

/// What the engine decided, as the lab interface says it; `None` for what it cannot do.
pub fn lab_action(decision: &Decision) -> Option<LabAction> {
    let t = &decision.target;
    match decision.action {
        ActionKind::AgentKillProcess => Some(LabAction::KillProcess { pid: t.pid }),
        ActionKind::AgentKillProcessTree => Some(LabAction::KillProcessTree { pid: t.pid }),
        ActionKind::AgentKillPod => Some(LabAction::KillPod {
            namespace: t.namespace.clone(),
            name: t.pod.clone(),
        }),
        ActionKind::AgentKillProcessGroup => None,
    }
}

impl Backend for LocalBackend {
    fn name(&self) -> &'static str {
        "local"
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
        let lab_err = |e: guardlab_lab::LabError| BackendError::Lab(format!("the local lab: {e}"));
        if self.lab.status().await.map_err(lab_err)?.is_some() {
            out.detail(
                "a lab is up already: bringing it up afresh so that the baseline starts clean",
            );
            self.lab.down(&progress).await.map_err(lab_err)?;
        }
        self.started = true;
        let info = self.lab.up(&progress).await.map_err(lab_err)?;
        out.detail(format!("notebook: {}", info.notebook_url));
        for pod in &info.pods {
            out.detail(format!(
                "pod {}/{} ({})",
                pod.namespace, pod.name, pod.image
            ));
        }
        self.events = Some(self.lab.events().await.map_err(lab_err)?);
        let workbench = JupyterWorkbench::connect(&info.notebook_url).await?;
        self.workbench = Some(workbench);
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
    ) -> Result<(), BackendError> {
        let output = self.workbench()?.terminal_command(session, command).await?;
        for line in output.lines().take(3) {
            out.detail(format!("| {line}"));
        }
        Ok(())
    }

    async fn next_event(&mut self, deadline: Instant) -> Result<Option<Event>, BackendError> {
        let Some(rx) = self.events.as_mut() else {
            return Err(BackendError::Lab(
                "the lab's events are not flowing (no lab_up step ran)".into(),
            ));
        };
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(e)) => Ok(Some(e)),
            Ok(None) => Err(BackendError::Lab(
                "the lab's event stream ended (did the lab daemon stop?)".into(),
            )),
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
        let deadline = Instant::now() + check.timeout.0;
        loop {
            let visitors = self
                .lab
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

    async fn finish(&mut self, keep: bool, out: &Console) -> Result<(), BackendError> {
        if let Some(mut w) = self.workbench.take() {
            w.close().await;
        }
        self.events = None;
        if keep {
            if let Some(info) = &self.info {
                out.line(format!(
                    "The lab stays up (--keep-lab): open {} ; `guardlab lab down` removes it.",
                    info.notebook_url
                ));
            }
            return Ok(());
        }
        if !self.started {
            return Ok(());
        }
        out.line("Tearing the lab down.");
        self.lab
            .down(&ConsoleProgress { quiet: out.quiet })
            .await
            .map_err(|e| BackendError::Lab(format!("tearing the lab down: {e}")))
    }
}

/// The kind lab (`guardlab-kind`) as a scenario backend: the same steps against the real
/// `jupyter/minimal-notebook` image on a Kubernetes cluster, with the sensor's DaemonSet
/// streaming the pod's events through a port-forward, and responses carried out through the API
/// (pod deletion) or by the sensor on the pod's node (process kills).
pub struct KindBackend {
    lab: KindLab,
    info: Option<LabInfo>,
    events: Option<mpsc::Receiver<Event>>,
    workbench: Option<JupyterWorkbench>,
    started: bool,
}

impl KindBackend {
    pub fn new(scenario: &Scenario) -> Self {
        let mut options = KindOptions::default();
        if let Some(namespace) = &scenario.lab.namespace {
            options.namespace = namespace.clone();
        }
        KindBackend {
            lab: KindLab::new(options),
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

fn kind_err(what: &str) -> impl Fn(guardlab_lab::LabError) -> BackendError + '_ {
    move |e| BackendError::Lab(format!("{what}: {e}"))
}

impl Backend for KindBackend {
    fn name(&self) -> &'static str {
        "kind"
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
        // A lab left up by `lab up --backend kind` or --keep-lab is removed first: the
        // baseline must start from a fresh pod. Without a state file this touches nothing.
        if self
            .lab
            .status()
            .await
            .map_err(kind_err("the kind lab"))?
            .is_some()
        {
            out.detail(
                "a kind lab is up already: bringing it up afresh so that the baseline starts clean",
            );
            self.lab
                .down(&progress)
                .await
                .map_err(kind_err("the kind lab"))?;
        }
        self.started = true;
        let info = self
            .lab
            .up(&progress)
            .await
            .map_err(kind_err("the kind lab"))?;
        out.detail(format!("notebook: {}", info.notebook_url));
        for pod in &info.pods {
            out.detail(format!(
                "pod {}/{} ({})",
                pod.namespace, pod.name, pod.image
            ));
        }
        self.events = Some(
            self.lab
                .events()
                .await
                .map_err(kind_err("the sensor's events"))?,
        );
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
    ) -> Result<(), BackendError> {
        let output = self.workbench()?.terminal_command(session, command).await?;
        for line in output.lines().take(3) {
            out.detail(format!("| {line}"));
        }
        Ok(())
    }

    async fn next_event(&mut self, deadline: Instant) -> Result<Option<Event>, BackendError> {
        let Some(rx) = self.events.as_mut() else {
            return Err(BackendError::Lab(
                "the sensor's events are not flowing (no lab_up step ran)".into(),
            ));
        };
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(e)) => Ok(Some(e)),
            Ok(None) => Err(BackendError::Lab(
                "the sensor's event stream ended (is the guardlab-sensor DaemonSet still running?)"
                    .into(),
            )),
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
        // The local lab runs its own mining pool in a network namespace; a cluster has none
        // (and guardlab sends no traffic to a real one), so there is nobody to ask.
        Err(BackendError::Check(format!(
            "the kind lab has no mining pool of its own to ask whether {} client(s) logged in: this check only runs on the local backend",
            check.clients
        )))
    }

    async fn finish(&mut self, keep: bool, out: &Console) -> Result<(), BackendError> {
        if let Some(mut w) = self.workbench.take() {
            w.close().await;
        }
        self.events = None;
        if keep {
            if let Some(info) = &self.info {
                out.line(format!(
                    "The kind lab stays up (--keep-lab), but the port-forward ends with this run: \
                     `guardlab lab up --backend kind` forwards {} again; `guardlab lab down --backend kind` removes it.",
                    info.notebook_url
                ));
            }
            return Ok(());
        }
        if !self.started {
            return Ok(());
        }
        out.line("Tearing the kind lab down.");
        self.lab
            .down(&ConsoleProgress { quiet: out.quiet })
            .await
            .map_err(|e| BackendError::Lab(format!("tearing the kind lab down: {e}")))
    }
}
