//! Scenarios: steps as data (`scenarios/<name>.yaml`, see [`file`]), run against a live lab or
//! a recording ([`replay`], [`recording`]), driving the engine and checking the results against
//! snapshot files ([`snapshot`]) in `snapshots/<name>/`.
//!
//! `guardlab scenario ...` (`crate::commands::scenario`) resolves a [`RunOptions`] and calls
//! [`run_stoppable_blocking`]: the [`RunReport`] it gets back says how the run came out, or a
//! [`StoppedRun`] says where SIGINT or SIGTERM stopped it and what became of its lab
//! ([`stop`]). [`run_blocking`] runs to the end, whatever signals come (tests, tools).
//!
//! Where things are found (each can be moved with an environment variable, for tests and for
//! scenarios kept elsewhere):
//! - scenario files: `GUARDLAB_SCENARIOS_DIR`, else `./scenarios`, else the source tree's;
//! - snapshots: `GUARDLAB_SNAPSHOT_DIR`, else `<scenarios>/../snapshots/<scenario>` (on the kind
//!   backend `<scenario>-kind`: the real image's paths differ);
//! - the recording a replay reads: `GUARDLAB_REPLAY_FILE`, else `<scenarios>/<scenario>.ndjson`;
//! - the local lab's name: `GUARDLAB_LAB`, else the scenario's namespace (its directory under
//!   `/run/guardlab` and its cgroup; the pod's namespace stays the manifest's), and where its
//!   notebook is forwarded: `GUARDLAB_NOTEBOOK_ADDRESS`, else 127.0.0.1:1234 (`127.0.0.1:0`: any
//!   free port). Tests that run labs side by side set both.

pub mod backend;
pub mod documents_out;
pub mod html_report;
pub mod latency;
/// The scenario file format (its own crate, so that the fuzz targets build it without the harness).
pub use guardlab_scenario_file as file;
pub mod live;
pub mod names;
pub mod pace;
pub mod recording;
pub mod replay;
pub mod run_report;
pub mod runner;
pub mod snapshot;
pub mod snapshot_extra;
pub mod snapshot_text;
pub mod stop;
pub mod summary;
pub mod workbench;

use std::path::{Path, PathBuf};

use guardlab_lab_api::{Backend, LabError};

use crate::console::Console;
use crate::signals::StopSignals;
use backend::ScenarioBackend;
use file::Scenario;
use pace::Pacer;
use recording::RecordingWriter;
use runner::{Runner, SnapshotMode};
use stop::{RunParts, run_stoppable};

pub use run_report::{EventCounts, RunReport, RunResult, StepResult};
pub use stop::{LabAfterStop, RunEnd, StoppedRun};

/// Environment variables that move the scenario's files.
pub const ENV_SCENARIOS_DIR: &str = "GUARDLAB_SCENARIOS_DIR";
pub const ENV_SNAPSHOT_DIR: &str = "GUARDLAB_SNAPSHOT_DIR";
pub const ENV_REPLAY_FILE: &str = "GUARDLAB_REPLAY_FILE";
pub const ENV_LAB: &str = "GUARDLAB_LAB";
pub const ENV_NOTEBOOK_ADDRESS: &str = "GUARDLAB_NOTEBOOK_ADDRESS";

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
    pub backend: Backend,
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
    /// The engine's limits (`--limit`).
    pub limits: guardlab_engine::limits::Limits,
    /// Write the run's documents (fingerprints, policy, deviations, trace) here, unredacted.
    pub out: Option<PathBuf>,
    /// Serve the guard console over the run's store (`--console`); with `step`, workshop mode.
    pub console: Option<guardlab_guard_console::ConsoleOptions>,
    /// Write the run as one self-contained HTML page (`--html`).
    pub html: Option<PathBuf>,
}

impl RunOptions {
    /// A quiet replay of `recording` by the scenario in `scenario_file`, checked against the
    /// snapshots in `snapshot_dir`, with every other option as its default (what tests replay).
    pub fn replay(scenario_file: PathBuf, snapshot_dir: PathBuf, recording: PathBuf) -> Self {
        RunOptions {
            scenario_file,
            backend: Backend::Replay,
            snapshot_dir: Some(snapshot_dir),
            update_snapshots: false,
            replay_file: Some(recording),
            record: None,
            json: None,
            junit: None,
            keep_lab: false,
            step: false,
            quiet: true,
            limits: Default::default(),
            out: None,
            console: None,
            html: None,
        }
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

/// Run a scenario to the end on a fresh tokio runtime; never fails: errors are in the report.
/// Signals keep their default action (no clean-up: see [`run_stoppable_blocking`]).
pub fn run_blocking(options: &RunOptions) -> RunReport {
    match guardlab_host::runtime(2) {
        Ok(rt) => rt.block_on(run(options)),
        Err(e) => RunReport::failed(
            &file::name_of_file(&options.scenario_file),
            options.backend,
            format!("starting the async runtime: {e}"),
        ),
    }
}

/// Run a scenario on a fresh tokio runtime until it ends or SIGINT or SIGTERM stops it; a
/// stopped run takes its lab down (unless `--keep-lab`) before it returns.
pub fn run_stoppable_blocking(options: &RunOptions) -> RunEnd {
    let runtime = match guardlab_host::runtime(2) {
        Ok(runtime) => runtime,
        Err(e) => {
            return RunEnd::Finished(Box::new(RunReport::failed(
                &file::name_of_file(&options.scenario_file),
                options.backend,
                format!("starting the async runtime: {e}"),
            )));
        }
    };
    let end = runtime.block_on(async {
        match StopSignals::listen() {
            Ok(mut signals) => run_until(options, &mut signals).await,
            Err(e) => RunEnd::Finished(Box::new(RunReport::failed(
                &file::name_of_file(&options.scenario_file),
                options.backend,
                format!("handling SIGINT and SIGTERM: {e}"),
            ))),
        }
    });
    // A stopped `--step` pause may still wait for a line on standard input: do not wait for it.
    runtime.shutdown_background();
    end
}

/// Why a run could not start: its scenario, its recording or its lab could not be had.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The scenario file (its file, line and key).
    #[error(transparent)]
    Scenario(#[from] file::ScenarioError),
    /// The recording a replay reads.
    #[error("{source} (make a recording with `guardlab scenario {scenario} --record {shown}`)")]
    NoRecording {
        scenario: String,
        shown: String,
        #[source]
        source: recording::RecordingError,
    },
    /// A recording of another scenario, or of another version of it.
    #[error(transparent)]
    Replay(#[from] replay::ReplayError),
    /// The file `--record` names.
    #[error(transparent)]
    Record(#[from] recording::RecordingError),
    /// The local lab's options.
    #[error(transparent)]
    Lab(#[from] LabError),
    /// The directory `--out` names.
    #[error(transparent)]
    Out(#[from] documents_out::OutError),
    /// The scenario says it does not run on this backend (`runs_on`).
    #[error("{0}")]
    NotOnBackend(String),
}

/// Run a scenario to the end; never fails: errors are in the report.
pub async fn run(options: &RunOptions) -> RunReport {
    match run_until(options, &mut StopSignals::never()).await {
        RunEnd::Finished(report) => *report,
        // Nothing asks to stop, but the report would say so.
        RunEnd::Stopped(stopped) => {
            RunReport::failed(&stopped.scenario, options.backend, stopped.line())
        }
    }
}

/// Run a scenario until it ends or `signals` asks to stop; never fails: errors are in the
/// report.
pub async fn run_until(options: &RunOptions, signals: &mut StopSignals) -> RunEnd {
    let scenario = match file::load_scenario(&options.scenario_file) {
        Ok(s) => s,
        Err(e) => {
            return RunEnd::Finished(Box::new(RunReport::failed(
                &file::name_of_file(&options.scenario_file),
                options.backend,
                SetupError::from(e),
            )));
        }
    };
    match run_scenario(options, &scenario, signals).await {
        Ok(end) => end,
        Err(e) => RunEnd::Finished(Box::new(RunReport::failed(
            &scenario.name,
            options.backend,
            e,
        ))),
    }
}

/// Run a scenario on a live lab made by the caller (tests: a kind lab on a fake API) until it
/// ends or `signals` asks to stop.
pub async fn run_on<L: live::LiveLab>(
    options: &RunOptions,
    backend: &mut live::LabBackend<L>,
    signals: &mut StopSignals,
) -> RunEnd {
    let scenario = match file::load_scenario(&options.scenario_file) {
        Ok(s) => s,
        Err(e) => {
            return RunEnd::Finished(Box::new(RunReport::failed(
                &file::name_of_file(&options.scenario_file),
                options.backend,
                SetupError::from(e),
            )));
        }
    };
    if let Some(why) = scenario.refuses(backend.backend()) {
        return RunEnd::Finished(Box::new(RunReport::failed(
            &scenario.name,
            options.backend,
            SetupError::NotOnBackend(why),
        )));
    }
    let header = live_header(&scenario, backend.backend());
    let recorder = match recorder(options, &header) {
        Ok(recorder) => recorder,
        Err(e) => {
            return RunEnd::Finished(Box::new(RunReport::failed(
                &scenario.name,
                options.backend,
                SetupError::from(e),
            )));
        }
    };
    let out = match options
        .out
        .as_deref()
        .map(documents_out::DocumentsOut::create)
        .transpose()
    {
        Ok(out) => out,
        Err(e) => {
            return RunEnd::Finished(Box::new(RunReport::failed(
                &scenario.name,
                options.backend,
                SetupError::from(e),
            )));
        }
    };
    let parts = RunParts {
        scenario: &scenario,
        snapshots: snapshot_mode(options, &scenario),
        recorder,
        console: Console {
            quiet: options.quiet,
        },
        options,
        out,
    };
    run_stoppable(backend, parts, signals).await
}

async fn run_scenario(
    options: &RunOptions,
    scenario: &Scenario,
    signals: &mut StopSignals,
) -> Result<RunEnd, SetupError> {
    if let Some(why) = scenario.refuses(options.backend) {
        return Err(SetupError::NotOnBackend(why));
    }
    let snapshots = snapshot_mode(options, scenario);
    let out = options
        .out
        .as_deref()
        .map(documents_out::DocumentsOut::create)
        .transpose()?;
    let console = Console {
        quiet: options.quiet,
    };
    match options.backend {
        Backend::Replay => {
            let path = options.replay_file.clone().unwrap_or_else(|| {
                options
                    .scenario_file
                    .with_file_name(format!("{}.ndjson", scenario.name))
            });
            let shown = file::display_path(&path);
            let rec =
                recording::read_recording(&path).map_err(|source| SetupError::NoRecording {
                    scenario: scenario.name.clone(),
                    shown: shown.clone(),
                    source,
                })?;
            let mut backend = replay::ReplayBackend::new(scenario, rec, &shown)?;
            // A replay recorded again is the same recording.
            let header = backend.header().clone();
            let recorder = recorder(options, &header)?;
            let parts = RunParts {
                scenario,
                snapshots,
                recorder,
                console,
                options,
                out,
            };
            Ok(run_stoppable(&mut backend, parts, signals).await)
        }
        Backend::Local => {
            let mut backend = live::LocalBackend::new(scenario, options.keep_lab)?;
            let recorder = recorder(options, &live_header(scenario, Backend::Local))?;
            let parts = RunParts {
                scenario,
                snapshots,
                recorder,
                console,
                options,
                out,
            };
            Ok(run_stoppable(&mut backend, parts, signals).await)
        }
        Backend::Kind => {
            if !options.update_snapshots && !snapshots.dir.dir.exists() {
                console.line(format!(
                    "! no snapshots for the kind backend yet ({} does not exist): the checked steps \
                     will fail as missing; run once with --update-snapshots to write them, review, and commit",
                    file::display_path(&snapshots.dir.dir)
                ));
            }
            let mut backend = live::KindBackend::new(scenario);
            let recorder = recorder(options, &live_header(scenario, Backend::Kind))?;
            let parts = RunParts {
                scenario,
                snapshots,
                recorder,
                console,
                options,
                out,
            };
            Ok(run_stoppable(&mut backend, parts, signals).await)
        }
    }
}

/// Where the run's snapshots are, and whether to rewrite them.
fn snapshot_mode(options: &RunOptions, scenario: &Scenario) -> SnapshotMode {
    // The kind backend runs the real image, whose paths differ from the local pod's: it keeps
    // its own snapshot set, `snapshots/<name>-kind/`.
    let snapshot_dir = options.snapshot_dir.clone().unwrap_or_else(|| {
        let name = match options.backend {
            Backend::Kind => format!("{}-kind", scenario.name),
            Backend::Local | Backend::Replay => scenario.name.clone(),
        };
        default_snapshot_dir(&options.scenario_file, &name)
    });
    SnapshotMode {
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
    }
}

/// The header of a recording of a live run.
fn live_header(scenario: &Scenario, backend: Backend) -> recording::Header {
    recording::Header {
        format: recording::RECORDING_FORMAT,
        scenario: scenario.name.clone(),
        events_format: guardlab_events::FORMAT_VERSION,
        backend: recording::RecordedOn::Backend(backend),
        synthetic: false,
        note: format!("recorded by guardlab {}", env!("CARGO_PKG_VERSION")),
    }
}

/// The writer of `--record`, when asked for.
fn recorder(
    options: &RunOptions,
    header: &recording::Header,
) -> Result<Option<RecordingWriter>, recording::RecordingError> {
    options
        .record
        .as_deref()
        .map(|out| RecordingWriter::create(out, header))
        .transpose()
}

/// Run the steps, pausing before each one with `--step`.
async fn drive<B: ScenarioBackend>(
    runner: Runner<'_, B>,
    options: &RunOptions,
    out: Option<documents_out::DocumentsOut>,
) -> RunReport {
    let runner = if options.step {
        runner.with_pacer(Pacer::stdin())
    } else {
        runner
    };
    let runner = match out {
        Some(out) => runner.with_documents_out(out),
        None => runner,
    };
    let runner = match &options.html {
        Some(path) => runner.with_html(path.clone()),
        None => runner,
    };
    runner.run(options.keep_lab).await
}
