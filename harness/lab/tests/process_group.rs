//! Killing a process group within a cgroup tree (the local lab's `KillProcessGroup`), with real
//! processes and a real cgroup: the group's members in the tree die, its members outside the
//! tree and the tree's other groups live on.
//!
//! Root only (it makes a cgroup and moves processes into it).
#![allow(unsafe_code)] // tests make the system calls they check (geteuid, kill, mount, setns...)

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::require_root;
use guardlab_lab::local::cgroup;

/// A cgroup of this test, removed (with whatever still runs in it) on drop.
struct TestCgroup(PathBuf);

impl TestCgroup {
    fn new(what: &str) -> TestCgroup {
        let path = cgroup::cgroup2_mount()
            .unwrap()
            .join(format!("guardlab-test-{what}-{}", std::process::id()));
        cgroup::create(&path).unwrap();
        TestCgroup(path)
    }

    fn adopt(&self, pid: u32) {
        std::fs::write(self.0.join("cgroup.procs"), pid.to_string()).unwrap();
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = cgroup::kill_tree(&self.0, Duration::from_secs(10));
        let _ = cgroup::remove_tree(&self.0);
    }
}

/// Process group leaders this test started: their whole groups are killed on drop (also the
/// members a shell leaves behind), and the leaders reaped.
struct Started(Vec<Child>);

impl Drop for Started {
    fn drop(&mut self) {
        for child in &mut self.0 {
            // SAFETY: kill(2) of a process group this test made (the child leads it).
            unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
            let _ = child.wait();
        }
    }
}

/// Children of `parent` whose command line is `sleep <seconds>`.
fn sleeper(parent: u32, seconds: &str) -> Option<u32> {
    let children =
        std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")).ok()?;
    children
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/cmdline")).unwrap_or_default()
                == format!("sleep\0{seconds}\0")
        })
}

fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(found) = probe() {
            return found;
        }
        assert!(Instant::now() < deadline, "{what}: not within 10 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Running: not gone, not a zombie, not dead.
fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat[stat.rfind(')').unwrap() + 1..]
                .split_whitespace()
                .next()
                .unwrap_or("X")
                .to_string();
            state != "Z" && state != "X"
        }
        Err(_) => false,
    }
}

fn in_cgroup(tree: &Path, pid: u32) -> bool {
    cgroup::pids_in_tree(tree).contains(&pid)
}

#[test]
fn a_group_dies_in_the_tree_only_and_other_groups_live_on() {
    require_root();
    let tree = TestCgroup::new("pgroup");
    let mut started = Started(Vec::new());

    // One group: a shell and its three sleeps (a shell without job control keeps its children
    // in its own group). Two of the sleeps go into the tree, the shell and the third stay out.
    let shell = Command::new("sh")
        .args(["-c", "sleep 1001 & sleep 1002 & sleep 1003 & wait"])
        .process_group(0)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let shell_pid = shell.id();
    started.0.push(shell);
    let first = wait_for("sleep 1001", || sleeper(shell_pid, "1001"));
    let second = wait_for("sleep 1002", || sleeper(shell_pid, "1002"));
    let outside = wait_for("sleep 1003", || sleeper(shell_pid, "1003"));
    tree.adopt(first);
    tree.adopt(second);
    // Another group, in the tree.
    let other = Command::new("sleep")
        .arg("1004")
        .process_group(0)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let other_pid = other.id();
    started.0.push(other);
    tree.adopt(other_pid);

    for member in [first, second, outside] {
        assert_eq!(cgroup::process_group(member), Some(shell_pid));
    }
    assert_eq!(cgroup::process_group(other_pid), Some(other_pid));
    assert!(in_cgroup(&tree.0, first) && in_cgroup(&tree.0, second));
    assert!(!in_cgroup(&tree.0, shell_pid) && !in_cgroup(&tree.0, outside));

    // A process outside the tree is refused, and nothing is signalled.
    let refused = cgroup::kill_group_in_tree(&tree.0, outside)
        .unwrap_err()
        .to_string();
    assert!(refused.contains("is not in cgroup"), "{refused}");
    assert!(running(outside) && running(first));

    let killed = cgroup::kill_group_in_tree(&tree.0, second).unwrap();
    let mut expected = vec![first, second];
    expected.sort_unstable();
    assert_eq!(killed, expected, "the group's members in the tree");
    wait_for("the group's members in the tree to die", || {
        (!running(first) && !running(second)).then_some(())
    });
    assert!(
        running(shell_pid) && running(outside),
        "the group's members outside the tree live on"
    );
    assert!(running(other_pid), "the tree's other group lives on");
    assert!(in_cgroup(&tree.0, other_pid));

    // A pid that is not there any more is an error, not a silent success.
    wait_for("the shell to reap its killed children", || {
        (!Path::new(&format!("/proc/{first}")).exists()).then_some(())
    });
    let gone = cgroup::kill_group_in_tree(&tree.0, first)
        .unwrap_err()
        .to_string();
    assert!(gone.contains(&first.to_string()), "{gone}");
    drop(started);
    drop(tree);
    assert!(!running(outside), "the test leaves no process behind");
}
