//! What the integration tests stand up instead of a cluster and a machine's tools: a fake
//! Kubernetes API server, a fake sensor behind it, and stand-in executables. Each test binary
//! uses a part of it.
#![allow(dead_code)]

pub mod fake_api;
pub mod fake_sensor;

use std::path::Path;

/// Write an executable script from another process, so that no file descriptor open for
/// writing is inherited by a concurrent test's fork (which would make exec fail with ETXTBSY).
pub fn write_script(path: &Path, content: &str) {
    let status = std::process::Command::new("sh")
        .args([
            "-c",
            "printf '%s' \"$1\" > \"$2\" && chmod 755 \"$2\"",
            "sh",
            content,
        ])
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}
