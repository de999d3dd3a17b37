//! Whether a deviation is still relevant: merging it into its policy (after the deviations it
//! hangs under, see the rules in [`super`]) would still change the policy.

use rustc_hash::FxHashMap;

use super::ROOT_ANCHOR;
use super::policy_state::PolicyState;
use crate::merge::is_relevant_to_canonical;
use crate::model::{Deviation, DeviationProcess, DeviationType, PolicyNodeRef};

/// Whether merging a policy's deviations would still change it, each judged with the
/// deviations it hangs under: a deviation hung under a deviant node (see the rules above) is
/// judged as the chain from the nearest node of the policy down to it, as merging it after
/// the ones it hangs under would merge it.
pub(crate) struct Relevance<'a> {
    p: &'a PolicyState,
    /// The process deviations' new nodes, by id: the deviant programs others hang under.
    by_node: FxHashMap<&'a str, &'a DeviationProcess>,
}

impl<'a> Relevance<'a> {
    pub(crate) fn new(p: &'a PolicyState) -> Self {
        let mut by_node = FxHashMap::default();
        for r in &p.records {
            if r.deviation.metadata.kind != DeviationType::Process {
                continue;
            }
            for item in &r.deviation.spec.process_policy {
                for n in &item.policy_node.children {
                    by_node.entry(n.id.as_str()).or_insert(item);
                }
            }
        }
        Relevance { p, by_node }
    }

    pub(crate) fn of(&self, deviation: &Deviation) -> bool {
        let c = &self.p.c;
        let hangs_on_policy = |id: &str| id == ROOT_ANCHOR || c.ids.contains(id);
        if deviation
            .spec
            .process_policy
            .iter()
            .all(|item| hangs_on_policy(&item.policy_node.id))
        {
            return is_relevant_to_canonical(&c.policy, &c.nets, deviation);
        }
        let mut whole = deviation.clone();
        for item in &mut whole.spec.process_policy {
            // Up the deviant parents, each a node of another deviation, to the policy.
            let mut steps = 0;
            while !hangs_on_policy(&item.policy_node.id) {
                let Some(parent) = self.by_node.get(item.policy_node.id.as_str()) else {
                    // The deviation that brings its node was not kept: nothing to judge by.
                    return true;
                };
                steps += 1;
                if steps > self.by_node.len() {
                    return true;
                }
                let mut node = parent
                    .policy_node
                    .children
                    .iter()
                    .find(|n| n.id == item.policy_node.id)
                    .cloned()
                    .expect("found by this id");
                node.children = Some(std::mem::take(&mut item.policy_node.children));
                item.policy_node = PolicyNodeRef {
                    id: parent.policy_node.id.clone(),
                    children: vec![node],
                };
            }
        }
        is_relevant_to_canonical(&c.policy, &c.nets, &whole)
    }
}
