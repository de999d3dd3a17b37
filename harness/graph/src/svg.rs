//! A laid-out graph as one self-contained SVG document: no external fonts, style sheets,
//! scripts or links, every colour an attribute. Each node is a `<g class="node …"
//! data-node-id="…">` with a `<title>` (shown on hover) so a browser test or the console's
//! script can find it; deviant nodes are red, connections are pills, `exec` edges dashed and
//! labelled.

use std::fmt::Write as _;

use crate::layout::{LINE_HEIGHT, Layout, PAD_X, PAD_Y, V_GAP};
use crate::model::{EdgeKind, Flow, Graph, NodeKind, Style};

const RED: &str = "#c62828";
const RED_FILL: &str = "#ffebee";
const INK: &str = "#263238";
const EDGE: &str = "#78909c";
const NET: &str = "#1565c0";

/// XML text and attribute escaping: `&`, `<`, `>`, and both quotes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Characters XML 1.0 does not allow at all (control characters but tab and
            // newlines): shown as the replacement character rather than making the file bad.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// The graph drawn where `layout` placed it (a layout of this graph: see [`crate::layout`]).
pub fn to_svg(graph: &Graph, layout: &Layout) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"monospace\" font-size=\"12\">",
        w = layout.width,
        h = layout.height
    );
    out.push_str("<g class=\"edges\" fill=\"none\">\n");
    for e in &graph.edges {
        let (Some(from), Some(to)) = (layout.boxes.get(e.from), layout.boxes.get(e.to)) else {
            continue;
        };
        if e.from == e.to {
            continue;
        }
        let deviant = graph.nodes[e.to].style == Style::Deviant;
        let (class, colour, dash) = match e.kind {
            EdgeKind::Child => ("child", if deviant { RED } else { EDGE }, ""),
            EdgeKind::Exec => (
                "exec",
                if deviant { RED } else { EDGE },
                " stroke-dasharray=\"6 4\"",
            ),
            EdgeKind::Connection(Flow::Egress) => (
                "egress",
                if deviant { RED } else { NET },
                " stroke-dasharray=\"2 3\"",
            ),
            EdgeKind::Connection(Flow::Ingress) => (
                "ingress",
                if deviant { RED } else { NET },
                " stroke-dasharray=\"2 3\"",
            ),
        };
        let (x1, y1, x2, y2) = (from.centre_x(), from.bottom(), to.centre_x(), to.y);
        // The edge a node is placed by is an elbow between the layers; any other (a second
        // parent in a DAG) goes straight across.
        let d = if layout.tree_parent.get(e.to) == Some(&Some(e.from)) {
            let mid = y2 - V_GAP / 2;
            format!("M{x1} {y1} V{mid} H{x2} V{y2}")
        } else {
            format!("M{x1} {y1} L{x2} {y2}")
        };
        let _ = writeln!(
            out,
            "<path class=\"edge {class}\" d=\"{d}\" stroke=\"{colour}\" stroke-width=\"1.5\"{dash}/>"
        );
        let label = match e.kind {
            EdgeKind::Exec => Some("exec"),
            EdgeKind::Connection(Flow::Ingress) => Some("ingress"),
            _ => None,
        };
        if let Some(label) = label {
            let _ = writeln!(
                out,
                "<text class=\"edge-label\" x=\"{}\" y=\"{}\" fill=\"{colour}\" font-size=\"11\">{label}</text>",
                x2 + 4,
                y2 - 6
            );
        }
    }
    out.push_str("</g>\n");
    for (i, node) in graph.nodes.iter().enumerate() {
        let Some(b) = layout.boxes.get(i) else {
            continue;
        };
        let deviant = node.style == Style::Deviant;
        let kind = match node.kind {
            NodeKind::Process => "process",
            NodeKind::Connection => "connection",
            NodeKind::Group => "group",
            NodeKind::Marker => "marker",
        };
        let _ = writeln!(
            out,
            "<g class=\"node {kind}{}\" data-node-id=\"{}\">",
            if deviant { " deviant" } else { "" },
            escape(&node.id)
        );
        let title = node
            .tooltip
            .clone()
            .unwrap_or_else(|| node.lines.join("\n"));
        let _ = writeln!(out, "<title>{}</title>", escape(&title));
        let (fill, stroke) = match (node.kind, deviant) {
            (_, true) => (RED_FILL, RED),
            (NodeKind::Process, false) => ("#ffffff", INK),
            (NodeKind::Connection, false) => ("#e3f2fd", NET),
            (NodeKind::Group, false) => ("#eceff1", EDGE),
            (NodeKind::Marker, false) => ("#fafafa", EDGE),
        };
        let rx = match node.kind {
            NodeKind::Connection => b.h / 2,
            NodeKind::Group => 8,
            _ => 3,
        };
        let dash = if node.kind == NodeKind::Marker {
            " stroke-dasharray=\"4 3\""
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" rx=\"{rx}\" fill=\"{fill}\" stroke=\"{stroke}\" stroke-width=\"{}\"{dash}/>",
            b.x,
            b.y,
            b.w,
            b.h,
            if deviant { 2 } else { 1 }
        );
        let ink = if deviant { RED } else { INK };
        for (k, line) in node.lines.iter().enumerate() {
            let y = b.y + PAD_Y + (k as i64 + 1) * LINE_HEIGHT - 4;
            let weight = if k == 0 { " font-weight=\"bold\"" } else { "" };
            let _ = writeln!(
                out,
                "<text x=\"{}\" y=\"{y}\" fill=\"{ink}\"{weight} xml:space=\"preserve\">{}</text>",
                b.x + PAD_X,
                escape(line)
            );
        }
        out.push_str("</g>\n");
    }
    out.push_str("</svg>\n");
    out
}
