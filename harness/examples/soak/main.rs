//! The reliability suite (issue 13): the guard attacked from inside the pod it watches and fed
//! hostile files, runs stopped by signals at random points, and the pod's containment asserted
//! from inside it. `just soak` runs it in full; `just soak --short` (run by `.ci/run`) in a
//! form that takes a few minutes. Root (the lab's namespaces, cgroups and eBPF); the `files`
//! part alone needs no privilege.
//!
//! ```text
//! cargo build -p guardlab -p guardlab-minerd
//! sudo target/debug/examples/soak [--short] [--seed N] [--only files|signals|live]...
//! ```
//!
//! Parts, in the order they run:
//! - `files` ([`files`]): the engine's attack streams (deep fork chains, exec again, storms,
//!   floods, DNS names, a 50 MB recording of one repeated event) and hostile files (alias bombs,
//!   50,000-deep nesting, 1 GB, non-UTF-8, empty, cut short) through the file commands, each a
//!   child measured by the kernel (peak resident memory from wait4, wall time): no crash, a
//!   message and exit 2 for a bad file, memory within a ceiling.
//! - `signals` ([`signals`]): `guardlab scenario cryptominer` stopped by SIGINT, SIGTERM or
//!   SIGKILL at random points (seeded, the seed printed), each followed by `guardlab
//!   lab status` and a count of what the lab left (processes, mounts, namespaces with their
//!   network devices, host interfaces, cgroups, BPF programs, its directory); the next run on
//!   the same lab is the clean next run.
//! - `live` ([`live`]): the cryptominer scenario with the attacks of `attacks.yaml` typed into
//!   the pod's terminal after the policy enforces (fork chains, exec again, a fork storm to the
//!   pids limit, an exec storm, connects, DNS names, and the containment checks): the run must
//!   pass, the tutorial's attack must still raise its red flags, the engine must say which
//!   limits it met, the sensor must lose nothing, and the engine's memory stays in a ceiling.
//!
//! At the end it prints the figures (peak engine memory and time on the deep chains, events per
//! second held with zero loss, signals tried and leftovers found) and every failed check. Exit
//! 0 when every check passed, 1 when one failed, 2 when the suite could not run.

mod files;
use guardlab_lab_test_support as leftovers;
mod live;
mod measure;
mod recording;
mod signals;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

const USAGE: &str = "\
Usage: soak [--short] [--seed N] [--only PART]...

The reliability suite: attacks on the guard from inside the pod, hostile files, runs stopped by
signals at random points, and the pod's containment asserted from inside it (issue 13).

  --short       the short form CI runs (a few minutes): fewer signals and streams, smaller floods
  --seed N      the seed of the signals' random points (default: from the clock; always printed)
  --only PART   run only this part: files, signals or live (repeatable)
  -h, --help    this text

Root, except `--only files`. Build first: cargo build -p guardlab -p guardlab-minerd

Example:
  cargo build -p guardlab -p guardlab-minerd && sudo target/debug/examples/soak --short
";

/// A part of the suite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Files,
    Signals,
    Live,
}

impl Part {
    const ALL: [Part; 3] = [Part::Files, Part::Signals, Part::Live];

    fn parse(word: &str) -> Option<Part> {
        match word {
            "files" => Some(Part::Files),
            "signals" => Some(Part::Signals),
            "live" => Some(Part::Live),
            _ => None,
        }
    }

    fn needs_root(self) -> bool {
        self != Part::Files
    }
}

struct Args {
    short: bool,
    seed: u64,
    parts: Vec<Part>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let mut short = false;
    let mut seed = None;
    let mut parts = Vec::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--short" => short = true,
            "--seed" => {
                let value = args.next().ok_or("--seed needs a number")?;
                seed = Some(
                    value
                        .parse()
                        .map_err(|_| format!("--seed {value:?} is not a whole number"))?,
                );
            }
            "--only" => {
                let value = args.next().ok_or("--only needs a part")?;
                parts.push(Part::parse(&value).ok_or_else(|| {
                    format!("--only {value:?}: the parts are files, signals and live")
                })?);
            }
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}\n\n{USAGE}")),
        }
    }
    if parts.is_empty() {
        parts = Part::ALL.to_vec();
    }
    let seed = seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    Ok(Args { short, seed, parts })
}

/// What every part shares: where things are, the checks so far and the figures to print.
pub struct Suite {
    /// The repository.
    pub root: PathBuf,
    /// The `guardlab` binary beside this program.
    pub guardlab: PathBuf,
    /// Scratch space, removed at the end.
    pub work: tempfile::TempDir,
    pub short: bool,
    /// The lab every run of the suite uses (`GUARDLAB_LAB`): each run is the next run of the
    /// one before it.
    pub lab: String,
    failures: Vec<String>,
    checks: usize,
    figures: Vec<(String, String)>,
}

impl Suite {
    /// One check: said at once, counted, and listed at the end when it failed.
    pub fn check(&mut self, ok: bool, what: impl Into<String>) -> bool {
        let what = what.into();
        self.checks += 1;
        if ok {
            println!("  ok    {what}");
        } else {
            println!("  FAIL  {what}");
            self.failures.push(what);
        }
        ok
    }

    /// A figure for the closing summary.
    pub fn figure(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let (name, value) = (name.into(), value.into());
        println!("  =     {name}: {value}");
        self.figures.push((name, value));
    }

    /// `guardlab` with the suite's lab and an ephemeral notebook port, from the repository.
    pub fn guardlab(&self) -> std::process::Command {
        let mut command = std::process::Command::new(&self.guardlab);
        command
            .current_dir(&self.root)
            .env("GUARDLAB_SCENARIOS_DIR", self.root.join("scenarios"))
            .env("GUARDLAB_LAB", &self.lab)
            .env("GUARDLAB_NOTEBOOK_ADDRESS", "127.0.0.1:0")
            .env_remove("GUARDLAB_SNAPSHOT_DIR")
            .env_remove("GUARDLAB_REPLAY_FILE")
            .env_remove("GUARDLAB_MAX_INPUT_BYTES");
        command
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// The `guardlab` binary built beside this example (`target/<profile>/examples/soak` →
/// `target/<profile>/guardlab`).
fn guardlab_binary() -> Result<PathBuf, String> {
    let me = std::env::current_exe().map_err(|e| format!("where am I: {e}"))?;
    let profile_dir = me
        .parent()
        .and_then(Path::parent)
        .ok_or("this program is not in a cargo target directory")?;
    let guardlab = profile_dir.join("guardlab");
    let minerd = profile_dir.join("minerd");
    for (binary, package) in [(&guardlab, "guardlab"), (&minerd, "guardlab-minerd")] {
        if !binary.exists() {
            return Err(format!(
                "{} is not built: cargo build -p guardlab -p guardlab-minerd (missing: {package})",
                binary.display()
            ));
        }
    }
    Ok(guardlab)
}

fn main() -> ExitCode {
    let raw: Vec<String> = std::env::args().collect();
    if raw.get(1).map(String::as_str) == Some(files::MAKE_STREAM) && raw.len() == 4 {
        return match files::make_stream(&raw[2], Path::new(&raw[3])) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("soak: {e}");
                ExitCode::from(2)
            }
        };
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("soak: {e}");
            return ExitCode::from(2);
        }
    };
    if args.parts.iter().any(|p| p.needs_root()) && !is_root() {
        eprintln!(
            "soak: the signals and live parts run the local lab (namespaces, cgroups, eBPF): run as root (sudo), or only the files part (--only files)"
        );
        return ExitCode::from(2);
    }
    let guardlab = match guardlab_binary() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("soak: {e}");
            return ExitCode::from(2);
        }
    };
    let work = match tempfile::Builder::new().prefix("guardlab-soak.").tempdir() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("soak: a scratch directory: {e}");
            return ExitCode::from(2);
        }
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("the repository");
    let mut suite = Suite {
        root,
        guardlab,
        work,
        short: args.short,
        lab: format!("soak-{}", std::process::id()),
        failures: Vec::new(),
        checks: 0,
        figures: Vec::new(),
    };
    let form = if args.short { "short" } else { "full" };
    println!(
        "guardlab reliability suite ({form} form), seed {} (repeat with --seed {}), lab {}",
        args.seed, args.seed, suite.lab
    );
    let started = Instant::now();
    let mut rng = signals::Rng::new(args.seed);
    for part in Part::ALL {
        if !args.parts.contains(&part) {
            continue;
        }
        let outcome = match part {
            Part::Files => {
                println!(
                    "\n== files: the engine's attack streams and hostile files through the file commands"
                );
                files::run(&mut suite)
            }
            Part::Signals => {
                println!("\n== signals: runs stopped at random points, lab status, what was left");
                signals::run(&mut suite, &mut rng)
            }
            Part::Live => {
                println!(
                    "\n== live: the attacks from inside the pod during the scenario, and its containment"
                );
                live::run(&mut suite)
            }
        };
        if let Err(e) = outcome {
            suite.check(false, format!("the {part:?} part could not run: {e}"));
        }
    }
    // Whatever happened, the lab is not left behind.
    let _ = suite
        .guardlab()
        .args(["lab", "down", "--namespace", &suite.lab])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();

    println!(
        "\n== figures ({form} form, seed {}, {:.0} s)",
        args.seed,
        started.elapsed().as_secs_f64()
    );
    for (name, value) in &suite.figures {
        println!("  {name}: {value}");
    }
    if suite.failures.is_empty() {
        println!("\nPASS: {} checks", suite.checks);
        ExitCode::SUCCESS
    } else {
        println!(
            "\nFAIL: {} of {} checks failed:",
            suite.failures.len(),
            suite.checks
        );
        for f in &suite.failures {
            println!("  - {f}");
        }
        ExitCode::from(1)
    }
}
