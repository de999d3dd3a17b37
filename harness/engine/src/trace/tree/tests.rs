use guardlab_events::{ExeStatus, ProcessKey, Protocol};

use super::*;
use crate::tracker::Direction;

fn proc(pid: u32, name: &str, start: f64) -> TraceProcess {
    TraceProcess {
        pid,
        ns_pid: pid,
        name: name.into(),
        exe: format!("/usr/bin/{name}"),
        exe_status: ExeStatus::Resolved,
        args: vec![name.into()],
        euser: "jovyan".into(),
        start_time: start,
        started: format!("t{start}"),
        node: Some(format!("{name}_0")),
        deviant: false,
        ended: None,
    }
}

fn deviant(mut p: TraceProcess) -> TraceProcess {
    p.deviant = true;
    p
}

fn container(id: &str) -> ContainerRef {
    ContainerRef {
        container_id: id.into(),
        container_name: format!("name-{id}"),
        image: "img".into(),
        namespace: "ns".into(),
        pod: "pod".into(),
    }
}

fn trace(uid: &str, kind: DeviationType, c: &str, chain: Vec<TraceProcess>) -> DeviationTrace {
    let process = chain
        .last()
        .map_or(ProcessKey(99, 0), |p| ProcessKey(p.pid, 0));
    DeviationTrace {
        policy_name: "pol".into(),
        policy_uid: "pol:1".into(),
        deviation_uid: uid.into(),
        checksum: String::new(),
        kind,
        count: 1,
        relevant: true,
        reason: None,
        container: container(c),
        chain,
        omitted: 0,
        process,
        connection: None,
        connections: Vec::new(),
        prevented: false,
    }
}

fn conn(ip: &str, port: u16, ts: f64) -> TraceConnection {
    TraceConnection {
        direction: Direction::Egress,
        protocol: Protocol::Tcp,
        ip: ip.into(),
        dns: None,
        port,
        remote_port: 40000,
        refused: false,
        timestamp: ts,
    }
}

fn investigation(deviations: Vec<DeviationTrace>) -> Investigation {
    Investigation {
        deviations,
        flags: Vec::new(),
        decisions: Vec::new(),
    }
}

fn name(t: &ContainerTree, i: usize) -> String {
    match &t.nodes[i].item {
        TreeItem::Process(p) => p.process.name.clone(),
        TreeItem::Omitted { count } => format!("omitted {count}"),
    }
}

fn children(t: &ContainerTree, i: usize) -> Vec<String> {
    t.nodes[i].children.iter().map(|&c| name(t, c)).collect()
}

/// The notebook's shape: server, shell, and the shell's commands.
fn shell_story() -> Vec<DeviationTrace> {
    let server = proc(10, "jupyter", 1.0);
    let bash = deviant(proc(20, "bash", 2.0));
    vec![
        trace(
            "dev:bash",
            DeviationType::Process,
            "c1",
            vec![server.clone(), bash.clone()],
        ),
        trace(
            "dev:wget",
            DeviationType::Process,
            "c1",
            vec![server.clone(), bash.clone(), deviant(proc(40, "wget", 4.0))],
        ),
        trace(
            "dev:ls",
            DeviationType::Process,
            "c1",
            vec![server.clone(), bash.clone(), deviant(proc(30, "ls", 3.0))],
        ),
    ]
}

#[test]
fn chains_sharing_a_prefix_merge_into_one_tree() {
    let tree = investigation(shell_story()).tree();
    assert_eq!(tree.containers.len(), 1);
    let t = &tree.containers[0];
    assert_eq!(t.roots, [0]);
    assert_eq!(t.nodes.len(), 4, "server, bash, ls, wget: each once");
    assert_eq!(name(t, 0), "jupyter");
    assert_eq!(children(t, 0), ["bash"]);
    let bash = t.nodes[0].children[0];
    // The shell's commands are siblings, by exec time (ls before wget though found after).
    assert_eq!(children(t, bash), ["ls", "wget"]);
    let TreeItem::Process(b) = &t.nodes[bash].item else {
        panic!("bash is a process")
    };
    assert_eq!(b.deviations.len(), 1);
    assert_eq!(b.deviations[0].uid, "dev:bash");
    assert!(b.has_process_deviation());
    let TreeItem::Process(server) = &t.nodes[0].item else {
        panic!()
    };
    assert!(server.deviations.is_empty());
    // Parents come before children, and say who their children are.
    for (i, n) in t.nodes.iter().enumerate() {
        for &c in &n.children {
            assert!(c > i);
            assert_eq!(t.nodes[c].parent, Some(i));
            assert_eq!(t.nodes[c].depth, n.depth + 1);
        }
    }
}

#[test]
fn an_exec_of_the_same_pid_is_an_exec_not_a_child() {
    let chain = vec![
        proc(1, "tini", 1.0),
        proc(7, "start.sh", 2.0),
        // pid 7 exec'd python: the same process, a new program.
        proc(7, "python", 3.0),
        deviant(proc(8, "sh", 4.0)),
    ];
    let tree = investigation(vec![trace("dev:sh", DeviationType::Process, "c1", chain)]).tree();
    let t = &tree.containers[0];
    let relations: Vec<(String, Relation)> = (0..t.nodes.len())
        .map(|i| (name(t, i), t.nodes[i].relation))
        .collect();
    assert_eq!(
        relations,
        [
            ("tini".to_string(), Relation::Root),
            ("start.sh".to_string(), Relation::Child),
            ("python".to_string(), Relation::Exec),
            ("sh".to_string(), Relation::Child),
        ]
    );
}

#[test]
fn a_cut_chain_shows_its_omitted_processes_as_a_marker() {
    let mut a = trace(
        "dev:deep",
        DeviationType::Process,
        "c1",
        vec![
            proc(1, "server", 1.0),
            proc(2, "sh", 2.0),
            deviant(proc(900, "true", 9.0)),
        ],
    );
    a.omitted = 897;
    let b = trace(
        "dev:near",
        DeviationType::Process,
        "c1",
        vec![
            proc(1, "server", 1.0),
            proc(2, "sh", 2.0),
            deviant(proc(3, "id", 3.0)),
        ],
    );
    let tree = investigation(vec![a, b]).tree();
    let t = &tree.containers[0];
    let sh = t.nodes[0].children[0];
    assert_eq!(children(t, sh), ["id", "omitted 897"]);
    let marker = t.nodes[sh].children[1];
    assert_eq!(children(t, marker), ["true"]);
    assert_eq!(
        t.nodes[t.nodes[marker].children[0]].relation,
        Relation::Child
    );
}

#[test]
fn two_containers_give_two_trees_and_an_unknown_ancestry_its_own_part() {
    let mut devs = shell_story();
    devs.push(trace(
        "dev:other",
        DeviationType::Process,
        "c0",
        vec![proc(10, "init", 1.0), deviant(proc(11, "nc", 2.0))],
    ));
    let mut early = trace("dev:early", DeviationType::Egress, "c1", Vec::new());
    early.process = ProcessKey(5, 77);
    early.connection = Some(conn("198.18.0.9", 4444, 5.0));
    devs.push(early);
    let tree = investigation(devs).tree();
    let ids: Vec<&str> = tree
        .containers
        .iter()
        .map(|c| c.container.container_id.as_str())
        .collect();
    assert_eq!(
        ids,
        ["c0", "c1"],
        "ordered by container, not by first deviation"
    );
    // The same pid (10) in two containers is two processes.
    assert_eq!(name(&tree.containers[0], 0), "init");
    assert_eq!(name(&tree.containers[1], 0), "jupyter");
    assert!(tree.containers[0].without_ancestry.is_empty());
    let early = &tree.containers[1].without_ancestry;
    assert_eq!(early.len(), 1);
    assert_eq!(early[0].process, ProcessKey(5, 77));
    assert!(early[0].connections[0].deviant());
}

#[test]
fn connections_hang_off_their_process_once_marked_by_their_deviations() {
    let chain = vec![proc(10, "jupyter", 1.0), deviant(proc(40, "wget", 4.0))];
    let mut process = trace("dev:wget", DeviationType::Process, "c1", chain.clone());
    process.connections = vec![conn("198.18.0.53", 53, 4.1)];
    let mut egress = trace("dev:net", DeviationType::Egress, "c1", chain);
    egress.connection = Some(conn("198.18.0.60", 443, 4.2));
    egress.connections = vec![conn("198.18.0.53", 53, 4.1), conn("198.18.0.60", 443, 4.2)];
    let tree = investigation(vec![process, egress]).tree();
    let t = &tree.containers[0];
    let TreeItem::Process(wget) = &t.nodes[1].item else {
        panic!()
    };
    let conns: Vec<(&str, bool)> = wget
        .connections
        .iter()
        .map(|c| (c.connection.ip.as_str(), c.deviant()))
        .collect();
    assert_eq!(conns, [("198.18.0.53", false), ("198.18.0.60", true)]);
    let kinds: Vec<DeviationType> = wget.deviations.iter().map(|d| d.kind).collect();
    assert_eq!(kinds, [DeviationType::Process, DeviationType::Egress]);
}

#[test]
fn the_tree_does_not_depend_on_the_order_of_the_deviations() {
    let devs = shell_story();
    let mut reversed = devs.clone();
    reversed.reverse();
    let a = serde_json::to_string(&investigation(devs).tree()).unwrap();
    let b = serde_json::to_string(&investigation(reversed).tree()).unwrap();
    // Marks list deviations in the investigation's order; the shape and processes do not move.
    let strip = |s: &str| {
        let v: serde_json::Value = serde_json::from_str(s).unwrap();
        v["containers"][0]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                (
                    n["name"].clone(),
                    n["children"].clone(),
                    n["relation"].clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&a), strip(&b));
    assert_eq!(
        a,
        serde_json::to_string(&investigation(shell_story()).tree()).unwrap()
    );
}

#[test]
fn a_chain_of_ten_thousand_builds_without_recursion() {
    let chain: Vec<TraceProcess> = (0..10_000)
        .map(|i| proc(i + 1, "sh", f64::from(i)))
        .collect();
    let tree = investigation(vec![trace("dev:deep", DeviationType::Process, "c1", chain)]).tree();
    let t = &tree.containers[0];
    assert_eq!(t.nodes.len(), 10_000);
    assert_eq!(t.nodes[9_999].depth, 9_999);
    assert!(serde_json::to_string(&tree).unwrap().len() > 10_000);
}

#[test]
fn it_serializes_in_camel_case_with_kinds() {
    let tree = investigation(shell_story()).tree();
    let v = serde_json::to_value(&tree).unwrap();
    let root = &v["containers"][0]["nodes"][0];
    assert_eq!(root["kind"], "process");
    assert_eq!(root["relation"], "root");
    assert_eq!(root["nsPid"], 10);
    assert_eq!(
        v["containers"][0]["nodes"][1]["deviations"][0]["type"],
        "process"
    );
    assert!(v["containers"][0]["withoutAncestry"].is_array());
}

#[test]
fn the_text_is_one_tree_with_execs_markers_and_processes_without_ancestry() {
    let mut deep = trace(
        "dev:deep",
        DeviationType::Process,
        "c1",
        vec![
            proc(1, "tini", 1.0),
            proc(7, "start.sh", 2.0),
            proc(7, "python", 3.0),
            deviant(proc(900, "true", 9.0)),
        ],
    );
    deep.omitted = 897;
    let mut early = trace("dev:early", DeviationType::Egress, "c1", Vec::new());
    early.process = ProcessKey(5, 77);
    early.connection = Some(conn("198.18.0.9", 4444, 5.0));
    let text = investigation(vec![deep, early]).render_text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0], "container name-c1 (c1) image img pod pod namespace ns",
        "{text}"
    );
    assert!(lines[1].starts_with("  tini pid 1 "), "{text}");
    assert!(lines[3].starts_with("  └─ start.sh pid 7 "), "{text}");
    assert!(
        lines[5].starts_with("     └─ ⇢ exec python pid 7 "),
        "{text}"
    );
    assert_eq!(lines[7], "        └─ … 897 processes omitted …", "{text}");
    assert!(
        lines[8].starts_with("           └─ true pid 900 ")
            && lines[8].ends_with("  <== process deviation dev:deep (policy pol, seen 1x)"),
        "{text}"
    );
    assert!(
        text.contains(
            "  processes seen without their ancestry (running before the sensor saw them start):\n  └─ process 5\n     └─ egress to 198.18.0.9 TCP/4444  <== egress deviation dev:early"
        ),
        "{text}"
    );
}
