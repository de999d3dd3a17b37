//! The file commands against what an attacker or a careless user hands them: the engine's
//! attack streams (`guardlab_test_support::attack`: the notebook pod, then deep fork chains, one
//! process exec'ing again and again, storms, floods, DNS names, 50 MB of one repeated event)
//! and hostile files (an alias bomb, 50,000-deep nesting, 1 GB, non-UTF-8, empty, cut short).
//!
//! Every command is a child measured by the kernel (peak resident memory, wall time) with an
//! address-space ceiling and a deadline, so that one that would take the machine's memory or
//! never end fails here instead. A valid stream must give its answer (0 or 1) within the
//! memory ceiling; a bad file must give exit 2 (or 1, "invalid", from `validate`) with a
//! message naming the file, never a crash.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use guardlab_test_support::attack;

use crate::Suite;
use crate::measure::{self, Ended, Measured};

/// Address space a file command may take: far above what a bounded one needs, far below what
/// would hurt the machine (an unbounded alias bomb took 24 GB).
const ADDRESS_SPACE: u64 = 4 << 30;
/// A file command that runs longer than this is killed and fails (the 10,000-deep chain once
/// ran for over a minute).
const DEADLINE: Duration = Duration::from_secs(120);
/// The issue's goal for the deep chains: the engine under 100 MB (the whole command here,
/// reading the stream included) and under 2 s (reported, not failed: timings vary with load).
const DEEP_CHAIN_RSS: u64 = 100_000_000;
const DEEP_CHAIN_SECONDS: f64 = 2.0;
/// The other streams: the largest is 50 MB of events, held in memory as events while read.
const STREAM_RSS: u64 = 768_000_000;
/// A hostile file is refused before it costs anything.
const BAD_FILE_RSS: u64 = 128_000_000;

/// One command of the suite on a file, measured.
struct Measurement {
    what: String,
    measured: Measured,
    stdout_bytes: u64,
    stderr: String,
}

fn measure_command(suite: &Suite, args: &[&str], what: &str) -> Result<Measurement, String> {
    let stdout = suite.path("files/stdout");
    let stderr = suite.path("files/stderr");
    let mut command = suite.guardlab();
    command.args(args);
    measure::limit_address_space(&mut command, ADDRESS_SPACE);
    let measured = measure::run(&mut command, &stdout, &stderr, Some(DEADLINE))
        .map_err(|e| format!("running guardlab {}: {e}", args.join(" ")))?;
    Ok(Measurement {
        what: what.to_string(),
        measured,
        stdout_bytes: std::fs::metadata(&stdout).map(|m| m.len()).unwrap_or(0),
        stderr: std::fs::read_to_string(&stderr).unwrap_or_default(),
    })
}

fn write_events(path: &Path, events: &[guardlab_events::Event]) -> Result<u64, String> {
    let file = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    for event in events {
        guardlab_events::write_ndjson(&mut out, event)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    out.flush()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(std::fs::metadata(path).map(|m| m.len()).unwrap_or(0))
}

/// The hidden argument that makes this program write one attack stream and exit.
pub const MAKE_STREAM: &str = "--make-stream";

/// Writes the attack stream `name` to `path` in a child process (this program with
/// [`MAKE_STREAM`]), and returns its number of events. Apart, because a measured command's
/// peak memory counts the memory of its parent at the fork (the kernel keeps the high-water
/// mark of the copy the child starts from): this program must stay small.
fn make_stream_apart(name: &str, path: &Path) -> Result<u64, String> {
    let me = std::env::current_exe().map_err(|e| format!("where am I: {e}"))?;
    let out = std::process::Command::new(me)
        .arg(MAKE_STREAM)
        .arg(name)
        .arg(path)
        .output()
        .map_err(|e| format!("making the stream {name}: {e}"))?;
    let said = String::from_utf8_lossy(&out.stdout);
    match said.trim().parse() {
        Ok(events) if out.status.success() => Ok(events),
        _ => Err(format!(
            "making the stream {name}: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )),
    }
}

/// [`MAKE_STREAM`] NAME PATH: write the attack stream NAME to PATH, print its number of events.
pub fn make_stream(name: &str, path: &Path) -> Result<(), String> {
    let recipe = attack::all()
        .into_iter()
        .find(|r| r.name == name)
        .ok_or_else(|| format!("no attack stream named {name:?}"))?;
    let made = (recipe.make)();
    write_events(path, &made.events)?;
    println!("{}", made.events.len());
    Ok(())
}

/// `guardlab ARGS > out`, which must exit 0.
fn write_output(suite: &Suite, args: &[&str], out: &Path) -> Result<(), String> {
    let stderr = suite.path("files/stderr");
    let mut command = suite.guardlab();
    command.args(args);
    let measured = measure::run(&mut command, out, &stderr, Some(DEADLINE))
        .map_err(|e| format!("guardlab {}: {e}", args.join(" ")))?;
    if measured.ended != Ended::Code(0) {
        return Err(format!(
            "guardlab {} ended with {}: {}",
            args.join(" "),
            measured.ended,
            std::fs::read_to_string(&stderr).unwrap_or_default()
        ));
    }
    Ok(())
}

pub fn run(suite: &mut Suite) -> Result<(), String> {
    let dir = suite.path("files");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let p = |name: &str| dir.join(name);
    let s = |path: &PathBuf| path.to_string_lossy().into_owned();

    // The policy the attacks deviate from: learned from the notebook's baseline.
    let baseline = p("baseline.ndjson");
    write_events(&baseline, &attack::baseline())?;
    let fingerprints = p("fingerprints.yaml");
    let policy = p("policy.yaml");
    write_output(
        suite,
        &["fingerprint", "--events", &s(&baseline)],
        &fingerprints,
    )?;
    write_output(
        suite,
        &["policy", "create", "--from", &s(&fingerprints)],
        &policy,
    )?;

    streams(suite, &dir, &policy)?;
    hostile_files(suite, &dir, &baseline, &fingerprints, &policy)
}

/// The engine's attack streams through fingerprint, deviations and investigate.
fn streams(suite: &mut Suite, dir: &Path, policy: &Path) -> Result<(), String> {
    let short = suite.short;
    let recipes: Vec<attack::Recipe> = attack::all()
        .into_iter()
        .filter(|r| {
            !short
                || r.name.starts_with("deep fork chain")
                || r.name.contains("exec'ing")
                || r.name.contains("repeated event")
        })
        .collect();
    // Output bytes per event of `deviations` on each deep chain: they must grow linearly.
    let mut chain_output: Vec<(String, u64, u64)> = Vec::new();
    for recipe in recipes {
        let path = dir.join("attack.ndjson");
        let events = make_stream_apart(recipe.name, &path)?;
        let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let deep = recipe.name.starts_with("deep fork chain");
        let ceiling = if deep { DEEP_CHAIN_RSS } else { STREAM_RSS };
        let events_arg = path.to_string_lossy().into_owned();
        let policy_arg = policy.to_string_lossy().into_owned();
        let mut line = Vec::new();
        for (verb, args, expected) in [
            (
                "fingerprint",
                vec!["fingerprint", "--events", &events_arg],
                [0, 0],
            ),
            (
                "deviations",
                vec![
                    "deviations",
                    "--policy",
                    &policy_arg,
                    "--events",
                    &events_arg,
                ],
                [1, 1],
            ),
            (
                "investigate",
                vec![
                    "investigate",
                    "--policy",
                    &policy_arg,
                    "--events",
                    &events_arg,
                ],
                [1, 1],
            ),
        ] {
            let m = measure_command(suite, &args, verb)?;
            let answered = matches!(m.measured.ended, Ended::Code(c) if expected.contains(&c));
            suite.check(
                answered && !m.measured.timed_out,
                format!(
                    "{}: `{verb}` answers ({}{}){}",
                    recipe.name,
                    m.measured.ended,
                    if m.measured.timed_out {
                        ", killed at the deadline"
                    } else {
                        ""
                    },
                    if answered {
                        String::new()
                    } else {
                        format!(": {}", last_lines(&m.stderr, 3))
                    }
                ),
            );
            suite.check(
                m.measured.peak_rss <= ceiling,
                format!(
                    "{}: `{verb}` peak memory {:.1} MB (ceiling {} MB)",
                    recipe.name,
                    m.measured.peak_mb(),
                    ceiling / 1_000_000
                ),
            );
            if deep && verb == "deviations" {
                chain_output.push((recipe.name.to_string(), events, m.stdout_bytes));
            }
            line.push(format!(
                "{} {:.1} MB {:.2} s{}",
                m.what,
                m.measured.peak_mb(),
                m.measured.wall.as_secs_f64(),
                if verb == "fingerprint" {
                    String::new()
                } else {
                    format!(" ({} KB out)", m.stdout_bytes / 1000)
                }
            ));
            if deep {
                let seconds = m.measured.wall.as_secs_f64();
                if seconds > DEEP_CHAIN_SECONDS {
                    println!(
                        "  note  {}: `{verb}` took {seconds:.2} s, over the issue's goal of {DEEP_CHAIN_SECONDS} s (timings vary with the machine's load; not a failure)",
                        recipe.name
                    );
                }
            }
        }
        suite.figure(
            format!(
                "engine on {} ({events} events, {:.1} MB)",
                recipe.name,
                bytes as f64 / 1e6
            ),
            line.join("; "),
        );
    }
    // Linear: per event, the deepest chain's deviations are no bigger than twice the
    // shallowest's (a report that repeats each ancestry grows with the square).
    if let (Some(first), Some(last)) = (chain_output.first(), chain_output.last())
        && first.0 != last.0
    {
        let per = |(_, events, out): &(String, u64, u64)| *out as f64 / (*events).max(1) as f64;
        suite.check(
            per(last) <= 2.0 * per(first),
            format!(
                "deviations grow linearly with the chain: {:.0} bytes per event for {}, {:.0} for {}",
                per(first),
                first.0,
                per(last),
                last.0
            ),
        );
    }
    Ok(())
}

/// The "billion laughs": ten levels of aliases, each ten of the one before, in a few hundred
/// bytes.
fn alias_bomb() -> String {
    let mut text = String::from(
        "apiVersion: spyderbat/v1\nkind: SpyderbatPolicy\nmetadata:\n  name: lol\n  type: container\n  l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n",
    );
    for i in 1..10 {
        let refs = vec![format!("*l{}", i - 1); 10].join(", ");
        text.push_str(&format!("  l{i}: &l{i} [{refs}]\n"));
    }
    text
}

/// How a hostile file is made.
enum Content {
    Bytes(Vec<u8>),
    /// A sparse file of this many bytes (no disk used).
    Sparse(u64),
}

fn make(path: &Path, content: &Content) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("{}: {e}", path.display());
    match content {
        Content::Bytes(bytes) => std::fs::write(path, bytes).map_err(fail),
        Content::Sparse(len) => std::fs::File::create(path)
            .and_then(|f| f.set_len(*len))
            .map_err(fail),
    }
}

fn hostile_files(
    suite: &mut Suite,
    dir: &Path,
    baseline: &Path,
    fingerprints: &Path,
    policy: &Path,
) -> Result<(), String> {
    let lost = br#"{"v":1,"ts":1,"type":"lost","count":1}"#;
    let yaml_files: Vec<(&str, Content)> = vec![
        ("alias-bomb.yaml", Content::Bytes(alias_bomb().into_bytes())),
        (
            "nested-flow.yaml",
            Content::Bytes("[".repeat(50_000).into_bytes()),
        ),
        (
            "nested-block.yaml",
            Content::Bytes(format!("{}x\n", "- ".repeat(50_000)).into_bytes()),
        ),
        (
            "nested-mapping.yaml",
            Content::Bytes(format!("{}x\n", "a: {".repeat(50_000)).into_bytes()),
        ),
        ("huge.yaml", Content::Sparse(1 << 30)),
        (
            "not-utf8.yaml",
            Content::Bytes(b"apiVersion: spyderbat/v1\nkind: \xffSpyderbatPolicy\n".to_vec()),
        ),
        ("empty.yaml", Content::Bytes(Vec::new())),
        (
            "cut-short.yaml",
            Content::Bytes(
                b"apiVersion: spyderbat/v1\nkind: SpyderbatPolicy\nmetadata: {name: p, type: cont"
                    .to_vec(),
            ),
        ),
    ];
    let mut cut = lost.to_vec();
    cut.extend(b"\n{\"v\":1,\"ts\":2,\"type\":\"lo");
    let mut not_utf8 = lost.to_vec();
    not_utf8.extend(b"\n{\"v\":1,\xff}\n");
    let event_files: Vec<(&str, Content)> = vec![
        ("huge.ndjson", Content::Sparse(1 << 30)),
        ("not-utf8.ndjson", Content::Bytes(not_utf8)),
        ("empty.ndjson", Content::Bytes(Vec::new())),
        ("cut-short.ndjson", Content::Bytes(cut)),
        (
            "nested.ndjson",
            Content::Bytes(format!("{}\n", "[".repeat(50_000)).into_bytes()),
        ),
    ];
    let (baseline, fingerprints, policy) = (
        baseline.to_string_lossy().into_owned(),
        fingerprints.to_string_lossy().into_owned(),
        policy.to_string_lossy().into_owned(),
    );
    let mut tried = 0;
    let mut peak: u64 = 0;
    for (name, content) in &yaml_files {
        let path = dir.join(name);
        make(&path, content)?;
        let f = path.to_string_lossy().into_owned();
        for args in [
            vec!["validate", f.as_str()],
            vec!["policy", "create", "--from", &f],
            vec!["merge", "--policy", &f, "--with", &fingerprints],
            vec!["deviations", "--policy", &f, "--events", &baseline],
        ] {
            // `validate` answers "this file is invalid" (1) for a file it could read.
            let allowed: &[i32] = if args[0] == "validate" { &[1, 2] } else { &[2] };
            peak = peak.max(refused(suite, name, &args, allowed)?);
            tried += 1;
        }
    }
    for (name, content) in &event_files {
        let path = dir.join(name);
        make(&path, content)?;
        let f = path.to_string_lossy().into_owned();
        for args in [
            vec!["fingerprint", "--events", f.as_str()],
            vec!["deviations", "--policy", &policy, "--events", &f],
            vec!["investigate", "--policy", &policy, "--events", &f],
        ] {
            peak = peak.max(refused(suite, name, &args, &[2])?);
            tried += 1;
        }
    }
    suite.figure(
        "hostile files",
        format!(
            "{} files, {tried} commands: peak memory {:.1} MB",
            yaml_files.len() + event_files.len(),
            peak as f64 / 1e6
        ),
    );
    Ok(())
}

/// Runs a command on a bad file: it must end with one of `allowed`, naming the file, within
/// [`BAD_FILE_RSS`]. Returns its peak memory.
fn refused(suite: &mut Suite, name: &str, args: &[&str], allowed: &[i32]) -> Result<u64, String> {
    let m = measure_command(suite, args, args[0])?;
    let shown: Vec<&str> = args
        .iter()
        .map(|a| a.rsplit('/').next().unwrap_or(a))
        .collect();
    let exit_ok = matches!(m.measured.ended, Ended::Code(c) if allowed.contains(&c));
    let names_file = m.stderr.contains(name) || m.stderr.contains(&format!("/{name}"));
    suite.check(
        exit_ok && names_file && !m.measured.timed_out && m.measured.peak_rss <= BAD_FILE_RSS,
        format!(
            "{name}: `guardlab {}`: {}, {:.1} MB: {}",
            shown.join(" "),
            m.measured.ended,
            m.measured.peak_mb(),
            last_lines(&m.stderr, 1)
        ),
    );
    Ok(m.measured.peak_rss)
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let from = lines.len().saturating_sub(n);
    let joined = lines[from..].join(" / ");
    match joined.char_indices().nth(300) {
        Some((cut, _)) => format!("{}…", &joined[..cut]),
        None => joined,
    }
}
