//! The cryptominer scenario replayed from its SYNTHETIC recording (no lab, no privileges):
//! the recording format, the runner's engine side and the snapshot comparison, checked by the
//! runner and, on the same files, by insta.

mod scenario_common;

use std::collections::BTreeSet;
use std::path::Path;

use guardlab::scenario::recording::{RecordedOn, read_recording, write_recording};
use guardlab::scenario::{RunOptions, RunReport, RunResult, StepResult, run_blocking};
use guardlab_engine::model::DeviationType;
use guardlab_lab_api::Backend;
use scenario_common::*;

fn replay_options(snapshot_dir: &Path, recording: &Path) -> RunOptions {
    RunOptions::replay(
        scenario_file(),
        snapshot_dir.to_path_buf(),
        recording.to_path_buf(),
    )
}

fn replay_synthetic() -> RunReport {
    run_blocking(&replay_options(
        &synthetic_snapshots(),
        &synthetic_recording(),
    ))
}

fn failures(report: &RunReport) -> String {
    report
        .steps
        .iter()
        .filter(|s| s.result != StepResult::Passed)
        .map(|s| {
            format!(
                "{} {:?}: {:?}\n{}",
                s.name,
                s.result,
                s.messages,
                s.diff.clone().unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
        + report.error.as_deref().unwrap_or("")
}

#[test]
fn synthetic_recording_is_what_its_source_generates() {
    let dir = tempfile::tempdir().unwrap();
    let fresh = dir.path().join("synthetic.ndjson");
    write_recording(&fresh, &synthetic()).unwrap();
    let fresh_text = std::fs::read_to_string(&fresh).unwrap();
    if std::env::var_os("GUARDLAB_WRITE_SYNTHETIC").is_some() {
        std::fs::write(synthetic_recording(), &fresh_text).unwrap();
    }
    let committed = std::fs::read_to_string(synthetic_recording())
        .expect("scenarios/cryptominer.synthetic.ndjson: write it with GUARDLAB_WRITE_SYNTHETIC=1");
    assert!(
        committed == fresh_text,
        "scenarios/cryptominer.synthetic.ndjson differs from what tests/scenario_common writes: rewrite it with GUARDLAB_WRITE_SYNTHETIC=1"
    );
    let recording = read_recording(&synthetic_recording()).unwrap();
    assert!(recording.header.synthetic);
    let scenario = guardlab::scenario::file::load_scenario(&scenario_file()).unwrap();
    let names: Vec<&str> = recording.steps.iter().map(|s| s.name.as_str()).collect();
    let expected: Vec<&str> = scenario.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names, expected,
        "one recorded step per step of the scenario"
    );
}

#[test]
fn replay_matches_the_snapshots_checked_by_the_runner_and_by_insta() {
    let report = replay_synthetic();
    assert_eq!(report.result, RunResult::Pass, "{}", failures(&report));
    assert!(
        report.steps.iter().all(|s| s.result == StepResult::Passed),
        "{}",
        failures(&report)
    );
    // The same files, through insta.
    let names: BTreeSet<&str> = report.snapshots.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "attack-deviations",
            "fingerprints",
            "policy",
            "terminal-deviations",
            "trace"
        ])
    );
    for (name, text) in &report.snapshots {
        insta::with_settings!({
            snapshot_path => synthetic_snapshots(),
            prepend_module_to_snapshot => false,
            omit_expression => true,
        }, {
            insta::assert_snapshot!(name.as_str(), text);
        });
    }
}

#[test]
fn the_baseline_against_its_own_policy_has_no_deviation() {
    let report = replay_synthetic();
    let create = report
        .steps
        .iter()
        .find(|s| s.name == "create-policy")
        .unwrap();
    assert_eq!(create.result, StepResult::Passed, "{:?}", create.messages);
    // Before the terminal, the policy had seen the whole baseline and found nothing: the first
    // deviations are the terminal's.
    let terminal = &report.snapshots["terminal-deviations"];
    assert!(
        terminal.contains("unique: 2\n") && terminal.contains("total: 2\n"),
        "{terminal}"
    );
}

/// The programs of the deviant processes, and the remotes of the egress deviations, of a run.
fn deviant_programs(report: &RunReport) -> (BTreeSet<String>, BTreeSet<String>) {
    let inv = report.investigation.as_ref().expect("an investigation");
    let mut programs = BTreeSet::new();
    let mut remotes = BTreeSet::new();
    for d in &inv.deviations {
        let root = d.chain.first().expect("every deviation has a trace");
        assert_eq!(
            root.ns_pid, 1,
            "the trace of {} starts at the container's first process",
            d.deviation_uid
        );
        match d.kind {
            DeviationType::Process => {
                let last = d.chain.last().unwrap();
                assert!(last.deviant, "{}", d.deviation_uid);
                programs.insert(last.name.clone());
            }
            DeviationType::Egress => {
                let c = d
                    .connection
                    .as_ref()
                    .expect("an egress deviation has its connection");
                remotes.insert(c.dns.clone().unwrap_or_else(|| c.ip.clone()));
            }
            DeviationType::Ingress => {}
        }
    }
    (programs, remotes)
}

fn replay_real() -> RunReport {
    run_blocking(&replay_options(
        &root().join("snapshots/cryptominer"),
        &root().join("scenarios/cryptominer.ndjson"),
    ))
}

#[test]
fn the_recording_of_a_live_run_replays_against_the_committed_snapshots() {
    let recording = read_recording(&root().join("scenarios/cryptominer.ndjson")).unwrap();
    assert!(
        !recording.header.synthetic
            && recording.header.backend == RecordedOn::Backend(Backend::Local),
        "{:?}",
        recording.header
    );
    let report = replay_real();
    assert_eq!(report.result, RunResult::Pass, "{}", failures(&report));
    for (name, text) in &report.snapshots {
        insta::with_settings!({
            snapshot_path => root().join("snapshots/cryptominer"),
            prepend_module_to_snapshot => false,
            omit_expression => true,
        }, {
            insta::assert_snapshot!(name.as_str(), text);
        });
    }
    attack_deviates_for_every_program_and_both_remotes(&report);
}

#[test]
fn the_attack_deviates_for_every_program_and_both_remotes_with_traces() {
    attack_deviates_for_every_program_and_both_remotes(&replay_synthetic());
}

fn attack_deviates_for_every_program_and_both_remotes(report: &RunReport) {
    let (programs, remotes) = deviant_programs(report);
    for p in [
        "bash", "ls", "id", "sudo", "curl", "ps", "wget", "tar", "gzip", "minerd",
    ] {
        assert!(
            programs.contains(p),
            "no process deviation for {p}: {programs:?}"
        );
    }
    for r in ["sourceforge.net", "fakeminingpool.example.com"] {
        assert!(
            remotes.contains(r),
            "no egress deviation to {r}: {remotes:?}"
        );
    }
    // Enforce mode raised a red flag for each deviation of the attack, audit mode none.
    let d = report.deviations.as_ref().unwrap();
    for p in ["sudo", "curl", "wget", "tar", "minerd"] {
        assert!(
            d.flags.iter().any(|f| f.process == p),
            "no red flag for {p}"
        );
    }
    assert!(
        d.flags
            .iter()
            .all(|f| f.process != "ls" && f.process != "bash"),
        "audit mode raises no flag"
    );
    assert!(d.decisions.is_empty(), "the default policy only flags");
}

#[test]
fn a_changed_snapshot_fails_the_step_with_a_diff() {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(synthetic_snapshots()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "snap") {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    let target = dir.path().join("attack-deviations.snap");
    let text = std::fs::read_to_string(&target).unwrap();
    std::fs::write(&target, text.replace("minerd", "xmrig")).unwrap();

    let report = run_blocking(&replay_options(dir.path(), &synthetic_recording()));
    assert_eq!(report.result, RunResult::Mismatch);
    let bad: Vec<_> = report
        .steps
        .iter()
        .filter(|s| s.result != StepResult::Passed)
        .collect();
    assert_eq!(bad.len(), 1, "{}", failures(&report));
    assert_eq!(bad[0].name, "attack-deviations");
    assert_eq!(bad[0].result, StepResult::Mismatch);
    let diff = bad[0].diff.as_deref().unwrap();
    assert!(
        diff.contains("-")
            && diff.contains("xmrig")
            && diff.contains("+")
            && diff.contains("minerd"),
        "{diff}"
    );

    // --update-snapshots writes it back.
    let mut options = replay_options(dir.path(), &synthetic_recording());
    options.update_snapshots = true;
    let report = run_blocking(&options);
    assert_eq!(report.result, RunResult::Pass, "{}", failures(&report));
    assert_eq!(
        std::fs::read_to_string(&target)
            .unwrap()
            .split("\n---\n")
            .nth(1),
        text.split("\n---\n").nth(1),
        "the rewritten snapshot has the recorded contents"
    );
}

#[test]
fn a_recording_can_be_recorded_again_from_a_replay() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("again.ndjson");
    let mut options = replay_options(&synthetic_snapshots(), &synthetic_recording());
    options.record = Some(copy.clone());
    let report = run_blocking(&options);
    assert_eq!(report.result, RunResult::Pass, "{}", failures(&report));
    assert_eq!(
        read_recording(&copy).unwrap(),
        read_recording(&synthetic_recording()).unwrap()
    );
}

#[test]
fn a_recording_of_another_scenario_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.ndjson");
    let mut rec = synthetic();
    rec.steps[5].name = "terminal".into();
    write_recording(&path, &rec).unwrap();
    let report = run_blocking(&replay_options(&synthetic_snapshots(), &path));
    assert_eq!(report.result, RunResult::Error);
    let error = report.error.unwrap();
    assert!(
        error.contains("step 6 is \"terminal\" in the recording but \"terminal-ls\""),
        "{error}"
    );
}

#[test]
fn a_recording_without_the_pools_client_fails_that_check_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nopool.ndjson");
    let mut rec = synthetic();
    let step = rec
        .steps
        .iter_mut()
        .find(|s| s.name == "pool-reached")
        .unwrap();
    step.facts
        .insert("pool_clients".into(), serde_json::json!([]));
    write_recording(&path, &rec).unwrap();
    let report = run_blocking(&replay_options(&synthetic_snapshots(), &path));
    assert_eq!(report.result, RunResult::Mismatch);
    let failed: Vec<_> = report
        .steps
        .iter()
        .filter(|s| s.result != StepResult::Passed)
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].name, "pool-reached");
    assert!(
        failed[0].messages[0].contains("the pool saw 0 client(s) as user ME"),
        "{:?}",
        failed[0].messages
    );
}

#[test]
fn a_missing_event_fails_the_step_that_waits_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nowget.ndjson");
    let mut rec = synthetic();
    let attack = rec.steps.iter_mut().find(|s| s.name == "attack").unwrap();
    // Drop wget's exit: the runner cannot know the download finished.
    let wget_key = attack
        .events
        .iter()
        .find_map(|e| match &e.body {
            guardlab_events::EventBody::Exec(x) if x.comm == "wget" => Some(x.key),
            _ => None,
        })
        .unwrap();
    attack
        .events
        .retain(|e| !matches!(&e.body, guardlab_events::EventBody::Exit(x) if x.key == wget_key));
    write_recording(&path, &rec).unwrap();
    let report = run_blocking(&replay_options(&synthetic_snapshots(), &path));
    let attack = report.steps.iter().find(|s| s.name == "attack").unwrap();
    assert_eq!(attack.result, StepResult::Failed);
    assert!(
        attack
            .messages
            .iter()
            .any(|m| m.contains("exit of wget not in the recording of this step")),
        "{:?}",
        attack.messages
    );
    assert_eq!(report.result, RunResult::Mismatch);
}

#[test]
fn a_kind_recording_leaves_out_the_local_only_steps_and_keeps_their_places() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kind.ndjson");
    let mut rec = synthetic();
    rec.header.backend = RecordedOn::Backend(Backend::Kind);
    rec.header.synthetic = false;
    // A cluster has no lab pool: nothing to ask it, nothing recorded.
    let pool = rec
        .steps
        .iter_mut()
        .find(|s| s.name == "pool-reached")
        .unwrap();
    pool.facts.clear();
    write_recording(&path, &rec).unwrap();

    let again = dir.path().join("again.ndjson");
    let mut options = replay_options(&synthetic_snapshots(), &path);
    options.record = Some(again.clone());
    let report = run_blocking(&options);
    assert_eq!(report.result, RunResult::Pass, "{}", failures(&report));
    let pool = report
        .steps
        .iter()
        .find(|s| s.name == "pool-reached")
        .unwrap();
    assert_eq!(pool.result, StepResult::NotApplicable);
    assert_eq!(pool.messages, ["runs only on the local backend"]);
    let others_passed = report
        .steps
        .iter()
        .filter(|s| s.name != "pool-reached")
        .all(|s| s.result == StepResult::Passed);
    assert!(others_passed, "{}", failures(&report));
    // Recorded again, the step keeps its place (empty), so replays line up by index.
    assert_eq!(read_recording(&again).unwrap(), rec);

    // The same events as a local run: the pool check is real there, and fails without facts.
    rec.header.backend = RecordedOn::Backend(Backend::Local);
    write_recording(&path, &rec).unwrap();
    let report = run_blocking(&replay_options(&synthetic_snapshots(), &path));
    assert_eq!(report.result, RunResult::Mismatch);
    let pool = report
        .steps
        .iter()
        .find(|s| s.name == "pool-reached")
        .unwrap();
    assert_eq!(pool.result, StepResult::Failed, "{:?}", pool.messages);
}

/// The prevented scenario from its live recording: the kernel killed each program of the
/// attack at its exec, the engine found each as a deviation (they agree), and the snapshots
/// say which deviations were prevented.
#[test]
fn the_prevented_recording_replays_and_kernel_and_engine_agree() {
    let recording = root().join("scenarios/cryptominer-prevented.ndjson");
    assert!(
        !read_recording(&recording).unwrap().header.synthetic,
        "the prevented recording comes from a live run"
    );
    let mut options = replay_options(&root().join("snapshots/cryptominer-prevented"), &recording);
    options.scenario_file = root().join("scenarios/cryptominer-prevented.yaml");
    let report = run_blocking(&options);
    assert_eq!(report.result, RunResult::Pass, "{}", failures(&report));
    let agreement = report.agreement.as_ref().expect("an agreement section");
    assert!(agreement.agrees(), "{}", agreement.summary());
    assert_eq!(
        (agreement.stopped, agreement.flagged, agreement.kill_decided),
        (5, 5, 5)
    );
    let d = report.deviations.as_ref().unwrap();
    let flagged: BTreeSet<&str> = d.flags.iter().map(|f| f.process.as_str()).collect();
    assert_eq!(
        flagged,
        BTreeSet::from(["sudo", "curl", "ps", "wget", "tar"]),
        "a red flag for each program of the attack the kernel stopped"
    );
    // Nothing was downloaded and nothing reached the pool: not one connection deviated.
    assert!(
        d.policies
            .iter()
            .flat_map(|p| &p.deviations)
            .all(|r| r.deviation.metadata.kind == DeviationType::Process),
        "an egress deviation in a run the kernel stopped at exec"
    );
    let deviations = report
        .snapshots
        .get("attack-deviations")
        .expect("the attack's deviations snapshot");
    assert_eq!(
        deviations.matches("killed at exec").count(),
        5,
        "{deviations}"
    );
}

/// The second prevented variant from its live recording: the attacker's Python, a program the
/// policy allows under the notebook server, started from the terminal's shell, was killed at
/// its exec by the kernel's check of its place in the policy's tree; nothing was fetched.
#[test]
fn the_python_variant_is_stopped_by_its_place_in_the_tree() {
    let recording = root().join("scenarios/cryptominer-prevented-python.ndjson");
    assert!(
        !read_recording(&recording).unwrap().header.synthetic,
        "the recording comes from a live run"
    );
    let mut options = replay_options(
        &root().join("snapshots/cryptominer-prevented-python"),
        &recording,
    );
    options.scenario_file = root().join("scenarios/cryptominer-prevented-python.yaml");
    let report = run_blocking(&options);
    assert_eq!(report.result, RunResult::Pass, "{}", failures(&report));
    let agreement = report.agreement.as_ref().expect("an agreement section");
    assert!(agreement.agrees(), "{}", agreement.summary());
    assert_eq!((agreement.stopped, agreement.flagged), (2, 2));
    let d = report.deviations.as_ref().unwrap();
    let stopped: Vec<_> = d
        .policies
        .iter()
        .flat_map(|p| &p.deviations)
        .filter(|r| r.deviation.metadata.kind == DeviationType::Process)
        .filter(|r| {
            r.deviation.spec.process_policy.iter().any(|f| {
                f.policy_node
                    .children
                    .iter()
                    .any(|c| c.exe == ["/usr/bin/python3.11"])
            })
        })
        .collect();
    assert_eq!(stopped.len(), 1, "Python under the shell is one deviation");
    // The investigation says what the kernel stopped, in the snapshot and in the text.
    let trace = report.snapshots.get("trace").unwrap();
    assert_eq!(
        trace.matches("prevented: killed at exec").count(),
        1,
        "{trace}"
    );
    let text = report.investigation.as_ref().unwrap().render_text();
    assert!(text.contains("prevented: killed at exec"), "{text}");
    // The policy allows that very program elsewhere: under the notebook server.
    let policy = report.snapshots.get("policy-with-terminal").unwrap();
    assert!(policy.contains("/usr/bin/python3.11"), "{policy}");
    assert!(
        d.policies
            .iter()
            .flat_map(|p| &p.deviations)
            .all(|r| r.deviation.metadata.kind == DeviationType::Process),
        "nothing was fetched: no connection deviated"
    );
}
