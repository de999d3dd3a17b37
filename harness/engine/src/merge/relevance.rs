//! Relevance: would merging a deviation into its policy still change the policy? Decided
//! without merging, since a report asks it of every unique deviation.

use super::network::net_covers;
use super::process::{IdMap, find_node, node_covers, translate};
use crate::canonical::{NetNode, canonicalize};
use crate::model::{Deviation, GuardDocument, ProcessNode, ROOT_ANCHOR};
use crate::names::policy_uid;
use crate::net::Ports;

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
