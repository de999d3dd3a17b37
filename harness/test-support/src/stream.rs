//! A small builder of hand-written event streams: each event 1 ms after the previous one (or
//! another spacing, for streams at a given rate), pids counting up from the first, process start
//! times growing with the stream, so that a test writes only what a process does.

use std::collections::BTreeMap;
use std::net::IpAddr;

use guardlab_events::{
    Connection, ContainerInfo, DnsAnswer, Event, EventBody, ExeStatus, Listen, ProcessExec,
    ProcessExit, ProcessFork, ProcessKey, Protocol,
};

/// Builds events in time order: every event is 1 ms after the previous one, unless
/// [`Stream::set_spacing_ns`] says otherwise.
pub struct Stream {
    pub events: Vec<Event>,
    ts: u64,
    next_pid: u32,
    boot_ns: u64,
    /// The time from one event to the next.
    spacing_ns: u64,
}

/// What an exec looks like.
pub struct Exec<'a> {
    pub exe: &'a str,
    pub comm: &'a str,
    pub argv: &'a [&'a str],
    pub euser: &'a str,
    pub euid: u32,
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// A plain program run as `argv[0]`: comm is the basename of argv[0], cut at 15 bytes.
pub fn prog<'a>(exe: &'a str, argv: &'a [&'a str], euser: &'a str) -> Exec<'a> {
    let comm = basename(argv.first().copied().unwrap_or(exe));
    let comm = &comm[..comm.len().min(15)];
    Exec {
        exe,
        comm,
        argv,
        euser,
        euid: if euser == "root" { 0 } else { 1000 },
    }
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("a test address")
}

impl Stream {
    /// `start_s`: epoch seconds of the first event; `first_pid`: host pid of the first process.
    pub fn new(start_s: u64, first_pid: u32) -> Self {
        Stream {
            events: Vec::new(),
            ts: start_s * 1_000_000_000,
            next_pid: first_pid,
            boot_ns: 5_000_000_000,
            spacing_ns: 1_000_000,
        }
    }

    /// From now on, each event comes `ns` nanoseconds after the previous one (1 ms at first):
    /// a stream at a given rate of events per second.
    pub fn set_spacing_ns(&mut self, ns: u64) {
        self.spacing_ns = ns;
    }

    fn push(&mut self, body: EventBody) {
        self.ts += self.spacing_ns;
        self.boot_ns += self.spacing_ns;
        self.events.push(Event::new(self.ts, body));
    }

    /// Let time pass.
    pub fn wait_ms(&mut self, ms: u64) {
        self.ts += ms * 1_000_000;
        self.boot_ns += ms * 1_000_000;
    }

    /// Skip pids (other processes on the host).
    pub fn skip_pids(&mut self, n: u32) {
        self.next_pid += n;
    }

    pub fn container(&mut self, info: ContainerInfo) {
        self.push(EventBody::Container(info));
    }

    fn new_key(&mut self) -> ProcessKey {
        let pid = self.next_pid;
        self.next_pid += 1;
        ProcessKey(pid, self.boot_ns)
    }

    /// A process forked by `parent` (no exec yet).
    pub fn fork(&mut self, cgroup: u64, parent: ProcessKey) -> ProcessKey {
        let key = self.new_key();
        self.push(EventBody::Fork(ProcessFork {
            key,
            cgroup_id: cgroup,
            pid: key.0,
            ns_pid: key.0 % 1000,
            parent,
            comm: String::new(),
        }));
        key
    }

    /// `key` execs (after a fork, or again).
    pub fn exec_as(&mut self, cgroup: u64, key: ProcessKey, parent: Option<ProcessKey>, e: Exec) {
        self.push(EventBody::Exec(ProcessExec {
            key,
            cgroup_id: cgroup,
            pid: key.0,
            ns_pid: key.0 % 1000,
            parent,
            exe: e.exe.into(),
            comm: e.comm.into(),
            argv: e.argv.iter().map(|a| a.to_string()).collect(),
            argv_truncated: false,
            uid: e.euid,
            euid: e.euid,
            gid: 100,
            user: Some(e.euser.into()),
            euser: Some(e.euser.into()),
            exe_status: Default::default(),
            killed: false,
        }));
    }

    /// A new process of `parent` that execs (fork, then exec). With no parent (or one outside
    /// the container), the process appears by its exec alone.
    pub fn spawn(&mut self, cgroup: u64, parent: Option<ProcessKey>, e: Exec) -> ProcessKey {
        let key = match parent {
            Some(p) => self.fork(cgroup, p),
            None => self.new_key(),
        };
        self.exec_as(cgroup, key, parent, e);
        key
    }

    /// [`Stream::spawn`] of a program whose executable the sensor could not resolve to a path
    /// (`exe` is then what the sensor reports: `memfd:NAME` for a fileless one).
    pub fn spawn_untrusted(
        &mut self,
        cgroup: u64,
        parent: Option<ProcessKey>,
        e: Exec,
        status: ExeStatus,
    ) -> ProcessKey {
        let key = self.spawn(cgroup, parent, e);
        match self.events.last_mut().map(|e| &mut e.body) {
            Some(EventBody::Exec(exec)) => exec.exe_status = status,
            _ => unreachable!("spawn ends with the exec"),
        }
        key
    }

    /// The time of the next event (the last one's plus the spacing, 1 ms unless set), in epoch
    /// nanoseconds.
    pub fn next_ts(&self) -> u64 {
        self.ts + self.spacing_ns
    }

    pub fn exit(&mut self, cgroup: u64, key: ProcessKey, code: i32) {
        self.push(EventBody::Exit(ProcessExit {
            key,
            cgroup_id: cgroup,
            pid: key.0,
            code: Some(code),
            signal: None,
        }));
    }

    pub fn killed(&mut self, cgroup: u64, key: ProcessKey, signal: i32) {
        self.push(EventBody::Exit(ProcessExit {
            key,
            cgroup_id: cgroup,
            pid: key.0,
            code: None,
            signal: Some(signal),
        }));
    }

    pub fn listen(
        &mut self,
        cgroup: u64,
        key: ProcessKey,
        protocol: Protocol,
        addr: &str,
        port: u16,
    ) {
        self.push(EventBody::Listen(Listen {
            process: key,
            cgroup_id: cgroup,
            protocol,
            ip: ip(addr),
            port,
        }));
    }

    /// An outbound connection from `local` to `remote`.
    pub fn connect(
        &mut self,
        cgroup: u64,
        key: ProcessKey,
        protocol: Protocol,
        local: (&str, u16),
        remote: (&str, u16),
    ) {
        self.push(EventBody::Connect(Connection {
            process: key,
            cgroup_id: cgroup,
            protocol,
            local_ip: Some(ip(local.0)),
            local_port: Some(local.1),
            remote_ip: ip(remote.0),
            remote_port: remote.1,
            refused: false,
        }));
    }

    /// An inbound connection from `peer` accepted on `local`.
    pub fn accept(&mut self, cgroup: u64, key: ProcessKey, local: (&str, u16), peer: (&str, u16)) {
        self.push(EventBody::Accept(Connection {
            process: key,
            cgroup_id: cgroup,
            protocol: Protocol::Tcp,
            local_ip: Some(ip(local.0)),
            local_port: Some(local.1),
            remote_ip: ip(peer.0),
            remote_port: peer.1,
            refused: false,
        }));
    }

    pub fn dns(&mut self, cgroup: u64, name: &str, addrs: &[&str]) {
        self.push(EventBody::Dns(DnsAnswer {
            cgroup_id: cgroup,
            name: name.into(),
            addresses: addrs.iter().map(|a| ip(a)).collect(),
        }));
    }
}

/// A container of a pod, with the labels a Deployment gives.
pub fn pod_container(cgroup: u64, container_id: &str, image: &str, pod: &str) -> ContainerInfo {
    ContainerInfo {
        cgroup_id: cgroup,
        container_id: container_id.into(),
        container_name: "notebook".into(),
        image: image.into(),
        image_id: "sha256:6e2e1bce440ec41f53e849e56d5c6716ed7f1e1fa614d8dca2bbda49e5cde29e".into(),
        namespace: "cryptominer".into(),
        namespace_labels: BTreeMap::new(),
        pod_name: pod.into(),
        pod_labels: BTreeMap::from([
            ("app".to_string(), "jupyter-notebook".to_string()),
            (
                "pod-template-hash".to_string(),
                pod.rsplit('-').nth(1).unwrap_or("x").to_string(),
            ),
        ]),
        machine: "lab-node".into(),
    }
}

/// A deterministic pseudo-random sequence (xorshift), for "random" ports and names.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number below `n` (not quite uniform: tests and benchmarks need no more).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// An ephemeral port (Linux's default range).
    pub fn port(&mut self) -> u16 {
        32768 + (self.next_u64() % 28000) as u16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec_of(event: &Event) -> &ProcessExec {
        match &event.body {
            EventBody::Exec(exec) => exec,
            other => panic!("expected an exec, got {other:?}"),
        }
    }

    #[test]
    fn events_come_one_millisecond_apart_and_waits_move_time_on() {
        let mut s = Stream::new(100, 4000);
        s.container(pod_container(7, "c1", "app:1", "app-5d8f7-abcde"));
        s.spawn(7, None, prog("/bin/sh", &["sh"], "root"));
        s.wait_ms(250);
        assert_eq!(s.next_ts(), 100_000_000_000 + 253_000_000);
        s.dns(7, "example.org", &["198.18.0.9"]);
        let times: Vec<u64> = s.events.iter().map(|e| e.ts).collect();
        assert_eq!(
            times,
            [100_001_000_000, 100_002_000_000, 100_253_000_000],
            "container, exec, then the answer after the wait"
        );
    }

    #[test]
    fn a_spawn_is_a_fork_then_an_exec_of_the_same_process() {
        let mut s = Stream::new(0, 4000);
        let root = s.spawn(7, None, prog("/bin/sh", &["sh"], "root"));
        s.skip_pids(5);
        let child = s.spawn(7, Some(root), prog("/usr/bin/ls", &["ls", "-l"], "jovyan"));
        assert_eq!((root.pid(), child.pid()), (4000, 4006));
        assert!(child.1 > root.1, "a later process starts later");
        let EventBody::Fork(fork) = &s.events[1].body else {
            panic!("{:?}", s.events[1]);
        };
        assert_eq!((fork.key, fork.parent), (child, root));
        let exec = exec_of(&s.events[2]);
        assert_eq!((exec.key, exec.parent), (child, Some(root)));
        assert_eq!(exec.argv, ["ls", "-l"]);
        assert_eq!((exec.euid, exec.euser.as_deref()), (1000, Some("jovyan")));
        assert_eq!(exec_of(&s.events[0]).euid, 0, "root is uid 0");
        assert!(exec.exe_status.is_resolved());
    }

    #[test]
    fn comm_is_the_basename_of_argv0_cut_at_15_bytes() {
        let e = prog(
            "/opt/conda/bin/python3.11",
            &["/opt/conda/bin/jupyter-labextension"],
            "x",
        );
        assert_eq!(e.comm, "jupyter-labexte");
        assert_eq!(prog("/usr/bin/ls", &[], "x").comm, "ls", "no argv: the exe");
    }

    #[test]
    fn an_untrusted_spawn_carries_its_status() {
        let mut s = Stream::new(0, 10);
        s.spawn_untrusted(
            7,
            None,
            prog("memfd:minerd", &["minerd"], "jovyan"),
            ExeStatus::Fileless,
        );
        assert_eq!(exec_of(&s.events[0]).exe_status, ExeStatus::Fileless);
    }

    #[test]
    fn pod_containers_have_the_labels_of_a_deployment() {
        let info = pod_container(7, "c1", "app:1", "web-7d9f8c6b5-x2k4p");
        assert_eq!(info.pod_labels["app"], "jupyter-notebook");
        assert_eq!(info.pod_labels["pod-template-hash"], "7d9f8c6b5");
    }

    #[test]
    fn the_sequence_is_fixed_by_its_seed() {
        let draw = |seed| {
            let mut rng = Rng(seed);
            (0..8).map(|_| rng.port()).collect::<Vec<_>>()
        };
        assert_eq!(draw(42), draw(42));
        assert_ne!(draw(42), draw(43));
        assert!(draw(42).iter().all(|p| (32768..60768).contains(p)));
        let mut rng = Rng(42);
        assert!((0..100).all(|_| rng.below(3) < 3));
    }
}
