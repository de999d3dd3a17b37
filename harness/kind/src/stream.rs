//! The sensor's event stream for the lab's notebook pods: started by `up` (before the
//! notebook's start gate opens, see [`crate::gate`]) or by `events`, kept by `KindLab`.
//!
//! Two tasks: the follow task polls the notebook pods (a killed pod is replaced by one with a
//! new container) and opens the start gates of new gated containers once the sensor confirmed
//! their watch; the stream task talks to the sensor on the notebook's node, reconnecting when
//! the stream ends, and sends the events through the gate's rule to the lab's channel.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use guardlab_events::Event;
use guardlab_lab::LabError;
use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::forward::open_pod_stream;
use crate::gate::{GateSignals, GateState, PreGateFilter, gate_state, open_gate};
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

/// What a stream needs to know.
#[derive(Clone)]
pub struct StreamConfig {
    pub client: Client,
    pub namespace: String,
    /// How often the pods are looked at (and a lost sensor connection tried again).
    pub poll: Duration,
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
            let mut opening = JoinSet::new();
            loop {
                tokio::time::sleep(poll).await;
                if weak.upgrade().is_none_or(|tx| tx.is_closed()) {
                    return;
                }
                if let Ok(next) = watch_of(&c, &ns, &mut seen).await
                    && !next.node.is_empty()
                {
                    watch_tx.send_if_modified(|w| {
                        if *w != next {
                            *w = next;
                            true
                        } else {
                            false
                        }
                    });
                }
                let confirmed = gates.confirmed.borrow().clone();
                for (id, s) in &seen {
                    if s.gate == GateState::Waiting && confirmed.contains(id) && claim(&claimed, id)
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
        tasks.push(tokio::spawn(async move {
            let mut failures = 0;
            while failures < 10 && !sink.is_closed() {
                let node = watch_rx.borrow().node.clone();
                let result = async {
                    let sensor = sensor_pod_on(&client, &namespace, &node).await?;
                    let name = sensor.metadata.name.unwrap_or_default();
                    let stream = open_pod_stream(&client, &namespace, &name, SENSOR_PORT).await?;
                    stream_events(stream, watch_rx.clone(), &sink, &mut filter).await
                }
                .await;
                match result {
                    Ok(StreamEnd::ReceiverGone) => return,
                    Ok(StreamEnd::NodeChanged) => failures = 0,
                    Ok(StreamEnd::Closed) | Err(_) => {
                        let why = match result {
                            Err(e) => e.to_string(),
                            _ => format!("the sensor on node {node} closed the event stream"),
                        };
                        *errors.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
                        failures += 1;
                        tokio::time::sleep(poll).await;
                    }
                }
            }
        }));
        Ok(EventStream {
            receiver: Some(rx),
            taken,
            signals,
            last_error,
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

    /// Whether its tasks still run (they end when the receiver is dropped, or after the
    /// sensor could not be reached ten times in a row).
    pub fn is_running(&self) -> bool {
        self.tasks.iter().all(|t| !t.is_finished())
    }

    pub fn signals(&self) -> &GateSignals {
        &self.signals
    }

    /// The last failure of the stream (connecting to the sensor, opening a gate), if any.
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

/// The notebook containers to watch, and their node. A gated container whose gate does not
/// listen yet is left out until it does (see [`crate::gate`]); `seen` keeps what was judged
/// of each container, so a container's log is read only until its gate listens.
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
            // A log the API cannot give (yet) leaves the container out of this round only.
            _ => gate_state(client, pod)
                .await
                .unwrap_or_else(|e| GateState::Starting(e.to_string())),
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
            GateState::Waiting => {
                watch.gated.insert(info.container_id.clone());
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
