//! The engine against streams an attacker who controls the pod can make
//! (`guardlab_test_support::attack`): its state stays within its limits, measured by its own
//! count of what it keeps (`state_size`, deterministic; not the process's memory), its output
//! grows no faster than the events, each limit met raises one flag, and past a limit it keeps
//! guarding. Times are measured by the `attacks` benchmark, not here.

use std::collections::BTreeSet;

use guardlab_engine::deviation::{DeviationMatcher, Finding};
use guardlab_engine::document::{Document, load_documents, to_yaml_documents};
use guardlab_engine::fingerprint::FingerprintBuilder;
use guardlab_engine::limits::{LimitFlag, LimitSetting, Limits, StateSize};
use guardlab_engine::merge::Merger;
use guardlab_engine::model::{Mode, Policy, ResponseAction};
use guardlab_engine::policy::create_policy;
use guardlab_engine::trace::Investigator;
use guardlab_events::{Event, EventBody};
use guardlab_test_support::attack::{self, Attack};

fn policy(mode: Mode) -> Policy {
    let mut b = FingerprintBuilder::new();
    b.observe_all(&attack::baseline());
    create_policy(&b.finish(), Some("notebook-policy"), mode).expect("a policy")
}

fn limits(settings: &[&str]) -> Limits {
    let settings: Vec<LimitSetting> = settings.iter().map(|s| s.parse().unwrap()).collect();
    Limits::with(&settings)
}

/// Everything the engine makes of a stream, within `limits`.
struct Run {
    fingerprint: StateSize,
    matcher: StateSize,
    investigator: StateSize,
    /// The deviations as YAML, and the fingerprints.
    deviations_yaml: String,
    fingerprint_yaml: String,
    findings: Vec<Finding>,
    flags: Vec<LimitFlag>,
    unique: usize,
    trace_text: String,
}

fn run(events: &[Event], policy: &Policy, limits: Limits) -> Run {
    let mut b = FingerprintBuilder::new().with_limits(limits);
    b.observe_all(events);
    let fps: Vec<Document> = b
        .finish_grouped()
        .into_iter()
        .map(Document::FingerprintGroup)
        .collect();
    let mut m = DeviationMatcher::with_limits(std::slice::from_ref(policy), limits).unwrap();
    let mut inv = Investigator::with_limits(std::slice::from_ref(policy), limits).unwrap();
    let mut findings = Vec::new();
    for e in events {
        findings.extend(m.observe(e));
        inv.observe(e);
    }
    let report = m.report();
    let devs: Vec<Document> = report
        .deviations()
        .cloned()
        .map(Document::Deviation)
        .collect();
    // The investigator's matcher meets what the matcher meets, and what following processes
    // for traces adds.
    let mut flags = inv.matcher_mut().report().stats.limits;
    for f in &report.stats.limits {
        assert!(flags.iter().any(|g| g.limit == f.limit), "{f:?}");
    }
    // And the fingerprint's own (`connections`).
    for f in &b.stats().limits {
        if !flags.iter().any(|g| g.limit == f.limit) {
            flags.push(f.clone());
        }
    }
    Run {
        fingerprint: b.state_size(),
        matcher: m.state_size(),
        investigator: inv.state_size(),
        deviations_yaml: to_yaml_documents(&devs),
        fingerprint_yaml: to_yaml_documents(&fps),
        findings,
        flags,
        unique: report.unique(),
        trace_text: inv.finish().render_text(),
    }
}

/// The one flag of a limit; every flag is the only one of its limit and pod.
fn flag<'a>(r: &'a Run, limit: &str) -> &'a LimitFlag {
    let names: Vec<&str> = r.flags.iter().map(|f| f.limit).collect();
    let unique: BTreeSet<&str> = names.iter().copied().collect();
    assert_eq!(unique.len(), names.len(), "one flag per limit: {names:?}");
    r.flags
        .iter()
        .find(|f| f.limit == limit)
        .unwrap_or_else(|| panic!("no {limit} flag among {names:?}"))
}

fn no_flag(r: &Run, limit: &str) {
    assert!(r.flags.iter().all(|f| f.limit != limit), "{:#?}", r.flags);
}

const MB: u64 = 1_000_000;

#[test]
fn deep_fork_chains_cost_the_same_at_1000_and_10000_levels() {
    let policy = policy(Mode::Enforce);
    let a = run(
        &attack::deep_fork_chain(1_000).events,
        &policy,
        Limits::default(),
    );
    let b = run(
        &attack::deep_fork_chain(10_000).events,
        &policy,
        Limits::default(),
    );
    for r in [&a, &b] {
        let f = flag(r, "process-depth");
        assert!(f.message.contains("process-depth=32"), "{}", f.message);
        assert!(r.fingerprint.bytes < MB, "{:?}", r.fingerprint);
        assert!(r.matcher.bytes < MB, "{:?}", r.matcher);
        // The investigator follows the running shells, all 10,000 of them at the deepest.
        assert!(r.investigator.bytes < 16 * MB, "{:?}", r.investigator);
    }
    // Past the depth limit the program nodes, deviations and documents stop growing.
    assert_eq!(a.fingerprint, b.fingerprint);
    assert_eq!(a.matcher, b.matcher);
    // The same documents, but for the time of the last event.
    let timeless = |text: &str| {
        text.lines()
            .filter(|l| !l.contains("Timestamp"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(a.deviations_yaml, b.deviations_yaml);
    assert_eq!(timeless(&a.fingerprint_yaml), timeless(&b.fingerprint_yaml));
    assert_eq!(flag(&b, "process-depth").count, 9_971);
    // Every shell still deviates: each exec is a finding, the deepest all of one deviation.
    let shells = b
        .findings
        .iter()
        .filter(|f| f.kind.to_string() == "process")
        .count();
    assert!(shells >= 10_000, "{shells}");
    // Each deviation carries its own node only: 31 levels of shells under bash, and the
    // deviant bash itself, are 33 deviations of one node each.
    assert_eq!(b.unique, 33);
    assert_eq!(b.deviations_yaml.matches("- name:").count(), 33);
    // The trace of `true`, under the deepest shell, shows the first levels and what it left
    // out of the 10,003 processes from the server down to it.
    assert!(
        b.trace_text.contains("… 9971 processes omitted …"),
        "{}",
        &b.trace_text[b.trace_text.len().saturating_sub(3000)..]
    );
}

#[test]
fn the_documents_of_the_deepest_chain_read_back() {
    // 48 levels, the most `process-depth` takes: every document still reads back.
    let policy = policy(Mode::Audit);
    let r = run(
        &attack::deep_fork_chain(200).events,
        &policy,
        limits(&["process-depth=48"]),
    );
    for text in [&r.fingerprint_yaml, &r.deviations_yaml] {
        let docs = load_documents("chain.yaml", text).unwrap_or_else(|d| panic!("{d:#?}"));
        assert!(!docs.is_empty());
    }
    let depth = |text: &str| {
        text.lines()
            .filter(|l| l.trim_start().starts_with("- name: sh"))
            .map(|l| l.len() - l.trim_start().len())
            .max()
            .unwrap_or(0)
    };
    assert!(
        depth(&r.fingerprint_yaml) > 90,
        "48 levels deep: {}",
        depth(&r.fingerprint_yaml)
    );
}

#[test]
fn merging_the_deviations_of_a_chain_in_order_gives_the_chain() {
    let policy = policy(Mode::Audit);
    let events = attack::deep_fork_chain(100).events;
    let r = run(&events, &policy, Limits::default());
    let mut merger = Merger::new(policy.clone());
    for doc in load_documents("devs.yaml", &r.deviations_yaml).unwrap() {
        merger.merge(&doc).unwrap();
    }
    let merged = merger.finish();
    let again = run(&events, &merged, Limits::default());
    assert_eq!(again.unique, 0, "{}", again.deviations_yaml);
}

#[test]
fn one_process_exec_ing_10000_times_is_a_few_nodes() {
    let policy = policy(Mode::Enforce);
    let r = run(
        &attack::exec_again(10_000).events,
        &policy,
        Limits::default(),
    );
    assert_eq!(flag(&r, "process-depth").count, 9_970);
    for size in [r.fingerprint, r.matcher, r.investigator] {
        assert!(size.bytes < MB && size.entries < 1_000, "{size:?}");
    }
    assert!(
        r.deviations_yaml.len() < 20_000,
        "{}",
        r.deviations_yaml.len()
    );
}

#[test]
fn a_storm_at_the_benchmark_s_rate_drops_nothing() {
    // 2,000 execs a second, as the latency benchmark drives them, for 20 seconds.
    let policy = policy(Mode::Enforce);
    let storm = attack::exec_storm(40_000, 2_000, 10);
    let r = run(&storm.events, &policy, Limits::default());
    no_flag(&r, "events-per-second");
    let storm_execs: BTreeSet<_> = storm
        .events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::Exec(x) if x.exe.starts_with("/tmp/storm/") => Some(x.key),
            _ => None,
        })
        .collect();
    assert_eq!(storm_execs.len(), 40_000);
    let found = r
        .findings
        .iter()
        .filter(|f| storm_execs.contains(&f.process))
        .count();
    assert_eq!(found, 40_000, "every exec of the storm is a finding");
}

#[test]
fn a_storm_past_the_rate_drops_and_flags_and_its_programs_are_still_judged() {
    // 1,000 programs, 30,000 execs a second (90,000 events, 60,000 of them counted): past a
    // limit of 20,000 events a second, and past 100 programs under one shell.
    let policy = policy(Mode::Enforce);
    let storm = attack::exec_storm(20_000, 30_000, 1_000);
    let r = run(
        &storm.events,
        &policy,
        limits(&["events-per-second=20000", "children=100"]),
    );
    let rate = flag(&r, "events-per-second");
    assert!(rate.count > 10_000, "{rate:?}");
    let children = flag(&r, "children");
    assert!(children.count > 0);
    // Programs with no node of their own still deviate, each its own deviation.
    let names: BTreeSet<&str> = r
        .findings
        .iter()
        .filter(|f| f.kind.to_string() == "process")
        .map(|f| f.deviation_uid.as_str())
        .collect();
    assert!(names.len() > 500, "{}", names.len());
    assert!(r.fingerprint.entries < 2_000, "{:?}", r.fingerprint);
}

#[test]
fn a_flood_of_connections_is_kept_within_the_deviation_and_log_limits() {
    // 20,000 connects, each to a remote of its own, against 2,000 deviations and log lines.
    let mut policy = policy(Mode::Enforce);
    // Kill the scanner for each of its deviations: decisions go on past the log limit.
    policy
        .spec
        .response
        .as_mut()
        .unwrap()
        .actions
        .push(ResponseAction::AgentKillProcess(
            serde_yaml::from_str("processSelector: {name: [scan]}").unwrap(),
        ));
    let flood = attack::connect_flood(20_000);
    // One process's connections fill the report here: its own budget is set above them.
    let small = limits(&[
        "deviations=2000",
        "deviations-per-process=100000",
        "log-entries=1000",
        "connections=1000",
    ]);
    let r = run(&flood.events, &policy, small);
    assert_eq!(r.unique, 2_000);
    assert!(flag(&r, "deviations").count >= 18_000);
    assert!(flag(&r, "log-entries").count > 0);
    flag(&r, "connections");
    let killed = r
        .findings
        .iter()
        .filter(|f| !f.decisions.is_empty())
        .count();
    assert!(
        killed >= 20_000,
        "every connection is still decided on: {killed}"
    );
    // Twice the flood: the state is the same, and so is the report.
    let twice = run(&attack::connect_flood(40_000).events, &policy, small);
    assert_eq!(twice.unique, 2_000);
    let grew = |a: StateSize, b: StateSize| b.bytes as f64 / a.bytes as f64;
    assert!(
        grew(r.matcher, twice.matcher) < 1.05,
        "{:?} {:?}",
        r.matcher,
        twice.matcher
    );
    assert!(grew(r.fingerprint, twice.fingerprint) < 1.05);
    assert!(grew(r.investigator, twice.investigator) < 1.05);
}

#[test]
fn a_flood_from_one_process_cannot_push_the_real_attack_out_of_the_report() {
    let policy = policy(Mode::Enforce);
    let r = run(
        &attack::connect_flood_then_miner(20_000).events,
        &policy,
        Limits::default(),
    );
    let per_process = Limits::default().deviations_per_process as usize;
    // What the terminal, the scanner's program and the miner deviate in, with the scanner's
    // first connections.
    let without_flood = run(
        &attack::connect_flood_then_miner(0).events,
        &policy,
        Limits::default(),
    );
    assert_eq!(r.unique, without_flood.unique + per_process);
    assert_eq!(
        flag(&r, "deviations-per-process").count as usize,
        20_000 - per_process
    );
    no_flag(&r, "deviations");
    no_flag(&r, "log-entries");
    assert!(r.deviations_yaml.contains("/home/jovyan/minerd"));
    assert!(r.deviations_yaml.contains("198.18.2.30/32"));
    // Every connection was still found and flagged as it came.
    let flagged = r.findings.iter().filter(|f| !f.flags.is_empty()).count();
    assert!(flagged > 20_000, "{flagged}");
}

#[test]
fn output_grows_linearly_with_the_events() {
    // Below the limits, every connection is a deviation of its own: the report grows as the
    // stream does, by the same bytes per deviation.
    let policy = policy(Mode::Audit);
    let one_process = limits(&["deviations-per-process=100000"]);
    let a = run(&attack::connect_flood(1_000).events, &policy, one_process);
    let b = run(&attack::connect_flood(4_000).events, &policy, one_process);
    let per = |r: &Run| r.deviations_yaml.len() as f64 / r.unique as f64;
    assert!(
        (per(&b) / per(&a) - 1.0).abs() < 0.05,
        "{} {}",
        per(&a),
        per(&b)
    );
    assert!(b.unique >= 4_000);
}

#[test]
fn thousands_of_dns_names_are_kept_within_their_limits() {
    let policy = policy(Mode::Audit);
    // One tool connects to every name: its own budget of deviations is set above them.
    let small = limits(&[
        "dns-names=1000",
        "names-per-address=8",
        "deviations-per-process=100000",
    ]);
    let many = run(&attack::dns_names(3_000, false).events, &policy, small);
    // The baseline's two names, then 998 of the attack's.
    assert_eq!(flag(&many, "dns-names").count, 2_002);
    // Past the limit an address is named by itself.
    assert!(many.deviations_yaml.contains("cidr: 198.19.11.183/32"));
    assert!(many.deviations_yaml.contains("h997.exfil.example.com"));
    assert!(!many.deviations_yaml.contains("h998.exfil.example.com"));

    let one = run(&attack::dns_names(3_000, true).events, &policy, small);
    assert_eq!(flag(&one, "names-per-address").count, 2_992);
    no_flag(&one, "dns-names");
    // The names of the one address are the first 8: each deviation carries them, no more.
    let doc = one.deviations_yaml.split("---").last().unwrap();
    assert_eq!(doc.matches("dnsSelector").count(), 8, "{doc}");
    assert!(one.matcher.bytes < MB, "{:?}", one.matcher);
}

#[test]
fn megabytes_of_one_repeated_event_are_dropped_past_the_rate() {
    let policy = policy(Mode::Enforce);
    let a = attack::repeated_event(5_000_000);
    let r = run(&a.events, &policy, limits(&["events-per-second=1000"]));
    let repeated = a.events.len() - attack::repeated_event(0).events.len();
    assert!(flag(&r, "events-per-second").count as usize >= repeated - 1_000);
    for size in [r.fingerprint, r.matcher, r.investigator] {
        assert!(size.bytes < MB, "{size:?}");
    }
}

#[test]
fn a_full_pod_keeps_nothing_new_and_still_finds_what_deviates() {
    // A pod's state of 1 MB: the deep chain fills it with the investigator's processes.
    let policy = policy(Mode::Enforce);
    let mut events = attack::deep_fork_chain(10_000).events;
    // Then the miner, as in the tutorial.
    let tail = attack::repeated_event(0).events;
    events.push(tail.last().unwrap().clone());
    let r = run(&events, &policy, limits(&["state-mb=1"]));
    let full = flag(&r, "state-mb");
    assert!(full.count > 0);
    assert!(r.investigator.bytes < 2 * MB, "{:?}", r.investigator);
    let miner = r
        .findings
        .iter()
        .find(|f| f.process.pid() == tail_pid(&tail))
        .expect("the miner still deviates");
    assert!(miner.new);
}

fn tail_pid(events: &[Event]) -> u32 {
    match &events.last().unwrap().body {
        EventBody::Exec(x) => x.pid,
        other => panic!("{other:?}"),
    }
}

#[test]
fn every_attack_of_the_benchmark_is_bounded_at_its_full_size() {
    // The cheap ones at their full size, here too (the others above, smaller).
    let policy = policy(Mode::Enforce);
    for recipe in attack::all() {
        if !(recipe.name.contains("one address") || recipe.name.contains("exec'ing")) {
            continue;
        }
        let a: Attack = (recipe.make)();
        let r = run(&a.events, &policy, Limits::default());
        for size in [r.fingerprint, r.matcher, r.investigator] {
            assert!(size.bytes < 4 * MB, "{}: {size:?}", a.name);
        }
    }
}
