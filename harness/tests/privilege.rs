//! Lab commands need root. Run by someone else, guardlab says why and re-runs itself through
//! sudo; when that cannot work it says so and exits 2 instead of failing deep in a syscall.
//! These tests drop to `nobody` with setpriv, so they need root themselves (CI is root).
#![allow(unsafe_code)] // tests make the system calls they check (geteuid, kill, mount, setns...)

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn guardlab_copy_for_nobody(dir: &std::path::Path) -> std::path::PathBuf {
    // The build directory may sit under a 0700 home: give `nobody` a copy it can execute.
    let copy = dir.join("guardlab");
    std::fs::copy(assert_cmd::cargo::cargo_bin("guardlab"), &copy).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    copy
}

fn as_nobody(guardlab: &std::path::Path, path: &str, env: &[(&str, &str)]) -> std::process::Output {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "this test drops to `nobody` and needs root to do so: run it with sudo"
    );
    // Absolute: the PATH given to the child below is also where a bare name would be looked up.
    let mut cmd = Command::new("/usr/bin/setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(guardlab)
        .args(["lab", "status"])
        .env_clear()
        .env("PATH", path);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("running setpriv (util-linux)")
}

#[test]
fn without_root_it_says_why_and_tries_sudo() {
    let dir = tempfile::tempdir().unwrap();
    let guardlab = guardlab_copy_for_nobody(dir.path());
    // No sudo on this PATH: the re-run cannot happen, and guardlab must say so.
    let out = as_nobody(&guardlab, dir.path().to_str().unwrap(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("needs root"), "{stderr}");
    assert!(stderr.contains("re-running through sudo"), "{stderr}");
    assert!(stderr.contains("could not run sudo"), "{stderr}");
}

#[test]
fn a_sudo_that_gives_no_root_does_not_loop() {
    let dir = tempfile::tempdir().unwrap();
    let guardlab = guardlab_copy_for_nobody(dir.path());
    let out = as_nobody(&guardlab, "/usr/bin:/bin", &[("GUARDLAB_SUDO_RERUN", "1")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("running through sudo did not give it"),
        "{stderr}"
    );
}
