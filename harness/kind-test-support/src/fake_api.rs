//! A fake Kubernetes API server for tests: real HTTP on 127.0.0.1, so kube-rs's whole client
//! stack (URLs, JSON, server-side apply requests, the port-forward WebSocket upgrade) is what
//! gets exercised. It keeps objects in memory, plays a controller for Deployments and
//! DaemonSets (pods whose status follows a chosen [`Rollout`]) and forwards port-forward
//! streams to local TCP addresses the test chooses.
//!
//! It also plays the kubelet of a gated notebook container (see `gate`): a container whose
//! args are the start gate's runs but is not ready; its log ends with the gate's line once the
//! gate listens ([`FakeApi::set_gate_delay`]); the first port-forward connection to its gate
//! port opens the gate (the pod becomes ready, its Deployment too), later ones are refused.
//! [`super::fake_sensor::FakeSensor`] is the sensor's control port, as the harness reaches it
//! through a port-forward. Both write what they do, in order, to [`FakeState::timeline`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use kube::Client;
use serde_json::{Value as Json, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use guardlab_kind::gate_program::{GATE_PORT, gate_program, gate_waiting_line};

pub const NODE: &str = "guardlab-control-plane";

/// The gate's pid inside its container, as the fake kubelet's log has the gate announce it
/// and as the fake sensor reports the gate's exec (`ns_pid`).
pub const GATE_NS_PID: u32 = 7;

/// How the pods of a workload behave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rollout {
    Healthy,
    ImagePullBackOff,
    CrashLoopBackOff,
    Unschedulable,
}

#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub uri: String,
    pub headers: HashMap<String, String>,
    pub body: Option<Json>,
}

#[derive(Default)]
pub struct FakeState {
    pub objects: BTreeMap<String, Json>,
    pub requests: Vec<Recorded>,
    pub rollouts: HashMap<String, Rollout>,
    pub port_targets: HashMap<(String, u16), SocketAddr>,
    /// What happened, in order: `GET /path`, `PATCH /path`, `DELETE /path`,
    /// `portforward ns/pod:port`, `gate opened: ns/pod`, and the fake sensor's lines
    /// (`sensor: subscribe [ids]`, `sensor: container <id>`, `sensor: exec <id>`).
    pub timeline: Vec<String>,
    /// Gated pods (path) and when their gate starts listening.
    gate_listens_at: HashMap<String, Instant>,
    /// Pods (`ns/name`) whose gate was opened.
    pub gates_opened: BTreeSet<String>,
    /// How long a gated container runs before its gate listens.
    gate_delay: Duration,
    /// The HTTP status of every read of a pod's log (an RBAC denial: 403), when set.
    logs_denied: Option<u16>,
    counter: u64,
}

pub struct FakeApi {
    pub address: SocketAddr,
    pub state: Arc<Mutex<FakeState>>,
    task: JoinHandle<()>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeApi {
    pub async fn start() -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(FakeState::default()));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(state.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        FakeApi {
            address,
            state,
            task,
        }
    }

    pub fn client(&self) -> Client {
        let config = kube::Config::new(format!("http://{}", self.address).parse().unwrap());
        Client::try_from(config).unwrap()
    }

    pub fn set_rollout(&self, workload: &str, rollout: Rollout) {
        self.state
            .lock()
            .unwrap()
            .rollouts
            .insert(workload.into(), rollout);
    }

    /// Port-forwards to port `port` of pods whose name starts with `pod_prefix` go to `target`.
    pub fn route_port(&self, pod_prefix: &str, port: u16, target: SocketAddr) {
        self.state
            .lock()
            .unwrap()
            .port_targets
            .insert((pod_prefix.into(), port), target);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn timeline(&self) -> Vec<String> {
        self.state.lock().unwrap().timeline.clone()
    }

    /// Gated containers made from now on run this long before their gate listens.
    pub fn set_gate_delay(&self, delay: Duration) {
        self.state.lock().unwrap().gate_delay = delay;
    }

    /// Every read of a pod's log is answered with this HTTP status (403: RBAC forbids `get` on
    /// `pods/log`; 401: the credentials are not accepted), as the API server words it.
    pub fn deny_logs(&self, code: u16) {
        self.state.lock().unwrap().logs_denied = Some(code);
    }

    pub fn gates_opened(&self) -> BTreeSet<String> {
        self.state.lock().unwrap().gates_opened.clone()
    }

    /// A pod as the API has it now.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<Json> {
        self.state
            .lock()
            .unwrap()
            .objects
            .get(&format!("/api/v1/namespaces/{namespace}/pods/{name}"))
            .cloned()
    }

    pub fn paths(&self) -> Vec<String> {
        self.state.lock().unwrap().objects.keys().cloned().collect()
    }

    pub fn insert(&self, path: &str, object: Json) {
        self.state
            .lock()
            .unwrap()
            .objects
            .insert(path.into(), object);
    }

    /// Pods of the namespace, by name.
    pub fn pods(&self, namespace: &str) -> Vec<String> {
        let prefix = format!("/api/v1/namespaces/{namespace}/pods/");
        self.paths()
            .iter()
            .filter_map(|p| p.strip_prefix(&prefix).map(str::to_string))
            .collect()
    }
}

const LIST_KINDS: [(&str, &str); 6] = [
    ("pods", "PodList"),
    ("deployments", "DeploymentList"),
    ("daemonsets", "DaemonSetList"),
    ("services", "ServiceList"),
    ("serviceaccounts", "ServiceAccountList"),
    ("namespaces", "NamespaceList"),
];

fn respond(code: StatusCode, body: Json) -> Response<Full<Bytes>> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(&body).unwrap())))
        .unwrap()
}

fn not_found(path: &str) -> Response<Full<Bytes>> {
    respond(
        StatusCode::NOT_FOUND,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": format!("{path} not found"), "reason": "NotFound", "code": 404}),
    )
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| {
            v.replace("%3D", "=")
                .replace("%2C", ",")
                .replace("%2F", "/")
        })
    })
}

fn labels_match(object: &Json, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|kv| {
        let (k, v) = kv.split_once('=').unwrap();
        object["metadata"]["labels"][k].as_str() == Some(v)
    })
}

async fn handle(
    state: Arc<Mutex<FakeState>>,
    mut req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().to_string();
    let uri = req.uri().clone();
    let path = uri.path().to_string();
    let query = uri.query().unwrap_or("").to_string();
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect::<HashMap<_, _>>();

    if path.ends_with("/portforward") {
        state.lock().unwrap().requests.push(Recorded {
            method,
            uri: uri.to_string(),
            headers: headers.clone(),
            body: None,
        });
        return Ok(port_forward(state, &mut req, &path, &query, &headers));
    }
    if path.ends_with("/log") && method == "GET" {
        let mut s = state.lock().unwrap();
        s.timeline.push(format!("GET {path}"));
        if let Some(code) = s.logs_denied {
            return Ok(log_denied(code, path.trim_end_matches("/log")));
        }
        return Ok(container_log(&s, path.trim_end_matches("/log")));
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Option<Json> = if body.is_empty() {
        None
    } else {
        serde_json::from_slice(&body).ok()
    };
    let mut s = state.lock().unwrap();
    s.timeline.push(format!("{method} {path}"));
    s.requests.push(Recorded {
        method: method.clone(),
        uri: uri.to_string(),
        headers,
        body: body.clone(),
    });
    let last = path.rsplit('/').next().unwrap_or("");
    let response = match method.as_str() {
        "GET" => {
            if let Some(object) = s.objects.get(&path) {
                respond(StatusCode::OK, object.clone())
            } else if let Some((_, list_kind)) =
                LIST_KINDS.iter().find(|(plural, _)| *plural == last)
            {
                let selector = query_param(&query, "labelSelector").unwrap_or_default();
                let prefix = format!("{path}/");
                let items: Vec<Json> = s
                    .objects
                    .iter()
                    .filter(|(p, o)| {
                        p.starts_with(&prefix)
                            && !p[prefix.len()..].contains('/')
                            && labels_match(o, &selector)
                    })
                    .map(|(_, o)| o.clone())
                    .collect();
                respond(
                    StatusCode::OK,
                    json!({"apiVersion": "v1", "kind": list_kind, "metadata": {"resourceVersion": "1"}, "items": items}),
                )
            } else {
                not_found(&path)
            }
        }
        "PATCH" => {
            let mut object = body.unwrap_or(json!({}));
            s.counter += 1;
            let n = s.counter;
            let old = s.objects.get(&path).cloned();
            let generation = old
                .as_ref()
                .and_then(|o| o["metadata"]["generation"].as_i64())
                .unwrap_or(0)
                + 1;
            let uid = old
                .as_ref()
                .and_then(|o| o["metadata"]["uid"].as_str().map(str::to_string))
                .unwrap_or(format!("uid-{n}"));
            object["metadata"]["uid"] = json!(uid);
            object["metadata"]["generation"] = json!(generation);
            object["metadata"]["resourceVersion"] = json!(n.to_string());
            object["metadata"]["creationTimestamp"] =
                json!(format!("2025-01-01T00:{:02}:{:02}Z", n / 60 % 60, n % 60));
            let kind = object["kind"].as_str().unwrap_or("").to_string();
            if kind == "Deployment" || kind == "DaemonSet" {
                reconcile(&mut s, &path, &mut object);
            }
            s.objects.insert(path.clone(), object.clone());
            respond(StatusCode::OK, object)
        }
        "DELETE" => match s.objects.remove(&path) {
            None => not_found(&path),
            Some(object) => {
                let kind = object["kind"].as_str().unwrap_or("");
                if kind == "Namespace" {
                    let inside = format!(
                        "/namespaces/{}/",
                        object["metadata"]["name"].as_str().unwrap()
                    );
                    s.objects.retain(|p, _| !p.contains(&inside));
                }
                if kind == "Deployment" || kind == "DaemonSet" {
                    s.objects.retain(|_, o| {
                        o["metadata"]["annotations"]["fake/owner"].as_str() != Some(path.as_str())
                    });
                }
                if kind == "Pod"
                    && let Some(owner) = object["metadata"]["annotations"]["fake/owner"].as_str()
                    && let Some(mut workload) = s.objects.get(owner).cloned()
                {
                    // The controller replaces the pod.
                    reconcile(&mut s, owner, &mut workload);
                }
                respond(StatusCode::OK, object)
            }
        },
        _ => respond(StatusCode::METHOD_NOT_ALLOWED, json!({})),
    };
    Ok(response)
}

/// Play the Deployment/DaemonSet controller: make the pod (if there is none) and set statuses.
fn reconcile(s: &mut FakeState, path: &str, workload: &mut Json) {
    let name = workload["metadata"]["name"].as_str().unwrap().to_string();
    let namespace = workload["metadata"]["namespace"]
        .as_str()
        .unwrap()
        .to_string();
    let rollout = s.rollouts.get(&name).copied().unwrap_or(Rollout::Healthy);
    // A gated container runs, but is ready only once its gate was opened.
    let gated = is_gate(&workload["spec"]["template"]["spec"]["containers"][0]);
    let has_pod = s
        .objects
        .values()
        .any(|o| o["metadata"]["annotations"]["fake/owner"].as_str() == Some(path));
    if !has_pod {
        s.counter += 1;
        let n = s.counter;
        let pod_name = format!("{name}-{n:05}");
        let template = &workload["spec"]["template"];
        let containers = template["spec"]["containers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let statuses: Vec<Json> = containers
            .iter()
            .map(|c| {
                let state = match rollout {
                    Rollout::Healthy => json!({"running": {"startedAt": "2025-01-01T00:00:00Z"}}),
                    Rollout::ImagePullBackOff => json!({"waiting": {"reason": "ImagePullBackOff",
                        "message": format!("Back-off pulling image \"{}\"", c["image"].as_str().unwrap())}}),
                    Rollout::CrashLoopBackOff => json!({"waiting": {"reason": "CrashLoopBackOff",
                        "message": "back-off 40s restarting failed container"}}),
                    Rollout::Unschedulable => json!({"waiting": {"reason": "ContainerCreating"}}),
                };
                let mut status = json!({"name": c["name"], "image": c["image"], "imageID": format!("sha256:{n:064x}"),
                    "ready": rollout == Rollout::Healthy && !is_gate(c), "restartCount": 0, "state": state,
                    "containerID": format!("containerd://{:064x}", n * 1000 + 1)});
                if rollout == Rollout::CrashLoopBackOff {
                    status["restartCount"] = json!(3);
                    status["lastState"] = json!({"terminated": {"exitCode": 1, "reason": "Error"}});
                }
                if rollout == Rollout::Unschedulable {
                    status.as_object_mut().unwrap().remove("containerID");
                }
                status
            })
            .collect();
        let healthy = rollout == Rollout::Healthy;
        let ready = healthy && !gated;
        let mut conditions =
            vec![json!({"type": "Ready", "status": if ready { "True" } else { "False" }})];
        if rollout == Rollout::Unschedulable {
            conditions.push(
                json!({"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/1 nodes are available: 1 Insufficient memory."}),
            );
        }
        let mut spec = template["spec"].clone();
        if rollout != Rollout::Unschedulable {
            spec["nodeName"] = json!(NODE);
        }
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod_name, "namespace": namespace, "uid": format!("pod-uid-{n}"),
                "labels": template["metadata"]["labels"], "annotations": {"fake/owner": path},
                "creationTimestamp": format!("2025-01-01T01:{:02}:{:02}Z", n / 60 % 60, n % 60)},
            "spec": spec,
            "status": {"phase": if healthy || rollout == Rollout::CrashLoopBackOff { "Running" } else { "Pending" },
                "conditions": conditions, "containerStatuses": statuses},
        });
        let pod_path = format!("/api/v1/namespaces/{namespace}/pods/{pod_name}");
        if gated {
            let at = Instant::now() + s.gate_delay;
            s.gate_listens_at.insert(pod_path.clone(), at);
        }
        s.objects.insert(pod_path, pod);
    }
    let generation = workload["metadata"]["generation"].clone();
    // As a controller counts: the pods it owns that are ready.
    let ready = s
        .objects
        .values()
        .filter(|o| o["metadata"]["annotations"]["fake/owner"].as_str() == Some(path))
        .filter(|p| p["status"]["conditions"][0]["status"] == "True")
        .count();
    let ready = i32::try_from(ready).unwrap();
    workload["status"] = if workload["kind"] == "Deployment" {
        json!({"observedGeneration": generation, "replicas": 1, "updatedReplicas": 1,
               "readyReplicas": ready, "availableReplicas": ready})
    } else {
        json!({"observedGeneration": generation, "desiredNumberScheduled": 1, "currentNumberScheduled": 1,
               "numberMisscheduled": 0, "numberReady": ready, "updatedNumberScheduled": 1, "numberAvailable": ready})
    };
    s.objects.insert(path.to_string(), workload.clone());
}

/// Whether a container (JSON) runs the start gate.
pub fn is_gate(container: &Json) -> bool {
    let args = &container["args"];
    args[0] == "python3" && args[1] == "-c" && args[2] == gate_program(GATE_PORT).as_str()
}

/// The log of the pod at `pod_path`, as a kubelet would give it: for a gated container, what
/// start.sh says before it execs the gate, then the gate's line once it listens, then the
/// notebook's first line once the gate was opened.
fn container_log(s: &FakeState, pod_path: &str) -> Response<Full<Bytes>> {
    let Some(pod) = s.objects.get(pod_path) else {
        return not_found(pod_path);
    };
    let container = &pod["spec"]["containers"][0];
    let mut log = String::new();
    if is_gate(container) {
        let args: Vec<&str> = container["args"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Json::as_str)
            .collect();
        log.push_str(&format!("Entered start.sh with args: {}\n", args.join(" ")));
        if s.gate_listens_at
            .get(pod_path)
            .is_some_and(|at| Instant::now() >= *at)
        {
            log.push_str(&format!("{}\n", gate_waiting_line(GATE_PORT, GATE_NS_PID)));
        }
        let key = format!(
            "{}/{}",
            pod["metadata"]["namespace"].as_str().unwrap(),
            pod["metadata"]["name"].as_str().unwrap()
        );
        if s.gates_opened.contains(&key) {
            log.push_str("Entered start.sh with args: jupyter lab\n");
        }
    }
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from(log)))
        .unwrap()
}

/// The API server's answer to a log read it refuses: 403 as RBAC words it, 401 as the
/// authenticator does.
fn log_denied(code: u16, pod_path: &str) -> Response<Full<Bytes>> {
    let mut parts = pod_path.rsplit('/');
    let (pod, namespace) = (parts.next().unwrap_or(""), parts.nth(1).unwrap_or(""));
    let (reason, message) = match code {
        401 => ("Unauthorized", "Unauthorized".to_string()),
        _ => (
            "Forbidden",
            format!(
                "pods \"{pod}\" is forbidden: User \"participant\" cannot get resource \"pods/log\" \
                 in API group \"\" in the namespace \"{namespace}\""
            ),
        ),
    };
    respond(
        StatusCode::from_u16(code).unwrap(),
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": reason,
               "details": {"name": pod, "kind": "pods"}, "code": code}),
    )
}

/// A connection to the gate port of the gated pod at `pod_path`: the gate accepts it if it
/// listens and was not opened yet (the pod and its Deployment become ready). Whether it did.
fn knock_on_gate(s: &mut FakeState, pod_path: &str) -> bool {
    let listens = s
        .gate_listens_at
        .get(pod_path)
        .is_some_and(|at| Instant::now() >= *at);
    let Some(pod) = s.objects.get_mut(pod_path) else {
        return false;
    };
    let key = format!(
        "{}/{}",
        pod["metadata"]["namespace"].as_str().unwrap(),
        pod["metadata"]["name"].as_str().unwrap()
    );
    if !listens || s.gates_opened.contains(&key) {
        return false;
    }
    pod["status"]["conditions"][0]["status"] = json!("True");
    pod["status"]["containerStatuses"][0]["ready"] = json!(true);
    let owner = pod["metadata"]["annotations"]["fake/owner"]
        .as_str()
        .unwrap_or("")
        .to_string();
    if let Some(workload) = s.objects.get_mut(&owner) {
        workload["status"]["readyReplicas"] = json!(1);
        workload["status"]["availableReplicas"] = json!(1);
    }
    s.timeline.push(format!("gate opened: {key}"));
    s.gates_opened.insert(key);
    true
}

/// Answer a port-forward request: upgrade to WebSocket and speak the v4 channel protocol,
/// relaying channel 0 to the TCP address the test routed the pod's port to.
fn port_forward(
    state: Arc<Mutex<FakeState>>,
    req: &mut Request<Incoming>,
    path: &str,
    query: &str,
    headers: &HashMap<String, String>,
) -> Response<Full<Bytes>> {
    let pod = path
        .trim_end_matches("/portforward")
        .rsplit('/')
        .next()
        .unwrap_or("")
        .to_string();
    let Some(port) = query_param(query, "ports").and_then(|p| p.parse::<u16>().ok()) else {
        return respond(StatusCode::BAD_REQUEST, json!({"message": "no ports"}));
    };
    let pod_path = path.trim_end_matches("/portforward").to_string();
    let mut s = state.lock().unwrap();
    let Some(object) = s.objects.get(&pod_path).cloned() else {
        return not_found(path);
    };
    let namespace = object["metadata"]["namespace"]
        .as_str()
        .unwrap_or("")
        .to_string();
    s.timeline
        .push(format!("portforward {namespace}/{pod}:{port}"));
    // The gate's port: accepted (and closed at once, as the gate does) or refused.
    let gate = (port == GATE_PORT && is_gate(&object["spec"]["containers"][0]))
        .then(|| knock_on_gate(&mut s, &pod_path));
    let target = s
        .port_targets
        .iter()
        .find(|((prefix, p), _)| *p == port && pod.starts_with(prefix.as_str()))
        .map(|(_, addr)| *addr);
    drop(s);
    let Some(key) = headers.get("sec-websocket-key") else {
        return respond(
            StatusCode::BAD_REQUEST,
            json!({"message": "not a websocket request"}),
        );
    };
    let accept = derive_accept_key(key.as_bytes());
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        let (mut sink, mut stream) = ws.split();
        let [lo, hi] = port.to_le_bytes();
        let _ = sink.send(Message::binary(vec![0, lo, hi])).await;
        let _ = sink.send(Message::binary(vec![1, lo, hi])).await;
        if gate == Some(true) {
            let _ = sink.close().await;
            return;
        }
        let connection = match target {
            Some(addr) if gate.is_none() => TcpStream::connect(addr).await.ok(),
            _ => None,
        };
        let Some(tcp) = connection else {
            let mut error = vec![1];
            error.extend_from_slice(
                format!("error forwarding port {port} to pod {pod}: connection refused").as_bytes(),
            );
            let _ = sink.send(Message::binary(error)).await;
            let _ = sink.close().await;
            return;
        };
        let (mut from_pod, mut to_pod) = tcp.into_split();
        let inbound = async move {
            while let Some(Ok(message)) = stream.next().await {
                match message {
                    Message::Binary(data) if data.first() == Some(&0) => {
                        let Ok(()) = to_pod.write_all(&data[1..]).await else {
                            break;
                        };
                    }
                    Message::Close(_) => break,
                    _ => {}
                }
            }
            let _ = to_pod.shutdown().await;
        };
        let outbound = async move {
            let mut buffer = vec![0u8; 16 * 1024];
            loop {
                match from_pod.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let mut frame = Vec::with_capacity(n + 1);
                        frame.push(0);
                        frame.extend_from_slice(&buffer[..n]);
                        if sink.send(Message::binary(frame)).await.is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = sink.close().await;
        };
        tokio::join!(inbound, outbound);
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", accept)
        .header("sec-websocket-protocol", "v4.channel.k8s.io")
        .body(Full::new(Bytes::new()))
        .unwrap()
}
