//! A file or socket call of the backend that failed, with what it was doing: the I/O part of
//! the parts' own errors ([`crate::state::StateError`], [`crate::image::ImageError`]...), which
//! becomes [`LabError::Io`] at the lab's boundary.

use guardlab_lab_api::LabError;

/// An I/O call that failed, and what was being done (`writing /x/state.json`).
#[derive(Debug, thiserror::Error)]
#[error("{context}: {source}")]
pub struct IoFailure {
    pub context: String,
    #[source]
    pub source: std::io::Error,
}

/// `.doing(...)` on I/O results: the error says what was being done. `what` is computed only
/// on error.
pub trait Doing<T> {
    fn doing<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T, IoFailure>;
}

impl<T> Doing<T> for std::io::Result<T> {
    fn doing<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T, IoFailure> {
        self.map_err(|source| IoFailure {
            context: what().into(),
            source,
        })
    }
}

impl From<IoFailure> for LabError {
    /// The one place an I/O failure of this backend becomes the lab's I/O error.
    fn from(failure: IoFailure) -> LabError {
        LabError::Io {
            context: failure.context,
            source: failure.source,
        }
    }
}
