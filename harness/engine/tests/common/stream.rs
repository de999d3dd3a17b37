//! A small builder of hand-written event streams, shared by the engine's unit tests (included
//! with `#[path]`) and its integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::IpAddr;

use guardlab_events::{
    Connection, ContainerInfo, DnsAnswer, Event, EventBody, ExeStatus, Listen, ProcessExec,
    ProcessExit, ProcessFork, ProcessKey, Protocol,
};

/// Builds events in time order: every event is 1 ms after the previous one.
pub struct Stream {
    pub events: Vec<Event>,
    ts: u64,
    next_pid: u32,
    boot_ns: u64,
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
        }
    }

    fn push(&mut self, body: EventBody) {
        self.ts += 1_000_000;
        self.boot_ns += 1_000_000;
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

    /// The time of the next event (the last one's plus 1 ms), in epoch nanoseconds.
    pub fn next_ts(&self) -> u64 {
        self.ts + 1_000_000
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
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// An ephemeral port (Linux's default range).
    pub fn port(&mut self) -> u16 {
        32768 + (self.next() % 28000) as u16
    }
}
