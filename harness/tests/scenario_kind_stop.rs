//! The kind backend's scenario run, stopped (as by SIGINT or SIGTERM) while its lab comes up
//! and once it is up, against the fake Kubernetes API and sensor of `harness/kind/tests/support`:
//! the run takes its lab down (every object `up` created is deleted, its state file removed) and
//! says so in one line; with `--keep-lab` it leaves the lab up and says how to remove it. The
//! stop requests come on a channel, at moments the fake API's requests show; the process's own
//! signals are tested on the local lab (`scenario_signals.rs`).

mod scenario_common;
use guardlab_kind_test_support as support;

use std::sync::Arc;
use std::time::Duration;

use guardlab::scenario::live::LabBackend;
use guardlab::scenario::{self, LabAfterStop, RunEnd, RunOptions, StoppedRun};
use guardlab::signals::{StopSignal, StopSignals};
use guardlab_kind::{KindLab, KindOptions, Target};
use guardlab_lab_api::{Backend, Lab, NoProgress};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use support::fake_api::FakeApi;
use support::fake_sensor::{FakeSensor, SensorBehaviour};

fn options(state_dir: &std::path::Path) -> KindOptions {
    KindOptions {
        target: Target::Context {
            context: "fake".into(),
        },
        local_port: 0,
        rollout_timeout: Duration::from_secs(20),
        gate_timeout: Duration::from_secs(10),
        delete_timeout: Duration::from_secs(5),
        poll_interval: Duration::from_millis(20),
        state_dir: state_dir.to_path_buf(),
        ..KindOptions::default()
    }
}

/// A notebook that takes connections and never answers: the run waits on it until stopped.
async fn silent_notebook() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((connection, _)) = listener.accept().await {
            held.push(connection);
        }
    });
    address
}

/// Whether the fake API was asked for something whose path contains every one of `parts`.
fn asked(fake: &FakeApi, parts: &[&str]) -> bool {
    fake.requests()
        .iter()
        .any(|r| parts.iter().all(|part| r.uri.contains(part)))
}

/// Runs the scenario on a kind lab on `fake` and asks it to stop (SIGTERM) once `moment` holds.
async fn run_stopped_at(
    fake: &Arc<FakeApi>,
    state_dir: &std::path::Path,
    keep_lab: bool,
    moment: fn(&FakeApi) -> bool,
) -> StoppedRun {
    let lab = KindLab::with_client(options(state_dir), fake.client());
    let mut backend = LabBackend::with_lab(lab);
    let (stop, requests) = mpsc::unbounded_channel();
    let mut signals = StopSignals::from_channel(requests);
    let watched = fake.clone();
    let watcher = tokio::spawn(async move {
        while !moment(&watched) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _ = stop.send(StopSignal::Terminate);
    });
    let snapshots = tempfile::tempdir().unwrap();
    let options = RunOptions {
        scenario_file: scenario_common::scenario_file(),
        backend: Backend::Kind,
        snapshot_dir: Some(snapshots.path().to_path_buf()),
        update_snapshots: false,
        replay_file: None,
        record: None,
        json: None,
        junit: None,
        keep_lab,
        step: false,
        quiet: true,
        limits: Default::default(),
        out: None,
        console: None,
        html: None,
    };
    let end = tokio::time::timeout(
        Duration::from_secs(60),
        scenario::run_on(&options, &mut backend, &mut signals),
    )
    .await
    .expect("the stopped run ended");
    watcher.abort();
    match end {
        RunEnd::Stopped(stopped) => stopped,
        RunEnd::Finished(report) => panic!("the run was not stopped: {report:?}"),
    }
}

/// The fake cluster with a sensor that confirms its watches, and a notebook that never answers.
async fn cluster() -> (Arc<FakeApi>, FakeSensor) {
    let fake = FakeApi::start().await;
    let sensor = FakeSensor::start(
        &fake,
        SensorBehaviour::Watching {
            delay: Duration::ZERO,
        },
    )
    .await;
    fake.route_port("jupyter-notebook-", 8888, silent_notebook().await);
    (Arc::new(fake), sensor)
}

#[tokio::test]
async fn a_kind_run_stopped_while_its_lab_comes_up_takes_it_down() {
    let (fake, _sensor) = cluster().await;
    // The notebook's gate listens only after a while: `up` is still waiting when it is stopped.
    fake.set_gate_delay(Duration::from_secs(20));
    let dir = tempfile::tempdir().unwrap();
    // The Deployment is applied: `up` waits for its rollout and the gate.
    let stopped = run_stopped_at(&fake, dir.path(), false, |fake| {
        asked(fake, &["/deployments/jupyter-notebook", "fieldManager"])
    })
    .await;
    assert_eq!(stopped.signal, StopSignal::Terminate);
    assert_eq!(stopped.step, Some((1, "setup".to_string())));
    let LabAfterStop::Removed { what } = &stopped.lab else {
        panic!("{stopped:?}")
    };
    assert!(
        what.starts_with("removed the kind lab: the ")
            && what.ends_with("objects `up` created deleted"),
        "{what}"
    );
    assert!(
        stopped.line().starts_with(
            "stopped by SIGTERM in step 1/13 (setup) of scenario cryptominer: removed the kind lab"
        ),
        "{}",
        stopped.line()
    );
    assert!(
        !asked(&fake, &["/portforward", "ports=8888"]),
        "the lab came up before the stop"
    );
    assert!(
        fake.paths().is_empty(),
        "left on the cluster: {:?}",
        fake.paths()
    );
    assert!(!options(dir.path()).state_file().exists());
}

#[tokio::test]
async fn a_kind_run_stopped_once_its_lab_is_up_takes_it_down() {
    let (fake, _sensor) = cluster().await;
    let dir = tempfile::tempdir().unwrap();
    // The lab is up: the run connects to the notebook through the forward.
    let stopped = run_stopped_at(&fake, dir.path(), false, |fake| {
        asked(fake, &["/portforward", "ports=8888"])
    })
    .await;
    assert_eq!(stopped.step, Some((1, "setup".to_string())));
    assert_eq!(
        stopped.lab,
        LabAfterStop::Removed {
            what: "removed the kind lab: the 5 objects `up` created deleted".into()
        }
    );
    assert!(
        fake.paths().is_empty(),
        "left on the cluster: {:?}",
        fake.paths()
    );
    assert!(!options(dir.path()).state_file().exists());
}

#[tokio::test]
async fn a_kind_run_stopped_with_keep_lab_leaves_it_up_and_says_how_to_remove_it() {
    let (fake, _sensor) = cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let stopped = run_stopped_at(&fake, dir.path(), true, |fake| {
        asked(fake, &["/portforward", "ports=8888"])
    })
    .await;
    assert_eq!(
        stopped.lab,
        LabAfterStop::Kept {
            how: "the kind lab stays (--keep-lab): `guardlab lab status --backend kind` shows \
                  it, `guardlab lab down --backend kind` removes it"
                .into()
        }
    );
    assert!(!fake.paths().is_empty(), "the kept lab was removed");
    assert!(options(dir.path()).state_file().exists());
    // And it is removed as said.
    let mut lab = KindLab::with_client(options(dir.path()), fake.client());
    lab.down(&NoProgress).await.unwrap();
    assert!(fake.paths().is_empty(), "{:?}", fake.paths());
}
