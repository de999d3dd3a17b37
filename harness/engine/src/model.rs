//! The public `spyctl` YAML documents (`apiVersion: spyderbat/v1`), as Rust types.
//!
//! Field names follow the public format exactly (see `shared/docs/guardian-model.md`).
//! Optional fields are `Option` and skipped when absent, so that a document read and written
//! again parses to the same value (the round-trip invariant the tests check on the public
//! policy library). Unknown keys are refused (`deny_unknown_fields`) so that a typo such as
//! `names:` is an error, not a silently ignored field, except where spyctl's own models
//! ignore keys they do not know: `metadata` (documents exported from a Spyderbat organisation
//! carry ids, versions, times... there), `networkPolicy`, `response` and a selector's
//! `matchExpressions` items. There they are kept in [`Extra`] and written back as they were
//! read, after the fields guardlab models.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

pub const API_VERSION: &str = "spyderbat/v1";
pub const KIND_FINGERPRINT: &str = "SpyderbatFingerprint";
pub const KIND_FINGERPRINT_GROUP: &str = "FingerprintGroup";
pub const KIND_POLICY: &str = "SpyderbatPolicy";
pub const KIND_DEVIATION: &str = "GuardianDeviation";

/// The `policyNode.id` of a deviation that is a new root of the process forest (a process
/// with no parent in the container that no root of the policy covers).
pub const ROOT_ANCHOR: &str = "(root)";

/// Epoch nanoseconds as the float seconds of the format's timestamps, to the microsecond.
pub fn epoch_seconds(ns: u64) -> f64 {
    (ns / 1_000) as f64 / 1e6
}

/// Fields guardlab does not model, in the order they were read.
pub type Extra = serde_yaml::Mapping;

/// A fingerprint or a policy: the same shape, told apart by `kind`. A fingerprint has no
/// `enabled`, `mode` or `response`; a policy has a `mode` (files written before modes existed
/// have none and are treated as audit).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GuardDocument {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: Spec,
}

pub type Fingerprint = GuardDocument;
pub type Policy = GuardDocument;

/// One spyctl document, chosen by its `kind`.
#[derive(Clone, Debug, PartialEq)]
pub enum Document {
    Fingerprint(Fingerprint),
    Policy(Policy),
    FingerprintGroup(FingerprintGroup),
    Deviation(Deviation),
}

impl Document {
    /// The `kind` this variant is written with.
    pub fn kind(&self) -> &'static str {
        match self {
            Document::Fingerprint(_) => KIND_FINGERPRINT,
            Document::Policy(_) => KIND_POLICY,
            Document::FingerprintGroup(_) => KIND_FINGERPRINT_GROUP,
            Document::Deviation(_) => KIND_DEVIATION,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    pub name: String,
    /// `container` or `linux-service`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_time: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_timestamp: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_timestamp: Option<f64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "containerID"
    )]
    pub container_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "imageID")]
    pub image_id: Option<String>,
    /// Fields guardlab does not model, kept as read.
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Spec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_selector: Option<ContainerSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_selector: Option<ServiceSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_selector: Option<MachineSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    pub process_policy: Vec<ProcessNode>,
    pub network_policy: NetworkPolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<Response>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Audit,
    Enforce,
}

impl Mode {
    /// The word the YAML uses: `audit`, `enforce`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Audit => "audit",
            Mode::Enforce => "enforce",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "imageID")]
    pub image_id: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "containerName"
    )]
    pub container_name: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "containerID"
    )]
    pub container_id: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "machineUID"
    )]
    pub machine_uid: Option<String>,
}

/// A Kubernetes-style label selector.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelExpression>,
}

/// One of a selector's `matchExpressions`; keys spyctl ignores here are kept, as read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelExpression {
    pub key: String,
    /// `In`, `NotIn`, `Exists`, `DoesNotExist`.
    pub operator: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    /// Keys guardlab does not model, kept as read (spyctl ignores them).
    #[serde(flatten)]
    pub extra: Extra,
}

/// One node of the process forest.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProcessNode {
    pub name: String,
    /// Executable paths; globs allowed.
    pub exe: Vec<String>,
    /// Unique in the document; by convention `<name>_<n>`.
    pub id: String,
    /// Effective users; required on roots, inherited by children when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub euser: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listening_sockets: Option<Vec<PortSpec>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub children: Option<Vec<ProcessNode>>,
}

/// A policy's network rules. spyctl ignores keys it does not know here: they are kept.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkPolicy {
    pub ingress: Vec<IngressNode>,
    pub egress: Vec<EgressNode>,
    /// Keys guardlab does not model, kept as read (spyctl ignores them).
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressNode {
    #[serde(with = "serde_yaml::with::singleton_map_recursive")]
    pub from: Vec<Peer>,
    /// Process ids from `processPolicy`; empty means any process (and is not written: spyctl
    /// refuses an empty list, and reads a missing one as any process).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<String>,
    pub ports: Vec<PortSpec>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressNode {
    #[serde(with = "serde_yaml::with::singleton_map_recursive")]
    pub to: Vec<Peer>,
    /// As [`IngressNode::processes`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<String>,
    pub ports: Vec<PortSpec>,
}

/// A `to`/`from` item: an IP block or a list of DNS names.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub enum Peer {
    DnsSelector(Vec<String>),
    IpBlock(IpBlock),
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpBlock {
    pub cidr: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortSpec {
    pub protocol: String,
    pub port: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<u32>,
}

/// A policy's response. spyctl ignores keys it does not know here: they are kept.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Response {
    #[serde(with = "serde_yaml::with::singleton_map_recursive")]
    pub default: Vec<ResponseAction>,
    #[serde(default, with = "serde_yaml::with::singleton_map_recursive")]
    pub actions: Vec<ResponseAction>,
    /// Keys guardlab does not model, kept as read (spyctl ignores them).
    #[serde(flatten)]
    pub extra: Extra,
}

/// One response action; exactly one key per list item, as in the public format
/// (fields holding these use serde_yaml's `singleton_map`, so `{makeRedFlag: {...}}` and not a YAML tag).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub enum ResponseAction {
    MakeRedFlag(FlagAction),
    MakeOpsFlag(FlagAction),
    AgentKillPod(ActionSelectors),
    AgentKillProcess(ActionSelectors),
    AgentKillProcessGroup(ActionSelectors),
    AgentKillProcessTree(ActionSelectors),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Critical,
    High,
    Medium,
    Low,
    Info,
}

impl Severity {
    /// The word the YAML uses: `critical`, `high`, `medium`, `low`, `info`.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::High => "high",
            Severity::Medium => "medium",
            Severity::Low => "low",
            Severity::Info => "info",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `makeRedFlag` / `makeOpsFlag`. In `default` a flag has no selectors; an item of `actions`
/// narrows it with at least one, like the kill actions (spyctl accepts selectors on flags too).
/// Build one with [`FlagAction::new`] so that adding a field here does not break callers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FlagAction {
    pub severity: Severity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub impact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_selector: Option<ContainerSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_selector: Option<MachineSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_selector: Option<ProcessSelector>,
}

impl FlagAction {
    /// A flag of this severity with no text and no selectors (what `default` holds).
    pub fn new(severity: Severity) -> Self {
        Self {
            severity,
            impact: None,
            content: None,
            namespace_selector: None,
            pod_selector: None,
            container_selector: None,
            machine_selector: None,
            process_selector: None,
        }
    }
}

/// Selectors that narrow where an action applies. A `default` action may have none; an item
/// of `actions` needs at least one (checked by validation, not by the parser).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ActionSelectors {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_selector: Option<ContainerSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_selector: Option<MachineSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_selector: Option<ProcessSelector>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessSelector {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub name: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exe: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub euser: Vec<String>,
}

/// Fingerprints of one image, bundled.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FingerprintGroup {
    pub api_version: String,
    pub kind: String,
    pub metadata: GroupMetadata,
    pub data: GroupData,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupMetadata {
    pub image: String,
    /// Empty when the backend did not know it (then not written).
    #[serde(default, rename = "imageID", skip_serializing_if = "String::is_empty")]
    pub image_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_timestamp: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_timestamp: Option<f64>,
    /// Fields guardlab does not model (`cgroup`...), kept as read.
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GroupData {
    pub fingerprints: Vec<Fingerprint>,
    #[serde(default)]
    pub container_names: Vec<String>,
    #[serde(default, rename = "containerIDs")]
    pub container_ids: Vec<String>,
    #[serde(default)]
    pub machines: Vec<String>,
}

/// One piece of behaviour a policy does not allow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Deviation {
    pub api_version: String,
    pub kind: String,
    pub metadata: DeviationMetadata,
    pub spec: DeviationSpec,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviationType {
    Process,
    Ingress,
    Egress,
}

impl DeviationType {
    /// The word the YAML uses: `process`, `ingress`, `egress`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviationType::Process => "process",
            DeviationType::Ingress => "ingress",
            DeviationType::Egress => "egress",
        }
    }
}

impl fmt::Display for DeviationType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviationMetadata {
    #[serde(rename = "type")]
    pub kind: DeviationType,
    pub policy_uid: String,
    pub checksum: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Fields guardlab does not model, kept as read.
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeviationSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub process_policy: Vec<DeviationProcess>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy: Option<DeviationNetwork>,
}

/// A new process node hung under the policy node it grew from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeviationProcess {
    pub policy_node: PolicyNodeRef,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyNodeRef {
    /// The policy node the fragment hangs under, or [`ROOT_ANCHOR`] for a new root.
    pub id: String,
    pub children: Vec<ProcessNode>,
}

/// A deviation's network rules; keys spyctl ignores here are kept, as in [`NetworkPolicy`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviationNetwork {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<IngressNode>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<EgressNode>,
    /// Keys guardlab does not model, kept as read (spyctl ignores them).
    #[serde(flatten)]
    pub extra: Extra,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml<T: Serialize>(value: &T) -> String {
        serde_yaml::to_string(value).unwrap().trim().to_string()
    }

    /// The words Display writes are the words the YAML uses.
    #[test]
    fn display_is_the_yaml_word() {
        for m in [Mode::Audit, Mode::Enforce] {
            assert_eq!(m.to_string(), yaml(&m));
        }
        for s in [
            Severity::Critical,
            Severity::High,
            Severity::Medium,
            Severity::Low,
            Severity::Info,
        ] {
            assert_eq!(s.to_string(), yaml(&s));
        }
        for k in [
            DeviationType::Process,
            DeviationType::Ingress,
            DeviationType::Egress,
        ] {
            assert_eq!(k.to_string(), yaml(&k));
        }
    }

    #[test]
    fn a_group_without_image_id_does_not_write_one() {
        let group = GroupMetadata {
            image: "app:1".into(),
            ..GroupMetadata::default()
        };
        let text = serde_yaml::to_string(&group).unwrap();
        assert!(!text.contains("imageID"), "{text}");
        let back: GroupMetadata = serde_yaml::from_str(&text).unwrap();
        assert_eq!(back, group);
    }
}
