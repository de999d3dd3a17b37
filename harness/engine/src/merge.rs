//! Merging fingerprints, policies and deviations, and the canonical form of a document.
//!
//! * [`symmetric_merge`]: two fingerprints (or policies) of one workload become one document
//!   that allows what either allows. Two process nodes are the same node when their names
//!   match (equal, one a glob matching the other, or a common wildcard of at least three
//!   characters, see [`crate::glob::merged_name`]) and they share an exe (equal, or one a glob
//!   matching the other); their exes, effective users and listening sockets are unioned and
//!   their children merged the same way. Unmatched subtrees are added, their ids renumbered
//!   where they clash (`sh_0` becomes `sh_1`). Selectors keep what both have in common. Images
//!   must be of the same repository (`docker.io/library/` and `docker.io/` aside), or the
//!   merge fails with [`PolicyError::ImageMismatch`]: only the tag becomes a wildcard when the
//!   tags differ (their common wildcard of at least three characters, `1.27.*` for `1.27.1`
//!   and `1.27.2`, else `*`), a digest is dropped when the digests differ (`repo@*` when
//!   both are pinned by digest alone), and a reference with neither tag nor digest is
//!   `:latest`. A wildcard over repositories (`*-notebook:latest`) would
//!   select images nobody fingerprinted.
//! * [`merge_policy`] and [`merge_deviation`]: asymmetric; the policy stays as it is and
//!   grows by what it does not cover yet. A node is covered by a policy node whose name glob
//!   matches it and one of whose exes matches each of its exes; covered nodes only add their
//!   effective users and listening sockets (an attribute, never a deviation), uncovered ones
//!   are added, with their subtree, under the policy node their parent matched. A deviation
//!   adds exactly its fragment, under `policyNode.id`.
//! * Network nodes, both ways: a node is covered by one of the same direction whose ports
//!   contain its ports (same protocol), whose peers cover its peers (an `ipBlock` inside a
//!   supernet, not in its `except`; a DNS name matching a `dnsSelector` glob) and whose
//!   processes include its processes (empty means any). A node that is not covered joins a
//!   node with the same peers and ports (its processes are added there; empty, meaning any,
//!   absorbs the others), else a node with the same ports and processes (its peers are added
//!   there), else is added. So the deviations of three processes reaching the resolver merge
//!   into the resolver's one node. Process ids are translated to the ids the merge gave
//!   their nodes.
//! * Every merge gives a document in canonical form (see [`crate::canonical`]).

/// The network values of nodes, formerly `merge::net` (see [`crate::net`]).
pub use crate::net;

pub use crate::canonical::canonicalize;
use crate::canonical::{NetNode, collect_ids, peer_set, port_set, sort_dedup};

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::error::PolicyError;
use crate::glob::{glob_match, merged_name};
use crate::model::{
    ContainerSelector, Deviation, Document, EgressNode, GuardDocument, IngressNode, LabelSelector,
    NetworkPolicy, ProcessNode, ROOT_ANCHOR,
};
use crate::names::policy_uid;
use crate::net::{Ports, peer_covered, ports_covered};

/// Old id (in the document merged in) to new id (in the result).
type IdMap = HashMap<String, String>;

/// Make every node's effective users explicit (children inherit when they have none).
fn resolve_eusers(nodes: &mut [ProcessNode], inherited: Option<&Vec<String>>) {
    for n in nodes {
        if n.euser.is_none() {
            n.euser = inherited.cloned();
        }
        let users = n.euser.clone();
        if let Some(kids) = n.children.as_mut() {
            resolve_eusers(kids, users.as_ref());
        }
    }
}

/// An id not in `ids`: `sh_0` becomes `sh_1`, `sh_2`, ...; an id without a number gets `_0`.
pub(crate) fn unique_id(ids: &HashSet<String>, id: &str) -> String {
    if !ids.contains(id) {
        return id.to_string();
    }
    let (stem, mut n) = match id.rsplit_once('_') {
        Some((stem, num)) if !num.is_empty() && num.bytes().all(|b| b.is_ascii_digit()) => {
            (stem.to_string(), num.parse::<u64>().unwrap_or(0) + 1)
        }
        _ => (id.to_string(), 0),
    };
    loop {
        let candidate = format!("{stem}_{n}");
        if !ids.contains(&candidate) {
            return candidate;
        }
        n += 1;
    }
}

fn exe_matches(pattern: &str, exe: &str) -> bool {
    pattern == exe || glob_match(pattern, exe)
}

/// Asymmetric coverage of one node by a policy node: name glob and every exe.
pub(crate) fn node_covers(policy: &ProcessNode, node: &ProcessNode) -> bool {
    glob_match(&policy.name, &node.name)
        && node
            .exe
            .iter()
            .all(|e| policy.exe.iter().any(|p| exe_matches(p, e)))
}

/// Symmetric sameness: the merged name, when the names match and an exe is shared.
fn same_node(a: &ProcessNode, b: &ProcessNode) -> Option<String> {
    let shared = a
        .exe
        .iter()
        .any(|x| b.exe.iter().any(|y| exe_matches(x, y) || exe_matches(y, x)));
    if shared {
        merged_name(&a.name, &b.name)
    } else {
        None
    }
}

fn union_attributes(into: &mut ProcessNode, from: &ProcessNode) {
    match (&mut into.euser, &from.euser) {
        (Some(users), Some(more)) => {
            for u in more {
                if !users.contains(u) {
                    users.push(u.clone());
                }
            }
        }
        (None, Some(more)) => into.euser = Some(more.clone()),
        _ => {}
    }
    if let Some(more) = &from.listening_sockets {
        let sockets = into.listening_sockets.get_or_insert_with(Vec::new);
        for s in more {
            let p = Ports::new(s);
            if !sockets.iter().any(|have| Ports::new(have).covers(&p)) {
                sockets.push(s.clone());
            }
        }
    }
}

/// Add a subtree, renumbering ids that clash, and record the new ids.
fn add_subtree(node: &ProcessNode, ids: &mut HashSet<String>, map: &mut IdMap) -> ProcessNode {
    let mut out = node.clone();
    out.id = unique_id(ids, &node.id);
    ids.insert(out.id.clone());
    map.insert(node.id.clone(), out.id.clone());
    out.children = node
        .children
        .as_ref()
        .map(|kids| kids.iter().map(|k| add_subtree(k, ids, map)).collect());
    out
}

fn sym_merge_nodes(
    base: &mut Vec<ProcessNode>,
    other: &[ProcessNode],
    ids: &mut HashSet<String>,
    map: &mut IdMap,
) {
    for o in other {
        // A node with the same name (or a glob for it) first; a common wildcard only when
        // there is none, so that `iptables` does not swallow its sibling `ip6tables`.
        let same_name = |b: &ProcessNode| {
            b.name == o.name || glob_match(&b.name, &o.name) || glob_match(&o.name, &b.name)
        };
        let found = base
            .iter()
            .enumerate()
            .filter(|(_, b)| same_name(b))
            .find_map(|(i, b)| same_node(b, o).map(|name| (i, name)))
            .or_else(|| {
                base.iter()
                    .enumerate()
                    .find_map(|(i, b)| same_node(b, o).map(|name| (i, name)))
            });
        match found {
            Some((i, name)) => {
                let b = &mut base[i];
                b.name = name;
                for e in &o.exe {
                    if !b.exe.iter().any(|p| exe_matches(p, e)) {
                        b.exe.push(e.clone());
                    }
                }
                merge_matched(b, o, ids, map, sym_merge_nodes);
            }
            None => base.push(add_subtree(o, ids, map)),
        }
    }
}

/// `o` was matched to `b`: `b` takes `o`'s attributes and stands for its id, and their children
/// merge by the same rule (symmetric or asymmetric) as they did.
fn merge_matched(
    b: &mut ProcessNode,
    o: &ProcessNode,
    ids: &mut HashSet<String>,
    map: &mut IdMap,
    merge_children: fn(&mut Vec<ProcessNode>, &[ProcessNode], &mut HashSet<String>, &mut IdMap),
) {
    union_attributes(b, o);
    map.insert(o.id.clone(), b.id.clone());
    let mut kids = b.children.take().unwrap_or_default();
    merge_children(
        &mut kids,
        o.children.as_deref().unwrap_or_default(),
        ids,
        map,
    );
    b.children = (!kids.is_empty()).then_some(kids);
}

fn asym_merge_nodes(
    base: &mut Vec<ProcessNode>,
    other: &[ProcessNode],
    ids: &mut HashSet<String>,
    map: &mut IdMap,
) {
    for o in other {
        match base.iter().position(|b| node_covers(b, o)) {
            Some(i) => {
                merge_matched(&mut base[i], o, ids, map, asym_merge_nodes);
            }
            None => base.push(add_subtree(o, ids, map)),
        }
    }
}

fn translate(processes: &[String], map: &IdMap) -> Vec<String> {
    let set: BTreeSet<String> = processes
        .iter()
        .map(|p| map.get(p).cloned().unwrap_or_else(|| p.clone()))
        .collect();
    set.into_iter().collect()
}

/// True when `policy` allows everything `node` describes.
pub(crate) fn net_covers(policy: &NetNode, node: &NetNode) -> bool {
    let processes = policy.processes.is_empty()
        || (!node.processes.is_empty()
            && node.processes.iter().all(|p| policy.processes.contains(p)));
    processes
        && ports_covered(&policy.ports, &node.ports)
        && node.peers.iter().all(|p| peer_covered(&policy.peers, p))
}

fn same_set<T: Ord + Clone>(a: &[T], b: &[T]) -> bool {
    let mut x = a.to_vec();
    let mut y = b.to_vec();
    x.sort();
    y.sort();
    x.dedup();
    y.dedup();
    x == y
}

fn merge_net_nodes(base: &mut Vec<NetNode>, other: Vec<NetNode>, symmetric: bool) {
    for o in other {
        if base.iter().any(|b| net_covers(b, &o)) {
            continue;
        }
        let (o_peers, o_ports) = (peer_set(&o.peers), port_set(&o.ports));
        // The same remote and ports for other processes: one node, the processes unioned
        // (a node for any process stays one for any process).
        if let Some(b) = base
            .iter_mut()
            .find(|b| port_set(&b.ports) == o_ports && peer_set(&b.peers) == o_peers)
        {
            if b.processes.is_empty() || o.processes.is_empty() {
                b.processes.clear();
            } else {
                b.processes.extend(o.processes);
                sort_dedup(&mut b.processes);
            }
            continue;
        }
        let joinable = base
            .iter_mut()
            .find(|b| same_set(&b.processes, &o.processes) && port_set(&b.ports) == o_ports);
        match joinable {
            Some(b) => {
                for p in o.peers {
                    if symmetric {
                        // A wider peer replaces the narrower ones it covers.
                        let wider = std::slice::from_ref(&p);
                        b.peers.retain(|have| !peer_covered(wider, have));
                    }
                    if !peer_covered(&b.peers, &p) {
                        b.peers.push(p);
                    }
                }
            }
            None => base.push(o),
        }
    }
}

fn merge_network(base: &mut NetworkPolicy, other: &NetworkPolicy, map: &IdMap, symmetric: bool) {
    let convert = |n: NetNode| NetNode {
        processes: translate(&n.processes, map),
        ..n
    };
    let mut ingress: Vec<NetNode> = base.ingress.iter().map(NetNode::from).collect();
    let mut egress: Vec<NetNode> = base.egress.iter().map(NetNode::from).collect();
    merge_net_nodes(
        &mut ingress,
        other
            .ingress
            .iter()
            .map(NetNode::from)
            .map(convert)
            .collect(),
        symmetric,
    );
    merge_net_nodes(
        &mut egress,
        other
            .egress
            .iter()
            .map(NetNode::from)
            .map(convert)
            .collect(),
        symmetric,
    );
    base.ingress = ingress.into_iter().map(IngressNode::from).collect();
    base.egress = egress.into_iter().map(EgressNode::from).collect();
}

fn common_labels(a: &Option<LabelSelector>, b: &Option<LabelSelector>) -> Option<LabelSelector> {
    let (a, b) = (a.as_ref()?, b.as_ref()?);
    let match_labels = a
        .match_labels
        .iter()
        .filter(|(k, v)| b.match_labels.get(*k) == Some(v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let match_expressions = a
        .match_expressions
        .iter()
        .filter(|e| b.match_expressions.contains(e))
        .cloned()
        .collect();
    let out = LabelSelector {
        match_labels,
        match_expressions,
    };
    (!out.match_labels.is_empty() || !out.match_expressions.is_empty()).then_some(out)
}

/// An image reference in parts: `registry/path` (the repository), `:tag`, `@digest`.
struct ImageRef<'a> {
    repository: &'a str,
    tag: Option<&'a str>,
    digest: Option<&'a str>,
}

impl<'a> ImageRef<'a> {
    fn parse(image: &'a str) -> Self {
        let (rest, digest) = match image.split_once('@') {
            Some((rest, digest)) => (rest, Some(digest)),
            None => (image, None),
        };
        // The tag follows the last `:` after the last `/` (a registry may have a port).
        let name_start = rest.rfind('/').map_or(0, |i| i + 1);
        let (repository, tag) = match rest[name_start..].rfind(':') {
            Some(i) => (&rest[..name_start + i], Some(&rest[name_start + i + 1..])),
            None => (rest, None),
        };
        // A reference with neither tag nor digest means `:latest`.
        let tag = tag.or(digest.is_none().then_some("latest"));
        ImageRef {
            repository,
            tag,
            digest,
        }
    }

    /// The repository as the default registry's short form: `docker.io/library/redis` and
    /// `redis` are the same.
    fn short_repository(&self) -> &'a str {
        let r = self.repository;
        let r = r.strip_prefix("docker.io/").unwrap_or(r);
        r.strip_prefix("library/").unwrap_or(r)
    }
}

/// The image selector that covers two images of one repository (see the module documentation).
fn merge_images(a: &str, b: &str) -> Result<String, PolicyError> {
    if a == b || glob_match(a, b) {
        return Ok(a.to_string());
    }
    if glob_match(b, a) {
        return Ok(b.to_string());
    }
    let (x, y) = (ImageRef::parse(a), ImageRef::parse(b));
    if x.short_repository() != y.short_repository() {
        return Err(PolicyError::ImageMismatch {
            first: a.to_string(),
            second: b.to_string(),
        });
    }
    let digest = match (x.digest, y.digest) {
        (Some(d), Some(e)) if d == e => format!("@{d}"),
        _ => String::new(),
    };
    let repository = x.repository;
    Ok(match (x.tag, y.tag) {
        (Some(s), Some(t)) if s == t => format!("{repository}:{s}{digest}"),
        (Some(s), Some(t)) => {
            let tag = crate::glob::common_wildcard(s, t).unwrap_or_else(|| "*".into());
            format!("{repository}:{tag}")
        }
        // Pinned by digest alone, both.
        (None, None) => format!("{repository}@*"),
        // One by tag, the other by digest alone.
        _ => format!("{repository}[:@]*"),
    })
}

fn merge_container_selector(
    a: &Option<ContainerSelector>,
    b: &Option<ContainerSelector>,
) -> Result<Option<ContainerSelector>, PolicyError> {
    let (Some(a), Some(b)) = (a, b) else {
        return Ok(None);
    };
    let image = match (&a.image, &b.image) {
        (Some(x), Some(y)) => Some(merge_images(x, y)?),
        _ => None,
    };
    let equal = |x: &Option<String>, y: &Option<String>| if x == y { x.clone() } else { None };
    let container_name = match (&a.container_name, &b.container_name) {
        (Some(x), Some(y)) => merged_name(x, y),
        _ => None,
    };
    let out = ContainerSelector {
        image,
        image_id: equal(&a.image_id, &b.image_id),
        container_name,
        container_id: equal(&a.container_id, &b.container_id),
    };
    Ok((out != ContainerSelector::default()).then_some(out))
}

/// What both merges of two documents start from: the ids of `base`, a copy of `base` and
/// `other`'s process forest, both with every node's effective users explicit. Fails when
/// either document uses an id twice.
fn prepare_merge(
    base: &GuardDocument,
    other: &GuardDocument,
) -> Result<(HashSet<String>, GuardDocument, Vec<ProcessNode>), PolicyError> {
    let ids = collect_ids(&base.spec.process_policy, &base.metadata.name)?;
    collect_ids(&other.spec.process_policy, &other.metadata.name)?;
    let mut out = base.clone();
    let mut theirs = other.spec.process_policy.clone();
    resolve_eusers(&mut out.spec.process_policy, None);
    resolve_eusers(&mut theirs, None);
    Ok((ids, out, theirs))
}

/// The symmetric merge of two documents of one workload (see the module documentation).
/// The result keeps `base`'s kind, name and response.
pub fn symmetric_merge(
    base: &GuardDocument,
    other: &GuardDocument,
) -> Result<GuardDocument, PolicyError> {
    let (mut ids, mut out, theirs) = prepare_merge(base, other)?;
    let mut map = IdMap::new();
    sym_merge_nodes(&mut out.spec.process_policy, &theirs, &mut ids, &mut map);
    merge_network(
        &mut out.spec.network_policy,
        &other.spec.network_policy,
        &map,
        true,
    );

    let spec = &mut out.spec;
    spec.container_selector =
        merge_container_selector(&spec.container_selector, &other.spec.container_selector)?;
    spec.namespace_selector =
        common_labels(&spec.namespace_selector, &other.spec.namespace_selector);
    spec.pod_selector = common_labels(&spec.pod_selector, &other.spec.pod_selector);

    let (m, o) = (&mut out.metadata, &other.metadata);
    m.first_timestamp = min_opt(m.first_timestamp, o.first_timestamp);
    m.latest_timestamp = max_opt(m.latest_timestamp, o.latest_timestamp);
    for (mine, theirs) in [
        (&mut m.container_id, &o.container_id),
        (&mut m.container_name, &o.container_name),
        (&mut m.namespace, &o.namespace),
        (&mut m.pod, &o.pod),
    ] {
        if mine != theirs {
            *mine = None;
        }
    }
    canonicalize(&mut out);
    Ok(out)
}

fn min_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    }
}

fn max_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, y) => x.or(y),
    }
}

/// Merge a fingerprint (or another policy) into a policy, asymmetrically: the policy's
/// selectors, mode and response stay; its process and network policy grow by what they do
/// not cover yet.
pub fn merge_policy(
    policy: &GuardDocument,
    with: &GuardDocument,
) -> Result<GuardDocument, PolicyError> {
    let (mut ids, mut out, theirs) = prepare_merge(policy, with)?;
    let mut map = IdMap::new();
    asym_merge_nodes(&mut out.spec.process_policy, &theirs, &mut ids, &mut map);
    merge_network(
        &mut out.spec.network_policy,
        &with.spec.network_policy,
        &map,
        false,
    );
    if out.metadata.latest_timestamp.is_some() {
        out.metadata.latest_timestamp = max_opt(
            out.metadata.latest_timestamp,
            with.metadata.latest_timestamp,
        );
    }
    canonicalize(&mut out);
    Ok(out)
}

/// Merge any document into a policy, as `guardlab merge --with` does: a fingerprint or a
/// policy with [`merge_policy`], each fingerprint of a group likewise, a deviation with
/// [`merge_deviation`].
pub fn merge_document(
    policy: &GuardDocument,
    with: &Document,
) -> Result<GuardDocument, PolicyError> {
    match with {
        Document::Fingerprint(doc) | Document::Policy(doc) => merge_policy(policy, doc),
        Document::FingerprintGroup(group) => {
            let mut out = policy.clone();
            canonicalize(&mut out);
            for fp in &group.data.fingerprints {
                out = merge_policy(&out, fp)?;
            }
            Ok(out)
        }
        Document::Deviation(deviation) => merge_deviation(policy, deviation),
    }
}

fn find_node_mut<'a>(nodes: &'a mut [ProcessNode], id: &str) -> Option<&'a mut ProcessNode> {
    for n in nodes {
        if n.id == id {
            return Some(n);
        }
        if let Some(found) = n
            .children
            .as_deref_mut()
            .and_then(|kids| find_node_mut(kids, id))
        {
            return Some(found);
        }
    }
    None
}

/// Merge a deviation into the policy it was found against: its fragment is added under
/// `policyNode.id` (or as a new root), its network nodes are added, and nothing else changes.
pub fn merge_deviation(
    policy: &GuardDocument,
    deviation: &Deviation,
) -> Result<GuardDocument, PolicyError> {
    let uid = policy_uid(policy);
    if deviation.metadata.policy_uid != uid {
        return Err(PolicyError::PolicyMismatch {
            deviation: deviation.metadata.policy_uid.clone(),
            policy: uid,
        });
    }
    let mut ids = collect_ids(&policy.spec.process_policy, &policy.metadata.name)?;
    let mut out = policy.clone();
    resolve_eusers(&mut out.spec.process_policy, None);
    let mut map = IdMap::new();
    for item in &deviation.spec.process_policy {
        let anchor = &item.policy_node;
        let mut fragment = anchor.children.clone();
        if anchor.id == ROOT_ANCHOR {
            resolve_eusers(&mut fragment, None);
            asym_merge_nodes(&mut out.spec.process_policy, &fragment, &mut ids, &mut map);
            continue;
        }
        let node = find_node_mut(&mut out.spec.process_policy, &anchor.id).ok_or_else(|| {
            PolicyError::UnknownPolicyNode {
                policy: policy.metadata.name.clone(),
                id: anchor.id.clone(),
            }
        })?;
        resolve_eusers(&mut fragment, node.euser.as_ref());
        let mut kids = node.children.take().unwrap_or_default();
        asym_merge_nodes(&mut kids, &fragment, &mut ids, &mut map);
        node.children = (!kids.is_empty()).then_some(kids);
    }
    if let Some(net) = &deviation.spec.network_policy {
        let other = NetworkPolicy {
            ingress: net.ingress.clone(),
            egress: net.egress.clone(),
        };
        merge_network(&mut out.spec.network_policy, &other, &map, false);
    }
    canonicalize(&mut out);
    Ok(out)
}

/// True while merging the deviation would still change the policy.
pub fn is_relevant(policy: &GuardDocument, deviation: &Deviation) -> bool {
    let mut current = policy.clone();
    canonicalize(&mut current);
    let nets = PolicyNets::new(&current);
    is_relevant_to_canonical(&current, &nets, deviation)
}

/// A policy's network nodes without their direction, prepared once for
/// [`is_relevant_to_canonical`], which a report calls for every unique deviation.
pub(crate) struct PolicyNets {
    ingress: Vec<NetNode>,
    egress: Vec<NetNode>,
}

impl PolicyNets {
    pub(crate) fn new(policy: &GuardDocument) -> Self {
        let net = &policy.spec.network_policy;
        PolicyNets {
            ingress: net.ingress.iter().map(NetNode::from).collect(),
            egress: net.egress.iter().map(NetNode::from).collect(),
        }
    }
}

/// [`is_relevant`] for a policy already in canonical form.
///
/// Decided without merging (a report judges every unique deviation, and a merge copies the
/// whole policy): merging changes a canonical policy exactly when a fragment node is not
/// covered, a covered node would gain an effective user or a listening socket, or a network
/// node is not covered. A deviation that cannot be merged (another policy's, or its policy
/// node is gone) is not relevant: there is nothing to act on.
pub(crate) fn is_relevant_to_canonical(
    policy: &GuardDocument,
    nets: &PolicyNets,
    deviation: &Deviation,
) -> bool {
    if deviation.metadata.policy_uid != policy_uid(policy) {
        return false;
    }
    let mut map = IdMap::new();
    for item in &deviation.spec.process_policy {
        let anchor = &item.policy_node;
        let (siblings, users) = if anchor.id == ROOT_ANCHOR {
            (policy.spec.process_policy.as_slice(), None)
        } else {
            match find_node(&policy.spec.process_policy, &anchor.id, None) {
                Some((node, users)) => (node.children.as_deref().unwrap_or_default(), users),
                None => return false,
            }
        };
        if !chain_covered(
            siblings,
            &anchor.children,
            users.as_deref(),
            users.as_deref(),
            &mut map,
        ) {
            return true;
        }
    }
    let Some(net) = &deviation.spec.network_policy else {
        return false;
    };
    let uncovered = |base: &[NetNode], nodes: Vec<NetNode>| {
        nodes.into_iter().any(|n| {
            let n = NetNode {
                processes: translate(&n.processes, &map),
                ..n
            };
            !base.iter().any(|b| net_covers(b, &n))
        })
    };
    uncovered(
        &nets.ingress,
        net.ingress.iter().map(NetNode::from).collect(),
    ) || uncovered(&nets.egress, net.egress.iter().map(NetNode::from).collect())
}

/// The node with this id and its effective users.
fn find_node<'a>(
    nodes: &'a [ProcessNode],
    id: &str,
    inherited: Option<Vec<String>>,
) -> Option<(&'a ProcessNode, Option<Vec<String>>)> {
    for n in nodes {
        let users = n.euser.clone().or_else(|| inherited.clone());
        if n.id == id {
            return Some((n, users));
        }
        if let Some(found) = find_node(n.children.as_deref().unwrap_or_default(), id, users) {
            return Some(found);
        }
    }
    None
}

/// True when every node of `fragment` is covered under `siblings` with nothing to add.
fn chain_covered(
    siblings: &[ProcessNode],
    fragment: &[ProcessNode],
    sibling_users: Option<&[String]>,
    fragment_users: Option<&[String]>,
    map: &mut IdMap,
) -> bool {
    fragment.iter().all(|o| {
        let Some(b) = siblings.iter().find(|b| node_covers(b, o)) else {
            return false;
        };
        let b_users = b.euser.as_deref().or(sibling_users);
        let o_users = o.euser.as_deref().or(fragment_users);
        if !o_users
            .unwrap_or_default()
            .iter()
            .all(|u| b_users.unwrap_or_default().contains(u))
        {
            return false;
        }
        let sockets = b.listening_sockets.as_deref().unwrap_or_default();
        if !o
            .listening_sockets
            .as_deref()
            .unwrap_or_default()
            .iter()
            .all(|s| sockets.iter().any(|h| Ports::new(h).covers(&Ports::new(s))))
        {
            return false;
        }
        map.insert(o.id.clone(), b.id.clone());
        chain_covered(
            b.children.as_deref().unwrap_or_default(),
            o.children.as_deref().unwrap_or_default(),
            b_users,
            o_users,
            map,
        )
    })
}

#[cfg(test)]
mod tests;
