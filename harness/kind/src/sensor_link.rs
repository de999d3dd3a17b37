//! The harness's side of the sensor's control port.
//!
//! The contract (the sensor implements `guardlab-sensor --serve ADDR`):
//!
//! - The sensor listens on `ADDR` (`127.0.0.1:7070` in its pod, see the DaemonSet): the harness
//!   reaches it through the API server's port-forward, one TCP connection per purpose.
//! - Both directions are NDJSON, one JSON object per line. The client's first line is a
//!   [`SensorRequest`].
//! - `{"op":"subscribe","containers":[...]}`: the sensor finds each container's cgroup by its id
//!   (a directory under `--cgroup-root` whose name contains the id, e.g.
//!   `cri-containerd-<id>.scope`), sends a `container` event for it with the given metadata and
//!   its `cgroup_id`, then streams every event ([`guardlab_events::Event`]) of processes in those
//!   cgroups until the connection closes. The client may send another `subscribe` line at any
//!   time; it replaces the set (a killed pod's replacement has a new container).
//! - `{"op":"kill","pid":N,"tree":false}`: SIGKILL to the process (`tree: true`: and all its
//!   descendants). `pid` is a pid as the sensor's events report it. The sensor answers one
//!   [`SensorReply`] line, `{"ok":true}` or `{"ok":false,"error":"..."}`, and closes.
//! - `{"op":"kill_group","pid":N}`: SIGKILL to the members of the process's group that are in
//!   watched containers (never a member outside them). Answered like `kill`.
//!
//! Pids: the events carry the kernel's init-namespace pids (and `ns_pid`, the container's own).
//! With `hostPID` the sensor's /proc is the node's, and on kind the node is itself a container,
//! so those pids are not the ones its /proc shows. A `kill` therefore takes the pid as the
//! events report it, and the sensor translates it: it remembers each watched process's start
//! time and `ns_pid` from its exec/fork events and finds the process with both among the pids
//! its own view of the container's `cgroup.procs` lists (see `sensor/src/serve.rs`). A pid that
//! is not a process of a watched container is refused.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub use guardlab_events::control::{SensorReply, SensorRequest, WatchedContainer};
use guardlab_events::{Event, EventBody, parse_line};
use guardlab_lab::LabError;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch};

use crate::gate::PreGateFilter;

/// What the harness watches on one node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Watch {
    pub node: String,
    pub containers: Vec<WatchedContainer>,
    /// The containers among them whose start gate was closed when the harness first saw
    /// them, by id, with the gate's pid inside the container (as its log line announced it):
    /// the gate's event rule applies to them (see [`crate::gate`]).
    pub gated: BTreeMap<String, u32>,
}

/// Where a stream's events go. `up` starts the stream before anyone asks for the events
/// (`lab up` never does): until the receiver is taken, events that do not fit in the channel
/// are dropped rather than stalling the stream, which must go on reading the sensor's
/// `container` events to open the gates of replaced pods. Once taken, a full channel waits.
#[derive(Clone, Debug)]
pub struct EventSink {
    tx: mpsc::Sender<Event>,
    taken: Arc<AtomicBool>,
}

/// The sink stopped: nobody reads its events any more.
#[derive(Debug)]
pub struct SinkClosed;

impl EventSink {
    /// A sink whose receiver is taken when `taken` is set.
    pub fn new(tx: mpsc::Sender<Event>, taken: Arc<AtomicBool>) -> Self {
        EventSink { tx, taken }
    }

    /// A sink whose receiver is already in a reader's hands.
    pub fn taken(tx: mpsc::Sender<Event>) -> Self {
        EventSink::new(tx, Arc::new(AtomicBool::new(true)))
    }

    pub async fn send(&self, event: Event) -> Result<(), SinkClosed> {
        if self.taken.load(Ordering::SeqCst) {
            return self.tx.send(event).await.map_err(|_| SinkClosed);
        }
        match self.tx.try_send(event) {
            Ok(()) | Err(TrySendError::Full(_)) => Ok(()),
            Err(TrySendError::Closed(_)) => Err(SinkClosed),
        }
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    pub async fn closed(&self) {
        self.tx.closed().await
    }
}

/// Why an event stream ended.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamEnd {
    /// The sensor closed the connection.
    Closed,
    /// Nobody reads the events any more.
    ReceiverGone,
    /// The watched pod moved to another node: connect to that node's sensor.
    NodeChanged,
}

async fn write_request<W: AsyncWrite + Unpin>(
    writer: &mut W,
    request: &SensorRequest,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(request).expect("requests serialize");
    line.push(b'\n');
    writer.write_all(&line).await?;
    writer.flush().await
}

/// Fill what the sensor left empty in a `container` event from what the harness knows.
fn enrich(event: &mut Event, watched: &[WatchedContainer], node: &str) {
    let EventBody::Container(info) = &mut event.body else {
        return;
    };
    let Some(w) = watched.iter().find(|w| w.container_id == info.container_id) else {
        return;
    };
    let fill = |field: &mut String, value: &str| {
        if field.is_empty() {
            *field = value.to_string();
        }
    };
    fill(&mut info.container_name, &w.container_name);
    fill(&mut info.image, &w.image);
    fill(&mut info.image_id, &w.image_id);
    fill(&mut info.namespace, &w.namespace);
    fill(&mut info.pod_name, &w.pod_name);
    fill(&mut info.machine, node);
    if info.pod_labels.is_empty() {
        info.pod_labels = w.pod_labels.clone();
    }
    if info.namespace_labels.is_empty() {
        info.namespace_labels = w.namespace_labels.clone();
    }
}

/// Subscribe on `stream` and forward the sensor's events to `events` until the stream ends,
/// the receiver goes away or the watched pod moves to another node. `watch` changes are sent
/// to the sensor as new `subscribe` lines. Events pass through `gate` (the start gate's rule:
/// a gated container's events before its gate opened are dropped), which also tells who waits
/// for them which containers the sensor confirmed. `received` counts the lines the sensor sent
/// (dropped or not), also when this ends with an error: a session that got lines worked.
pub async fn stream_events<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    mut watch: watch::Receiver<Watch>,
    events: &EventSink,
    gate: &mut PreGateFilter,
    received: &mut u64,
) -> Result<StreamEnd, LabError> {
    let (reader, mut writer) = tokio::io::split(stream);
    let mut lines = BufReader::new(reader).lines();
    let mut current = watch.borrow_and_update().clone();
    write_request(
        &mut writer,
        &SensorRequest::Subscribe {
            containers: current.containers.clone(),
        },
    )
    .await
    .map_err(|source| LabError::Io {
        context: format!("subscribing to the sensor on node {}", current.node),
        source,
    })?;
    let mut line_number = 0;
    loop {
        tokio::select! {
            line = lines.next_line() => {
                let Some(line) = line.map_err(|source| LabError::Io {
                    context: format!("reading events from the sensor on node {}", current.node),
                    source,
                })? else {
                    return Ok(StreamEnd::Closed);
                };
                line_number += 1;
                *received += 1;
                if line.trim().is_empty() {
                    continue;
                }
                let mut event = parse_line(&line, line_number).map_err(|e| crate::failed(format!(
                    "the sensor on node {} sent an event guardlab cannot read: {e}", current.node
                )))?;
                enrich(&mut event, &current.containers, &current.node);
                if !gate.admit(&event, &current.gated) {
                    continue;
                }
                if events.send(event).await.is_err() {
                    return Ok(StreamEnd::ReceiverGone);
                }
            }
            changed = watch.changed() => {
                if changed.is_err() {
                    return Ok(StreamEnd::ReceiverGone);
                }
                let next = watch.borrow_and_update().clone();
                if next.node != current.node {
                    return Ok(StreamEnd::NodeChanged);
                }
                if next.containers != current.containers {
                    write_request(&mut writer, &SensorRequest::Subscribe { containers: next.containers.clone() })
                        .await
                        .map_err(|source| LabError::Io {
                            context: format!("writing to the sensor on node {}", next.node),
                            source,
                        })?;
                }
                current = next;
            }
            _ = events.closed() => return Ok(StreamEnd::ReceiverGone),
        }
    }
}

/// Ask the sensor on `stream` to kill `pid` and wait (at most `timeout`) for its answer.
pub async fn kill_process<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    pid: u32,
    tree: bool,
    node: &str,
    timeout: Duration,
) -> Result<(), LabError> {
    let request = SensorRequest::Kill { pid, tree };
    let what = Asked {
        noun: format!("the kill of pid {pid}"),
        verb: format!("kill pid {pid}"),
    };
    ask(stream, &request, &what, node, timeout).await
}

/// Ask the sensor on `stream` to kill the process group of `pid` (its members in the watched
/// containers) and wait (at most `timeout`) for its answer.
pub async fn kill_process_group<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    pid: u32,
    node: &str,
    timeout: Duration,
) -> Result<(), LabError> {
    let request = SensorRequest::KillGroup { pid };
    let what = Asked {
        noun: format!("the kill of the process group of pid {pid}"),
        verb: format!("kill the process group of pid {pid}"),
    };
    ask(stream, &request, &what, node, timeout).await
}

/// How errors name a request: "did not answer the kill of pid 42", "could not kill pid 42".
struct Asked {
    noun: String,
    verb: String,
}

/// Send one request that the sensor answers with one [`SensorReply`] line.
async fn ask<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    request: &SensorRequest,
    what: &Asked,
    node: &str,
    timeout: Duration,
) -> Result<(), LabError> {
    let Asked { noun: what, verb } = what;
    let (reader, mut writer) = tokio::io::split(stream);
    let io = |source| LabError::Io {
        context: format!("asking the sensor on node {node} to {verb}"),
        source,
    };
    write_request(&mut writer, request).await.map_err(io)?;
    let mut lines = BufReader::new(reader).lines();
    let line = match tokio::time::timeout(timeout, lines.next_line()).await {
        Ok(line) => line.map_err(io)?,
        Err(_) => {
            return Err(crate::failed(format!(
                "the sensor on node {node} did not answer {what} within {}s",
                timeout.as_secs()
            )));
        }
    };
    let Some(line) = line else {
        return Err(crate::failed(format!(
            "the sensor on node {node} closed the connection without answering {what}"
        )));
    };
    let reply: SensorReply = serde_json::from_str(&line).map_err(|e| {
        crate::failed(format!(
            "the sensor on node {node} answered {what} with `{line}`: {e}"
        ))
    })?;
    if reply.ok {
        Ok(())
    } else {
        Err(crate::failed(format!(
            "the sensor on node {node} could not {verb}: {}",
            reply.error.unwrap_or_else(|| "no reason given".into())
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use guardlab_events::{ContainerInfo, write_ndjson};

    fn watched(id: &str) -> WatchedContainer {
        WatchedContainer {
            container_id: id.into(),
            container_name: "minimal-notebook".into(),
            image: "jupyter/minimal-notebook:latest".into(),
            namespace: "cryptominer".into(),
            pod_name: "jupyter-notebook-1".into(),
            pod_uid: "u1".into(),
            pod_labels: [("app".to_string(), "jupyter-notebook".to_string())].into(),
            ..Default::default()
        }
    }

    #[test]
    fn requests_have_the_documented_wire_form() {
        let kill = serde_json::to_string(&SensorRequest::Kill {
            pid: 42,
            tree: false,
        })
        .unwrap();
        assert_eq!(kill, r#"{"op":"kill","pid":42,"tree":false}"#);
        let sub = serde_json::to_value(SensorRequest::Subscribe {
            containers: vec![watched("c1")],
        })
        .unwrap();
        assert_eq!(sub["op"], "subscribe");
        assert_eq!(sub["containers"][0]["container_id"], "c1");
        assert!(
            serde_json::from_str::<SensorRequest>(r#"{"op":"kill","pid":1}"#).is_err(),
            "tree is required"
        );
        let reply: SensorReply =
            serde_json::from_str(r#"{"ok":false,"error":"no such process"}"#).unwrap();
        assert_eq!(reply.error.as_deref(), Some("no such process"));
    }

    #[tokio::test]
    async fn events_are_forwarded_enriched_and_resubscribed() {
        let (ours, sensor) = tokio::io::duplex(64 * 1024);
        let (watch_tx, watch_rx) = watch::channel(Watch {
            node: "n1".into(),
            containers: vec![watched("c1")],
            ..Watch::default()
        });
        let (tx, mut rx) = mpsc::channel(16);
        let harness = tokio::spawn(async move {
            let (mut gate, _) = PreGateFilter::new();
            let mut received = 0;
            let end = stream_events(
                ours,
                watch_rx,
                &EventSink::taken(tx),
                &mut gate,
                &mut received,
            )
            .await;
            (end, received)
        });

        let (sr, mut sw) = tokio::io::split(sensor);
        let mut requests = BufReader::new(sr).lines();
        let first: SensorRequest =
            serde_json::from_str(&requests.next_line().await.unwrap().unwrap()).unwrap();
        assert_eq!(
            first,
            SensorRequest::Subscribe {
                containers: vec![watched("c1")]
            }
        );

        let mut out = Vec::new();
        let info = ContainerInfo {
            cgroup_id: 7,
            container_id: "c1".into(),
            ..Default::default()
        };
        write_ndjson(&mut out, &Event::new(1, EventBody::Container(info))).unwrap();
        sw.write_all(&out).await.unwrap();
        let event = rx.recv().await.unwrap();
        let EventBody::Container(info) = event.body else {
            panic!("{event:?}")
        };
        assert_eq!(
            (
                info.cgroup_id,
                info.pod_name.as_str(),
                info.machine.as_str()
            ),
            (7, "jupyter-notebook-1", "n1")
        );
        assert_eq!(info.image, "jupyter/minimal-notebook:latest");
        assert_eq!(info.pod_labels["app"], "jupyter-notebook");

        // The pod was replaced: the sensor gets the new set on the same connection.
        watch_tx
            .send(Watch {
                node: "n1".into(),
                containers: vec![watched("c2")],
                ..Watch::default()
            })
            .unwrap();
        let second: SensorRequest =
            serde_json::from_str(&requests.next_line().await.unwrap().unwrap()).unwrap();
        assert_eq!(
            second,
            SensorRequest::Subscribe {
                containers: vec![watched("c2")]
            }
        );

        // A line that is not an event is an error that says who sent it.
        sw.write_all(b"{\"v\":1,\"ts\":2,\"type\":\"nonsense\"}\n")
            .await
            .unwrap();
        let (end, received) = harness.await.unwrap();
        let err = end.unwrap_err().to_string();
        assert!(err.contains("sensor on node n1"), "{err}");
        // The session got lines, the bad one included: it worked until then.
        assert_eq!(received, 2);
    }

    #[tokio::test]
    async fn a_sink_nobody_reads_drops_what_does_not_fit_and_a_taken_one_waits() {
        let event = |ts| {
            Event::new(
                ts,
                EventBody::Lost(guardlab_events::Lost {
                    count: 1,
                    cpu: None,
                }),
            )
        };
        let (tx, mut rx) = mpsc::channel(1);
        let taken = Arc::new(AtomicBool::new(false));
        let sink = EventSink::new(tx, taken.clone());
        sink.send(event(1)).await.unwrap();
        // Full, and nobody took the receiver: dropped, the stream goes on.
        tokio::time::timeout(Duration::from_secs(5), sink.send(event(2)))
            .await
            .expect("no wait before the receiver is taken")
            .unwrap();
        assert_eq!(rx.recv().await.unwrap().ts, 1);
        assert!(rx.try_recv().is_err(), "event 2 was dropped");

        // Taken: a full channel waits for the reader, nothing is dropped.
        taken.store(true, Ordering::SeqCst);
        sink.send(event(3)).await.unwrap();
        let mut pending = Box::pin(sink.send(event(4)));
        assert!(
            tokio::time::timeout(Duration::from_millis(100), &mut pending)
                .await
                .is_err(),
            "a taken sink waits"
        );
        assert_eq!(rx.recv().await.unwrap().ts, 3);
        pending.await.unwrap();
        assert_eq!(rx.recv().await.unwrap().ts, 4);

        drop(rx);
        assert!(sink.is_closed());
        assert!(sink.send(event(5)).await.is_err());
    }

    #[tokio::test]
    async fn a_move_to_another_node_ends_the_stream() {
        let (ours, sensor) = tokio::io::duplex(4096);
        let (watch_tx, watch_rx) = watch::channel(Watch {
            node: "n1".into(),
            ..Watch::default()
        });
        let (tx, _rx) = mpsc::channel(1);
        let harness = tokio::spawn(async move {
            let (mut gate, _) = PreGateFilter::new();
            stream_events(ours, watch_rx, &EventSink::taken(tx), &mut gate, &mut 0).await
        });
        // Once the subscription is written, the harness has taken the first watch.
        let (sr, _sw) = tokio::io::split(sensor);
        BufReader::new(sr)
            .lines()
            .next_line()
            .await
            .unwrap()
            .unwrap();
        watch_tx
            .send(Watch {
                node: "n2".into(),
                ..Watch::default()
            })
            .unwrap();
        assert_eq!(harness.await.unwrap().unwrap(), StreamEnd::NodeChanged);
    }

    #[tokio::test]
    async fn kill_sends_the_request_and_reads_the_answer() {
        for (answer, expected) in [
            ("{\"ok\":true}\n", Ok(())),
            (
                "{\"ok\":false,\"error\":\"no such process\"}\n",
                Err("could not kill pid 42: no such process"),
            ),
            (
                "garbage\n",
                Err("answered the kill of pid 42 with `garbage`"),
            ),
            ("", Err("closed the connection without answering")),
        ] {
            let (ours, sensor) = tokio::io::duplex(4096);
            let fake = tokio::spawn(async move {
                let (sr, mut sw) = tokio::io::split(sensor);
                let line = BufReader::new(sr)
                    .lines()
                    .next_line()
                    .await
                    .unwrap()
                    .unwrap();
                sw.write_all(answer.as_bytes()).await.unwrap();
                sw.shutdown().await.unwrap();
                line
            });
            let result = kill_process(ours, 42, true, "n1", Duration::from_secs(5)).await;
            assert_eq!(fake.await.unwrap(), r#"{"op":"kill","pid":42,"tree":true}"#);
            match (result, expected) {
                (Ok(()), Ok(())) => {}
                (Err(e), Err(text)) => assert!(e.to_string().contains(text), "{e}"),
                (r, e) => panic!("{r:?} vs {e:?}"),
            }
        }
    }

    #[tokio::test]
    async fn kill_group_sends_its_request_and_reads_the_answer() {
        for (answer, expected) in [
            ("{\"ok\":true}\n", Ok(())),
            (
                "{\"ok\":false,\"error\":\"group 7 has no process in a watched container\"}\n",
                Err(
                    "could not kill the process group of pid 42: group 7 has no process in a watched container",
                ),
            ),
            (
                "{\"ok\":1}\n",
                Err("answered the kill of the process group of pid 42 with `{\"ok\":1}`"),
            ),
            (
                "",
                Err(
                    "closed the connection without answering the kill of the process group of pid 42",
                ),
            ),
        ] {
            let (ours, sensor) = tokio::io::duplex(4096);
            let fake = tokio::spawn(async move {
                let (sr, mut sw) = tokio::io::split(sensor);
                let line = BufReader::new(sr)
                    .lines()
                    .next_line()
                    .await
                    .unwrap()
                    .unwrap();
                sw.write_all(answer.as_bytes()).await.unwrap();
                sw.shutdown().await.unwrap();
                line
            });
            let result = kill_process_group(ours, 42, "n1", Duration::from_secs(5)).await;
            assert_eq!(fake.await.unwrap(), r#"{"op":"kill_group","pid":42}"#);
            match (result, expected) {
                (Ok(()), Ok(())) => {}
                (Err(e), Err(text)) => assert!(e.to_string().contains(text), "{e}"),
                (r, e) => panic!("{r:?} vs {e:?}"),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_sensor_is_a_timeout_not_a_hang() {
        let (ours, _sensor) = tokio::io::duplex(4096);
        let err = kill_process(ours, 1, false, "n1", Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("did not answer the kill of pid 1 within 10s"),
            "{err}"
        );
        let (ours, _sensor) = tokio::io::duplex(4096);
        let err = kill_process_group(ours, 2, "n1", Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("did not answer the kill of the process group of pid 2 within 10s"),
            "{err}"
        );
    }
}
