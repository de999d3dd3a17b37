//! The attacks on the guard from inside the pod during a live scenario: the cryptominer
//! scenario with the steps of `attacks.yaml` put right after its `enforce` step, run by
//! `guardlab scenario` as a learner runs it (a child measured by the kernel: the engine runs in
//! it). Its snapshots are written to a scratch directory rather than compared, since the
//! attacks' deviations vary from run to run (a fork storm forks as often as the pids limit
//! lets it); every wait and check of the run must still pass, and this module checks what
//! matters after the fact:
//! - the run passed, and the baseline is the tutorial's (its fingerprints, policy and first
//!   deviations are `snapshots/cryptominer/`'s);
//! - the tutorial's attack, after the attacks on the guard, raised every red flag it raises in
//!   the tutorial (`snapshots/cryptominer/attack-deviations.snap`);
//! - the engine said which of its limits the attacks met (limit flags), stayed within its
//!   memory ceiling, and the sensor lost nothing (events per second held with zero loss);
//! - each attack did what it says (from its output in the recording), and the containment
//!   checks typed into the pod saw a seccomp filter, the pids and memory limits, a route into
//!   the lab's internet only and a notebook answering loopback names only;
//! - nothing of the lab is left afterwards.

use std::collections::BTreeMap;

use std::path::Path;
use std::time::{Duration, Instant};

use guardlab_lab::local::cgroup_limits::{CgroupLayout, Controller, Home};
use guardlab_lab::local::manifest::{self, default_manifests_dir};
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

use crate::Suite;
use crate::measure::{self, Ended, tail};
use crate::recording::read_recording;
use crate::signals::{Running, Watch, left_behind};

/// How big each attack is.
struct Sizes {
    chain_nested: u32,
    chain_relay: u32,
    exec_again: u32,
    exec_storm: u32,
    connects: u32,
    dns_names: u32,
}

/// The sizes.
const FULL: Sizes = Sizes {
    chain_nested: 1_000,
    chain_relay: 10_000,
    exec_again: 10_000,
    exec_storm: 60_000,
    connects: 100_000,
    dns_names: 10_000,
};

/// The short form's: the sizes, except the exec storm (20,000: about 20 s at the pod's
/// one CPU) and the connects, which stay under the engine's `deviations` limit (10,000): the
/// full form shows what happens past it.
const SHORT: Sizes = Sizes {
    chain_nested: 1_000,
    chain_relay: 10_000,
    exec_again: 10_000,
    exec_storm: 20_000,
    connects: 5_000,
    dns_names: 10_000,
};

/// The peak memory of `guardlab scenario` (the engine and everything else of the run) must stay
/// under this. The engine's state of a pod is bounded at 256 MB (`state-mb`).
const LIVE_RSS: u64 = 1_000_000_000;

/// A run longer than this is killed and fails.
const RUN_DEADLINE: Duration = Duration::from_secs(45 * 60);

/// Where the pod sees a limit of `controller` (as `harness/lab/tests/pod_hardening.rs` finds
/// it): its own cgroup v2 at /sys/fs/cgroup, or the hierarchy's directory there when the host
/// keeps the controller in cgroup v1.
fn seen_at(layout: &CgroupLayout, controller: Controller, file: &str) -> Result<String, String> {
    match layout.home(controller) {
        Some(Home::V1(h)) => Ok(format!(
            "/sys/fs/cgroup/{}/{file}",
            h.mount
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        )),
        Some(Home::V2) => Ok(format!("/sys/fs/cgroup/{file}")),
        None => Err(format!("this host has no {controller:?} controller")),
    }
}

/// The cryptominer scenario with the attacks after its `enforce` step, as a file.
fn compose(suite: &Suite, sizes: &Sizes, layout: &CgroupLayout) -> Result<String, String> {
    let memory_file = match layout.home(Controller::Memory) {
        Some(Home::V1(_)) => "memory.limit_in_bytes",
        _ => "memory.max",
    };
    let replacements = [
        ("{chain_nested}", sizes.chain_nested.to_string()),
        ("{chain_relay}", sizes.chain_relay.to_string()),
        ("{exec_again}", sizes.exec_again.to_string()),
        ("{exec_storm}", sizes.exec_storm.to_string()),
        ("{connects}", sizes.connects.to_string()),
        ("{dns_names}", sizes.dns_names.to_string()),
        (
            "{pids_max_file}",
            seen_at(layout, Controller::Pids, "pids.max")?,
        ),
        (
            "{pids_events_file}",
            seen_at(layout, Controller::Pids, "pids.events")?,
        ),
        (
            "{memory_limit_file}",
            seen_at(layout, Controller::Memory, memory_file)?,
        ),
    ];
    let mut attacks = include_str!("attacks.yaml").to_string();
    for (placeholder, value) in &replacements {
        attacks = attacks.replace(placeholder, value);
    }
    let attacks: Yaml = serde_yaml::from_str(&attacks).map_err(|e| format!("attacks.yaml: {e}"))?;
    let Yaml::Sequence(attacks) = attacks else {
        return Err("attacks.yaml is not a list of steps".into());
    };
    let path = suite.root.join("scenarios/cryptominer.yaml");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut scenario: Yaml =
        serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let map = scenario
        .as_mapping_mut()
        .ok_or("scenarios/cryptominer.yaml is not a mapping")?;
    map.insert("name".into(), "soak".into());
    map.insert(
        "description".into(),
        "The cryptominer scenario with attacks on the guard from inside the pod (just soak)."
            .into(),
    );
    let steps = map
        .get_mut("steps")
        .and_then(Yaml::as_sequence_mut)
        .ok_or("scenarios/cryptominer.yaml has no steps")?;
    let enforce = steps
        .iter()
        .position(|s| s.get("set_mode").is_some())
        .ok_or("scenarios/cryptominer.yaml has no set_mode step")?;
    for (i, step) in attacks.into_iter().enumerate() {
        steps.insert(enforce + 1 + i, step);
    }
    serde_yaml::to_string(&scenario).map_err(|e| e.to_string())
}

/// Why a run did not pass, in a line: its `guardlab:` error line, or the last lines it printed.
fn why(stdout: &str, stderr: &str) -> String {
    let said = stderr
        .lines()
        .rfind(|l| l.starts_with("guardlab:"))
        .map(str::to_string)
        .unwrap_or_else(|| tail(stdout, 3));
    match said.char_indices().nth(400) {
        Some((cut, _)) => format!("{}…", &said[..cut]),
        None => said,
    }
}

/// The body of an insta snapshot file (after its header).
fn snapshot_body(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut parts = text.splitn(3, "---\n");
    let (_, _, body) = (parts.next(), parts.next(), parts.next());
    body.map(str::to_string)
        .ok_or_else(|| format!("{}: not a snapshot file", path.display()))
}

/// The red flag lines of a deviations snapshot, without the deviations' uids, sorted.
fn red_flags(path: &Path) -> Result<Vec<String>, String> {
    let body: Yaml = serde_yaml::from_str(&snapshot_body(path)?)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut lines: Vec<String> = body
        .get("red_flags")
        .and_then(Yaml::as_sequence)
        .ok_or_else(|| format!("{}: no red_flags", path.display()))?
        .iter()
        .filter_map(Yaml::as_str)
        .map(|l| {
            l.split(' ')
                .filter(|w| !w.starts_with("dev:"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    lines.sort();
    Ok(lines)
}

pub fn run(suite: &mut Suite) -> Result<(), String> {
    let sizes = if suite.short { &SHORT } else { &FULL };
    let layout = CgroupLayout::of_this_process().map_err(|e| e.to_string())?;
    let limits = manifest::load(&default_manifests_dir())
        .map_err(|e| e.to_string())?
        .limits;
    let (pids, memory) = (
        limits.pids.ok_or("the Deployment has no pids limit")?,
        limits.memory.ok_or("the Deployment has no memory limit")?,
    );
    let scenario = suite.path("soak.yaml");
    std::fs::write(&scenario, compose(suite, sizes, &layout)?)
        .map_err(|e| format!("{}: {e}", scenario.display()))?;
    let snapshots = suite.path("snapshots");
    let (json, recording, out) = (
        suite.path("soak.json"),
        suite.path("soak.ndjson"),
        suite.path("out"),
    );
    let has_out = suite
        .guardlab()
        .args(["scenario", "--help"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("--out"))
        .unwrap_or(false);

    let mut command = suite.guardlab();
    command
        .arg("scenario")
        .arg(&scenario)
        .arg("--update-snapshots")
        .arg("--json")
        .arg(&json)
        .arg("--record")
        .arg(&recording)
        .env("GUARDLAB_SNAPSHOT_DIR", &snapshots);
    if has_out {
        command.arg("--out").arg(&out);
    }
    println!(
        "  --    guardlab scenario soak (the cryptominer scenario, the attacks after `enforce`)"
    );
    let watch = Watch::start(&suite.lab)?;
    let started = Instant::now();
    let mut run = Running::start(command, true)?;
    let measured = measure::wait(&run.child, started, Some(RUN_DEADLINE))
        .map_err(|e| format!("waiting for the run: {e}"))?;
    run.drain();
    let holdings = watch.finish();
    let (stdout, stderr) = (run.stdout(), run.stderr());
    let report: Json = std::fs::read_to_string(&json)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Json::Null);
    let result = report
        .get("result")
        .and_then(Json::as_str)
        .unwrap_or("none");
    suite.check(
        measured.ended == Ended::Code(0) && result == "pass" && !measured.timed_out,
        format!(
            "the scenario passes with the attacks ({}, result {result}){}",
            measured.ended,
            if result == "pass" {
                String::new()
            } else {
                format!(": {}", why(&stdout, &stderr))
            }
        ),
    );
    if result == "none" {
        let left = left_behind(&holdings);
        suite.check(
            left.is_empty(),
            format!("nothing of the lab left after the live run: {left:?}"),
        );
        return Err("the run wrote no report: nothing more to check".into());
    }
    let mut step_times = Vec::new();
    for step in report
        .get("steps")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
    {
        let name = step.get("name").and_then(Json::as_str).unwrap_or("?");
        let outcome = step.get("result").and_then(Json::as_str).unwrap_or("?");
        if !matches!(outcome, "passed" | "updated" | "not_applicable") {
            suite.check(
                false,
                format!(
                    "step {name}: {outcome}: {}",
                    step.get("messages")
                        .map(|m| m.to_string())
                        .unwrap_or_default()
                ),
            );
        }
        if name.starts_with("soak-") {
            let ms = step.get("duration_ms").and_then(Json::as_u64).unwrap_or(0);
            step_times.push(format!("{name} {:.1} s", ms as f64 / 1000.0));
        }
    }
    suite.figure("live attack steps (wall time)", step_times.join(", "));
    suite.figure(
        "engine in the live run (`guardlab scenario`, peak resident memory)",
        format!(
            "{:.0} MB over {:.0} s (ceiling {} MB)",
            measured.peak_mb(),
            measured.wall.as_secs_f64(),
            LIVE_RSS / 1_000_000
        ),
    );
    suite.check(
        measured.peak_rss <= LIVE_RSS,
        format!(
            "the live run's peak memory {:.0} MB is under {} MB",
            measured.peak_mb(),
            LIVE_RSS / 1_000_000
        ),
    );

    // The baseline is the tutorial's, and its attack still raises every red flag.
    let tutorial = suite.root.join("snapshots/cryptominer");
    for name in ["fingerprints", "policy", "terminal-deviations"] {
        let file = format!("{name}.snap");
        let same = matches!(
            (snapshot_body(&snapshots.join(&file)), snapshot_body(&tutorial.join(&file))),
            (Ok(a), Ok(b)) if a == b
        );
        suite.check(
            same,
            format!("{name}: as in the tutorial (snapshots/cryptominer/{file})"),
        );
    }
    // Live: the runner says each flag as the engine raises it.
    let total_steps = report
        .get("steps")
        .and_then(Json::as_array)
        .map(Vec::len)
        .unwrap_or(0);
    let attack_output = stdout
        .split_once(&format!("/{total_steps}] attack "))
        .map(|(_, rest)| {
            rest.split_once(&format!("/{total_steps}] "))
                .map_or(rest, |r| r.0)
        })
        .unwrap_or_default();
    let raised: Vec<String> = attack_output
        .lines()
        .filter_map(|l| l.trim().strip_prefix("raised: "))
        .map(|l| {
            l.split(' ')
                .filter(|w| !w.starts_with("dev:"))
                .take_while(|w| !w.starts_with("(pid"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    if let Ok(expected) = red_flags(&tutorial.join("attack-deviations.snap")) {
        let missing: Vec<&String> = expected.iter().filter(|l| !raised.contains(l)).collect();
        suite.check(
            missing.is_empty() && !expected.is_empty(),
            format!(
                "the tutorial's attack, after the attacks on the guard, raises its red flags as it runs: {} of {}{}",
                expected.len() - missing.len(),
                expected.len(),
                if missing.is_empty() {
                    String::new()
                } else {
                    format!("; not raised: {missing:?}")
                }
            ),
        );
    }
    // A deviation is new once: past a limit the engine must not announce it again and again.
    let mut announced: BTreeMap<&str, u64> = BTreeMap::new();
    for line in stdout.lines() {
        if let Some(rest) = line.trim().strip_prefix("new ")
            && let Some(uid) = rest.split_whitespace().find(|w| w.starts_with("dev:"))
        {
            *announced.entry(uid.trim_end_matches(':')).or_default() += 1;
        }
    }
    let again: Vec<(&str, u64)> = announced
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(u, n)| (*u, *n))
        .collect();
    suite.check(
        again.is_empty(),
        format!(
            "every deviation is announced as new once ({} unique){}",
            announced.len(),
            if again.is_empty() {
                String::new()
            } else {
                format!(
                    "; {} announced again, e.g. {} {} times",
                    again.len(),
                    again[0].0,
                    again[0].1
                )
            }
        ),
    );
    // Kept: the run's report (its deviations snapshot) has them too.
    let file = "attack-deviations.snap";
    match (
        red_flags(&snapshots.join(file)),
        red_flags(&tutorial.join(file)),
    ) {
        (Ok(got), Ok(expected)) => {
            let missing: Vec<&String> = expected.iter().filter(|l| !got.contains(l)).collect();
            suite.check(
                missing.is_empty() && !expected.is_empty(),
                format!(
                    "the run's report keeps the tutorial's attack's red flags: {} of {} ({} in the step){}",
                    expected.len() - missing.len(),
                    expected.len(),
                    got.len(),
                    if missing.is_empty() {
                        String::new()
                    } else {
                        format!("; missing: {missing:?}")
                    }
                ),
            );
        }
        (got, expected) => {
            suite.check(
                false,
                format!(
                    "the attack's red flags: {}",
                    got.err().or(expected.err()).unwrap_or_default()
                ),
            );
        }
    }

    // The engine says what it met; the sensor lost nothing.
    let stats = report
        .pointer("/deviations/stats")
        .cloned()
        .unwrap_or(Json::Null);
    let flags: Vec<String> = stats
        .get("limits")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
        .map(|f| {
            format!(
                "{}={} ({} times)",
                f.get("limit").and_then(Json::as_str).unwrap_or("?"),
                f.get("value").map(|v| v.to_string()).unwrap_or_default(),
                f.get("count").map(|v| v.to_string()).unwrap_or_default()
            )
        })
        .collect();
    suite.figure(
        "limit flags of the live run",
        if flags.is_empty() {
            "none".to_string()
        } else {
            flags.join(", ")
        },
    );
    suite.check(
        flags.iter().any(|f| f.starts_with("process-depth=")),
        "the engine flags the deep chains (a process-depth limit flag)",
    );
    suite.check(
        !flags.iter().any(|f| f.starts_with("state-mb=")),
        "the pod's state stayed under state-mb",
    );
    let events = report.get("events").cloned().unwrap_or(Json::Null);
    let count = |p: &str| events.pointer(p).and_then(Json::as_u64).unwrap_or(0);
    let received = count("/received");
    let lost = count("/lost").max(count("/lab/sensor_dropped"))
        + count("/lab/sensor_unreadable")
        + count("/engine_dropped");
    suite.check(
        received > 0 && lost == 0,
        format!(
            "no event lost: {received} received; lost {} in the stream, sensor dropped {}, unreadable {}, engine dropped {}",
            count("/lost"),
            count("/lab/sensor_dropped"),
            count("/lab/sensor_unreadable"),
            count("/engine_dropped")
        ),
    );

    // Each attack, from the recording: what it did, and how fast the events came.
    let steps = read_recording(&recording)?;
    let step = |name: &str| steps.get(name);
    let mut rates = Vec::new();
    // The fastest rate held for at least 5 s (sustained), and the fastest burst.
    let mut sustained: Option<(String, f64, f64)> = None;
    let mut burst: Option<(String, f64, u64)> = None;
    for (name, s) in &steps {
        if !name.starts_with("soak-") || s.events < 1000 {
            continue;
        }
        rates.push(format!(
            "{name} {} events in {:.1} s = {:.0}/s (lost {})",
            s.events,
            s.seconds(),
            s.rate(),
            s.lost
        ));
        if s.seconds() >= 5.0 && sustained.as_ref().is_none_or(|b| s.rate() > b.1) {
            sustained = Some((name.clone(), s.rate(), s.seconds()));
        }
        if burst.as_ref().is_none_or(|b| s.rate() > b.1) {
            burst = Some((name.clone(), s.rate(), s.events));
        }
    }
    suite.figure("event rates of the attacks (sensor time)", rates.join("; "));
    suite.figure(
        "events/s held with zero loss",
        match (&sustained, &burst) {
            _ if lost > 0 => format!("none: the run lost {lost} events"),
            (Some(s), Some(b)) => format!(
                "{:.0} events/s sustained for {:.0} s ({}); a burst of {} events at {:.0}/s ({}); none lost in the run",
                s.1, s.2, s.0, b.2, b.1, b.0
            ),
            _ => "no attack step long enough to say".to_string(),
        },
    );
    if let Some(storm) = step("soak-exec-storm") {
        let execs = storm.execs.get("/usr/bin/true").copied().unwrap_or(0);
        suite.check(
            execs == u64::from(sizes.exec_storm),
            format!(
                "exec storm: the engine saw {execs} of {} execs of true ({:.0} execs/s)",
                sizes.exec_storm,
                execs as f64 / storm.seconds().max(1e-3)
            ),
        );
    }
    if let Some(again) = step("soak-exec-again") {
        let execs = again.execs.get("/usr/bin/dash").copied().unwrap_or(0);
        suite.check(
            execs >= u64::from(sizes.exec_again),
            format!(
                "exec again: {execs} execs of sh seen (of {})",
                sizes.exec_again
            ),
        );
    }
    let said = |name: &str, index: usize| step(name).map(|s| s.output(index)).unwrap_or_default();
    let relay = said("soak-chain-relay", 0);
    suite.check(
        relay.contains(&format!("relay chain: {} levels reaped", sizes.chain_relay)),
        format!("relay chain: {}", relay.trim()),
    );
    let storm = said("soak-fork-storm", 0);
    let forks: u64 = storm
        .split_whitespace()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    suite.check(
        storm.contains("Resource temporarily unavailable") && forks > 0 && forks < pids,
        format!(
            "fork storm stopped by the pods' pids limit ({pids}): {}",
            storm.trim()
        ),
    );
    let events_file = said("soak-fork-storm", 1);
    let refused: u64 = events_file
        .split_whitespace()
        .skip_while(|w| *w != "max")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    suite.check(
        refused > 0,
        format!(
            "the pod's pids cgroup counted refused forks: {}",
            events_file.trim()
        ),
    );
    for (name, words) in [
        ("soak-connects", format!("connects: {}", sizes.connects)),
        (
            "soak-dns-names",
            format!("dns names: {} asked", sizes.dns_names),
        ),
    ] {
        let out = said(name, 0);
        suite.check(out.contains(&words), format!("{name}: {}", out.trim()));
    }

    // The containment, as seen from inside the pod.
    let status = said("soak-containment", 0);
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_string()))
            .unwrap_or_default()
    };
    suite.check(
        field("Seccomp:") == "2" && field("NoNewPrivs:") == "0",
        format!(
            "inside the pod: seccomp mode 2 (filter), no_new_privs off: {:?}",
            status.trim()
        ),
    );
    let uffd = said("soak-containment", 1);
    suite.check(
        uffd.contains("userfaultfd -1 1"),
        format!(
            "inside the pod: userfaultfd refused with EPERM by the runtime's profile: {}",
            uffd.trim()
        ),
    );
    let values: Vec<String> = said("soak-containment", 2)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    suite.check(
        values == [pids.to_string(), memory.to_string()],
        format!(
            "inside the pod: pids limit {pids} and memory limit {memory} in its cgroups: {values:?}"
        ),
    );
    let route = said("soak-containment", 3);
    suite.check(
        route.lines().any(|l| {
            l.split_whitespace()
                .take(3)
                .eq(["eth0", "00000000", "010012C6"])
        }),
        "inside the pod: a default route via 198.18.0.1, into the lab's internet",
    );
    let hosts = said("soak-containment", 4);
    suite.check(
        hosts.contains("host localhost:8888 200") && hosts.contains("host rebind.example:8888 403"),
        format!(
            "inside the pod: the notebook answers localhost and refuses another name: {:?}",
            hosts.trim()
        ),
    );
    let sudo = step("attack").map(|s| s.output(1)).unwrap_or_default();
    suite.check(
        sudo.contains("[sudo] password for jovyan"),
        "inside the pod: `sudo -l` asks jovyan's password (as unguarded as the tutorial's pod)",
    );

    // Nothing of the lab is left.
    let left = left_behind(&holdings);
    suite.check(
        left.is_empty(),
        format!(
            "nothing of the lab left after the live run{}",
            if left.is_empty() {
                String::new()
            } else {
                format!(": {}", left.join("; "))
            }
        ),
    );

    // The engine alone on the live recording, as `guardlab deviations` (with the run's policy).
    if has_out {
        engine_on_recording(suite, &out, &recording)?;
    }
    Ok(())
}

/// `guardlab deviations` on the run's recording with the policy the run enforced, measured.
fn engine_on_recording(suite: &mut Suite, out: &Path, recording: &Path) -> Result<(), String> {
    let mut policies: Vec<_> = std::fs::read_dir(out.join("policy"))
        .map_err(|e| format!("{}: {e}", out.join("policy").display()))?
        .flatten()
        .map(|e| e.path())
        .collect();
    policies.sort();
    // The policy as it stood when it enforced (a later one is disabled).
    let enforcing = |path: &std::path::PathBuf| {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|t| serde_yaml::from_str::<Yaml>(&t).ok())
            .and_then(|doc| doc.get("spec").cloned())
            .is_some_and(|spec| {
                spec.get("mode").and_then(Yaml::as_str) == Some("enforce")
                    && spec.get("enabled").and_then(Yaml::as_bool) != Some(false)
            })
    };
    let Some(policy) = policies.iter().rev().find(|p| enforcing(p)) else {
        return Err("the run wrote no enforcing policy".into());
    };
    let size = std::fs::metadata(recording).map(|m| m.len()).unwrap_or(0);
    let mut command = suite.guardlab();
    command
        .args(["deviations", "--policy"])
        .arg(policy)
        .arg("--events")
        .arg(recording)
        .env("GUARDLAB_MAX_INPUT_BYTES", (size + (1 << 20)).to_string());
    let (stdout, stderr) = (suite.path("replay.out"), suite.path("replay.err"));
    let m = measure::run(
        &mut command,
        &stdout,
        &stderr,
        Some(Duration::from_secs(600)),
    )
    .map_err(|e| e.to_string())?;
    suite.check(
        m.ended == Ended::Code(1),
        format!(
            "`guardlab deviations` on the live recording answers (deviations found): {}{}",
            m.ended,
            if m.ended == Ended::Code(1) {
                String::new()
            } else {
                format!(
                    ": {}",
                    tail(&std::fs::read_to_string(&stderr).unwrap_or_default(), 3)
                )
            }
        ),
    );
    suite.figure(
        "engine alone on the live recording (`guardlab deviations`)",
        format!(
            "{:.0} MB recording: peak {:.0} MB, {:.1} s, {} KB of deviations",
            size as f64 / 1e6,
            m.peak_mb(),
            m.wall.as_secs_f64(),
            std::fs::metadata(&stdout).map(|x| x.len()).unwrap_or(0) / 1000
        ),
    );
    Ok(())
}
