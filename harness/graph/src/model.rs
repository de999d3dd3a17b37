//! A graph to draw: boxes with lines of text, and the edges between them. Trees and small
//! DAGs: an edge goes from a parent (a process, a group) to what hangs under it.

use serde::Serialize;

/// Nodes in the order they were added; edges refer to them by index.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Graph {
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    /// Unique in the graph; what `data-node-id` says in the SVG.
    pub id: String,
    /// The text in the box, one entry a line.
    pub lines: Vec<String>,
    pub kind: NodeKind,
    pub style: Style,
    /// Shown on hover (the SVG `<title>`): everything the label leaves out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tooltip: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum NodeKind {
    Process,
    /// A connection, or a policy's network rule.
    Connection,
    /// A container, a policy, or a part of a graph ("unmatched", "without ancestry").
    Group,
    /// Something left out ("… 9971 processes omitted").
    Marker,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Style {
    Normal,
    /// Not allowed by the policy: drawn red.
    Deviant,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Edge {
    /// Indexes into [`Graph::nodes`].
    pub from: usize,
    pub to: usize,
    pub kind: EdgeKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum EdgeKind {
    /// A process its parent started, or a part under its group.
    Child,
    /// The same process running a new program (`exec` replaced its image).
    Exec,
    /// A connection of the process it hangs from.
    Connection(Flow),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Flow {
    Ingress,
    Egress,
}

impl Graph {
    /// Adds a node; its index.
    pub fn add(&mut self, node: Node) -> usize {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    pub fn link(&mut self, from: usize, to: usize, kind: EdgeKind) {
        self.edges.push(Edge { from, to, kind });
    }

    /// The nodes no edge leads to, in order.
    pub fn roots(&self) -> Vec<usize> {
        let mut has_parent = vec![false; self.nodes.len()];
        for e in self.edges.iter().filter(|e| e.from != e.to) {
            if let Some(h) = has_parent.get_mut(e.to) {
                *h = true;
            }
        }
        (0..self.nodes.len()).filter(|&i| !has_parent[i]).collect()
    }

    /// The nodes edges lead to from `node`, in edge order.
    pub fn children(&self, node: usize) -> Vec<usize> {
        self.edges
            .iter()
            .filter(|e| e.from == node)
            .map(|e| e.to)
            .collect()
    }
}

impl Node {
    pub fn new(id: impl Into<String>, kind: NodeKind, lines: Vec<String>) -> Self {
        Node {
            id: id.into(),
            lines,
            kind,
            style: Style::Normal,
            tooltip: None,
        }
    }

    pub fn deviant(mut self, deviant: bool) -> Self {
        if deviant {
            self.style = Style::Deviant;
        }
        self
    }

    pub fn tooltip(mut self, text: impl Into<String>) -> Self {
        self.tooltip = Some(text.into());
        self
    }
}

/// A label line at most `max` characters, `…` last when cut (the tooltip has it whole).
pub fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut s: String = text.chars().take(max.saturating_sub(1)).collect();
    s.push('…');
    s
}
