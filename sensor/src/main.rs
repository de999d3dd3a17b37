//! guardlab-sensor: watch cgroups with guardlab's eBPF sensor and write their events as NDJSON.

mod serve;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use guardlab_sensor::cgroup::{self, find_container_cgroups};
use guardlab_sensor::{
    ContainerInfo, Event, EventBody, Sensor, SensorConfig, SensorStats, events::Lost,
};
use tokio::io::AsyncWriteExt;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{broadcast, mpsc};

#[derive(Parser, Debug)]
#[command(
    name = "guardlab-sensor",
    version,
    about = "Watch cgroups with guardlab's eBPF sensor and write their events as NDJSON (needs root).",
    after_help = "Examples:\n  \
        sudo guardlab-sensor --cgroup /sys/fs/cgroup/unified/mypod > events.ndjson\n  \
        sudo guardlab-sensor --all-containers --serve 127.0.0.1:7070\n  \
        sudo guardlab-sensor --serve 127.0.0.1:7070 --cgroup-root /host/sys/fs/cgroup\n\n\
        With --serve and nothing to watch on the command line, the sensor speaks the control \
        protocol (what `guardlab lab up --backend kind` uses): each client's first line is \
        {\"op\":\"subscribe\",\"containers\":[{\"container_id\":...}]} (then the events of those \
        containers stream back), {\"op\":\"kill\",\"pid\":N,\"tree\":false} or \
        {\"op\":\"kill_group\",\"pid\":N} (N as the events report it; answered by {\"ok\":true} \
        or {\"ok\":false,\"error\":...}). With --cgroup or --all-containers, --serve \
        streams every watched cgroup's events to every client.\n\n\
        Progress goes to stderr: the loaded programs, a `watching PATH (cgroup ID)` line per cgroup \
        once it is watched, and anything the sensor could not deliver. Runs until SIGINT or SIGTERM, \
        then prints how many events it wrote and how many the kernel dropped."
)]
struct Cli {
    /// A cgroup v2 directory to watch (repeatable).
    #[arg(long = "cgroup", value_name = "PATH")]
    cgroups: Vec<PathBuf>,
    /// Watch every container cgroup (containerd, Docker, CRI-O, Podman), including ones that
    /// appear later.
    #[arg(long)]
    all_containers: bool,
    /// Serve the NDJSON stream to TCP clients on ADDR instead of writing it to stdout (alone:
    /// the subscribe/kill/kill_group control protocol, see below).
    #[arg(long, value_name = "ADDR")]
    serve: Option<SocketAddr>,
    /// Where to look for container cgroups (default: where cgroup v2 is mounted). In a pod,
    /// the node's tree mounted into it, e.g. /host/sys/fs/cgroup.
    #[arg(long, value_name = "PATH")]
    cgroup_root: Option<PathBuf>,
    /// Kernel ring buffer size in bytes (a power of two, at least 4096).
    #[arg(long, default_value_t = 8 << 20)]
    ring_buffer_bytes: u32,
    /// The `machine` field of container events (default: $NODE_NAME, else this host's name).
    #[arg(long, env = "NODE_NAME")]
    machine: Option<String>,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn info_for(path: &Path, container_id: Option<String>, machine: &str) -> ContainerInfo {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    ContainerInfo {
        container_id: container_id.unwrap_or_default(),
        container_name: name,
        machine: machine.to_string(),
        ..Default::default()
    }
}

/// Where events go: stdout, or every connected TCP client.
enum Sink {
    /// Buffered: flushed whenever the event channel is momentarily empty, and at exit.
    Stdout(BufWriter<std::io::Stdout>),
    Clients {
        tx: broadcast::Sender<String>,
        containers: Containers,
    },
}

/// The `container` line of every watched cgroup, replayed to each client that connects, so a
/// late client still learns who the cgroup ids are.
type Containers = Arc<Mutex<BTreeMap<u64, String>>>;

impl Sink {
    fn write(&mut self, event: &Event) -> Result<()> {
        match self {
            Sink::Stdout(out) => guardlab_sensor::events::write_ndjson(out, event)?,
            Sink::Clients { tx, containers } => {
                let line = serde_json::to_string(event)? + "\n";
                if let EventBody::Container(c) = &event.body {
                    let mut known = containers.lock().unwrap_or_else(|e| e.into_inner());
                    known.insert(c.cgroup_id, line.clone());
                }
                // No client connected is fine: events are not kept for later ones.
                let _ = tx.send(line);
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if let Sink::Stdout(out) = self {
            out.flush()?;
        }
        Ok(())
    }

    fn forget_container(&mut self, cgroup_id: u64) {
        if let Sink::Clients { containers, .. } = self {
            containers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&cgroup_id);
        }
    }
}

/// Writes `first` and whatever else is already waiting, then flushes: one write(2) per batch
/// instead of one per event. Returns how many events were written.
fn write_batch(sink: &mut Sink, first: Event, events: &mut mpsc::Receiver<Event>) -> Result<u64> {
    sink.write(&first)?;
    let mut n = 1;
    while let Ok(event) = events.try_recv() {
        sink.write(&event)?;
        n += 1;
    }
    sink.flush()?;
    Ok(n)
}

async fn serve(
    listener: tokio::net::TcpListener,
    tx: broadcast::Sender<String>,
    containers: Containers,
) -> Result<()> {
    loop {
        let (conn, peer) = listener.accept().await?;
        // Subscribe before the snapshot: a container watched in between is sent twice at
        // worst, never missed.
        let mut rx = tx.subscribe();
        let known: Vec<String> = containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        tokio::spawn(async move {
            let mut conn = tokio::io::BufWriter::new(conn);
            for line in known {
                if conn.write_all(line.as_bytes()).await.is_err() {
                    return;
                }
            }
            loop {
                // Ok(line), Err(Some(n)): missed n lines, Err(None): the sensor is stopping.
                let received = match rx.try_recv() {
                    Ok(line) => Ok(line),
                    Err(TryRecvError::Lagged(n)) => Err(Some(n)),
                    Err(TryRecvError::Closed) => Err(None),
                    Err(TryRecvError::Empty) => {
                        // Nothing else waiting: send what is buffered before sleeping.
                        if conn.flush().await.is_err() {
                            break;
                        }
                        match rx.recv().await {
                            Ok(line) => Ok(line),
                            Err(RecvError::Lagged(n)) => Err(Some(n)),
                            Err(RecvError::Closed) => Err(None),
                        }
                    }
                };
                let line = match received {
                    Ok(line) => line,
                    // A client too slow to keep up is told how many events it missed.
                    Err(Some(n)) => {
                        let lost = Event::new(
                            guardlab_host::unix_time_ns(),
                            EventBody::Lost(Lost {
                                count: n,
                                cpu: None,
                            }),
                        );
                        serde_json::to_string(&lost).unwrap_or_default() + "\n"
                    }
                    Err(None) => break,
                };
                if conn.write_all(line.as_bytes()).await.is_err() {
                    eprintln!("guardlab-sensor: client {peer} went away");
                    return;
                }
            }
            let _ = conn.flush().await;
        });
    }
}

/// `--all-containers`: the container cgroups watched so far, by cgroup id (a directory removed
/// and made again is a new cgroup with a new id), and the last error per cgroup that could not
/// be watched (printed once, not on every scan).
#[derive(Default)]
struct AutoWatch {
    watched: HashMap<u64, PathBuf>,
    failed: HashMap<u64, String>,
}

impl AutoWatch {
    fn rescan(&mut self, sensor: &mut Sensor, sink: &mut Sink, root: &Path, machine: &str) {
        let mut present = Vec::new();
        for (path, container_id) in find_container_cgroups(root) {
            // It may have vanished since the scan.
            let Ok(id) = cgroup::cgroup_id(&path) else {
                continue;
            };
            present.push(id);
            // Already watched, by an earlier scan or by --cgroup (under whatever spelling).
            if sensor.watched().contains(&id) {
                continue;
            }
            match sensor.watch(&path, info_for(&path, Some(container_id), machine)) {
                Ok(id) => {
                    eprintln!("guardlab-sensor: watching {} (cgroup {id})", path.display());
                    self.failed.remove(&id);
                    self.watched.insert(id, path);
                }
                Err(e) => {
                    let msg = e.to_string();
                    if self.failed.get(&id) != Some(&msg) {
                        eprintln!("guardlab-sensor: not watching {}: {msg}", path.display());
                        self.failed.insert(id, msg);
                    }
                }
            }
        }
        self.failed.retain(|id, _| present.contains(id));
        let gone: Vec<u64> = self
            .watched
            .keys()
            .filter(|id| !present.contains(id))
            .copied()
            .collect();
        for id in gone {
            if let Some(path) = self.watched.remove(&id) {
                let _ = sensor.unwatch(id);
                sink.forget_container(id);
                eprintln!("guardlab-sensor: {} is gone (cgroup {id})", path.display());
            }
        }
    }
}

/// Says on stderr when something new could not be delivered or done.
fn report_new_problems(last: &mut SensorStats, now: SensorStats) {
    if now.kill_failures > last.kill_failures {
        eprintln!(
            "guardlab-sensor: {} exec(s) that enforcement meant to kill could not be killed (bpf_send_signal failed)",
            now.kill_failures - last.kill_failures
        );
    }
    if now.unreadable_records > last.unreadable_records {
        eprintln!(
            "guardlab-sensor: {} kernel record(s) could not be read (the eBPF object and this program disagree): lost",
            now.unreadable_records - last.unreadable_records
        );
    }
    if now.dns_truncated > last.dns_truncated {
        eprintln!(
            "guardlab-sensor: {} DNS answer(s) longer than 4 KiB: reported with the addresses that fit",
            now.dns_truncated - last.dns_truncated
        );
    }
    if now.dns_unreadable > last.dns_unreadable {
        eprintln!(
            "guardlab-sensor: {} DNS message(s) from port 53 could not be parsed: not reported",
            now.dns_unreadable - last.dns_unreadable
        );
    }
    *last = now;
}

/// `--serve ADDR` alone: the control protocol (see `serve.rs`) until SIGINT or SIGTERM.
async fn serve_control(
    addr: SocketAddr,
    root: PathBuf,
    machine: String,
    mut sensor: Sensor,
    mut events: mpsc::Receiver<Event>,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    eprintln!(
        "guardlab-sensor: serving the control protocol on {} (containers under {})",
        listener.local_addr()?,
        root.display()
    );
    let (commands_tx, mut commands) = mpsc::channel(256);
    tokio::spawn(async move {
        if let Err(e) = serve::accept(listener, commands_tx).await {
            eprintln!("guardlab-sensor: server stopped: {e:#}");
            std::process::exit(1);
        }
    });
    let mut control = serve::Control::new(root, machine);
    // Subscribed containers whose pod is still starting have no cgroup yet: look again.
    let mut rescan = tokio::time::interval(Duration::from_secs(1));
    let mut problems = tokio::time::interval(Duration::from_secs(5));
    let mut reported = SensorStats::default();
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut routed: u64 = 0;
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = rescan.tick() => control.resolve(&mut sensor),
            _ = problems.tick() => report_new_problems(&mut reported, sensor.stats()),
            Some(command) = commands.recv() => control.handle(command, &mut sensor),
            event = events.recv() => match event {
                Some(event) => {
                    control.route(&event);
                    routed += 1;
                }
                None => break,
            },
        }
    }
    let stopping = tokio::spawn(sensor.stop());
    while let Some(event) = events.recv().await {
        control.route(&event);
        routed += 1;
    }
    let stats = stopping.await??;
    report_new_problems(&mut reported, stats);
    eprintln!(
        "guardlab-sensor: routed {routed} events; the kernel dropped {} (reported as lost events); \
         {} failed kill(s); {} truncated and {} unreadable DNS message(s)",
        stats.dropped, stats.kill_failures, stats.dns_truncated, stats.dns_unreadable
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let control = cli.serve.is_some() && cli.cgroups.is_empty() && !cli.all_containers;
    if cli.cgroups.is_empty() && !cli.all_containers && !control {
        bail!(
            "nothing to watch: give --cgroup PATH (repeatable), --all-containers, or --serve ADDR for the control protocol (see --help)"
        );
    }
    let cgroup_root = match &cli.cgroup_root {
        Some(root) if !root.is_dir() => {
            bail!("--cgroup-root {}: no such directory", root.display())
        }
        Some(root) => Some(root.clone()),
        None => None,
    };
    let machine = cli.machine.clone().unwrap_or_else(hostname);
    let mut sensor = Sensor::start(SensorConfig {
        ring_buffer_bytes: cli.ring_buffer_bytes,
        ..Default::default()
    })
    .context("starting the sensor")?;
    let mut events = sensor.events()?;
    let ids: Vec<String> = sensor
        .program_ids()
        .iter()
        .map(|id| id.to_string())
        .collect();
    eprintln!("guardlab-sensor: loaded eBPF programs {}", ids.join(" "));

    if control {
        let root = match cgroup_root {
            Some(root) => root,
            None => cgroup::cgroup2_mount()?,
        };
        let addr = cli.serve.context("--serve is set in control mode")?;
        return serve_control(addr, root, machine, sensor, events).await;
    }

    let mut sink = match cli.serve {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening on {addr}"))?;
            eprintln!(
                "guardlab-sensor: serving NDJSON on {}",
                listener.local_addr()?
            );
            let (tx, _) = broadcast::channel(65536);
            let containers = Containers::default();
            let (server_tx, server_containers) = (tx.clone(), containers.clone());
            tokio::spawn(async move {
                if let Err(e) = serve(listener, server_tx, server_containers).await {
                    eprintln!("guardlab-sensor: server stopped: {e:#}");
                    std::process::exit(1);
                }
            });
            Sink::Clients { tx, containers }
        }
        None => Sink::Stdout(BufWriter::new(std::io::stdout())),
    };

    for path in &cli.cgroups {
        let container_id = path
            .file_name()
            .and_then(|n| cgroup::container_id_of(&n.to_string_lossy()));
        let id = sensor
            .watch(path, info_for(path, container_id, &machine))
            .with_context(|| format!("watching {}", path.display()))?;
        eprintln!("guardlab-sensor: watching {} (cgroup {id})", path.display());
    }
    // --all-containers: container cgroups come and go; look again every two seconds.
    let root = if cli.all_containers {
        Some(match cgroup_root {
            Some(root) => root,
            None => cgroup::cgroup2_mount()?,
        })
    } else {
        None
    };
    let mut auto = AutoWatch::default();
    let mut rescan = tokio::time::interval(Duration::from_secs(2));
    let mut problems = tokio::time::interval(Duration::from_secs(5));
    let mut reported = SensorStats::default();

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut written: u64 = 0;
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = rescan.tick(), if root.is_some() => {
                auto.rescan(&mut sensor, &mut sink, root.as_deref().unwrap_or(Path::new("/")), &machine);
            }
            _ = problems.tick() => report_new_problems(&mut reported, sensor.stats()),
            event = events.recv() => match event {
                Some(event) => written += write_batch(&mut sink, event, &mut events)?,
                None => break,
            },
        }
    }
    let stopping = tokio::spawn(sensor.stop());
    // Deliver what the sensor still had while it stops.
    while let Some(event) = events.recv().await {
        written += write_batch(&mut sink, event, &mut events)?;
    }
    sink.flush()?;
    let stats = stopping.await??;
    report_new_problems(&mut reported, stats);
    eprintln!(
        "guardlab-sensor: wrote {written} events; the kernel dropped {} (reported as lost events); \
         {} failed kill(s); {} truncated and {} unreadable DNS message(s)",
        stats.dropped, stats.kill_failures, stats.dns_truncated, stats.dns_unreadable
    );
    Ok(())
}
