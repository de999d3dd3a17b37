//! `KindLab` against the fake API server: up, rollout failures and their cleanup, port-forward,
//! events and kills through the sensor, pod deletion, down.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use guardlab_events::{ContainerInfo, Event, EventBody, write_ndjson};
use guardlab_lab::{Lab, LabAction, LabError, Progress};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use crate::fake_api::{FakeApi, NODE, Rollout};
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

/// What the fake sensor got: each request line as sent, and as parsed.
type SensorLog = Arc<Mutex<Vec<(String, SensorRequest)>>>;

/// A fake sensor control port: records every request line; answers kills with ok and
/// subscriptions with a container event for the first container, then an exec event.
async fn fake_sensor() -> (std::net::SocketAddr, SensorLog) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let seen: SensorLog = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((connection, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let (r, mut w) = connection.into_split();
                let mut lines = BufReader::new(r).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let request: SensorRequest = serde_json::from_str(&line).unwrap();
                    log.lock().unwrap().push((line.clone(), request.clone()));
                    match request {
                        SensorRequest::Kill { .. } | SensorRequest::KillGroup { .. } => {
                            w.write_all(b"{\"ok\":true}\n").await.unwrap();
                            return;
                        }
                        SensorRequest::Subscribe { containers } => {
                            let mut out = Vec::new();
                            let info = ContainerInfo {
                                cgroup_id: 4242,
                                container_id: containers[0].container_id.clone(),
                                ..Default::default()
                            };
                            write_ndjson(&mut out, &Event::new(1, EventBody::Container(info)))
                                .unwrap();
                            w.write_all(&out).await.unwrap();
                        }
                    }
                }
            });
        }
    });
    (address, seen)
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
    let fake = FakeApi::start().await;
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
    assert_eq!(info.backend, "kind");
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
        .find(|r| r.uri.contains("/portforward"))
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

    // Up again: harmless, nothing new, still recorded as ours.
    let again = lab.up(&guardlab_lab::NoProgress).await.unwrap();
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
        err.contains("the rollout did not finish within 1s"),
        "{err}"
    );
    assert!(
        err.contains("is Pending, not scheduled: Unschedulable: 0/1 nodes are available: 1 Insufficient memory."),
        "{err}"
    );
    assert!(fake.paths().is_empty(), "left behind: {:?}", fake.paths());
}

#[tokio::test]
async fn what_existed_before_up_is_left_alone_by_cleanup_and_down() {
    let fake = FakeApi::start().await;
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
    let fake = FakeApi::start().await;
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
    let fake = FakeApi::start().await;
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
    let fake = FakeApi::start().await;
    let (sensor, requests) = fake_sensor().await;
    fake.route_port("guardlab-sensor-", 7070, sensor);
    let dir = tempfile::tempdir().unwrap();
    let mut lab = KindLab::with_client(options(dir.path()), fake.client());
    let info = lab.up(&guardlab_lab::NoProgress).await.unwrap();
    let pod = &info.pods[0];

    let mut events = lab.events().await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .unwrap()
        .unwrap();
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
    let fake = FakeApi::start().await; // no route to a sensor: the port-forward reports an error
    let dir = tempfile::tempdir().unwrap();
    let mut lab = KindLab::with_client(options(dir.path()), fake.client());
    lab.up(&guardlab_lab::NoProgress).await.unwrap();
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
