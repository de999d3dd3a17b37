//! Reading and writing spyctl YAML files: text in, typed [`Document`]s out, and back.
//!
//! Bad input is reported as [`Diagnostic`]s that name the file, line, column and field, e.g.
//! `policy.yaml:57:11: spec.processPolicy[1].children[0]: unknown field `names`, expected one of ...`.
//!
//! Two parsers read the same text, each for what it is good at:
//! * `serde_yaml` builds the typed values (and reports shape errors with a location and a path);
//! * `yaml-rust2`'s event parser gives every node its line and column, so a problem that
//!   [`crate::validate`] finds after deserialization (which keeps no positions) can still be
//!   pinned to the line of the offending field. It also finds syntax errors first, which
//!   matters because `serde_yaml`'s multi-document iterator repeats a syntax error forever.

use std::collections::HashMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{DeserializeOwned, IgnoredAny};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

pub use crate::model::Document;
use crate::model::{KIND_DEVIATION, KIND_FINGERPRINT, KIND_FINGERPRINT_GROUP, KIND_POLICY};
use crate::validate::{FieldPath, PathSegment, Problem, validate};

const KINDS: [&str; 4] = [
    KIND_FINGERPRINT,
    KIND_POLICY,
    KIND_FINGERPRINT_GROUP,
    KIND_DEVIATION,
];

/// One thing wrong with an input file, with where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    /// 1-based.
    pub line: usize,
    /// 1-based.
    pub column: usize,
    /// The field's path in the document (`spec.processPolicy[0].children[1].names`); empty
    /// when the problem is the document as a whole or its YAML syntax.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for Diagnostic {}

/// All the diagnostics of a file as one error, one per line, for callers that report with
/// `?` (e.g. `anyhow`): `parse_document(name, text).map_err(Diagnostics)?`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, diagnostic) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{diagnostic}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

impl From<Vec<Diagnostic>> for Diagnostics {
    fn from(diagnostics: Vec<Diagnostic>) -> Self {
        Self(diagnostics)
    }
}

/// Parses every document of a file (documents are separated by `---`; empty ones are
/// skipped). Checks syntax and shape only: unknown keys, missing fields, wrong types, unknown
/// kinds. Use [`load_documents`] to apply the [`crate::validate`] rules as well.
///
/// Every document is tried, so the error lists the first problem of each bad document.
pub fn parse_documents(file: &str, text: &str) -> Result<Vec<Document>, Vec<Diagnostic>> {
    let (docs, diagnostics) = parse_located(file, text);
    if diagnostics.is_empty() {
        Ok(docs.into_iter().map(|(doc, _)| doc).collect())
    } else {
        Err(diagnostics)
    }
}

/// Parses a file that must hold exactly one document (see [`parse_documents`]).
pub fn parse_document(file: &str, text: &str) -> Result<Document, Vec<Diagnostic>> {
    exactly_one(file, text, parse_documents(file, text)?)
}

/// Parses every document of a file and validates each: `Ok` only when the file has at least
/// one document and no problem at all. The error lists every problem found, in file order.
pub fn load_documents(file: &str, text: &str) -> Result<Vec<Document>, Vec<Diagnostic>> {
    // The documents that did parse are validated even when others did not, so one run shows
    // every problem of the file.
    let (located, mut diagnostics) = parse_located(file, text);
    for (doc, tree) in &located {
        for problem in validate(doc) {
            diagnostics.push(diagnostic_for(file, tree, &problem));
        }
    }
    if diagnostics.is_empty() {
        return Ok(located.into_iter().map(|(doc, _)| doc).collect());
    }
    // Stable: problems on one line keep the order the rules found them in.
    diagnostics.sort_by_key(|d| (d.line, d.column));
    Err(diagnostics)
}

/// [`load_documents`] for a file that must hold exactly one document.
pub fn load_document(file: &str, text: &str) -> Result<Document, Vec<Diagnostic>> {
    exactly_one(file, text, load_documents(file, text)?)
}

/// Writes a document as spyctl YAML: keys in the public format's order (apiVersion, kind,
/// metadata, spec), absent optional fields left out, response actions and `to`/`from` items
/// as single-key maps.
pub fn to_yaml(doc: &Document) -> String {
    let written = match doc {
        Document::Fingerprint(d) | Document::Policy(d) => serde_yaml::to_string(d),
        Document::FingerprintGroup(d) => serde_yaml::to_string(d),
        Document::Deviation(d) => serde_yaml::to_string(d),
    };
    // Our own types hold only strings, numbers, lists and string-keyed maps, which always
    // serialize; a failure here is a bug in the model, not bad input.
    written.expect("spyctl model types always serialize to YAML")
}

/// Writes several documents into one YAML stream, separated by `---`.
pub fn to_yaml_documents(docs: &[Document]) -> String {
    docs.iter().map(to_yaml).collect::<Vec<_>>().join("---\n")
}

fn exactly_one(
    file: &str,
    text: &str,
    mut docs: Vec<Document>,
) -> Result<Document, Vec<Diagnostic>> {
    if docs.len() == 1 {
        return Ok(docs.remove(0));
    }
    // Only "too many" can get here (a file without documents is refused while parsing), so
    // point at the first document too many.
    let line = second_document_line(text).unwrap_or(1);
    Err(vec![Diagnostic {
        file: file.to_owned(),
        line,
        column: 1,
        field: String::new(),
        message: format!("expected exactly one document, found {}", docs.len()),
    }])
}

fn second_document_line(text: &str) -> Option<usize> {
    let trees = PositionTree::parse(text).ok()?;
    trees.iter().flatten().nth(1).map(|tree| tree.pos.line)
}

/// The documents that parsed (each with its position tree, for later diagnostics), and one
/// diagnostic for each that did not. At least one of the two is non-empty.
type Located = (Vec<(Document, PosNode)>, Vec<Diagnostic>);

/// Parses each non-empty document of the stream.
fn parse_located(file: &str, text: &str) -> Located {
    let failed = |diagnostic| (Vec::new(), vec![diagnostic]);
    let trees = match PositionTree::parse(text) {
        Ok(trees) => trees,
        Err(err) => {
            return failed(Diagnostic {
                file: file.to_owned(),
                line: err.marker().line(),
                column: err.marker().col() + 1,
                field: String::new(),
                message: format!("invalid YAML: {}", err.info()),
            });
        }
    };
    if trees.iter().all(Option::is_none) {
        return failed(Diagnostic {
            file: file.to_owned(),
            line: 1,
            column: 1,
            field: String::new(),
            message: format!(
                "no document in this file; expected a spyctl document ({})",
                KINDS.join(", ")
            ),
        });
    }

    // serde_yaml yields one deserializer per document of the stream, the empty ones included,
    // in the same order as the position trees (checked: the counts must agree).
    let deserializers: Vec<_> = serde_yaml::Deserializer::from_str(text)
        .take(trees.len() + 1)
        .collect();
    if deserializers.len() != trees.len() {
        // libyaml refused what yaml-rust2 accepted (its iterator then repeats its error, hence
        // the `take` above): report libyaml's error, which has a place.
        let start = Pos { line: 1, column: 1 };
        let refusal = deserializers
            .into_iter()
            .find_map(|de| IgnoredAny::deserialize(de).err())
            .map(|err| diagnostic_from_serde(file, start, &err));
        return failed(refusal.unwrap_or_else(|| Diagnostic {
            file: file.to_owned(),
            line: start.line,
            column: start.column,
            field: String::new(),
            message: format!(
                "the YAML parsers disagree on the number of documents ({}); please report this file",
                trees.len()
            ),
        }));
    }

    let mut docs = Vec::new();
    let mut diagnostics = Vec::new();
    for (tree, deserializer) in trees.into_iter().zip(deserializers) {
        let Some(tree) = tree else { continue };
        match deserialize_by_kind(file, &tree, deserializer) {
            Ok(doc) => docs.push((doc, tree)),
            Err(diagnostic) => diagnostics.push(diagnostic),
        }
    }
    (docs, diagnostics)
}

fn deserialize_by_kind(
    file: &str,
    tree: &PosNode,
    de: serde_yaml::Deserializer<'_>,
) -> Result<Document, Diagnostic> {
    let at = |pos: Pos, field: &str, message: String| Diagnostic {
        file: file.to_owned(),
        line: pos.line,
        column: pos.column,
        field: field.to_owned(),
        message,
    };
    let PosKind::Mapping(entries) = &tree.kind else {
        return Err(at(
            tree.pos,
            "",
            "expected a mapping with apiVersion, kind, metadata and spec".to_owned(),
        ));
    };
    let kinds = KINDS.map(|k| format!("`{k}`")).join(", ");
    let Some((key, value)) = entries.iter().find(|(key, _)| key.scalar() == Some("kind")) else {
        return Err(at(
            tree.pos,
            "kind",
            format!("missing field `kind`, expected one of {kinds}"),
        ));
    };
    let kind = value
        .scalar()
        .ok_or_else(|| at(key.pos, "kind", format!("expected one of {kinds}")))?;

    let typed = match kind {
        KIND_FINGERPRINT => deserialize(de).map(Document::Fingerprint),
        KIND_POLICY => deserialize(de).map(Document::Policy),
        KIND_FINGERPRINT_GROUP => deserialize(de).map(Document::FingerprintGroup),
        KIND_DEVIATION => deserialize(de).map(Document::Deviation),
        other => {
            return Err(at(
                value.pos,
                "kind",
                format!("unknown kind `{other}`, expected one of {kinds}"),
            ));
        }
    };
    typed.map_err(|err| diagnostic_from_serde(file, tree.pos, &err))
}

fn deserialize<T: DeserializeOwned>(
    de: serde_yaml::Deserializer<'_>,
) -> Result<T, serde_yaml::Error> {
    T::deserialize(de)
}

/// Turns a serde_yaml error into a diagnostic. serde_yaml writes its errors as
/// `<path>: <message> at line L column C`; the location is also available on its own, and the
/// path is split off so that it lands in the diagnostic's `field`.
fn diagnostic_from_serde(file: &str, document_start: Pos, err: &serde_yaml::Error) -> Diagnostic {
    let text = err.to_string();
    let (line, column, text) = match err.location() {
        Some(location) => {
            let suffix = format!(" at line {} column {}", location.line(), location.column());
            let text = text
                .strip_suffix(&suffix)
                .map(str::to_owned)
                .unwrap_or(text);
            (location.line(), location.column(), text)
        }
        None => (document_start.line, document_start.column, text),
    };
    let (field, message) = split_serde_path(&text);
    let field = if field.is_empty() {
        // At the top level serde_yaml gives no path; the field it complains about is the one
        // named in the message.
        named_field(message).unwrap_or_default()
    } else {
        field.to_owned()
    };
    Diagnostic {
        file: file.to_owned(),
        line,
        column,
        field,
        message: plain_words(message),
    }
}

/// serde names Rust types in its messages ("expected u32", "expected struct Spec"); say
/// what the YAML should hold instead, for people who write YAML, not Rust.
fn plain_words(message: &str) -> String {
    let mut message = message
        .replace("expected u32", "expected a whole number")
        .replace("expected u16", "expected a whole number")
        .replace("expected f64", "expected a number")
        .replace("expected a sequence", "expected a list");
    if let Some(at) = message.find("expected struct ") {
        // "expected struct Spec" (the struct's name ends the message or a clause).
        let name_end = message[at + "expected struct ".len()..]
            .find(|c: char| !c.is_alphanumeric())
            .map_or(message.len(), |end| at + "expected struct ".len() + end);
        message.replace_range(at..name_end, "expected a mapping");
    }
    message
}

/// Splits `spec.processPolicy[0]: missing field `exe`` into its path and message. A path has
/// no spaces or backticks; serde's own messages ("invalid type: ...") always have a space
/// before their first `: `, so they are never taken for a path.
fn split_serde_path(text: &str) -> (&str, &str) {
    match text.split_once(": ") {
        Some((path, message)) if !path.is_empty() && !path.contains([' ', '`']) => (path, message),
        _ => ("", text),
    }
}

/// The field named by serde's "unknown field `x`", "missing field `x`" and "duplicate field
/// `x`" messages.
fn named_field(message: &str) -> Option<String> {
    let rest = ["unknown field `", "missing field `", "duplicate field `"]
        .iter()
        .find_map(|prefix| message.strip_prefix(prefix))?;
    rest.split_once('`').map(|(name, _)| name.to_owned())
}

/// Places a validation problem in the file: at the offending key when it is there, else at
/// the nearest enclosing field that is (a missing field is reported where it should be).
fn diagnostic_for(file: &str, tree: &PosNode, problem: &Problem) -> Diagnostic {
    let pos = tree.locate(&problem.path);
    Diagnostic {
        file: file.to_owned(),
        line: pos.line,
        column: pos.column,
        field: problem.path.to_string(),
        message: problem.message.clone(),
    }
}

/// A 1-based line and column in the text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pos {
    line: usize,
    column: usize,
}

impl From<Marker> for Pos {
    fn from(marker: Marker) -> Self {
        // yaml-rust2 counts lines from 1 and columns from 0.
        Pos {
            line: marker.line(),
            column: marker.col() + 1,
        }
    }
}

/// A YAML node with its position. A mapping keeps its keys as nodes too, because a problem
/// with a field is best shown at the field's key.
#[derive(Clone, Debug)]
struct PosNode {
    pos: Pos,
    kind: PosKind,
}

#[derive(Clone, Debug)]
enum PosKind {
    Scalar(String),
    Sequence(Vec<PosNode>),
    Mapping(Vec<(PosNode, PosNode)>),
}

impl PosNode {
    fn scalar(&self) -> Option<&str> {
        match &self.kind {
            PosKind::Scalar(value) => Some(value),
            _ => None,
        }
    }

    /// The position of the field at `path`, or of its nearest ancestor present in the text.
    fn locate(&self, path: &FieldPath) -> Pos {
        let mut node = self;
        let mut pos = self.pos;
        for segment in path.segments() {
            let next = match (segment, &node.kind) {
                (PathSegment::Key(key), PosKind::Mapping(entries)) => entries
                    .iter()
                    .find(|(k, _)| k.scalar() == Some(key.as_str()))
                    .map(|(k, v)| (k.pos, v)),
                (PathSegment::Index(index), PosKind::Sequence(items)) => {
                    items.get(*index).map(|item| (item.pos, item))
                }
                _ => None,
            };
            let Some((next_pos, next_node)) = next else {
                break;
            };
            pos = next_pos;
            node = next_node;
        }
        pos
    }
}

/// Builds one [`PosNode`] tree per document from yaml-rust2's marked events.
#[derive(Default)]
struct PositionTree {
    /// One entry per document of the stream; `None` for an empty document (`---` alone).
    documents: Vec<Option<PosNode>>,
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
    fn parse(text: &str) -> Result<Vec<Option<PosNode>>, yaml_rust2::ScanError> {
        let mut builder = PositionTree::default();
        Parser::new_from_str(text).load(&mut builder, true)?;
        Ok(builder.documents)
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
}

impl MarkedEventReceiver for PositionTree {
    fn on_event(&mut self, event: Event, marker: Marker) {
        let pos = Pos::from(marker);
        match event {
            Event::DocumentStart => self.root = None,
            Event::DocumentEnd => {
                let root = self.root.take();
                // A document with nothing in it parses as an empty plain scalar.
                let empty = matches!(&root, Some(PosNode { kind: PosKind::Scalar(v), .. }) if v.is_empty() || v == "~" || v == "null");
                self.documents.push(if empty { None } else { root });
            }
            Event::Scalar(value, _, anchor, _) => self.push(
                PosNode {
                    pos,
                    kind: PosKind::Scalar(value),
                },
                anchor,
            ),
            Event::Alias(anchor) => {
                let node = self.anchors.get(&anchor).cloned().unwrap_or(PosNode {
                    pos,
                    kind: PosKind::Scalar(String::new()),
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

    fn path(segments: &[&str]) -> FieldPath {
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
    fn serde_paths_are_split_from_messages() {
        assert_eq!(
            split_serde_path("spec.processPolicy[0]: missing field `exe`"),
            ("spec.processPolicy[0]", "missing field `exe`")
        );
        assert_eq!(
            split_serde_path("invalid type: integer `3`, expected a sequence"),
            ("", "invalid type: integer `3`, expected a sequence")
        );
        assert_eq!(
            split_serde_path("missing field `spec`"),
            ("", "missing field `spec`")
        );
        assert_eq!(named_field("missing field `spec`").as_deref(), Some("spec"));
        assert_eq!(
            named_field("unknown field `a`, expected one of `apiVersion`").as_deref(),
            Some("a")
        );
        assert_eq!(
            named_field("duplicate field `kind`").as_deref(),
            Some("kind")
        );
        assert_eq!(named_field("invalid type"), None);
    }

    #[test]
    fn serde_type_names_become_yaml_words() {
        assert_eq!(
            plain_words("invalid type: string \"https\", expected u32"),
            "invalid type: string \"https\", expected a whole number"
        );
        assert_eq!(
            plain_words("invalid type: sequence, expected struct Spec"),
            "invalid type: sequence, expected a mapping"
        );
        assert_eq!(
            plain_words("invalid type: integer `3`, expected a sequence"),
            "invalid type: integer `3`, expected a list"
        );
        assert_eq!(
            plain_words("unknown field `names`"),
            "unknown field `names`"
        );
    }

    #[test]
    fn diagnostics_print_file_line_column_field_message() {
        let diagnostic = Diagnostic {
            file: "policy.yaml".into(),
            line: 57,
            column: 11,
            field: "spec.processPolicy[1]".into(),
            message: "unknown field `names`".into(),
        };
        assert_eq!(
            diagnostic.to_string(),
            "policy.yaml:57:11: spec.processPolicy[1]: unknown field `names`"
        );
        let whole = Diagnostic {
            field: String::new(),
            ..diagnostic
        };
        assert_eq!(
            whole.to_string(),
            "policy.yaml:57:11: unknown field `names`"
        );
    }
}
