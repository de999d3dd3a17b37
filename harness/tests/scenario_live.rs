//! `guardlab scenario cryptominer` live on the local lab, as root: the lab, the sensor, the
//! notebook driven through Jupyter, the engine, and the committed snapshots. Never skipped:
//! without root it fails and says to use sudo. One test in this file, so that no other test of
//! this binary competes for the lab (test binaries run one after the other).
#![allow(unsafe_code)] // tests make the system calls they check (geteuid, kill, mount, setns...)

mod scenario_common;

use assert_cmd::Command;
use scenario_common::*;

/// The miner the lab serves is `minerd` next to the `guardlab` binary: build it first.
fn build_minerd() {
    let status = std::process::Command::new(env!("CARGO"))
        .args(["build", "-q", "-p", "guardlab-minerd", "--bin", "minerd"])
        .current_dir(root())
        .status()
        .expect("running cargo to build minerd");
    assert!(status.success(), "building minerd failed");
}

/// The notebook's port 1234 is this host's: tests of other binaries and checkouts that use it
/// (the local lab's) take the same lock, an abstract unix socket named after the port, which
/// the kernel frees when its holder dies.
fn lock_notebook_port() -> std::os::unix::net::UnixListener {
    use std::os::linux::net::SocketAddrExt;
    let address =
        std::os::unix::net::SocketAddr::from_abstract_name(b"guardlab-test-port-1234").unwrap();
    let started = std::time::Instant::now();
    loop {
        match std::os::unix::net::UnixListener::bind_addr(&address) {
            Ok(lock) => return lock,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                assert!(
                    started.elapsed() < std::time::Duration::from_secs(1800),
                    "port 1234 stayed taken by another test"
                );
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(e) => panic!("locking port 1234: {e}"),
        }
    }
}

#[test]
fn cryptominer_runs_live_and_matches_the_snapshots() {
    // SAFETY: geteuid has no preconditions.
    let root_user = unsafe { libc::geteuid() } == 0;
    assert!(
        root_user,
        "the live scenario test needs root (namespaces, cgroups, eBPF): run `sudo cargo test`"
    );
    build_minerd();
    let _port = lock_notebook_port();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("run.json");
    let recording = dir.path().join("run.ndjson");
    let output = Command::cargo_bin("guardlab")
        .unwrap()
        .args(["scenario", "cryptominer", "--json"])
        .arg(&json)
        .arg("--record")
        .arg(&recording)
        .env("GUARDLAB_SCENARIOS_DIR", root().join("scenarios"))
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
    assert!(stdout.contains("PASS: 13 steps"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["result"], "pass");
    // What was recorded replays to the same snapshots, without privileges.
    let replay = guardlab::scenario::run_blocking(&guardlab::scenario::RunOptions::replay(
        scenario_file(),
        root().join("snapshots/cryptominer"),
        recording,
    ));
    assert_eq!(
        replay.result,
        guardlab::scenario::RunResult::Pass,
        "{:?}",
        replay.steps
    );
}
