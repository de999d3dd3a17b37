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
use std::io::{self, BufRead, Write};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

pub mod control;

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

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// A line that is not an event. `field` names the value at fault when the line is JSON
    /// but a value in it is wrong, missing or unknown, as `<type>.<field>` for the fields of
    /// an event's body (`exec.pid`, `exec.argv[1]`, `container.pod_labels.app`; `exec` alone
    /// for a field missing from it) and by its plain name for `v`, `ts` and `type`; it is
    /// `None` when the line is not JSON, and `source.column()` then says where it breaks.
    #[error("line {line}: {}", json_detail(field.as_deref(), source))]
    Json {
        line: usize,
        field: Option<String>,
        #[source]
        source: serde_json::Error,
    },
    #[error("line {line}: event format version {found}, this build reads version {FORMAT_VERSION}")]
    Version { line: usize, found: u32 },
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl ReadError {
    /// The 1-based line the error is on, when it is about a line.
    pub fn line(&self) -> Option<usize> {
        match self {
            ReadError::Json { line, .. } | ReadError::Version { line, .. } => Some(*line),
            ReadError::Io(_) => None,
        }
    }

    /// The field a bad value is in (see [`ReadError::Json`]).
    pub fn field(&self) -> Option<&str> {
        match self {
            ReadError::Json { field, .. } => field.as_deref(),
            _ => None,
        }
    }
}

/// What serde_json says, without its "at line 1 column 40": each line is a document of its
/// own, so its line number is always 1, and its column, for a value in the event's body, is
/// the end of the line (the body is read after the whole object).
pub fn json_message(error: &serde_json::Error) -> String {
    let message = error.to_string();
    match message.rfind(" at line ") {
        Some(at) if error.line() > 0 => message[..at].to_string(),
        _ => message,
    }
}

fn json_detail(field: Option<&str>, error: &serde_json::Error) -> String {
    match field {
        Some(field) => format!("{field}: {}", json_message(error)),
        None => format!("column {}: {}", error.column(), json_message(error)),
    }
}

/// Parse one NDJSON line (1-based `line` for the error). A bad value is named by its field
/// (`line 12: exec.pid: invalid type: ...`, see [`ReadError::Json`]).
pub fn parse_line(text: &str, line: usize) -> Result<Event, ReadError> {
    let event: Event = serde_json::from_str(text).map_err(|source| bad_line(text, line, source))?;
    if event.v != FORMAT_VERSION {
        return Err(ReadError::Version {
            line,
            found: event.v,
        });
    }
    Ok(event)
}

/// The error for a line serde_json rejected, with the field at fault when it is JSON. Only on
/// the error path: the line is read a second time, as a tree, to find the field (serde
/// forgets the path inside the flattened, tagged body).
fn bad_line(text: &str, line: usize, source: serde_json::Error) -> ReadError {
    if !source.is_data() {
        return ReadError::Json {
            line,
            field: None,
            source,
        };
    }
    let Ok(serde_json::Value::Object(object)) = serde_json::from_str(text) else {
        return ReadError::Json {
            line,
            field: None,
            source,
        };
    };
    // A line of another format version may have other fields: say that rather than which.
    if let Some(found) = object.get("v").and_then(serde_json::Value::as_u64)
        && found != u64::from(FORMAT_VERSION)
    {
        return ReadError::Version {
            line,
            found: u32::try_from(found).unwrap_or(u32::MAX),
        };
    }
    let (field, source) = match locate(object) {
        Some((field, error)) => (Some(field), error),
        None => (None, source),
    };
    ReadError::Json {
        line,
        field,
        source,
    }
}

/// The field of `object` (one event line) that does not deserialize, and serde's error for it.
fn locate(
    mut object: serde_json::Map<String, serde_json::Value>,
) -> Option<(String, serde_json::Error)> {
    // The envelope first: `v` and `ts` are fields of every event.
    let envelope = |name: &'static str,
                    check: fn(&serde_json::Value) -> Option<serde_json::Error>| {
        match object.get(name) {
            None => Some(serde::de::Error::missing_field(name)),
            Some(value) => check(value),
        }
        .map(|error| (name.to_string(), error))
    };
    if let Some(bad) =
        envelope("v", value_error::<u32>).or_else(|| envelope("ts", value_error::<u64>))
    {
        return Some(bad);
    }
    let kind = object.remove("type");
    let body: serde_json::Map<String, serde_json::Value> = object
        .into_iter()
        .filter(|(k, _)| !matches!(k.as_str(), "v" | "ts"))
        .collect();
    let kind = match kind {
        None => return Some(("type".into(), serde::de::Error::missing_field("type"))),
        Some(serde_json::Value::String(kind)) => kind,
        Some(other) => {
            let error = serde_json::from_value::<String>(other).err()?;
            return Some(("type".into(), error));
        }
    };
    let located = match kind.as_str() {
        "container" => field_error::<ContainerInfo>(body),
        "exec" => field_error::<ProcessExec>(body),
        "fork" => field_error::<ProcessFork>(body),
        "exit" => field_error::<ProcessExit>(body),
        "connect" | "accept" => field_error::<Connection>(body),
        "listen" => field_error::<Listen>(body),
        "dns" => field_error::<DnsAnswer>(body),
        "lost" => field_error::<Lost>(body),
        _ => {
            // The tag names no event: serde's own message lists the ones there are.
            let error =
                serde_json::from_value::<EventBody>(serde_json::json!({ "type": kind })).err()?;
            return Some(("type".into(), error));
        }
    };
    located.map(|(path, error)| {
        let field = if path == "." {
            kind
        } else {
            format!("{kind}.{path}")
        };
        (field, error)
    })
}

fn value_error<T: serde::de::DeserializeOwned>(
    value: &serde_json::Value,
) -> Option<serde_json::Error> {
    T::deserialize(value).err()
}

/// Deserialize `T` from a JSON object; the path of the first bad value (`.` for the object
/// itself: a missing field) and serde's error for it, if there is one.
fn field_error<T: serde::de::DeserializeOwned>(
    object: serde_json::Map<String, serde_json::Value>,
) -> Option<(String, serde_json::Error)> {
    serde_path_to_error::deserialize::<_, T>(serde_json::Value::Object(object))
        .err()
        .map(|e| (e.path().to_string(), e.into_inner()))
}

/// Read a whole NDJSON stream; blank lines are skipped.
pub fn read_ndjson(reader: impl BufRead) -> Result<Vec<Event>, ReadError> {
    let mut events = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line_text = line?;
        if line_text.trim().is_empty() {
            continue;
        }
        events.push(parse_line(&line_text, i + 1)?);
    }
    Ok(events)
}

/// Write one event as one NDJSON line.
pub fn write_ndjson(mut writer: impl Write, event: &Event) -> io::Result<()> {
    serde_json::to_writer(&mut writer, event)?;
    writer.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec() -> Event {
        Event::new(
            1_700_000_000_000_000_000,
            EventBody::Exec(ProcessExec {
                key: ProcessKey(4242, 123_456),
                cgroup_id: 77,
                pid: 4242,
                ns_pid: 7,
                parent: Some(ProcessKey(4200, 100)),
                exe: "/usr/bin/id".into(),
                comm: "id".into(),
                argv: vec!["id".into()],
                argv_truncated: false,
                uid: 1000,
                euid: 1000,
                gid: 100,
                user: Some("jovyan".into()),
                euser: Some("jovyan".into()),
                exe_status: ExeStatus::Resolved,
                killed: false,
            }),
        )
    }

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

    #[test]
    fn rejects_other_versions_with_the_line() {
        let text = "\n{\"v\":9,\"ts\":1,\"type\":\"lost\",\"count\":3}\n";
        let err = read_ndjson(text.as_bytes()).unwrap_err();
        assert_eq!(err.line(), Some(2));
        assert!(err.to_string().contains("version 9"), "{err}");
    }

    /// One event of every kind.
    fn one_of_each() -> Vec<Event> {
        let key = ProcessKey(7, 70);
        let conn = Connection {
            process: key,
            cgroup_id: 77,
            protocol: Protocol::Tcp,
            local_ip: None,
            local_port: None,
            remote_ip: "198.18.0.9".parse().unwrap(),
            remote_port: 443,
            refused: false,
        };
        let bodies = [
            EventBody::Container(ContainerInfo::default()),
            exec().body,
            EventBody::Fork(ProcessFork {
                key,
                cgroup_id: 77,
                pid: 7,
                ns_pid: 1,
                parent: ProcessKey(1, 1),
                comm: "sh".into(),
            }),
            EventBody::Exit(ProcessExit {
                key,
                cgroup_id: 77,
                pid: 7,
                code: Some(0),
                signal: None,
            }),
            EventBody::Connect(conn.clone()),
            EventBody::Accept(conn),
            EventBody::Listen(Listen {
                process: key,
                cgroup_id: 77,
                protocol: Protocol::Udp,
                ip: "0.0.0.0".parse().unwrap(),
                port: 53,
            }),
            EventBody::Dns(DnsAnswer {
                cgroup_id: 77,
                name: "example.com".into(),
                addresses: vec!["198.18.0.9".parse().unwrap()],
            }),
            EventBody::Lost(Lost {
                count: 1,
                cpu: None,
            }),
        ];
        // Every kind once: a new kind fails to compile here until it is added above.
        let mut seen = [false; 9];
        for body in &bodies {
            seen[match body {
                EventBody::Container(_) => 0,
                EventBody::Exec(_) => 1,
                EventBody::Fork(_) => 2,
                EventBody::Exit(_) => 3,
                EventBody::Connect(_) => 4,
                EventBody::Accept(_) => 5,
                EventBody::Listen(_) => 6,
                EventBody::Dns(_) => 7,
                EventBody::Lost(_) => 8,
            }] = true;
        }
        assert!(seen.iter().all(|s| *s), "{seen:?}");
        bodies.into_iter().map(|b| Event::new(1, b)).collect()
    }

    fn line_of(event: &Event) -> String {
        let mut out = Vec::new();
        write_ndjson(&mut out, event).unwrap();
        String::from_utf8(out).unwrap().trim_end().to_string()
    }

    #[test]
    fn an_unknown_field_is_named_for_every_kind_of_event() {
        for event in one_of_each() {
            let text = line_of(&event);
            let kind = serde_json::from_str::<serde_json::Value>(&text).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_string();
            let bad = format!("{},\"zz_bogus\":1}}", &text[..text.len() - 1]);
            let err = parse_line(&bad, 4).unwrap_err();
            assert_eq!(
                err.field(),
                Some(format!("{kind}.zz_bogus").as_str()),
                "{err}"
            );
            assert!(
                err.to_string().starts_with(&format!(
                    "line 4: {kind}.zz_bogus: unknown field `zz_bogus`"
                )),
                "{err}"
            );
        }
    }

    #[test]
    fn a_bad_value_names_its_field() {
        let good = line_of(&exec());
        let cases: &[(String, &str, &str)] = &[
            (
                good.replace(r#""pid":4242"#, r#""pid":"x""#),
                "exec.pid",
                r#"invalid type: string "x", expected u32"#,
            ),
            (
                good.replace(r#""argv":["id"]"#, r#""argv":["id",3]"#),
                "exec.argv[1]",
                "invalid type: integer `3`, expected a string",
            ),
            (
                good.replace("[4242,123456]", r#"[4242,"soon"]"#),
                "exec.key[1]",
                "expected u64",
            ),
            (
                good.replace(r#","euid":1000"#, ""),
                "exec",
                "missing field `euid`",
            ),
            (
                good.replace(r#""ts":1700000000000000000"#, r#""ts":-1"#),
                "ts",
                "invalid value: integer `-1`, expected u64",
            ),
            (
                good.replace(r#""ts":1700000000000000000,"#, ""),
                "ts",
                "missing field `ts`",
            ),
            (
                good.replace(r#""type":"exec""#, r#""type":"spawn""#),
                "type",
                "unknown variant `spawn`",
            ),
            (
                good.replace(r#""type":"exec""#, r#""type":3"#),
                "type",
                "invalid type: integer `3`, expected a string",
            ),
            (
                good.replace(r#""type":"exec","#, ""),
                "type",
                "missing field `type`",
            ),
            (
                r#"{"v":1,"ts":1,"type":"container","cgroup_id":1,"container_id":"c","container_name":"n","image":"i","pod_labels":{"app":3}}"#.to_string(),
                "container.pod_labels.app",
                "expected a string",
            ),
            (
                r#"{"v":1,"ts":1,"type":"dns","cgroup_id":1,"name":"a.example","addresses":["198.18.0.1","198.18.0.x"]}"#.to_string(),
                "dns.addresses[1]",
                "invalid IP address syntax",
            ),
        ];
        for (text, field, message) in cases {
            assert_ne!(text, &good, "the case for {field} changes the line");
            let err = parse_line(text, 12).unwrap_err();
            assert_eq!(err.field(), Some(*field), "{err}\n{text}");
            assert_eq!(err.line(), Some(12));
            let shown = err.to_string();
            assert!(
                shown.starts_with(&format!("line 12: {field}: ")) && shown.contains(message),
                "{shown}"
            );
            // Only the stream's line: serde's "line 1" of a one-line document says nothing.
            assert!(!shown.contains("line 1 "), "{shown}");
        }
    }

    #[test]
    fn broken_json_says_where_and_names_no_field() {
        let err = parse_line("{not json}", 3).unwrap_err();
        assert_eq!(err.field(), None);
        assert_eq!(
            err.to_string(),
            "line 3: column 2: key must be a string",
            "{err}"
        );
        let ReadError::Json { source, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(json_message(source), "key must be a string");
    }

    #[test]
    fn a_line_of_another_version_is_that_rather_than_a_bad_field() {
        let text = r#"{"v":2,"ts":1,"type":"exec","pid":"renamed"}"#;
        let err = parse_line(text, 5).unwrap_err();
        assert!(
            matches!(err, ReadError::Version { line: 5, found: 2 }),
            "{err:?}"
        );
    }

    #[test]
    fn rejects_unknown_fields() {
        let text = r#"{"v":1,"ts":1,"type":"lost","count":3,"bogus":true}"#;
        let err = parse_line(text, 1).unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }
}
