//! Snapshot files: what a step produced, normalized so that a correct run on any machine of
//! this kind gives the same text, checked against `snapshots/<scenario>/<name>.snap`.
//!
//! The files are in insta's format (a YAML metadata block between `---` lines, then the
//! contents), so that the same files are checked by the runner (`guardlab scenario`) and by
//! `cargo test` through `insta::assert_snapshot!`; both compare the contents with trailing
//! whitespace trimmed, as insta does.
//!
//! # Normalization
//!
//! Values are serialized to YAML (field order as the types declare it) after these
//! redactions:
//! - times (`firstTimestamp`, `latestTimestamp`, `timestamp`, `startTime`, `started`, ...) become `[time]`;
//! - pids (`pid`, `nsPid`) become `[pid]`, process keys (`process: [pid, start]`) `[process]`;
//! - cgroup ids `[cgroup-id]`, container ids `[container-id]` (also inside any text), image
//!   ids `[image-id]` (an image built on another machine has another id), machines `[machine]`;
//! - pod names lose their generated suffix: `jupyter-notebook-7d9f8c6b5-x2k4p` becomes
//!   `jupyter-notebook-[pod-suffix]` wherever it appears;
//! - the peer's port of an ingress connection (ephemeral) becomes `[port]`;
//! - UUIDs in any text (a Jupyter kernel's connection file) become `[uuid]`.
//!
//! The trace snapshot also lists each distinct connection of a process once (a miner that
//! reconnects to its pool has one line, not one per retry); see the runner.

use std::path::{Path, PathBuf};

use guardlab_events::ContainerInfo;
use regex::Regex;
use serde::Serialize;
use serde_yaml::Value;

const TIME_KEYS: &[&str] = &[
    "firstTimestamp",
    "latestTimestamp",
    "createTime",
    "timestamp",
    "startTime",
    "started",
    "first_timestamp",
    "latest_timestamp",
];
const PID_KEYS: &[&str] = &["pid", "nsPid", "ns_pid"];
const CGROUP_KEYS: &[&str] = &["cgroupId", "cgroup_id"];
const CONTAINER_ID_KEYS: &[&str] = &["containerID", "containerId", "container_id"];
const IMAGE_ID_KEYS: &[&str] = &["imageID", "imageId", "image_id"];

/// Redacts what differs from run to run (see the module documentation).
pub struct Redactor {
    /// Exact substrings and what they become, longest first.
    replacements: Vec<(String, String)>,
    machines: Vec<String>,
    uuid: Regex,
}

impl Default for Redactor {
    fn default() -> Self {
        Redactor {
            replacements: Vec::new(),
            machines: Vec::new(),
            uuid: Regex::new(
                r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
            )
            .expect("a valid regex"),
        }
    }
}

/// `jupyter-notebook-7d9f8c6b5-x2k4p` -> `jupyter-notebook-[pod-suffix]`: the two segments a
/// Deployment's ReplicaSet and pod add. Names with fewer segments are kept.
pub fn pod_name_pattern(pod: &str) -> Option<String> {
    let parts: Vec<&str> = pod.split('-').collect();
    if parts.len() < 3 {
        return None;
    }
    Some(format!(
        "{}-[pod-suffix]",
        parts[..parts.len() - 2].join("-")
    ))
}

impl Redactor {
    /// Learn the run-specific names of a container (its id, pod name, machine).
    pub fn learn(&mut self, info: &ContainerInfo) {
        let mut add = |from: &str, to: String| {
            if from.len() >= 8 && !self.replacements.iter().any(|(f, _)| f == from) {
                self.replacements.push((from.to_string(), to));
            }
        };
        if !info.container_id.is_empty() {
            add(&info.container_id, "[container-id]".into());
        }
        if let Some(pattern) = pod_name_pattern(&info.pod_name) {
            add(&info.pod_name, pattern);
        }
        if !info.image_id.is_empty() {
            add(&info.image_id, "[image-id]".into());
        }
        if !info.machine.is_empty() && !self.machines.contains(&info.machine) {
            self.machines.push(info.machine.clone());
        }
        self.replacements
            .sort_by_key(|(from, _)| std::cmp::Reverse(from.len()));
    }

    fn text(&self, s: &str) -> String {
        let mut out = s.to_string();
        for (from, to) in &self.replacements {
            if out.contains(from.as_str()) {
                out = out.replace(from.as_str(), to);
            }
        }
        if self.machines.iter().any(|m| m == &out) {
            return "[machine]".into();
        }
        self.uuid.replace_all(&out, "[uuid]").into_owned()
    }

    /// Serialize and redact.
    pub fn value<T: Serialize>(&self, value: &T) -> Value {
        let mut v = serde_yaml::to_value(value).expect("snapshot values serialize");
        self.walk(&mut v);
        v
    }

    fn walk(&self, v: &mut Value) {
        match v {
            Value::String(s) => *s = self.text(s),
            Value::Sequence(items) => {
                for item in items.iter_mut() {
                    self.walk(item);
                }
            }
            Value::Mapping(map) => {
                let ingress = map.get("direction").and_then(Value::as_str) == Some("ingress");
                for (k, val) in map.iter_mut() {
                    let key = k.as_str().unwrap_or("");
                    let placeholder = if val.is_null() {
                        None
                    } else if TIME_KEYS.contains(&key) {
                        Some("[time]")
                    } else if PID_KEYS.contains(&key) {
                        Some("[pid]")
                    } else if key == "process" && val.is_sequence() {
                        Some("[process]")
                    } else if CGROUP_KEYS.contains(&key) {
                        Some("[cgroup-id]")
                    } else if CONTAINER_ID_KEYS.contains(&key)
                        && val.as_str().is_some_and(|s| !s.is_empty())
                    {
                        Some("[container-id]")
                    } else if IMAGE_ID_KEYS.contains(&key)
                        && val.as_str().is_some_and(|s| !s.is_empty())
                    {
                        Some("[image-id]")
                    } else if key == "remotePort" && ingress {
                        Some("[port]")
                    } else {
                        None
                    };
                    match (placeholder, key) {
                        (Some(p), _) => *val = Value::String(p.into()),
                        (None, "containerIDs") => redact_all(val, "[container-id]"),
                        (None, "machines") => redact_all(val, "[machine]"),
                        _ => self.walk(val),
                    }
                }
            }
            Value::Tagged(t) => self.walk(&mut t.value),
            _ => {}
        }
    }
}

fn redact_all(v: &mut Value, placeholder: &str) {
    if let Value::Sequence(items) = v {
        let n = items.len().min(1);
        *items = vec![Value::String(placeholder.into()); n];
    }
}

/// YAML text of a value.
pub fn yaml(value: &Value) -> String {
    serde_yaml::to_string(value).expect("YAML values serialize")
}

/// Several YAML documents, separated by `---`.
pub fn yaml_documents(values: &[Value]) -> String {
    values.iter().map(yaml).collect::<Vec<_>>().join("---\n")
}

/// Where a scenario's snapshots live: `<dir>/<name>.snap`.
#[derive(Clone, Debug)]
pub struct SnapshotDir {
    pub dir: PathBuf,
}

/// How one snapshot compared.
#[derive(Clone, Debug, PartialEq)]
pub enum Comparison {
    Matches,
    /// No file yet (or `--update-snapshots`): written.
    Written,
    /// Different; the unified diff (snapshot -> this run).
    Differs {
        diff: String,
    },
    /// No file, and not asked to write it.
    Missing,
}

/// The contents of a snapshot file in insta's format (after the metadata block).
pub fn read_contents(text: &str) -> String {
    let mut lines = text.lines();
    let mut body: Vec<&str> = Vec::new();
    match lines.next() {
        Some(first) if first.trim_end() == "---" => {
            for line in lines.by_ref() {
                if line.trim_end() == "---" {
                    break;
                }
            }
            body.extend(lines);
        }
        Some(first) => {
            body.push(first);
            body.extend(lines);
        }
        None => {}
    }
    body.join("\n")
}

/// What insta compares: trailing whitespace trimmed, CRLF as LF.
pub fn normalize(text: &str) -> String {
    text.trim_end().replace("\r\n", "\n")
}

/// A unified diff from the snapshot to this run.
pub fn diff(expected: &str, actual: &str, snapshot_label: &str) -> String {
    let (e, a) = (normalize(expected) + "\n", normalize(actual) + "\n");
    similar::TextDiff::from_lines(&e, &a)
        .unified_diff()
        .context_radius(3)
        .header(&format!("{snapshot_label} (snapshot)"), "this run")
        .to_string()
}

#[derive(Serialize)]
struct Metadata<'a> {
    source: &'a str,
    description: &'a str,
    expression: &'a str,
}

impl SnapshotDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        SnapshotDir { dir: dir.into() }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.snap"))
    }

    /// The stored contents, when there is a file.
    pub fn read(&self, name: &str) -> std::io::Result<Option<String>> {
        match std::fs::read_to_string(self.path(name)) {
            Ok(text) => Ok(Some(read_contents(&text))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Write a snapshot file in insta's format.
    pub fn write(
        &self,
        name: &str,
        source: &str,
        description: &str,
        contents: &str,
    ) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let meta = serde_yaml::to_string(&Metadata {
            source,
            description,
            expression: name,
        })
        .expect("metadata serializes");
        let text = format!("---\n{meta}---\n{}\n", normalize(contents));
        std::fs::write(self.path(name), text)
    }

    /// Compare `contents` with the stored snapshot; with `update`, write it instead when it
    /// differs or is missing.
    pub fn check(
        &self,
        name: &str,
        contents: &str,
        update: bool,
        source: &str,
        description: &str,
    ) -> std::io::Result<Comparison> {
        let stored = self.read(name)?;
        match stored {
            Some(s) if normalize(&s) == normalize(contents) => Ok(Comparison::Matches),
            _ if update => {
                self.write(name, source, description, contents)?;
                Ok(Comparison::Written)
            }
            Some(s) => Ok(Comparison::Differs {
                diff: diff(&s, contents, &display(&self.path(name))),
            }),
            None => Ok(Comparison::Missing),
        }
    }
}

fn display(path: &Path) -> String {
    super::file::display_path(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Sample {
        pid: u32,
        ns_pid: u32,
        process: (u32, u64),
        container_id: String,
        message: String,
        args: Vec<String>,
        connections: Vec<Conn>,
        latest_timestamp: Option<f64>,
    }

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Conn {
        direction: &'static str,
        port: u16,
        remote_port: u16,
        timestamp: f64,
    }

    #[test]
    fn redacts_what_changes_between_runs() {
        let mut r = Redactor::default();
        r.learn(&ContainerInfo {
            container_id: "0123456789abcdef0123".into(),
            pod_name: "jupyter-notebook-7d9f8c6b5-x2k4p".into(),
            machine: "host-1".into(),
            ..ContainerInfo::default()
        });
        let sample = Sample {
            pid: 4242,
            ns_pid: 7,
            process: (4242, 99),
            container_id: "0123456789abcdef0123".into(),
            message: "kill \"jupyter-notebook-7d9f8c6b5-x2k4p\" pod of 0123456789abcdef0123".into(),
            args: vec![
                "-f".into(),
                "/run/kernel-6f1c2a9e-0b7d-4c3f-8a1e-5b2d9c0f7a6e.json".into(),
            ],
            connections: vec![
                Conn {
                    direction: "ingress",
                    port: 8888,
                    remote_port: 40001,
                    timestamp: 1.5,
                },
                Conn {
                    direction: "egress",
                    port: 443,
                    remote_port: 443,
                    timestamp: 3.5,
                },
            ],
            latest_timestamp: None,
        };
        let text = yaml(&r.value(&sample));
        assert_eq!(
            text,
            "pid: '[pid]'\nnsPid: '[pid]'\nprocess: '[process]'\ncontainerId: '[container-id]'\n\
message: kill \"jupyter-notebook-[pod-suffix]\" pod of [container-id]\n\
args:\n- -f\n- /run/kernel-[uuid].json\n\
connections:\n- direction: ingress\n  port: 8888\n  remotePort: '[port]'\n  timestamp: '[time]'\n\
- direction: egress\n  port: 443\n  remotePort: 443\n  timestamp: '[time]'\nlatestTimestamp: null\n"
        );
    }

    #[test]
    fn files_are_insta_files_and_mismatches_diff() {
        let dir = tempfile::tempdir().unwrap();
        let snaps = SnapshotDir::new(dir.path());
        assert_eq!(
            snaps.check("a", "x: 1\n", false, "s.yaml", "d").unwrap(),
            Comparison::Missing
        );
        assert_eq!(
            snaps
                .check("a", "x: 1\n", true, "s.yaml", "step a: it")
                .unwrap(),
            Comparison::Written
        );
        let text = std::fs::read_to_string(snaps.path("a")).unwrap();
        assert!(
            text.starts_with(
                "---\nsource: s.yaml\ndescription: 'step a: it'\nexpression: a\n---\nx: 1\n"
            ),
            "{text}"
        );
        assert_eq!(
            snaps.check("a", "x: 1\n\n", false, "s.yaml", "d").unwrap(),
            Comparison::Matches
        );
        let Comparison::Differs { diff } =
            snaps.check("a", "x: 2\n", false, "s.yaml", "d").unwrap()
        else {
            panic!("differs")
        };
        assert!(diff.contains("-x: 1") && diff.contains("+x: 2"), "{diff}");
        assert_eq!(
            snaps.check("a", "x: 2\n", true, "s.yaml", "d").unwrap(),
            Comparison::Written
        );
        assert_eq!(snaps.read("a").unwrap().as_deref(), Some("x: 2"));
    }

    #[test]
    fn pod_names() {
        assert_eq!(
            pod_name_pattern("jupyter-notebook-7d9f8c6b5-x2k4p").as_deref(),
            Some("jupyter-notebook-[pod-suffix]")
        );
        assert_eq!(pod_name_pattern("notebook"), None);
    }
}
