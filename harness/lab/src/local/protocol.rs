//! What the lab daemon and its clients say to each other, one JSON object per line.
//!
//! - On the daemon's stdout, while it starts: [`StartMessage`]s, read by `lab up` (which shows
//!   them as progress); after `up` returned nobody reads them any more and the daemon goes on.
//! - On the control socket (`<lab dir>/control.sock`): a client sends one [`Request`] and reads
//!   one [`Reply`]; after a successful `events` request the daemon streams events (the sensor's
//!   wire format, `guardlab_events`) on the same connection until the client closes it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::state::OwnerRecord;
use crate::{Enforcement, LabAction, LabError, LabInfo};

/// A line the daemon prints on stdout while it starts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StartMessage {
    Phase { text: String },
    Detail { text: String },
    Ready { info: LabInfo },
    Failed { error: String },
}

/// A failure the lab daemon reported on its stdout while it started ([`StartMessage::Failed`]),
/// in its words: the daemon's own typed error does not cross the process boundary, its text
/// does. `lab up` names the phase the daemon was in.
#[derive(Debug, thiserror::Error)]
#[error("{said}")]
pub struct ReportedFailure {
    pub said: String,
}

/// A client's request on the control socket.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// What runs now.
    Status,
    /// Stream the sensor's events: with `replay`, first every event kept since the lab
    /// started (always including each pod's `container` event), then live ones.
    Events {
        #[serde(default)]
        replay: bool,
    },
    /// Carry out a response action.
    CarryOut { action: LabAction },
    /// Who reached the lab's services so far (web requests, DNS queries, pool clients).
    Visitors,
    /// Enforce a policy in the kernel for one pod (by name).
    Enforce {
        pod: String,
        enforcement: Enforcement,
    },
}

impl Request {
    /// The request's name on the wire (its `op`), for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::Events { .. } => "events",
            Request::CarryOut { .. } => "carry_out",
            Request::Visitors => "visitors",
            Request::Enforce { .. } => "enforce",
        }
    }
}

/// How an action is named in messages, on both ends of the socket: `killing process 4242`.
pub fn action_text(action: &LabAction) -> String {
    match action {
        LabAction::KillProcess { pid } => format!("killing process {pid}"),
        LabAction::KillProcessTree { pid } => format!("killing the process tree of {pid}"),
        LabAction::KillProcessGroup { pid } => format!("killing the process group of {pid}"),
        LabAction::KillPod { namespace, name } => format!("killing pod {namespace}/{name}"),
    }
}

/// What went wrong between a client and the lab daemon once connected (part "the lab daemon"
/// of a [`LabError`]).
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The daemon closed the connection before it answered.
    #[error("it closed the connection before answering")]
    Closed,
    /// The daemon's answer is not a [`Reply`].
    #[error("its answer {answer:?} is not a reply: {error}")]
    BadAnswer {
        answer: String,
        error: serde_json::Error,
    },
    /// A request could not be written.
    #[error("the `{request}` request could not be encoded: {error}")]
    Encode {
        request: &'static str,
        error: serde_json::Error,
    },
    /// The daemon refused the request; `reason` is what it answered.
    #[error("it refused `{request}`: {reason}")]
    Refused {
        request: &'static str,
        reason: String,
    },
}

impl From<ControlError> for LabError {
    fn from(error: ControlError) -> LabError {
        LabError::backend("the lab daemon", error)
    }
}

/// The daemon's answer to one request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DaemonStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visitors: Option<Visitors>,
}

impl Reply {
    pub fn ok() -> Reply {
        Reply {
            ok: true,
            error: None,
            status: None,
            visitors: None,
        }
    }
    pub fn error(message: impl Into<String>) -> Reply {
        Reply {
            ok: false,
            error: Some(message.into()),
            status: None,
            visitors: None,
        }
    }
}

/// What the daemon reports about itself and the lab.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DaemonStatus {
    /// `starting`, `ready`, or `failed: ...`.
    pub phase: String,
    pub info: LabInfo,
    pub daemon_pid: u32,
    /// Where the lab's services listen (inside the lab), e.g. `dns 198.18.1.53:53/udp`.
    pub services: Vec<String>,
    /// When the pod's first process ended by itself: how.
    pub pod_exit: Option<String>,
    /// The container's log file (stdout and stderr of the pod).
    pub pod_log: Option<PathBuf>,
    /// Whether the sensor runs.
    pub sensor: bool,
    /// The run the lab belongs to (it goes when that run ends); `None`: it stays until
    /// `lab down`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<OwnerRecord>,
    /// What the lab lost or could not do so far.
    #[serde(default)]
    pub counters: LabCounters,
}

/// What the lab lost or could not do since it started: the sensor's counters and the daemon's
/// own. `lab status` shows them, the daemon logs them when they change, and a scenario run
/// puts them in its report (a run that lost events is not a pass).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabCounters {
    /// Events the sensor handed to the daemon.
    pub sensor_delivered: u64,
    /// Events the kernel could not put in the sensor's ring buffer (it was full): lost. Each
    /// drop also reaches the event stream as a `lost` event.
    pub sensor_dropped: u64,
    /// Records of the kernel side the sensor could not read (it and its loader disagree): lost.
    pub sensor_unreadable: u64,
    /// Execs enforcement meant to kill where the kill failed: those programs ran (their exec
    /// events say `killed: false`).
    pub kill_failures: u64,
    /// DNS answers longer than the kernel copies: reported with the addresses that fit.
    pub dns_truncated: u64,
    /// DNS messages from port 53 that could not be parsed: not reported.
    pub dns_unreadable: u64,
    /// Events a client of the daemon took too slowly and that were dropped for it (said to that
    /// client as `lost` events).
    pub client_lagged: u64,
    /// Events the daemon's replay history no longer holds (a client subscribing with replay
    /// gets a `lost` event for them).
    pub history_dropped: u64,
}

impl LabCounters {
    /// Events lost on their way from the kernel to the daemon (not counting slow clients or
    /// the replay history, which each client learns about as `lost` events).
    pub fn sensor_lost(&self) -> u64 {
        self.sensor_dropped + self.sensor_unreadable
    }

    /// One line for a person: `1520 events, none lost; 0 failed kills; DNS: 0 cut short, 0
    /// unreadable`.
    pub fn describe(&self) -> String {
        let lost = match self.sensor_lost() {
            0 => "none lost".to_string(),
            n => format!(
                "{n} LOST ({} with the ring buffer full, {} unreadable)",
                self.sensor_dropped, self.sensor_unreadable
            ),
        };
        let mut text = format!(
            "{} events, {lost}; {} failed kills; DNS answers: {} cut short, {} unreadable",
            self.sensor_delivered, self.kill_failures, self.dns_truncated, self.dns_unreadable
        );
        if self.client_lagged > 0 {
            text.push_str(&format!(
                "; {} events dropped for slow clients",
                self.client_lagged
            ));
        }
        if self.history_dropped > 0 {
            text.push_str(&format!(
                "; {} events no longer in the replay history",
                self.history_dropped
            ));
        }
        text
    }
}

/// Who reached the lab's services, for the scenario's checks.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Visitors {
    /// `<scheme> <host><path> <status> from <peer>` for every web request.
    pub web: Vec<String>,
    /// `<name> <type> -> <answers>` for every DNS query.
    pub dns: Vec<String>,
    /// The pool's clients as JSON (the pool's own record).
    pub pool: Vec<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_tagged_lines() {
        let text = serde_json::to_string(&Request::CarryOut {
            action: LabAction::KillProcess { pid: 7 },
        })
        .unwrap();
        assert_eq!(
            text,
            r#"{"op":"carry_out","action":{"KillProcess":{"pid":7}}}"#
        );
        let group = serde_json::to_string(&Request::CarryOut {
            action: LabAction::KillProcessGroup { pid: 8 },
        })
        .unwrap();
        assert_eq!(
            group,
            r#"{"op":"carry_out","action":{"KillProcessGroup":{"pid":8}}}"#
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"op":"events"}"#).unwrap(),
            Request::Events { replay: false }
        );
        let reply = serde_json::to_string(&Reply::error("no")).unwrap();
        assert_eq!(reply, r#"{"ok":false,"error":"no"}"#);
    }

    #[test]
    fn counters_say_what_was_lost() {
        let clean = LabCounters {
            sensor_delivered: 1520,
            ..Default::default()
        };
        assert_eq!(clean.sensor_lost(), 0);
        assert_eq!(
            clean.describe(),
            "1520 events, none lost; 0 failed kills; DNS answers: 0 cut short, 0 unreadable"
        );
        let lossy = LabCounters {
            sensor_delivered: 10,
            sensor_dropped: 7,
            sensor_unreadable: 1,
            kill_failures: 2,
            client_lagged: 3,
            ..Default::default()
        };
        assert_eq!(lossy.sensor_lost(), 8);
        assert_eq!(
            lossy.describe(),
            "10 events, 8 LOST (7 with the ring buffer full, 1 unreadable); 2 failed kills; \
             DNS answers: 0 cut short, 0 unreadable; 3 events dropped for slow clients"
        );
        // A status from a daemon that did not count yet reads as zeros.
        let status: DaemonStatus = serde_json::from_str(
            r#"{"phase":"ready","info":{"backend":"local","notebook_url":"","pods":[]},
                "daemon_pid":1,"services":[],"pod_exit":null,"pod_log":null,"sensor":true}"#,
        )
        .unwrap();
        assert_eq!(status.counters, LabCounters::default());
        assert_eq!(status.owner, None);
    }
}
