//! Streams as a recording or a broken sensor may give them, read from NDJSON as the CLI reads
//! them: the engine never panics on them and never mixes up two containers.

use guardlab_engine::deviation::find_deviations;
use guardlab_engine::fingerprint::{FingerprintBuilder, fingerprint_groups};
use guardlab_engine::model::Mode;
use guardlab_engine::policy::create_policy;
use guardlab_engine::sort_events;
use guardlab_engine::trace::investigate;
use guardlab_events::{Event, read_ndjson};

fn events(text: &str) -> Vec<Event> {
    read_ndjson(text.as_bytes()).expect("a well-formed stream")
}

/// Container 1 execs key [10,10]; a connect by [10,10] is tagged with container 2, which has
/// its own process. This made `fingerprint`, `deviations` and `investigate` exit 101.
const CROSS_CONTAINER: &str = r#"{"v":1,"ts":1,"type":"container","cgroup_id":1,"container_id":"c1","container_name":"one","image":"app:1"}
{"v":1,"ts":2,"type":"container","cgroup_id":2,"container_id":"c2","container_name":"two","image":"app:1"}
{"v":1,"ts":3,"type":"exec","key":[10,10],"cgroup_id":1,"pid":10,"ns_pid":1,"exe":"/bin/a","argv":["a"],"uid":0,"euid":0}
{"v":1,"ts":4,"type":"exec","key":[20,20],"cgroup_id":2,"pid":20,"ns_pid":1,"exe":"/bin/b","argv":["b"],"uid":0,"euid":0}
{"v":1,"ts":5,"type":"connect","process":[10,10],"cgroup_id":2,"protocol":"TCP","remote_ip":"198.18.0.9","remote_port":443}
"#;

#[test]
fn a_process_named_by_another_containers_event_does_not_crash_anything() {
    let events = events(CROSS_CONTAINER);
    let mut builder = FingerprintBuilder::new();
    builder.observe_all(&events);
    assert_eq!(builder.stats().unknown_process_connections, 1);
    let groups = fingerprint_groups(&events);
    assert_eq!(groups.len(), 1);
    let fps = &groups[0].data.fingerprints;
    assert_eq!(fps.len(), 2);
    let two = fps
        .iter()
        .find(|f| f.metadata.container_id.as_deref() == Some("c2"))
        .unwrap();
    assert_eq!(two.spec.process_policy[0].id, "b_0");
    assert!(
        two.spec.network_policy.egress[0].processes.is_empty(),
        "container 2 never saw [10,10] start: any process"
    );
    let one = fps
        .iter()
        .find(|f| f.metadata.container_id.as_deref() == Some("c1"))
        .unwrap();
    assert!(one.spec.network_policy.egress.is_empty());

    let policy = create_policy(fps, None, Mode::Audit).unwrap();
    let report = find_deviations(std::slice::from_ref(&policy), &events).unwrap();
    assert_eq!(report.unique(), 0);
    assert_eq!(report.policies[0].containers, 2);
    let investigation = investigate(&[policy], &events).unwrap();
    assert!(investigation.deviations.is_empty());

    // Against a policy that knows only `b`: `a`'s container deviates, and its connection,
    // tagged with container 2, is one of an unknown process there.
    let mut narrowed = create_policy(std::slice::from_ref(two), None, Mode::Audit).unwrap();
    narrowed.spec.network_policy.egress.clear();
    let report = find_deviations(std::slice::from_ref(&narrowed), &events).unwrap();
    let kinds: Vec<String> = report
        .deviations()
        .map(|d| d.metadata.kind.to_string())
        .collect();
    assert_eq!(kinds, ["process", "egress"]);
    let egress = report.deviations().nth(1).unwrap();
    let node = &egress.spec.network_policy.as_ref().unwrap().egress[0];
    assert!(node.processes.is_empty() && egress.spec.process_policy.is_empty());
    let investigation = investigate(&[narrowed], &events).unwrap();
    assert_eq!(investigation.deviations.len(), 2);
    assert!(
        investigation.deviations[1].chain.is_empty(),
        "no chain in container 2 leads to [10,10]"
    );
    assert!(!investigation.render_text().is_empty());
}

/// A child's exec delivered before its parent's (per-CPU buffers drained one after another).
const SHUFFLED: &str = r#"{"v":1,"ts":1,"type":"container","cgroup_id":1,"container_id":"c1","container_name":"one","image":"app:1"}
{"v":1,"ts":4,"type":"exec","key":[11,11],"cgroup_id":1,"pid":11,"ns_pid":2,"parent":[10,10],"exe":"/bin/child","argv":["child"],"uid":0,"euid":0}
{"v":1,"ts":2,"type":"exec","key":[10,10],"cgroup_id":1,"pid":10,"ns_pid":1,"exe":"/bin/server","argv":["server"],"uid":0,"euid":0}
{"v":1,"ts":3,"type":"fork","key":[11,11],"cgroup_id":1,"pid":11,"ns_pid":2,"parent":[10,10]}
"#;

#[test]
fn a_stream_out_of_time_order_is_counted_and_can_be_sorted() {
    let mut events = events(SHUFFLED);
    let policy_of = |events: &[Event]| {
        let groups = fingerprint_groups(events);
        create_policy(&groups[0].data.fingerprints, None, Mode::Audit).unwrap()
    };
    let mut builder = FingerprintBuilder::new();
    builder.observe_all(&events);
    assert_eq!(builder.stats().out_of_order_events, 2);
    assert_eq!(
        policy_of(&events).spec.process_policy.len(),
        2,
        "taken as given: a bogus root"
    );

    sort_events(&mut events);
    let mut builder = FingerprintBuilder::new();
    builder.observe_all(&events);
    assert_eq!(builder.stats().out_of_order_events, 0);
    let policy = policy_of(&events);
    assert_eq!(policy.spec.process_policy.len(), 1);
    assert_eq!(
        policy.spec.process_policy[0].children.as_ref().unwrap()[0].id,
        "child_0"
    );
    let report = find_deviations(&[policy], &events).unwrap();
    assert_eq!(report.unique(), 0);
    assert_eq!(report.stats.out_of_order_events, 0);
}

#[test]
fn a_policy_for_another_image_is_not_applied() {
    let events = events(CROSS_CONTAINER);
    let groups = fingerprint_groups(&events);
    let mut policy = create_policy(&groups[0].data.fingerprints, None, Mode::Audit).unwrap();
    policy.spec.container_selector.as_mut().unwrap().image = Some("nginx:1".into());
    let report = find_deviations(&[policy], &events).unwrap();
    let p = &report.policies[0];
    assert_eq!(p.status, guardlab_engine::policy::PolicyStatus::NotApplied);
    assert!(!p.applied);
    assert_eq!((p.unique, p.total, p.containers), (0, 0, 0));
}
