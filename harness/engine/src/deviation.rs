//! Deviations: behaviour a policy does not allow, found while streaming events.
//!
//! [`DeviationMatcher`] follows every container and process (with the same ancestry rules as
//! fingerprinting, see [`crate::fingerprint`]) and, for the containers that an **enabled**
//! policy selects (`containerSelector`, `namespaceSelector`, `podSelector`,
//! `machineSelector`), maps each exec'd program to a node of the policy's process forest.
//! A disabled policy selects nothing and produces nothing. A policy's status over a stream
//! ([`PolicyReport::status`]) is the public word: `Disabled`; `Not Applied` when it is enabled
//! but selected no container of the stream (it could not find anything: a selector that does
//! not match is a mistake worth saying, see [`PolicyReport::applied`]); else `Enforcing` or
//! `Auditing`.
//!
//! # Rules (ours; the public tool does not show the server's)
//!
//! * **Process.** A program is allowed when its parent maps to a policy node (a root: when it
//!   has no parent in the container) and a child of that node (a root node) covers it: the
//!   name glob matches and an exe glob matches. Otherwise it is a deviation whose fragment is
//!   the new node hung under `policyNode.id` (the parent's node; [`ROOT_ANCHOR`] for a new
//!   root). The effective user is an attribute, never a deviation on its own.
//! * **Executables the sensor could not resolve** (`exe_status` fileless, truncated or
//!   unresolved) are covered by no process node, whatever its name and exe globs say (`*`
//!   included): the policy fails closed, as the sensor's exec allow-list does (it kills them).
//!   Such an exec is always a process deviation (its descendants too, as for any deviant
//!   process), and says why: `reason` on the [`Finding`], the [`DeviationRecord`] and the
//!   [`Flag`], and in the audit log, e.g. ``fileless executable `memfd:minerd`: no exe glob
//!   allows it (fail closed)``. The matcher's cache of verdicts is keyed by the exe's text,
//!   so an untrusted exec bypasses it: a resolved exec with the same text neither lends it
//!   its node nor takes its refusal. It is another deviation than a resolved exec whose
//!   fragment reads the same: the chain of deviant processes is keyed by exe status too, and
//!   the checksum covers the id and status of each untrusted node of the fragment (one with
//!   none has the checksum it always had). Merging it records the node (it is then no longer
//!   `relevant`) but allows nothing: the next such exec deviates again. A fingerprint that
//!   saw such an exec records it as reported (see [`crate::fingerprint`]), and a policy made
//!   from it is bound by the same rule.
//! * **Effective users in deviations.** The same program under another user is the *same*
//!   deviation: the fragment carries the effective user of its first occurrence (so that it
//!   merges into a valid policy), but the user takes no part in telling deviations apart
//!   (the chain of deviant programs is keyed by parent, name and exe) nor in the checksum
//!   (computed over the fragment with every `euser` left out), so its count covers every
//!   user. Merging it adds the node with its first user; the others are then covered too,
//!   since a user never makes a deviation.
//! * **Descendants of a deviant process** are deviant too and reported under the deviant
//!   parent: each deviant process is its own deviation, whose `policyNode` is the nearest
//!   policy node and whose fragment is the whole chain of deviant processes from there down
//!   to it (`python3_0 -> bash -> wget`). Merging the deviations of a chain one by one gives
//!   the chain; the ids of new nodes are `<name>_<n>` with the first `n` free in the policy.
//! * **Connections** (loopback left out, ports as in fingerprints): egress and ingress are
//!   deviations when no network node of that direction allows the remote (**any** of the DNS
//!   names earlier answers in the container gave for the address matching a `dnsSelector`,
//!   or the address inside an `ipBlock`), the port and protocol, and the process (the node it
//!   maps to is listed, or the list is empty). The fragment is one network node naming the
//!   remote as fingerprints do (every name of the address, sorted, one `dnsSelector` each);
//!   when the process is itself deviant its chain is in the fragment too, so that the
//!   deviation merges into a valid policy on its own.
//! * **Name lookups of deviant processes.** A deviant process that resolves a name sends a
//!   datagram to the resolver (UDP 53) before it connects; the policy allows the resolver
//!   only for the processes that used it in the baseline, so each deviant process that
//!   looks a name up is also an egress deviation to the resolver, with its own chain (in the
//!   tutorial: `curl`, `wget` and `minerd` each). That is faithful (the process did reach
//!   the resolver) and deterministic: deviations are listed in the order of the events that
//!   first showed them, and a process's lookup comes before its connection. Merged into the
//!   policy, they join the resolver's network node (same peer and ports: the processes are
//!   unioned) rather than adding one node per process.
//! * **Unique deviations.** A deviation is unique per (policy uid, checksum); the checksum is
//!   the SHA-256 (hex) of the deviation's type and fragment (less its users, plus its
//!   untrusted executables, see above), which holds
//!   no time, pid or container id, so the same behaviour again is the same deviation seen
//!   once more (`count`). Its uid is `dev:` and 16 hex digits of SHA-256 over policy uid
//!   and checksum. It is `relevant` while merging it into the policy would still change the
//!   policy.
//! * **Modes.** Audit mode records deviations and logs what it would have done (the public
//!   wording) for each kill, and that it would have raised a flag; it raises nothing.
//!   Enforce mode records them, raises the flags of the policy's response once per unique
//!   deviation and container, and decides its kills (`agentKillProcess`, `agentKillPod`,
//!   `agentKillProcessGroup`, `agentKillProcessTree`) for every occurrence, as [`Decision`]s
//!   that a backend carries out: the engine only decides.

mod compiled;
mod response;
mod selector;

use std::collections::HashMap;
use std::net::IpAddr;

use guardlab_events::{Event, ExeStatus, ProcessKey, Protocol};
use rustc_hash::{FxHashMap, FxHashSet};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::PolicyError;
use crate::merge::is_relevant_to_canonical;
use crate::model::{
    API_VERSION, Deviation, DeviationMetadata, DeviationNetwork, DeviationProcess, DeviationSpec,
    DeviationType, EgressNode, IngressNode, KIND_DEVIATION, Mode, Peer, Policy, PolicyNodeRef,
    PortSpec, ProcessNode, epoch_seconds,
};
use crate::net::host_cidr;
use crate::policy::{default_response, status_in_stream};
use crate::tracker::{Direction, NONE, NetObs, Stats, Step, Sym, Tracker};
use compiled::CompiledPolicy;
pub use response::{ActionKind, Decision, Flag, FlagClass, Target};
use response::{Subject, effective};

pub use crate::model::ROOT_ANCHOR;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PState {
    /// Not watched by this policy.
    Outside,
    Node(u32),
    Deviant(u32),
}

struct FragNode {
    name: Sym,
    exe: Sym,
    /// Part of the node's identity: an exec the sensor could not resolve is not the same
    /// program as a resolved one whose exe reads the same.
    exe_status: ExeStatus,
    /// The effective user of the first occurrence (an attribute, not part of the key).
    euser: Sym,
    id: String,
}

/// A chain of deviant processes under the nearest policy node.
struct Chain {
    anchor: u32,
    nodes: Vec<FragNode>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum ProcRef {
    Node(u32),
    Chain(u32),
    Unknown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum PeerRef {
    /// A set of names (see `crate::tracker::NameSets`).
    Dns(u32),
    Ip(IpAddr),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum RecordKey {
    Process(u32),
    Net {
        direction: Direction,
        process: ProcRef,
        peer: PeerRef,
        protocol: Protocol,
        port: u16,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct NetKey {
    direction: Direction,
    process: ProcRef,
    /// A set of names, or [`NONE`].
    dns: u32,
    ip: IpAddr,
    protocol: Protocol,
    port: u16,
}

/// Where and when a unique deviation was first seen (for investigation).
#[derive(Clone, Debug)]
pub(crate) struct Occurrence {
    pub container: u32,
    pub image: u32,
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
    flagged: FxHashSet<u32>,
    /// Containers the audit log said it would flag.
    audited: FxHashSet<u32>,
}

pub(crate) struct PolicyState {
    pub c: CompiledPolicy,
    /// Per container of the tracker: watched by this policy.
    selected: Vec<bool>,
    /// Per image of the tracker.
    states: Vec<PState>,
    child_cache: FxHashMap<(u32, Sym, Sym), u32>,
    net_cache: FxHashMap<NetKey, bool>,
    chains: Vec<Chain>,
    /// (parent chain, anchor, name, exe, exe status): no effective user, see the module
    /// documentation.
    chain_index: FxHashMap<(u32, u32, Sym, Sym, ExeStatus), u32>,
    pub records: Vec<Record>,
    record_index: FxHashMap<RecordKey, u32>,
    by_checksum: HashMap<String, u32>,
}

impl PolicyState {
    fn new(c: CompiledPolicy) -> Self {
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

    fn watches(&self, container: u32) -> bool {
        self.selected
            .get(container as usize)
            .copied()
            .unwrap_or(false)
    }

    /// The state of a new image, and the chain it starts or extends when deviant.
    fn map_image(&mut self, t: &Tracker, image: u32) -> PState {
        let img = &t.images[image as usize];
        if !self.watches(img.container) {
            return PState::Outside;
        }
        let parent = if img.parent == NONE {
            PState::Outside
        } else {
            self.states[img.parent as usize]
        };
        let (parent_chain, anchor) = match parent {
            PState::Deviant(ch) => (ch, self.chains[ch as usize].anchor),
            PState::Outside | PState::Node(_) => {
                let parent_node = match parent {
                    PState::Node(n) => n,
                    _ => NONE,
                };
                let key = (parent_node, img.name, img.exe);
                // An untrusted executable is covered by no node, whatever its globs say (fail
                // closed). Checked before the cache, which is keyed by the exe's text: a
                // resolved exec with the same text must neither lend it its node nor take
                // its refusal.
                let cached = if img.exe_status.is_resolved() {
                    self.child_cache.get(&key).copied()
                } else {
                    Some(NONE)
                };
                let node = match cached {
                    Some(n) => n,
                    None => {
                        let candidates = self
                            .c
                            .children_of((parent_node != NONE).then_some(parent_node));
                        let n = self
                            .c
                            .covering(candidates, t.syms.get(img.name), t.syms.get(img.exe))
                            .unwrap_or(NONE);
                        self.child_cache.insert(key, n);
                        n
                    }
                };
                if node != NONE {
                    return PState::Node(node);
                }
                (NONE, parent_node)
            }
        };
        let key = (parent_chain, anchor, img.name, img.exe, img.exe_status);
        if let Some(&ch) = self.chain_index.get(&key) {
            return PState::Deviant(ch);
        }
        let mut nodes: Vec<FragNode> = match parent_chain {
            NONE => Vec::new(),
            pc => self.chains[pc as usize]
                .nodes
                .iter()
                .map(|n| FragNode {
                    name: n.name,
                    exe: n.exe,
                    exe_status: n.exe_status,
                    euser: n.euser,
                    id: n.id.clone(),
                })
                .collect(),
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
        let ch = self.chains.len() as u32;
        self.chains.push(Chain { anchor, nodes });
        self.chain_index.insert(key, ch);
        PState::Deviant(ch)
    }

    /// The node an image maps to: (id, deviant), or `None` when the policy does not watch it.
    pub(crate) fn label(&self, image: u32) -> Option<(String, bool)> {
        match *self.states.get(image as usize)? {
            PState::Node(n) => Some((self.c.nodes[n as usize].id.clone(), false)),
            PState::Deviant(c) => self.chains[c as usize]
                .nodes
                .last()
                .map(|n| (n.id.clone(), true)),
            PState::Outside => None,
        }
    }

    fn proc_ref(&self, image: u32) -> ProcRef {
        if image == NONE {
            return ProcRef::Unknown;
        }
        match self.states[image as usize] {
            PState::Node(n) => ProcRef::Node(n),
            PState::Deviant(c) => ProcRef::Chain(c),
            PState::Outside => ProcRef::Unknown,
        }
    }

    fn allowed(&mut self, t: &Tracker, obs: &NetObs, process: ProcRef) -> bool {
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

    fn anchor_id(&self, anchor: u32) -> String {
        if anchor == NONE {
            ROOT_ANCHOR.to_string()
        } else {
            self.c.nodes[anchor as usize].id.clone()
        }
    }

    fn chain_fragment(&self, t: &Tracker, ch: u32) -> DeviationProcess {
        let chain = &self.chains[ch as usize];
        let mut child: Option<ProcessNode> = None;
        for (i, n) in chain.nodes.iter().enumerate().rev() {
            let inherits = i > 0 && chain.nodes[i - 1].euser == n.euser;
            child = Some(ProcessNode {
                name: t.syms.get(n.name).to_string(),
                exe: vec![t.syms.get(n.exe).to_string()],
                id: n.id.clone(),
                euser: (!inherits).then(|| vec![t.syms.get(n.euser).to_string()]),
                listening_sockets: None,
                children: child.map(|c| vec![c]),
            });
        }
        DeviationProcess {
            policy_node: PolicyNodeRef {
                id: self.anchor_id(chain.anchor),
                children: child.into_iter().collect(),
            },
        }
    }

    /// The untrusted executables of a chain: (node id, status), for the checksum.
    fn untrusted_of(&self, ch: u32) -> Vec<(&str, ExeStatus)> {
        self.chains[ch as usize]
            .nodes
            .iter()
            .filter(|n| !n.exe_status.is_resolved())
            .map(|n| (n.id.as_str(), n.exe_status))
            .collect()
    }

    /// Why a deviation could not have been allowed: its process's executable is untrusted.
    fn reason(&self, t: &Tracker, key: RecordKey) -> Option<String> {
        let RecordKey::Process(ch) = key else {
            return None;
        };
        let last = self.chains[ch as usize].nodes.last()?;
        untrusted_exe_reason(last.exe_status).map(|why| {
            format!(
                "{why} `{}`: no exe glob allows it (fail closed)",
                t.syms.get(last.exe)
            )
        })
    }

    fn build_deviation(&self, t: &Tracker, key: RecordKey) -> Deviation {
        let untrusted = match key {
            RecordKey::Process(ch)
            | RecordKey::Net {
                process: ProcRef::Chain(ch),
                ..
            } => self.untrusted_of(ch),
            RecordKey::Net { .. } => Vec::new(),
        };
        let (kind, spec) = match key {
            RecordKey::Process(ch) => (
                DeviationType::Process,
                DeviationSpec {
                    process_policy: vec![self.chain_fragment(t, ch)],
                    network_policy: None,
                },
            ),
            RecordKey::Net {
                direction,
                process,
                peer,
                protocol,
                port,
            } => {
                let (process_policy, processes) = match process {
                    ProcRef::Node(n) => (Vec::new(), vec![self.c.nodes[n as usize].id.clone()]),
                    ProcRef::Chain(c) => {
                        let id = self.chains[c as usize]
                            .nodes
                            .last()
                            .map(|n| n.id.clone())
                            .unwrap_or_default();
                        (vec![self.chain_fragment(t, c)], vec![id])
                    }
                    ProcRef::Unknown => (Vec::new(), Vec::new()),
                };
                let peers = match peer {
                    PeerRef::Dns(set) => t
                        .dns_names(set)
                        .map(|name| Peer::DnsSelector(vec![name.to_string()]))
                        .collect(),
                    PeerRef::Ip(ip) => vec![Peer::IpBlock(crate::model::IpBlock {
                        cidr: host_cidr(ip),
                        except: Vec::new(),
                    })],
                };
                let ports = vec![PortSpec {
                    protocol: protocol.to_string(),
                    port: port.into(),
                    end_port: None,
                }];
                let (kind, network) = match direction {
                    Direction::Egress => (
                        DeviationType::Egress,
                        DeviationNetwork {
                            egress: vec![EgressNode {
                                to: peers,
                                processes,
                                ports,
                            }],
                            ingress: Vec::new(),
                        },
                    ),
                    Direction::Ingress => (
                        DeviationType::Ingress,
                        DeviationNetwork {
                            ingress: vec![IngressNode {
                                from: peers,
                                processes,
                                ports,
                            }],
                            egress: Vec::new(),
                        },
                    ),
                };
                (
                    kind,
                    DeviationSpec {
                        process_policy,
                        network_policy: Some(network),
                    },
                )
            }
        };
        let checksum = checksum(kind, &spec, &untrusted);
        Deviation {
            api_version: API_VERSION.into(),
            kind: KIND_DEVIATION.into(),
            metadata: DeviationMetadata {
                kind,
                policy_uid: self.c.uid.clone(),
                uid: Some(deviation_uid(&self.c.uid, &checksum)),
                checksum,
            },
            spec,
        }
    }

    /// The record for a deviation key, made on first sight. Returns (record, new).
    fn record(&mut self, t: &Tracker, key: RecordKey, occurrence: Occurrence) -> (u32, bool) {
        if let Some(&r) = self.record_index.get(&key) {
            return (r, false);
        }
        let deviation = self.build_deviation(t, key);
        let reason = self.reason(t, key);
        if let Some(&r) = self.by_checksum.get(&deviation.metadata.checksum) {
            self.record_index.insert(key, r);
            return (r, false);
        }
        let r = self.records.len() as u32;
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
    fn remap(&mut self, t: &Tracker) {
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
        for image in 0..t.images.len() as u32 {
            let s = self.map_image(t, image);
            self.states.push(s);
        }
    }
}

/// Why an exec with this status is never covered by a process node, or `None` for a
/// resolved executable.
pub fn untrusted_exe_reason(status: ExeStatus) -> Option<&'static str> {
    match status {
        ExeStatus::Resolved => None,
        ExeStatus::Fileless => Some("fileless executable"),
        ExeStatus::Truncated => Some("truncated executable path"),
        ExeStatus::Unresolved => Some("unresolved executable path"),
    }
}

/// The checksum of a deviation: its type and fragment, with no effective user, and the
/// untrusted executables of its fragment (node id and status) when it has any (see the module
/// documentation).
fn checksum(kind: DeviationType, spec: &DeviationSpec, untrusted: &[(&str, ExeStatus)]) -> String {
    fn strip(nodes: &mut [ProcessNode]) {
        for n in nodes {
            n.euser = None;
            if let Some(kids) = n.children.as_mut() {
                strip(kids);
            }
        }
    }
    let mut spec = spec.clone();
    for item in &mut spec.process_policy {
        strip(&mut item.policy_node.children);
    }
    // Without untrusted executables the text is what it always was: checksums (and so
    // deviation uids) stay stable across versions.
    let text = if untrusted.is_empty() {
        serde_json::to_vec(&(kind, &spec))
    } else {
        serde_json::to_vec(&(kind, &spec, untrusted))
    }
    .expect("deviation specs serialize");
    hex::encode(Sha256::digest(&text))
}

fn deviation_uid(policy_uid: &str, checksum: &str) -> String {
    let digest = Sha256::digest(format!("{policy_uid}\n{checksum}").as_bytes());
    format!("dev:{}", &hex::encode(digest)[..16])
}

/// One occurrence of a deviation, as it happens, with what the policy's response decided.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    pub policy_uid: String,
    pub policy_name: String,
    pub deviation_uid: String,
    pub checksum: String,
    #[serde(rename = "type")]
    pub kind: DeviationType,
    /// First occurrence of this unique deviation.
    pub new: bool,
    /// Why it deviates, when no policy could allow it: `fileless executable `memfd:x`: no
    /// exe glob allows it (fail closed)`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub process: ProcessKey,
    pub cgroup_id: u64,
    pub timestamp: f64,
    pub flags: Vec<Flag>,
    pub decisions: Vec<Decision>,
}

/// A unique deviation with its counts.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviationRecord {
    pub uid: String,
    /// Merging it into the policy would still change the policy.
    pub relevant: bool,
    /// How many times it was seen.
    pub count: u64,
    /// Why it deviates, when no policy could allow it (see [`Finding::reason`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub first_timestamp: f64,
    pub latest_timestamp: f64,
    pub deviation: Deviation,
}

/// The deviations of one policy.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyReport {
    pub name: String,
    pub uid: String,
    /// `Enforcing`, `Auditing`, `Disabled`, or `Not Applied` (enabled, but it selected no
    /// container of the stream).
    pub status: String,
    /// The policy is enabled and selected at least one container of the stream. When it is
    /// false and the policy is enabled, "no deviations" means nothing was checked.
    pub applied: bool,
    /// Containers of the stream the policy's selectors match (whether it is enabled or not).
    pub containers: usize,
    /// Unique deviations.
    pub unique: usize,
    /// Occurrences of all of them.
    pub total: u64,
    pub deviations: Vec<DeviationRecord>,
}

/// Everything the matcher found: per policy, the unique deviations in the order they were
/// first seen; the flags raised and the actions decided, in order; the audit log.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviationReport {
    pub policies: Vec<PolicyReport>,
    pub flags: Vec<Flag>,
    pub decisions: Vec<Decision>,
    pub audit_log: Vec<String>,
    pub stats: Stats,
}

impl DeviationReport {
    /// Every unique deviation, as `GuardianDeviation` documents.
    pub fn deviations(&self) -> impl Iterator<Item = &Deviation> {
        self.policies
            .iter()
            .flat_map(|p| p.deviations.iter().map(|d| &d.deviation))
    }

    /// Unique deviations over all policies.
    pub fn unique(&self) -> usize {
        self.policies.iter().map(|p| p.unique).sum()
    }

    /// Occurrences over all policies.
    pub fn total(&self) -> u64 {
        self.policies.iter().map(|p| p.total).sum()
    }
}

/// Streams events against policies and finds deviations.
pub struct DeviationMatcher {
    tracker: Tracker,
    pub(crate) policies: Vec<PolicyState>,
    pub(crate) flags: Vec<Flag>,
    pub(crate) decisions: Vec<Decision>,
    audit_log: Vec<String>,
}

impl DeviationMatcher {
    /// Prepare policies for matching. Fails on a policy the engine cannot use (a duplicate
    /// process id, an `ipBlock` that is not a block).
    pub fn new(policies: &[Policy]) -> Result<Self, PolicyError> {
        let policies = policies
            .iter()
            .map(|p| CompiledPolicy::new(p).map(PolicyState::new))
            .collect::<Result<_, _>>()?;
        Ok(DeviationMatcher {
            tracker: Tracker::default(),
            policies,
            flags: Vec::new(),
            decisions: Vec::new(),
            audit_log: Vec::new(),
        })
    }

    /// Replace the policy with the same uid (or add it): after a mode switch, enabling,
    /// disabling or a merge. The processes already running are mapped against the new policy
    /// (finding nothing about the past); deviations already recorded are kept.
    pub fn set_policy(&mut self, policy: &Policy) -> Result<(), PolicyError> {
        let compiled = CompiledPolicy::new(policy)?;
        let idx = match self.policies.iter().position(|p| p.c.uid == compiled.uid) {
            Some(i) => {
                self.policies[i].c = compiled;
                i
            }
            None => {
                self.policies.push(PolicyState::new(compiled));
                self.policies.len() - 1
            }
        };
        self.policies[idx].remap(&self.tracker);
        Ok(())
    }

    /// The policies as the matcher uses them (canonical).
    pub fn policies(&self) -> impl Iterator<Item = &Policy> {
        self.policies.iter().map(|p| &p.c.policy)
    }

    pub fn stats(&self) -> &Stats {
        &self.tracker.stats
    }

    pub(crate) fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    /// Take one event into account; returns the deviations it is (usually none).
    pub fn observe(&mut self, event: &Event) -> Vec<Finding> {
        self.observe_step(event).1
    }

    /// [`Self::observe`], also giving what the tracker made of the event (for investigation).
    pub(crate) fn observe_step(&mut self, event: &Event) -> (Step, Vec<Finding>) {
        let mut findings = Vec::new();
        let step = self.tracker.observe(event);
        match &step {
            &Step::Container(c) => {
                let info = &self.tracker.containers[c as usize].info;
                for p in &mut self.policies {
                    let selects = p.c.enabled && p.c.selects(info);
                    if p.selected.len() <= c as usize {
                        p.selected.resize(c as usize + 1, false);
                    }
                    p.selected[c as usize] = selects;
                }
            }
            &Step::Exec(image) => {
                for pi in 0..self.policies.len() {
                    let p = &mut self.policies[pi];
                    let state = p.map_image(&self.tracker, image);
                    p.states.push(state);
                    if let PState::Deviant(ch) = state {
                        let img = &self.tracker.images[image as usize];
                        let occurrence = Occurrence {
                            container: img.container,
                            image,
                            key: img.key,
                            ts: img.ts,
                            connection: None,
                        };
                        findings.push(self.occur(pi, RecordKey::Process(ch), occurrence));
                    }
                }
            }
            Step::Net(obs) => {
                for pi in 0..self.policies.len() {
                    let p = &mut self.policies[pi];
                    if !p.watches(obs.container) {
                        continue;
                    }
                    let process = p.proc_ref(obs.image);
                    if p.allowed(&self.tracker, obs, process) {
                        continue;
                    }
                    let peer = if obs.dns == NONE {
                        PeerRef::Ip(obs.ip)
                    } else {
                        PeerRef::Dns(obs.dns)
                    };
                    let key = RecordKey::Net {
                        direction: obs.direction,
                        process,
                        peer,
                        protocol: obs.protocol,
                        port: obs.port,
                    };
                    let occurrence = Occurrence {
                        container: obs.container,
                        image: obs.image,
                        key: obs.key,
                        ts: obs.ts,
                        connection: Some(OccurredConnection {
                            direction: obs.direction,
                            protocol: obs.protocol,
                            ip: obs.ip,
                            port: obs.port,
                            remote_port: obs.remote_port,
                            dns: self.tracker.dns_text(obs.dns),
                            refused: obs.refused,
                        }),
                    };
                    findings.push(self.occur(pi, key, occurrence));
                }
            }
            _ => {}
        }
        (step, findings)
    }

    /// Take every event of a stream into account; returns all findings.
    pub fn observe_all<'a>(&mut self, events: impl IntoIterator<Item = &'a Event>) -> Vec<Finding> {
        let mut all = Vec::new();
        for event in events {
            all.extend(self.observe(event));
        }
        all
    }

    fn occur(&mut self, pi: usize, key: RecordKey, occurrence: Occurrence) -> Finding {
        let t = &self.tracker;
        let p = &mut self.policies[pi];
        let (container, image, pkey, ts) = (
            occurrence.container,
            occurrence.image,
            occurrence.key,
            occurrence.ts,
        );
        let (r, new) = p.record(t, key, occurrence);
        let rec = &mut p.records[r as usize];
        rec.count += 1;
        rec.first_ts = rec.first_ts.min(ts);
        rec.last_ts = rec.last_ts.max(ts);

        let info = &t.containers[container as usize].info;
        let (name, exe, euser) = if image == NONE {
            (None, None, None)
        } else {
            let img = &t.images[image as usize];
            (
                Some(t.syms.get(img.name)),
                Some(t.syms.get(img.exe)),
                Some(t.syms.get(img.euser)),
            )
        };
        let subject = Subject {
            info,
            name,
            exe,
            euser,
        };
        let default = default_response();
        let response = p.c.policy.spec.response.as_ref().unwrap_or(&default);
        let decided = effective(response, &subject);
        let enforce = p.c.mode == Mode::Enforce;
        let kind = rec.deviation.metadata.kind;
        let mut finding = Finding {
            policy_uid: p.c.uid.clone(),
            policy_name: p.c.name.clone(),
            deviation_uid: rec.uid.clone(),
            checksum: rec.deviation.metadata.checksum.clone(),
            kind,
            new,
            reason: rec.reason.clone(),
            process: pkey,
            cgroup_id: info.cgroup_id,
            timestamp: epoch_seconds(ts),
            flags: Vec::new(),
            decisions: Vec::new(),
        };
        let first_here = if enforce {
            rec.flagged.insert(container)
        } else {
            rec.audited.insert(container)
        };
        if first_here {
            for (class, flag) in [
                (FlagClass::Red, &decided.red),
                (FlagClass::Ops, &decided.ops),
            ] {
                let Some(flag) = flag else { continue };
                if enforce {
                    finding.flags.push(Flag {
                        class,
                        severity: flag.severity,
                        impact: flag.impact.clone(),
                        content: flag.content.clone(),
                        policy_uid: finding.policy_uid.clone(),
                        policy_name: finding.policy_name.clone(),
                        deviation_uid: finding.deviation_uid.clone(),
                        checksum: finding.checksum.clone(),
                        kind,
                        container_id: info.container_id.clone(),
                        container_name: info.container_name.clone(),
                        namespace: info.namespace.clone(),
                        pod: info.pod_name.clone(),
                        pid: pkey.pid(),
                        process: name.unwrap_or_default().to_string(),
                        exe: exe.unwrap_or_default().to_string(),
                        reason: finding.reason.clone(),
                        timestamp: finding.timestamp,
                    });
                } else {
                    let why = finding
                        .reason
                        .as_deref()
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default();
                    self.audit_log.push(format!(
                        "(audit mode): Would have raised a \"{}\" {class} flag for {kind} deviation {}{why}. Not raised due to \"audit\" mode.",
                        flag.severity,
                        finding.deviation_uid
                    ));
                }
            }
        }
        for action in decided.kills {
            let target = Target {
                cgroup_id: info.cgroup_id,
                container_id: info.container_id.clone(),
                namespace: info.namespace.clone(),
                pod: info.pod_name.clone(),
                pid: pkey.pid(),
                process: pkey,
                name: name.unwrap_or_default().to_string(),
            };
            let message = Decision::message(action, &target, enforce);
            if !enforce {
                self.audit_log.push(message.clone());
            }
            finding.decisions.push(Decision {
                action,
                initiated: enforce,
                message,
                policy_uid: finding.policy_uid.clone(),
                policy_name: finding.policy_name.clone(),
                deviation_uid: finding.deviation_uid.clone(),
                target,
                timestamp: finding.timestamp,
            });
        }
        self.flags.extend(finding.flags.iter().cloned());
        self.decisions.extend(finding.decisions.iter().cloned());
        finding
    }

    /// Everything found so far.
    pub fn report(&self) -> DeviationReport {
        let policies = self
            .policies
            .iter()
            .map(|p| {
                let deviations: Vec<DeviationRecord> = p
                    .records
                    .iter()
                    .map(|r| DeviationRecord {
                        uid: r.uid.clone(),
                        relevant: is_relevant_to_canonical(&p.c.policy, &p.c.nets, &r.deviation),
                        count: r.count,
                        reason: r.reason.clone(),
                        first_timestamp: epoch_seconds(r.first_ts),
                        latest_timestamp: epoch_seconds(r.last_ts),
                        deviation: r.deviation.clone(),
                    })
                    .collect();
                let containers = self
                    .tracker
                    .containers
                    .iter()
                    .filter(|rec| p.c.selects(&rec.info))
                    .count();
                PolicyReport {
                    name: p.c.name.clone(),
                    uid: p.c.uid.clone(),
                    status: status_in_stream(&p.c.policy, containers > 0).to_string(),
                    applied: p.c.enabled && containers > 0,
                    containers,
                    unique: deviations.len(),
                    total: deviations.iter().map(|d| d.count).sum(),
                    deviations,
                }
            })
            .collect();
        DeviationReport {
            policies,
            flags: self.flags.clone(),
            decisions: self.decisions.clone(),
            audit_log: self.audit_log.clone(),
            stats: self.tracker.stats.clone(),
        }
    }
}

/// Match a whole stream against policies, in one call.
pub fn find_deviations<'a>(
    policies: &[Policy],
    events: impl IntoIterator<Item = &'a Event>,
) -> Result<DeviationReport, PolicyError> {
    let mut matcher = DeviationMatcher::new(policies)?;
    for event in events {
        matcher.observe(event);
    }
    Ok(matcher.report())
}

#[cfg(test)]
mod tests;
