//! Policies: made from fingerprints, switched between modes, enabled and disabled.
//!
//! [`create_policy`] merges fingerprints of one workload symmetrically (see
//! [`crate::merge`]) into a `SpyderbatPolicy`: `containerSelector.imageID` dropped (a pinned
//! image id stops matching after a rebuild), the fingerprint's container facts and timestamps
//! left out of the metadata but `latestTimestamp`, `enabled: true`, the mode asked for (audit
//! by default at the CLI), and the default response `makeRedFlag: {severity: high}` with no
//! actions.
//!
//! A policy's uid, which deviations are filed under, is [`policy_uid`] (see [`crate::names`]).

use crate::canonical::canonicalize;
pub use crate::error::PolicyError;
use crate::merge::symmetric_merge;
use crate::model::{
    API_VERSION, ActionSelectors, Document, FlagAction, GuardDocument, KIND_FINGERPRINT,
    KIND_POLICY, Metadata, Mode, Policy, Response, ResponseAction, Severity,
};
use crate::names::image_short_name;
pub use crate::names::policy_uid;

/// The response a new policy gets: a high red flag, no actions.
pub fn default_response() -> Response {
    Response {
        default: vec![ResponseAction::MakeRedFlag(FlagAction::new(Severity::High))],
        actions: Vec::new(),
        ..Response::default()
    }
}

/// The mode a policy is in; a policy written before modes existed is audited.
pub fn mode(policy: &Policy) -> Mode {
    policy.spec.mode.unwrap_or(Mode::Audit)
}

/// True unless the policy says `enabled: false`.
pub fn is_enabled(policy: &Policy) -> bool {
    policy.spec.enabled.unwrap_or(true)
}

/// A policy's status, as the console's word for it (`Display` and serde give the word).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum PolicyStatus {
    #[serde(rename = "Enforcing")]
    Enforcing,
    #[serde(rename = "Auditing")]
    Auditing,
    #[serde(rename = "Disabled")]
    Disabled,
    /// Enabled, but it selects no container of the stream, so it checked nothing.
    #[serde(rename = "Not Applied")]
    NotApplied,
}

impl PolicyStatus {
    /// The public word: `Enforcing`, `Auditing`, `Disabled` or `Not Applied`.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyStatus::Enforcing => "Enforcing",
            PolicyStatus::Auditing => "Auditing",
            PolicyStatus::Disabled => "Disabled",
            PolicyStatus::NotApplied => "Not Applied",
        }
    }
}

impl std::fmt::Display for PolicyStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The status of a policy as written: `Enforcing`, `Auditing` or `Disabled`.
pub fn status(policy: &Policy) -> PolicyStatus {
    match (is_enabled(policy), mode(policy)) {
        (false, _) => PolicyStatus::Disabled,
        (true, Mode::Enforce) => PolicyStatus::Enforcing,
        (true, Mode::Audit) => PolicyStatus::Auditing,
    }
}

/// The status of a policy over an event stream: as [`status`], but
/// [`PolicyStatus::NotApplied`] when it is enabled and `selects_any` is false (its selectors
/// matched no container of the stream, so it checked nothing).
pub fn status_in_stream(policy: &Policy, selects_any: bool) -> PolicyStatus {
    if is_enabled(policy) && !selects_any {
        PolicyStatus::NotApplied
    } else {
        status(policy)
    }
}

pub fn set_mode(policy: &mut Policy, mode: Mode) {
    policy.spec.mode = Some(mode);
}

pub fn set_enabled(policy: &mut Policy, enabled: bool) {
    policy.spec.enabled = Some(enabled);
}

/// The kill a policy's response may take for a deviation of its own containers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum KillAction {
    AgentKillProcess,
    AgentKillProcessGroup,
    AgentKillProcessTree,
    AgentKillPod,
}

/// Add `kill` to the policy's response actions, for the containers the policy selects (an
/// action needs a selector: the policy's own container selector, else its pod's and
/// namespace's). Adding one that is there already changes nothing.
pub fn add_kill_action(policy: &mut Policy, kill: KillAction) {
    let selectors = ActionSelectors {
        namespace_selector: policy.spec.namespace_selector.clone(),
        pod_selector: policy.spec.pod_selector.clone(),
        container_selector: policy.spec.container_selector.clone(),
        ..ActionSelectors::default()
    };
    let action = match kill {
        KillAction::AgentKillProcess => ResponseAction::AgentKillProcess(selectors),
        KillAction::AgentKillProcessGroup => ResponseAction::AgentKillProcessGroup(selectors),
        KillAction::AgentKillProcessTree => ResponseAction::AgentKillProcessTree(selectors),
        KillAction::AgentKillPod => ResponseAction::AgentKillPod(selectors),
    };
    let response = policy.spec.response.get_or_insert_with(default_response);
    if !response.actions.contains(&action) {
        response.actions.push(action);
    }
}

/// Make a policy from fingerprints of one workload (see the module documentation).
///
/// The fingerprints are merged in a fixed order (image, namespace, container name, container
/// id, first timestamp), so the result does not depend on the order they are given in.
/// `name` defaults to `<image short name>-policy`.
pub fn create_policy(
    fingerprints: &[GuardDocument],
    name: Option<&str>,
    mode: Mode,
) -> Result<Policy, PolicyError> {
    if let Some(fp) = fingerprints.iter().find(|f| f.kind != KIND_FINGERPRINT) {
        return Err(PolicyError::WrongKind {
            expected: KIND_FINGERPRINT.into(),
            found: fp.kind.clone(),
            name: fp.metadata.name.clone(),
        });
    }
    let mut sorted: Vec<&GuardDocument> = fingerprints.iter().collect();
    sorted.sort_by(|a, b| {
        order_key(a)
            .partial_cmp(&order_key(b))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let (first, rest) = sorted.split_first().ok_or(PolicyError::NoFingerprints)?;
    let mut merged = (*first).clone();
    canonicalize(&mut merged);
    for fp in rest {
        merged = symmetric_merge(&merged, fp)?;
    }

    let image = merged
        .spec
        .container_selector
        .as_ref()
        .and_then(|c| c.image.clone())
        .unwrap_or_default();
    let name = match name {
        Some(n) => n.to_string(),
        None => {
            let short = image_short_name(&image);
            let short = if short.is_empty() || short.contains('*') {
                merged.metadata.name.as_str()
            } else {
                short
            };
            format!("{short}-policy")
        }
    };
    let mut spec = merged.spec;
    if let Some(sel) = spec.container_selector.as_mut() {
        sel.image_id = None;
    }
    spec.enabled = Some(true);
    spec.mode = Some(mode);
    spec.response = Some(default_response());
    let mut policy = Policy {
        api_version: API_VERSION.into(),
        kind: KIND_POLICY.into(),
        metadata: Metadata {
            name,
            kind: if merged.metadata.kind.is_empty() {
                "container".into()
            } else {
                merged.metadata.kind
            },
            latest_timestamp: merged.metadata.latest_timestamp,
            ..Metadata::default()
        },
        spec,
    };
    canonicalize(&mut policy);
    Ok(policy)
}

/// [`create_policy`] from parsed documents, as `guardlab policy create --from` reads them:
/// fingerprints and the fingerprints of groups; any other kind is refused.
pub fn create_policy_from(
    documents: &[Document],
    name: Option<&str>,
    mode: Mode,
) -> Result<Policy, PolicyError> {
    let mut fingerprints = Vec::new();
    for doc in documents {
        match doc {
            Document::Fingerprint(fp) => fingerprints.push(fp.clone()),
            Document::FingerprintGroup(group) => {
                fingerprints.extend(group.data.fingerprints.iter().cloned())
            }
            Document::Policy(p) => {
                return Err(PolicyError::WrongKind {
                    expected: KIND_FINGERPRINT.into(),
                    found: KIND_POLICY.into(),
                    name: p.metadata.name.clone(),
                });
            }
            Document::Deviation(d) => {
                return Err(PolicyError::WrongKind {
                    expected: KIND_FINGERPRINT.into(),
                    found: d.kind.clone(),
                    name: d
                        .metadata
                        .uid
                        .clone()
                        .unwrap_or_else(|| d.metadata.checksum.clone()),
                });
            }
        }
    }
    create_policy(&fingerprints, name, mode)
}

fn order_key(fp: &GuardDocument) -> (String, String, String, String, f64) {
    let m = &fp.metadata;
    (
        fp.spec
            .container_selector
            .as_ref()
            .and_then(|c| c.image.clone())
            .unwrap_or_default(),
        m.namespace.clone().unwrap_or_default(),
        m.container_name.clone().unwrap_or_default(),
        m.container_id.clone().unwrap_or_default(),
        m.first_timestamp.unwrap_or(0.0),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_kill_action_is_added_once_for_the_policys_own_containers() {
        let fp = crate::fingerprint::fingerprints(
            &guardlab_test_support::notebook::baseline(&guardlab_test_support::notebook::FIRST)
                .s
                .events,
        );
        let mut policy = super::create_policy(&fp, None, super::Mode::Enforce).unwrap();
        super::add_kill_action(&mut policy, super::KillAction::AgentKillProcess);
        super::add_kill_action(&mut policy, super::KillAction::AgentKillProcess);
        let actions = &policy.spec.response.as_ref().unwrap().actions;
        assert_eq!(actions.len(), 1);
        let super::ResponseAction::AgentKillProcess(selectors) = &actions[0] else {
            panic!("{actions:?}")
        };
        assert_eq!(selectors.container_selector, policy.spec.container_selector);
        assert!(
            selectors.container_selector.is_some(),
            "an action needs a selector"
        );
        assert!(
            crate::validate::validate(&crate::model::Document::Policy(policy.clone())).is_empty()
        );
    }

    use super::*;
    use crate::model::{ContainerSelector, LabelSelector, NetworkPolicy, ProcessNode, Spec};

    fn fingerprint(image: &str, container: &str, root: ProcessNode) -> GuardDocument {
        GuardDocument {
            api_version: API_VERSION.into(),
            kind: KIND_FINGERPRINT.into(),
            metadata: Metadata {
                name: image_short_name(image).into(),
                kind: "container".into(),
                container_name: Some(container.into()),
                container_id: Some(format!("{container}-id")),
                first_timestamp: Some(10.0),
                latest_timestamp: Some(20.0),
                ..Metadata::default()
            },
            spec: Spec {
                container_selector: Some(ContainerSelector {
                    image: Some(image.into()),
                    image_id: Some("sha256:abc".into()),
                    ..ContainerSelector::default()
                }),
                namespace_selector: Some(LabelSelector {
                    match_labels: [(
                        "kubernetes.io/metadata.name".to_string(),
                        "cryptominer".to_string(),
                    )]
                    .into(),
                    ..LabelSelector::default()
                }),
                process_policy: vec![root],
                network_policy: NetworkPolicy::default(),
                ..Spec::default()
            },
        }
    }

    fn node(name: &str, exe: &str, id: &str) -> ProcessNode {
        ProcessNode {
            name: name.into(),
            exe: vec![exe.into()],
            id: id.into(),
            euser: Some(vec!["jovyan".into()]),
            ..ProcessNode::default()
        }
    }

    #[test]
    fn a_new_policy_audits_with_a_high_red_flag_and_no_image_id() {
        let fp = fingerprint(
            "jupyter/minimal-notebook:latest",
            "notebook",
            node("python3", "/opt/conda/bin/python3.11", "python3_0"),
        );
        let policy = create_policy(&[fp], None, Mode::Audit).unwrap();
        assert_eq!(policy.kind, KIND_POLICY);
        assert_eq!(policy.metadata.name, "minimal-notebook-policy");
        assert_eq!(
            policy.metadata.container_name, None,
            "container facts are not policy metadata"
        );
        assert_eq!(policy.metadata.latest_timestamp, Some(20.0));
        assert_eq!(policy.spec.enabled, Some(true));
        assert_eq!(policy.spec.mode, Some(Mode::Audit));
        assert_eq!(policy.spec.response, Some(default_response()));
        let sel = policy.spec.container_selector.unwrap();
        assert_eq!(
            sel.image.as_deref(),
            Some("jupyter/minimal-notebook:latest")
        );
        assert_eq!(sel.image_id, None);
        assert!(policy.spec.namespace_selector.is_some());
    }

    #[test]
    fn the_name_and_mode_can_be_given() {
        let fp = fingerprint(
            "nginx:1",
            "web",
            node("nginx", "/usr/sbin/nginx", "nginx_0"),
        );
        let policy = create_policy(&[fp], Some("web-policy"), Mode::Enforce).unwrap();
        assert_eq!(policy.metadata.name, "web-policy");
        assert_eq!(status(&policy), PolicyStatus::Enforcing);
    }

    #[test]
    fn the_input_order_does_not_matter() {
        let a = fingerprint("app:1", "a", node("sh", "/bin/sh", "sh_0"));
        let b = fingerprint("app:1", "b", node("bash", "/bin/bash", "bash_0"));
        let ab = create_policy(&[a.clone(), b.clone()], None, Mode::Audit).unwrap();
        let ba = create_policy(&[b, a], None, Mode::Audit).unwrap();
        assert_eq!(ab, ba);
        assert_eq!(ab.spec.process_policy.len(), 2);
    }

    #[test]
    fn images_without_a_common_wildcard_are_refused() {
        let a = fingerprint("redis:7", "a", node("redis", "/usr/bin/redis", "redis_0"));
        let b = fingerprint("nginx:1", "b", node("nginx", "/usr/sbin/nginx", "nginx_0"));
        let err = create_policy(&[a, b], None, Mode::Audit).unwrap_err();
        assert!(matches!(err, PolicyError::ImageMismatch { .. }), "{err}");
        assert!(err.to_string().contains("redis:7"), "{err}");
    }

    #[test]
    fn images_of_different_repositories_are_refused() {
        let a = fingerprint(
            "jupyter/minimal-notebook:latest",
            "a",
            node("python3", "/opt/conda/bin/python3.11", "python3_0"),
        );
        let b = fingerprint(
            "jupyter/scipy-notebook:latest",
            "b",
            node("python3", "/opt/conda/bin/python3.11", "python3_0"),
        );
        let err = create_policy(&[a, b], None, Mode::Audit).unwrap_err();
        let PolicyError::ImageMismatch { first, second } = &err else {
            panic!("{err}");
        };
        assert_eq!(
            (first.as_str(), second.as_str()),
            (
                "jupyter/minimal-notebook:latest",
                "jupyter/scipy-notebook:latest"
            )
        );
        let text = err.to_string();
        assert!(
            text.contains("jupyter/minimal-notebook:latest")
                && text.contains("jupyter/scipy-notebook:latest"),
            "{text}"
        );
    }

    #[test]
    fn only_the_tag_of_one_repository_becomes_a_wildcard() {
        let image = |a: &str, b: &str| {
            let fa = fingerprint(a, "a", node("sh", "/bin/sh", "sh_0"));
            let fb = fingerprint(b, "b", node("sh", "/bin/sh", "sh_0"));
            create_policy(&[fa, fb], None, Mode::Audit)
                .map(|p| p.spec.container_selector.unwrap().image.unwrap())
                .map_err(|e| e.to_string())
        };
        assert_eq!(
            image("nginx:1.27.1", "nginx:1.27.2").unwrap(),
            "nginx:1.27.*"
        );
        assert_eq!(image("nginx:1.27", "nginx:latest").unwrap(), "nginx:*");
        assert_eq!(
            image("nginx", "nginx:latest").unwrap(),
            "nginx:latest",
            "no tag means latest"
        );
        assert_eq!(
            image("docker.io/library/nginx:1", "nginx:2").unwrap(),
            "docker.io/library/nginx:*",
            "the default registry's forms are one repository"
        );
        assert_eq!(
            image("localhost:5000/lab/app:1", "localhost:5000/lab/app:2").unwrap(),
            "localhost:5000/lab/app:*",
            "a registry's port is no tag"
        );
        assert_eq!(
            image("app@sha256:aaaa", "app@sha256:bbbb").unwrap(),
            "app@*"
        );
        assert_eq!(
            image("app:1@sha256:aaaa", "app:1@sha256:bbbb").unwrap(),
            "app:1"
        );
        assert_eq!(image("app:1", "app@sha256:bbbb").unwrap(), "app[:@]*");
        assert!(image("localhost:5000/app:1", "localhost:5001/app:1").is_err());
        assert!(image("jupyter/minimal-notebook:x", "jupyter/minimal-notebook-2:x").is_err());
    }

    #[test]
    fn tags_of_one_image_merge_to_a_wildcard() {
        let a = fingerprint(
            "jupyter/minimal-notebook:2024-01",
            "a",
            node("python3", "/opt/conda/bin/python3.11", "python3_0"),
        );
        let b = fingerprint(
            "jupyter/minimal-notebook:2024-02",
            "b",
            node("python3", "/opt/conda/bin/python3.11", "python3_0"),
        );
        let policy = create_policy(&[a, b], None, Mode::Audit).unwrap();
        assert_eq!(
            policy.spec.container_selector.unwrap().image.as_deref(),
            Some("jupyter/minimal-notebook:2024-0*")
        );
        assert_eq!(policy.metadata.name, "minimal-notebook-policy");
    }

    #[test]
    fn only_fingerprints_make_policies() {
        let mut fp = fingerprint("app:1", "a", node("sh", "/bin/sh", "sh_0"));
        fp.kind = KIND_POLICY.into();
        assert!(matches!(
            create_policy(&[fp], None, Mode::Audit),
            Err(PolicyError::WrongKind { .. })
        ));
        assert!(matches!(
            create_policy(&[], None, Mode::Audit),
            Err(PolicyError::NoFingerprints)
        ));
    }

    #[test]
    fn uids_come_from_metadata_or_from_the_name() {
        let mut p = fingerprint("app:1", "a", node("sh", "/bin/sh", "sh_0"));
        p.metadata.name = "jupyter-policy".into();
        let derived = policy_uid(&p);
        assert!(
            derived.starts_with("pol:") && derived.len() == 20,
            "{derived}"
        );
        assert_eq!(derived, policy_uid(&p.clone()), "stable");
        p.metadata.uid = Some("pol:given".into());
        assert_eq!(policy_uid(&p), "pol:given");
    }

    #[test]
    fn modes_and_enabling() {
        let fp = fingerprint("app:1", "a", node("sh", "/bin/sh", "sh_0"));
        let mut policy = create_policy(&[fp], None, Mode::Audit).unwrap();
        assert_eq!(status(&policy), PolicyStatus::Auditing);
        set_mode(&mut policy, Mode::Enforce);
        assert_eq!(mode(&policy), Mode::Enforce);
        set_enabled(&mut policy, false);
        assert_eq!(status(&policy), PolicyStatus::Disabled);
        policy.spec.mode = None;
        policy.spec.enabled = None;
        assert_eq!(
            status(&policy),
            PolicyStatus::Auditing,
            "no mode means audit, no enabled means enabled"
        );
    }
}
