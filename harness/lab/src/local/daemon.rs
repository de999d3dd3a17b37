//! The lab daemon: a detached process that owns the running lab (network namespaces, the pod,
//! the lab's services, the port-forward, the sensor) so that the lab outlives `lab up`.
//!
//! `lab up` writes `config.json` into the lab's directory, creates the lab's cgroup and starts
//! the daemon inside it; the daemon records every resource in the state file before it makes
//! it, reports its progress on stdout ([`StartMessage`]) and then serves clients on the control
//! socket ([`Request`]).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use guardlab_events::Event;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::{broadcast, watch};

use crate::local::cgroup;
use crate::local::config::{DaemonConfig, PodRuntime};
use crate::local::events::EventBus;
use crate::local::network::{self, LabNetwork};
use crate::local::pod::{self, ExitStatus};
use crate::local::protocol::{DaemonStatus, Reply, Request, StartMessage};
use crate::local::services::{LabServices, ServiceSockets};
use crate::local::state::{LabState, NetnsRecord, PodRecord, ProcessRecord, StateFile};
use crate::{LabAction, LabError, LabInfo, PodInfo};

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
    let runtime = guardlab_host::runtime(2).map_err(|source| LabError::Io {
        context: "starting the daemon's runtime".into(),
        source,
    })?;
    runtime.block_on(run(config))
}

/// Start messages on stdout; once `lab up` is gone, writing fails and is ignored.
struct Reporter;

impl Reporter {
    fn send(&self, message: &StartMessage) {
        use std::io::Write;
        if let Ok(mut line) = serde_json::to_vec(message) {
            line.push(b'\n');
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&line).and_then(|()| out.flush());
        }
        match message {
            StartMessage::Phase { text } | StartMessage::Detail { text } => log(text),
            StartMessage::Ready { info } => log(&format!("ready: {}", info.notebook_url)),
            StartMessage::Failed { error } => log(&format!("failed: {error}")),
        }
    }
    fn phase(&self, text: impl Into<String>) {
        self.send(&StartMessage::Phase { text: text.into() });
    }
    fn detail(&self, text: impl Into<String>) {
        self.send(&StartMessage::Detail { text: text.into() });
    }
}

fn log(text: &str) {
    let now = guardlab_host::unix_time_ns();
    eprintln!(
        "[{}.{:03}] {text}",
        now / 1_000_000_000,
        now / 1_000_000 % 1000
    );
}

/// The state file, kept in memory and written through on every change.
struct Recorder {
    file: StateFile,
    state: Mutex<LabState>,
}

impl Recorder {
    fn update(&self, change: impl FnOnce(&mut LabState)) -> Result<(), LabError> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        change(&mut state);
        self.file.save(&state)
    }
    fn snapshot(&self) -> LabState {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A pod the daemon runs.
struct RunningPod {
    info: PodInfo,
    record: PodRecord,
    /// Set when the first process exits.
    exited: watch::Receiver<Option<ExitStatus>>,
}

struct Daemon {
    config: DaemonConfig,
    /// Where the notebook is forwarded on the host, as bound.
    forward_address: Option<SocketAddr>,
    recorder: Recorder,
    network: LabNetwork,
    pods: Mutex<Vec<RunningPod>>,
    /// Serialises pod replacement.
    pod_lifecycle: tokio::sync::Mutex<()>,
    events: Arc<EventBus>,
    services: Mutex<Option<LabServices>>,
    pod_exit: Mutex<Option<String>>,
    sensor: Mutex<Option<crate::local::sensor::SensorHandle>>,
}

async fn run(config: DaemonConfig) -> Result<(), LabError> {
    let reporter = Reporter;
    let file = StateFile::in_dir(&config.lab_dir);
    let mut state = file.load()?.ok_or_else(|| {
        LabError::Failed(format!(
            "{} is missing: the daemon is started by `lab up`",
            file.path().display()
        ))
    })?;
    state.daemon = ProcessRecord::of(std::process::id());
    state.phase = "starting".into();
    file.save(&state)?;
    let recorder = Recorder {
        file,
        state: Mutex::new(state),
    };

    // The control socket first, so `status` answers while the lab starts.
    let socket_path = config.lab_dir.join(crate::local::state::SOCKET_FILE);
    let _ = std::fs::remove_file(&socket_path);
    let control = UnixListener::bind(&socket_path).map_err(|source| LabError::Io {
        context: format!("binding {}", socket_path.display()),
        source,
    })?;

    // Clients are answered from now on: "starting" until the lab is ready.
    let ready: Arc<std::sync::OnceLock<Arc<Daemon>>> = Arc::new(std::sync::OnceLock::new());
    let clients = tokio::spawn(accept_clients(control, ready.clone()));

    match start(config, recorder, &reporter).await {
        Ok((daemon, forward)) => {
            let daemon = Arc::new(daemon);
            let info = daemon.info();
            daemon.recorder.update(|s| {
                s.phase = "ready".into();
                s.info = Some(info.clone());
            })?;
            if let Some(listener) = forward {
                tokio::spawn(forward_loop(listener, daemon.clone()));
            }
            tokio::spawn(supervise(daemon.clone()));
            let _ = ready.set(daemon.clone());
            reporter.send(&StartMessage::Ready { info });
            until_terminated(daemon).await
        }
        Err((error, recorder)) => {
            clients.abort();
            reporter.send(&StartMessage::Failed {
                error: error.to_string(),
            });
            if let Some(recorder) = recorder {
                let _ = recorder.update(|s| s.phase = format!("failed: {error}"));
                // End the pods now; `down` (which `up` runs on failure) removes the rest.
                for pod in &recorder.snapshot().pods {
                    let _ = cgroup::kill_tree(&pod.cgroup, Duration::from_secs(10));
                }
            }
            Err(error)
        }
    }
}

type StartFailure = (LabError, Option<Recorder>);

async fn start(
    config: DaemonConfig,
    recorder: Recorder,
    reporter: &Reporter,
) -> Result<(Daemon, Option<TcpListener>), StartFailure> {
    // The port-forward's listener early: a busy port fails before anything is made.
    let forward = match config.forward {
        Some(address) => match std::net::TcpListener::bind(address) {
            Ok(listener) => {
                let _ = listener.set_nonblocking(true);
                match TcpListener::from_std(listener) {
                    Ok(listener) => Some(listener),
                    Err(source) => {
                        return Err((
                            LabError::Io {
                                context: format!("listening on {address}"),
                                source,
                            },
                            Some(recorder),
                        ));
                    }
                }
            }
            Err(source) => {
                let hint = if source.kind() == std::io::ErrorKind::AddrInUse {
                    " (another lab or program uses it: `guardlab lab status`, or choose another port)"
                } else {
                    ""
                };
                return Err((
                    LabError::Failed(format!(
                        "cannot listen on {address} for the notebook: {source}{hint}"
                    )),
                    Some(recorder),
                ));
            }
        },
        None => None,
    };

    reporter.phase("creating the lab network");
    let host_addresses = crate::local::services::host_addresses(&config);
    let network = {
        let mut record = |veth| recorder.update(|s| s.veths.push(veth));
        match LabNetwork::create(&host_addresses, &mut record) {
            Ok(network) => network,
            Err(e) => return Err((e, Some(recorder))),
        }
    };
    if let Err(e) = recorder.update(|s| {
        for ns in [&network.internet, &network.pod] {
            s.netns.push(NetnsRecord {
                role: ns.role().to_string(),
                inode: ns.inode(),
            });
        }
    }) {
        return Err((e, Some(recorder)));
    }
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
    match start_rest(&daemon, reporter).await {
        Ok(()) => Ok((daemon, forward)),
        Err(e) => {
            let Daemon { recorder, .. } = daemon;
            Err((e, Some(recorder)))
        }
    }
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
            backend: "local".into(),
            notebook_url: self.notebook_url(),
            pods: pods.iter().map(|p| p.info.clone()).collect(),
        }
    }

    fn status(&self) -> DaemonStatus {
        let state = self.recorder.snapshot();
        let pods = self.pods.lock().unwrap_or_else(|e| e.into_inner());
        DaemonStatus {
            phase: state.phase,
            info: LabInfo {
                backend: "local".into(),
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
        }
    }
}

/// Largest size of a pod's writable layer (tmpfs; only what is written uses memory).
const POD_LAYER_SIZE: &str = "4g";

/// A pod name suffix as Kubernetes makes them (5 characters of its safe alphabet).
fn pod_suffix() -> String {
    crate::local::manifest::kube_safe_hash(guardlab_host::random_hex(16).as_bytes(), 5)
}

async fn create_pod(daemon: &Daemon, reporter: &Reporter) -> Result<RunningPod, LabError> {
    let config = &daemon.config;
    let template = &config.pod;
    let name = format!(
        "{}-{}-{}",
        template.deployment,
        template.template_hash,
        pod_suffix()
    );
    let record = PodRecord {
        name: name.clone(),
        cgroup: config.cgroup.join(format!("pod-{name}")),
        dir: config.lab_dir.join("pods").join(&name),
        root: None,
    };
    daemon.recorder.update(|s| s.pods.push(record.clone()))?;
    let io = |what: String| {
        move |source| LabError::Io {
            context: what,
            source,
        }
    };
    std::fs::create_dir_all(&record.dir)
        .map_err(io(format!("creating {}", record.dir.display())))?;
    // The pod's writable layer lives on its own tmpfs: it is thrown away with the pod, and
    // removing it is an unmount instead of deleting every file pip wrote.
    daemon
        .recorder
        .update(|s| s.host_mounts.push(record.dir.clone()))?;
    nix::mount::mount(
        Some("guardlab-pod"),
        &record.dir,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
        Some(format!("mode=0700,size={}", POD_LAYER_SIZE).as_str()),
    )
    .map_err(|e| {
        LabError::Failed(format!(
            "mounting the pod's writable layer on {}: {e}",
            record.dir.display()
        ))
    })?;
    cgroup::create(&record.cgroup)?;

    let runtime: &PodRuntime = &config.runtime;
    let spec = runtime.container_spec(template, &record.dir, &name)?;
    write_pod_files(daemon, &spec, &name)?;
    reporter.detail(format!(
        "pod {}/{name}: {}",
        template.namespace,
        spec.argv.join(" ")
    ));

    let cgroup_id = cgroup::cgroup_id(&record.cgroup)?;
    let mut labels = template.labels.clone();
    labels.insert("pod-template-hash".into(), template.template_hash.clone());
    let mut info = PodInfo {
        namespace: template.namespace.clone(),
        name: name.clone(),
        labels,
        container_name: template.container_name.clone(),
        container_id: guardlab_host::random_hex(32),
        image: runtime.image.clone(),
        image_id: runtime.image_id.clone(),
        cgroup_path: Some(record.cgroup.clone()),
        cgroup_id: Some(cgroup_id),
        root_pid: None,
    };
    // Watch before the first process runs: its exec is the root of the pod's process tree.
    if let Some(sensor) = daemon
        .sensor
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_mut()
    {
        sensor.watch(&info, &template.namespace_labels)?;
    }

    let netns_fd = daemon.network.pod.raw_fd();
    let cgroup_path = record.cgroup.clone();
    let recorder_state = &daemon.recorder;
    let pod_name = name.clone();
    // The clone runs on this thread: the child is a copy of it alone.
    let spawned = tokio::task::block_in_place(|| {
        pod::spawn(&spec, &cgroup_path, netns_fd, |pid| {
            recorder_state.update(|s| {
                if let Some(p) = s.pods.iter_mut().find(|p| p.name == pod_name) {
                    p.root = ProcessRecord::of(pid);
                }
            })
        })
    });
    let process = match spawned {
        Ok(process) => process,
        Err(e) => {
            if let Some(sensor) = daemon
                .sensor
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_mut()
            {
                sensor.unwatch(&info);
            }
            return Err(e);
        }
    };
    info.root_pid = Some(process.pid);
    let record = daemon
        .recorder
        .snapshot()
        .pods
        .into_iter()
        .find(|p| p.name == name)
        .unwrap_or(record);
    // Reap the first process when it exits, and say so.
    let (exit_tx, exit_rx) = watch::channel(None);
    // SAFETY: the AsyncFd owns the pidfd and it stays open for as long as it is registered.
    let pidfd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(
            process.pidfd,
            tokio::io::Interest::READABLE,
        )
    }
    .map_err(|e| LabError::Io {
        context: "watching the pod's first process".into(),
        source: e.into_parts().1,
    })?;
    let pid = process.pid;
    tokio::spawn(async move {
        let _ = pidfd.readable().await;
        let status = pod::wait_pidfd(pidfd.get_ref());
        log(&format!("pod process {pid} ended: {status:?}"));
        let _ = exit_tx.send(Some(status.unwrap_or(ExitStatus::Code(-1))));
    });
    Ok(RunningPod {
        info,
        record,
        exited: exit_rx,
    })
}

/// Files a kubelet gives a container (hostname, hosts, resolv.conf), the lab CA in the system
/// bundle and the pip configuration: written into the pod's writable layer before it starts.
fn write_pod_files(daemon: &Daemon, spec: &pod::ContainerSpec, name: &str) -> Result<(), LabError> {
    let upper = spec.upper_dir();
    std::fs::create_dir_all(&upper).map_err(|source| LabError::Io {
        context: format!("creating {}", upper.display()),
        source,
    })?;
    let mut files: Vec<(&str, String)> = vec![
        ("etc/hostname", format!("{name}\n")),
        ("etc/hosts", network::etc_hosts(&spec.hostname)),
        (
            "etc/resolv.conf",
            network::resolv_conf(&daemon.config.pod.namespace),
        ),
    ];
    if let Some(services) = daemon
        .services
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
    {
        let image_bundle = spec
            .lower_dirs
            .iter()
            .find_map(|dir| {
                std::fs::read_to_string(dir.join("etc/ssl/certs/ca-certificates.crt")).ok()
            })
            .unwrap_or_default();
        let mut bundle = image_bundle;
        if !bundle.is_empty() && !bundle.ends_with('\n') {
            bundle.push('\n');
        }
        bundle.push_str("# guardlab lab CA\n");
        bundle.push_str(&services.ca_pem());
        files.push(("etc/ssl/certs/ca-certificates.crt", bundle));
        files.push(("etc/pip.conf", services.pip_conf()));
    }
    for (relative, content) in files {
        let path = upper.join(relative);
        if let Some(parent) = path.parent() {
            create_dirs_like_image(&upper, parent, &spec.lower_dirs)?;
        }
        std::fs::write(&path, content).map_err(|source| LabError::Io {
            context: format!("writing {}", path.display()),
            source,
        })?;
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .map_err(|source| LabError::Io {
                context: format!("chmod {}", path.display()),
                source,
            })?;
    }
    Ok(())
}

/// Create directories in the writable layer with the mode and owner they have in the image, so
/// the overlay shows them unchanged.
fn create_dirs_like_image(
    upper: &std::path::Path,
    dir: &std::path::Path,
    lowers: &[PathBuf],
) -> Result<(), LabError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let relative = dir.strip_prefix(upper).unwrap_or(dir);
    let mut current = upper.to_path_buf();
    for part in relative.components() {
        current.push(part);
        if current.exists() {
            continue;
        }
        std::fs::create_dir(&current).map_err(|source| LabError::Io {
            context: format!("creating {}", current.display()),
            source,
        })?;
        let in_image = lowers.iter().find_map(|l| {
            std::fs::metadata(l.join(current.strip_prefix(upper).unwrap_or(&current))).ok()
        });
        let (mode, uid, gid) = in_image
            .map(|m| (m.mode() & 0o7777, m.uid(), m.gid()))
            .unwrap_or((0o755, 0, 0));
        std::fs::set_permissions(&current, std::fs::Permissions::from_mode(mode)).map_err(
            |source| LabError::Io {
                context: format!("chmod {}", current.display()),
                source,
            },
        )?;
        std::os::unix::fs::chown(&current, Some(uid), Some(gid)).map_err(|source| {
            LabError::Io {
                context: format!("chown {}", current.display()),
                source,
            }
        })?;
    }
    Ok(())
}

/// Wait until the notebook answers `GET /api` inside the pod (the Deployment's readiness
/// probe), or the pod's first process exits, or the start timeout passes.
async fn wait_ready(
    daemon: &Daemon,
    mut exited: watch::Receiver<Option<ExitStatus>>,
) -> Result<(), LabError> {
    let port = daemon.config.pod.http_port().unwrap_or(8888);
    let timeout = Duration::from_secs(daemon.config.ready_timeout_secs);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(status) = *exited.borrow() {
            return Err(LabError::Failed(format!(
                "the pod's first process ended ({status}) before the notebook answered; its log: {}",
                log_tail(daemon)
            )));
        }
        if probe(daemon, port).await {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(LabError::Failed(format!(
                "the notebook did not answer on port {port} within {timeout:?}; its log: {}",
                log_tail(daemon)
            )));
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = exited.changed() => {}
        }
    }
}

fn log_tail(daemon: &Daemon) -> String {
    let pods = daemon.pods.lock().unwrap_or_else(|e| e.into_inner());
    let Some(pod) = pods.last() else {
        return String::new();
    };
    let text = std::fs::read_to_string(pod.record.dir.join("container.log")).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(15)..];
    format!("\n  {}", tail.join("\n  "))
}

/// One readiness probe: `GET /api` from the pod's own loopback.
async fn probe(daemon: &Daemon, port: u16) -> bool {
    let Ok(socket) = daemon.network.pod.tcp_socket(false).await else {
        return false;
    };
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(Ok(mut stream)) =
        tokio::time::timeout(Duration::from_secs(2), socket.connect(address)).await
    else {
        return false;
    };
    let request = format!("GET /api HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    matches!(
        tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut status_line)).await,
        Ok(Ok(_))
    ) && status_line.split_whitespace().nth(1) == Some("200")
}

/// 127.0.0.1:<port> on the host to the notebook's port, through the pod's loopback (as
/// `kubectl port-forward` does).
async fn forward_loop(listener: TcpListener, daemon: Arc<Daemon>) {
    let port = daemon.config.pod.http_port().unwrap_or(8888);
    loop {
        let (mut client, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let daemon = daemon.clone();
        tokio::spawn(async move {
            let Ok(socket) = daemon.network.pod.tcp_socket(false).await else {
                return;
            };
            let Ok(mut upstream) = socket
                .connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
                .await
            else {
                return;
            };
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        });
    }
}

/// Watch the pod: when its first process ends by itself, replace the pod as its Deployment
/// would, with a growing delay; give up after repeated quick failures.
async fn supervise(daemon: Arc<Daemon>) {
    let mut failures: u32 = 0;
    loop {
        let mut exited = match daemon.pods.lock().unwrap_or_else(|e| e.into_inner()).last() {
            Some(pod) => pod.exited.clone(),
            None => return,
        };
        let started = tokio::time::Instant::now();
        while exited.borrow().is_none() {
            if exited.changed().await.is_err() {
                break;
            }
        }
        let status = *exited.borrow();
        // A replacement by `carry_out` holds the lock; wait for it and look again.
        let _guard = daemon.pod_lifecycle.lock().await;
        let current_exited = daemon
            .pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last()
            .map(|p| p.exited.borrow().is_some());
        if current_exited != Some(true) {
            continue; // Already replaced.
        }
        let how = status
            .map(|s| s.to_string())
            .unwrap_or_else(|| "unknown".into());
        *daemon.pod_exit.lock().unwrap_or_else(|e| e.into_inner()) = Some(how.clone());
        failures = if started.elapsed() < Duration::from_secs(60) {
            failures + 1
        } else {
            1
        };
        if failures > 5 {
            log(&format!("the pod keeps exiting ({how}); giving up"));
            let _ = daemon
                .recorder
                .update(|s| s.phase = format!("failed: the pod keeps exiting ({how})"));
            return;
        }
        let delay = Duration::from_secs(1 << failures.min(5));
        log(&format!(
            "the pod's first process ended ({how}); replacing the pod in {delay:?}"
        ));
        tokio::time::sleep(delay).await;
        if let Err(e) = replace_pod(&daemon).await {
            log(&format!("replacing the pod failed: {e}"));
        }
    }
}

/// Remove the current pod (all its processes, its cgroup, its writable layer) and start a new
/// one. Called with `pod_lifecycle` held.
async fn replace_pod(daemon: &Arc<Daemon>) -> Result<(), LabError> {
    let old = daemon.pods.lock().unwrap_or_else(|e| e.into_inner()).pop();
    if let Some(old) = old {
        let cgroup_path = old.record.cgroup.clone();
        tokio::task::spawn_blocking(move || {
            cgroup::kill_tree(&cgroup_path, Duration::from_secs(20))
        })
        .await
        .map_err(|e| LabError::Failed(e.to_string()))??;
        let mut exited = old.exited.clone();
        while exited.borrow().is_none() {
            if exited.changed().await.is_err() {
                break;
            }
        }
        if let Some(sensor) = daemon
            .sensor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            sensor.unwatch(&old.info);
        }
        cgroup::remove_tree(&old.record.cgroup)?;
        let _ = nix::mount::umount2(&old.record.dir, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir_all(&old.record.dir);
        daemon
            .recorder
            .update(|s| s.host_mounts.retain(|m| m != &old.record.dir))?;
        daemon
            .recorder
            .update(|s| s.pods.retain(|p| p.name != old.record.name))?;
    }
    let pod = create_pod(daemon, &Reporter).await?;
    let exited = pod.exited.clone();
    daemon
        .pods
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(pod);
    wait_ready(daemon, exited).await?;
    let info = daemon.info();
    daemon.recorder.update(|s| {
        s.phase = "ready".into();
        s.info = Some(info);
    })
}

async fn accept_clients(control: UnixListener, ready: Arc<std::sync::OnceLock<Arc<Daemon>>>) {
    loop {
        if let Ok((stream, _)) = control.accept().await {
            tokio::spawn(handle_client(stream, ready.get().cloned()));
        }
    }
}

/// Serve until SIGTERM, then stop the pods; `lab down` removes what remains.
async fn until_terminated(daemon: Arc<Daemon>) -> Result<(), LabError> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|source| LabError::Io {
        context: "handling SIGTERM".into(),
        source,
    })?;
    terminate.recv().await;
    log("SIGTERM: stopping the pods");
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

/// A client while the lab starts: `status` says so, everything else waits for `ready`.
async fn handle_client(stream: UnixStream, daemon: Option<Arc<Daemon>>) {
    let Some(daemon) = daemon else {
        let (read, mut write) = stream.into_split();
        let mut line = String::new();
        if BufReader::new(read).read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let reply = match serde_json::from_str::<Request>(line.trim()) {
            Ok(Request::Status) => Reply {
                status: Some(DaemonStatus {
                    phase: "starting".into(),
                    info: LabInfo {
                        backend: "local".into(),
                        ..Default::default()
                    },
                    daemon_pid: std::process::id(),
                    services: Vec::new(),
                    pod_exit: None,
                    pod_log: None,
                    sensor: false,
                }),
                ..Reply::ok()
            },
            Ok(_) => Reply::error("the lab is still starting"),
            Err(e) => Reply::error(format!("bad request: {e}")),
        };
        let _ = send(&mut write, &reply).await;
        return;
    };
    serve_client(stream, daemon).await
}

async fn serve_client(stream: UnixStream, daemon: Arc<Daemon>) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = String::new();
    if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
        return;
    }
    let request: Request = match serde_json::from_str(line.trim()) {
        Ok(request) => request,
        Err(e) => {
            let _ = send(&mut write, &Reply::error(format!("bad request: {e}"))).await;
            return;
        }
    };
    match request {
        Request::Status => {
            let reply = Reply {
                status: Some(daemon.status()),
                ..Reply::ok()
            };
            let _ = send(&mut write, &reply).await;
        }
        Request::Visitors => {
            let visitors = daemon
                .services
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .map(|s| s.visitors());
            let reply = Reply {
                visitors: Some(visitors.unwrap_or_default()),
                ..Reply::ok()
            };
            let _ = send(&mut write, &reply).await;
        }
        Request::CarryOut { action } => {
            let reply = match carry_out(&daemon, &action).await {
                Ok(()) => Reply::ok(),
                Err(e) => Reply::error(e.to_string()),
            };
            let _ = send(&mut write, &reply).await;
        }
        Request::Enforce { pod, enforcement } => {
            let result = match daemon
                .sensor
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_mut()
            {
                Some(sensor) => sensor.enforce(&pod, &enforcement),
                None => Err(LabError::Missing {
                    what: "the sensor".into(),
                    hint: "the lab runs without it".into(),
                }),
            };
            let reply = match result {
                Ok(()) => Reply::ok(),
                Err(e) => Reply::error(e.to_string()),
            };
            let _ = send(&mut write, &reply).await;
        }
        Request::Events { replay } => {
            let (replayed, mut events) = daemon.events.subscribe(replay);
            if send(&mut write, &Reply::ok()).await.is_err() {
                return;
            }
            for event in &replayed {
                let mut line = Vec::new();
                if guardlab_events::write_ndjson(&mut line, event).is_err()
                    || write.write_all(&line).await.is_err()
                {
                    return;
                }
            }
            // The client closes the connection to stop; notice it even when no event comes.
            let mut closed = reader;
            let mut sink = [0u8; 64];
            loop {
                tokio::select! {
                    event = events.recv() => {
                        let event = match event {
                            Ok(event) => event,
                            Err(broadcast::error::RecvError::Lagged(count)) => Event::new(
                                guardlab_host::unix_time_ns(),
                                guardlab_events::EventBody::Lost(guardlab_events::Lost { count, cpu: None }),
                            ),
                            Err(broadcast::error::RecvError::Closed) => return,
                        };
                        let mut line = Vec::new();
                        if guardlab_events::write_ndjson(&mut line, &event).is_err() || write.write_all(&line).await.is_err() {
                            return;
                        }
                    }
                    read = tokio::io::AsyncReadExt::read(&mut closed, &mut sink) => {
                        if matches!(read, Ok(0) | Err(_)) {
                            return;
                        }
                    }
                }
            }
        }
    }
}

async fn send(write: &mut tokio::net::unix::OwnedWriteHalf, reply: &Reply) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(reply).map_err(std::io::Error::other)?;
    line.push(b'\n');
    write.write_all(&line).await
}

/// A host pid belongs to the lab's pods when it is in one of their cgroups: the daemon never
/// kills anything else.
fn pod_of_pid(daemon: &Daemon, pid: u32) -> Option<PathBuf> {
    let pods = daemon.pods.lock().unwrap_or_else(|e| e.into_inner());
    pods.iter()
        .find(|p| cgroup::pids_in_tree(&p.record.cgroup).contains(&pid))
        .map(|p| p.record.cgroup.clone())
}

async fn carry_out(daemon: &Arc<Daemon>, action: &LabAction) -> Result<(), LabError> {
    log(&format!("carry out {action:?}"));
    match action {
        LabAction::KillProcess { pid } => {
            let Some(cgroup_path) = pod_of_pid(daemon, *pid) else {
                return Err(LabError::Failed(format!(
                    "process {pid} is not in a pod of this lab"
                )));
            };
            cgroup::kill_in_tree(&cgroup_path, *pid)
        }
        LabAction::KillProcessTree { pid } => {
            let Some(cgroup_path) = pod_of_pid(daemon, *pid) else {
                return Err(LabError::Failed(format!(
                    "process {pid} is not in a pod of this lab"
                )));
            };
            let killed = cgroup::kill_process_tree_in(&cgroup_path, *pid)?;
            log(&format!("killed the process tree of {pid}: {killed:?}"));
            Ok(())
        }
        LabAction::KillProcessGroup { pid } => {
            let Some(cgroup_path) = pod_of_pid(daemon, *pid) else {
                return Err(LabError::Failed(format!(
                    "process {pid} is not in a pod of this lab"
                )));
            };
            // Only the group's members in this pod: the pod's first process shares its group
            // with the daemon, which must never be hit.
            let killed = cgroup::kill_group_in_tree(&cgroup_path, *pid)?;
            log(&format!("killed the process group of {pid}: {killed:?}"));
            Ok(())
        }
        LabAction::KillPod { namespace, name } => {
            let matches = daemon
                .pods
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .any(|p| &p.info.namespace == namespace && &p.info.name == name);
            if !matches {
                return Err(LabError::Failed(format!(
                    "no pod {namespace}/{name} in this lab"
                )));
            }
            let _guard = daemon.pod_lifecycle.lock().await;
            replace_pod(daemon).await
        }
    }
}
