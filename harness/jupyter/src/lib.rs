//! Drives Jupyter through its HTTP and WebSocket APIs, as a browser would.
//!
//! The scenario's baseline and attack are typed into a real Jupyter server: notebook cells run
//! on a kernel through the kernel's WebSocket channels, and shell commands run in a Jupyter
//! terminal (terminado) through its WebSocket, so the sensor sees the same processes a learner's
//! browser would cause.
//!
//! Modules: `http` (the [`JupyterClient`]: the REST API, its XSRF token, opening WebSockets),
//! `kernel` and `terminal` (each starts its kind through the client and drives it),
//! `websocket` (the JSON text frames both speak), `ansi` (terminal output to text).
//!
//! ```no_run
//! # async fn demo() -> Result<(), guardlab_jupyter::JupyterError> {
//! use std::time::Duration;
//! use guardlab_jupyter::JupyterClient;
//!
//! let jupyter = JupyterClient::new("http://127.0.0.1:1234/")?;
//! jupyter.wait_until_up(Duration::from_secs(60)).await?;
//! let mut kernel = jupyter.start_kernel().await?;
//! let cell = kernel.run_cell("print('Hello world!')", Duration::from_secs(30)).await?;
//! assert_eq!(cell.stdout, "Hello world!\n");
//! kernel.close().await?;
//!
//! let mut terminal = jupyter.open_terminal().await?;
//! let id = terminal.run("id", Duration::from_secs(10)).await?;
//! println!("{} (exit status {})", id.output, id.exit_status);
//! terminal.close().await?;
//! # Ok(()) }
//! ```

mod ansi;
mod http;
mod kernel;
mod terminal;
mod websocket;

use std::time::Duration;

pub use ansi::{screen_text, strip_ansi};
pub use http::JupyterClient;
pub use kernel::{CellError, CellResult, Kernel};
pub use terminal::{CommandResult, Terminal};

/// What went wrong talking to Jupyter; every variant says what was being done.
#[derive(Debug, thiserror::Error)]
pub enum JupyterError {
    #[error("bad Jupyter URL `{url}`: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot reach Jupyter ({what}): {reason}")]
    Unreachable { what: String, reason: String },
    #[error("{method} {url} answered HTTP {status}: {body}")]
    Http {
        method: String,
        url: String,
        status: u16,
        body: String,
    },
    #[error("WebSocket {url}: {reason}")]
    WebSocket { url: String, reason: String },
    #[error("timed out after {after:?} waiting for {what}{}", partial_note(.partial))]
    Timeout {
        what: String,
        after: Duration,
        /// What had arrived by then (output of the cell or command), for the message.
        partial: String,
    },
    #[error("{what} closed: {reason}")]
    Closed { what: String, reason: String },
    /// An answer or a message that is not the JSON Jupyter's protocol says.
    #[error("Jupyter protocol: {what}: {source}")]
    Json {
        /// The call or the socket, and what was wrong with what it gave.
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// An answer without what it should name (a new kernel's id, a new terminal's name).
    #[error("Jupyter protocol: {call}: no {missing} in {answer}")]
    MissingInAnswer {
        call: String,
        missing: &'static str,
        answer: String,
    },
    /// A command was typed into a terminal whose previous command timed out and still runs.
    #[error(
        "terminal {terminal} is still running `{command}` (it timed out); call interrupt() first"
    )]
    TerminalBusy { terminal: String, command: String },
}

fn partial_note(partial: &str) -> String {
    if partial.is_empty() {
        return String::new();
    }
    const MAX: usize = 2000;
    let tail = if partial.len() > MAX {
        let mut start = partial.len() - MAX;
        while !partial.is_char_boundary(start) {
            start += 1;
        }
        format!("...{}", &partial[start..])
    } else {
        partial.to_string()
    };
    format!("; output so far:\n{tail}")
}
