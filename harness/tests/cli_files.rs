//! The file commands end to end, through the real `guardlab` binary: events on disk in,
//! fingerprints, a policy, deviations and a trace out, with the exit codes the README promises.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use guardlab_test_support::notebook::{self, FIRST, Notebook, REPLAY};
use guardlab_test_support::stream;
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
    // The window's flags, with the forms they take.
    guardlab()
        .args(["fingerprint", "--help"])
        .assert()
        .success()
        .stdout(
            predicate::str::contains("--since +30s --until +2m")
                .and(predicate::str::contains("RFC 3339")),
        );
    guardlab()
        .arg("--help")
        .assert()
        .success()
        .stdout(predicate::str::contains("Examples:"));
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

/// A notebook-like stream for windows: a server and a shell that start at once, `ls` right
/// away; a minute later the shell starts `curl`, which reaches a host; a minute after that,
/// `wget` reaches another.
fn window_stream(dir: &Path) -> (PathBuf, u64) {
    use guardlab_events::{ProcessKey, Protocol};
    use stream::{Stream, pod_container, prog};
    const CG: u64 = 31;
    let mut s = Stream::new(1_732_780_800, 5000);
    s.container(pod_container(
        CG,
        "c0ffee",
        "jupyter/minimal-notebook:latest",
        "jupyter-notebook-7d9f8c-abcde",
    ));
    let py = "/opt/conda/bin/python3.11";
    let server = s.spawn(CG, Some(ProcessKey(1, 1)), prog(py, &["python3"], "jovyan"));
    let sh = s.spawn(CG, Some(server), prog("/usr/bin/dash", &["sh"], "jovyan"));
    s.spawn(CG, Some(server), prog("/usr/bin/ls", &["ls"], "jovyan"));
    s.wait_ms(60_000);
    let curl = s.spawn(CG, Some(sh), prog("/usr/bin/curl", &["curl"], "jovyan"));
    s.connect(
        CG,
        curl,
        Protocol::Tcp,
        ("198.18.0.2", 40001),
        ("198.18.0.70", 443),
    );
    s.wait_ms(60_000);
    let wget = s.spawn(CG, Some(sh), prog("/usr/bin/wget", &["wget"], "jovyan"));
    s.connect(
        CG,
        wget,
        Protocol::Tcp,
        ("198.18.0.2", 40002),
        ("198.18.0.80", 80),
    );
    let first = s.events[0].ts;
    (write_events(dir, "window.ndjson", &s.events), first)
}

#[test]
fn fingerprint_learns_only_from_its_window_but_keeps_the_parents() {
    let dir = tempfile::tempdir().unwrap();
    let (events, first) = window_stream(dir.path());
    let relative = guardlab()
        .args([
            "fingerprint",
            "--ungrouped",
            "--since",
            "+30s",
            "--until",
            "+90s",
            "--events",
        ])
        .arg(&events)
        .assert()
        .success();
    let out = relative.get_output();
    let yaml = String::from_utf8_lossy(&out.stdout).to_string();
    // The shell and the server started before the window: they are there as curl's parents.
    for expected in ["name: python3", "name: sh", "name: curl", "198.18.0.70/32"] {
        assert!(yaml.contains(expected), "no `{expected}` in:\n{yaml}");
    }
    for left_out in ["name: ls", "name: wget", "198.18.0.80"] {
        assert!(!yaml.contains(left_out), "`{left_out}` in:\n{yaml}");
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("fingerprinted the 3 event(s) from 2024-11-28T08:00:30.001Z until 2024-11-28T08:01:30.001Z"),
        "{stderr}"
    );
    // The same window in RFC 3339, with an offset: the same fingerprint.
    let since = guardlab_engine::window::rfc3339_ns(first + 30_000_000_000);
    let until = "2024-11-28T09:01:30.001+01:00";
    let absolute = run_ok(
        guardlab()
            .args([
                "fingerprint",
                "--ungrouped",
                "--since",
                &since,
                "--until",
                until,
            ])
            .arg("--events")
            .arg(&events),
    );
    assert_eq!(absolute, yaml);
    // Without a window: everything.
    let all = run_ok(
        guardlab()
            .args(["fingerprint", "--ungrouped", "--events"])
            .arg(&events),
    );
    assert!(
        all.contains("name: ls") && all.contains("name: wget"),
        "{all}"
    );
}

#[test]
fn bad_window_times_name_their_flag_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let (events, _) = window_stream(dir.path());
    for (args, expected) in [
        (
            vec!["--since", "30"],
            vec!["'--since <TIME>'", "write `+30s`"],
        ),
        (
            vec!["--until", "yesterday"],
            vec!["'--until <TIME>'", "RFC 3339"],
        ),
        (
            vec!["--since", "2024-11-28T08:00:30"],
            vec!["'--since <TIME>'", "offset"],
        ),
        (vec!["--until", "-5s"], vec!["'--until <TIME>'", "`+`"]),
        (
            vec!["--since", "+90s", "--until", "+30s"],
            vec!["--since +1m 30s is not before --until +30s", "empty"],
        ),
        (
            vec!["--since", "+1h"],
            vec![
                "nothing to fingerprint from 2024-11-28T09:00:00.001Z on",
                "events run from",
            ],
        ),
    ] {
        let out = guardlab()
            .arg("fingerprint")
            .args(&args)
            .arg("--events")
            .arg(&events)
            .assert()
            .code(2)
            .get_output()
            .clone();
        let stderr = String::from_utf8_lossy(&out.stderr);
        for e in expected {
            assert!(stderr.contains(e), "{args:?}: no `{e}` in:\n{stderr}");
        }
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn a_bad_value_in_an_event_file_is_named_by_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let (events, _) = window_stream(dir.path());
    let text = std::fs::read_to_string(&events).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let exec = lines
        .iter()
        .position(|l| l.contains(r#""type":"exec""#))
        .unwrap();
    lines[exec] = lines[exec].replacen(r#""ns_pid":"#, r#""ns_pid":"one","was":"#, 1);
    let bad = dir.path().join("bad.ndjson");
    std::fs::write(&bad, lines.join("\n")).unwrap();
    guardlab()
        .args(["fingerprint", "--events"])
        .arg(&bad)
        .assert()
        .code(2)
        .stderr(predicate::str::contains(format!(
            "bad.ndjson:{}: not an event: exec.ns_pid: invalid type: string \"one\", expected u32",
            exec + 1
        )));
}

#[test]
fn a_fileless_exec_deviates_and_the_output_says_why() {
    use guardlab_events::ExeStatus;
    let dir = tempfile::tempdir().unwrap();
    let (baseline, _, _) = streams(dir.path());
    let fingerprints = dir.path().join("fingerprints.yaml");
    std::fs::write(
        &fingerprints,
        run_ok(guardlab().args(["fingerprint", "--events"]).arg(&baseline)),
    )
    .unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        run_ok(
            guardlab()
                .args(["policy", "create", "--from"])
                .arg(&fingerprints),
        ),
    )
    .unwrap();
    let mut replay = Notebook::start(&REPLAY);
    replay.baseline_cells(&REPLAY);
    replay.s.spawn_untrusted(
        notebook::CG,
        Some(replay.kernel),
        stream::prog("memfd:minerd", &["minerd"], "jovyan"),
        ExeStatus::Fileless,
    );
    let attack = write_events(dir.path(), "fileless.ndjson", &replay.s.events);
    guardlab()
        .args(["deviations", "--policy"])
        .arg(&policy)
        .arg("--events")
        .arg(&attack)
        .assert()
        .code(1)
        .stdout(predicate::str::contains("- memfd:minerd"))
        .stderr(
            predicate::str::contains(
                "fileless executable `memfd:minerd`: no exe glob allows it (fail closed)",
            )
            .and(predicate::str::contains("1 unique / 1 total")),
        );
    guardlab()
        .args(["investigate", "--policy"])
        .arg(&policy)
        .arg("--events")
        .arg(&attack)
        .assert()
        .code(1)
        .stdout(predicate::str::contains(
            "(exe memfd:minerd: fileless executable)",
        ));
    // Fingerprinting such a stream says what it means for a policy.
    guardlab()
        .args(["fingerprint", "--events"])
        .arg(&attack)
        .assert()
        .success()
        .stdout(predicate::str::contains("- memfd:minerd"))
        .stderr(predicate::str::contains(
            "1 exec(s) ran an executable the sensor could not resolve to a path",
        ));
}

/// The repository's root (the binary's tests run in `harness/`).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn stderr_of(cmd: &mut Command, code: i32) -> String {
    let out = cmd.assert().code(code).get_output().clone();
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn a_scenario_recording_is_read_as_its_events() {
    // `scenario --record` writes step markers between the events; the file commands skip them.
    let recording = repo().join("scenarios/cryptominer.ndjson");
    let groups = run_ok(guardlab().args(["fingerprint", "--events"]).arg(&recording));
    assert!(groups.contains("kind: FingerprintGroup"), "{groups}");
    assert!(
        groups.contains("image: jupyter/minimal-notebook:latest"),
        "{groups}"
    );
}

#[test]
fn several_deviations_are_written_as_one_list_spyctl_reads() {
    let dir = tempfile::tempdir().unwrap();
    let (baseline, _, attack) = streams(dir.path());
    let fingerprints = dir.path().join("fingerprints.yaml");
    std::fs::write(
        &fingerprints,
        run_ok(guardlab().args(["fingerprint", "--events"]).arg(&baseline)),
    )
    .unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        run_ok(
            guardlab()
                .args(["policy", "create", "--from"])
                .arg(&fingerprints),
        ),
    )
    .unwrap();
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
    assert!(
        deviations.starts_with("apiVersion: spyderbat/v1\nitems:\n- apiVersion: spyderbat/v1\n  kind: GuardianDeviation\n"),
        "{deviations}"
    );
    assert!(!deviations.contains("\n---"), "{deviations}");
    let file = dir.path().join("deviations.yaml");
    std::fs::write(&file, &deviations).unwrap();
    // spyctl would read every file guardlab wrote here.
    for written in [&fingerprints, &policy, &file] {
        guardlab()
            .args(["validate", "--strict"])
            .arg(written)
            .assert()
            .success()
            .stdout(predicate::str::contains("spyctl 0.24.2 would accept it"));
    }
}

/// The library's CoreDNS policy, as an organisation exports it: metadata guardlab does not
/// model, and (with `mode`) what spyctl 0.24.2 accepts.
fn exported_policy(dir: &Path, mode: bool) -> PathBuf {
    let library =
        repo().join("../shared/peer-data/spyctl/policy_library/container/coredns-policy.yaml");
    let mut text = std::fs::read_to_string(&library)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (the `shared/` folder must sit beside the repository)",
                library.display()
            )
        })
        .replace(
            "  type: container\n",
            "  type: container\n  uid: pol:Xk2f9aQ\n  orgUid: spyderbatuid\n  version: 7\n",
        );
    if mode {
        text = text.replacen("spec:\n", "spec:\n  mode: audit\n", 1);
    }
    // spyctl ignores keys it does not know in `networkPolicy` and `response` too.
    text = text
        .replacen(
            "  networkPolicy:\n",
            "  networkPolicy:\n    comment: reviewed\n",
            1,
        )
        .replacen("  response:\n", "  response:\n    ticket: 42\n", 1);
    let path = dir.join(if mode {
        "exported.yaml"
    } else {
        "library.yaml"
    });
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn validate_strict_says_what_spyctl_says() {
    let dir = tempfile::tempdir().unwrap();
    let library = exported_policy(dir.path(), false);
    // guardlab reads a policy that predates `spec.mode`; spyctl 0.24.2 does not.
    guardlab()
        .arg("validate")
        .arg(&library)
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "library.yaml: ok (SpyderbatPolicy)",
        ));
    let stderr = stderr_of(guardlab().args(["validate", "--strict"]).arg(&library), 1);
    assert!(
        stderr.contains("library.yaml:10:1: spec.mode: field required")
            && stderr.contains("spyctl 0.24.2 would refuse"),
        "{stderr}"
    );
    guardlab()
        .args(["validate", "--strict"])
        .arg(exported_policy(dir.path(), true))
        .assert()
        .success();
}

#[test]
fn exported_metadata_survives_a_merge() {
    let dir = tempfile::tempdir().unwrap();
    let policy = exported_policy(dir.path(), true);
    let merged = run_ok(
        guardlab()
            .args(["merge", "--policy"])
            .arg(&policy)
            .arg("--with")
            .arg(&policy),
    );
    // The modelled fields in their place, the others after them as they were read.
    assert!(
        merged.contains("  type: container\n  uid: pol:Xk2f9aQ\n"),
        "{merged}"
    );
    assert!(
        merged.contains("  orgUid: spyderbatuid\n  version: 7\nspec:\n"),
        "{merged}"
    );
    assert!(merged.contains("    comment: reviewed\n"), "{merged}");
    assert!(merged.contains("    ticket: 42\n"), "{merged}");
}

#[test]
fn policy_create_given_a_policy_names_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let policy = exported_policy(dir.path(), true);
    let stderr = stderr_of(
        guardlab().args(["policy", "create", "--from"]).arg(&policy),
        2,
    );
    assert!(
        stderr.contains(
            "exported.yaml:1:1: a SpyderbatPolicy: `policy create` makes a policy from fingerprints"
        ),
        "{stderr}"
    );
}

/// Ten levels of aliases, each naming the one below ten times: a few hundred bytes that stand
/// for ten billion strings.
fn billion_laughs() -> String {
    let mut text = String::from(
        "apiVersion: spyderbat/v1\nkind: SpyderbatPolicy\nmetadata:\n  name: lol\n  type: container\n  l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n",
    );
    for i in 1..10 {
        let refs = vec![format!("*l{}", i - 1); 10].join(", ");
        text.push_str(&format!("  l{i}: &l{i} [{refs}]\n"));
    }
    text
}

#[test]
fn hostile_files_are_refused_with_their_limit_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let bomb = write("bomb.yaml", &billion_laughs());
    assert!(std::fs::metadata(&bomb).unwrap().len() < 1000);
    let flow = write("flow.yaml", &"[".repeat(50_000));
    let block = write("block.yaml", &format!("{}x\n", "- ".repeat(50_000)));
    let cases = [
        (&bomb, "bomb.yaml:10:", "billion laughs"),
        (&flow, "flow.yaml:1:", "nested deeper than 128"),
        (&block, "block.yaml:1:", "nested deeper than 128"),
    ];
    for (file, place, words) in cases {
        for args in [
            vec!["validate"],
            vec!["validate", "--strict"],
            vec!["policy", "create", "--from"],
            vec!["investigate", "--events", "x.ndjson", "--policy"],
        ] {
            let stderr = stderr_of(guardlab().args(&args).arg(file), 2);
            assert!(
                stderr.contains(place) && stderr.contains(words),
                "{args:?} {place}: {stderr}"
            );
        }
    }

    // A 1 GB file is refused before it is read (a sparse file: no disk used).
    let huge_yaml = dir.path().join("huge.yaml");
    std::fs::File::create(&huge_yaml)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let stderr = stderr_of(guardlab().arg("validate").arg(&huge_yaml), 2);
    assert!(
        stderr.contains("huge.yaml: 1 GiB is more than the 16 MiB guardlab reads from one file (GUARDLAB_MAX_INPUT_BYTES raises the limit)"),
        "{stderr}"
    );
    let huge_events = dir.path().join("huge.ndjson");
    std::fs::File::create(&huge_events)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let stderr = stderr_of(
        guardlab()
            .args(["fingerprint", "--events"])
            .arg(&huge_events),
        2,
    );
    assert!(
        stderr.contains("huge.ndjson: 1 GiB is more than the 256 MiB"),
        "{stderr}"
    );

    // The limit is the user's to set, and a setting that is no size is said.
    let (baseline, _, _) = streams(dir.path());
    let stderr = stderr_of(
        guardlab()
            .env("GUARDLAB_MAX_INPUT_BYTES", "1000")
            .args(["fingerprint", "--events"])
            .arg(&baseline),
        2,
    );
    assert!(stderr.contains("is more than the 1000 bytes"), "{stderr}");
    let stderr = stderr_of(
        guardlab()
            .env("GUARDLAB_MAX_INPUT_BYTES", "lots")
            .args(["fingerprint", "--events"])
            .arg(&baseline),
        2,
    );
    assert!(
        stderr.contains("GUARDLAB_MAX_INPUT_BYTES=\"lots\" is not a number of bytes"),
        "{stderr}"
    );
}

#[test]
fn empty_cut_short_and_non_utf8_files_name_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let lost = br#"{"v":1,"ts":1,"type":"lost","count":1}"#;

    let empty = write("empty.ndjson", b"");
    let stderr = stderr_of(guardlab().args(["fingerprint", "--events"]).arg(&empty), 2);
    assert!(
        stderr.contains("empty.ndjson:1: no event in this file"),
        "{stderr}"
    );

    let mut cut = lost.to_vec();
    cut.extend(b"\n{\"v\":1,\"ts\":2,\"type\":\"lo");
    let cut = write("cut.ndjson", &cut);
    let stderr = stderr_of(guardlab().args(["fingerprint", "--events"]).arg(&cut), 2);
    assert!(
        stderr.contains("cut.ndjson:2:") && stderr.contains("EOF"),
        "{stderr}"
    );

    let mut bad = lost.to_vec();
    bad.extend(b"\n{\"v\":1,\xff}\n");
    let bad = write("bad.ndjson", &bad);
    let stderr = stderr_of(guardlab().args(["fingerprint", "--events"]).arg(&bad), 2);
    assert!(stderr.contains("bad.ndjson:2:8: not UTF-8"), "{stderr}");

    let bad = write(
        "bad.yaml",
        b"apiVersion: spyderbat/v1\nkind: \xffSpyderbatPolicy\n",
    );
    let stderr = stderr_of(guardlab().arg("validate").arg(&bad), 2);
    assert!(
        stderr.contains("bad.yaml:2:7: not UTF-8 text (byte 0xff)"),
        "{stderr}"
    );

    let empty = write("empty.yaml", b"");
    let stderr = stderr_of(guardlab().arg("validate").arg(&empty), 1);
    assert!(
        stderr.contains("empty.yaml:1:1: no document in this file"),
        "{stderr}"
    );

    let cut = write(
        "cut.yaml",
        b"apiVersion: spyderbat/v1\nkind: SpyderbatPolicy\nmetadata: {name: p, type: cont",
    );
    let stderr = stderr_of(guardlab().arg("validate").arg(&cut), 1);
    assert!(
        stderr.contains("cut.yaml:3:") && stderr.contains("invalid YAML"),
        "{stderr}"
    );

    let tab = write("tab.yaml", b"apiVersion: spyderbat/v1\nkind: SpyderbatPolicy\nmetadata:\n  name: x\n\ttype: container\n");
    let stderr = stderr_of(guardlab().arg("validate").arg(&tab), 1);
    assert!(
        stderr.contains("tab.yaml:5:1: invalid YAML") && stderr.contains("tab"),
        "{stderr}"
    );
}

#[test]
fn a_50_mb_recording_of_one_repeated_event_is_read() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let mut notebook = Notebook::start(&FIRST);
    notebook.baseline_cells(&FIRST);
    let events = &notebook.s.events;
    let line = |event: &guardlab_events::Event| {
        let mut out = Vec::new();
        guardlab_events::write_ndjson(&mut out, event).unwrap();
        out
    };
    // The same DNS answer over and over: reading holds each one, the engine only its name.
    let repeated = line(
        events
            .iter()
            .find(|e| matches!(e.body, guardlab_events::EventBody::Dns(_)))
            .unwrap(),
    );
    let path = dir.path().join("big.ndjson");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    out.write_all(b"{\"recording\":{\"format\":1,\"scenario\":\"big\",\"events_format\":1,\"backend\":\"local\"}}\n{\"step\":{\"index\":0,\"name\":\"all\",\"at\":\"begin\"}}\n").unwrap();
    for event in events {
        out.write_all(&line(event)).unwrap();
    }
    let mut written = 0;
    while written < 50 << 20 {
        out.write_all(&repeated).unwrap();
        written += repeated.len();
    }
    out.write_all(b"{\"step\":{\"index\":0,\"name\":\"all\",\"at\":\"end\"}}\n")
        .unwrap();
    out.flush().unwrap();
    drop(out);
    let groups = run_ok(guardlab().args(["fingerprint", "--events"]).arg(&path));
    assert!(groups.contains("kind: FingerprintGroup"), "{groups}");
}

#[test]
fn a_limit_met_is_one_warning_and_the_command_still_finds_the_attack() {
    let dir = tempfile::tempdir().unwrap();
    let (baseline, _, attack) = streams(dir.path());
    let fingerprints = dir.path().join("fingerprints.yaml");
    std::fs::write(
        &fingerprints,
        run_ok(guardlab().arg("fingerprint").arg("--events").arg(&baseline)),
    )
    .unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        run_ok(
            guardlab()
                .args(["policy", "create", "--from"])
                .arg(&fingerprints),
        ),
    )
    .unwrap();

    // Two levels of programs: the terminal's children sit on the last level, one warning
    // says so, and the miner still deviates (exit 1).
    let out = guardlab()
        .args(["deviations", "--policy"])
        .arg(&policy)
        .arg("--events")
        .arg(&attack)
        .args(["--limit", "process-depth=2"])
        .assert()
        .code(1)
        .get_output()
        .clone();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stdout.contains("/home/jovyan/minerd"), "{stdout}");
    assert_eq!(
        stderr.matches("limit process-depth=2 met").count(),
        1,
        "{stderr}"
    );
    assert!(stderr.contains("--limit process-depth=N"), "{stderr}");

    // Under the defaults, nothing is met.
    guardlab()
        .args(["deviations", "--policy"])
        .arg(&policy)
        .arg("--events")
        .arg(&attack)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("limit").not());

    // A limit that is not one is refused, naming it and the ones there are.
    guardlab()
        .args(["investigate", "--policy"])
        .arg(&policy)
        .arg("--events")
        .arg(&attack)
        .args(["--limit", "depth=3"])
        .assert()
        .code(2)
        .stderr(
            predicate::str::contains("unknown limit \"depth\"")
                .and(predicate::str::contains("process-depth")),
        );
}
