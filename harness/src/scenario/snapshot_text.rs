//! The texts of the snapshot files a step checks, beyond the engine's own documents: what an
//! `expect_deviations` step found since the previous one, and the investigation as the trace
//! snapshot holds it; and the words (a deviation's type, a severity, a flag in one line) that
//! these snapshots and the runner's messages spell the same way. Redaction is the snapshot
//! module's ([`super::snapshot::Redactor`]).

use guardlab_engine::deviation::{DeviationRecord, DeviationReport, Flag, FlagClass};
use guardlab_engine::model::{DeviationType, Severity};
use guardlab_engine::trace::Investigation;
use serde::Serialize;

/// Where the previous `expect_deviations` step left off in the engine's report.
#[derive(Debug, Default)]
pub struct SeenSoFar {
    deviations: usize,
    flags: usize,
    decisions: usize,
    audit: usize,
}

/// The snapshot of an `expect_deviations` step: every policy's counts, and what is new since
/// the previous such step.
#[derive(Serialize)]
pub struct DeviationsSnapshot<'r> {
    policies: Vec<PolicyCounts<'r>>,
    new_deviations: Vec<&'r DeviationRecord>,
    red_flags: Vec<String>,
    actions: Vec<&'r str>,
    audit_log: &'r [String],
    /// The new deviations the kernel stopped, and how (`dev:... killed at exec`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    prevented: Vec<String>,
}

#[derive(Serialize)]
struct PolicyCounts<'r> {
    policy: &'r str,
    status: guardlab_engine::policy::PolicyStatus,
    unique: usize,
    total: u64,
}

impl<'r> DeviationsSnapshot<'r> {
    /// What `report` holds that is new since `seen`; `seen` then moves to its end.
    pub fn since(report: &'r DeviationReport, seen: &mut SeenSoFar) -> Self {
        let all: Vec<&DeviationRecord> = report
            .policies
            .iter()
            .flat_map(|p| p.deviations.iter())
            .collect();
        let snapshot = DeviationsSnapshot {
            policies: report
                .policies
                .iter()
                .map(|p| PolicyCounts {
                    policy: &p.name,
                    status: p.status,
                    unique: p.unique,
                    total: p.total,
                })
                .collect(),
            new_deviations: all.iter().skip(seen.deviations).copied().collect(),
            red_flags: report.flags[seen.flags.min(report.flags.len())..]
                .iter()
                .map(flag_line)
                .collect(),
            actions: report.decisions[seen.decisions.min(report.decisions.len())..]
                .iter()
                .map(|d| d.message.as_str())
                .collect(),
            audit_log: &report.audit_log[seen.audit.min(report.audit_log.len())..],
            prevented: Vec::new(),
        };
        *seen = SeenSoFar {
            deviations: all.len(),
            flags: report.flags.len(),
            decisions: report.decisions.len(),
            audit: report.audit_log.len(),
        };
        snapshot
    }

    /// Marks the new deviations the kernel stopped (`how` says how, for a deviation uid).
    pub fn with_prevented(mut self, how: impl Fn(&str) -> Option<&'static str>) -> Self {
        self.prevented = self
            .new_deviations
            .iter()
            .filter_map(|d| how(&d.uid).map(|h| format!("{}: {h}", d.uid)))
            .collect();
        self
    }

    /// How many deviations are new.
    pub fn new_deviations(&self) -> usize {
        self.new_deviations.len()
    }
}

/// A flag in one line: `high red flag: process deviation dev:... by id (/usr/bin/id) in minimal-notebook`.
pub fn flag_line(f: &Flag) -> String {
    format!(
        "{} {} flag: {} deviation {} by {} ({}) in {}",
        severity_word(f.severity),
        match f.class {
            FlagClass::Red => "red",
            FlagClass::Ops => "ops",
        },
        kind_word(f.kind),
        f.deviation_uid,
        if f.process.is_empty() {
            "?"
        } else {
            &f.process
        },
        f.exe,
        f.container_name
    )
}

/// A severity as messages and snapshots say it.
pub fn severity_word(s: Severity) -> &'static str {
    use Severity::*;
    match s {
        Critical => "critical",
        High => "high",
        Medium => "medium",
        Low => "low",
        Info => "info",
    }
}

/// The investigation as the trace snapshot holds it: per deviation, the chain from the
/// container's root process as one line per program (`name [policy node] user: command
/// line`), and the connections; then the flags and actions. Pids and times are left out:
/// they differ on every run.
pub fn trace_snapshot(inv: &Investigation) -> TraceSnapshot {
    use guardlab_engine::fingerprint::Direction;
    let connection = |c: &guardlab_engine::trace::TraceConnection| {
        let remote = match &c.dns {
            Some(name) => format!("{name} ({})", c.ip),
            None => c.ip.clone(),
        };
        let refused = if c.refused { " refused" } else { "" };
        match c.direction {
            Direction::Egress => format!("egress {} {remote}:{}{refused}", c.protocol, c.port),
            Direction::Ingress => format!(
                "ingress {} from {remote} to port {}{refused}",
                c.protocol, c.port
            ),
        }
    };
    TraceSnapshot {
        deviations: inv
            .deviations
            .iter()
            .map(|d| TracedDeviation {
                deviation: d.deviation_uid.clone(),
                kind: kind_word(d.kind),
                policy: d.policy_name.clone(),
                count: d.count,
                container: format!(
                    "{} ({}) pod {}/{}",
                    d.container.container_name,
                    d.container.image,
                    d.container.namespace,
                    d.container.pod
                ),
                trace: d
                    .chain
                    .iter()
                    .map(|p| {
                        let node = match (&p.node, p.deviant) {
                            (Some(id), false) => format!(" [{id}]"),
                            (Some(id), true) => format!(" [NEW {id}]"),
                            (None, _) => String::new(),
                        };
                        let ended = p
                            .ended
                            .as_deref()
                            .map(|e| format!(", {e}"))
                            .unwrap_or_default();
                        let exe = if p.args.first() == Some(&p.exe) {
                            String::new()
                        } else {
                            format!(" (exe {})", p.exe)
                        };
                        format!(
                            "{}{node} {}{ended}: {}{exe}",
                            p.name,
                            p.euser,
                            p.args.join(" ")
                        )
                    })
                    .collect(),
                connection: d.connection.as_ref().map(connection),
                connections: {
                    // Each distinct connection once: retries and reconnects differ only in time.
                    let mut lines: Vec<String> = Vec::new();
                    for line in d.connections.iter().map(connection) {
                        if !lines.contains(&line) {
                            lines.push(line);
                        }
                    }
                    lines
                },
                prevented: d.prevented.then_some(match d.kind {
                    DeviationType::Process => "killed at exec",
                    _ => "connect refused",
                }),
            })
            .collect(),
        red_flags: inv
            .flags
            .iter()
            .map(|f| {
                format!(
                    "{} {} flag: {} deviation {} by {}",
                    severity_word(f.severity),
                    match f.class {
                        FlagClass::Red => "red",
                        FlagClass::Ops => "ops",
                    },
                    kind_word(f.kind),
                    f.deviation_uid,
                    f.process
                )
            })
            .collect(),
        actions: inv.decisions.iter().map(|d| d.message.clone()).collect(),
    }
}

#[derive(Serialize)]
pub struct TraceSnapshot {
    deviations: Vec<TracedDeviation>,
    red_flags: Vec<String>,
    actions: Vec<String>,
}

#[derive(Serialize)]
struct TracedDeviation {
    deviation: String,
    #[serde(rename = "type")]
    kind: &'static str,
    policy: String,
    count: u64,
    container: String,
    trace: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    connection: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    connections: Vec<String>,
    /// The kernel stopped it (`killed at exec`, `connect refused`); absent when it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    prevented: Option<&'static str>,
}

/// A deviation's type as messages and snapshots say it.
pub fn kind_word(kind: DeviationType) -> &'static str {
    match kind {
        DeviationType::Process => "process",
        DeviationType::Ingress => "ingress",
        DeviationType::Egress => "egress",
    }
}
