//! `KindLab` against the fake API server (`tests/support`): up, rollout failures and their
//! cleanup, port-forward, the start gate, events and kills through the sensor, pod deletion,
//! the event stream's reconnections, down. One test binary, a module per subject.

use guardlab_kind_test_support as support;

mod event_stream;
mod responses;
mod rollout;
mod start_gate;
mod up_down;

use std::sync::Mutex;
use std::time::Duration;

use guardlab_events::{Event, EventBody};
use guardlab_kind::SensorRequest;
use guardlab_kind::gate_program::{GATE_PORT, gate_program};
use guardlab_kind::state::LabState;
use guardlab_kind::{KindLab, KindOptions, Target};
use guardlab_lab_api::{Backend, Lab, LabAction, LabError, Progress};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use support::fake_api::{FakeApi, NODE, Rollout};
use support::fake_sensor::{FakeSensor, SensorBehaviour, gate_pid};

#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl Progress for Recorder {
    fn phase(&self, what: &str) {
        self.0.lock().unwrap().push(format!("phase: {what}"));
    }
    fn detail(&self, line: &str) {
        self.0.lock().unwrap().push(format!("  {line}"));
    }
}

fn options(state_dir: &std::path::Path) -> KindOptions {
    KindOptions {
        target: Target::Context {
            context: "fake".into(),
        },
        local_port: 0,
        rollout_timeout: Duration::from_secs(20),
        gate_timeout: Duration::from_secs(10),
        delete_timeout: Duration::from_secs(5),
        poll_interval: Duration::from_millis(20),
        state_dir: state_dir.to_path_buf(),
        ..KindOptions::default()
    }
}

/// A TCP server on loopback that echoes what it gets (the notebook's port, as far as the
/// forward is concerned).
async fn echo_server() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut connection, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = connection.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    address
}

/// The fake API with a sensor that confirms its watches at once.
async fn cluster() -> (FakeApi, FakeSensor) {
    let fake = FakeApi::start().await;
    let sensor = FakeSensor::start(
        &fake,
        SensorBehaviour::Watching {
            delay: Duration::ZERO,
        },
    )
    .await;
    (fake, sensor)
}

/// The next event, within 10 s.
async fn next(events: &mut mpsc::Receiver<Event>) -> Event {
    tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("an event within 10s")
        .expect("the stream goes on")
}

/// A short name of an event, for comparing sequences: `container 4242`, `exec 4242 pid 4342`,
/// `listen 4242 127.0.0.1:8887`, `accept 4242 :8887`.
fn describe(event: &Event) -> String {
    match &event.body {
        EventBody::Container(c) => format!("container {}", c.cgroup_id),
        EventBody::Exec(x) => format!("exec {} pid {}", x.cgroup_id, x.pid),
        EventBody::Listen(l) => format!("listen {} {}:{}", l.cgroup_id, l.ip, l.port),
        EventBody::Accept(c) => format!("accept {} :{}", c.cgroup_id, c.local_port.unwrap_or(0)),
        other => format!("{other:?}"),
    }
}

/// What a gated container's stream shows until its notebook listens: its `container` event,
/// then the gate's exec into the notebook, then the notebook's `listen` on 8888 (nothing of
/// the gate before it).
async fn assert_only_the_notebooks_start_passes(events: &mut mpsc::Receiver<Event>) {
    let pid = gate_pid(4242);
    assert_eq!(
        until_notebook_listens(events).await,
        [
            "container 4242".to_string(),
            format!("exec 4242 pid {pid}"),
            "listen 4242 0.0.0.0:8888".into(),
        ]
    );
}

/// Send the port-forwards to the sensor pods' control port to `address` (a fake sensor, or
/// nowhere).
fn route_sensor(fake: &FakeApi, address: std::net::SocketAddr) {
    fake.route_port(
        "guardlab-sensor-",
        guardlab_kind::names::SENSOR_PORT,
        address,
    );
}

/// Events until (and with) the notebook's `listen` on 8888.
async fn until_notebook_listens(events: &mut mpsc::Receiver<Event>) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let event = next(events).await;
        let done = matches!(&event.body, EventBody::Listen(l) if l.port == 8888);
        seen.push(describe(&event));
        if done {
            return seen;
        }
    }
}

/// Where `entry` first is in `timeline` (it must be there).
fn at(timeline: &[String], entry: &str) -> usize {
    timeline
        .iter()
        .position(|e| e == entry)
        .unwrap_or_else(|| panic!("no `{entry}` in the timeline:\n{}", timeline.join("\n")))
}

/// A loopback address nothing listens on.
async fn nowhere() -> std::net::SocketAddr {
    let gone = TcpListener::bind("127.0.0.1:0").await.unwrap();
    gone.local_addr().unwrap()
}

/// How many port-forwards to the sensor's port the API was asked for: one per connection
/// the harness tried (event stream sessions and kills).
fn sensor_forwards(fake: &FakeApi) -> usize {
    fake.requests()
        .iter()
        .filter(|r| r.uri.contains("/pods/guardlab-sensor-") && r.uri.contains("ports=7070"))
        .count()
}
