//! The end of a run: the summary table, the deviations, red flags and the trace for a person;
//! `--json` and `--junit` for CI.

use std::path::Path;
use std::time::Duration;

use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};

use crate::console::{Console, seconds};

use super::run_report::{RunReport, RunResult, StepResult};
use super::snapshot_text::kind_word;

/// Print the summary table and what the engine found.
pub fn print_summary(report: &RunReport, out: &Console) {
    out.line("");
    out.line(format!(
        "Scenario {} on the {} backend",
        report.scenario, report.backend
    ));
    let width = report
        .steps
        .iter()
        .map(|s| s.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    out.line(format!(
        "  {:>3}  {:<width$}  {:<18}  {:<9}  {:>8}",
        "#", "step", "action", "result", "time"
    ));
    for s in &report.steps {
        out.line(format!(
            "  {:>3}  {:<width$}  {:<18}  {:<9}  {:>8}",
            s.index + 1,
            s.name,
            s.action,
            s.result.word(),
            seconds(Duration::from_millis(s.duration_ms))
        ));
    }
    if let Some(d) = &report.deviations {
        out.line("");
        for p in &d.policies {
            out.line(format!(
                "Policy {} ({}): {}/{} deviations (unique/total)",
                p.name, p.status, p.unique, p.total
            ));
        }
        let red: Vec<_> = d
            .flags
            .iter()
            .filter(|f| matches!(f.class, guardlab_engine::deviation::FlagClass::Red))
            .collect();
        out.line(format!("Red flags: {}", red.len()));
        for f in red {
            out.line(format!(
                "  {:?} {} deviation {} by {} ({})",
                f.severity,
                kind_word(f.kind),
                f.deviation_uid,
                if f.process.is_empty() {
                    "?"
                } else {
                    &f.process
                },
                f.exe
            ));
        }
        if !d.decisions.is_empty() {
            out.line("Actions:");
            for a in &d.decisions {
                out.line(format!("  {}", a.message));
            }
        }
        // A limit met is the engine guarding on with less detail: said here, not only in --json.
        if !d.stats.limits.is_empty() {
            out.line("Engine limits met:");
            for flag in &d.stats.limits {
                out.line(format!("  {}", flag.describe()));
            }
        }
    }
    if let Some(inv) = &report.investigation
        && !inv.deviations.is_empty()
    {
        out.line("");
        out.line(
            "Investigation (one tree per container, from its root process to every deviation):",
        );
        for line in inv.render_text().lines() {
            out.line(format!("  {line}"));
        }
    }
    out.line("");
    out.line(format!("Events: {}", report.events.describe()));
    if let Some(lab) = &report.events.lab {
        out.line(format!("Sensor: {}", lab.describe()));
    }
    for line in report.latency.iter().flat_map(|l| l.describe()) {
        out.line(line);
    }
    if let Some(e) = &report.error {
        out.line(format!("Error: {e}"));
    }
    let failed: Vec<String> = report
        .steps
        .iter()
        .filter(|s| {
            !matches!(
                s.result,
                StepResult::Passed
                    | StepResult::Updated
                    | StepResult::Skipped
                    | StepResult::NotApplicable
            )
        })
        .map(|s| format!("{} ({})", s.name, s.result.word()))
        .collect();
    let ran = report
        .steps
        .iter()
        .filter(|s| !matches!(s.result, StepResult::Skipped | StepResult::NotApplicable))
        .count();
    let not_applicable = report
        .steps
        .iter()
        .filter(|s| s.result == StepResult::NotApplicable)
        .count();
    let not_applicable = match not_applicable {
        0 => String::new(),
        n => format!(" ({n} not applicable on this backend)"),
    };
    let took = seconds(Duration::from_millis(report.duration_ms));
    match report.result {
        RunResult::Pass if report.stopped.is_some() => out.line(format!(
            "STOPPED before step {:?} (as asked): {ran} of {} steps ran and passed{not_applicable}, in {took}",
            report.stopped.as_deref().unwrap_or("?"),
            report.steps.len(),
        )),
        RunResult::Pass => out.line(format!(
            "PASS: {} steps{not_applicable} in {took}",
            report.steps.len(),
        )),
        RunResult::Mismatch => out.line(format!("FAIL: {}", failed.join(", "))),
        RunResult::Incomplete => out.line(format!(
            "INCOMPLETE: at least {} events were lost, so the checks saw a stream with holes: \
             not a pass{}",
            report.events.lost_total(),
            if failed.is_empty() {
                String::new()
            } else {
                format!(" (and {})", failed.join(", "))
            }
        )),
        RunResult::Error => out.line(format!(
            "ERROR: the lab could not run{}",
            if failed.is_empty() {
                String::new()
            } else {
                format!(": {}", failed.join(", "))
            }
        )),
    }
}

/// Write the JSON report.
pub fn write_json(report: &RunReport, path: &Path) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(report).map_err(std::io::Error::other)?;
    std::fs::write(path, text + "\n")
}

/// The JUnit report: one test suite for the scenario, one test case per step.
pub fn junit(report: &RunReport) -> Report {
    let mut suite = TestSuite::new(format!("scenario {} ({})", report.scenario, report.backend));
    for s in &report.steps {
        let mut status = match s.result {
            StepResult::Passed | StepResult::Updated => TestCaseStatus::success(),
            StepResult::Skipped | StepResult::NotApplicable => TestCaseStatus::skipped(),
            StepResult::Mismatch | StepResult::Failed => {
                TestCaseStatus::non_success(NonSuccessKind::Failure)
            }
            StepResult::Error => TestCaseStatus::non_success(NonSuccessKind::Error),
        };
        if !matches!(s.result, StepResult::Passed | StepResult::Updated) {
            let mut message = s.messages.join("; ");
            if s.result == StepResult::Mismatch {
                message = format!(
                    "snapshot mismatch in step {:?} ({})",
                    s.name,
                    s.snapshot.as_deref().unwrap_or("?")
                );
            }
            if !message.is_empty() {
                status.set_message(message);
            }
            let mut description = s.messages.join("\n");
            if let Some(d) = &s.diff {
                description.push('\n');
                description.push_str(d);
            }
            if !description.trim().is_empty() {
                status.set_description(description);
            }
        }
        let mut case = TestCase::new(format!("{:02} {}", s.index + 1, s.name), status);
        case.set_classname(format!("scenario.{}", report.scenario));
        case.set_time(Duration::from_millis(s.duration_ms));
        suite.add_test_case(case);
    }
    if let Some(e) = &report.error {
        let mut status = TestCaseStatus::non_success(NonSuccessKind::Error);
        status.set_message(e.clone());
        let mut case = TestCase::new("lab", status);
        case.set_classname(format!("scenario.{}", report.scenario));
        suite.add_test_case(case);
    }
    if report.events.lost_total() > 0 {
        let mut status = TestCaseStatus::non_success(NonSuccessKind::Error);
        status.set_message(format!("events lost: {}", report.events.describe()));
        let mut case = TestCase::new("events", status);
        case.set_classname(format!("scenario.{}", report.scenario));
        suite.add_test_case(case);
    }
    suite.set_time(Duration::from_millis(report.duration_ms));
    let mut junit = Report::new("guardlab");
    junit.set_time(Duration::from_millis(report.duration_ms));
    junit.add_test_suite(suite);
    junit
}

pub fn write_junit(report: &RunReport, path: &Path) -> std::io::Result<()> {
    let text = junit(report).to_string().map_err(std::io::Error::other)?;
    std::fs::write(path, text)
}
