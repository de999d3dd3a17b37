//! An investigation's one causal tree per container ([`InvestigationTree`]) as a graph: the
//! container, its root process, every process down to the deviant ones (an `exec` as an exec
//! edge, not a child), each deviant process's connections hanging off it, a marker where a
//! chain was cut, and the processes seen without their ancestry in a part of their own.

use guardlab_engine::trace::Direction;
use guardlab_engine::trace::{
    InvestigationTree, Relation, TraceConnection, TreeConnection, TreeItem, TreeProcess,
};

use crate::model::{EdgeKind, Flow, Graph, Node, NodeKind, cut};

/// How many characters a label line shows (the tooltip has it all).
const LINE_CHARS: usize = 56;

fn quote_args(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if a.is_empty() || a.contains(char::is_whitespace) {
                format!("{a:?}")
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn process_node(id: String, tp: &TreeProcess) -> Node {
    let p = &tp.process;
    let command = quote_args(&p.args);
    let mut lines = vec![
        cut(&format!("{} pid {}", p.name, p.pid), LINE_CHARS),
        cut(&format!("$ {command}"), LINE_CHARS),
    ];
    let node = match (&p.node, p.deviant) {
        (Some(n), true) => Some(format!("NEW {n}")),
        (Some(n), false) => Some(n.clone()),
        (None, _) => None,
    };
    let third: Vec<String> = node.into_iter().chain(p.ended.clone()).collect();
    if !third.is_empty() {
        lines.push(cut(&third.join(", "), LINE_CHARS));
    }
    // What the kernel stopped says so on its box, not only in its tooltip.
    if tp
        .deviations
        .iter()
        .any(|d| d.prevented && d.kind == guardlab_engine::model::DeviationType::Process)
    {
        lines.push("prevented: killed at exec".into());
    }
    let mut tooltip = format!(
        "{} pid {} ({} in container) user {}\nstarted {}\nexe {}\n$ {command}",
        p.name, p.pid, p.ns_pid, p.euser, p.started, p.exe
    );
    if let Some(e) = &p.ended {
        tooltip.push_str(&format!("\nended: {e}"));
    }
    if let Some(n) = &p.node {
        tooltip.push_str(&format!("\npolicy node {n}"));
    }
    for d in &tp.deviations {
        tooltip.push_str(&format!(
            "\n{} deviation {} (policy {}, seen {}x)",
            d.kind, d.uid, d.policy_name, d.count
        ));
        if let Some(r) = &d.reason {
            tooltip.push_str(&format!(": {r}"));
        }
    }
    Node::new(id, NodeKind::Process, lines)
        .deviant(p.deviant || tp.has_process_deviation())
        .tooltip(tooltip)
}

fn connection_node(id: String, tc: &TreeConnection) -> Node {
    let c: &TraceConnection = &tc.connection;
    let dir = match c.direction {
        Direction::Egress => "egress",
        Direction::Ingress => "ingress",
    };
    let mut lines = vec![format!("{dir} {} {}:{}", c.protocol, c.ip, c.port)];
    if let Some(dns) = &c.dns {
        lines.push(cut(dns, LINE_CHARS));
    }
    if c.refused {
        lines.push("refused".into());
    }
    let mut tooltip = format!(
        "{dir} {} {}:{} (peer port {}){}",
        c.protocol,
        c.dns
            .as_deref()
            .map_or(c.ip.clone(), |d| format!("{d} ({})", c.ip)),
        c.port,
        c.remote_port,
        if c.refused { " refused" } else { "" }
    );
    for d in &tc.deviations {
        tooltip.push_str(&format!(
            "\n{} deviation {} (policy {}, seen {}x)",
            d.kind, d.uid, d.policy_name, d.count
        ));
    }
    Node::new(id, NodeKind::Connection, lines)
        .deviant(tc.deviant())
        .tooltip(tooltip)
}

fn flow(c: &TraceConnection) -> Flow {
    match c.direction {
        Direction::Egress => Flow::Egress,
        Direction::Ingress => Flow::Ingress,
    }
}

fn connections(g: &mut Graph, from: usize, prefix: &str, list: &[TreeConnection]) {
    for (k, c) in list.iter().enumerate() {
        let at = g.add(connection_node(format!("{prefix}:k{k}"), c));
        g.link(from, at, EdgeKind::Connection(flow(&c.connection)));
    }
}

/// One graph of every container's tree: the containers are its roots.
pub fn investigation_graph(tree: &InvestigationTree) -> Graph {
    let mut g = Graph::default();
    for (ci, t) in tree.containers.iter().enumerate() {
        let c = &t.container;
        let container = g.add(
            Node::new(
                format!("c{ci}"),
                NodeKind::Group,
                vec![
                    cut(&format!("container {}", c.container_name), LINE_CHARS),
                    cut(&format!("image {}", c.image), LINE_CHARS),
                    cut(&format!("pod {}/{}", c.namespace, c.pod), LINE_CHARS),
                ],
            )
            .tooltip(format!(
                "container {} ({})\nimage {}\npod {} namespace {}",
                c.container_name, c.container_id, c.image, c.pod, c.namespace
            )),
        );
        // The tree's nodes come parents first: each parent's graph index is known.
        let mut at = Vec::with_capacity(t.nodes.len());
        for (j, n) in t.nodes.iter().enumerate() {
            let id = format!("c{ci}:n{j}");
            let node = match &n.item {
                TreeItem::Process(p) => process_node(id.clone(), p),
                TreeItem::Omitted { count } => Node::new(
                    id.clone(),
                    NodeKind::Marker,
                    vec![format!("… {count} processes omitted")],
                )
                .tooltip(format!(
                    "{count} processes between these were left out of the trace (the trace-processes limit)"
                )),
            };
            let here = g.add(node);
            at.push(here);
            let parent = n
                .parent
                .and_then(|p| at.get(p).copied())
                .unwrap_or(container);
            let kind = match n.relation {
                Relation::Exec => EdgeKind::Exec,
                Relation::Root | Relation::Child => EdgeKind::Child,
            };
            g.link(parent, here, kind);
            if let TreeItem::Process(p) = &n.item {
                connections(&mut g, here, &id, &p.connections);
            }
        }
        if !t.without_ancestry.is_empty() {
            let early = g.add(
                Node::new(
                    format!("c{ci}:early"),
                    NodeKind::Group,
                    vec!["processes seen without their ancestry".into()],
                )
                .tooltip("Deviant processes running before the sensor saw them start"),
            );
            g.link(container, early, EdgeKind::Child);
            for (k, u) in t.without_ancestry.iter().enumerate() {
                let id = format!("c{ci}:early:{k}");
                let mut tooltip =
                    format!("process {} (started before the sensor saw it)", u.process);
                for d in &u.deviations {
                    tooltip.push_str(&format!(
                        "\n{} deviation {} (policy {}, seen {}x)",
                        d.kind, d.uid, d.policy_name, d.count
                    ));
                }
                let p = g.add(
                    Node::new(
                        id.clone(),
                        NodeKind::Process,
                        vec![format!("process {}", u.process.pid())],
                    )
                    .deviant(true)
                    .tooltip(tooltip),
                );
                g.link(early, p, EdgeKind::Child);
                connections(&mut g, p, &id, &u.connections);
            }
        }
    }
    g
}
