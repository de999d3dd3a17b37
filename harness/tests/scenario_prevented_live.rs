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
        // The lab stays for a look at its sensor after the run (then `lab down`).
        .args(["scenario", "cryptominer-prevented", "--keep-lab", "--json"])
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
    let down = LabDown(lab.clone());
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
    // The run ended by disabling the policy: the kernel holds none of it any more.
    let kept = guardlab_lab::local::LocalLab::new(guardlab_lab::local::LocalLabOptions::new(&lab))
        .unwrap();
    let holdings = guardlab_lab_test_support::Holdings::gather(&kept);
    assert!(!holdings.bpf_programs.is_empty(), "the lab's sensor runs");
    guardlab_host::Host::new(false)
        .ensure(
            &[&guardlab_host::catalog::BPFTOOL],
            &guardlab_host::StderrProgress,
        )
        .unwrap();
    for map in [
        "exec_tree",
        "net_allow",
        "dns_names",
        "dns_allow",
        "resolvers",
    ] {
        let entries = map_entries(&holdings.bpf_programs, map);
        assert_eq!(
            entries, 0,
            "{map} still has {entries} entries after `disable`"
        );
    }
    // `lab down`: no program, map, process or anything else of the lab is left.
    drop(down);
    guardlab_lab_test_support::assert_nothing_left(&holdings);
    let left: Vec<u32> = holdings
        .bpf_programs
        .iter()
        .copied()
        .filter(|p| bpftool(&["prog", "show", "id", &p.to_string()]).is_some())
        .collect();
    assert!(left.is_empty(), "programs left after `lab down`: {left:?}");

    assert_replays("cryptominer-prevented", recording);
}

/// The second variant live: Python from the terminal's shell, allowed only under the notebook
/// server, killed at its exec; the pool sees no client; its recording replays.
#[test]
fn the_python_variant_runs_live_and_the_kernel_stops_it_by_its_place() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "the live scenario test needs root (namespaces, cgroups, eBPF): run `sudo cargo test`"
    );
    let dir = tempfile::tempdir().unwrap();
    let recording = dir.path().join("run.ndjson");
    let lab = format!("prevented-py-{}", std::process::id());
    let output = Command::cargo_bin("guardlab")
        .unwrap()
        .args(["scenario", "cryptominer-prevented-python", "--record"])
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
    assert_eq!(
        output.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("python3 (pid")
            && stdout.contains("(prevented: the kernel killed it at exec)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("kernel and engine agree: 2 stopped, 2 flagged"),
        "{stdout}"
    );
    assert_replays("cryptominer-prevented-python", recording);
}

/// The live run's recording replays to the scenario's committed snapshots, without privileges.
fn assert_replays(scenario: &str, recording: std::path::PathBuf) {
    let options = guardlab::scenario::RunOptions::replay(
        root().join(format!("scenarios/{scenario}.yaml")),
        root().join(format!("snapshots/{scenario}")),
        recording,
    );
    let replay = guardlab::scenario::run_blocking(&options);
    assert_eq!(
        replay.result,
        guardlab::scenario::RunResult::Pass,
        "{:?}",
        replay.steps
    );
}

/// Takes the kept lab down however the test ends.
struct LabDown(String);

impl Drop for LabDown {
    fn drop(&mut self) {
        let _ = std::process::Command::new(assert_cmd::cargo::cargo_bin("guardlab"))
            .args(["lab", "down", "--namespace", &self.0])
            .current_dir(root())
            .status();
    }
}

/// `bpftool -j ARGS`, parsed; `None` when bpftool fails (no such object).
fn bpftool(args: &[&str]) -> Option<serde_json::Value> {
    let out = std::process::Command::new("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .expect("running bpftool");
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).expect("bpftool writes JSON"))
}

/// How many entries the map `name` of the programs `programs` holds.
fn map_entries(programs: &[u32], name: &str) -> usize {
    for prog in programs {
        let Some(info) = bpftool(&["prog", "show", "id", &prog.to_string()]) else {
            continue;
        };
        for id in info["map_ids"].as_array().into_iter().flatten() {
            let id = id.as_u64().unwrap().to_string();
            let map = bpftool(&["map", "show", "id", &id]).unwrap_or_default();
            if map["name"] == name {
                let dump = bpftool(&["map", "dump", "id", &id]).unwrap_or_default();
                return dump.as_array().map_or(0, Vec::len);
            }
        }
    }
    panic!("no map {name} among the maps of the lab's programs {programs:?}")
}
