//! guardlab-sensor: watch cgroups with guardlab's eBPF sensor and write their events as NDJSON.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::Parser;
use guardlab_sensor::cgroup::{self, find_container_cgroups};
use guardlab_sensor::{ContainerInfo, Event, EventBody, Sensor, SensorConfig, events::Lost};
use tokio::io::AsyncWriteExt;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::broadcast;

#[derive(Parser, Debug)]
#[command(
    name = "guardlab-sensor",
    version,
    about = "Watch cgroups with guardlab's eBPF sensor and write their events as NDJSON (needs root).",
    after_help = "Examples:\n  \
        sudo guardlab-sensor --cgroup /sys/fs/cgroup/unified/mypod > events.ndjson\n  \
        sudo guardlab-sensor --all-containers --serve 127.0.0.1:7070\n\n\
        Runs until SIGINT or SIGTERM, then prints how many events it wrote and how many the kernel dropped."
)]
struct Cli {
    /// A cgroup v2 directory to watch (repeatable).
    #[arg(long = "cgroup", value_name = "PATH")]
    cgroups: Vec<PathBuf>,
    /// Watch every container cgroup (containerd, Docker, CRI-O, Podman), including ones that
    /// appear later.
    #[arg(long)]
    all_containers: bool,
    /// Serve the NDJSON stream to TCP clients on ADDR instead of writing it to stdout.
    #[arg(long, value_name = "ADDR")]
    serve: Option<SocketAddr>,
    /// Kernel ring buffer size in bytes (a power of two, at least 4096).
    #[arg(long, default_value_t = 8 << 20)]
    ring_buffer_bytes: u32,
    /// The `machine` field of container events (default: this host's name).
    #[arg(long)]
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
    Stdout(std::io::Stdout),
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
            Sink::Stdout(out) => {
                let mut out = out.lock();
                guardlab_sensor::events::write_ndjson(&mut out, event)?;
                out.flush()?;
            }
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

    fn forget_container(&mut self, cgroup_id: u64) {
        if let Sink::Clients { containers, .. } = self {
            containers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&cgroup_id);
        }
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

async fn serve(
    listener: tokio::net::TcpListener,
    tx: broadcast::Sender<String>,
    containers: Containers,
) -> Result<()> {
    loop {
        let (mut conn, peer) = listener.accept().await?;
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
            for line in known {
                if conn.write_all(line.as_bytes()).await.is_err() {
                    return;
                }
            }
            loop {
                let line = match rx.recv().await {
                    Ok(line) => line,
                    // A client too slow to keep up is told how many events it missed.
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        let lost = Event::new(
                            now_ns(),
                            EventBody::Lost(Lost {
                                count: n,
                                cpu: None,
                            }),
                        );
                        serde_json::to_string(&lost).unwrap_or_default() + "\n"
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                };
                if conn.write_all(line.as_bytes()).await.is_err() {
                    eprintln!("guardlab-sensor: client {peer} went away");
                    break;
                }
            }
        });
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    if cli.cgroups.is_empty() && !cli.all_containers {
        bail!("nothing to watch: give --cgroup PATH (repeatable) or --all-containers (see --help)");
    }
    let machine = cli.machine.clone().unwrap_or_else(hostname);
    let mut sensor = Sensor::start(SensorConfig {
        ring_buffer_bytes: cli.ring_buffer_bytes,
        ..Default::default()
    })
    .context("starting the sensor")?;
    let mut events = sensor.events()?;

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
        None => Sink::Stdout(std::io::stdout()),
    };

    for path in &cli.cgroups {
        let container_id = path
            .file_name()
            .and_then(|n| cgroup::container_id_of(&n.to_string_lossy()));
        sensor
            .watch(path, info_for(path, container_id, &machine))
            .with_context(|| format!("watching {}", path.display()))?;
    }
    // --all-containers: container cgroups come and go; look again every two seconds.
    let root = if cli.all_containers {
        Some(cgroup::cgroup2_mount()?)
    } else {
        None
    };
    let mut auto: HashMap<PathBuf, u64> = HashMap::new();
    let mut rescan = tokio::time::interval(Duration::from_secs(2));

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut written: u64 = 0;
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = rescan.tick(), if root.is_some() => {
                let found = find_container_cgroups(root.as_deref().unwrap_or(Path::new("/")));
                for (path, id) in &found {
                    if !auto.contains_key(path) && !cli.cgroups.contains(path) {
                        match sensor.watch(path, info_for(path, Some(id.clone()), &machine)) {
                            Ok(cg) => { auto.insert(path.clone(), cg); }
                            // It may have vanished between the scan and the watch.
                            Err(e) => eprintln!("guardlab-sensor: not watching {}: {e}", path.display()),
                        }
                    }
                }
                let gone: Vec<PathBuf> = auto.keys().filter(|p| !found.iter().any(|(f, _)| f == *p)).cloned().collect();
                for path in gone {
                    if let Some(cg) = auto.remove(&path) {
                        let _ = sensor.unwatch(cg);
                        sink.forget_container(cg);
                    }
                }
            }
            event = events.recv() => match event {
                Some(event) => { sink.write(&event)?; written += 1; }
                None => break,
            },
        }
    }
    let stopping = tokio::spawn(sensor.stop());
    // Deliver what the sensor still had while it stops.
    while let Some(event) = events.recv().await {
        sink.write(&event)?;
        written += 1;
    }
    let drops = stopping.await??;
    eprintln!(
        "guardlab-sensor: wrote {written} events; the kernel dropped {drops} (reported as lost events)"
    );
    Ok(())
}
