//! Agreement of the kernel and the engine on generated streams (issue 16's property): a
//! baseline of random program trees and connections is learned into a policy (fingerprints,
//! `create_policy`, enforce mode, a kill response), compiled for the kernel, and an attack part
//! is generated against a model of exactly what the kernel does with the compiled policy:
//!
//! - each task runs as a policy node, inherited at fork (node 0, the container's root context,
//!   before any allowed exec); the processes running when the policy comes are at their node;
//! - an exec is looked up by (the task's node, exe): the exact path, else the longest `prefix*`
//!   (of equal keys the last one written wins, as in the LPM trie); not found: killed before
//!   its first instruction (the exec event is marked, the process exits by SIGKILL and does
//!   nothing more);
//! - a connect is allowed to loopback, to the compiled destinations (network and port range),
//!   to the pod's resolver on port 53, and to addresses that an answer for an allowed DNS name
//!   gave since the policy came, with that name's ports; else refused (marked, the process
//!   lives on).
//!
//! The engine then replays the marked stream and [`Agreement`] must report: every stopped
//! event a finding with a kill decision (always), and, against the policy as the kernel
//! enforces it (the compiled `widened` list applied to the engine's policy), no difference at
//! all (the goal). Against the learned policy itself, each exec or connect the engine kills
//! and the kernel lets run is a difference whose reason names the widening.

use std::collections::HashMap;
use std::net::IpAddr;

use guardlab_engine::deviation::DeviationMatcher;
use guardlab_engine::fingerprint::FingerprintBuilder;
use guardlab_engine::model::{EgressNode, IpBlock, Mode, Peer, Policy, PortSpec, ProcessNode};
use guardlab_engine::policy::{KillAction, add_kill_action, create_policy};
use guardlab_events::{Event, EventBody, ProcessKey, Protocol};
use guardlab_kernel_policy::agreement::Agreement;
use guardlab_kernel_policy::{KernelPolicy, compile};
use guardlab_test_support::stream::{Rng, Stream, pod_container, prog};
use ipnet::IpNet;

const CG: u64 = 7;
const STREAMS: u64 = 500;
const MAX_DEPTH: usize = 6;
const RESOLVER: &str = "198.18.0.53";
/// Scripts under one directory: the policy allows them as `/home/jovyan/work/*`.
const WORK: &str = "/home/jovyan/work/";

/// (exe, the argv[0]s it runs under: its process names).
const PROGRAMS: &[(&str, &[&str])] = &[
    ("/usr/bin/bash", &["bash"]),
    ("/usr/bin/python3.11", &["python3", "jupyter-lab"]),
    ("/usr/bin/curl", &["curl"]),
    ("/usr/bin/ls", &["ls"]),
    ("/usr/bin/wget", &["wget"]),
    ("/home/jovyan/work/run.sh", &["run.sh"]),
    ("/home/jovyan/work/tools/fetch.sh", &["fetch.sh"]),
    ("/home/jovyan/work/tools/fetch.sh.bak", &["fetch.sh.bak"]),
    ("/tmp/minerd", &["minerd"]),
];

/// Destinations by address: (address, port, protocol).
const ADDRESSES: &[(&str, u16, Protocol)] = &[
    ("198.18.0.10", 443, Protocol::Tcp),
    ("198.18.0.11", 80, Protocol::Tcp),
    ("198.18.1.20", 8080, Protocol::Tcp),
    ("198.18.2.30", 22, Protocol::Tcp),
    ("198.18.9.9", 3333, Protocol::Tcp),
    (RESOLVER, 53, Protocol::Udp),
    ("127.0.0.1", 8888, Protocol::Tcp),
];

/// Destinations by name: (name, its addresses, port).
const NAMES: &[(&str, &[&str], u16)] = &[
    ("pypi.org", &["198.18.3.1"], 443),
    ("files.example.com", &["198.18.3.2", "198.18.3.3"], 443),
    ("pool.miner.test", &["198.18.4.4"], 3333),
];

/// The processes a part of the stream may act on: (key, depth in the tree).
type Alive = Vec<(ProcessKey, usize)>;

/// What the kernel does with a compiled policy (see the module documentation).
struct KernelModel<'p> {
    policy: &'p KernelPolicy,
    destinations: Vec<(IpNet, u16, u16)>,
    resolver: IpAddr,
    /// Each task's policy node (absent: node 0).
    node_of: HashMap<ProcessKey, u32>,
    /// Addresses answers for allowed names gave, with their ports.
    dns_allowed: Vec<(IpAddr, u16, u16)>,
}

impl<'p> KernelModel<'p> {
    fn new(policy: &'p KernelPolicy) -> Self {
        let destinations = policy
            .destinations
            .iter()
            .map(|d| (parse_net(&d.network), d.first_port, d.last_port))
            .collect();
        let resolver = policy
            .resolver
            .as_deref()
            .expect("the test gives the pod a resolver")
            .parse()
            .unwrap();
        KernelModel {
            policy,
            destinations,
            resolver,
            node_of: HashMap::new(),
            dns_allowed: Vec::new(),
        }
    }

    fn fork(&mut self, parent: ProcessKey, child: ProcessKey) {
        if let Some(&node) = self.node_of.get(&parent) {
            self.node_of.insert(child, node);
        }
    }

    /// The node `exe` takes a task running as `parent` to; `None`: the kernel kills it.
    fn lookup(&self, parent: u32, exe: &str) -> Option<u32> {
        let edges = self.policy.nodes.iter().filter(|n| n.parent == parent);
        let exact = edges.clone().rfind(|n| n.exe == exe);
        exact
            .or_else(|| {
                edges
                    .filter_map(|n| Some((n.exe.strip_suffix('*')?, n)))
                    .filter(|(prefix, _)| exe.starts_with(prefix))
                    // `max_by_key` keeps the last of equal lengths, as the trie keeps the last
                    // insert of equal keys.
                    .max_by_key(|(prefix, _)| prefix.len())
                    .map(|(_, n)| n)
            })
            .map(|n| n.node)
    }

    /// The exec of `key`: whether the kernel lets it run.
    fn exec(&mut self, key: ProcessKey, exe: &str) -> bool {
        let parent = self.node_of.get(&key).copied().unwrap_or(0);
        match self.lookup(parent, exe) {
            Some(node) => {
                self.node_of.insert(key, node);
                true
            }
            None => false,
        }
    }

    fn dns(&mut self, name: &str, addresses: &[&str]) {
        for allowed in self.policy.dns_names.iter() {
            let matches = allowed.name == name
                || allowed
                    .name
                    .strip_prefix("*.")
                    .is_some_and(|domain| name.ends_with(&format!(".{domain}")));
            if matches {
                for a in addresses {
                    self.dns_allowed.push((
                        a.parse().unwrap(),
                        allowed.first_port,
                        allowed.last_port,
                    ));
                }
            }
        }
    }

    fn connect_allowed(&self, addr: IpAddr, port: u16) -> bool {
        addr.is_loopback()
            || (port == 53 && addr == self.resolver)
            || self
                .destinations
                .iter()
                .any(|(net, lo, hi)| net.contains(&addr) && (*lo..=*hi).contains(&port))
            || self
                .dns_allowed
                .iter()
                .any(|(a, lo, hi)| *a == addr && (*lo..=*hi).contains(&port))
    }
}

fn parse_net(network: &str) -> IpNet {
    network
        .parse()
        .or_else(|_| network.parse::<IpAddr>().map(IpNet::from))
        .unwrap()
}

fn pick<'a, T>(rng: &mut Rng, items: &'a [T]) -> &'a T {
    &items[rng.below(items.len())]
}

/// One random step of a part of the stream, on `alive`, with the programs `programs` may
/// start. With a kernel model, the kernel decides (and its decisions are marked).
fn step(
    s: &mut Stream,
    rng: &mut Rng,
    alive: &mut Alive,
    programs: &[(&'static str, &'static [&'static str])],
    mut kernel: Option<&mut KernelModel>,
) {
    let (who, depth) = *pick(rng, alive);
    match rng.below(12) {
        // A child that execs a program.
        0..=4 if depth < MAX_DEPTH && !programs.is_empty() => {
            let (exe, names) = *pick(rng, programs);
            let argv0 = *pick(rng, names);
            let euser = if exe.starts_with(WORK) || rng.below(4) > 0 {
                "jovyan"
            } else {
                "root"
            };
            let child = s.fork(CG, who);
            if let Some(k) = kernel.as_deref_mut() {
                k.fork(who, child);
            }
            s.exec_as(CG, child, Some(who), prog(exe, &[argv0], euser));
            if let Some(k) = kernel.as_deref_mut()
                && !k.exec(child, exe)
            {
                mark_last(s, |body| match body {
                    EventBody::Exec(e) => e.killed = true,
                    other => panic!("{other:?}"),
                });
                s.killed(CG, child, 9);
                return;
            }
            alive.push((child, depth + 1));
        }
        // A child that does not exec (yet): the same program.
        5 => {
            let child = s.fork(CG, who);
            if let Some(k) = kernel.as_deref_mut() {
                k.fork(who, child);
            }
            alive.push((child, depth));
        }
        // A connect by address.
        6..=8 => {
            let (addr, port, protocol) = *pick(rng, ADDRESSES);
            connect(s, rng, kernel, who, protocol, addr, port);
        }
        // A lookup, then a connect to one of the addresses it gave.
        9 | 10 => {
            let (name, addresses, port) = *pick(rng, NAMES);
            s.dns(CG, name, addresses);
            if let Some(k) = kernel.as_deref_mut() {
                k.dns(name, addresses);
            }
            let addr = *pick(rng, addresses);
            connect(s, rng, kernel, who, Protocol::Tcp, addr, port);
        }
        // An exit (never the first process: the tree keeps a root).
        _ if alive.len() > 1 => {
            let i = 1 + rng.below(alive.len() - 1);
            let (key, _) = alive.swap_remove(i);
            s.exit(CG, key, 0);
        }
        _ => {}
    }
}

fn connect(
    s: &mut Stream,
    rng: &mut Rng,
    kernel: Option<&mut KernelModel>,
    who: ProcessKey,
    protocol: Protocol,
    addr: &str,
    port: u16,
) {
    let local = if addr.starts_with("127.") {
        "127.0.0.1"
    } else {
        "198.18.0.2"
    };
    s.connect(CG, who, protocol, (local, rng.port()), (addr, port));
    if let Some(k) = kernel
        && !k.connect_allowed(addr.parse().unwrap(), port)
    {
        mark_last(s, |body| match body {
            EventBody::Connect(c) => c.refused = true,
            other => panic!("{other:?}"),
        });
    }
}

fn mark_last(s: &mut Stream, mark: impl FnOnce(&mut EventBody)) {
    mark(&mut s.events.last_mut().expect("an event").body);
}

/// The policy learned from `events`, in enforce mode with a kill response; the scripts under
/// `WORK` are allowed as `WORK*` (as a person would write it).
fn learn(events: &[Event]) -> Policy {
    let mut builder = FingerprintBuilder::new();
    for e in events {
        builder.observe(e);
    }
    let fingerprints = builder.finish();
    let mut policy = create_policy(&fingerprints, None, Mode::Enforce).unwrap();
    add_kill_action(&mut policy, KillAction::AgentKillProcess);
    fn glob_work(nodes: &mut [ProcessNode]) {
        for n in nodes {
            if n.exe.iter().any(|e| e.starts_with(WORK)) {
                n.exe = vec![format!("{WORK}*")];
            }
            glob_work(n.children.as_deref_mut().unwrap_or_default());
        }
    }
    glob_work(&mut policy.spec.process_policy);
    policy
}

/// `policy` as the kernel enforces it: what the compiled `widened` list says the kernel does
/// not check, no longer checked (names, which process may reach a destination), and loopback
/// and the resolver reachable by every process.
fn as_the_kernel_enforces(policy: &Policy) -> Policy {
    let mut wide = policy.clone();
    /// Names no longer checked: siblings with the same exe are one node, with the children
    /// of both (as the kernel has them).
    fn any_name(nodes: Vec<ProcessNode>) -> Vec<ProcessNode> {
        let mut merged: Vec<ProcessNode> = Vec::new();
        for mut n in nodes {
            n.name = "*".into();
            match merged.iter_mut().find(|m| m.exe == n.exe) {
                Some(m) => m
                    .children
                    .get_or_insert_default()
                    .extend(n.children.unwrap_or_default()),
                None => merged.push(n),
            }
        }
        for m in &mut merged {
            m.children = m.children.take().map(any_name);
        }
        merged
    }
    wide.spec.process_policy = any_name(std::mem::take(&mut wide.spec.process_policy));
    let egress = &mut wide.spec.network_policy.egress;
    for e in egress.iter_mut() {
        e.processes.clear();
    }
    for (cidr, port, protocol) in [
        ("127.0.0.0/8", None, "TCP"),
        ("198.18.0.53/32", Some(53), "UDP"),
    ] {
        egress.push(EgressNode {
            to: vec![Peer::IpBlock(IpBlock {
                cidr: cidr.into(),
                except: vec![],
            })],
            processes: vec![],
            ports: vec![PortSpec {
                protocol: protocol.into(),
                port: port.unwrap_or(0),
                end_port: port.is_none().then_some(65535),
            }],
        });
    }
    wide
}

/// The engine on the marked stream, with the kernel enforcing `compiled` from event `from` on.
fn agreement(policy: &Policy, events: &[Event], from: usize, compiled: &KernelPolicy) -> Agreement {
    let mut matcher = DeviationMatcher::new(std::slice::from_ref(policy)).unwrap();
    let mut agreement = Agreement::default();
    for (i, e) in events.iter().enumerate() {
        if i == from {
            agreement.enforcing(Some(compiled));
        }
        let findings = matcher.observe(e);
        agreement.observe(e, &findings);
    }
    agreement
}

/// One generated stream: the learned policy, its compiled form, the marked events and where
/// the kernel's enforcement begins.
struct Case {
    policy: Policy,
    compiled: KernelPolicy,
    events: Vec<Event>,
    enforced_from: usize,
}

fn generate(seed: u64) -> Case {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut s = Stream::new(1_700_000_000, 1000);
    s.container(pod_container(
        CG,
        "c1",
        "lab/notebook:1",
        "notebook-5d8f7-abcde",
    ));
    let root = s.spawn(CG, None, prog("/usr/bin/tini", &["tini"], "root"));
    let mut alive: Alive = vec![(root, 0)];

    // The baseline: some of the programs, some of the destinations.
    let baseline: Vec<_> = PROGRAMS
        .iter()
        .copied()
        .filter(|_| rng.below(3) > 0)
        .collect();
    for _ in 0..10 + rng.below(20) {
        step(&mut s, &mut rng, &mut alive, &baseline, None);
    }
    let policy = learn(&s.events);
    let mut compiled = compile(&policy.spec, None).unwrap();
    compiled.resolver = Some(RESOLVER.into());

    // The policy comes: the running processes are placed at their nodes.
    let mut kernel = KernelModel::new(&compiled);
    for e in &s.events {
        match &e.body {
            EventBody::Fork(f) => kernel.fork(f.parent, f.key),
            EventBody::Exec(x) => {
                assert!(
                    kernel.exec(x.key, &x.exe),
                    "seed {seed}: the baseline's exec of {} has its node in the kernel\n\
                     kernel: {:?}\npolicy: {:?}",
                    x.exe,
                    compiled.nodes,
                    policy.spec.process_policy
                );
            }
            _ => {}
        }
    }
    let enforced_from = s.events.len();
    // The attack: every program, every destination.
    for _ in 0..10 + rng.below(30) {
        step(&mut s, &mut rng, &mut alive, PROGRAMS, Some(&mut kernel));
    }
    Case {
        policy,
        compiled,
        events: s.events,
        enforced_from,
    }
}

#[test]
fn on_generated_streams_the_kernel_stops_only_what_the_engine_kills_and_differences_are_explained()
{
    let (mut stopped, mut let_run, mut differing) = (0, 0, 0);
    for seed in 0..STREAMS {
        let case = generate(seed);
        let Case {
            policy,
            compiled,
            events,
            enforced_from,
        } = &case;

        // Always: every stopped event a finding with a kill decision.
        let learned = agreement(policy, events, *enforced_from, compiled);
        assert_eq!(
            (learned.flagged, learned.kill_decided),
            (learned.stopped, learned.stopped),
            "seed {seed}: {}",
            learned.summary()
        );
        // Against the learned policy, the kills the kernel let run are the differences, each
        // with the widenings as its reason.
        assert_eq!(
            learned.differences.len(),
            learned.let_run,
            "seed {seed}: {}",
            learned.summary()
        );
        for d in &learned.differences {
            assert!(
                d.reason
                    .contains("the kernel's policy is wider than the engine's")
                    && compiled
                        .widened
                        .iter()
                        .all(|w| d.reason.contains(w.as_str())),
                "seed {seed}: {} {:?}",
                d.event,
                d.reason
            );
        }

        // The goal: against the policy as the kernel enforces it, equal sets.
        let wide = agreement(
            &as_the_kernel_enforces(policy),
            events,
            *enforced_from,
            compiled,
        );
        assert!(
            wide.agrees() && wide.stopped == learned.stopped,
            "seed {seed}: {}\ncompiled: {compiled:#?}",
            wide.summary()
        );

        stopped += learned.stopped;
        let_run += learned.let_run;
        differing += usize::from(!learned.agrees());
    }
    // The streams exercise both sides: stopped events, and kills the kernel let run.
    assert!(stopped > STREAMS as usize, "{stopped} stopped in all");
    assert!(
        let_run > 0 && differing > 0,
        "{let_run} let run in {differing} streams"
    );
}
