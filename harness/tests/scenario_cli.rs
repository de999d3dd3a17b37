//! `guardlab scenario` on the command line: listing, bad scenario files, a replay with its
//! exit codes and reports.

mod scenario_common;

use assert_cmd::Command;
use predicates::prelude::*;
use scenario_common::*;

fn guardlab() -> Command {
    let mut cmd = Command::cargo_bin("guardlab").unwrap();
    cmd.env_remove("GUARDLAB_SCENARIOS_DIR")
        .env_remove("GUARDLAB_SNAPSHOT_DIR")
        .env_remove("GUARDLAB_REPLAY_FILE");
    cmd
}

#[test]
fn list_names_every_scenario_with_its_description() {
    guardlab()
        .args(["scenario", "--list"])
        .env("GUARDLAB_SCENARIOS_DIR", root().join("scenarios"))
        .assert()
        .success()
        .stdout(
            predicate::str::is_match(
                r"(?m)^cryptominer +An unguarded Jupyter notebook is fingerprinted, guarded by a policy, and caught running a cryptominer\.",
            )
            .unwrap()
            .and(predicate::str::is_match(r"(?m)^cryptominer-prevented +").unwrap()),
        );
}

#[test]
fn a_second_scenario_is_a_second_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(scenario_file(), dir.path().join("cryptominer.yaml")).unwrap();
    std::fs::write(
        dir.path().join("hello.yaml"),
        "name: hello\ndescription: Just a cell.\nsteps:\n  - name: up\n    explain: Up.\n    lab_up:\n  - name: cell\n    explain: Hi.\n    notebook_cell: {code: print(1)}\n",
    )
    .unwrap();
    guardlab()
        .args(["scenario", "--list"])
        .env("GUARDLAB_SCENARIOS_DIR", dir.path())
        .assert()
        .success()
        .stdout(predicate::str::contains("cryptominer  An unguarded").and(
            predicate::str::contains("hello        Just a cell. (2 steps)"),
        ));
}

#[test]
fn a_bad_scenario_file_names_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(scenario_file()).unwrap().replace(
        "      session: attacker\n      commands:\n        - ls\n",
        "      session: attacker\n      comands:\n        - ls\n",
    );
    let bad = dir.path().join("cryptominer.yaml");
    std::fs::write(&bad, &text).unwrap();
    let line = text.lines().position(|l| l.contains("comands:")).unwrap() + 1;
    guardlab()
        .args(["scenario", bad.to_str().unwrap(), "--backend", "replay"])
        .assert()
        .code(2)
        .stderr(
            predicate::str::contains(format!("cryptominer.yaml:{line}:")).and(
                predicate::str::contains("terminal: unknown field `comands`"),
            ),
        );
    // --list reports the broken file too, and says the listing is incomplete.
    guardlab()
        .args(["scenario", "--list"])
        .env("GUARDLAB_SCENARIOS_DIR", dir.path())
        .assert()
        .code(1)
        .stderr(predicate::str::contains(format!(
            "cryptominer.yaml:{line}:"
        )));
}

#[test]
fn an_unknown_scenario_lists_the_known_ones() {
    guardlab()
        .args(["scenario", "cryptominr", "--backend", "replay"])
        .env("GUARDLAB_SCENARIOS_DIR", root().join("scenarios"))
        .assert()
        .code(2)
        .stderr(
            predicate::str::contains("no scenario \"cryptominr\"")
                .and(predicate::str::contains("cryptominer")),
        );
}

#[test]
fn replay_passes_and_writes_json_and_junit() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("run.json");
    let junit = dir.path().join("run.xml");
    guardlab()
        .args(["scenario", "cryptominer", "--backend", "replay", "--json"])
        .arg(&json)
        .arg("--junit")
        .arg(&junit)
        .env("GUARDLAB_SCENARIOS_DIR", root().join("scenarios"))
        .env("GUARDLAB_SNAPSHOT_DIR", synthetic_snapshots())
        .env("GUARDLAB_REPLAY_FILE", synthetic_recording())
        .assert()
        .success()
        .stdout(
            predicate::str::contains("PASS: 13 steps")
                .and(predicate::str::contains("13/13 deviations (unique/total)"))
                .and(predicate::str::contains("Red flags: 11"))
                .and(predicate::str::contains("└─ minerd")),
        );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["result"], "pass");
    assert_eq!(report["steps"].as_array().unwrap().len(), 13);
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(
        xml.contains("tests=\"13\"") && xml.contains("failures=\"0\""),
        "{xml}"
    );
}

#[test]
fn a_changed_snapshot_exits_1_with_a_diff_naming_the_step() {
    let dir = tempfile::tempdir().unwrap();
    let snaps = dir.path().join("snaps");
    std::fs::create_dir(&snaps).unwrap();
    for entry in std::fs::read_dir(synthetic_snapshots()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "snap") {
            std::fs::copy(&path, snaps.join(path.file_name().unwrap())).unwrap();
        }
    }
    let policy = snaps.join("policy.snap");
    let text = std::fs::read_to_string(&policy).unwrap();
    std::fs::write(&policy, text.replace("mode: audit", "mode: enforce")).unwrap();
    let junit = dir.path().join("run.xml");
    guardlab()
        .args(["scenario", "cryptominer", "--backend", "replay", "--junit"])
        .arg(&junit)
        .env("GUARDLAB_SCENARIOS_DIR", root().join("scenarios"))
        .env("GUARDLAB_SNAPSHOT_DIR", &snaps)
        .env("GUARDLAB_REPLAY_FILE", synthetic_recording())
        .assert()
        .code(1)
        .stdout(
            predicate::str::contains("snapshot mismatch in step 5 \"create-policy\"")
                .and(predicate::str::contains("-  mode: enforce"))
                .and(predicate::str::contains("+  mode: audit"))
                .and(predicate::str::contains("FAIL: create-policy (MISMATCH)")),
        );
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(
        xml.contains("failures=\"1\"")
            && xml.contains("snapshot mismatch in step &quot;create-policy&quot;"),
        "{xml}"
    );
}

#[test]
fn a_missing_recording_exits_2_and_still_writes_the_reports() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("run.json");
    let junit = dir.path().join("run.xml");
    guardlab()
        .args(["scenario", "cryptominer", "--backend", "replay", "--json"])
        .arg(&json)
        .arg("--junit")
        .arg(&junit)
        .env("GUARDLAB_SCENARIOS_DIR", root().join("scenarios"))
        .env("GUARDLAB_REPLAY_FILE", dir.path().join("nothing.ndjson"))
        .assert()
        .code(2)
        .stderr(
            predicate::str::contains("nothing.ndjson").and(predicate::str::contains("--record")),
        );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["result"], "error");
    assert!(
        std::fs::read_to_string(&junit)
            .unwrap()
            .contains("errors=\"1\"")
    );
}

#[test]
fn the_kind_backend_without_docker_or_kind_exits_2_naming_both() {
    let empty_path = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let snapshots = tempfile::tempdir().unwrap();
    guardlab()
        .args(["scenario", "cryptominer", "--backend", "kind"])
        .env("GUARDLAB_SCENARIOS_DIR", root().join("scenarios"))
        // An empty snapshot directory: the run says the kind snapshots are missing, not that
        // the local ones differ.
        .env(
            "GUARDLAB_SNAPSHOT_DIR",
            snapshots.path().join("cryptominer-kind"),
        )
        .env(
            "DOCKER_HOST",
            "unix:///nonexistent/guardlab-test/docker.sock",
        )
        .env("PATH", empty_path.path())
        .env("XDG_STATE_HOME", state.path())
        .assert()
        .code(2)
        .stdout(predicate::str::contains(
            "no snapshots for the kind backend yet",
        ))
        .stderr(
            predicate::str::contains("Docker and the kind CLI is missing").and(
                predicate::str::contains("/nonexistent/guardlab-test/docker.sock"),
            ),
        );
    // Nothing was left behind: no state file, no snapshot written.
    assert_eq!(std::fs::read_dir(state.path()).unwrap().count(), 0);
    assert!(!snapshots.path().join("cryptominer-kind").exists());
}

#[test]
fn step_needs_a_terminal_to_read_enter_from() {
    guardlab()
        .args(["scenario", "cryptominer", "--backend", "replay", "--step"])
        .env("GUARDLAB_SCENARIOS_DIR", root().join("scenarios"))
        .write_stdin("\n")
        .assert()
        .code(2)
        .stdout(predicate::str::contains("[ 1/").not())
        .stderr(predicate::str::contains("--step").and(predicate::str::contains("not one")));
}

#[test]
fn a_scenario_file_that_does_not_parse_is_bad_input_not_a_lab_that_could_not_run() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(scenario_file())
        .unwrap()
        .replace("steps:\n", "steps:\n  - bogus\n");
    let bad = dir.path().join("broken.yaml");
    std::fs::write(&bad, &text).unwrap();
    let json = dir.path().join("report.json");
    let junit = dir.path().join("report.xml");
    let out = guardlab()
        .args(["scenario", bad.to_str().unwrap(), "--backend", "replay"])
        .arg("--json")
        .arg(&json)
        .arg("--junit")
        .arg(&junit)
        .assert()
        .code(2)
        .get_output()
        .clone();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    let line = text.lines().position(|l| l == "  - bogus").unwrap() + 1;
    assert!(
        stderr.contains(&format!("broken.yaml:{line}:")) && stderr.contains("steps[0]"),
        "{stderr}"
    );
    for said in [&stdout, &stderr] {
        assert!(
            !said.contains("could not run") && !said.contains("Scenario ?"),
            "{stdout}\n{stderr}"
        );
    }
    // The reports asked for are written, and name the scenario by its file.
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["scenario"], "broken", "{report}");
    assert_eq!(report["result"], "error", "{report}");
    assert!(
        report["error"]
            .as_str()
            .unwrap()
            .contains(&format!("broken.yaml:{line}:")),
        "{report}"
    );
    assert!(
        std::fs::read_to_string(&junit).unwrap().contains("broken"),
        "the JUnit report names it too"
    );
}

#[test]
fn a_limit_met_in_a_run_is_said_in_the_summary_and_the_json_report() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("run.json");
    // Snapshots written afresh: the run's outcome is not the point, what it says is.
    let out = guardlab()
        .args([
            "scenario",
            "cryptominer",
            "--backend",
            "replay",
            "--update-snapshots",
        ])
        .args(["--limit", "process-depth=2", "--json"])
        .arg(&json)
        .env("GUARDLAB_SCENARIOS_DIR", root().join("scenarios"))
        .env("GUARDLAB_SNAPSHOT_DIR", dir.path().join("snaps"))
        .env("GUARDLAB_REPLAY_FILE", synthetic_recording())
        .assert()
        .success()
        .get_output()
        .clone();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let said: Vec<&str> = stdout
        .lines()
        .skip_while(|l| *l != "Engine limits met:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .collect();
    assert_eq!(said.len(), 1, "{stdout}");
    assert!(
        said[0].contains("limit process-depth=2 met")
            && said[0].contains("--limit process-depth=N changes it"),
        "{stdout}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let limits = report["deviations"]["stats"]["limits"].as_array().unwrap();
    assert_eq!(limits.len(), 1, "{limits:?}");
    assert_eq!(limits[0]["limit"], "process-depth");

    // Under the defaults nothing is met, and nothing is said.
    guardlab()
        .args(["scenario", "cryptominer", "--backend", "replay"])
        .env("GUARDLAB_SCENARIOS_DIR", root().join("scenarios"))
        .env("GUARDLAB_SNAPSHOT_DIR", synthetic_snapshots())
        .env("GUARDLAB_REPLAY_FILE", synthetic_recording())
        .assert()
        .success()
        .stdout(predicate::str::contains("Engine limits met").not());
}

#[test]
fn a_scenario_that_does_not_run_on_a_backend_is_refused_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(scenario_file()).unwrap().replacen(
        "\nsteps:",
        "\nruns_on: {backends: [local], why: \"it needs in-kernel prevention, which the kind backend does not have\"}\nsteps:",
        1,
    );
    std::fs::write(dir.path().join("cryptominer.yaml"), text).unwrap();
    let state = tempfile::tempdir().unwrap();
    guardlab()
        .args(["scenario", "cryptominer", "--backend", "kind"])
        .env("GUARDLAB_SCENARIOS_DIR", dir.path())
        .env("XDG_STATE_HOME", state.path())
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "scenario cryptominer runs on the local backend only: it needs in-kernel prevention, which the kind backend does not have",
        ));
    // Nothing was started for it.
    assert_eq!(std::fs::read_dir(state.path()).unwrap().count(), 0);
}
