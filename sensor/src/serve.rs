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
pub use guardlab_sensor::serve_connection::Command;

use guardlab_sensor::serve_connection::connection;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// Accepts connections until the listener fails; each one gets a task.
pub async fn accept(listener: TcpListener, commands: mpsc::Sender<Command>) -> std::io::Result<()> {
    let mut next = 0u64;
    loop {
        let (conn, peer) = listener.accept().await?;
        next += 1;
        let (id, commands) = (next, commands.clone());
        tokio::spawn(async move {
            let (reader, writer) = conn.into_split();
            if let Err(e) = connection(id, reader, writer, &commands).await {
                eprintln!("guardlab-sensor: client {peer}: {e}");
            }
            let _ = commands.send(Command::Disconnect { conn: id }).await;
        });
    }
}
