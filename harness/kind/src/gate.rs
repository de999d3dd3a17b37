//! The notebook's start gate: on a cluster the notebook starts only once the sensor watches
//! its container.
//!
//! Why: the harness can ask the sensor to watch a container only once the container exists,
//! that is once it runs. Left alone, the notebook would start (its exec chain, its `listen` on
//! 8888) before the watch is in place: the scenario's first step, which waits for the
//! `container` and `listen: 8888` events, would time out, and the baseline would lack the
//! notebook's process tree. The local backend does not need this: its sensor watches the pod's
//! cgroup before the pod starts.
//!
//! What `up` applies: [`crate::manifests::lab_objects`] rewrites the `args` of the notebook
//! Deployment's container to [`gate_args`](crate::gate_program::gate_args) (the files under `manifests/` stay as they are:
//! plain `kubectl apply` gets no gate). The image's entrypoint is `tini -g -- start.sh`, and
//! start.sh ends with `exec "$@"`, so start.sh execs `python3 -c GATE <original args>`.
//! [`gate_program`](crate::gate_program::gate_program) binds 127.0.0.1:[`GATE_PORT`], prints [`gate_waiting_line`](crate::gate_program::gate_waiting_line) with its own
//! pid inside the container (flushed), accepts ONE connection, closes it and execs the
//! original args: the same pid becomes the notebook. While it waits nothing of the image runs
//! in the container (tini only waits for it), but others may: a `kubectl exec`, an exec probe.
//! The port is in no Service: only a port-forward through the API server reaches it.
//!
//! The order `up` keeps: the notebook's container runs and its gate says it waits (the last
//! line of its log) → the harness subscribes to the sensor on the pod's node → the sensor's
//! `container` event for that container proves the watch is in place → the harness opens the
//! gate (a port-forward connection to [`GATE_PORT`], [`open_gate`]) → the readiness probe
//! passes → 127.0.0.1:1234 is forwarded. A pod that replaces it later (a killed pod, a
//! restarted container) is gated the same way, and the event stream's follow task opens its
//! gate once its subscription is confirmed.
//!
//! Why the log line and not merely "running": a container runs as soon as tini starts; start.sh
//! then runs (and execs `id` and its hooks) before it execs the gate. A watch that began in that
//! window would see the gate's own exec (start.sh becoming the gate) and take it for the
//! gate's exec to the notebook. Once the gate's line is the last of the log, start.sh is gone,
//! and the line says which process the gate is.
//!
//! The event rule ([`PreGateFilter`](crate::pre_gate::PreGateFilter)): events of a container from before its gate opened are
//! the lab's plumbing (the gate accepting the harness's connection), not the pod's behaviour.
//! Per cgroup of a container whose gate was closed when the harness subscribed, every event
//! but the `container` event is dropped until the gate's exec, and only that exec opens it.
//! The gate's exec is the first `exec` event in that cgroup whose `ns_pid` (the pid inside the
//! container) is the pid the gate announced in its log line. Precise because: the gate's
//! process is the one start.sh exec'd into (tini's child); it keeps its pid while it waits, so
//! no other process in the container's pid namespace can have it meanwhile; and its next exec
//! is its execvp of the original args (for start-notebook.py, a `#!/usr/bin/env python` script:
//! env first, then python, both in that pid; the first is the gate's). Neither the exec's argv
//! nor its being the cgroup's first exec would do: a `kubectl exec` into the pod or an exec
//! probe while the gate waits is also an exec in that cgroup, with any argv it likes (even
//! `start-notebook.py --help`); the pid is the one thing it cannot share. Such execs do not
//! open the gate, and are dropped with the rest of the container's events from before it.
//! That exec and everything after it pass. Containers first seen with their gate already open
//! (or without a gate) are not filtered; `lost` events (no cgroup) always pass.

use std::collections::BTreeSet;
use std::future::pending;
use std::time::Duration;

use guardlab_lab_api::{LabError, Progress};
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, LogParams};
use tokio::io::AsyncReadExt;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::gate_program::{GATE_PORT, GateState, LOG_LIMIT, is_gated, state_from_log};
use crate::k8s::{ApiError, ClusterError, PodProblem, list_pods, pod_problem};
use crate::names::{NOTEBOOK_DEPLOYMENT, NOTEBOOK_SELECTOR, SENSOR_SELECTOR};

/// Why the gate's state could not be read: the API did not give the container's log.
#[derive(Debug, thiserror::Error)]
pub enum GateStateError {
    /// Waiting does not change it (the cluster refuses guardlab the log): stop at once. The
    /// message says which permission guardlab needs in `namespace`.
    #[error("{read}{}", refusal_advice(read, namespace))]
    Refused {
        #[source]
        read: ApiError,
        namespace: String,
    },
    /// It may pass (the container is being created, the pod was just replaced, the API
    /// server is busy): try again, and say it at the deadline.
    #[error(transparent)]
    NotYet(ApiError),
}

/// What a refused log read needs, by the API server's status.
fn refusal_advice(read: &ApiError, namespace: &str) -> String {
    let needs = format!(
        "guardlab needs `get` on `pods/log` in namespace {namespace} to see the notebook's start gate \
         (a Role with resources [\"pods/log\"] and verbs [\"get\"], bound to the kubeconfig's user; \
         check with `kubectl auth can-i get pods/log -n {namespace}`)"
    );
    match read.status_code() {
        Some(401) => format!(
            ": the cluster does not accept the kubeconfig's credentials (expired token or \
             certificate?); {needs}"
        ),
        Some(403) => format!(": {needs}"),
        _ => String::new(),
    }
}

impl From<GateStateError> for LabError {
    fn from(error: GateStateError) -> LabError {
        LabError::backend("the Kubernetes API", error)
    }
}

/// Sort an API error of a log read: refusals that waiting does not change (401, 403, and
/// other 4xx but those of a container not started yet or a pod just gone) from the rest.
fn log_read_error(
    namespace: &str,
    pod: &str,
    container: &str,
    error: kube::Error,
) -> GateStateError {
    let read = ApiError::new(
        format!("reading the log of pod {namespace}/{pod}, container {container}"),
        error,
    );
    match read.status_code().unwrap_or(0) {
        // 400: the container is not started yet (or restarting); 404: the pod is gone (its
        // replacement comes); 408, 409, 429: the API server asks to come back.
        400 | 404 | 408 | 409 | 429 => GateStateError::NotYet(read),
        code if (400..500).contains(&code) => GateStateError::Refused {
            read,
            namespace: namespace.to_string(),
        },
        _ => GateStateError::NotYet(read),
    }
}

/// Why the notebook could not be started behind its gate, or its gate not opened.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// Listing the pods failed, or the notebook's pod is stuck (image pull, crash loop...).
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The cluster refuses guardlab the notebook's log, where the gate says that it waits.
    #[error(transparent)]
    LogRefused(GateStateError),
    /// The container did not run with its gate waiting in time; `reason`: what it last was.
    #[error("the notebook's container did not start within {}s: {reason}", limit.as_secs())]
    NotStarted { limit: Duration, reason: String },
    /// The sensor did not send the `container` event of the container in time: the gate stays
    /// shut. `sensor` names the sensor's pod (or why it was not found), `stream_error` is the
    /// event stream's last error.
    #[error(
        "{sensor} did not confirm within {}s that it watches container {container_id} of pod \
         {namespace}/{pod} (no `container` event){}; the notebook stays behind its start gate, \
         unwatched containers are never started; the sensor's log: kubectl logs -n {namespace} \
         -l {SENSOR_SELECTOR} -c sensor",
        limit.as_secs(),
        stream_error.as_ref().map(|e| format!("; the stream's last error: {e}")).unwrap_or_default()
    )]
    Unwatched {
        sensor: String,
        limit: Duration,
        container_id: String,
        namespace: String,
        pod: String,
        stream_error: Option<String>,
    },
    /// No knock on the gate's port opened it in time; `last`: why the last one did not.
    #[error(
        "the start gate of pod {namespace}/{pod} did not open within {}s (port {GATE_PORT} in the \
         pod, through the API server's port-forward: {})",
        limit.as_secs(),
        last.as_ref().map_or_else(|| "no answer".to_string(), ToString::to_string)
    )]
    NotOpened {
        namespace: String,
        pod: String,
        limit: Duration,
        last: Option<KnockError>,
    },
}

impl From<ApiError> for GateError {
    fn from(error: ApiError) -> GateError {
        GateError::Cluster(error.into())
    }
}

impl From<GateError> for LabError {
    fn from(error: GateError) -> LabError {
        match error {
            GateError::Cluster(e) => e.into(),
            GateError::LogRefused(e) => e.into(),
            e => LabError::backend("the notebook's start gate", e),
        }
    }
}

/// Why a connection to the gate's port did not open the gate.
#[derive(Debug, thiserror::Error)]
pub enum KnockError {
    #[error(transparent)]
    Api(ApiError),
    #[error("the port-forward gave no stream")]
    NoStream,
    /// The API server's port-forward ended with this message (`connection refused` when
    /// nothing listens on the port): it says nothing more than these words.
    #[error("{message}")]
    ServerSaid { message: String },
}

/// The gate's state of `pod`'s notebook container, from its status and its log.
pub async fn gate_state(client: &Client, pod: &Pod) -> Result<GateState, GateStateError> {
    if !is_gated(pod) {
        return Ok(GateState::Open);
    }
    let name = pod.metadata.name.as_deref().unwrap_or("?");
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("?");
    let container = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .map(|c| c.name.clone())
        .unwrap_or_default();
    let status = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == container));
    if status.is_some_and(|s| s.ready) {
        return Ok(GateState::Open);
    }
    let running = status
        .and_then(|s| s.state.as_ref())
        .is_some_and(|s| s.running.is_some());
    if !running {
        return Ok(GateState::Starting(match pod_problem(pod) {
            Some(PodProblem::Waiting(why) | PodProblem::Stuck(why)) => why,
            None => format!("pod {namespace}/{name}: container {container} does not run yet"),
        }));
    }
    let params = LogParams {
        container: Some(container.clone()),
        limit_bytes: Some(LOG_LIMIT),
        ..LogParams::default()
    };
    let log = Api::<Pod>::namespaced(client.clone(), namespace)
        .logs(name, &params)
        .await
        .map_err(|e| log_read_error(namespace, name, &container, e))?;
    Ok(match state_from_log(&log, log.len() as i64 >= LOG_LIMIT) {
        GateState::Starting(why) => GateState::Starting(format!(
            "pod {namespace}/{name}: container {container} runs, but {why}"
        )),
        state => state,
    })
}

/// Wait, at most `timeout`, until the newest gated notebook pod's container runs and its gate
/// waits (or is open already: a lab that is up). Stops early, with the pod, the container and
/// the reason, when the pod is stuck (image pull, crash loop...), as the rollout wait does.
pub async fn wait_for_notebook_start(
    client: &Client,
    namespace: &str,
    timeout: Duration,
    poll: Duration,
    progress: &dyn Progress,
) -> Result<(Pod, GateState), GateError> {
    let started = Instant::now();
    let mut last = String::new();
    loop {
        let mut pods: Vec<Pod> = list_pods(client, namespace, NOTEBOOK_SELECTOR)
            .await?
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none() && is_gated(p))
            .collect();
        pods.sort_by(|a, b| {
            a.metadata
                .creation_timestamp
                .cmp(&b.metadata.creation_timestamp)
        });
        let reason = match pods.last() {
            None => "no pod of the gated Deployment yet".to_string(),
            Some(pod) => {
                if let Some(PodProblem::Stuck(why)) = pod_problem(pod) {
                    return Err(ClusterError::Stuck {
                        workload: format!("Deployment {namespace}/{NOTEBOOK_DEPLOYMENT}"),
                        why,
                    }
                    .into());
                }
                match gate_state(client, pod).await {
                    Ok(GateState::Starting(why)) => why,
                    Ok(state) => return Ok((pod.clone(), state)),
                    // A log the cluster refuses (RBAC, credentials) stays refused.
                    Err(refused @ GateStateError::Refused { .. }) => {
                        return Err(GateError::LogRefused(refused));
                    }
                    // A log the API cannot give yet is said at the deadline.
                    Err(GateStateError::NotYet(why)) => why.to_string(),
                }
            }
        };
        if reason != last {
            progress.detail(&reason);
            last = reason.clone();
        }
        if started.elapsed() >= timeout {
            return Err(GateError::NotStarted {
                limit: timeout,
                reason,
            });
        }
        tokio::time::sleep(poll).await;
    }
}

/// Open the start gate of `pod`: connect to its [`GATE_PORT`] through the API server's
/// port-forward. Done when the sensor reports the gate's own exec (`passed` holds the
/// container: [`PreGateFilter`](crate::pre_gate::PreGateFilter) puts it there for that exec only, never for another process's)
/// or the forward ends without an error (the gate accepted and closed); a refused connection
/// is tried again every `poll`, until `timeout`.
pub async fn open_gate(
    client: &Client,
    namespace: &str,
    pod: &str,
    container_id: &str,
    passed: &watch::Receiver<BTreeSet<String>>,
    timeout: Duration,
    poll: Duration,
) -> Result<(), GateError> {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    let exec_reported = || async {
        let mut passed = passed.clone();
        let reported = passed.wait_for(|s| s.contains(container_id)).await.is_ok();
        if !reported {
            // The stream ended: only the forward can tell now.
            pending::<()>().await;
        }
    };
    loop {
        let attempt = async {
            let mut forwarder = Api::<Pod>::namespaced(client.clone(), namespace)
                .portforward(pod, &[GATE_PORT])
                .await
                .map_err(|e| {
                    Some(KnockError::Api(ApiError::new(
                        format!("port-forwarding to {namespace}/{pod}:{GATE_PORT}"),
                        e,
                    )))
                })?;
            let (Some(mut stream), Some(error)) = (
                forwarder.take_stream(GATE_PORT),
                forwarder.take_error(GATE_PORT),
            ) else {
                return Err(Some(KnockError::NoStream));
            };
            // The gate sends nothing and closes at once; a refused connection ends the
            // forward too, with an error message that comes before the end.
            let mut byte = [0u8; 1];
            let _ = stream.read(&mut byte).await;
            drop(stream);
            match tokio::time::timeout(Duration::from_secs(2), error).await {
                Ok(Some(message)) => Err(Some(KnockError::ServerSaid { message })),
                _ => Ok(()),
            }
        };
        let outcome = tokio::select! {
            outcome = attempt => outcome,
            () = exec_reported() => Ok(()),
            () = tokio::time::sleep_until(deadline) => Err(None),
        };
        match outcome {
            Ok(()) => return Ok(()),
            Err(Some(knock)) => last = Some(knock),
            // The deadline came during the knock: the last answer stays the one to say.
            Err(None) => {}
        }
        // Refused: the gate may have been opened already (by an attempt whose answer was
        // lost, or by another harness); the container then says so.
        if let Ok(Some(now)) = Api::<Pod>::namespaced(client.clone(), namespace)
            .get_opt(pod)
            .await
            && gate_state(client, &now).await.ok() == Some(GateState::Open)
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(GateError::NotOpened {
                namespace: namespace.to_string(),
                pod: pod.to_string(),
                limit: timeout,
                last,
            });
        }
        tokio::time::sleep(poll.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}
