//! Files a test keeps for people to look at: CI uploads the directory named by
//! `$GUARDLAB_TEST_ARTIFACTS`.

use std::path::{Path, PathBuf};

use crate::BrowserTestError;

/// Environment variable naming the directory CI uploads as the run's artifacts.
pub const ARTIFACTS_ENV: &str = "GUARDLAB_TEST_ARTIFACTS";

/// The directory files of the group `group` (a test's name) are copied to, when
/// [`ARTIFACTS_ENV`] names one.
pub fn artifacts_dir(group: &str) -> Option<PathBuf> {
    let root = std::env::var_os(ARTIFACTS_ENV).filter(|v| !v.is_empty())?;
    Some(PathBuf::from(root).join(group))
}

/// Copies `file` to `$GUARDLAB_TEST_ARTIFACTS/<group>/` when that variable is set; returns
/// the copy's path.
pub fn keep(file: &Path, group: &str) -> Result<Option<PathBuf>, BrowserTestError> {
    match artifacts_dir(group) {
        Some(dir) => keep_in(file, &dir).map(Some),
        None => Ok(None),
    }
}

fn keep_in(file: &Path, dir: &Path) -> Result<PathBuf, BrowserTestError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| BrowserTestError::io(format!("creating {}", dir.display()), e))?;
    let name = file.file_name().ok_or_else(|| {
        BrowserTestError::io(
            format!("keeping {}", file.display()),
            std::io::Error::other("not a file name"),
        )
    })?;
    let copy = dir.join(name);
    std::fs::copy(file, &copy).map_err(|e| {
        BrowserTestError::io(
            format!("copying {} to {}", file.display(), copy.display()),
            e,
        )
    })?;
    Ok(copy)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_kept_file_is_copied_into_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("graph.png");
        std::fs::write(&file, b"png").unwrap();
        let group = dir.path().join("artifacts/console_test");
        let copy = super::keep_in(&file, &group).unwrap();
        assert_eq!(copy, group.join("graph.png"));
        assert_eq!(std::fs::read(copy).unwrap(), b"png");
    }
}
