//! cgroup v2 directories for the lab: `<cgroup2 mount>/guardlab/<lab>/{daemon,<pod>}`.
//!
//! Every lab process is born in one of them (the daemon joins before it execs, pods are cloned
//! straight into theirs), so `cgroup.kill` on the lab's directory ends every lab process at once.

use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::LabError;

/// Where cgroup v2 is mounted on this host (`/sys/fs/cgroup` on most systems,
/// `/sys/fs/cgroup/unified` on hybrid ones, guardlab's own mount on hosts that had none), as the
/// host crate finds it. `lab up` makes sure there is one first ([`guardlab_host::Host::ensure_cgroup2`]).
pub fn cgroup2_mount() -> Result<PathBuf, LabError> {
    guardlab_host::cgroup2_mount()?.ok_or_else(|| LabError::Missing {
        what: "a cgroup v2 mount".into(),
        hint: format!(
            "`guardlab lab up` mounts one at {} (unless --no-install); or mount it yourself: \
             `mount -t cgroup2 none /sys/fs/cgroup/unified`",
            guardlab_host::OWN_CGROUP2_MOUNT
        ),
    })
}

/// The lab's cgroup directory under the cgroup v2 mount `cgroup2` (not created).
pub fn lab_cgroup(cgroup2: &Path, lab: &str) -> PathBuf {
    cgroup2.join("guardlab").join(lab)
}

/// Create a cgroup directory (and its parents); fine when it exists.
pub fn create(path: &Path) -> Result<(), LabError> {
    fs::create_dir_all(path).map_err(|source| LabError::Io {
        context: format!("creating cgroup {}", path.display()),
        source,
    })
}

/// The cgroup id the kernel (and the sensor) use: the inode number of the directory.
pub fn cgroup_id(path: &Path) -> Result<u64, LabError> {
    fs::metadata(path)
        .map(|m| m.ino())
        .map_err(|source| LabError::Io {
            context: format!("reading cgroup {}", path.display()),
            source,
        })
}

/// Pids in a cgroup and all its descendants.
pub fn pids_in_tree(path: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
            pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        if let Ok(entries) = fs::read_dir(&dir) {
            for entry in entries.flatten() {
                if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    stack.push(entry.path());
                }
            }
        }
    }
    pids
}

/// Is any process left in the tree (`populated` of `cgroup.events`)?
fn populated(path: &Path) -> bool {
    match fs::read_to_string(path.join("cgroup.events")) {
        Ok(text) => text.lines().any(|l| l.trim() == "populated 1"),
        Err(_) => false,
    }
}

/// Kill every process of a cgroup tree and wait until it is empty. Fine when it does not exist.
pub fn kill_tree(path: &Path, timeout: Duration) -> Result<(), LabError> {
    if !path.exists() {
        return Ok(());
    }
    let deadline = Instant::now() + timeout;
    loop {
        if !populated(path) {
            return Ok(());
        }
        let kill_file = path.join("cgroup.kill");
        if kill_file.exists() {
            // Ends every process of the tree, also ones forking while we kill (kernel 5.14+).
            let _ = fs::write(&kill_file, "1");
        } else {
            for pid in pids_in_tree(path) {
                // SAFETY: kill(2) with a pid read from the cgroup.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        }
        if Instant::now() > deadline {
            return Err(LabError::Failed(format!(
                "processes {:?} of cgroup {} did not end within {timeout:?}",
                pids_in_tree(path),
                path.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The process group of a process (`pgrp`, field 5 of `/proc/<pid>/stat`), as this host's pid
/// namespace numbers it. `None` when the process is gone.
pub fn process_group(pid: u32) -> Option<u32> {
    stat_state_and_group(pid).map(|(_, group)| group)
}

/// The process group of a process that has not ended (a zombie has nothing left to kill).
fn live_process_group(pid: u32) -> Option<u32> {
    stat_state_and_group(pid)
        .filter(|(state, _)| !matches!(state, 'Z' | 'X' | 'x'))
        .map(|(_, group)| group)
}

fn stat_state_and_group(pid: u32) -> Option<(char, u32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid pgrp ...`: the command name may contain spaces and parentheses.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?.chars().next()?;
    let group = fields.nth(1)?.parse().ok()?;
    Some((state, group))
}

/// A process held by a pidfd: a signal through it reaches that process or nothing, never a
/// process that reused its pid.
struct HeldProcess {
    pid: u32,
    fd: OwnedFd,
}

impl HeldProcess {
    fn open(pid: u32) -> Option<HeldProcess> {
        // SAFETY: pidfd_open(2) with no flags returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            return None;
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        Some(HeldProcess {
            pid,
            fd: unsafe { OwnedFd::from_raw_fd(fd as i32) },
        })
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: pidfd_send_signal(2) on a pidfd we own, without siginfo.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
    }
}

/// Kill the process group of `pid` with SIGKILL, limited to the processes of the cgroup tree
/// `tree` (a pod's cgroup): a member of the group outside the tree is never signalled, so a
/// group shared with the runtime that started the pod cannot take the runtime with it.
/// Returns the host pids that were killed, in ascending order.
///
/// Every member is first stopped (SIGSTOP) and the tree scanned again until no new member
/// shows up, so that nothing forks a new member while the group is killed. Each process is
/// held by a pidfd opened before it is checked, so a pid reused in between is never hit.
pub fn kill_group_in_tree(tree: &Path, pid: u32) -> Result<Vec<u32>, LabError> {
    if !pids_in_tree(tree).contains(&pid) {
        return Err(LabError::Failed(format!(
            "process {pid} is not in cgroup {}",
            tree.display()
        )));
    }
    let pgid = live_process_group(pid).filter(|g| *g != 0).ok_or_else(|| {
        LabError::Failed(format!("process {pid} ended before it could be killed"))
    })?;
    let mut members: Vec<HeldProcess> = Vec::new();
    for _ in 0..100 {
        let candidates: Vec<HeldProcess> = pids_in_tree(tree)
            .into_iter()
            .filter(|p| !members.iter().any(|m| m.pid == *p))
            .filter_map(HeldProcess::open)
            .collect();
        // Checked after the pidfd was opened: what passes is the process the pidfd holds
        // (or one that died since, which no signal reaches).
        let listed = pids_in_tree(tree);
        let fresh: Vec<HeldProcess> = candidates
            .into_iter()
            .filter(|c| listed.contains(&c.pid) && live_process_group(c.pid) == Some(pgid))
            .collect();
        if fresh.is_empty() {
            break;
        }
        for member in fresh {
            member.signal(libc::SIGSTOP);
            members.push(member);
        }
    }
    if members.is_empty() {
        return Err(LabError::Failed(format!(
            "process {pid} ended before its group {pgid} could be killed"
        )));
    }
    for member in &members {
        member.signal(libc::SIGKILL);
    }
    let mut killed: Vec<u32> = members.iter().map(|m| m.pid).collect();
    killed.sort_unstable();
    Ok(killed)
}

/// Remove a cgroup tree, leaves first. Fine when it does not exist. The processes must be gone.
pub fn remove_tree(path: &Path) -> Result<(), LabError> {
    if !path.exists() {
        return Ok(());
    }
    if let Ok(entries) = fs::read_dir(path) {
        for entry in entries.flatten() {
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_tree(&entry.path())?;
            }
        }
    }
    // A cgroup whose last process just died can be busy for a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() < deadline && e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(source) => {
                return Err(LabError::Io {
                    context: format!("removing cgroup {}", path.display()),
                    source,
                });
            }
        }
    }
}

/// Remove an empty parent like `<mount>/guardlab`; keeps it when another lab uses it.
pub fn remove_if_empty(path: &Path) {
    let _ = fs::remove_dir(path);
}
