//! The processes a `kill` or `kill_group` names, found in this sensor's view of /proc and
//! signalled there through pidfds.
//!
//! Events carry init-namespace pids, and the sensor's /proc may be a nested pid namespace's
//! (see the parent module), so a process is first found by what its events recorded: its
//! start time and its pid in its own namespace, among the pids its cgroup's `cgroup.procs`
//! lists in this view ([`local_pid`]). Every process signalled after that is held by a pidfd
//! opened in this view and checked against the start time read there
//! (`Pidfd::open_checked`): a pid reused between the look and the signal is never hit.
#![allow(unsafe_code)] // SIGSTOP and SIGKILL through pidfds

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};

use guardlab_host::{Pidfd, ProcStat};
use guardlab_sensor::cgroup;

/// Why a kill was refused or failed; the text is the client's `error` (and the sensor's log).
#[derive(Debug, thiserror::Error)]
pub(super) enum KillError {
    #[error(
        "pid {pid} is not a live process of a watched container (the sensor kills only running processes it reported in the containers it was asked to watch)"
    )]
    NotSeen { pid: u32 },
    #[error("pid {pid}'s container is no longer watched")]
    NotWatched { pid: u32 },
    #[error(
        "no process in {} has container pid {ns_pid} and the start time the events recorded: it has exited (or left that cgroup)",
        cgroup.display()
    )]
    NotInCgroup { cgroup: PathBuf, ns_pid: u32 },
    #[error(
        "several processes in {} match container pid {ns_pid} and its start time ({candidates:?}): not guessing",
        cgroup.display()
    )]
    Ambiguous {
        cgroup: PathBuf,
        ns_pid: u32,
        candidates: Vec<u32>,
    },
    /// The signal could not be sent to the process found (`pid` as this sensor's /proc
    /// numbers it); `ESRCH` when it exited in between.
    #[error("kill({pid}): {source}")]
    Signal {
        pid: u32,
        #[source]
        source: io::Error,
    },
    #[error("pid {pid} (pid {local} here) has exited")]
    Exited { pid: u32, local: u32 },
    /// Its process group id is 0 here: the group's leader has no pid in this namespace (it
    /// lives in an ancestor one), so its members cannot be told from other groups whose
    /// leaders are also out of sight.
    #[error(
        "pid {pid}'s process group is not visible in this sensor's pid namespace (its leader is outside it): not killing a group it cannot name"
    )]
    GroupNotVisible { pid: u32 },
    #[error("pid {pid} (pid {local} here) and its process group {pgrp} have exited")]
    GroupExited { pid: u32, local: u32, pgrp: u32 },
}

/// A process found in this sensor's /proc: its pid there and its start time (clock ticks since
/// boot, as that /proc's `stat` says), which together name it for its whole life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct LocalProcess {
    pub pid: u32,
    pub start_ticks: u64,
}

impl LocalProcess {
    /// A pidfd on this very process; `ESRCH` when it has exited (or its pid was reused).
    pub fn open(self) -> Result<Pidfd, KillError> {
        Pidfd::open_checked(self.pid, self.start_ticks).ok_or(KillError::Signal {
            pid: self.pid,
            source: io::Error::from_raw_os_error(libc::ESRCH),
        })
    }
}

/// The innermost pid of `NSpid:` in `/proc/PID/status`: the pid inside the process's own
/// pid namespace (the events' `ns_pid`).
fn parse_innermost_ns_pid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

/// The process, in the pid namespace of `proc`, in the cgroup at `cgroup_path` that started
/// at `start_ns` (CLOCK_BOOTTIME) and is `ns_pid` in its own namespace.
pub(super) fn local_pid(
    cgroup_path: &Path,
    start_ns: u64,
    ns_pid: u32,
    proc: &Path,
) -> Result<LocalProcess, KillError> {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let want = start_ns / (1_000_000_000 / ticks);
    let proc_root = proc.to_string_lossy();
    let mut matches = Vec::new();
    for candidate in cgroup::read_pids(cgroup_path) {
        let Some(stat) = ProcStat::read_in(&proc_root, candidate) else {
            continue;
        };
        let inner = std::fs::read_to_string(proc.join(candidate.to_string()).join("status"))
            .ok()
            .and_then(|t| parse_innermost_ns_pid(&t));
        // The kernel rounds start_boottime down to ticks: equal, give or take one tick.
        if inner == Some(ns_pid) && stat.start_ticks.abs_diff(want) <= 1 {
            matches.push(LocalProcess {
                pid: candidate,
                start_ticks: stat.start_ticks,
            });
        }
    }
    match matches.as_slice() {
        [one] => Ok(*one),
        [] => Err(KillError::NotInCgroup {
            cgroup: cgroup_path.to_path_buf(),
            ns_pid,
        }),
        many => Err(KillError::Ambiguous {
            cgroup: cgroup_path.to_path_buf(),
            ns_pid,
            candidates: many.iter().map(|p| p.pid).collect(),
        }),
    }
}

/// The processes of `cgroup_path` as this sensor's /proc shows them now.
fn stats_in(cgroup_path: &Path) -> Vec<ProcStat> {
    cgroup::read_pids(cgroup_path)
        .into_iter()
        .filter_map(ProcStat::read)
        .collect()
}

/// Opens a pidfd on the process `stat` describes and stops it; `None` when it is gone.
fn hold_and_stop(stat: &ProcStat) -> Option<Pidfd> {
    let fd = Pidfd::open_checked(stat.pid, stat.start_ticks)?;
    let _ = fd.send_signal(libc::SIGSTOP);
    Some(fd)
}

/// Stops `root` and its descendants in the same cgroup (so none forks away or is reparented
/// while they are collected) and returns them all, `root` first.
pub(super) fn stop_tree(root: Pidfd, cgroup_path: &Path) -> Vec<Pidfd> {
    let _ = root.send_signal(libc::SIGSTOP);
    let mut tree = vec![root];
    // A child forked before its parent stopped shows up in the next round; a few rounds with
    // nothing new and the set is closed.
    for _ in 0..10 {
        let before = tree.len();
        let mut candidates = stats_in(cgroup_path);
        loop {
            let members: HashSet<u32> = tree.iter().map(Pidfd::pid).collect();
            let (children, rest): (Vec<ProcStat>, Vec<ProcStat>) = candidates
                .into_iter()
                .partition(|s| members.contains(&s.ppid) && !members.contains(&s.pid));
            candidates = rest;
            if children.is_empty() {
                break;
            }
            tree.extend(children.iter().filter_map(hold_and_stop));
        }
        if tree.len() == before {
            break;
        }
    }
    tree
}

/// Stops the members of process group `pgid` that are in one of `cgroups` (so none forks a
/// new member while they are collected) and returns them. Only pids listed in those cgroups'
/// `cgroup.procs` are looked at: a member elsewhere is never touched.
pub(super) fn stop_group(pgid: u32, cgroups: &[&Path]) -> Vec<Pidfd> {
    let mut group: Vec<Pidfd> = Vec::new();
    // A member forked before its parent stopped shows up in the next round.
    for _ in 0..10 {
        let before = group.len();
        for cgroup_path in cgroups {
            for stat in stats_in(cgroup_path) {
                if stat.pid != 0
                    && stat.pgrp == pgid
                    && !group.iter().any(|fd| fd.pid() == stat.pid)
                    && let Some(fd) = hold_and_stop(&stat)
                {
                    group.push(fd);
                }
            }
        }
        if group.len() == before {
            break;
        }
    }
    group
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_and_status_fields_are_read_past_odd_comms() {
        let stat =
            "4242 (a) b (c)) S 17 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 50";
        let parsed = ProcStat::parse(stat).unwrap();
        assert_eq!(
            (parsed.ppid, parsed.pgrp, parsed.start_ticks),
            (17, 4242, 987654)
        );
        assert_eq!(ProcStat::parse("garbage"), None);
        let status = "Name:\tsh\nTgid:\t900\nNSpid:\t900\t12\t1\nPPid:\t1\n";
        assert_eq!(parse_innermost_ns_pid(status), Some(1));
        assert_eq!(parse_innermost_ns_pid("NSpid:\t77\n"), Some(77));
        assert_eq!(parse_innermost_ns_pid("Name: x\n"), None);
    }

    /// A fake /proc and cgroup: the process with ns pid 1 started at tick 500 is local pid 31,
    /// whatever the init-namespace pid was.
    #[test]
    fn a_pid_is_translated_by_start_time_and_container_pid() {
        let dir = tempfile::tempdir().unwrap();
        let cg = dir.path().join("cg");
        std::fs::create_dir(&cg).unwrap();
        std::fs::write(cg.join("cgroup.procs"), "30\n31\n32\n").unwrap();
        let proc = dir.path().join("proc");
        for (pid, start, nspid) in [(30, 500, 2), (31, 500, 1), (32, 900, 1)] {
            let d = proc.join(pid.to_string());
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(
                d.join("stat"),
                format!("{pid} (sh) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 {start} 0 0"),
            )
            .unwrap();
            std::fs::write(d.join("status"), format!("NSpid:\t{pid}\t{nspid}\n")).unwrap();
        }
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        let ns = 500 * (1_000_000_000 / ticks) + 3;
        assert_eq!(
            local_pid(&cg, ns, 1, &proc).unwrap(),
            LocalProcess {
                pid: 31,
                start_ticks: 500
            }
        );
        let err = local_pid(&cg, ns, 5, &proc).unwrap_err().to_string();
        assert!(err.contains("has exited"), "{err}");
    }
}
