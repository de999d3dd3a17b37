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
//! Deployment's container to [`gate_args`] (the files under `manifests/` stay as they are:
//! plain `kubectl apply` gets no gate). The image's entrypoint is `tini -g -- start.sh`, and
//! start.sh ends with `exec "$@"`, so start.sh execs `python3 -c GATE <original args>`.
//! [`gate_program`] binds 127.0.0.1:[`GATE_PORT`], prints [`gate_waiting_line`] with its own
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
//! The event rule ([`PreGateFilter`]): events of a container from before its gate opened are
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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::pending;
use std::time::Duration;

use guardlab_events::{Event, EventBody};
use guardlab_lab::{LabError, Progress};
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, LogParams};
use tokio::io::AsyncReadExt;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::k8s::{PodProblem, api_error, list_pods, pod_problem};
use crate::manifests::{NOTEBOOK_DEPLOYMENT, NOTEBOOK_SELECTOR};

/// The gate's port on the pod's loopback (next to the notebook's 8888; in no Service).
pub const GATE_PORT: u16 = 8887;

/// How much of a container's log is read to find the gate's line: the gate prints it after
/// start.sh's few lines, so a longer log belongs to a notebook that is past its gate.
const LOG_LIMIT: i64 = 64 * 1024;

/// What the gate's line says before its pid.
pub fn gate_waiting_prefix(port: u16) -> String {
    format!("guardlab start gate: waiting on 127.0.0.1:{port} as pid ")
}

/// The line the gate prints once it listens on `port`: with its pid inside its container
/// (`pid`), the pid its exec will have in the sensor's events (`ns_pid`).
pub fn gate_waiting_line(port: u16, pid: u32) -> String {
    format!("{}{pid}", gate_waiting_prefix(port))
}

/// The pid in a line of the gate's, when `line` is one.
fn waiting_pid(line: &str, port: u16) -> Option<u32> {
    let pid = line.strip_prefix(&gate_waiting_prefix(port))?;
    pid.bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| pid.parse().ok())
        .flatten()
}

/// The gate, a Python program for `python3 -c` (on the image's PATH). Its own arguments
/// (`sys.argv[1:]`) are the command it becomes.
pub fn gate_program(port: u16) -> String {
    format!(
        "import os,socket,sys;s=socket.create_server(('127.0.0.1',{port}));\
         print('{}%d'%os.getpid(),flush=True);c,_=s.accept();c.close();s.close();\
         os.execvp(sys.argv[1],sys.argv[1:])",
        gate_waiting_prefix(port)
    )
}

/// The notebook container's args behind the gate: `python3 -c GATE <original args...>`.
pub fn gate_args(original: &[String]) -> Vec<String> {
    let mut args = vec![
        "python3".to_string(),
        "-c".to_string(),
        gate_program(GATE_PORT),
    ];
    args.extend(original.iter().cloned());
    args
}

/// The original args, when `args` are the gate's.
pub fn gated_command(args: &[String]) -> Option<&[String]> {
    match args {
        [python, c, program, rest @ ..]
            if python == "python3" && c == "-c" && *program == gate_program(GATE_PORT) =>
        {
            Some(rest)
        }
        _ => None,
    }
}

/// Whether the pod's notebook container (its first) starts behind the gate.
pub fn is_gated(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.args.as_deref())
        .is_some_and(|args| gated_command(args).is_some())
}

/// Where a notebook container is with its gate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GateState {
    /// The container does not run yet, or its gate does not listen yet: why.
    Starting(String),
    /// The gate listens and nobody has opened it. `pid`: the gate's pid inside its container,
    /// as it announced it (its exec to the notebook has that `ns_pid`).
    Waiting { pid: u32 },
    /// The gate was opened (or the pod has none): the notebook runs.
    Open,
}

/// What the container's log (its first [`LOG_LIMIT`] bytes) says of the gate.
pub fn state_from_log(log: &str, truncated: bool) -> GateState {
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect();
    match lines
        .iter()
        .enumerate()
        .find_map(|(i, l)| Some((i, waiting_pid(l, GATE_PORT)?)))
    {
        Some((i, pid)) if i + 1 == lines.len() && !truncated => GateState::Waiting { pid },
        Some(_) => GateState::Open,
        None if truncated => GateState::Open,
        None => GateState::Starting(format!(
            "its start gate does not listen yet (no `{}<pid>` line in its log)",
            gate_waiting_prefix(GATE_PORT)
        )),
    }
}

/// Why the gate's state could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GateStateError {
    /// Waiting does not change it (the cluster refuses guardlab the log): stop at once.
    #[error("{0}")]
    Refused(String),
    /// It may pass (the container is being created, the pod was just replaced, the API
    /// server is busy): try again, and say it at the deadline.
    #[error("{0}")]
    NotYet(String),
}

/// Sort an API error of a log read: refusals that waiting does not change (401, 403, and
/// other 4xx but those of a container not started yet or a pod just gone) from the rest.
fn log_read_error(
    namespace: &str,
    pod: &str,
    container: &str,
    error: kube::Error,
) -> GateStateError {
    let context = format!("reading the log of pod {namespace}/{pod}, container {container}");
    let code = match &error {
        kube::Error::Api(status) => status.code,
        _ => 0,
    };
    let message = api_error(&context, error).to_string();
    let needs = format!(
        "guardlab needs `get` on `pods/log` in namespace {namespace} to see the notebook's start gate \
         (a Role with resources [\"pods/log\"] and verbs [\"get\"], bound to the kubeconfig's user; \
         check with `kubectl auth can-i get pods/log -n {namespace}`)"
    );
    match code {
        401 => GateStateError::Refused(format!(
            "{message}: the cluster does not accept the kubeconfig's credentials (expired token or \
             certificate?); {needs}"
        )),
        403 => GateStateError::Refused(format!("{message}: {needs}")),
        // 400: the container is not started yet (or restarting); 404: the pod is gone (its
        // replacement comes); 408, 409, 429: the API server asks to come back.
        400 | 404 | 408 | 409 | 429 => GateStateError::NotYet(message),
        code if (400..500).contains(&code) => GateStateError::Refused(message),
        _ => GateStateError::NotYet(message),
    }
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
) -> Result<(Pod, GateState), LabError> {
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
                    return Err(crate::failed(format!(
                        "Deployment {namespace}/{NOTEBOOK_DEPLOYMENT} cannot become ready: {why}"
                    )));
                }
                match gate_state(client, pod).await {
                    Ok(GateState::Starting(why)) => why,
                    Ok(state) => return Ok((pod.clone(), state)),
                    // A log the cluster refuses (RBAC, credentials) stays refused.
                    Err(GateStateError::Refused(why)) => return Err(crate::failed(why)),
                    // A log the API cannot give yet is said at the deadline.
                    Err(GateStateError::NotYet(why)) => why,
                }
            }
        };
        if reason != last {
            progress.detail(&reason);
            last = reason.clone();
        }
        if started.elapsed() >= timeout {
            return Err(crate::failed(format!(
                "the notebook's container did not start within {}s: {reason}",
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(poll).await;
    }
}

/// What the event stream tells about the gates: the containers the sensor confirmed it
/// watches (it sent their `container` event), and the gated ones whose gate's exec it reported
/// (the gate's own: see the module's documentation).
#[derive(Clone, Debug)]
pub struct GateSignals {
    pub confirmed: watch::Receiver<BTreeSet<String>>,
    pub passed: watch::Receiver<BTreeSet<String>>,
}

impl GateSignals {
    /// Whether the sensor confirms it watches `container_id` within `timeout`.
    pub async fn wait_confirmed(&self, container_id: &str, timeout: Duration) -> bool {
        let mut confirmed = self.confirmed.clone();
        let wait = async {
            confirmed
                .wait_for(|s| s.contains(container_id))
                .await
                .is_ok()
        };
        tokio::time::timeout(timeout, wait).await.unwrap_or(false)
    }
}

/// The event rule of the start gate (see the module's documentation), applied in the order
/// the sensor sends events. Its state outlives reconnections to the sensor.
pub struct PreGateFilter {
    /// Cgroups of gated containers whose gate has not opened yet, with their container ids
    /// and their gates' pids inside the container.
    closed: HashMap<u64, (String, u32)>,
    /// Cgroups that are past their gate, or had none: a `container` event sent again after a
    /// reconnection does not close them.
    open: HashSet<u64>,
    confirmed: watch::Sender<BTreeSet<String>>,
    passed: watch::Sender<BTreeSet<String>>,
}

impl PreGateFilter {
    pub fn new() -> (PreGateFilter, GateSignals) {
        let (confirmed, confirmed_rx) = watch::channel(BTreeSet::new());
        let (passed, passed_rx) = watch::channel(BTreeSet::new());
        (
            PreGateFilter {
                closed: HashMap::new(),
                open: HashSet::new(),
                confirmed,
                passed,
            },
            GateSignals {
                confirmed: confirmed_rx,
                passed: passed_rx,
            },
        )
    }

    /// Whether `event` goes on to the harness. `gated`: the containers whose gate was closed
    /// when the harness subscribed to them, by id, with their gates' pids in the container.
    pub fn admit(&mut self, event: &Event, gated: &BTreeMap<String, u32>) -> bool {
        match &event.body {
            EventBody::Container(c) => {
                match gated.get(&c.container_id) {
                    Some(&pid) if !self.open.contains(&c.cgroup_id) => {
                        self.closed
                            .insert(c.cgroup_id, (c.container_id.clone(), pid));
                    }
                    _ => {
                        self.open.insert(c.cgroup_id);
                    }
                }
                self.confirmed.send_modify(|s| {
                    s.insert(c.container_id.clone());
                });
                true
            }
            EventBody::Exec(x) => match self.closed.get(&x.cgroup_id) {
                None => true,
                Some((_, gate)) if x.ns_pid == *gate => {
                    let (id, _) = self.closed.remove(&x.cgroup_id).expect("just found");
                    self.open.insert(x.cgroup_id);
                    self.passed.send_modify(|s| {
                        s.insert(id);
                    });
                    true
                }
                // Another process (`kubectl exec`, an exec probe) while the gate waits.
                Some(_) => false,
            },
            _ => event
                .cgroup_id()
                .is_none_or(|cg| !self.closed.contains_key(&cg)),
        }
    }
}

/// Open the start gate of `pod`: connect to its [`GATE_PORT`] through the API server's
/// port-forward. Done when the sensor reports the gate's own exec (`passed` holds the
/// container: [`PreGateFilter`] puts it there for that exec only, never for another process's)
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
) -> Result<(), LabError> {
    let deadline = Instant::now() + timeout;
    let mut last = "no answer".to_string();
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
                    api_error(
                        &format!("port-forwarding to {namespace}/{pod}:{GATE_PORT}"),
                        e,
                    )
                    .to_string()
                })?;
            let (Some(mut stream), Some(error)) = (
                forwarder.take_stream(GATE_PORT),
                forwarder.take_error(GATE_PORT),
            ) else {
                return Err("the port-forward gave no stream".to_string());
            };
            // The gate sends nothing and closes at once; a refused connection ends the
            // forward too, with an error message that comes before the end.
            let mut byte = [0u8; 1];
            let _ = stream.read(&mut byte).await;
            drop(stream);
            match tokio::time::timeout(Duration::from_secs(2), error).await {
                Ok(Some(message)) => Err(message),
                _ => Ok(()),
            }
        };
        let outcome = tokio::select! {
            outcome = attempt => outcome,
            () = exec_reported() => Ok(()),
            () = tokio::time::sleep_until(deadline) => Err(String::new()),
        };
        match outcome {
            Ok(()) => return Ok(()),
            Err(message) if !message.is_empty() => last = message,
            Err(_) => {}
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
            return Err(crate::failed(format!(
                "the start gate of pod {namespace}/{pod} did not open within {}s \
                 (port {GATE_PORT} in the pod, through the API server's port-forward: {last})",
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(poll.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use guardlab_events::{ContainerInfo, Listen, ProcessExec, Protocol};
    use std::io::{BufRead, BufReader, Read};
    use std::process::{Command, Stdio};

    #[test]
    fn the_gate_args_keep_the_original_args_after_the_program() {
        let original: Vec<String> = ["start-notebook.py", "--IdentityProvider.token="]
            .map(String::from)
            .to_vec();
        let args = gate_args(&original);
        assert_eq!(args[..2], ["python3", "-c"]);
        assert_eq!(args[2], gate_program(GATE_PORT));
        assert!(args[2].contains("('127.0.0.1',8887)"), "{}", args[2]);
        assert_eq!(gated_command(&args), Some(&original[..]));
        assert_eq!(gated_command(&original), None);
        let mut other = args.clone();
        other[2] = gate_program(9999);
        assert_eq!(
            gated_command(&other),
            None,
            "another program is not the gate"
        );
    }

    #[test]
    fn the_log_says_where_the_gate_is() {
        let line = gate_waiting_line(GATE_PORT, 7);
        assert_eq!(
            line,
            "guardlab start gate: waiting on 127.0.0.1:8887 as pid 7"
        );
        // start.sh echoes its args (the program, with the line inside it) before the gate runs.
        let echo = format!(
            "Entered start.sh with args: python3 -c {}",
            gate_program(GATE_PORT)
        );
        assert!(matches!(
            state_from_log(&format!("{echo}\n"), false),
            GateState::Starting(_)
        ));
        assert_eq!(
            state_from_log(&format!("{echo}\n{line}\n"), false),
            GateState::Waiting { pid: 7 }
        );
        assert_eq!(
            state_from_log(&format!("{echo}\n{line}\n\n"), false),
            GateState::Waiting { pid: 7 }
        );
        // A line without a pid (or with something else) is not the gate's.
        for other in [
            "guardlab start gate: waiting on 127.0.0.1:8887",
            "guardlab start gate: waiting on 127.0.0.1:8887 as pid ",
            "guardlab start gate: waiting on 127.0.0.1:8887 as pid 7x",
            "guardlab start gate: waiting on 127.0.0.1:8887 as pid -7",
        ] {
            assert!(
                matches!(
                    state_from_log(&format!("{echo}\n{other}\n"), false),
                    GateState::Starting(_)
                ),
                "{other}"
            );
        }
        assert_eq!(
            state_from_log(
                &format!("{echo}\n{line}\nEntered start.sh with args: jupyter lab\n"),
                false
            ),
            GateState::Open
        );
        assert_eq!(
            state_from_log(&format!("{echo}\n{line}\n"), true),
            GateState::Open
        );
        assert_eq!(state_from_log("x\n", true), GateState::Open);
    }

    fn container(cgroup_id: u64, id: &str) -> Event {
        Event::new(
            1,
            EventBody::Container(ContainerInfo {
                cgroup_id,
                container_id: id.into(),
                ..Default::default()
            }),
        )
    }

    /// The exec of the process of host pid `pid` and pid `ns_pid` in its container.
    fn exec_in(cgroup_id: u64, pid: u32, ns_pid: u32, argv: &[&str]) -> Event {
        Event::new(
            2,
            EventBody::Exec(ProcessExec {
                key: guardlab_events::ProcessKey(pid, 5),
                cgroup_id,
                pid,
                ns_pid,
                parent: None,
                exe: "/opt/conda/bin/python3.11".into(),
                comm: "start-notebook.".into(),
                argv: argv.iter().map(|a| a.to_string()).collect(),
                argv_truncated: false,
                uid: 1000,
                euid: 1000,
                gid: 100,
                user: None,
                euser: None,
                exe_status: Default::default(),
                killed: false,
            }),
        )
    }

    /// The gate's exec (pid 7 in its container) to start-notebook.py.
    fn exec(cgroup_id: u64, pid: u32) -> Event {
        exec_in(
            cgroup_id,
            pid,
            7,
            &["python", "/usr/local/bin/start-notebook.py"],
        )
    }

    fn listen(cgroup_id: u64, port: u16) -> Event {
        Event::new(
            3,
            EventBody::Listen(Listen {
                process: guardlab_events::ProcessKey(100, 5),
                cgroup_id,
                protocol: Protocol::Tcp,
                ip: "127.0.0.1".parse().unwrap(),
                port,
            }),
        )
    }

    #[test]
    fn before_its_gate_opens_a_gated_container_shows_only_its_container_event() {
        let (mut filter, signals) = PreGateFilter::new();
        let gated: BTreeMap<String, u32> = [("c1".to_string(), 7)].into();
        assert!(filter.admit(&container(11, "c1"), &gated));
        assert!(signals.confirmed.borrow().contains("c1"));
        assert!(signals.passed.borrow().is_empty());
        assert!(!filter.admit(&listen(11, GATE_PORT), &gated), "plumbing");
        // Another container (not gated) and `lost` pass meanwhile.
        assert!(filter.admit(&container(22, "c2"), &gated));
        assert!(filter.admit(&listen(22, 80), &gated));
        let lost = Event::new(
            4,
            EventBody::Lost(guardlab_events::Lost {
                count: 1,
                cpu: None,
            }),
        );
        assert!(filter.admit(&lost, &gated));
        // The gate's exec opens it: the exec and everything after pass.
        assert!(filter.admit(&exec(11, 100), &gated));
        assert!(signals.passed.borrow().contains("c1"));
        assert!(filter.admit(&listen(11, 8888), &gated));
        // A reconnection's new `container` event does not close it again.
        assert!(filter.admit(&container(11, "c1"), &gated));
        assert!(filter.admit(&listen(11, 8888), &gated));
        // A new container of the same id set (a restart: new cgroup) is gated afresh.
        let gated: BTreeMap<String, u32> = [("c3".to_string(), 7)].into();
        assert!(filter.admit(&container(33, "c3"), &gated));
        assert!(!filter.admit(&listen(33, GATE_PORT), &gated));
        assert!(!signals.passed.borrow().contains("c3"));
    }

    /// While the gate waits, other processes may exec in its container (`kubectl exec`, an exec
    /// probe), with any argv: only the exec of the gate's own pid opens it.
    #[test]
    fn only_the_exec_of_the_gates_pid_opens_it() {
        let (mut filter, signals) = PreGateFilter::new();
        let gated: BTreeMap<String, u32> = [("c1".to_string(), 9)].into();
        assert!(filter.admit(&container(11, "c1"), &gated));
        for (pid, ns_pid, argv) in [
            (500, 30, &["sh", "-c", "ls"][..]),
            (501, 31, &["cat", "/tmp/healthy"][..]),
            // Even the notebook's own command, run by someone else.
            (
                502,
                32,
                &["python", "/usr/local/bin/start-notebook.py", "--help"][..],
            ),
            // The gate's pid in another container is not this gate's.
            (503, 9, &["python", "/usr/local/bin/start-notebook.py"][..]),
        ] {
            let cgroup = if pid == 503 { 12 } else { 11 };
            let foreign = exec_in(cgroup, pid, ns_pid, argv);
            assert_eq!(filter.admit(&foreign, &gated), cgroup == 12, "{argv:?}");
            assert!(signals.passed.borrow().is_empty(), "{argv:?}");
            assert!(!filter.admit(&listen(11, 8888), &gated), "{argv:?}");
        }
        // The gate's own exec: `/usr/bin/env python start-notebook.py`, then python itself,
        // both in the gate's pid; the first opens it.
        let env = exec_in(
            11,
            400,
            9,
            &["/usr/bin/env", "python", "/usr/local/bin/start-notebook.py"],
        );
        assert!(filter.admit(&env, &gated));
        assert!(signals.passed.borrow().contains("c1"));
        assert!(filter.admit(&exec_in(11, 400, 9, &["python"]), &gated));
        assert!(filter.admit(&exec_in(11, 600, 40, &["ls"]), &gated));
        assert!(filter.admit(&listen(11, 8888), &gated));
    }

    /// The real gate program, run by the machine's python3 on a free loopback port: it waits
    /// (printing its line once it listens), accepts one connection, then becomes the command
    /// it was given, in the same process.
    #[test]
    fn the_gate_program_waits_for_one_connection_then_becomes_the_command() {
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        guardlab_host::Host::new(false)
            .ensure(
                &[&guardlab_host::catalog::PYTHON3],
                &guardlab_host::StderrProgress,
            )
            .unwrap_or_else(|e| panic!("this test runs the gate program with python3: {e}"));
        let mut child = Command::new("python3")
            .args(["-c", &gate_program(port), "sh", "-c", "echo started $$"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 must be installed for this test (apt-get install python3)");
        let pid = child.id();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim_end(), gate_waiting_line(port, pid));

        // It waits: still running, nothing more said.
        std::thread::sleep(Duration::from_millis(300));
        assert!(child.try_wait().unwrap().is_none(), "the gate must wait");

        // One connection: accepted, then closed by the gate.
        let mut connection = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        connection
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut rest = Vec::new();
        connection.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "the gate sends nothing");

        // Then it is the command, with the same pid.
        let mut after = String::new();
        stdout.read_to_string(&mut after).unwrap();
        assert_eq!(after.trim_end(), format!("started {pid}"));
        let status = child.wait().unwrap();
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        assert!(status.success(), "{status}: {stderr}");
        assert!(stderr.is_empty(), "{stderr}");
        // Nothing listens on the gate's port any more.
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    }
}
