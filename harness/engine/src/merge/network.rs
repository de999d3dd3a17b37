//! Merging network nodes: coverage of one node by another, and where a node that is not
//! covered joins (the same peers and ports, else the same ports and processes) or is added.

use super::process::{IdMap, translate};
use crate::canonical::{NetNode, peer_set, port_set, sort_dedup};
use crate::model::{EgressNode, IngressNode, NetworkPolicy};
use crate::net::{peer_covered, ports_covered};

/// True when `policy` allows everything `node` describes.
pub(super) fn net_covers(policy: &NetNode, node: &NetNode) -> bool {
    let processes = policy.processes.is_empty()
        || (!node.processes.is_empty()
            && node.processes.iter().all(|p| policy.processes.contains(p)));
    processes
        && ports_covered(&policy.ports, &node.ports)
        && node.peers.iter().all(|p| peer_covered(&policy.peers, p))
}

fn same_set<T: Ord + Clone>(a: &[T], b: &[T]) -> bool {
    let mut x = a.to_vec();
    let mut y = b.to_vec();
    x.sort();
    y.sort();
    x.dedup();
    y.dedup();
    x == y
}

fn merge_net_nodes(base: &mut Vec<NetNode>, other: Vec<NetNode>, symmetric: bool) {
    for o in other {
        if base.iter().any(|b| net_covers(b, &o)) {
            continue;
        }
        let (o_peers, o_ports) = (peer_set(&o.peers), port_set(&o.ports));
        // The same remote and ports for other processes: one node, the processes unioned
        // (a node for any process stays one for any process).
        if let Some(b) = base
            .iter_mut()
            .find(|b| port_set(&b.ports) == o_ports && peer_set(&b.peers) == o_peers)
        {
            if b.processes.is_empty() || o.processes.is_empty() {
                b.processes.clear();
            } else {
                b.processes.extend(o.processes);
                sort_dedup(&mut b.processes);
            }
            continue;
        }
        let joinable = base
            .iter_mut()
            .find(|b| same_set(&b.processes, &o.processes) && port_set(&b.ports) == o_ports);
        match joinable {
            Some(b) => {
                for p in o.peers {
                    if symmetric {
                        // A wider peer replaces the narrower ones it covers.
                        let wider = std::slice::from_ref(&p);
                        b.peers.retain(|have| !peer_covered(wider, have));
                    }
                    if !peer_covered(&b.peers, &p) {
                        b.peers.push(p);
                    }
                }
            }
            None => base.push(o),
        }
    }
}

pub(super) fn merge_network(
    base: &mut NetworkPolicy,
    other: &NetworkPolicy,
    map: &IdMap,
    symmetric: bool,
) {
    let convert = |n: NetNode| NetNode {
        processes: translate(&n.processes, map),
        ..n
    };
    let mut ingress: Vec<NetNode> = base.ingress.iter().map(NetNode::from).collect();
    let mut egress: Vec<NetNode> = base.egress.iter().map(NetNode::from).collect();
    merge_net_nodes(
        &mut ingress,
        other
            .ingress
            .iter()
            .map(NetNode::from)
            .map(convert)
            .collect(),
        symmetric,
    );
    merge_net_nodes(
        &mut egress,
        other
            .egress
            .iter()
            .map(NetNode::from)
            .map(convert)
            .collect(),
        symmetric,
    );
    base.ingress = ingress.into_iter().map(IngressNode::from).collect();
    base.egress = egress.into_iter().map(EgressNode::from).collect();
}
