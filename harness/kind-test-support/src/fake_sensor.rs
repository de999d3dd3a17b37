//! The fake sensor's control port: what the harness reaches through a port-forward to port
//! 7070 of a `guardlab-sensor-*` pod of the fake API server. It answers subscriptions with the
//! events a real sensor would send for the notebook's container (the gate's plumbing before its
//! gate opens, the gate's exec and the notebook's `listen` after) and answers kills `ok`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use guardlab_events::{
    ContainerInfo, Event, EventBody, Listen, ProcessExec, ProcessKey, Protocol, write_ndjson,
};
use guardlab_kind::gate_program::GATE_PORT;
use guardlab_kind::names::SENSOR_PORT;
use guardlab_kind::{SensorRequest, WatchedContainer};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};

use super::fake_api::{FakeApi, FakeState, GATE_NS_PID, is_gate};

/// How the fake sensor answers subscriptions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SensorBehaviour {
    /// After `delay`, a `container` event for each container new to the connection. For a
    /// container whose gate was closed: at once an event of the gate (its `listen` on the gate
    /// port: plumbing), then, once the gate was opened, its `accept` (plumbing too), the gate's
    /// exec of start-notebook.py (same pid) and the notebook's `listen` on 8888.
    Watching { delay: Duration },
    /// As `Watching`; and while a gate waits, two processes that are not the gate exec in its
    /// container, reported in the same write as the `container` event: a `kubectl exec` shell
    /// and a `kubectl exec` of start-notebook.py itself, each with its own pid in the
    /// container ([`FOREIGN_NS_PIDS`]), neither the gate's ([`GATE_NS_PID`]).
    ExecsBesideTheGate { delay: Duration },
    /// Takes subscriptions and never confirms a watch.
    Silent,
}

/// The pids inside the container of the processes [`SensorBehaviour::ExecsBesideTheGate`]
/// reports.
pub const FOREIGN_NS_PIDS: [u32; 2] = [31, 32];

/// What the fake sensor got: each request line as sent, and as parsed.
pub type SensorLog = Arc<Mutex<Vec<(String, SensorRequest)>>>;

/// The sensor's control port on loopback; the API's port-forwards to port 7070 of
/// `guardlab-sensor-*` pods go to it. Kills are answered `ok`.
pub struct FakeSensor {
    pub requests: SensorLog,
    /// Where it listens (to route the sensor's port back to it after an outage).
    pub address: SocketAddr,
    /// Bumped by [`FakeSensor::cut`]: every connection open at that moment is closed.
    cuts: watch::Sender<u64>,
    task: JoinHandle<()>,
}

impl Drop for FakeSensor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The gate's pid in the fake sensor's events for the container of cgroup `cgroup_id`.
pub fn gate_pid(cgroup_id: u64) -> u32 {
    u32::try_from(cgroup_id % 100_000).unwrap() + 100
}

impl FakeSensor {
    pub async fn start(api: &FakeApi, behaviour: SensorBehaviour) -> FakeSensor {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        api.route_port("guardlab-sensor-", SENSOR_PORT, address);
        let requests: SensorLog = Arc::default();
        let (log, state) = (requests.clone(), api.state.clone());
        let (cuts, _) = watch::channel(0u64);
        let cut = cuts.clone();
        // Cgroup ids, in the order containers are first announced: the first is 4242.
        let cgroups = Arc::new(AtomicU64::new(4242));
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((connection, _)) = listener.accept().await {
                connections.spawn(sensor_connection(
                    connection,
                    state.clone(),
                    log.clone(),
                    behaviour,
                    cgroups.clone(),
                    cut.subscribe(),
                ));
            }
        });
        FakeSensor {
            requests,
            address,
            cuts,
            task,
        }
    }

    /// Close every connection open now (a lost port-forward, a restarted sensor pod):
    /// connections made afterwards are served as usual.
    pub fn cut(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }

    pub fn requests(&self) -> Vec<SensorRequest> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .map(|(_, r)| r.clone())
            .collect()
    }
}

async fn sensor_connection(
    connection: TcpStream,
    state: Arc<Mutex<FakeState>>,
    log: SensorLog,
    behaviour: SensorBehaviour,
    cgroups: Arc<AtomicU64>,
    mut cut: watch::Receiver<u64>,
) {
    let (r, mut w) = connection.into_split();
    let (out, mut lines_out) = mpsc::unbounded_channel::<String>();
    let writer = tokio::spawn(async move {
        while let Some(line) = lines_out.recv().await {
            if w.write_all(line.as_bytes()).await.is_err() {
                break;
            }
        }
    });
    let mut watchers = JoinSet::new();
    let mut announced = HashSet::new();
    let mut lines = BufReader::new(r).lines();
    loop {
        let line = tokio::select! {
            line = lines.next_line() => line,
            _ = cut.changed() => break,
        };
        let Ok(Some(line)) = line else { break };
        let request: SensorRequest = serde_json::from_str(&line).unwrap();
        log.lock().unwrap().push((line.clone(), request.clone()));
        match request {
            SensorRequest::Kill { .. } | SensorRequest::KillGroup { .. } => {
                let _ = out.send("{\"ok\":true}\n".into());
                break;
            }
            SensorRequest::Subscribe { containers } => {
                let ids: Vec<&str> = containers.iter().map(|c| c.container_id.as_str()).collect();
                state
                    .lock()
                    .unwrap()
                    .timeline
                    .push(format!("sensor: subscribe [{}]", ids.join(", ")));
                let (delay, others) = match behaviour {
                    SensorBehaviour::Watching { delay } => (delay, false),
                    SensorBehaviour::ExecsBesideTheGate { delay } => (delay, true),
                    SensorBehaviour::Silent => continue,
                };
                for c in containers {
                    if !announced.insert(c.container_id.clone()) {
                        continue;
                    }
                    let cgroup_id = cgroups.fetch_add(1, Ordering::SeqCst);
                    watchers.spawn(watch_container(
                        c,
                        cgroup_id,
                        delay,
                        others,
                        state.clone(),
                        out.clone(),
                    ));
                }
            }
        }
    }
    watchers.abort_all();
    drop(out);
    let _ = writer.await;
}

fn line(event: &Event) -> String {
    let mut out = Vec::new();
    write_ndjson(&mut out, event).unwrap();
    String::from_utf8(out).unwrap()
}

/// The events of one watched container, as the sensor would send them; `others`: see
/// [`SensorBehaviour::ExecsBesideTheGate`].
async fn watch_container(
    c: WatchedContainer,
    cgroup_id: u64,
    delay: Duration,
    others: bool,
    state: Arc<Mutex<FakeState>>,
    out: mpsc::UnboundedSender<String>,
) {
    tokio::time::sleep(delay).await;
    let key = format!("{}/{}", c.namespace, c.pod_name);
    let pod_path = format!("/api/v1/namespaces/{}/pods/{}", c.namespace, c.pod_name);
    let gate_closed = {
        let mut s = state.lock().unwrap();
        s.timeline
            .push(format!("sensor: container {}", c.container_id));
        let gated = s
            .objects
            .get(&pod_path)
            .is_some_and(|p| is_gate(&p["spec"]["containers"][0]));
        gated && !s.gates_opened.contains(&key)
    };
    let info = ContainerInfo {
        cgroup_id,
        container_id: c.container_id.clone(),
        ..Default::default()
    };
    let mut first = line(&Event::new(1, EventBody::Container(info)));
    if others && gate_closed {
        for (i, (ns_pid, argv)) in FOREIGN_NS_PIDS
            .into_iter()
            .zip([
                vec!["sh", "-c", "ls"],
                vec!["python", "/usr/local/bin/start-notebook.py", "--help"],
            ])
            .enumerate()
        {
            let pid = gate_pid(cgroup_id) + 1_000 + u32::try_from(i).unwrap();
            first.push_str(&line(&Event::new(
                2,
                EventBody::Exec(ProcessExec {
                    key: ProcessKey(pid, 9_000),
                    cgroup_id,
                    pid,
                    ns_pid,
                    // Started by the runtime (runc exec), outside the container.
                    parent: Some(ProcessKey(900, 800)),
                    exe: format!("/usr/bin/{}", argv[0]),
                    comm: argv[0].into(),
                    argv: argv.into_iter().map(String::from).collect(),
                    argv_truncated: false,
                    uid: 1000,
                    euid: 1000,
                    gid: 100,
                    user: Some("jovyan".into()),
                    euser: Some("jovyan".into()),
                    exe_status: Default::default(),
                    killed: false,
                }),
            )));
        }
    }
    let _ = out.send(first);
    if !gate_closed {
        return; // a notebook that runs already: nothing new to say here
    }
    let pid = gate_pid(cgroup_id);
    let process = ProcessKey(pid, 5_000);
    let listen = |ip: &str, port: u16| {
        Event::new(
            3,
            EventBody::Listen(Listen {
                process,
                cgroup_id,
                protocol: Protocol::Tcp,
                ip: ip.parse().unwrap(),
                port,
            }),
        )
    };
    let _ = out.send(line(&listen("127.0.0.1", GATE_PORT)));
    while !state.lock().unwrap().gates_opened.contains(&key) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let accept = Event::new(
        4,
        EventBody::Accept(guardlab_events::Connection {
            process,
            cgroup_id,
            protocol: Protocol::Tcp,
            local_ip: Some("127.0.0.1".parse().unwrap()),
            local_port: Some(GATE_PORT),
            remote_ip: "127.0.0.1".parse().unwrap(),
            remote_port: 50_000,
            refused: false,
        }),
    );
    let _ = out.send(line(&accept));
    state
        .lock()
        .unwrap()
        .timeline
        .push(format!("sensor: exec {}", c.container_id));
    let exec = Event::new(
        5,
        EventBody::Exec(ProcessExec {
            key: process,
            cgroup_id,
            pid,
            ns_pid: GATE_NS_PID,
            parent: Some(ProcessKey(pid - 1, 1_000)),
            exe: "/opt/conda/bin/python3.11".into(),
            comm: "start-notebook.".into(),
            argv: vec![
                "python".into(),
                "/usr/local/bin/start-notebook.py".into(),
                "--IdentityProvider.token=".into(),
                "--ServerApp.password=".into(),
            ],
            argv_truncated: false,
            uid: 1000,
            euid: 1000,
            gid: 100,
            user: Some("jovyan".into()),
            euser: Some("jovyan".into()),
            exe_status: Default::default(),
            killed: false,
        }),
    );
    let _ = out.send(line(&exec));
    let _ = out.send(line(&listen("0.0.0.0", 8888)));
}
