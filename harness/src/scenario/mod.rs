//! Scenarios: steps as data (`scenarios/<name>.yaml`, see [`file`]), run against a live lab or
//! a recording ([`replay`], [`recording`]), driving the engine and checking the results against
//! snapshot files ([`snapshot`]) in `snapshots/<name>/`.
//!
//! The lead's `main` calls [`run_scenario`] for `guardlab scenario ...`.
//!
//! Where things are found (each can be moved with an environment variable, for tests and for
//! scenarios kept elsewhere):
//! - scenario files: `GUARDLAB_SCENARIOS_DIR`, else `./scenarios`, else the source tree's;
//! - snapshots: `GUARDLAB_SNAPSHOT_DIR`, else `<scenarios>/../snapshots/<scenario>` (on the kind
//!   backend `<scenario>-kind`: the real image's paths differ);
//! - the recording a replay reads: `GUARDLAB_REPLAY_FILE`, else `<scenarios>/<scenario>.ndjson`.

pub mod file;
pub mod live;
pub mod recording;
pub mod replay;
pub mod runner;
pub mod snapshot;
pub mod summary;

use std::path::{Path, PathBuf};

use crate::cli::{BackendArg, ScenarioArgs};
use crate::report::{CommandResult, Failure, Outcome};

pub use runner::{RunReport, StepResult};

/// Environment variables that move the scenario's files.
pub const ENV_SCENARIOS_DIR: &str = "GUARDLAB_SCENARIOS_DIR";
pub const ENV_SNAPSHOT_DIR: &str = "GUARDLAB_SNAPSHOT_DIR";
pub const ENV_REPLAY_FILE: &str = "GUARDLAB_REPLAY_FILE";

/// The scenario files' directory (see the module documentation).
pub fn scenarios_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(ENV_SCENARIOS_DIR) {
        return PathBuf::from(dir);
    }
    let here = PathBuf::from("scenarios");
    if here.is_dir() {
        return here;
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("scenarios")
}

/// Everything a run needs, resolved from the command line and the environment.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub scenario_file: PathBuf,
    pub backend: BackendArg,
    pub snapshot_dir: Option<PathBuf>,
    pub update_snapshots: bool,
    /// Replay: the recording to read (default `<scenarios>/<name>.ndjson`).
    pub replay_file: Option<PathBuf>,
    /// Write the run's events here.
    pub record: Option<PathBuf>,
    pub json: Option<PathBuf>,
    pub junit: Option<PathBuf>,
    pub keep_lab: bool,
    /// Pause before each step until Enter on standard input (a workshop).
    pub step: bool,
    /// No progress output (tests).
    pub quiet: bool,
}

impl RunOptions {
    pub fn from_args(args: &ScenarioArgs, name: &str) -> Result<RunOptions, Failure> {
        let scenario_file = file::resolve_scenario(&scenarios_dir(), name)?;
        Ok(RunOptions {
            scenario_file,
            backend: args.backend,
            snapshot_dir: std::env::var_os(ENV_SNAPSHOT_DIR).map(PathBuf::from),
            update_snapshots: args.update_snapshots,
            replay_file: std::env::var_os(ENV_REPLAY_FILE).map(PathBuf::from),
            record: args.record.clone(),
            json: args.json.clone(),
            junit: args.junit.clone(),
            keep_lab: args.keep_lab,
            step: args.step,
            quiet: false,
        })
    }
}

/// The default snapshot directory of a scenario: `snapshots/<name>` beside `scenarios/`.
pub fn default_snapshot_dir(scenario_file: &Path, name: &str) -> PathBuf {
    let dir = scenario_file.parent().unwrap_or(Path::new("."));
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    dir.join("..").join("snapshots").join(name)
}

/// `guardlab scenario ...`: list, or run one scenario, print the summary, write the reports.
/// Exit codes through [`CommandResult`]: 0 pass, 1 a snapshot or check failed, 2 the lab could
/// not run (or bad input).
pub fn run_scenario(args: &ScenarioArgs) -> CommandResult {
    if args.list {
        return list_scenarios();
    }
    let Some(name) = args.name.as_deref() else {
        return Err(Failure(anyhow::anyhow!("name a scenario, or use --list")));
    };
    let options = RunOptions::from_args(args, name)?;
    if options.step && !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        return Err(Failure(anyhow::anyhow!(
            "--step waits for Enter before each step, typed in a terminal, and standard input is not one: run it from a terminal, or leave --step out"
        )));
    }
    if matches!(options.backend, BackendArg::Local) {
        crate::privilege::ensure_root("the local lab")?;
    }
    let report = run_blocking(&options);
    let console = crate::console::Console { quiet: false };
    summary::print_summary(&report, &console);
    let mut write_errors = Vec::new();
    if let Some(path) = &options.json
        && let Err(e) = summary::write_json(&report, path)
    {
        write_errors.push(format!("--json {}: {e}", path.display()));
    }
    if let Some(path) = &options.junit
        && let Err(e) = summary::write_junit(&report, path)
    {
        write_errors.push(format!("--junit {}: {e}", path.display()));
    }
    if !write_errors.is_empty() {
        return Err(Failure(anyhow::anyhow!("{}", write_errors.join("; "))));
    }
    match report.exit_code() {
        0 => Ok(Outcome::Clean),
        1 => Ok(Outcome::Findings),
        _ => Err(Failure(anyhow::anyhow!(
            "{}{}",
            if report.scenario == "?" {
                String::new()
            } else {
                format!("scenario {}: ", report.scenario)
            },
            report
                .error
                .clone()
                .or_else(|| report
                    .steps
                    .iter()
                    .find(|s| s.result == StepResult::Error)
                    .map(|s| { format!("step {:?}: {}", s.name, s.messages.join("; ")) }))
                .unwrap_or_else(|| "the lab could not run".into())
        ))),
    }
}

/// `guardlab scenario --list`: every scenario file's name and description.
pub fn list_scenarios() -> CommandResult {
    let dir = scenarios_dir();
    let files = file::scenario_files(&dir)?;
    if files.is_empty() {
        println!("no scenarios in {}", file::display_path(&dir));
        return Ok(Outcome::Clean);
    }
    let mut problems = Vec::new();
    let mut rows = Vec::new();
    for path in files {
        match file::load_scenario(&path) {
            Ok(s) => rows.push((s.name, s.description, s.steps.len())),
            Err(e) => problems.push(e.to_string()),
        }
    }
    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    for (name, description, steps) in &rows {
        println!("{name:<width$}  {description} ({steps} steps)");
    }
    for p in &problems {
        eprintln!("guardlab: {p}");
    }
    Ok(if problems.is_empty() {
        Outcome::Clean
    } else {
        Outcome::Findings
    })
}

/// Run a scenario to the end on a fresh tokio runtime; never fails: errors are in the report.
pub fn run_blocking(options: &RunOptions) -> RunReport {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(run(options)),
        Err(e) => {
            let mut r = RunReport::new("?", "?");
            r.error = Some(format!("starting the async runtime: {e}"));
            r.settle();
            r
        }
    }
}

/// Run the steps, pausing before each one with `--step`.
async fn drive<B: runner::Backend>(
    runner: runner::Runner<'_, B>,
    options: &RunOptions,
) -> RunReport {
    let runner = if options.step {
        runner.with_pacer(runner::Pacer::stdin())
    } else {
        runner
    };
    runner.run(options.keep_lab).await
}

/// Run a scenario to the end; never fails: errors are in the report.
pub async fn run(options: &RunOptions) -> RunReport {
    let backend_word = match options.backend {
        BackendArg::Local => "local",
        BackendArg::Kind => "kind",
        BackendArg::Replay => "replay",
    };
    let fail = |name: &str, error: String| {
        let mut r = RunReport::new(name, backend_word);
        r.error = Some(error);
        r.settle();
        r
    };
    let scenario = match file::load_scenario(&options.scenario_file) {
        Ok(s) => s,
        Err(e) => return fail("?", e.to_string()),
    };
    // The kind backend runs the real image, whose paths differ from the local pod's: it keeps
    // its own snapshot set, `snapshots/<name>-kind/`.
    let snapshot_dir = options.snapshot_dir.clone().unwrap_or_else(|| {
        let name = match options.backend {
            BackendArg::Kind => format!("{}-kind", scenario.name),
            _ => scenario.name.clone(),
        };
        default_snapshot_dir(&options.scenario_file, &name)
    });
    let snapshots = runner::SnapshotMode {
        dir: snapshot::SnapshotDir::new(snapshot_dir),
        update: options.update_snapshots,
        // As the repository names it, whatever the current directory.
        source: format!(
            "scenarios/{}",
            options
                .scenario_file
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default()
        ),
    };
    let console = crate::console::Console {
        quiet: options.quiet,
    };
    let header = |backend: &str, synthetic: bool, note: String| recording::Header {
        format: recording::RECORDING_FORMAT,
        scenario: scenario.name.clone(),
        events_format: guardlab_events::FORMAT_VERSION,
        backend: backend.to_string(),
        synthetic,
        note,
    };
    match options.backend {
        BackendArg::Replay => {
            let path = options.replay_file.clone().unwrap_or_else(|| {
                options
                    .scenario_file
                    .with_file_name(format!("{}.ndjson", scenario.name))
            });
            let shown = file::display_path(&path);
            let rec = match recording::read_recording(&path) {
                Ok(r) => r,
                Err(e) => {
                    return fail(
                        &scenario.name,
                        format!(
                            "{e} (make a recording with `guardlab scenario {} --record {shown}`)",
                            scenario.name
                        ),
                    );
                }
            };
            let backend = match replay::ReplayBackend::new(&scenario, rec, &shown) {
                Ok(b) => b,
                Err(e) => return fail(&scenario.name, e),
            };
            let recorder = match &options.record {
                Some(out) => {
                    let h = backend.header().clone();
                    match recording::RecordingWriter::create(out, &h) {
                        Ok(w) => Some(w),
                        Err(e) => return fail(&scenario.name, e.to_string()),
                    }
                }
                None => None,
            };
            drive(
                runner::Runner::new(&scenario, backend, snapshots, recorder, console),
                options,
            )
            .await
        }
        BackendArg::Local => {
            let backend = match live::LocalBackend::new(&scenario) {
                Ok(b) => b,
                Err(e) => return fail(&scenario.name, e),
            };
            let recorder = match &options.record {
                Some(out) => match recording::RecordingWriter::create(
                    out,
                    &header(
                        "local",
                        false,
                        format!("recorded by guardlab {}", env!("CARGO_PKG_VERSION")),
                    ),
                ) {
                    Ok(w) => Some(w),
                    Err(e) => return fail(&scenario.name, e.to_string()),
                },
                None => None,
            };
            let runner = runner::Runner::new(&scenario, backend, snapshots, recorder, console);
            drive(runner, options).await
        }
        BackendArg::Kind => {
            if !options.update_snapshots && !snapshots.dir.dir.exists() {
                console.line(format!(
                    "! no snapshots for the kind backend yet ({} does not exist): the checked steps \
                     will fail as missing; run once with --update-snapshots to write them, review, and commit",
                    file::display_path(&snapshots.dir.dir)
                ));
            }
            let backend = live::KindBackend::new(&scenario);
            let recorder = match &options.record {
                Some(out) => match recording::RecordingWriter::create(
                    out,
                    &header(
                        "kind",
                        false,
                        format!("recorded by guardlab {}", env!("CARGO_PKG_VERSION")),
                    ),
                ) {
                    Ok(w) => Some(w),
                    Err(e) => return fail(&scenario.name, e.to_string()),
                },
                None => None,
            };
            drive(
                runner::Runner::new(&scenario, backend, snapshots, recorder, console),
                options,
            )
            .await
        }
    }
}
