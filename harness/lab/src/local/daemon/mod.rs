//! The lab daemon: a detached process that owns the running lab (network namespaces, the pod,
//! the lab's services, the port-forward, the sensor) so that the lab outlives `lab up`.
//!
//! `lab up` writes `config.json` into the lab's directory, creates the lab's cgroup and starts
//! the daemon inside it; the daemon records every resource in the state file before it makes
//! it, reports its progress on stdout ([`StartMessage`]) and then serves clients on the control
//! socket ([`Request`](crate::local::protocol::Request)).
//!
//! Its parts, one purpose each: `recorder` (the state file, written through), `report`
//! (start messages and the daemon log), `pods` (make, reap, replace a pod) with
//! `pod_files` (what a kubelet writes into a container) and `readiness` (the notebook's
//! probe), `forward` (the notebook's loopback port-forward), `supervisor` (a pod whose
//! first process ended is replaced), `control` (the control socket's server) and
//! `actions` (response actions, on the pods' processes only), `counters` (what the lab lost,
//! for `status` and the log) and `owner` (a lab that belongs to a run goes when the run goes).
//! This module starts them in order and stops the pods on SIGTERM.

mod actions;
mod control;
mod counters;
mod forward;
mod owner;
mod pod_files;
mod pods;
mod readiness;
mod recorder;
mod report;
mod supervisor;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};

use crate::local::cgroup;
use crate::local::config::DaemonConfig;
use crate::local::events::EventBus;
use crate::local::network::{self, LabNetwork};
use crate::local::pod::ExitStatus;
use crate::local::protocol::{DaemonStatus, StartMessage};
use crate::local::services::{LabServices, ServiceSockets};
use crate::local::state::{NetnsRecord, ProcessRecord, StateFile};
use crate::{Backend, IoContext, LabError, LabInfo};
use control::accept_clients;
use forward::forward_loop;
use pods::{RunningPod, create_pod};
use readiness::wait_ready;
use recorder::Recorder;
use report::{Reporter, log};
use supervisor::supervise;

/// What the daemon is started with: `guardlab lab daemon --lab-dir DIR` (a hidden subcommand
/// of the binary) or `guardlab-local-lab daemon --lab-dir DIR`, whose argument parsers build it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonOptions {
    /// The lab's directory, with the `config.json` that `lab up` wrote.
    pub lab_dir: PathBuf,
}

/// Run the lab daemon until it is killed (by `lab down`) or told to stop (SIGTERM). Its stdout
/// carries start messages for `lab up`; its stderr is the lab's daemon log.
///
/// It builds its own tokio runtime: call it from `main` before any runtime exists (not from
/// inside `block_on`).
pub fn daemon_main(options: DaemonOptions) -> Result<(), LabError> {
    let config = DaemonConfig::read(&options.lab_dir)?;
    let runtime = guardlab_host::runtime(2).context(|| "starting the daemon's runtime")?;
    let result = runtime.block_on(run(config));
    // What still runs (clients, services, the sensor's reader) ends with the process: do not
    // wait for it.
    runtime.shutdown_background();
    result
}

/// What went wrong in the lab daemon (part "the lab daemon" of a [`LabError`]), or with it as
/// `lab up` sees it start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The daemon was started without the state file that `lab up` writes first.
    #[error("{} is missing: the daemon is started by `lab up`", path.display())]
    NoState { path: PathBuf },
    /// The notebook's port-forward cannot listen on its address.
    #[error(
        "cannot listen on {address} for the notebook: {error}{}",
        busy_hint(error)
    )]
    NotebookPort {
        address: SocketAddr,
        error: std::io::Error,
    },
    /// The pod's first process ended before the notebook answered its readiness probe.
    #[error(
        "the pod's first process ended ({status}) before the notebook answered; its log: {log}"
    )]
    PodEnded { status: ExitStatus, log: String },
    /// A task of the daemon panicked or was cancelled.
    #[error("a task ended abnormally: {0}")]
    Task(tokio::task::JoinError),
    /// The daemon was started without a stdout to report on.
    #[error("it was started without a stdout to report on")]
    NoStdout,
    /// The daemon ended before it said the lab was ready or why it could not be.
    #[error("it ended without saying why; see {}", log.display())]
    EndedSilently { log: PathBuf },
}

impl From<DaemonError> for LabError {
    fn from(error: DaemonError) -> LabError {
        LabError::backend("the lab daemon", error)
    }
}

/// What to do about an address in use.
fn busy_hint(error: &std::io::Error) -> &'static str {
    if error.kind() == std::io::ErrorKind::AddrInUse {
        " (another lab or program uses it: `guardlab lab status`, or choose another port)"
    } else {
        ""
    }
}

struct Daemon {
    config: DaemonConfig,
    /// Where the notebook is forwarded on the host, as bound.
    forward_address: Option<SocketAddr>,
    recorder: Arc<Recorder>,
    network: LabNetwork,
    pods: Mutex<Vec<RunningPod>>,
    /// Serialises pod replacement (and stops it for good while the daemon removes its lab).
    pod_lifecycle: tokio::sync::Mutex<()>,
    events: Arc<EventBus>,
    services: Mutex<Option<LabServices>>,
    pod_exit: Mutex<Option<String>>,
    sensor: Mutex<Option<crate::local::sensor::SensorHandle>>,
}

async fn run(config: DaemonConfig) -> Result<(), LabError> {
    // Start messages go to `lab up`'s pipe; once `up` is gone (killed, or it stopped reading)
    // a write must fail with EPIPE, not end the daemon with SIGPIPE (whose default action
    // `guardlab`'s main restores). A handler replaces that action for the whole process.
    let _sigpipe = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::pipe())
        .context(|| "handling SIGPIPE")?;
    let reporter = Reporter;
    let file = StateFile::in_dir(&config.lab_dir);
    let mut state = file.load()?.ok_or_else(|| DaemonError::NoState {
        path: file.path().to_path_buf(),
    })?;
    state.daemon = ProcessRecord::of(std::process::id());
    state.phase = "starting".into();
    file.save(&state)?;
    let owner = state.owner.clone();
    let recorder = Arc::new(Recorder::new(file, state));

    // The control socket first, so `status` answers while the lab starts.
    let socket_path = config.lab_dir.join(crate::lab_files::SOCKET_FILE);
    let _ = std::fs::remove_file(&socket_path);
    let control = UnixListener::bind(&socket_path)
        .context(|| format!("binding {}", socket_path.display()))?;

    // Clients are answered from now on: "starting" until the lab is ready.
    let ready: Arc<std::sync::OnceLock<Arc<Daemon>>> = Arc::new(std::sync::OnceLock::new());
    let clients = tokio::spawn(accept_clients(control, ready.clone(), recorder.clone()));

    let lab_dir = config.lab_dir.clone();
    let serve = serve(config, recorder.clone(), ready.clone(), clients, &reporter);
    match &owner {
        // The lab stays until `lab down` (or SIGTERM).
        None => serve.await,
        Some(owner) => tokio::select! {
            result = serve => result,
            () = owner::ended(owner) => owner::remove_lab(owner, &lab_dir, &recorder, &ready).await,
        },
    }
}

/// Start the lab, then serve until SIGTERM. (Dropped at an await point when the lab's owner
/// ends: see [`owner`].)
async fn serve(
    config: DaemonConfig,
    recorder: Arc<Recorder>,
    ready: Arc<std::sync::OnceLock<Arc<Daemon>>>,
    clients: tokio::task::JoinHandle<()>,
    reporter: &Reporter,
) -> Result<(), LabError> {
    match start(config, recorder.clone(), reporter).await {
        Ok((daemon, forward)) => {
            let daemon = Arc::new(daemon);
            let info = daemon.info();
            // Logged before the state says ready: whoever sees the lab ready finds the line.
            let said = counters::log_now(&daemon);
            // The control server answers from the daemon before the state says ready: whoever
            // sees the state ready and asks gets "ready" too, not a starting lab's answer.
            let _ = ready.set(daemon.clone());
            daemon.recorder.update(|s| {
                s.phase = "ready".into();
                s.info = Some(info.clone());
            })?;
            if let Some(listener) = forward {
                tokio::spawn(forward_loop(listener, daemon.clone()));
            }
            tokio::spawn(supervise(daemon.clone()));
            tokio::spawn(counters::log_changes(daemon.clone(), said));
            reporter.send(&StartMessage::Ready { info });
            until_terminated(daemon).await
        }
        Err(error) => {
            clients.abort();
            reporter.send(&StartMessage::Failed {
                error: error.to_string(),
            });
            let _ = recorder.update(|s| s.phase = format!("failed: {error}"));
            // End the pods now; `down` (which `up` runs on failure) removes the rest.
            for pod in &recorder.snapshot().pods {
                let _ = cgroup::kill_tree(&pod.cgroup, Duration::from_secs(10));
            }
            Err(error)
        }
    }
}

async fn start(
    config: DaemonConfig,
    recorder: Arc<Recorder>,
    reporter: &Reporter,
) -> Result<(Daemon, Option<TcpListener>), LabError> {
    // The port-forward's listener early: a busy port fails before anything is made.
    let forward = match config.forward {
        Some(address) => match std::net::TcpListener::bind(address) {
            Ok(listener) => {
                let _ = listener.set_nonblocking(true);
                Some(
                    TcpListener::from_std(listener)
                        .context(|| format!("listening on {address}"))?,
                )
            }
            Err(error) => return Err(DaemonError::NotebookPort { address, error }.into()),
        },
        None => None,
    };

    reporter.phase("creating the lab network");
    let host_addresses = crate::local::services::host_addresses(&config);
    let network = {
        let mut record = |veth| recorder.update(|s| s.veths.push(veth));
        LabNetwork::create(&host_addresses, &mut record)?
    };
    recorder.update(|s| {
        for ns in [&network.internet, &network.pod] {
            s.netns.push(NetnsRecord {
                role: ns.role().to_string(),
                inode: ns.inode(),
            });
        }
    })?;
    reporter.detail(format!(
        "pod {} {}/{}, lab internet {} (no uplink)",
        network::POD_INTERFACE,
        network::POD_ADDRESS,
        network::POD_PREFIX,
        network::GATEWAY
    ));

    let events = Arc::new(EventBus::new());
    // The port actually bound (the configured one may be 0: any free port).
    let forward_address = forward.as_ref().and_then(|l| l.local_addr().ok());
    let daemon = Daemon {
        forward_address,
        config,
        recorder,
        network,
        pods: Mutex::new(Vec::new()),
        pod_lifecycle: tokio::sync::Mutex::new(()),
        events,
        services: Mutex::new(None),
        pod_exit: Mutex::new(None),
        sensor: Mutex::new(None),
    };
    start_rest(&daemon, reporter).await?;
    Ok((daemon, forward))
}

async fn start_rest(daemon: &Daemon, reporter: &Reporter) -> Result<(), LabError> {
    if let Some(services) = &daemon.config.services {
        reporter.phase("starting the lab's internet (DNS, web hosts, package index, mining pool)");
        let sockets = ServiceSockets::bind(&daemon.network.internet, services)?;
        let running = LabServices::start(&daemon.config, sockets).await?;
        for line in running.describe() {
            reporter.detail(line);
        }
        *daemon.services.lock().unwrap_or_else(|e| e.into_inner()) = Some(running);
    }
    if daemon.config.sensor {
        reporter.phase("starting the sensor");
        let handle = crate::local::sensor::start(daemon.events.clone())?;
        daemon.recorder.update(|s| {
            s.bpf_programs.extend(handle.program_ids());
            s.bpf_pins.extend(handle.pins());
        })?;
        *daemon.sensor.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
    }
    reporter.phase("starting the pod");
    let pod = create_pod(daemon, reporter).await?;
    reporter.phase(format!("waiting for the notebook in pod {}", pod.info.name));
    let exited = pod.exited.clone();
    daemon
        .pods
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(pod);
    wait_ready(daemon, exited).await
}

impl Daemon {
    fn notebook_url(&self) -> String {
        self.forward_address
            .map(|a| format!("http://{a}/"))
            .unwrap_or_default()
    }

    fn info(&self) -> LabInfo {
        let pods = self.pods.lock().unwrap_or_else(|e| e.into_inner());
        LabInfo {
            backend: Backend::Local,
            notebook_url: self.notebook_url(),
            pods: pods.iter().map(|p| p.info.clone()).collect(),
        }
    }

    fn status(&self) -> DaemonStatus {
        let state = self.recorder.snapshot();
        // Before the guards of the literal below, which live to its end: reading the counters
        // takes the sensor's lock too.
        let counters = counters::of(self);
        let pods = self.pods.lock().unwrap_or_else(|e| e.into_inner());
        DaemonStatus {
            phase: state.phase,
            info: LabInfo {
                backend: Backend::Local,
                notebook_url: self.notebook_url(),
                pods: pods.iter().map(|p| p.info.clone()).collect(),
            },
            daemon_pid: std::process::id(),
            services: self
                .services
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .map(|s| s.describe())
                .unwrap_or_default(),
            pod_exit: self
                .pod_exit
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            pod_log: pods.last().map(|p| p.record.dir.join("container.log")),
            sensor: self
                .sensor
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some(),
            owner: state.owner,
            counters,
        }
    }
}

/// Serve until SIGTERM, then stop the pods; `lab down` removes what remains.
async fn until_terminated(daemon: Arc<Daemon>) -> Result<(), LabError> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context(|| "handling SIGTERM")?;
    terminate.recv().await;
    log("SIGTERM: stopping the pods");
    log(&format!("events: {}", counters::of(&daemon).describe()));
    let pods: Vec<PathBuf> = daemon
        .recorder
        .snapshot()
        .pods
        .iter()
        .map(|p| p.cgroup.clone())
        .collect();
    for cgroup_path in pods {
        let _ = cgroup::kill_tree(&cgroup_path, Duration::from_secs(10));
    }
    let _ = daemon.recorder.update(|s| s.phase = "stopped".into());
    Ok(())
}
