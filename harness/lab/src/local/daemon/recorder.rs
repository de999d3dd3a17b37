//! The lab's state file as the daemon keeps it: in memory, written through on every change, so
//! that each resource is on disk before it is made.

use std::sync::Mutex;

use crate::LabError;
use crate::local::state::{LabState, StateFile};

/// The state file, kept in memory and written through on every change.
pub(super) struct Recorder {
    pub(super) file: StateFile,
    pub(super) state: Mutex<LabState>,
}

impl Recorder {
    pub(super) fn update(&self, change: impl FnOnce(&mut LabState)) -> Result<(), LabError> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        change(&mut state);
        self.file.save(&state)
    }
    pub(super) fn snapshot(&self) -> LabState {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
