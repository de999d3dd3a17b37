//! `just bench-latency` (root, the local lab): how long a deviant exec takes to be flagged and
//! killed while the pod runs an exec storm, with the policy's user-space kill path beside the
//! sensor's in-kernel one, in one run (issue 16).
//!
//! The scenario (`bench.yaml`, beside this file) runs in one Jupyter terminal: a baseline with
//! a short storm, the fingerprint, a policy in enforce mode; then a storm of a tiny static
//! program (`ok`, allowed) at full speed for `--seconds`, with a deviant exec every
//! `--trickle-ms` (each a copy of the probe at a path of its own, so each is a new deviation
//! with a flag of its own), twice:
//! - **user space**: this program adds `agentKillProcess` to the policy: the runner carries
//!   out the engine's decision through the lab;
//! - **in the kernel**: this program turns the sensor's exec allow-list on (every program the
//!   pod ran so far, the probes excepted) and takes the kill out of the policy: each probe is
//!   killed at its exec.
//!
//! The probe's first system call creates a file named by its argument (its mark): a probe
//! killed at exec must leave none; the user-space kill comes after the probe ran, so there it
//! leaves one (which shows the probe works). The runner's own latency figures (the run's JSON
//! report `latency`) give the times: exec → flag (the runner's clock) and exec → gone (the
//! probe's exit event, kernel time).
//!
//! Exit 0 when every check passed and exec → flag p99 is within the goal (20 ms) at 2,000
//! execs/s or more with no event lost, 1 when not, 2 when it could not run.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use guardlab::console::Console;
use guardlab::scenario::backend::{EventSink, Response, ScenarioBackend, StepError};
use guardlab::scenario::file::{self, CheckPoolReached, Step, TerminalCommand};
use guardlab::scenario::latency::{DeviationLatency, Spread};
use guardlab::scenario::live::{LabBackend, LocalBackend};
use guardlab::scenario::runner::{Runner, SnapshotMode};
use guardlab::scenario::snapshot::SnapshotDir;
use guardlab::scenario::{RunReport, RunResult};
use guardlab_engine::deviation::Decision;
use guardlab_engine::model::{ActionSelectors, ResponseAction};
use guardlab_engine::policy::default_response;
use guardlab_events::{Event, EventBody, ExeStatus};
use guardlab_guard_console::SharedStore;
use guardlab_lab::{LocalLab, LocalLabOptions};
use guardlab_lab_api::{Enforcement, Lab};
use guardlab_policy_store::PolicyStore;
use serde_json::Value as Json;

mod elf;

const HELP: &str = "\
just bench-latency [-- OPTIONS]  (cargo run -p guardlab --example bench_latency -- OPTIONS)

An exec storm in the local lab's pod with a steady trickle of deviant execs, killed by the
policy from user space, then by the sensor in the kernel; prints p50/p99/max of exec->flag and
exec->kill for both, the exec rate reached, the CPU count and the events lost. Root.

Options:
  --seconds N      how long each storm runs (default 10)
  --trickle-ms N   a deviant exec every N ms (default 20)
  --json FILE      also write the run's JSON report (every latency figure) there
  -h, --help       this text

Example:
  sudo -E just bench-latency -- --seconds 20 --trickle-ms 10
";

/// The goal: exec → flag p99 within this, at this rate or more.
const GOAL_P99_MS: f64 = 20.0;
const GOAL_RATE: f64 = 2_000.0;

/// Where the pod keeps the benchmark's programs.
const DIR: &str = "/home/jovyan/bench";
const DEVIANTS: &str = "/home/jovyan/bench/d/";

struct Options {
    seconds: u32,
    trickle_ms: u32,
    json: Option<PathBuf>,
}

fn options() -> Result<Option<Options>, String> {
    let mut o = Options {
        seconds: 10,
        trickle_ms: 20,
        json: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--seconds" => o.seconds = number(&value("--seconds")?, "--seconds")?,
            "--trickle-ms" => o.trickle_ms = number(&value("--trickle-ms")?, "--trickle-ms")?,
            "--json" => o.json = Some(value("--json")?.into()),
            other => return Err(format!("unknown argument {other:?} (see --help)")),
        }
    }
    Ok(Some(o))
}

fn number(text: &str, name: &str) -> Result<u32, String> {
    match text.parse() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{name}: {text:?} is not a whole number above 0")),
    }
}

/// The storm driver in the pod (Python: the notebook's own), written there with printf, one
/// line per argument: no single quote in it.
const STORM_PY: &[&str] = &[
    "import os, sys, time",
    "cmd, d = sys.argv[1], \"/home/jovyan/bench\"",
    "if cmd == \"copy\":",
    "    import shutil",
    "    for i in range(int(sys.argv[2])):",
    "        shutil.copy(d + \"/probe\", d + \"/d/p%d\" % i)",
    "        os.chmod(d + \"/d/p%d\" % i, 0o755)",
    "if cmd == \"storm\":",
    "    secs, gap, tag, first = float(sys.argv[2]), float(sys.argv[3]) / 1000, sys.argv[4], int(sys.argv[5])",
    "    execs, kids, reaped = 0, [], set()",
    "    t0 = time.monotonic()",
    "    end, due = t0 + secs, (t0 + gap if gap > 0 else float(\"inf\"))",
    "    while time.monotonic() < end:",
    "        os.waitpid(os.posix_spawn(d + \"/ok\", [\"ok\"], {}), 0)",
    "        execs += 1",
    "        if time.monotonic() >= due:",
    "            i = first + len(kids)",
    "            kids.append(os.posix_spawn(d + \"/d/p%d\" % i, [\"p\", d + \"/marks/%s%d\" % (tag, i)], {}))",
    "            due += gap",
    "            while True:",
    "                try:",
    "                    pid, _ = os.waitpid(-1, os.WNOHANG)",
    "                except ChildProcessError:",
    "                    break",
    "                if pid == 0:",
    "                    break",
    "                reaped.add(pid)",
    "    took = time.monotonic() - t0",
    "    time.sleep(0.5)",
    "    alive = 0",
    "    for k in kids:",
    "        if k not in reaped and os.waitpid(k, os.WNOHANG)[0] == 0:",
    "            alive += 1",
    "            os.kill(k, 9)",
    "            os.waitpid(k, 0)",
    "    marks = len([f for f in os.listdir(d + \"/marks\") if f.startswith(tag)])",
    "    open(d + \"/result-\" + tag, \"w\").write(\"%s execs=%d deviant=%d seconds=%.3f alive=%d marks=%d\" % (tag, execs, len(kids), took, alive, marks))",
    "    os.waitpid(os.posix_spawn(d + \"/stormend\", [\"stormend\"], {}), 0)",
    "if cmd == \"show\":",
    "    for tag in \"uk\":",
    "        print(open(d + \"/result-\" + tag).read())",
];

/// The scenario file, with its placeholders filled in.
fn compose(o: &Options) -> String {
    let per_storm = o.seconds * 1000 / o.trickle_ms + 10;
    // Each line single-quoted for the shell, inside a YAML double-quoted string.
    let storm_lines: Vec<String> = STORM_PY
        .iter()
        .map(|l| format!("'{}'", l.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    include_str!("bench.yaml")
        .replace("{ok_hex}", &hex::encode(elf::ok()))
        .replace("{probe_hex}", &hex::encode(elf::probe()))
        .replace("{storm_lines}", &storm_lines.join(" "))
        .replace("{probes}", &(2 * per_storm).to_string())
        .replace("{half}", &per_storm.to_string())
        .replace("{seconds}", &o.seconds.to_string())
        .replace("{trickle_ms}", &o.trickle_ms.to_string())
        .replace("{timeout}", &(o.seconds * 10 + 60).to_string())
}

/// What a storm step saw, from the kernel's events.
#[derive(Default)]
struct Storm {
    /// Execs of `ok`: count, first and last time.
    ok_execs: u64,
    first_ts: Option<u64>,
    last_ts: u64,
    /// The probes' execs: pid and kernel time (pids are reused).
    probes: HashSet<(u32, u64)>,
    /// Probe execs the kernel killed at exec.
    killed_at_exec: u64,
}

impl Storm {
    fn rate(&self) -> f64 {
        match self.first_ts {
            Some(first) if self.last_ts > first => {
                (self.ok_execs - 1) as f64 / ((self.last_ts - first) as f64 / 1e9)
            }
            _ => 0.0,
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Phase {
    Other,
    UserSpace,
    InKernel,
}

/// What the benchmark counts of the kernel's events, as the runner takes them.
struct Tally {
    phase: Phase,
    /// Every executable the pod ran, the probes excepted: the allow-list.
    seen_exes: BTreeSet<String>,
    storms: [Storm; 2],
}

/// The local lab's backend, with the benchmark's changes at its steps' starts: the kill
/// action into the policy (user space), then the exec allow-list on and the kill out (kernel).
struct BenchBackend {
    inner: LocalBackend,
    store: SharedStore,
    lab_name: String,
    /// The allow-list is still to be turned on (at the in-kernel step's first command).
    enforce_due: bool,
    tally: Tally,
    outputs: Vec<String>,
    /// What went wrong in a change this program made (said, and the bench fails).
    errors: Vec<String>,
}

/// The runner's sink for the events of an action, with the benchmark counting each.
struct Counted<'a> {
    tally: &'a mut Tally,
    sink: &'a mut dyn EventSink,
}

impl EventSink for Counted<'_> {
    fn event(&mut self, event: Event) -> Result<Vec<Response>, StepError> {
        self.tally.saw(&event);
        self.sink.event(event)
    }

    fn carried_out(
        &mut self,
        response: Response,
        outcome: Result<String, StepError>,
    ) -> Result<(), StepError> {
        self.sink.carried_out(response, outcome)
    }
}

impl Tally {
    fn saw(&mut self, event: &Event) {
        let EventBody::Exec(exec) = &event.body else {
            return;
        };
        let storm = match self.phase {
            Phase::UserSpace => Some(&mut self.storms[0]),
            Phase::InKernel => Some(&mut self.storms[1]),
            Phase::Other => None,
        };
        if exec.exe.starts_with(DEVIANTS) {
            if let Some(storm) = storm {
                storm.probes.insert((exec.pid, event.ts));
                storm.killed_at_exec += u64::from(exec.killed);
            }
            return;
        }
        if let Some(storm) = storm
            && exec.exe == format!("{DIR}/ok")
        {
            storm.ok_execs += 1;
            storm.first_ts.get_or_insert(event.ts);
            storm.last_ts = event.ts;
        }
        if exec.exe_status == ExeStatus::Resolved && !exec.killed {
            self.seen_exes.insert(exec.exe.clone());
        }
    }
}

impl BenchBackend {
    fn set_kill(&mut self, on: bool) {
        let changed = self.store.update(|s| {
            s.change_policy("bench-policy", |p| {
                let response = p.spec.response.get_or_insert_with(default_response);
                response.actions.clear();
                if on {
                    response
                        .actions
                        .push(ResponseAction::AgentKillProcess(ActionSelectors::default()));
                }
            })
            .map(|_| ())
        });
        if let Err(e) = changed {
            self.errors
                .push(format!("changing the policy's response: {e}"));
        }
    }

    async fn enforce(&mut self) {
        self.enforce_due = false;
        let result = async {
            let lab = LocalLab::new(LocalLabOptions::new(&self.lab_name))?;
            let info =
                lab.status()
                    .await?
                    .ok_or_else(|| guardlab_lab_api::LabError::Unsupported {
                        backend: guardlab_lab_api::Backend::Local,
                        what: "enforcing on a lab that is down".into(),
                        instead: "bring it up".into(),
                    })?;
            let mut lab = lab;
            let enforcement = Enforcement {
                executables: Some(self.tally.seen_exes.iter().cloned().collect()),
                destinations: None,
                policy: None,
            };
            for pod in &info.pods {
                lab.enforce(pod, &enforcement).await?;
            }
            Ok::<usize, guardlab_lab_api::LabError>(info.pods.len())
        }
        .await;
        match result {
            Ok(pods) => println!(
                "       bench: the exec allow-list is on ({} programs) in {pods} pod(s)",
                self.tally.seen_exes.len()
            ),
            Err(e) => self
                .errors
                .push(format!("turning the exec allow-list on: {e}")),
        }
    }
}

impl ScenarioBackend for &mut BenchBackend {
    fn backend(&self) -> guardlab_lab_api::Backend {
        self.inner.backend()
    }

    fn begin_step(&mut self, index: usize, step: &Step) -> Result<(), StepError> {
        self.tally.phase = match step.name.as_str() {
            "bench-user-space" => {
                self.set_kill(true);
                Phase::UserSpace
            }
            "bench-in-kernel" => {
                self.set_kill(false);
                self.enforce_due = true;
                Phase::InKernel
            }
            _ => Phase::Other,
        };
        self.inner.begin_step(index, step)
    }

    fn end_step(
        &mut self,
        index: usize,
        step: &Step,
        facts: &std::collections::BTreeMap<String, Json>,
    ) {
        self.inner.end_step(index, step, facts)
    }

    async fn lab_up(&mut self, out: &Console) -> Result<(), StepError> {
        self.inner.lab_up(out).await
    }

    async fn notebook_cell(
        &mut self,
        code: &str,
        timeout: std::time::Duration,
        out: &Console,
        events: &mut dyn EventSink,
    ) -> Result<(), StepError> {
        let mut counted = Counted {
            tally: &mut self.tally,
            sink: events,
        };
        self.inner
            .notebook_cell(code, timeout, out, &mut counted)
            .await
    }

    async fn terminal_command(
        &mut self,
        session: &str,
        command: &TerminalCommand,
        out: &Console,
        events: &mut dyn EventSink,
    ) -> Result<String, StepError> {
        if self.enforce_due {
            // The events so far first: their programs belong on the allow-list.
            for event in self.inner.drain().await? {
                self.tally.saw(&event);
                for response in events.event(event)? {
                    let outcome = self.inner.carry_out(response.decision()).await;
                    events.carried_out(response, outcome)?;
                }
            }
            self.enforce().await;
        }
        let mut counted = Counted {
            tally: &mut self.tally,
            sink: events,
        };
        let output = self
            .inner
            .terminal_command(session, command, out, &mut counted)
            .await?;
        self.outputs.push(output.clone());
        Ok(output)
    }

    async fn next_event(&mut self, deadline: Instant) -> Result<Option<Event>, StepError> {
        let event = self.inner.next_event(deadline).await?;
        if let Some(e) = &event {
            self.tally.saw(e);
        }
        Ok(event)
    }

    async fn drain(&mut self) -> Result<Vec<Event>, StepError> {
        let events = self.inner.drain().await?;
        for event in &events {
            self.tally.saw(event);
        }
        Ok(events)
    }

    async fn carry_out(&mut self, decision: &Decision) -> Result<String, StepError> {
        self.inner.carry_out(decision).await
    }

    async fn pool_clients(&mut self, check: &CheckPoolReached) -> Result<Vec<Json>, StepError> {
        self.inner.pool_clients(check).await
    }

    /// The benchmark switches the kernel's enforcement itself, per storm step: the policy's
    /// compiled form would blur its user-space phase.
    async fn apply_kernel_policy(
        &mut self,
        _policy: Option<&guardlab_lab_api::KernelPolicy>,
    ) -> Result<(), StepError> {
        Ok(())
    }

    async fn lab_counters(&mut self) -> Option<guardlab_lab::local::LabCounters> {
        self.inner.lab_counters().await
    }

    async fn finish(&mut self, keep: bool, out: &Console) -> Result<(), StepError> {
        self.inner.finish(keep, out).await
    }
}

fn main() -> ExitCode {
    let o = match options() {
        Ok(Some(o)) => o,
        Ok(None) => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("bench-latency: {e}");
            return ExitCode::from(2);
        }
    };
    if !guardlab::privilege::is_root() {
        eprintln!("bench-latency: needs root (the local lab and its sensor): run it with sudo -E");
        return ExitCode::from(2);
    }
    match run(&o) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("bench-latency: {e}");
            ExitCode::from(2)
        }
    }
}

/// The run; `Ok(false)` when a check failed or the goal was missed.
fn run(o: &Options) -> Result<bool, String> {
    let scratch =
        std::env::temp_dir().join(format!("guardlab-bench-latency-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
    let result = run_in(o, &scratch);
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

fn run_in(o: &Options, scratch: &Path) -> Result<bool, String> {
    elf::check_on_host(scratch)?;
    let scenario_file = scratch.join("bench-latency.yaml");
    std::fs::write(&scenario_file, compose(o)).map_err(|e| e.to_string())?;
    let scenario = file::load_scenario(&scenario_file).map_err(|e| e.to_string())?;
    let lab_name = std::env::var("GUARDLAB_LAB").unwrap_or_else(|_| "bench-latency".into());
    let store = SharedStore::new(PolicyStore::default());
    let mut bench = BenchBackend {
        inner: LabBackend::with_lab(local_lab(&lab_name)?),
        store: store.clone(),
        lab_name,
        enforce_due: false,
        tally: Tally {
            phase: Phase::Other,
            seen_exes: BTreeSet::new(),
            storms: Default::default(),
        },
        outputs: Vec::new(),
        errors: Vec::new(),
    };
    let snapshots = SnapshotMode {
        dir: SnapshotDir::new(scratch.join("snapshots")),
        update: true,
        source: "harness/examples/bench_latency/bench.yaml".into(),
    };
    let runner = Runner::new(
        &scenario,
        &mut bench,
        snapshots,
        None,
        Console { quiet: false },
    )
    .with_store(store);
    let runtime = guardlab_host::runtime(2).map_err(|e| e.to_string())?;
    let report = runtime.block_on(runner.run(false));
    if let Some(path) = &o.json {
        guardlab::scenario::summary::write_json(&report, path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(figures(o, &report, &bench))
}

/// The lab, owned by this run (the daemon removes it if this program dies), its daemon the
/// `guardlab` built beside this example (`target/debug/guardlab`).
fn local_lab(name: &str) -> Result<LocalLab, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let guardlab = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("guardlab"))
        .filter(|p| p.exists())
        .ok_or("no guardlab beside this program: build it first (just bench-latency does)")?;
    let mut options = LocalLabOptions::new(name);
    options.daemon_command = vec![guardlab.into(), "lab".into(), "daemon".into()];
    options.owned_by = Some("bench-latency".into());
    if let Some(address) =
        guardlab::scenario::live::notebook_address_from_env().map_err(|e| e.to_string())?
    {
        options.forward = Some(address);
    }
    LocalLab::new(options).map_err(|e| e.to_string())
}

/// The storm's own count (`result` step): `u execs=... deviant=... alive=... marks=...`.
fn counted(outputs: &[String], tag: &str, key: &str) -> Option<u64> {
    let line = outputs
        .iter()
        .flat_map(|o| o.lines())
        .find(|l| l.trim_start().starts_with(&format!("{tag} execs=")))?;
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
}

fn cell(spread: Option<Spread>) -> String {
    match spread {
        Some(s) => format!("{:>7.1} {:>7.1} {:>7.1}", s.p50_ms, s.p99_ms, s.max_ms),
        None => format!("{:>23}", "none"),
    }
}

/// Print the figures and check them; true when everything holds.
fn figures(o: &Options, report: &RunReport, bench: &BenchBackend) -> bool {
    let mut failed: Vec<String> = bench.errors.clone();
    if report.result != RunResult::Pass {
        failed.push(format!("the run did not pass ({:?})", report.result));
    }
    let empty = Vec::new();
    let entries = report
        .latency
        .as_ref()
        .map(|l| &l.deviations)
        .unwrap_or(&empty);
    let of = |storm: &Storm| -> Vec<&DeviationLatency> {
        entries
            .iter()
            .filter(|e| storm.probes.contains(&(e.pid, e.event_ts_ns)))
            .collect()
    };
    let (user, kernel) = (of(&bench.tally.storms[0]), of(&bench.tally.storms[1]));
    let flag = |es: &[&DeviationLatency]| Spread::of(es.iter().filter_map(|e| e.flag_ms));
    let gone = |es: &[&DeviationLatency]| Spread::of(es.iter().filter_map(|e| e.gone_ms));
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let lost = report.events.lost_total();
    println!();
    println!(
        "bench-latency: {} s storms, a deviant exec every {} ms; {cpus} CPUs; {}",
        o.seconds,
        o.trickle_ms,
        report.events.describe()
    );
    println!(
        "{:<28} {:>23}   {:>23}",
        "", "user-space kill", "in-kernel kill"
    );
    println!(
        "{:<28} {:>7} {:>7} {:>7}   {:>7} {:>7} {:>7}",
        "(ms)", "p50", "p99", "max", "p50", "p99", "max"
    );
    println!(
        "{:<28} {}   {}",
        "exec -> flag",
        cell(flag(&user)),
        cell(flag(&kernel))
    );
    println!(
        "{:<28} {}   {}",
        "exec -> kill carried out",
        cell(Spread::of(user.iter().filter_map(|e| e.kill_ms))),
        cell(None)
    );
    println!(
        "{:<28} {}   {}",
        "exec -> process gone",
        cell(gone(&user)),
        cell(gone(&kernel))
    );
    let (ur, kr) = (bench.tally.storms[0].rate(), bench.tally.storms[1].rate());
    println!(
        "{:<28} {:>23.0}   {:>23.0}",
        "exec rate reached (/s)", ur, kr
    );
    println!(
        "{:<28} {:>23}   {:>23}",
        "deviant execs (seen)",
        bench.tally.storms[0].probes.len(),
        bench.tally.storms[1].probes.len()
    );
    let marks = |tag| counted(&bench.outputs, tag, "marks");
    let alive = |tag| counted(&bench.outputs, tag, "alive");
    println!(
        "{:<28} {:>23}   {:>23}",
        "probes' marks (ran an instr.)",
        marks("u").map_or("?".into(), |n| n.to_string()),
        marks("k").map_or("?".into(), |n| n.to_string())
    );
    println!(
        "{:<28} {:>23}   {:>23}",
        "probes left running",
        alive("u").map_or("?".into(), |n| n.to_string()),
        alive("k").map_or("?".into(), |n| n.to_string())
    );

    // The checks.
    if lost > 0 {
        failed.push(format!("{lost} events lost"));
    }
    for (name, storm, es) in [
        ("user-space", &bench.tally.storms[0], &user),
        ("in-kernel", &bench.tally.storms[1], &kernel),
    ] {
        if storm.probes.is_empty() {
            failed.push(format!("{name}: no deviant exec was seen"));
        }
        let flagged = es.iter().filter(|e| e.flag_ms.is_some()).count();
        if flagged != storm.probes.len() {
            failed.push(format!(
                "{name}: {flagged} of {} deviant execs flagged",
                storm.probes.len()
            ));
        }
        let gone_count = es.iter().filter(|e| e.gone_ms.is_some()).count();
        if gone_count != storm.probes.len() {
            failed.push(format!(
                "{name}: {gone_count} of {} deviant processes seen gone",
                storm.probes.len()
            ));
        }
        match flag(es) {
            Some(s) if s.p99_ms <= GOAL_P99_MS => {}
            Some(s) => failed.push(format!(
                "{name}: exec -> flag p99 {:.1} ms, over the goal of {GOAL_P99_MS} ms",
                s.p99_ms
            )),
            None => {}
        }
        if storm.rate() < GOAL_RATE {
            failed.push(format!(
                "{name}: {:.0} execs/s, under the goal of {GOAL_RATE}",
                storm.rate()
            ));
        }
    }
    if bench.tally.storms[1].killed_at_exec != bench.tally.storms[1].probes.len() as u64 {
        failed.push(format!(
            "in-kernel: {} of {} probes killed at exec",
            bench.tally.storms[1].killed_at_exec,
            bench.tally.storms[1].probes.len()
        ));
    }
    match (marks("u"), marks("k")) {
        (Some(u), Some(0)) if u > 0 => {}
        (u, k) => failed.push(format!(
            "probes' marks: user space {u:?} (some expected: the probe runs before a user-space kill), in the kernel {k:?} (none expected: killed before its first instruction)"
        )),
    }
    if alive("u") != Some(0) || alive("k") != Some(0) {
        failed.push(format!(
            "probes still running after the storm: user space {:?}, kernel {:?}",
            alive("u"),
            alive("k")
        ));
    }
    if failed.is_empty() {
        println!(
            "bench-latency: every check passed; exec -> flag p99 within {GOAL_P99_MS} ms at {GOAL_RATE} execs/s or more"
        );
        true
    } else {
        for f in &failed {
            println!("bench-latency: FAILED: {f}");
        }
        false
    }
}
