//! `guardlab scenario ...`: list the scenarios, or run one, print its summary and write its
//! reports. How the run came out becomes the command's outcome: pass 0, a snapshot or check
//! failed 1, the lab could not run (or bad input) 2.

use std::path::PathBuf;

use anyhow::anyhow;

use guardlab_lab_api::Backend;

use crate::cli::ScenarioArgs;
use crate::console::Console;
use crate::report::{self, CommandResult, Failure, Outcome};
use crate::scenario::{self, RunOptions, RunReport, RunResult, StepResult, file, summary};

pub fn run(args: &ScenarioArgs) -> CommandResult {
    if args.list {
        return list();
    }
    let Some(name) = args.name.as_deref() else {
        return Err(Failure(anyhow!("name a scenario, or use --list")));
    };
    let options = options(args, name)?;
    if options.step && !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        return Err(Failure(anyhow!(
            "--step waits for Enter before each step, typed in a terminal, and standard input is not one: run it from a terminal, or leave --step out"
        )));
    }
    if options.backend == Backend::Local {
        crate::privilege::ensure_root("the local lab")?;
    }
    let report = scenario::run_blocking(&options);
    summary::print_summary(&report, &Console { quiet: false });
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
        return Err(Failure(anyhow!("{}", write_errors.join("; "))));
    }
    outcome(&report)
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
        out: args.out.clone(),
    })
}

/// The command's outcome for how the run came out; an error names what broke.
fn outcome(report: &RunReport) -> CommandResult {
    match report.result {
        RunResult::Pass => Ok(Outcome::Clean),
        RunResult::Mismatch => Ok(Outcome::Findings),
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
