//! Deviations: behaviour a policy does not allow, found while streaming events.
//!
//! [`DeviationMatcher`] follows every container and process (with the same ancestry rules as
//! fingerprinting, see [`crate::fingerprint`]) and, for the containers that an **enabled**
//! policy selects (`containerSelector`, `namespaceSelector`, `podSelector`,
//! `machineSelector`), maps each exec'd program to a node of the policy's process forest.
//! A disabled policy selects nothing and produces nothing. A policy's status over a stream
//! ([`PolicyReport::status`]) is the public word: `Disabled`; `Not Applied` when it is enabled
//! but selected no container of the stream (it could not find anything: a selector that does
//! not match is a mistake worth saying, see [`PolicyReport::applied`]); else `Enforcing` or
//! `Auditing`.
//!
//! # Rules (ours; the public tool does not show the server's)
//!
//! * **Process.** A program is allowed when its parent maps to a policy node (a root: when it
//!   has no parent in the container) and a child of that node (a root node) covers it: the
//!   name glob matches and an exe glob matches. Otherwise it is a deviation whose fragment is
//!   the new node hung under `policyNode.id` (the parent's node; [`ROOT_ANCHOR`] for a new
//!   root). The effective user is an attribute, never a deviation on its own.
//! * **Executables the sensor could not resolve** (`exe_status` fileless, truncated or
//!   unresolved) are covered by no process node, whatever its name and exe globs say (`*`
//!   included): the policy fails closed, as the sensor's exec allow-list does (it kills them).
//!   Such an exec is always a process deviation (its descendants too, as for any deviant
//!   process), and says why: `reason` on the [`Finding`], the [`DeviationRecord`] and the
//!   [`Flag`], and in the audit log, e.g. ``fileless executable `memfd:minerd`: no exe glob
//!   allows it (fail closed)``. The matcher's cache of verdicts is keyed by the exe's text,
//!   so an untrusted exec bypasses it: a resolved exec with the same text neither lends it
//!   its node nor takes its refusal. It is another deviation than a resolved exec whose
//!   fragment reads the same: the chain of deviant processes is keyed by exe status too, and
//!   the checksum covers the id and status of each untrusted node of the fragment (one with
//!   none has the checksum it always had). Merging it records the node (it is then no longer
//!   `relevant`) but allows nothing: the next such exec deviates again. A fingerprint that
//!   saw such an exec records it as reported (see [`crate::fingerprint`]), and a policy made
//!   from it is bound by the same rule.
//! * **Effective users in deviations.** The same program under another user is the *same*
//!   deviation: the fragment carries the effective user of its first occurrence (so that it
//!   merges into a valid policy), but the user takes no part in telling deviations apart
//!   (the chain of deviant programs is keyed by parent, name and exe) nor in the checksum
//!   (computed over the fragment with every `euser` left out), so its count covers every
//!   user. Merging it adds the node with its first user; the others are then covered too,
//!   since a user never makes a deviation.
//! * **Descendants of a deviant process** are deviant too and reported under the deviant
//!   parent: each deviant process is its own deviation, whose `policyNode` is the nearest
//!   policy node and whose fragment is the whole chain of deviant processes from there down
//!   to it (`python3_0 -> bash -> wget`). Merging the deviations of a chain one by one gives
//!   the chain; the ids of new nodes are `<name>_<n>` with the first `n` free in the policy.
//! * **Connections** (loopback left out, ports as in fingerprints): egress and ingress are
//!   deviations when no network node of that direction allows the remote (**any** of the DNS
//!   names earlier answers in the container gave for the address matching a `dnsSelector`,
//!   or the address inside an `ipBlock`), the port and protocol, and the process (the node it
//!   maps to is listed, or the list is empty). The fragment is one network node naming the
//!   remote as fingerprints do (every name of the address, sorted, one `dnsSelector` each);
//!   when the process is itself deviant its chain is in the fragment too, so that the
//!   deviation merges into a valid policy on its own.
//! * **Name lookups of deviant processes.** A deviant process that resolves a name sends a
//!   datagram to the resolver (UDP 53) before it connects; the policy allows the resolver
//!   only for the processes that used it in the baseline, so each deviant process that
//!   looks a name up is also an egress deviation to the resolver, with its own chain (in the
//!   tutorial: `curl`, `wget` and `minerd` each). That is faithful (the process did reach
//!   the resolver) and deterministic: deviations are listed in the order of the events that
//!   first showed them, and a process's lookup comes before its connection. Merged into the
//!   policy, they join the resolver's network node (same peer and ports: the processes are
//!   unioned) rather than adding one node per process.
//! * **Unique deviations.** A deviation is unique per (policy uid, checksum); the checksum is
//!   the SHA-256 (hex) of the deviation's type and fragment (less its users, plus its
//!   untrusted executables, see above), which holds
//!   no time, pid or container id, so the same behaviour again is the same deviation seen
//!   once more (`count`). Its uid is `dev:` and 16 hex digits of SHA-256 over policy uid
//!   and checksum. It is `relevant` while merging it into the policy would still change the
//!   policy.
//! * **Modes.** Audit mode records deviations and logs what it would have done (the public
//!   wording) for each kill, and that it would have raised a flag; it raises nothing.
//!   Enforce mode records them, raises the flags of the policy's response once per unique
//!   deviation and container, and decides its kills (`agentKillProcess`, `agentKillPod`,
//!   `agentKillProcessGroup`, `agentKillProcessTree`) for every occurrence, as [`Decision`]s
//!   that a backend carries out: the engine only decides.

mod compiled;
mod fragment;
mod policy_state;
mod response;
mod selector;

use guardlab_events::{Event, ProcessKey};
use serde::Serialize;

use crate::error::PolicyError;
use crate::merge::is_relevant_to_canonical;
use crate::model::{Deviation, DeviationType, Mode, Policy, epoch_seconds};
use crate::policy::{default_response, status_in_stream};
use crate::tracker::{Stats, Step, Tracker};
use compiled::CompiledPolicy;
pub use fragment::untrusted_exe_reason;
use fragment::{PeerRef, RecordKey};
use policy_state::{OccurredConnection, Occurrence, PState, PolicyState};
pub use response::{ActionKind, Decision, Flag, FlagClass, Target};
use response::{Subject, effective};

pub use crate::model::ROOT_ANCHOR;

/// One occurrence of a deviation, as it happens, with what the policy's response decided.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    pub policy_uid: String,
    pub policy_name: String,
    pub deviation_uid: String,
    pub checksum: String,
    #[serde(rename = "type")]
    pub kind: DeviationType,
    /// First occurrence of this unique deviation.
    pub new: bool,
    /// Why it deviates, when no policy could allow it: `fileless executable `memfd:x`: no
    /// exe glob allows it (fail closed)`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub process: ProcessKey,
    pub cgroup_id: u64,
    pub timestamp: f64,
    pub flags: Vec<Flag>,
    pub decisions: Vec<Decision>,
}

/// A unique deviation with its counts.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviationRecord {
    pub uid: String,
    /// Merging it into the policy would still change the policy.
    pub relevant: bool,
    /// How many times it was seen.
    pub count: u64,
    /// Why it deviates, when no policy could allow it (see [`Finding::reason`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub first_timestamp: f64,
    pub latest_timestamp: f64,
    pub deviation: Deviation,
}

/// The deviations of one policy.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyReport {
    pub name: String,
    pub uid: String,
    /// `Enforcing`, `Auditing`, `Disabled`, or `Not Applied` (enabled, but it selected no
    /// container of the stream).
    pub status: String,
    /// The policy is enabled and selected at least one container of the stream. When it is
    /// false and the policy is enabled, "no deviations" means nothing was checked.
    pub applied: bool,
    /// Containers of the stream the policy's selectors match (whether it is enabled or not).
    pub containers: usize,
    /// Unique deviations.
    pub unique: usize,
    /// Occurrences of all of them.
    pub total: u64,
    pub deviations: Vec<DeviationRecord>,
}

/// Everything the matcher found: per policy, the unique deviations in the order they were
/// first seen; the flags raised and the actions decided, in order; the audit log.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviationReport {
    pub policies: Vec<PolicyReport>,
    pub flags: Vec<Flag>,
    pub decisions: Vec<Decision>,
    pub audit_log: Vec<String>,
    pub stats: Stats,
}

impl DeviationReport {
    /// Every unique deviation, as `GuardianDeviation` documents.
    pub fn deviations(&self) -> impl Iterator<Item = &Deviation> {
        self.policies
            .iter()
            .flat_map(|p| p.deviations.iter().map(|d| &d.deviation))
    }

    /// Unique deviations over all policies.
    pub fn unique(&self) -> usize {
        self.policies.iter().map(|p| p.unique).sum()
    }

    /// Occurrences over all policies.
    pub fn total(&self) -> u64 {
        self.policies.iter().map(|p| p.total).sum()
    }
}

/// Streams events against policies and finds deviations.
pub struct DeviationMatcher {
    tracker: Tracker,
    pub(crate) policies: Vec<PolicyState>,
    pub(crate) flags: Vec<Flag>,
    pub(crate) decisions: Vec<Decision>,
    audit_log: Vec<String>,
}

impl DeviationMatcher {
    /// Prepare policies for matching. Fails on a policy the engine cannot use (a duplicate
    /// process id, an `ipBlock` that is not a block).
    pub fn new(policies: &[Policy]) -> Result<Self, PolicyError> {
        let policies = policies
            .iter()
            .map(|p| CompiledPolicy::new(p).map(PolicyState::new))
            .collect::<Result<_, _>>()?;
        Ok(DeviationMatcher {
            tracker: Tracker::default(),
            policies,
            flags: Vec::new(),
            decisions: Vec::new(),
            audit_log: Vec::new(),
        })
    }

    /// Replace the policy with the same uid (or add it): after a mode switch, enabling,
    /// disabling or a merge. The processes already running are mapped against the new policy
    /// (finding nothing about the past); deviations already recorded are kept.
    pub fn set_policy(&mut self, policy: &Policy) -> Result<(), PolicyError> {
        let compiled = CompiledPolicy::new(policy)?;
        let idx = match self.policies.iter().position(|p| p.c.uid == compiled.uid) {
            Some(i) => {
                self.policies[i].c = compiled;
                i
            }
            None => {
                self.policies.push(PolicyState::new(compiled));
                self.policies.len() - 1
            }
        };
        self.policies[idx].remap(&self.tracker);
        Ok(())
    }

    /// The policies as the matcher uses them (canonical).
    pub fn policies(&self) -> impl Iterator<Item = &Policy> {
        self.policies.iter().map(|p| &p.c.policy)
    }

    pub fn stats(&self) -> &Stats {
        &self.tracker.stats
    }

    pub(crate) fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    /// Take one event into account; returns the deviations it is (usually none).
    pub fn observe(&mut self, event: &Event) -> Vec<Finding> {
        self.observe_step(event).1
    }

    /// [`Self::observe`], also giving what the tracker made of the event (for investigation).
    pub(crate) fn observe_step(&mut self, event: &Event) -> (Step, Vec<Finding>) {
        let mut findings = Vec::new();
        let step = self.tracker.observe(event);
        match &step {
            &Step::Container(c) => {
                let info = &self.tracker.container(c).info;
                for p in &mut self.policies {
                    let selects = p.c.enabled && p.c.selects(info);
                    if p.selected.len() <= c.index() {
                        p.selected.resize(c.index() + 1, false);
                    }
                    p.selected[c.index()] = selects;
                }
            }
            &Step::Exec(image) => {
                for pi in 0..self.policies.len() {
                    let p = &mut self.policies[pi];
                    let state = p.map_image(&self.tracker, image);
                    p.states.push(state);
                    if let PState::Deviant(ch) = state {
                        let img = self.tracker.image(image);
                        let occurrence = Occurrence {
                            container: img.container,
                            image: Some(image),
                            key: img.key,
                            ts: img.ts,
                            connection: None,
                        };
                        findings.push(self.occur(pi, RecordKey::Process(ch), occurrence));
                    }
                }
            }
            Step::Net(obs) => {
                for pi in 0..self.policies.len() {
                    let p = &mut self.policies[pi];
                    if !p.watches(obs.container) {
                        continue;
                    }
                    let process = p.proc_ref(obs.image);
                    if p.allowed(&self.tracker, obs, process) {
                        continue;
                    }
                    let peer = match obs.dns {
                        Some(set) => PeerRef::Dns(set),
                        None => PeerRef::Ip(obs.ip),
                    };
                    let key = RecordKey::Net {
                        direction: obs.direction,
                        process,
                        peer,
                        protocol: obs.protocol,
                        port: obs.port,
                    };
                    let occurrence = Occurrence {
                        container: obs.container,
                        image: obs.image,
                        key: obs.key,
                        ts: obs.ts,
                        connection: Some(OccurredConnection {
                            direction: obs.direction,
                            protocol: obs.protocol,
                            ip: obs.ip,
                            port: obs.port,
                            remote_port: obs.remote_port,
                            dns: self.tracker.dns_text(obs.dns),
                            refused: obs.refused,
                        }),
                    };
                    findings.push(self.occur(pi, key, occurrence));
                }
            }
            _ => {}
        }
        (step, findings)
    }

    /// Take every event of a stream into account; returns all findings.
    pub fn observe_all<'a>(&mut self, events: impl IntoIterator<Item = &'a Event>) -> Vec<Finding> {
        let mut all = Vec::new();
        for event in events {
            all.extend(self.observe(event));
        }
        all
    }

    fn occur(&mut self, pi: usize, key: RecordKey, occurrence: Occurrence) -> Finding {
        let t = &self.tracker;
        let p = &mut self.policies[pi];
        let (container, image, pkey, ts) = (
            occurrence.container,
            occurrence.image,
            occurrence.key,
            occurrence.ts,
        );
        let (r, new) = p.record(t, key, occurrence);
        let rec = &mut p.records[r.index()];
        rec.count += 1;
        rec.first_ts = rec.first_ts.min(ts);
        rec.last_ts = rec.last_ts.max(ts);

        let info = &t.container(container).info;
        let (name, exe, euser) = match image {
            None => (None, None, None),
            Some(image) => {
                let img = t.image(image);
                (
                    Some(t.syms.get(img.name)),
                    Some(t.syms.get(img.exe)),
                    Some(t.syms.get(img.euser)),
                )
            }
        };
        let subject = Subject {
            info,
            name,
            exe,
            euser,
        };
        let default = default_response();
        let response = p.c.policy.spec.response.as_ref().unwrap_or(&default);
        let decided = effective(response, &subject);
        let enforce = p.c.mode == Mode::Enforce;
        let kind = rec.deviation.metadata.kind;
        let mut finding = Finding {
            policy_uid: p.c.uid.clone(),
            policy_name: p.c.name.clone(),
            deviation_uid: rec.uid.clone(),
            checksum: rec.deviation.metadata.checksum.clone(),
            kind,
            new,
            reason: rec.reason.clone(),
            process: pkey,
            cgroup_id: info.cgroup_id,
            timestamp: epoch_seconds(ts),
            flags: Vec::new(),
            decisions: Vec::new(),
        };
        let first_here = if enforce {
            rec.flagged.insert(container)
        } else {
            rec.audited.insert(container)
        };
        if first_here {
            for (class, flag) in [
                (FlagClass::Red, &decided.red),
                (FlagClass::Ops, &decided.ops),
            ] {
                let Some(flag) = flag else { continue };
                if enforce {
                    finding.flags.push(Flag {
                        class,
                        severity: flag.severity,
                        impact: flag.impact.clone(),
                        content: flag.content.clone(),
                        policy_uid: finding.policy_uid.clone(),
                        policy_name: finding.policy_name.clone(),
                        deviation_uid: finding.deviation_uid.clone(),
                        checksum: finding.checksum.clone(),
                        kind,
                        container_id: info.container_id.clone(),
                        container_name: info.container_name.clone(),
                        namespace: info.namespace.clone(),
                        pod: info.pod_name.clone(),
                        pid: pkey.pid(),
                        process: name.unwrap_or_default().to_string(),
                        exe: exe.unwrap_or_default().to_string(),
                        reason: finding.reason.clone(),
                        timestamp: finding.timestamp,
                    });
                } else {
                    let why = finding
                        .reason
                        .as_deref()
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default();
                    self.audit_log.push(format!(
                        "(audit mode): Would have raised a \"{}\" {class} flag for {kind} deviation {}{why}. Not raised due to \"audit\" mode.",
                        flag.severity,
                        finding.deviation_uid
                    ));
                }
            }
        }
        for action in decided.kills {
            let target = Target {
                cgroup_id: info.cgroup_id,
                container_id: info.container_id.clone(),
                namespace: info.namespace.clone(),
                pod: info.pod_name.clone(),
                pid: pkey.pid(),
                process: pkey,
                name: name.unwrap_or_default().to_string(),
            };
            let message = Decision::message(action, &target, enforce);
            if !enforce {
                self.audit_log.push(message.clone());
            }
            finding.decisions.push(Decision {
                action,
                initiated: enforce,
                message,
                policy_uid: finding.policy_uid.clone(),
                policy_name: finding.policy_name.clone(),
                deviation_uid: finding.deviation_uid.clone(),
                target,
                timestamp: finding.timestamp,
            });
        }
        self.flags.extend(finding.flags.iter().cloned());
        self.decisions.extend(finding.decisions.iter().cloned());
        finding
    }

    /// Everything found so far.
    pub fn report(&self) -> DeviationReport {
        let policies = self
            .policies
            .iter()
            .map(|p| {
                let deviations: Vec<DeviationRecord> = p
                    .records
                    .iter()
                    .map(|r| DeviationRecord {
                        uid: r.uid.clone(),
                        relevant: is_relevant_to_canonical(&p.c.policy, &p.c.nets, &r.deviation),
                        count: r.count,
                        reason: r.reason.clone(),
                        first_timestamp: epoch_seconds(r.first_ts),
                        latest_timestamp: epoch_seconds(r.last_ts),
                        deviation: r.deviation.clone(),
                    })
                    .collect();
                let containers = self
                    .tracker
                    .containers
                    .iter()
                    .filter(|rec| p.c.selects(&rec.info))
                    .count();
                PolicyReport {
                    name: p.c.name.clone(),
                    uid: p.c.uid.clone(),
                    status: status_in_stream(&p.c.policy, containers > 0).to_string(),
                    applied: p.c.enabled && containers > 0,
                    containers,
                    unique: deviations.len(),
                    total: deviations.iter().map(|d| d.count).sum(),
                    deviations,
                }
            })
            .collect();
        DeviationReport {
            policies,
            flags: self.flags.clone(),
            decisions: self.decisions.clone(),
            audit_log: self.audit_log.clone(),
            stats: self.tracker.stats.clone(),
        }
    }
}

/// Match a whole stream against policies, in one call.
pub fn find_deviations<'a>(
    policies: &[Policy],
    events: impl IntoIterator<Item = &'a Event>,
) -> Result<DeviationReport, PolicyError> {
    let mut matcher = DeviationMatcher::new(policies)?;
    for event in events {
        matcher.observe(event);
    }
    Ok(matcher.report())
}

#[cfg(test)]
mod tests;
