//! The rules a spyctl document must follow beyond its shape.
//!
//! The serde types in [`crate::model`] already refuse unknown keys, missing required fields
//! and bad enum words. What they cannot express is checked here: values that must lie in a
//! range, ids that must be unique across the whole process forest, network rules that must
//! point at existing process ids, selectors that must be present for the document's type.
//!
//! Every rule reports a [`Problem`] and checking goes on, so one run lists everything that is
//! wrong. A problem names the field by its path in the YAML (`spec.processPolicy[1].id`);
//! [`crate::document`] turns that path into a line and column of the file.

use std::collections::HashMap;
use std::fmt;

use crate::model::{
    API_VERSION, ContainerSelector, Deviation, DeviationType, Document, EgressNode,
    FingerprintGroup, FlagAction, GuardDocument, IngressNode, KIND_DEVIATION, KIND_FINGERPRINT,
    KIND_FINGERPRINT_GROUP, KIND_POLICY, LabelSelector, MachineSelector, Peer, PortSpec,
    ProcessNode, ProcessSelector, ResponseAction,
};
use crate::net::{parse_cidr, parse_protocol};

/// One step of a [`FieldPath`]: a mapping key as spelled in the YAML, or a list index.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PathSegment {
    Key(String),
    Index(usize),
}

/// Where a field sits in a document, from its root: `spec.processPolicy[0].children[1].exe`.
/// Kept as segments rather than a string because label keys may hold dots
/// (`kubernetes.io/metadata.name`), which would make a dotted string ambiguous.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct FieldPath(Vec<PathSegment>);

impl FieldPath {
    /// The document itself.
    pub fn root() -> Self {
        Self::default()
    }

    /// This path followed by the mapping key `key`.
    pub fn key(&self, key: &str) -> Self {
        let mut segments = self.0.clone();
        segments.push(PathSegment::Key(key.to_owned()));
        Self(segments)
    }

    /// This path followed by list index `index`.
    pub fn index(&self, index: usize) -> Self {
        let mut segments = self.0.clone();
        segments.push(PathSegment::Index(index));
        Self(segments)
    }

    /// The path of the field that holds this one; `None` for the root.
    pub fn parent(&self) -> Option<Self> {
        let (_, parent) = self.0.split_last()?;
        Some(Self(parent.to_vec()))
    }

    /// This path followed by all of `other`.
    pub fn join(&self, other: &FieldPath) -> Self {
        let mut segments = self.0.clone();
        segments.extend(other.0.iter().cloned());
        Self(segments)
    }

    /// Reads a path as [`fmt::Display`] writes it (`spec.processPolicy[0].exe`). A key with a
    /// dot in it reads as two keys: use it to find a field, not to name a label.
    pub fn parse(text: &str) -> Self {
        let mut segments = Vec::new();
        for part in text.split('.').filter(|p| !p.is_empty()) {
            let (key, mut rest) = part.split_once('[').map_or((part, ""), |(k, r)| (k, r));
            if !key.is_empty() {
                segments.push(PathSegment::Key(key.to_owned()));
            }
            while let Some((index, after)) = rest.split_once(']') {
                match index.parse() {
                    Ok(i) => segments.push(PathSegment::Index(i)),
                    Err(_) => segments.push(PathSegment::Key(index.to_owned())),
                }
                rest = after.strip_prefix('[').unwrap_or(after);
            }
        }
        Self(segments)
    }

    pub fn segments(&self) -> &[PathSegment] {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                PathSegment::Key(key) if i == 0 => f.write_str(key)?,
                PathSegment::Key(key) => write!(f, ".{key}")?,
                PathSegment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// One rule broken: which field, and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub path: FieldPath,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_root() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Checks a document against every rule and returns all the problems found, in document
/// order; an empty list means the document is valid.
pub fn validate(doc: &Document) -> Vec<Problem> {
    let mut checker = Checker::default();
    let root = FieldPath::root();
    match doc {
        Document::Fingerprint(fingerprint) => {
            checker.guard_document(&root, fingerprint, Role::Fingerprint)
        }
        Document::Policy(policy) => checker.guard_document(&root, policy, Role::Policy),
        Document::FingerprintGroup(group) => checker.fingerprint_group(&root, group),
        Document::Deviation(deviation) => checker.deviation(&root, deviation),
    }
    checker.problems
}

/// Whether a [`GuardDocument`] is read as a fingerprint or as a policy: the same shape, but
/// only a policy has `enabled`, `mode` and `response`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Fingerprint,
    Policy,
}

const MAX_PORT: u32 = 65_535;

#[derive(Default)]
struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn report(&mut self, path: FieldPath, message: impl Into<String>) {
        self.problems.push(Problem {
            path,
            message: message.into(),
        });
    }

    fn header(&mut self, at: &FieldPath, api_version: &str, kind: &str, expected_kind: &str) {
        if api_version != API_VERSION {
            self.report(
                at.key("apiVersion"),
                format!("unsupported apiVersion `{api_version}`, expected `{API_VERSION}`"),
            );
        }
        if kind != expected_kind {
            self.report(
                at.key("kind"),
                format!("kind is `{kind}` but the document was read as a `{expected_kind}`"),
            );
        }
    }

    fn guard_document(&mut self, at: &FieldPath, doc: &GuardDocument, role: Role) {
        let expected_kind = match role {
            Role::Fingerprint => KIND_FINGERPRINT,
            Role::Policy => KIND_POLICY,
        };
        self.header(at, &doc.api_version, &doc.kind, expected_kind);

        let metadata = at.key("metadata");
        if doc.metadata.name.trim().is_empty() {
            self.report(metadata.key("name"), "must not be empty");
        }

        let spec_path = at.key("spec");
        let spec = &doc.spec;
        match doc.metadata.kind.as_str() {
            "container" => {
                match &spec.container_selector {
                    None => self.report(
                        spec_path.key("containerSelector"),
                        "missing containerSelector: a container document needs one, with image, imageID, containerName or containerID",
                    ),
                    Some(selector) => self.container_selector(&spec_path.key("containerSelector"), selector),
                }
                if spec.service_selector.is_some() {
                    self.report(spec_path.key("serviceSelector"), "serviceSelector is for linux-service documents, this one has type container");
                }
            }
            "linux-service" => {
                match &spec.service_selector {
                    None => self.report(spec_path.key("serviceSelector"), "missing serviceSelector: a linux-service document needs one, with a cgroup"),
                    Some(selector) if selector.cgroup.as_deref().is_none_or(|c| c.trim().is_empty()) => {
                        self.report(spec_path.key("serviceSelector"), "needs a cgroup (e.g. `systemd:/system.slice/foo.service`)")
                    }
                    Some(_) => {}
                }
                if spec.container_selector.is_some() {
                    self.report(spec_path.key("containerSelector"), "containerSelector is for container documents, this one has type linux-service");
                }
            }
            other => self.report(
                metadata.key("type"),
                format!("unknown type `{other}`, expected `container` or `linux-service`"),
            ),
        }
        if let Some(selector) = &spec.machine_selector {
            self.machine_selector(&spec_path.key("machineSelector"), selector);
        }
        if let Some(selector) = &spec.namespace_selector {
            self.label_selector(&spec_path.key("namespaceSelector"), selector);
        }
        if let Some(selector) = &spec.pod_selector {
            self.label_selector(&spec_path.key("podSelector"), selector);
        }

        let ids = self.process_forest(&spec_path.key("processPolicy"), &spec.process_policy, true);
        let network = spec_path.key("networkPolicy");
        for (i, node) in spec.network_policy.ingress.iter().enumerate() {
            self.ingress(&network.key("ingress").index(i), node, Some(&ids));
        }
        for (i, node) in spec.network_policy.egress.iter().enumerate() {
            self.egress(&network.key("egress").index(i), node, Some(&ids));
        }

        match role {
            Role::Policy => match &spec.response {
                None => self.report(spec_path.key("response"), "missing response: a policy needs one (e.g. `default: [{makeRedFlag: {severity: high}}]`)"),
                Some(response) => {
                    let response_path = spec_path.key("response");
                    if response.default.is_empty() {
                        self.report(response_path.key("default"), "needs at least one action (e.g. `- makeRedFlag: {severity: high}`)");
                    }
                    for (i, action) in response.default.iter().enumerate() {
                        self.response_action(&response_path.key("default").index(i), action, false);
                    }
                    for (i, action) in response.actions.iter().enumerate() {
                        self.response_action(&response_path.key("actions").index(i), action, true);
                    }
                }
            },
            Role::Fingerprint => {
                // A fingerprint records behaviour; only a policy decides what to do about it.
                for (present, key) in
                    [(spec.enabled.is_some(), "enabled"), (spec.mode.is_some(), "mode"), (spec.response.is_some(), "response")]
                {
                    if present {
                        self.report(spec_path.key(key), format!("`{key}` belongs to a SpyderbatPolicy, not to a fingerprint"));
                    }
                }
            }
        }
    }

    fn container_selector(&mut self, at: &FieldPath, selector: &ContainerSelector) {
        let fields = [
            ("image", &selector.image),
            ("imageID", &selector.image_id),
            ("containerName", &selector.container_name),
            ("containerID", &selector.container_id),
        ];
        if fields.iter().all(|(_, value)| value.is_none()) {
            self.report(
                at.clone(),
                "needs at least one of image, imageID, containerName, containerID",
            );
        }
        for (key, value) in fields {
            if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
                self.report(at.key(key), "must not be empty");
            }
        }
    }

    fn machine_selector(&mut self, at: &FieldPath, selector: &MachineSelector) {
        if selector.hostname.is_none() && selector.machine_uid.is_none() {
            self.report(at.clone(), "needs hostname or machineUID");
        }
    }

    fn label_selector(&mut self, at: &FieldPath, selector: &LabelSelector) {
        if selector.match_labels.is_empty() && selector.match_expressions.is_empty() {
            self.report(at.clone(), "needs matchLabels or matchExpressions");
        }
        for (i, expression) in selector.match_expressions.iter().enumerate() {
            let path = at.key("matchExpressions").index(i);
            if expression.key.is_empty() {
                self.report(path.key("key"), "must not be empty");
            }
            match expression.operator.as_str() {
                "In" | "NotIn" if expression.values.is_empty() => {
                    self.report(path.key("operator"), format!("`{}` needs a non-empty `values` list", expression.operator))
                }
                "Exists" | "DoesNotExist" if !expression.values.is_empty() => {
                    self.report(path.key("values"), format!("`{}` takes no values", expression.operator))
                }
                "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
                other => self.report(
                    path.key("operator"),
                    format!("unknown operator `{other}`, expected one of `In`, `NotIn`, `Exists`, `DoesNotExist`"),
                ),
            }
        }
    }

    /// Checks a process forest and returns the ids it defines (id -> where it is defined).
    /// `roots_need_euser` is false for the fragments of a deviation, whose nodes hang under a
    /// policy node that carries the user.
    fn process_forest(
        &mut self,
        at: &FieldPath,
        nodes: &[ProcessNode],
        roots_need_euser: bool,
    ) -> HashMap<String, FieldPath> {
        let mut ids = HashMap::new();
        for (i, node) in nodes.iter().enumerate() {
            self.process_node(&at.index(i), node, roots_need_euser, &mut ids);
        }
        ids
    }

    fn process_node(
        &mut self,
        at: &FieldPath,
        node: &ProcessNode,
        is_root: bool,
        ids: &mut HashMap<String, FieldPath>,
    ) {
        if node.name.trim().is_empty() {
            self.report(at.key("name"), "must not be empty");
        }
        if node.exe.is_empty() {
            self.report(at.key("exe"), "needs at least one executable path");
        }
        for (i, exe) in node.exe.iter().enumerate() {
            if exe.trim().is_empty() {
                self.report(at.key("exe").index(i), "must not be empty");
            }
        }
        if node.id.trim().is_empty() {
            self.report(at.key("id"), "must not be empty");
        } else if let Some(first) = ids.get(&node.id) {
            self.report(
                at.key("id"),
                format!(
                    "duplicate process id `{}`, already used by {first}",
                    node.id
                ),
            );
        } else {
            ids.insert(node.id.clone(), at.clone());
        }
        match &node.euser {
            None if is_root => self.report(
                at.key("euser"),
                "is required on a root process (children inherit it)",
            ),
            Some(users) if users.is_empty() => {
                self.report(at.key("euser"), "needs at least one user")
            }
            Some(users) => {
                for (i, user) in users.iter().enumerate() {
                    if user.trim().is_empty() {
                        self.report(at.key("euser").index(i), "must not be empty");
                    }
                }
            }
            None => {}
        }
        if let Some(sockets) = &node.listening_sockets {
            for (i, socket) in sockets.iter().enumerate() {
                self.port(&at.key("listeningSockets").index(i), socket);
            }
        }
        if let Some(children) = &node.children {
            for (i, child) in children.iter().enumerate() {
                self.process_node(&at.key("children").index(i), child, false, ids);
            }
        }
    }

    /// `ids` is `None` where the process ids live in another document (a deviation points
    /// at its policy's nodes), so references cannot be checked here.
    fn ingress(
        &mut self,
        at: &FieldPath,
        node: &IngressNode,
        ids: Option<&HashMap<String, FieldPath>>,
    ) {
        self.network_node(at, "from", &node.from, &node.processes, &node.ports, ids);
    }

    fn egress(
        &mut self,
        at: &FieldPath,
        node: &EgressNode,
        ids: Option<&HashMap<String, FieldPath>>,
    ) {
        self.network_node(at, "to", &node.to, &node.processes, &node.ports, ids);
    }

    fn network_node(
        &mut self,
        at: &FieldPath,
        peers_key: &str,
        peers: &[Peer],
        processes: &[String],
        ports: &[PortSpec],
        ids: Option<&HashMap<String, FieldPath>>,
    ) {
        if peers.is_empty() {
            self.report(
                at.key(peers_key),
                "needs at least one ipBlock or dnsSelector",
            );
        }
        for (i, peer) in peers.iter().enumerate() {
            self.peer(&at.key(peers_key).index(i), peer);
        }
        if let Some(ids) = ids {
            for (i, process) in processes.iter().enumerate() {
                if !ids.contains_key(process) {
                    self.report(
                        at.key("processes").index(i),
                        format!("no process with id `{process}` in spec.processPolicy"),
                    );
                }
            }
        }
        if ports.is_empty() {
            self.report(
                at.key("ports"),
                "needs at least one port (e.g. `- {protocol: TCP, port: 443}`)",
            );
        }
        for (i, port) in ports.iter().enumerate() {
            self.port(&at.key("ports").index(i), port);
        }
    }

    fn peer(&mut self, at: &FieldPath, peer: &Peer) {
        match peer {
            Peer::DnsSelector(names) => {
                let at = at.key("dnsSelector");
                if names.is_empty() {
                    self.report(at.clone(), "needs at least one DNS name");
                }
                for (i, name) in names.iter().enumerate() {
                    if name.trim().is_empty() {
                        self.report(at.index(i), "must not be empty");
                    }
                }
            }
            Peer::IpBlock(block) => {
                let at = at.key("ipBlock");
                let cidr = match parse_cidr(&block.cidr) {
                    Ok(cidr) => Some(cidr),
                    Err(why) => {
                        self.report(
                            at.key("cidr"),
                            format!("`{}` is not a CIDR: {why}", block.cidr),
                        );
                        None
                    }
                };
                for (i, except) in block.except.iter().enumerate() {
                    let path = at.key("except").index(i);
                    match (parse_cidr(except), &cidr) {
                        (Err(why), _) => {
                            self.report(path, format!("`{except}` is not a CIDR: {why}"))
                        }
                        (Ok(inner), Some(outer)) if !outer.contains(&inner) => {
                            self.report(path, format!("`{except}` is not inside `{}`", block.cidr))
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    fn port(&mut self, at: &FieldPath, spec: &PortSpec) {
        if parse_protocol(&spec.protocol).is_none() {
            self.report(
                at.key("protocol"),
                format!(
                    "unknown protocol `{}`, expected `TCP` or `UDP`",
                    spec.protocol
                ),
            );
        }
        if spec.port == 0 || spec.port > MAX_PORT {
            self.report(
                at.key("port"),
                format!("port {} is out of range 1-{MAX_PORT}", spec.port),
            );
        }
        if let Some(end) = spec.end_port {
            if end > MAX_PORT {
                self.report(
                    at.key("endPort"),
                    format!("endPort {end} is out of range 1-{MAX_PORT}"),
                );
            } else if end < spec.port {
                self.report(
                    at.key("endPort"),
                    format!("endPort {end} is below port {}", spec.port),
                );
            }
        }
    }

    /// `in_actions`: an item of `actions` applies only where its selectors say, so it needs
    /// one; a `default` action applies everywhere the policy does.
    fn response_action(&mut self, at: &FieldPath, action: &ResponseAction, in_actions: bool) {
        let (key, selectors) = match action {
            ResponseAction::MakeRedFlag(flag) => ("makeRedFlag", flag_selectors(flag)),
            ResponseAction::MakeOpsFlag(flag) => ("makeOpsFlag", flag_selectors(flag)),
            ResponseAction::AgentKillPod(s) => ("agentKillPod", action_selectors(s)),
            ResponseAction::AgentKillProcess(s) => ("agentKillProcess", action_selectors(s)),
            ResponseAction::AgentKillProcessGroup(s) => {
                ("agentKillProcessGroup", action_selectors(s))
            }
            ResponseAction::AgentKillProcessTree(s) => {
                ("agentKillProcessTree", action_selectors(s))
            }
        };
        let at = at.key(key);
        if in_actions && selectors.iter().all(|s| s.is_none()) {
            self.report(
                at.clone(),
                "an entry of `actions` needs at least one selector (namespaceSelector, podSelector, containerSelector, machineSelector or processSelector)",
            );
        }
        for selector in selectors.into_iter().flatten() {
            match selector {
                SelectorRef::Label(name, s) => self.label_selector(&at.key(name), s),
                SelectorRef::Container(s) => {
                    self.container_selector(&at.key("containerSelector"), s)
                }
                SelectorRef::Machine(s) => self.machine_selector(&at.key("machineSelector"), s),
                SelectorRef::Process(s) => {
                    if s.name.is_empty() && s.exe.is_empty() && s.euser.is_empty() {
                        self.report(at.key("processSelector"), "needs name, exe or euser");
                    }
                }
            }
        }
    }

    fn fingerprint_group(&mut self, at: &FieldPath, group: &FingerprintGroup) {
        self.header(at, &group.api_version, &group.kind, KIND_FINGERPRINT_GROUP);
        if group.metadata.image.trim().is_empty() {
            self.report(at.key("metadata").key("image"), "must not be empty");
        }
        let fingerprints = at.key("data").key("fingerprints");
        if group.data.fingerprints.is_empty() {
            self.report(
                fingerprints.clone(),
                "a group needs at least one fingerprint",
            );
        }
        for (i, fingerprint) in group.data.fingerprints.iter().enumerate() {
            self.guard_document(&fingerprints.index(i), fingerprint, Role::Fingerprint);
        }
    }

    fn deviation(&mut self, at: &FieldPath, deviation: &Deviation) {
        self.header(at, &deviation.api_version, &deviation.kind, KIND_DEVIATION);
        let metadata = at.key("metadata");
        if deviation.metadata.policy_uid.trim().is_empty() {
            self.report(metadata.key("policy_uid"), "must not be empty");
        }
        if deviation.metadata.checksum.trim().is_empty() {
            self.report(metadata.key("checksum"), "must not be empty");
        }

        let spec = at.key("spec");
        let processes = spec.key("processPolicy");
        let mut ids = HashMap::new();
        for (i, entry) in deviation.spec.process_policy.iter().enumerate() {
            let node = processes.index(i).key("policyNode");
            if entry.policy_node.id.trim().is_empty() {
                self.report(
                    node.key("id"),
                    "must name the policy node the new process grew from",
                );
            }
            if entry.policy_node.children.is_empty() {
                self.report(node.key("children"), "needs the new process node");
            }
            for (j, child) in entry.policy_node.children.iter().enumerate() {
                self.process_node(&node.key("children").index(j), child, false, &mut ids);
            }
        }
        let network = spec.key("networkPolicy");
        let (ingress, egress) = deviation
            .spec
            .network_policy
            .as_ref()
            .map_or((&[][..], &[][..]), |n| (&n.ingress[..], &n.egress[..]));
        for (i, node) in ingress.iter().enumerate() {
            self.ingress(&network.key("ingress").index(i), node, None);
        }
        for (i, node) in egress.iter().enumerate() {
            self.egress(&network.key("egress").index(i), node, None);
        }

        // The type says which fragment the deviation carries; a deviation without it says nothing.
        let (has_fragment, fragment_path, what) = match deviation.metadata.kind {
            DeviationType::Process => (
                !deviation.spec.process_policy.is_empty(),
                processes,
                "a process deviation needs a processPolicy entry",
            ),
            DeviationType::Ingress => (
                !ingress.is_empty(),
                network.key("ingress"),
                "an ingress deviation needs a networkPolicy.ingress entry",
            ),
            DeviationType::Egress => (
                !egress.is_empty(),
                network.key("egress"),
                "an egress deviation needs a networkPolicy.egress entry",
            ),
        };
        if !has_fragment {
            self.report(fragment_path, what);
        }
    }
}

/// The selectors an action may carry, borrowed so flag and kill actions are checked alike.
enum SelectorRef<'a> {
    Label(&'static str, &'a LabelSelector),
    Container(&'a ContainerSelector),
    Machine(&'a MachineSelector),
    Process(&'a ProcessSelector),
}

fn flag_selectors(flag: &FlagAction) -> [Option<SelectorRef<'_>>; 5] {
    [
        flag.namespace_selector
            .as_ref()
            .map(|s| SelectorRef::Label("namespaceSelector", s)),
        flag.pod_selector
            .as_ref()
            .map(|s| SelectorRef::Label("podSelector", s)),
        flag.container_selector.as_ref().map(SelectorRef::Container),
        flag.machine_selector.as_ref().map(SelectorRef::Machine),
        flag.process_selector.as_ref().map(SelectorRef::Process),
    ]
}

fn action_selectors(selectors: &crate::model::ActionSelectors) -> [Option<SelectorRef<'_>>; 5] {
    [
        selectors
            .namespace_selector
            .as_ref()
            .map(|s| SelectorRef::Label("namespaceSelector", s)),
        selectors
            .pod_selector
            .as_ref()
            .map(|s| SelectorRef::Label("podSelector", s)),
        selectors
            .container_selector
            .as_ref()
            .map(SelectorRef::Container),
        selectors
            .machine_selector
            .as_ref()
            .map(SelectorRef::Machine),
        selectors
            .process_selector
            .as_ref()
            .map(SelectorRef::Process),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_paths_print_like_the_yaml() {
        let path = FieldPath::root()
            .key("spec")
            .key("processPolicy")
            .index(0)
            .key("children")
            .index(1)
            .key("names");
        assert_eq!(path.to_string(), "spec.processPolicy[0].children[1].names");
        assert_eq!(FieldPath::root().to_string(), "");
    }

    #[test]
    fn cidrs_are_checked_with_the_engines_parser() {
        let problems = |cidr: &str, except: &[&str]| {
            let mut checker = Checker::default();
            checker.peer(
                &FieldPath::root().key("to").index(0),
                &Peer::IpBlock(crate::model::IpBlock {
                    cidr: cidr.into(),
                    except: except.iter().map(|e| e.to_string()).collect(),
                }),
            );
            checker
                .problems
                .iter()
                .map(Problem::to_string)
                .collect::<Vec<_>>()
        };
        assert!(problems("198.18.0.0/15", &["198.19.4.0/24"]).is_empty());
        assert!(problems("2001:db8::/32", &["2001:db8:1::/48"]).is_empty());
        assert!(problems("::/0", &[]).is_empty());
        assert_eq!(
            problems("198.18.0.1/15", &[]),
            [
                "to[0].ipBlock.cidr: `198.18.0.1/15` is not a CIDR: host bits are set after the /15 prefix"
            ]
        );
        assert_eq!(
            problems("198.18.0.0", &[]),
            [
                "to[0].ipBlock.cidr: `198.18.0.0` is not a CIDR: expected `address/prefix`, e.g. `198.18.0.0/15`"
            ]
        );
        assert_eq!(
            problems("198.18.0.0/33", &[]),
            [
                "to[0].ipBlock.cidr: `198.18.0.0/33` is not a CIDR: prefix `33` is not a number from 0 to 32"
            ]
        );
        assert_eq!(
            problems("not-an-ip/8", &[]),
            ["to[0].ipBlock.cidr: `not-an-ip/8` is not a CIDR: `not-an-ip` is not an IP address"]
        );
        assert_eq!(
            problems("198.18.0.0/15", &["198.20.0.0/24", "::/0"]),
            [
                "to[0].ipBlock.except[0]: `198.20.0.0/24` is not inside `198.18.0.0/15`",
                "to[0].ipBlock.except[1]: `::/0` is not inside `198.18.0.0/15`"
            ]
        );
    }

    #[test]
    fn protocols_are_checked_with_the_engines_parser() {
        let mut checker = Checker::default();
        for protocol in ["TCP", "UDP", "tcp", "SCTP"] {
            checker.port(
                &FieldPath::root().key(protocol),
                &PortSpec {
                    protocol: protocol.into(),
                    port: 80,
                    end_port: None,
                },
            );
        }
        let paths: Vec<String> = checker
            .problems
            .iter()
            .map(|p| p.path.to_string())
            .collect();
        assert_eq!(paths, ["tcp.protocol", "SCTP.protocol"]);
    }
}
