//! A run whose event stream lost events is not a pass: the committed recording of a real run,
//! with a `lost` event put into one of its steps, replays to `"result": "incomplete"` and exit
//! 2, and the summary, `--json` and `--junit` say how many were lost. Every check of the run
//! still passes: it is the loss alone that makes the answer unsure. No privileges needed.

mod scenario_common;

use assert_cmd::Command;
use guardlab::scenario::recording::{read_recording, write_recording};
use guardlab_events::{Event, EventBody, Lost};
use scenario_common::root;

#[test]
fn a_replayed_run_that_lost_events_is_incomplete_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let mut recording = read_recording(&root().join("scenarios/cryptominer.ndjson")).unwrap();
    let pip = recording
        .steps
        .iter_mut()
        .find(|s| s.name == "baseline-pip")
        .unwrap();
    let ts = pip.events.first().map(|e| e.ts).unwrap_or(1);
    pip.events.insert(
        0,
        Event::new(
            ts,
            EventBody::Lost(Lost {
                count: 5,
                cpu: Some(0),
            }),
        ),
    );
    let lossy = dir.path().join("lossy.ndjson");
    write_recording(&lossy, &recording).unwrap();
    let json = dir.path().join("run.json");
    let junit = dir.path().join("run.xml");

    let output = Command::cargo_bin("guardlab")
        .unwrap()
        .args(["scenario", "cryptominer", "--backend", "replay", "--json"])
        .arg(&json)
        .arg("--junit")
        .arg(&junit)
        .env("GUARDLAB_SCENARIOS_DIR", root().join("scenarios"))
        .env("GUARDLAB_REPLAY_FILE", &lossy)
        .env(
            "GUARDLAB_SNAPSHOT_DIR",
            root().join("snapshots/cryptominer"),
        )
        .current_dir(root())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("Events: ")
            && stdout.contains("events, at least 5 LOST (5 said lost in the stream)"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "INCOMPLETE: at least 5 events were lost, so the checks saw a stream with holes: not a pass"
        ),
        "{stdout}"
    );
    assert!(
        stderr.contains("guardlab: scenario cryptominer: ")
            && stderr.contains("at least 5 LOST")
            && stderr.contains("not a pass"),
        "{stderr}"
    );

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["result"], "incomplete");
    assert_eq!(report["events"]["lost"], 5);
    assert!(report["events"]["received"].as_u64().unwrap() > 5);
    assert!(report["events"]["engine_dropped"].is_null());
    // Every step passed: the loss alone decides.
    let steps = report["steps"].as_array().unwrap();
    assert!(
        steps.iter().all(|s| s["result"] == "passed"),
        "{}",
        serde_json::to_string_pretty(steps).unwrap()
    );

    let junit = std::fs::read_to_string(&junit).unwrap();
    assert!(
        junit.contains("name=\"events\"") && junit.contains("events lost: "),
        "{junit}"
    );
}

#[test]
fn the_committed_recording_lost_nothing_and_says_so() {
    let json = tempfile::NamedTempFile::new().unwrap();
    let output = Command::cargo_bin("guardlab")
        .unwrap()
        .args(["scenario", "cryptominer", "--backend", "replay", "--json"])
        .arg(json.path())
        .env("GUARDLAB_SCENARIOS_DIR", root().join("scenarios"))
        .env_remove("GUARDLAB_REPLAY_FILE")
        .env_remove("GUARDLAB_SNAPSHOT_DIR")
        .current_dir(root())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("events, none lost"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(json.path()).unwrap()).unwrap();
    assert_eq!(report["result"], "pass");
    assert_eq!(report["events"]["lost"], 0);
}
