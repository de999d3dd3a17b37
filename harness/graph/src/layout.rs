//! A layered layout of our own, for trees and small DAGs: each node on the layer of its depth
//! from the roots, siblings kept together left to right in edge order, a parent centred over
//! its children (tidy-tree style), boxes sized from their text. Every subtree gets a span of
//! its own as wide as its widest layer needs, so no two boxes overlap.
//!
//! A DAG is laid out by its breadth-first spanning forest: a node with several parents sits
//! under the first that reaches it (its other edges are drawn across). Nodes no root reaches
//! (a cycle) start trees of their own. Linear in nodes and edges, and nothing recurses: a
//! chain of 10,000 lays out on a test thread's stack.

use std::collections::VecDeque;

use serde::Serialize;

use crate::model::Graph;

/// The estimated width of a character of the monospace font the SVG uses (12 px: about
/// 7.2 px wide; rounded up so text stays inside its box).
pub const CHAR_WIDTH: i64 = 8;
pub const LINE_HEIGHT: i64 = 16;
pub const PAD_X: i64 = 10;
pub const PAD_Y: i64 = 6;
/// Between neighbouring boxes, and between layers.
pub const H_GAP: i64 = 24;
pub const V_GAP: i64 = 48;
pub const MARGIN: i64 = 16;

/// A box, in pixels from the drawing's top left.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Rect {
    pub x: i64,
    pub y: i64,
    pub w: i64,
    pub h: i64,
}

impl Rect {
    pub fn overlaps(&self, o: &Rect) -> bool {
        self.x < o.x + o.w && o.x < self.x + self.w && self.y < o.y + o.h && o.y < self.y + self.h
    }

    pub fn centre_x(&self) -> i64 {
        self.x + self.w / 2
    }

    pub fn bottom(&self) -> i64 {
        self.y + self.h
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Layout {
    /// One per node of the graph, by index.
    pub boxes: Vec<Rect>,
    /// The layer (depth in the spanning forest) of each node.
    pub layers: Vec<u32>,
    /// The parent each node is placed under; none for the roots.
    pub tree_parent: Vec<Option<usize>>,
    pub width: i64,
    pub height: i64,
}

/// The size of a node's box from its text.
pub fn box_size(lines: &[String]) -> (i64, i64) {
    let chars = lines.iter().map(|l| l.chars().count()).max().unwrap_or(0) as i64;
    let rows = lines.len().max(1) as i64;
    (
        (chars * CHAR_WIDTH + 2 * PAD_X).max(40),
        rows * LINE_HEIGHT + 2 * PAD_Y,
    )
}

pub fn layout(graph: &Graph) -> Layout {
    let n = graph.nodes.len();
    let sizes: Vec<(i64, i64)> = graph.nodes.iter().map(|v| box_size(&v.lines)).collect();
    let mut out_edges: Vec<Vec<usize>> = vec![Vec::new(); n];
    for e in &graph.edges {
        if e.from < n && e.to < n && e.from != e.to {
            out_edges[e.from].push(e.to);
        }
    }

    // The breadth-first spanning forest: the roots in order, then whatever no root reached.
    let mut tree_parent: Vec<Option<usize>> = vec![None; n];
    let mut tree_children: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut layers = vec![0u32; n];
    let mut seen = vec![false; n];
    let mut order = Vec::with_capacity(n);
    let mut tree_roots = Vec::new();
    let starts = graph.roots().into_iter().chain(0..n);
    for start in starts {
        if seen[start] {
            continue;
        }
        seen[start] = true;
        tree_roots.push(start);
        let mut queue = VecDeque::from([start]);
        while let Some(v) = queue.pop_front() {
            order.push(v);
            for &c in &out_edges[v] {
                if !seen[c] {
                    seen[c] = true;
                    tree_parent[c] = Some(v);
                    tree_children[v].push(c);
                    layers[c] = layers[v] + 1;
                    queue.push_back(c);
                }
            }
        }
    }

    // Spans, children before parents (the reverse of breadth-first order).
    let mut span = vec![0i64; n];
    for &v in order.iter().rev() {
        let kids = &tree_children[v];
        let block: i64 =
            kids.iter().map(|&c| span[c]).sum::<i64>() + H_GAP * (kids.len() as i64 - 1).max(0);
        span[v] = sizes[v].0.max(block);
    }

    // Lefts of spans, parents before children; each box centred in its span, over its
    // children, which are centred in it too.
    let mut left = vec![0i64; n];
    let mut cursor = MARGIN;
    for &r in &tree_roots {
        left[r] = cursor;
        cursor += span[r] + H_GAP;
    }
    let width = (cursor - H_GAP + MARGIN).max(2 * MARGIN);
    let mut xs = vec![0i64; n];
    for &v in &order {
        let kids = &tree_children[v];
        let block: i64 =
            kids.iter().map(|&c| span[c]).sum::<i64>() + H_GAP * (kids.len() as i64 - 1).max(0);
        let mut at = left[v] + (span[v] - block) / 2;
        for &c in kids {
            left[c] = at;
            at += span[c] + H_GAP;
        }
    }
    // Boxes, children first: a leaf centred in its span, a parent centred over its first and
    // last child (kept inside its own span, which no other box of its layer enters).
    for &v in order.iter().rev() {
        let w = sizes[v].0;
        let kids = &tree_children[v];
        xs[v] = match (kids.first(), kids.last()) {
            (Some(&first), Some(&last)) => {
                let mid = (xs[first] + sizes[first].0 / 2 + xs[last] + sizes[last].0 / 2) / 2;
                (mid - w / 2).clamp(left[v], left[v] + span[v] - w)
            }
            _ => left[v] + (span[v] - w) / 2,
        };
    }

    // Layers top to bottom, each as tall as its tallest box.
    let depth = layers.iter().copied().max().map_or(0, |d| d as usize + 1);
    let mut layer_height = vec![0i64; depth];
    for v in 0..n {
        let l = layers[v] as usize;
        layer_height[l] = layer_height[l].max(sizes[v].1);
    }
    let mut layer_y = Vec::with_capacity(depth);
    let mut y = MARGIN;
    for h in &layer_height {
        layer_y.push(y);
        y += h + V_GAP;
    }
    let height = if depth == 0 {
        2 * MARGIN
    } else {
        y - V_GAP + MARGIN
    };

    let boxes = (0..n)
        .map(|v| Rect {
            x: xs[v],
            y: layer_y[layers[v] as usize],
            w: sizes[v].0,
            h: sizes[v].1,
        })
        .collect();
    Layout {
        boxes,
        layers,
        tree_parent,
        width,
        height,
    }
}
