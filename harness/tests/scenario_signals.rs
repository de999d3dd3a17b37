//! `guardlab scenario cryptominer` on the local lab, stopped by SIGINT, SIGTERM and SIGKILL
//! during setup, in the middle, and after the attack (the miner runs then). After each: `lab
//! status`, and the check that no process, mount, namespace (with its network devices), host
//! interface, cgroup, BPF program or directory of the lab is left. SIGINT and SIGTERM take the
//! lab down before the command exits 130 or 143 with one line; after SIGKILL the lab's daemon
//! removes it (the lab belongs to the run). When the daemon is killed too, `lab status` reports
//! what is left and the next run says so, removes it, and passes. `lab up` stopped before the
//! lab is up removes what it made; one that finished leaves a lab with no owner, until `lab
//! down`.
//!
//! Root only (CI is root). Each run has its own lab name and an ephemeral notebook port, so
//! nothing here meets another lab; the runs of this file go one at a time, to keep the load
//! (and so the timings of the scenario's waits) that of one run.
#![allow(unsafe_code)] // tests make the system calls they check (geteuid, kill)

use guardlab_lab_test_support as leftovers;
mod scenario_common;

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use guardlab_lab::local::{LocalLab, LocalLabOptions};
use leftovers::{Holdings, assert_nothing_left};
use scenario_common::root;

/// One run at a time (see the module documentation).
static ONE_RUN_AT_A_TIME: Mutex<()> = Mutex::new(());

fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "these tests run the local lab (namespaces, cgroups, eBPF): run them as root (sudo cargo test)"
    );
}

/// The miner the lab serves is `minerd` next to the `guardlab` binary: build it first.
fn build_minerd() {
    let status = Command::new(env!("CARGO"))
        .args(["build", "-q", "-p", "guardlab-minerd", "--bin", "minerd"])
        .current_dir(root())
        .status()
        .expect("running cargo to build minerd");
    assert!(status.success(), "building minerd failed");
}

fn guardlab() -> Command {
    let mut command = Command::new(assert_cmd::cargo::cargo_bin("guardlab"));
    command
        .env("GUARDLAB_SCENARIOS_DIR", root().join("scenarios"))
        .env_remove("GUARDLAB_SNAPSHOT_DIR")
        .env_remove("GUARDLAB_REPLAY_FILE")
        .current_dir(root());
    command
}

/// A running `guardlab scenario cryptominer` on the lab `lab`, its output collected as it
/// comes.
struct Run {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

fn collect(mut from: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let into = text.clone();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        while let Ok(n) = from.read(&mut buffer) {
            if n == 0 {
                break;
            }
            into.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buffer[..n]));
        }
    });
    text
}

impl Run {
    fn start(lab: &str) -> Run {
        Run::command(&["scenario", "cryptominer"], lab)
    }

    /// `guardlab ARGS` on the local lab `lab`, with an ephemeral notebook port.
    fn command(args: &[&str], lab: &str) -> Run {
        let mut child = guardlab()
            .args(args)
            .env("GUARDLAB_LAB", lab)
            .env("GUARDLAB_NOTEBOOK_ADDRESS", "127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = collect(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        Run {
            child,
            stdout,
            stderr,
        }
    }

    fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) of the child we started and have not reaped.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, signal) }, 0);
    }

    /// Waits for the run's end (at most `limit`), then for its output.
    fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // The collecting threads read to the end of the pipes.
                std::thread::sleep(Duration::from_millis(200));
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the run did not end within {limit:?}:\n{}\n{}",
                self.stdout(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Where in the run the signal comes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Point {
    /// The pod's first process runs; the lab is not up yet.
    Setup,
    /// The terminal step begins (the notebook server and its kernel run).
    Middle,
    /// The attack step is over: the miner runs in the pod.
    AfterAttack,
}

impl Point {
    const ALL: [Point; 3] = [Point::Setup, Point::Middle, Point::AfterAttack];

    fn word(self) -> &'static str {
        match self {
            Point::Setup => "setup",
            Point::Middle => "middle",
            Point::AfterAttack => "attack",
        }
    }

    fn reached(self, run: &Run, lab: &LocalLab) -> bool {
        match self {
            Point::Setup => lab
                .state()
                .ok()
                .flatten()
                .is_some_and(|s| s.pods.iter().any(|p| p.root.is_some())),
            // Its first command is said once the step has begun.
            Point::Middle => run
                .stdout()
                .split_once("[ 6/13] terminal-ls")
                .is_some_and(|(_, step)| step.contains("$ ls")),
            Point::AfterAttack => run.stdout().contains("[10/13] pool-reached"),
        }
    }
}

/// Starts a run on lab `name` and returns once it reached `point`, with what the lab held
/// until then.
fn run_to(name: &str, point: Point) -> (Run, LocalLab, Holdings) {
    let lab = LocalLab::new(LocalLabOptions::new(name)).unwrap();
    let mut run = Run::start(name);
    let mut holdings = Holdings::gather(&lab);
    let deadline = Instant::now() + Duration::from_secs(600);
    while !point.reached(&run, &lab) {
        holdings.merge(Holdings::gather(&lab));
        if let Some(status) = run.child.try_wait().unwrap() {
            panic!(
                "{point:?}: the run ended ({status}) before the point:\n{}\n{}",
                run.stdout(),
                run.stderr()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{point:?} not reached:\n{}",
            run.stdout()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    holdings.merge(Holdings::gather(&lab));
    (run, lab, holdings)
}

/// `guardlab lab status` of the lab: exit code and output.
fn lab_status(name: &str) -> (Option<i32>, String) {
    let output = guardlab()
        .args(["lab", "status", "--namespace", name])
        .output()
        .unwrap();
    (
        output.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

const DOWN: &str = "No local lab is running.";

/// SIGINT or SIGTERM at each point: the lab is taken down before the command ends, with one
/// line, and exit 128 + the signal.
fn stopped_runs_take_their_lab_down(signal: i32, name: &str, code: i32) {
    require_root();
    build_minerd();
    let _one = ONE_RUN_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    for point in Point::ALL {
        eprintln!("--- {name} at {point:?}");
        let lab_name = format!(
            "t-{}-{}-{}",
            name.to_lowercase(),
            point.word(),
            std::process::id()
        );
        let (mut run, lab, mut holdings) = run_to(&lab_name, point);
        run.signal(signal);
        let status = run.wait(Duration::from_secs(120));
        let (stdout, stderr) = (run.stdout(), run.stderr());
        assert_eq!(status.code(), Some(code), "{point:?}:\n{stdout}\n{stderr}");
        // One line, saying where it stopped and what it removed; no summary.
        let last = stderr.lines().last().unwrap_or_default();
        let step: usize = last
            .strip_prefix(&format!("guardlab: stopped by {name} in step "))
            .and_then(|rest| rest.split('/').next())
            .and_then(|number| number.parse().ok())
            .unwrap_or_else(|| panic!("{point:?}: {last}\n{stderr}"));
        let expected = match point {
            Point::Setup => 1..=1,
            Point::Middle => 6..=6,
            // The attack's last moments, or any of the quick steps after it.
            Point::AfterAttack => 9..=13,
        };
        assert!(expected.contains(&step), "{point:?}: {last}");
        assert!(
            last.contains(&format!(
                "of scenario cryptominer: removed lab {lab_name}: "
            )) && last.contains("processes ended")
                && last.contains("its state directory removed"),
            "{point:?}: {last}\n{stderr}"
        );
        assert_eq!(
            stderr
                .lines()
                .filter(|l| l.starts_with("guardlab:"))
                .count(),
            1,
            "{point:?}: {stderr}"
        );
        assert!(
            !stdout.contains("Scenario cryptominer on the local backend"),
            "{point:?}: a stopped run printed a summary:\n{stdout}"
        );
        if point != Point::Setup {
            // A pod ran by then: its processes and its writable layer were removed.
            assert!(last.contains("1 mount unmounted"), "{point:?}: {last}");
        }
        let (code, said) = lab_status(&lab_name);
        assert_eq!(code, Some(0), "{said}");
        assert!(said.contains(DOWN), "{point:?}: {said}");
        holdings.merge(Holdings::gather(&lab));
        assert_nothing_left(&holdings);
    }
}

#[test]
fn sigint_at_any_point_takes_the_lab_down_and_exits_130() {
    stopped_runs_take_their_lab_down(libc::SIGINT, "SIGINT", 130);
}

#[test]
fn sigterm_at_any_point_takes_the_lab_down_and_exits_143() {
    stopped_runs_take_their_lab_down(libc::SIGTERM, "SIGTERM", 143);
}

#[test]
fn after_sigkill_at_any_point_the_labs_daemon_removes_it() {
    require_root();
    build_minerd();
    let _one = ONE_RUN_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    for point in Point::ALL {
        eprintln!("--- SIGKILL at {point:?}");
        let lab_name = format!("t-sigkill-{}-{}", point.word(), std::process::id());
        let (mut run, lab, mut holdings) = run_to(&lab_name, point);
        let owner = run.child.id();
        let daemon = lab.state().unwrap().unwrap().daemon.map(|d| d.pid);
        run.child.kill().unwrap();
        let status = run.wait(Duration::from_secs(30));
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
        // Until it is gone, `lab status` says that the lab goes with its ended owner.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            holdings.merge(Holdings::gather(&lab));
            let (code, said) = lab_status(&lab_name);
            if said.contains(DOWN) {
                assert_eq!(code, Some(0), "{said}");
                break;
            }
            assert!(
                said.contains(&format!(
                    "is being removed by its daemon (pid {}): its owner `guardlab scenario cryptominer` (pid {owner}) ended",
                    daemon.unwrap_or(0)
                )) || said.contains(&format!(
                    "`guardlab scenario cryptominer` (pid {owner}), which has ended"
                )),
                "{point:?}: {said}"
            );
            assert!(
                Instant::now() < deadline,
                "{point:?}: the lab was not removed after its owner was killed: {said}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_nothing_left(&holdings);
    }
}

#[test]
fn what_a_killed_run_and_daemon_left_is_reported_and_the_next_run_removes_it_and_passes() {
    require_root();
    build_minerd();
    let _one = ONE_RUN_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lab_name = format!("t-leftover-{}", std::process::id());
    let (mut run, lab, mut holdings) = run_to(&lab_name, Point::AfterAttack);
    let owner = run.child.id();
    // The daemon first, so that nobody is left to notice the run's end.
    let daemon = lab.state().unwrap().unwrap().daemon.unwrap();
    assert!(daemon.kill().unwrap());
    while daemon.is_alive() {
        std::thread::sleep(Duration::from_millis(10));
    }
    run.child.kill().unwrap();
    run.wait(Duration::from_secs(30));
    holdings.merge(Holdings::gather(&lab));

    let (code, said) = lab_status(&lab_name);
    assert_eq!(code, Some(1), "a lab left behind needs `lab down`: {said}");
    assert!(
        said.contains(&format!(
            "Lab {lab_name} (local backend) is not running but left things behind: its daemon (pid {}) is gone;",
            daemon.pid
        )) && said.contains(&format!(
            "It was left by `guardlab scenario cryptominer` (pid {owner}), which ended."
        )) && said.contains("`guardlab lab down` removes it"),
        "{said}"
    );

    // The next run says what it found, removes it, and passes.
    let mut next = Run::start(&lab_name);
    let status = next.wait(Duration::from_secs(600));
    let stdout = next.stdout();
    assert_eq!(status.code(), Some(0), "{stdout}\n{}", next.stderr());
    assert!(
        stdout.contains(&format!(
            "lab {lab_name} was left behind by `guardlab scenario cryptominer` (pid {owner}), which ended before it was removed: removing it"
        )),
        "{stdout}"
    );
    assert!(stdout.contains("PASS: 13 steps"), "{stdout}");
    assert!(
        stdout.contains("Sensor: ") && stdout.contains("events, none lost;"),
        "{stdout}"
    );
    let (_, said) = lab_status(&lab_name);
    assert!(said.contains(DOWN), "{said}");
    assert_nothing_left(&holdings);
}

#[test]
fn lab_up_stopped_before_the_lab_is_up_removes_what_it_made_and_a_finished_one_stays() {
    require_root();
    build_minerd();
    let _one = ONE_RUN_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let lab_name = format!("t-labup-{}", std::process::id());
    let lab = LocalLab::new(LocalLabOptions::new(&lab_name)).unwrap();
    let up = ["lab", "up", "--namespace", lab_name.as_str()];

    // Stopped while the pod starts: what it made is removed.
    let mut run = Run::command(&up, &lab_name);
    let mut holdings = Holdings::gather(&lab);
    let deadline = Instant::now() + Duration::from_secs(600);
    while !Point::Setup.reached(&run, &lab) {
        holdings.merge(Holdings::gather(&lab));
        assert!(run.child.try_wait().unwrap().is_none(), "{}", run.stderr());
        assert!(Instant::now() < deadline, "the pod did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
    holdings.merge(Holdings::gather(&lab));
    run.signal(libc::SIGINT);
    let status = run.wait(Duration::from_secs(120));
    let stderr = run.stderr();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(
        stderr
            .lines()
            .last()
            .unwrap_or_default()
            .starts_with(&format!(
                "guardlab: stopped by SIGINT before the lab was up: removed lab {lab_name}: "
            )),
        "{stderr}"
    );
    let (code, said) = lab_status(&lab_name);
    assert_eq!((code, said.contains(DOWN)), (Some(0), true), "{said}");
    assert_nothing_left(&holdings);

    // Up to the end: the lab has no owner and outlives the command, until `lab down`.
    let mut run = Run::command(&up, &lab_name);
    let status = run.wait(Duration::from_secs(600));
    assert_eq!(status.code(), Some(0), "{}", run.stderr());
    let holdings = Holdings::gather(&lab);
    let (code, said) = lab_status(&lab_name);
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains("Lab (local backend) is up.")
            && said.contains("It has no owner")
            && said.contains("Sensor: "),
        "{said}"
    );
    let down = guardlab()
        .args(["lab", "down", "--namespace", &lab_name])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&down.stdout);
    assert!(down.status.success(), "{said}");
    assert!(
        said.contains(&format!("Removed lab {lab_name}: ")),
        "{said}"
    );
    assert_nothing_left(&holdings);
}
