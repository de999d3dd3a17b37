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
//!   fragment reads the same: a deviant program is keyed by exe status too, and the checksum
//!   covers the id and status of its node when it is untrusted (one with none has the
//!   checksum of its fragment alone). Merging it records the node (it is then no longer
//!   `relevant`) but allows nothing: the next such exec deviates again. A fingerprint that
//!   saw such an exec records it as reported (see [`crate::fingerprint`]), and a policy made
//!   from it is bound by the same rule.
//! * **Effective users in deviations.** The same program under another user is the *same*
//!   deviation: the fragment carries the effective user of its first occurrence (so that it
//!   merges into a valid policy), but the user takes no part in telling deviations apart
//!   (a deviant program is keyed by what it hangs under, name and exe) nor in the checksum
//!   (computed over the fragment with every `euser` left out), so its count covers every
//!   user. Merging it adds the node with its first user; the others are then covered too,
//!   since a user never makes a deviation.
//! * **Descendants of a deviant process** are deviant too, and each deviant program is its own
//!   deviation carrying **its own node only**, hung under the node its parent maps to: the
//!   nearest policy node for the first deviant program of a chain (`policyNode: python3_0`,
//!   `bash`), and the deviant parent's node, by the id the parent's own deviation gives it,
//!   for the ones below (`policyNode: bash_0`, `wget`). This is how a Spyderbat deviation is
//!   shaped (one process node under `policyNode`), and it keeps a deviation's size fixed
//!   however deep a chain goes, where carrying the ancestry made a chain of n deviant
//!   processes cost n²/2 nodes. Deviations are listed in the order of the events that first
//!   showed them, so a parent's comes before its children's, and merging them in that order
//!   with a [`crate::merge::Merger`] (as `guardlab merge --with` does with a file of them;
//!   `spyctl merge` too keeps its merged nodes from one deviation to the next) gives the
//!   chain, even where a node merged into a policy node of another id. A deviation hung under
//!   a deviant node does not merge on its own: [`crate::merge::merge_deviation`] says which
//!   node it needs. The ids of new nodes are `<name>_<n>` with the first `n` that neither the policy
//!   nor another of its deviations has, so that the id a deviation hangs under is unambiguous.
//! * **Connections** (loopback left out, ports as in fingerprints): egress and ingress are
//!   deviations when no network node of that direction allows the remote (**any** of the DNS
//!   names earlier answers in the container gave for the address matching a `dnsSelector`,
//!   or the address inside an `ipBlock`), the port and protocol, and the process (the node it
//!   maps to is listed, or the list is empty). The fragment is one network node naming the
//!   remote as fingerprints do (every name of the address, sorted, one `dnsSelector` each);
//!   when the process is itself deviant its node is in the fragment too (hung as its process
//!   deviation hangs), so that the deviation names a process the merged policy has.
//! * **Name lookups are not deviations.** A UDP datagram to port 53 is a DNS query, not a
//!   connection (see **Name lookups** in [`crate::fingerprint`]), as in Spyderbat's policies:
//!   a process that looks a name up deviates by the connection that follows, if that is not
//!   allowed, named by the answer (`dnsSelector`), never by its query to the resolver. A
//!   policy that does have a UDP/53 rule (an older guardlab wrote one per resolving process)
//!   still reads and merges; its rule no longer has anything to allow.
//! * **Unique deviations.** A deviation is unique per (policy uid, checksum); the checksum is
//!   the SHA-256 (hex) of the deviation's type and fragment (less its users, plus its
//!   untrusted executables, see above), which holds
//!   no time, pid or container id, so the same behaviour again is the same deviation seen
//!   once more (`count`). Its uid is `dev:` and 16 hex digits of SHA-256 over policy uid
//!   and checksum. It is `relevant` while merging it into the policy (after the deviations it
//!   hangs under) would still change the policy.
//! * **Limits.** Past `deviations` unique deviations, a new one is still found, flagged and
//!   decided on, but not kept in the report; flags, decisions and audit-log lines past
//!   `log-entries` are returned with their [`Finding`] but not kept (see [`crate::limits`]).
//! * **Modes.** Audit mode records deviations and logs what it would have done (the public
//!   wording) for each kill, and that it would have raised a flag; it raises nothing.
//!   Enforce mode records them, raises the flags of the policy's response once per unique
//!   deviation and container, and decides its kills (`agentKillProcess`, `agentKillPod`,
//!   `agentKillProcessGroup`, `agentKillProcessTree`) for every occurrence, as [`Decision`]s
//!   that a backend carries out: the engine only decides.

mod compiled;
mod fragment;
mod policy_state;
mod relevance;
mod response;
mod selector;

use guardlab_events::{Event, ProcessKey};
use serde::Serialize;

use crate::error::PolicyError;
use crate::limits::{Limits, StateSize};
use crate::model::{Deviation, DeviationType, Mode, Policy, epoch_seconds};
use crate::policy::{PolicyStatus, default_response, status_in_stream};
use crate::tracker::{ContainerId, ExecObs, Stats, Step, Tracker};
use compiled::CompiledPolicy;
pub use fragment::untrusted_exe_reason;
use fragment::{PeerRef, RecordKey};
use policy_state::{Occurrence, PState, PolicyState, Program, Recorded, Verdict};
pub(crate) use relevance::Relevance;
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
    /// The kernel stopped it already (the exec was killed before its first instruction, the
    /// connect refused): the deviation is the same, with the same uid; this says it did not
    /// happen. Absent on the wire when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub prevented: bool,
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
    pub status: PolicyStatus,
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

/// A deviation as [`DeviationMatcher::occur`] counts it: a kept record, or one past the
/// `deviations` limit.
enum Deviated {
    Key(RecordKey),
    Unkept(Box<Deviation>, Option<String>),
}

/// The subject of an occurrence: its process and program, as the response's selectors see
/// them.
struct Who<'a> {
    key: ProcessKey,
    name: Option<&'a str>,
    exe: Option<&'a str>,
    euser: Option<&'a str>,
}

impl DeviationMatcher {
    /// Prepare policies for matching. Fails on a policy the engine cannot use (a duplicate
    /// process id, an `ipBlock` that is not a block).
    pub fn new(policies: &[Policy]) -> Result<Self, PolicyError> {
        Self::with_limits(policies, Limits::default())
    }

    /// [`Self::new`] within other limits than the defaults (see [`crate::limits`]).
    pub fn with_limits(policies: &[Policy], limits: Limits) -> Result<Self, PolicyError> {
        let max_records = limits.deviations as usize;
        let policies = policies
            .iter()
            .map(|p| {
                CompiledPolicy::new(p)
                    .map(|c| PolicyState::new(c, max_records, limits.deviations_per_process))
            })
            .collect::<Result<_, _>>()?;
        Ok(DeviationMatcher {
            tracker: Tracker::new(limits),
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
                let max_records = self.tracker.limits.deviations as usize;
                let per_process = self.tracker.limits.deviations_per_process;
                self.policies
                    .push(PolicyState::new(compiled, max_records, per_process));
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

    /// The limits it keeps.
    pub fn limits(&self) -> &Limits {
        &self.tracker.limits
    }

    pub(crate) fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    pub(crate) fn tracker_mut(&mut self) -> &mut Tracker {
        &mut self.tracker
    }

    /// How much state the matcher keeps (see [`StateSize`]): it depends on the distinct
    /// programs, connections and deviations of the stream, within the limits, not on its
    /// length.
    pub fn state_size(&self) -> StateSize {
        let logged: usize = self.audit_log.iter().map(String::len).sum();
        self.tracker.size()
            + self.policies.iter().map(PolicyState::size).sum()
            + StateSize::table(self.flags.len(), size_of::<Flag>() + 256, 0)
            + StateSize::table(self.decisions.len(), size_of::<Decision>() + 256, 0)
            + StateSize::table(self.audit_log.len(), size_of::<String>(), logged)
    }

    /// Take one event into account; returns the deviations it is (usually none).
    pub fn observe(&mut self, event: &Event) -> Vec<Finding> {
        self.observe_step(event).1
    }

    /// Whether the kernel stopped what `event` tells (see [`Finding::prevented`]).
    pub(crate) fn prevented_by_kernel(event: &Event) -> bool {
        match &event.body {
            guardlab_events::EventBody::Exec(e) => e.killed,
            guardlab_events::EventBody::Connect(c) => c.refused,
            _ => false,
        }
    }

    /// [`Self::observe`], also giving what the tracker made of the event (for investigation).
    pub(crate) fn observe_step<'e>(&mut self, event: &'e Event) -> (Step<'e>, Vec<Finding>) {
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
            Step::Exec(obs) => self.exec(obs, &mut findings),
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
                    let image = obs.image.map(|i| self.tracker.image(i));
                    let syms = &self.tracker.syms;
                    let who = Who {
                        key: obs.key,
                        name: image.map(|i| syms.get(i.name)),
                        exe: image.map(|i| syms.get(i.exe)),
                        euser: image.map(|i| syms.get(i.euser)),
                    };
                    let who = owned_who(&who);
                    findings.push(self.occur(
                        pi,
                        Deviated::Key(key),
                        obs.container,
                        obs.ts,
                        &who.as_who(),
                    ));
                }
            }
            _ => {}
        }
        if Self::prevented_by_kernel(event) {
            for finding in &mut findings {
                finding.prevented = true;
            }
        }
        (step, findings)
    }

    /// An exec: the state of a new program node for each policy, and a finding for each
    /// policy it deviates from.
    fn exec(&mut self, obs: &ExecObs, findings: &mut Vec<Finding>) {
        if obs.new
            && let Some(image) = obs.image
        {
            for p in &mut self.policies {
                debug_assert_eq!(p.states.len(), image.index());
                let state = p.map_image(&self.tracker, image);
                p.states.push(state);
            }
        }
        for pi in 0..self.policies.len() {
            if !self.policies[pi].watches(obs.container) {
                continue;
            }
            let deviated = if obs.placed {
                let image = obs.image.expect("a placed exec has its node");
                match self.policies[pi].states[image.index()] {
                    PState::Deviant(ch) => Deviated::Key(RecordKey::Process(ch)),
                    PState::Node(_) | PState::Outside => continue,
                }
            } else {
                match self.judge_unplaced(pi, obs) {
                    Some(deviated) => deviated,
                    None => continue,
                }
            };
            let euser = self.tracker.syms.get(obs.euser).to_string();
            let who = Who {
                key: obs.key,
                name: Some(obs.name),
                exe: Some(obs.exe),
                euser: Some(&euser),
            };
            findings.push(self.occur(pi, deviated, obs.container, obs.ts, &who));
        }
    }

    /// An exec a limit kept from having a node of its own: judged against the policy from
    /// the state of its parent's node (see [`crate::limits`]). None when it is allowed.
    fn judge_unplaced(&mut self, pi: usize, obs: &ExecObs) -> Option<Deviated> {
        let p = &self.policies[pi];
        let parent = obs.image.map(|i| p.states[i.index()]);
        let program = Program {
            parent,
            name: obs.name,
            exe: obs.exe,
            exe_status: obs.exe_status,
            euser: obs.euser,
        };
        // Kept when the policy has room for its deviation and the pod for its name and exe.
        let syms = if p.has_room() {
            self.tracker
                .intern_program(obs.container, obs.name, obs.exe, obs.ts)
        } else {
            None
        };
        let p = &mut self.policies[pi];
        match p.judge(&self.tracker, &program, syms, syms.is_some()) {
            Verdict::Allowed(_) => None,
            Verdict::Deviant(ch) => Some(Deviated::Key(RecordKey::Process(ch))),
            Verdict::DeviantUnkept(deviation, reason) => Some(Deviated::Unkept(deviation, reason)),
        }
    }

    /// Take every event of a stream into account; returns all findings.
    pub fn observe_all<'a>(&mut self, events: impl IntoIterator<Item = &'a Event>) -> Vec<Finding> {
        let mut all = Vec::new();
        for event in events {
            all.extend(self.observe(event));
        }
        all
    }

    /// Keep an entry for the report when `log-entries` has room (the finding carries it in any
    /// case).
    fn log_room(&mut self, kept: usize, container: ContainerId, ts: u64) -> bool {
        let limit = self.tracker.limits.log_entries;
        if kept < limit as usize {
            return true;
        }
        self.tracker.limit_met(
            "log-entries",
            u64::from(limit),
            container,
            ts,
            "further flags, decisions and audit-log lines are returned with their findings but not kept for the report",
        );
        false
    }

    fn occur(
        &mut self,
        pi: usize,
        deviated: Deviated,
        container: ContainerId,
        ts: u64,
        who: &Who,
    ) -> Finding {
        let occurrence = Occurrence { container, ts };
        // The record (kept) or the document (past the `deviations` limit), and whether the
        // flag of this deviation and container is still to be raised.
        let (record, new, unkept) = match deviated {
            Deviated::Key(key) => {
                let t = &self.tracker;
                match self.policies[pi].record(t, key, occurrence) {
                    Recorded::Kept(r, new) => (Some(r), new, None),
                    Recorded::Unkept {
                        deviation,
                        reason,
                        limit,
                    } => (None, true, Some((deviation, reason, limit))),
                }
            }
            Deviated::Unkept(deviation, reason) => {
                (None, true, Some((deviation, reason, "deviations")))
            }
        };
        if let Some((_, _, limit)) = &unkept {
            let name = self.policies[pi].c.name.clone();
            let (value, what) = if *limit == "deviations" {
                (self.tracker.limits.deviations, "new unique deviations")
            } else {
                (
                    self.tracker.limits.deviations_per_process,
                    "new network deviations of a process with this many",
                )
            };
            self.tracker.limit_met(
                limit,
                u64::from(value),
                container,
                ts,
                &format!(
                    "{what} of policy {name} are still found, flagged and decided on, but not kept in the report"
                ),
            );
        }
        // What the report keeps of a deviation it does not keep: nothing (its flags and
        // decisions are returned with the finding), so that a flood cannot fill the report's
        // log and push out the deviations it does keep.
        let kept = unkept.is_none();
        let enforce = self.policies[pi].c.mode == Mode::Enforce;
        let p = &mut self.policies[pi];
        let (uid, checksum, kind, reason, first_here) = match (record, &unkept) {
            (Some(r), _) => {
                let rec = &mut p.records[r.index()];
                rec.count += 1;
                rec.first_ts = rec.first_ts.min(ts);
                rec.last_ts = rec.last_ts.max(ts);
                let first_here = if enforce {
                    rec.flagged.insert(container)
                } else {
                    rec.audited.insert(container)
                };
                (
                    rec.uid.clone(),
                    rec.deviation.metadata.checksum.clone(),
                    rec.deviation.metadata.kind,
                    rec.reason.clone(),
                    first_here,
                )
            }
            (None, Some((deviation, reason, _))) => (
                deviation.metadata.uid.clone().unwrap_or_default(),
                deviation.metadata.checksum.clone(),
                deviation.metadata.kind,
                reason.clone(),
                // Not kept: no memory of having flagged it.
                true,
            ),
            (None, None) => unreachable!("a deviation is kept or not"),
        };

        let t = &self.tracker;
        let info = &t.container(container).info;
        let subject = Subject {
            info,
            name: who.name,
            exe: who.exe,
            euser: who.euser,
        };
        let default = default_response();
        let response = p.c.policy.spec.response.as_ref().unwrap_or(&default);
        let decided = effective(response, &subject);
        let mut finding = Finding {
            policy_uid: p.c.uid.clone(),
            policy_name: p.c.name.clone(),
            deviation_uid: uid,
            checksum,
            kind,
            new,
            reason,
            process: who.key,
            cgroup_id: info.cgroup_id,
            timestamp: epoch_seconds(ts),
            flags: Vec::new(),
            decisions: Vec::new(),
            prevented: false,
        };
        let mut audit = Vec::new();
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
                        pid: who.key.pid(),
                        process: who.name.unwrap_or_default().to_string(),
                        exe: who.exe.unwrap_or_default().to_string(),
                        reason: finding.reason.clone(),
                        timestamp: finding.timestamp,
                    });
                } else {
                    let why = finding
                        .reason
                        .as_deref()
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default();
                    audit.push(format!(
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
                pid: who.key.pid(),
                process: who.key,
                name: who.name.unwrap_or_default().to_string(),
            };
            let message = Decision::message(action, &target, enforce);
            if !enforce {
                audit.push(message.clone());
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
        if !kept {
            return finding;
        }
        for line in audit {
            if self.log_room(self.audit_log.len(), container, ts) {
                self.audit_log.push(line);
            }
        }
        for flag in &finding.flags {
            if self.log_room(self.flags.len(), container, ts) {
                self.flags.push(flag.clone());
            }
        }
        for decision in &finding.decisions {
            if self.log_room(self.decisions.len(), container, ts) {
                self.decisions.push(decision.clone());
            }
        }
        finding
    }

    /// Everything found so far.
    pub fn report(&self) -> DeviationReport {
        let policies = self
            .policies
            .iter()
            .map(|p| {
                let relevance = Relevance::new(p);
                let deviations: Vec<DeviationRecord> = p
                    .records
                    .iter()
                    .map(|r| DeviationRecord {
                        uid: r.uid.clone(),
                        relevant: relevance.of(&r.deviation),
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
                    status: status_in_stream(&p.c.policy, containers > 0),
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

/// A [`Who`] whose strings are owned, so that it outlives the borrows it was made from.
struct OwnedWho {
    key: ProcessKey,
    name: Option<String>,
    exe: Option<String>,
    euser: Option<String>,
}

fn owned_who(who: &Who) -> OwnedWho {
    OwnedWho {
        key: who.key,
        name: who.name.map(str::to_string),
        exe: who.exe.map(str::to_string),
        euser: who.euser.map(str::to_string),
    }
}

impl OwnedWho {
    fn as_who(&self) -> Who<'_> {
        Who {
            key: self.key,
            name: self.name.as_deref(),
            exe: self.exe.as_deref(),
            euser: self.euser.as_deref(),
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
