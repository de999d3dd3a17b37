//! `down`: remove everything a lab made, from its state file, whatever state the lab is in
//! (running, half started, daemon killed with SIGKILL, harness killed with SIGKILL).
//!
//! Order matters: first end every lab process (the daemon included, so that nothing is added
//! while we remove), then read the state again and remove what it records.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::local::cgroup;
use crate::local::state::{LabState, StateFile};
use crate::{LabError, Progress};

/// Remove the lab whose directory is `lab_dir`. Fine when there is nothing to remove.
pub fn teardown(lab_dir: &Path, progress: &dyn Progress) -> Result<(), LabError> {
    let state_file = StateFile::in_dir(lab_dir);
    let Some(state) = state_file.load()? else {
        // No state: nothing was made (the state file is written before anything else).
        remove_lab_dir(lab_dir)?;
        return Ok(());
    };
    progress.phase(&format!("removing lab {}", state.lab));
    stop_processes(&state, progress)?;
    // The daemon is gone: the state cannot change any more.
    let state = state_file.load()?.unwrap_or(state);
    remove_resources(&state, progress)?;
    // Nothing of the lab runs on its image any more: its registration goes, before the state
    // file (a crash in between leaves a state file of a lab that runs nothing, which the next
    // `down` removes; a registration left without its state file would be stale, and pruned).
    if let Some(registration) = &state.image_registration {
        progress.detail(&format!(
            "removing the lab's registration in its pod image {}",
            registration.display()
        ));
        crate::image::remove_registration(registration)?;
    }
    remove_lab_dir(lab_dir)?;
    Ok(())
}

fn stop_processes(state: &LabState, progress: &dyn Progress) -> Result<(), LabError> {
    if !state.cgroup.as_os_str().is_empty() && state.cgroup.exists() {
        let count = cgroup::pids_in_tree(&state.cgroup).len();
        if count > 0 {
            progress.detail(&format!(
                "ending {count} lab processes (cgroup {})",
                state.cgroup.display()
            ));
        }
        cgroup::kill_tree(&state.cgroup, Duration::from_secs(20))?;
    }
    // Processes recorded but somehow outside the cgroup (never expected): end them too, if
    // they are still the same processes.
    let recorded = state
        .daemon
        .iter()
        .chain(state.pods.iter().filter_map(|p| p.root.as_ref()));
    for process in recorded {
        if process.is_alive() {
            progress.detail(&format!("ending process {}", process.pid));
            // SAFETY: kill(2) of a process we recorded and checked by its start time.
            unsafe { libc::kill(process.pid as libc::pid_t, libc::SIGKILL) };
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for process in state
        .daemon
        .iter()
        .chain(state.pods.iter().filter_map(|p| p.root.as_ref()))
    {
        while process.is_alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if process.is_alive() {
            return Err(LabError::Failed(format!(
                "process {} of the lab did not end",
                process.pid
            )));
        }
    }
    Ok(())
}

fn remove_resources(state: &LabState, progress: &dyn Progress) -> Result<(), LabError> {
    let mut errors = Vec::new();
    // Host mounts: none in this design, but whatever is recorded is unmounted.
    for mount in state.host_mounts.iter().rev() {
        if is_mount_point(mount) {
            progress.detail(&format!("unmounting {}", mount.display()));
            if let Err(e) = nix::mount::umount2(mount, nix::mount::MntFlags::MNT_DETACH) {
                errors.push(format!("unmounting {}: {e}", mount.display()));
            }
        }
    }
    // Veth ends live in the lab's namespaces, which died with its processes; an end found in
    // the host's namespace under a recorded name would be ours.
    for veth in &state.veths {
        for name in [&veth.name, &veth.peer] {
            if Path::new("/sys/class/net").join(name).exists()
                && is_ours_host_veth(name, &veth.name, &veth.peer)
            {
                progress.detail(&format!("removing veth {name}"));
                let _ = std::process::Command::new("ip")
                    .args(["link", "del", name])
                    .status();
            }
        }
    }
    for pin in &state.bpf_pins {
        if pin.exists() {
            progress.detail(&format!("removing BPF pin {}", pin.display()));
            if let Err(e) = fs::remove_file(pin).or_else(|_| fs::remove_dir_all(pin)) {
                errors.push(format!("removing {}: {e}", pin.display()));
            }
        }
    }
    // cgroups: pods and daemon below the lab's, then the lab's, then the shared parent if empty.
    for pod in &state.pods {
        if let Err(e) = cgroup::remove_tree(&pod.cgroup) {
            errors.push(e.to_string());
        }
    }
    if !state.cgroup.as_os_str().is_empty() {
        if let Err(e) = cgroup::remove_tree(&state.cgroup) {
            errors.push(e.to_string());
        }
        if let Some(parent) = state.cgroup.parent() {
            cgroup::remove_if_empty(parent);
        }
    }
    for dir in state.dirs.iter().chain(state.pods.iter().map(|p| &p.dir)) {
        if dir.exists() {
            progress.detail(&format!("removing {}", dir.display()));
            // A mount left on the pod's root (the pod's mount namespace died, so none is
            // expected) would make removal fail loudly rather than cross into it.
            if let Err(e) = fs::remove_dir_all(dir) {
                errors.push(format!("removing {}: {e}", dir.display()));
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(LabError::Failed(format!(
            "lab {}: {}",
            state.lab,
            errors.join("; ")
        )))
    }
}

/// A host interface is only removed when it is a veth whose peer has the recorded name; the
/// names are fixed (`eth0`, `pod0`), so this refuses to touch the host's own `eth0`.
fn is_ours_host_veth(name: &str, a: &str, b: &str) -> bool {
    let peer = if name == a { b } else { a };
    match std::process::Command::new("ip")
        .args(["-o", "-d", "link", "show", "dev", name])
        .output()
    {
        Ok(output) => {
            let text = String::from_utf8_lossy(&output.stdout);
            text.contains(&format!("{name}@{peer}")) && text.contains(" veth ")
        }
        Err(_) => false,
    }
}

fn is_mount_point(path: &Path) -> bool {
    let Ok(text) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    text.lines().any(|line| {
        line.split_whitespace()
            .nth(4)
            .map(cgroup::unescape_mountinfo)
            .as_deref()
            == Some(&path.display().to_string())
    })
}

fn remove_lab_dir(lab_dir: &Path) -> Result<(), LabError> {
    match fs::remove_dir_all(lab_dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(LabError::Io {
            context: format!("removing {}", lab_dir.display()),
            source,
        }),
    }
}
