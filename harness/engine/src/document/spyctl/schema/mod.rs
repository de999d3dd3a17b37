//! spyctl 0.24.2's models of the guardian documents, as data: what each mapping may hold,
//! of which type, which fields are required, whether other keys are refused or ignored, and
//! the checks that run once a mapping's fields are valid.
//!
//! Read from spyctl's `spyctl/schemas_v2.py` (pydantic 2 models) and the field names in
//! `spyctl/spyctl_lib.py`; written here as the rules they state, not as their code.
//! [`parts`] holds the models documents are made of (selectors, process nodes, network rules,
//! response actions), [`documents`] the documents and spyctl's list of them.

mod documents;
mod parts;

pub(in crate::document::spyctl) use documents::{
    BASELINE, DEVIATION, FINGERPRINT, FINGERPRINT_GROUP, OBJECT_LIST, POLICY,
};
pub(in crate::document::spyctl) use parts::SELECTOR_EXPRESSION;

/// What pydantic accepts for a field (in lax mode, as spyctl validates).
#[derive(Clone, Copy, Debug)]
pub(in crate::document::spyctl) enum Ty {
    /// `str`, at most this many characters when given.
    Str {
        max_len: Option<usize>,
    },
    /// `int` within bounds (a bool, an integral float and a numeric string pass).
    Int {
        min: i64,
        max: i64,
    },
    /// `bool` (0/1 and words such as `yes`, `off`, `t` pass).
    Bool,
    /// `Union[int, float]`.
    Number,
    /// `Union[int, float, str]`: the timestamps of metadata.
    Stamp,
    /// `Literal[...]` of strings.
    Lit(&'static [&'static str]),
    /// `IPvAnyNetwork`: an address or a network without host bits.
    Network,
    /// `Dict` of anything.
    AnyDict,
    /// `Dict[str, str]`.
    StrDict,
    /// `Union[str, List[str]]`.
    StrOrStrList,
    /// `List[item]`, with a length between `min` and `max`.
    List {
        item: &'static Ty,
        min: usize,
        max: Option<usize>,
    },
    Model(&'static Model),
    /// The first member that accepts the value.
    Union(&'static [Ty]),
    /// A process node's `id`: a string, unique in the document's process forest.
    ProcessId,
    /// A network rule's `processes`: at least one, each a process id of the document.
    ProcessRefs,
    /// `matchFields`: `Dict[str, str]` whose keys are among these.
    MatchFields(&'static [&'static str]),
    /// `matchFieldsExpressions`: at least one selector expression whose `key` is among these.
    MatchFieldsExpressions(&'static [&'static str]),
}

/// What a model does with keys it does not declare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::document::spyctl) enum Extra {
    Forbid,
    Ignore,
}

/// A check that runs once all of a model's fields are valid (pydantic's `model_validator`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::document::spyctl) enum After {
    /// A selector expression: `In`/`NotIn` need values, `Exists`/`DoesNotExist` take none.
    ExpressionValues,
    /// A label selector needs `matchLabels` or `matchExpressions` with something in it.
    NeedsLabels,
    /// A process selector needs at least one field that is not null.
    NeedsOneField,
    /// A non-default action has at least one selector, and every selector has a value.
    ActionSelectors,
    /// An item of `default` or `actions` holds at most one action.
    OneAction,
    /// An item of `actions` holds an action that is not null.
    NonNullAction,
    /// A document of type `container` has a `containerSelector`, `linux-service` a
    /// `serviceSelector`, `cluster` a `clusterSelector`.
    SelectorForType,
}

#[derive(Clone, Copy, Debug)]
pub(in crate::document::spyctl) struct Field {
    pub key: &'static str,
    pub ty: Ty,
    /// Required fields may not be null either; the others may be absent or null.
    pub required: bool,
}

#[derive(Debug)]
pub(in crate::document::spyctl) struct Model {
    pub name: &'static str,
    pub fields: &'static [Field],
    pub extra: Extra,
    pub after: &'static [After],
    /// Its process ids form one set (the spec models): ids are unique within it and network
    /// rules refer to them.
    pub id_scope: bool,
}

impl Model {
    pub fn field(&self, key: &str) -> Option<&'static Field> {
        self.fields.iter().find(|f| f.key == key)
    }
}

const fn req(key: &'static str, ty: Ty) -> Field {
    Field {
        key,
        ty,
        required: true,
    }
}

const fn opt(key: &'static str, ty: Ty) -> Field {
    Field {
        key,
        ty,
        required: false,
    }
}

const STR: Ty = Ty::Str { max_len: None };
const STR_LIST: Ty = Ty::List {
    item: &STR,
    min: 0,
    max: None,
};
const STR_LIST_1: Ty = Ty::List {
    item: &STR,
    min: 1,
    max: None,
};

pub(in crate::document::spyctl) const KIND_BASELINE: &str = "SpyderbatBaseline";
pub(in crate::document::spyctl) const SEVERITIES: &[&str] =
    &["critical", "high", "medium", "low", "info"];
pub(in crate::document::spyctl) const DOCUMENT_TYPES: &[&str] =
    &["container", "linux-service", "cluster"];
const DISABLE_PROCESSES: &[&str] = &["all"];
const DISABLE_CONNECTIONS: &[&str] = &["all", "egress", "ingress"];

const CONTAINER_FIELDS: &[&str] = &["image", "imageID", "containerName", "containerID"];
const SERVICE_FIELDS: &[&str] = &["cgroup", "name"];
const CLUSTER_FIELDS: &[&str] = &["name", "uid"];
const MACHINE_FIELDS: &[&str] = &["hostname", "sourceName", "uid"];
const PROCESS_FIELDS: &[&str] = &["name", "exe", "euser"];

const fn model(m: &'static Model) -> Ty {
    Ty::Model(m)
}

/// The model spyctl validates a document of `kind` (and `metadata.type`) with: `None` for a
/// kind spyctl has another schema for (cluster and trace policies, notification targets...),
/// which guardlab does not check.
pub(in crate::document::spyctl) fn model_for(
    kind: &str,
    doc_type: Option<&str>,
) -> Option<&'static Model> {
    match (kind, doc_type) {
        ("SpyderbatPolicy", Some("cluster" | "trace")) => None,
        ("SpyderbatPolicy", _) => Some(&POLICY),
        ("SpyderbatFingerprint", _) => Some(&FINGERPRINT),
        (KIND_BASELINE, _) => Some(&BASELINE),
        ("FingerprintGroup", _) => Some(&FINGERPRINT_GROUP),
        ("GuardianDeviation", _) => Some(&DEVIATION),
        _ => None,
    }
}

/// The kinds spyctl has a schema for that guardlab does not check.
pub(in crate::document::spyctl) const OTHER_SPYCTL_KINDS: &[&str] = &[
    "Config",
    "APISecret",
    "UidList",
    "NotificationTarget",
    "NotificationTemplate",
    "SpyderbatRuleset",
    "SpyderbatSavedQuery",
    "SpyderbatSearchSet",
    "SpyderbatCustomFlag",
    "AgentHealthNotification",
];
