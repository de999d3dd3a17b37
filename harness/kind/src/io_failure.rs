//! A file or socket call of the backend that failed, with what it was doing: the I/O part of
//! the parts' own errors ([`crate::state::StateError`], [`crate::image::ImageError`]...), which
//! becomes [`LabError::Io`] at the lab's boundary.

use std::convert::Infallible;

use guardlab_lab_api::{IoContext, LabError};

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
    /// Through the lab's own [`IoContext`], as every I/O error of a lab becomes a [`LabError`].
    fn from(failure: IoFailure) -> LabError {
        let Err(error) = Err::<Infallible, _>(failure.source).context(|| failure.context);
        error
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn an_io_failure_becomes_the_labs_io_error_with_what_it_was_doing() {
        let missing = std::fs::read("/nonexistent/guardlab/state.json")
            .doing(|| "reading /nonexistent/guardlab/state.json")
            .unwrap_err();
        let text = missing.to_string();
        let err = LabError::from(missing);
        assert!(
            matches!(&err, LabError::Io { context, .. } if context == "reading /nonexistent/guardlab/state.json"),
            "{err:?}"
        );
        assert_eq!(err.to_string(), text);
        assert!(err.source().is_some());
    }
}
