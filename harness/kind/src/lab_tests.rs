//! `KindLab` against the fake API server: up, rollout failures and their cleanup, port-forward,
//! events and kills through the sensor, pod deletion, down.

use std::sync::Mutex;
use std::time::Duration;

use guardlab_events::{Event, EventBody};
use guardlab_lab::{Lab, LabAction, LabError, Progress};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::fake_api::{FakeApi, FakeSensor, NODE, Rollout, SensorBehaviour, gate_pid};
use crate::gate::{GATE_PORT, gate_program};
use crate::lab::{KindLab, KindOptions, Target};
use crate::sensor_link::SensorRequest;
use crate::state::LabState;

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
    fake.route_port("guardlab-sensor-", crate::manifests::SENSOR_PORT, address);
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

fn patched_paths(fake: &FakeApi) -> Vec<String> {
    fake.requests()
        .iter()
        .filter(|r| r.method == "PATCH")
        .map(|r| r.uri.split('?').next().unwrap().to_string())
        .collect()
}

const APPLY_ORDER: [&str; 5] = [
    "/api/v1/namespaces/cryptominer",
    "/api/v1/namespaces/cryptominer/serviceaccounts/guardlab-sensor",
    "/apis/apps/v1/namespaces/cryptominer/daemonsets/guardlab-sensor",
    "/apis/apps/v1/namespaces/cryptominer/deployments/jupyter-notebook",
    "/api/v1/namespaces/cryptominer/services/jupyter-notebook",
];

#[tokio::test]
async fn up_applies_waits_and_forwards_then_down_removes_it_all() {
    let (fake, _sensor) = cluster().await;
    fake.route_port("jupyter-notebook-", 8888, echo_server().await);
    let dir = tempfile::tempdir().unwrap();
    let mut lab = KindLab::with_client(options(dir.path()), fake.client());
    let progress = Recorder::default();
    let info = lab.up(&progress).await.unwrap();

    // Server-side apply of every object, in order, as guardlab's field manager.
    assert_eq!(patched_paths(&fake), APPLY_ORDER);
    for r in fake.requests().iter().filter(|r| r.method == "PATCH") {
        assert!(
            r.uri.contains("fieldManager=guardlab") && r.uri.contains("force=true"),
            "{}",
            r.uri
        );
        assert_eq!(
            r.headers["content-type"], "application/apply-patch+yaml",
            "{}",
            r.uri
        );
    }
    let deployment = fake
        .requests()
        .into_iter()
        .find(|r| r.uri.contains("/deployments/jupyter-notebook?"))
        .unwrap();
    let body = deployment.body.unwrap();
    assert_eq!(
        body["spec"]["template"]["spec"]["containers"][0]["image"],
        "jupyter/minimal-notebook:latest"
    );
    assert_eq!(body["metadata"]["namespace"], "cryptominer");

    // What up reports.
    assert_eq!(info.backend.name(), "kind");
    let address = lab.notebook_address().unwrap();
    assert!(address.ip().is_loopback());
    assert_eq!(
        info.notebook_url,
        format!("http://127.0.0.1:{}/", address.port())
    );
    assert_eq!(info.pods.len(), 1);
    let pod = &info.pods[0];
    assert!(pod.name.starts_with("jupyter-notebook-"), "{pod:?}");
    assert_eq!(
        (pod.namespace.as_str(), pod.container_name.as_str()),
        ("cryptominer", "minimal-notebook")
    );
    assert_eq!(pod.container_id.len(), 64, "{pod:?}");
    assert_eq!(pod.labels["app"], "jupyter-notebook");
    let log = progress.0.lock().unwrap().join("\n");
    assert!(
        log.contains("phase: waiting for the rollout (at most 20s)"),
        "{log}"
    );
    assert!(
        log.contains("Deployment cryptominer/jupyter-notebook is ready"),
        "{log}"
    );

    // The state file records everything as created by this run.
    let state = LabState::load(&lab.options().state_file())
        .unwrap()
        .unwrap();
    assert_eq!(state.objects.len(), 5);
    assert!(state.objects.iter().all(|o| o.created));

    // Bytes go through the loopback listener, kube's port-forward and back.
    let mut connection = tokio::net::TcpStream::connect(address).await.unwrap();
    connection
        .write_all(b"GET /api HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let mut echoed = [0u8; 21];
    connection.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"GET /api HTTP/1.1\r\n\r\n");
    let forward = fake
        .requests()
        .into_iter()
        .find(|r| r.uri.contains("/portforward") && r.uri.contains("ports=8888"))
        .unwrap();
    assert_eq!(forward.method, "GET");
    let (path, query) = forward.uri.split_once('?').unwrap();
    assert_eq!(
        path,
        format!(
            "/api/v1/namespaces/cryptominer/pods/{}/portforward",
            pod.name
        )
    );
    assert_eq!(query.trim_start_matches('&'), "ports=8888");
    assert_eq!(forward.headers["upgrade"], "websocket");
    assert!(forward.headers["sec-websocket-protocol"].contains("v4.channel.k8s.io"));

    // Up again: harmless, nothing new, still recorded as ours; the open gate is left alone.
    let again = lab.up(&guardlab_lab::NoProgress).await.unwrap();
    assert_eq!(fake.gates_opened().len(), 1);
    assert_eq!(
        fake.timeline()
            .iter()
            .filter(|e| e.starts_with("gate opened"))
            .count(),
        1
    );
    assert_eq!(again.pods, info.pods);
    let state = LabState::load(&lab.options().state_file())
        .unwrap()
        .unwrap();
    assert!(state.objects.iter().all(|o| o.created));
    assert_eq!(lab.status().await.unwrap().unwrap().pods, info.pods);

    // Down removes it all, newest first, and the state file.
    lab.down(&guardlab_lab::NoProgress).await.unwrap();
    let deleted: Vec<String> = fake
        .requests()
        .iter()
        .filter(|r| r.method == "DELETE")
        .map(|r| r.uri.split('?').next().unwrap().to_string())
        .collect();
    let mut expected: Vec<String> = APPLY_ORDER.iter().map(|s| s.to_string()).collect();
    expected.reverse();
    assert_eq!(deleted, expected);
    assert!(fake.paths().is_empty(), "{:?}", fake.paths());
    assert!(!lab.options().state_file().exists());
    assert_eq!(lab.status().await.unwrap(), None);
    assert!(
        tokio::net::TcpStream::connect(address).await.is_err(),
        "the forward must stop with down"
    );
    lab.down(&guardlab_lab::NoProgress).await.unwrap(); // down twice is harmless
}

#[tokio::test]
async fn an_image_pull_failure_names_pod_container_reason_and_removes_what_was_applied() {
    let fake = FakeApi::start().await;
    fake.set_rollout("jupyter-notebook", Rollout::ImagePullBackOff);
    let dir = tempfile::tempdir().unwrap();
    let mut lab = KindLab::with_client(options(dir.path()), fake.client());
    let err = lab
        .up(&guardlab_lab::NoProgress)
        .await
        .unwrap_err()
        .to_string();
    for expected in [
        "Deployment cryptominer/jupyter-notebook cannot become ready: pod cryptominer/jupyter-notebook-",
        "container minimal-notebook: ImagePullBackOff (Back-off pulling image \"jupyter/minimal-notebook:latest\")",
        "the node cannot get the image",
        "removed what this run created: Service cryptominer/jupyter-notebook, Deployment cryptominer/jupyter-notebook, \
         DaemonSet cryptominer/guardlab-sensor, ServiceAccount cryptominer/guardlab-sensor, Namespace cryptominer",
    ] {
        assert!(err.contains(expected), "missing `{expected}` in: {err}");
    }
    assert!(fake.paths().is_empty(), "left behind: {:?}", fake.paths());
    assert!(!lab.options().state_file().exists());
    assert!(lab.notebook_address().is_none());
}

#[tokio::test]
async fn a_crash_looping_sensor_is_named_with_its_last_exit_and_where_to_look() {
    let fake = FakeApi::start().await;
    fake.set_rollout("guardlab-sensor", Rollout::CrashLoopBackOff);
    let dir = tempfile::tempdir().unwrap();
    let mut lab = KindLab::with_client(options(dir.path()), fake.client());
    let err = lab
        .up(&guardlab_lab::NoProgress)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("DaemonSet cryptominer/guardlab-sensor cannot become ready"),
        "{err}"
    );
    assert!(err.contains("container sensor: CrashLoopBackOff"), "{err}");
    assert!(err.contains("last exit code 1 (Error)"), "{err}");
    assert!(
        err.contains("kubectl logs -n cryptominer guardlab-sensor-"),
        "{err}"
    );
    assert!(fake.paths().is_empty(), "left behind: {:?}", fake.paths());
}

#[tokio::test]
async fn an_unschedulable_pod_is_reported_at_the_deadline() {
    let fake = FakeApi::start().await;
    fake.set_rollout("jupyter-notebook", Rollout::Unschedulable);
    let dir = tempfile::tempdir().unwrap();
    let options = KindOptions {
        rollout_timeout: Duration::from_secs(1),
        ..options(dir.path())
    };
    let mut lab = KindLab::with_client(options, fake.client());
    let err = lab
        .up(&guardlab_lab::NoProgress)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(
            "the notebook's container did not start within 1s: pod cryptominer/jupyter-notebook-"
        ),
        "{err}"
    );
    assert!(
        err.contains("is Pending, not scheduled: Unschedulable: 0/1 nodes are available: 1 Insufficient memory."),
        "{err}"
    );
    assert!(err.contains("removed what this run created"), "{err}");
    assert!(fake.paths().is_empty(), "left behind: {:?}", fake.paths());
    assert!(!fake.timeline().iter().any(|e| e.starts_with("portforward")));
}

#[tokio::test]
async fn what_existed_before_up_is_left_alone_by_cleanup_and_down() {
    let (fake, _sensor) = cluster().await;
    let namespace = "/api/v1/namespaces/cryptominer";
    fake.insert(
        namespace,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "cryptominer"}}),
    );
    let dir = tempfile::tempdir().unwrap();

    fake.set_rollout("jupyter-notebook", Rollout::ImagePullBackOff);
    let mut lab = KindLab::with_client(options(dir.path()), fake.client());
    let err = lab
        .up(&guardlab_lab::NoProgress)
        .await
        .unwrap_err()
        .to_string();
    assert!(!err.contains("Namespace cryptominer"), "{err}");
    assert_eq!(fake.paths(), [namespace]);

    fake.set_rollout("jupyter-notebook", Rollout::Healthy);
    lab.up(&guardlab_lab::NoProgress).await.unwrap();
    let state = LabState::load(&lab.options().state_file())
        .unwrap()
        .unwrap();
    assert!(
        !state.objects[0].created && state.objects[0].kind == "Namespace",
        "{state:?}"
    );
    lab.down(&guardlab_lab::NoProgress).await.unwrap();
    assert_eq!(fake.paths(), [namespace]);
}

#[tokio::test]
async fn another_participants_namespace_is_separate() {
    let (fake, _sensor) = cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let mut alice = KindLab::with_client(
        KindOptions {
            namespace: "alice".into(),
            ..options(dir.path())
        },
        fake.client(),
    );
    let mut bob = KindLab::with_client(
        KindOptions {
            namespace: "bob".into(),
            ..options(dir.path())
        },
        fake.client(),
    );
    alice.up(&guardlab_lab::NoProgress).await.unwrap();
    bob.up(&guardlab_lab::NoProgress).await.unwrap();
    assert_ne!(alice.options().state_file(), bob.options().state_file());
    alice.down(&guardlab_lab::NoProgress).await.unwrap();
    assert!(
        fake.paths().iter().all(|p| p.contains("/bob")),
        "{:?}",
        fake.paths()
    );
    assert_eq!(fake.pods("bob").len(), 2);
    bob.down(&guardlab_lab::NoProgress).await.unwrap();
    assert!(fake.paths().is_empty());
}

#[tokio::test]
async fn kill_pod_deletes_it_through_the_api_and_only_in_the_lab_namespace() {
    let (fake, _sensor) = cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let mut lab = KindLab::with_client(options(dir.path()), fake.client());
    let info = lab.up(&guardlab_lab::NoProgress).await.unwrap();
    let pod = info.pods[0].name.clone();
    lab.carry_out(&LabAction::KillPod {
        namespace: "cryptominer".into(),
        name: pod.clone(),
    })
    .await
    .unwrap();
    let delete = fake
        .requests()
        .into_iter()
        .find(|r| r.method == "DELETE")
        .unwrap();
    assert_eq!(
        delete.uri.split('?').next().unwrap(),
        format!("/api/v1/namespaces/cryptominer/pods/{pod}")
    );
    // The Deployment brought a new pod.
    let after = lab.status().await.unwrap().unwrap();
    assert_eq!(after.pods.len(), 1);
    assert_ne!(after.pods[0].name, pod);

    let err = lab
        .carry_out(&LabAction::KillPod {
            namespace: "kube-system".into(),
            name: "coredns".into(),
        })
        .await;
    let err = err.unwrap_err().to_string();
    assert!(
        err.contains("refusing to delete pod kube-system/coredns"),
        "{err}"
    );
    let err = lab
        .carry_out(&LabAction::KillPod {
            namespace: "cryptominer".into(),
            name: "nope".into(),
        })
        .await;
    assert!(
        err.unwrap_err()
            .to_string()
            .contains("deleting pod cryptominer/nope")
    );
    lab.down(&guardlab_lab::NoProgress).await.unwrap();
}

#[tokio::test]
async fn events_and_kills_go_through_the_sensor_on_the_notebooks_node() {
    let (fake, sensor) = cluster().await;
    let requests = sensor.requests.clone();
    let dir = tempfile::tempdir().unwrap();
    let mut lab = KindLab::with_client(options(dir.path()), fake.client());
    let info = lab.up(&guardlab_lab::NoProgress).await.unwrap();
    let pod = &info.pods[0];

    let mut events = lab.events().await.unwrap();
    let event = next(&mut events).await;
    let EventBody::Container(container) = event.body else {
        panic!("{event:?}")
    };
    assert_eq!(container.cgroup_id, 4242);
    assert_eq!(container.container_id, pod.container_id);
    assert_eq!(container.pod_name, pod.name);
    assert_eq!(container.namespace, "cryptominer");
    assert_eq!(container.machine, NODE);
    assert_eq!(container.image, "jupyter/minimal-notebook:latest");
    assert_eq!(
        container.namespace_labels["app.kubernetes.io/part-of"],
        "guardlab"
    );
    let SensorRequest::Subscribe { containers } = requests.lock().unwrap()[0].1.clone() else {
        panic!()
    };
    assert_eq!(containers.len(), 1);
    assert_eq!(containers[0].pod_labels["app"], "jupyter-notebook");

    lab.carry_out(&LabAction::KillProcess { pid: 31337 })
        .await
        .unwrap();
    lab.carry_out(&LabAction::KillProcessTree { pid: 31338 })
        .await
        .unwrap();
    lab.carry_out(&LabAction::KillProcessGroup { pid: 31339 })
        .await
        .unwrap();
    let lines: Vec<String> = requests
        .lock()
        .unwrap()
        .iter()
        .map(|(line, _)| line.clone())
        .collect();
    assert!(
        lines.contains(&r#"{"op":"kill_group","pid":31339}"#.to_string()),
        "the group kill's wire form: {lines:?}"
    );
    let seen: Vec<SensorRequest> = requests
        .lock()
        .unwrap()
        .iter()
        .map(|(_, request)| request.clone())
        .collect();
    assert!(
        seen.contains(&SensorRequest::KillGroup { pid: 31339 }),
        "{seen:?}"
    );
    assert!(
        seen.contains(&SensorRequest::Kill {
            pid: 31337,
            tree: false
        }),
        "{seen:?}"
    );
    assert!(
        seen.contains(&SensorRequest::Kill {
            pid: 31338,
            tree: true
        }),
        "{seen:?}"
    );
    let to_sensor: Vec<String> = fake
        .requests()
        .into_iter()
        .filter(|r| r.uri.contains("ports=7070"))
        .map(|r| r.uri)
        .collect();
    assert!(to_sensor.len() >= 4, "{to_sensor:?}");
    assert!(
        to_sensor
            .iter()
            .all(|u| u.starts_with("/api/v1/namespaces/cryptominer/pods/guardlab-sensor-")),
        "{to_sensor:?}"
    );
    drop(events);
    lab.down(&guardlab_lab::NoProgress).await.unwrap();
}

#[tokio::test]
async fn a_kill_the_sensor_cannot_reach_is_an_error() {
    let (fake, _sensor) = cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let mut lab = KindLab::with_client(options(dir.path()), fake.client());
    lab.up(&guardlab_lab::NoProgress).await.unwrap();
    // From now on nothing listens where the sensor's port goes: the port-forward reports an error.
    let gone = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let nowhere = gone.local_addr().unwrap();
    drop(gone);
    route_sensor(&fake, nowhere);
    let err = lab
        .carry_out(&LabAction::KillProcess { pid: 1 })
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("sensor on node guardlab-control-plane"),
        "{err}"
    );
    lab.down(&guardlab_lab::NoProgress).await.unwrap();
}

#[tokio::test]
async fn without_docker_and_kind_up_says_what_is_missing_and_makes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let empty_path = tempfile::tempdir().unwrap();
    let options = KindOptions {
        target: Target::Kind {
            cluster: "guardlab".into(),
        },
        docker_host: Some(format!("unix://{}/docker.sock", dir.path().display())),
        search_path: Some(empty_path.path().as_os_str().to_os_string()),
        ..options(dir.path())
    };
    let mut lab = KindLab::new(options);
    let err = lab.up(&guardlab_lab::NoProgress).await.unwrap_err();
    let LabError::Missing { what, hint } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(what, "Docker and the kind CLI");
    assert!(
        hint.contains("install Docker Engine") && hint.contains("install kind"),
        "{hint}"
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing may be written"
    );
    assert_eq!(lab.status().await.unwrap(), None);
    lab.down(&guardlab_lab::NoProgress).await.unwrap();
}

#[tokio::test]
async fn the_forward_refuses_anything_but_loopback() {
    let fake = FakeApi::start().await;
    let err = crate::forward::LocalForward::start(
        fake.client(),
        "cryptominer".into(),
        "app=x".into(),
        8888,
        "0.0.0.0:0".parse().unwrap(),
    )
    .await;
    let Err(err) = err else {
        panic!("0.0.0.0 accepted")
    };
    assert!(err.to_string().contains("only a loopback address"), "{err}");
}

#[tokio::test]
async fn the_gate_opens_after_the_sensors_container_event_and_readiness_is_awaited_after_that() {
    let fake = FakeApi::start().await;
    // The sensor takes its time to confirm: a harness that did not wait for it would open the
    // gate first.
    let _sensor = FakeSensor::start(
        &fake,
        SensorBehaviour::Watching {
            delay: Duration::from_millis(400),
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut lab = KindLab::with_client(options(dir.path()), fake.client());
    let progress = Recorder::default();
    let info = lab.up(&progress).await.unwrap();
    let pod = &info.pods[0];

    // The applied Deployment carries the gate, the original args after it.
    let deployment = fake
        .requests()
        .into_iter()
        .find(|r| r.method == "PATCH" && r.uri.contains("/deployments/jupyter-notebook?"))
        .unwrap();
    let container = &deployment.body.unwrap()["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["args"],
        json!([
            "python3",
            "-c",
            gate_program(GATE_PORT),
            "start-notebook.py",
            "--IdentityProvider.token=",
            "--ServerApp.password="
        ])
    );
    assert!(container.get("command").is_none(), "{container}");

    let timeline = fake.timeline();
    let key = format!("cryptominer/{}", pod.name);
    let deployment_path = "/apis/apps/v1/namespaces/cryptominer/deployments/jupyter-notebook";
    let applied = at(&timeline, &format!("PATCH {deployment_path}"));
    let log_read = at(
        &timeline,
        &format!("GET /api/v1/namespaces/cryptominer/pods/{}/log", pod.name),
    );
    let subscribed = at(
        &timeline,
        &format!("sensor: subscribe [{}]", pod.container_id),
    );
    let confirmed = at(
        &timeline,
        &format!("sensor: container {}", pod.container_id),
    );
    let knocked = at(&timeline, &format!("portforward {key}:{GATE_PORT}"));
    let opened = at(&timeline, &format!("gate opened: {key}"));
    assert!(
        applied < log_read && log_read < subscribed,
        "the gate listens before the subscription:\n{}",
        timeline.join("\n")
    );
    assert!(
        subscribed < confirmed && confirmed < knocked && knocked < opened,
        "the gate opens after the sensor's container event:\n{}",
        timeline.join("\n")
    );
    let readiness: Vec<usize> = timeline
        .iter()
        .enumerate()
        .skip(applied + 1)
        .filter(|(_, e)| **e == format!("GET {deployment_path}"))
        .map(|(i, _)| i)
        .collect();
    assert!(
        !readiness.is_empty() && readiness.iter().all(|&i| i > opened),
        "the notebook's readiness is read only after its gate opened:\n{}",
        timeline.join("\n")
    );

    // What the user sees of it.
    let phases: Vec<String> = progress
        .0
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| l.strip_prefix("phase: ").map(str::to_string))
        .collect();
    let order = [
        "applying 5 objects",
        "waiting for the guardlab-sensor DaemonSet",
        "waiting for the notebook's container to run, its start gate waiting on port 8887",
        "subscribing to the guardlab-sensor pod on node guardlab-control-plane",
        "waiting for the sensor's `container` event",
        "opening the start gate of pod jupyter-notebook-",
        "waiting for the rollout",
        "forwarding 127.0.0.1:0 to the notebook",
    ];
    let positions: Vec<usize> = order
        .iter()
        .map(|p| {
            phases
                .iter()
                .position(|l| l.starts_with(p))
                .unwrap_or_else(|| panic!("no phase `{p}` in {phases:#?}"))
        })
        .collect();
    assert!(positions.is_sorted(), "{phases:#?}");
    lab.down(&guardlab_lab::NoProgress).await.unwrap();
}

#[tokio::test]
async fn events_from_before_the_gate_opened_are_dropped_and_the_container_event_kept() {
    let (fake, _sensor) = cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let mut lab = KindLab::with_client(options(dir.path()), fake.client());
    lab.up(&guardlab_lab::NoProgress).await.unwrap();
    let mut events = lab.events().await.unwrap();
    // The fake sensor sent: container, listen :8887 and accept :8887 (the gate), exec (the
    // gate becoming start-notebook.py), listen :8888 (the notebook).
    assert_only_the_notebooks_start_passes(&mut events).await;
    lab.down(&guardlab_lab::NoProgress).await.unwrap();
}

#[tokio::test]
async fn a_gate_that_never_listens_fails_clearly_and_up_removes_what_it_made() {
    let (fake, sensor) = cluster().await;
    fake.set_gate_delay(Duration::from_secs(3600));
    let dir = tempfile::tempdir().unwrap();
    let options = KindOptions {
        rollout_timeout: Duration::from_secs(1),
        ..options(dir.path())
    };
    let mut lab = KindLab::with_client(options, fake.client());
    let err = lab
        .up(&guardlab_lab::NoProgress)
        .await
        .unwrap_err()
        .to_string();
    for expected in [
        "the notebook's container did not start within 1s: pod cryptominer/jupyter-notebook-",
        "container minimal-notebook runs, but its start gate does not listen yet \
         (no `guardlab start gate: waiting on 127.0.0.1:8887 as pid <pid>` line in its log)",
        "removed what this run created: Service cryptominer/jupyter-notebook",
    ] {
        assert!(err.contains(expected), "missing `{expected}` in: {err}");
    }
    assert!(sensor.requests().is_empty(), "nothing was subscribed to");
    assert!(fake.gates_opened().is_empty());
    assert!(fake.paths().is_empty(), "left behind: {:?}", fake.paths());
    assert!(!lab.options().state_file().exists());
}

#[tokio::test]
async fn a_crash_looping_notebook_is_named_before_anything_is_subscribed() {
    let (fake, sensor) = cluster().await;
    fake.set_rollout("jupyter-notebook", Rollout::CrashLoopBackOff);
    let dir = tempfile::tempdir().unwrap();
    let mut lab = KindLab::with_client(options(dir.path()), fake.client());
    let err = lab
        .up(&guardlab_lab::NoProgress)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("Deployment cryptominer/jupyter-notebook cannot become ready: pod cryptominer/jupyter-notebook-"),
        "{err}"
    );
    assert!(
        err.contains("container minimal-notebook: CrashLoopBackOff"),
        "{err}"
    );
    assert!(sensor.requests().is_empty());
    assert!(fake.paths().is_empty(), "left behind: {:?}", fake.paths());
}

#[tokio::test]
async fn a_sensor_that_never_confirms_the_watch_keeps_the_gate_closed_and_up_cleans_up() {
    let fake = FakeApi::start().await;
    let sensor = FakeSensor::start(&fake, SensorBehaviour::Silent).await;
    let dir = tempfile::tempdir().unwrap();
    let options = KindOptions {
        gate_timeout: Duration::from_secs(1),
        ..options(dir.path())
    };
    let mut lab = KindLab::with_client(options, fake.client());
    let err = lab
        .up(&guardlab_lab::NoProgress)
        .await
        .unwrap_err()
        .to_string();
    let subscribed = sensor.requests();
    let Some(SensorRequest::Subscribe { containers }) = subscribed.first() else {
        panic!("{subscribed:?}")
    };
    let container = &containers[0];
    for expected in [
        "the guardlab-sensor pod cryptominer/guardlab-sensor-".to_string(),
        format!(
            " on node {NODE} did not confirm within 1s that it watches container {} of pod cryptominer/{} (no `container` event)",
            container.container_id, container.pod_name
        ),
        "kubectl logs -n cryptominer -l app.kubernetes.io/name=guardlab-sensor -c sensor".into(),
        "removed what this run created: Service cryptominer/jupyter-notebook".into(),
    ] {
        assert!(err.contains(&expected), "missing `{expected}` in: {err}");
    }
    assert!(
        fake.gates_opened().is_empty(),
        "an unwatched notebook is never started"
    );
    assert!(
        !fake
            .timeline()
            .iter()
            .any(|e| e.ends_with(&format!(":{GATE_PORT}"))),
        "{:#?}",
        fake.timeline()
    );
    assert!(fake.paths().is_empty(), "left behind: {:?}", fake.paths());
    assert!(!lab.options().state_file().exists());
    assert!(lab.notebook_address().is_none());
}

#[tokio::test]
async fn a_replaced_pods_gate_is_opened_after_its_resubscription() {
    let (fake, _sensor) = cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let mut lab = KindLab::with_client(options(dir.path()), fake.client());
    let info = lab.up(&guardlab_lab::NoProgress).await.unwrap();
    let mut events = lab.events().await.unwrap();
    until_notebook_listens(&mut events).await;

    let old = info.pods[0].name.clone();
    lab.carry_out(&LabAction::KillPod {
        namespace: "cryptominer".into(),
        name: old.clone(),
    })
    .await
    .unwrap();
    // The new pod's container, gated like the first; its events once its gate opened.
    let pid = gate_pid(4243);
    assert_eq!(
        until_notebook_listens(&mut events).await,
        [
            "container 4243".to_string(),
            format!("exec 4243 pid {pid}"),
            "listen 4243 0.0.0.0:8888".into(),
        ]
    );
    let new = lab.status().await.unwrap().unwrap().pods;
    assert_eq!(new.len(), 1);
    assert_ne!(new[0].name, old);
    let key = format!("cryptominer/{}", new[0].name);
    let timeline = fake.timeline();
    let subscribed = at(
        &timeline,
        &format!("sensor: subscribe [{}]", new[0].container_id),
    );
    let confirmed = at(
        &timeline,
        &format!("sensor: container {}", new[0].container_id),
    );
    let opened = at(&timeline, &format!("gate opened: {key}"));
    assert!(
        at(
            &timeline,
            &format!("DELETE /api/v1/namespaces/cryptominer/pods/{old}")
        ) < subscribed
            && subscribed < confirmed
            && confirmed < opened,
        "{}",
        timeline.join("\n")
    );
    let pod = fake.pod("cryptominer", &new[0].name).unwrap();
    assert_eq!(pod["status"]["containerStatuses"][0]["ready"], true);
    lab.down(&guardlab_lab::NoProgress).await.unwrap();
}

#[tokio::test]
async fn a_lab_brought_up_by_another_process_is_reused_and_its_waiting_gates_opened() {
    let (fake, _sensor) = cluster().await;
    let dir = tempfile::tempdir().unwrap();
    // `guardlab lab up` in another process: it opened the gate, then ended.
    let first = {
        let mut other = KindLab::with_client(options(dir.path()), fake.client());
        other.up(&guardlab_lab::NoProgress).await.unwrap().pods[0].clone()
    };
    assert_eq!(fake.gates_opened().len(), 1);

    // This process: up reuses the lab; the open gate is left alone, the stream starts anew
    // (the sensor's container event for a running notebook, nothing held back).
    let mut lab = KindLab::with_client(options(dir.path()), fake.client());
    let info = lab.up(&guardlab_lab::NoProgress).await.unwrap();
    assert_eq!(info.pods, vec![first.clone()]);
    assert_eq!(fake.gates_opened().len(), 1);
    let mut events = lab.events().await.unwrap();
    assert_eq!(describe(&next(&mut events).await), "container 4243");
    drop(events);
    drop(lab);

    // Its container restarts (here: its pod is replaced) while no guardlab runs: the new
    // one waits behind its gate, until a process asks for the events.
    let pods =
        kube::Api::<k8s_openapi::api::core::v1::Pod>::namespaced(fake.client(), "cryptominer");
    pods.delete(&first.name, &Default::default()).await.unwrap();
    let mut later = KindLab::with_client(options(dir.path()), fake.client());
    let status = later.status().await.unwrap().unwrap();
    let waiting = &status.pods[0];
    assert_ne!(waiting.name, first.name);
    assert!(
        !fake
            .gates_opened()
            .contains(&format!("cryptominer/{}", waiting.name))
    );
    let mut events = later.events().await.unwrap();
    let seen = until_notebook_listens(&mut events).await;
    assert_eq!(seen[0], "container 4244", "{seen:?}");
    assert!(seen[1].starts_with("exec 4244"), "{seen:?}");
    assert!(
        fake.gates_opened()
            .contains(&format!("cryptominer/{}", waiting.name))
    );
    later.down(&guardlab_lab::NoProgress).await.unwrap();
}

/// The notebook Deployment as `up` applies it, applied to `fake`; its pod's name and
/// container id.
async fn gated_pod(fake: &FakeApi) -> (String, String) {
    let objects = crate::manifests::lab_objects("cryptominer", "guardlab-sensor:0.1.0").unwrap();
    let deployment = objects
        .iter()
        .find(|m| m.object.kind() == "Deployment")
        .unwrap();
    let api = kube::Api::<kube::api::DynamicObject>::namespaced_with(
        fake.client(),
        "cryptominer",
        &deployment.object.api_resource(),
    );
    api.patch(
        deployment.object.name(),
        &kube::api::PatchParams::apply("test"),
        &kube::api::Patch::Apply(&deployment.object.to_dynamic()),
    )
    .await
    .unwrap();
    let name = fake.pods("cryptominer").pop().unwrap();
    let pod = crate::k8s::pod_info(
        &serde_json::from_value(fake.pod("cryptominer", &name).unwrap()).unwrap(),
    );
    (name, pod.container_id)
}

#[tokio::test]
async fn opening_a_gate_that_does_not_listen_yet_is_tried_again_and_an_open_one_is_left_open() {
    let fake = FakeApi::start().await;
    fake.set_gate_delay(Duration::from_millis(300));
    let (pod, container_id) = gated_pod(&fake).await;
    // No event stream here: only the forward's end says that the gate accepted.
    let (_filter, signals) = crate::gate::PreGateFilter::new();
    let client = fake.client();
    let open = || {
        crate::gate::open_gate(
            &client,
            "cryptominer",
            &pod,
            &container_id,
            &signals.passed,
            Duration::from_secs(10),
            Duration::from_millis(20),
        )
    };
    open().await.unwrap();
    let knock = format!("portforward cryptominer/{pod}:{GATE_PORT}");
    let knocks = |timeline: &[String]| timeline.iter().filter(|e| **e == knock).count();
    let timeline = fake.timeline();
    assert!(
        knocks(&timeline) >= 2,
        "refused first, then accepted:\n{}",
        timeline.join("\n")
    );
    assert!(at(&timeline, &format!("gate opened: cryptominer/{pod}")) > at(&timeline, &knock));
    assert_eq!(fake.gates_opened().len(), 1);

    // Once open, the gate's port refuses; the container's state says that it is open.
    open().await.unwrap();
    assert_eq!(knocks(&fake.timeline()), knocks(&timeline) + 1);
}

#[tokio::test]
async fn a_gate_that_never_accepts_is_an_error_that_says_what_the_forward_said() {
    let fake = FakeApi::start().await;
    fake.set_gate_delay(Duration::from_secs(3600));
    let (pod, container_id) = gated_pod(&fake).await;
    let (_filter, signals) = crate::gate::PreGateFilter::new();
    let err = crate::gate::open_gate(
        &fake.client(),
        "cryptominer",
        &pod,
        &container_id,
        &signals.passed,
        Duration::from_secs(1),
        Duration::from_millis(20),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains(&format!(
            "the start gate of pod cryptominer/{pod} did not open within 1s (port 8887 in the pod, \
             through the API server's port-forward: error forwarding port 8887 to pod {pod}: connection refused)"
        )),
        "{err}"
    );
    assert!(fake.gates_opened().is_empty());
}

/// How many port-forwards to the sensor's port the API was asked for: one per connection
/// the harness tried (event stream sessions and kills).
fn sensor_forwards(fake: &FakeApi) -> usize {
    fake.requests()
        .iter()
        .filter(|r| r.uri.contains("/pods/guardlab-sensor-") && r.uri.contains("ports=7070"))
        .count()
}

/// A loopback address nothing listens on.
async fn nowhere() -> std::net::SocketAddr {
    let gone = TcpListener::bind("127.0.0.1:0").await.unwrap();
    gone.local_addr().unwrap()
}

/// A stream that delivers events goes on after any number of lost connections (a
/// port-forward that drops, a sensor that restarts), spread over longer than the stream's
/// outage limit: each session that delivered is a fresh start, not one more failure.
#[tokio::test]
async fn a_stream_that_delivers_survives_any_number_of_lost_connections() {
    let (fake, sensor) = cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let options = KindOptions {
        stream_outage_limit: Duration::from_secs(2),
        ..options(dir.path())
    };
    let mut lab = KindLab::with_client(options, fake.client());
    lab.up(&guardlab_lab::NoProgress).await.unwrap();
    let mut events = lab.events().await.unwrap();
    until_notebook_listens(&mut events).await;
    for cut in 1..=15 {
        sensor.cut();
        // The stream connects again; the sensor confirms its watch again.
        let event = next(&mut events).await;
        assert!(
            matches!(event.body, EventBody::Container(_)),
            "after cut {cut}: {event:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(lab.event_stream_failure(), None);

    // Then the sensor is out of reach for a few tries: an outage since the last good session,
    // not since the stream started (longer ago than the limit).
    route_sensor(&fake, nowhere().await);
    let before = sensor_forwards(&fake);
    sensor.cut();
    for waited in 0.. {
        if sensor_forwards(&fake) >= before + 3 {
            break;
        }
        assert!(
            waited < 2000 && lab.event_stream_failure().is_none(),
            "the stream stopped trying: {:?}",
            lab.event_stream_failure()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    route_sensor(&fake, sensor.address);
    let event = next(&mut events).await;
    assert!(matches!(event.body, EventBody::Container(_)), "{event:?}");
    assert_eq!(lab.event_stream_failure(), None);

    // And it still opens the gate of a pod that replaces the notebook's.
    let old = lab.status().await.unwrap().unwrap().pods[0].name.clone();
    lab.carry_out(&LabAction::KillPod {
        namespace: "cryptominer".into(),
        name: old.clone(),
    })
    .await
    .unwrap();
    let seen = until_notebook_listens(&mut events).await;
    assert!(
        seen[0].starts_with("container ") && seen[1].starts_with("exec "),
        "{seen:?}"
    );
    let new = lab.status().await.unwrap().unwrap().pods[0].name.clone();
    assert_ne!(new, old);
    assert!(fake.gates_opened().contains(&format!("cryptominer/{new}")));
    lab.down(&guardlab_lab::NoProgress).await.unwrap();
}

/// A sensor out of reach for many tries in a row (its pod restarting, the API server's
/// port-forwards failing) is tried again, ever less often, until it is back.
#[tokio::test]
async fn a_sensor_out_of_reach_for_many_tries_is_waited_for() {
    let (fake, sensor) = cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let options = KindOptions {
        stream_backoff_max: Duration::from_millis(100),
        ..options(dir.path())
    };
    let mut lab = KindLab::with_client(options, fake.client());
    lab.up(&guardlab_lab::NoProgress).await.unwrap();
    let mut events = lab.events().await.unwrap();
    until_notebook_listens(&mut events).await;

    route_sensor(&fake, nowhere().await);
    let before = sensor_forwards(&fake);
    sensor.cut();
    let mut waited = 0;
    while sensor_forwards(&fake) < before + 15 {
        assert!(
            waited < 1500,
            "the stream stopped trying after {} tries; its last error: {:?}",
            sensor_forwards(&fake) - before,
            lab.event_stream_last_error()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += 1;
    }
    assert_eq!(lab.event_stream_failure(), None);
    assert!(
        lab.event_stream_last_error()
            .is_some_and(|e| e.contains("closed the event stream")),
        "{:?}",
        lab.event_stream_last_error()
    );

    // Back: the stream connects again and the sensor confirms its watch again.
    route_sensor(&fake, sensor.address);
    let event = next(&mut events).await;
    assert!(matches!(event.body, EventBody::Container(_)), "{event:?}");
    lab.down(&guardlab_lab::NoProgress).await.unwrap();
}

/// A sensor out of reach for longer than the outage limit: the stream gives up, its channel
/// closes, and the lab says why (what `lab up` prints, what a scenario reports).
#[tokio::test]
async fn a_long_outage_ends_the_stream_and_says_why() {
    let (fake, sensor) = cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let options = KindOptions {
        stream_backoff_max: Duration::from_millis(100),
        stream_outage_limit: Duration::from_secs(1),
        ..options(dir.path())
    };
    let mut lab = KindLab::with_client(options, fake.client());
    lab.up(&guardlab_lab::NoProgress).await.unwrap();
    let gave_up = lab.event_stream_gave_up();
    let mut events = lab.events().await.unwrap();
    until_notebook_listens(&mut events).await;
    assert_eq!(lab.event_stream_failure(), None);

    route_sensor(&fake, nowhere().await);
    sensor.cut();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(30), events.recv())
            .await
            .expect("the channel closes once the stream gives up");
        if event.is_none() {
            break;
        }
    }
    let why = tokio::time::timeout(Duration::from_secs(5), gave_up)
        .await
        .expect("who waits for the failure learns it");
    for expected in [
        "the sensor's event stream stopped: no working connection to the guardlab-sensor pod on node \
         guardlab-control-plane for 1s",
        "the last: the sensor on node guardlab-control-plane closed the event stream",
        "replaced notebook pods stay behind their start gates",
    ] {
        assert!(why.contains(expected), "missing `{expected}` in: {why}");
    }
    assert_eq!(lab.event_stream_failure(), Some(why.clone()));
    // Asking for the events again starts a new stream (the sensor is back).
    route_sensor(&fake, sensor.address);
    let mut events = lab.events().await.unwrap();
    assert!(matches!(
        next(&mut events).await.body,
        EventBody::Container(_)
    ));
    assert_eq!(lab.event_stream_failure(), None);
    lab.down(&guardlab_lab::NoProgress).await.unwrap();
}

/// No notebook pod on a node (its replacement cannot be scheduled): there is no sensor to
/// reach, and that is no outage of the sensor; the stream waits for a node.
#[tokio::test]
async fn a_stream_without_a_notebook_pod_on_a_node_waits_for_one() {
    let (fake, _sensor) = cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let options = KindOptions {
        stream_backoff_max: Duration::from_millis(100),
        stream_outage_limit: Duration::from_secs(1),
        ..options(dir.path())
    };
    let first = {
        let mut other = KindLab::with_client(options.clone(), fake.client());
        other.up(&guardlab_lab::NoProgress).await.unwrap().pods[0].clone()
    };
    fake.set_rollout("jupyter-notebook", Rollout::Unschedulable);
    let pods =
        kube::Api::<k8s_openapi::api::core::v1::Pod>::namespaced(fake.client(), "cryptominer");
    pods.delete(&first.name, &Default::default()).await.unwrap();
    let before = sensor_forwards(&fake);
    let mut later = KindLab::with_client(options, fake.client());
    let _events = later.events().await.unwrap();
    // Twice the outage limit.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(later.event_stream_failure(), None);
    assert_eq!(
        sensor_forwards(&fake),
        before,
        "no sensor was tried: {:?}",
        later.event_stream_last_error()
    );
    later.down(&guardlab_lab::NoProgress).await.unwrap();
}

/// `kubectl exec` into the notebook's container, or an exec probe, while its gate waits: the
/// sensor reports execs that are not the gate's. They do not count as the gate's exec: the
/// harness still opens the gate, and the notebook gets ready.
#[tokio::test]
async fn execs_of_other_processes_while_the_gate_waits_neither_open_it_nor_stop_its_opening() {
    let fake = FakeApi::start().await;
    let _sensor = FakeSensor::start(
        &fake,
        SensorBehaviour::ExecsBesideTheGate {
            delay: Duration::ZERO,
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let options = KindOptions {
        rollout_timeout: Duration::from_secs(5),
        ..options(dir.path())
    };
    let mut lab = KindLab::with_client(options, fake.client());
    let info = lab.up(&guardlab_lab::NoProgress).await.unwrap();
    let key = format!("cryptominer/{}", info.pods[0].name);
    let timeline = fake.timeline();
    assert!(
        at(&timeline, &format!("portforward {key}:{GATE_PORT}"))
            < at(&timeline, &format!("gate opened: {key}")),
        "{}",
        timeline.join("\n")
    );
    // The gate's own exec (its pid in the container is the one it announced) opens the
    // container's events; the others, from before, are held back with the rest.
    let mut events = lab.events().await.unwrap();
    assert_only_the_notebooks_start_passes(&mut events).await;
    lab.down(&guardlab_lab::NoProgress).await.unwrap();
}

/// A log the cluster does not let guardlab read (RBAC on a shared cluster, or credentials it
/// does not accept): `up` stops at once, says which permission it needs, and removes what it
/// applied; it does not poll until its rollout timeout.
#[tokio::test]
async fn a_log_the_cluster_refuses_fails_up_at_once_naming_the_permission() {
    for (code, said) in [
        (403, "(Forbidden, HTTP 403)"),
        (401, "(Unauthorized, HTTP 401)"),
    ] {
        let (fake, sensor) = cluster().await;
        fake.deny_logs(code);
        let dir = tempfile::tempdir().unwrap();
        let mut lab = KindLab::with_client(options(dir.path()), fake.client());
        let err = lab
            .up(&guardlab_lab::NoProgress)
            .await
            .unwrap_err()
            .to_string();
        for expected in [
            "reading the log of pod cryptominer/jupyter-notebook-",
            said,
            "guardlab needs `get` on `pods/log` in namespace cryptominer",
            "kubectl auth can-i get pods/log -n cryptominer",
            "removed what this run created: Service cryptominer/jupyter-notebook",
        ] {
            assert!(err.contains(expected), "missing `{expected}` in: {err}");
        }
        assert!(!err.contains("did not start within"), "{err}");
        let reads = fake
            .timeline()
            .iter()
            .filter(|e| e.starts_with("GET ") && e.ends_with("/log"))
            .count();
        assert_eq!(reads, 1, "no second try: waiting does not change a refusal");
        assert!(sensor.requests().is_empty(), "nothing was subscribed to");
        assert!(fake.gates_opened().is_empty());
        assert!(fake.paths().is_empty(), "left behind: {:?}", fake.paths());
        assert!(!lab.options().state_file().exists());
    }
}

/// The same refusal when another process asks for the events of a lab whose notebook waits
/// behind its gate: a clear error at once, not a stream that waits forever.
#[tokio::test]
async fn a_log_the_cluster_refuses_fails_a_new_event_stream_at_once() {
    let (fake, _sensor) = cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let first = {
        let mut other = KindLab::with_client(options(dir.path()), fake.client());
        other.up(&guardlab_lab::NoProgress).await.unwrap().pods[0].clone()
    };
    let pods =
        kube::Api::<k8s_openapi::api::core::v1::Pod>::namespaced(fake.client(), "cryptominer");
    pods.delete(&first.name, &Default::default()).await.unwrap();
    fake.deny_logs(403);
    let mut later = KindLab::with_client(options(dir.path()), fake.client());
    let err = later.events().await.unwrap_err().to_string();
    for expected in [
        "reading the log of pod cryptominer/jupyter-notebook-",
        "(Forbidden, HTTP 403)",
        "guardlab needs `get` on `pods/log` in namespace cryptominer",
    ] {
        assert!(err.contains(expected), "missing `{expected}` in: {err}");
    }
    later.down(&guardlab_lab::NoProgress).await.unwrap();
}
