use guardlab_events::{ContainerInfo, ExeStatus, ProcessKey, Protocol};
use guardlab_test_support::stream::{Stream, pod_container, prog};
use sha2::{Digest, Sha256};

use super::*;
use crate::document::Document;
use crate::fingerprint::fingerprints;
use crate::merge::{Merger, merge_deviation};
use crate::model::{
    ActionSelectors, FlagAction, ProcessNode, ProcessSelector, Response, ResponseAction, Severity,
};
use crate::policy::{create_policy, set_enabled, set_mode};

const CG: u64 = 7;
const PY: &str = "/opt/conda/bin/python3.11";

/// A container running a server that listens on 8888, is reached from 198.18.0.1, and whose
/// child `pip` talks to pypi.org:443 after resolving it.
struct Lab {
    s: Stream,
    server: ProcessKey,
}

fn lab(first_pid: u32, cgroup: u64, container_id: &str) -> Lab {
    let mut s = Stream::new(1_732_780_800, first_pid);
    s.container(pod_container(
        cgroup,
        container_id,
        "jupyter/minimal-notebook:latest",
        "jupyter-notebook-7d9f8c-abcde",
    ));
    let server = s.spawn(
        cgroup,
        Some(ProcessKey(1, 1)),
        prog(PY, &["python3"], "jovyan"),
    );
    s.listen(cgroup, server, Protocol::Tcp, "0.0.0.0", 8888);
    s.accept(
        cgroup,
        server,
        ("198.18.0.2", 8888),
        ("198.18.0.1", (first_pid % 20000 + 30000) as u16),
    );
    let pip = s.spawn(cgroup, Some(server), prog(PY, &["pip"], "jovyan"));
    s.dns(cgroup, "pypi.org", &["198.18.0.50"]);
    s.connect(
        cgroup,
        pip,
        Protocol::Tcp,
        ("198.18.0.2", 41000),
        ("198.18.0.50", 443),
    );
    s.exit(cgroup, pip, 0);
    Lab { s, server }
}

fn baseline_policy() -> Policy {
    let fps = fingerprints(&lab(100, CG, "c1").s.events);
    create_policy(&fps, Some("notebook-policy"), Mode::Audit).unwrap()
}

fn matcher(policy: &Policy) -> DeviationMatcher {
    DeviationMatcher::new(std::slice::from_ref(policy)).unwrap()
}

fn run(policy: &Policy, s: &Stream) -> (Vec<Finding>, DeviationReport) {
    let mut m = matcher(policy);
    let findings = m.observe_all(&s.events);
    (findings, m.report())
}

fn fragment(d: &Deviation) -> String {
    serde_json::to_string(&d.spec).unwrap()
}

#[test]
fn the_baseline_replayed_against_its_policy_deviates_nowhere() {
    let policy = baseline_policy();
    let (findings, report) = run(&policy, &lab(7000, 9, "c2").s);
    assert!(findings.is_empty(), "{findings:#?}");
    assert_eq!(report.unique(), 0);
    assert_eq!(report.policies[0].status, PolicyStatus::Auditing);
}

#[test]
fn a_new_child_is_a_process_deviation_under_its_parents_node() {
    let policy = baseline_policy();
    let mut l = lab(200, CG, "c1");
    let bash = l.s.spawn(
        CG,
        Some(l.server),
        prog("/usr/bin/bash", &["/bin/bash", "-l"], "jovyan"),
    );
    let ls =
        l.s.spawn(CG, Some(bash), prog("/usr/bin/ls", &["ls"], "jovyan"));
    let (findings, report) = run(&policy, &l.s);
    assert_eq!(findings.len(), 2);
    assert!(
        findings
            .iter()
            .all(|f| f.kind == DeviationType::Process && f.new)
    );
    assert_eq!(findings[1].process, ls);
    let devs: Vec<&Deviation> = report.deviations().collect();
    assert_eq!(
        fragment(devs[0]),
        r#"{"processPolicy":[{"policyNode":{"id":"python3_0","children":[{"name":"bash","exe":["/usr/bin/bash"],"id":"bash_0","euser":["jovyan"]}]}}]}"#
    );
    assert_eq!(
        fragment(devs[1]),
        r#"{"processPolicy":[{"policyNode":{"id":"bash_0","children":[{"name":"ls","exe":["/usr/bin/ls"],"id":"ls_0","euser":["jovyan"]}]}}]}"#,
        "a descendant of a deviant process hangs under the deviant parent's node, alone"
    );
    for d in &devs {
        assert_eq!(d.kind, "GuardianDeviation");
        assert_eq!(d.metadata.policy_uid, crate::policy::policy_uid(&policy));
        assert_eq!(d.metadata.checksum.len(), 64);
        assert!(d.metadata.uid.as_deref().unwrap().starts_with("dev:"));
    }
    assert!(report.policies[0].deviations.iter().all(|d| d.relevant));
}

#[test]
fn the_same_behaviour_again_is_the_same_deviation() {
    let policy = baseline_policy();
    let mut l = lab(300, CG, "c1");
    for _ in 0..3 {
        let bash = l.s.spawn(
            CG,
            Some(l.server),
            prog("/usr/bin/bash", &["bash"], "jovyan"),
        );
        l.s.exit(CG, bash, 0);
    }
    // Another container of the same image, other pids: still the same deviation.
    l.s.container(pod_container(
        9,
        "c9",
        "jupyter/minimal-notebook:latest",
        "jupyter-notebook-7d9f8c-zzzzz",
    ));
    let server = l.s.spawn(9, None, prog(PY, &["python3"], "jovyan"));
    l.s.skip_pids(500);
    l.s.spawn(9, Some(server), prog("/usr/bin/bash", &["bash"], "jovyan"));
    let (findings, report) = run(&policy, &l.s);
    assert_eq!(findings.len(), 4);
    assert_eq!(findings.iter().filter(|f| f.new).count(), 1);
    let p = &report.policies[0];
    assert_eq!((p.unique, p.total), (1, 4));
    assert_eq!(p.deviations[0].count, 4);
    assert!(findings.windows(2).all(|w| w[0].checksum == w[1].checksum));
}

#[test]
fn a_process_with_no_parent_in_the_container_is_checked_against_the_roots() {
    let policy = baseline_policy();
    let mut l = lab(400, CG, "c1");
    l.s.spawn(CG, Some(ProcessKey(2, 2)), prog(PY, &["python3"], "jovyan")); // covered by the root
    l.s.spawn(CG, Some(ProcessKey(2, 2)), prog("/bin/sh", &["sh"], "root")); // kubectl exec
    let (_, report) = run(&policy, &l.s);
    let devs: Vec<&Deviation> = report.deviations().collect();
    assert_eq!(devs.len(), 1);
    assert_eq!(devs[0].spec.process_policy[0].policy_node.id, ROOT_ANCHOR);
    let merged = merge_deviation(&policy, devs[0]).unwrap();
    assert_eq!(
        merged.spec.process_policy.len(),
        2,
        "it merges as a new root"
    );
}

#[test]
fn another_user_alone_is_no_deviation() {
    let policy = baseline_policy();
    let mut l = lab(500, CG, "c1");
    l.s.spawn(CG, Some(l.server), prog(PY, &["pip"], "root"));
    let (findings, _) = run(&policy, &l.s);
    assert!(findings.is_empty(), "{findings:#?}");
}

#[test]
fn egress_deviations_name_the_remote_port_and_process() {
    let policy = baseline_policy();
    let mut l = lab(600, CG, "c1");
    // The server (allowed) reaches a new host; pip reaches pypi.org at a new address (same
    // name: allowed) and on a new port (not allowed).
    l.s.connect(
        CG,
        l.server,
        Protocol::Tcp,
        ("198.18.0.2", 42000),
        ("198.18.0.99", 80),
    );
    let pip = l.s.spawn(CG, Some(l.server), prog(PY, &["pip"], "jovyan"));
    l.s.dns(CG, "pypi.org", &["198.18.0.77"]);
    l.s.connect(
        CG,
        pip,
        Protocol::Tcp,
        ("198.18.0.2", 42001),
        ("198.18.0.77", 443),
    );
    l.s.connect(
        CG,
        pip,
        Protocol::Tcp,
        ("198.18.0.2", 42002),
        ("198.18.0.77", 80),
    );
    // Loopback never deviates.
    l.s.connect(
        CG,
        pip,
        Protocol::Tcp,
        ("127.0.0.1", 42003),
        ("127.0.0.1", 5555),
    );
    let (findings, report) = run(&policy, &l.s);
    assert_eq!(findings.len(), 2, "{findings:#?}");
    let devs: Vec<&Deviation> = report.deviations().collect();
    assert_eq!(devs[0].metadata.kind, DeviationType::Egress);
    assert_eq!(
        fragment(devs[0]),
        r#"{"networkPolicy":{"egress":[{"to":[{"ipBlock":{"cidr":"198.18.0.99/32"}}],"processes":["python3_0"],"ports":[{"protocol":"TCP","port":80}]}]}}"#
    );
    assert_eq!(
        fragment(devs[1]),
        r#"{"networkPolicy":{"egress":[{"to":[{"dnsSelector":["pypi.org"]}],"processes":["pip_0"],"ports":[{"protocol":"TCP","port":80}]}]}}"#
    );
}

#[test]
fn egress_of_a_deviant_process_carries_its_node() {
    let policy = baseline_policy();
    let mut l = lab(700, CG, "c1");
    let bash = l.s.spawn(
        CG,
        Some(l.server),
        prog("/usr/bin/bash", &["bash"], "jovyan"),
    );
    let miner = l.s.spawn(
        CG,
        Some(bash),
        prog("/home/jovyan/minerd", &["./minerd"], "jovyan"),
    );
    l.s.dns(CG, "fakeminingpool.example.com", &["198.18.0.70"]);
    l.s.connect(
        CG,
        miner,
        Protocol::Tcp,
        ("198.18.0.2", 43000),
        ("198.18.0.70", 3333),
    );
    let (_, report) = run(&policy, &l.s);
    let devs: Vec<&Deviation> = report.deviations().collect();
    assert_eq!(devs.len(), 3);
    let egress = devs[2];
    assert_eq!(egress.metadata.kind, DeviationType::Egress);
    assert_eq!(
        fragment(egress),
        r#"{"processPolicy":[{"policyNode":{"id":"bash_0","children":[{"name":"minerd","exe":["/home/jovyan/minerd"],"id":"minerd_0","euser":["jovyan"]}]}}],"networkPolicy":{"egress":[{"to":[{"dnsSelector":["fakeminingpool.example.com"]}],"processes":["minerd_0"],"ports":[{"protocol":"TCP","port":3333}]}]}}"#
    );
    // It hangs under bash's node: on its own it does not merge, and says which node it needs.
    let alone = merge_deviation(&policy, egress).unwrap_err().to_string();
    assert!(alone.contains("\"bash_0\""), "{alone}");
    // After bash's deviation it does (minerd's own deviation is not needed: the egress
    // carries its node), and the policy then allows all of it.
    let mut merger = Merger::new(policy.clone());
    for d in [devs[0], egress] {
        merger.merge(&Document::Deviation(d.clone())).unwrap();
    }
    let (findings, _) = run(merger.policy(), &l.s);
    assert!(findings.is_empty(), "{findings:#?}");
}

#[test]
fn ingress_deviations_name_the_peer_and_the_local_port() {
    let policy = baseline_policy();
    let mut l = lab(800, CG, "c1");
    l.s.accept(CG, l.server, ("198.18.0.2", 8888), ("198.18.0.1", 50000)); // known peer
    l.s.accept(CG, l.server, ("198.18.0.2", 8888), ("198.18.0.66", 50001));
    l.s.accept(CG, l.server, ("198.18.0.2", 8888), ("198.18.0.66", 50002));
    let (findings, report) = run(&policy, &l.s);
    assert_eq!(findings.len(), 2);
    let devs: Vec<&Deviation> = report.deviations().collect();
    assert_eq!(devs.len(), 1, "peer ports do not make deviations unique");
    assert_eq!(
        fragment(devs[0]),
        r#"{"networkPolicy":{"ingress":[{"from":[{"ipBlock":{"cidr":"198.18.0.66/32"}}],"processes":["python3_0"],"ports":[{"protocol":"TCP","port":8888}]}]}}"#
    );
}

#[test]
fn a_disabled_policy_or_an_unselected_container_produces_nothing() {
    let mut policy = baseline_policy();
    let mut l = lab(900, CG, "c1");
    l.s.spawn(
        CG,
        Some(l.server),
        prog("/usr/bin/bash", &["bash"], "jovyan"),
    );
    set_enabled(&mut policy, false);
    let (findings, report) = run(&policy, &l.s);
    assert!(findings.is_empty());
    assert_eq!(report.policies[0].status, PolicyStatus::Disabled);

    let mut other = lab(900, CG, "c1");
    other.s.events[0] = guardlab_events::Event::new(
        other.s.events[0].ts,
        guardlab_events::EventBody::Container(ContainerInfo {
            image: "nginx:1".into(),
            ..pod_container(CG, "c1", "", "p-1-x")
        }),
    );
    let server = other.server;
    other
        .s
        .spawn(CG, Some(server), prog("/usr/bin/bash", &["bash"], "jovyan"));
    let (findings, _) = run(&baseline_policy(), &other.s);
    assert!(findings.is_empty(), "another image is not selected");
}

#[test]
fn selectors_narrow_by_namespace_and_pod_labels() {
    let policy = baseline_policy();
    let mut l = lab(950, CG, "c1");
    let mut info = pod_container(5, "c5", "jupyter/minimal-notebook:latest", "other-1-x");
    info.namespace = "default".into();
    l.s.container(info);
    let root = l.s.spawn(5, None, prog("/usr/bin/bash", &["bash"], "root"));
    l.s.spawn(5, Some(root), prog("/usr/bin/ls", &["ls"], "root"));
    let (findings, _) = run(&policy, &l.s);
    assert!(findings.is_empty(), "another namespace is not selected");
}

fn enforcing(mut policy: Policy, actions: Vec<ResponseAction>) -> Policy {
    set_mode(&mut policy, Mode::Enforce);
    policy.spec.response = Some(Response {
        default: vec![ResponseAction::MakeRedFlag(FlagAction::new(Severity::High))],
        actions,
        ..Response::default()
    });
    policy
}

fn kill_pod_in_namespace(ns: &str) -> ResponseAction {
    ResponseAction::AgentKillPod(ActionSelectors {
        namespace_selector: Some(crate::model::LabelSelector {
            match_labels: [("kubernetes.io/metadata.name".to_string(), ns.to_string())].into(),
            ..Default::default()
        }),
        ..ActionSelectors::default()
    })
}

#[test]
fn audit_mode_records_and_says_what_it_would_do() {
    let mut policy = baseline_policy();
    policy.spec.response.as_mut().unwrap().actions = vec![kill_pod_in_namespace("cryptominer")];
    let mut l = lab(1000, CG, "c1");
    l.s.spawn(
        CG,
        Some(l.server),
        prog("/usr/bin/bash", &["bash"], "jovyan"),
    );
    let (findings, report) = run(&policy, &l.s);
    assert_eq!(findings.len(), 1);
    assert!(report.flags.is_empty(), "audit raises no flag");
    assert_eq!(report.decisions.len(), 1);
    assert!(!report.decisions[0].initiated);
    assert_eq!(
        report.audit_log,
        [
            format!("(audit mode): Would have raised a \"high\" red flag for process deviation {}. Not raised due to \"audit\" mode.", findings[0].deviation_uid),
            "(audit mode): Would have initiated \"agentKillPod\" action for \"jupyter-notebook-7d9f8c-abcde\" pod. Not initiated due to \"audit\" mode.".to_string(),
        ]
    );
}

#[test]
fn enforce_mode_raises_flags_and_decides_kills() {
    let policy = enforcing(
        baseline_policy(),
        vec![
            ResponseAction::AgentKillProcess(ActionSelectors {
                process_selector: Some(ProcessSelector {
                    exe: vec!["/home/*".into()],
                    ..ProcessSelector::default()
                }),
                ..ActionSelectors::default()
            }),
            ResponseAction::MakeRedFlag(FlagAction {
                process_selector: Some(ProcessSelector {
                    name: vec!["minerd".into()],
                    ..ProcessSelector::default()
                }),
                ..FlagAction::new(Severity::Critical)
            }),
        ],
    );
    let mut l = lab(1100, CG, "c1");
    let bash = l.s.spawn(
        CG,
        Some(l.server),
        prog("/usr/bin/bash", &["bash"], "jovyan"),
    );
    let m1 = l.s.spawn(
        CG,
        Some(bash),
        prog("/home/jovyan/minerd", &["./minerd"], "jovyan"),
    );
    l.s.killed(CG, m1, 9);
    let m2 = l.s.spawn(
        CG,
        Some(bash),
        prog("/home/jovyan/minerd", &["./minerd"], "jovyan"),
    );
    let (findings, report) = run(&policy, &l.s);
    assert_eq!(findings.len(), 3);
    assert_eq!(report.policies[0].status, PolicyStatus::Enforcing);
    // bash: the default flag; minerd: the critical flag, once for the two occurrences.
    let flags: Vec<(Severity, &str)> = report
        .flags
        .iter()
        .map(|f| (f.severity, f.process.as_str()))
        .collect();
    assert_eq!(
        flags,
        [(Severity::High, "bash"), (Severity::Critical, "minerd")]
    );
    // Kills: each minerd, every time; bash is not in /home.
    let kills: Vec<(ActionKind, u32, bool)> = report
        .decisions
        .iter()
        .map(|d| (d.action, d.target.pid, d.initiated))
        .collect();
    assert_eq!(
        kills,
        [
            (ActionKind::AgentKillProcess, m1.0, true),
            (ActionKind::AgentKillProcess, m2.0, true)
        ]
    );
    assert_eq!(
        report.decisions[0].target.process, m1,
        "the key guards against pid reuse"
    );
    assert_eq!(
        report.decisions[0].message,
        "(enforce mode): Initiated \"agentKillProcess\" action for \"minerd\" process."
    );
    assert!(report.audit_log.is_empty());
    assert_eq!(
        findings[1].decisions.len(),
        1,
        "findings carry their decisions for a live backend"
    );
}

#[test]
fn switching_the_mode_mid_stream_keeps_the_running_processes_mapped() {
    let policy = baseline_policy();
    let mut m = matcher(&policy);
    let mut l = lab(1200, CG, "c1");
    let bash = l.s.spawn(
        CG,
        Some(l.server),
        prog("/usr/bin/bash", &["bash"], "jovyan"),
    );
    assert_eq!(m.observe_all(&l.s.events).len(), 1);
    m.set_policy(&enforcing(policy.clone(), vec![])).unwrap();
    let mut later = Stream::new(1_732_790_000, 5000);
    later.spawn(CG, Some(l.server), prog(PY, &["pip"], "jovyan")); // allowed: the server is still known
    later.spawn(CG, Some(bash), prog("/usr/bin/ls", &["ls"], "jovyan")); // under the deviant bash
    let findings = m.observe_all(&later.events);
    assert_eq!(findings.len(), 1, "{findings:#?}");
    assert_eq!(findings[0].flags.len(), 1, "enforced now");
    let report = m.report();
    assert_eq!(report.policies.len(), 1);
    assert_eq!(report.policies[0].unique, 2);
    assert_eq!(
        report.flags.len(),
        1,
        "bash was seen in audit mode: no flag after the fact"
    );
}

#[test]
fn merged_deviations_stop_being_relevant_and_stop_deviating() {
    let policy = baseline_policy();
    let mut l = lab(1300, CG, "c1");
    let bash = l.s.spawn(
        CG,
        Some(l.server),
        prog("/usr/bin/bash", &["bash"], "jovyan"),
    );
    l.s.spawn(CG, Some(bash), prog("/usr/bin/ls", &["ls"], "jovyan"));
    let (_, report) = run(&policy, &l.s);
    let mut merged = policy.clone();
    for d in report.deviations() {
        merged = merge_deviation(&merged, d).unwrap();
    }
    let mut m = matcher(&merged);
    assert!(m.observe_all(&l.s.events).is_empty());
    // The report of the old run, judged against the merged policy: nothing relevant left.
    let mut m = matcher(&policy);
    m.observe_all(&l.s.events);
    m.set_policy(&merged).unwrap();
    assert!(
        m.report().policies[0]
            .deviations
            .iter()
            .all(|d| !d.relevant)
    );
}

#[test]
fn policies_the_engine_cannot_use_are_refused() {
    let mut policy = baseline_policy();
    policy.spec.network_policy.egress[0]
        .to
        .push(crate::model::Peer::IpBlock(crate::model::IpBlock {
            cidr: "300.1.2.3/8".into(),
            except: vec![],
        }));
    let err = DeviationMatcher::new(&[policy]).err().unwrap();
    assert!(err.to_string().contains("300.1.2.3/8"), "{err}");

    let mut policy = baseline_policy();
    policy.spec.network_policy.egress[0]
        .to
        .push(crate::model::Peer::IpBlock(crate::model::IpBlock {
            cidr: "198.18.0.0/15".into(),
            except: vec!["198.18.1.0".into()],
        }));
    let err = DeviationMatcher::new(&[policy]).err().unwrap();
    assert!(
        err.to_string().contains("except") && err.to_string().contains("198.18.1.0"),
        "an exception the engine cannot read is refused, not ignored: {err}"
    );
}

#[test]
fn one_call_matching() {
    let policy = baseline_policy();
    let mut l = lab(1400, CG, "c1");
    l.s.spawn(
        CG,
        Some(l.server),
        prog("/usr/bin/bash", &["bash"], "jovyan"),
    );
    let report = find_deviations(&[policy], &l.s.events).unwrap();
    assert_eq!(report.unique(), 1);
    assert_eq!(report.total(), 1);
    assert_eq!(report.stats.containers, 1);
}

#[test]
fn a_policy_that_selects_no_container_is_not_applied() {
    let mut policy = baseline_policy();
    policy.spec.container_selector.as_mut().unwrap().image = Some("nginx:*".into());
    let l = lab(1500, CG, "c1");
    let (_, report) = run(&policy, &l.s);
    let p = &report.policies[0];
    assert_eq!(
        (p.status.as_str(), p.applied, p.containers),
        ("Not Applied", false, 0)
    );

    set_enabled(&mut policy, false);
    let (_, report) = run(&policy, &l.s);
    let p = &report.policies[0];
    assert_eq!((p.status.as_str(), p.applied), ("Disabled", false));

    let (_, report) = run(&baseline_policy(), &l.s);
    let p = &report.policies[0];
    assert_eq!(
        (p.status.as_str(), p.applied, p.containers),
        ("Auditing", true, 1)
    );
    let mut disabled = baseline_policy();
    set_enabled(&mut disabled, false);
    let (_, report) = run(&disabled, &l.s);
    assert_eq!(
        report.policies[0].containers, 1,
        "a disabled policy still says what it would select"
    );
}

#[test]
fn the_same_program_under_another_user_is_the_same_deviation() {
    let policy = baseline_policy();
    let mut l = lab(1600, CG, "c1");
    let bash = l.s.spawn(
        CG,
        Some(l.server),
        prog("/usr/bin/bash", &["bash"], "jovyan"),
    );
    l.s.spawn(CG, Some(bash), prog("/usr/bin/id", &["id"], "jovyan"));
    let sudo =
        l.s.spawn(CG, Some(bash), prog("/usr/bin/id", &["id"], "root"));
    let _ = sudo;
    let root_bash =
        l.s.spawn(CG, Some(l.server), prog("/usr/bin/bash", &["bash"], "root"));
    l.s.spawn(CG, Some(root_bash), prog("/usr/bin/id", &["id"], "root"));
    let (findings, report) = run(&policy, &l.s);
    assert_eq!(findings.len(), 5);
    let p = &report.policies[0];
    assert_eq!(
        (p.unique, p.total),
        (2, 5),
        "bash and bash > id, whoever ran them"
    );
    let counts: Vec<u64> = p.deviations.iter().map(|d| d.count).collect();
    assert_eq!(counts, [2, 3]);
    assert_eq!(
        fragment(&p.deviations[1].deviation),
        r#"{"processPolicy":[{"policyNode":{"id":"bash_0","children":[{"name":"id","exe":["/usr/bin/id"],"id":"id_0","euser":["jovyan"]}]}}]}"#,
        "the fragment keeps the first occurrence's user"
    );

    // The checksum leaves the user out: the same chain first seen as root has the same one.
    let mut other = lab(1700, CG, "c1");
    let bash = other.s.spawn(
        CG,
        Some(other.server),
        prog("/usr/bin/bash", &["bash"], "root"),
    );
    other
        .s
        .spawn(CG, Some(bash), prog("/usr/bin/id", &["id"], "jovyan"));
    let (_, again) = run(&policy, &other.s);
    let sums = |r: &DeviationReport| -> Vec<String> {
        r.deviations()
            .map(|d| d.metadata.checksum.clone())
            .collect()
    };
    assert_eq!(sums(&again), sums(&report));
    assert!(
        fragment(again.deviations().next().unwrap()).contains(r#""euser":["root"]"#),
        "{}",
        fragment(again.deviations().next().unwrap())
    );
}

#[test]
fn lookups_of_deviant_processes_are_not_deviations_the_connections_they_name_are() {
    // The baseline policy has no rule for the resolver: lookups need none (as in Spyderbat's
    // policies, where no UDP rule is).
    let policy = baseline_policy();
    let mut l = lab(1800, CG, "c1");
    let bash = l.s.spawn(
        CG,
        Some(l.server),
        prog("/usr/bin/bash", &["bash"], "jovyan"),
    );
    for (exe, name, host) in [
        ("/usr/bin/curl", "curl", "sourceforge.net"),
        ("/usr/bin/wget", "wget", "downloads.sourceforge.net"),
    ] {
        let p = l.s.spawn(CG, Some(bash), prog(exe, &[name], "jovyan"));
        l.s.connect(
            CG,
            p,
            Protocol::Udp,
            ("198.18.0.2", 45000),
            ("198.18.0.53", 53),
        );
        l.s.dns(CG, host, &["198.18.2.10"]);
        l.s.connect(
            CG,
            p,
            Protocol::Tcp,
            ("198.18.0.2", 45001),
            ("198.18.2.10", 443),
        );
    }
    let (_, report) = run(&policy, &l.s);
    let kinds: Vec<String> = report
        .deviations()
        .map(|d| {
            let net = d.spec.network_policy.as_ref();
            let to = net
                .and_then(|n| n.egress.first())
                .map(|e| serde_json::to_string(&(&e.to, &e.processes, &e.ports)).unwrap())
                .unwrap_or_default();
            format!("{} {to}", d.metadata.kind)
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "process ",
            "process ",
            r#"egress [[{"dnsSelector":["sourceforge.net"]}],["curl_0"],[{"protocol":"TCP","port":443}]]"#,
            "process ",
            r#"egress [[{"dnsSelector":["downloads.sourceforge.net"]},{"dnsSelector":["sourceforge.net"]}],["wget_0"],[{"protocol":"TCP","port":443}]]"#,
        ],
        "in the order the events first showed them; both names of 198.18.2.10 for wget; no lookup"
    );
    let mut merger = Merger::new(policy.clone());
    for d in report.deviations() {
        merger.merge(&Document::Deviation(d.clone())).unwrap();
    }
    let merged = merger.finish();
    assert!(
        merged
            .spec
            .network_policy
            .egress
            .iter()
            .all(|n| n.ports.iter().all(|p| p.protocol == "TCP")),
        "{:#?}",
        merged.spec.network_policy.egress
    );
    let (findings, _) = run(&merged, &l.s);
    assert!(findings.is_empty(), "{findings:#?}");
}

#[test]
fn unknown_protocols_are_refused_not_taken_for_tcp() {
    let mut policy = baseline_policy();
    policy.spec.network_policy.egress[0].ports[0].protocol = "SCTP".into();
    let err = DeviationMatcher::new(&[policy]).err().unwrap();
    assert!(
        matches!(err, PolicyError::UnknownProtocol { .. }) && err.to_string().contains("SCTP"),
        "{err}"
    );
}

/// The baseline policy with a child of the server's node that covers any program: name `*`
/// and exe `*` (which matches `/` too, so every path). It shadows `pip_0` (siblings are
/// tried in order, and `*` sorts first), so `pip`'s connection deviates: tests of process
/// deviations look at those alone.
fn policy_allowing_anything_under_the_server() -> Policy {
    let mut policy = baseline_policy();
    let server = &mut policy.spec.process_policy[0];
    assert_eq!(server.id, "python3_0");
    server
        .children
        .get_or_insert_with(Vec::new)
        .push(ProcessNode {
            name: "*".into(),
            exe: vec!["*".into()],
            id: "anything_0".into(),
            euser: None,
            listening_sockets: None,
            children: None,
        });
    policy
}

#[test]
fn an_untrusted_executable_deviates_even_where_a_wide_glob_matches_it() {
    let policy = enforcing(policy_allowing_anything_under_the_server(), Vec::new());
    let mut l = lab(1500, CG, "c1");
    // A resolved path: `*` covers it.
    l.s.spawn(
        CG,
        Some(l.server),
        prog("/tmp/minerd", &["./minerd"], "jovyan"),
    );
    let fileless = l.s.spawn_untrusted(
        CG,
        Some(l.server),
        prog("memfd:minerd", &["minerd"], "jovyan"),
        ExeStatus::Fileless,
    );
    let truncated = l.s.spawn_untrusted(
        CG,
        Some(l.server),
        prog("/usr/bin/ls", &["ls"], "jovyan"),
        ExeStatus::Truncated,
    );
    let unresolved = l.s.spawn_untrusted(
        CG,
        Some(l.server),
        prog("./miner", &["./miner"], "jovyan"),
        ExeStatus::Unresolved,
    );
    let (findings, report) = run(&policy, &l.s);
    let findings = processes_only(findings);
    assert_eq!(
        findings.iter().map(|f| f.process).collect::<Vec<_>>(),
        [fileless, truncated, unresolved]
    );
    let records: Vec<&DeviationRecord> = report.policies[0]
        .deviations
        .iter()
        .filter(|d| d.deviation.metadata.kind == DeviationType::Process)
        .collect();
    let flags: Vec<&Flag> = report
        .flags
        .iter()
        .filter(|f| f.kind == DeviationType::Process)
        .collect();
    let reasons = [
        "fileless executable `memfd:minerd`: no exe glob allows it (fail closed)",
        "truncated executable path `/usr/bin/ls`: no exe glob allows it (fail closed)",
        "unresolved executable path `./miner`: no exe glob allows it (fail closed)",
    ];
    for (i, reason) in reasons.iter().enumerate() {
        assert_eq!(findings[i].reason.as_deref(), Some(*reason));
        assert_eq!(records[i].reason.as_deref(), Some(*reason));
        assert_eq!(flags[i].reason.as_deref(), Some(*reason));
    }
    assert_eq!(flags[0].exe, "memfd:minerd");
    assert_eq!(report.stats.untrusted_exes, 3);
    // The fragment is the exec as reported, under the node of its parent.
    assert_eq!(
        fragment(&records[0].deviation),
        r#"{"processPolicy":[{"policyNode":{"id":"python3_0","children":[{"name":"minerd","exe":["memfd:minerd"],"id":"minerd_0","euser":["jovyan"]}]}}]}"#
    );
    let json = serde_json::to_string(flags[0]).unwrap();
    assert!(json.contains(r#""reason":"fileless executable"#), "{json}");
    // Deviations of resolved programs say nothing of the kind (pip's connection).
    let egress = report
        .flags
        .iter()
        .find(|f| f.kind == DeviationType::Egress);
    let json = serde_json::to_string(egress.unwrap()).unwrap();
    assert!(!json.contains("reason"), "{json}");
}

fn processes_only(findings: Vec<Finding>) -> Vec<Finding> {
    findings
        .into_iter()
        .filter(|f| f.kind == DeviationType::Process)
        .collect()
}

#[test]
fn the_audit_log_says_why_an_untrusted_executable_deviates() {
    let policy = policy_allowing_anything_under_the_server();
    let mut l = lab(1550, CG, "c1");
    l.s.spawn_untrusted(
        CG,
        Some(l.server),
        prog("memfd:minerd", &["minerd"], "jovyan"),
        ExeStatus::Fileless,
    );
    let (findings, report) = run(&policy, &l.s);
    let findings = processes_only(findings);
    assert_eq!(
        report.audit_log[1..],
        [format!(
            "(audit mode): Would have raised a \"high\" red flag for process deviation {} (fileless executable `memfd:minerd`: no exe glob allows it (fail closed)). Not raised due to \"audit\" mode.",
            findings[0].deviation_uid
        )]
    );
}

#[test]
fn a_resolved_and_an_untrusted_exec_of_the_same_exe_text_never_share_a_verdict() {
    // The matcher caches a verdict per (parent node, name, exe text): whichever comes first
    // must not decide for the other.
    let policy = policy_allowing_anything_under_the_server();
    for untrusted_first in [false, true] {
        let mut order = [
            ExeStatus::Resolved,
            ExeStatus::Truncated,
            ExeStatus::Resolved,
            ExeStatus::Truncated,
        ];
        if untrusted_first {
            order.reverse();
        }
        let mut l = lab(1600, CG, "c1");
        let keys: Vec<(ProcessKey, ExeStatus)> = order
            .iter()
            .map(|&status| {
                let key = l.s.spawn_untrusted(
                    CG,
                    Some(l.server),
                    prog("/usr/bin/ls", &["ls"], "jovyan"),
                    status,
                );
                (key, status)
            })
            .collect();
        let (findings, report) = run(&policy, &l.s);
        let findings = processes_only(findings);
        let expected: Vec<ProcessKey> = keys
            .iter()
            .filter(|(_, status)| !status.is_resolved())
            .map(|(key, _)| *key)
            .collect();
        assert_eq!(
            findings.iter().map(|f| f.process).collect::<Vec<_>>(),
            expected,
            "untrusted first: {untrusted_first}"
        );
        let unique = report.policies[0]
            .deviations
            .iter()
            .filter(|d| d.deviation.metadata.kind == DeviationType::Process)
            .count();
        assert_eq!(unique, 1);
    }
}

#[test]
fn an_untrusted_exec_is_another_deviation_than_a_resolved_one_that_reads_the_same() {
    let policy = baseline_policy();
    let mut l = lab(1700, CG, "c1");
    l.s.spawn(CG, Some(l.server), prog("/usr/bin/foo", &["foo"], "jovyan"));
    l.s.spawn_untrusted(
        CG,
        Some(l.server),
        prog("/usr/bin/foo", &["foo"], "jovyan"),
        ExeStatus::Unresolved,
    );
    let (findings, report) = run(&policy, &l.s);
    assert_eq!(findings.len(), 2);
    assert!(findings.iter().all(|f| f.new), "{findings:#?}");
    assert_ne!(findings[0].checksum, findings[1].checksum);
    let devs: Vec<&Deviation> = report.deviations().collect();
    assert_eq!(
        fragment(devs[0]),
        fragment(devs[1]).replace("foo_1", "foo_0"),
        "the public format has no word for an untrusted exe: only the new node's id differs"
    );
    // The untrusted exe is part of the checksum: it is not the fragment's alone.
    let mut spec = devs[1].spec.clone();
    spec.process_policy[0].policy_node.children[0].euser = None;
    let text = serde_json::to_vec(&(DeviationType::Process, &spec)).unwrap();
    assert_ne!(findings[1].checksum, hex::encode(Sha256::digest(&text)));
    assert_eq!(findings[0].reason, None);
    assert!(
        findings[1]
            .reason
            .as_deref()
            .unwrap()
            .starts_with("unresolved executable path `/usr/bin/foo`")
    );
    // A deviation with no untrusted exe keeps the checksum it always had: type and fragment,
    // less the users.
    let mut spec = devs[0].spec.clone();
    spec.process_policy[0].policy_node.children[0].euser = None;
    let text = serde_json::to_vec(&(DeviationType::Process, &spec)).unwrap();
    assert_eq!(findings[0].checksum, hex::encode(Sha256::digest(&text)));
}

/// A notebook whose server runs a fileless `worker` that starts a shell.
fn with_a_fileless_worker(first_pid: u32, container_id: &str) -> Lab {
    let mut l = lab(first_pid, CG, container_id);
    let worker = l.s.spawn_untrusted(
        CG,
        Some(l.server),
        prog("memfd:worker", &["worker"], "jovyan"),
        ExeStatus::Fileless,
    );
    l.s.spawn(CG, Some(worker), prog("/usr/bin/dash", &["sh"], "jovyan"));
    l
}

#[test]
fn a_policy_learned_from_a_fileless_exec_never_allows_it() {
    let baseline = with_a_fileless_worker(1800, "c1");
    let fps = fingerprints(&baseline.s.events);
    let learned = serde_json::to_string(&fps[0].spec.process_policy).unwrap();
    assert!(learned.contains(r#""exe":["memfd:worker"]"#), "{learned}");
    let policy = create_policy(&fps, Some("learned"), Mode::Audit).unwrap();

    // The same behaviour again: the fileless exec deviates, and the shell it starts with it.
    let again = with_a_fileless_worker(1900, "c2");
    let (findings, report) = run(&policy, &again.s);
    assert_eq!(findings.len(), 2, "{findings:#?}");
    assert!(
        findings[0]
            .reason
            .as_deref()
            .unwrap()
            .starts_with("fileless executable `memfd:worker`")
    );
    assert_eq!(findings[1].reason, None, "the shell is deviant by descent");

    // Merging the deviations, as a user would to allow them, allows nothing more: the policy
    // learns the fragment (so it is no longer relevant), but the exec still deviates.
    let mut merger = Merger::new(policy.clone());
    for d in report.deviations() {
        merger.merge(&Document::Deviation(d.clone())).unwrap();
    }
    let merged = merger.finish();
    let (findings, report) = run(&merged, &again.s);
    assert_eq!(findings.len(), 2, "{findings:#?}");
    assert!(
        report.policies[0].deviations.iter().all(|d| !d.relevant),
        "{report:#?}"
    );

    // Replacing the policy mid-stream maps the running fileless process again: still deviant,
    // so what it starts next is too.
    let mut l = with_a_fileless_worker(2000, "c3");
    let mut m = matcher(&policy);
    m.observe_all(&l.s.events);
    let mut enforced = merged.clone();
    set_mode(&mut enforced, Mode::Enforce);
    m.set_policy(&enforced).unwrap();
    let worker =
        l.s.events
            .iter()
            .rev()
            .find_map(|e| match &e.body {
                guardlab_events::EventBody::Exec(x) if !x.exe_status.is_resolved() => Some(x.key),
                _ => None,
            })
            .unwrap();
    let before = l.s.events.len();
    l.s.spawn(CG, Some(worker), prog("/usr/bin/dash", &["sh"], "jovyan"));
    let findings: Vec<Finding> = l.s.events[before..]
        .iter()
        .flat_map(|e| m.observe(e))
        .collect();
    assert_eq!(findings.len(), 1, "{findings:#?}");
}

#[test]
fn an_investigation_says_which_executable_was_untrusted() {
    let policy = policy_allowing_anything_under_the_server();
    let l = with_a_fileless_worker(2100, "c1");
    let investigation =
        crate::trace::investigate(std::slice::from_ref(&policy), &l.s.events).unwrap();
    let text = investigation.render_text();
    assert!(
        text.contains("why: fileless executable `memfd:worker`: no exe glob allows it"),
        "{text}"
    );
    assert!(
        text.contains("(exe memfd:worker: fileless executable)"),
        "{text}"
    );
    let json = serde_json::to_value(&investigation).unwrap();
    let worker = json["deviations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["type"] == "process")
        .unwrap();
    assert_eq!(
        worker["reason"],
        "fileless executable `memfd:worker`: no exe glob allows it (fail closed)"
    );
    let chain = &worker["chain"];
    assert_eq!(chain[1]["exeStatus"], "fileless", "{chain}");
    assert!(chain[0].get("exeStatus").is_none(), "{chain}");
}
