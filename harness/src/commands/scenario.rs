//! `guardlab scenario ...`: list the scenarios, or run one, print its summary and write its
//! reports. How the run came out becomes the command's outcome: pass 0, a snapshot or check
//! failed 1, the lab could not run, or lost events so the run cannot answer (or bad input) 2;
//! stopped by SIGINT or SIGTERM 130 or 143, after taking its lab down, with one line and no
//! summary (see `crate::scenario::stop`).

use std::path::PathBuf;

use anyhow::anyhow;

use guardlab_lab_api::Backend;

use crate::cli::ScenarioArgs;
use crate::console::Console;
use crate::report::{self, CommandResult, Failure, Outcome, Stopped};
use crate::scenario::{self, RunEnd, RunOptions, RunReport, RunResult, StepResult, file, summary};

pub fn run(args: &ScenarioArgs) -> CommandResult {
    if args.list {
        return list();
    }
    let Some(name) = args.name.as_deref() else {
        return Err(Failure(anyhow!("name a scenario, or use --list")));
    };
    let options = options(args, name)?;
    // A scenario file that cannot be read is bad input, not a lab that could not run: it is
    // said as such (before any sudo), and the reports asked for name the scenario by its file.
    if let Err(e) = file::load_scenario(&options.scenario_file) {
        let name = file::name_of_file(&options.scenario_file);
        let report = RunReport::failed(&name, options.backend, &e);
        let write_errors = write_reports(&report, &options);
        return Err(Failure(if write_errors.is_empty() {
            anyhow!(e)
        } else {
            anyhow!("{e}; {}", write_errors.join("; "))
        }));
    }
    // With a console, the learner may answer there: no terminal needed.
    if options.step
        && options.console.is_none()
        && !std::io::IsTerminal::is_terminal(&std::io::stdin())
    {
        return Err(Failure(anyhow!(
            "--step waits for Enter before each step, typed in a terminal, and standard input is not one: run it from a terminal, or leave --step out"
        )));
    }
    if options.backend == Backend::Local {
        crate::privilege::ensure_root("the local lab")?;
    }
    let report = match scenario::run_stoppable_blocking(&options) {
        RunEnd::Finished(report) => *report,
        RunEnd::Stopped(stopped) => {
            return Ok(Outcome::Stopped(Stopped {
                signal: stopped.signal,
                said: stopped.line(),
            }));
        }
    };
    summary::print_summary(&report, &Console { quiet: false });
    let write_errors = write_reports(&report, &options);
    if !write_errors.is_empty() {
        return Err(Failure(anyhow!("{}", write_errors.join("; "))));
    }
    outcome(&report)
}

/// Writes the JSON and JUnit reports `--json` and `--junit` ask for; what could not be
/// written, said.
fn write_reports(report: &RunReport, options: &RunOptions) -> Vec<String> {
    let mut write_errors = Vec::new();
    if let Some(path) = &options.json
        && let Err(e) = summary::write_json(report, path)
    {
        write_errors.push(format!("--json {}: {e}", path.display()));
    }
    if let Some(path) = &options.junit
        && let Err(e) = summary::write_junit(report, path)
    {
        write_errors.push(format!("--junit {}: {e}", path.display()));
    }
    write_errors
}

/// Everything a run needs, from the command line and the environment (see [`scenario`]).
fn options(args: &ScenarioArgs, name: &str) -> Result<RunOptions, Failure> {
    let scenario_file = file::resolve_scenario(&scenario::scenarios_dir(), name)?;
    Ok(RunOptions {
        scenario_file,
        backend: args.backend,
        snapshot_dir: std::env::var_os(scenario::ENV_SNAPSHOT_DIR).map(PathBuf::from),
        update_snapshots: args.update_snapshots,
        replay_file: std::env::var_os(scenario::ENV_REPLAY_FILE).map(PathBuf::from),
        record: args.record.clone(),
        json: args.json.clone(),
        junit: args.junit.clone(),
        keep_lab: args.keep_lab,
        step: args.step,
        quiet: false,
        limits: args.limits.limits(),
        out: args.out.clone(),
        console: console_options(args)?,
        html: args.html.clone(),
    })
}

/// `--console`: the console's options, titled after the scenario.
fn console_options(
    args: &ScenarioArgs,
) -> Result<Option<guardlab_guard_console::ConsoleOptions>, Failure> {
    if !args.console {
        if args.listen.listen_any || args.listen.console_token.is_some() {
            return Err(Failure(anyhow!(
                "--listen-any and --console-token go with --console"
            )));
        }
        return Ok(None);
    }
    Ok(Some(args.listen.options(format!(
        "guardlab — scenario {}",
        args.name.as_deref().unwrap_or("?")
    ))))
}

/// The command's outcome for how the run came out; an error names what broke.
fn outcome(report: &RunReport) -> CommandResult {
    match report.result {
        RunResult::Pass => Ok(Outcome::Clean),
        RunResult::Mismatch => Ok(Outcome::Findings),
        RunResult::Incomplete => Err(Failure(anyhow!(
            "scenario {}: {}: what its steps checked may miss what was lost, so the run is not a \
             pass (and a difference may come from the loss); run it again, on a less busy host",
            report.scenario,
            report.events.describe()
        ))),
        RunResult::Error => {
            let scenario = if report.scenario == "?" {
                String::new()
            } else {
                format!("scenario {}: ", report.scenario)
            };
            let what = report
                .error
                .clone()
                .or_else(|| {
                    report
                        .steps
                        .iter()
                        .find(|s| s.result == StepResult::Error)
                        .map(|s| format!("step {:?}: {}", s.name, s.messages.join("; ")))
                })
                .unwrap_or_else(|| "the lab could not run".into());
            Err(Failure(anyhow!("{scenario}{what}")))
        }
    }
}

/// `guardlab scenario --list`: every scenario file's name and description; a file that does
/// not parse is said, and makes the listing incomplete (exit 1).
fn list() -> CommandResult {
    let dir = scenario::scenarios_dir();
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
            Err(e) => problems.push(e),
        }
    }
    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    for (name, description, steps) in &rows {
        println!("{name:<width$}  {description} ({steps} steps)");
    }
    for p in &problems {
        report::problem(p);
    }
    Ok(if problems.is_empty() {
        Outcome::Clean
    } else {
        Outcome::Findings
    })
}
