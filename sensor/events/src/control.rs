//! The sensor's control protocol (`guardlab-sensor --serve ADDR`), shared by the sensor and the
//! harness so that both sides use one definition.
//!
//! Both directions are NDJSON. A client's first line is a [`SensorRequest`]:
//!
//! - `{"op":"subscribe","containers":[...]}`: the sensor finds each [`WatchedContainer`]'s
//!   cgroup (a directory under its `--cgroup-root` named after the container id), sends a
//!   `container` event for it with the given identity, then streams the events of those
//!   containers. A later `subscribe` line on the same connection replaces the set.
//! - `{"op":"kill","pid":N,"tree":false}`: SIGKILL to process `N` (`tree`: and its
//!   descendants). `N` is a pid as the events report it (the kernel's init-namespace pid); it
//!   must belong to a watched container. The sensor answers one [`SensorReply`] line.
//! - `{"op":"kill_group","pid":N}`: SIGKILL to every process of `N`'s process group that is in
//!   a watched container's cgroup (what `agentKillProcessGroup` asks for). `N` is an event pid,
//!   as for `kill`; members outside the watched containers' cgroups are never signalled, and a
//!   group whose leader the sensor cannot see (its id is 0 in the sensor's /proc) is refused.
//!   One [`SensorReply`] line.
//!
//! A `kill` or `kill_group` is the first and only request of its own connection (a reply
//! would otherwise interleave with the event stream).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A request line from a client to the sensor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum SensorRequest {
    /// Watch these containers (replacing any earlier set) and stream their events.
    Subscribe { containers: Vec<WatchedContainer> },
    /// Kill a process (and its descendants when `tree`).
    Kill { pid: u32, tree: bool },
    /// Kill the process group of a process (its members in watched containers).
    KillGroup { pid: u32 },
}

/// A container to watch, and who it is (the sensor copies this into its `container` event).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchedContainer {
    /// The runtime's id, without the `containerd://` prefix.
    pub container_id: String,
    pub container_name: String,
    pub image: String,
    pub image_id: String,
    pub namespace: String,
    pub namespace_labels: BTreeMap<String, String>,
    pub pod_name: String,
    pub pod_uid: String,
    pub pod_labels: BTreeMap<String, String>,
}

/// The sensor's answer to a `kill` or `kill_group`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SensorReply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl SensorReply {
    pub fn ok() -> Self {
        SensorReply {
            ok: true,
            error: None,
        }
    }

    pub fn error(message: impl Into<String>) -> Self {
        SensorReply {
            ok: false,
            error: Some(message.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_have_the_documented_wire_form() {
        let kill = serde_json::to_string(&SensorRequest::Kill {
            pid: 42,
            tree: false,
        })
        .unwrap();
        assert_eq!(kill, r#"{"op":"kill","pid":42,"tree":false}"#);
        assert!(serde_json::from_str::<SensorRequest>(r#"{"op":"kill","pid":1}"#).is_err());
        assert!(serde_json::from_str::<SensorRequest>(r#"{"op":"reboot"}"#).is_err());
        let group = serde_json::to_string(&SensorRequest::KillGroup { pid: 42 }).unwrap();
        assert_eq!(group, r#"{"op":"kill_group","pid":42}"#);
        assert_eq!(
            serde_json::from_str::<SensorRequest>(r#"{"op":"kill_group","pid":7}"#).unwrap(),
            SensorRequest::KillGroup { pid: 7 }
        );
        for bad in [
            r#"{"op":"kill_group"}"#,
            r#"{"op":"kill_group","pid":7,"tree":true}"#,
            r#"{"op":"killGroup","pid":7}"#,
        ] {
            assert!(serde_json::from_str::<SensorRequest>(bad).is_err(), "{bad}");
        }
        let sub: SensorRequest =
            serde_json::from_str(r#"{"op":"subscribe","containers":[]}"#).unwrap();
        assert_eq!(sub, SensorRequest::Subscribe { containers: vec![] });
        assert_eq!(
            serde_json::to_string(&SensorReply::ok()).unwrap(),
            r#"{"ok":true}"#
        );
        assert_eq!(
            serde_json::to_string(&SensorReply::error("no")).unwrap(),
            r#"{"ok":false,"error":"no"}"#
        );
    }
}
