//! Every deviation's chain merged into one tree per container: from the container's root
//! process through the processes the chains share down to every deviant process, with the
//! connections of each deviant process hanging off it.
//!
//! A process is known by its pid and the time of its exec (two execs of one process are two
//! entries of a chain with the same pid: the later one is an `exec` of the earlier, not its
//! child). Chains are merged by their shared prefixes, so the tree is a tree whatever the
//! chains say. It is kept flat (nodes by index, parents before children) so that neither
//! building, rendering nor serializing it recurses however deep a chain is.

use guardlab_events::ProcessKey;
use rustc_hash::FxHashMap;
use serde::Serialize;

use super::{ContainerRef, DeviationTrace, Investigation, TraceConnection, TraceProcess};
use crate::model::DeviationType;

/// One tree per container, ordered by namespace, pod, container name and id.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InvestigationTree {
    pub containers: Vec<ContainerTree>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerTree {
    pub container: ContainerRef,
    /// Every node, depth first: a parent before its children, children in order.
    pub nodes: Vec<TreeNode>,
    /// The nodes without a parent: the container's root process, or more than one when
    /// chains began at different processes (their ancestors were not followed).
    pub roots: Vec<usize>,
    /// Deviant processes seen without their ancestry: they ran before the sensor saw them
    /// start, so their deviations have no chain. Ordered by process key.
    pub without_ancestry: Vec<UnrootedProcess>,
}

/// How a node relates to its parent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Relation {
    /// No parent: a root of the container's tree.
    Root,
    /// A process its parent started (fork, then exec).
    Child,
    /// The same process, running a new program: `exec` replaced its parent's image.
    Exec,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TreeNode {
    /// Index of the parent in [`ContainerTree::nodes`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<usize>,
    pub relation: Relation,
    /// Levels below its root.
    pub depth: u32,
    /// Indexes of its children in [`ContainerTree::nodes`]: processes by exec time, then
    /// pid; a marker of omitted processes last.
    pub children: Vec<usize>,
    #[serde(flatten)]
    pub item: TreeItem,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum TreeItem {
    /// Boxed: a process is large, a marker a count.
    Process(Box<TreeProcess>),
    /// Processes a chain cut by `trace-processes` leaves out (see [`crate::limits`]); the
    /// process the chain ends with is its child.
    Omitted { count: u32 },
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TreeProcess {
    #[serde(flatten)]
    pub process: TraceProcess,
    /// The deviations found on this process (each of its own deviant connections too),
    /// in the investigation's order.
    pub deviations: Vec<DeviationMark>,
    /// Its connections across the pod's boundary, deviant or not, by time.
    pub connections: Vec<TreeConnection>,
}

impl TreeProcess {
    /// Whether it is a deviant process (its own deviant connections aside).
    pub fn has_process_deviation(&self) -> bool {
        self.deviations
            .iter()
            .any(|d| d.kind == DeviationType::Process)
    }
}

/// Which deviation, in short.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviationMark {
    pub uid: String,
    #[serde(rename = "type")]
    pub kind: DeviationType,
    pub policy_name: String,
    pub policy_uid: String,
    pub count: u64,
    pub relevant: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The kernel stopped it (see [`DeviationTrace::prevented`]).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub prevented: bool,
}

impl DeviationMark {
    fn of(d: &DeviationTrace) -> Self {
        DeviationMark {
            uid: d.deviation_uid.clone(),
            kind: d.kind,
            policy_name: d.policy_name.clone(),
            policy_uid: d.policy_uid.clone(),
            count: d.count,
            relevant: d.relevant,
            reason: d.reason.clone(),
            prevented: d.prevented,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TreeConnection {
    #[serde(flatten)]
    pub connection: TraceConnection,
    /// The deviations that are this connection (ingress and egress); empty when it is only
    /// what the deviant process also did.
    pub deviations: Vec<DeviationMark>,
}

impl TreeConnection {
    pub fn deviant(&self) -> bool {
        !self.deviations.is_empty()
    }
}

/// A deviant process whose ancestry the investigation never saw.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UnrootedProcess {
    pub process: ProcessKey,
    pub deviations: Vec<DeviationMark>,
    pub connections: Vec<TreeConnection>,
}

/// What a child is among its parent's children.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum ChildKey {
    /// Pid and exec time (the bits of the epoch seconds).
    Process(u32, u64),
    Omitted(u32),
}

#[derive(Default)]
struct Builder {
    nodes: Vec<TreeNode>,
    index: FxHashMap<(Option<usize>, ChildKey), usize>,
    unrooted: Vec<UnrootedProcess>,
}

impl Builder {
    fn node(
        &mut self,
        parent: Option<usize>,
        key: ChildKey,
        relation: Relation,
        item: impl FnOnce() -> TreeItem,
    ) -> usize {
        if let Some(&i) = self.index.get(&(parent, key)) {
            return i;
        }
        let i = self.nodes.len();
        let depth = parent.map_or(0, |p| self.nodes[p].depth + 1);
        self.nodes.push(TreeNode {
            parent,
            relation,
            depth,
            children: Vec::new(),
            item: item(),
        });
        if let Some(p) = parent {
            self.nodes[p].children.push(i);
        }
        self.index.insert((parent, key), i);
        i
    }

    fn add(&mut self, d: &DeviationTrace) {
        let mark = DeviationMark::of(d);
        if d.chain.is_empty() {
            let at = match self.unrooted.iter().position(|u| u.process == d.process) {
                Some(at) => at,
                None => {
                    self.unrooted.push(UnrootedProcess {
                        process: d.process,
                        deviations: Vec::new(),
                        connections: Vec::new(),
                    });
                    self.unrooted.len() - 1
                }
            };
            let u = &mut self.unrooted[at];
            add_mark(&mut u.deviations, mark.clone());
            add_connections(&mut u.connections, d, &mark);
            return;
        }
        let last = d.chain.len() - 1;
        let mut parent = None;
        let mut previous_pid = None;
        for (i, p) in d.chain.iter().enumerate() {
            if i == last && i > 0 && d.omitted > 0 {
                parent = Some(self.node(
                    parent,
                    ChildKey::Omitted(d.omitted),
                    Relation::Child,
                    || TreeItem::Omitted { count: d.omitted },
                ));
            }
            let relation = match (parent, previous_pid) {
                (None, _) => Relation::Root,
                (Some(_), Some(pid)) if pid == p.pid => Relation::Exec,
                (Some(_), _) => Relation::Child,
            };
            let key = ChildKey::Process(p.pid, p.start_time.to_bits());
            let at = self.node(parent, key, relation, || {
                TreeItem::Process(Box::new(TreeProcess {
                    process: p.clone(),
                    deviations: Vec::new(),
                    connections: Vec::new(),
                }))
            });
            if let TreeItem::Process(tp) = &mut self.nodes[at].item {
                // The same process in another deviation's chain: what one chain knows (its
                // policy node, how it ended) and whether any says it deviates.
                tp.process.deviant |= p.deviant;
                if tp.process.node.is_none() {
                    tp.process.node.clone_from(&p.node);
                }
                if tp.process.ended.is_none() {
                    tp.process.ended.clone_from(&p.ended);
                }
                if i == last {
                    add_mark(&mut tp.deviations, mark.clone());
                    add_connections(&mut tp.connections, d, &mark);
                }
            }
            parent = Some(at);
            previous_pid = Some(p.pid);
        }
    }

    /// The nodes depth first with their children in order, indexes renumbered.
    fn finish(mut self, container: ContainerRef) -> ContainerTree {
        let order = |nodes: &[TreeNode], a: &usize, b: &usize| {
            sort_key(&nodes[*a])
                .partial_cmp(&sort_key(&nodes[*b]))
                .unwrap_or(std::cmp::Ordering::Equal)
        };
        let mut roots: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].parent.is_none())
            .collect();
        roots.sort_by(|a, b| order(&self.nodes, a, b));
        for i in 0..self.nodes.len() {
            let mut children = std::mem::take(&mut self.nodes[i].children);
            children.sort_by(|a, b| order(&self.nodes, a, b));
            self.nodes[i].children = children;
            if let TreeItem::Process(p) = &mut self.nodes[i].item {
                p.connections
                    .sort_by(|a, b| connection_order(&a.connection, &b.connection));
            }
        }
        // Pre-order walk with an explicit stack: new index of every old one.
        let mut new_index = vec![0usize; self.nodes.len()];
        let mut visit = Vec::with_capacity(self.nodes.len());
        let mut stack: Vec<usize> = roots.iter().rev().copied().collect();
        while let Some(i) = stack.pop() {
            new_index[i] = visit.len();
            visit.push(i);
            stack.extend(self.nodes[i].children.iter().rev().copied());
        }
        let mut old: Vec<Option<TreeNode>> = self.nodes.into_iter().map(Some).collect();
        let nodes = visit
            .iter()
            .map(|&i| {
                let mut n = old[i].take().expect("each node is visited once");
                n.parent = n.parent.map(|p| new_index[p]);
                for c in &mut n.children {
                    *c = new_index[*c];
                }
                n
            })
            .collect();
        let roots = roots.iter().map(|&r| new_index[r]).collect();
        self.unrooted.sort_by_key(|u| u.process);
        for u in &mut self.unrooted {
            u.connections
                .sort_by(|a, b| connection_order(&a.connection, &b.connection));
        }
        ContainerTree {
            container,
            nodes,
            roots,
            without_ancestry: self.unrooted,
        }
    }
}

/// Processes by exec time then pid, markers of omitted processes after them.
fn sort_key(n: &TreeNode) -> (u8, f64, u32) {
    match &n.item {
        TreeItem::Process(p) => (0, p.process.start_time, p.process.pid),
        TreeItem::Omitted { count } => (1, 0.0, *count),
    }
}

fn connection_order(a: &TraceConnection, b: &TraceConnection) -> std::cmp::Ordering {
    a.timestamp.total_cmp(&b.timestamp).then_with(|| {
        (a.direction, a.protocol, &a.ip, a.port).cmp(&(b.direction, b.protocol, &b.ip, b.port))
    })
}

fn add_mark(marks: &mut Vec<DeviationMark>, mark: DeviationMark) {
    if !marks
        .iter()
        .any(|m| m.uid == mark.uid && m.policy_uid == mark.policy_uid)
    {
        marks.push(mark);
    }
}

/// The deviation's connection (marked with it) and the other connections of its process, each
/// remote and port once, as a trace keeps them.
fn add_connections(into: &mut Vec<TreeConnection>, d: &DeviationTrace, mark: &DeviationMark) {
    let deviant = d.connection.iter().map(|c| (c, true));
    let others = d.connections.iter().map(|c| (c, false));
    for (c, is_deviation) in deviant.chain(others) {
        let same = |t: &TreeConnection| {
            let t = &t.connection;
            (t.direction, t.protocol, &t.ip, t.port) == (c.direction, c.protocol, &c.ip, c.port)
        };
        let at = match into.iter().position(same) {
            Some(at) => at,
            None => {
                into.push(TreeConnection {
                    connection: c.clone(),
                    deviations: Vec::new(),
                });
                into.len() - 1
            }
        };
        if is_deviation {
            add_mark(&mut into[at].deviations, mark.clone());
        }
    }
}

impl Investigation {
    /// Every deviation's chain merged into one tree per container: shared prefixes merged,
    /// execs told from children, connections under their process (see [`crate::trace::tree`]).
    pub fn tree(&self) -> InvestigationTree {
        let mut containers: Vec<(ContainerRef, Builder)> = Vec::new();
        for d in &self.deviations {
            let at = match containers.iter().position(|(c, _)| *c == d.container) {
                Some(at) => at,
                None => {
                    containers.push((d.container.clone(), Builder::default()));
                    containers.len() - 1
                }
            };
            containers[at].1.add(d);
        }
        containers.sort_by(|(a, _), (b, _)| {
            (
                &a.namespace,
                &a.pod,
                &a.container_name,
                &a.container_id,
                &a.image,
            )
                .cmp(&(
                    &b.namespace,
                    &b.pod,
                    &b.container_name,
                    &b.container_id,
                    &b.image,
                ))
        });
        InvestigationTree {
            containers: containers.into_iter().map(|(c, b)| b.finish(c)).collect(),
        }
    }
}

#[cfg(test)]
mod tests;
