//! The lab's state file as the daemon keeps it: in memory, written through on every change, so
//! that each resource is on disk before it is made.

use std::sync::Mutex;

use crate::LabError;
use crate::local::state::{LabState, StateFile};

/// The state file, kept in memory and written through on every change. Once closed (the
/// daemon removes its lab), every change is refused: since each resource is recorded before it
/// is made, nothing new is made after that.
pub(super) struct Recorder {
    pub(super) file: StateFile,
    pub(super) state: Mutex<Recording>,
}

/// The state and whether it may still change.
pub(super) struct Recording {
    pub(super) state: LabState,
    pub(super) closed: bool,
}

/// A change after [`Recorder::close`] (part "the lab daemon" of a [`LabError`]).
#[derive(Debug, thiserror::Error)]
#[error("the lab is being removed: nothing more is made")]
pub(super) struct Closed;

impl From<Closed> for LabError {
    fn from(error: Closed) -> LabError {
        LabError::backend("the lab daemon", error)
    }
}

impl Recorder {
    pub(super) fn new(file: StateFile, state: LabState) -> Recorder {
        Recorder {
            file,
            state: Mutex::new(Recording {
                state,
                closed: false,
            }),
        }
    }

    pub(super) fn update(&self, change: impl FnOnce(&mut LabState)) -> Result<(), LabError> {
        let mut recording = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if recording.closed {
            return Err(Closed.into());
        }
        change(&mut recording.state);
        self.file.save(&recording.state)
    }

    pub(super) fn snapshot(&self) -> LabState {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .state
            .clone()
    }

    /// Records `phase` (what `status` says meanwhile), then refuses every later change.
    pub(super) fn close(&self, phase: String) -> Result<(), LabError> {
        let mut recording = self.state.lock().unwrap_or_else(|e| e.into_inner());
        recording.closed = true;
        recording.state.phase = phase;
        self.file.save(&recording.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::state::STATE_VERSION;

    #[test]
    fn a_closed_recorder_refuses_every_change() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::in_dir(dir.path());
        let recorder = Recorder::new(
            file.clone(),
            LabState {
                version: STATE_VERSION,
                lab: "t".into(),
                phase: "ready".into(),
                ..Default::default()
            },
        );
        recorder.update(|s| s.dirs.push("/a".into())).unwrap();
        recorder.close("removing: test".into()).unwrap();
        let err = recorder
            .update(|s| s.dirs.push("/b".into()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("being removed"), "{err}");
        let saved = file.load().unwrap().unwrap();
        assert_eq!(saved.dirs, [std::path::PathBuf::from("/a")]);
        assert_eq!(saved.phase, "removing: test");
        assert_eq!(recorder.snapshot(), saved);
    }
}
