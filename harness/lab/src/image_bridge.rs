//! Bridge: image errors. The image module's error type while it has no typed error of its own
//! (renovation, issue 12: the image module gets its `ImageError`, converted into [`LabError`]
//! where the local backend calls it). It keeps the variants the image module builds today, so
//! that the image module compiles unchanged against the lab API's [`LabError`], which has no
//! free-text variant. Remove this module when the image module no longer names it.

use crate::LabError;

/// What the image module's functions return until it has its own typed error.
#[derive(Debug, thiserror::Error)]
pub enum LegacyImageError {
    /// Something the image build needs is not on this machine.
    #[error("{what} is missing: {hint}")]
    Missing { what: String, hint: String },
    /// The image could not be built, found or registered (the message says which and why).
    #[error("{0}")]
    Failed(String),
    /// A file or system call failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// Something the host lacks and guardlab did not (or may not) install.
    #[error(transparent)]
    Host(#[from] guardlab_host::HostError),
}

impl From<LegacyImageError> for LabError {
    fn from(error: LegacyImageError) -> LabError {
        match error {
            LegacyImageError::Missing { what, hint } => LabError::Missing { what, hint },
            LegacyImageError::Io { context, source } => LabError::Io { context, source },
            LegacyImageError::Host(host) => LabError::Host(host),
            failed @ LegacyImageError::Failed(_) => LabError::backend("the pod image", failed),
        }
    }
}
