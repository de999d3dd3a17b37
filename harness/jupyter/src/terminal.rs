//! A Jupyter terminal (terminado), driven through `/terminals/websocket/{name}` with
//! terminado's JSON arrays: `["stdin", text]` and `["set_size", rows, cols]` from us,
//! `["setup", {}]`, `["stdout", text]` and `["disconnect", 1]` from the server.
//!
//! End of command: when the terminal opens we set the shell's prompt to a marker carrying a
//! random nonce and the exit status (`PS1='[GL\072<nonce>\072$?]'`). Bash prints its prompt
//! itself, so no extra process appears in the sensor's trace; the prompt comes back after every
//! command, also after Ctrl-C; and because the marker is written with `\072` (octal for `:`),
//! the echo of what we type can never look like the marker that bash prints.

use std::time::{Duration, Instant};

use hyper::Method;
use serde_json::{Value, json};

use crate::JupyterError;
use crate::ansi::{screen_text, strip_ansi};
use crate::http::JupyterClient;
use crate::websocket::{self, WsStream};

/// How long a new terminal's shell may take to show its first (marker) prompt.
const SHELL_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Wide enough that readline never wraps a command line we type.
const COLUMNS: u32 = 4000;
const ROWS: u32 = 50;

/// An open terminal. Call [`Terminal::close`] to end its shell.
pub struct Terminal {
    client: JupyterClient,
    name: String,
    ws: WsStream,
    /// `[GL:<nonce>:`, the start of the prompt marker as bash prints it.
    marker: String,
    /// Output received and not yet given to a command.
    pending: String,
    /// A command that timed out and has not yet come back to the prompt.
    busy_with: Option<String>,
}

/// A command's output, as a terminal would show it (no escapes, no echo of the command line),
/// and its exit status (`$?`; 130 after Ctrl-C).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommandResult {
    pub output: String,
    pub exit_status: i32,
}

impl JupyterClient {
    /// Opens a terminal (a login shell in the server's environment) and connects to it.
    pub async fn open_terminal(&self) -> Result<Terminal, JupyterError> {
        let name = self
            .create("api/terminals", json!({}), "name", "terminal name")
            .await?;
        Terminal::connect(self.clone(), name).await
    }
}

impl Terminal {
    async fn connect(client: JupyterClient, name: String) -> Result<Self, JupyterError> {
        let ws = client
            .websocket(&format!("terminals/websocket/{name}"))
            .await?;
        let nonce = guardlab_host::random_hex(8);
        let mut t = Terminal {
            client,
            name,
            ws,
            marker: format!("[GL:{nonce}:"),
            pending: String::new(),
            busy_with: None,
        };
        t.send(json!(["set_size", ROWS, COLUMNS])).await?;
        // A leading space keeps it out of the history (Debian's HISTCONTROL=ignoreboth); all
        // builtins. Typed ahead of the shell's start-up, the tty keeps it until bash reads it.
        t.send_stdin(&format!(
            " PS2=''; unset PROMPT_COMMAND; PS1='[GL\\072{nonce}\\072$?]'\r"
        ))
        .await?;
        let deadline = Instant::now() + SHELL_READY_TIMEOUT;
        t.read_until_marker(deadline, "the shell prompt of a new terminal", &[])
            .await
            .map_err(|e| match e {
                JupyterError::Timeout { partial, .. } => JupyterError::Timeout {
                    what: format!(
                        "the shell of terminal {} to show its prompt after setting PS1",
                        t.name
                    ),
                    after: SHELL_READY_TIMEOUT,
                    partial: screen_text(&partial),
                },
                e => e,
            })?;
        Ok(t)
    }

    /// The terminal's name on the server.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Types `command` and Enter, and waits for the prompt to come back.
    pub async fn run(
        &mut self,
        command: &str,
        timeout: Duration,
    ) -> Result<CommandResult, JupyterError> {
        self.run_answering(command, &[], timeout).await
    }

    /// Like [`Terminal::run`], typing `reply` when `prompt` appears in the output (each pair
    /// once, in order), e.g. `("password for", "\u{3}")` to give up at sudo's password prompt
    /// with Ctrl-C, as a learner would.
    pub async fn run_answering(
        &mut self,
        command: &str,
        replies: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<CommandResult, JupyterError> {
        if let Some(previous) = &self.busy_with {
            return Err(JupyterError::TerminalBusy {
                terminal: self.name.clone(),
                command: previous.clone(),
            });
        }
        // Whatever arrived between commands (there should be nothing) is not this command's.
        self.pending.clear();
        self.send_stdin(&format!("{command}\r")).await?;
        let deadline = Instant::now() + timeout;
        match self.read_until_marker(deadline, command, replies).await {
            Ok((raw, exit_status)) => Ok(CommandResult {
                output: without_echo(&screen_text(&raw), command),
                exit_status,
            }),
            Err(JupyterError::Timeout { partial, .. }) => {
                self.busy_with = Some(command.to_string());
                Err(JupyterError::Timeout {
                    what: format!(
                        "the end of `{command}` in terminal {} (the shell's prompt marker)",
                        self.name
                    ),
                    after: timeout,
                    partial: without_echo(&screen_text(&partial), command),
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Sends Ctrl-C and waits for the prompt: ends a command that timed out (or is still
    /// running), so that the terminal can be used again. Its output since the last command.
    pub async fn interrupt(&mut self, timeout: Duration) -> Result<CommandResult, JupyterError> {
        let command = self.busy_with.clone().unwrap_or_default();
        self.send_stdin("\u{3}").await?;
        let deadline = Instant::now() + timeout;
        let (raw, exit_status) = self
            .read_until_marker(deadline, "Ctrl-C", &[])
            .await
            .map_err(|e| match e {
                JupyterError::Timeout { partial, .. } => JupyterError::Timeout {
                    what: format!(
                        "the prompt of terminal {} after Ctrl-C (to end `{command}`)",
                        self.name
                    ),
                    after: timeout,
                    partial: screen_text(&partial),
                },
                e => e,
            })?;
        self.busy_with = None;
        Ok(CommandResult {
            output: without_echo(&screen_text(&raw), &command),
            exit_status,
        })
    }

    /// Ends the shell and closes the terminal (`DELETE /api/terminals/{name}`).
    pub async fn close(mut self) -> Result<(), JupyterError> {
        let _ = self.ws.close(None).await;
        self.client
            .request(
                Method::DELETE,
                &format!("api/terminals/{}", self.name),
                None,
            )
            .await
            .map(|_| ())
    }

    /// Reads output until the prompt marker; the text before it and the exit status in it.
    /// On a timeout, the `partial` of the error holds what arrived.
    async fn read_until_marker(
        &mut self,
        deadline: Instant,
        what: &str,
        replies: &[(&str, &str)],
    ) -> Result<(String, i32), JupyterError> {
        let mut next_reply = 0;
        let mut search_from = 0;
        let mut echo_end: Option<usize> = None;
        loop {
            if let Some((before, status, rest)) = self.split_at_marker() {
                self.pending = rest;
                return Ok((before, status));
            }
            if let Some((prompt, reply)) = replies.get(next_reply) {
                // Escapes removed, for finding a prompt such as sudo's.
                let seen = strip_ansi(&self.pending);
                // The terminal first echoes the typed command line, which may itself contain
                // the prompt's text (`read -p 'Name? '`): look for prompts only after the
                // echo's line break, or the reply would be typed before the program asks.
                if echo_end.is_none() {
                    echo_end = seen.find('\n').map(|i| i + 1);
                }
                let from = echo_end.map(|start| search_from.max(start));
                if let Some((from, i)) =
                    from.and_then(|from| Some((from, seen.get(from..)?.find(prompt)?)))
                {
                    search_from = from + i + prompt.len();
                    next_reply += 1;
                    self.send_stdin(reply).await?;
                    continue;
                }
            }
            let chunk = match tokio::time::timeout_at(deadline.into(), self.next_output()).await {
                Ok(c) => c?,
                Err(_) => {
                    return Err(JupyterError::Timeout {
                        what: what.to_string(),
                        after: Duration::ZERO,
                        partial: self.pending.clone(),
                    });
                }
            };
            self.pending.push_str(&chunk);
        }
    }

    /// `(text before the marker, exit status, text after it)` once a whole marker arrived.
    fn split_at_marker(&self) -> Option<(String, i32, String)> {
        let start = self.pending.find(&self.marker)?;
        let after = &self.pending[start + self.marker.len()..];
        let end = after.find(']')?;
        let status = after[..end].parse().ok()?;
        Some((
            self.pending[..start].to_string(),
            status,
            after[end + 1..].to_string(),
        ))
    }

    async fn send_stdin(&mut self, text: &str) -> Result<(), JupyterError> {
        self.send(json!(["stdin", text])).await
    }

    async fn send(&mut self, message: Value) -> Result<(), JupyterError> {
        let socket = format!("terminal {}", self.name);
        websocket::send_json(&mut self.ws, &message, &socket, &message).await
    }

    /// The next `stdout` text from the terminal.
    async fn next_output(&mut self) -> Result<String, JupyterError> {
        let socket = format!("terminal {}", self.name);
        loop {
            let msg = websocket::next_json(&mut self.ws, &socket).await?;
            match msg[0].as_str() {
                Some("stdout") => return Ok(msg[1].as_str().unwrap_or("").to_string()),
                Some("disconnect") => {
                    return Err(JupyterError::Closed {
                        what: socket,
                        reason: "its shell exited".into(),
                    });
                }
                _ => {}
            }
        }
    }
}

/// The output without the echo of the typed command: its lines are the first lines of what the
/// terminal shows (readline echoes a command before the shell runs it).
fn without_echo(screen: &str, command: &str) -> String {
    let mut rest = screen;
    for typed in command.lines() {
        let typed = typed.trim_end();
        let (line, after) = match rest.split_once('\n') {
            Some((l, a)) => (l, Some(a)),
            None => (rest, None),
        };
        if !line.trim_end().ends_with(typed) {
            break;
        }
        rest = after.unwrap_or("");
    }
    rest.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_echo_is_removed_and_the_output_kept() {
        assert_eq!(without_echo("echo hi\nhi\n", "echo hi"), "hi\n");
        assert_eq!(without_echo("printf abc\nabc", "printf abc"), "abc");
        assert_eq!(
            without_echo(
                "for i in 1 2; do\necho $i\ndone\n1\n2\n",
                "for i in 1 2; do\necho $i\ndone"
            ),
            "1\n2\n"
        );
        // Output that does not start with the echo is left alone.
        assert_eq!(without_echo("surprise\n", "ls"), "surprise\n");
        assert_eq!(without_echo("", "ls"), "");
    }
}
