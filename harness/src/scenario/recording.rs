//! Recordings: the sensor's event stream of a scenario run, cut into the scenario's steps, so
//! that `--backend replay` can run the engine side of the scenario again with no lab.
//!
//! # Format
//!
//! NDJSON. Every line is either one sensor event in the wire format of `guardlab-events`
//! (unchanged, so the events crate needs to know nothing about recordings) or a **marker**, a
//! JSON object with a single key that no event has:
//!
//! ```text
//! {"recording":{"format":1,"scenario":"cryptominer","events_format":1,"backend":"local","synthetic":false,"note":"..."}}
//! {"step":{"index":0,"name":"setup","at":"begin"}}
//! {"v":1,"ts":...,"type":"container",...}          <- the events the runner took in during step 0
//! {"step":{"index":0,"name":"setup","at":"end","facts":{}}}
//! {"step":{"index":1,...,"at":"begin"}}
//! ...
//! ```
//!
//! The `recording` header is the first line. Each step's events lie between its `begin` and
//! `end` markers: exactly the events the runner consumed while running that step, in order, so
//! a replay feeds every step the same events as the live run did and ends up in the same state.
//! `facts` holds what the live run learned outside the event stream and the replay must check
//! too (for example the mining pool's clients, by [`FACT_POOL_CLIENTS`]).
//!
//! To get the bare event stream (for `guardlab fingerprint --events`), drop the marker lines:
//! `grep -v '^{"recording"\|^{"step"'`, or call [`read_events_only`].

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use guardlab_events::{Event, ReadError};
use guardlab_lab_api::Backend;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The version of the recording format (markers); the events carry their own.
pub const RECORDING_FORMAT: u32 = 1;

/// The fact `check_pool_reached` records: the pool's clients, as the lab reported them.
pub const FACT_POOL_CLIENTS: &str = "pool_clients";
/// A terminal step's fact: what each command printed (clipped), in order, so that a replay
/// sees what the live run saw (e.g. a shell's "command not found").
pub const FACT_TERMINAL_OUTPUT: &str = "terminal_output";

/// The first line of a recording.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub format: u32,
    pub scenario: String,
    pub events_format: u32,
    /// The backend the run was made on (`local`, `kind`), or `synthetic`.
    pub backend: RecordedOn,
    /// True for a recording written by a program rather than by a live run.
    #[serde(default)]
    pub synthetic: bool,
    /// Where it came from, for a person reading the file.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

/// What a recording was made on: a backend's run, or a program (`synthetic`, a recording
/// written from a hand-made event sequence). Written as the backend's name, or `synthetic`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum RecordedOn {
    Backend(Backend),
    Synthetic,
}

const SYNTHETIC: &str = "synthetic";

/// A header's `backend` that names no backend and is not `synthetic`.
#[derive(Debug, thiserror::Error)]
#[error("unknown backend `{0}`: a recording is made on local or kind, or is synthetic")]
pub struct UnknownRecordedOn(String);

impl TryFrom<String> for RecordedOn {
    type Error = UnknownRecordedOn;
    fn try_from(name: String) -> Result<RecordedOn, UnknownRecordedOn> {
        if name == SYNTHETIC {
            return Ok(RecordedOn::Synthetic);
        }
        name.parse()
            .map(RecordedOn::Backend)
            .map_err(|_| UnknownRecordedOn(name))
    }
}

impl From<RecordedOn> for String {
    fn from(on: RecordedOn) -> String {
        on.to_string()
    }
}

impl std::fmt::Display for RecordedOn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordedOn::Backend(backend) => write!(f, "{backend}"),
            RecordedOn::Synthetic => f.write_str(SYNTHETIC),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum At {
    Begin,
    End,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepMarker {
    pub index: usize,
    pub name: String,
    pub at: At,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub facts: BTreeMap<String, Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
enum Marker {
    Recording(Header),
    Step(StepMarker),
}

/// One step's part of a recording.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RecordedStep {
    pub name: String,
    pub events: Vec<Event>,
    pub facts: BTreeMap<String, Value>,
}

/// A whole recording, read.
#[derive(Clone, Debug, PartialEq)]
pub struct Recording {
    pub header: Header,
    pub steps: Vec<RecordedStep>,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    #[error("{file}: {source}")]
    Io {
        file: String,
        #[source]
        source: io::Error,
    },
    #[error("{file}:{line}: {message}")]
    Line {
        file: String,
        line: usize,
        message: String,
    },
}

/// Writes a recording as the run goes; every line is flushed at the end of each step, so a
/// run that fails half-way leaves the steps it finished.
pub struct RecordingWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl RecordingWriter {
    pub fn create(path: &Path, header: &Header) -> Result<Self, RecordingError> {
        let file = File::create(path).map_err(|source| RecordingError::Io {
            file: path.display().to_string(),
            source,
        })?;
        let mut w = RecordingWriter {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
        };
        w.marker(&Marker::Recording(header.clone()))?;
        Ok(w)
    }

    fn io(&self, source: io::Error) -> RecordingError {
        RecordingError::Io {
            file: self.path.display().to_string(),
            source,
        }
    }

    fn marker(&mut self, marker: &Marker) -> Result<(), RecordingError> {
        serde_json::to_writer(&mut self.out, marker).map_err(|e| self.io(e.into()))?;
        self.out.write_all(b"\n").map_err(|e| self.io(e))
    }

    pub fn begin_step(&mut self, index: usize, name: &str) -> Result<(), RecordingError> {
        self.marker(&Marker::Step(StepMarker {
            index,
            name: name.into(),
            at: At::Begin,
            facts: BTreeMap::new(),
        }))
    }

    pub fn event(&mut self, event: &Event) -> Result<(), RecordingError> {
        guardlab_events::write_ndjson(&mut self.out, event).map_err(|e| self.io(e))
    }

    pub fn end_step(
        &mut self,
        index: usize,
        name: &str,
        facts: &BTreeMap<String, Value>,
    ) -> Result<(), RecordingError> {
        self.marker(&Marker::Step(StepMarker {
            index,
            name: name.into(),
            at: At::End,
            facts: facts.clone(),
        }))?;
        self.out.flush().map_err(|e| self.io(e))
    }

    pub fn finish(mut self) -> Result<(), RecordingError> {
        self.out.flush().map_err(|e| self.io(e))
    }
}

/// Write a whole recording at once (synthetic recordings, tests).
pub fn write_recording(path: &Path, recording: &Recording) -> Result<(), RecordingError> {
    let mut w = RecordingWriter::create(path, &recording.header)?;
    for (i, step) in recording.steps.iter().enumerate() {
        w.begin_step(i, &step.name)?;
        for e in &step.events {
            w.event(e)?;
        }
        w.end_step(i, &step.name, &step.facts)?;
    }
    w.finish()
}

enum Line {
    Marker(Marker),
    Event(Box<Event>),
}

fn parse_line(text: &str, line: usize) -> Result<Line, String> {
    let trimmed = text.trim_start();
    // A marker's only key is `recording` or `step`; events start with their version `v`.
    if trimmed.starts_with("{\"recording\"") || trimmed.starts_with("{\"step\"") {
        return serde_json::from_str::<Marker>(trimmed)
            .map(Line::Marker)
            .map_err(|e| format!("marker: {e}"));
    }
    guardlab_events::parse_line(text, line)
        .map(|e| Line::Event(Box::new(e)))
        .map_err(|e| match e {
            ReadError::Json {
                source,
                field: Some(field),
                ..
            } => format!("event: {field}: {}", guardlab_events::json_message(&source)),
            ReadError::Json { source, .. } => format!("event: {source}"),
            other => other.to_string(),
        })
}

/// Read a recording and check its structure: the header first, then steps numbered from 0,
/// each with its events between its `begin` and `end` markers.
pub fn read_recording(path: &Path) -> Result<Recording, RecordingError> {
    let file_name = path.display().to_string();
    let file = File::open(path).map_err(|source| RecordingError::Io {
        file: file_name.clone(),
        source,
    })?;
    let err = |line: usize, message: String| RecordingError::Line {
        file: file_name.clone(),
        line,
        message,
    };
    let mut header: Option<Header> = None;
    let mut steps: Vec<RecordedStep> = Vec::new();
    let mut open: Option<RecordedStep> = None;
    let mut last_line = 0;
    // A recording is an event stream with markers: the event reader's bounds hold for it too.
    let limits = guardlab_events::ReadLimits::default();
    let size = file
        .metadata()
        .map_err(|source| RecordingError::Io {
            file: file_name.clone(),
            source,
        })?
        .len();
    if size > limits.max_bytes {
        return Err(err(
            1,
            format!(
                "the recording is {size} bytes, over the limit of {} bytes for an event stream",
                limits.max_bytes
            ),
        ));
    }
    for (i, line) in BufReader::new(file.take(limits.max_bytes))
        .lines()
        .enumerate()
    {
        let n = i + 1;
        last_line = n;
        let text = line.map_err(|source| RecordingError::Io {
            file: file_name.clone(),
            source,
        })?;
        if text.len() > limits.max_line_bytes {
            return Err(err(
                n,
                format!(
                    "a line of {} bytes, over the limit of {} bytes for one event",
                    text.len(),
                    limits.max_line_bytes
                ),
            ));
        }
        if text.trim().is_empty() {
            continue;
        }
        let parsed = parse_line(&text, n).map_err(|m| err(n, m))?;
        match parsed {
            Line::Marker(Marker::Recording(h)) => {
                if header.is_some() || !steps.is_empty() || open.is_some() {
                    return Err(err(
                        n,
                        "the `recording` header must be the first line, once".into(),
                    ));
                }
                if h.format != RECORDING_FORMAT {
                    return Err(err(
                        n,
                        format!(
                            "recording format {}, this build reads {RECORDING_FORMAT}",
                            h.format
                        ),
                    ));
                }
                header = Some(h);
            }
            _ if header.is_none() => {
                return Err(err(
                    n,
                    "not a recording: the first line must be a `recording` header".into(),
                ));
            }
            Line::Marker(Marker::Step(m)) => match m.at {
                At::Begin => {
                    if let Some(o) = &open {
                        return Err(err(
                            n,
                            format!("step {:?} begins before step {:?} ended", m.name, o.name),
                        ));
                    }
                    if m.index != steps.len() {
                        return Err(err(
                            n,
                            format!("step index {}, expected {}", m.index, steps.len()),
                        ));
                    }
                    open = Some(RecordedStep {
                        name: m.name,
                        ..RecordedStep::default()
                    });
                }
                At::End => match open.take() {
                    Some(mut o) if o.name == m.name && m.index == steps.len() => {
                        o.facts = m.facts;
                        steps.push(o);
                    }
                    _ => return Err(err(n, format!("step {:?} ends but did not begin", m.name))),
                },
            },
            Line::Event(e) => match open.as_mut() {
                Some(o) => o.events.push(*e),
                None => return Err(err(n, "an event outside any step".into())),
            },
        }
    }
    let header =
        header.ok_or_else(|| err(last_line.max(1), "empty: no `recording` header".into()))?;
    // A run that stopped half-way leaves an open step: keep what it has, as the live run saw it.
    if let Some(o) = open {
        steps.push(o);
    }
    Ok(Recording { header, steps })
}

/// Only the events of a recording (or of a plain event stream), in order.
pub fn read_events_only(path: &Path) -> Result<Vec<Event>, RecordingError> {
    let file_name = path.display().to_string();
    let file = File::open(path).map_err(|source| RecordingError::Io {
        file: file_name.clone(),
        source,
    })?;
    let mut events = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let text = line.map_err(|source| RecordingError::Io {
            file: file_name.clone(),
            source,
        })?;
        if text.trim().is_empty() {
            continue;
        }
        match parse_line(&text, i + 1).map_err(|message| RecordingError::Line {
            file: file_name.clone(),
            line: i + 1,
            message,
        })? {
            Line::Event(e) => events.push(*e),
            Line::Marker(_) => {}
        }
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use guardlab_events::{EventBody, Lost};

    fn header() -> Header {
        Header {
            format: RECORDING_FORMAT,
            scenario: "demo".into(),
            events_format: guardlab_events::FORMAT_VERSION,
            backend: RecordedOn::Synthetic,
            synthetic: true,
            note: String::new(),
        }
    }

    #[test]
    fn round_trips_with_steps_and_facts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.ndjson");
        let lost = |n| {
            Event::new(
                n,
                EventBody::Lost(Lost {
                    count: n,
                    cpu: None,
                }),
            )
        };
        let rec = Recording {
            header: header(),
            steps: vec![
                RecordedStep {
                    name: "a".into(),
                    events: vec![lost(1), lost(2)],
                    facts: BTreeMap::new(),
                },
                RecordedStep {
                    name: "b".into(),
                    events: vec![],
                    facts: BTreeMap::from([(
                        FACT_POOL_CLIENTS.to_string(),
                        serde_json::json!([{"user": "ME"}]),
                    )]),
                },
            ],
        };
        write_recording(&path, &rec).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("{\"recording\":{\"format\":1,"), "{text}");
        assert_eq!(read_recording(&path).unwrap(), rec);
        assert_eq!(read_events_only(&path).unwrap(), vec![lost(1), lost(2)]);
    }

    #[test]
    fn the_header_names_the_backend_as_before() {
        for (on, word) in [
            (RecordedOn::Backend(Backend::Local), "\"local\""),
            (RecordedOn::Backend(Backend::Kind), "\"kind\""),
            (RecordedOn::Synthetic, "\"synthetic\""),
        ] {
            assert_eq!(serde_json::to_string(&on).unwrap(), word);
            assert_eq!(serde_json::from_str::<RecordedOn>(word).unwrap(), on);
        }
        let err = serde_json::from_str::<RecordedOn>("\"docker\"").unwrap_err();
        assert!(
            err.to_string().contains("unknown backend `docker`"),
            "{err}"
        );
    }

    #[test]
    fn a_recording_past_the_event_streams_bounds_is_refused_naming_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let limits = guardlab_events::ReadLimits::default();
        let h = serde_json::to_string(&Marker::Recording(header())).unwrap();
        let long = dir.path().join("long.ndjson");
        let line = format!(
            "{{\"v\":1,\"pad\":\"{}\"}}",
            "x".repeat(limits.max_line_bytes)
        );
        std::fs::write(&long, format!("{h}\n{line}\n")).unwrap();
        let err = read_recording(&long).unwrap_err().to_string();
        assert!(
            err.contains("long.ndjson:2: a line of") && err.contains("over the limit"),
            "{err}"
        );
        // A sparse file over the stream's limit is refused before a byte is read.
        let big = dir.path().join("big.ndjson");
        let file = File::create(&big).unwrap();
        file.set_len(limits.max_bytes + 1).unwrap();
        let err = read_recording(&big).unwrap_err().to_string();
        assert!(err.contains("big.ndjson:1: the recording is"), "{err}");
    }

    #[test]
    fn broken_structure_names_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.ndjson");
        let h = serde_json::to_string(&Marker::Recording(header())).unwrap();
        let cases = [
            (
                format!("{h}\n{{\"v\":1,\"ts\":1,\"type\":\"lost\",\"count\":1}}\n"),
                2,
                "outside any step",
            ),
            (
                format!("{h}\n{{\"step\":{{\"index\":1,\"name\":\"a\",\"at\":\"begin\"}}}}\n"),
                2,
                "expected 0",
            ),
            (
                format!(
                    "{h}\n{{\"step\":{{\"index\":0,\"name\":\"a\",\"at\":\"begin\"}}}}\n{{\"v\":1,\"ts\":1,\"type\":\"lost\",\"bogus\":1}}\n"
                ),
                3,
                "bogus",
            ),
            (
                format!(
                    "{h}\n{{\"step\":{{\"index\":0,\"name\":\"a\",\"at\":\"begin\"}}}}\n{{\"v\":1,\"ts\":1,\"type\":\"lost\",\"count\":\"many\"}}\n"
                ),
                3,
                "event: lost.count: invalid type",
            ),
            (
                "{\"v\":1,\"ts\":1,\"type\":\"lost\",\"count\":1}\n".to_string(),
                1,
                "first line",
            ),
        ];
        for (text, line, what) in cases {
            std::fs::write(&path, &text).unwrap();
            let e = read_recording(&path).unwrap_err().to_string();
            assert!(
                e.contains(&format!("r.ndjson:{line}:")) && e.contains(what),
                "{e}"
            );
        }
    }
}
