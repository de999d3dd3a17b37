//! What a running lab holds ([`Holdings`]), gathered while it runs, and the check that none of
//! it is left afterwards ([`assert_nothing_left`]): processes, namespaces (network devices go
//! with them), mounts, host interfaces, cgroups, BPF programs and the lab's directory. Shared by
//! the local lab's tests (through `common`), the scenario's signal tests in `harness/tests` and
//! the reliability suite (`harness/examples/soak`).
#![allow(unsafe_code)] // bpf(2), to ask whether a program id still exists
#![allow(dead_code)] // Each test binary uses a part of it.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use guardlab_lab::local::state::{LabState, ProcessRecord};
use guardlab_lab::local::{LocalLab, cgroup};

/// What a lab holds while it runs, gathered to check afterwards that none of it is left.
#[derive(Debug, Default, Clone)]
pub struct Holdings {
    pub lab_dir: PathBuf,
    pub lab_name: String,
    pub cgroup: Option<PathBuf>,
    /// The lab's and its pods' cgroups in cgroup v1 hierarchies.
    pub v1_cgroups: Vec<PathBuf>,
    pub processes: Vec<ProcessRecord>,
    /// Namespace inodes (`net:[..]`, `mnt:[..]`, ...) of the lab's processes that are not the host's.
    pub namespaces: BTreeSet<(String, u64)>,
    pub bpf_programs: Vec<u32>,
}

fn namespace_of(pid: u32, kind: &str) -> Option<u64> {
    fs::metadata(format!("/proc/{pid}/ns/{kind}"))
        .ok()
        .map(|m| m.ino())
}

const NAMESPACE_KINDS: [&str; 6] = ["net", "mnt", "pid_for_children", "uts", "ipc", "cgroup"];

impl Holdings {
    /// Everything the lab holds now, from its state file and its cgroup.
    pub fn gather(lab: &LocalLab) -> Holdings {
        let state: Option<LabState> = lab.state().unwrap();
        let mut holdings = Holdings {
            lab_dir: lab.lab_dir().to_path_buf(),
            lab_name: lab.options().lab.clone(),
            ..Default::default()
        };
        let Some(state) = state else { return holdings };
        holdings.cgroup = Some(state.cgroup.clone());
        holdings.v1_cgroups = state
            .v1_cgroups
            .iter()
            .chain(state.pods.iter().flat_map(|p| &p.v1_cgroups))
            .cloned()
            .collect();
        let mut pids: Vec<u32> = cgroup::pids_in_tree(&state.cgroup);
        pids.extend(state.daemon.iter().map(|d| d.pid));
        pids.extend(state.pods.iter().filter_map(|p| p.root.map(|r| r.pid)));
        let me = std::process::id();
        for pid in pids {
            if let Some(record) = ProcessRecord::of(pid)
                && !holdings.processes.contains(&record)
            {
                holdings.processes.push(record);
            }
            for kind in NAMESPACE_KINDS {
                if let (Some(theirs), Some(ours)) =
                    (namespace_of(pid, kind), namespace_of(me, kind))
                    && theirs != ours
                {
                    holdings
                        .namespaces
                        .insert((kind.trim_end_matches("_for_children").to_string(), theirs));
                }
            }
            // Threads hold namespaces too (the daemon's namespace threads).
            if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
                for task in tasks.flatten() {
                    if let Ok(m) = fs::metadata(task.path().join("ns/net"))
                        && Some(m.ino()) != namespace_of(me, "net")
                    {
                        holdings.namespaces.insert(("net".into(), m.ino()));
                    }
                }
            }
        }
        for ns in &state.netns {
            holdings.namespaces.insert(("net".into(), ns.inode));
        }
        holdings.bpf_programs = state.bpf_programs.clone();
        holdings
    }

    /// Merge what a later look found.
    pub fn merge(&mut self, other: Holdings) {
        if self.lab_dir.as_os_str().is_empty() {
            self.lab_dir = other.lab_dir.clone();
            self.lab_name = other.lab_name.clone();
        }
        if self.cgroup.is_none() {
            self.cgroup = other.cgroup;
        }
        for dir in other.v1_cgroups {
            if !self.v1_cgroups.contains(&dir) {
                self.v1_cgroups.push(dir);
            }
        }
        for p in other.processes {
            if !self.processes.contains(&p) {
                self.processes.push(p);
            }
        }
        self.namespaces.extend(other.namespaces);
        for id in other.bpf_programs {
            if !self.bpf_programs.contains(&id) {
                self.bpf_programs.push(id);
            }
        }
    }
}

/// Does a BPF program with this id still exist?
fn bpf_program_exists(id: u32) -> bool {
    // union bpf_attr for BPF_PROG_GET_FD_BY_ID: prog_id, next_id, open_flags.
    let attr: [u32; 4] = [id, 0, 0, 0];
    const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
    // SAFETY: bpf(2) with a properly sized attribute block.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_GET_FD_BY_ID,
            attr.as_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if fd >= 0 {
        // SAFETY: we own the new descriptor.
        unsafe { libc::close(fd as i32) };
        return true;
    }
    std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOENT)
}

/// Every namespace link and descriptor on the host: (kind, inode) -> who holds it.
fn namespaces_in_use() -> Vec<(String, u64, String)> {
    let mut found = Vec::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return found;
    };
    for entry in procs.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let mut links: Vec<PathBuf> = Vec::new();
        for kind in NAMESPACE_KINDS {
            links.push(entry.path().join("ns").join(kind));
        }
        if let Ok(tasks) = fs::read_dir(entry.path().join("task")) {
            for task in tasks.flatten() {
                links.push(task.path().join("ns/net"));
                links.push(task.path().join("ns/mnt"));
            }
        }
        if let Ok(fds) = fs::read_dir(entry.path().join("fd")) {
            links.extend(fds.flatten().map(|f| f.path()));
        }
        for link in links {
            if let Ok(target) = fs::read_link(&link) {
                let target = target.to_string_lossy().into_owned();
                // `net:[4026532297]`
                if let Some((kind, rest)) = target.split_once(":[")
                    && let Ok(inode) = rest.trim_end_matches(']').parse::<u64>()
                {
                    let kind = kind.trim_end_matches("_for_children").to_string();
                    found.push((kind, inode, link.display().to_string()));
                }
            }
        }
    }
    // Bind mounts of namespaces (`ip netns add`) show as nsfs mounts.
    if let Ok(text) = fs::read_to_string("/proc/self/mountinfo") {
        for line in text.lines().filter(|l| l.contains(" - nsfs ")) {
            if let Some(root) = line.split_whitespace().nth(3)
                && let Some((kind, rest)) = root.split_once(":[")
                && let Ok(inode) = rest.trim_end_matches(']').parse::<u64>()
            {
                found.push((kind.to_string(), inode, format!("mount {line}")));
            }
        }
    }
    found
}

/// Check that nothing of the lab is left; waits a little for the kernel's asynchronous
/// cleanup (network namespaces are freed by a kernel worker).
pub fn assert_nothing_left(holdings: &Holdings) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let problems = leftovers(holdings);
        if problems.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            panic!("the lab left things behind:\n  {}", problems.join("\n  "));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn leftovers(holdings: &Holdings) -> Vec<String> {
    assert!(
        !holdings.lab_name.is_empty() && !holdings.lab_dir.as_os_str().is_empty(),
        "holdings without a lab"
    );
    let mut problems = Vec::new();
    for process in &holdings.processes {
        if process.is_alive() {
            problems.push(format!("process {} is still running", process.pid));
        } else if fs::metadata(format!("/proc/{}", process.pid)).is_ok()
            && guardlab_lab::local::state::process_start_time(process.pid)
                == Some(process.start_time)
        {
            // A zombie whose parent did not reap it yet: gone as a process, not as a pid.
            let stat =
                fs::read_to_string(format!("/proc/{}/stat", process.pid)).unwrap_or_default();
            if !stat.contains(") Z ") {
                problems.push(format!("process {} still exists: {stat}", process.pid));
            }
        }
    }
    if let Some(cgroup) = &holdings.cgroup
        && cgroup.exists()
    {
        problems.push(format!("cgroup {} still exists", cgroup.display()));
    }
    for dir in holdings.v1_cgroups.iter().filter(|d| d.exists()) {
        problems.push(format!(
            "cgroup v1 directory {} still exists",
            dir.display()
        ));
    }
    let in_use = namespaces_in_use();
    for (kind, inode) in &holdings.namespaces {
        for (k, i, holder) in &in_use {
            if k == kind && i == inode {
                problems.push(format!(
                    "{kind} namespace {inode} is still held by {holder}"
                ));
            }
        }
    }
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let lab_dir = holdings.lab_dir.display().to_string();
    for line in mountinfo.lines() {
        if line.contains(&lab_dir) || line.contains(&format!("guardlab/{}", holdings.lab_name)) {
            problems.push(format!("mount left: {line}"));
        }
    }
    let links = std::process::Command::new("ip")
        .args(["-o", "-d", "link"])
        .output()
        .expect("ip link");
    for line in String::from_utf8_lossy(&links.stdout).lines() {
        if line.contains("pod0") || (line.contains(" veth ") && line.contains("eth0@")) {
            problems.push(format!("interface left on the host: {line}"));
        }
    }
    for id in &holdings.bpf_programs {
        if bpf_program_exists(*id) {
            problems.push(format!("BPF program {id} still loaded"));
        }
    }
    if holdings.lab_dir.exists() {
        problems.push(format!("{} still exists", holdings.lab_dir.display()));
    }
    problems
}
