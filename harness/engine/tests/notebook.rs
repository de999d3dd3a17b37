//! The engine end to end on the tutorial's story, from hand-written event streams: a notebook
//! baseline becomes a fingerprint and a policy; the same behaviour replayed (other pids,
//! ports, addresses, pod) deviates nowhere; a terminal and a miner-like attack give the
//! expected process and egress deviations, flags and kills; every output is the same on every
//! run, and is kept as a snapshot under `snapshots/engine/`.

use guardlab_engine::deviation::{
    ActionKind, DeviationMatcher, DeviationReport, ROOT_ANCHOR, find_deviations,
};
use guardlab_engine::fingerprint::{FingerprintBuilder, fingerprints};
use guardlab_engine::merge::merge_deviation;
use guardlab_engine::model::{
    ActionSelectors, Deviation, Fingerprint, Mode, Peer, Policy, ProcessNode, ProcessSelector,
    ResponseAction, Severity,
};
use guardlab_engine::policy::{create_policy, set_enabled, set_mode};
use guardlab_engine::trace::{Investigation, Investigator, TreeItem};
use guardlab_test_support::notebook::{CG, FIRST, Notebook, PY, REPLAY, Run, baseline};
use guardlab_test_support::stream::{Exec, prog};

fn snapshots() -> insta::Settings {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path("../../../snapshots/engine");
    settings.set_prepend_module_to_snapshot(false);
    settings.set_omit_expression(true);
    settings
}

fn baseline_fingerprint(run: &Run) -> Fingerprint {
    let nb = baseline(run);
    let mut fps = fingerprints(&nb.s.events);
    assert_eq!(fps.len(), 1, "one container");
    fps.remove(0)
}

fn baseline_policy() -> Policy {
    create_policy(&[baseline_fingerprint(&FIRST)], None, Mode::Audit).unwrap()
}

/// The enforce-mode policy of the story: kill what runs from a home or temporary directory.
fn enforcing(policy: &Policy) -> Policy {
    let mut p = policy.clone();
    set_mode(&mut p, Mode::Enforce);
    p.spec.response.as_mut().unwrap().actions =
        vec![ResponseAction::AgentKillProcess(ActionSelectors {
            process_selector: Some(ProcessSelector {
                exe: vec!["/home/*".into(), "/tmp/*".into()],
                ..ProcessSelector::default()
            }),
            ..ActionSelectors::default()
        })];
    p
}

/// The whole story: baseline and terminal in audit mode, then enforce and the attack.
struct Story {
    policy: Policy,
    report: DeviationReport,
    investigation: Investigation,
}

fn story() -> Story {
    let policy = baseline_policy();
    let mut nb = baseline(&FIRST);
    let mut inv = Investigator::new(std::slice::from_ref(&policy)).unwrap();
    let mut matcher = DeviationMatcher::new(std::slice::from_ref(&policy)).unwrap();
    let bash = nb.terminal();
    let audit_events = nb.s.events.len();
    for e in &nb.s.events {
        inv.observe(e);
        matcher.observe(e);
    }
    let enforce = enforcing(&policy);
    inv.matcher_mut().set_policy(&enforce).unwrap();
    matcher.set_policy(&enforce).unwrap();
    nb.attack(bash);
    for e in &nb.s.events[audit_events..] {
        inv.observe(e);
        matcher.observe(e);
    }
    Story {
        policy: enforce,
        report: matcher.report(),
        investigation: inv.finish(),
    }
}

/// One line per deviation: type, the chain under its policy node, and the connection.
fn summary(d: &Deviation) -> String {
    fn chain(nodes: &[ProcessNode], out: &mut Vec<String>) {
        if let Some(n) = nodes.first() {
            out.push(n.name.clone());
            chain(n.children.as_deref().unwrap_or_default(), out);
        }
    }
    let mut parts = vec![format!("{:?}", d.metadata.kind).to_lowercase()];
    for p in &d.spec.process_policy {
        let mut names = vec![p.policy_node.id.clone()];
        chain(&p.policy_node.children, &mut names);
        parts.push(names.join(" > "));
    }
    if let Some(net) = &d.spec.network_policy {
        for e in &net.egress {
            let to: Vec<String> =
                e.to.iter()
                    .map(|p| match p {
                        Peer::DnsSelector(n) => n.join(","),
                        Peer::IpBlock(b) => b.cidr.clone(),
                    })
                    .collect();
            parts.push(format!(
                "egress {:?} to {} {}/{}",
                e.processes,
                to.join(","),
                e.ports[0].protocol,
                e.ports[0].port
            ));
        }
        for i in &net.ingress {
            parts.push(format!(
                "ingress {:?} port {}",
                i.processes, i.ports[0].port
            ));
        }
    }
    parts.join(" | ")
}

#[test]
fn the_baseline_fingerprint() {
    let fp = baseline_fingerprint(&FIRST);
    snapshots().bind(|| {
        insta::assert_yaml_snapshot!("notebook_fingerprint", fp, {
            ".metadata.containerID" => "[container-id]",
            ".metadata.firstTimestamp" => "[time]",
            ".metadata.latestTimestamp" => "[time]",
            ".spec.containerSelector.imageID" => "[image-id]",
        });
    });
    // The facts the snapshot shows, checked here too so a careless snapshot update fails.
    let root = &fp.spec.process_policy[0];
    assert_eq!(
        (root.name.as_str(), root.id.as_str(), root.exe[0].as_str()),
        ("jupyter-lab", "jupyter-lab_0", PY)
    );
    assert_eq!(
        fp.spec.network_policy.ingress.len(),
        1,
        "only the browser's connections to 8888"
    );
    assert_eq!(fp.spec.network_policy.ingress[0].ports[0].port, 8888);
    let egress: Vec<Vec<Peer>> = fp
        .spec
        .network_policy
        .egress
        .iter()
        .map(|n| n.to.clone())
        .collect();
    assert_eq!(
        egress,
        [[
            Peer::DnsSelector(vec!["files.pythonhosted.org".into()]),
            Peer::DnsSelector(vec!["pypi.org".into()])
        ]],
        "pip's remotes by name, no loopback, and not the resolver: a lookup is not a connection"
    );
}

#[test]
fn the_policy_made_from_it() {
    let policy = baseline_policy();
    snapshots().bind(|| {
        insta::assert_yaml_snapshot!("notebook_policy", policy, { ".metadata.latestTimestamp" => "[time]" });
    });
    assert_eq!(policy.spec.mode, Some(Mode::Audit));
    assert_eq!(
        policy.spec.container_selector.as_ref().unwrap().image_id,
        None
    );
}

#[test]
fn the_same_behaviour_gives_the_same_fingerprint_and_no_deviation() {
    let first = baseline_fingerprint(&FIRST);
    // Other pids, loopback and ephemeral ports, kernel file, pypi addresses, pod and times.
    let mut again = baseline(&REPLAY);
    again.baseline_cells(&REPLAY);
    again.kernel_roundtrip();
    let mut b = FingerprintBuilder::new();
    b.observe_all(&again.s.events);
    let replayed = b.finish().remove(0);
    assert_eq!(
        replayed.spec, first.spec,
        "the same behaviour, the same fingerprint"
    );
    assert_ne!(replayed.metadata, first.metadata);
    assert!(
        b.stats().loopback_connections > 20,
        "the kernel's loopback traffic was there and left out"
    );

    let report = find_deviations(&[baseline_policy()], &again.s.events).unwrap();
    assert_eq!(
        report.unique(),
        0,
        "{}",
        serde_yaml::to_string(&report).unwrap()
    );
    assert_eq!(report.total(), 0);
}

#[test]
fn a_fingerprint_replayed_against_its_own_policy_deviates_nowhere() {
    for run in [&FIRST, &REPLAY] {
        let nb = baseline(run);
        let policy = create_policy(&fingerprints(&nb.s.events), None, Mode::Enforce).unwrap();
        let report = find_deviations(&[policy], &nb.s.events).unwrap();
        assert_eq!(report.total(), 0);
        assert!(report.flags.is_empty() && report.decisions.is_empty());
    }
}

#[test]
fn the_terminal_and_the_attack_deviate_as_expected() {
    let s = story();
    let lines: Vec<String> = s.report.deviations().map(summary).collect();
    assert_eq!(
        lines,
        [
            "process | jupyter-lab_0 > bash",
            "process | bash_0 > ls",
            "process | bash_0 > id",
            "process | bash_0 > wget",
            "egress | bash_0 > wget | egress [\"wget_0\"] to sourceforge.net TCP/443",
            "process | bash_0 > tar",
            "process | tar_0 > gzip",
            "process | bash_0 > minerd",
            "egress | bash_0 > minerd | egress [\"minerd_0\"] to fakeminingpool.example.com TCP/3333",
        ],
        "each deviant program alone, under its parent's node"
    );
    let p = &s.report.policies[0];
    assert_eq!(p.status, guardlab_engine::policy::PolicyStatus::Enforcing);
    assert_eq!((p.unique, p.total), (9, 9));
    assert!(p.deviations.iter().all(|d| d.relevant));
    assert!(s.report.deviations().all(|d| {
        d.spec
            .process_policy
            .iter()
            .all(|p| p.policy_node.id != ROOT_ANCHOR)
    }));

    // Audit mode (bash, ls) raised nothing; enforce mode flags the rest, high (the default).
    let flagged: Vec<&str> = s.report.flags.iter().map(|f| f.process.as_str()).collect();
    assert_eq!(
        flagged,
        ["id", "wget", "wget", "tar", "gzip", "minerd", "minerd"]
    );
    assert!(s.report.flags.iter().all(|f| f.severity == Severity::High));
    // Only the miner runs from /home: it is killed, for each of its deviations.
    let kills: Vec<(ActionKind, &str, bool)> = s
        .report
        .decisions
        .iter()
        .map(|d| (d.action, d.target.name.as_str(), d.initiated))
        .collect();
    assert_eq!(kills, [(ActionKind::AgentKillProcess, "minerd", true); 2]);
    assert!(
        s.report
            .audit_log
            .iter()
            .all(|l| l.starts_with("(audit mode): Would have raised a \"high\" red flag"))
    );
    assert_eq!(s.report.audit_log.len(), 2);

    snapshots().bind(|| {
        insta::assert_yaml_snapshot!("attack_deviations", s.report, {
            ".policies[].deviations[].firstTimestamp" => "[time]",
            ".policies[].deviations[].latestTimestamp" => "[time]",
            ".flags[].timestamp" => "[time]",
            ".flags[].pid" => "[pid]",
            ".flags[].containerId" => "[container-id]",
            ".decisions[].timestamp" => "[time]",
            ".decisions[].target.pid" => "[pid]",
            ".decisions[].target.process" => "[process-key]",
            ".decisions[].target.cgroupId" => "[cgroup]",
            ".decisions[].target.containerId" => "[container-id]",
        });
    });
}

#[test]
fn merging_the_deviations_allows_the_behaviour() {
    let s = story();
    let mut merged = s.policy.clone();
    for d in s.report.deviations() {
        merged = merge_deviation(&merged, d).unwrap();
    }
    let mut nb = baseline(&REPLAY);
    let bash = nb.terminal();
    nb.attack(bash);
    let report = find_deviations(&[merged.clone()], &nb.s.events).unwrap();
    assert_eq!(
        report.unique(),
        0,
        "{}",
        serde_yaml::to_string(&report).unwrap()
    );
    // Disabled: nothing at all, even for a brand new behaviour.
    set_enabled(&mut merged, false);
    nb.command(
        bash,
        prog("/usr/bin/curl", &["curl", "sourceforge.net"], "jovyan"),
    );
    let report = find_deviations(&[merged], &nb.s.events).unwrap();
    assert_eq!(
        (report.unique(), report.policies[0].status.as_str()),
        (0, "Disabled")
    );
}

#[test]
fn the_investigation_traces_the_miner_to_the_root() {
    let s = story();
    let inv = &s.investigation;
    assert_eq!(inv.deviations.len(), 9);
    let miner = inv
        .deviations
        .iter()
        .find(|d| {
            d.connection
                .as_ref()
                .is_some_and(|c| c.dns.as_deref() == Some("fakeminingpool.example.com"))
        })
        .expect("the pool connection");
    let chain: Vec<(&str, Option<&str>, bool)> = miner
        .chain
        .iter()
        .map(|p| (p.name.as_str(), p.node.as_deref(), p.deviant))
        .collect();
    assert_eq!(
        chain,
        [
            ("jupyter-lab", Some("jupyter-lab_0"), false),
            ("bash", Some("bash_0"), true),
            ("minerd", Some("minerd_0"), true)
        ]
    );
    assert_eq!(
        miner.chain[2].args,
        [
            "./minerd",
            "--url",
            "fakeminingpool.example.com",
            "-u",
            "ME",
            "-p",
            "passwd"
        ]
    );
    assert_eq!(
        miner.connections.len(),
        2,
        "its lookup (not a deviation, still in the trace) and the pool"
    );
    assert_eq!(inv.flags.len(), 7);

    let text = inv.render_text();
    assert!(
        text.contains(
            "egress to fakeminingpool.example.com (198.18.0.70) TCP/3333  <== egress deviation"
        ),
        "{text}"
    );
    // One tree: the server once, the shell once, the attack's commands its children.
    assert_eq!(text.matches("jupyter-lab pid").count(), 1, "{text}");
    assert_eq!(text.matches("bash pid").count(), 1, "{text}");
    let tree = inv.tree();
    assert_eq!(tree.containers.len(), 1);
    let t = &tree.containers[0];
    assert_eq!(t.roots.len(), 1);
    let name = |i: usize| match &t.nodes[i].item {
        TreeItem::Process(p) => p.process.name.as_str(),
        TreeItem::Omitted { .. } => "omitted",
    };
    let bash = t.nodes[t.roots[0]].children[0];
    assert_eq!(name(bash), "bash");
    let commands: Vec<&str> = t.nodes[bash].children.iter().map(|&c| name(c)).collect();
    assert_eq!(commands, ["ls", "id", "wget", "tar", "minerd"]);
    snapshots().bind(|| {
        let mut settings = insta::Settings::clone_current();
        settings.add_filter(
            r"pid \d+ \(\d+ in container\)",
            "pid [pid] ([ns-pid] in container)",
        );
        settings.add_filter(r"\(pid \d+\)", "(pid [pid])");
        settings.add_filter(r" pid \d+\)", " pid [pid])");
        settings.add_filter(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", "[time]");
        settings.add_filter(r"\b[0-9a-f]{64}\b", "[container-id]");
        settings.bind(|| insta::assert_snapshot!("attack_investigation_text", text));
        insta::assert_json_snapshot!("attack_investigation", inv, {
            ".deviations[].chain[].pid" => "[pid]",
            ".deviations[].chain[].nsPid" => "[ns-pid]",
            ".deviations[].chain[].startTime" => "[time]",
            ".deviations[].chain[].started" => "[time]",
            ".deviations[].process" => "[process-key]",
            ".deviations[].container.containerId" => "[container-id]",
            ".deviations[].connection.timestamp" => "[time]",
            ".deviations[].connection.remotePort" => "[port]",
            ".deviations[].connections[].timestamp" => "[time]",
            ".deviations[].connections[].remotePort" => "[port]",
            ".flags[].pid" => "[pid]",
            ".flags[].timestamp" => "[time]",
            ".flags[].containerId" => "[container-id]",
            ".decisions[].timestamp" => "[time]",
            ".decisions[].target.pid" => "[pid]",
            ".decisions[].target.process" => "[process-key]",
            ".decisions[].target.cgroupId" => "[cgroup]",
            ".decisions[].target.containerId" => "[container-id]",
        });
    });
}

#[test]
fn every_output_is_identical_on_every_run() {
    let render = || {
        let fp = baseline_fingerprint(&FIRST);
        let s = story();
        let mut out = serde_yaml::to_string(&fp).unwrap();
        out += &serde_yaml::to_string(&s.policy).unwrap();
        out += &serde_yaml::to_string(&s.report).unwrap();
        out += &serde_json::to_string(&s.investigation).unwrap();
        out += &s.investigation.render_text();
        out
    };
    let (a, b) = (render(), render());
    assert!(a.len() > 10_000);
    assert!(a == b, "two runs differ");
}

#[test]
fn a_kernel_restart_is_not_a_new_behaviour() {
    // The kernel restarted (new pid, new ports, new connection file): same fingerprint.
    let mut nb: Notebook = baseline(&FIRST);
    let old = fingerprints(&nb.s.events).remove(0);
    nb.s.exit(CG, nb.kernel, 0);
    let file = "/home/jovyan/.local/share/jupyter/runtime/kernel-restarted.json";
    let argv = [
        "/opt/conda/bin/python",
        "-m",
        "ipykernel_launcher",
        "-f",
        file,
    ];
    let kernel = nb.s.spawn(
        CG,
        Some(nb.server),
        Exec {
            exe: PY,
            comm: "python",
            argv: &argv,
            euser: "jovyan",
            euid: 1000,
        },
    );
    nb.kernel = kernel;
    nb.kernel_ports = vec![40100, 40101, 40102, 40103, 40104];
    nb.kernel_roundtrip();
    let new = fingerprints(&nb.s.events).remove(0);
    assert_eq!(new.spec, old.spec);
}

/// What the kernel stopped (an exec killed before its first instruction, a connect refused) is
/// the same deviation, with the same uid, marked as prevented.
#[test]
fn a_deviation_the_kernel_prevented_keeps_its_uid_and_says_so() {
    let policy = enforcing(&baseline_policy());
    let run = |stop: bool| {
        let mut nb = baseline(&FIRST);
        let bash = nb.terminal();
        nb.attack(bash);
        if stop {
            for e in &mut nb.s.events {
                match &mut e.body {
                    guardlab_events::EventBody::Exec(x) if x.comm == "minerd" => x.killed = true,
                    guardlab_events::EventBody::Connect(c) if c.remote_port == 443 => {
                        c.refused = true
                    }
                    _ => {}
                }
            }
        }
        let mut matcher = DeviationMatcher::new(std::slice::from_ref(&policy)).unwrap();
        nb.s.events
            .iter()
            .flat_map(|e| matcher.observe(e))
            .filter(|f| f.new)
            .map(|f| (f.deviation_uid, f.kind, f.prevented))
            .collect::<Vec<_>>()
    };
    let free = run(false);
    let stopped = run(true);
    assert!(free.iter().all(|(_, _, prevented)| !prevented));
    use guardlab_engine::model::DeviationType;
    let uids =
        |v: &[(String, DeviationType, bool)]| v.iter().map(|d| d.0.clone()).collect::<Vec<_>>();
    assert_eq!(
        uids(&free),
        uids(&stopped),
        "the same deviations, the same uids"
    );
    let prevented: Vec<_> = stopped.iter().filter(|d| d.2).map(|d| d.1).collect();
    assert_eq!(
        prevented,
        [DeviationType::Egress, DeviationType::Process],
        "wget's HTTPS connect and the miner's exec: {stopped:?}"
    );
}
