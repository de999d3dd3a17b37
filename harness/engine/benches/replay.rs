//! Replays a generated stream of 1,000,000 events through fingerprinting and deviation
//! matching and prints events per second for each and for both together.
//!
//! `cargo bench -p guardlab-engine --bench replay` (release build). The stream is generated
//! deterministically (a fixed xorshift seed): four containers of two images, each with a
//! server, shells and interpreters that start programs (fork + exec), exits, DNS answers,
//! connections out (some over loopback, some to named hosts, some to bare addresses, DNS
//! datagrams to the resolver), connections in, and workers that fork without exec. The policy
//! is learned from the first 10% of the stream, so the rest has a realistic trickle of
//! deviations (rare programs, new process paths, new hosts).
//!
//! Set `GUARDLAB_BENCH_EVENTS` to replay another number of events.

use std::hint::black_box;
use std::time::{Duration, Instant};

use guardlab_engine::deviation::DeviationMatcher;
use guardlab_engine::fingerprint::FingerprintBuilder;
use guardlab_engine::model::Mode;
use guardlab_engine::policy::create_policy;
use guardlab_events::{
    Connection, ContainerInfo, DnsAnswer, Event, EventBody, ProcessExec, ProcessExit, ProcessFork,
    ProcessKey, Protocol,
};
use guardlab_test_support::stream::Rng;

const TARGET: f64 = 1_000_000.0;
/// Processes alive at once per container (a busy notebook or web server).
const MAX_LIVE: usize = 64;
const ROUNDS: usize = 3;

/// (exe, comm, spawns children)
const COMMON: &[(&str, &str, bool)] = &[
    ("/usr/bin/dash", "sh", true),
    ("/opt/conda/bin/python3.11", "python", true),
    ("/opt/conda/bin/python3.11", "pip", false),
    ("/usr/bin/git", "git", false),
    ("/usr/bin/curl", "curl", false),
    ("/usr/bin/ls", "ls", false),
    ("/usr/bin/cat", "cat", false),
    ("/usr/bin/grep", "grep", false),
    ("/usr/bin/awk", "awk", false),
    ("/usr/bin/sed", "sed", false),
    ("/usr/bin/date", "date", false),
    ("/usr/bin/env", "env", false),
];
const RARE: &[(&str, &str, bool)] = &[
    ("/usr/bin/nc", "nc", false),
    ("/usr/bin/wget", "wget", false),
    ("/tmp/minerd", "minerd", false),
];
const NAMES: &[&str] = &[
    "pypi.org",
    "files.pythonhosted.org",
    "github.com",
    "api.github.com",
    "objects.githubusercontent.com",
    "conda.anaconda.org",
    "repo.anaconda.com",
    "registry.example.com",
    "metrics.example.com",
    "auth.example.com",
    "cdn.example.net",
    "updates.example.org",
];

#[derive(Clone, Copy)]
struct Proc {
    key: ProcessKey,
    depth: u8,
    spawner: bool,
}

struct Container {
    cgroup: u64,
    root: ProcessKey,
    live: Vec<Proc>,
}

struct Gen {
    rng: Rng,
    ts: u64,
    boot: u64,
    next_pid: u32,
    events: Vec<Event>,
}

impl Gen {
    fn push(&mut self, body: EventBody) {
        self.ts += 1_000 + self.rng.next_u64() % 50_000;
        self.events.push(Event::new(self.ts, body));
    }

    fn key(&mut self) -> ProcessKey {
        self.next_pid = if self.next_pid >= 4_000_000 {
            300
        } else {
            self.next_pid + 1
        };
        self.boot += 1_000;
        ProcessKey(self.next_pid, self.boot)
    }

    fn exec(
        &mut self,
        cgroup: u64,
        key: ProcessKey,
        parent: Option<ProcessKey>,
        exe: &str,
        comm: &str,
    ) {
        let euid = if self.rng.below(20) == 0 { 0 } else { 1000 };
        let arg = format!("arg{}", self.rng.below(1000));
        self.push(EventBody::Exec(ProcessExec {
            key,
            cgroup_id: cgroup,
            pid: key.0,
            ns_pid: key.0 % 30_000,
            parent,
            exe: exe.into(),
            comm: comm.into(),
            argv: vec![comm.into(), "--flag".into(), arg],
            argv_truncated: false,
            uid: euid,
            euid,
            gid: 100,
            user: Some(if euid == 0 { "root" } else { "jovyan" }.into()),
            euser: Some(if euid == 0 { "root" } else { "jovyan" }.into()),
            exe_status: Default::default(),
            killed: false,
        }));
    }

    fn connect(
        &mut self,
        cgroup: u64,
        key: ProcessKey,
        protocol: Protocol,
        remote: [u8; 4],
        port: u16,
    ) {
        let local_port = 32768 + self.rng.below(28000) as u16;
        self.push(EventBody::Connect(Connection {
            process: key,
            cgroup_id: cgroup,
            protocol,
            local_ip: Some([198, 18, 9, cgroup as u8].into()),
            local_port: Some(local_port),
            remote_ip: remote.into(),
            remote_port: port,
            refused: false,
        }));
    }
}

fn generate(n: usize) -> Vec<Event> {
    let mut g = Gen {
        rng: Rng(0x9e37_79b9_7f4a_7c15),
        ts: 1_732_780_800_000_000_000,
        boot: 1_000_000,
        next_pid: 1000,
        events: Vec::with_capacity(n + 8),
    };
    let mut containers = Vec::new();
    for i in 0..4u64 {
        let cgroup = 100 + i;
        let image = if i % 2 == 0 {
            "jupyter/minimal-notebook:latest"
        } else {
            "nginx:1.27"
        };
        g.push(EventBody::Container(ContainerInfo {
            cgroup_id: cgroup,
            container_id: format!("{cgroup:064x}"),
            container_name: format!("c{i}"),
            image: image.into(),
            image_id: "sha256:0".into(),
            namespace: "bench".into(),
            pod_name: format!("pod-{i}"),
            pod_labels: [("app".to_string(), format!("app{}", i % 2))].into(),
            machine: "bench-node".into(),
            ..ContainerInfo::default()
        }));
        let root = g.key();
        g.exec(
            cgroup,
            root,
            Some(ProcessKey(1, 1)),
            "/opt/conda/bin/python3.11",
            "server",
        );
        containers.push(Container {
            cgroup,
            root,
            live: vec![Proc {
                key: root,
                depth: 0,
                spawner: true,
            }],
        });
    }
    while g.events.len() < n {
        let c = g.rng.below(containers.len());
        let cgroup = containers[c].cgroup;
        let roll = g.rng.below(100);
        match roll {
            // Start a program: a spawner (root, sh, python; not too deep) forks, the child execs.
            0..=24 => {
                if containers[c].live.len() >= MAX_LIVE {
                    let live = &mut containers[c].live;
                    let p = live.swap_remove(1 + g.rng.below(live.len() - 1));
                    g.push(EventBody::Exit(ProcessExit {
                        key: p.key,
                        cgroup_id: cgroup,
                        pid: p.key.0,
                        code: Some(0),
                        signal: None,
                    }));
                }
                let spawners: Vec<Proc> = containers[c]
                    .live
                    .iter()
                    .copied()
                    .filter(|p| p.spawner && p.depth < 3)
                    .collect();
                let parent = spawners[g.rng.below(spawners.len())];
                let (exe, comm, spawner) = if g.rng.below(400) == 0 {
                    RARE[g.rng.below(RARE.len())]
                } else {
                    COMMON[g.rng.below(COMMON.len())]
                };
                let key = g.key();
                g.push(EventBody::Fork(ProcessFork {
                    key,
                    cgroup_id: cgroup,
                    pid: key.0,
                    ns_pid: key.0 % 30_000,
                    parent: parent.key,
                    comm: String::new(),
                }));
                g.exec(cgroup, key, Some(parent.key), exe, comm);
                containers[c].live.push(Proc {
                    key,
                    depth: parent.depth + 1,
                    spawner,
                });
            }
            // A program ends (never the root); also keeps the live set bounded.
            25..=36 => {
                let live = &mut containers[c].live;
                if live.len() > 1 {
                    let i = 1 + g.rng.below(live.len() - 1);
                    let p = live.swap_remove(i);
                    g.push(EventBody::Exit(ProcessExit {
                        key: p.key,
                        cgroup_id: cgroup,
                        pid: p.key.0,
                        code: Some(0),
                        signal: None,
                    }));
                }
            }
            // A DNS answer.
            37..=46 => {
                let i = g.rng.below(NAMES.len());
                let addr = [198, 18, 10 + i as u8, g.rng.below(4) as u8 + 1];
                g.push(EventBody::Dns(DnsAnswer {
                    cgroup_id: cgroup,
                    name: NAMES[i].into(),
                    addresses: vec![addr.into()],
                }));
            }
            // A connection out: loopback, a named host, the resolver, or a bare address.
            47..=76 => {
                let p = containers[c].live[g.rng.below(containers[c].live.len())].key;
                match g.rng.below(10) {
                    0..=3 => {
                        let port = 32768 + g.rng.below(28000) as u16;
                        g.connect(cgroup, p, Protocol::Tcp, [127, 0, 0, 1], port);
                    }
                    4..=7 => {
                        let i = g.rng.below(NAMES.len());
                        let addr = [198, 18, 10 + i as u8, g.rng.below(4) as u8 + 1];
                        let port = if g.rng.below(4) == 0 { 80 } else { 443 };
                        g.connect(cgroup, p, Protocol::Tcp, addr, port);
                    }
                    8 => g.connect(cgroup, p, Protocol::Udp, [198, 18, 0, 53], 53),
                    _ => {
                        let addr = [198, 18, 1, g.rng.below(16) as u8];
                        g.connect(cgroup, p, Protocol::Tcp, addr, 8080);
                    }
                }
            }
            // A connection in, to the server.
            77..=89 => {
                let root = containers[c].root;
                let peer = [198, 18, 0, 1 + g.rng.below(4) as u8];
                let peer_port = 32768 + g.rng.below(28000) as u16;
                g.push(EventBody::Accept(Connection {
                    process: root,
                    cgroup_id: cgroup,
                    protocol: Protocol::Tcp,
                    local_ip: Some([198, 18, 9, cgroup as u8].into()),
                    local_port: Some(8888),
                    remote_ip: peer.into(),
                    remote_port: peer_port,
                    refused: false,
                }));
            }
            // A worker forks without exec and works (transparent for ancestry).
            _ => {
                let parent = containers[c].live[g.rng.below(containers[c].live.len())];
                let key = g.key();
                g.push(EventBody::Fork(ProcessFork {
                    key,
                    cgroup_id: cgroup,
                    pid: key.0,
                    ns_pid: key.0 % 30_000,
                    parent: parent.key,
                    comm: String::new(),
                }));
                let i = g.rng.below(NAMES.len());
                let addr = [198, 18, 10 + i as u8, g.rng.below(4) as u8 + 1];
                g.connect(cgroup, key, Protocol::Tcp, addr, 443);
                g.push(EventBody::Exit(ProcessExit {
                    key,
                    cgroup_id: cgroup,
                    pid: key.0,
                    code: Some(0),
                    signal: None,
                }));
            }
        }
    }
    g.events.truncate(n);
    g.events
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

/// Best and median of the rounds.
fn measure(n: usize, mut f: impl FnMut() -> usize) -> (f64, f64, usize) {
    let mut rates = Vec::new();
    let mut out = 0;
    for _ in 0..ROUNDS {
        let start = Instant::now();
        out = f();
        rates.push(rate(n, start.elapsed()));
    }
    rates.sort_by(|a, b| b.partial_cmp(a).unwrap());
    (rates[0], rates[ROUNDS / 2], out)
}

fn print(label: &str, (best, median, _): (f64, f64, usize), what: &str) {
    println!(
        "{label:<13} {:>6.2} M events/s best, {:>6.2} M median ({:.2}x the 1 M/s aim)  {what}",
        best / 1e6,
        median / 1e6,
        median / TARGET
    );
}

fn main() {
    let n: usize = std::env::var("GUARDLAB_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let start = Instant::now();
    let events = generate(n);
    let mut kinds = [0usize; 9];
    for e in &events {
        kinds[match e.body {
            EventBody::Container(_) => 0,
            EventBody::Exec(_) => 1,
            EventBody::Fork(_) => 2,
            EventBody::Exit(_) => 3,
            EventBody::Connect(_) => 4,
            EventBody::Accept(_) => 5,
            EventBody::Listen(_) => 6,
            EventBody::Dns(_) => 7,
            EventBody::Lost(_) => 8,
        }] += 1;
    }
    println!(
        "generated {n} events in {:.2} s",
        start.elapsed().as_secs_f64()
    );
    println!(
        "  exec {} fork {} exit {} connect {} accept {} dns {} container {}",
        kinds[1], kinds[2], kinds[3], kinds[4], kinds[5], kinds[7], kinds[0]
    );

    // The policies: learned from the first tenth of the stream, one per image.
    let mut learn = FingerprintBuilder::new();
    learn.observe_all(&events[..n / 10]);
    let groups = learn.finish_grouped();
    let policies: Vec<_> = groups
        .iter()
        .map(|g| {
            create_policy(&g.data.fingerprints, None, Mode::Enforce).expect("a policy per image")
        })
        .collect();
    println!(
        "policies: {} learned from the first {} events",
        policies.len(),
        n / 10
    );

    let fp = measure(n, || {
        let mut b = FingerprintBuilder::new();
        for e in &events {
            b.observe(black_box(e));
        }
        b.finish().len()
    });
    print("fingerprint", fp, &format!("({} fingerprints)", fp.2));

    let mut last = None;
    let dev = measure(n, || {
        let mut m = DeviationMatcher::new(&policies).unwrap();
        let mut findings = 0usize;
        for e in &events {
            findings += m.observe(black_box(e)).len();
        }
        last = Some(m);
        findings
    });
    let matcher = last.expect("measured");
    let start = Instant::now();
    let report = matcher.report();
    let report_time = start.elapsed();
    print(
        "deviations",
        dev,
        &format!(
            "({} findings, {} unique deviations)",
            dev.2,
            report.unique()
        ),
    );
    println!(
        "{:<13} {:.3} s for the report of {} unique deviations (relevance judged for each)",
        "report",
        report_time.as_secs_f64(),
        report.unique()
    );

    let both = measure(n, || {
        let mut b = FingerprintBuilder::new();
        let mut m = DeviationMatcher::new(&policies).unwrap();
        let mut findings = 0usize;
        for e in &events {
            b.observe(black_box(e));
            findings += m.observe(e).len();
        }
        black_box(b.finish());
        findings
    });
    print("together", both, "(fingerprint and match each event)");
}
