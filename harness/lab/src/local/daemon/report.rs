//! What the daemon says while it starts (start messages on stdout, for `lab up`) and what it
//! logs (its stderr: the lab's daemon log).

use crate::local::protocol::StartMessage;

/// Start messages on stdout; once `lab up` is gone, writing fails and is ignored.
pub(super) struct Reporter;

impl Reporter {
    pub(super) fn send(&self, message: &StartMessage) {
        use std::io::Write;
        if let Ok(mut line) = serde_json::to_vec(message) {
            line.push(b'\n');
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&line).and_then(|()| out.flush());
        }
        match message {
            StartMessage::Phase { text } | StartMessage::Detail { text } => log(text),
            StartMessage::Ready { info } => log(&format!("ready: {}", info.notebook_url)),
            StartMessage::Failed { error } => log(&format!("failed: {error}")),
        }
    }
    pub(super) fn phase(&self, text: impl Into<String>) {
        self.send(&StartMessage::Phase { text: text.into() });
    }
    pub(super) fn detail(&self, text: impl Into<String>) {
        self.send(&StartMessage::Detail { text: text.into() });
    }
}

pub(super) fn log(text: &str) {
    let now = guardlab_host::unix_time_ns();
    eprintln!(
        "[{}.{:03}] {text}",
        now / 1_000_000_000,
        now / 1_000_000 % 1000
    );
}
