//! `fuzz-run`: installs the fuzzing tools, builds the AFL++ targets and runs each for a while,
//! then says what each did (time, executions, corpus, crashes, hangs).
//!
//! ```sh
//! cargo run -p guardlab-fuzz --bin fuzz-run -- --seconds 10             # every target, 10 s each
//! cargo run -p guardlab-fuzz --bin fuzz-run -- --seconds 600 document   # one target, longer
//! cargo run -p guardlab-fuzz --bin fuzz-run -- --reproduce document FILE  # replay a finding
//! ```
//!
//! Everything runs on the stable toolchain: cargo-afl instruments through rustc's own LLVM
//! (SanitizerCoverage), and AFL++ is built from the sources cargo-afl ships. What it needs:
//! - cargo-afl, pinned, installed with `cargo install --locked` under
//!   `$XDG_CACHE_HOME/guardlab/fuzz/` (else `~/.cache/guardlab/fuzz/`; `guardlab clean` removes
//!   it), never into `~/.cargo`;
//! - AFL++, built by `cargo afl config --build` into the same place (its data directory);
//! - make, clang and llvm-config to build AFL++, installed through apt when missing (saying so).
//!
//! The targets are built into `target/fuzz/`; each run's AFL++ output is
//! `target/fuzz/out/<target>/` (crashes and hangs under `default/crashes`, `default/hangs`).
//! Exit codes: 0 no crash or hang, 1 a target crashed or hung (the inputs are listed), 2 the
//! tools could not be had or a target could not run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use guardlab_host::{Host, StderrProgress};

/// The cargo-afl the driver installs; `afl` in fuzz/Cargo.toml is the same version.
const CARGO_AFL_VERSION: &str = "0.18.2";

#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error("{0}")]
    Usage(String),
    #[error("the fuzzing tools need {0}")]
    Host(#[from] guardlab_host::HostError),
    #[error("{what} failed ({status}){log}")]
    Command {
        what: String,
        status: std::process::ExitStatus,
        log: String,
    },
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: AFL++ wrote no fuzzer_stats (see {log})")]
    NoStats { path: PathBuf, log: PathBuf },
}

fn io<'p>(action: &'static str, path: &'p Path) -> impl FnOnce(std::io::Error) -> RunError + 'p {
    move |source| RunError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

fn main() {
    match run() {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("fuzz-run: {e}");
            std::process::exit(2);
        }
    }
}

struct Options {
    seconds: u64,
    targets: Vec<String>,
}

fn usage() -> String {
    format!(
        "Usage: cargo run -p guardlab-fuzz --bin fuzz-run -- [--seconds N] [TARGET...]\n       \
         cargo run -p guardlab-fuzz --bin fuzz-run -- --reproduce TARGET FILE\n\n\
         Targets: {} (default: all). --seconds: how long each runs (default 10).\n\n\
         Example:\n  cargo run -p guardlab-fuzz --bin fuzz-run -- --seconds 60 document events",
        guardlab_fuzz::TARGETS.join(", ")
    )
}

fn run() -> Result<bool, RunError> {
    let mut args = std::env::args().skip(1);
    let mut options = Options {
        seconds: 10,
        targets: Vec::new(),
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => {
                println!("{}", usage());
                return Ok(true);
            }
            "--seconds" => {
                options.seconds = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .filter(|s| *s > 0)
                    .ok_or_else(|| {
                        RunError::Usage("--seconds needs a whole number above 0".into())
                    })?;
            }
            "--reproduce" => {
                let (Some(target), Some(file)) = (args.next(), args.next()) else {
                    return Err(RunError::Usage(usage()));
                };
                check_target(&target)?;
                let data = std::fs::read(&file).map_err(io("read", Path::new(&file)))?;
                eprintln!("running {target} on {file} ({} bytes)", data.len());
                guardlab_fuzz::run(&target, &data);
                eprintln!("no panic");
                return Ok(true);
            }
            target => {
                check_target(target)?;
                options.targets.push(target.to_string());
            }
        }
    }
    if options.targets.is_empty() {
        options.targets = guardlab_fuzz::TARGETS.map(String::from).to_vec();
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("fuzz/ is inside the workspace")
        .to_path_buf();
    let tools = Tools::ensure()?;
    let bins = tools.build(&workspace, &options.targets)?;
    let mut all_clean = true;
    let mut rows = Vec::new();
    for target in &options.targets {
        let seeds = workspace.join("fuzz/seeds").join(target);
        let out = workspace.join("target/fuzz/out").join(target);
        let stats = tools.fuzz(
            &bins.join(format!("afl_{target}")),
            &seeds,
            &out,
            options.seconds,
        )?;
        let findings = stats.findings(&out);
        all_clean &= findings.is_empty();
        rows.push((target.clone(), stats, findings));
    }
    println!(
        "\n{:<14} {:>8} {:>12} {:>10} {:>7} {:>8} {:>6}",
        "target", "seconds", "executions", "execs/s", "corpus", "crashes", "hangs"
    );
    for (target, stats, _) in &rows {
        println!(
            "{:<14} {:>8} {:>12} {:>10} {:>7} {:>8} {:>6}",
            target,
            stats.get("run_time"),
            stats.get("execs_done"),
            stats.get("execs_per_sec"),
            stats.get("corpus_count"),
            stats.get("saved_crashes"),
            stats.get("saved_hangs"),
        );
    }
    for (target, _, findings) in &rows {
        for file in findings {
            println!(
                "{target}: {}\n  reproduce: cargo run -p guardlab-fuzz --bin fuzz-run -- --reproduce {target} {}",
                file.display(),
                file.display()
            );
        }
    }
    if all_clean {
        println!("no crash and no hang");
    }
    Ok(all_clean)
}

fn check_target(name: &str) -> Result<(), RunError> {
    if guardlab_fuzz::TARGETS.contains(&name) {
        Ok(())
    } else {
        Err(RunError::Usage(format!(
            "no fuzz target `{name}`\n\n{}",
            usage()
        )))
    }
}

/// cargo-afl and AFL++, installed under guardlab's cache.
struct Tools {
    cargo_afl: PathBuf,
    /// cargo-afl keeps AFL++ in `$XDG_DATA_HOME/afl.rs`; ours is under the cache.
    data_home: PathBuf,
}

impl Tools {
    fn ensure() -> Result<Tools, RunError> {
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .ok_or_else(|| RunError::Usage("neither XDG_CACHE_HOME nor HOME is set".into()))?
            .join("guardlab/fuzz");
        let root = cache.join(format!("cargo-afl-{CARGO_AFL_VERSION}"));
        let cargo_afl = root.join("bin/cargo-afl");
        let data_home = cache.join("data");
        Host::new(false).ensure(&guardlab_host::catalog::FUZZ_BUILD, &StderrProgress)?;
        if !cargo_afl.is_file() {
            eprintln!(
                "installing cargo-afl {CARGO_AFL_VERSION} into {} (once, a few minutes)",
                root.display()
            );
            run_logged(
                Command::new("cargo")
                    .args([
                        "install",
                        "--locked",
                        "cargo-afl",
                        "--version",
                        CARGO_AFL_VERSION,
                        "--root",
                    ])
                    .arg(&root),
                "cargo install cargo-afl",
                None,
            )?;
        }
        let tools = Tools {
            cargo_afl,
            data_home,
        };
        if !tools.afl_built() {
            eprintln!(
                "building AFL++ (from cargo-afl's sources) into {} (once, about a minute)",
                tools.data_home.display()
            );
            let log = cache.join("afl-build.log");
            run_logged(
                tools
                    .command()
                    .args(["afl", "config", "--build", "--verbose"]),
                "cargo afl config --build",
                Some(&log),
            )?;
        }
        Ok(tools)
    }

    /// Whether AFL++ for this toolchain is built (`afl-fuzz` and its runtime object).
    fn afl_built(&self) -> bool {
        let Ok(toolchains) = std::fs::read_dir(self.data_home.join("afl.rs")) else {
            return false;
        };
        toolchains.flatten().any(|t| {
            let dir = t.path().join(format!("afl.rs-{CARGO_AFL_VERSION}"));
            dir.join("afl/bin/afl-fuzz").is_file()
                && dir.join("afl-llvm/afl-compiler-rt.o").is_file()
        })
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.cargo_afl);
        cmd.env("XDG_DATA_HOME", &self.data_home);
        cmd
    }

    /// Builds the AFL++ entry points, instrumented, into `target/fuzz`; their directory.
    fn build(&self, workspace: &Path, targets: &[String]) -> Result<PathBuf, RunError> {
        let target_dir = workspace.join("target/fuzz");
        eprintln!(
            "building the fuzz targets with AFL++ instrumentation into {} (release)",
            target_dir.display()
        );
        let mut cmd = self.command();
        cmd.current_dir(workspace)
            .args([
                "afl",
                "build",
                "--release",
                "-p",
                "guardlab-fuzz",
                "--features",
                "afl",
            ])
            .arg("--target-dir")
            .arg(&target_dir);
        for target in targets {
            cmd.args(["--bin", &format!("afl_{target}")]);
        }
        run_logged(&mut cmd, "cargo afl build", None)?;
        Ok(target_dir.join("release"))
    }

    /// Runs one target for `seconds` from the seeds; AFL++'s statistics.
    fn fuzz(&self, bin: &Path, seeds: &Path, out: &Path, seconds: u64) -> Result<Stats, RunError> {
        if out.exists() {
            std::fs::remove_dir_all(out).map_err(io("remove", out))?;
        }
        std::fs::create_dir_all(out).map_err(io("create", out))?;
        let log = out.join("afl-fuzz.log");
        eprintln!(
            "fuzzing {} for {seconds} s (AFL++'s output: {})",
            bin.file_name().unwrap_or_default().to_string_lossy(),
            log.display()
        );
        let mut cmd = self.command();
        cmd.args(["afl", "fuzz", "-i"])
            .arg(seeds)
            .arg("-o")
            .arg(out)
            .args(["-V", &seconds.to_string(), "--"])
            .arg(bin)
            // No screen: the log is the output.
            .env("AFL_NO_UI", "1")
            // A shared machine: no CPU binding, no frequency or crash-handler demands (AFL++
            // would refuse to start when the kernel pipes core dumps to a handler).
            .env("AFL_NO_AFFINITY", "1")
            .env("AFL_SKIP_CPUFREQ", "1")
            .env("AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES", "1")
            .env("AFL_FAST_CAL", "1");
        run_logged(&mut cmd, "cargo afl fuzz", Some(&log))?;
        let stats_file = out.join("default/fuzzer_stats");
        let text = std::fs::read_to_string(&stats_file).map_err(|_| RunError::NoStats {
            path: stats_file.clone(),
            log: log.clone(),
        })?;
        Ok(Stats::parse(&text))
    }
}

/// AFL++'s `fuzzer_stats`: `key : value` lines.
struct Stats(BTreeMap<String, String>);

impl Stats {
    fn parse(text: &str) -> Stats {
        Stats(
            text.lines()
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .collect(),
        )
    }

    fn get(&self, key: &str) -> &str {
        self.0.get(key).map_or("?", String::as_str)
    }

    /// The inputs that crashed or hung the target.
    fn findings(&self, out: &Path) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for dir in ["crashes", "hangs"] {
            if let Ok(entries) = std::fs::read_dir(out.join("default").join(dir)) {
                files.extend(
                    entries
                        .flatten()
                        .map(|e| e.path())
                        .filter(|p| !p.ends_with("README.txt")),
                );
            }
        }
        files.sort();
        files
    }
}

/// Runs a command; with `log`, its output goes there and its last lines into the error.
fn run_logged(cmd: &mut Command, what: &str, log: Option<&Path>) -> Result<(), RunError> {
    if let Some(log) = log {
        let file = std::fs::File::create(log).map_err(io("create", log))?;
        let err = file.try_clone().map_err(io("open", log))?;
        cmd.stdout(file).stderr(err);
    }
    cmd.stdin(Stdio::null());
    let status = cmd.status().map_err(|source| RunError::Io {
        action: "run",
        path: PathBuf::from(what),
        source,
    })?;
    if status.success() {
        return Ok(());
    }
    let tail = log
        .and_then(|l| std::fs::read_to_string(l).ok())
        .map(|text| {
            let lines: Vec<&str> = text.lines().collect();
            format!(
                "; its last lines ({}):\n{}",
                log.map(|l| l.display().to_string()).unwrap_or_default(),
                lines[lines.len().saturating_sub(15)..].join("\n")
            )
        })
        .unwrap_or_default();
    Err(RunError::Command {
        what: what.to_string(),
        status,
        log: tail,
    })
}
