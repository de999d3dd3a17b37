//! Merging process forests: which nodes are the same (symmetric merge) or covered (asymmetric
//! merge, relevance), what a matched node takes from the other, how unmatched subtrees are
//! added with their ids renumbered, and the map from old ids to new that network nodes are
//! translated with.

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::glob::{glob_match, merged_name};
use crate::model::ProcessNode;
use crate::net::Ports;

/// Old id (in the document merged in) to new id (in the result).
pub(super) type IdMap = HashMap<String, String>;

/// Make every node's effective users explicit (children inherit when they have none).
pub(super) fn resolve_eusers(nodes: &mut [ProcessNode], inherited: Option<&Vec<String>>) {
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
pub(super) fn unique_id(ids: &HashSet<String>, id: &str) -> String {
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
pub(super) fn node_covers(policy: &ProcessNode, node: &ProcessNode) -> bool {
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

pub(super) fn sym_merge_nodes(
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

pub(super) fn asym_merge_nodes(
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

pub(super) fn translate(processes: &[String], map: &IdMap) -> Vec<String> {
    let set: BTreeSet<String> = processes
        .iter()
        .map(|p| map.get(p).cloned().unwrap_or_else(|| p.clone()))
        .collect();
    set.into_iter().collect()
}

pub(super) fn find_node_mut<'a>(
    nodes: &'a mut [ProcessNode],
    id: &str,
) -> Option<&'a mut ProcessNode> {
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

/// The node with this id and its effective users.
pub(super) fn find_node<'a>(
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
