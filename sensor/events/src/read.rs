//! Reading the wire format: a line into an [`Event`], a stream into events, within bounds.
//!
//! A stream may come from anywhere (a recording sent with a bug report), so reading it holds
//! at most [`ReadLimits::max_line_bytes`] of one line and [`ReadLimits::max_bytes`] in all,
//! and names the line of anything that is not an event.
//!
//! A `guardlab scenario --record` recording is this format with marker lines between the
//! events (`{"recording":{...}}` first, then `{"step":{...}}` around each step's events; see
//! the recording module of the `guardlab` crate): [`read_ndjson`] skips them, so every
//! reader of event streams reads recordings too.

use std::io::{self, BufRead, Read};

use crate::{
    Connection, ContainerInfo, DnsAnswer, Event, EventBody, FORMAT_VERSION, Listen, Lost,
    ProcessExec, ProcessExit, ProcessFork,
};

/// The keys of a recording's marker lines: a line that is a JSON object with one of these as
/// its only key is a marker, not an event.
pub const MARKER_KEYS: [&str; 2] = ["recording", "step"];

/// How much of a stream is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadLimits {
    /// The whole stream, in bytes.
    pub max_bytes: u64,
    /// One line, in bytes (its newline not counted). The longest events are a container's
    /// (its labels) and an exec's (1 KiB of argv); a line of 1 MiB is none of them.
    pub max_line_bytes: usize,
}

impl Default for ReadLimits {
    fn default() -> Self {
        ReadLimits {
            max_bytes: 256 * 1024 * 1024,
            max_line_bytes: 1024 * 1024,
        }
    }
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
    /// A line longer than [`ReadLimits::max_line_bytes`]: no event is, so it is not one (and
    /// holding it would cost what it is long).
    #[error("line {line}: longer than {limit} bytes, which no event is")]
    LineTooLong { line: usize, limit: usize },
    /// More than [`ReadLimits::max_bytes`] in all.
    #[error("line {line}: the stream goes on past {limit} bytes, the most read from one stream")]
    TooLarge { line: usize, limit: u64 },
    /// Bytes that are not UTF-8 (1-based column of the first bad byte, in characters).
    #[error("line {line}: column {column}: not UTF-8 text")]
    NotUtf8 { line: usize, column: usize },
    /// An event that parses but says what no sensor writes (`field`: as for [`ReadError::Json`]).
    #[error("line {line}: {field}: {message}")]
    Invalid {
        line: usize,
        field: &'static str,
        message: &'static str,
    },
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl ReadError {
    /// The 1-based line the error is on, when it is about a line.
    pub fn line(&self) -> Option<usize> {
        match self {
            ReadError::Json { line, .. }
            | ReadError::Version { line, .. }
            | ReadError::LineTooLong { line, .. }
            | ReadError::TooLarge { line, .. }
            | ReadError::NotUtf8 { line, .. }
            | ReadError::Invalid { line, .. } => Some(*line),
            ReadError::Io(_) => None,
        }
    }

    /// The field a bad value is in (see [`ReadError::Json`]).
    pub fn field(&self) -> Option<&str> {
        match self {
            ReadError::Json { field, .. } => field.as_deref(),
            ReadError::Invalid { field, .. } => Some(field),
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
    // A program has a name: the sensor writes the path it resolved, or the name given to
    // execve, or `memfd:NAME`; never nothing (a policy could not say what an empty one is).
    if let crate::EventBody::Exec(exec) = &event.body
        && exec.exe.is_empty()
    {
        return Err(ReadError::Invalid {
            line,
            field: "exec.exe",
            message: "must not be empty: an exec names its executable",
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

/// Whether `text` (one line) is a recording's marker: a JSON object whose only key is one of
/// [`MARKER_KEYS`] and whose value is an object. Events start with their version `v`, so only
/// lines that start like a marker are looked at closely.
pub fn is_marker(text: &str) -> bool {
    let trimmed = text.trim_start();
    let looks_like_one = MARKER_KEYS
        .iter()
        .any(|key| trimmed.starts_with(&format!("{{\"{key}\"")));
    if !looks_like_one {
        return false;
    }
    match serde_json::from_str::<serde_json::Value>(trimmed) {
        Ok(serde_json::Value::Object(object)) => {
            object.len() == 1
                && object
                    .iter()
                    .all(|(key, value)| MARKER_KEYS.contains(&key.as_str()) && value.is_object())
        }
        _ => false,
    }
}

/// Read a whole NDJSON stream within the default [`ReadLimits`]; blank lines and a
/// recording's marker lines are skipped.
pub fn read_ndjson(reader: impl BufRead) -> Result<Vec<Event>, ReadError> {
    read_ndjson_with(reader, &ReadLimits::default())
}

/// [`read_ndjson`] within `limits`.
pub fn read_ndjson_with(
    mut reader: impl BufRead,
    limits: &ReadLimits,
) -> Result<Vec<Event>, ReadError> {
    let mut events = Vec::new();
    let mut bytes = Vec::new();
    let mut total: u64 = 0;
    let mut line = 0;
    loop {
        bytes.clear();
        // One byte more than a line may hold, so a line too long is seen without holding it.
        let read = (&mut reader)
            .take(limits.max_line_bytes as u64 + 2)
            .read_until(b'\n', &mut bytes)?;
        if read == 0 {
            return Ok(events);
        }
        line += 1;
        total += read as u64;
        if total > limits.max_bytes {
            return Err(ReadError::TooLarge {
                line,
                limit: limits.max_bytes,
            });
        }
        let content = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
        let content = content.strip_suffix(b"\r").unwrap_or(content);
        if content.len() > limits.max_line_bytes {
            return Err(ReadError::LineTooLong {
                line,
                limit: limits.max_line_bytes,
            });
        }
        let text = std::str::from_utf8(content).map_err(|e| {
            let valid = &content[..e.valid_up_to()];
            ReadError::NotUtf8 {
                line,
                // Continuation bytes (10xxxxxx) do not start a character.
                column: 1 + valid.iter().filter(|b| (**b & 0xC0) != 0x80).count(),
            }
        })?;
        if text.trim().is_empty() || is_marker(text) {
            continue;
        }
        events.push(parse_line(text, line)?);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{ExeStatus, ProcessKey, Protocol, write_ndjson};

    pub(crate) fn exec() -> Event {
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
    fn an_exec_with_no_executable_is_refused_naming_line_and_field() {
        let good = line_of(&exec());
        let bad = good.replacen(r#""exe":"/usr/bin/id""#, r#""exe":"""#, 1);
        assert_ne!(good, bad, "the exec's exe is in the line");
        let err = parse_line(&bad, 7).unwrap_err();
        assert_eq!(err.field(), Some("exec.exe"));
        assert_eq!(err.line(), Some(7));
        assert!(
            err.to_string()
                .starts_with("line 7: exec.exe: must not be empty"),
            "{err}"
        );
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

    fn stream(lines: &[&str]) -> String {
        lines.iter().map(|l| format!("{l}\n")).collect()
    }

    #[test]
    fn a_recording_reads_as_its_events() {
        let event = line_of(&exec());
        let text = stream(&[
            r#"{"recording":{"format":1,"scenario":"demo","events_format":1,"backend":"local"}}"#,
            r#"{"step":{"index":0,"name":"setup","at":"begin"}}"#,
            &event,
            r#"{"step":{"index":0,"name":"setup","at":"end","facts":{"pool_clients":[]}}}"#,
        ]);
        assert_eq!(read_ndjson(text.as_bytes()).unwrap(), vec![exec()]);
        // A line that only starts like a marker is read as an event, and refused.
        for not_a_marker in [
            r#"{"step":3}"#,
            r#"{"step":{"index":0},"v":1}"#,
            r#"{"stepping":{}}"#,
        ] {
            assert!(!is_marker(not_a_marker), "{not_a_marker}");
            let err = read_ndjson(stream(&[&event, not_a_marker]).as_bytes()).unwrap_err();
            assert_eq!(err.line(), Some(2), "{err}");
        }
    }

    #[test]
    fn a_line_longer_than_the_limit_is_refused_without_being_held() {
        let limits = ReadLimits {
            max_bytes: 1 << 20,
            max_line_bytes: 100,
        };
        let event = line_of(&exec());
        assert!(event.len() > 100);
        let err = read_ndjson_with(stream(&["", &event]).as_bytes(), &limits).unwrap_err();
        assert!(
            matches!(
                err,
                ReadError::LineTooLong {
                    line: 2,
                    limit: 100
                }
            ),
            "{err:?}"
        );
        // Exactly at the limit is fine, with or without its newline and a CR.
        let lost = r#"{"v":1,"ts":1,"type":"lost","count":3}"#;
        let exact = ReadLimits {
            max_bytes: 1 << 20,
            max_line_bytes: lost.len(),
        };
        for text in [format!("{lost}\n"), format!("{lost}\r\n"), lost.to_string()] {
            assert_eq!(read_ndjson_with(text.as_bytes(), &exact).unwrap().len(), 1);
        }
        // A stream with no newline at all: one line, cut at the limit.
        let endless = std::io::repeat(b'x').take(10 << 20);
        let err = read_ndjson_with(std::io::BufReader::new(endless), &limits).unwrap_err();
        assert!(
            matches!(err, ReadError::LineTooLong { line: 1, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn a_stream_longer_than_the_limit_is_refused_at_the_line_that_crosses_it() {
        let lost = r#"{"v":1,"ts":1,"type":"lost","count":3}"#;
        let limits = ReadLimits {
            max_bytes: 3 * (lost.len() as u64 + 1),
            max_line_bytes: 1000,
        };
        let three = stream(&[lost, lost, lost]);
        assert_eq!(
            read_ndjson_with(three.as_bytes(), &limits).unwrap().len(),
            3
        );
        let four = stream(&[lost, lost, lost, lost]);
        let err = read_ndjson_with(four.as_bytes(), &limits).unwrap_err();
        assert!(
            matches!(err, ReadError::TooLarge { line: 4, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn bytes_that_are_not_utf8_are_named_by_line_and_column() {
        let mut text = stream(&[r#"{"v":1,"ts":1,"type":"lost","count":3}"#]).into_bytes();
        text.extend(b"{\"v\":1,\"ts\":1,\"type\":\"l\xc3\xa9\xff\"}\n");
        let err = read_ndjson(text.as_slice()).unwrap_err();
        assert!(
            matches!(
                err,
                ReadError::NotUtf8 {
                    line: 2,
                    column: 25
                }
            ),
            "{err:?}"
        );
        assert_eq!(err.to_string(), "line 2: column 25: not UTF-8 text");
    }
}
