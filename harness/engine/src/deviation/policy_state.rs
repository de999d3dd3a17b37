//! One policy's view of the stream: which containers it watches, the policy node or the deviant
//! program each program node maps to, which connections it allows, and its unique deviations
//! with their counts (see the rules in [`super`]).

use std::collections::HashMap;
use std::net::IpAddr;

use guardlab_events::{ExeStatus, Protocol};
use rustc_hash::{FxHashMap, FxHashSet};

use super::compiled::{CompiledPolicy, PolicyNodeId};
use super::fragment::{Anchor, Chain, ChainId, DeviationWriter, FragNode, ProcRef, RecordKey};
use crate::id::typed_id;
use crate::limits::StateSize;
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
    /// Not allowed: this deviant program.
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

/// What makes a deviant program the one seen before: what it hangs under (the policy node of
/// an allowed parent, or the deviant parent), and its program; never its effective user (see
/// the rules in [`super`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct ChainKey {
    anchor: Anchor,
    name: Sym,
    exe: Sym,
    exe_status: ExeStatus,
}

/// Where and when a unique deviation was first seen.
#[derive(Clone, Debug)]
pub(crate) struct Occurrence {
    pub container: ContainerId,
    pub ts: u64,
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

/// A deviation as [`PolicyState::record`] found it.
pub(super) enum Recorded {
    /// A unique deviation kept in the report; true when this is its first occurrence.
    Kept(RecordId, bool),
    /// A new unique deviation past the `deviations` or `deviations-per-process` limit: found
    /// and decided on, not kept.
    Unkept {
        deviation: Box<Deviation>,
        reason: Option<String>,
        /// The limit's name.
        limit: &'static str,
    },
}

/// A cache of verdicts is cleared when it holds this many: it saves work, it must not grow
/// with the stream.
const CACHE_ENTRIES: usize = 4096;

pub(crate) struct PolicyState {
    pub c: CompiledPolicy,
    /// Unique deviations kept at most (the `deviations` limit).
    pub(super) max_records: usize,
    /// Network deviations kept at most per process (the `deviations-per-process` limit).
    pub(super) max_net_per_process: u32,
    /// Network deviations kept, per process.
    net_kept: FxHashMap<ProcRef, u32>,
    /// Per container of the tracker: watched by this policy.
    pub(super) selected: Vec<bool>,
    /// Per program node of the tracker.
    pub(super) states: Vec<PState>,
    /// (parent node or none for a root, name, exe): the node that covers it, if one does.
    child_cache: FxHashMap<(Option<PolicyNodeId>, Sym, Sym), Option<PolicyNodeId>>,
    net_cache: FxHashMap<NetKey, bool>,
    pub(super) chains: Vec<Chain>,
    chain_index: FxHashMap<ChainKey, ChainId>,
    /// The next number of each name's ids (`sh_3`): ids of new nodes are unique among this
    /// policy's ids and its deviations', so that a deviation can name the deviant node it
    /// hangs under.
    next_suffix: FxHashMap<Box<str>, u32>,
    pub records: Vec<Record>,
    record_index: FxHashMap<RecordKey, RecordId>,
    by_checksum: HashMap<String, RecordId>,
}

/// An exec to judge: the program a process runs now, under its parent's state.
pub(super) struct Program<'a> {
    /// The state of the parent's node; `None` for a root of the container.
    pub parent: Option<PState>,
    pub name: &'a str,
    pub exe: &'a str,
    pub exe_status: ExeStatus,
    pub euser: Sym,
}

/// What judging a program gave.
pub(super) enum Verdict {
    Allowed(PolicyNodeId),
    Deviant(ChainId),
    /// Deviant, but its deviant program could not be kept (no room in the pod's state or past
    /// the `deviations` limit): its deviation document, made for the occasion.
    DeviantUnkept(Box<Deviation>, Option<String>),
}

impl PolicyState {
    pub(super) fn new(c: CompiledPolicy, max_records: usize, max_net_per_process: u32) -> Self {
        PolicyState {
            c,
            max_records,
            max_net_per_process,
            net_kept: FxHashMap::default(),
            selected: Vec::new(),
            states: Vec::new(),
            child_cache: FxHashMap::default(),
            net_cache: FxHashMap::default(),
            chains: Vec::new(),
            chain_index: FxHashMap::default(),
            next_suffix: FxHashMap::default(),
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

    /// The id a new node named `name` gets: the first `name_n` neither the policy nor another
    /// deviant node of this policy has. Taken for good when `take`; else (a deviation not
    /// kept) only read, so that what is not kept leaves nothing behind.
    fn new_id(&mut self, name: &str, take: bool) -> String {
        let mut next = self.next_suffix.get(name).copied().unwrap_or(0);
        let id = loop {
            let id = format!("{name}_{next}");
            next += 1;
            if !self.c.ids.contains(&id) {
                break id;
            }
        };
        if take {
            self.next_suffix.insert(name.into(), next);
        }
        id
    }

    /// The policy node that covers a program under an allowed parent (none for a root).
    fn covering(
        &mut self,
        t: &Tracker,
        parent_node: Option<PolicyNodeId>,
        p: &Program,
    ) -> Option<PolicyNodeId> {
        let candidates = self.c.children_of(parent_node);
        // An untrusted executable is covered by no node, whatever its globs say (fail closed).
        // Checked before the cache, which is keyed by the exe's text: a resolved exec with the
        // same text must neither lend it its node nor take its refusal.
        if !p.exe_status.is_resolved() {
            return None;
        }
        let key = t
            .syms
            .find(p.name)
            .zip(t.syms.find(p.exe))
            .map(|(name, exe)| (parent_node, name, exe));
        if let Some(key) = key
            && let Some(&cached) = self.child_cache.get(&key)
        {
            return cached;
        }
        let node = self.c.covering(candidates, p.name, p.exe);
        if let Some(key) = key {
            if self.child_cache.len() >= CACHE_ENTRIES {
                self.child_cache.clear();
            }
            self.child_cache.insert(key, node);
        }
        node
    }

    /// Judge a program (see the rules in [`super`]): allowed as a policy node, or deviant
    /// under the node its parent maps to (a policy node, or its deviant parent). A deviant
    /// program seen before is the one it was; a new one is kept when its name and exe are
    /// interned (`syms`) and `keep` says there is room, else written for the occasion.
    pub(super) fn judge(
        &mut self,
        t: &Tracker,
        p: &Program,
        syms: Option<(Sym, Sym)>,
        keep: bool,
    ) -> Verdict {
        let anchor = match p.parent {
            Some(PState::Deviant(ch)) => Anchor::Chain(ch),
            Some(PState::Node(n)) => match self.covering(t, Some(n), p) {
                Some(node) => return Verdict::Allowed(node),
                None => Anchor::Policy(Some(n)),
            },
            None | Some(PState::Outside) => match self.covering(t, None, p) {
                Some(node) => return Verdict::Allowed(node),
                None => Anchor::Policy(None),
            },
        };
        if let Some((name, exe)) = syms.or_else(|| t.syms.find(p.name).zip(t.syms.find(p.exe))) {
            let key = ChainKey {
                anchor,
                name,
                exe,
                exe_status: p.exe_status,
            };
            if let Some(&ch) = self.chain_index.get(&key) {
                return Verdict::Deviant(ch);
            }
            if keep && syms.is_some() {
                let id = self.new_id(p.name, true);
                let ch = ChainId::new(self.chains.len());
                self.chains.push(Chain {
                    anchor,
                    node: FragNode {
                        name,
                        exe,
                        exe_status: p.exe_status,
                        euser: p.euser,
                        id,
                    },
                });
                self.chain_index.insert(key, ch);
                return Verdict::Deviant(ch);
            }
        }
        let id = self.new_id(p.name, false);
        let writer = DeviationWriter {
            policy: &self.c,
            chains: &self.chains,
            tracker: t,
        };
        let deviation = writer.unkept_process(anchor, (p.name, p.exe, p.exe_status, p.euser), &id);
        let reason = super::fragment::program_reason(p.exe_status, p.exe);
        Verdict::DeviantUnkept(Box::new(deviation), reason)
    }

    /// Room for one more unique deviation under the `deviations` limit.
    pub(super) fn has_room(&self) -> bool {
        self.records.len() < self.max_records
    }

    /// The state of a new program node of the tracker (see [`Self::judge`]).
    pub(super) fn map_image(&mut self, t: &Tracker, image: ImageId) -> PState {
        let img = t.image(image);
        if !self.watches(img.container) {
            return PState::Outside;
        }
        let program = Program {
            parent: img.parent.map(|p| self.states[p.index()]),
            name: t.syms.get(img.name),
            exe: t.syms.get(img.exe),
            exe_status: img.exe_status,
            euser: img.euser,
        };
        match self.judge(t, &program, Some((img.name, img.exe)), true) {
            Verdict::Allowed(node) => PState::Node(node),
            Verdict::Deviant(ch) => PState::Deviant(ch),
            Verdict::DeviantUnkept(..) => unreachable!("a program node's deviant program is kept"),
        }
    }

    /// The node a program node maps to: (id, deviant), or `None` when the policy does not
    /// watch it.
    pub(crate) fn label(&self, image: ImageId) -> Option<(String, bool)> {
        match *self.states.get(image.index())? {
            PState::Node(n) => Some((self.c.node(n).id.clone(), false)),
            PState::Deviant(c) => Some((self.chains[c.index()].node.id.clone(), true)),
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
        if self.net_cache.len() >= CACHE_ENTRIES {
            self.net_cache.clear();
        }
        self.net_cache.insert(key, ok);
        ok
    }

    /// The record for a deviation key, made on first sight when the `deviations` limit has
    /// room.
    pub(super) fn record(
        &mut self,
        t: &Tracker,
        key: RecordKey,
        occurrence: Occurrence,
    ) -> Recorded {
        if let Some(&r) = self.record_index.get(&key) {
            return Recorded::Kept(r, false);
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
            return Recorded::Kept(r, false);
        }
        if self.records.len() >= self.max_records {
            return Recorded::Unkept {
                deviation: Box::new(deviation),
                reason,
                limit: "deviations",
            };
        }
        if let RecordKey::Net { process, .. } = key {
            let kept = self.net_kept.entry(process).or_default();
            if *kept >= self.max_net_per_process {
                return Recorded::Unkept {
                    deviation: Box::new(deviation),
                    reason,
                    limit: "deviations-per-process",
                };
            }
            *kept += 1;
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
        Recorded::Kept(r, true)
    }

    /// Recompute every program node's state (after the policy changed); finds nothing.
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
        self.next_suffix.clear();
        self.record_index.clear();
        for image in (0..t.images.len()).map(ImageId::new) {
            let s = self.map_image(t, image);
            self.states.push(s);
        }
    }

    /// How much this policy's view keeps (see [`StateSize`]).
    pub(super) fn size(&self) -> StateSize {
        let ids: usize = self.chains.iter().map(|c| c.node.id.len()).sum();
        let records: usize = self
            .records
            .iter()
            .map(|r| {
                r.uid.len()
                    + 2 * r.deviation.metadata.checksum.len()
                    + serde_json::to_string(&r.deviation.spec).map_or(0, |s| s.len())
                    + (r.flagged.len() + r.audited.len()) * 8
            })
            .sum();
        StateSize::table(self.selected.len(), 1, 0)
            + StateSize::table(self.states.len(), size_of::<PState>(), 0)
            + StateSize::table(self.child_cache.len(), 24, 0)
            + StateSize::table(self.net_cache.len(), size_of::<NetKey>() + 8, 0)
            + StateSize::table(
                self.chains.len(),
                size_of::<Chain>() + size_of::<ChainKey>() + 8,
                ids,
            )
            + StateSize::table(self.next_suffix.len(), 40, 0)
            + StateSize::table(self.records.len(), size_of::<Record>() + 32, records)
            + StateSize::table(self.record_index.len(), size_of::<RecordKey>() + 8, 0)
    }
}
