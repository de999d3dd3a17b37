//! The deviation documents of one policy: a deviant program (one new node under the node its
//! parent maps to) and a connection, as the `GuardianDeviation` whose fragment would allow
//! them, with its checksum and uid (see the rules in [`super`]).

use std::net::IpAddr;

use guardlab_events::{ExeStatus, Protocol};
use sha2::{Digest, Sha256};

use super::compiled::{CompiledPolicy, PolicyNodeId};
use crate::id::typed_id;
use crate::model::{
    API_VERSION, Deviation, DeviationMetadata, DeviationNetwork, DeviationProcess, DeviationSpec,
    DeviationType, EgressNode, IngressNode, IpBlock, KIND_DEVIATION, Peer, PolicyNodeRef, PortSpec,
    ProcessNode, ROOT_ANCHOR,
};
use crate::net::host_cidr;
use crate::tracker::{Direction, NameSetId, Sym, Tracker};

#[derive(Clone, Debug)]
pub(super) struct FragNode {
    pub name: Sym,
    pub exe: Sym,
    /// Part of the node's identity: an exec the sensor could not resolve is not the same
    /// program as a resolved one whose exe reads the same.
    pub exe_status: ExeStatus,
    /// The effective user of the first occurrence (an attribute, not part of the key).
    pub euser: Sym,
    pub id: String,
}

typed_id!(
    /// A deviant program ([`Chain`]) of one policy's.
    pub(super) ChainId
);

/// What a deviant program hangs under: the policy node its allowed parent maps to (none: a new
/// root), or its deviant parent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Anchor {
    Policy(Option<PolicyNodeId>),
    Chain(ChainId),
}

/// A deviant program: the new node, and what it hangs under. Its deviant ancestors are
/// programs of their own: a chain of deviant processes is a chain of these.
pub(super) struct Chain {
    pub anchor: Anchor,
    pub node: FragNode,
}

/// The process of a connection as the policy sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum ProcRef {
    Node(PolicyNodeId),
    Chain(ChainId),
    /// Not started under the policy's eyes: any process.
    Unknown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum PeerRef {
    /// A set of names (see `crate::tracker::NameSets`).
    Dns(NameSetId),
    Ip(IpAddr),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum RecordKey {
    Process(ChainId),
    Net {
        direction: Direction,
        process: ProcRef,
        peer: PeerRef,
        protocol: Protocol,
        port: u16,
    },
}

/// What a policy's deviation documents are written from: the policy, its chains of deviant
/// processes, and the tracker that names what they hold.
pub(super) struct DeviationWriter<'a> {
    pub policy: &'a CompiledPolicy,
    pub chains: &'a [Chain],
    pub tracker: &'a Tracker,
}

impl DeviationWriter<'_> {
    fn anchor_id(&self, anchor: Anchor) -> String {
        match anchor {
            Anchor::Policy(Some(node)) => self.policy.node(node).id.clone(),
            Anchor::Policy(None) => ROOT_ANCHOR.to_string(),
            Anchor::Chain(parent) => self.chain(parent).node.id.clone(),
        }
    }

    fn chain(&self, id: ChainId) -> &Chain {
        &self.chains[id.index()]
    }

    /// The fragment of a deviant program: its node alone, under what it hangs under (as a
    /// Spyderbat deviation names its process under `policyNode`).
    fn fragment(&self, anchor: Anchor, node: ProcessNode) -> DeviationProcess {
        DeviationProcess {
            policy_node: PolicyNodeRef {
                id: self.anchor_id(anchor),
                children: vec![node],
            },
        }
    }

    fn chain_fragment(&self, ch: ChainId) -> DeviationProcess {
        let chain = self.chain(ch);
        let n = &chain.node;
        let syms = &self.tracker.syms;
        self.fragment(
            chain.anchor,
            ProcessNode {
                name: syms.get(n.name).to_string(),
                exe: vec![syms.get(n.exe).to_string()],
                id: n.id.clone(),
                euser: Some(vec![syms.get(n.euser).to_string()]),
                listening_sockets: None,
                children: None,
            },
        )
    }

    /// The untrusted executable of a deviant program: (node id, status), for the checksum.
    fn untrusted_of(&self, ch: ChainId) -> Vec<(&str, ExeStatus)> {
        let n = &self.chain(ch).node;
        if n.exe_status.is_resolved() {
            Vec::new()
        } else {
            vec![(n.id.as_str(), n.exe_status)]
        }
    }

    /// Why a deviation could not have been allowed: its process's executable is untrusted.
    pub(super) fn reason(&self, key: RecordKey) -> Option<String> {
        let RecordKey::Process(ch) = key else {
            return None;
        };
        let n = &self.chain(ch).node;
        program_reason(n.exe_status, self.tracker.syms.get(n.exe))
    }

    /// The process deviation of a deviant program that is not kept (see
    /// [`super::policy_state::Verdict::DeviantUnkept`]), with `id` for its node.
    /// The program: its name, exe, how the exe was resolved, and its effective user.
    pub(super) fn unkept_process(
        &self,
        anchor: Anchor,
        (name, exe, exe_status, euser): (&str, &str, ExeStatus, Sym),
        id: &str,
    ) -> Deviation {
        let node = ProcessNode {
            name: name.to_string(),
            exe: vec![exe.to_string()],
            id: id.to_string(),
            euser: Some(vec![self.tracker.syms.get(euser).to_string()]),
            listening_sockets: None,
            children: None,
        };
        let untrusted = if exe_status.is_resolved() {
            Vec::new()
        } else {
            vec![(id, exe_status)]
        };
        let spec = DeviationSpec {
            process_policy: vec![self.fragment(anchor, node)],
            network_policy: None,
        };
        self.document(DeviationType::Process, spec, &untrusted)
    }

    fn document(
        &self,
        kind: DeviationType,
        spec: DeviationSpec,
        untrusted: &[(&str, ExeStatus)],
    ) -> Deviation {
        let checksum = checksum(kind, &spec, untrusted);
        Deviation {
            api_version: API_VERSION.into(),
            kind: KIND_DEVIATION.into(),
            metadata: DeviationMetadata {
                kind,
                policy_uid: self.policy.uid.clone(),
                uid: Some(deviation_uid(&self.policy.uid, &checksum)),
                checksum,
                extra: Default::default(),
            },
            spec,
        }
    }

    pub(super) fn deviation(&self, key: RecordKey) -> Deviation {
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
                    process_policy: vec![self.chain_fragment(ch)],
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
                    ProcRef::Node(n) => (Vec::new(), vec![self.policy.node(n).id.clone()]),
                    ProcRef::Chain(c) => {
                        let id = self.chain(c).node.id.clone();
                        (vec![self.chain_fragment(c)], vec![id])
                    }
                    ProcRef::Unknown => (Vec::new(), Vec::new()),
                };
                let peers = match peer {
                    PeerRef::Dns(set) => self
                        .tracker
                        .dns_names(Some(set))
                        .map(|name| Peer::DnsSelector(vec![name.to_string()]))
                        .collect(),
                    PeerRef::Ip(ip) => vec![Peer::IpBlock(IpBlock {
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
                            ..DeviationNetwork::default()
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
                            ..DeviationNetwork::default()
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
        self.document(kind, spec, &untrusted)
    }
}

/// Why an exec could not have been allowed: its executable is untrusted (see the rules in
/// [`super`]); none for a resolved one.
pub(super) fn program_reason(status: ExeStatus, exe: &str) -> Option<String> {
    untrusted_exe_reason(status)
        .map(|why| format!("{why} `{exe}`: no exe glob allows it (fail closed)"))
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
/// untrusted executables of its fragment (node id and status) when it has any (see the rules
/// in [`super`]).
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
