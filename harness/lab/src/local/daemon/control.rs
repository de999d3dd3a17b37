//! The control socket's server: one request per connection (status, visitors, actions,
//! enforcement), or the event stream until the client closes it.

use std::sync::Arc;

use guardlab_events::Event;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::broadcast;

use super::actions::carry_out;
use super::{Daemon, Recorder};
use crate::local::protocol::{DaemonStatus, Reply, Request};
use crate::{Backend, LabError, LabInfo};

pub(super) async fn accept_clients(
    control: UnixListener,
    ready: Arc<std::sync::OnceLock<Arc<Daemon>>>,
    recorder: Arc<Recorder>,
) {
    loop {
        if let Ok((stream, _)) = control.accept().await {
            tokio::spawn(handle_client(
                stream,
                ready.get().cloned(),
                recorder.clone(),
            ));
        }
    }
}

/// A client while the lab starts: `status` says so (the phase and the owner as recorded),
/// everything else waits for `ready`.
async fn handle_client(stream: UnixStream, daemon: Option<Arc<Daemon>>, recorder: Arc<Recorder>) {
    let Some(daemon) = daemon else {
        let state = recorder.snapshot();
        let (read, mut write) = stream.into_split();
        let mut line = String::new();
        if BufReader::new(read).read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let reply = match serde_json::from_str::<Request>(line.trim()) {
            Ok(Request::Status) => Reply {
                status: Some(DaemonStatus {
                    // Ready only once the daemon is: the info below is that of a starting lab.
                    phase: if state.phase == "ready" {
                        "starting".into()
                    } else {
                        state.phase
                    },
                    info: LabInfo {
                        backend: Backend::Local,
                        notebook_url: String::new(),
                        pods: Vec::new(),
                    },
                    daemon_pid: std::process::id(),
                    services: Vec::new(),
                    pod_exit: None,
                    pod_log: None,
                    sensor: false,
                    owner: state.owner,
                    counters: Default::default(),
                }),
                ..Reply::ok()
            },
            Ok(_) => Reply::error("the lab is still starting"),
            Err(e) => Reply::error(format!("bad request: {e}")),
        };
        let _ = send(&mut write, &reply).await;
        return;
    };
    serve_client(stream, daemon).await
}

async fn serve_client(stream: UnixStream, daemon: Arc<Daemon>) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = String::new();
    if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
        return;
    }
    let request: Request = match serde_json::from_str(line.trim()) {
        Ok(request) => request,
        Err(e) => {
            let _ = send(&mut write, &Reply::error(format!("bad request: {e}"))).await;
            return;
        }
    };
    match request {
        Request::Status => {
            let reply = Reply {
                status: Some(daemon.status()),
                ..Reply::ok()
            };
            let _ = send(&mut write, &reply).await;
        }
        Request::Visitors => {
            let visitors = daemon
                .services
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .map(|s| s.visitors());
            let reply = Reply {
                visitors: Some(visitors.unwrap_or_default()),
                ..Reply::ok()
            };
            let _ = send(&mut write, &reply).await;
        }
        Request::CarryOut { action } => {
            let reply = match carry_out(&daemon, &action).await {
                Ok(()) => Reply::ok(),
                // The client names the action it asked for; the reply says why not.
                Err(LabError::Action { reason, .. }) => Reply::error(reason),
                Err(e) => Reply::error(e.to_string()),
            };
            let _ = send(&mut write, &reply).await;
        }
        Request::Enforce { pod, enforcement } => {
            let result = match daemon
                .sensor
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_mut()
            {
                Some(sensor) => sensor.enforce(&pod, &enforcement),
                None => Err(LabError::Missing {
                    what: "the sensor".into(),
                    hint: "the lab runs without it".into(),
                }),
            };
            let reply = match result {
                Ok(()) => Reply::ok(),
                Err(e) => Reply::error(e.to_string()),
            };
            let _ = send(&mut write, &reply).await;
        }
        Request::Events { replay } => {
            let (replayed, mut events) = daemon.events.subscribe(replay);
            if send(&mut write, &Reply::ok()).await.is_err() {
                return;
            }
            for event in &replayed {
                let mut line = Vec::new();
                if guardlab_events::write_ndjson(&mut line, event).is_err()
                    || write.write_all(&line).await.is_err()
                {
                    return;
                }
            }
            // The client closes the connection to stop; notice it even when no event comes.
            let mut closed = reader;
            let mut sink = [0u8; 64];
            loop {
                tokio::select! {
                    received = events.recv() => {
                        // What else is already waiting goes in the same write: one system call
                        // per event could not keep up with a burst (100,000 connects a second).
                        let mut batch = Vec::new();
                        let mut next = Some(received);
                        let mut taken = 0;
                        while let Some(received) = next.take() {
                            let event = match received {
                                Ok(event) => event,
                                Err(broadcast::error::RecvError::Lagged(count)) => {
                                    daemon.events.note_lagged(count);
                                    Event::new(
                                        guardlab_host::unix_time_ns(),
                                        guardlab_events::EventBody::Lost(guardlab_events::Lost { count, cpu: None }),
                                    )
                                }
                                Err(broadcast::error::RecvError::Closed) => return,
                            };
                            if guardlab_events::write_ndjson(&mut batch, &event).is_err() {
                                return;
                            }
                            taken += 1;
                            if taken < WRITE_BATCH {
                                next = match events.try_recv() {
                                    Ok(event) => Some(Ok(event)),
                                    Err(broadcast::error::TryRecvError::Lagged(count)) => {
                                        Some(Err(broadcast::error::RecvError::Lagged(count)))
                                    }
                                    Err(_) => None,
                                };
                            }
                        }
                        if write.write_all(&batch).await.is_err() {
                            return;
                        }
                    }
                    read = tokio::io::AsyncReadExt::read(&mut closed, &mut sink) => {
                        if matches!(read, Ok(0) | Err(_)) {
                            return;
                        }
                    }
                }
            }
        }
    }
}

/// Events written to a client in one write at most.
const WRITE_BATCH: usize = 1024;

async fn send(write: &mut tokio::net::unix::OwnedWriteHalf, reply: &Reply) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(reply).map_err(std::io::Error::other)?;
    line.push(b'\n');
    write.write_all(&line).await
}
