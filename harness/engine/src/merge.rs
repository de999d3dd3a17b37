//! Merging fingerprints, policies and deviations.
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
//!   adds exactly its fragment, under `policyNode.id`. A deviation of a deviant program's
//!   descendant hangs under the deviant parent's node, by the id the parent's deviation gave it
//!   (see [`crate::deviation`]): [`Merger`] merges documents in order and remembers the id each
//!   merged node ended up with (its own, or the one of the policy node that covered it), so
//!   that a later deviation hung under an earlier one's node finds it; [`merge_deviation`]
//!   alone needs the node in the policy already.
//! * Network nodes, both ways: a node is covered by one of the same direction whose ports
//!   contain its ports (same protocol), whose peers cover its peers (an `ipBlock` inside a
//!   supernet, not in its `except`; a DNS name matching a `dnsSelector` glob) and whose
//!   processes include its processes (empty means any). A node that is not covered joins a
//!   node with the same peers and ports (its processes are added there; empty, meaning any,
//!   absorbs the others), else a node with the same ports and processes (its peers are added
//!   there), else is added. So the deviations of three processes reaching one remote on one
//!   port merge into that remote's one node. Process ids are translated to the ids the merge
//!   gave their nodes.
//! * Every merge gives a document in canonical form (see [`crate::canonical`]).

mod network;
mod process;
mod relevance;
mod selector;

use std::collections::HashSet;

pub use crate::canonical::canonicalize;
use crate::canonical::collect_ids;
use crate::error::PolicyError;
use crate::model::{Deviation, Document, GuardDocument, NetworkPolicy, ProcessNode, ROOT_ANCHOR};
use crate::names::policy_uid;
/// The network values of nodes, formerly `merge::net` (see [`crate::net`]).
pub use crate::net;
use network::merge_network;
use process::{IdMap, asym_merge_nodes, find_node_mut, resolve_eusers, sym_merge_nodes};
pub use relevance::is_relevant;
pub(crate) use relevance::{PolicyNets, is_relevant_to_canonical};
use selector::{common_labels, merge_container_selector};

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

/// Merge a deviation into the policy it was found against: its fragment is added under
/// `policyNode.id` (or as a new root), its network nodes are added, and nothing else changes.
/// The node it hangs under must be in the policy: a deviation hung under another deviation's
/// node merges after it, through a [`Merger`].
pub fn merge_deviation(
    policy: &GuardDocument,
    deviation: &Deviation,
) -> Result<GuardDocument, PolicyError> {
    merge_deviation_mapped(policy, deviation, &mut IdMap::new())
}

/// [`merge_deviation`], with the ids earlier merges gave the nodes of earlier deviations
/// (`map`, their id in the deviation to their id in the policy); the ids this one gives are
/// added to it.
fn merge_deviation_mapped(
    policy: &GuardDocument,
    deviation: &Deviation,
    map: &mut IdMap,
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
    for item in &deviation.spec.process_policy {
        let anchor = &item.policy_node;
        let mut fragment = anchor.children.clone();
        if anchor.id == ROOT_ANCHOR {
            resolve_eusers(&mut fragment, None);
            asym_merge_nodes(&mut out.spec.process_policy, &fragment, &mut ids, map);
            continue;
        }
        // The node it hangs under, by the id an earlier deviation's merge gave it (a fragment's
        // node merged into a node of another id, or renamed), else by its own.
        let id = map.get(&anchor.id).unwrap_or(&anchor.id).clone();
        let node = find_node_mut(&mut out.spec.process_policy, &id).ok_or_else(|| {
            PolicyError::UnknownPolicyNode {
                policy: policy.metadata.name.clone(),
                id: anchor.id.clone(),
            }
        })?;
        resolve_eusers(&mut fragment, node.euser.as_ref());
        let mut kids = node.children.take().unwrap_or_default();
        asym_merge_nodes(&mut kids, &fragment, &mut ids, map);
        node.children = (!kids.is_empty()).then_some(kids);
    }
    if let Some(net) = &deviation.spec.network_policy {
        let other = NetworkPolicy {
            ingress: net.ingress.clone(),
            egress: net.egress.clone(),
            ..NetworkPolicy::default()
        };
        merge_network(&mut out.spec.network_policy, &other, map, false);
    }
    canonicalize(&mut out);
    Ok(out)
}

/// Merges documents into a policy one after the other, as `guardlab merge --with` does: each
/// with [`merge_document`], except that a deviation hung under the node of an earlier
/// deviation finds it by the id that merge gave it (see the module documentation).
pub struct Merger {
    policy: GuardDocument,
    /// Ids of deviations' nodes to the ids of the policy's nodes they merged into.
    map: IdMap,
}

impl Merger {
    /// Start from a policy (in canonical form from the first merge on).
    pub fn new(policy: GuardDocument) -> Self {
        Merger {
            policy,
            map: IdMap::new(),
        }
    }

    /// Merge one more document.
    pub fn merge(&mut self, with: &Document) -> Result<(), PolicyError> {
        self.policy = match with {
            Document::Deviation(deviation) => {
                merge_deviation_mapped(&self.policy, deviation, &mut self.map)?
            }
            other => merge_document(&self.policy, other)?,
        };
        Ok(())
    }

    /// The policy so far.
    pub fn policy(&self) -> &GuardDocument {
        &self.policy
    }

    pub fn finish(self) -> GuardDocument {
        self.policy
    }
}

#[cfg(test)]
mod tests;
