//! What `up` made, so that `down` removes that and only that.
//!
//! The file is written before each thing is made (the cluster, the image, each object), so a
//! harness killed half-way still leaves a record that `down` can act on. Things that existed
//! before `up` are recorded with `created: false` and are left alone.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use guardlab_lab::LabError;
use serde::{Deserialize, Serialize};

pub const STATE_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabState {
    pub version: u32,
    pub target: StateTarget,
    pub namespace: String,
    #[serde(default)]
    pub image: Option<ImageRecord>,
    /// In the order they were applied.
    #[serde(default)]
    pub objects: Vec<ObjectRecord>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case", tag = "type")]
pub enum StateTarget {
    /// A kind cluster; `created` when `up` created it.
    Kind { cluster: String, created: bool },
    /// A context of the user's kubeconfig (a cluster guardlab never creates or deletes).
    Context { context: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRecord {
    pub tag: String,
    /// The tag did not exist in Docker before `up` built it.
    pub created: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectRecord {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub namespace: Option<String>,
    pub name: String,
    /// The object did not exist before `up` applied it.
    pub created: bool,
}

impl ObjectRecord {
    pub fn describe(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.kind, self.name),
            None => format!("{} {}", self.kind, self.name),
        }
    }

    pub fn same_object(&self, other: &ObjectRecord) -> bool {
        self.api_version == other.api_version
            && self.kind == other.kind
            && self.namespace == other.namespace
            && self.name == other.name
    }
}

impl LabState {
    pub fn new(target: StateTarget, namespace: &str) -> Self {
        LabState {
            version: STATE_VERSION,
            target,
            namespace: namespace.to_string(),
            image: None,
            objects: Vec::new(),
        }
    }

    /// Read the state file; `None` when there is none (the lab is down).
    pub fn load(path: &Path) -> Result<Option<LabState>, LabError> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(io_error(format!("reading {}", path.display()), source)),
        };
        let state: LabState = serde_json::from_str(&text).map_err(|e| {
            crate::failed(format!(
                "{}:{}: {e} (the kind lab's state file; remove it only after removing what it lists by hand)",
                path.display(),
                e.line()
            ))
        })?;
        if state.version != STATE_VERSION {
            return Err(crate::failed(format!(
                "{}: state format version {} is not {STATE_VERSION}",
                path.display(),
                state.version
            )));
        }
        Ok(Some(state))
    }

    /// Write the state file atomically (write a sibling, then rename).
    pub fn save(&self, path: &Path) -> Result<(), LabError> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)
                .map_err(|e| io_error(format!("creating {}", dir.display()), e))?;
        }
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).expect("state serializes");
        fs::write(&tmp, text + "\n")
            .map_err(|e| io_error(format!("writing {}", tmp.display()), e))?;
        fs::rename(&tmp, path).map_err(|e| {
            io_error(
                format!("renaming {} to {}", tmp.display(), path.display()),
                e,
            )
        })
    }

    pub fn remove(path: &Path) -> Result<(), LabError> {
        match fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error(format!("removing {}", path.display()), e)),
        }
    }

    /// Record an object before it is applied; an object already recorded keeps its `created`.
    pub fn record_object(&mut self, record: ObjectRecord) {
        if !self.objects.iter().any(|o| o.same_object(&record)) {
            self.objects.push(record);
        }
    }

    /// Objects `up` created, newest first: the order to delete them in.
    pub fn created_objects_newest_first(&self) -> Vec<ObjectRecord> {
        self.objects
            .iter()
            .rev()
            .filter(|o| o.created)
            .cloned()
            .collect()
    }
}

/// Where the state of a lab is kept by default: `$XDG_STATE_HOME/guardlab`, else
/// `~/.local/state/guardlab`, else a `guardlab` directory in the temporary directory.
pub fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("guardlab");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(home).join(".local/state/guardlab");
    }
    std::env::temp_dir().join("guardlab")
}

pub(crate) fn io_error(context: String, source: io::Error) -> LabError {
    LabError::Io { context, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: &str, name: &str, created: bool) -> ObjectRecord {
        ObjectRecord {
            api_version: "v1".into(),
            kind: kind.into(),
            namespace: None,
            name: name.into(),
            created,
        }
    }

    #[test]
    fn state_round_trips_and_missing_means_down() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/kind.json");
        assert_eq!(LabState::load(&path).unwrap(), None);
        let mut state = LabState::new(
            StateTarget::Kind {
                cluster: "guardlab".into(),
                created: true,
            },
            "cryptominer",
        );
        state.record_object(record("Namespace", "cryptominer", true));
        state.record_object(record("Namespace", "cryptominer", false)); // already recorded: kept
        state.record_object(record("Service", "x", false));
        state.save(&path).unwrap();
        let back = LabState::load(&path).unwrap().unwrap();
        assert_eq!(back, state);
        assert_eq!(back.objects.len(), 2);
        assert_eq!(
            back.created_objects_newest_first(),
            vec![record("Namespace", "cryptominer", true)]
        );
        LabState::remove(&path).unwrap();
        assert_eq!(LabState::load(&path).unwrap(), None);
        LabState::remove(&path).unwrap();
    }

    #[test]
    fn a_damaged_state_file_is_an_error_that_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kind.json");
        fs::write(&path, "{\"version\": 1,\n \"target\": 3}").unwrap();
        let err = LabState::load(&path).unwrap_err().to_string();
        assert!(err.contains("kind.json:2:"), "{err}");
    }
}
