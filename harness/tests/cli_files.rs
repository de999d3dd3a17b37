//! The file commands end to end, through the real `guardlab` binary: events on disk in,
//! fingerprints, a policy, deviations and a trace out, with the exit codes the README promises.

#[path = "../engine/tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use common::notebook::{FIRST, Notebook, REPLAY};
use predicates::prelude::*;

fn guardlab() -> Command {
    Command::cargo_bin("guardlab").expect("the guardlab binary is built")
}

fn write_events(dir: &Path, name: &str, events: &[guardlab_events::Event]) -> PathBuf {
    let path = dir.join(name);
    let mut out = Vec::new();
    for event in events {
        guardlab_events::write_ndjson(&mut out, event).unwrap();
    }
    std::fs::write(&path, out).unwrap();
    path
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.assert().success().get_output().stdout.clone();
    String::from_utf8(out).unwrap()
}

/// The baseline of one run, and a second run of the same behaviour with a terminal and an attack.
fn streams(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let mut first = Notebook::start(&FIRST);
    first.baseline_cells(&FIRST);
    let baseline = write_events(dir, "baseline.ndjson", &first.s.events);

    let mut replay = Notebook::start(&REPLAY);
    replay.baseline_cells(&REPLAY);
    let same = write_events(dir, "same.ndjson", &replay.s.events);
    let bash = replay.terminal();
    replay.attack(bash);
    let attack = write_events(dir, "attack.ndjson", &replay.s.events);
    (baseline, same, attack)
}

#[test]
fn from_events_to_policy_to_deviations_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let (baseline, same, attack) = streams(dir.path());

    let groups = run_ok(guardlab().arg("fingerprint").arg("--events").arg(&baseline));
    assert!(groups.contains("kind: FingerprintGroup"), "{groups}");
    let fingerprints = dir.path().join("fingerprints.yaml");
    std::fs::write(&fingerprints, &groups).unwrap();
    guardlab()
        .arg("validate")
        .arg(&fingerprints)
        .assert()
        .success();

    let policy_text = run_ok(
        guardlab()
            .args(["policy", "create", "--name", "jupyter-policy", "--from"])
            .arg(&fingerprints),
    );
    assert!(policy_text.contains("mode: audit"), "{policy_text}");
    assert!(policy_text.contains("severity: high"), "{policy_text}");
    assert!(
        !policy_text.contains("imageID"),
        "imageID must be dropped:\n{policy_text}"
    );
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, &policy_text).unwrap();
    guardlab().arg("validate").arg(&policy).assert().success();

    // The same behaviour, another run: nothing deviates (exit 0).
    guardlab()
        .args(["deviations", "--policy"])
        .arg(&policy)
        .arg("--events")
        .arg(&same)
        .assert()
        .code(0)
        .stderr(predicate::str::contains("0 unique / 0 total"));

    // The attack deviates (exit 1), and says so in the public format.
    let out = guardlab()
        .args(["deviations", "--policy"])
        .arg(&policy)
        .arg("--events")
        .arg(&attack)
        .assert()
        .code(1)
        .get_output()
        .clone();
    let deviations = String::from_utf8(out.stdout).unwrap();
    for expected in [
        "kind: GuardianDeviation",
        "name: minerd",
        "fakeminingpool.example.com",
        "sourceforge.net",
    ] {
        assert!(
            deviations.contains(expected),
            "no `{expected}` in:\n{deviations}"
        );
    }
    let deviations_file = dir.path().join("deviations.yaml");
    std::fs::write(&deviations_file, &deviations).unwrap();
    guardlab()
        .arg("validate")
        .arg(&deviations_file)
        .assert()
        .success();

    // The trace goes from the notebook server down to the miner.
    let trace = String::from_utf8(
        guardlab()
            .args(["investigate", "--policy"])
            .arg(&policy)
            .arg("--events")
            .arg(&attack)
            .assert()
            .code(1)
            .get_output()
            .stdout
            .clone(),
    )
    .unwrap();
    let server = trace.find("python").expect("the root process in the trace");
    let miner = trace.rfind("minerd").expect("the miner in the trace");
    assert!(server < miner, "{trace}");

    // Merging the deviations makes the attack allowed behaviour: exit 0 afterwards.
    let merged = run_ok(
        guardlab()
            .args(["merge", "--policy"])
            .arg(&policy)
            .arg("--with")
            .arg(&deviations_file),
    );
    let merged_policy = dir.path().join("merged.yaml");
    std::fs::write(&merged_policy, merged).unwrap();
    guardlab()
        .args(["deviations", "--policy"])
        .arg(&merged_policy)
        .arg("--events")
        .arg(&attack)
        .assert()
        .code(0);
}

#[test]
fn bad_input_names_the_file_and_line_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("broken.ndjson");
    std::fs::write(
        &events,
        "\n{\"v\":1,\"ts\":1,\"type\":\"lost\",\"count\":1}\n{not json}\n",
    )
    .unwrap();
    guardlab()
        .args(["fingerprint", "--events"])
        .arg(&events)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("broken.ndjson:3:2: not an event"));

    guardlab()
        .args(["fingerprint", "--events"])
        .arg(dir.path().join("missing.ndjson"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains("missing.ndjson"));
}

#[test]
fn an_invalid_policy_is_reported_with_its_line_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "apiVersion: spyderbat/v1\nkind: SpyderbatPolicy\nmetadata:\n  name: p\n  type: container\nspec:\n  containerSelector:\n    image: x\n  processPolicy:\n  - name: sh\n    exe: [/bin/sh]\n    id: sh_0\n    euser: [root]\n    bogus: 1\n  networkPolicy: {ingress: [], egress: []}\n  response:\n    default: [{makeRedFlag: {severity: high}}]\n    actions: []\n",
    )
    .unwrap();
    guardlab()
        .arg("validate")
        .arg(&policy)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("policy.yaml:14:").and(predicate::str::contains("bogus")));
}

#[test]
fn every_command_has_help_with_an_example() {
    for args in [
        vec!["validate"],
        vec!["fingerprint"],
        vec!["policy", "create"],
        vec!["merge"],
        vec!["deviations"],
        vec!["investigate"],
        vec!["lab", "up"],
        vec!["scenario"],
    ] {
        guardlab()
            .args(&args)
            .arg("--help")
            .assert()
            .success()
            .stdout(predicate::str::contains("Example"));
    }
}

#[test]
fn a_policy_that_selects_no_container_is_bad_input_not_an_all_clear() {
    let dir = tempfile::tempdir().unwrap();
    let (baseline, _, attack) = streams(dir.path());
    let fingerprints = dir.path().join("fingerprints.yaml");
    std::fs::write(
        &fingerprints,
        run_ok(guardlab().args(["fingerprint", "--events"]).arg(&baseline)),
    )
    .unwrap();
    // Two files after one --from: the same fingerprints twice merge into the same policy.
    let policy_text = run_ok(
        guardlab()
            .args(["policy", "create", "--from"])
            .arg(&fingerprints)
            .arg(&fingerprints),
    );
    let other_image = policy_text.replace("jupyter/minimal-notebook", "example/other-image");
    assert_ne!(
        other_image, policy_text,
        "the policy names the image:\n{policy_text}"
    );
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, other_image).unwrap();
    for command in ["deviations", "investigate"] {
        guardlab()
            .args([command, "--policy"])
            .arg(&policy)
            .arg("--events")
            .arg(&attack)
            .assert()
            .code(2)
            .stderr(
                predicate::str::contains("Not Applied")
                    .and(predicate::str::contains("match no container")),
            );
    }
}

#[test]
fn events_out_of_time_order_are_sorted_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let (baseline, _, _) = streams(dir.path());
    let text = std::fs::read_to_string(&baseline).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    let in_order = run_ok(guardlab().args(["fingerprint", "--events"]).arg(&baseline));
    // Swap two events in the middle of the stream.
    let middle = lines.len() / 2;
    lines.swap(middle, middle + 1);
    let shuffled = dir.path().join("shuffled.ndjson");
    std::fs::write(&shuffled, lines.join("\n")).unwrap();
    let out = guardlab()
        .args(["fingerprint", "--events"])
        .arg(&shuffled)
        .assert()
        .success();
    let output = out.get_output();
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("out of time order; sorted"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout), in_order);
}

#[test]
fn output_cut_short_by_a_closed_pipe_ends_quietly() {
    use std::process::{Command as StdCommand, Stdio};
    // A pipe whose reader is already gone, as after `| head` exits: every write fails.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = StdCommand::new(assert_cmd::cargo::cargo_bin("guardlab"))
        .args(["lab", "up", "--backend", "kind", "--dry-run"])
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
}
