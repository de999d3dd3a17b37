//! `down`: remove everything a lab made, from its state file, whatever state the lab is in
//! (running, half started, daemon killed with SIGKILL, harness killed with SIGKILL).
//!
//! Order matters: first end every lab process (the daemon included, so that nothing is added
//! while we remove), then read the state again and remove what it records.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::local::cgroup;
use crate::local::state::{LabLock, LabState, StateFile};
use crate::{IoContext, LabError, Progress};

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

/// A lab that left its state file in a labs directory: up, coming up, or left behind by a
/// killed harness.
#[derive(Debug)]
pub struct LeftoverLab {
    /// The lab's directory (`<labs dir>/<lab>`).
    pub dir: PathBuf,
    /// Its state, or why it could not be read.
    pub state: Result<LabState, String>,
}

/// The labs in `labs_dir`, found the way `lab status` and `lab down` find one: by its state
/// file, `<labs dir>/<lab>/state.json`. A directory without one is not a lab (guardlab's own
/// cgroup v2 mount point may be there too) and is not listed. Sorted by directory.
pub fn leftover_labs(labs_dir: &Path) -> Result<Vec<LeftoverLab>, LabError> {
    let entries = match fs::read_dir(labs_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).context(|| format!("reading {}", labs_dir.display())),
    };
    let mut labs = Vec::new();
    for entry in entries.flatten() {
        let dir = entry.path();
        // A symbolic link is nobody's lab directory: never follow one out of the labs dir.
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let file = StateFile::in_dir(&dir);
        match fs::symlink_metadata(file.path()) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            // A lab directory is root's alone (0700): say so rather than miss the lab.
            Err(e) => {
                labs.push(LeftoverLab {
                    state: Err(format!("reading {}: {e}", file.path().display())),
                    dir,
                });
                continue;
            }
        }
        let state = match file.load() {
            Ok(Some(state)) => Ok(state),
            Ok(None) => continue,
            Err(e) => Err(e.to_string()),
        };
        labs.push(LeftoverLab { dir, state });
    }
    labs.sort_by(|a, b| a.dir.cmp(&b.dir));
    Ok(labs)
}

/// Removes the lab in `lab_dir` as `lab down` does (under the lab's lock, so never while its
/// `up` runs), whatever its name.
pub fn remove_lab(lab_dir: &Path, progress: &dyn Progress) -> Result<(), LabError> {
    let _lock = LabLock::acquire(lab_dir)?;
    teardown(lab_dir, progress)
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
            // Through a pidfd of the recorded process: a pid reused since is never hit. It
            // may end by itself meanwhile, which is what we want anyway.
            let _ = process.kill();
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
            return Err(LabError::Timeout {
                what: format!("the end of lab process {}", process.pid),
                limit: Duration::from_secs(10),
                detail: "it is still there after SIGKILL".into(),
            });
        }
    }
    Ok(())
}

/// What `down` could not remove of a lab (the part of a [`LabError`] names the lab).
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct LeftBehind(pub Vec<Leftover>);

/// One thing `down` could not remove.
#[derive(Debug, thiserror::Error)]
pub enum Leftover {
    /// A mount in the host's mount namespace.
    #[error("unmounting {}: {error}", path.display())]
    Mount {
        path: PathBuf,
        error: nix::errno::Errno,
    },
    /// A file or directory (a BPF pin, a pod's directory).
    #[error("removing {}: {error}", path.display())]
    File {
        path: PathBuf,
        error: std::io::Error,
    },
    /// A cgroup of the lab.
    #[error("{0}")]
    Cgroup(LabError),
}

fn remove_resources(state: &LabState, progress: &dyn Progress) -> Result<(), LabError> {
    let mut errors = Vec::new();
    // Host mounts: none in this design, but whatever is recorded is unmounted.
    for mount in state.host_mounts.iter().rev() {
        if is_mount_point(mount) {
            progress.detail(&format!("unmounting {}", mount.display()));
            if let Err(e) = nix::mount::umount2(mount, nix::mount::MntFlags::MNT_DETACH) {
                errors.push(Leftover::Mount {
                    path: mount.clone(),
                    error: e,
                });
            }
        }
    }
    // Veth ends live in the lab's namespaces, which died with its processes; an end found in
    // the host's namespace under a recorded name would be ours.
    for veth in &state.veths {
        for name in [&veth.name, &veth.peer] {
            if !Path::new("/sys/class/net").join(name).exists() {
                continue;
            }
            let Some(ip) = crate::local::netns::ip_program() else {
                progress.detail(&format!(
                    "not checking the host's {name}: `ip` (Debian package iproute2) is missing"
                ));
                continue;
            };
            if is_ours_host_veth(&ip, name, &veth.name, &veth.peer) {
                progress.detail(&format!("removing veth {name}"));
                let _ = std::process::Command::new(&ip)
                    .args(["link", "del", name])
                    .status();
            }
        }
    }
    for pin in &state.bpf_pins {
        if pin.exists() {
            progress.detail(&format!("removing BPF pin {}", pin.display()));
            if let Err(e) = fs::remove_file(pin).or_else(|_| fs::remove_dir_all(pin)) {
                errors.push(Leftover::File {
                    path: pin.clone(),
                    error: e,
                });
            }
        }
    }
    // cgroups: pods and daemon below the lab's, then the lab's, then the shared parent if empty.
    for pod in &state.pods {
        for dir in std::iter::once(&pod.cgroup).chain(&pod.v1_cgroups) {
            if let Err(e) = cgroup::remove_tree(dir) {
                errors.push(Leftover::Cgroup(e));
            }
        }
    }
    // The same in cgroup v1 hierarchies (empty once the lab's processes are gone).
    for dir in &state.v1_cgroups {
        if let Err(e) = cgroup::remove_tree(dir) {
            errors.push(Leftover::Cgroup(e));
        }
        if let Some(parent) = dir.parent() {
            cgroup::remove_if_empty(parent);
        }
    }
    if !state.cgroup.as_os_str().is_empty() {
        if let Err(e) = cgroup::remove_tree(&state.cgroup) {
            errors.push(Leftover::Cgroup(e));
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
                errors.push(Leftover::File {
                    path: dir.clone(),
                    error: e,
                });
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(LabError::backend(
            format!("lab {}", state.lab),
            LeftBehind(errors),
        ))
    }
}

/// A host interface is only removed when it is a veth whose peer has the recorded name; the
/// names are fixed (`eth0`, `pod0`), so this refuses to touch the host's own `eth0`.
fn is_ours_host_veth(ip: &Path, name: &str, a: &str, b: &str) -> bool {
    let peer = if name == a { b } else { a };
    match std::process::Command::new(ip)
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
    guardlab_host::mounts().is_ok_and(|mounts| mounts.iter().any(|m| m.target == path))
}

fn remove_lab_dir(lab_dir: &Path) -> Result<(), LabError> {
    match fs::remove_dir_all(lab_dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).context(|| format!("removing {}", lab_dir.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::state::STATE_VERSION;

    #[test]
    fn leftover_labs_are_the_directories_with_a_state_file() {
        let labs = tempfile::tempdir().unwrap();
        let save = |dir: &Path, version: u32| {
            fs::create_dir_all(dir).unwrap();
            StateFile::in_dir(dir)
                .save(&LabState {
                    version,
                    lab: "x".into(),
                    phase: "ready".into(),
                    ..Default::default()
                })
                .unwrap();
        };
        save(&labs.path().join("b-lab"), STATE_VERSION);
        save(&labs.path().join("a-newer"), 99);
        // Not labs: a directory without a state file (a mount point), a file, a link to a lab
        // somewhere else.
        fs::create_dir(labs.path().join("cgroup2")).unwrap();
        fs::write(labs.path().join("notes"), "").unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        save(&elsewhere.path().join("c"), STATE_VERSION);
        std::os::unix::fs::symlink(elsewhere.path().join("c"), labs.path().join("c-link")).unwrap();

        let found = leftover_labs(labs.path()).unwrap();
        let names: Vec<_> = found
            .iter()
            .map(|l| l.dir.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a-newer", "b-lab"]);
        assert!(
            found[0]
                .state
                .as_ref()
                .is_err_and(|e| e.contains("state version 99")),
            "{:?}",
            found[0].state
        );
        assert_eq!(found[1].state.as_ref().unwrap().phase, "ready");

        assert!(
            leftover_labs(&labs.path().join("none")).unwrap().is_empty(),
            "no labs directory: no labs"
        );
    }
}
