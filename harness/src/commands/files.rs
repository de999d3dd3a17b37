//! The commands that work on files with no lab: validate, fingerprint, policy create, merge,
//! deviations, investigate. Each reads its inputs, calls one engine operation, and writes YAML
//! (or JSON) to stdout; problems go to stderr with the file, line and field they are about.

use std::fs::File;
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use guardlab_engine::document::{self, Diagnostics, Document};
use guardlab_engine::limits::Limits;
use guardlab_engine::model::{Mode, Policy};
use guardlab_engine::window::{TimeWindow, rfc3339_ns};
use guardlab_engine::{deviation, fingerprint, merge, policy, trace};
use guardlab_events::Event;

use crate::cli::{ModeArg, WindowedEvents};
use crate::console;
use crate::report::{CommandResult, Failure, Outcome};

/// Read a file as text, with the file named in the error.
fn read_text(path: &Path) -> Result<String, Failure> {
    std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {}", path.display()))
        .map_err(Failure)
}

/// Read and validate every document of a YAML file.
pub fn load_yaml(path: &Path) -> Result<Vec<Document>, Failure> {
    let text = read_text(path)?;
    document::load_documents(&path.display().to_string(), &text)
        .map_err(|d| Failure(Diagnostics(d).into()))
}

/// Read an NDJSON event stream; errors name the file and line.
pub fn load_events(path: &Path) -> Result<Vec<Event>, Failure> {
    let file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut events = guardlab_events::read_ndjson(BufReader::new(file)).map_err(|e| {
        use guardlab_events::ReadError;
        let p = path.display();
        Failure(match e {
            // Each line is its own JSON document, so serde's "line 1" says nothing: give the
            // stream's line, and the field when the line is JSON (then serde's column is
            // the end of the line), else the column where it breaks.
            ReadError::Json {
                line,
                field: Some(field),
                source,
            } => anyhow!(
                "{p}:{line}: not an event: {field}: {}",
                guardlab_events::json_message(&source)
            ),
            ReadError::Json {
                line,
                field: None,
                source,
            } => anyhow!(
                "{p}:{line}:{}: not an event: {}",
                source.column(),
                guardlab_events::json_message(&source)
            ),
            ReadError::Version { line, found } => anyhow!(
                "{p}:{line}: event format version {found}; this guardlab reads version {}",
                guardlab_events::FORMAT_VERSION
            ),
            ReadError::Io(source) => anyhow!("cannot read {p}: {source}"),
        })
    })?;
    // The engine reads a stream in time order (a fork before its exec). A sensor with several
    // CPUs can write slightly out of order; sorting here keeps the engine's input honest, and
    // saying so keeps the user's.
    let regressions = events.windows(2).filter(|w| w[1].ts < w[0].ts).count();
    if regressions > 0 {
        console::warning(&format!(
            "{}: {regressions} event(s) out of time order; sorted by timestamp",
            path.display()
        ));
        guardlab_engine::sort_events(&mut events);
    }
    Ok(events)
}

/// The one policy a file must hold.
fn load_policy(path: &Path) -> Result<Policy, Failure> {
    let mut policies = Vec::new();
    for doc in load_yaml(path)? {
        match doc {
            Document::Policy(p) => policies.push(p),
            other => {
                return Err(Failure(anyhow!(
                    "{}: expected a SpyderbatPolicy, found a {}",
                    path.display(),
                    other.kind()
                )));
            }
        }
    }
    match policies.len() {
        1 => Ok(policies.pop().expect("one policy")),
        0 => Err(Failure(anyhow!(
            "{}: holds no SpyderbatPolicy",
            path.display()
        ))),
        n => Err(Failure(anyhow!(
            "{}: holds {n} policies; give one policy per file",
            path.display()
        ))),
    }
}

fn print(text: &str) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .context("cannot write to stdout")?;
    if !text.ends_with('\n') {
        out.write_all(b"\n").context("cannot write to stdout")?;
    }
    Ok(())
}

fn print_json(value: &impl serde::Serialize) -> Result<(), Failure> {
    print(&serde_json::to_string_pretty(value).context("cannot write JSON")?)
}

/// `guardlab validate FILE...`: every problem of every file, then 0 (all valid) or 1.
pub fn validate(files: &[PathBuf]) -> CommandResult {
    let mut problems = 0usize;
    for path in files {
        let text = read_text(path)?;
        match document::load_documents(&path.display().to_string(), &text) {
            Ok(docs) => {
                let kinds: Vec<&str> = docs.iter().map(Document::kind).collect();
                println!("{}: ok ({})", path.display(), kinds.join(", "));
            }
            Err(diagnostics) => {
                problems += diagnostics.len();
                for d in diagnostics {
                    eprintln!("{d}");
                }
            }
        }
    }
    if problems == 0 {
        Ok(Outcome::Clean)
    } else {
        eprintln!("{problems} problem(s) found");
        Ok(Outcome::Findings)
    }
}

/// The window `--since`/`--until` give over a stream (sorted by time), its durations counted
/// from the first event.
fn event_window(input: &WindowedEvents, events: &[Event]) -> Result<TimeWindow, Failure> {
    if input.since.is_none() && input.until.is_none() {
        return Ok(TimeWindow::ALL);
    }
    let Some(first) = events.first() else {
        return Err(Failure(anyhow!(
            "{} holds no event: there is nothing for --since/--until to cut",
            input.path.display()
        )));
    };
    TimeWindow::resolve(input.since, input.until, first.ts).map_err(|e| {
        let show = |b: Option<guardlab_engine::window::TimeBound>| {
            b.map_or_else(String::new, |b| b.to_string())
        };
        Failure(anyhow!(
            "--since {} is not before --until {}: {e}",
            show(input.since),
            show(input.until)
        ))
    })
}

/// The span of a stream, for messages about windows.
fn span(events: &[Event]) -> String {
    match (events.first(), events.last()) {
        (Some(first), Some(last)) => {
            format!("from {} to {}", rfc3339_ns(first.ts), rfc3339_ns(last.ts))
        }
        _ => "nowhere (it holds no event)".into(),
    }
}

/// `guardlab fingerprint --events FILE [--since TIME] [--until TIME]`
pub fn fingerprint(input: &WindowedEvents, ungrouped: bool, limits: Limits) -> CommandResult {
    let path = input.path.display();
    let events = load_events(&input.path)?;
    let window = event_window(input, &events)?;
    let mut builder = fingerprint::FingerprintBuilder::with_window(window).with_limits(limits);
    builder.observe_all(&events);
    warn_about_stream(builder.stats());
    if !window.is_all() {
        let counts = builder.window_counts();
        console::note(&format!(
            "{path}: fingerprinted the {} event(s) {window}; the {} before and {} after only gave the process tree and DNS names",
            counts.within, counts.before, counts.after
        ));
    }
    let untrusted = builder.stats().untrusted_exes;
    if untrusted > 0 {
        console::note(&format!(
            "{path}: {untrusted} exec(s) ran an executable the sensor could not resolve to a path (fileless, truncated or unresolved); they are fingerprinted as reported, but no policy allows them (fail closed)"
        ));
    }
    let docs: Vec<Document> = if ungrouped {
        builder
            .finish()
            .into_iter()
            .map(Document::Fingerprint)
            .collect()
    } else {
        builder
            .finish_grouped()
            .into_iter()
            .map(Document::FingerprintGroup)
            .collect()
    };
    if docs.is_empty() && !window.is_all() {
        return Err(Failure(anyhow!(
            "{path}: nothing to fingerprint {window}: no program ran and no connection was made in a known container then (the events run {})",
            span(&events)
        )));
    }
    if docs.is_empty() {
        return Err(Failure(anyhow!(
            "no container in the event stream: it has no `container` event, so no process can be attributed"
        )));
    }
    print(&document::to_yaml_documents(&docs))?;
    Ok(Outcome::Clean)
}

/// `guardlab policy create --from FILE...`
pub fn policy_create(from: &[PathBuf], name: Option<&str>, mode: ModeArg) -> CommandResult {
    let mut inputs = Vec::new();
    for path in from {
        inputs.extend(load_yaml(path)?);
    }
    let mode = match mode {
        ModeArg::Audit => Mode::Audit,
        ModeArg::Enforce => Mode::Enforce,
    };
    let policy = policy::create_policy_from(&inputs, name, mode).map_err(|e| Failure(e.into()))?;
    print(&document::to_yaml(&Document::Policy(policy)))?;
    Ok(Outcome::Clean)
}

/// `guardlab merge --policy FILE --with FILE...`
pub fn merge(policy_path: &Path, with: &[PathBuf]) -> CommandResult {
    // One merger for all: a deviation hung under an earlier one's node finds it.
    let mut merger = merge::Merger::new(load_policy(policy_path)?);
    for path in with {
        for doc in load_yaml(path)? {
            merger.merge(&doc).with_context(|| {
                format!(
                    "cannot merge {} into {}",
                    path.display(),
                    policy_path.display()
                )
            })?;
        }
    }
    print(&document::to_yaml(&Document::Policy(merger.finish())))?;
    Ok(Outcome::Clean)
}

/// An enabled policy that selects no container of the stream cannot say whether the stream
/// deviates: "0 deviations" would be a false all-clear, so it is bad input (exit 2).
fn require_applied(
    report: &deviation::DeviationReport,
    policy_path: &Path,
    events_path: &Path,
) -> Result<(), Failure> {
    for p in &report.policies {
        if !p.applied && p.status != policy::DISABLED {
            return Err(Failure(anyhow!(
                "{}: policy `{}` is {}: its selectors match no container in {}",
                policy_path.display(),
                p.name,
                p.status,
                events_path.display()
            )));
        }
    }
    Ok(())
}

/// Say on stderr when the event stream itself was incomplete: a clean result from a lossy
/// stream proves less than it seems to.
fn warn_about_stream(stats: &guardlab_engine::fingerprint::Stats) {
    if stats.lost_events > 0 {
        console::warning(&format!(
            "the sensor lost {} event(s) in this stream",
            stats.lost_events
        ));
    }
    if stats.unknown_container_events > 0 {
        console::warning(&format!(
            "{} event(s) belong to no known container (no `container` event for their cgroup) and were ignored",
            stats.unknown_container_events
        ));
    }
    for flag in &stats.limits {
        console::warning(&format!(
            "{} ({} time(s); --limit {}=N changes it)",
            flag.message, flag.count, flag.limit
        ));
    }
}

/// `guardlab deviations --policy FILE --events FILE`: 1 when there are deviations.
pub fn deviations(
    policy_path: &Path,
    events_path: &Path,
    json: bool,
    limits: Limits,
) -> CommandResult {
    let policy = load_policy(policy_path)?;
    let events = load_events(events_path)?;
    let mut matcher =
        deviation::DeviationMatcher::with_limits(std::slice::from_ref(&policy), limits)
            .map_err(|e| Failure(e.into()))?;
    for event in &events {
        matcher.observe(event);
    }
    let report = matcher.report();
    warn_about_stream(&report.stats);
    require_applied(&report, policy_path, events_path)?;
    if json {
        print_json(&report)?;
    } else {
        let docs: Vec<Document> = report
            .deviations()
            .cloned()
            .map(Document::Deviation)
            .collect();
        if !docs.is_empty() {
            print(&document::to_yaml_documents(&docs))?;
        }
        for line in &report.audit_log {
            eprintln!("{line}");
        }
        // What no merge can allow, said once per deviation (the YAML has no word for it).
        for d in report.policies.iter().flat_map(|p| &p.deviations) {
            if let Some(reason) = &d.reason {
                eprintln!("{}: {reason}", d.uid);
            }
        }
        eprintln!(
            "{}: {} ({} unique / {} total deviations)",
            policy.metadata.name,
            policy::status(&policy),
            report.unique(),
            report.total()
        );
    }
    Ok(if report.unique() == 0 {
        Outcome::Clean
    } else {
        Outcome::Findings
    })
}

/// `guardlab investigate --policy FILE --events FILE`: 1 when there are deviations.
pub fn investigate(
    policy_path: &Path,
    events_path: &Path,
    json: bool,
    limits: Limits,
) -> CommandResult {
    let policy = load_policy(policy_path)?;
    let events = load_events(events_path)?;
    let mut investigator = trace::Investigator::with_limits(std::slice::from_ref(&policy), limits)
        .map_err(|e| Failure(e.into()))?;
    for event in &events {
        investigator.observe(event);
    }
    let report = investigator.matcher_mut().report();
    warn_about_stream(&report.stats);
    require_applied(&report, policy_path, events_path)?;
    let investigation = investigator.finish();
    if json {
        print_json(&investigation)?;
    } else {
        print(&investigation.render_text())?;
    }
    Ok(if investigation.deviations.is_empty() {
        Outcome::Clean
    } else {
        Outcome::Findings
    })
}
