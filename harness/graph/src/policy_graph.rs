//! A policy as a graph: its process tree under the policy, its network rules hanging off
//! the processes they name (off the policy when they name none: any process), and the
//! deviations given, drawn red where they would add to it.
//!
//! A deviation's fragment names the node it hangs under (`policyNode.id`): a node of the
//! policy, or one an earlier deviation added (`gzip` under a deviant `tar`). An id found
//! nowhere is matched by its name (the `<name>_<n>` convention, the first node of that name),
//! and failing that the fragment goes under an "unmatched" group of its own. The nodes of a
//! fragment the graph already has (the chain an egress deviation repeats) are not added
//! twice.

use std::collections::HashMap;

use guardlab_engine::model::{
    Deviation, EgressNode, IngressNode, Peer, Policy, PortSpec, ProcessNode, ROOT_ANCHOR,
};

use crate::model::{EdgeKind, Flow, Graph, Node, NodeKind, cut};

/// How many characters a label line shows (the tooltip has it all).
const LINE_CHARS: usize = 48;

struct Builder {
    graph: Graph,
    root: usize,
    /// Process node id → graph node.
    ids: HashMap<String, usize>,
    /// Process node name → the first graph node of that name.
    names: HashMap<String, usize>,
    unmatched: Option<usize>,
}

impl Builder {
    fn unmatched(&mut self) -> usize {
        if let Some(u) = self.unmatched {
            return u;
        }
        let u = self.graph.add(
            Node::new(
                "unmatched",
                NodeKind::Group,
                vec!["unmatched deviations".into()],
            )
            .tooltip("Deviations whose process is in neither the policy nor another deviation"),
        );
        self.unmatched = Some(u);
        u
    }

    /// The node a fragment hangs under.
    fn anchor(&mut self, id: &str) -> usize {
        if id == ROOT_ANCHOR {
            return self.root;
        }
        if let Some(&at) = self.ids.get(id) {
            return at;
        }
        let name = match id.rsplit_once('_') {
            Some((name, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => id,
        };
        match self.names.get(name) {
            Some(&at) => at,
            None => self.unmatched(),
        }
    }

    /// A process tree under `parent`, without recursion; nodes the graph has are reused.
    fn processes(&mut self, parent: usize, nodes: &[ProcessNode], deviation: Option<&Deviation>) {
        let mut stack: Vec<(usize, &ProcessNode)> =
            nodes.iter().rev().map(|n| (parent, n)).collect();
        while let Some((parent, p)) = stack.pop() {
            let at = match self.ids.get(&p.id) {
                Some(&at) => at,
                None => {
                    let at = self.graph.add(process_node(p, deviation));
                    self.graph.link(parent, at, EdgeKind::Child);
                    self.ids.insert(p.id.clone(), at);
                    self.names.entry(p.name.clone()).or_insert(at);
                    at
                }
            };
            for c in p.children.iter().flatten().rev() {
                stack.push((at, c));
            }
        }
    }

    fn network(&mut self, id: String, rule: Rule<'_>, deviation: Option<&Deviation>) {
        let (flow, peers, processes, ports) = match rule {
            Rule::Ingress(r) => (Flow::Ingress, &r.from, &r.processes, &r.ports),
            Rule::Egress(r) => (Flow::Egress, &r.to, &r.processes, &r.ports),
        };
        let heading = match flow {
            Flow::Ingress => "ingress from",
            Flow::Egress => "egress to",
        };
        let peers: Vec<String> = peers.iter().map(peer_text).collect();
        let ports: Vec<String> = ports.iter().map(port_text).collect();
        let mut lines = vec![heading.to_string()];
        lines.extend(peers.iter().map(|p| cut(p, LINE_CHARS)));
        lines.push(cut(&ports.join(", "), LINE_CHARS));
        let mut tooltip = format!(
            "{heading} {}\nports {}\nprocesses {}",
            peers.join(", "),
            ports.join(", "),
            if processes.is_empty() {
                "any".to_string()
            } else {
                processes.join(", ")
            }
        );
        if let Some(d) = deviation {
            tooltip.push_str(&deviation_text(d));
        }
        let at = self.graph.add(
            Node::new(id, NodeKind::Connection, lines)
                .deviant(deviation.is_some())
                .tooltip(tooltip),
        );
        if processes.is_empty() {
            self.graph.link(self.root, at, EdgeKind::Connection(flow));
        }
        for p in processes {
            let from = match self.ids.get(p) {
                Some(&from) => from,
                None => self.unmatched(),
            };
            if !self
                .graph
                .edges
                .iter()
                .any(|e| e.from == from && e.to == at)
            {
                self.graph.link(from, at, EdgeKind::Connection(flow));
            }
        }
    }
}

enum Rule<'a> {
    Ingress(&'a IngressNode),
    Egress(&'a EgressNode),
}

fn deviation_text(d: &Deviation) -> String {
    format!(
        "\n{} deviation {}",
        d.metadata.kind,
        d.metadata.uid.as_deref().unwrap_or(&d.metadata.checksum)
    )
}

fn process_node(p: &ProcessNode, deviation: Option<&Deviation>) -> Node {
    let mut lines = vec![cut(&format!("{} [{}]", p.name, p.id), LINE_CHARS)];
    match p.exe.as_slice() {
        [] => {}
        [one] => lines.push(cut(one, LINE_CHARS)),
        [first, rest @ ..] => {
            lines.push(cut(&format!("{first} (+{} more)", rest.len()), LINE_CHARS))
        }
    }
    let users = p.euser.as_ref().map(|u| u.join(", "));
    if let Some(u) = &users {
        lines.push(cut(&format!("user {u}"), LINE_CHARS));
    }
    let mut tooltip = format!("{} ({})\nexe {}", p.name, p.id, p.exe.join(", "));
    if let Some(u) = &users {
        tooltip.push_str(&format!("\neuser {u}"));
    }
    if let Some(sockets) = &p.listening_sockets {
        let s: Vec<String> = sockets.iter().map(port_text).collect();
        tooltip.push_str(&format!("\nlistening {}", s.join(", ")));
    }
    if let Some(d) = deviation {
        tooltip.push_str(&deviation_text(d));
    }
    Node::new(format!("p:{}", p.id), NodeKind::Process, lines)
        .deviant(deviation.is_some())
        .tooltip(tooltip)
}

fn peer_text(p: &Peer) -> String {
    match p {
        Peer::DnsSelector(names) => names.join(", "),
        Peer::IpBlock(b) if b.except.is_empty() => b.cidr.clone(),
        Peer::IpBlock(b) => format!("{} except {}", b.cidr, b.except.join(", ")),
    }
}

fn port_text(p: &PortSpec) -> String {
    match p.end_port {
        Some(end) => format!("{}/{}-{end}", p.protocol, p.port),
        None => format!("{}/{}", p.protocol, p.port),
    }
}

/// The policy's graph, with `deviations` (of this policy, in order) drawn red where they add
/// to it.
pub fn policy_graph(policy: &Policy, deviations: &[Deviation]) -> Graph {
    let mut graph = Graph::default();
    let mode = policy.spec.mode.map_or("audit", |m| m.as_str());
    let root = graph.add(
        Node::new(
            "policy",
            NodeKind::Group,
            vec![
                cut(&format!("policy {}", policy.metadata.name), LINE_CHARS),
                format!("mode {mode}"),
            ],
        )
        .tooltip(format!(
            "policy {}\nuid {}\nmode {mode}",
            policy.metadata.name,
            policy.metadata.uid.as_deref().unwrap_or("-")
        )),
    );
    let mut b = Builder {
        graph,
        root,
        ids: HashMap::new(),
        names: HashMap::new(),
        unmatched: None,
    };
    b.processes(root, &policy.spec.process_policy, None);
    let net = &policy.spec.network_policy;
    for (k, r) in net.ingress.iter().enumerate() {
        b.network(format!("net:ingress:{k}"), Rule::Ingress(r), None);
    }
    for (k, r) in net.egress.iter().enumerate() {
        b.network(format!("net:egress:{k}"), Rule::Egress(r), None);
    }
    for (di, d) in deviations.iter().enumerate() {
        for item in &d.spec.process_policy {
            let anchor = b.anchor(&item.policy_node.id);
            b.processes(anchor, &item.policy_node.children, Some(d));
        }
        let uid = d.metadata.uid.clone().unwrap_or_else(|| format!("{di}"));
        if let Some(net) = &d.spec.network_policy {
            for (k, r) in net.ingress.iter().enumerate() {
                b.network(format!("dev:{uid}:ingress:{k}"), Rule::Ingress(r), Some(d));
            }
            for (k, r) in net.egress.iter().enumerate() {
                b.network(format!("dev:{uid}:egress:{k}"), Rule::Egress(r), Some(d));
            }
        }
    }
    b.graph
}
