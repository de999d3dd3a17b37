//! `guardlab scenario cryptominer-prevented` live on the local lab, as root: the policy is
//! enforced in the kernel, which kills the attack's programs at exec; the run matches the
//! committed snapshots, the pool sees no client, kernel and engine agree, and its recording
//! replays. Never skipped: without root it fails and says to use sudo.
#![allow(unsafe_code)] // geteuid

mod scenario_common;

use assert_cmd::Command;
use scenario_common::*;

#[test]
fn the_prevented_scenario_runs_live_and_the_kernel_stops_the_attack() {
    // SAFETY: geteuid has no preconditions.
    let root_user = unsafe { libc::geteuid() } == 0;
    assert!(
        root_user,
        "the live scenario test needs root (namespaces, cgroups, eBPF): run `sudo cargo test`"
    );
    let status = std::process::Command::new(env!("CARGO"))
        .args(["build", "-q", "-p", "guardlab-minerd", "--bin", "minerd"])
        .current_dir(root())
        .status()
        .expect("running cargo to build minerd");
    assert!(status.success(), "building minerd failed");
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("run.json");
    let recording = dir.path().join("run.ndjson");
    let lab = format!("prevented-{}", std::process::id());
    let output = Command::cargo_bin("guardlab")
        .unwrap()
        .args(["scenario", "cryptominer-prevented", "--json"])
        .arg(&json)
        .arg("--record")
        .arg(&recording)
        .env("GUARDLAB_SCENARIOS_DIR", root().join("scenarios"))
        .env("GUARDLAB_LAB", &lab)
        .env("GUARDLAB_NOTEBOOK_ADDRESS", "127.0.0.1:0")
        .env_remove("GUARDLAB_SNAPSHOT_DIR")
        .env_remove("GUARDLAB_REPLAY_FILE")
        .current_dir(root())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("PASS: 15 steps"), "{stdout}");
    assert!(
        stdout.contains("the kernel now enforces policy jupyter-notebook-policy")
            && stdout.contains("the kernel no longer enforces policy jupyter-notebook-policy"),
        "{stdout}"
    );
    for program in ["sudo", "curl", "wget", "tar"] {
        assert!(
            stdout.contains(&format!("{program} (pid")) && stdout.contains("Killed"),
            "{program} was not killed: {stdout}"
        );
    }
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["result"], "pass");
    assert_eq!(report["agreement"]["stopped"], 5, "{}", report["agreement"]);
    assert_eq!(report["agreement"]["flagged"], 5, "{}", report["agreement"]);
    assert_eq!(
        report["agreement"]["differences"],
        serde_json::json!([]),
        "{}",
        report["agreement"]
    );
    let options = guardlab::scenario::RunOptions {
        scenario_file: root().join("scenarios/cryptominer-prevented.yaml"),
        backend: guardlab_lab_api::Backend::Replay,
        snapshot_dir: Some(root().join("snapshots/cryptominer-prevented")),
        update_snapshots: false,
        replay_file: Some(recording),
        record: None,
        json: None,
        junit: None,
        keep_lab: false,
        step: false,
        quiet: true,
        limits: Default::default(),
        out: None,
        console: None,
        html: None,
    };
    let replay = guardlab::scenario::run_blocking(&options);
    assert_eq!(
        replay.result,
        guardlab::scenario::RunResult::Pass,
        "{:?}",
        replay.steps
    );
}
