//! A notebook kernel, driven through `/api/kernels/{id}/channels` (Jupyter messaging protocol
//! 5.3 in the server's JSON WebSocket framing).

use std::time::{Duration, Instant};

use hyper::Method;
use serde_json::{Value, json};

use crate::JupyterError;
use crate::http::JupyterClient;
use crate::websocket::{self, WsStream};

/// How long a new kernel may take to answer its first `kernel_info_request`.
const KERNEL_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A running kernel. Call [`Kernel::close`] to shut it down.
pub struct Kernel {
    client: JupyterClient,
    id: String,
    session: String,
    ws: WsStream,
    counter: u64,
    /// A cell that timed out, with what it gave so far.
    unfinished: Option<PendingCell>,
}

/// A cell sent to the kernel and not yet finished.
struct PendingCell {
    msg_id: String,
    code: String,
    out: CellResult,
    replied: bool,
    idle: bool,
}

/// An exception raised by a cell.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CellError {
    /// The exception's class, e.g. `ZeroDivisionError`.
    pub ename: String,
    pub evalue: String,
    /// As IPython formats it (with ANSI colours; see [`crate::strip_ansi`]).
    pub traceback: Vec<String>,
}

/// What a cell printed and returned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CellResult {
    pub stdout: String,
    pub stderr: String,
    /// The `text/plain` of the cell's value (`Out[n]`), if it has one.
    pub result: Option<String>,
    /// The `text/plain` of what the cell displayed.
    pub displays: Vec<String>,
    pub error: Option<CellError>,
    pub execution_count: Option<u64>,
    /// The reply's status: `ok`, `error` or `aborted`.
    pub status: String,
}

impl JupyterClient {
    /// Starts a `python3` kernel and connects to its channels.
    pub async fn start_kernel(&self) -> Result<Kernel, JupyterError> {
        self.start_kernel_named("python3").await
    }

    /// Starts a kernel of the given kernelspec and connects to its channels.
    pub async fn start_kernel_named(&self, name: &str) -> Result<Kernel, JupyterError> {
        let id = self
            .create("api/kernels", json!({ "name": name }), "id", "kernel id")
            .await?;
        Kernel::connect(self.clone(), id).await
    }
}

impl Kernel {
    async fn connect(client: JupyterClient, id: String) -> Result<Kernel, JupyterError> {
        let session = guardlab_host::random_hex(16);
        let ws = client
            .websocket(&format!("api/kernels/{id}/channels?session_id={session}"))
            .await?;
        let mut kernel = Kernel {
            client,
            id,
            session,
            ws,
            counter: 0,
            unfinished: None,
        };
        kernel.wait_ready(KERNEL_READY_TIMEOUT).await?;
        Ok(kernel)
    }

    /// The kernel's id on the server.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Asks for kernel info until the kernel answers on the shell channel and its iopub
    /// messages reach us too (a new subscription can miss the first messages).
    async fn wait_ready(&mut self, timeout: Duration) -> Result<(), JupyterError> {
        let deadline = Instant::now() + timeout;
        let mut ours: Vec<String> = Vec::new();
        let (mut reply, mut iopub) = (false, false);
        while !(reply && iopub) {
            ours.push(self.send("kernel_info_request", json!({})).await?);
            let round = (Instant::now() + Duration::from_secs(1)).min(deadline);
            while !(reply && iopub) {
                let msg = match tokio::time::timeout_at(round.into(), self.next_message()).await {
                    Ok(m) => m?,
                    Err(_) => break,
                };
                let parent = parent_id(&msg);
                if !ours.iter().any(|m| m == parent) {
                    continue;
                }
                match (channel(&msg), msg_type(&msg)) {
                    ("shell", "kernel_info_reply") => reply = true,
                    ("iopub", _) => iopub = true,
                    _ => {}
                }
            }
            if Instant::now() >= deadline && !(reply && iopub) {
                return Err(JupyterError::Timeout {
                    what: format!(
                        "kernel {} to become ready (kernel_info_reply: {}, iopub: {})",
                        self.id,
                        if reply { "received" } else { "missing" },
                        if iopub { "received" } else { "missing" }
                    ),
                    after: timeout,
                    partial: String::new(),
                });
            }
        }
        Ok(())
    }

    /// Runs `code` as a notebook cell and collects its output until the kernel is idle again
    /// and has replied.
    pub async fn run_cell(
        &mut self,
        code: &str,
        timeout: Duration,
    ) -> Result<CellResult, JupyterError> {
        let msg_id = self
            .send(
                "execute_request",
                json!({
                    "code": code,
                    "silent": false,
                    "store_history": true,
                    "user_expressions": {},
                    "allow_stdin": false,
                    "stop_on_error": true,
                }),
            )
            .await?;
        let mut cell = PendingCell {
            msg_id,
            code: code.to_string(),
            out: CellResult::default(),
            replied: false,
            idle: false,
        };
        match self.collect(&mut cell, timeout).await {
            Ok(()) => Ok(cell.out),
            Err(e) => {
                if matches!(e, JupyterError::Timeout { .. }) {
                    self.unfinished = Some(cell);
                }
                Err(e)
            }
        }
    }

    /// Collects the output of the cell sent as `msg_id` until the kernel is idle again and has
    /// replied.
    async fn collect(
        &mut self,
        cell: &mut PendingCell,
        timeout: Duration,
    ) -> Result<(), JupyterError> {
        let deadline = Instant::now() + timeout;
        let PendingCell {
            msg_id,
            code,
            out,
            replied,
            idle,
        } = cell;
        while !(*replied && *idle) {
            let msg = match tokio::time::timeout_at(deadline.into(), self.next_message()).await {
                Ok(m) => m?,
                Err(_) => {
                    return Err(JupyterError::Timeout {
                        what: format!(
                            "the notebook cell {} on kernel {} to finish ({})",
                            snippet(code),
                            self.id,
                            match (*replied, *idle) {
                                (false, false) => "no execute_reply, kernel not idle",
                                (true, false) => "replied, kernel not idle",
                                _ => "kernel idle, no execute_reply",
                            }
                        ),
                        after: timeout,
                        partial: format!("{}{}", out.stdout, out.stderr),
                    });
                }
            };
            if parent_id(&msg) != msg_id.as_str() {
                continue;
            }
            let content = &msg["content"];
            match (channel(&msg), msg_type(&msg)) {
                ("iopub", "stream") => {
                    let text = content["text"].as_str().unwrap_or("");
                    match content["name"].as_str() {
                        Some("stderr") => out.stderr.push_str(text),
                        _ => out.stdout.push_str(text),
                    }
                }
                ("iopub", "error") => out.error = Some(cell_error(content)),
                ("iopub", "execute_result") => {
                    out.result = content["data"]["text/plain"].as_str().map(str::to_string);
                }
                ("iopub", "display_data") => {
                    if let Some(t) = content["data"]["text/plain"].as_str() {
                        out.displays.push(t.to_string());
                    }
                }
                ("iopub", "execute_input") => {
                    out.execution_count = content["execution_count"].as_u64();
                }
                ("iopub", "status") => {
                    *idle = content["execution_state"].as_str() == Some("idle");
                }
                ("shell", "execute_reply") => {
                    *replied = true;
                    out.status = content["status"].as_str().unwrap_or("").to_string();
                    if let Some(n) = content["execution_count"].as_u64() {
                        out.execution_count = Some(n);
                    }
                    if out.status == "error" && out.error.is_none() {
                        out.error = Some(cell_error(content));
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Interrupts the kernel (`POST /api/kernels/{id}/interrupt`), as the notebook's stop
    /// button does. When a cell timed out, waits for it to end and returns what it gave
    /// (usually a `KeyboardInterrupt` error): cells sent before the kernel saw the interrupt
    /// would be aborted.
    pub async fn interrupt(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<CellResult>, JupyterError> {
        self.client
            .request(
                Method::POST,
                &format!("api/kernels/{}/interrupt", self.id),
                None,
            )
            .await?;
        let Some(mut cell) = self.unfinished.take() else {
            return Ok(None);
        };
        match self.collect(&mut cell, timeout).await {
            Ok(()) => Ok(Some(cell.out)),
            Err(e) => {
                self.unfinished = Some(cell);
                Err(e)
            }
        }
    }

    /// Closes the channels and shuts the kernel down.
    pub async fn close(mut self) -> Result<(), JupyterError> {
        let _ = self.ws.close(None).await;
        self.client
            .request(Method::DELETE, &format!("api/kernels/{}", self.id), None)
            .await
            .map(|_| ())
    }

    /// Sends a shell-channel request; its msg_id.
    async fn send(&mut self, msg_type: &str, content: Value) -> Result<String, JupyterError> {
        self.counter += 1;
        let msg_id = format!("{}_{}", self.session, self.counter);
        let msg = json!({
            "header": {
                "msg_id": msg_id,
                "msg_type": msg_type,
                "username": "guardlab",
                "session": self.session,
                "date": iso8601_now(),
                "version": "5.3",
            },
            "parent_header": {},
            "metadata": {},
            "content": content,
            "channel": "shell",
            "buffers": [],
        });
        let socket = format!("kernel {} channels", self.id);
        websocket::send_json(&mut self.ws, &msg, &socket, &msg_type).await?;
        Ok(msg_id)
    }

    /// The next JSON message from any channel.
    async fn next_message(&mut self) -> Result<Value, JupyterError> {
        let socket = format!("the channels of kernel {}", self.id);
        websocket::next_json(&mut self.ws, &socket).await
    }
}

fn channel(msg: &Value) -> &str {
    msg["channel"].as_str().unwrap_or("")
}

fn msg_type(msg: &Value) -> &str {
    msg["header"]["msg_type"]
        .as_str()
        .or_else(|| msg["msg_type"].as_str())
        .unwrap_or("")
}

fn parent_id(msg: &Value) -> &str {
    msg["parent_header"]["msg_id"].as_str().unwrap_or("")
}

fn cell_error(content: &Value) -> CellError {
    CellError {
        ename: content["ename"].as_str().unwrap_or("").to_string(),
        evalue: content["evalue"].as_str().unwrap_or("").to_string(),
        traceback: content["traceback"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|l| l.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// The first line of a cell, for messages.
fn snippet(code: &str) -> String {
    let first = code.lines().next().unwrap_or("");
    let mut s: String = first.chars().take(60).collect();
    if s.len() < first.len() || code.lines().count() > 1 {
        s.push_str("...");
    }
    format!("`{s}`")
}

/// The current UTC time as Jupyter's headers carry it, e.g. `2024-05-01T12:00:00.000000Z`.
fn iso8601_now() -> String {
    let now = guardlab_host::unix_time_ns();
    let (secs, micros) = (now / 1_000_000_000, now % 1_000_000_000 / 1000);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's days-to-civil.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        micros
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_iso8601() {
        let d = iso8601_now();
        assert_eq!(d.len(), 27, "{d}");
        assert!(
            d.starts_with("20") && d.ends_with('Z') && d.as_bytes()[10] == b'T',
            "{d}"
        );
    }

    #[test]
    fn snippets_are_short() {
        assert_eq!(snippet("print(1)"), "`print(1)`");
        assert_eq!(snippet("a = 1\nb = 2"), "`a = 1...`");
    }
}
