//! The WebSocket side of Jupyter that kernels and terminals share: opening a socket to the
//! server, and sending and receiving the JSON text frames both protocols are made of.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use hyper::header::{COOKIE, HeaderValue};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::JupyterError;

/// A WebSocket to the Jupyter server (plain TCP: the lab's notebook is only on loopback).
pub(crate) type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a WebSocket to `url`, sending the XSRF `cookie` (`name=value`) when there is one, as
/// a browser does; the handshake may take `timeout`.
pub(crate) async fn connect(
    url: &str,
    cookie: Option<String>,
    timeout: Duration,
) -> Result<WsStream, JupyterError> {
    let ws_err = |reason: String| JupyterError::WebSocket {
        url: url.to_string(),
        reason,
    };
    let mut request = url
        .into_client_request()
        .map_err(|e| ws_err(e.to_string()))?;
    if let Some(cookie) = cookie {
        let cookie = HeaderValue::from_str(&cookie).map_err(|e| ws_err(e.to_string()))?;
        request.headers_mut().insert(COOKIE, cookie);
    }
    let connect = tokio_tungstenite::connect_async(request);
    let (ws, _) = tokio::time::timeout(timeout, connect)
        .await
        .map_err(|_| JupyterError::Timeout {
            what: format!("the WebSocket handshake with {url}"),
            after: timeout,
            partial: String::new(),
        })?
        .map_err(|e| ws_err(e.to_string()))?;
    Ok(ws)
}

/// Sends `message` as a text frame. `socket` names the socket in errors (e.g. `terminal 1`),
/// `sending` what was sent.
pub(crate) async fn send_json(
    ws: &mut WsStream,
    message: &Value,
    socket: &str,
    sending: &dyn std::fmt::Display,
) -> Result<(), JupyterError> {
    ws.send(Message::text(message.to_string()))
        .await
        .map_err(|e| JupyterError::WebSocket {
            url: socket.to_string(),
            reason: format!("sending {sending}: {e}"),
        })
}

/// The next text frame, parsed as JSON. Pings are answered by tungstenite and binary frames
/// (buffers neither protocol here uses) are skipped; the end of the socket is an error, since
/// both protocols end by our own close. `socket` names the socket in errors.
pub(crate) async fn next_json(ws: &mut WsStream, socket: &str) -> Result<Value, JupyterError> {
    loop {
        match ws.next().await {
            None => {
                return Err(JupyterError::Closed {
                    what: socket.to_string(),
                    reason: "the server ended the connection".into(),
                });
            }
            Some(Err(e)) => {
                return Err(JupyterError::WebSocket {
                    url: socket.to_string(),
                    reason: e.to_string(),
                });
            }
            Some(Ok(Message::Text(text))) => {
                return serde_json::from_str(text.as_str()).map_err(|source| JupyterError::Json {
                    what: format!("{socket}: a message is not JSON"),
                    source,
                });
            }
            Some(Ok(Message::Close(frame))) => {
                return Err(JupyterError::Closed {
                    what: socket.to_string(),
                    reason: frame
                        .map(|f| format!("{} {}", f.code, f.reason))
                        .unwrap_or_else(|| "closed by the server".into()),
                });
            }
            Some(Ok(_)) => {}
        }
    }
}
