//! Investigation: for each unique deviation, how the container got there.
//!
//! [`Investigator`] runs a [`DeviationMatcher`] and also keeps, per program image, the
//! details a person needs (pid, pid in the container, exe, arguments, user, start time, how
//! it ended) and every connection across the pod's boundary per process, its name lookups
//! too (UDP to port 53: never a deviation, but what the process did). [`Investigation`]
//! then gives, for each unique deviation (its first occurrence), the chain of program images
//! from the container's root process down to the deviant process, with the policy node each
//! maps to, and that process's connections; and for each flag raised, its severity, policy
//! and deviation. [`Investigation::tree`] merges the chains into one tree per container
//! ([`tree`]); render that with [`Investigation::render_text`] for a terminal, or serialize
//! either (serde) as JSON.
//!
//! The chain is made of execs as the policy sees them: a process that forked without exec is
//! transparent (its exec'd child follows its nearest exec'd ancestor), and a process that
//! exec'd twice shows as two steps with the same pid. It is copied when the deviation is first
//! found (the investigator follows only running processes and their ancestry, so what it keeps
//! does not grow with the stream), then kept up to date with how its processes end and the
//! deviant process's connections; the policy node each maps to is the one at the end. A chain
//! deeper than `trace-processes` shows its first processes from the root and the deviant one
//! (`omitted` says how many between); see [`crate::limits`].

mod lineage;
mod render;
pub mod tree;

pub use tree::{
    ContainerTree, DeviationMark, InvestigationTree, Relation, TreeConnection, TreeItem, TreeNode,
    TreeProcess, UnrootedProcess,
};

use guardlab_events::{Event, EventBody, ExeStatus, ProcessExec, ProcessKey, Protocol};
use rustc_hash::FxHashMap;
use serde::Serialize;

use crate::deviation::{Decision, DeviationMatcher, Finding, FlagClass, Relevance};
use crate::error::PolicyError;
use crate::limits::{Limits, StateSize};
use crate::model::{DeviationType, Policy, Severity, epoch_seconds};
/// Which way a connection went (of [`TraceConnection`]), for code outside the engine.
pub use crate::tracker::Direction;
use crate::tracker::{ContainerId, ExecObs, ImageId, NetObs, Step};
use lineage::Lineage;

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
    /// running before the sensor saw it start. At most `trace-processes` long (see
    /// [`crate::limits`]): the first processes from the root, then the deviant one.
    pub chain: Vec<TraceProcess>,
    /// Processes of the ancestry the chain leaves out, between its last two.
    #[serde(skip_serializing_if = "is_zero")]
    pub omitted: u32,
    /// The deviant process, by key, even when the chain is empty.
    pub process: ProcessKey,
    /// The connection that deviated (ingress and egress deviations).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection: Option<TraceConnection>,
    /// The connections of the deviant process across the pod's boundary,
    /// each remote and port once, at most `trace-connections`.
    pub connections: Vec<TraceConnection>,
    /// The kernel stopped it when it was first found: the exec was killed before its first
    /// instruction, or the connect refused (see [`Finding::prevented`]).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub prevented: bool,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
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

/// A trace, copied from what the investigator followed when its deviation was first found,
/// and kept up to date with the ends and connections of the processes it shows.
struct Capture {
    container: ContainerId,
    process: ProcessKey,
    chain: Vec<CapturedProcess>,
    omitted: u32,
    connection: Option<TraceConnection>,
    connections: Vec<TraceConnection>,
    /// The deviant process's node id in the deviation, for an exec a limit kept from having a
    /// program node of its own (see [`crate::limits`]).
    unplaced_label: Option<String>,
    /// The kernel stopped it (see [`Finding::prevented`]).
    prevented: bool,
}

struct CapturedProcess {
    key: ProcessKey,
    pid: u32,
    ns_pid: u32,
    name: String,
    exe: String,
    exe_status: ExeStatus,
    args: Vec<String>,
    euser: String,
    ts: u64,
    /// Its program node, for the label at the end; none when it had none of its own.
    image: Option<ImageId>,
    ended: Option<String>,
}

/// Bytes charged to a pod for a trace, beyond what it copies.
const CAPTURE_BYTES: u64 = 256;
/// And for an exec followed, and a connection kept.
const ENTRY_BYTES: u64 = 160;
const CONNECTION_BYTES: u64 = 96;

/// A trace's key: its policy (by index) and its deviation's uid.
type TraceKey = (usize, String);

/// A deviation matcher that keeps what an investigation shows.
pub struct Investigator {
    matcher: DeviationMatcher,
    lineage: Lineage,
    captures: FxHashMap<TraceKey, Capture>,
    /// The traces that show a running process, and its place in each chain: how it ends is
    /// written there.
    watched_ends: FxHashMap<ProcessKey, Vec<(TraceKey, usize)>>,
    /// The traces whose connections are those of a running process, while they have room.
    watched_connections: FxHashMap<ProcessKey, Vec<TraceKey>>,
}

impl Investigator {
    pub fn new(policies: &[Policy]) -> Result<Self, PolicyError> {
        Self::with_limits(policies, Limits::default())
    }

    /// [`Self::new`] within other limits than the defaults (see [`crate::limits`]).
    pub fn with_limits(policies: &[Policy], limits: Limits) -> Result<Self, PolicyError> {
        Ok(Investigator {
            matcher: DeviationMatcher::with_limits(policies, limits)?,
            lineage: Lineage::default(),
            captures: FxHashMap::default(),
            watched_ends: FxHashMap::default(),
            watched_connections: FxHashMap::default(),
        })
    }

    /// The matcher inside, e.g. to switch a policy's mode mid-stream.
    pub fn matcher_mut(&mut self) -> &mut DeviationMatcher {
        &mut self.matcher
    }

    /// How much state the investigator keeps, its matcher's included (see [`StateSize`]).
    pub fn state_size(&self) -> StateSize {
        let copied: usize = self
            .captures
            .values()
            .map(|c| {
                c.chain
                    .iter()
                    .map(|p| {
                        size_of::<CapturedProcess>()
                            + p.name.len()
                            + p.exe.len()
                            + p.euser.len()
                            + p.args.iter().map(String::len).sum::<usize>()
                    })
                    .sum::<usize>()
                    + c.connections.len() * size_of::<TraceConnection>()
            })
            .sum();
        let watching: usize = self.watched_ends.values().map(Vec::len).sum::<usize>()
            + self
                .watched_connections
                .values()
                .map(Vec::len)
                .sum::<usize>();
        self.matcher.state_size()
            + self.lineage.size()
            + StateSize::table(self.captures.len(), size_of::<Capture>() + 64, copied)
            + StateSize::table(watching, 48, 0)
    }

    pub fn observe(&mut self, event: &Event) -> Vec<Finding> {
        let (step, findings) = self.matcher.observe_step(event);
        match &step {
            Step::Exec(obs) => {
                if let EventBody::Exec(exec) = &event.body {
                    self.follow_exec(obs, exec);
                }
            }
            Step::Fork { key, parent } => {
                let container = self.matcher.tracker().container_of(event);
                if let Some(c) = container
                    && self.matcher.tracker().follows(key, c)
                {
                    let freed = self.lineage.fork(*key, *parent, c);
                    self.credit(freed);
                }
            }
            Step::Net(obs) | Step::Lookup(obs) => self.connection(obs),
            Step::Exit { key, code, signal } => {
                let ended = match (signal, code) {
                    (Some(s), _) => format!("signal {s}"),
                    (None, Some(c)) => format!("exit {c}"),
                    (None, None) => "exited".to_string(),
                };
                // Only the process of the container the exit is tagged with (see the tracker).
                let Some(container) = self.matcher.tracker().container_of(event) else {
                    return findings;
                };
                if self.lineage.running(key, container).is_some() {
                    for (trace, i) in self.watched_ends.remove(key).unwrap_or_default() {
                        if let Some(c) = self.captures.get_mut(&trace) {
                            c.chain[i].ended = Some(ended.clone());
                        }
                    }
                    self.watched_connections.remove(key);
                }
                let freed = self.lineage.exit(key, container);
                self.credit(freed);
            }
            _ => {}
        }
        for f in findings.iter().filter(|f| f.new) {
            self.capture(f, &step);
        }
        findings
    }

    /// Give back to their pods the bytes of entries no longer kept.
    fn credit(&mut self, freed: Vec<lineage::Entry>) {
        let t = self.matcher.tracker_mut();
        for e in freed {
            t.credit(e.container, e.bytes);
        }
    }

    /// An exec the tracker followed: its entry, under the exec its process or its parent ran.
    fn follow_exec(&mut self, obs: &ExecObs, exec: &ProcessExec) {
        let parent = self.lineage.running(&exec.key, obs.container).or_else(|| {
            exec.parent
                .and_then(|p| self.lineage.running(&p, obs.container))
        });
        let limit = self.matcher.limits().trace_args_bytes as usize;
        let args = cut_args(&exec.argv, exec.argv_truncated, limit);
        let bytes = ENTRY_BYTES
            + (obs.name.len() + obs.exe.len() + args.iter().map(String::len).sum::<usize>()) as u64;
        let levels = self.matcher.limits().trace_processes;
        let t = self.matcher.tracker_mut();
        if !t.follows(&exec.key, obs.container) || !t.charge(obs.container, bytes, obs.ts) {
            // Not followed (past `live-processes` or `state-mb`): the trace of what it does
            // shows what came before it.
            return;
        }
        let euser = t.syms.get(obs.euser).into();
        let freed = self.lineage.exec(
            lineage::Entry {
                key: exec.key,
                container: obs.container,
                pid: exec.pid,
                ns_pid: exec.ns_pid,
                name: obs.name.into(),
                exe: obs.exe.into(),
                exe_status: obs.exe_status,
                euser,
                args,
                ts: obs.ts,
                image: obs.image,
                placed: obs.placed,
                parent,
                depth: 0,
                level: 0,
                refs: 0,
                bytes,
            },
            levels,
        );
        self.credit(freed);
    }

    /// A connection (or a lookup): kept with its process, and with the traces that show it.
    fn connection(&mut self, obs: &NetObs) {
        let t = self.matcher.tracker();
        let conn = TraceConnection {
            direction: obs.direction,
            protocol: obs.protocol,
            ip: obs.ip.to_string(),
            dns: t.dns_text(obs.dns),
            port: obs.port,
            remote_port: obs.remote_port,
            refused: obs.refused,
            timestamp: epoch_seconds(obs.ts),
        };
        let max = self.matcher.limits().trace_connections as usize;
        let same = |c: &TraceConnection| {
            (c.direction, c.protocol, &c.ip, c.port)
                == (conn.direction, conn.protocol, &conn.ip, conn.port)
        };
        let room = self
            .lineage
            .process_mut(&obs.key, obs.container)
            .is_some_and(|p| p.connections.len() < max && !p.connections.iter().any(same));
        if room
            && self
                .matcher
                .tracker_mut()
                .charge(obs.container, CONNECTION_BYTES, obs.ts)
            && let Some(p) = self.lineage.process_mut(&obs.key, obs.container)
        {
            p.connections.push(conn.clone());
        }
        if let Some(watchers) = self.watched_connections.get_mut(&obs.key) {
            // A trace whose connections are full stops watching them, so that a process with
            // many deviations costs each connection only the traces still filling.
            watchers.retain(|trace| {
                let Some(c) = self.captures.get_mut(trace) else {
                    return false;
                };
                if c.container != obs.container {
                    // Another container's process of the same key: not this trace's.
                    return true;
                }
                if !c.connections.iter().any(same) {
                    c.connections.push(conn.clone());
                }
                c.connections.len() < max
            });
        }
    }

    /// The trace of a deviation first found now, copied while its processes are followed.
    fn capture(&mut self, f: &Finding, step: &Step) {
        let Some(pi) = self
            .matcher
            .policies
            .iter()
            .position(|p| p.c.uid == f.policy_uid)
        else {
            return;
        };
        // A deviation past the `deviations` limit is not kept, and has no trace.
        let kept = self.matcher.policies[pi]
            .records
            .last()
            .is_some_and(|r| r.uid == f.deviation_uid);
        if !kept {
            return;
        }
        let (container, ts, connection) = match step {
            Step::Exec(obs) => (obs.container, obs.ts, None),
            Step::Net(obs) => (
                obs.container,
                obs.ts,
                Some(TraceConnection {
                    direction: obs.direction,
                    protocol: obs.protocol,
                    ip: obs.ip.to_string(),
                    dns: self.matcher.tracker().dns_text(obs.dns),
                    port: obs.port,
                    remote_port: obs.remote_port,
                    refused: obs.refused,
                    timestamp: epoch_seconds(obs.ts),
                }),
            ),
            _ => return,
        };
        let running = self.lineage.running(&f.process, container);
        let (chain, omitted) = match running {
            Some(entry) => {
                let (chain, omitted) = self.lineage.chain(entry);
                let chain = chain
                    .into_iter()
                    .map(|e| CapturedProcess {
                        key: e.key,
                        pid: e.pid,
                        ns_pid: e.ns_pid,
                        name: e.name.to_string(),
                        exe: e.exe.to_string(),
                        exe_status: e.exe_status,
                        args: e.args.clone(),
                        euser: e.euser.to_string(),
                        ts: e.ts,
                        image: e.image.filter(|_| e.placed),
                        ended: None,
                    })
                    .collect::<Vec<_>>();
                (chain, omitted)
            }
            None => (Vec::new(), 0),
        };
        let unplaced_label = match step {
            Step::Exec(obs) if !obs.placed => self.matcher.policies[pi]
                .records
                .last()
                .and_then(|r| r.deviation.spec.process_policy.first())
                .and_then(|item| item.policy_node.children.first())
                .map(|n| n.id.clone()),
            _ => None,
        };
        let connections = running
            .and_then(|_| self.lineage.procs.get(&f.process))
            .map(|p| p.connections.clone())
            .unwrap_or_default();
        let copied: usize = chain
            .iter()
            .map(|p| p.args.iter().map(String::len).sum::<usize>() + 128)
            .sum();
        if !self
            .matcher
            .tracker_mut()
            .charge(container, CAPTURE_BYTES + copied as u64, ts)
        {
            return;
        }
        let trace = (pi, f.deviation_uid.clone());
        for (i, p) in chain.iter().enumerate() {
            self.watched_ends
                .entry(p.key)
                .or_default()
                .push((trace.clone(), i));
        }
        let max = self.matcher.limits().trace_connections as usize;
        if connections.len() < max {
            self.watched_connections
                .entry(f.process)
                .or_default()
                .push(trace.clone());
        }
        self.captures.insert(
            trace,
            Capture {
                container,
                process: f.process,
                chain,
                omitted,
                connection,
                connections,
                unplaced_label,
                prevented: f.prevented,
            },
        );
    }

    pub fn finish(&self) -> Investigation {
        let t = self.matcher.tracker();
        let mut deviations = Vec::new();
        for (pi, p) in self.matcher.policies.iter().enumerate() {
            let relevance = Relevance::new(p);
            for r in &p.records {
                let capture = self.captures.get(&(pi, r.uid.clone()));
                let last = capture.map_or(0, |c| c.chain.len().saturating_sub(1));
                let chain = capture
                    .map(|c| {
                        c.chain
                            .iter()
                            .enumerate()
                            .map(|(i, cp)| {
                                let label = match (cp.image, &c.unplaced_label) {
                                    (_, Some(id)) if i == last => Some((id.clone(), true)),
                                    (Some(image), _) => p.label(image),
                                    (None, _) => None,
                                };
                                TraceProcess {
                                    pid: cp.pid,
                                    ns_pid: cp.ns_pid,
                                    name: cp.name.clone(),
                                    exe: cp.exe.clone(),
                                    exe_status: cp.exe_status,
                                    args: cp.args.clone(),
                                    euser: cp.euser.clone(),
                                    start_time: epoch_seconds(cp.ts),
                                    started: rfc3339(cp.ts),
                                    deviant: label.as_ref().is_some_and(|(_, deviant)| *deviant),
                                    node: label.map(|(id, _)| id),
                                    ended: cp.ended.clone(),
                                }
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let container = capture.map_or(r.first.container, |c| c.container);
                let info = &t.container(container).info;
                deviations.push(DeviationTrace {
                    policy_name: p.c.name.clone(),
                    policy_uid: p.c.uid.clone(),
                    deviation_uid: r.uid.clone(),
                    checksum: r.deviation.metadata.checksum.clone(),
                    kind: r.deviation.metadata.kind,
                    count: r.count,
                    relevant: relevance.of(&r.deviation),
                    reason: r.reason.clone(),
                    container: ContainerRef {
                        container_id: info.container_id.clone(),
                        container_name: info.container_name.clone(),
                        image: info.image.clone(),
                        namespace: info.namespace.clone(),
                        pod: info.pod_name.clone(),
                    },
                    chain,
                    omitted: capture.map_or(0, |c| c.omitted),
                    process: capture.map_or(ProcessKey(0, 0), |c| c.process),
                    connection: capture.and_then(|c| c.connection.clone()),
                    connections: capture.map(|c| c.connections.clone()).unwrap_or_default(),
                    prevented: capture.is_some_and(|c| c.prevented),
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

/// A command line cut at `limit` bytes as the sensor cuts it (each argument with its NUL),
/// `...` last when anything was cut, here or by the sensor.
fn cut_args(argv: &[String], truncated: bool, limit: usize) -> Vec<String> {
    let mut left = limit;
    let mut out = Vec::new();
    let mut cut = truncated;
    for arg in argv {
        if arg.len() < left {
            left -= arg.len() + 1;
            out.push(arg.clone());
            continue;
        }
        let mut end = left.saturating_sub(1);
        while !arg.is_char_boundary(end) {
            end -= 1;
        }
        if end > 0 {
            out.push(arg[..end].to_string());
        }
        cut = true;
        break;
    }
    if cut {
        out.push("...".into());
    }
    out
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
}
