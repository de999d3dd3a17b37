//! spyctl's documents (policies, fingerprints, baselines, fingerprint groups, deviations) and
//! its list of documents.

use super::parts::{
    CLUSTER_SELECTOR, CONTAINER_SELECTOR, DEVIATION_NETWORK_POLICY, LABELS, NETWORK_POLICY,
    PROCESS_NODE, RESPONSE, SPEC_SELECTORS,
};
use super::*;

pub(in crate::document::spyctl) static METADATA: Model = Model {
    name: "GuardianMetadataModel",
    fields: &[
        req("name", STR),
        req("type", Ty::Lit(DOCUMENT_TYPES)),
        opt("creationTimestamp", Ty::Stamp),
        opt("firstTimestamp", Ty::Stamp),
        opt("latestTimestamp", Ty::Stamp),
        opt("uid", STR),
        opt("selectorHash", STR),
    ],
    extra: Extra::Ignore,
    after: &[],
    id_scope: false,
};

pub(in crate::document::spyctl) const PROCESS_FOREST: Ty = Ty::List {
    item: &Ty::Model(&PROCESS_NODE),
    min: 0,
    max: None,
};

pub(in crate::document::spyctl) static POLICY_SPEC: Model = Model {
    name: "GuardianPolicySpecModel",
    fields: &[
        opt("enabled", Ty::Bool),
        req("mode", Ty::Lit(&["enforce", "audit"])),
        SPEC_SELECTORS[6],
        SPEC_SELECTORS[7],
        SPEC_SELECTORS[8],
        SPEC_SELECTORS[9],
        SPEC_SELECTORS[0],
        SPEC_SELECTORS[1],
        SPEC_SELECTORS[2],
        SPEC_SELECTORS[3],
        SPEC_SELECTORS[4],
        SPEC_SELECTORS[5],
        req("processPolicy", PROCESS_FOREST),
        req("networkPolicy", model(&NETWORK_POLICY)),
        req("response", model(&RESPONSE)),
    ],
    extra: Extra::Forbid,
    after: &[],
    id_scope: true,
};

pub(in crate::document::spyctl) static BASELINE_SPEC: Model = Model {
    name: "GuardianBaselineSpecModel",
    fields: &[
        SPEC_SELECTORS[6],
        SPEC_SELECTORS[7],
        SPEC_SELECTORS[8],
        SPEC_SELECTORS[9],
        SPEC_SELECTORS[0],
        SPEC_SELECTORS[1],
        SPEC_SELECTORS[2],
        SPEC_SELECTORS[3],
        SPEC_SELECTORS[4],
        SPEC_SELECTORS[5],
        req("processPolicy", PROCESS_FOREST),
        req("networkPolicy", model(&NETWORK_POLICY)),
    ],
    extra: Extra::Forbid,
    after: &[],
    id_scope: true,
};

pub(in crate::document::spyctl) static POLICY: Model = Model {
    name: "GuardianPolicyModel",
    fields: &[
        req("apiVersion", STR),
        req("kind", Ty::Lit(&["SpyderbatPolicy"])),
        req("metadata", model(&METADATA)),
        req("spec", model(&POLICY_SPEC)),
    ],
    extra: Extra::Forbid,
    after: &[After::SelectorForType],
    id_scope: false,
};

pub(in crate::document::spyctl) static FINGERPRINT: Model = Model {
    name: "GuardianFingerprintModel",
    fields: &[
        req("apiVersion", STR),
        req("kind", Ty::Lit(&["SpyderbatFingerprint"])),
        req("metadata", model(&METADATA)),
        req("spec", model(&BASELINE_SPEC)),
    ],
    extra: Extra::Forbid,
    after: &[After::SelectorForType],
    id_scope: false,
};

pub(in crate::document::spyctl) static BASELINE: Model = Model {
    name: "GuardianBaselineModel",
    fields: &[
        req("apiVersion", STR),
        req("kind", Ty::Lit(&[KIND_BASELINE])),
        req("metadata", model(&METADATA)),
        req("spec", model(&BASELINE_SPEC)),
    ],
    extra: Extra::Ignore,
    after: &[After::SelectorForType],
    id_scope: false,
};

pub(in crate::document::spyctl) static GROUP_METADATA: Model = Model {
    name: "GuardianFingerprintGroupMetadataModel",
    fields: &[
        opt("image", STR),
        opt("imageID", STR),
        opt("cgroup", STR),
        opt("firstTimestamp", Ty::Number),
        opt("latestTimestamp", Ty::Number),
    ],
    extra: Extra::Ignore,
    after: &[],
    id_scope: false,
};

pub(in crate::document::spyctl) static GROUP_DATA: Model = Model {
    name: "FingerprintGroupDataModel",
    fields: &[
        req(
            "fingerprints",
            Ty::List {
                item: &Ty::Model(&FINGERPRINT),
                min: 0,
                max: None,
            },
        ),
        opt("containerNames", STR_LIST),
        opt("containerIDs", STR_LIST),
        opt("machines", STR_LIST),
    ],
    extra: Extra::Forbid,
    after: &[],
    id_scope: false,
};

pub(in crate::document::spyctl) static FINGERPRINT_GROUP: Model = Model {
    name: "GuardianFingerprintGroupModel",
    fields: &[
        req("apiVersion", STR),
        req("kind", Ty::Lit(&["FingerprintGroup"])),
        req("metadata", model(&GROUP_METADATA)),
        req("data", model(&GROUP_DATA)),
    ],
    extra: Extra::Ignore,
    after: &[],
    id_scope: false,
};

pub(in crate::document::spyctl) static DEVIATION_METADATA: Model = Model {
    name: "GuardianDeviationMetadataModel",
    fields: &[
        req("type", STR),
        req("policy_uid", STR),
        req("checksum", STR),
        req("uid", STR),
    ],
    extra: Extra::Ignore,
    after: &[],
    id_scope: false,
};

pub(in crate::document::spyctl) static POLICY_NODE: Model = Model {
    name: "GuardDeviationProcessNodeModel",
    fields: &[req("id", Ty::ProcessId), opt("children", PROCESS_FOREST)],
    extra: Extra::Forbid,
    after: &[],
    id_scope: false,
};

pub(in crate::document::spyctl) static DEVIATION_NODE: Model = Model {
    name: "GuardDeviationNodeModel",
    fields: &[req("policyNode", model(&POLICY_NODE))],
    extra: Extra::Forbid,
    after: &[],
    id_scope: false,
};

pub(in crate::document::spyctl) static CONTAINER_RULE: Model = Model {
    name: "ContainerRule",
    fields: &[
        req(
            "target",
            Ty::Lit(&[
                "container::image",
                "container::imageID",
                "container::containerName",
                "container::containerID",
            ]),
        ),
        req("verb", Ty::Lit(&["allow", "deny"])),
        req("values", STR_LIST),
        opt("clusterSelector", model(&CLUSTER_SELECTOR)),
        opt("namespaceSelector", model(&LABELS)),
        opt("podSelector", model(&LABELS)),
        opt("containerSelector", model(&CONTAINER_SELECTOR)),
    ],
    extra: Extra::Ignore,
    after: &[],
    id_scope: false,
};

pub(in crate::document::spyctl) static DEVIATION_SPEC: Model = Model {
    name: "GuardianDeviationSpecModel",
    fields: &[
        SPEC_SELECTORS[6],
        SPEC_SELECTORS[7],
        SPEC_SELECTORS[8],
        SPEC_SELECTORS[9],
        SPEC_SELECTORS[0],
        SPEC_SELECTORS[1],
        SPEC_SELECTORS[2],
        SPEC_SELECTORS[3],
        SPEC_SELECTORS[4],
        SPEC_SELECTORS[5],
        opt(
            "processPolicy",
            Ty::List {
                item: &Ty::Union(&[model(&PROCESS_NODE), model(&DEVIATION_NODE)]),
                min: 0,
                max: None,
            },
        ),
        opt("networkPolicy", model(&DEVIATION_NETWORK_POLICY)),
        opt(
            "rules",
            Ty::List {
                item: &Ty::Model(&CONTAINER_RULE),
                min: 0,
                max: None,
            },
        ),
        opt("matches", Ty::AnyDict),
    ],
    extra: Extra::Forbid,
    after: &[],
    id_scope: true,
};

pub(in crate::document::spyctl) static DEVIATION: Model = Model {
    name: "GuardianDeviationModel",
    fields: &[
        req("apiVersion", STR),
        req("kind", Ty::Lit(&["GuardianDeviation"])),
        req("metadata", model(&DEVIATION_METADATA)),
        req("spec", model(&DEVIATION_SPEC)),
    ],
    extra: Extra::Ignore,
    after: &[],
    id_scope: false,
};

/// `GuardianObjectModel`, one of the two shapes an item of a list may have.
pub(in crate::document::spyctl) static OBJECT: Model = Model {
    name: "GuardianObjectModel",
    fields: &[
        req("apiVersion", STR),
        req("kind", STR),
        req("metadata", Ty::StrDict),
        req("spec", Ty::AnyDict),
    ],
    extra: Extra::Ignore,
    after: &[],
    id_scope: false,
};

/// `GuardianObjectListModel`: `{apiVersion, items}`, each item checked again on its own.
pub(in crate::document::spyctl) static OBJECT_LIST: Model = Model {
    name: "GuardianObjectListModel",
    fields: &[
        req("apiVersion", STR),
        req(
            "items",
            Ty::List {
                item: &Ty::Union(&[model(&OBJECT), model(&FINGERPRINT_GROUP)]),
                min: 0,
                max: None,
            },
        ),
    ],
    extra: Extra::Ignore,
    after: &[],
    id_scope: false,
};
