//! Fingerprints: what each container did, learned from the event stream.
//!
//! [`FingerprintBuilder`] takes events one at a time (it keeps no event, only what it learned,
//! so it streams) and [`FingerprintBuilder::finish`] gives one `SpyderbatFingerprint` per
//! container; [`group_by_image`] bundles them into `FingerprintGroup`s.
//!
//! # Decisions (ours)
//!
//! **Containers.** A container is introduced by its `container` event (keyed by cgroup id);
//! events of a cgroup that was never introduced are left out and counted in [`Stats`].
//! A container with no exec'd process gives no fingerprint (nothing was learned).
//! A process belongs to the container its events are tagged with: an event naming a process
//! the engine knows in *another* container is taken as one of a process whose start was not
//! seen (it never joins two containers' forests).
//!
//! **Order.** Events are taken in the order given. Sort a stream by time first
//! ([`crate::sort_events`]); [`Stats::out_of_order_events`] counts the times that go back.
//! A process forked by a parent the engine did not know yet takes, at its exec, the parent
//! the exec names, when that one is known by then.
//!
//! **Process forest.** A node is an exec'd program. A process whose parent is not a
//! known process of the same container (the container's first process, whose parent is the
//! runtime, or a `kubectl exec` shell) is a root. Under a parent node there is one node per
//! distinct `(name, exe)`: the same program started again by the same parent collapses into
//! the node it already has, with its effective users unioned. The forest is bounded (see
//! [`crate::limits`]): it is at most `process-depth` nodes deep (a deeper program is taken as
//! a child of its ancestor one level above the limit), and a program past `children` (under
//! one node) or `processes` (in the pod) has no node and is left out, so that a policy made
//! from the fingerprint does not allow it.
//! A process that **forks without exec** runs its parent's image, so it is not a node: it is
//! transparent, and what it does (its connections, the programs its children exec) hangs under
//! the nearest exec'd ancestor. A process that **execs again** (`exec` in a shell script)
//! becomes a child of its previous image, so the chain `sh -> exec python` stays visible.
//!
//! **Names.** The node name is the kernel's `comm` after exec, as the kernel has it, which is
//! what Spyderbat writes: the basename of the path that was exec'd (so `pip`, run as a script
//! by `/opt/conda/bin/python3.11`, is named `pip` with exe python3.11, while `python -m
//! ipykernel_launcher` is `python`), **cut at 15 bytes**: `jupyter-notebook` is
//! `jupyter-noteboo`, `start-notebook.py` is `start-notebook.`. Spyderbat's public policies
//! show it (`ip6tables-legac` for `ip6tables-legacy`, `systemd-tmpfile` for
//! `systemd-tmpfiles`, `unattended-upgr` for the `unattended-upgrade` script: 28 names of
//! exactly 15 bytes in the 64 policies of spyctl's library, none longer), so guardlab does
//! not make a cut name whole from the exe or the arguments. With no `comm`, the basename of
//! `argv[0]`, then of the exe, cut the same way. See [`process_name`].
//!
//! **Users.** `euser` is the effective user's name from the exec event, or the numeric euid
//! when the sensor could not name it. Roots always carry `euser`; a child carries it only when
//! it differs from its parent's (children inherit when omitted, as in the public format).
//!
//! **Ids.** `<name>_<n>`, unique in the document, numbered per name in depth-first order over
//! the canonically sorted forest (siblings by name, then exe), so equal behaviour gives equal
//! ids whatever the pids and the order in which siblings started.
//!
//! **Connections.** Egress comes from `connect` events, ingress from `accept` events. The
//! remote is named by DNS when earlier DNS answers in the same container gave its address:
//! by **every name** they gave for it (several names share an address behind a CDN or a
//! virtual host; no answer replaces another), sorted, in the same network node, one
//! `dnsSelector` per name as the public format writes them; otherwise
//! `ipBlock: {cidr: a.b.c.d/32}` (`/128` for IPv6; v4-mapped IPv6 addresses are written as
//! IPv4). Names are in normal form: lower case, no trailing dot.
//! The port of egress is the destination port; the port of **ingress is the local, listening
//! port, never the peer's ephemeral port**.
//! **Loopback and pod-internal traffic is left out** of the network policy: a connection to or
//! from `127.0.0.0/8`, `::1`, the unspecified address or the pod's own address never leaves the
//! pod (all containers of a pod share one network namespace), and the policy describes the
//! pod's boundary, like a Kubernetes NetworkPolicy. This is what makes a notebook's fingerprint
//! stable: Jupyter's kernel and server talk over 127.0.0.1 on ports chosen at random on every
//! start, and none of that appears. For the same reason sockets listening only on loopback are
//! not `listeningSockets`. Everything left out is counted in [`Stats`].
//! A connection by a process whose start the sensor did not see names no process
//! (`processes: []`, meaning any).
//! **Name lookups are not connections.** A UDP datagram to port 53 is a DNS query: it is left
//! out of the network policy, as Spyderbat leaves it out (no public fingerprint or policy has
//! a UDP rule, not even those of resolvers and of programs that name their peers by
//! `dnsSelector`; spyctl names an egress peer by the connection's `remote_hostname`). What a
//! lookup brings is its answer, which names the connection that follows (`dnsSelector`).
//! [`Stats::name_lookups`] counts them. DNS over TCP is a connection like any other.
//!
//! **Network nodes.** For each remote, the set of processes that reached it and the set of
//! ports is collected; remotes with the same process set and port set share one node. Nodes
//! are in canonical order (see [`crate::canonical`]). A pod's distinct connections (process,
//! remote, port) past `connections` are left out, and so not allowed by a policy made from
//! the fingerprint; names past the DNS limits are not kept, and the address names the remote.
//!
//! **Untrusted executables.** An exec whose `exe_status` is not `resolved` (fileless: a memfd
//! or a file outside the process's root, `exe` being `memfd:NAME`; a truncated path; an
//! unresolved one) is fingerprinted like any other, with the exe as the sensor reported it:
//! a fingerprint says what ran. [`Stats::untrusted_exes`] counts them. A policy made from the
//! fingerprint keeps the node, but the node never allows that exec again: the deviation
//! matcher covers no untrusted exec by any exe glob (see [`crate::deviation`]), so the node
//! only keeps the process tree whole (what the exec started hangs under it). The rule lives
//! in the matcher because the public format has no word for an untrusted exe, and there it
//! holds for every policy, whoever wrote it. A fileless exe is not an absolute path, so it
//! never covers a resolved exec either; a truncated or unresolved exe that reads like an
//! absolute path does cover a resolved exec of exactly that path (a real path, then).
//!
//! **Time window.** [`FingerprintBuilder::with_window`] records only what happens in a
//! [`TimeWindow`] (`since` included, `until` left out; see [`crate::window`]), while every
//! event of the stream still goes into the containers, the process tree and the DNS names: a
//! process started before the window is still the parent of what it starts in it, and a
//! name answered before it still names a connection in it. Recorded are the programs exec'd
//! in the window and the listening sockets and connections opened in it, and, so that each
//! hangs where it ran, the programs that owned those sockets and connections and the
//! ancestors of all of these, as they were exec'd (with the effective users of those execs);
//! nothing else of theirs (a listening socket or a child from before the window is left out).
//! A container with nothing recorded gives no fingerprint; a fingerprint's times are the
//! first and last event of its container in the window. [`FingerprintBuilder::window_counts`]
//! says how many events fell before, in and after the window; [`Stats`] covers the whole
//! stream.
//!
//! **Metadata and selectors.** `name` is the image's short name (`minimal-notebook` for
//! `jupyter/minimal-notebook:latest`); timestamps are the container's first and last event
//! (in the window, with one), in epoch seconds to the microsecond. `containerSelector` has
//! the image and image id, `namespaceSelector` the namespace's `kubernetes.io/metadata.name`,
//! `podSelector` the pod's labels less those that change with every rollout or name one pod
//! (`pod-template-hash`, `controller-revision-hash`, `pod-template-generation`,
//! `statefulset.kubernetes.io/pod-name`, `apps.kubernetes.io/pod-index`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use guardlab_events::{Event, Protocol};
use rustc_hash::{FxHashMap, FxHashSet};
use serde::Serialize;

use crate::canonical::canonicalize;
use crate::id::typed_id;
use crate::limits::{Limits, StateSize};
pub use crate::model::epoch_seconds;
use crate::model::{
    API_VERSION, ContainerSelector, EgressNode, Fingerprint, FingerprintGroup, GroupData,
    GroupMetadata, IngressNode, IpBlock, KIND_FINGERPRINT, KIND_FINGERPRINT_GROUP, LabelSelector,
    Metadata, NetworkPolicy, Peer, PortSpec, ProcessNode, Spec,
};
pub use crate::names::{image_short_name, process_name};
use crate::net::host_cidr;
use crate::tracker::{ContainerId, ImageId, NameSetId, Step, Sym, Tracker};
pub use crate::tracker::{Direction, Stats};
use crate::window::{Place, TimeWindow};

/// Pod labels that differ between pods of one workload or between rollouts.
const VOLATILE_POD_LABELS: &[&str] = &[
    "pod-template-hash",
    "controller-revision-hash",
    "pod-template-generation",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
];

typed_id!(
    /// A node of the fingerprints' process forests ([`FpNode`]).
    FpNodeId
);

struct FpNode {
    container: ContainerId,
    /// None for a root of the container's forest.
    parent: Option<FpNodeId>,
    name: Sym,
    exe: Sym,
    /// The effective users of its recorded execs.
    eusers: Vec<Sym>,
    sockets: Vec<(u16, Protocol)>,
    /// One of its program nodes is recorded: the node is in the fingerprint.
    recorded: bool,
}

/// The bytes charged to a pod for a node of the fingerprint, and for a connection.
const FP_NODE_BYTES: u64 = 96;
const FACT_BYTES: u64 = 64;

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum PeerFact {
    /// A set of names (see `crate::tracker::NameSets`).
    Dns(NameSetId),
    Ip(IpAddr),
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct NetFact {
    container: ContainerId,
    /// The process node; none for a process we never saw start.
    node: Option<FpNodeId>,
    direction: Direction,
    peer: PeerFact,
    protocol: Protocol,
    port: u16,
}

/// How many events fell before, in and after a [`TimeWindow`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WindowCounts {
    pub before: u64,
    pub within: u64,
    pub after: u64,
}

/// Learns fingerprints from events, one event at a time.
#[derive(Default)]
pub struct FingerprintBuilder {
    tracker: Tracker,
    /// What is recorded; the tracker sees every event.
    window: TimeWindow,
    counts: WindowCounts,
    /// Per container: its first and last event in the window (kept only with a window).
    window_times: Vec<Option<(u64, u64)>>,
    /// The node of each program node of the tracker.
    image_node: Vec<FpNodeId>,
    /// Per program node of the tracker: recorded (see the module documentation).
    image_recorded: Vec<bool>,
    nodes: Vec<FpNode>,
    node_index: FxHashMap<(ContainerId, Option<FpNodeId>, Sym, Sym), FpNodeId>,
    facts: FxHashSet<NetFact>,
    /// Per container: its connections in `facts`, against `connections`.
    facts_of: Vec<u32>,
}

impl FingerprintBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// A builder that records only what happens in `window` (see the module documentation);
    /// every event still goes into the process tree and the DNS names.
    pub fn with_window(window: TimeWindow) -> Self {
        FingerprintBuilder {
            window,
            ..Self::default()
        }
    }

    /// The same builder, within other limits than the defaults (see [`crate::limits`]).
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.tracker = Tracker::new(limits);
        self
    }

    /// How much state the builder keeps (see [`StateSize`]): it depends on the distinct
    /// programs and connections of the stream, within the limits, not on its length.
    pub fn state_size(&self) -> StateSize {
        let users: usize = self.nodes.iter().map(|n| n.eusers.len()).sum();
        let sockets: usize = self.nodes.iter().map(|n| n.sockets.len()).sum();
        self.tracker.size()
            + StateSize::table(self.image_node.len(), size_of::<FpNodeId>() + 1, 0)
            + StateSize::table(
                self.nodes.len(),
                size_of::<FpNode>()
                    + size_of::<((ContainerId, Option<FpNodeId>, Sym, Sym), FpNodeId)>()
                    + 8,
                users * size_of::<Sym>() + sockets * size_of::<(u16, Protocol)>(),
            )
            + StateSize::table(self.facts.len(), size_of::<NetFact>() + 8, 0)
    }

    /// How many events so far fell before, in and after the window.
    pub fn window_counts(&self) -> WindowCounts {
        self.counts
    }

    /// Add a user to the node of a program node, charged to its pod.
    fn add_user(&mut self, image: ImageId, euser: Sym, ts: u64) {
        let container = self.tracker.image(image).container;
        let node = self.image_node[image.index()].index();
        if self.nodes[node].eusers.contains(&euser) || !self.tracker.charge(container, 8, ts) {
            return;
        }
        self.nodes[node].eusers.push(euser);
    }

    /// Record a program node, with the user of the exec that recorded it when there is one,
    /// and its ancestors that are not recorded yet, each with the user of its first exec: the
    /// fingerprint's forest then reaches it from its container's root.
    fn record(&mut self, image: ImageId, euser: Option<Sym>, ts: u64) {
        let mut next = Some(image);
        if let Some(euser) = euser {
            self.add_user(image, euser, ts);
            if self.image_recorded[image.index()] {
                return;
            }
            self.image_recorded[image.index()] = true;
            self.nodes[self.image_node[image.index()].index()].recorded = true;
            next = self.tracker.image(image).parent;
        }
        while let Some(image) = next
            && !self.image_recorded[image.index()]
        {
            self.image_recorded[image.index()] = true;
            self.nodes[self.image_node[image.index()].index()].recorded = true;
            let img = self.tracker.image(image);
            let (first_user, parent) = (img.euser, img.parent);
            self.add_user(image, first_user, ts);
            next = parent;
        }
    }

    /// Take one event into account.
    pub fn observe(&mut self, event: &Event) {
        let place = self.window.place(event.ts);
        let step = self.tracker.observe(event);
        let within = place == Place::Within;
        match place {
            Place::Before => self.counts.before += 1,
            Place::Within => self.counts.within += 1,
            Place::After => self.counts.after += 1,
        }
        if within
            && !self.window.is_all()
            && let Some(c) = self.tracker.container_of(event)
        {
            let c = c.index();
            if self.window_times.len() <= c {
                self.window_times.resize(c + 1, None);
            }
            let times = self.window_times[c].get_or_insert((event.ts, event.ts));
            *times = (times.0.min(event.ts), times.1.max(event.ts));
        }
        match step {
            Step::Exec(obs) => {
                let Some(image) = obs.image.filter(|_| obs.placed) else {
                    // A limit kept the exec from having a node: left out (the tracker flagged it).
                    return;
                };
                if obs.new {
                    let img = self.tracker.image(image);
                    let parent = img.parent.map(|p| self.image_node[p.index()]);
                    let key = (img.container, parent, img.name, img.exe);
                    let next = FpNodeId::new(self.nodes.len());
                    let node = *self.node_index.entry(key).or_insert(next);
                    if node == next {
                        let (container, name, exe) = (img.container, img.name, img.exe);
                        // The tracker's node was charged already; this one rides on it.
                        self.nodes.push(FpNode {
                            container,
                            parent,
                            name,
                            exe,
                            eusers: Vec::new(),
                            sockets: Vec::new(),
                            recorded: false,
                        });
                        self.tracker.charge(container, FP_NODE_BYTES, event.ts);
                    }
                    debug_assert_eq!(self.image_node.len(), image.index());
                    self.image_node.push(node);
                    self.image_recorded.push(false);
                }
                if within {
                    self.record(image, Some(obs.euser), event.ts);
                }
            }
            Step::Listen {
                image: Some(image),
                protocol,
                port,
            } if within => {
                self.record(image, None, event.ts);
                let container = self.tracker.image(image).container;
                let n = &self.nodes[self.image_node[image.index()].index()];
                if !n.sockets.contains(&(port, protocol))
                    && self.tracker.charge(container, 8, event.ts)
                {
                    self.nodes[self.image_node[image.index()].index()]
                        .sockets
                        .push((port, protocol));
                }
            }
            Step::Net(obs) if within => {
                let node = obs.image.map(|image| {
                    self.record(image, None, event.ts);
                    self.image_node[image.index()]
                });
                let peer = match obs.dns {
                    Some(set) => PeerFact::Dns(set),
                    None => PeerFact::Ip(obs.ip),
                };
                let fact = NetFact {
                    container: obs.container,
                    node,
                    direction: obs.direction,
                    peer,
                    protocol: obs.protocol,
                    port: obs.port,
                };
                if self.facts.contains(&fact) {
                    return;
                }
                let c = obs.container.index();
                if self.facts_of.len() <= c {
                    self.facts_of.resize(c + 1, 0);
                }
                let limit = self.tracker.limits.connections;
                if self.facts_of[c] >= limit {
                    self.tracker.limit_met(
                        "connections",
                        u64::from(limit),
                        obs.container,
                        event.ts,
                        "further connections are left out of the fingerprint: a policy made from it does not allow them",
                    );
                    return;
                }
                if !self.tracker.charge(obs.container, FACT_BYTES, event.ts) {
                    return;
                }
                self.facts_of[c] += 1;
                self.facts.insert(fact);
            }
            _ => {}
        }
    }

    /// Take every event of a stream into account.
    pub fn observe_all<'a>(&mut self, events: impl IntoIterator<Item = &'a Event>) {
        for event in events {
            self.observe(event);
        }
    }

    /// What was seen and what was left out so far.
    pub fn stats(&self) -> &Stats {
        &self.tracker.stats
    }

    /// One fingerprint per container that ran at least one program, in a stable order
    /// (image, namespace, container name, container id).
    pub fn finish(&self) -> Vec<Fingerprint> {
        self.build().into_iter().map(|(fp, _)| fp).collect()
    }

    /// The fingerprints bundled per image, with the machines they ran on.
    pub fn finish_grouped(&self) -> Vec<FingerprintGroup> {
        group(self.build())
    }

    fn build(&self) -> Vec<(Fingerprint, String)> {
        let syms = &self.tracker.syms;
        let ncont = self.tracker.containers.len();
        let mut roots: Vec<Vec<FpNodeId>> = vec![Vec::new(); ncont];
        let mut children: Vec<Vec<FpNodeId>> = vec![Vec::new(); self.nodes.len()];
        for (i, n) in self.nodes.iter().enumerate() {
            if !n.recorded {
                continue;
            }
            match n.parent {
                None => roots[n.container.index()].push(FpNodeId::new(i)),
                Some(parent) => children[parent.index()].push(FpNodeId::new(i)),
            }
        }
        let order = |a: &FpNodeId, b: &FpNodeId| {
            let (x, y) = (&self.nodes[a.index()], &self.nodes[b.index()]);
            (syms.get(x.name), syms.get(x.exe)).cmp(&(syms.get(y.name), syms.get(y.exe)))
        };
        for list in roots.iter_mut().chain(children.iter_mut()) {
            list.sort_by(order);
        }
        // Facts per container.
        let mut facts_of: Vec<Vec<&NetFact>> = vec![Vec::new(); ncont];
        for fact in &self.facts {
            facts_of[fact.container.index()].push(fact);
        }

        let mut out = Vec::new();
        for (c, rec) in self.tracker.containers.iter().enumerate() {
            if roots[c].is_empty() {
                continue;
            }
            let mut ids: FxHashMap<FpNodeId, String> = FxHashMap::default();
            let mut counters: BTreeMap<String, usize> = BTreeMap::new();
            let process_policy: Vec<ProcessNode> = roots[c]
                .iter()
                .map(|&r| self.emit_node(r, None, &children, &mut ids, &mut counters))
                .collect();

            // Per (direction, peer): the processes (None = any) and the ports.
            type PeerUse = (Option<BTreeSet<String>>, BTreeSet<(u16, Protocol)>);
            let mut per_peer: BTreeMap<(Direction, PeerSort), PeerUse> = BTreeMap::new();
            for fact in &facts_of[c] {
                let peer = match fact.peer {
                    PeerFact::Dns(set) => PeerSort::Dns(
                        self.tracker
                            .dns_names(Some(set))
                            .map(str::to_string)
                            .collect(),
                    ),
                    PeerFact::Ip(ip) => PeerSort::Ip(ip),
                };
                let entry = per_peer
                    .entry((fact.direction, peer))
                    .or_insert_with(|| (Some(BTreeSet::new()), BTreeSet::new()));
                // A process never seen starting names no node: any process. A node of another
                // container's forest cannot be named here either (the tracker never lets that
                // happen); should it, the process is "unknown" too.
                match fact.node.and_then(|node| ids.get(&node)) {
                    Some(id) => {
                        if let Some(set) = entry.0.as_mut() {
                            set.insert(id.clone());
                        }
                    }
                    None => entry.0 = None,
                }
                entry.1.insert((fact.port, fact.protocol));
            }
            type NodeKey = (Direction, Vec<String>, Vec<(u16, Protocol)>);
            let mut grouped: BTreeMap<NodeKey, Vec<Peer>> = BTreeMap::new();
            for ((direction, peer), (procs, ports)) in per_peer {
                let procs: Vec<String> = procs.map(|s| s.into_iter().collect()).unwrap_or_default();
                let key = (direction, procs, ports.into_iter().collect());
                grouped.entry(key).or_default().push(peer.into_peer());
            }
            let mut network = NetworkPolicy::default();
            for ((direction, processes, ports), peers) in grouped {
                let ports = ports
                    .into_iter()
                    .map(|(port, proto)| PortSpec {
                        protocol: proto.to_string(),
                        port: port.into(),
                        end_port: None,
                    })
                    .collect();
                match direction {
                    Direction::Egress => network.egress.push(EgressNode {
                        to: peers,
                        processes,
                        ports,
                    }),
                    Direction::Ingress => network.ingress.push(IngressNode {
                        from: peers,
                        processes,
                        ports,
                    }),
                }
            }

            let info = &rec.info;
            // With a window, the times of what was recorded: the window's part of the stream.
            let (first_ts, last_ts) = self
                .window_times
                .get(c)
                .copied()
                .flatten()
                .unwrap_or((rec.first_ts, rec.last_ts));
            let mut fp = Fingerprint {
                api_version: API_VERSION.into(),
                kind: KIND_FINGERPRINT.into(),
                metadata: Metadata {
                    name: fingerprint_name(&info.image, &info.container_name),
                    kind: "container".into(),
                    first_timestamp: Some(epoch_seconds(first_ts)),
                    latest_timestamp: Some(epoch_seconds(last_ts)),
                    container_id: non_empty(&info.container_id),
                    container_name: non_empty(&info.container_name),
                    namespace: non_empty(&info.namespace),
                    ..Metadata::default()
                },
                spec: Spec {
                    container_selector: Some(ContainerSelector {
                        image: non_empty(&info.image),
                        image_id: non_empty(&info.image_id),
                        ..ContainerSelector::default()
                    }),
                    namespace_selector: (!info.namespace.is_empty()).then(|| LabelSelector {
                        match_labels: BTreeMap::from([(
                            "kubernetes.io/metadata.name".to_string(),
                            info.namespace.clone(),
                        )]),
                        ..LabelSelector::default()
                    }),
                    pod_selector: pod_selector(&info.pod_labels),
                    process_policy,
                    network_policy: network,
                    ..Spec::default()
                },
            };
            canonicalize(&mut fp);
            out.push((fp, info.machine.clone()));
        }
        out.sort_by_key(|(fp, _)| fingerprint_order(fp));
        out
    }

    fn emit_node(
        &self,
        node: FpNodeId,
        parent_eusers: Option<&[String]>,
        children: &[Vec<FpNodeId>],
        ids: &mut FxHashMap<FpNodeId, String>,
        counters: &mut BTreeMap<String, usize>,
    ) -> ProcessNode {
        let syms = &self.tracker.syms;
        let n = &self.nodes[node.index()];
        let name = syms.get(n.name).to_string();
        let counter = counters.entry(name.clone()).or_insert(0);
        let id = format!("{name}_{counter}");
        *counter += 1;
        ids.insert(node, id.clone());
        let mut eusers: Vec<String> = n.eusers.iter().map(|&u| syms.get(u).to_string()).collect();
        eusers.sort();
        let mut sockets = n.sockets.clone();
        sockets.sort();
        let kids: Vec<ProcessNode> = children[node.index()]
            .iter()
            .map(|&k| self.emit_node(k, Some(&eusers), children, ids, counters))
            .collect();
        ProcessNode {
            name,
            exe: vec![syms.get(n.exe).to_string()],
            id,
            euser: (parent_eusers != Some(eusers.as_slice())).then_some(eusers),
            listening_sockets: (!sockets.is_empty()).then(|| {
                sockets
                    .into_iter()
                    .map(|(port, proto)| PortSpec {
                        protocol: proto.to_string(),
                        port: port.into(),
                        end_port: None,
                    })
                    .collect()
            }),
            children: (!kids.is_empty()).then_some(kids),
        }
    }
}

/// A remote, ordered as the canonical form wants: names first, then IPv4, then IPv6.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum PeerSort {
    /// The names of one address, sorted.
    Dns(Vec<String>),
    Ip(IpAddr),
}

impl PeerSort {
    /// One peer; canonical form then writes one `dnsSelector` per name.
    fn into_peer(self) -> Peer {
        match self {
            PeerSort::Dns(names) => Peer::DnsSelector(names),
            PeerSort::Ip(ip) => Peer::IpBlock(IpBlock {
                cidr: host_cidr(ip),
                except: Vec::new(),
            }),
        }
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

fn fingerprint_name(image: &str, container_name: &str) -> String {
    let short = image_short_name(image);
    if !short.is_empty() {
        short.to_string()
    } else if !container_name.is_empty() {
        container_name.to_string()
    } else {
        "container".to_string()
    }
}

fn pod_selector(labels: &BTreeMap<String, String>) -> Option<LabelSelector> {
    let match_labels: BTreeMap<String, String> = labels
        .iter()
        .filter(|(k, _)| !VOLATILE_POD_LABELS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    (!match_labels.is_empty()).then(|| LabelSelector {
        match_labels,
        ..LabelSelector::default()
    })
}

fn fingerprint_order(fp: &Fingerprint) -> (String, String, String, String) {
    let image = fp
        .spec
        .container_selector
        .as_ref()
        .and_then(|c| c.image.clone())
        .unwrap_or_default();
    let m = &fp.metadata;
    (
        image,
        m.namespace.clone().unwrap_or_default(),
        m.container_name.clone().unwrap_or_default(),
        m.container_id.clone().unwrap_or_default(),
    )
}

/// Every fingerprint of a stream, in one call.
pub fn fingerprints<'a>(events: impl IntoIterator<Item = &'a Event>) -> Vec<Fingerprint> {
    let mut builder = FingerprintBuilder::new();
    builder.observe_all(events);
    builder.finish()
}

/// Every fingerprint of a stream bundled per image, in one call.
pub fn fingerprint_groups<'a>(
    events: impl IntoIterator<Item = &'a Event>,
) -> Vec<FingerprintGroup> {
    let mut builder = FingerprintBuilder::new();
    builder.observe_all(events);
    builder.finish_grouped()
}

/// Bundle fingerprints per image (image and image id), sorted by image. The machines are not
/// part of a fingerprint, so they stay empty here ([`FingerprintBuilder::finish_grouped`] has them).
pub fn group_by_image(fingerprints: Vec<Fingerprint>) -> Vec<FingerprintGroup> {
    group(fingerprints.into_iter().map(|fp| (fp, String::new())))
}

fn group(items: impl IntoIterator<Item = (Fingerprint, String)>) -> Vec<FingerprintGroup> {
    let mut groups: BTreeMap<(String, String), (Vec<Fingerprint>, BTreeSet<String>)> =
        BTreeMap::new();
    for (fp, machine) in items {
        let sel = fp.spec.container_selector.clone().unwrap_or_default();
        let entry = groups
            .entry((
                sel.image.unwrap_or_default(),
                sel.image_id.unwrap_or_default(),
            ))
            .or_default();
        entry.0.push(fp);
        if !machine.is_empty() {
            entry.1.insert(machine);
        }
    }
    groups
        .into_iter()
        .map(|((image, image_id), (mut fps, machines))| {
            fps.sort_by_key(fingerprint_order);
            let first = fps
                .iter()
                .filter_map(|f| f.metadata.first_timestamp)
                .reduce(f64::min);
            let latest = fps
                .iter()
                .filter_map(|f| f.metadata.latest_timestamp)
                .reduce(f64::max);
            let names: BTreeSet<String> = fps
                .iter()
                .filter_map(|f| f.metadata.container_name.clone())
                .collect();
            let ids: BTreeSet<String> = fps
                .iter()
                .filter_map(|f| f.metadata.container_id.clone())
                .collect();
            FingerprintGroup {
                api_version: API_VERSION.into(),
                kind: KIND_FINGERPRINT_GROUP.into(),
                metadata: GroupMetadata {
                    image,
                    image_id,
                    first_timestamp: first,
                    latest_timestamp: latest,
                    ..GroupMetadata::default()
                },
                data: GroupData {
                    fingerprints: fps,
                    container_names: names.into_iter().collect(),
                    container_ids: ids.into_iter().collect(),
                    machines: machines.into_iter().collect(),
                },
            }
        })
        .collect()
}

/// The fingerprints inside groups, for `policy create --from` with group files.
pub fn fingerprints_of_groups(groups: &[FingerprintGroup]) -> Vec<Fingerprint> {
    groups
        .iter()
        .flat_map(|g| g.data.fingerprints.iter().cloned())
        .collect()
}

#[cfg(test)]
mod tests;
