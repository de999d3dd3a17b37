//! The kind path of `up` and `down` with stand-ins for the machine's tools: a fake Docker
//! engine on a unix socket (the Docker API as bollard speaks it), a stand-in `kind` script that
//! keeps its clusters in a file and hands out a kubeconfig for the fake API server; and the
//! `kind` CLI driven alone.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use guardlab_lab_api::{Lab, NoProgress};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::UnixListener;

use guardlab_kind_test_support as support;

use guardlab_kind::manifests::CLUSTER_CONFIG;
use guardlab_kind::state::{LabState, StateTarget};
use guardlab_kind::tools::KindCli;
use guardlab_kind::{KindLab, KindOptions, Target};

use support::fake_api::FakeApi;
use support::fake_sensor::{FakeSensor, SensorBehaviour};
use support::write_script;

#[derive(Default)]
struct DockerState {
    /// (method, path without the API version, query)
    requests: Vec<(String, String, String)>,
    images: Vec<String>,
    /// Names in the last build context.
    context: Vec<String>,
    fail_build: bool,
}

async fn fake_docker(socket: &Path, state: Arc<Mutex<DockerState>>) {
    let listener = UnixListener::bind(socket).unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let state = state.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| docker_answer(state.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

async fn docker_answer(
    state: Arc<Mutex<DockerState>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().to_string();
    let full = req.uri().path().to_string();
    // bollard prefixes every path with the API version: /v1.xx/...
    let path = match full.strip_prefix("/v") {
        Some(rest) => rest
            .find('/')
            .map(|i| rest[i..].to_string())
            .unwrap_or(full.clone()),
        None => full.clone(),
    };
    let query = req.uri().query().unwrap_or("").to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut s = state.lock().unwrap();
    s.requests
        .push((method.clone(), path.clone(), query.clone()));
    let json = |status: u16, body: &str| {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap()
    };
    let image_of = |p: &str, suffix: &str| {
        p.trim_start_matches("/images/")
            .trim_end_matches(suffix)
            .replace("%3A", ":")
    };
    let response = match (method.as_str(), path.as_str()) {
        ("GET", "/_ping") | ("HEAD", "/_ping") => json(200, "OK"),
        ("GET", p) if p.starts_with("/images/") && p.ends_with("/json") => {
            if s.images.contains(&image_of(p, "/json")) {
                json(200, r#"{"Id":"sha256:0"}"#)
            } else {
                json(404, r#"{"message":"No such image"}"#)
            }
        }
        ("POST", "/build") => {
            let mut archive = tar::Archive::new(&body[..]);
            s.context = archive
                .entries()
                .unwrap()
                .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
                .collect();
            if s.fail_build {
                json(
                    200,
                    "{\"stream\":\"Step 1/6 : ARG RUST_VERSION=1.95\\n\"}\n{\"errorDetail\":{\"message\":\"cargo build failed\"},\"error\":\"cargo build failed\"}\n",
                )
            } else {
                let tag = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("t="))
                    .unwrap()
                    .replace("%3A", ":");
                if !s.images.contains(&tag) {
                    s.images.push(tag.clone());
                }
                json(
                    200,
                    &format!(
                        "{{\"stream\":\"Step 1/6 : ARG RUST_VERSION=1.95\\n\"}}\n{{\"stream\":\"Successfully tagged {tag}\\n\"}}\n"
                    ),
                )
            }
        }
        ("DELETE", p) if p.starts_with("/images/") => {
            let image = image_of(p, "");
            s.images.retain(|i| *i != image);
            json(200, &format!("[{{\"Untagged\":\"{image}\"}}]"))
        }
        _ => json(404, r#"{"message":"not in the fake"}"#),
    };
    Ok(response)
}

/// A stand-in `kind` that logs its arguments, keeps its clusters in a file and gives out a
/// kubeconfig for `api`.
fn fake_kind(dir: &Path, api: &FakeApi) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: kind-guardlab\n  cluster:\n    server: http://{}\n\
         contexts:\n- name: kind-guardlab\n  context:\n    cluster: kind-guardlab\n    user: kind-guardlab\n\
         current-context: kind-guardlab\nusers:\n- name: kind-guardlab\n  user:\n    token: fake\n",
        api.address
    );
    std::fs::write(dir.join("kubeconfig"), kubeconfig).unwrap();
    let d = dir.display();
    write_script(
        &bin.join("kind"),
        &format!(
            "#!/bin/sh\necho \"$*\" >> {d}/kind.log\ntouch {d}/clusters\ncase \"$1 $2\" in\n\
             'get clusters') cat {d}/clusters ;;\n\
             'get kubeconfig') cat {d}/kubeconfig ;;\n\
             'create cluster') echo \"$4\" >> {d}/clusters; cp \"$6\" {d}/created-with.yaml ;;\n\
             'delete cluster') grep -vx \"$4\" {d}/clusters > {d}/clusters.new; mv {d}/clusters.new {d}/clusters ;;\n\
             esac\n"
        ),
    );
    bin
}

struct Machine {
    dir: tempfile::TempDir,
    api: FakeApi,
    _sensor: FakeSensor,
    docker: Arc<Mutex<DockerState>>,
    options: KindOptions,
}

impl Machine {
    async fn new() -> Machine {
        let dir = tempfile::tempdir().unwrap();
        let api = FakeApi::start().await;
        let sensor = FakeSensor::start(
            &api,
            SensorBehaviour::Watching {
                delay: Duration::ZERO,
            },
        )
        .await;
        let docker = Arc::new(Mutex::new(DockerState::default()));
        let socket = dir.path().join("docker.sock");
        fake_docker(&socket, docker.clone()).await;
        let bin = fake_kind(dir.path(), &api);
        let workspace = dir.path().join("workspace");
        std::fs::create_dir_all(workspace.join("sensor")).unwrap();
        std::fs::create_dir_all(workspace.join("target/debug")).unwrap();
        std::fs::write(workspace.join("Cargo.toml"), "[workspace]\n").unwrap();
        std::fs::write(workspace.join("sensor/Dockerfile"), "FROM scratch\n").unwrap();
        let options = KindOptions {
            target: Target::Kind {
                cluster: "guardlab".into(),
            },
            local_port: 0,
            rollout_timeout: Duration::from_secs(20),
            delete_timeout: Duration::from_secs(5),
            poll_interval: Duration::from_millis(20),
            state_dir: dir.path().join("state"),
            workspace_root: workspace,
            docker_host: Some(format!("unix://{}", socket.display())),
            search_path: Some(bin.into_os_string()),
            ..KindOptions::default()
        };
        Machine {
            dir,
            api,
            _sensor: sensor,
            docker,
            options,
        }
    }

    fn kind_log(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("kind.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn docker_requests(&self) -> Vec<String> {
        self.docker
            .lock()
            .unwrap()
            .requests
            .iter()
            .map(|(m, p, _)| format!("{m} {p}"))
            .collect()
    }
}

#[tokio::test]
async fn up_creates_the_cluster_builds_and_loads_the_image_then_down_deletes_both() {
    let m = Machine::new().await;
    let mut lab = KindLab::new(m.options.clone());
    let info = lab.up(&NoProgress).await.unwrap();
    assert_eq!(info.pods.len(), 1);

    let config = m.options.state_dir.join("kind-guardlab-cluster.yaml");
    assert_eq!(
        m.kind_log(),
        [
            "version".to_string(),
            "get clusters".into(),
            format!(
                "create cluster --name guardlab --config {} --wait 180s",
                config.display()
            ),
            "load docker-image guardlab-sensor:0.1.0 --name guardlab".into(),
            "get kubeconfig --name guardlab".into(),
        ]
    );
    assert_eq!(
        std::fs::read_to_string(m.dir.path().join("created-with.yaml")).unwrap(),
        CLUSTER_CONFIG.text
    );

    let requests = m.docker_requests();
    assert_eq!(requests[0], "GET /_ping");
    assert!(
        requests.contains(&"GET /images/guardlab-sensor:0.1.0/json".to_string()),
        "{requests:?}"
    );
    let build = m
        .docker
        .lock()
        .unwrap()
        .requests
        .iter()
        .find(|(_, p, _)| p == "/build")
        .cloned()
        .unwrap();
    assert!(
        build.2.contains("dockerfile=sensor%2FDockerfile"),
        "{}",
        build.2
    );
    assert!(build.2.contains("t=guardlab-sensor%3A0.1.0"), "{}", build.2);
    assert_eq!(
        m.docker.lock().unwrap().context,
        ["Cargo.toml", "sensor", "sensor/Dockerfile"]
    );

    let state = LabState::load(&m.options.state_file()).unwrap().unwrap();
    assert_eq!(
        state.target,
        StateTarget::Kind {
            cluster: "guardlab".into(),
            created: true
        }
    );
    assert!(state.image.as_ref().unwrap().created);
    assert_eq!(m.api.pods("cryptominer").len(), 2);

    lab.down(&NoProgress).await.unwrap();
    assert_eq!(
        m.kind_log().last().unwrap(),
        "delete cluster --name guardlab"
    );
    assert_eq!(
        m.docker_requests().last().unwrap(),
        "DELETE /images/guardlab-sensor:0.1.0"
    );
    assert!(m.docker.lock().unwrap().images.is_empty());
    assert!(!m.options.state_file().exists());
}

#[tokio::test]
async fn an_existing_cluster_and_image_are_reused_and_kept() {
    let m = Machine::new().await;
    std::fs::write(m.dir.path().join("clusters"), "guardlab\n").unwrap();
    m.docker
        .lock()
        .unwrap()
        .images
        .push("guardlab-sensor:0.1.0".into());
    let mut lab = KindLab::new(m.options.clone());
    lab.up(&NoProgress).await.unwrap();
    assert!(
        !m.kind_log().iter().any(|l| l.starts_with("create")),
        "{:?}",
        m.kind_log()
    );
    let state = LabState::load(&m.options.state_file()).unwrap().unwrap();
    assert_eq!(
        state.target,
        StateTarget::Kind {
            cluster: "guardlab".into(),
            created: false
        }
    );
    assert!(!state.image.as_ref().unwrap().created);

    lab.down(&NoProgress).await.unwrap();
    assert!(
        !m.kind_log().iter().any(|l| l.starts_with("delete")),
        "{:?}",
        m.kind_log()
    );
    assert!(!m.docker_requests().iter().any(|r| r.starts_with("DELETE")));
    assert_eq!(m.docker.lock().unwrap().images, ["guardlab-sensor:0.1.0"]);
    // The cluster stays; what up applied in it is gone.
    assert!(m.api.paths().is_empty(), "{:?}", m.api.paths());
    assert!(!m.options.state_file().exists());
}

#[tokio::test]
async fn a_failed_build_is_reported_and_down_still_removes_the_cluster_it_made() {
    let m = Machine::new().await;
    m.docker.lock().unwrap().fail_build = true;
    let mut lab = KindLab::new(m.options.clone());
    let err = lab.up(&NoProgress).await.unwrap_err().to_string();
    assert!(
        err.contains(
            "building guardlab-sensor:0.1.0 from sensor/Dockerfile failed: cargo build failed"
        ),
        "{err}"
    );
    assert!(
        m.api.paths().is_empty(),
        "nothing applied after a failed build"
    );
    // A new harness (the first one gave up) finds the record and removes the cluster.
    let mut later = KindLab::new(m.options.clone());
    later.down(&NoProgress).await.unwrap();
    assert_eq!(
        m.kind_log().last().unwrap(),
        "delete cluster --name guardlab"
    );
    assert!(!m.options.state_file().exists());
}

#[tokio::test]
async fn a_kind_that_is_found_but_does_not_run_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let kind = dir.path().join("kind");
    write_script(
        &kind,
        "#!/bin/sh\necho 'kind: broken install' >&2\nexit 3\n",
    );
    let err = KindCli::find(dir.path().as_os_str())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("`kind version` failed"), "{err}");
    assert!(err.contains("broken install"), "{err}");
}

#[tokio::test]
async fn the_kind_cli_is_driven_with_the_expected_arguments() {
    // A stand-in `kind` that logs its arguments and answers like kind does.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let kind = dir.path().join("kind");
    write_script(
        &kind,
        &format!(
            "#!/bin/sh\necho \"$*\" >> {}\ncase \"$1 $2\" in\n  'get clusters') echo guardlab; echo other ;;\n  'get kubeconfig') echo 'apiVersion: v1' ;;\nesac\n",
            log.display()
        ),
    );
    let not_executable = tempfile::tempdir().unwrap();
    std::fs::write(not_executable.path().join("kind"), "").unwrap();
    let path = std::env::join_paths([not_executable.path(), dir.path()]).unwrap();
    let cli = KindCli::find(&path).await.unwrap();
    assert_eq!(cli.path, kind);
    assert_eq!(cli.clusters().await.unwrap(), ["guardlab", "other"]);
    assert_eq!(
        cli.kubeconfig("guardlab").await.unwrap(),
        "apiVersion: v1\n"
    );
    cli.load_image("guardlab", "guardlab-sensor:0.1.0")
        .await
        .unwrap();
    cli.create_cluster("guardlab", Path::new("/c.yaml"), &NoProgress)
        .await
        .unwrap();
    cli.delete_cluster("guardlab").await.unwrap();
    let logged = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        logged.lines().collect::<Vec<_>>(),
        [
            "version",
            "get clusters",
            "get kubeconfig --name guardlab",
            "load docker-image guardlab-sensor:0.1.0 --name guardlab",
            "create cluster --name guardlab --config /c.yaml --wait 180s",
            "delete cluster --name guardlab",
        ]
    );
}
