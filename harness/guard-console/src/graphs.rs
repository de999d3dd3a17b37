//! The pictures and words the pages show: graphs laid out and drawn by `guardlab-graph`,
//! and a deviation in one line.

use guardlab_engine::model::{Deviation, DeviationType, Fingerprint, Peer, Policy, ProcessNode};
use guardlab_engine::trace::Investigation;

/// A fingerprint's process tree and connections (a fingerprint is a policy document).
pub(crate) fn fingerprint_svg(fingerprint: &Fingerprint) -> String {
    policy_svg(fingerprint, &[])
}

/// A policy's graph, with `deviations` drawn in red where they would add to it.
pub(crate) fn policy_svg(policy: &Policy, deviations: &[Deviation]) -> String {
    let graph = guardlab_graph::policy_graph(policy, deviations);
    guardlab_graph::to_svg(&graph, &guardlab_graph::layout(&graph))
}

/// One causal graph per container, from its root process to every deviation.
pub(crate) fn investigation_svg(investigation: &Investigation) -> String {
    let graph = guardlab_graph::investigation_graph(&investigation.tree());
    guardlab_graph::to_svg(&graph, &guardlab_graph::layout(&graph))
}

/// What a deviation adds, in a line: the new programs (`bash → ls`), or where a connection
/// went (`egress to sourceforge.net TCP/443 by wget`).
pub(crate) fn deviation_summary(deviation: &Deviation) -> String {
    let kind = deviation.metadata.kind;
    if kind == DeviationType::Process {
        let mut names = Vec::new();
        for fragment in &deviation.spec.process_policy {
            let mut stack: Vec<&ProcessNode> = fragment.policy_node.children.iter().collect();
            while let Some(node) = stack.pop() {
                names.push(format!("{} ({})", node.name, node.exe.join(", ")));
                if let Some(children) = &node.children {
                    stack.extend(children.iter().rev());
                }
            }
        }
        return format!("new process: {}", names.join(" → "));
    }
    let Some(network) = &deviation.spec.network_policy else {
        return format!("{kind:?}").to_lowercase();
    };
    let rules: Vec<String> = match kind {
        DeviationType::Egress => network
            .egress
            .iter()
            .map(|r| rule("egress to", &r.to, &r.ports, &r.processes))
            .collect(),
        _ => network
            .ingress
            .iter()
            .map(|r| rule("ingress from", &r.from, &r.ports, &r.processes))
            .collect(),
    };
    rules.join("; ")
}

fn rule(
    word: &str,
    peers: &[Peer],
    ports: &[guardlab_engine::model::PortSpec],
    processes: &[String],
) -> String {
    let peers: Vec<String> = peers
        .iter()
        .map(|p| match p {
            Peer::DnsSelector(names) => names.join(", "),
            Peer::IpBlock(block) => block.cidr.clone(),
        })
        .collect();
    let ports: Vec<String> = ports
        .iter()
        .map(|p| format!("{}/{}", p.protocol, p.port))
        .collect();
    let by = if processes.is_empty() {
        String::new()
    } else {
        format!(" by {}", processes.join(", "))
    };
    format!("{word} {} {}{by}", peers.join(", "), ports.join(", "))
}
