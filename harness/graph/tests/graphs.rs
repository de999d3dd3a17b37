//! The graphs end to end: layouts that never overlap and put parents above children, SVG
//! that shows and escapes every label, a 10,000-node chain on a test thread's stack, the
//! same bytes on every run, and the engine's own cryptominer story as one tree per container
//! and as a policy with its deviations.

use std::collections::BTreeSet;

use guardlab_engine::deviation::find_deviations;
use guardlab_engine::fingerprint::fingerprints;
use guardlab_engine::model::{Deviation, Mode, Policy};
use guardlab_engine::policy::create_policy;
use guardlab_engine::trace::{Investigation, Investigator};
use guardlab_graph::model::Node;
use guardlab_graph::{
    EdgeKind, Graph, Layout, NodeKind, Style, investigation_graph, layout, policy_graph, to_svg,
};
use guardlab_test_support::notebook::{FIRST, baseline};

fn check_layout(g: &Graph, l: &Layout) {
    assert_eq!(l.boxes.len(), g.nodes.len());
    // No two boxes overlap: sorted by x, each box is compared with those it could reach.
    let mut by_x: Vec<usize> = (0..l.boxes.len()).collect();
    by_x.sort_by_key(|&i| (l.boxes[i].x, i));
    for (k, &i) in by_x.iter().enumerate() {
        let a = l.boxes[i];
        for &j in &by_x[k + 1..] {
            let b = l.boxes[j];
            if b.x >= a.x + a.w {
                break;
            }
            assert!(
                !a.overlaps(&b),
                "{:?} and {:?} overlap",
                g.nodes[i].id,
                g.nodes[j].id
            );
        }
        assert!(a.x >= 0 && a.y >= 0 && a.x + a.w <= l.width && a.y + a.h <= l.height);
    }
    // Every edge a node is placed by goes down a layer; every child is below its parent.
    for e in &g.edges {
        let (p, c) = (l.boxes[e.from], l.boxes[e.to]);
        assert!(
            p.y + p.h < c.y,
            "{} not above {}",
            g.nodes[e.from].id,
            g.nodes[e.to].id
        );
    }
}

fn node(id: &str, kind: NodeKind, line: &str) -> Node {
    Node::new(id, kind, vec![line.to_string()])
}

/// A tree of about 60 nodes of varied widths, with a second parent for one node (a DAG).
fn sixty() -> Graph {
    let mut g = Graph::default();
    let root = g.add(node("root", NodeKind::Group, "root"));
    let mut level = vec![root];
    let mut n = 1;
    while n < 60 {
        let mut next = Vec::new();
        for (k, &p) in level.iter().enumerate() {
            for c in 0..(1 + (k + n) % 4) {
                if n >= 60 {
                    break;
                }
                let label = "x".repeat(3 + (n * 7 + c) % 40);
                let at = g.add(node(&format!("n{n}"), NodeKind::Process, &label));
                g.link(p, at, EdgeKind::Child);
                next.push(at);
                n += 1;
            }
        }
        level = next;
    }
    // A connection of two processes.
    let conn = g.add(node(
        "conn",
        NodeKind::Connection,
        "egress TCP 198.18.0.70:3333",
    ));
    g.link(3, conn, EdgeKind::Connection(guardlab_graph::Flow::Egress));
    g.link(5, conn, EdgeKind::Connection(guardlab_graph::Flow::Egress));
    g
}

#[test]
fn sixty_nodes_lay_out_without_overlap_parents_above_and_centred() {
    let g = sixty();
    let l = layout(&g);
    check_layout(&g, &l);
    // A parent is centred over its first and last child (within a pixel of rounding), when
    // it is not wider than the distance between their centres (else it keeps to its span).
    let mut centred = 0;
    for v in 0..g.nodes.len() {
        let kids: Vec<usize> = g
            .edges
            .iter()
            .filter(|e| e.from == v && l.tree_parent[e.to] == Some(v))
            .map(|e| e.to)
            .collect();
        if let (Some(&first), Some(&last)) = (kids.first(), kids.last()) {
            let (a, b) = (l.boxes[first].centre_x(), l.boxes[last].centre_x());
            if l.boxes[v].w <= b - a {
                centred += 1;
                let off = l.boxes[v].centre_x() - (a + b) / 2;
                assert!(off.abs() <= 1, "{} off by {off}", g.nodes[v].id);
            }
        }
    }
    assert!(centred >= 3, "{centred}");
    // Siblings stay together, left to right in edge order.
    let root_kids = g.children(0);
    for w in root_kids.windows(2) {
        assert!(l.boxes[w[0]].x < l.boxes[w[1]].x);
    }
}

#[test]
fn the_svg_shows_every_label_escaped() {
    let mut g = Graph::default();
    let a = g.add(
        Node::new(
            "p:<a>&\"b\"",
            NodeKind::Process,
            vec!["sh -c 'echo <x> && cat \"y\"'".into()],
        )
        .tooltip("<script>alert(1)</script>"),
    );
    let b = g.add(node("p:b", NodeKind::Process, "python3").deviant(true));
    let c = g.add(node(
        "c:1",
        NodeKind::Connection,
        "egress TCP 198.18.0.70:3333",
    ));
    g.link(a, b, EdgeKind::Exec);
    g.link(b, c, EdgeKind::Connection(guardlab_graph::Flow::Egress));
    let svg = to_svg(&g, &layout(&g));
    assert!(
        svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""),
        "{svg}"
    );
    assert!(
        svg.contains("sh -c &apos;echo &lt;x&gt; &amp;&amp; cat &quot;y&quot;&apos;"),
        "{svg}"
    );
    assert!(
        svg.contains("data-node-id=\"p:&lt;a&gt;&amp;&quot;b&quot;\""),
        "{svg}"
    );
    assert!(svg.contains("<title>&lt;script&gt;alert(1)&lt;/script&gt;</title>"));
    assert!(!svg.contains("<script"), "no markup comes through a label");
    assert!(svg.contains("class=\"node process deviant\" data-node-id=\"p:b\""));
    assert!(svg.contains("class=\"node connection\" data-node-id=\"c:1\""));
    // The exec edge is dashed and says so; the deviant node is red.
    assert!(svg.contains("class=\"edge exec\""), "{svg}");
    assert!(svg.contains("stroke-dasharray=\"6 4\""));
    assert!(svg.contains(">exec</text>"));
    assert!(svg.contains("stroke=\"#c62828\""));
    // Self-contained: nothing fetched, no style sheet or script.
    for banned in ["href", "url(", "@import", "<style", "<script", "<image"] {
        assert!(!svg.contains(banned), "{banned}");
    }
}

#[test]
fn a_chain_of_ten_thousand_lays_out_and_draws() {
    let mut g = Graph::default();
    let mut prev = g.add(node("n0", NodeKind::Process, "sh"));
    for i in 1..10_000 {
        let at = g.add(node(&format!("n{i}"), NodeKind::Process, "sh -c next"));
        g.link(
            prev,
            at,
            if i % 2 == 0 {
                EdgeKind::Exec
            } else {
                EdgeKind::Child
            },
        );
        prev = at;
    }
    let l = layout(&g);
    assert_eq!(l.layers[9_999], 9_999);
    check_layout(&g, &l);
    let svg = to_svg(&g, &l);
    assert_eq!(svg.matches("<g class=\"node").count(), 10_000);
}

#[test]
fn a_cycle_still_lays_out() {
    let mut g = Graph::default();
    let a = g.add(node("a", NodeKind::Process, "a"));
    let b = g.add(node("b", NodeKind::Process, "b"));
    g.link(a, b, EdgeKind::Child);
    g.link(b, a, EdgeKind::Child);
    let l = layout(&g);
    assert_eq!(l.boxes.len(), 2);
    assert!(!l.boxes[0].overlaps(&l.boxes[1]));
}

/// The engine's cryptominer story: the notebook's baseline makes the policy, then a terminal
/// and the attack.
fn story() -> (Policy, Vec<Deviation>, Investigation) {
    let nb = baseline(&FIRST);
    let fp = fingerprints(&nb.s.events).remove(0);
    let policy = create_policy(&[fp], None, Mode::Audit).unwrap();
    let mut nb = baseline(&FIRST);
    let bash = nb.terminal();
    nb.attack(bash);
    let mut inv = Investigator::new(std::slice::from_ref(&policy)).unwrap();
    for e in &nb.s.events {
        inv.observe(e);
    }
    let report = find_deviations(std::slice::from_ref(&policy), &nb.s.events).unwrap();
    let deviations = report.deviations().cloned().collect();
    (policy, deviations, inv.finish())
}

fn first_line(g: &Graph, i: usize) -> &str {
    g.nodes[i].lines[0].as_str()
}

#[test]
fn the_cryptominer_investigation_is_one_graph_rooted_at_its_container() {
    let (_, _, inv) = story();
    let tree = inv.tree();
    let g = investigation_graph(&tree);
    let roots = g.roots();
    assert_eq!(roots.len(), tree.containers.len());
    assert_eq!(roots.len(), 1, "one container");
    // The container has one process under it: its root process, the notebook server.
    let under = g.children(roots[0]);
    assert_eq!(under.len(), 1);
    assert!(
        first_line(&g, under[0]).starts_with("jupyter-lab pid"),
        "{}",
        first_line(&g, under[0])
    );
    // The terminal's shell, and the attack's commands as its siblings.
    let bash = g.children(under[0])[0];
    assert!(first_line(&g, bash).starts_with("bash pid"));
    assert_eq!(g.nodes[bash].style, Style::Deviant);
    let commands: Vec<&str> = g
        .children(bash)
        .iter()
        .map(|&c| first_line(&g, c).split(' ').next().unwrap())
        .collect();
    assert_eq!(commands, ["ls", "id", "wget", "tar", "minerd"]);
    // The miner's pool connection hangs off the miner, red.
    let minerd = *g.children(bash).last().unwrap();
    let pool = g
        .children(minerd)
        .into_iter()
        .find(|&c| {
            g.nodes[c]
                .lines
                .iter()
                .any(|l| l == "fakeminingpool.example.com")
        })
        .expect("the pool connection under the miner");
    assert_eq!(g.nodes[pool].kind, NodeKind::Connection);
    assert_eq!(g.nodes[pool].style, Style::Deviant);
    assert!(
        g.nodes[pool].lines[0].ends_with(":3333"),
        "{:?}",
        g.nodes[pool].lines
    );
    // Every process appears once.
    let ids: BTreeSet<&str> = g.nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids.len(), g.nodes.len());
    let l = layout(&g);
    check_layout(&g, &l);
    let svg = to_svg(&g, &l);
    for n in &g.nodes {
        for line in &n.lines {
            assert!(svg.contains(&guardlab_graph::svg::escape(line)), "{line}");
        }
    }
}

#[test]
fn the_same_investigation_draws_the_same_bytes() {
    let draw = || {
        let (policy, deviations, inv) = story();
        let g = investigation_graph(&inv.tree());
        let p = policy_graph(&policy, &deviations);
        to_svg(&g, &layout(&g)) + &to_svg(&p, &layout(&p))
    };
    let (a, b) = (draw(), draw());
    assert!(a.len() > 5_000);
    assert!(a == b, "two drawings differ");
}

#[test]
fn the_policy_graph_hangs_each_deviation_where_it_grew() {
    let (policy, deviations, _) = story();
    let g = policy_graph(&policy, &[]);
    assert!(g.nodes.iter().all(|n| n.style == Style::Normal));
    check_layout(&g, &layout(&g));

    let g = policy_graph(&policy, &deviations);
    check_layout(&g, &layout(&g));
    let find = |id: &str| {
        g.nodes
            .iter()
            .position(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    };
    let parent = |i: usize| {
        g.edges
            .iter()
            .find(|e| e.to == i && e.kind == EdgeKind::Child)
            .map(|e| e.from)
    };
    let server = find("p:jupyter-lab_0");
    assert_eq!(g.nodes[server].style, Style::Normal);
    let bash = find("p:bash_0");
    assert_eq!(g.nodes[bash].style, Style::Deviant);
    assert_eq!(parent(bash), Some(server), "bash hangs under the server");
    // gzip grew under the deviant tar.
    assert_eq!(parent(find("p:gzip_0")), Some(find("p:tar_0")));
    // Each deviant node once, though the egress deviations repeat their chains.
    assert_eq!(g.nodes.iter().filter(|n| n.id == "p:wget_0").count(), 1);
    // The pool's egress hangs off the miner, red.
    let pool = g
        .nodes
        .iter()
        .position(|n| {
            n.kind == NodeKind::Connection && n.lines.iter().any(|l| l.contains("fakeminingpool"))
        })
        .expect("the pool egress");
    assert_eq!(g.nodes[pool].style, Style::Deviant);
    assert!(
        g.edges
            .iter()
            .any(|e| e.from == find("p:minerd_0") && e.to == pool)
    );
    assert!(!g.nodes.iter().any(|n| n.id == "unmatched"));
}

#[test]
fn a_deviation_of_an_unknown_node_is_matched_by_name_or_left_unmatched() {
    let (policy, deviations, _) = story();
    let bash = deviations
        .iter()
        .find(|d| {
            d.spec
                .process_policy
                .first()
                .is_some_and(|p| p.policy_node.id == "jupyter-lab_0")
        })
        .expect("the shell's deviation")
        .clone();
    let mut by_name = bash.clone();
    by_name.spec.process_policy[0].policy_node.id = "jupyter-lab_7".into();
    let mut lost = bash.clone();
    lost.spec.process_policy[0].policy_node.id = "nosuch_3".into();
    lost.spec.process_policy[0].policy_node.children[0].id = "bash_9".into();
    let g = policy_graph(&policy, &[by_name, lost]);
    let find = |id: &str| g.nodes.iter().position(|n| n.id == id).unwrap();
    let parent_of = |i: usize| g.edges.iter().find(|e| e.to == i).map(|e| e.from);
    assert_eq!(parent_of(find("p:bash_0")), Some(find("p:jupyter-lab_0")));
    let unmatched = find("unmatched");
    assert_eq!(parent_of(find("p:bash_9")), Some(unmatched));
    assert!(g.roots().contains(&unmatched));
}
