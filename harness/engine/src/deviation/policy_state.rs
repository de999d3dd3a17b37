//! One policy's view of the stream: which containers it watches, the policy node or the chain
//! of deviant processes each program image maps to, which connections it allows, and its
//! unique deviations with their counts (see the rules in [`super`]).

use std::collections::HashMap;
use std::net::IpAddr;

use guardlab_events::{ExeStatus, ProcessKey, Protocol};
use rustc_hash::{FxHashMap, FxHashSet};

use super::compiled::{CompiledPolicy, PolicyNodeId};
use super::fragment::{Chain, ChainId, DeviationWriter, FragNode, ProcRef, RecordKey};
use crate::id::typed_id;
use crate::model::Deviation;
use crate::tracker::{ContainerId, Direction, ImageId, NameSetId, NetObs, Sym, Tracker};

typed_id!(
    /// A unique deviation ([`Record`]) of one policy's.
    pub(super) RecordId
);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PState {
    /// Not watched by this policy.
    Outside,
    /// Allowed: it runs as this node of the policy.
    Node(PolicyNodeId),
    /// Not allowed: the last process of this chain of deviant ones.
    Deviant(ChainId),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct NetKey {
    direction: Direction,
    process: ProcRef,
    /// A set of names, if any.
    dns: Option<NameSetId>,
    ip: IpAddr,
    protocol: Protocol,
    port: u16,
}

/// What makes a deviant process the one of a chain seen before: its parent's chain (none when
/// its parent is allowed), the policy node it hangs under, and its program; never its
/// effective user (see the rules in [`super`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct ChainKey {
    parent_chain: Option<ChainId>,
    anchor: Option<PolicyNodeId>,
    name: Sym,
    exe: Sym,
    exe_status: ExeStatus,
}

/// Where and when a unique deviation was first seen (for investigation).
#[derive(Clone, Debug)]
pub(crate) struct Occurrence {
    pub container: ContainerId,
    /// None for a process whose start was not seen.
    pub image: Option<ImageId>,
    pub key: ProcessKey,
    pub ts: u64,
    pub connection: Option<OccurredConnection>,
}

#[derive(Clone, Debug)]
pub(crate) struct OccurredConnection {
    pub direction: Direction,
    pub protocol: Protocol,
    pub ip: IpAddr,
    pub port: u16,
    pub remote_port: u16,
    /// The names of the remote (see [`crate::trace::TraceConnection::dns`]).
    pub dns: Option<String>,
    pub refused: bool,
}

pub(crate) struct Record {
    pub deviation: Deviation,
    pub uid: String,
    pub count: u64,
    pub first_ts: u64,
    pub last_ts: u64,
    pub first: Occurrence,
    /// Why it deviates, when the policy could not have allowed it (an untrusted executable).
    pub reason: Option<String>,
    /// Containers a flag was raised for (once per unique deviation and container).
    pub(super) flagged: FxHashSet<ContainerId>,
    /// Containers the audit log said it would flag.
    pub(super) audited: FxHashSet<ContainerId>,
}

pub(crate) struct PolicyState {
    pub c: CompiledPolicy,
    /// Per container of the tracker: watched by this policy.
    pub(super) selected: Vec<bool>,
    /// Per image of the tracker.
    pub(super) states: Vec<PState>,
    /// (parent node or none for a root, name, exe): the node that covers it, if one does.
    child_cache: FxHashMap<(Option<PolicyNodeId>, Sym, Sym), Option<PolicyNodeId>>,
    net_cache: FxHashMap<NetKey, bool>,
    chains: Vec<Chain>,
    chain_index: FxHashMap<ChainKey, ChainId>,
    pub records: Vec<Record>,
    record_index: FxHashMap<RecordKey, RecordId>,
    by_checksum: HashMap<String, RecordId>,
}

impl PolicyState {
    pub(super) fn new(c: CompiledPolicy) -> Self {
        PolicyState {
            c,
            selected: Vec::new(),
            states: Vec::new(),
            child_cache: FxHashMap::default(),
            net_cache: FxHashMap::default(),
            chains: Vec::new(),
            chain_index: FxHashMap::default(),
            records: Vec::new(),
            record_index: FxHashMap::default(),
            by_checksum: HashMap::new(),
        }
    }

    pub(super) fn watches(&self, container: ContainerId) -> bool {
        self.selected
            .get(container.index())
            .copied()
            .unwrap_or(false)
    }

    /// The state of a new image, and the chain it starts or extends when deviant.
    pub(super) fn map_image(&mut self, t: &Tracker, image: ImageId) -> PState {
        let img = t.image(image);
        if !self.watches(img.container) {
            return PState::Outside;
        }
        let parent = img
            .parent
            .map_or(PState::Outside, |p| self.states[p.index()]);
        let (parent_chain, anchor) = match parent {
            PState::Deviant(ch) => (Some(ch), self.chains[ch.index()].anchor),
            PState::Outside | PState::Node(_) => {
                let parent_node = match parent {
                    PState::Node(n) => Some(n),
                    _ => None,
                };
                let key = (parent_node, img.name, img.exe);
                // An untrusted executable is covered by no node, whatever its globs say (fail
                // closed). Checked before the cache, which is keyed by the exe's text: a
                // resolved exec with the same text must neither lend it its node nor take
                // its refusal.
                let cached = if img.exe_status.is_resolved() {
                    self.child_cache.get(&key).copied()
                } else {
                    Some(None)
                };
                let node = match cached {
                    Some(n) => n,
                    None => {
                        let candidates = self.c.children_of(parent_node);
                        let n =
                            self.c
                                .covering(candidates, t.syms.get(img.name), t.syms.get(img.exe));
                        self.child_cache.insert(key, n);
                        n
                    }
                };
                if let Some(node) = node {
                    return PState::Node(node);
                }
                (None, parent_node)
            }
        };
        let key = ChainKey {
            parent_chain,
            anchor,
            name: img.name,
            exe: img.exe,
            exe_status: img.exe_status,
        };
        if let Some(&ch) = self.chain_index.get(&key) {
            return PState::Deviant(ch);
        }
        let mut nodes: Vec<FragNode> = match parent_chain {
            None => Vec::new(),
            Some(pc) => self.chains[pc.index()].nodes.clone(),
        };
        let name = t.syms.get(img.name);
        let id = (0..)
            .map(|k| format!("{name}_{k}"))
            .find(|id| !self.c.ids.contains(id) && !nodes.iter().any(|n| &n.id == id))
            .expect("an unbounded search finds a free id");
        nodes.push(FragNode {
            name: img.name,
            exe: img.exe,
            exe_status: img.exe_status,
            euser: img.euser,
            id,
        });
        let ch = ChainId::new(self.chains.len());
        self.chains.push(Chain { anchor, nodes });
        self.chain_index.insert(key, ch);
        PState::Deviant(ch)
    }

    /// The node an image maps to: (id, deviant), or `None` when the policy does not watch it.
    pub(crate) fn label(&self, image: ImageId) -> Option<(String, bool)> {
        match *self.states.get(image.index())? {
            PState::Node(n) => Some((self.c.node(n).id.clone(), false)),
            PState::Deviant(c) => self.chains[c.index()]
                .nodes
                .last()
                .map(|n| (n.id.clone(), true)),
            PState::Outside => None,
        }
    }

    pub(super) fn proc_ref(&self, image: Option<ImageId>) -> ProcRef {
        let Some(image) = image else {
            return ProcRef::Unknown;
        };
        match self.states[image.index()] {
            PState::Node(n) => ProcRef::Node(n),
            PState::Deviant(c) => ProcRef::Chain(c),
            PState::Outside => ProcRef::Unknown,
        }
    }

    pub(super) fn allowed(&mut self, t: &Tracker, obs: &NetObs, process: ProcRef) -> bool {
        let key = NetKey {
            direction: obs.direction,
            process,
            dns: obs.dns,
            ip: obs.ip,
            protocol: obs.protocol,
            port: obs.port,
        };
        if let Some(&ok) = self.net_cache.get(&key) {
            return ok;
        }
        let node = match process {
            ProcRef::Node(n) => Some(n),
            _ => None,
        };
        let names: Vec<&str> = t.dns_names(obs.dns).collect();
        let nets = match obs.direction {
            Direction::Ingress => &self.c.ingress,
            Direction::Egress => &self.c.egress,
        };
        let ok = nets.iter().any(|n| {
            n.allows_port(obs.protocol, obs.port)
                && n.allows_process(node)
                && n.allows_peer(&names, obs.ip)
        });
        self.net_cache.insert(key, ok);
        ok
    }

    /// The record for a deviation key, made on first sight. Returns (record, new).
    pub(super) fn record(
        &mut self,
        t: &Tracker,
        key: RecordKey,
        occurrence: Occurrence,
    ) -> (RecordId, bool) {
        if let Some(&r) = self.record_index.get(&key) {
            return (r, false);
        }
        let writer = DeviationWriter {
            policy: &self.c,
            chains: &self.chains,
            tracker: t,
        };
        let deviation = writer.deviation(key);
        let reason = writer.reason(key);
        if let Some(&r) = self.by_checksum.get(&deviation.metadata.checksum) {
            self.record_index.insert(key, r);
            return (r, false);
        }
        let r = RecordId::new(self.records.len());
        self.by_checksum
            .insert(deviation.metadata.checksum.clone(), r);
        self.record_index.insert(key, r);
        self.records.push(Record {
            uid: deviation.metadata.uid.clone().unwrap_or_default(),
            deviation,
            count: 0,
            first_ts: occurrence.ts,
            last_ts: occurrence.ts,
            first: occurrence,
            reason,
            flagged: FxHashSet::default(),
            audited: FxHashSet::default(),
        });
        (r, true)
    }

    /// Recompute every image's state (after the policy changed); finds nothing.
    pub(super) fn remap(&mut self, t: &Tracker) {
        self.selected = t
            .containers
            .iter()
            .map(|rec| self.c.enabled && self.c.selects(&rec.info))
            .collect();
        self.states.clear();
        self.child_cache.clear();
        self.net_cache.clear();
        self.chains.clear();
        self.chain_index.clear();
        self.record_index.clear();
        for image in (0..t.images.len()).map(ImageId::new) {
            let s = self.map_image(t, image);
            self.states.push(s);
        }
    }
}
