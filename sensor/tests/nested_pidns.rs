//! The kind layout, reproduced on this host. A kind node is a container, so its pid namespace
//! is a child of the host's, and the sensor's DaemonSet (hostPID) sees the node's namespace and
//! /proc; each pod's pid namespace is made inside the node's (a grandchild of the host's).
//!
//! Here the sensor binary (`--serve --cgroup-root`) is pid 1 of a pid namespace of its own with
//! its own /proc (`unshare --pid --fork --mount-proc`), and each "pod" is a pid namespace made
//! inside that one (`nsenter` into the node, then `unshare` again), with its own cgroup, /proc
//! and /etc/passwd. Events carry host pids: `kill`, `kill` with `tree` and `kill_group` must find
//! the right processes in the sensor's /proc, and nothing else. Needs root (eBPF, cgroups,
//! namespaces) and util-linux (`unshare`, `nsenter`, `setsid`).
#![allow(unsafe_code)] // tests make the system calls they check (geteuid, kill, mount, setns...)

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use guardlab_sensor::cgroup::OwnedCgroup;
use guardlab_sensor::events::ProcessExec;
use guardlab_sensor::events::control::SensorReply;
use guardlab_sensor::{Event, EventBody};

/// A pod's pid 1 before it is a container: its own /etc/passwd (uid 0 is `pod-root`), then
/// it waits for the test (fifo `$2`), joins its cgroup (`$3`) and execs the workload (`$5`), as
/// runc joins the cgroup before the entrypoint's exec. The mount runs before the cgroup is
/// joined, so the workload's exec is the first event of the pod's cgroup.
const POD_INIT: &str = r#"set -e
mount --bind "$1" /etc/passwd
read go < "$2"
echo 0 > "$3/cgroup.procs"
exec /bin/sh -c "$5" pod-init "$4""#;

/// What runs in each pod, marked by its arguments: a lone process (3001), a tree (a shell with
/// 3002 and 3003), a process group of its own (`setsid`: a shell with 3004, 3005, and 3006,
/// which moves itself to the unwatched cgroup `$1`), and 3007 in the pod's first group.
const POD_WORKLOAD: &str = r#"/bin/sleep 3001 &
/bin/sh -c '/bin/sleep 3002 & /bin/sleep 3003 & wait' tree &
/usr/bin/setsid /bin/sh -c '/bin/sleep 3004 & /bin/sleep 3005 & (echo 0 > "$1/cgroup.procs"; exec /bin/sleep 3006) & wait' group "$1" &
/bin/sleep 3007 &
wait"#;

/// The workload's processes the sensor reports (3006 leaves for an unwatched cgroup).
const MARKERS: [&str; 9] = [
    "pod-init", "3001", "tree", "3002", "3003", "group", "3004", "3005", "3007",
];

/// A host-side wrapper process (`unshare`, `nsenter`): killed and reaped on drop.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A process held by a pidfd: signals and exit checks that cannot hit a reused pid.
struct Process {
    pid: u32,
    fd: OwnedFd,
}

impl Process {
    fn open(pid: u32) -> Process {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        assert!(
            fd >= 0,
            "pidfd_open({pid}): {}",
            std::io::Error::last_os_error()
        );
        Process {
            pid,
            // SAFETY: a new fd that nothing else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd as i32) },
        }
    }

    /// Whether it has exited within `timeout` (a pidfd turns readable when its process exits).
    fn exits_within(&self, timeout: Duration) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, for the duration of the call.
        unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) == 1 }
    }

    fn alive(&self) -> bool {
        !self.exits_within(Duration::ZERO)
    }

    fn signal(&self, signal: i32) {
        // SAFETY: a valid pidfd, no siginfo, no flags.
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

/// The first child of `pid` (as the host numbers it), once it has one.
fn child_of(pid: u32, what: &str) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        if let Some(child) = text.split_whitespace().next() {
            return child.parse().unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "{what}: pid {pid} has no child after 10 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A process's pids from the host's namespace down to its own (`NSpid:` in the host's /proc).
fn ns_pids(pid: u32) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .expect("an NSpid line")
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

/// The process group of `pid`, as the host numbers it (0 when it has exited).
fn host_pgrp(pid: u32) -> u32 {
    guardlab_host::ProcStat::read(pid).map_or(0, |s| s.pgrp)
}

fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// The pids in a sensor report line such as `... (pids [12, 13] in this sensor's /proc)`.
fn reported_pids(line: &str) -> BTreeSet<u32> {
    let list = line
        .split_once("pids [")
        .and_then(|(_, rest)| rest.split_once(']'))
        .unwrap_or_else(|| panic!("no pid list in {line:?}"))
        .0;
    list.split(", ").map(|p| p.parse().unwrap()).collect()
}

/// The "kind node": the sensor as pid 1 of a new pid namespace with its own /proc. Its end
/// (SIGKILL on drop) makes the kernel kill everything in that namespace, pods included.
struct Node {
    unshare: Reaped,
    sensor: Process,
    stderr: mpsc::Receiver<String>,
    /// What the sensor printed so far (for failure messages).
    said: Vec<String>,
}

impl Node {
    fn start(port: u16, cgroup_root: &Path) -> Node {
        // util-linux brings unshare, nsenter and setsid.
        host_tools(&[&guardlab_host::catalog::UNSHARE]);
        let mut unshare = Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc", "--kill-child", "--"])
            .arg(SENSOR_BIN)
            .args(["--serve", &format!("127.0.0.1:{port}"), "--cgroup-root"])
            .arg(cgroup_root)
            .env("NODE_NAME", "kind-node")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running unshare (util-linux)");
        let err = unshare.stderr.take().unwrap();
        let unshare = Reaped(unshare);
        let (tx, stderr) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let sensor = Process::open(child_of(unshare.0.id(), "the node's pid 1"));
        let mut node = Node {
            unshare,
            sensor,
            stderr,
            said: Vec::new(),
        };
        node.stderr_until("the control protocol to be served", |l| {
            l.contains("serving the control protocol")
        });
        node
    }

    /// A command that runs inside the node: its pid namespace and its mounts (its /proc).
    fn enter(&self) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.args([
            "--target",
            &self.sensor.pid.to_string(),
            "--pid",
            "--mount",
            "--",
        ]);
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        cmd
    }

    /// Reads the sensor's stderr until a line satisfies `pick` (20 s at most).
    fn stderr_until(&mut self, what: &str, pick: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    self.said.push(line.clone());
                    if pick(&line) {
                        return line;
                    }
                }
                Err(e) => panic!(
                    "waiting for {what} on the sensor's stderr: {e}; it said {:#?}",
                    self.said
                ),
            }
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.sensor.signal(libc::SIGKILL);
        let _ = self.sensor.exits_within(Duration::from_secs(10));
    }
}

/// A pod: `unshare` run inside the node, whose child is the pod's pid 1.
struct Pod {
    _wrapper: Reaped,
    /// The host pid of the pod's pid 1.
    init: u32,
    /// The fifo its pid 1 waits on before it joins its cgroup.
    go: PathBuf,
}

fn start_pod(node: &Node, dir: &Path, name: &str, cgroup: &Path, outside: &Path) -> Pod {
    let passwd = dir.join(format!("{name}.passwd"));
    std::fs::write(&passwd, "pod-root:x:0:0:the pod's root:/:/bin/sh\n").unwrap();
    let go = dir.join(format!("{name}.go"));
    let c = std::ffi::CString::new(go.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    let mut cmd = node.enter();
    cmd.args([
        "unshare",
        "--pid",
        "--fork",
        "--mount-proc",
        "--kill-child",
        "--",
    ])
    .args(["setsid", "/bin/sh", "-c", POD_INIT, "pod-setup"])
    .arg(&passwd)
    .arg(&go)
    .arg(cgroup)
    .arg(outside)
    .arg(POD_WORKLOAD);
    let wrapper = Reaped(cmd.spawn().expect("running nsenter (util-linux)"));
    let unshare = child_of(wrapper.0.id(), "the pod's unshare");
    let init = child_of(unshare, "the pod's pid 1");
    Pod {
        _wrapper: wrapper,
        init,
        go,
    }
}

/// Lets a pod's pid 1 go on (it blocks reading its fifo until a writer comes).
fn release(pod: &Pod) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&pod.go)
        {
            Ok(mut fifo) => return fifo.write_all(b"go\n").unwrap(),
            // ENXIO: nobody reads it yet.
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("{}: the pod does not read it: {e}", pod.go.display()),
        }
    }
}

/// A process of the node, in no pod, whose pid in the node's namespace is `node_pid`. Returns
/// its wrapper and its host pid.
fn decoy(node: &Node, node_pid: u32) -> (Reaped, u32) {
    for _ in 0..20 {
        let mut cmd = node.enter();
        cmd.args([
            "/bin/sh",
            "-c",
            r#"echo "$1" > /proc/sys/kernel/ns_last_pid; /bin/sleep 3600 & echo $!; wait"#,
            "decoy",
            &(node_pid - 1).to_string(),
        ])
        .stdout(Stdio::piped());
        let mut wrapper = Reaped(cmd.spawn().expect("running nsenter (util-linux)"));
        let mut line = String::new();
        BufReader::new(wrapper.0.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        if line.trim() == node_pid.to_string() {
            let shell = child_of(wrapper.0.id(), "the decoy's shell");
            let sleep = child_of(shell, "the decoy");
            assert_eq!(ns_pids(sleep), [sleep, node_pid]);
            return (wrapper, sleep);
        }
        // Another process of the node took that pid first (the one left over lives until the
        // node ends): again.
    }
    panic!("could not give a process of the node the pid {node_pid} in 20 tries")
}

/// Reads events until each of `pids` has an exit event, which must say SIGKILL.
fn expect_killed(stream: &mut Conn, seen: &mut Vec<Event>, pids: &[u32]) {
    let mut left: BTreeSet<u32> = pids.iter().copied().collect();
    while !left.is_empty() {
        let event = stream.event();
        if let EventBody::Exit(x) = &event.body
            && left.remove(&x.pid)
        {
            assert_eq!(x.signal, Some(libc::SIGKILL), "{x:?}");
        }
        seen.push(event);
    }
}

fn assert_refused(reply: &SensorReply, because: &str) {
    assert!(
        !reply.ok && reply.error.as_deref().unwrap_or("").contains(because),
        "expected a refusal saying {because:?}, got {reply:?}"
    );
}

#[test]
fn kills_find_the_right_processes_when_the_sensor_and_pods_have_pid_namespaces_of_their_own() {
    require_root();
    // Dropped after the node (declared before it): by then the node's end has killed all
    // their processes.
    let parent = cgroup("nest");
    let parent_name = parent.path().file_name().unwrap().to_str().unwrap();
    let (a_id, b_id) = (container_id(1, &parent), container_id(2, &parent));
    let child = |name: String| OwnedCgroup::create(&format!("{parent_name}/{name}")).unwrap();
    let cg_a = child(format!("cri-containerd-{a_id}.scope"));
    let cg_b = child(format!("cri-containerd-{b_id}.scope"));
    let outside = child(format!("cri-containerd-{}.scope", container_id(3, &parent)));
    let dir = tempfile::tempdir().unwrap();

    let port = free_port();
    let mut node = Node::start(port, parent.path());
    assert_eq!(
        ns_pids(node.sensor.pid),
        [node.sensor.pid, 1],
        "the sensor is pid 1 of a namespace below the host's"
    );

    let mut stream = Conn::open(port);
    stream.send(&subscribe(&[
        watched(&a_id, "pod-a"),
        watched(&b_id, "pod-b"),
    ]));
    let mut seen = Vec::new();
    let mut containers = BTreeSet::new();
    while containers.len() < 2 {
        containers.insert(stream.until(&mut seen, |e| match &e.body {
            EventBody::Container(c) => Some(c.cgroup_id),
            _ => None,
        }));
    }
    assert_eq!(containers, BTreeSet::from([cg_a.id(), cg_b.id()]));

    let pod_a = start_pod(&node, dir.path(), "a", cg_a.path(), outside.path());
    let pod_b = start_pod(&node, dir.path(), "b", cg_b.path(), outside.path());
    // The sensor's /proc/<pod A's pid 1 as the host numbers it> is another process: a process
    // of the node (pids of different namespaces collide like this on a kind node).
    let (_decoy_wrapper, decoy) = decoy(&node, pod_a.init);
    release(&pod_a);
    release(&pod_b);

    let mut procs: BTreeMap<(u64, &str), ProcessExec> = BTreeMap::new();
    while procs.len() < 2 * MARKERS.len() {
        let event = stream.event();
        if let EventBody::Exec(x) = &event.body {
            for marker in MARKERS {
                if x.argv.iter().any(|a| a == marker) {
                    procs
                        .entry((x.cgroup_id, marker))
                        .or_insert_with(|| x.clone());
                }
            }
        }
        seen.push(event);
    }
    let p = |cg: &OwnedCgroup, marker: &str| procs[&(cg.id(), marker)].clone();
    // Every pod process has three pids (host, node, pod): the event gives the host's and the
    // pod's; the sensor must find the node's.
    let mut node_pid = BTreeMap::new();
    for ((_, marker), x) in &procs {
        let pids = ns_pids(x.pid);
        assert_eq!(pids.len(), 3, "{marker}: {pids:?}");
        assert_eq!((pids[0], pids[2]), (x.pid, x.ns_pid), "{marker}: {pids:?}");
        assert_ne!(pids[0], pids[1], "{marker}: host and node pids differ");
        node_pid.insert(x.pid, pids[1]);
    }
    let local = |pids: &[u32]| -> BTreeSet<u32> { pids.iter().map(|p| node_pid[p]).collect() };
    assert_eq!(
        (p(&cg_a, "pod-init").pid, p(&cg_a, "pod-init").ns_pid),
        (pod_a.init, 1)
    );
    assert_eq!(p(&cg_b, "pod-init").pid, pod_b.init);
    // User names come from the pod's /etc/passwd, not from the decoy's (the host's, where
    // uid 0 is `root`).
    for cg in [&cg_a, &cg_b] {
        assert_eq!(p(cg, "pod-init").user.as_deref(), Some("pod-root"));
        assert_eq!(p(cg, "3001").user.as_deref(), Some("pod-root"));
    }
    // Pod B's 3001 has the same pid in its pod as pod A's: only the cgroup tells them apart.
    assert_eq!(p(&cg_a, "3001").ns_pid, p(&cg_b, "3001").ns_pid);

    let handles: BTreeMap<(u64, &str), Process> = procs
        .iter()
        .map(|(&key, x)| (key, Process::open(x.pid)))
        .collect();
    let h = |cg: &OwnedCgroup, marker: &'static str| &handles[&(cg.id(), marker)];

    // kill: pod A's 3001, by the pid its exec reported.
    let victim = p(&cg_a, "3001").pid;
    assert_eq!(kill(port, victim, false), SensorReply::ok());
    let line = node.stderr_until("the kill's report", |l| {
        l.contains(&format!("killed pid {victim} "))
    });
    assert_eq!(reported_pids(&line), local(&[victim]), "{line}");
    expect_killed(&mut stream, &mut seen, &[victim]);
    assert!(h(&cg_a, "3001").exits_within(Duration::from_secs(10)));
    for (cg, marker) in [(&cg_b, "3001"), (&cg_a, "pod-init"), (&cg_a, "3007")] {
        assert!(h(cg, marker).alive(), "{marker} in {}", cg.path().display());
    }

    // kill with tree: pod A's `tree` shell and its two children, nothing else.
    let tree: Vec<u32> = ["tree", "3002", "3003"]
        .iter()
        .map(|m| p(&cg_a, m).pid)
        .collect();
    assert_eq!(kill(port, tree[0], true), SensorReply::ok());
    let line = node.stderr_until("the tree kill's report", |l| {
        l.contains(&format!("killed pid {} ", tree[0]))
    });
    assert_eq!(reported_pids(&line), local(&tree), "{line}");
    expect_killed(&mut stream, &mut seen, &tree);
    for marker in ["tree", "3002", "3003"] {
        assert!(h(&cg_a, marker).exits_within(Duration::from_secs(10)));
    }

    // kill_group: pod A's `group` (setsid: its own process group) by one of its members.
    let group: Vec<u32> = ["group", "3004", "3005"]
        .iter()
        .map(|m| p(&cg_a, m).pid)
        .collect();
    let pgid = host_pgrp(group[0]);
    assert_eq!(pgid, group[0], "the group's shell leads it");
    assert!(group.iter().all(|&pid| host_pgrp(pid) == pgid));
    assert_ne!(host_pgrp(p(&cg_a, "3007").pid), pgid);
    // The member that moved to the unwatched cgroup.
    let deadline = Instant::now() + Duration::from_secs(10);
    let moved = loop {
        if let Some(pid) = outside
            .pids()
            .into_iter()
            .find(|&pid| host_pgrp(pid) == pgid && cmdline(pid).iter().any(|a| a == "3006"))
        {
            break Process::open(pid);
        }
        assert!(Instant::now() < deadline, "no 3006 of pod A's group");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(kill_group(port, group[2]), SensorReply::ok());
    let line = node.stderr_until("the group kill's report", |l| {
        l.contains(&format!("killed the process group of pid {} ", group[2]))
    });
    assert!(
        line.contains(&format!("(group {}, ", node_pid[&group[0]])),
        "the group as the sensor's /proc numbers it: {line}"
    );
    assert_eq!(reported_pids(&line), local(&group), "{line}");
    expect_killed(&mut stream, &mut seen, &group);
    for marker in ["group", "3004", "3005"] {
        assert!(h(&cg_a, marker).exits_within(Duration::from_secs(10)));
    }

    // Refusals. The decoy: a process of the node in no watched container.
    for reply in [
        kill(port, decoy, false),
        kill(port, decoy, true),
        kill_group(port, decoy),
    ] {
        assert_refused(&reply, "not a live process of a watched container");
    }
    // 3006 was seen forking in pod A but has left its cgroup: not searched for elsewhere.
    assert_refused(&kill(port, moved.pid, false), "left that cgroup");
    assert_refused(&kill_group(port, moved.pid), "left that cgroup");
    // A killed process is no longer known.
    assert_refused(
        &kill(port, victim, false),
        "not a live process of a watched container",
    );
    // A process in pod A's cgroup but in the node's namespace, whose process group leader is
    // the test's (outside the sensor's namespace: group 0 in its /proc): no group to name.
    let mut stray = node.enter();
    stray.args([
        "/bin/sh",
        "-c",
        r#"echo 0 > "$1/cgroup.procs"; exec /bin/sleep 3008"#,
        "stray",
    ]);
    stray.arg(cg_a.path());
    let _stray = Reaped(stray.spawn().expect("running nsenter (util-linux)"));
    let stray = stream.until(&mut seen, |e| match &e.body {
        EventBody::Exec(x) if x.argv.iter().any(|a| a == "3008") => Some(x.pid),
        _ => None,
    });
    assert_eq!(ns_pids(stray).len(), 2);
    let stray = Process::open(stray);
    assert_refused(
        &kill_group(port, stray.pid),
        "process group is not visible in this sensor's pid namespace",
    );

    // Everything not killed on purpose still runs: the other pod, pod A's pid 1 and 3007, the
    // moved member of the killed group, the decoy, the stray.
    std::thread::sleep(Duration::from_millis(200));
    let killed: BTreeSet<u32> = [victim]
        .iter()
        .chain(&tree)
        .chain(&group)
        .copied()
        .collect();
    let mut survivors: Vec<(&str, &Process)> = handles
        .iter()
        .filter(|(_, h)| !killed.contains(&h.pid))
        .map(|((_, m), h)| (*m, h))
        .collect();
    let decoy = Process::open(decoy);
    survivors.extend([("3006", &moved), ("decoy", &decoy), ("3008", &stray)]);
    assert_eq!(survivors.len(), 2 * MARKERS.len() - 7 + 3);
    for (what, process) in &survivors {
        assert!(process.alive(), "{what} (pid {}) was killed", process.pid);
    }
    let exited: BTreeSet<u32> = seen
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::Exit(x) => Some(x.pid),
            _ => None,
        })
        .collect();
    assert_eq!(exited, killed, "exit events only for what was killed");

    // The stray is a process of a watched container all the same: a plain kill finds it.
    assert_eq!(kill(port, stray.pid, false), SensorReply::ok());
    assert!(stray.exits_within(Duration::from_secs(10)));

    // SIGTERM: the sensor stops cleanly, and as the node's pid 1 its end ends the pods.
    drop(stream);
    node.sensor.signal(libc::SIGTERM);
    let status = node.unshare.0.wait().unwrap();
    node.stderr_until("the sensor's totals", |l| l.contains("routed"));
    assert!(status.success(), "{status:?}: {:#?}", node.said);
    for (what, process) in &survivors {
        assert!(
            process.exits_within(Duration::from_secs(10)),
            "{what} outlived the node"
        );
    }
    for cg in [&cg_a, &cg_b, &outside] {
        assert_eq!(cg.pids(), Vec::<u32>::new(), "{}", cg.path().display());
    }
}
