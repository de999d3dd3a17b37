//! `guardlab scenario NAME --out DIR`: the run's documents as files a person can take away and
//! use with spyctl, unredacted (the snapshots replace run-specific values with placeholders
//! such as `[time]`, which spyctl refuses).
//!
//! One spyctl document per file (spyctl reads one per file):
//!
//! ```text
//! DIR/fingerprints/group-1-minimal-notebook.yaml    FingerprintGroup, one per image
//! DIR/fingerprints/fingerprint-1-<name>.yaml       SpyderbatFingerprint, one per container
//! DIR/policy/1-create-policy.yaml                  SpyderbatPolicy as made, then as it stands
//! DIR/policy/2-enforce.yaml                        after each step that changes it (mode, enabled)
//! DIR/deviations/01-process-13da25e60f410f66.yaml  GuardianDeviation, one per unique deviation
//! DIR/trace.yaml, DIR/trace.txt                    the investigation (not a spyctl kind)
//! ```
//!
//! The directory must be new or empty, so that no file of another run is mistaken for one of
//! this run, and nothing is overwritten.

use std::path::{Path, PathBuf};

use guardlab_engine::deviation::DeviationReport;
use guardlab_engine::document::{self, Document};
use guardlab_engine::fingerprint::fingerprints_of_groups;
use guardlab_engine::model::{FingerprintGroup, Policy};
use guardlab_engine::trace::Investigation;

/// Why `--out` could not write.
#[derive(Debug, thiserror::Error)]
pub enum OutError {
    #[error(
        "--out {dir}: the directory holds files already; give a new or empty directory (nothing is overwritten)"
    )]
    NotEmpty { dir: PathBuf },
    #[error("--out: cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--out: cannot write the investigation as YAML: {0}")]
    Trace(#[from] serde_yaml::Error),
}

/// Writes a run's documents under one directory.
#[derive(Debug)]
pub struct DocumentsOut {
    dir: PathBuf,
    /// Policies written so far (their files are numbered).
    policies: usize,
}

impl DocumentsOut {
    /// Makes `dir` (and its parents) when missing; refuses one that holds anything.
    pub fn create(dir: &Path) -> Result<DocumentsOut, OutError> {
        let io = |action, source| OutError::Io {
            action,
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(|e| io("create", e))?;
        if std::fs::read_dir(dir)
            .map_err(|e| io("read", e))?
            .next()
            .is_some()
        {
            return Err(OutError::NotEmpty {
                dir: dir.to_path_buf(),
            });
        }
        Ok(DocumentsOut {
            dir: dir.to_path_buf(),
            policies: 0,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn write(&self, part: &str, name: &str, text: &str) -> Result<PathBuf, OutError> {
        let dir = self.dir.join(part);
        std::fs::create_dir_all(&dir).map_err(|source| OutError::Io {
            action: "create",
            path: dir.clone(),
            source,
        })?;
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|source| OutError::Io {
            action: "write",
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }

    /// The policy as it stands after `step` made or changed it.
    pub fn policy(&mut self, step: &str, policy: &Policy) -> Result<PathBuf, OutError> {
        self.policies += 1;
        let name = format!("{}-{}.yaml", self.policies, file_name_part(step));
        self.write(
            "policy",
            &name,
            &document::to_yaml(&Document::Policy(policy.clone())),
        )
    }

    /// What the run learned and found, at its end: the fingerprints, every unique deviation,
    /// and the investigation. Returns the files written.
    pub fn finish(
        &self,
        groups: &[FingerprintGroup],
        deviations: Option<&DeviationReport>,
        investigation: Option<&Investigation>,
    ) -> Result<Vec<PathBuf>, OutError> {
        let mut written = Vec::new();
        for (i, group) in groups.iter().enumerate() {
            let image = group.metadata.image.rsplit('/').next().unwrap_or_default();
            let image = image.split([':', '@']).next().unwrap_or_default();
            written.push(self.write(
                "fingerprints",
                &format!("group-{}-{}.yaml", i + 1, file_name_part(image)),
                &document::to_yaml(&Document::FingerprintGroup(group.clone())),
            )?);
        }
        // Numbered: containers of one image may share a name.
        for (i, fingerprint) in fingerprints_of_groups(groups).into_iter().enumerate() {
            let name = format!(
                "fingerprint-{}-{}.yaml",
                i + 1,
                file_name_part(&fingerprint.metadata.name)
            );
            written.push(self.write(
                "fingerprints",
                &name,
                &document::to_yaml(&Document::Fingerprint(fingerprint)),
            )?);
        }
        if let Some(report) = deviations {
            for (i, deviation) in report.deviations().enumerate() {
                let uid = deviation.metadata.uid.as_deref().unwrap_or("no-uid");
                let uid = uid.strip_prefix("dev:").unwrap_or(uid);
                let name = format!(
                    "{:02}-{}-{}.yaml",
                    i + 1,
                    deviation.metadata.kind.as_str(),
                    file_name_part(uid)
                );
                written.push(self.write(
                    "deviations",
                    &name,
                    &document::to_yaml(&Document::Deviation(deviation.clone())),
                )?);
            }
        }
        if let Some(investigation) = investigation {
            let yaml = serde_yaml::to_string(investigation)?;
            written.push(self.write(".", "trace.yaml", &yaml)?);
            written.push(self.write(".", "trace.txt", &investigation.render_text())?);
        }
        Ok(written)
    }
}

/// A name as a part of a file name: letters, digits, `.`, `_` and `-`; anything else `-`.
fn file_name_part(name: &str) -> String {
    let part: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    match part.trim_start_matches('.') {
        "" => "unnamed".to_string(),
        p => p.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_safe_file_name_parts() {
        assert_eq!(file_name_part("create-policy"), "create-policy");
        assert_eq!(file_name_part("a/b c:d"), "a-b-c-d");
        assert_eq!(file_name_part("../x"), "-x");
        assert_eq!(file_name_part(".."), "unnamed");
        assert_eq!(file_name_part(""), "unnamed");
    }

    #[test]
    fn a_directory_with_files_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("keep.txt"), "mine").unwrap();
        let err = DocumentsOut::create(dir.path()).unwrap_err();
        assert!(matches!(err, OutError::NotEmpty { .. }), "{err}");
        assert!(err.to_string().contains("nothing is overwritten"), "{err}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("keep.txt")).unwrap(),
            "mine"
        );
        // A new directory, parents and all, is made.
        let new = dir.path().join("a/b");
        DocumentsOut::create(&new).unwrap();
        assert!(new.is_dir());
    }
}
