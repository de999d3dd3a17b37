//! SIGINT (Ctrl-C) and SIGTERM while a command holds a lab (`scenario`, `lab up`): instead of
//! ending at once and leaving the lab behind, the command stops what it does, takes down what
//! it brought up (or, with `--keep-lab`, says how to), and exits 130 or 143 (128 + the
//! signal's number, as a shell reports a process ended by it) with one line saying what it
//! cleaned. A second signal while it cleans stops the cleaning: what is left is said, and a lab
//! that belongs to the run is removed by its own daemon once the run's process is gone.

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;

/// A signal that asks guardlab to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopSignal {
    /// SIGINT: Ctrl-C in the terminal.
    Interrupt,
    /// SIGTERM: `kill`, a CI job's timeout, a service manager.
    Terminate,
}

impl StopSignal {
    /// Its name, as a person reads it in the command's last line.
    pub fn name(self) -> &'static str {
        match self {
            StopSignal::Interrupt => "SIGINT",
            StopSignal::Terminate => "SIGTERM",
        }
    }

    /// 128 + the signal's number: 130 for SIGINT, 143 for SIGTERM.
    pub fn exit_code(self) -> u8 {
        let number = match self {
            StopSignal::Interrupt => libc::SIGINT,
            StopSignal::Terminate => libc::SIGTERM,
        };
        // Both numbers are below 128: the sum fits.
        128 + number as u8
    }
}

/// Where stop requests come from: the process's SIGINT and SIGTERM, or (tests) a channel.
pub struct StopSignals {
    source: Source,
}

enum Source {
    Os {
        interrupt: Signal,
        terminate: Signal,
    },
    Channel(mpsc::UnboundedReceiver<StopSignal>),
}

impl StopSignals {
    /// SIGINT and SIGTERM, from now on: their default action (ending the process at once) is
    /// replaced for the rest of the process. Call it within a tokio runtime, before the lab
    /// starts.
    pub fn listen() -> std::io::Result<StopSignals> {
        Ok(StopSignals {
            source: Source::Os {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
            },
        })
    }

    /// Stop requests sent on a channel, in place of the process's signals (tests choose the
    /// moment). A closed channel never asks to stop.
    pub fn from_channel(requests: mpsc::UnboundedReceiver<StopSignal>) -> StopSignals {
        StopSignals {
            source: Source::Channel(requests),
        }
    }

    /// No stop request ever (a run that goes to its end whatever comes).
    pub fn never() -> StopSignals {
        StopSignals::from_channel(mpsc::unbounded_channel().1)
    }

    /// The next stop request.
    pub async fn next(&mut self) -> StopSignal {
        match &mut self.source {
            Source::Os {
                interrupt,
                terminate,
            } => {
                tokio::select! {
                    _ = interrupt.recv() => StopSignal::Interrupt,
                    _ = terminate.recv() => StopSignal::Terminate,
                }
            }
            Source::Channel(requests) => match requests.recv().await {
                Some(signal) => signal,
                None => std::future::pending().await,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_exits_as_a_shell_reports_the_signal() {
        assert_eq!(StopSignal::Interrupt.exit_code(), 130);
        assert_eq!(StopSignal::Terminate.exit_code(), 143);
        assert_eq!(StopSignal::Terminate.name(), "SIGTERM");
    }

    #[tokio::test]
    async fn requests_on_a_channel_arrive_in_order_and_a_closed_channel_never_stops() {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut signals = StopSignals::from_channel(rx);
        tx.send(StopSignal::Terminate).unwrap();
        tx.send(StopSignal::Interrupt).unwrap();
        assert_eq!(signals.next().await, StopSignal::Terminate);
        assert_eq!(signals.next().await, StopSignal::Interrupt);
        drop(tx);
        let waited =
            tokio::time::timeout(std::time::Duration::from_millis(50), signals.next()).await;
        assert!(waited.is_err(), "a closed channel asked to stop");
    }
}
