//! The lab package index's wheels as `up` needs them: the lock that pins them
//! (`manifests/image/index-wheels.lock`), the cache directory of that lock, and what is not
//! fetched yet.

use std::path::{Path, PathBuf};

use super::LocalLab;
use crate::LabError;

impl LocalLab {
    /// The lock of the lab index's wheels (`manifests/image/index-wheels.lock`), and its path.
    pub(super) fn index_lock(&self) -> Result<(PathBuf, guardlab_services::PythonLock), LabError> {
        let lock_path = self
            .options
            .manifests_dir
            .join("image")
            .join(guardlab_services::INDEX_LOCK_FILE);
        let lock = guardlab_services::PythonLock::read(&lock_path).map_err(error)?;
        Ok((lock_path, lock))
    }

    /// Exactly the wheels the lock pins, in a directory of that lock's own: what an older lock
    /// (or a person) left elsewhere is never served.
    pub(super) fn wheels_dir(cache: &Path, lock: &guardlab_services::PythonLock) -> PathBuf {
        cache.join("wheels").join(&lock.sha256[..12])
    }

    /// The pins of the lab index that have no wheel in the cache yet.
    pub(super) fn missing_wheels(&self) -> Result<Vec<String>, LabError> {
        let (_, lock) = self.index_lock()?;
        guardlab_services::missing_pins(
            &Self::wheels_dir(&self.options.services_cache_dir, &lock),
            &lock,
        )
        .map_err(error)
    }
}

/// A failure of the lab's package index (its lock, its wheels) as the lab's error.
pub(super) fn error(error: guardlab_services::ServicesError) -> LabError {
    LabError::backend("the lab's package index", error)
}
