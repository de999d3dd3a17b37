//! The commands that work on files with no lab: validate, fingerprint, policy create, merge,
//! deviations, investigate. Each reads its inputs, calls one engine operation, and writes YAML
//! (or JSON) to stdout; problems go to stderr with the file, line and field they are about.

use std::fs::File;
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use guardlab_engine::document::{self, Diagnostics, Document, Located, YamlLimits};
use guardlab_engine::limits::Limits;
use guardlab_engine::model::{Mode, Policy};
use guardlab_engine::window::{TimeWindow, rfc3339_ns};
use guardlab_engine::{deviation, fingerprint, merge, policy, trace};
use guardlab_events::Event;
use guardlab_events::ReadLimits;
use guardlab_input::MaxBytes;
use guardlab_input::file::Size;

use crate::cli::{ModeArg, WindowedEvents};
use crate::console;
use crate::report::{CommandResult, Failure, Outcome};

/// Read a file as text: no bigger than the YAML limit, UTF-8, with the file (and the line of
/// a bad byte) named in the error.
fn read_text(path: &Path) -> Result<String, Failure> {
    let max = MaxBytes::from_env_or(MaxBytes::YAML).map_err(|e| Failure(e.into()))?;
    guardlab_input::read_text(path, max).map_err(|e| Failure(e.into()))
}

/// Read a YAML file and refuse it, as bad input, when its nesting or its aliases go beyond
/// guardlab's limits (a syntax error is left to the document's own diagnostics).
fn read_yaml_text(path: &Path) -> Result<String, Failure> {
    let text = read_text(path)?;
    if let Err(e) = guardlab_input::scan_yaml(&text, &YamlLimits::default())
        && e.limit().is_some()
    {
        return Err(Failure(anyhow!(
            "{}:{}:{}: {e}",
            path.display(),
            e.line(),
            e.column()
        )));
    }
    Ok(text)
}

/// Read and validate every document of a YAML file (one, several separated by `---`, or
/// spyctl's `items:` list), each with where it starts.
pub fn load_yaml(path: &Path) -> Result<Vec<Located>, Failure> {
    let text = read_yaml_text(path)?;
    document::load_located(&path.display().to_string(), &text)
        .map_err(|d| Failure(Diagnostics(d).into()))
}

/// Where a document of a file starts, as messages show it: `policy.yaml:3:1` (and its place
/// in a list: `policy.yaml:3:3: items[1]`).
fn place(path: &Path, doc: &Located) -> String {
    let at = format!("{}:{}:{}", path.display(), doc.line, doc.column);
    if doc.field.is_empty() {
        at
    } else {
        format!("{at}: {}", doc.field)
    }
}

/// Read an NDJSON event stream (a sensor's, or a `scenario --record` recording, whose step
/// markers are skipped); errors name the file and line. A stream without events is bad input:
/// no command has anything to say about it.
pub fn load_events(path: &Path) -> Result<Vec<Event>, Failure> {
    let p = path.display();
    let max = MaxBytes::from_env_or(MaxBytes::EVENTS).map_err(|e| Failure(e.into()))?;
    let file = File::open(path).with_context(|| format!("cannot read {p}"))?;
    // A file known to be too big is refused before a byte of it is read.
    if let Ok(meta) = file.metadata()
        && meta.is_file()
        && meta.len() > max.0
    {
        return Err(Failure(
            guardlab_input::FileError::TooLarge {
                file: p.to_string(),
                size: Some(meta.len()),
                limit: max,
            }
            .into(),
        ));
    }
    let limits = ReadLimits {
        max_bytes: max.0,
        ..ReadLimits::default()
    };
    let mut events = guardlab_events::read_ndjson_with(BufReader::new(file), &limits).map_err(|e| {
        use guardlab_events::ReadError;
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
            ReadError::LineTooLong { line, limit } => anyhow!(
                "{p}:{line}: not an event: the line is longer than {} (no event is this long)",
                Size(limit as u64)
            ),
            ReadError::TooLarge { line, limit } => anyhow!(
                "{p}:{line}: the stream goes on past {}, the most guardlab reads from one file ({} raises the limit)",
                Size(limit),
                guardlab_input::ENV_MAX_INPUT_BYTES
            ),
            ReadError::NotUtf8 { line, column } => anyhow!(
                "{p}:{line}:{column}: not UTF-8 text; an event stream is UTF-8 JSON, one event per line"
            ),
            ReadError::Invalid {
                line,
                field,
                message,
            } => anyhow!("{p}:{line}: {field}: {message}"),
            ReadError::Io(source) => anyhow!("cannot read {p}: {source}"),
        })
    })?;
    if events.is_empty() {
        return Err(Failure(anyhow!(
            "{p}:1: no event in this file: expected NDJSON events, one per line, as the sensor or `guardlab scenario --record` writes them"
        )));
    }
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
        let at = place(path, &doc);
        match doc.document {
            Document::Policy(p) => policies.push((p, at)),
            other => {
                return Err(Failure(anyhow!(
                    "{at}: expected a SpyderbatPolicy, found a {}",
                    other.kind()
                )));
            }
        }
    }
    match policies.len() {
        1 => Ok(policies.pop().expect("one policy").0),
        0 => Err(Failure(anyhow!(
            "{}: holds no SpyderbatPolicy",
            path.display()
        ))),
        n => Err(Failure(anyhow!(
            "{}: the second of {n} policies; give one policy per file",
            policies[1].1
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

/// `guardlab validate [--strict] FILE...`: every problem of every file, then 0 (all valid)
/// or 1. With `strict`, what spyctl 0.24.2 would say of each file instead.
pub fn validate(files: &[PathBuf], strict: bool) -> CommandResult {
    let mut problems = 0usize;
    for path in files {
        let text = read_yaml_text(path)?;
        let name = path.display().to_string();
        let outcome = if strict {
            match document::spyctl::check_file(&name, &text) {
                diagnostics if diagnostics.is_empty() => {
                    Ok("spyctl 0.24.2 would accept it".to_owned())
                }
                diagnostics => Err(diagnostics),
            }
        } else {
            document::load_documents(&name, &text).map(|docs| {
                let kinds: Vec<&str> = docs.iter().map(Document::kind).collect();
                kinds.join(", ")
            })
        };
        match outcome {
            Ok(what) => println!("{name}: ok ({what})"),
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
    } else if strict {
        eprintln!("{problems} problem(s) found: spyctl 0.24.2 would refuse the file(s)");
        Ok(Outcome::Findings)
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
    print(&document::to_spyctl_yaml(&docs))?;
    Ok(Outcome::Clean)
}

/// `guardlab policy create --from FILE...`
pub fn policy_create(from: &[PathBuf], name: Option<&str>, mode: ModeArg) -> CommandResult {
    let mut inputs = Vec::new();
    for path in from {
        for doc in load_yaml(path)? {
            // A policy is made from what was observed; a policy or a deviation changes one.
            if matches!(doc.document, Document::Policy(_) | Document::Deviation(_)) {
                return Err(Failure(anyhow!(
                    "{}: a {}: `policy create` makes a policy from fingerprints or fingerprint groups (to change a policy, `guardlab merge --policy {} --with ...`)",
                    place(path, &doc),
                    doc.document.kind(),
                    path.display()
                )));
            }
            inputs.push(doc.document);
        }
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
            merger.merge(&doc.document).with_context(|| {
                format!(
                    "cannot merge {} into {}",
                    place(path, &doc),
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
        if !p.applied && p.status != policy::PolicyStatus::Disabled {
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
        console::warning(&flag.describe());
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
            // What spyctl writes, and reads: one document alone, several as an `items:` list.
            print(&document::to_spyctl_yaml(&docs))?;
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
