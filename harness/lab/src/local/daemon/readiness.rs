//! The pod's readiness: the Deployment's probe (`GET /api` on the notebook's port), asked from
//! the pod's own loopback until it answers, the pod's first process ends or time runs out.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::watch;

use super::{Daemon, DaemonError};
use crate::LabError;
use crate::local::pod::ExitStatus;

/// Wait until the notebook answers `GET /api` inside the pod (the Deployment's readiness
/// probe), or the pod's first process exits, or the start timeout passes.
pub(super) async fn wait_ready(
    daemon: &Daemon,
    mut exited: watch::Receiver<Option<ExitStatus>>,
) -> Result<(), LabError> {
    let port = daemon.config.pod.http_port().unwrap_or(8888);
    let timeout = Duration::from_secs(daemon.config.ready_timeout_secs);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(status) = *exited.borrow() {
            return Err(DaemonError::PodEnded {
                status,
                log: log_tail(daemon),
            }
            .into());
        }
        if probe(daemon, port).await {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(LabError::Timeout {
                what: format!("the notebook's answer on port {port}"),
                limit: timeout,
                detail: format!("its log: {}", log_tail(daemon)),
            });
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = exited.changed() => {}
        }
    }
}

fn log_tail(daemon: &Daemon) -> String {
    let pods = daemon.pods.lock().unwrap_or_else(|e| e.into_inner());
    let Some(pod) = pods.last() else {
        return String::new();
    };
    let text = std::fs::read_to_string(pod.record.dir.join("container.log")).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(15)..];
    format!("\n  {}", tail.join("\n  "))
}

/// One readiness probe: `GET /api` from the pod's own loopback.
async fn probe(daemon: &Daemon, port: u16) -> bool {
    let Ok(socket) = daemon.network.pod.tcp_socket(false).await else {
        return false;
    };
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(Ok(mut stream)) =
        tokio::time::timeout(Duration::from_secs(2), socket.connect(address)).await
    else {
        return false;
    };
    let request = format!("GET /api HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    matches!(
        tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut status_line)).await,
        Ok(Ok(_))
    ) && status_line.split_whitespace().nth(1) == Some("200")
}
