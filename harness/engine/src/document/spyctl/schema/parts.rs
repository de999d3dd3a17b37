//! The models spyctl's documents are made of: selectors, process nodes, network rules and
//! response actions.

use super::*;

pub(in crate::document::spyctl) static SELECTOR_EXPRESSION: Model = Model {
    name: "SelectorExpression",
    fields: &[
        req("key", STR),
        req(
            "operator",
            Ty::Lit(&["In", "NotIn", "Exists", "DoesNotExist"]),
        ),
        opt("values", STR_LIST),
    ],
    extra: Extra::Ignore,
    after: &[After::ExpressionValues],
    id_scope: false,
};

pub(in crate::document::spyctl) const EXPRESSIONS: Ty = Ty::List {
    item: &Ty::Model(&SELECTOR_EXPRESSION),
    min: 1,
    max: None,
};

pub(in crate::document::spyctl) static LABELS: Model = Model {
    name: "LabelsMatchModel",
    fields: &[
        opt("matchLabels", Ty::StrDict),
        opt("matchExpressions", EXPRESSIONS),
    ],
    extra: Extra::Forbid,
    after: &[After::NeedsLabels],
    id_scope: false,
};

/// The fields every "match fields" selector has, for its own set of field names.
macro_rules! match_fields {
    ($valid:expr) => {
        [
            opt("matchFields", Ty::MatchFields($valid)),
            opt("matchFieldsExpressions", Ty::MatchFieldsExpressions($valid)),
            // Declared without an alias in spyctl (to list the field names in its schemas),
            // so a document may carry it under this very name.
            opt("valid_fields", Ty::Lit($valid)),
        ]
    };
}

pub(in crate::document::spyctl) const CONTAINER_MATCH: [Field; 3] = match_fields!(CONTAINER_FIELDS);
pub(in crate::document::spyctl) static CONTAINER_SELECTOR: Model = Model {
    name: "ContainerSelectorModel",
    fields: &[
        CONTAINER_MATCH[0],
        CONTAINER_MATCH[1],
        CONTAINER_MATCH[2],
        opt("image", STR),
        opt("imageID", STR),
        opt("containerName", STR),
        opt("containerID", STR),
    ],
    extra: Extra::Forbid,
    after: &[],
    id_scope: false,
};

pub(in crate::document::spyctl) const SERVICE_MATCH: [Field; 3] = match_fields!(SERVICE_FIELDS);
pub(in crate::document::spyctl) static SERVICE_SELECTOR: Model = Model {
    name: "ServiceSelectorModel",
    fields: &[
        SERVICE_MATCH[0],
        SERVICE_MATCH[1],
        SERVICE_MATCH[2],
        opt("cgroup", STR),
    ],
    extra: Extra::Forbid,
    after: &[],
    id_scope: false,
};

pub(in crate::document::spyctl) const CLUSTER_MATCH: [Field; 3] = match_fields!(CLUSTER_FIELDS);
pub(in crate::document::spyctl) static CLUSTER_SELECTOR: Model = Model {
    name: "ClusterSelectorModel",
    fields: &[CLUSTER_MATCH[0], CLUSTER_MATCH[1], CLUSTER_MATCH[2]],
    extra: Extra::Forbid,
    after: &[],
    id_scope: false,
};

pub(in crate::document::spyctl) const MACHINE_MATCH: [Field; 3] = match_fields!(MACHINE_FIELDS);
pub(in crate::document::spyctl) static MACHINE_SELECTOR: Model = Model {
    name: "MachineSelectorModel",
    fields: &[
        MACHINE_MATCH[0],
        MACHINE_MATCH[1],
        MACHINE_MATCH[2],
        opt("hostname", Ty::StrOrStrList),
        opt("machineUID", Ty::StrOrStrList),
    ],
    extra: Extra::Forbid,
    after: &[],
    id_scope: false,
};

pub(in crate::document::spyctl) const PROCESS_MATCH: [Field; 3] = match_fields!(PROCESS_FIELDS);
pub(in crate::document::spyctl) static PROCESS_SELECTOR: Model = Model {
    name: "ProcessSelectorModel",
    fields: &[
        PROCESS_MATCH[0],
        PROCESS_MATCH[1],
        PROCESS_MATCH[2],
        opt("name", STR_LIST_1),
        opt("exe", STR_LIST_1),
        opt("euser", STR_LIST_1),
    ],
    extra: Extra::Forbid,
    after: &[After::NeedsOneField],
    id_scope: false,
};

/// (`GuardianSpecOptionsModel`).
pub(in crate::document::spyctl) const SPEC_SELECTORS: [Field; 10] = [
    opt("containerSelector", model(&CONTAINER_SELECTOR)),
    opt("serviceSelector", model(&SERVICE_SELECTOR)),
    opt("clusterSelector", model(&CLUSTER_SELECTOR)),
    opt("machineSelector", model(&MACHINE_SELECTOR)),
    opt("namespaceSelector", model(&LABELS)),
    opt("podSelector", model(&LABELS)),
    opt("disableProcesses", Ty::Lit(DISABLE_PROCESSES)),
    opt("disableConnections", Ty::Lit(DISABLE_CONNECTIONS)),
    opt("disablePrivateConnections", Ty::Lit(DISABLE_CONNECTIONS)),
    opt("disablePublicConnections", Ty::Lit(DISABLE_CONNECTIONS)),
];

pub(in crate::document::spyctl) static PORT: Model = Model {
    name: "PortsModel",
    fields: &[
        req(
            "port",
            Ty::Int {
                min: 0,
                max: 65_535,
            },
        ),
        req("protocol", Ty::Lit(&["UDP", "TCP"])),
        // spyctl's bound, as it is written there.
        opt(
            "endPort",
            Ty::Int {
                min: 0,
                max: 66_535,
            },
        ),
    ],
    extra: Extra::Forbid,
    // spyctl declares a check that `endPort` is not below `port`, but it looks the value up
    // by its Python name (`endport`) in a dump made with the YAML names: it never runs.
    after: &[],
    id_scope: false,
};

pub(in crate::document::spyctl) const PORTS_1: Ty = Ty::List {
    item: &Ty::Model(&PORT),
    min: 1,
    max: None,
};

pub(in crate::document::spyctl) static PROCESS_NODE: Model = Model {
    name: "ProcessNodeModel",
    fields: &[
        req("name", STR),
        req("exe", STR_LIST),
        opt("euser", STR_LIST),
        req("id", Ty::ProcessId),
        opt(
            "listeningSockets",
            Ty::List {
                item: &Ty::Model(&PORT),
                min: 0,
                max: None,
            },
        ),
        opt(
            "children",
            Ty::List {
                item: &Ty::Model(&PROCESS_NODE),
                min: 0,
                max: None,
            },
        ),
    ],
    extra: Extra::Forbid,
    after: &[],
    id_scope: false,
};

pub(in crate::document::spyctl) static DNS_BLOCK: Model = Model {
    name: "DnsBlockModel",
    fields: &[req("dnsSelector", STR_LIST)],
    extra: Extra::Forbid,
    after: &[],
    id_scope: false,
};

pub(in crate::document::spyctl) static CIDR: Model = Model {
    name: "CIDRModel",
    fields: &[
        req("cidr", Ty::Network),
        opt(
            "except",
            Ty::List {
                item: &Ty::Network,
                min: 0,
                max: Some(10),
            },
        ),
    ],
    extra: Extra::Forbid,
    // spyctl declares a check that each `except` lies inside `cidr`, but it looks the list up
    // by its Python name (`except_cidr`) in a dump made with the YAML names: it never runs.
    after: &[],
    id_scope: false,
};

pub(in crate::document::spyctl) static IP_BLOCK: Model = Model {
    name: "IpBlockModel",
    fields: &[req("ipBlock", model(&CIDR))],
    extra: Extra::Forbid,
    after: &[],
    id_scope: false,
};

pub(in crate::document::spyctl) const PEERS: Ty = Ty::List {
    item: &Ty::Union(&[model(&DNS_BLOCK), model(&IP_BLOCK)]),
    min: 1,
    max: None,
};

pub(in crate::document::spyctl) static INGRESS: Model = Model {
    name: "IngressNodeModel",
    fields: &[
        req("from", PEERS),
        opt("processes", Ty::ProcessRefs),
        req("ports", PORTS_1),
    ],
    extra: Extra::Forbid,
    after: &[],
    id_scope: false,
};

pub(in crate::document::spyctl) static EGRESS: Model = Model {
    name: "EgressNodeModel",
    fields: &[
        req("to", PEERS),
        opt("processes", Ty::ProcessRefs),
        req("ports", PORTS_1),
    ],
    extra: Extra::Forbid,
    after: &[],
    id_scope: false,
};

pub(in crate::document::spyctl) const INGRESS_LIST: Ty = Ty::List {
    item: &Ty::Model(&INGRESS),
    min: 0,
    max: None,
};
pub(in crate::document::spyctl) const EGRESS_LIST: Ty = Ty::List {
    item: &Ty::Model(&EGRESS),
    min: 0,
    max: None,
};

pub(in crate::document::spyctl) static NETWORK_POLICY: Model = Model {
    name: "NetworkPolicyModel",
    fields: &[req("ingress", INGRESS_LIST), req("egress", EGRESS_LIST)],
    extra: Extra::Ignore,
    after: &[],
    id_scope: false,
};

pub(in crate::document::spyctl) static DEVIATION_NETWORK_POLICY: Model = Model {
    name: "DeviationNetworkPolicyModel",
    fields: &[opt("ingress", INGRESS_LIST), opt("egress", EGRESS_LIST)],
    extra: Extra::Ignore,
    after: &[],
    id_scope: false,
};

pub(in crate::document::spyctl) const ACTION_SELECTORS: [Field; 6] = [
    opt("clusterSelector", model(&CLUSTER_SELECTOR)),
    opt("containerSelector", model(&CONTAINER_SELECTOR)),
    opt("machineSelector", model(&MACHINE_SELECTOR)),
    opt("namespaceSelector", model(&LABELS)),
    opt("podSelector", model(&LABELS)),
    opt("processSelector", model(&PROCESS_SELECTOR)),
];

pub(in crate::document::spyctl) const ENABLED: Field = opt("enabled", Ty::Bool);
pub(in crate::document::spyctl) const SEVERITY: Field = req("severity", Ty::Lit(SEVERITIES));
pub(in crate::document::spyctl) const CONTENT: Field =
    opt("content", Ty::Str { max_len: Some(350) });
pub(in crate::document::spyctl) const IMPACT: Field = opt("impact", Ty::Str { max_len: Some(100) });
pub(in crate::document::spyctl) const DESCRIPTION: Field =
    opt("description", Ty::Str { max_len: Some(350) });
pub(in crate::document::spyctl) const PRIORITY: Field = req("priority", STR);

pub(in crate::document::spyctl) static DEFAULT_ACTION_FIELDS: Model = Model {
    name: "SharedDefaultActionFieldsModel",
    fields: &[ENABLED],
    extra: Extra::Forbid,
    after: &[],
    id_scope: false,
};

pub(in crate::document::spyctl) static DEFAULT_RED_FLAG: Model = Model {
    name: "DefaultMakeRedflagModel",
    fields: &[ENABLED, CONTENT, IMPACT, SEVERITY],
    extra: Extra::Forbid,
    after: &[],
    id_scope: false,
};

pub(in crate::document::spyctl) static DEFAULT_OPS_FLAG: Model = Model {
    name: "DefaultMakeOpsflagModel",
    fields: &[CONTENT, DESCRIPTION, SEVERITY],
    extra: Extra::Forbid,
    after: &[],
    id_scope: false,
};

pub(in crate::document::spyctl) static DEFAULT_RENICE: Model = Model {
    name: "DefaultAgentReniceProcessModel",
    fields: &[ENABLED, PRIORITY],
    extra: Extra::Forbid,
    after: &[],
    id_scope: false,
};

pub(in crate::document::spyctl) static ACTION_FIELDS: Model = Model {
    name: "SharedActionFieldsModel",
    fields: &[
        ACTION_SELECTORS[0],
        ACTION_SELECTORS[1],
        ACTION_SELECTORS[2],
        ACTION_SELECTORS[3],
        ACTION_SELECTORS[4],
        ACTION_SELECTORS[5],
        ENABLED,
    ],
    extra: Extra::Forbid,
    after: &[After::ActionSelectors],
    id_scope: false,
};

pub(in crate::document::spyctl) static RED_FLAG: Model = Model {
    name: "MakeRedflagModel",
    fields: &[
        ACTION_SELECTORS[0],
        ACTION_SELECTORS[1],
        ACTION_SELECTORS[2],
        ACTION_SELECTORS[3],
        ACTION_SELECTORS[4],
        ACTION_SELECTORS[5],
        ENABLED,
        CONTENT,
        IMPACT,
        SEVERITY,
    ],
    extra: Extra::Forbid,
    after: &[After::ActionSelectors],
    id_scope: false,
};

pub(in crate::document::spyctl) static OPS_FLAG: Model = Model {
    name: "MakeOpsflagModel",
    fields: &[
        ACTION_SELECTORS[0],
        ACTION_SELECTORS[1],
        ACTION_SELECTORS[2],
        ACTION_SELECTORS[3],
        ACTION_SELECTORS[4],
        ACTION_SELECTORS[5],
        ENABLED,
        CONTENT,
        DESCRIPTION,
        SEVERITY,
    ],
    extra: Extra::Forbid,
    after: &[After::ActionSelectors],
    id_scope: false,
};

pub(in crate::document::spyctl) static RENICE: Model = Model {
    name: "AgentReniceProcessModel",
    fields: &[
        ACTION_SELECTORS[0],
        ACTION_SELECTORS[1],
        ACTION_SELECTORS[2],
        ACTION_SELECTORS[3],
        ACTION_SELECTORS[4],
        ACTION_SELECTORS[5],
        ENABLED,
        PRIORITY,
    ],
    extra: Extra::Forbid,
    after: &[After::ActionSelectors],
    id_scope: false,
};

pub(in crate::document::spyctl) static DEFAULT_ACTION: Model = Model {
    name: "DefaultActionsModel",
    fields: &[
        opt("makeRedFlag", model(&DEFAULT_RED_FLAG)),
        opt("makeOpsFlag", model(&DEFAULT_OPS_FLAG)),
        opt("agentKillPod", model(&DEFAULT_ACTION_FIELDS)),
        opt("agentKillProcess", model(&DEFAULT_ACTION_FIELDS)),
        opt("agentKillProcessGroup", model(&DEFAULT_ACTION_FIELDS)),
        opt("agentKillProcessTree", model(&DEFAULT_ACTION_FIELDS)),
        opt("agentReniceProcess", model(&DEFAULT_RENICE)),
    ],
    extra: Extra::Forbid,
    after: &[After::OneAction],
    id_scope: false,
};

pub(in crate::document::spyctl) static ACTION: Model = Model {
    name: "ResponseActionsModel",
    fields: &[
        opt("makeRedFlag", model(&RED_FLAG)),
        opt("makeOpsFlag", model(&OPS_FLAG)),
        opt("agentKillPod", model(&ACTION_FIELDS)),
        opt("agentKillProcess", model(&ACTION_FIELDS)),
        opt("agentKillProcessGroup", model(&ACTION_FIELDS)),
        opt("agentKillProcessTree", model(&ACTION_FIELDS)),
        opt("agentReniceProcess", model(&RENICE)),
    ],
    extra: Extra::Forbid,
    after: &[After::OneAction, After::NonNullAction],
    id_scope: false,
};

pub(in crate::document::spyctl) static RESPONSE: Model = Model {
    name: "GuardianResponseModel",
    fields: &[
        req(
            "default",
            Ty::List {
                item: &Ty::Model(&DEFAULT_ACTION),
                min: 0,
                max: None,
            },
        ),
        req(
            "actions",
            Ty::List {
                item: &Ty::Model(&ACTION),
                min: 0,
                max: None,
            },
        ),
    ],
    extra: Extra::Ignore,
    after: &[],
    id_scope: false,
};
