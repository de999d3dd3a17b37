//! The sensor's wire format.
//!
//! One [`Event`] per line of NDJSON. The sensor writes it, the engine reads it, and recordings
//! under `scenarios/` are made of it, so every change here is a format change: bump
//! [`FORMAT_VERSION`] when a field changes meaning or disappears (adding an optional field does
//! not need a bump; readers ignore nothing and reject unknown versions).
//!
//! Times are nanoseconds since the Unix epoch (the sensor reads the kernel's boot-time clock,
//! CLOCK_BOOTTIME, and converts it with an offset measured once at start). Host pids are the
//! pids seen from the host's pid namespace; `ns_pid` is the pid seen inside the container.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Write};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

pub mod control;
mod read;

pub use read::{
    MARKER_KEYS, ReadError, ReadLimits, is_marker, json_message, parse_line, read_ndjson,
    read_ndjson_with,
};

/// The version written in every event's `v` field.
pub const FORMAT_VERSION: u32 = 1;

/// A process's identity that survives pid reuse: the host pid and the process's start time
/// (nanoseconds since boot, CLOCK_BOOTTIME, as the kernel records it in
/// `task_struct::start_boottime`; the clock of `starttime` in `/proc/PID/stat`).
///
/// On the wire it is a two-element array `[pid, start_ns]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ProcessKey(pub u32, pub u64);

impl ProcessKey {
    pub fn pid(self) -> u32 {
        self.0
    }
}

impl fmt::Display for ProcessKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.0, self.1)
    }
}

/// One line of the event stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
// No `deny_unknown_fields` here: serde does not support it next to `flatten`; every body
// struct denies unknown fields itself, which covers the whole line.
pub struct Event {
    /// Format version, always [`FORMAT_VERSION`] when written by this crate.
    pub v: u32,
    /// When it happened, in nanoseconds since the Unix epoch.
    pub ts: u64,
    #[serde(flatten)]
    pub body: EventBody,
}

impl Event {
    pub fn new(ts: u64, body: EventBody) -> Self {
        Event {
            v: FORMAT_VERSION,
            ts,
            body,
        }
    }

    /// The container the event belongs to, by its cgroup id, when it has one.
    pub fn cgroup_id(&self) -> Option<u64> {
        match &self.body {
            EventBody::Container(c) => Some(c.cgroup_id),
            EventBody::Exec(e) => Some(e.cgroup_id),
            EventBody::Fork(e) => Some(e.cgroup_id),
            EventBody::Exit(e) => Some(e.cgroup_id),
            EventBody::Connect(c) | EventBody::Accept(c) => Some(c.cgroup_id),
            EventBody::Listen(l) => Some(l.cgroup_id),
            EventBody::Dns(d) => Some(d.cgroup_id),
            EventBody::Lost(_) => None,
        }
    }
}

/// What happened. Serialized with a `type` tag: `{"v":1,"ts":...,"type":"exec",...}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventBody {
    /// A container (a cgroup) the sensor watches, and who it is. Sent when the sensor starts
    /// watching it, before any other event of that cgroup.
    Container(ContainerInfo),
    /// A process replaced its image (`execve`).
    Exec(ProcessExec),
    /// A process was created without exec yet (kept because ancestry passes through it:
    /// a shell forks, then the child execs).
    Fork(ProcessFork),
    /// A process ended.
    Exit(ProcessExit),
    /// An outbound connection or datagram (`connect`, or `sendmsg` for UDP).
    Connect(Connection),
    /// An inbound connection accepted on a listening socket.
    Accept(Connection),
    /// A socket started listening.
    Listen(Listen),
    /// A DNS answer the container received: `name` resolves to `addresses`.
    Dns(DnsAnswer),
    /// The sensor lost events (ring buffer full); never silent.
    Lost(Lost),
}

/// Who a container is. Fields the backend does not know are empty.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerInfo {
    pub cgroup_id: u64,
    pub container_id: String,
    pub container_name: String,
    /// Image reference as deployed, e.g. `jupyter/minimal-notebook:latest`.
    pub image: String,
    /// Image digest, e.g. `sha256:...`.
    #[serde(default)]
    pub image_id: String,
    /// Kubernetes namespace.
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub namespace_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub pod_name: String,
    #[serde(default)]
    pub pod_labels: BTreeMap<String, String>,
    /// The host (node) the container runs on.
    #[serde(default)]
    pub machine: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessExec {
    pub key: ProcessKey,
    pub cgroup_id: u64,
    /// Host pid (same as `key.0`).
    pub pid: u32,
    /// Pid inside the container's pid namespace.
    pub ns_pid: u32,
    /// The parent process, when the sensor knows it.
    #[serde(default)]
    pub parent: Option<ProcessKey>,
    /// Absolute path of the executable, as the kernel resolved it (symlinks resolved, in the
    /// process's own root). See `exe_status` for when it is not that.
    pub exe: String,
    /// The kernel's `comm` after exec (at most 15 bytes).
    #[serde(default)]
    pub comm: String,
    pub argv: Vec<String>,
    /// True when argv was longer than the sensor copies (1 KiB in all, NULs included): `argv`
    /// then holds the arguments that fit, and the last of them may be cut short.
    #[serde(default)]
    pub argv_truncated: bool,
    pub uid: u32,
    pub euid: u32,
    #[serde(default)]
    pub gid: u32,
    /// User name for `uid`, when user space could resolve it (inside the container's view).
    #[serde(default)]
    pub user: Option<String>,
    /// User name for `euid`.
    #[serde(default)]
    pub euser: Option<String>,
    /// How far `exe` is the executable's real absolute path. Absent on the wire when it is
    /// ([`ExeStatus::Resolved`]).
    #[serde(default, skip_serializing_if = "ExeStatus::is_resolved")]
    pub exe_status: ExeStatus,
    /// The exec allow-list killed the process at this exec (SIGKILL before the new image ran
    /// an instruction). Absent on the wire when false.
    #[serde(default, skip_serializing_if = "is_false")]
    pub killed: bool,
}

/// How [`ProcessExec::exe`] was obtained. Anything but `Resolved` means it is not a path an
/// allow-list can vouch for: under exec enforcement such an exec is always killed.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum ExeStatus {
    /// The absolute path from the process's root, symlinks resolved.
    #[default]
    Resolved,
    /// The path was longer than 255 bytes or deeper than 32 components (or the kernel's walk
    /// did not finish): `exe` is incomplete (cut at the end, or missing its top directories).
    Truncated,
    /// The executable is not reachable from the process's root: a memfd (`memfd_create`,
    /// then exec of `/proc/self/fd/N`) or a file outside its chroot. `exe` is the file's name
    /// alone, e.g. `memfd:minerd`.
    Fileless,
    /// The sensor could not walk the path: `exe` is the name given to execve, possibly
    /// relative or a symlink.
    Unresolved,
}

impl ExeStatus {
    pub fn is_resolved(&self) -> bool {
        *self == ExeStatus::Resolved
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessFork {
    pub key: ProcessKey,
    pub cgroup_id: u64,
    pub pid: u32,
    pub ns_pid: u32,
    pub parent: ProcessKey,
    /// The child keeps its parent's image until it execs.
    #[serde(default)]
    pub comm: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessExit {
    pub key: ProcessKey,
    pub cgroup_id: u64,
    pub pid: u32,
    /// Exit status when it exited normally.
    #[serde(default)]
    pub code: Option<i32>,
    /// The signal that killed it, when one did.
    #[serde(default)]
    pub signal: Option<i32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        })
    }
}

/// A connection seen from the container's side: `local` is the container's end.
/// For [`EventBody::Connect`] the remote is the destination; for [`EventBody::Accept`] it is
/// the peer that connected in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Connection {
    /// The process that owns the socket.
    pub process: ProcessKey,
    pub cgroup_id: u64,
    pub protocol: Protocol,
    #[serde(default)]
    pub local_ip: Option<IpAddr>,
    #[serde(default)]
    pub local_port: Option<u16>,
    pub remote_ip: IpAddr,
    pub remote_port: u16,
    /// The kernel refused it (enforcement): the program saw EPERM.
    #[serde(default)]
    pub refused: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    pub process: ProcessKey,
    pub cgroup_id: u64,
    pub protocol: Protocol,
    pub ip: IpAddr,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsAnswer {
    pub cgroup_id: u64,
    /// The name asked for, lower case, without the trailing dot.
    pub name: String,
    /// Every A/AAAA address in the answer (after following CNAMEs).
    pub addresses: Vec<IpAddr>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lost {
    /// How many events were dropped since the last `lost` event.
    pub count: u64,
    /// Which CPU's counter it came from, when known.
    #[serde(default)]
    pub cpu: Option<u32>,
}

/// Write one event as one NDJSON line.
pub fn write_ndjson(mut writer: impl Write, event: &Event) -> io::Result<()> {
    serde_json::to_writer(&mut writer, event)?;
    writer.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::read::tests::exec;

    #[test]
    fn round_trips_through_ndjson() {
        let mut out = Vec::new();
        write_ndjson(&mut out, &exec()).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with(
                r#"{"v":1,"ts":1700000000000000000,"type":"exec","key":[4242,123456]"#
            ),
            "{text}"
        );
        let back = read_ndjson(text.as_bytes()).unwrap();
        assert_eq!(back, vec![exec()]);
    }

    #[test]
    fn exec_flags_are_optional_on_the_wire() {
        // Written without them when they are at their defaults: older readers and committed
        // recordings see the same lines as before.
        let mut out = Vec::new();
        write_ndjson(&mut out, &exec()).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            !text.contains("exe_status") && !text.contains("killed"),
            "{text}"
        );
        // Written and read back when set.
        let mut event = exec();
        let EventBody::Exec(x) = &mut event.body else {
            unreachable!()
        };
        x.exe = "memfd:minerd".into();
        x.exe_status = ExeStatus::Fileless;
        x.killed = true;
        let mut out = Vec::new();
        write_ndjson(&mut out, &event).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains(r#""exe_status":"fileless","killed":true"#),
            "{text}"
        );
        assert_eq!(read_ndjson(text.as_bytes()).unwrap(), vec![event]);
        let bad = text.replace("fileless", "maybe");
        assert!(
            read_ndjson(bad.as_bytes())
                .unwrap_err()
                .to_string()
                .contains("maybe")
        );
    }
}
