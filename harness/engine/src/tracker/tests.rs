//! Ancestry across containers, event order and DNS names: the tracker's rules, through the
//! fingerprints and deviations that depend on them.

use guardlab_events::{ContainerInfo, Event, ProcessKey, Protocol};
use guardlab_test_support::stream::{Stream, pod_container, prog};

use crate::deviation::find_deviations;
use crate::fingerprint::{FingerprintBuilder, fingerprints};
use crate::model::{Fingerprint, Mode, Peer, ProcessNode};
use crate::policy::create_policy;

const A: u64 = 1;
const B: u64 = 2;

fn two_containers() -> Stream {
    let mut s = Stream::new(1_732_780_800, 100);
    s.container(pod_container(A, "aaaa", "app:1", "app-1-a"));
    s.container(ContainerInfo {
        container_name: "other".into(),
        ..pod_container(B, "bbbb", "other:1", "other-1-b")
    });
    s
}

fn of(fps: &[Fingerprint], container_id: &str) -> Fingerprint {
    fps.iter()
        .find(|f| f.metadata.container_id.as_deref() == Some(container_id))
        .unwrap_or_else(|| panic!("no fingerprint for {container_id}"))
        .clone()
}

fn tree(nodes: &[ProcessNode]) -> Vec<String> {
    fn walk(nodes: &[ProcessNode], depth: usize, out: &mut Vec<String>) {
        for n in nodes {
            out.push(format!("{}{}", "  ".repeat(depth), n.id));
            walk(n.children.as_deref().unwrap_or_default(), depth + 1, out);
        }
    }
    let mut out = Vec::new();
    walk(nodes, 0, &mut out);
    out
}

#[test]
fn a_connection_tagged_with_another_container_names_no_process_of_the_first() {
    // The reviewer's crash: A's process connects, but the event is tagged with B's cgroup.
    let mut s = two_containers();
    let a = s.spawn(A, None, prog("/bin/app", &["app"], "root"));
    s.spawn(B, None, prog("/bin/other", &["other"], "root"));
    s.connect(
        B,
        a,
        Protocol::Tcp,
        ("198.18.0.3", 40000),
        ("198.18.0.9", 443),
    );
    let mut b = FingerprintBuilder::new();
    b.observe_all(&s.events);
    let fps = b.finish();
    assert_eq!(
        of(&fps, "bbbb").spec.network_policy.egress[0].processes,
        Vec::<String>::new(),
        "a process B never started: any"
    );
    assert!(of(&fps, "aaaa").spec.network_policy.egress.is_empty());
    assert_eq!(b.stats().unknown_process_connections, 1);

    // Deviations and investigation go through the same bookkeeping.
    let policy = create_policy(&[of(&fps, "bbbb")], None, Mode::Audit).unwrap();
    let report = find_deviations(std::slice::from_ref(&policy), &s.events).unwrap();
    assert_eq!(report.unique(), 0, "{report:#?}");
    crate::trace::investigate(&[policy], &s.events).unwrap();
}

#[test]
fn a_listening_socket_or_exit_tagged_with_another_container_does_not_touch_the_first() {
    let mut s = two_containers();
    let a = s.spawn(A, None, prog("/bin/app", &["app"], "root"));
    s.spawn(B, None, prog("/bin/other", &["other"], "root"));
    s.listen(B, a, Protocol::Tcp, "0.0.0.0", 9999);
    s.exit(B, a, 0);
    // Still running in A: its connection is still its own.
    s.connect(
        A,
        a,
        Protocol::Tcp,
        ("198.18.0.2", 40000),
        ("198.18.0.9", 443),
    );
    let fps = fingerprints(&s.events);
    let fa = of(&fps, "aaaa");
    assert_eq!(fa.spec.process_policy[0].listening_sockets, None);
    assert_eq!(fa.spec.network_policy.egress[0].processes, ["app_0"]);
    assert_eq!(
        of(&fps, "bbbb").spec.process_policy[0].listening_sockets,
        None
    );
}

#[test]
fn a_key_that_execs_again_in_another_container_starts_a_root_there() {
    let mut s = two_containers();
    let a = s.spawn(A, None, prog("/bin/app", &["app"], "root"));
    s.spawn(B, None, prog("/bin/other", &["other"], "root"));
    // A process of B whose parent is A's process: a root of B.
    s.spawn(B, Some(a), prog("/bin/child", &["child"], "root"));
    // A's process execs again, tagged with B: a root of B, not a child of `app`.
    s.exec_as(B, a, None, prog("/bin/moved", &["moved"], "root"));
    let fps = fingerprints(&s.events);
    assert_eq!(tree(&of(&fps, "aaaa").spec.process_policy), ["app_0"]);
    assert_eq!(
        tree(&of(&fps, "bbbb").spec.process_policy),
        ["child_0", "moved_0", "other_0"]
    );
}

#[test]
fn a_fork_from_an_unknown_parent_takes_the_parent_its_exec_names() {
    let mut s = Stream::new(1_732_780_800, 100);
    s.container(pod_container(A, "aaaa", "app:1", "app-1-a"));
    let server = ProcessKey(100, 1);
    // The child's fork is seen before the server's exec (it was reported late).
    let child = s.fork(A, server);
    s.exec_as(A, server, None, prog("/bin/server", &["server"], "root"));
    s.exec_as(
        A,
        child,
        Some(server),
        prog("/bin/worker", &["worker"], "root"),
    );
    let fps = fingerprints(&s.events);
    assert_eq!(
        tree(&fps[0].spec.process_policy),
        ["server_0", "  worker_0"]
    );
}

/// A parent and its child, with the child's exec delivered before the parent's.
fn shuffled() -> Vec<Event> {
    let mut s = Stream::new(1_732_780_800, 100);
    s.container(pod_container(A, "aaaa", "app:1", "app-1-a"));
    let server = s.spawn(A, None, prog("/bin/server", &["server"], "root"));
    s.spawn(A, Some(server), prog("/bin/worker", &["worker"], "root"));
    let mut events = s.events;
    // container, exec server, fork worker, exec worker: deliver the exec of the server last.
    let server_exec = events.remove(1);
    events.push(server_exec);
    events
}

#[test]
fn events_out_of_order_are_counted_and_sorting_fixes_the_forest() {
    let events = shuffled();
    let mut b = FingerprintBuilder::new();
    b.observe_all(&events);
    assert_eq!(b.stats().out_of_order_events, 1);
    assert_eq!(
        tree(&b.finish()[0].spec.process_policy),
        ["server_0", "worker_0"],
        "taken as given, the worker is a bogus root"
    );

    let mut sorted = events.clone();
    crate::sort_events(&mut sorted);
    let mut b = FingerprintBuilder::new();
    b.observe_all(&sorted);
    assert_eq!(b.stats().out_of_order_events, 0);
    assert_eq!(
        tree(&b.finish()[0].spec.process_policy),
        ["server_0", "  worker_0"]
    );
}

#[test]
fn sorting_is_stable_for_equal_times() {
    let mut events = shuffled();
    for e in &mut events {
        e.ts = 5;
    }
    let before = events.clone();
    crate::sort_events(&mut events);
    assert_eq!(events, before);
}

fn dns_egress(fp: &Fingerprint) -> Vec<String> {
    fp.spec
        .network_policy
        .egress
        .iter()
        .map(|n| {
            n.to.iter()
                .map(|p| match p {
                    Peer::DnsSelector(names) => names.join("+"),
                    Peer::IpBlock(b) => b.cidr.clone(),
                })
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect()
}

#[test]
fn every_name_of_an_address_is_kept_in_normal_form() {
    let mut s = Stream::new(1_732_780_800, 100);
    s.container(pod_container(A, "aaaa", "app:1", "app-1-a"));
    let app = s.spawn(A, None, prog("/bin/app", &["app"], "root"));
    // Two names behind one address (a CDN); the second answer does not replace the first.
    s.dns(A, "Files.PythonHosted.org.", &["198.18.0.50"]);
    s.dns(A, "pypi.org", &["198.18.0.50"]);
    s.dns(A, "pypi.org.", &["198.18.0.50"]);
    s.connect(
        A,
        app,
        Protocol::Tcp,
        ("198.18.0.2", 40000),
        ("198.18.0.50", 443),
    );
    let fps = fingerprints(&s.events);
    assert_eq!(
        dns_egress(&fps[0]),
        ["files.pythonhosted.org,pypi.org"],
        "both names, sorted, in one node, one dnsSelector each"
    );

    // The same answers in the other order give the same fingerprint.
    let mut t = Stream::new(1_732_780_800, 100);
    t.container(pod_container(A, "aaaa", "app:1", "app-1-a"));
    let app = t.spawn(A, None, prog("/bin/app", &["app"], "root"));
    t.dns(A, "pypi.org", &["198.18.0.50"]);
    t.dns(A, "files.pythonhosted.org", &["198.18.0.50"]);
    t.connect(
        A,
        app,
        Protocol::Tcp,
        ("198.18.0.2", 40000),
        ("198.18.0.50", 443),
    );
    assert_eq!(
        fingerprints(&t.events)[0].spec.network_policy,
        fps[0].spec.network_policy
    );
}

#[test]
fn a_connection_is_allowed_when_any_name_of_its_address_is() {
    let mut s = Stream::new(1_732_780_800, 100);
    s.container(pod_container(A, "aaaa", "app:1", "app-1-a"));
    let app = s.spawn(A, None, prog("/bin/app", &["app"], "root"));
    s.dns(A, "pypi.org", &["198.18.0.50"]);
    s.connect(
        A,
        app,
        Protocol::Tcp,
        ("198.18.0.2", 40000),
        ("198.18.0.50", 443),
    );
    let mut policy = create_policy(&fingerprints(&s.events), None, Mode::Audit).unwrap();
    // Written by hand, in another case and with the root's dot: the same name.
    policy.spec.network_policy.egress[0].to = vec![Peer::DnsSelector(vec!["PyPI.org.".into()])];

    let mut later = Stream::new(1_732_790_000, 500);
    later.container(pod_container(A, "aaaa", "app:1", "app-1-a"));
    let app = later.spawn(A, None, prog("/bin/app", &["app"], "root"));
    later.dns(A, "cdn.example.net", &["198.18.0.60"]);
    later.dns(A, "PYPI.ORG", &["198.18.0.60"]);
    later.connect(
        A,
        app,
        Protocol::Tcp,
        ("198.18.0.2", 40001),
        ("198.18.0.60", 443),
    );
    later.dns(A, "elsewhere.example.net", &["198.18.0.61"]);
    later.connect(
        A,
        app,
        Protocol::Tcp,
        ("198.18.0.2", 40002),
        ("198.18.0.61", 443),
    );
    let report = find_deviations(&[policy], &later.events).unwrap();
    let devs: Vec<String> = report
        .deviations()
        .map(|d| serde_json::to_string(&d.spec.network_policy).unwrap())
        .collect();
    assert_eq!(
        devs,
        [
            r#"{"egress":[{"to":[{"dnsSelector":["elsewhere.example.net"]}],"processes":["app_0"],"ports":[{"protocol":"TCP","port":443}]}]}"#
        ],
        "198.18.0.60 is also pypi.org: allowed"
    );
}
