//! A YAML text as trees of nodes with their positions, one tree per document of the stream.
//!
//! Built from `yaml-rust2`'s events pulled one at a time (its own loader recurses once per
//! level); the text has passed [`guardlab_input::scan_yaml`] first, so nesting and what the
//! aliases copy are bounded.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, ScanError, TScalarStyle};

use crate::validate::{FieldPath, PathSegment};

/// A 1-based line and column in the text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Pos {
    pub line: usize,
    pub column: usize,
}

impl From<Marker> for Pos {
    fn from(marker: Marker) -> Self {
        // yaml-rust2 counts lines from 1 and columns from 0.
        Pos {
            line: marker.line().max(1),
            column: marker.col() + 1,
        }
    }
}

/// How a scalar was written: only a plain scalar is resolved to a number, a boolean or null;
/// a quoted or block scalar is always a string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ScalarStyle {
    Plain,
    Quoted,
    Block,
}

/// A YAML node with its position. A mapping keeps its keys as nodes too, because a problem
/// with a field is best shown at the field's key.
#[derive(Clone, Debug)]
pub(crate) struct PosNode {
    pub pos: Pos,
    pub kind: PosKind,
}

#[derive(Clone, Debug)]
pub(crate) enum PosKind {
    Scalar {
        value: String,
        style: ScalarStyle,
        /// An explicit tag (`!!str`, `!custom`), as `handle` + `suffix`.
        tag: Option<String>,
    },
    Sequence(Vec<PosNode>),
    Mapping(Vec<(PosNode, PosNode)>),
}

impl PosNode {
    /// The text of a scalar node.
    pub fn scalar(&self) -> Option<&str> {
        match &self.kind {
            PosKind::Scalar { value, .. } => Some(value),
            _ => None,
        }
    }

    /// The value of mapping key `key` (compared as text), with the key's node.
    pub fn entry(&self, key: &str) -> Option<(&PosNode, &PosNode)> {
        match &self.kind {
            PosKind::Mapping(entries) => entries
                .iter()
                .find(|(k, _)| k.scalar() == Some(key))
                .map(|(k, v)| (k, v)),
            _ => None,
        }
    }

    /// The node at `path`, when the text has it.
    pub fn get(&self, path: &FieldPath) -> Option<&PosNode> {
        path.segments()
            .iter()
            .try_fold(self, |node, segment| node.child(segment).map(|(_, n)| n))
    }

    /// The position of the field at `path`, or of its nearest ancestor present in the text.
    pub fn locate(&self, path: &FieldPath) -> Pos {
        let mut node = self;
        let mut pos = self.pos;
        for segment in path.segments() {
            let Some((next_pos, next_node)) = node.child(segment) else {
                break;
            };
            pos = next_pos;
            node = next_node;
        }
        pos
    }

    /// One step down: a mapping's value by key (at its key's position) or a list's item.
    fn child(&self, segment: &PathSegment) -> Option<(Pos, &PosNode)> {
        match (segment, &self.kind) {
            (PathSegment::Key(key), PosKind::Mapping(_)) => {
                self.entry(key).map(|(k, v)| (k.pos, v))
            }
            (PathSegment::Index(index), PosKind::Sequence(items)) => {
                items.get(*index).map(|item| (item.pos, item))
            }
            _ => None,
        }
    }
}

/// Builds one [`PosNode`] tree per document from yaml-rust2's marked events.
#[derive(Default)]
pub(crate) struct PositionTree {
    /// One entry per document of the stream; `None` for an empty document (`---` alone).
    documents: Vec<Option<PosNode>>,
    /// Where each document starts (its `---`, or its first node).
    starts: Vec<Pos>,
    stack: Vec<Frame>,
    root: Option<PosNode>,
    /// Anchored nodes, so an alias resolves to (a copy of) what it names.
    anchors: HashMap<usize, PosNode>,
}

enum Frame {
    Sequence {
        pos: Pos,
        anchor: usize,
        items: Vec<PosNode>,
    },
    Mapping {
        pos: Pos,
        anchor: usize,
        entries: Vec<(PosNode, PosNode)>,
        key: Option<PosNode>,
    },
}

impl PositionTree {
    /// The trees of every document of `text`, which [`guardlab_input::scan_yaml`] accepted.
    pub fn parse(text: &str) -> Result<Vec<Option<PosNode>>, ScanError> {
        Self::parse_with_starts(text).map(|(documents, _)| documents)
    }

    /// [`PositionTree::parse`], with where each document starts.
    pub fn parse_with_starts(text: &str) -> Result<(Vec<Option<PosNode>>, Vec<Pos>), ScanError> {
        let mut builder = PositionTree::default();
        let mut parser = Parser::new_from_str(text);
        loop {
            let (event, marker) = parser.next_token()?;
            if event == Event::StreamEnd {
                return Ok((builder.documents, builder.starts));
            }
            builder.on_event(event, marker);
        }
    }

    fn push(&mut self, node: PosNode, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Sequence { items, .. }) => items.push(node),
            Some(Frame::Mapping { entries, key, .. }) => match key.take() {
                None => *key = Some(node),
                Some(k) => entries.push((k, node)),
            },
        }
    }

    fn on_event(&mut self, event: Event, marker: Marker) {
        let pos = Pos::from(marker);
        match event {
            Event::DocumentStart => {
                self.starts.push(pos);
                self.root = None;
                self.anchors.clear();
            }
            Event::DocumentEnd => {
                let root = self.root.take();
                // A document with nothing in it parses as an empty plain scalar.
                let empty = matches!(&root, Some(PosNode { kind: PosKind::Scalar { value, style: ScalarStyle::Plain, tag: None }, .. }) if value.is_empty() || value == "~" || value == "null");
                self.documents.push(if empty { None } else { root });
            }
            Event::Scalar(value, style, anchor, tag) => self.push(
                PosNode {
                    pos,
                    kind: PosKind::Scalar {
                        value,
                        style: match style {
                            TScalarStyle::Plain => ScalarStyle::Plain,
                            TScalarStyle::SingleQuoted | TScalarStyle::DoubleQuoted => {
                                ScalarStyle::Quoted
                            }
                            TScalarStyle::Literal | TScalarStyle::Folded => ScalarStyle::Block,
                        },
                        tag: tag.map(|t| format!("{}{}", t.handle, t.suffix)),
                    },
                },
                anchor,
            ),
            Event::Alias(anchor) => {
                let node = self.anchors.get(&anchor).cloned().unwrap_or(PosNode {
                    pos,
                    kind: PosKind::Scalar {
                        value: String::new(),
                        style: ScalarStyle::Plain,
                        tag: None,
                    },
                });
                self.push(node, 0);
            }
            Event::SequenceStart(anchor, _) => self.stack.push(Frame::Sequence {
                pos,
                anchor,
                items: Vec::new(),
            }),
            Event::MappingStart(anchor, _) => self.stack.push(Frame::Mapping {
                pos,
                anchor,
                entries: Vec::new(),
                key: None,
            }),
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match self.stack.pop() {
                    Some(Frame::Sequence { pos, anchor, items }) => {
                        // A block sequence's start mark is its first `-`; the first item is as good.
                        let pos = items.first().map_or(pos, |item| item.pos);
                        (
                            PosNode {
                                pos,
                                kind: PosKind::Sequence(items),
                            },
                            anchor,
                        )
                    }
                    Some(Frame::Mapping {
                        pos,
                        anchor,
                        entries,
                        ..
                    }) => {
                        // A block mapping's start mark is not on its first key; use the key.
                        let pos = entries.first().map_or(pos, |(key, _)| key.pos);
                        (
                            PosNode {
                                pos,
                                kind: PosKind::Mapping(entries),
                            },
                            anchor,
                        )
                    }
                    None => return,
                };
                self.push(node, anchor);
            }
            Event::StreamStart | Event::StreamEnd | Event::Nothing => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trees(text: &str) -> Vec<Option<PosNode>> {
        PositionTree::parse(text).unwrap()
    }

    pub(crate) fn path(segments: &[&str]) -> FieldPath {
        segments
            .iter()
            .fold(FieldPath::root(), |path, s| match s.parse::<usize>() {
                Ok(i) => path.index(i),
                Err(_) => path.key(s),
            })
    }

    #[test]
    fn positions_point_at_keys_and_items() {
        let text = "a: 1\nbb:\n  - x\n  - {c: d}\n  - name: n\n    id: i\n";
        let docs = trees(text);
        let root = docs[0].as_ref().unwrap();
        assert_eq!(root.locate(&path(&["a"])), Pos { line: 1, column: 1 });
        assert_eq!(root.locate(&path(&["bb"])), Pos { line: 2, column: 1 });
        assert_eq!(root.locate(&path(&["bb", "0"])), Pos { line: 3, column: 5 });
        assert_eq!(
            root.locate(&path(&["bb", "1", "c"])),
            Pos { line: 4, column: 6 }
        );
        assert_eq!(root.locate(&path(&["bb", "2"])), Pos { line: 5, column: 5 });
        assert_eq!(
            root.locate(&path(&["bb", "2", "id"])),
            Pos { line: 6, column: 5 }
        );
        // Missing fields fall back to the nearest ancestor that is there.
        assert_eq!(
            root.locate(&path(&["bb", "2", "exe"])),
            Pos { line: 5, column: 5 }
        );
        assert_eq!(root.locate(&path(&["bb", "7"])), Pos { line: 2, column: 1 });
        assert_eq!(
            root.get(&path(&["bb", "1", "c"])).and_then(PosNode::scalar),
            Some("d")
        );
        assert!(root.get(&path(&["bb", "1", "x"])).is_none());
    }

    #[test]
    fn documents_split_on_separators_and_empty_ones_are_none() {
        let docs = trees("---\na: 1\n---\n---\nb: [x]\n");
        assert_eq!(docs.len(), 3);
        assert!(docs[1].is_none());
        assert_eq!(
            docs[2].as_ref().unwrap().locate(&path(&["b", "0"])),
            Pos { line: 5, column: 5 }
        );
        assert!(
            trees("# nothing but a comment\n")
                .iter()
                .all(Option::is_none)
        );
        // A quoted empty string is a document, not an empty one.
        assert!(trees("''\n")[0].is_some());
    }

    #[test]
    fn aliases_resolve_to_their_anchor() {
        let docs = trees("base: &b {x: 1}\nother: *b\n");
        let root = docs[0].as_ref().unwrap();
        assert_eq!(
            root.locate(&path(&["other", "x"])),
            Pos {
                line: 1,
                column: 11
            }
        );
    }

    #[test]
    fn scalars_keep_their_style_and_tag() {
        let docs = trees("a: 1\nb: '1'\nc: |\n  1\nd: !!str 1\n");
        let root = docs[0].as_ref().unwrap();
        let style = |key: &str| match &root.get(&path(&[key])).unwrap().kind {
            PosKind::Scalar { style, tag, .. } => (*style, tag.clone()),
            other => panic!("{other:?}"),
        };
        assert_eq!(style("a"), (ScalarStyle::Plain, None));
        assert_eq!(style("b"), (ScalarStyle::Quoted, None));
        assert_eq!(style("c"), (ScalarStyle::Block, None));
        assert_eq!(
            style("d"),
            (ScalarStyle::Plain, Some("tag:yaml.org,2002:str".into()))
        );
    }
}
