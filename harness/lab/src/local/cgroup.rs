//! cgroup v2 directories for the lab: `<cgroup2 mount>/guardlab/<lab>/{daemon,<pod>}`.
//!
//! Every lab process is born in one of them (the daemon joins before it execs, pods are cloned
//! straight into theirs), so `cgroup.kill` on the lab's directory ends every lab process at once.
//!
//! The response actions kill within a pod's tree only ([`kill_in_tree`],
//! [`kill_process_tree_in`], [`kill_group_in_tree`]), and every signal goes through a pidfd
//! opened *before* the process is checked to be in the tree: a process outside it, or one that
//! took the pid of a process that left, is never signalled.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use guardlab_host::{Pidfd, ProcStat};

use crate::{IoContext, LabError};

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
    fs::create_dir_all(path).context(|| format!("creating cgroup {}", path.display()))
}

/// The cgroup id the kernel (and the sensor) use: the inode number of the directory.
pub fn cgroup_id(path: &Path) -> Result<u64, LabError> {
    fs::metadata(path)
        .map(|m| m.ino())
        .context(|| format!("reading cgroup {}", path.display()))
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
            for member in hold_members(path, &[]) {
                let _ = member.send_signal(libc::SIGKILL);
            }
        }
        if Instant::now() > deadline {
            return Err(LabError::Timeout {
                what: format!("the end of the processes of cgroup {}", path.display()),
                limit: timeout,
                detail: format!("still there: {:?}", pids_in_tree(path)),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The process group of a process (`pgrp`, field 5 of `/proc/<pid>/stat`), as this host's pid
/// namespace numbers it. `None` when the process is gone.
pub fn process_group(pid: u32) -> Option<u32> {
    ProcStat::read(pid).map(|stat| stat.pgrp)
}

/// The process group of a process that has not ended (a zombie has nothing left to kill).
fn live_process_group(pid: u32) -> Option<u32> {
    ProcStat::read(pid)
        .filter(|stat| !matches!(stat.state, 'Z' | 'X' | 'x'))
        .map(|stat| stat.pgrp)
}

/// The processes of the cgroup tree `tree` (but those in `known`), each held by a pidfd that
/// was opened before the tree was listed again: every one returned is a member, and a signal
/// through it reaches that process or nothing, never a process that reused its pid.
fn hold_members(tree: &Path, known: &[u32]) -> Vec<Pidfd> {
    let candidates: Vec<Pidfd> = pids_in_tree(tree)
        .into_iter()
        .filter(|pid| !known.contains(pid))
        .filter_map(|pid| Pidfd::open(pid).ok())
        .collect();
    // Checked after the pidfd was opened: what passes is the process the pidfd holds (or one
    // that died since, which no signal reaches).
    let listed = pids_in_tree(tree);
    candidates
        .into_iter()
        .filter(|held| listed.contains(&held.pid()))
        .collect()
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
    let refused = |reason: String| LabError::Action {
        action: format!("killing the process group of {pid}"),
        reason,
    };
    if !pids_in_tree(tree).contains(&pid) {
        return Err(refused(not_in(tree, pid)));
    }
    let pgid = live_process_group(pid)
        .filter(|g| *g != 0)
        .ok_or_else(|| refused(format!("process {pid} ended before it could be killed")))?;
    let mut members: Vec<Pidfd> = Vec::new();
    for _ in 0..100 {
        let known: Vec<u32> = members.iter().map(Pidfd::pid).collect();
        let fresh: Vec<Pidfd> = hold_members(tree, &known)
            .into_iter()
            .filter(|held| live_process_group(held.pid()) == Some(pgid))
            .collect();
        if fresh.is_empty() {
            break;
        }
        for member in fresh {
            let _ = member.send_signal(libc::SIGSTOP);
            members.push(member);
        }
    }
    if members.is_empty() {
        return Err(refused(format!(
            "process {pid} ended before its group {pgid} could be killed"
        )));
    }
    for member in &members {
        let _ = member.send_signal(libc::SIGKILL);
    }
    let mut killed: Vec<u32> = members.iter().map(Pidfd::pid).collect();
    killed.sort_unstable();
    Ok(killed)
}

/// Kill one process of the cgroup tree `tree` with SIGKILL, through a pidfd opened before its
/// membership is checked: a process outside the tree is never signalled, nor one that reused
/// the pid of a process that left.
pub fn kill_in_tree(tree: &Path, pid: u32) -> Result<(), LabError> {
    let refused = |reason: String| LabError::Action {
        action: format!("killing process {pid}"),
        reason,
    };
    let ended = || refused(format!("process {pid} ended before it could be killed"));
    let held = Pidfd::open(pid).map_err(|_| ended())?;
    if !pids_in_tree(tree).contains(&pid) {
        return Err(refused(not_in(tree, pid)));
    }
    match held.send_signal(libc::SIGKILL) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Err(ended()),
        Err(e) => Err(e).context(|| format!("killing process {pid}")),
    }
}

/// Why a process is refused: it is not in the tree.
fn not_in(tree: &Path, pid: u32) -> String {
    format!("process {pid} is not in cgroup {}", tree.display())
}

/// Kill a process of the cgroup tree `tree` and all its descendants there with SIGKILL.
/// Returns the host pids that were signalled, in ascending order.
///
/// The tree is stopped first (SIGSTOP) and read again, so that nothing forks away while it is
/// killed; each process is held by a pidfd opened before it is checked to be in the tree.
pub fn kill_process_tree_in(tree: &Path, pid: u32) -> Result<Vec<u32>, LabError> {
    if !pids_in_tree(tree).contains(&pid) {
        return Err(LabError::Action {
            action: format!("killing the process tree of {pid}"),
            reason: not_in(tree, pid),
        });
    }
    let mut members = hold_process_tree(tree, pid, &[]);
    for member in &members {
        let _ = member.send_signal(libc::SIGSTOP);
    }
    let known: Vec<u32> = members.iter().map(Pidfd::pid).collect();
    members.extend(hold_process_tree(tree, pid, &known));
    for member in &members {
        let _ = member.send_signal(libc::SIGKILL);
    }
    let mut killed: Vec<u32> = members.iter().map(Pidfd::pid).collect();
    killed.sort_unstable();
    Ok(killed)
}

/// `root` and its descendants in the cgroup tree `tree` (but those in `known`), each held by a
/// pidfd opened before the tree was read again.
fn hold_process_tree(tree: &Path, root: u32, known: &[u32]) -> Vec<Pidfd> {
    let candidates: Vec<Pidfd> = descendants(&pids_in_tree(tree), root)
        .into_iter()
        .filter(|pid| !known.contains(pid))
        .filter_map(|pid| Pidfd::open(pid).ok())
        .collect();
    let now = descendants(&pids_in_tree(tree), root);
    candidates
        .into_iter()
        .filter(|held| now.contains(&held.pid()))
        .collect()
}

/// `root` and every process below it, among `candidates`.
fn descendants(candidates: &[u32], root: u32) -> Vec<u32> {
    let parents: Vec<(u32, Option<u32>)> = candidates
        .iter()
        .map(|&pid| (pid, ProcStat::read(pid).map(|stat| stat.ppid)))
        .collect();
    let mut tree = vec![root];
    let mut changed = true;
    while changed {
        changed = false;
        for (pid, parent) in &parents {
            if let Some(parent) = parent
                && tree.contains(parent)
                && !tree.contains(pid)
            {
                tree.push(*pid);
                changed = true;
            }
        }
    }
    tree.retain(|pid| candidates.contains(pid));
    tree
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
            Err(e) => return Err(e).context(|| format!("removing cgroup {}", path.display())),
        }
    }
}

/// Remove an empty parent like `<mount>/guardlab`; keeps it when another lab uses it.
pub fn remove_if_empty(path: &Path) {
    let _ = fs::remove_dir(path);
}
