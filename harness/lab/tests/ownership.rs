//! A lab that belongs to a process (`LocalLabOptions::owned_by`; here `guardlab-local-lab up
//! --hold`) goes when that process goes, however it goes: killed with SIGKILL at any point of
//! `up` or after it, its lab's daemon removes everything itself, or (killed before the daemon
//! existed) the next look at the lab finds what is left and says who left it. A lab another
//! live process owns is refused, not taken.
//!
//! Root only; each lab has its own name and an ephemeral notebook port, so these tests run
//! beside any other lab.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use guardlab_lab::local::{LabCondition, LocalLab, LocalLabOptions};
use guardlab_lab::{Lab, LabError, NoProgress, Progress};

/// Options of a test lab with an ephemeral notebook port.
fn lab_options(name: &str, scratch: &std::path::Path) -> LocalLabOptions {
    let mut options = options(name, scratch, None);
    options.forward = Some("127.0.0.1:0".parse().unwrap());
    options
}

/// `guardlab-local-lab up --hold` for the lab of `options`: the lab belongs to that process.
/// A holder process (`guardlab-local-lab up --hold`) that is killed when dropped: a test that
/// fails half-way must not leave a held lab behind on the machine.
struct Holder(Child);

impl std::ops::Deref for Holder {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Holder {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        // Its lab's daemon sees the owner gone and removes the lab.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn hold(options: &LocalLabOptions) -> Holder {
    let child = Command::new(local_lab_exe())
        .args([
            "up",
            "--hold",
            "--lab",
            &options.lab,
            "--forward",
            "127.0.0.1:0",
        ])
        .arg("--miner-tarball")
        .arg(options.miner_tarball.as_ref().unwrap())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    Holder(child)
}

/// SIGTERM to a child.
fn terminate(child: &Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
}

/// Progress lines, kept to look at.
#[derive(Default)]
struct Said(std::sync::Mutex<Vec<String>>);

impl Progress for Said {
    fn phase(&self, what: &str) {
        self.0.lock().unwrap().push(what.to_string());
    }
    fn detail(&self, line: &str) {
        self.0.lock().unwrap().push(line.to_string());
    }
}

/// Where to kill the lab's owner.
#[derive(Clone, Copy, Debug)]
enum KillPoint {
    /// The state file exists (with its owner), the daemon may not yet.
    Preparing,
    /// The daemon recorded itself.
    DaemonStarted,
    /// The pod's first process is recorded.
    PodStarted,
    /// The lab is ready and held.
    Ready,
}

/// Make sure the image is cached, so that the kill points are about the lab, not the build.
async fn warm_image(scratch: &std::path::Path) {
    let mut options = lab_options(&lab_name("own-warm"), scratch);
    options.sensor = false;
    let mut warm = LocalLab::new(options).unwrap();
    let warmed = warm.up(&TestProgress::new()).await;
    warm.down(&NoProgress).await.expect("warming up: lab down");
    warmed.expect("warming up: lab up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owned_lab_goes_with_its_owner_killed_at_any_point() {
    require_root();
    let scratch = tempfile::tempdir().unwrap();
    warm_image(scratch.path()).await;

    for point in [
        KillPoint::Preparing,
        KillPoint::DaemonStarted,
        KillPoint::PodStarted,
        KillPoint::Ready,
    ] {
        eprintln!("--- kill point {point:?}");
        let options = lab_options(&lab_name(&format!("own{}", point as u8)), scratch.path());
        let lab = LocalLab::new(options.clone()).unwrap();
        let mut holder = hold(&options);
        let mut holdings = Holdings::gather(&lab);
        let mut registration = None;
        let deadline = Instant::now() + Duration::from_secs(240);
        loop {
            let state = lab.state().ok().flatten();
            if let Some(path) = state.as_ref().and_then(|s| s.image_registration.clone()) {
                registration = Some(path);
            }
            holdings.merge(Holdings::gather(&lab));
            let reached = match (point, &state) {
                (KillPoint::Preparing, Some(_)) => true,
                (KillPoint::DaemonStarted, Some(s)) => s.daemon.is_some(),
                (KillPoint::PodStarted, Some(s)) => s.pods.iter().any(|p| p.root.is_some()),
                (KillPoint::Ready, Some(s)) => s.phase == "ready",
                _ => false,
            };
            if reached {
                break;
            }
            if let Some(status) = holder.try_wait().unwrap() {
                panic!("{point:?}: the holder ended ({status}) before the kill point");
            }
            assert!(
                Instant::now() < deadline,
                "{point:?}: the kill point was not reached in time"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let owner = lab
            .state()
            .unwrap()
            .unwrap()
            .owner
            .expect("the owner is recorded first");
        assert_eq!(owner.process.pid, holder.id(), "{point:?}");
        if matches!(point, KillPoint::Ready) {
            // While its owner lives, the lab says whose it is, and no one else's `up` takes it.
            let LabCondition::Running(status) = lab.inspect().await.unwrap() else {
                panic!("{point:?}: a held lab that is not running")
            };
            assert_eq!(status.phase, "ready");
            assert_eq!(status.owner.as_ref(), Some(&owner));
            assert!(status.counters.sensor_delivered > 0, "{status:?}");
            assert_eq!(status.counters.sensor_lost(), 0, "{status:?}");
            // The daemon's log says what the sensor lost from the moment the lab is ready.
            let log = std::fs::read_to_string(lab.lab_dir().join("daemon.log")).unwrap();
            assert!(
                log.lines()
                    .any(|l| l.contains("] events: ") && l.contains("events, none lost;")),
                "{log}"
            );
            let mut other = LocalLab::new(options.clone()).unwrap();
            let err = other.up(&NoProgress).await.unwrap_err().to_string();
            assert!(
                err.contains("belongs to `guardlab-local-lab up --hold")
                    && err.contains(&format!("(pid {})", holder.id())),
                "{err}"
            );
        }
        holder.kill().unwrap();
        holder.wait().unwrap();
        if let Some(path) = lab
            .state()
            .ok()
            .flatten()
            .and_then(|s| s.image_registration)
        {
            registration = Some(path);
        }

        // The daemon, if there is one, removes the lab by itself.
        let deadline = Instant::now() + Duration::from_secs(60);
        let left = loop {
            holdings.merge(Holdings::gather(&lab));
            match lab.inspect().await {
                Ok(LabCondition::Down) => break None,
                Ok(LabCondition::LeftBehind { state, .. }) => break Some(state),
                Ok(LabCondition::Running(status)) => assert!(
                    status.phase.starts_with("removing: its owner") || Instant::now() < deadline,
                    "{point:?}: the lab still runs after its owner was killed: {status:?}"
                ),
                // Answering while it removes itself, then gone.
                Err(e) => assert!(Instant::now() < deadline, "{point:?}: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        match left {
            None => {}
            Some(state) => {
                // Only before the daemon existed is anything left for the next command.
                assert!(
                    matches!(point, KillPoint::Preparing) && state.daemon.is_none(),
                    "{point:?}: left behind by a lab whose daemon was there: {state:?}"
                );
                assert_eq!(state.owner.as_ref(), Some(&owner));
                // The next `up` finds it, says who left it, and starts afresh.
                let said = Said::default();
                let mut next = LocalLab::new(options.clone()).unwrap();
                next.up(&said).await.expect("up after a killed owner");
                holdings.merge(Holdings::gather(&next));
                let said = said.0.lock().unwrap().join("\n");
                assert!(
                    said.contains(&format!(
                        "was left behind by `guardlab-local-lab up --hold --lab {}` (pid {}), which ended",
                        options.lab,
                        owner.process.pid
                    )),
                    "{said}"
                );
                next.down(&NoProgress).await.unwrap();
            }
        }
        assert_nothing_left(&holdings);
        if let Some(registration) = registration {
            assert!(
                !registration.exists(),
                "{point:?}: the registration {} is left",
                registration.display()
            );
        }
        assert!(lab.state().unwrap().is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_lab_is_removed_when_its_holder_is_told_to_stop() {
    require_root();
    let scratch = tempfile::tempdir().unwrap();
    let options = lab_options(&lab_name("own-term"), scratch.path());
    let lab = LocalLab::new(options.clone()).unwrap();
    let mut holder = hold(&options);
    let mut holdings = Holdings::gather(&lab);
    let deadline = Instant::now() + Duration::from_secs(240);
    while lab
        .state()
        .ok()
        .flatten()
        .is_none_or(|s| s.phase != "ready")
    {
        holdings.merge(Holdings::gather(&lab));
        assert!(holder.try_wait().unwrap().is_none(), "the holder ended");
        assert!(Instant::now() < deadline, "the lab did not come up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    holdings.merge(Holdings::gather(&lab));
    terminate(&holder);
    let status = holder.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(matches!(lab.inspect().await.unwrap(), LabCondition::Down));
    assert_nothing_left(&holdings);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lab_another_live_run_owns_is_refused_and_down_still_removes_it() {
    require_root();
    let scratch = tempfile::tempdir().unwrap();
    let options = lab_options(&lab_name("own-busy"), scratch.path());
    let lab = LocalLab::new(options.clone()).unwrap();
    let mut holder = hold(&options);
    let mut holdings = Holdings::gather(&lab);
    let deadline = Instant::now() + Duration::from_secs(240);
    while lab
        .state()
        .ok()
        .flatten()
        .is_none_or(|s| s.phase != "ready")
    {
        holdings.merge(Holdings::gather(&lab));
        assert!(holder.try_wait().unwrap().is_none(), "the holder ended");
        assert!(Instant::now() < deadline, "the lab did not come up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    holdings.merge(Holdings::gather(&lab));

    // Neither another run's `up` nor a `lab up` takes it from the run that owns it.
    for owned_by in [Some("a second run".to_string()), None] {
        let mut second = LocalLab::new(LocalLabOptions {
            owned_by,
            ..options.clone()
        })
        .unwrap();
        let err = second.up(&NoProgress).await.unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, LabError::Backend { .. })
                && text.contains(&format!(
                    "belongs to `guardlab-local-lab up --hold --lab {}` (pid {}), which is still running",
                    options.lab,
                    holder.id()
                )),
            "{text}"
        );
    }
    assert!(
        matches!(lab.inspect().await.unwrap(), LabCondition::Running(_)),
        "the refusal took nothing"
    );
    // `down` always removes a lab, whoever owns it.
    let mut down = LocalLab::new(options).unwrap();
    let removed = down.take_down(&NoProgress).await.unwrap();
    assert!(
        removed.processes > 0 && removed.cgroups > 0 && removed.network_namespaces == 2,
        "{removed:?}"
    );
    assert_nothing_left(&holdings);
    // Its owner, told to stop, finds nothing left to remove.
    terminate(&holder);
    assert!(holder.wait().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_killed_daemon_and_owner_left_is_found_said_and_removed_by_the_next_up() {
    require_root();
    let scratch = tempfile::tempdir().unwrap();
    let options = lab_options(&lab_name("own-both"), scratch.path());
    let lab = LocalLab::new(options.clone()).unwrap();
    let mut holder = hold(&options);
    let mut holdings = Holdings::gather(&lab);
    let deadline = Instant::now() + Duration::from_secs(240);
    while lab
        .state()
        .ok()
        .flatten()
        .is_none_or(|s| s.phase != "ready")
    {
        holdings.merge(Holdings::gather(&lab));
        assert!(holder.try_wait().unwrap().is_none(), "the holder ended");
        assert!(Instant::now() < deadline, "the lab did not come up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    holdings.merge(Holdings::gather(&lab));
    let state = lab.state().unwrap().unwrap();
    let owner = state.owner.clone().unwrap();
    // The daemon first, so that nobody is left to notice the owner's end.
    let daemon = state.daemon.unwrap();
    assert!(daemon.kill().unwrap());
    while daemon.is_alive() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    holder.kill().unwrap();
    holder.wait().unwrap();

    let LabCondition::LeftBehind {
        state,
        processes,
        mounts,
    } = lab.inspect().await.unwrap()
    else {
        panic!("a lab without daemon and owner is not left behind")
    };
    assert!(processes > 0, "the pod runs on without its daemon");
    assert_eq!(mounts, 1, "the pod's writable layer");
    assert_eq!(state.owner.as_ref(), Some(&owner));
    // The tool says so too.
    let status = Command::new(local_lab_exe())
        .args(["status", "--lab", &options.lab])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains(&format!(
            "lab {} is not running but left things behind ({processes} processes, 1 mounts",
            options.lab
        )),
        "{text}"
    );

    // The next `up` says who left it, removes it and starts afresh.
    let said = Said::default();
    let mut next = LocalLab::new(options.clone()).unwrap();
    next.up(&said).await.expect("up after a killed lab");
    let said = said.0.lock().unwrap().join("\n");
    assert!(
        said.contains(&format!(
            "lab {} was left behind by `guardlab-local-lab up --hold --lab {}` (pid {}), which ended before it was removed: removing it",
            options.lab, options.lab, owner.process.pid
        )),
        "{said}"
    );
    let fresh = next.state().unwrap().unwrap();
    assert_ne!(fresh.daemon, Some(daemon), "a new daemon");
    assert_eq!(
        fresh.owner, None,
        "`up` without an owner makes a lab without one"
    );
    let new_holdings = Holdings::gather(&next);
    next.down(&NoProgress).await.unwrap();
    assert_nothing_left(&holdings);
    assert_nothing_left(&new_holdings);
}
