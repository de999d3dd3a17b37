use guardlab_events::{ContainerInfo, ProcessExec, ProcessKey, Protocol};
use guardlab_test_support::stream::{Exec, Stream, pod_container, prog};

use super::*;
use crate::model::Peer;
use crate::window::TimeWindow;

const CG: u64 = 7;
const PY: &str = "/opt/conda/bin/python3.11";

fn exec(comm: &str, exe: &str, argv: &[&str]) -> ProcessExec {
    ProcessExec {
        key: ProcessKey(1, 1),
        cgroup_id: 1,
        pid: 1,
        ns_pid: 1,
        parent: None,
        exe: exe.into(),
        comm: comm.into(),
        argv: argv.iter().map(|a| a.to_string()).collect(),
        argv_truncated: false,
        uid: 0,
        euid: 0,
        gid: 0,
        user: None,
        euser: None,
        exe_status: Default::default(),
        killed: false,
    }
}

fn stream() -> Stream {
    let mut s = Stream::new(1_732_780_800, 4000);
    s.container(pod_container(
        CG,
        "c0ffee",
        "jupyter/minimal-notebook:latest",
        "jupyter-notebook-7d9f8c-abcde",
    ));
    s
}

fn only(events: &Stream) -> Fingerprint {
    let mut fps = fingerprints(&events.events);
    assert_eq!(fps.len(), 1, "one container, one fingerprint");
    fps.remove(0)
}

fn names(nodes: &[ProcessNode]) -> Vec<(String, String)> {
    nodes
        .iter()
        .map(|n| (n.name.clone(), n.id.clone()))
        .collect()
}

fn kids(n: &ProcessNode) -> &[ProcessNode] {
    n.children.as_deref().unwrap_or_default()
}

#[test]
fn names_come_from_comm() {
    assert_eq!(
        process_name(&exec("ls", "/usr/bin/ls", &["ls", "-la"])),
        "ls"
    );
    // A script: the kernel names the process after the script, the exe is the interpreter.
    assert_eq!(
        process_name(&exec("pip", PY, &[PY, "/opt/conda/bin/pip", "install"])),
        "pip"
    );
    // `python -m ...` runs the interpreter under the name it was exec'd by.
    assert_eq!(
        process_name(&exec(
            "python",
            PY,
            &["/opt/conda/bin/python", "-m", "ipykernel_launcher"]
        )),
        "python"
    );
}

#[test]
fn a_cut_comm_stays_cut_as_spyderbat_writes_it() {
    // Spyderbat's policies name these `jupyter-labexte`-like: `kube-controller` for
    // /usr/local/bin/kube-controllers, `unattended-upgr` for a python script.
    let script = "/opt/conda/bin/jupyter-labextension";
    assert_eq!(
        process_name(&exec("jupyter-labexte", PY, &[PY, script, "list"])),
        "jupyter-labexte"
    );
    assert_eq!(
        process_name(&exec(
            "kube-controller",
            "/usr/local/bin/kube-controllers",
            &["/usr/local/bin/kube-controllers"]
        )),
        "kube-controller"
    );
    assert_eq!(
        process_name(&exec("abcdefghijklmno", "/bin/x", &["x"])),
        "abcdefghijklmno"
    );
}

#[test]
fn without_comm_the_name_is_argv0_then_the_exe() {
    assert_eq!(
        process_name(&exec("", "/usr/bin/dash", &["/bin/sh", "-c", "true"])),
        "sh"
    );
    assert_eq!(process_name(&exec("", "/usr/bin/dash", &[])), "dash");
    assert_eq!(process_name(&exec("", "/usr/bin/dash", &[""])), "dash");
    // Cut at 15 bytes as the kernel cuts comm, at a character boundary.
    assert_eq!(
        process_name(&exec(
            "",
            "/usr/local/bin/kube-controllers",
            &["/usr/local/bin/kube-controllers"]
        )),
        "kube-controller"
    );
    assert_eq!(
        process_name(&exec("", "/usr/bin/jupyter-notebook", &[])),
        "jupyter-noteboo"
    );
    assert_eq!(
        process_name(&exec("", "/bin/x", &["/tmp/ééééééééé"])),
        "ééééééé",
        "7 two-byte characters: 14 bytes, the 8th would make 16"
    );
}

#[test]
fn image_short_names() {
    assert_eq!(
        image_short_name("jupyter/minimal-notebook:latest"),
        "minimal-notebook"
    );
    assert_eq!(
        image_short_name("docker.io/jupyter/minimal-notebook"),
        "minimal-notebook"
    );
    assert_eq!(
        image_short_name("localhost:5000/lab/app:1.2@sha256:abcd"),
        "app"
    );
    assert_eq!(image_short_name("redis"), "redis");
}

#[test]
fn the_forest_is_rooted_at_the_first_process_and_children_are_keyed_by_name_and_exe() {
    let mut s = stream();
    let server = s.spawn(
        CG,
        Some(ProcessKey(1, 1)),
        Exec {
            exe: PY,
            comm: "jupyter-lab",
            argv: &[PY, "/opt/conda/bin/jupyter-lab"],
            euser: "jovyan",
            euid: 1000,
        },
    );
    // The same program started three times by the same parent is one node.
    for _ in 0..3 {
        let sh = s.spawn(
            CG,
            Some(server),
            prog("/usr/bin/dash", &["/bin/sh", "-c", "true"], "jovyan"),
        );
        s.exit(CG, sh, 0);
    }
    // Same name, other exe: another node.
    s.spawn(CG, Some(server), prog("/usr/bin/bash", &["sh"], "jovyan"));
    let fp = only(&s);
    assert_eq!(
        names(&fp.spec.process_policy),
        [("jupyter-lab".to_string(), "jupyter-lab_0".to_string())]
    );
    let root = &fp.spec.process_policy[0];
    assert_eq!(root.exe, [PY]);
    assert_eq!(
        root.euser.as_deref(),
        Some(&["jovyan".to_string()][..]),
        "roots carry euser"
    );
    let children: Vec<(&str, &str, &str)> = kids(root)
        .iter()
        .map(|k| (k.name.as_str(), k.exe[0].as_str(), k.id.as_str()))
        .collect();
    assert_eq!(
        children,
        [
            ("sh", "/usr/bin/bash", "sh_0"),
            ("sh", "/usr/bin/dash", "sh_1")
        ]
    );
    assert!(
        kids(root).iter().all(|k| k.euser.is_none()),
        "children inherit the same user"
    );
}

#[test]
fn users_are_unioned_and_written_where_they_differ() {
    let mut s = stream();
    let root = s.spawn(CG, None, prog("/usr/bin/tini", &["tini"], "root"));
    s.spawn(CG, Some(root), prog("/usr/bin/sudo", &["sudo"], "jovyan"));
    s.spawn(CG, Some(root), prog("/usr/bin/sudo", &["sudo"], "root"));
    s.spawn(CG, Some(root), prog("/usr/bin/id", &["id"], "root"));
    let fp = only(&s);
    let root = &fp.spec.process_policy[0];
    let id = &kids(root)[0];
    let sudo = &kids(root)[1];
    assert_eq!(id.euser, None);
    assert_eq!(
        sudo.euser.as_deref(),
        Some(&["jovyan".to_string(), "root".to_string()][..])
    );
}

#[test]
fn a_missing_user_name_is_the_numeric_euid() {
    let mut s = stream();
    let key = s.spawn(CG, None, prog("/bin/app", &["app"], "x"));
    if let guardlab_events::EventBody::Exec(e) = &mut s.events.last_mut().unwrap().body {
        e.euser = None;
        e.euid = 1234;
    }
    let _ = key;
    let fp = only(&s);
    assert_eq!(
        fp.spec.process_policy[0].euser.as_deref(),
        Some(&["1234".to_string()][..])
    );
}

#[test]
fn ids_do_not_depend_on_start_order_or_pids() {
    let build = |order: &[&str], first_pid: u32| {
        let mut s = Stream::new(1_732_780_800, first_pid);
        s.container(pod_container(CG, "c0ffee", "app:1", "app-1-x"));
        let root = s.spawn(CG, None, prog("/bin/sh", &["sh"], "root"));
        for name in order {
            let exe = format!("/bin/{name}");
            s.spawn(CG, Some(root), prog(&exe, &[name], "root"));
        }
        let mut fp = only(&s);
        fp.metadata = Metadata::default();
        fp
    };
    let a = build(&["ls", "cat", "sh", "awk"], 100);
    let b = build(&["sh", "awk", "ls", "cat"], 9000);
    assert_eq!(a, b);
    let ids: Vec<String> = kids(&a.spec.process_policy[0])
        .iter()
        .map(|k| k.id.clone())
        .collect();
    assert_eq!(
        ids,
        ["awk_0", "cat_0", "ls_0", "sh_1"],
        "ids per name in depth-first order; the root is sh_0"
    );
}

#[test]
fn fork_without_exec_is_transparent() {
    let mut s = stream();
    let server = s.spawn(CG, None, prog(PY, &["python3"], "jovyan"));
    // The server forks a worker that never execs; the worker connects and forks a child
    // that execs `git`.
    let worker = s.fork(CG, server);
    s.connect(
        CG,
        worker,
        Protocol::Tcp,
        ("198.18.0.2", 40000),
        ("198.18.0.9", 443),
    );
    let git = s.fork(CG, worker);
    s.exec_as(
        CG,
        git,
        Some(worker),
        prog("/usr/bin/git", &["git", "pull"], "jovyan"),
    );
    let fp = only(&s);
    let root = &fp.spec.process_policy[0];
    assert_eq!(
        names(kids(root)),
        [("git".to_string(), "git_0".to_string())],
        "git hangs under the nearest exec'd ancestor"
    );
    assert_eq!(
        fp.spec.network_policy.egress[0].processes,
        ["python3_0"],
        "the worker's connection is the server's"
    );
}

#[test]
fn exec_again_makes_a_child_of_the_previous_image() {
    let mut s = stream();
    let key = s.spawn(
        CG,
        None,
        prog("/usr/bin/bash", &["/usr/local/bin/start.sh"], "jovyan"),
    );
    s.exec_as(
        CG,
        key,
        None,
        Exec {
            exe: PY,
            comm: "jupyter-lab",
            argv: &[PY, "/opt/conda/bin/jupyter-lab"],
            euser: "jovyan",
            euid: 1000,
        },
    );
    let fp = only(&s);
    let root = &fp.spec.process_policy[0];
    assert_eq!(root.name, "start.sh");
    assert_eq!(
        names(kids(root)),
        [("jupyter-lab".to_string(), "jupyter-lab_0".to_string())]
    );
}

#[test]
fn processes_whose_parent_is_elsewhere_are_roots() {
    let mut s = stream();
    s.container(ContainerInfo {
        cgroup_id: 8,
        container_id: "other".into(),
        image: "sidecar:1".into(),
        ..ContainerInfo::default()
    });
    let other = s.spawn(8, None, prog("/bin/sidecar", &["sidecar"], "root"));
    let root = s.spawn(
        CG,
        Some(ProcessKey(1, 1)),
        prog("/bin/main", &["main"], "root"),
    );
    // `kubectl exec`: the parent is the runtime, outside the container.
    s.spawn(CG, Some(other), prog("/bin/sh", &["sh"], "root"));
    s.spawn(CG, Some(root), prog("/bin/worker", &["worker"], "root"));
    let fps = fingerprints(&s.events);
    let fp = fps
        .iter()
        .find(|f| f.metadata.container_id.as_deref() == Some("c0ffee"))
        .unwrap();
    assert_eq!(
        names(&fp.spec.process_policy),
        [
            ("main".to_string(), "main_0".to_string()),
            ("sh".to_string(), "sh_0".to_string())
        ]
    );
}

#[test]
fn loopback_and_pod_internal_traffic_is_left_out() {
    let mut s = stream();
    let server = s.spawn(CG, None, prog(PY, &["python3"], "jovyan"));
    let kernel = s.spawn(CG, Some(server), prog(PY, &["python"], "jovyan"));
    s.listen(CG, kernel, Protocol::Tcp, "127.0.0.1", 51234);
    s.listen(CG, server, Protocol::Tcp, "0.0.0.0", 8888);
    s.connect(
        CG,
        server,
        Protocol::Tcp,
        ("127.0.0.1", 40001),
        ("127.0.0.1", 51234),
    );
    s.accept(CG, kernel, ("127.0.0.1", 51234), ("127.0.0.1", 40001));
    s.connect(CG, server, Protocol::Tcp, ("::1", 40002), ("::1", 51235));
    s.connect(
        CG,
        server,
        Protocol::Tcp,
        ("198.18.0.2", 40003),
        ("198.18.0.2", 8888),
    );
    let mut b = FingerprintBuilder::new();
    b.observe_all(&s.events);
    let fp = b.finish().remove(0);
    assert!(fp.spec.network_policy.ingress.is_empty() && fp.spec.network_policy.egress.is_empty());
    let root = &fp.spec.process_policy[0];
    assert_eq!(
        root.listening_sockets,
        Some(vec![PortSpec {
            protocol: "TCP".into(),
            port: 8888,
            end_port: None
        }])
    );
    assert_eq!(
        kids(root)[0].listening_sockets,
        None,
        "a loopback listener is intra-pod"
    );
    assert_eq!(b.stats().loopback_connections, 5);
}

#[test]
fn ingress_names_the_listening_port_never_the_peer_port() {
    let mut s = stream();
    let server = s.spawn(CG, None, prog(PY, &["python3"], "jovyan"));
    for peer_port in [40001, 51000, 60123] {
        s.accept(CG, server, ("198.18.0.2", 8888), ("198.18.0.1", peer_port));
    }
    s.accept(CG, server, ("198.18.0.2", 8888), ("198.18.0.3", 40001));
    let fp = only(&s);
    let ingress = &fp.spec.network_policy.ingress;
    assert_eq!(
        ingress.len(),
        1,
        "two peers with the same process and port share a node"
    );
    assert_eq!(
        ingress[0].ports,
        [PortSpec {
            protocol: "TCP".into(),
            port: 8888,
            end_port: None
        }]
    );
    assert_eq!(ingress[0].processes, ["python3_0"]);
    let cidrs: Vec<&Peer> = ingress[0].from.iter().collect();
    assert_eq!(cidrs.len(), 2);
}

#[test]
fn remotes_are_named_by_earlier_dns_answers_of_the_same_container() {
    let mut s = stream();
    s.container(ContainerInfo {
        cgroup_id: 8,
        container_id: "other".into(),
        image: "x:1".into(),
        ..ContainerInfo::default()
    });
    let pip = s.spawn(CG, None, prog(PY, &["pip"], "jovyan"));
    s.connect(
        CG,
        pip,
        Protocol::Tcp,
        ("198.18.0.2", 40000),
        ("198.18.0.50", 443),
    ); // before the answer
    s.dns(8, "elsewhere.example", &["198.18.0.51"]); // another container's answer
    s.dns(CG, "pypi.org", &["198.18.0.50", "2001:db8::50"]);
    s.connect(
        CG,
        pip,
        Protocol::Tcp,
        ("198.18.0.2", 40001),
        ("198.18.0.50", 443),
    );
    s.connect(
        CG,
        pip,
        Protocol::Tcp,
        ("2001:db8::2", 40002),
        ("2001:db8::50", 443),
    );
    s.connect(
        CG,
        pip,
        Protocol::Tcp,
        ("198.18.0.2", 40003),
        ("198.18.0.51", 443),
    );
    s.connect(
        CG,
        pip,
        Protocol::Tcp,
        ("::ffff:198.18.0.2", 40004),
        ("::ffff:198.18.0.52", 443),
    );
    let fps = fingerprints(&s.events);
    let fp = fps
        .iter()
        .find(|f| f.metadata.container_id.as_deref() == Some("c0ffee"))
        .unwrap();
    let egress = &fp.spec.network_policy.egress;
    let text: Vec<String> = egress
        .iter()
        .map(|n| serde_json::to_string(&(&n.to, &n.ports)).unwrap())
        .collect();
    assert_eq!(
        text,
        [
            r#"[[{"dnsSelector":["pypi.org"]},{"ipBlock":{"cidr":"198.18.0.50/32"}},{"ipBlock":{"cidr":"198.18.0.51/32"}},{"ipBlock":{"cidr":"198.18.0.52/32"}}],[{"protocol":"TCP","port":443}]]"#,
        ]
    );
}

#[test]
fn name_lookups_are_not_connections_their_answers_name_the_next_one() {
    let mut s = stream();
    let pip = s.spawn(CG, None, prog(PY, &["pip"], "jovyan"));
    // The lookup (v4 and v6 resolvers), its answer, then the connection it named.
    for resolver in ["198.18.1.53", "2001:db8::53"] {
        s.connect(
            CG,
            pip,
            Protocol::Udp,
            ("198.18.0.2", 40000),
            (resolver, 53),
        );
    }
    s.dns(CG, "pypi.org", &["198.18.0.50"]);
    s.connect(
        CG,
        pip,
        Protocol::Tcp,
        ("198.18.0.2", 40001),
        ("198.18.0.50", 443),
    );
    // DNS over TCP is a connection, and UDP to another port is not a lookup.
    s.connect(
        CG,
        pip,
        Protocol::Tcp,
        ("198.18.0.2", 40002),
        ("198.18.1.53", 53),
    );
    s.connect(
        CG,
        pip,
        Protocol::Udp,
        ("198.18.0.2", 40003),
        ("198.18.1.123", 123),
    );
    let mut b = FingerprintBuilder::new();
    b.observe_all(&s.events);
    let fp = b.finish().remove(0);
    let text: Vec<String> = fp
        .spec
        .network_policy
        .egress
        .iter()
        .map(|n| serde_json::to_string(&(&n.to, &n.ports)).unwrap())
        .collect();
    assert_eq!(
        text,
        [
            r#"[[{"dnsSelector":["pypi.org"]}],[{"protocol":"TCP","port":443}]]"#,
            r#"[[{"ipBlock":{"cidr":"198.18.1.53/32"}}],[{"protocol":"TCP","port":53}]]"#,
            r#"[[{"ipBlock":{"cidr":"198.18.1.123/32"}}],[{"protocol":"UDP","port":123}]]"#,
        ]
    );
    assert_eq!(b.stats().name_lookups, 2);
}

#[test]
fn metadata_and_selectors() {
    let mut s = stream();
    s.spawn(CG, None, prog(PY, &["python3"], "jovyan"));
    s.wait_ms(60_000);
    s.exit(CG, ProcessKey(4000, 0), 0);
    let fp = only(&s);
    assert_eq!(fp.kind, "SpyderbatFingerprint");
    assert_eq!(fp.metadata.name, "minimal-notebook");
    assert_eq!(fp.metadata.kind, "container");
    assert_eq!(fp.metadata.container_id.as_deref(), Some("c0ffee"));
    assert_eq!(fp.metadata.namespace.as_deref(), Some("cryptominer"));
    assert_eq!(fp.metadata.first_timestamp, Some(1_732_780_800.001));
    assert_eq!(fp.metadata.latest_timestamp, Some(1_732_780_860.003));
    let sel = fp.spec.container_selector.as_ref().unwrap();
    assert_eq!(
        sel.image.as_deref(),
        Some("jupyter/minimal-notebook:latest")
    );
    assert!(sel.image_id.as_deref().unwrap().starts_with("sha256:"));
    let ns = &fp.spec.namespace_selector.as_ref().unwrap().match_labels;
    assert_eq!(
        ns.get("kubernetes.io/metadata.name").map(String::as_str),
        Some("cryptominer")
    );
    let pod = &fp.spec.pod_selector.as_ref().unwrap().match_labels;
    assert_eq!(
        pod.keys().collect::<Vec<_>>(),
        ["app"],
        "pod-template-hash is left out"
    );
    assert_eq!(fp.spec.mode, None, "a fingerprint has no mode");
}

#[test]
fn unknown_containers_and_empty_ones_give_nothing() {
    let mut s = stream();
    s.spawn(99, None, prog("/bin/sh", &["sh"], "root"));
    let mut b = FingerprintBuilder::new();
    b.observe_all(&s.events);
    assert!(
        b.finish().is_empty(),
        "the known container ran nothing; the other is unknown"
    );
    assert_eq!(b.stats().unknown_container_events, 1);
    assert_eq!(b.stats().containers, 1);
}

#[test]
fn connections_of_processes_never_seen_starting_name_no_process() {
    let mut s = stream();
    s.spawn(CG, None, prog("/bin/app", &["app"], "root"));
    s.connect(
        CG,
        ProcessKey(1, 1),
        Protocol::Tcp,
        ("198.18.0.2", 40000),
        ("198.18.0.9", 80),
    );
    let fp = only(&s);
    assert_eq!(
        fp.spec.network_policy.egress[0].processes,
        Vec::<String>::new()
    );
}

#[test]
fn groups_per_image() {
    let mut s = Stream::new(1_732_780_800, 100);
    for (cg, id, image) in [(1, "b", "app:1"), (2, "a", "app:1"), (3, "c", "db:2")] {
        let mut info = pod_container(cg, id, image, "app-1-x");
        info.container_name = format!("name-{id}");
        s.container(info);
        s.spawn(cg, None, prog("/bin/app", &["app"], "root"));
    }
    let groups = fingerprint_groups(&s.events);
    assert_eq!(groups.len(), 2);
    assert_eq!(groups[0].metadata.image, "app:1");
    assert_eq!(groups[0].data.fingerprints.len(), 2);
    assert_eq!(groups[0].data.container_ids, ["a", "b"]);
    assert_eq!(groups[0].data.container_names, ["name-a", "name-b"]);
    assert_eq!(groups[0].data.machines, ["lab-node"]);
    assert_eq!(groups[0].kind, "FingerprintGroup");
    assert_eq!(fingerprints_of_groups(&groups).len(), 3);
    let plain = group_by_image(fingerprints(&s.events));
    assert_eq!(plain.len(), 2);
    assert!(plain[0].data.machines.is_empty());
}

/// A server that starts before the window, with a listening socket, a child (`ls`), a shell
/// that stays alive, a connection and a DNS answer before it; in the window, the shell starts
/// `curl` (as another user), which reaches the name answered before, and the server takes a
/// connection in; after the window, `wget`.
struct Windowed {
    s: Stream,
    since: u64,
    until: u64,
    last_in_window: u64,
}

fn windowed() -> Windowed {
    let mut s = stream();
    let server = s.spawn(CG, Some(ProcessKey(1, 1)), prog(PY, &["python3"], "jovyan"));
    s.listen(CG, server, Protocol::Tcp, "0.0.0.0", 8888);
    s.spawn(CG, Some(server), prog("/usr/bin/ls", &["ls"], "jovyan"));
    let sh = s.spawn(CG, Some(server), prog("/usr/bin/dash", &["sh"], "jovyan"));
    s.connect(
        CG,
        server,
        Protocol::Tcp,
        ("198.18.0.2", 40000),
        ("198.18.0.60", 443),
    );
    s.dns(CG, "pypi.org", &["198.18.0.70"]);
    s.wait_ms(60_000);
    let since = s.next_ts();
    let curl = s.spawn(
        CG,
        Some(sh),
        prog("/usr/bin/curl", &["curl", "pypi.org"], "root"),
    );
    s.connect(
        CG,
        curl,
        Protocol::Tcp,
        ("198.18.0.2", 40001),
        ("198.18.0.70", 443),
    );
    s.accept(CG, server, ("198.18.0.2", 8888), ("198.18.0.1", 50000));
    let last_in_window = s.events.last().unwrap().ts;
    s.wait_ms(60_000);
    let until = s.next_ts();
    let wget = s.spawn(CG, Some(server), prog("/usr/bin/wget", &["wget"], "jovyan"));
    s.connect(
        CG,
        wget,
        Protocol::Tcp,
        ("198.18.0.2", 40002),
        ("198.18.0.80", 80),
    );
    Windowed {
        s,
        since,
        until,
        last_in_window,
    }
}

fn in_window(w: &Windowed, window: TimeWindow) -> (Vec<Fingerprint>, WindowCounts) {
    let mut b = FingerprintBuilder::with_window(window);
    b.observe_all(&w.s.events);
    (b.finish(), b.window_counts())
}

#[test]
fn a_window_records_its_events_under_the_ancestry_the_whole_stream_gave() {
    let w = windowed();
    let window = TimeWindow::new(Some(w.since), Some(w.until)).unwrap();
    let (fps, counts) = in_window(&w, window);
    assert_eq!(fps.len(), 1);
    let fp = &fps[0];
    // The server and the shell exec'd before the window: there as the ancestors of what ran
    // in it, with neither the server's earlier child nor its earlier listening socket.
    let roots = &fp.spec.process_policy;
    assert_eq!(names(roots), [("python3".into(), "python3_0".into())]);
    assert_eq!(roots[0].euser.as_deref(), Some(&["jovyan".to_string()][..]));
    assert_eq!(roots[0].listening_sockets, None);
    let sh = &kids(&roots[0]);
    assert_eq!(names(sh), [("sh".into(), "sh_0".into())]);
    assert_eq!(sh[0].euser, None, "inherited");
    assert_eq!(names(kids(&sh[0])), [("curl".into(), "curl_0".into())]);
    assert_eq!(
        kids(&sh[0])[0].euser.as_deref(),
        Some(&["root".to_string()][..])
    );
    // Connections of the window only; the name comes from an answer before it.
    let net = &fp.spec.network_policy;
    assert_eq!(net.egress.len(), 1, "{net:#?}");
    assert_eq!(
        net.egress[0].to,
        [Peer::DnsSelector(vec!["pypi.org".into()])]
    );
    assert_eq!(net.egress[0].processes, ["curl_0"]);
    assert_eq!(net.ingress.len(), 1, "{net:#?}");
    assert_eq!(net.ingress[0].processes, ["python3_0"]);
    assert_eq!(net.ingress[0].ports[0].port, 8888);
    // The fingerprint's times are those of the window's events.
    assert_eq!(fp.metadata.first_timestamp, Some(epoch_seconds(w.since)));
    assert_eq!(
        fp.metadata.latest_timestamp,
        Some(epoch_seconds(w.last_in_window))
    );
    // Before: container, the server's fork and exec, listen, ls's and sh's forks and execs,
    // connect, DNS. In: curl's fork and exec, connect, accept. After: wget's fork and exec,
    // connect.
    assert_eq!(
        counts,
        WindowCounts {
            before: 10,
            within: 4,
            after: 3,
        }
    );
}

#[test]
fn open_ended_windows_cut_one_side() {
    let w = windowed();
    let (fps, _) = in_window(&w, TimeWindow::new(Some(w.since), None).unwrap());
    let text = serde_json::to_string(&fps[0].spec).unwrap();
    assert!(
        text.contains("wget") && text.contains("curl") && !text.contains("\"ls\""),
        "{text}"
    );
    let (fps, _) = in_window(&w, TimeWindow::new(None, Some(w.since)).unwrap());
    let text = serde_json::to_string(&fps[0].spec).unwrap();
    assert!(
        text.contains("\"ls\"") && !text.contains("curl") && !text.contains("wget"),
        "{text}"
    );
    assert!(
        text.contains("8888"),
        "the listening socket is before: {text}"
    );
}

#[test]
fn a_window_over_the_whole_stream_is_no_window() {
    let w = windowed();
    let first = w.s.events[0].ts;
    let last = w.s.events.last().unwrap().ts;
    let (fps, counts) = in_window(&w, TimeWindow::new(Some(first), Some(last + 1)).unwrap());
    assert_eq!(fps, fingerprints(&w.s.events));
    assert_eq!((counts.before, counts.after), (0, 0));
}

#[test]
fn a_container_with_nothing_in_the_window_gives_no_fingerprint() {
    let w = windowed();
    let last = w.s.events.last().unwrap().ts;
    let (fps, counts) = in_window(&w, TimeWindow::new(Some(last + 1), None).unwrap());
    assert!(fps.is_empty(), "{fps:#?}");
    assert_eq!(counts.before, w.s.events.len() as u64);
}

#[test]
fn a_fileless_exec_is_fingerprinted_as_reported_and_counted() {
    let mut s = stream();
    let server = s.spawn(CG, None, prog(PY, &["python3"], "jovyan"));
    s.spawn_untrusted(
        CG,
        Some(server),
        prog("memfd:minerd", &["minerd"], "jovyan"),
        guardlab_events::ExeStatus::Fileless,
    );
    let mut b = FingerprintBuilder::new();
    b.observe_all(&s.events);
    assert_eq!(b.stats().untrusted_exes, 1);
    let fp = &b.finish()[0];
    let minerd = &kids(&fp.spec.process_policy[0])[0];
    assert_eq!(
        (minerd.name.as_str(), &minerd.exe[..]),
        ("minerd", &["memfd:minerd".to_string()][..])
    );
}
