//! The lab needs root (namespaces, cgroups, eBPF). Rather than fail deep inside a syscall,
//! guardlab says so up front and re-runs itself through `sudo`.
#![allow(unsafe_code)] // geteuid(2)

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Set in the environment of the re-run, so that a sudo that does not make us root cannot loop.
const RERUN_MARK: &str = "GUARDLAB_SUDO_RERUN";

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Make sure we are root: return when we are, otherwise replace this process with
/// `sudo <this program> <same args>`. Returns an error (for exit code 2) when that cannot work.
pub fn ensure_root(why: &str) -> anyhow::Result<()> {
    if is_root() {
        return Ok(());
    }
    if std::env::var_os(RERUN_MARK).is_some() {
        anyhow::bail!("{why} needs root, and running through sudo did not give it; run it as root");
    }
    let exe = std::env::current_exe().map_err(|e| {
        anyhow::anyhow!("{why} needs root; cannot find this program to re-run it through sudo: {e}")
    })?;
    crate::console::note(&format!(
        "{why} needs root (namespaces, cgroups and eBPF); re-running through sudo"
    ));
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let err = Command::new("sudo")
        .arg("--preserve-env")
        .arg(format!("{RERUN_MARK}=1"))
        .arg("--")
        .arg(exe)
        .args(args)
        .exec();
    anyhow::bail!("{why} needs root; could not run sudo ({err}); run it as root")
}
