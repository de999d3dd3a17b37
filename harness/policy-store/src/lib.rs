//! The lab's one policy store: what the guard knows about a lab, and every operation on it.
//!
//! The scenario runner and the guard console (`guardlab console`) share one [`PolicyStore`]:
//! events go in ([`PolicyStore::observe`]); the fingerprints learned from the baseline, the
//! lab's policies with their modes and enabled state, the deviations found against them, the
//! red flags raised and the investigation come out. Every action a person can take in the
//! console (create a policy from fingerprints, edit it, set its mode, enable or disable it,
//! merge deviations into it) is a method here, and the runner's steps call the same methods:
//! the console adds no second logic.
//!
//! Like the engine it wraps, the store is pure: no I/O, no clock, no threads. Whoever shares
//! it puts it behind a lock and watches [`PolicyStore::generation`] (or reads the
//! [`Change`]s since a generation) to tell a page what changed. Times are the events' own
//! (nanoseconds since the epoch, from the kernel's clock).

use std::collections::VecDeque;

use guardlab_engine::deviation::{DeviationReport, Finding, Flag};
use guardlab_engine::error::PolicyError;
use guardlab_engine::fingerprint::{FingerprintBuilder, fingerprints_of_groups};
use guardlab_engine::limits::Limits;
use guardlab_engine::merge::Merger;
use guardlab_engine::model::{Document, Fingerprint, FingerprintGroup, Mode, Policy};
use guardlab_engine::policy;
use guardlab_engine::trace::{Investigation, Investigator};
use guardlab_events::Event;
use serde::Serialize;

/// What the store refuses.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no policy with uid or name {0:?} in the store")]
    NoPolicy(String),
    #[error("no fingerprint named {0:?} in the store")]
    NoFingerprint(String),
    #[error("no fingerprint selected: select one or more to make a policy")]
    NothingSelected,
    #[error("a policy named {0:?} is in the store already")]
    NameTaken(String),
    #[error("no deviation with uid {uid:?} against policy {policy:?}")]
    NoDeviation { policy: String, uid: String },
    #[error("the policy is not valid: {0}")]
    Invalid(String),
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

/// One change, for whoever shows the store (the console's live pages).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// The baseline ended: the fingerprints are final.
    FingerprintsLearned {
        fingerprints: usize,
    },
    PolicyCreated {
        uid: String,
        name: String,
    },
    /// Mode, enabled state, or content.
    PolicyChanged {
        uid: String,
        name: String,
        status: String,
    },
    /// A unique deviation, first seen. `event_ns` is the kernel's time of the event.
    Deviation {
        policy_uid: String,
        deviation_uid: String,
        #[serde(rename = "type")]
        kind: String,
        event_ns: u64,
    },
    /// A person looked at a page of the console (`deviations`, `investigation`): what a
    /// workshop's "look at" steps wait for.
    Viewed {
        page: String,
    },
    /// A workshop run waits at a step (or no longer waits: `None`).
    Workshop {
        step: Option<WorkshopStep>,
    },
    /// The learner asked guardlab to do the step it waits at.
    Go,
    /// A red flag raised (`event_ns`: the kernel's time of the event that raised it).
    Flag {
        index: usize,
        deviation_uid: String,
        severity: String,
        event_ns: u64,
    },
}

/// The step a workshop run waits at, for the console to show.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkshopStep {
    /// 1-based.
    pub number: usize,
    pub of: usize,
    pub name: String,
    pub explain: String,
    /// What the learner may do (in the console, or in the notebook's terminal).
    pub task: String,
}

/// A red flag as the store keeps it: the engine's flag and the kernel time of its event.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FlagEntry {
    #[serde(flatten)]
    pub flag: Flag,
    pub event_ns: u64,
}

/// How many changes the store remembers for readers that fell behind; one further back reads
/// the whole state again.
const CHANGES_KEPT: usize = 4096;

/// See the module documentation.
pub struct PolicyStore {
    limits: Limits,
    /// Set while the baseline is learned.
    learning: Option<FingerprintBuilder>,
    /// The events the fingerprints are learned from, to check a new policy against.
    baseline: Vec<Event>,
    groups: Vec<FingerprintGroup>,
    policies: Vec<Policy>,
    investigator: Investigator,
    flags: Vec<FlagEntry>,
    workshop: Option<WorkshopStep>,
    events: u64,
    generation: u64,
    changes: VecDeque<(u64, Change)>,
}

impl Default for PolicyStore {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

impl PolicyStore {
    /// A store that learns a baseline from the first event on, within `limits`.
    pub fn new(limits: Limits) -> Self {
        PolicyStore {
            limits,
            learning: Some(FingerprintBuilder::new().with_limits(limits)),
            baseline: Vec::new(),
            groups: Vec::new(),
            policies: Vec::new(),
            investigator: Investigator::with_limits(&[], limits)
                .expect("no policy is always valid"),
            flags: Vec::new(),
            workshop: None,
            events: 0,
            generation: 0,
            changes: VecDeque::new(),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Take one event: the baseline (while learning), then every policy. Returns what the
    /// policies found, for the caller to carry out their decisions.
    pub fn observe(&mut self, event: &Event) -> Vec<Finding> {
        self.events += 1;
        if let Some(learning) = self.learning.as_mut() {
            learning.observe(event);
            self.baseline.push(event.clone());
        }
        let findings = self.investigator.observe(event);
        for finding in &findings {
            if finding.new {
                self.record(Change::Deviation {
                    policy_uid: finding.policy_uid.clone(),
                    deviation_uid: finding.deviation_uid.clone(),
                    kind: format!("{:?}", finding.kind).to_lowercase(),
                    event_ns: event.ts,
                });
            }
            for flag in &finding.flags {
                let index = self.flags.len();
                self.flags.push(FlagEntry {
                    flag: flag.clone(),
                    event_ns: event.ts,
                });
                self.record(Change::Flag {
                    index,
                    deviation_uid: flag.deviation_uid.clone(),
                    severity: format!("{:?}", flag.severity).to_lowercase(),
                    event_ns: event.ts,
                });
            }
        }
        findings
    }

    /// Events taken so far.
    pub fn events_seen(&self) -> u64 {
        self.events
    }

    /// The baseline is still being learned.
    pub fn learning(&self) -> bool {
        self.learning.is_some()
    }

    /// The events of the baseline (empty once it is dropped with a policy made).
    pub fn baseline(&self) -> &[Event] {
        &self.baseline
    }

    /// End the baseline: the fingerprints are final. A second call changes nothing.
    pub fn finish_fingerprints(&mut self) -> &[FingerprintGroup] {
        if let Some(learning) = self.learning.take() {
            self.groups = learning.finish_grouped();
            let fingerprints = self.groups.iter().map(|g| g.data.fingerprints.len()).sum();
            self.record(Change::FingerprintsLearned { fingerprints });
        }
        &self.groups
    }

    /// The fingerprints per image: final once learned, else what the baseline gives so far.
    pub fn fingerprint_groups(&self) -> Vec<FingerprintGroup> {
        match &self.learning {
            Some(learning) => learning.finish_grouped(),
            None => self.groups.clone(),
        }
    }

    /// Every fingerprint, one per container.
    pub fn fingerprints(&self) -> Vec<Fingerprint> {
        fingerprints_of_groups(&self.fingerprint_groups())
    }

    /// The policy [`Self::create_policy`] would make, without keeping it (the console's
    /// preview). `selected` names fingerprints (`metadata.name`); empty selects none.
    pub fn preview_policy(
        &self,
        selected: &[String],
        name: Option<&str>,
        mode: Mode,
    ) -> Result<Policy, StoreError> {
        if selected.is_empty() {
            return Err(StoreError::NothingSelected);
        }
        let all = self.fingerprints();
        let mut chosen = Vec::new();
        for wanted in selected {
            let found: Vec<_> = all
                .iter()
                .filter(|f| &f.metadata.name == wanted)
                .cloned()
                .collect();
            if found.is_empty() {
                return Err(StoreError::NoFingerprint(wanted.clone()));
            }
            chosen.extend(found);
        }
        Ok(policy::create_policy(&chosen, name, mode)?)
    }

    /// The fingerprints whose image matches `image` (a glob), or all: what the runner's
    /// `create_policy` step selects.
    pub fn fingerprint_names_for_image(&self, image: Option<&str>) -> Vec<String> {
        self.fingerprints()
            .into_iter()
            .filter(|f| match image {
                Some(pattern) => {
                    let image = f
                        .spec
                        .container_selector
                        .as_ref()
                        .and_then(|s| s.image.as_deref())
                        .unwrap_or("");
                    guardlab_engine::glob::glob_match(pattern, image)
                }
                None => true,
            })
            .map(|f| f.metadata.name)
            .collect()
    }

    /// Make a policy from the selected fingerprints and keep it. Ends the baseline.
    pub fn create_policy(
        &mut self,
        selected: &[String],
        name: Option<&str>,
        mode: Mode,
    ) -> Result<&Policy, StoreError> {
        let policy = self.preview_policy(selected, name, mode)?;
        self.add_policy(policy)
    }

    /// Keep a policy written elsewhere (the console's edited preview): it must be valid and
    /// its name new. Ends the baseline.
    pub fn add_policy(&mut self, policy: Policy) -> Result<&Policy, StoreError> {
        let problems = guardlab_engine::validate::validate(&Document::Policy(policy.clone()));
        if let Some(first) = problems.first() {
            return Err(StoreError::Invalid(format!(
                "{}: {}",
                first.path, first.message
            )));
        }
        if self
            .policies
            .iter()
            .any(|p| p.metadata.name == policy.metadata.name)
        {
            return Err(StoreError::NameTaken(policy.metadata.name.clone()));
        }
        self.finish_fingerprints();
        self.investigator.matcher_mut().set_policy(&policy)?;
        let uid = policy::policy_uid(&policy);
        self.record(Change::PolicyCreated {
            uid,
            name: policy.metadata.name.clone(),
        });
        self.policies.push(policy);
        Ok(self.policies.last().expect("just pushed"))
    }

    /// Every policy, oldest first.
    pub fn policies(&self) -> &[Policy] {
        &self.policies
    }

    /// A policy by uid or name.
    pub fn policy(&self, uid_or_name: &str) -> Result<&Policy, StoreError> {
        self.position(uid_or_name).map(|i| &self.policies[i])
    }

    /// The newest policy: the one a scenario's steps work on.
    pub fn latest_policy(&self) -> Option<&Policy> {
        self.policies.last()
    }

    fn position(&self, uid_or_name: &str) -> Result<usize, StoreError> {
        self.policies
            .iter()
            .position(|p| p.metadata.name == uid_or_name || policy::policy_uid(p) == uid_or_name)
            .ok_or_else(|| StoreError::NoPolicy(uid_or_name.to_string()))
    }

    /// Change a policy (mode, enabled, content) and apply it to what comes next.
    pub fn change_policy(
        &mut self,
        uid_or_name: &str,
        change: impl FnOnce(&mut Policy),
    ) -> Result<&Policy, StoreError> {
        let at = self.position(uid_or_name)?;
        let mut changed = self.policies[at].clone();
        change(&mut changed);
        self.investigator.matcher_mut().set_policy(&changed)?;
        self.record(Change::PolicyChanged {
            uid: policy::policy_uid(&changed),
            name: changed.metadata.name.clone(),
            status: policy::status(&changed).to_string(),
        });
        self.policies[at] = changed;
        Ok(&self.policies[at])
    }

    pub fn set_mode(&mut self, uid_or_name: &str, mode: Mode) -> Result<&Policy, StoreError> {
        self.change_policy(uid_or_name, |p| policy::set_mode(p, mode))
    }

    pub fn set_enabled(&mut self, uid_or_name: &str, enabled: bool) -> Result<&Policy, StoreError> {
        self.change_policy(uid_or_name, |p| policy::set_enabled(p, enabled))
    }

    /// Add a kill to a policy's response (see [`policy::add_kill_action`]).
    pub fn add_kill_action(
        &mut self,
        uid_or_name: &str,
        kill: policy::KillAction,
    ) -> Result<&Policy, StoreError> {
        self.change_policy(uid_or_name, |p| policy::add_kill_action(p, kill))
    }

    /// Merge deviations found against a policy into it (all of them when `uids` is empty), in
    /// the order they were found, so that one hung under another's node finds it.
    pub fn merge_deviations(
        &mut self,
        uid_or_name: &str,
        uids: &[String],
    ) -> Result<(&Policy, usize), StoreError> {
        let at = self.position(uid_or_name)?;
        let uid = policy::policy_uid(&self.policies[at]);
        let report = self.investigator.matcher_mut().report();
        let records: Vec<_> = report
            .policies
            .iter()
            .filter(|p| p.uid == uid)
            .flat_map(|p| p.deviations.iter())
            .collect();
        for wanted in uids {
            if !records.iter().any(|r| &r.uid == wanted) {
                return Err(StoreError::NoDeviation {
                    policy: uid.clone(),
                    uid: wanted.clone(),
                });
            }
        }
        let mut merger = Merger::new(self.policies[at].clone());
        let mut merged = 0;
        for record in records {
            if uids.is_empty() || uids.contains(&record.uid) {
                merger.merge(&Document::Deviation(record.deviation.clone()))?;
                merged += 1;
            }
        }
        let policy = merger.finish();
        let policy = self.change_policy(&uid, move |p| *p = policy)?;
        Ok((policy, merged))
    }

    /// The deviations and flags so far, per policy.
    pub fn deviation_report(&mut self) -> DeviationReport {
        self.investigator.matcher_mut().report()
    }

    /// Every red flag raised, oldest first.
    pub fn flags(&self) -> &[FlagEntry] {
        &self.flags
    }

    /// Each unique deviation's trace from its container's root process, as of now.
    pub fn investigation(&self) -> Investigation {
        self.investigator.finish()
    }

    /// Note that a person looked at a page of the console (see [`Change::Viewed`]).
    pub fn viewed(&mut self, page: &str) {
        self.record(Change::Viewed {
            page: page.to_string(),
        });
    }

    /// Say the step a workshop run waits at (`None`: it no longer waits).
    pub fn set_workshop_step(&mut self, step: Option<WorkshopStep>) {
        if self.workshop != step {
            self.workshop = step.clone();
            self.record(Change::Workshop { step });
        }
    }

    /// The step a workshop run waits at.
    pub fn workshop_step(&self) -> Option<&WorkshopStep> {
        self.workshop.as_ref()
    }

    /// The learner asks guardlab to do the step it waits at (as Enter in the terminal).
    pub fn go(&mut self) {
        self.record(Change::Go);
    }

    /// Counts up with every change: a reader that saw generation `g` has seen everything when
    /// this is still `g`.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The changes after generation `since`, with their generations; `None` when some of them
    /// are forgotten (read the whole state again).
    pub fn changes_since(&self, since: u64) -> Option<Vec<(u64, Change)>> {
        if since >= self.generation {
            return Some(Vec::new());
        }
        match self.changes.front() {
            Some((first, _)) if *first <= since + 1 => Some(
                self.changes
                    .iter()
                    .filter(|(g, _)| *g > since)
                    .cloned()
                    .collect(),
            ),
            _ => None,
        }
    }

    fn record(&mut self, change: Change) {
        self.generation += 1;
        if self.changes.len() == CHANGES_KEPT {
            self.changes.pop_front();
        }
        self.changes.push_back((self.generation, change));
    }
}

#[cfg(test)]
mod tests;
