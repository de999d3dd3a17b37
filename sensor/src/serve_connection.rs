//! One connection of the sensor's control protocol (`guardlab_events::control`), the serve side:
//! the client's lines in, [`Command`]s to the sensor's main loop out, replies and events back.
//! The TCP listener and the main loop are the `guardlab-sensor` binary's (`serve`); this part
//! is in the library so that it can be driven over any byte stream (the fuzz targets in `fuzz/`
//! feed it arbitrary client bytes).

use guardlab_events::control::{SensorReply, SensorRequest, WatchedContainer};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
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

async fn write_reply<W: AsyncWrite + Unpin>(
    writer: &mut W,
    reply: &SensorReply,
) -> std::io::Result<()> {
    let line = serde_json::to_string(reply).unwrap_or_default() + "\n";
    writer.write_all(line.as_bytes()).await?;
    writer.flush().await
}

/// Why a connection was ended (said on the sensor's stderr; a bad first line is also answered).
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
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

/// Serves one client: `reader` is what it sends, `writer` where its replies and events go.
/// `id` names the connection in the [`Command`]s. Returns when the client is done, or with why
/// the connection was ended.
pub async fn connection<R, W>(
    id: u64,
    reader: R,
    mut writer: W,
    commands: &mpsc::Sender<Command>,
) -> Result<(), ConnectionError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
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
