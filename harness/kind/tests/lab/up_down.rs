//! Up, up again, status and down against the fake API: what is applied, forwarded, recorded
//! and removed, and what is left alone.

use super::*;

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
    assert_eq!(info.backend, Backend::Kind);
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
    let again = lab.up(&guardlab_lab_api::NoProgress).await.unwrap();
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
    lab.down(&guardlab_lab_api::NoProgress).await.unwrap();
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
    lab.down(&guardlab_lab_api::NoProgress).await.unwrap(); // down twice is harmless
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
        .up(&guardlab_lab_api::NoProgress)
        .await
        .unwrap_err()
        .to_string();
    assert!(!err.contains("Namespace cryptominer"), "{err}");
    assert_eq!(fake.paths(), [namespace]);

    fake.set_rollout("jupyter-notebook", Rollout::Healthy);
    lab.up(&guardlab_lab_api::NoProgress).await.unwrap();
    let state = LabState::load(&lab.options().state_file())
        .unwrap()
        .unwrap();
    assert!(
        !state.objects[0].created && state.objects[0].kind == "Namespace",
        "{state:?}"
    );
    lab.down(&guardlab_lab_api::NoProgress).await.unwrap();
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
    alice.up(&guardlab_lab_api::NoProgress).await.unwrap();
    bob.up(&guardlab_lab_api::NoProgress).await.unwrap();
    assert_ne!(alice.options().state_file(), bob.options().state_file());
    alice.down(&guardlab_lab_api::NoProgress).await.unwrap();
    assert!(
        fake.paths().iter().all(|p| p.contains("/bob")),
        "{:?}",
        fake.paths()
    );
    assert_eq!(fake.pods("bob").len(), 2);
    bob.down(&guardlab_lab_api::NoProgress).await.unwrap();
    assert!(fake.paths().is_empty());
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
    let err = lab.up(&guardlab_lab_api::NoProgress).await.unwrap_err();
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
    lab.down(&guardlab_lab_api::NoProgress).await.unwrap();
}

#[tokio::test]
async fn the_forward_refuses_anything_but_loopback() {
    let fake = FakeApi::start().await;
    let err = guardlab_kind::forward::LocalForward::start(
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
