//! `guardlab-sensor --serve ADDR` without `--cgroup`/`--all-containers`: the control protocol
//! of `guardlab_events::control` (what the kind backend speaks through a port-forward).
//!
//! One task per TCP connection parses the client's lines and forwards them as [`Command`]s to
//! the main loop, which owns the [`Sensor`] and the [`Control`] state: which connection wants
//! which containers, which cgroups are watched for them (shared, counted), and the processes
//! seen in them (for kills). The main loop routes each event to the connections that watch its
//! cgroup, so a connection only ever sees its own containers.
//!
//! Pids: events carry the kernel's init-namespace pids. The sensor's /proc may be another pid
//! namespace's (on kind, the node is a container and `hostPID` gives the node's namespace), so
//! a `kill` does not use the pid as is: the sensor looks up the start time and container pid
//! (`ns_pid`) it saw in that process's exec or fork event, and signals the process with both
//! among the pids its own view of the cgroup's `cgroup.procs` lists. Where both namespaces are
//! the same (this host, CI), that finds the same pid; a process never seen in a watched
//! container's events is refused. Everything after that (a tree's members, a process group's
//! id and members) is read in the sensor's own /proc, where all those numbers agree, and every
//! process is signalled through a pidfd opened there, checked against its start time.
//! `tests/nested_pidns.rs` runs this in the kind layout: the sensor in a pid namespace of its
//! own, the containers in namespaces made inside it.
//!
//! This module is the TCP side (one task per connection); `control` is the main loop's state,
//! `kill` finds and signals the processes a kill names.

mod control;
mod kill;

pub use control::Control;

use guardlab_sensor::events::control::{SensorReply, SensorRequest, WatchedContainer};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

/// Lines buffered per connection before it counts as too slow (and is sent a `lost` event).
const CONNECTION_BUFFER: usize = 65536;

/// What a connection asks of the main loop.
pub enum Command {
    Subscribe {
        conn: u64,
        containers: Vec<WatchedContainer>,
        out: mpsc::Sender<String>,
    },
    Disconnect {
        conn: u64,
    },
    Kill {
        pid: u32,
        tree: bool,
        reply: oneshot::Sender<SensorReply>,
    },
    KillGroup {
        pid: u32,
        reply: oneshot::Sender<SensorReply>,
    },
}

/// Accepts connections until the listener fails; each one gets a task.
pub async fn accept(listener: TcpListener, commands: mpsc::Sender<Command>) -> std::io::Result<()> {
    let mut next = 0u64;
    loop {
        let (conn, peer) = listener.accept().await?;
        next += 1;
        let (id, commands) = (next, commands.clone());
        tokio::spawn(async move {
            if let Err(e) = connection(id, conn, &commands).await {
                eprintln!("guardlab-sensor: client {peer}: {e}");
            }
            let _ = commands.send(Command::Disconnect { conn: id }).await;
        });
    }
}

async fn write_reply(
    writer: &mut tokio::net::tcp::OwnedWriteHalf,
    reply: &SensorReply,
) -> std::io::Result<()> {
    let line = serde_json::to_string(reply).unwrap_or_default() + "\n";
    writer.write_all(line.as_bytes()).await?;
    writer.flush().await
}

/// Why a connection was ended (said on the sensor's stderr; a bad first line is also answered).
#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(
        "request line {line} is not a guardlab-sensor request ({{\"op\":\"subscribe\",...}}, {{\"op\":\"kill\",...}} or {{\"op\":\"kill_group\",...}}): {source}"
    )]
    BadRequest {
        line: usize,
        #[source]
        source: serde_json::Error,
    },
    /// Replies would interleave with events: kills use their own connection.
    #[error(
        "request line {line}: a kill or kill_group must be the first line of its own connection, not sent on an event stream"
    )]
    KillOnEventStream { line: usize },
}

fn parse_request(line: &str, number: usize) -> Result<SensorRequest, ConnectionError> {
    serde_json::from_str(line).map_err(|source| ConnectionError::BadRequest {
        line: number,
        source,
    })
}

/// Hands a kill to the main loop and waits for its answer.
async fn ask(
    commands: &mpsc::Sender<Command>,
    command: impl FnOnce(oneshot::Sender<SensorReply>) -> Command,
) -> SensorReply {
    let (reply, answer) = oneshot::channel();
    let _ = commands.send(command(reply)).await;
    answer
        .await
        .unwrap_or_else(|_| SensorReply::error("the sensor is stopping"))
}

async fn connection(
    id: u64,
    conn: TcpStream,
    commands: &mpsc::Sender<Command>,
) -> Result<(), ConnectionError> {
    let (reader, mut writer) = conn.into_split();
    let mut lines = BufReader::new(reader).lines();
    let mut number = 0;
    let first = loop {
        let Some(line) = lines.next_line().await? else {
            return Ok(());
        };
        number += 1;
        if !line.trim().is_empty() {
            break line;
        }
    };
    let containers = match parse_request(&first, number) {
        Ok(SensorRequest::Kill { pid, tree }) => {
            let reply = ask(commands, |reply| Command::Kill { pid, tree, reply }).await;
            return Ok(write_reply(&mut writer, &reply).await?);
        }
        Ok(SensorRequest::KillGroup { pid }) => {
            let reply = ask(commands, |reply| Command::KillGroup { pid, reply }).await;
            return Ok(write_reply(&mut writer, &reply).await?);
        }
        Ok(SensorRequest::Subscribe { containers }) => containers,
        Err(e) => {
            return Ok(write_reply(&mut writer, &SensorReply::error(e.to_string())).await?);
        }
    };
    let (out, mut lines_out) = mpsc::channel::<String>(CONNECTION_BUFFER);
    let subscribe = |containers| Command::Subscribe {
        conn: id,
        containers,
        out: out.clone(),
    };
    if commands.send(subscribe(containers)).await.is_err() {
        return Ok(());
    }
    let mut writer = tokio::io::BufWriter::new(writer);
    loop {
        tokio::select! {
            line = lines.next_line() => {
                let Some(line) = line? else { return Ok(()) };
                number += 1;
                if line.trim().is_empty() {
                    continue;
                }
                match parse_request(&line, number) {
                    Ok(SensorRequest::Subscribe { containers }) => {
                        if commands.send(subscribe(containers)).await.is_err() {
                            return Ok(());
                        }
                    }
                    Ok(SensorRequest::Kill { .. } | SensorRequest::KillGroup { .. }) => {
                        return Err(ConnectionError::KillOnEventStream { line: number });
                    }
                    Err(e) => return Err(e),
                }
            }
            line = lines_out.recv() => {
                let Some(line) = line else { break };
                writer.write_all(line.as_bytes()).await?;
                // Batch what is already waiting into one write.
                while let Ok(line) = lines_out.try_recv() {
                    writer.write_all(line.as_bytes()).await?;
                }
                writer.flush().await?;
            }
        }
    }
    Ok(writer.flush().await?)
}
