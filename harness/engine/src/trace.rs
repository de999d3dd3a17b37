//! Investigation: for each unique deviation, how the container got there.
//!
//! [`Investigator`] runs a [`DeviationMatcher`] and also keeps, per program image, the
//! details a person needs (pid, pid in the container, exe, arguments, user, start time, how
//! it ended) and every connection across the pod's boundary per process. [`Investigation`]
//! then gives, for each unique deviation (its first occurrence), the chain of program images
//! from the container's root process down to the deviant process, with the policy node each
//! maps to, and that process's connections; and for each flag raised, its severity, policy
//! and deviation. Render it with [`Investigation::render_text`] for a terminal or serialize
//! it (serde) as JSON.
//!
//! The chain is made of exec'd images as the policy sees them: a process that forked without
//! exec is transparent (its exec'd child follows its nearest exec'd ancestor), and a process
//! that exec'd twice shows as two steps with the same pid.

use std::fmt::Write as _;

use guardlab_events::{Event, EventBody, ExeStatus, ProcessKey, Protocol};
use rustc_hash::FxHashMap;
use serde::Serialize;

use crate::deviation::{Decision, DeviationMatcher, Finding, FlagClass, untrusted_exe_reason};
use crate::error::PolicyError;
use crate::merge::is_relevant_to_canonical;
use crate::model::{DeviationType, Policy, Severity, epoch_seconds};
use crate::tracker::{Direction, Step};

/// One program image on the way to a deviant process.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceProcess {
    pub pid: u32,
    pub ns_pid: u32,
    pub name: String,
    pub exe: String,
    /// How far `exe` is the executable's path, as the sensor said (absent when resolved).
    #[serde(skip_serializing_if = "ExeStatus::is_resolved")]
    pub exe_status: ExeStatus,
    pub args: Vec<String>,
    pub euser: String,
    /// Epoch seconds.
    pub start_time: f64,
    /// The same, as RFC 3339 UTC.
    pub started: String,
    /// The policy node it maps to, or the id it has in the deviation's fragment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Not allowed by the policy.
    pub deviant: bool,
    /// How it ended, when it did: `exit 0`, `signal 9`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceConnection {
    pub direction: Direction,
    pub protocol: Protocol,
    /// The remote address.
    pub ip: String,
    /// The DNS names earlier answers in the container gave for it: sorted, separated by
    /// `, ` (usually one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<String>,
    /// Destination port (egress) or local listening port (ingress).
    pub port: u16,
    /// The peer's own port.
    pub remote_port: u16,
    pub refused: bool,
    pub timestamp: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerRef {
    pub container_id: String,
    pub container_name: String,
    pub image: String,
    pub namespace: String,
    pub pod: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviationTrace {
    pub policy_name: String,
    pub policy_uid: String,
    pub deviation_uid: String,
    pub checksum: String,
    #[serde(rename = "type")]
    pub kind: DeviationType,
    pub count: u64,
    pub relevant: bool,
    /// Why it deviates, when no policy could allow it (see [`Finding::reason`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub container: ContainerRef,
    /// From the container's root process to the deviant process. Empty when the process was
    /// running before the sensor saw it start.
    pub chain: Vec<TraceProcess>,
    /// The deviant process, by key, even when the chain is empty.
    pub process: ProcessKey,
    /// The connection that deviated (ingress and egress deviations).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection: Option<TraceConnection>,
    /// Every connection of the deviant process across the pod's boundary.
    pub connections: Vec<TraceConnection>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FlagTrace {
    pub class: FlagClass,
    pub severity: Severity,
    pub policy_name: String,
    pub policy_uid: String,
    pub deviation_uid: String,
    pub checksum: String,
    #[serde(rename = "type")]
    pub kind: DeviationType,
    pub pid: u32,
    pub process: String,
    pub container_id: String,
    /// Why it deviates, when no policy could allow it (see [`Finding::reason`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub timestamp: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Investigation {
    pub deviations: Vec<DeviationTrace>,
    pub flags: Vec<FlagTrace>,
    pub decisions: Vec<Decision>,
}

struct ImageDetails {
    pid: u32,
    ns_pid: u32,
    args: Vec<String>,
}

/// A deviation matcher that keeps what an investigation shows.
pub struct Investigator {
    matcher: DeviationMatcher,
    details: Vec<ImageDetails>,
    connections: FxHashMap<ProcessKey, Vec<TraceConnection>>,
    ends: FxHashMap<ProcessKey, String>,
}

impl Investigator {
    pub fn new(policies: &[Policy]) -> Result<Self, PolicyError> {
        Ok(Investigator {
            matcher: DeviationMatcher::new(policies)?,
            details: Vec::new(),
            connections: FxHashMap::default(),
            ends: FxHashMap::default(),
        })
    }

    /// The matcher inside, e.g. to switch a policy's mode mid-stream.
    pub fn matcher_mut(&mut self) -> &mut DeviationMatcher {
        &mut self.matcher
    }

    pub fn observe(&mut self, event: &Event) -> Vec<Finding> {
        let (step, findings) = self.matcher.observe_step(event);
        match step {
            Step::Exec(image) => {
                if let EventBody::Exec(exec) = &event.body {
                    debug_assert_eq!(self.details.len(), image.index());
                    let mut args = exec.argv.clone();
                    if exec.argv_truncated {
                        args.push("...".into());
                    }
                    self.details.push(ImageDetails {
                        pid: exec.pid,
                        ns_pid: exec.ns_pid,
                        args,
                    });
                }
            }
            Step::Net(obs) => {
                let dns = self.matcher.tracker().dns_text(obs.dns);
                self.connections
                    .entry(obs.key)
                    .or_default()
                    .push(TraceConnection {
                        direction: obs.direction,
                        protocol: obs.protocol,
                        ip: obs.ip.to_string(),
                        dns,
                        port: obs.port,
                        remote_port: obs.remote_port,
                        refused: obs.refused,
                        timestamp: epoch_seconds(obs.ts),
                    });
            }
            Step::Exit {
                key, code, signal, ..
            } => {
                let ended = match (signal, code) {
                    (Some(s), _) => format!("signal {s}"),
                    (None, Some(c)) => format!("exit {c}"),
                    (None, None) => "exited".to_string(),
                };
                self.ends.insert(key, ended);
            }
            _ => {}
        }
        findings
    }

    pub fn finish(&self) -> Investigation {
        let t = self.matcher.tracker();
        let mut deviations = Vec::new();
        for p in &self.matcher.policies {
            for r in &p.records {
                let occ = &r.first;
                let mut chain = Vec::new();
                let mut image = occ.image;
                while let Some(id) = image {
                    let img = t.image(id);
                    let d = &self.details[id.index()];
                    let label = p.label(id);
                    chain.push(TraceProcess {
                        pid: d.pid,
                        ns_pid: d.ns_pid,
                        name: t.syms.get(img.name).to_string(),
                        exe: t.syms.get(img.exe).to_string(),
                        exe_status: img.exe_status,
                        args: d.args.clone(),
                        euser: t.syms.get(img.euser).to_string(),
                        start_time: epoch_seconds(img.ts),
                        started: rfc3339(img.ts),
                        deviant: label.as_ref().is_some_and(|(_, deviant)| *deviant),
                        node: label.map(|(id, _)| id),
                        ended: self.ends.get(&img.key).cloned(),
                    });
                    image = img.parent;
                }
                chain.reverse();
                let info = &t.container(occ.container).info;
                deviations.push(DeviationTrace {
                    policy_name: p.c.name.clone(),
                    policy_uid: p.c.uid.clone(),
                    deviation_uid: r.uid.clone(),
                    checksum: r.deviation.metadata.checksum.clone(),
                    kind: r.deviation.metadata.kind,
                    count: r.count,
                    relevant: is_relevant_to_canonical(&p.c.policy, &p.c.nets, &r.deviation),
                    reason: r.reason.clone(),
                    container: ContainerRef {
                        container_id: info.container_id.clone(),
                        container_name: info.container_name.clone(),
                        image: info.image.clone(),
                        namespace: info.namespace.clone(),
                        pod: info.pod_name.clone(),
                    },
                    chain,
                    process: occ.key,
                    connection: occ.connection.as_ref().map(|c| TraceConnection {
                        direction: c.direction,
                        protocol: c.protocol,
                        ip: c.ip.to_string(),
                        dns: c.dns.clone(),
                        port: c.port,
                        remote_port: c.remote_port,
                        refused: c.refused,
                        timestamp: epoch_seconds(occ.ts),
                    }),
                    connections: self.connections.get(&occ.key).cloned().unwrap_or_default(),
                });
            }
        }
        let flags = self
            .matcher
            .flags
            .iter()
            .map(|f| FlagTrace {
                class: f.class,
                severity: f.severity,
                policy_name: f.policy_name.clone(),
                policy_uid: f.policy_uid.clone(),
                deviation_uid: f.deviation_uid.clone(),
                checksum: f.checksum.clone(),
                kind: f.kind,
                pid: f.pid,
                process: f.process.clone(),
                container_id: f.container_id.clone(),
                reason: f.reason.clone(),
                timestamp: f.timestamp,
            })
            .collect();
        Investigation {
            deviations,
            flags,
            decisions: self.matcher.decisions.clone(),
        }
    }
}

/// Investigate a whole stream against policies, in one call.
pub fn investigate<'a>(
    policies: &[Policy],
    events: impl IntoIterator<Item = &'a Event>,
) -> Result<Investigation, PolicyError> {
    let mut inv = Investigator::new(policies)?;
    for event in events {
        inv.observe(event);
    }
    Ok(inv.finish())
}

/// Epoch nanoseconds as RFC 3339 UTC to the millisecond (no clock involved).
pub fn rfc3339(ns: u64) -> String {
    let secs = (ns / 1_000_000_000) as i64;
    let millis = (ns / 1_000_000) % 1000;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days to civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

fn connection_line(c: &TraceConnection) -> String {
    let remote = match &c.dns {
        Some(name) => format!("{name} ({})", c.ip),
        None => c.ip.clone(),
    };
    let dir = match c.direction {
        Direction::Egress => "egress to",
        Direction::Ingress => "ingress from",
    };
    let port = match c.direction {
        Direction::Egress => format!("{}/{}", c.protocol, c.port),
        Direction::Ingress => format!("{}/{} (peer port {})", c.protocol, c.port, c.remote_port),
    };
    let refused = if c.refused { " refused" } else { "" };
    format!("{dir} {remote} {port}{refused}")
}

impl Investigation {
    /// A text tree for terminals.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        if self.deviations.is_empty() {
            out.push_str("No deviations.\n");
        }
        for d in &self.deviations {
            let _ = writeln!(
                out,
                "{} deviation {} (policy {}, seen {}x{})",
                d.kind,
                d.deviation_uid,
                d.policy_name,
                d.count,
                if d.relevant {
                    ""
                } else {
                    ", no longer relevant"
                }
            );
            if let Some(reason) = &d.reason {
                let _ = writeln!(out, "  why: {reason}");
            }
            let c = &d.container;
            let _ = writeln!(
                out,
                "  container {} ({}) image {} pod {} namespace {}",
                or_dash(&c.container_name),
                or_dash(&c.container_id),
                or_dash(&c.image),
                or_dash(&c.pod),
                or_dash(&c.namespace)
            );
            if d.chain.is_empty() {
                let _ = writeln!(
                    out,
                    "  process {} (started before the sensor saw it)",
                    d.process.pid()
                );
            }
            let last = d.chain.len().saturating_sub(1);
            for (depth, p) in d.chain.iter().enumerate() {
                let indent = "   ".repeat(depth);
                let branch = if depth == 0 { "" } else { "└─ " };
                let node = match (&p.node, p.deviant) {
                    (Some(id), false) => format!(" [{id}]"),
                    (Some(id), true) => format!(" [NEW {id}]"),
                    (None, _) => String::new(),
                };
                let marker = if depth == last && d.kind == DeviationType::Process {
                    "  <== deviation"
                } else {
                    ""
                };
                let ended = p
                    .ended
                    .as_deref()
                    .map(|e| format!(", {e}"))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "  {indent}{branch}{} pid {} ({} in container) user {} at {}{ended}{node}{marker}",
                    p.name, p.pid, p.ns_pid, p.euser, p.started
                );
                // The command line, and the exe when the command line does not show it or it
                // is not a path the sensor could vouch for.
                let exe = match untrusted_exe_reason(p.exe_status) {
                    Some(why) => format!("  (exe {}: {why})", p.exe),
                    None if p.args.first() == Some(&p.exe) => String::new(),
                    None => format!("  (exe {})", p.exe),
                };
                let _ = writeln!(
                    out,
                    "  {indent}{}   $ {}{exe}",
                    if depth == 0 { "" } else { "   " },
                    quote_args(&p.args)
                );
            }
            let indent = "   ".repeat(d.chain.len());
            if let Some(conn) = &d.connection {
                let _ = writeln!(out, "  {indent}{}  <== deviation", connection_line(conn));
            }
            for conn in d
                .connections
                .iter()
                .filter(|c| Some(*c) != d.connection.as_ref())
            {
                let _ = writeln!(out, "  {indent}{}", connection_line(conn));
            }
            out.push('\n');
        }
        if !self.flags.is_empty() {
            out.push_str("Flags:\n");
            for f in &self.flags {
                let why = f
                    .reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "  {} {} flag: {} deviation {} of policy {} ({} pid {}){why}",
                    f.severity,
                    f.class,
                    f.kind,
                    f.deviation_uid,
                    f.policy_name,
                    or_dash(&f.process),
                    f.pid
                );
            }
        }
        if !self.decisions.is_empty() {
            out.push_str("Actions:\n");
            for d in &self.decisions {
                let _ = writeln!(out, "  {} (pid {})", d.message, d.target.pid);
            }
        }
        out
    }
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

fn quote_args(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if a.is_empty() || a.contains(char::is_whitespace) {
                format!("{a:?}")
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_without_a_clock() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(1_732_780_800_123_000_000),
            "2024-11-28T08:00:00.123Z"
        );
        assert_eq!(rfc3339(951_782_400_000_000_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(
            rfc3339(4_102_444_799_999_999_999),
            "2099-12-31T23:59:59.999Z"
        );
    }

    #[test]
    fn args_with_spaces_are_quoted() {
        assert_eq!(
            quote_args(&["sh".into(), "-c".into(), "ls -la".into()]),
            "sh -c \"ls -la\""
        );
    }
}
