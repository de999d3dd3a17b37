//! guardlab's graphs: a policy's process tree with its connections (and the deviations that
//! would add to it), and an investigation's one causal tree per container, laid out and drawn
//! as self-contained SVG by guardlab itself, for the guard console and the HTML report.
//!
//! **Pure**, as the engine is: no I/O, no clock; the same input gives the same bytes.
//! [`model`] is the graph, [`layout`] places it (layered, tidy-tree style, linear in the
//! nodes, no recursion), [`svg`] draws it; [`policy_graph`] and [`investigation_graph`] make
//! graphs from the engine's documents and investigations.

pub mod investigation_graph;
pub mod layout;
pub mod model;
pub mod policy_graph;
pub mod svg;

pub use investigation_graph::investigation_graph;
pub use layout::{Layout, Rect, layout};
pub use model::{EdgeKind, Flow, Graph, NodeKind, Style};
pub use policy_graph::policy_graph;
pub use svg::to_svg;
