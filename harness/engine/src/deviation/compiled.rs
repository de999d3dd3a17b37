//! A policy prepared for matching: its process forest flattened with globs ready, its network
//! nodes parsed, and the selectors that say which containers it applies to.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use guardlab_events::{ContainerInfo, Protocol};

use super::selector::{container_matches, labels_match, namespace_labels};
use crate::canonical::{canonicalize, collect_ids};
use crate::error::PolicyError;
use crate::glob::{Glob, glob_match};
use crate::id::typed_id;
use crate::merge::PolicyNets;
use crate::model::{Mode, Peer, Policy, ProcessNode};
use crate::names::policy_uid;
use crate::net::{Block, Ports, normalize_dns_name, parse_cidr};
use crate::policy::{is_enabled, mode};

typed_id!(
    /// A node of a compiled policy's process forest ([`CNode`]).
    pub(crate) PolicyNodeId
);

pub(crate) struct CNode {
    pub id: String,
    pub name: Glob,
    pub exes: Vec<Glob>,
    pub children: Vec<PolicyNodeId>,
}

pub(crate) struct CNet {
    /// `dnsSelector` names, in normal form.
    pub dns: Vec<Glob>,
    pub blocks: Vec<Block>,
    pub ports: Vec<Ports>,
    /// The nodes it names, sorted; `None` means any process.
    pub processes: Option<Vec<PolicyNodeId>>,
}

impl CNet {
    pub fn allows_port(&self, protocol: Protocol, port: u16) -> bool {
        self.ports.iter().any(|p| p.allows(protocol, port))
    }

    pub fn allows_process(&self, node: Option<PolicyNodeId>) -> bool {
        match (&self.processes, node) {
            (None, _) => true,
            (Some(list), Some(n)) => list.binary_search(&n).is_ok(),
            (Some(_), None) => false,
        }
    }

    /// True when the address is in a block, or one of the names an earlier DNS answer gave
    /// for it (in normal form, see [`crate::net::normalize_dns_name`]) matches a
    /// `dnsSelector`.
    pub fn allows_peer(&self, names: &[&str], ip: IpAddr) -> bool {
        names
            .iter()
            .any(|name| self.dns.iter().any(|g| g.matches(name)))
            || self.blocks.iter().any(|b| b.covers_ip(ip))
    }
}

pub(crate) struct CompiledPolicy {
    /// The policy, canonical.
    pub policy: Policy,
    pub uid: String,
    pub name: String,
    pub enabled: bool,
    pub mode: Mode,
    pub nodes: Vec<CNode>,
    pub roots: Vec<PolicyNodeId>,
    pub ids: HashSet<String>,
    pub ingress: Vec<CNet>,
    pub egress: Vec<CNet>,
    /// The network nodes as documents, for relevance.
    pub nets: PolicyNets,
}

impl CompiledPolicy {
    pub fn new(policy: &Policy) -> Result<CompiledPolicy, PolicyError> {
        let mut policy = policy.clone();
        canonicalize(&mut policy);
        let ids = collect_ids(&policy.spec.process_policy, &policy.metadata.name)?;
        let mut nodes = Vec::new();
        let mut id_index = BTreeMap::new();
        let roots = flatten(&policy.spec.process_policy, &mut nodes, &mut id_index);
        let name = policy.metadata.name.clone();
        let net = |peers: &[Peer],
                   processes: &[String],
                   ports: &[crate::model::PortSpec],
                   direction: &str,
                   peers_key: &str| {
            let mut dns = Vec::new();
            let mut blocks = Vec::new();
            for p in peers {
                match p {
                    Peer::DnsSelector(names) => {
                        dns.extend(names.iter().map(|n| Glob::new(&normalize_dns_name(n))))
                    }
                    Peer::IpBlock(b) => {
                        let block = Block::new(b);
                        if block.net.is_none() {
                            return Err(PolicyError::InvalidCidr {
                                policy: name.clone(),
                                field: format!("networkPolicy.{direction}.{peers_key}"),
                                value: b.cidr.clone(),
                            });
                        }
                        // An exception ignored would allow what the policy carves out.
                        if let Some(bad) = b.except.iter().find(|e| parse_cidr(e).is_err()) {
                            return Err(PolicyError::InvalidCidr {
                                policy: name.clone(),
                                field: format!("networkPolicy.{direction}.{peers_key}.except"),
                                value: bad.clone(),
                            });
                        }
                        blocks.push(block);
                    }
                }
            }
            let ports = ports
                .iter()
                .map(|p| {
                    let ports = Ports::new(p);
                    match ports.protocol {
                        Some(_) => Ok(ports),
                        None => Err(PolicyError::UnknownProtocol {
                            policy: name.clone(),
                            field: format!("networkPolicy.{direction}.ports"),
                            value: p.protocol.clone(),
                        }),
                    }
                })
                .collect::<Result<_, _>>()?;
            // An id that names no node matches no process (validation reports it).
            let processes = (!processes.is_empty()).then(|| {
                let mut nodes: Vec<PolicyNodeId> = processes
                    .iter()
                    .filter_map(|id| id_index.get(id.as_str()).copied())
                    .collect();
                // Sorted, to be searched on every connection: a network node may name
                // hundreds of processes.
                nodes.sort_unstable();
                nodes.dedup();
                nodes
            });
            Ok(CNet {
                dns,
                blocks,
                ports,
                processes,
            })
        };
        let ingress = policy
            .spec
            .network_policy
            .ingress
            .iter()
            .map(|n| net(&n.from, &n.processes, &n.ports, "ingress", "from"))
            .collect::<Result<_, _>>()?;
        let egress = policy
            .spec
            .network_policy
            .egress
            .iter()
            .map(|n| net(&n.to, &n.processes, &n.ports, "egress", "to"))
            .collect::<Result<_, _>>()?;
        Ok(CompiledPolicy {
            uid: policy_uid(&policy),
            enabled: is_enabled(&policy),
            mode: mode(&policy),
            name,
            nodes,
            roots,
            ids,
            ingress,
            egress,
            nets: PolicyNets::new(&policy),
            policy,
        })
    }

    /// The first node among `candidates` that covers a process named `name` running `exe`.
    pub fn covering(
        &self,
        candidates: &[PolicyNodeId],
        name: &str,
        exe: &str,
    ) -> Option<PolicyNodeId> {
        candidates.iter().copied().find(|&c| {
            let n = self.node(c);
            n.name.matches(name) && n.exes.iter().any(|g| g.matches(exe))
        })
    }

    /// The children of a node; the roots for none.
    pub fn children_of(&self, node: Option<PolicyNodeId>) -> &[PolicyNodeId] {
        match node {
            Some(n) => &self.node(n).children,
            None => &self.roots,
        }
    }

    pub fn node(&self, id: PolicyNodeId) -> &CNode {
        &self.nodes[id.index()]
    }

    /// True when the policy applies to the container.
    pub fn selects(&self, info: &ContainerInfo) -> bool {
        let spec = &self.policy.spec;
        if self.policy.metadata.kind != "container" {
            return false;
        }
        let Some(sel) = &spec.container_selector else {
            return false;
        };
        if !container_matches(sel, info) {
            return false;
        }
        if let Some(ns) = &spec.namespace_selector
            && !labels_match(ns, &namespace_labels(info))
        {
            return false;
        }
        if let Some(pod) = &spec.pod_selector
            && !labels_match(pod, &info.pod_labels)
        {
            return false;
        }
        if let Some(machine) = &spec.machine_selector
            && let Some(host) = &machine.hostname
            && !glob_match(host, &info.machine)
        {
            return false;
        }
        true
    }
}

fn flatten(
    nodes: &[ProcessNode],
    out: &mut Vec<CNode>,
    ids: &mut BTreeMap<String, PolicyNodeId>,
) -> Vec<PolicyNodeId> {
    let mut mine = Vec::with_capacity(nodes.len());
    for n in nodes {
        let idx = PolicyNodeId::new(out.len());
        out.push(CNode {
            id: n.id.clone(),
            name: Glob::new(&n.name),
            exes: n.exe.iter().map(|e| Glob::new(e)).collect(),
            children: Vec::new(),
        });
        ids.insert(n.id.clone(), idx);
        let kids = flatten(n.children.as_deref().unwrap_or_default(), out, ids);
        out[idx.index()].children = kids;
        mine.push(idx);
    }
    mine
}
