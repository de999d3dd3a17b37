//! A plain HTTP/1.1 client for tests of the console's API: one request per connection, the
//! status, headers and body back, chunked bodies joined. No TLS, no redirects: the console
//! serves plain HTTP on loopback.

use std::net::SocketAddr;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What came back.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Reply {
    /// The body as JSON (a string value when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| Value::String(self.body.clone()))
    }
}

/// `method path` on `addr`, with a JSON body when given and `extra` header lines (each ending
/// in `\r\n`).
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
    extra: &str,
) -> std::io::Result<Reply> {
    let mut stream = TcpStream::connect(addr).await?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let bad = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not an HTTP reply: {text:?}"),
        )
    };
    let (headers, rest) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    let status = headers
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    let body = if headers
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Ok(Reply {
        status,
        headers: headers.to_string(),
        body,
    })
}

/// GET, the body as JSON.
pub async fn get_json(addr: SocketAddr, path: &str) -> std::io::Result<(u16, Value)> {
    let reply = request(addr, "GET", path, None, "").await?;
    Ok((reply.status, reply.json()))
}

/// POST a JSON body, the reply as JSON.
pub async fn post_json(
    addr: SocketAddr,
    path: &str,
    body: &Value,
) -> std::io::Result<(u16, Value)> {
    let reply = request(addr, "POST", path, Some(body), "").await?;
    Ok((reply.status, reply.json()))
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || tail.len() < size {
            break;
        }
        out.push_str(&tail[..size]);
        rest = tail.get(size + 2..).unwrap_or("");
    }
    out
}
