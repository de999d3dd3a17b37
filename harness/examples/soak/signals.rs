//! Runs stopped at random points: `guardlab scenario cryptominer` on the suite's lab, stopped
//! by SIGINT, SIGTERM or SIGKILL at a random point (seeded): half the time a moment uniformly
//! over the length of a whole run (measured first; it must pass), half the time a random step
//! and a moment early in it (so the quick steps after the attack, when the miner runs, are
//! hit too). Then `guardlab lab status`, and a count of what the lab left behind: processes,
//! mounts, namespaces (with their network devices), host interfaces, cgroups, BPF programs and
//! its directory, gathered while the run went (the lab tests' `leftovers` module). SIGINT and
//! SIGTERM must take the lab down before the command exits 130 or 143 with one line; after
//! SIGKILL the lab's daemon must remove it. Each run is the next run of the one before it, on
//! the same lab: it must start cleanly (one that ends before its point must pass, and another
//! is started for the signal).
#![allow(unsafe_code)] // kill(2) of the run this module started

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use guardlab_lab::local::{LocalLab, LocalLabOptions};

use crate::Suite;
use crate::leftovers::{Holdings, leftovers};

/// A small seeded generator (splitmix64): the suite's random points must be repeatable from
/// the printed seed, and need no more than this.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

const STOPS: [(i32, &str); 3] = [
    (libc::SIGINT, "SIGINT"),
    (libc::SIGTERM, "SIGTERM"),
    (libc::SIGKILL, "SIGKILL"),
];

/// What `lab status` says of a lab that is gone.
const DOWN: &str = "No local lab is running.";

/// A command running with its standard output and error collected as they come; standard
/// output is also shown, indented.
pub struct Running {
    pub child: Child,
    pub stdout: Arc<Mutex<String>>,
    pub stderr: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

/// Which lines of a run's output are shown as it goes: step headings and results, the run's
/// own `guardlab:` lines and its summary (the full output of a storm is tens of thousands of
/// lines).
fn worth_showing(line: &str) -> bool {
    let t = line.trim_start();
    (t.starts_with('[') && t.contains("] "))
        || t.starts_with("=>")
        || t.starts_with("guardlab:")
        || t.starts_with("PASS")
        || t.starts_with("FAIL")
        || t.starts_with("Sensor:")
}

impl Running {
    pub fn start(mut command: std::process::Command, show: bool) -> Result<Running, String> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting guardlab: {e}"))?;
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        for (from, into, echo) in [
            (
                Box::new(child.stdout.take().expect("piped")) as Box<dyn std::io::Read + Send>,
                stdout.clone(),
                show,
            ),
            (
                Box::new(child.stderr.take().expect("piped")),
                stderr.clone(),
                show,
            ),
        ] {
            readers.push(std::thread::spawn(move || {
                let mut lines = BufReader::new(from);
                let mut line = String::new();
                while lines.read_line(&mut line).unwrap_or(0) > 0 {
                    if echo && worth_showing(&line) {
                        print!("        | {line}");
                    }
                    into.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push_str(&line);
                    line.clear();
                }
            }));
        }
        Ok(Running {
            child,
            stdout,
            stderr,
            readers,
        })
    }

    pub fn stdout(&self) -> String {
        self.stdout
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until the readers reached the end of the output (the command has ended).
    pub fn drain(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }
}

/// Gathers what the lab holds, every few milliseconds, until dropped.
pub struct Watch {
    holdings: Arc<Mutex<Holdings>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watch {
    pub fn start(lab: &str) -> Result<Watch, String> {
        let lab =
            LocalLab::new(LocalLabOptions::new(lab)).map_err(|e| format!("the lab {lab}: {e}"))?;
        let holdings = Arc::new(Mutex::new(Holdings::gather(&lab)));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, s) = (holdings.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let now = Holdings::gather(&lab);
                h.lock().unwrap_or_else(|e| e.into_inner()).merge(now);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Ok(Watch {
            holdings,
            stop,
            thread: Some(thread),
        })
    }

    /// Stop gathering; what the lab held at any time it was looked at.
    pub fn finish(mut self) -> Holdings {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.holdings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// What is left of `holdings`, once the kernel had a moment for its asynchronous cleanup
/// (network namespaces are freed by a kernel worker).
pub fn left_behind(holdings: &Holdings) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = leftovers(holdings);
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `guardlab lab status` of the suite's lab: exit code and what it said.
pub fn lab_status(suite: &Suite) -> (Option<i32>, String) {
    match suite
        .guardlab()
        .args(["lab", "status", "--namespace", &suite.lab])
        .output()
    {
        Ok(out) => (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ),
        Err(e) => (None, format!("could not run lab status: {e}")),
    }
}

/// Where in a run a signal comes.
#[derive(Clone, Copy)]
enum Point {
    /// This long after the run started.
    Time(Duration),
    /// This long after the heading of step N (1-based).
    Step(u64, Duration),
}

impl Point {
    fn describe(self, steps: usize) -> String {
        match self {
            Point::Time(at) => format!("at {:.2} s of the run", at.as_secs_f64()),
            Point::Step(step, after) => {
                format!("{} ms into step {step}/{steps}", after.as_millis())
            }
        }
    }
}

/// The heading of step `index` (1-based) of `total`, as a run prints it: `[ 3/13] `.
fn step_heading(index: u64, total: usize) -> String {
    let width = total.to_string().len();
    format!("[{index:>width$}/{total}] ")
}

/// `[ 3/13] baseline-pip (notebook_cell)`: a step's heading (not a progress line such as
/// `[1 line, 0 s] ...`).
fn is_step_heading(line: &str) -> bool {
    line.trim_start()
        .strip_prefix('[')
        .and_then(|rest| rest.split_once("] "))
        .and_then(|(inside, _)| inside.trim().split_once('/'))
        .is_some_and(|(a, b)| {
            !a.is_empty()
                && !b.is_empty()
                && a.bytes().all(|c| c.is_ascii_digit())
                && b.bytes().all(|c| c.is_ascii_digit())
        })
}

/// The step a run is in, from what it printed: its last step heading.
fn current_step(stdout: &str) -> String {
    stdout
        .lines()
        .rfind(|l| is_step_heading(l))
        .map(|l| l.trim().to_string())
        .unwrap_or_else(|| "before the first step".to_string())
}

/// A whole `guardlab scenario cryptominer` on the suite's lab, which must pass: how long it
/// took (the span the random points are drawn from).
fn reference_run(suite: &mut Suite) -> Result<Duration, String> {
    let watch = Watch::start(&suite.lab)?;
    let mut command = suite.guardlab();
    command.args(["scenario", "cryptominer"]);
    let started = Instant::now();
    let mut run = Running::start(command, false)?;
    let status = run.child.wait().map_err(|e| e.to_string())?;
    let took = started.elapsed();
    run.drain();
    let left = left_behind(&watch.finish());
    suite.check(
        status.success(),
        format!(
            "a whole run on the suite's lab passes ({status}, {:.0} s){}",
            took.as_secs_f64(),
            if status.success() {
                String::new()
            } else {
                format!(
                    ": {}",
                    crate::measure::tail(&(run.stdout() + &run.stderr()), 4)
                )
            }
        ),
    );
    suite.check(
        left.is_empty(),
        format!("nothing of the lab left after a whole run: {left:?}"),
    );
    if status.success() {
        Ok(took)
    } else {
        Err("the scenario does not pass on this host: no point in stopping it".into())
    }
}

pub fn run(suite: &mut Suite, rng: &mut Rng) -> Result<(), String> {
    let scenario = suite.root.join("scenarios/cryptominer.yaml");
    let text =
        std::fs::read_to_string(&scenario).map_err(|e| format!("{}: {e}", scenario.display()))?;
    let steps = serde_yaml::from_str::<serde_yaml::Value>(&text)
        .ok()
        .and_then(|v| {
            v.get("steps")
                .and_then(|s| s.as_sequence())
                .map(|s| s.len())
        })
        .ok_or("scenarios/cryptominer.yaml has no steps")?;
    let span = reference_run(suite)?;
    let runs = if suite.short { 6 } else { 30 };
    // Each signal equally often, in a seeded order.
    let mut order: Vec<usize> = (0..runs).map(|i| i % STOPS.len()).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let mut tried = [0usize; 3];
    let mut left_total = 0;
    let mut reported_by_next = 0;
    let mut points = Vec::new();
    // Runs vary in length: the span is the shortest whole run seen, and a run that ends before
    // its moment is followed by another (a few at most) until its signal is sent.
    let mut span = span;
    let mut n = 0;
    let mut planned = order.iter().copied().peekable();
    while let Some(&which) = planned.peek() {
        n += 1;
        if n > 3 * runs {
            suite.check(
                false,
                format!(
                    "{} of {runs} signals sent: the runs kept ending before their moment",
                    tried.iter().sum::<usize>()
                ),
            );
            break;
        }
        let (signal, name) = STOPS[which];
        // Half the time a moment of the run, uniformly over the length of a whole one (the
        // long steps get most); half the time a step, uniformly over the steps (the quick ones
        // after the attack too, when the miner runs), and a moment early in it.
        let point = if rng.below(2) == 0 {
            Point::Time(span.mul_f64(rng.below(1_000_000) as f64 / 1e6))
        } else {
            Point::Step(
                rng.below(steps as u64) + 1,
                Duration::from_millis(rng.below(300)),
            )
        };
        println!(
            "  --    run {n}: {name} {} (signal {} of {runs})",
            point.describe(steps),
            tried.iter().sum::<usize>() + 1
        );
        let watch = Watch::start(&suite.lab)?;
        let mut command = suite.guardlab();
        command.args(["scenario", "cryptominer"]);
        let started = Instant::now();
        let mut run = Running::start(command, false)?;
        let mut ended_first = None;
        let mut reached: Option<Instant> = None;
        loop {
            if let Some(status) = run.child.try_wait().map_err(|e| e.to_string())? {
                ended_first = Some(status);
                break;
            }
            let now = Instant::now();
            let due = match point {
                Point::Time(at) => now >= started + at,
                Point::Step(step, after) => {
                    if reached.is_none() && run.stdout().contains(&step_heading(step, steps)) {
                        reached = Some(now);
                    }
                    reached.is_some_and(|r| now >= r + after)
                }
            };
            if due || started.elapsed() > Duration::from_secs(600) {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let stdout = run.stdout();
        // Each run is the next run of a stopped one: did it find something left behind?
        if n > 0 && stdout.contains("was left behind") {
            reported_by_next += 1;
            println!(
                "        this run found what the previous one left: {}",
                stdout
                    .lines()
                    .find(|l| l.contains("was left behind"))
                    .unwrap_or_default()
                    .trim()
            );
        }
        if let Some(status) = ended_first {
            // The run ended before the moment: it must have passed (a clean next run).
            span = span.min(started.elapsed());
            run.drain();
            let left = left_behind(&watch.finish());
            left_total += left.len();
            println!("        the run ended ({status}) before the signal: not counted");
            suite.check(
                status.success() && left.is_empty(),
                format!(
                    "run {}: ended before the signal, passing, nothing left ({status}; left: {left:?})",
                    n
                ),
            );
            continue;
        }
        let stopped_at = current_step(&stdout);
        // SAFETY: kill(2) of the child this function started and has not reaped.
        let ok = unsafe { libc::kill(run.child.id() as libc::pid_t, signal) } == 0;
        if !ok {
            return Err(format!(
                "could not send {name}: {}",
                std::io::Error::last_os_error()
            ));
        }
        tried[which] += 1;
        points.push(format!("{name} in {stopped_at}"));
        let waited = Instant::now();
        let status = loop {
            if let Some(status) = run.child.try_wait().map_err(|e| e.to_string())? {
                break Some(status);
            }
            if waited.elapsed() > Duration::from_secs(180) {
                let _ = run.child.kill();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        run.drain();
        let stderr = run.stderr();
        let last = stderr
            .lines()
            .rfind(|l| l.starts_with("guardlab:"))
            .unwrap_or("")
            .to_string();
        let code = status.and_then(|s| s.code());
        let by_signal = status.and_then(|s| std::os::unix::process::ExitStatusExt::signal(&s));
        let mut sent = true;
        match signal {
            _ if code == Some(0) => {
                sent = false;
                // It ended between the look above and the signal.
                println!("        the run ended (exit 0) as the signal was sent: not counted");
                tried[which] -= 1;
                points.pop();
            }
            libc::SIGKILL => {
                suite.check(
                    by_signal == Some(libc::SIGKILL),
                    format!("run {}: SIGKILL at `{stopped_at}` ended the run", n),
                );
            }
            _ => {
                let expected = 128 + signal;
                let lines = stderr
                    .lines()
                    .filter(|l| l.starts_with("guardlab:"))
                    .count();
                suite.check(
                    code == Some(expected)
                        && lines == 1
                        && last.starts_with(&format!("guardlab: stopped by {name}")),
                    format!(
                        "run {}: {name} at `{stopped_at}`: exit {expected} with one line ({}): {last}",
                        n,
                        code.map_or("no exit code".to_string(), |c| format!("exit {c}"))
                    ),
                );
            }
        }
        if sent {
            planned.next();
        }
        // `lab status` right after; after SIGKILL the daemon may still be removing the lab.
        let (code, said) = lab_status(suite);
        println!(
            "        lab status (exit {}): {}",
            code.map_or("-".into(), |c| c.to_string()),
            said.lines().next().unwrap_or_default()
        );
        if signal == libc::SIGKILL {
            let deadline = Instant::now() + Duration::from_secs(90);
            let mut said = said;
            while !said.contains(DOWN) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(200));
                said = lab_status(suite).1;
            }
            suite.check(
                said.contains(DOWN),
                format!(
                    "run {}: after SIGKILL the lab was removed without a command: {}",
                    n,
                    said.lines().next().unwrap_or_default()
                ),
            );
        } else {
            suite.check(
                said.contains(DOWN) && code == Some(0),
                format!(
                    "run {}: `lab status` after {name}: {}",
                    n,
                    said.lines().next().unwrap_or_default()
                ),
            );
        }
        let holdings = watch.finish();
        let left = left_behind(&holdings);
        left_total += left.len();
        suite.check(
            left.is_empty(),
            format!(
                "run {}: nothing of the lab left after {name}{}",
                n,
                if left.is_empty() {
                    String::new()
                } else {
                    format!(": {}", left.join("; "))
                }
            ),
        );
        if !left.is_empty() {
            // Clean up for the next run, and say whether `lab down` could.
            let down = suite
                .guardlab()
                .args(["lab", "down", "--namespace", &suite.lab])
                .output();
            let still = leftovers(&holdings);
            println!(
                "        lab down: {}; left after it: {}",
                down.map(|o| o.status.to_string())
                    .unwrap_or_else(|e| e.to_string()),
                still.len()
            );
        }
    }
    suite.figure(
        "signals",
        format!(
            "{} tried ({} SIGINT, {} SIGTERM, {} SIGKILL) at random points of a {:.0} s run; leftovers found: {left_total}; runs that found the previous run's leftovers: {reported_by_next}",
            tried.iter().sum::<usize>(),
            tried[0],
            tried[1],
            tried[2],
            span.as_secs_f64()
        ),
    );
    suite.figure("signal points", points.join("; "));
    Ok(())
}
