//! When `up` fails after it applied objects: remove what this run created, and say in the
//! error what was removed and what was kept ([`UpUndone`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use guardlab_lab_api::{LabError, Progress};
use kube::Client;

use crate::k8s::{ClusterError, delete_objects};
use crate::state::{LabState, ObjectRecord, StateError, StateTarget};

/// `up` failed (`cause`) and removed what it had created (or could not: `cleanup` says which).
#[derive(Debug, thiserror::Error)]
#[error("{cause}{cleanup}{}", kept_text(kept_cluster))]
pub struct UpUndone {
    #[source]
    pub cause: LabError,
    pub cleanup: Cleanup,
    /// The kind cluster a run of `up` created: kept for another try.
    pub kept_cluster: Option<String>,
}

/// What became of the objects this run created.
#[derive(Debug)]
pub enum Cleanup {
    /// Removed (none, when `removed` is empty); `state_file`: the state file could not be
    /// brought up to date afterwards.
    Removed {
        removed: Vec<String>,
        state_file: Option<StateError>,
    },
    /// Removing them failed too: `down` retries, from the state file.
    Failed {
        error: ClusterError,
        state_file: PathBuf,
    },
}

impl fmt::Display for Cleanup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cleanup::Removed {
                removed,
                state_file,
            } => {
                if let Some(e) = state_file {
                    write!(f, "; and the state file: {e}")?;
                }
                if removed.is_empty() {
                    write!(f, "; this run created no object")
                } else {
                    write!(f, "; removed what this run created: {}", removed.join(", "))
                }
            }
            Cleanup::Failed { error, state_file } => write!(
                f,
                "; removing what this run created failed too ({error}); `guardlab lab down --backend kind` \
                 retries, from {}",
                state_file.display()
            ),
        }
    }
}

fn kept_text(cluster: &Option<String>) -> String {
    match cluster {
        Some(cluster) => format!(
            "; the kind cluster {cluster} is kept for another try (`guardlab lab down --backend kind` removes it)"
        ),
        None => String::new(),
    }
}

impl From<UpUndone> for LabError {
    fn from(error: UpUndone) -> LabError {
        LabError::backend("bringing the kind lab up", error)
    }
}

/// What [`undo`] needs to know of the lab.
pub(crate) struct Undo<'a> {
    pub(crate) client: &'a Client,
    pub(crate) state_file: &'a Path,
    pub(crate) delete_timeout: Duration,
    pub(crate) poll: Duration,
}

/// Remove the objects this run created (`created_now`, oldest first) after `cause`, and bring
/// the state file up to date: removed when nothing it records is guardlab's any more.
pub(crate) async fn undo(
    lab: Undo<'_>,
    state: &mut LabState,
    created_now: &[ObjectRecord],
    cause: LabError,
    progress: &dyn Progress,
) -> UpUndone {
    progress.phase("removing what this run applied");
    let newest_first: Vec<ObjectRecord> = created_now.iter().rev().cloned().collect();
    let deleted = delete_objects(
        lab.client,
        &newest_first,
        lab.delete_timeout,
        lab.poll,
        progress,
    )
    .await;
    let cleanup = match deleted {
        Ok(()) => {
            state
                .objects
                .retain(|o| !created_now.iter().any(|c| c.same_object(o)));
            let nothing_left = state.objects.iter().all(|o| !o.created)
                && state.image.as_ref().is_none_or(|i| !i.created)
                && !matches!(state.target, StateTarget::Kind { created: true, .. });
            let saved = if nothing_left {
                LabState::remove(lab.state_file)
            } else {
                state.save(lab.state_file)
            };
            Cleanup::Removed {
                removed: newest_first.iter().map(ObjectRecord::describe).collect(),
                state_file: saved.err(),
            }
        }
        Err(error) => Cleanup::Failed {
            error,
            state_file: lab.state_file.to_path_buf(),
        },
    };
    let kept_cluster = match &state.target {
        StateTarget::Kind {
            cluster,
            created: true,
        } => Some(cluster.clone()),
        _ => None,
    };
    UpUndone {
        cause,
        cleanup,
        kept_cluster,
    }
}
