//! Processes already running when a policy is applied: the kernel gives a task its policy node
//! at an allowed exec (and its children inherit it at fork), so a process that started before
//! the policy would run as node 0, the container's root context, and its later execs (a
//! notebook server starting a kernel) would be judged as the container's first program. When a
//! policy is applied, each running process of the cgroup is placed at the node its chain of
//! programs reaches in the policy tree, written into the kernel's `task_nodes` task storage
//! from user space (a pidfd is the key).
//!
//! The chain is read from `/proc`: a process's parent in the cgroup gives the node it starts
//! from, and its program is matched to the nearest node below that one whose rule matches it
//! (nearest: a process that replaced its program by exec, `start-notebook.sh` becoming
//! `jupyter-notebook`, skips the nodes of the programs it replaced). A process no rule matches
//! keeps node 0.
#![allow(unsafe_code)] // bpf(2) on the task storage map, pidfd_open(2)

use std::collections::{BTreeMap, VecDeque};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use crate::kernel_policy::ExecRule;
use crate::loader::Watch;
use crate::{Sensor, SensorError};

/// The kernel's `struct task_node`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct TaskNode {
    cgroup_id: u64,
    node: u32,
    pad: u32,
}

/// One running process of a cgroup, as `/proc` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunningProcess {
    pub pid: u32,
    pub ppid: u32,
    /// Its program's path (`/proc/PID/exe`), as the kernel names it.
    pub exe: String,
}

/// Does a rule's `exe` (an exact path or a `prefix*`) match `path`?
pub(crate) fn pattern_matches(pattern: &str, path: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => pattern == path,
    }
}

/// The node of each process (pid -> node; 0 for a process no rule places), given the nodes
/// some of them already have (`known`: placed by an allowed exec, or earlier).
pub fn place(
    processes: &[RunningProcess],
    rules: &[ExecRule],
    known: &BTreeMap<u32, u32>,
) -> BTreeMap<u32, u32> {
    let by_pid: BTreeMap<u32, &RunningProcess> = processes.iter().map(|p| (p.pid, p)).collect();
    let mut placed: BTreeMap<u32, u32> = BTreeMap::new();
    for p in processes {
        place_one(p.pid, &by_pid, rules, known, &mut placed, 0);
    }
    placed
}

fn place_one(
    pid: u32,
    by_pid: &BTreeMap<u32, &RunningProcess>,
    rules: &[ExecRule],
    known: &BTreeMap<u32, u32>,
    placed: &mut BTreeMap<u32, u32>,
    depth: usize,
) -> u32 {
    if let Some(node) = placed.get(&pid) {
        return *node;
    }
    let Some(process) = by_pid.get(&pid) else {
        return 0; // Outside the cgroup: the container's root context.
    };
    let node = match known.get(&pid) {
        Some(node) => *node,
        // A parent chain longer than the processes is a loop (pid reuse while reading).
        None if depth > by_pid.len() => 0,
        None => {
            let from = place_one(process.ppid, by_pid, rules, known, placed, depth + 1);
            nearest_match(from, &process.exe, rules).unwrap_or(0)
        }
    };
    placed.insert(pid, node);
    node
}

/// The nearest node below `from` (breadth first over the tree's edges) reached by a rule that
/// matches `exe`.
fn nearest_match(from: u32, exe: &str, rules: &[ExecRule]) -> Option<u32> {
    let mut seen = vec![from];
    let mut queue = VecDeque::from([from]);
    while let Some(parent) = queue.pop_front() {
        let edges = rules.iter().filter(|r| r.parent == parent);
        if let Some(hit) = edges.clone().find(|r| pattern_matches(&r.exe, exe)) {
            return Some(hit.node);
        }
        for edge in edges {
            if !seen.contains(&edge.node) {
                seen.push(edge.node);
                queue.push_back(edge.node);
            }
        }
    }
    None
}

/// The processes of a cgroup (v2 `cgroup.procs`), those gone while reading left out.
fn running_processes(cgroup: &Path) -> Result<Vec<RunningProcess>, SensorError> {
    let procs = cgroup.join("cgroup.procs");
    let text = std::fs::read_to_string(&procs).map_err(SensorError::io_at(&procs))?;
    let mut out = Vec::new();
    for pid in text.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces and parentheses.
        let Some(ppid) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
        else {
            continue;
        };
        let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else {
            continue; // A kernel thread, or gone.
        };
        let exe = exe.to_string_lossy();
        let exe = exe.strip_suffix(" (deleted)").unwrap_or(&exe).to_string();
        out.push(RunningProcess { pid, ppid, exe });
    }
    Ok(out)
}

/// What [`Sensor::place_running_tasks`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    /// Processes given a node other than 0 now.
    pub placed: usize,
    /// Processes that had a node in this cgroup already (kept).
    pub kept: usize,
    /// Processes no rule places (they stay in the root context).
    pub unplaced: usize,
}

impl Sensor {
    /// Gives each process of a watched cgroup that has no node there yet the node its chain of
    /// programs reaches under `rules` (all its threads too). [`Sensor::set_kernel_policy`]
    /// calls it; a process that forks or execs while this runs is placed by the kernel.
    pub fn place_running_tasks(
        &mut self,
        cgroup_id: u64,
        rules: &[ExecRule],
    ) -> Result<Placement, SensorError> {
        let path = self.watch_path(cgroup_id)?;
        let processes = running_processes(&path)?;
        let map_fd = self.task_nodes_fd()?;
        let mut known = BTreeMap::new();
        for p in &processes {
            if let Some(pidfd) = pidfd_open(p.pid, 0)
                && let Some(tn) = lookup(map_fd.as_fd().as_raw_fd(), &pidfd)
                && tn.cgroup_id == cgroup_id
            {
                known.insert(p.pid, tn.node);
            }
        }
        let nodes = place(&processes, rules, &known);
        let mut out = Placement::default();
        for (pid, node) in nodes {
            if known.contains_key(&pid) {
                out.kept += 1;
                continue;
            }
            if node == 0 {
                out.unplaced += 1;
                continue;
            }
            let value = TaskNode {
                cgroup_id,
                node,
                pad: 0,
            };
            let mut any = false;
            for tid in threads(pid) {
                // PIDFD_THREAD (Linux 6.9): a pidfd on one thread; before it, the leader only.
                let fd = pidfd_open(tid, libc::O_EXCL as u32)
                    .or_else(|| (tid == pid).then(|| pidfd_open(pid, 0)).flatten());
                if let Some(fd) = fd
                    && update(map_fd.as_fd().as_raw_fd(), &fd, &value)
                {
                    any = true;
                }
            }
            if any {
                out.placed += 1;
            }
        }
        Ok(out)
    }

    fn watch_path(&self, cgroup_id: u64) -> Result<std::path::PathBuf, SensorError> {
        self.watches
            .get(&cgroup_id)
            .map(|w: &Watch| w.path.clone())
            .ok_or(SensorError::NotWatched(cgroup_id))
    }

    fn task_nodes_fd(&mut self) -> Result<OwnedFd, SensorError> {
        let bpf = self
            .bpf
            .as_mut()
            .expect("the eBPF object lives as long as the Sensor");
        let map = bpf
            .map("task_nodes")
            .ok_or(SensorError::NotInObject { name: "task_nodes" })?;
        let aya::maps::Map::Unsupported(data) = map else {
            return Err(SensorError::NotInObject { name: "task_nodes" });
        };
        data.fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(SensorError::io_at("task_nodes"))
    }
}

/// The thread ids of a process (just the pid when its task list cannot be read).
fn threads(pid: u32) -> Vec<u32> {
    match std::fs::read_dir(format!("/proc/{pid}/task")) {
        Ok(dir) => dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect(),
        Err(_) => vec![pid],
    }
}

fn pidfd_open(pid: u32, flags: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, flags) };
    // SAFETY: a non-negative result is a new fd that nothing else owns.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `union bpf_attr` for BPF_MAP_*_ELEM.
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;

fn elem(cmd: libc::c_long, map_fd: i32, pidfd: &OwnedFd, value: *mut TaskNode) -> bool {
    let key: i32 = pidfd.as_raw_fd();
    let attr = ElemAttr {
        map_fd: map_fd as u32,
        pad: 0,
        key: &key as *const i32 as u64,
        value: value as u64,
        flags: 0, // BPF_ANY
    };
    // SAFETY: attr points at a key and a value that live across the call, sized as the map's.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            &attr as *const ElemAttr,
            std::mem::size_of::<ElemAttr>() as u32,
        )
    };
    rc == 0
}

fn lookup(map_fd: i32, pidfd: &OwnedFd) -> Option<TaskNode> {
    let mut value = TaskNode::default();
    elem(BPF_MAP_LOOKUP_ELEM, map_fd, pidfd, &mut value).then_some(value)
}

fn update(map_fd: i32, pidfd: &OwnedFd, value: &TaskNode) -> bool {
    let mut value = *value;
    elem(BPF_MAP_UPDATE_ELEM, map_fd, pidfd, &mut value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(parent: u32, exe: &str, node: u32) -> ExecRule {
        ExecRule {
            parent,
            exe: exe.into(),
            node,
        }
    }

    fn proc(pid: u32, ppid: u32, exe: &str) -> RunningProcess {
        RunningProcess {
            pid,
            ppid,
            exe: exe.into(),
        }
    }

    #[test]
    fn a_process_takes_the_nearest_node_below_its_parents_and_replaced_programs_are_skipped() {
        // tini (1) -> bash start script (2) -> exec'd into python jupyter (3) -> bash terminal (4)
        let rules = [
            rule(0, "/usr/bin/tini", 1),
            rule(1, "/usr/bin/bash", 2),
            rule(2, "/opt/conda/bin/python3*", 3),
            rule(3, "/usr/bin/bash", 4),
            rule(4, "/usr/bin/ls", 5),
        ];
        let procs = [
            proc(10, 1, "/usr/bin/tini"),
            // The start script exec'd jupyter: its pid shows python, under tini.
            proc(11, 10, "/opt/conda/bin/python3.11"),
            proc(12, 11, "/usr/bin/bash"),
            proc(13, 12, "/usr/bin/wget"),
            proc(14, 13, "/usr/bin/bash"),
        ];
        let placed = place(&procs, &rules, &BTreeMap::new());
        assert_eq!(placed[&10], 1);
        assert_eq!(
            placed[&11], 3,
            "python is reached through the replaced bash"
        );
        assert_eq!(
            placed[&12], 4,
            "the terminal's bash is python's child, not tini's"
        );
        assert_eq!(placed[&13], 0, "wget is in no rule");
        assert_eq!(
            placed[&14], 2,
            "under the root context, bash is the start script"
        );
        // A node the kernel gave already is kept, and its children start from it.
        let known = BTreeMap::from([(12, 1)]);
        let placed = place(&procs, &rules, &known);
        assert_eq!((placed[&12], placed[&13]), (1, 0));
        let known = BTreeMap::from([(13, 3)]);
        assert_eq!(place(&procs, &rules, &known)[&14], 4);
    }

    #[test]
    fn parent_loops_end_at_the_root_context() {
        let rules = [rule(0, "/a", 1), rule(1, "/a", 2)];
        let procs = [proc(5, 6, "/a"), proc(6, 5, "/a")];
        let placed = place(&procs, &rules, &BTreeMap::new());
        assert_eq!(placed.len(), 2);
        assert!(placed.values().all(|n| *n <= 2));
    }

    #[test]
    fn globs_match_prefixes_and_exact_paths_only_themselves() {
        assert!(pattern_matches(
            "/opt/conda/bin/python3*",
            "/opt/conda/bin/python3.11"
        ));
        assert!(!pattern_matches("/usr/bin/ls", "/usr/bin/lsblk"));
        assert!(pattern_matches("*", "/anything"));
    }
}
