//! The control socket's client: `LocalLab`'s requests to its daemon (status, visitors,
//! actions, enforcement) and its event stream.

use std::path::PathBuf;
use std::time::Duration;

use guardlab_events::Event;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use super::LocalLab;
use super::protocol::{ControlError, DaemonStatus, Reply, Request, Visitors};
use crate::{Backend, IoContext, LabError};

impl LocalLab {
    /// Everything the daemon says about the lab; `None` when it is down or its daemon is not
    /// running (see [`LocalLab::state`] for what is left).
    pub async fn daemon_status(&self) -> Result<Option<DaemonStatus>, LabError> {
        match self.request(&Request::Status).await {
            Ok((reply, _, _)) => Ok(reply.status),
            Err(_) if !self.daemon_alive()? => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Who reached the lab's services (web requests, DNS queries, pool clients).
    pub async fn visitors(&self) -> Result<Visitors, LabError> {
        let (reply, _, _) = self.request(&Request::Visitors).await?;
        Ok(reply.visitors.unwrap_or_default())
    }

    /// Events like [`Lab::events`], optionally without the replay of what came before.
    pub async fn event_stream(&self, replay: bool) -> Result<mpsc::Receiver<Event>, LabError> {
        let (_, reader, writer) = self.request(&Request::Events { replay }).await?;
        let (tx, rx) = mpsc::channel(65536);
        tokio::spawn(async move {
            // Holding the write half keeps the stream open; dropping it (when the receiver is
            // gone) tells the daemon to stop.
            let _writer = writer;
            let mut lines = reader.lines();
            let mut number = 1;
            while let Ok(Some(line)) = lines.next_line().await {
                number += 1;
                match guardlab_events::parse_line(&line, number) {
                    Ok(event) => {
                        if tx.send(event).await.is_err() {
                            return; // Dropping the reader closes the connection.
                        }
                    }
                    Err(e) => {
                        eprintln!("lab events: {e}");
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }

    pub(super) fn socket_path(&self) -> PathBuf {
        self.lab_dir.join(crate::lab_files::SOCKET_FILE)
    }

    pub(super) fn daemon_alive(&self) -> Result<bool, LabError> {
        Ok(self
            .state()?
            .and_then(|s| s.daemon)
            .is_some_and(|d| d.is_alive()))
    }

    /// One request to the daemon: its reply (a refusal is an error), and the connection for
    /// what follows.
    pub(super) async fn request(&self, request: &Request) -> Result<Connection, LabError> {
        let connection = self.exchange(request).await?;
        if !connection.0.ok {
            return Err(ControlError::Refused {
                request: request.name(),
                reason: refusal(&connection.0),
            }
            .into());
        }
        Ok(connection)
    }

    /// One request to the daemon and its reply, whether it did what was asked or refused.
    pub(super) async fn exchange(&self, request: &Request) -> Result<Connection, LabError> {
        let path = self.socket_path();
        let stream = match UnixStream::connect(&path).await {
            Ok(stream) => stream,
            // No socket, or nobody listening on it: no daemon, so no lab.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Err(LabError::NotUp {
                    backend: Backend::Local,
                    detail: format!(
                        "no lab daemon answers at {} ({e}): `guardlab lab up` starts one, \
                         `guardlab lab status` says what is left",
                        path.display()
                    ),
                });
            }
            Err(e) => {
                return Err(e).context(|| {
                    format!(
                        "connecting to the lab daemon at {} (is the lab up? `guardlab lab status`)",
                        path.display()
                    )
                });
            }
        };
        let (read, mut write) = stream.into_split();
        let mut line = serde_json::to_vec(request).map_err(|error| ControlError::Encode {
            request: request.name(),
            error,
        })?;
        line.push(b'\n');
        write
            .write_all(&line)
            .await
            .context(|| "talking to the lab daemon")?;
        let mut reader = BufReader::new(read);
        let mut answer = String::new();
        let limit = Duration::from_secs(30);
        let n = tokio::time::timeout(limit, reader.read_line(&mut answer))
            .await
            .map_err(|_| LabError::Timeout {
                what: "the lab daemon's answer".into(),
                limit,
                detail: String::new(),
            })?
            .context(|| "reading the lab daemon's answer")?;
        if n == 0 {
            return Err(ControlError::Closed.into());
        }
        let reply: Reply =
            serde_json::from_str(answer.trim()).map_err(|error| ControlError::BadAnswer {
                answer: answer.clone(),
                error,
            })?;
        Ok((reply, reader, write))
    }
}

/// A reply, the rest of its connection to read from, and its write half (dropping it closes
/// the connection).
pub(super) type Connection = (
    Reply,
    BufReader<tokio::net::unix::OwnedReadHalf>,
    tokio::net::unix::OwnedWriteHalf,
);

/// What a refusing reply says.
pub(super) fn refusal(reply: &Reply) -> String {
    reply
        .error
        .clone()
        .unwrap_or_else(|| "no reason given".into())
}
