//! The notebook's start gate: opened only once the sensor watches the container, its events
//! from before dropped, its failures (a gate that never listens or accepts, a sensor that never
//! confirms, a log the cluster refuses) said at once, and what `up` applied removed.

use super::*;

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
            "--ServerApp.password=",
            "--ServerApp.allow_remote_access=False"
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
    lab.down(&guardlab_lab_api::NoProgress).await.unwrap();
}

#[tokio::test]
async fn events_from_before_the_gate_opened_are_dropped_and_the_container_event_kept() {
    let (fake, _sensor) = cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let mut lab = KindLab::with_client(options(dir.path()), fake.client());
    lab.up(&guardlab_lab_api::NoProgress).await.unwrap();
    let mut events = lab.events().await.unwrap();
    // The fake sensor sent: container, listen :8887 and accept :8887 (the gate), exec (the
    // gate becoming start-notebook.py), listen :8888 (the notebook).
    assert_only_the_notebooks_start_passes(&mut events).await;
    lab.down(&guardlab_lab_api::NoProgress).await.unwrap();
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
        .up(&guardlab_lab_api::NoProgress)
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
        .up(&guardlab_lab_api::NoProgress)
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
        .up(&guardlab_lab_api::NoProgress)
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
    let info = lab.up(&guardlab_lab_api::NoProgress).await.unwrap();
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
    lab.down(&guardlab_lab_api::NoProgress).await.unwrap();
}

#[tokio::test]
async fn a_lab_brought_up_by_another_process_is_reused_and_its_waiting_gates_opened() {
    let (fake, _sensor) = cluster().await;
    let dir = tempfile::tempdir().unwrap();
    // `guardlab lab up` in another process: it opened the gate, then ended.
    let first = {
        let mut other = KindLab::with_client(options(dir.path()), fake.client());
        other.up(&guardlab_lab_api::NoProgress).await.unwrap().pods[0].clone()
    };
    assert_eq!(fake.gates_opened().len(), 1);

    // This process: up reuses the lab; the open gate is left alone, the stream starts anew
    // (the sensor's container event for a running notebook, nothing held back).
    let mut lab = KindLab::with_client(options(dir.path()), fake.client());
    let info = lab.up(&guardlab_lab_api::NoProgress).await.unwrap();
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
    later.down(&guardlab_lab_api::NoProgress).await.unwrap();
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
    let info = lab.up(&guardlab_lab_api::NoProgress).await.unwrap();
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
    lab.down(&guardlab_lab_api::NoProgress).await.unwrap();
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
            .up(&guardlab_lab_api::NoProgress)
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
        other.up(&guardlab_lab_api::NoProgress).await.unwrap().pods[0].clone()
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
    later.down(&guardlab_lab_api::NoProgress).await.unwrap();
}

/// The notebook Deployment as `up` applies it, applied to `fake`; its pod's name and
/// container id.
async fn gated_pod(fake: &FakeApi) -> (String, String) {
    let objects =
        guardlab_kind::manifests::lab_objects("cryptominer", "guardlab-sensor:0.1.0").unwrap();
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
    let pod = guardlab_kind::k8s::pod_info(
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
    let (_filter, signals) = guardlab_kind::pre_gate::PreGateFilter::new();
    let client = fake.client();
    let open = || {
        guardlab_kind::gate::open_gate(
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
    let (_filter, signals) = guardlab_kind::pre_gate::PreGateFilter::new();
    let err = guardlab_kind::gate::open_gate(
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
