//! Scenarios: steps as data (`scenarios/<name>.yaml`, see [`file`]), run against a live lab or
//! a recording ([`replay`], [`recording`]), driving the engine and checking the results against
//! snapshot files ([`snapshot`]) in `snapshots/<name>/`.
//!
//! `guardlab scenario ...` (`crate::commands::scenario`) resolves a [`RunOptions`] and calls
//! [`run_blocking`]; the [`RunReport`] it gets back says how the run came out.
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

use crate::cli::BackendArg;

pub use runner::{RunReport, RunResult, StepResult};

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

/// Run a scenario to the end on a fresh tokio runtime; never fails: errors are in the report.
pub fn run_blocking(options: &RunOptions) -> RunReport {
    match guardlab_host::runtime(2) {
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
