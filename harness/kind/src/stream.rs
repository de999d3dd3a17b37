//! The sensor's event stream for the lab's notebook pods: started by `up` (before the
//! notebook's start gate opens, see [`crate::gate`]) or by `events`, kept by `KindLab`.
//!
//! Two tasks: the follow task polls the notebook pods (a killed pod is replaced by one with a
//! new container) and opens the start gates of new gated containers once the sensor confirmed
//! their watch; the stream task talks to the sensor on the notebook's node, reconnecting when
//! the stream ends, and sends the events through the gate's rule to the lab's channel.
//!
//! Reconnecting ([`Retry`]): a session is good when the sensor sent at least one line on it,
//! or when it stayed open at least [`Retry::max`] (a quiet subscription is not a broken one).
//! After a good session the stream connects again after [`Retry::first`]; after each failed
//! one in a row it waits twice as long as before, up to [`Retry::max`]. A port-forward that
//! drops after an hour of events is thus a fresh start, however often it happens; a sensor pod
//! that takes minutes to restart is waited for. Only after [`Retry::outage_limit`] without a
//! good session (since the last good one ended, or since the stream started) does the stream
//! give up: it says why ([`EventStream::failure`], [`EventStream::last_error`]) and drops its
//! sender, so the reader's channel closes once it has read what came before. The follow task
//! goes on through the outage (the pods are followed, the subscription is brought up to date
//! for the next session, gates already confirmed are opened) and ends with the stream, after
//! the gate openings it started.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use guardlab_events::Event;
use guardlab_lab::LabError;
use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::forward::open_pod_stream;
use crate::gate::{GateSignals, GateState, GateStateError, PreGateFilter, gate_state, open_gate};
use crate::k8s::{self, list_pods, sensor_pod_on};
use crate::manifests::{NOTEBOOK_SELECTOR, SENSOR_PORT};
use crate::sensor_link::{EventSink, StreamEnd, Watch, WatchedContainer, stream_events};

/// The ids of the containers whose gate someone (`up`, or a follow task) opens or opened: one
/// opener per gate. Shared by all the streams of a lab.
pub type ClaimedGates = Arc<Mutex<BTreeSet<String>>>;

/// Claim the opening of `container_id`'s gate: false when someone else has.
pub fn claim(claimed: &ClaimedGates, container_id: &str) -> bool {
    claimed
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(container_id.to_string())
}

/// Give a claim back (its opener failed): another may try.
pub fn unclaim(claimed: &ClaimedGates, container_id: &str) {
    claimed
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(container_id);
}

/// How the stream tries the sensor again after a session ended (see the module's
/// documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    /// The wait after a good session, and the first after a failed one.
    pub first: Duration,
    /// The longest wait (each failed session in a row doubles it); a session that stayed
    /// open this long is a good one, lines or not.
    pub max: Duration,
    /// How long without a good session before the stream gives up.
    pub outage_limit: Duration,
}

/// What a stream needs to know.
#[derive(Clone)]
pub struct StreamConfig {
    pub client: Client,
    pub namespace: String,
    /// How often the pods are looked at.
    pub poll: Duration,
    /// How a lost sensor connection is tried again.
    pub retry: Retry,
    /// How long the follow task tries to open one gate.
    pub gate_timeout: Duration,
    pub claimed: ClaimedGates,
}

/// A running event stream.
pub struct EventStream {
    receiver: Option<mpsc::Receiver<Event>>,
    taken: Arc<AtomicBool>,
    signals: GateSignals,
    last_error: Arc<Mutex<Option<String>>>,
    /// Why the stream gave up, once it did.
    failure: watch::Receiver<Option<String>>,
    tasks: Vec<JoinHandle<()>>,
}

/// A notebook container as the follow task last judged it.
#[derive(Clone, Debug)]
struct Seen {
    pod: String,
    gate: GateState,
}

impl EventStream {
    /// Subscribe to the sensor on the notebook's node for the notebook's containers (those
    /// whose gate waits or is open; one whose gate does not listen yet is added once it does).
    pub async fn start(config: StreamConfig) -> Result<EventStream, LabError> {
        let StreamConfig {
            client,
            namespace,
            poll,
            retry,
            gate_timeout,
            claimed,
        } = config;
        let mut seen = HashMap::new();
        let first = watch_of(&client, &namespace, &mut seen).await?;
        let (watch_tx, watch_rx) = watch::channel(first);
        let (tx, rx) = mpsc::channel(4096);
        let taken = Arc::new(AtomicBool::new(false));
        // The follow task ends with the stream: it holds no sender, or the reader would never
        // learn that the stream ended.
        let weak = tx.downgrade();
        let sink = EventSink::new(tx, taken.clone());
        let (mut filter, signals) = PreGateFilter::new();
        let last_error: Arc<Mutex<Option<String>>> = Arc::default();
        let mut tasks = Vec::new();

        // Follow the notebook pods; open the gates of new ones once the sensor watches them.
        let (c, ns, gates, errors) = (
            client.clone(),
            namespace.clone(),
            signals.clone(),
            last_error.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut opening = JoinSet::<(String, Result<(), LabError>)>::new();
            loop {
                tokio::time::sleep(poll).await;
                // The stream gave up, or nobody reads its events any more: the gate openings
                // under way (their watch was confirmed) are carried to their end.
                if weak.upgrade().is_none_or(|tx| tx.is_closed()) {
                    while let Some(done) = opening.join_next().await {
                        if let Ok((id, Err(_))) = done {
                            unclaim(&claimed, &id);
                        }
                    }
                    return;
                }
                match watch_of(&c, &ns, &mut seen).await {
                    Ok(next) if !next.node.is_empty() => {
                        watch_tx.send_if_modified(|w| {
                            if *w != next {
                                *w = next;
                                true
                            } else {
                                false
                            }
                        });
                    }
                    Ok(_) => {}
                    // Said to whoever looks (a refused log keeps a replaced pod's gate shut).
                    Err(e) => {
                        *errors.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                    }
                }
                let confirmed = gates.confirmed.borrow().clone();
                for (id, s) in &seen {
                    if matches!(s.gate, GateState::Waiting { .. })
                        && confirmed.contains(id)
                        && claim(&claimed, id)
                    {
                        let (c, ns, pod, id, passed) = (
                            c.clone(),
                            ns.clone(),
                            s.pod.clone(),
                            id.clone(),
                            gates.passed.clone(),
                        );
                        opening.spawn(async move {
                            let opened =
                                open_gate(&c, &ns, &pod, &id, &passed, gate_timeout, poll).await;
                            (id, opened)
                        });
                    }
                }
                // A gate that did not open is tried again at the next look (the pod stays
                // behind it meanwhile: an unwatched notebook is never started).
                while let Some(done) = opening.try_join_next() {
                    if let Ok((id, Err(e))) = done {
                        unclaim(&claimed, &id);
                        *errors.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
                    }
                }
            }
        }));

        // Stream from the sensor on the notebook's node, reconnecting when the stream ends.
        let errors = last_error.clone();
        let (failure_tx, failure) = watch::channel(None);
        tasks.push(tokio::spawn(async move {
            let mut wait = retry.first;
            // Since when no session was good, and how many failed since the last good one.
            let mut outage_since = Instant::now();
            let mut failed = 0u32;
            loop {
                if sink.is_closed() {
                    return;
                }
                let node = watch_rx.borrow().node.clone();
                if node.is_empty() {
                    // No notebook pod is on a node (yet): no sensor to reach, no outage,
                    // until the follow task finds one.
                    let mut watch = watch_rx.clone();
                    let placed = async { watch.wait_for(|w| !w.node.is_empty()).await.is_ok() };
                    tokio::select! {
                        placed = placed => if !placed { return },
                        () = sink.closed() => return,
                    }
                    outage_since = Instant::now();
                    continue;
                }
                let began = Instant::now();
                let mut received = 0;
                let result = async {
                    let sensor = sensor_pod_on(&client, &namespace, &node).await?;
                    let name = sensor.metadata.name.unwrap_or_default();
                    let stream = open_pod_stream(&client, &namespace, &name, SENSOR_PORT).await?;
                    stream_events(stream, watch_rx.clone(), &sink, &mut filter, &mut received).await
                }
                .await;
                let good = received > 0 || began.elapsed() >= retry.max;
                if good {
                    outage_since = Instant::now();
                    failed = 0;
                    wait = retry.first;
                }
                let why = match result {
                    Ok(StreamEnd::ReceiverGone) => return,
                    // The notebook moved: its new node's sensor, at once.
                    Ok(StreamEnd::NodeChanged) => continue,
                    Ok(StreamEnd::Closed) => {
                        format!("the sensor on node {node} closed the event stream")
                    }
                    Err(e) => e.to_string(),
                };
                *errors.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.clone());
                if !good {
                    failed += 1;
                    if outage_since.elapsed() >= retry.outage_limit {
                        let message = gave_up(&node, retry.outage_limit, failed, &why);
                        *errors.lock().unwrap_or_else(|e| e.into_inner()) = Some(message.clone());
                        failure_tx.send_replace(Some(message));
                        // Dropping the sink closes the reader's channel.
                        return;
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = sink.closed() => return,
                }
                if !good {
                    wait = (wait * 2).min(retry.max);
                }
            }
        }));
        Ok(EventStream {
            receiver: Some(rx),
            taken,
            signals,
            last_error,
            failure,
            tasks,
        })
    }

    /// The events, once: from then on the stream waits for its reader instead of dropping
    /// what does not fit.
    pub fn take_receiver(&mut self) -> Option<mpsc::Receiver<Event>> {
        let rx = self.receiver.take()?;
        self.taken.store(true, Ordering::SeqCst);
        Some(rx)
    }

    /// Whether its tasks still run (they end when the receiver is dropped, or when the stream
    /// gave up: see [`EventStream::failure`]).
    pub fn is_running(&self) -> bool {
        self.tasks.iter().all(|t| !t.is_finished())
    }

    /// Why the stream gave up (no good session with the sensor for [`Retry::outage_limit`]),
    /// once it did: its reader's channel closes then.
    pub fn failure(&self) -> Option<String> {
        self.failure.borrow().clone()
    }

    /// Resolves with [`EventStream::failure`] once the stream gives up; never, if it is
    /// dropped first. It borrows nothing: it can be awaited next to the lab.
    pub fn gave_up(&self) -> impl Future<Output = String> + Send + use<> {
        let mut failure = self.failure.clone();
        async move {
            let ended_otherwise = failure.wait_for(Option::is_some).await.is_err();
            if ended_otherwise {
                std::future::pending::<()>().await;
            }
            failure.borrow().clone().unwrap_or_default()
        }
    }

    pub fn signals(&self) -> &GateSignals {
        &self.signals
    }

    /// The last failure of the stream (connecting to the sensor, reading the pods, opening a
    /// gate), if any; the reason it gave up, once it did.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// What a stream that gives up says.
fn gave_up(node: &str, limit: Duration, failed: u32, last: &str) -> String {
    let sensor = if node.is_empty() {
        "the guardlab-sensor pod on the notebook's node (no notebook pod is on a node)".to_string()
    } else {
        format!("the guardlab-sensor pod on node {node}")
    };
    let tries = if failed == 1 { "try" } else { "tries" };
    format!(
        "the sensor's event stream stopped: no working connection to {sensor} for {}s \
         ({failed} failed {tries}; the last: {last}); replaced notebook pods stay behind their start gates \
         until guardlab streams the sensor's events again (`guardlab lab up --backend kind`, or a \
         scenario run)",
        limit.as_secs()
    )
}

/// The notebook containers to watch, and their node. A gated container whose gate does not
/// listen yet is left out until it does (see [`crate::gate`]); `seen` keeps what was judged
/// of each container, so a container's log is read only until its gate listens. A log the
/// cluster refuses to give (RBAC, credentials) is an error: waiting would not change it.
async fn watch_of(
    client: &Client,
    namespace: &str,
    seen: &mut HashMap<String, Seen>,
) -> Result<Watch, LabError> {
    let pods = list_pods(client, namespace, NOTEBOOK_SELECTOR).await?;
    let namespace_labels = kube::Api::<Namespace>::all(client.clone())
        .get_opt(namespace)
        .await
        .map_err(|e| k8s::api_error(&format!("reading namespace {namespace}"), e))?
        .and_then(|n| n.metadata.labels)
        .unwrap_or_default();
    let mut watch = Watch::default();
    let mut present = HashSet::new();
    for pod in pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
    {
        if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) {
            watch.node = node;
        }
        let info = k8s::pod_info(pod);
        if info.container_id.is_empty() {
            continue; // not started yet
        }
        present.insert(info.container_id.clone());
        let gate = match seen.get(&info.container_id) {
            Some(s) if !matches!(s.gate, GateState::Starting(_)) => s.gate.clone(),
            _ => match gate_state(client, pod).await {
                Ok(gate) => gate,
                Err(GateStateError::Refused(why)) => return Err(crate::failed(why)),
                // A log the API cannot give yet leaves the container out of this round only.
                Err(GateStateError::NotYet(why)) => GateState::Starting(why),
            },
        };
        seen.insert(
            info.container_id.clone(),
            Seen {
                pod: info.name.clone(),
                gate: gate.clone(),
            },
        );
        match gate {
            GateState::Starting(_) => continue,
            GateState::Waiting { pid } => {
                watch.gated.insert(info.container_id.clone(), pid);
            }
            GateState::Open => {}
        }
        watch.containers.push(WatchedContainer {
            container_id: info.container_id,
            container_name: info.container_name,
            image: info.image,
            image_id: info.image_id,
            namespace: info.namespace,
            namespace_labels: namespace_labels.clone(),
            pod_name: info.name,
            pod_uid: pod.metadata.uid.clone().unwrap_or_default(),
            pod_labels: info.labels,
        });
    }
    seen.retain(|id, _| present.contains(id));
    Ok(watch)
}
