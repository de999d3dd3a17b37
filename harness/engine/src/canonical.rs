//! The canonical form of a document, which every document the engine writes is in, so that
//! equal content is equal text: exes, users, sockets, ports and process ids sorted and
//! deduplicated; siblings sorted by name (then exe, then id); a child's `euser` dropped when
//! it equals what it inherits; one DNS name per `dnsSelector`, in normal form (lower case, no
//! trailing dot), peers ordered DNS names, IPv4, IPv6; network nodes sorted.
//!
//! Also the ids of a process forest (`collect_ids`), which a forest must not repeat.

use std::collections::HashSet;

use crate::error::PolicyError;
use crate::model::{
    EgressNode, GuardDocument, IngressNode, NetworkPolicy, Peer, PortSpec, ProcessNode,
};
use crate::net::{normalize_dns_name, peer_order, port_order};

/// A network node without its direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NetNode {
    pub peers: Vec<Peer>,
    pub processes: Vec<String>,
    pub ports: Vec<PortSpec>,
}

impl From<&IngressNode> for NetNode {
    fn from(n: &IngressNode) -> Self {
        NetNode {
            peers: n.from.clone(),
            processes: n.processes.clone(),
            ports: n.ports.clone(),
        }
    }
}

impl From<&EgressNode> for NetNode {
    fn from(n: &EgressNode) -> Self {
        NetNode {
            peers: n.to.clone(),
            processes: n.processes.clone(),
            ports: n.ports.clone(),
        }
    }
}

impl From<NetNode> for IngressNode {
    fn from(n: NetNode) -> Self {
        IngressNode {
            from: n.peers,
            processes: n.processes,
            ports: n.ports,
        }
    }
}

impl From<NetNode> for EgressNode {
    fn from(n: NetNode) -> Self {
        EgressNode {
            to: n.peers,
            processes: n.processes,
            ports: n.ports,
        }
    }
}

pub(crate) fn sort_dedup(v: &mut Vec<String>) {
    v.sort();
    v.dedup();
}

/// Put a document in canonical form (see the module documentation).
pub fn canonicalize(doc: &mut GuardDocument) {
    canonical_processes(&mut doc.spec.process_policy, None);
    canonical_network(&mut doc.spec.network_policy);
}

fn canonical_processes(nodes: &mut [ProcessNode], inherited: Option<&[String]>) {
    for n in nodes.iter_mut() {
        sort_dedup(&mut n.exe);
        if let Some(users) = n.euser.as_mut() {
            sort_dedup(users);
        }
        let effective: Option<Vec<String>> = n
            .euser
            .clone()
            .or_else(|| inherited.map(<[String]>::to_vec));
        if inherited.is_some() && n.euser.as_deref() == inherited {
            n.euser = None;
        }
        if let Some(sockets) = n.listening_sockets.as_mut() {
            sockets.sort_by(port_order);
            sockets.dedup();
            if sockets.is_empty() {
                n.listening_sockets = None;
            }
        }
        if let Some(kids) = n.children.as_mut() {
            canonical_processes(kids, effective.as_deref());
            if kids.is_empty() {
                n.children = None;
            }
        }
    }
    nodes.sort_by(|a, b| (&a.name, &a.exe, &a.id).cmp(&(&b.name, &b.exe, &b.id)));
}

fn canonical_network(net: &mut NetworkPolicy) {
    let mut ingress: Vec<NetNode> = net.ingress.iter().map(NetNode::from).collect();
    let mut egress: Vec<NetNode> = net.egress.iter().map(NetNode::from).collect();
    canonical_net_nodes(&mut ingress);
    canonical_net_nodes(&mut egress);
    net.ingress = ingress.into_iter().map(IngressNode::from).collect();
    net.egress = egress.into_iter().map(EgressNode::from).collect();
}

/// Peers in canonical form: one normalized DNS name per `dnsSelector`, sorted, no repeats.
pub(crate) fn peer_set(peers: &[Peer]) -> Vec<Peer> {
    let mut out = Vec::with_capacity(peers.len());
    for p in peers {
        match p {
            Peer::DnsSelector(names) => out.extend(
                names
                    .iter()
                    .map(|name| Peer::DnsSelector(vec![normalize_dns_name(name).into_owned()])),
            ),
            block => out.push(block.clone()),
        }
    }
    out.sort_by(peer_order);
    out.dedup();
    out
}

/// Ports in canonical order, no repeats.
pub(crate) fn port_set(ports: &[PortSpec]) -> Vec<PortSpec> {
    let mut out = ports.to_vec();
    out.sort_by(port_order);
    out.dedup();
    out
}

fn canonical_net_nodes(nodes: &mut Vec<NetNode>) {
    for n in nodes.iter_mut() {
        n.peers = peer_set(&n.peers);
        n.ports = port_set(&n.ports);
        sort_dedup(&mut n.processes);
    }
    nodes.sort_by(|a, b| {
        let peers = a
            .peers
            .iter()
            .zip(&b.peers)
            .map(|(x, y)| peer_order(x, y))
            .find(|o| o.is_ne());
        peers
            .unwrap_or_else(|| a.peers.len().cmp(&b.peers.len()))
            .then_with(|| {
                let ports = a
                    .ports
                    .iter()
                    .zip(&b.ports)
                    .map(|(x, y)| port_order(x, y))
                    .find(|o| o.is_ne());
                ports.unwrap_or_else(|| a.ports.len().cmp(&b.ports.len()))
            })
            .then_with(|| a.processes.cmp(&b.processes))
    });
    nodes.dedup();
}

/// Every process id of a forest; an error names the first id used twice.
pub(crate) fn collect_ids(
    nodes: &[ProcessNode],
    doc: &str,
) -> Result<HashSet<String>, PolicyError> {
    fn walk(
        nodes: &[ProcessNode],
        ids: &mut HashSet<String>,
        doc: &str,
    ) -> Result<(), PolicyError> {
        for n in nodes {
            if !ids.insert(n.id.clone()) {
                return Err(PolicyError::DuplicateId {
                    document: doc.to_string(),
                    id: n.id.clone(),
                });
            }
            walk(n.children.as_deref().unwrap_or_default(), ids, doc)?;
        }
        Ok(())
    }
    let mut ids = HashSet::new();
    walk(nodes, &mut ids, doc)?;
    Ok(ids)
}
