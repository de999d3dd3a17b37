//! Reading and writing spyctl YAML files: text in, typed [`Document`]s out, and back.
//!
//! Bad input is reported as [`Diagnostic`]s that name the file, line, column and field, e.g.
//! `policy.yaml:57:11: spec.processPolicy[1].children[0]: unknown field `names`, expected one of ...`.
//!
//! A file holds one document, several separated by `---`, or spyctl's list form: a mapping
//! `{apiVersion: spyderbat/v1, items: [...]}` (what spyctl writes for several documents) or a
//! bare YAML list of documents (which spyctl reads too). [`to_spyctl_yaml`] writes what spyctl
//! writes: one document alone, several as an `items:` list.
//!
//! Before anything is built, the text passes [`guardlab_input::scan_yaml`]: nesting and
//! aliases beyond [`YamlLimits`] are refused with the line where the limit was crossed.
//! Then two parsers read the same text, each for what it is good at:
//! * `serde_yaml` builds the typed values (and reports shape errors with a location and a path);
//! * `yaml-rust2`'s event parser gives every node its line and column ([`tree`]), so a problem
//!   that [`crate::validate`] finds after deserialization (which keeps no positions) can still
//!   be pinned to the line of the offending field. It also finds syntax errors first, which
//!   matters because `serde_yaml`'s multi-document iterator repeats a syntax error forever.
//!
//! [`spyctl`] says what spyctl 0.24.2 would say of a file (`guardlab validate --strict`).

mod diagnostic;
mod list;
pub mod spyctl;
mod tree;

use serde::Deserialize;
use serde::de::{DeserializeOwned, IgnoredAny};

pub use diagnostic::{Diagnostic, Diagnostics};
pub use guardlab_input::YamlLimits;

pub use crate::model::Document;
use crate::model::{
    API_VERSION, KIND_DEVIATION, KIND_FINGERPRINT, KIND_FINGERPRINT_GROUP, KIND_POLICY,
};
use crate::validate::{FieldPath, Problem, validate};
use diagnostic::{diagnostic_from_serde, named_field};
use tree::{Pos, PosKind, PosNode, PositionTree};

const KINDS: [&str; 4] = [
    KIND_FINGERPRINT,
    KIND_POLICY,
    KIND_FINGERPRINT_GROUP,
    KIND_DEVIATION,
];

/// A document of a file, with where it starts.
#[derive(Clone, Debug, PartialEq)]
pub struct Located {
    pub document: Document,
    /// 1-based, of the document's first key.
    pub line: usize,
    pub column: usize,
    /// Its place in spyctl's list form (`items[2]`); empty for a document of its own.
    pub field: String,
}

/// Parses every document of a file (documents are separated by `---`; empty ones are
/// skipped; spyctl's list forms give their items). Checks syntax and shape only: unknown
/// keys, missing fields, wrong types, unknown kinds. Use [`load_documents`] to apply the
/// [`crate::validate`] rules as well.
///
/// Every document is tried, so the error lists the first problem of each bad document.
pub fn parse_documents(file: &str, text: &str) -> Result<Vec<Document>, Vec<Diagnostic>> {
    let (parsed, diagnostics) = parse_located(file, text);
    if diagnostics.is_empty() {
        Ok(parsed.into_iter().map(|p| p.doc).collect())
    } else {
        Err(diagnostics)
    }
}

/// Parses a file that must hold exactly one document (see [`parse_documents`]).
pub fn parse_document(file: &str, text: &str) -> Result<Document, Vec<Diagnostic>> {
    let (parsed, diagnostics) = parse_located(file, text);
    if !diagnostics.is_empty() {
        return Err(diagnostics);
    }
    exactly_one(file, parsed).map(|p| p.doc)
}

/// Parses every document of a file and validates each: `Ok` only when the file has at least
/// one document and no problem at all. The error lists every problem found, in file order.
pub fn load_documents(file: &str, text: &str) -> Result<Vec<Document>, Vec<Diagnostic>> {
    load_located(file, text).map(|docs| docs.into_iter().map(|d| d.document).collect())
}

/// [`load_documents`], each document with where it starts (to say which one is wrong for a
/// command).
pub fn load_located(file: &str, text: &str) -> Result<Vec<Located>, Vec<Diagnostic>> {
    // The documents that did parse are validated even when others did not, so one run shows
    // every problem of the file.
    let (parsed, mut diagnostics) = parse_located(file, text);
    for p in &parsed {
        for problem in validate(&p.doc) {
            diagnostics.push(diagnostic_for(file, p, &problem));
        }
    }
    if diagnostics.is_empty() {
        return Ok(parsed.into_iter().map(Parsed::located).collect());
    }
    // Stable: problems on one line keep the order the rules found them in.
    diagnostics.sort_by_key(|d| (d.line, d.column));
    Err(diagnostics)
}

/// [`load_documents`] for a file that must hold exactly one document.
pub fn load_document(file: &str, text: &str) -> Result<Document, Vec<Diagnostic>> {
    let mut docs = load_located(file, text)?;
    if docs.len() == 1 {
        return Ok(docs.remove(0).document);
    }
    let second = &docs[1];
    Err(vec![Diagnostic {
        file: file.to_owned(),
        line: second.line,
        column: second.column,
        field: second.field.clone(),
        message: format!("expected exactly one document, found {}", docs.len()),
    }])
}

/// Writes a document as spyctl YAML: keys in the public format's order (apiVersion, kind,
/// metadata, spec), absent optional fields left out, response actions and `to`/`from` items
/// as single-key maps; metadata fields guardlab does not model come back as they were read.
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

/// Writes several documents into one YAML stream, separated by `---`: guardlab reads it, but
/// spyctl refuses a stream of several documents; [`to_spyctl_yaml`] writes what it reads.
pub fn to_yaml_documents(docs: &[Document]) -> String {
    docs.iter().map(to_yaml).collect::<Vec<_>>().join("---\n")
}

/// Writes documents the way spyctl's own commands do: one document alone, several as one
/// `{apiVersion: spyderbat/v1, items: [...]}` list; nothing for none.
pub fn to_spyctl_yaml(docs: &[Document]) -> String {
    match docs {
        [] => String::new(),
        [doc] => to_yaml(doc),
        docs => {
            let items = docs
                .iter()
                .map(|doc| {
                    let value = match doc {
                        Document::Fingerprint(d) | Document::Policy(d) => serde_yaml::to_value(d),
                        Document::FingerprintGroup(d) => serde_yaml::to_value(d),
                        Document::Deviation(d) => serde_yaml::to_value(d),
                    };
                    value.expect("spyctl model types always serialize to YAML")
                })
                .collect();
            let mut list = serde_yaml::Mapping::new();
            list.insert("apiVersion".into(), API_VERSION.into());
            list.insert("items".into(), serde_yaml::Value::Sequence(items));
            serde_yaml::to_string(&list).expect("a list of documents serializes to YAML")
        }
    }
}

/// A document that parsed, with its position tree (for later diagnostics) and its place in
/// the file (`items[2]` in a list form, the root otherwise).
pub(crate) struct Parsed {
    doc: Document,
    tree: PosNode,
    place: FieldPath,
}

impl Parsed {
    fn located(self) -> Located {
        Located {
            line: self.tree.pos.line,
            column: self.tree.pos.column,
            field: self.place.to_string(),
            document: self.doc,
        }
    }
}

fn exactly_one(file: &str, mut parsed: Vec<Parsed>) -> Result<Parsed, Vec<Diagnostic>> {
    if parsed.len() == 1 {
        return Ok(parsed.remove(0));
    }
    // Only "too many" can get here (a file without documents is refused while parsing), so
    // point at the first document too many.
    let second = &parsed[1];
    Err(vec![Diagnostic::at(
        file,
        second.tree.pos,
        second.place.to_string(),
        format!("expected exactly one document, found {}", parsed.len()),
    )])
}

/// The trees of a text, or the one diagnostic that says why there are none: a syntax error,
/// a limit crossed, or no document at all.
fn trees_of(file: &str, text: &str) -> Result<Vec<Option<PosNode>>, Diagnostic> {
    let at = |line, column, message: String| Diagnostic {
        file: file.to_owned(),
        line,
        column,
        field: String::new(),
        message,
    };
    guardlab_input::scan_yaml(text, &YamlLimits::default())
        .map_err(|e| at(e.line(), e.column(), e.to_string()))?;
    let trees = PositionTree::parse(text).map_err(|e| {
        let e = guardlab_input::yaml::syntax_error(text, &e);
        at(e.line(), e.column(), e.to_string())
    })?;
    if trees.iter().all(Option::is_none) {
        return Err(at(
            1,
            1,
            format!(
                "no document in this file; expected a spyctl document ({})",
                KINDS.join(", ")
            ),
        ));
    }
    Ok(trees)
}

/// Parses each non-empty document of the stream: the documents that parsed, and one
/// diagnostic for each that did not.
fn parse_located(file: &str, text: &str) -> (Vec<Parsed>, Vec<Diagnostic>) {
    let trees = match trees_of(file, text) {
        Ok(trees) => trees,
        Err(diagnostic) => return (Vec::new(), vec![diagnostic]),
    };

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
        let diagnostic = refusal.unwrap_or_else(|| {
            Diagnostic::at(
                file,
                start,
                "",
                format!(
                    "the YAML parsers disagree on the number of documents ({}); please report this file",
                    trees.len()
                ),
            )
        });
        return (Vec::new(), vec![diagnostic]);
    }

    let mut parsed = Vec::new();
    let mut diagnostics = Vec::new();
    for (tree, deserializer) in trees.into_iter().zip(deserializers) {
        let Some(tree) = tree else { continue };
        if list::is_list_form(&tree) {
            let (items, problems) = list::expand(file, &tree, deserializer);
            parsed.extend(items);
            diagnostics.extend(problems);
            continue;
        }
        match deserialize_by_kind(file, &tree, deserializer) {
            Ok(doc) => parsed.push(Parsed {
                doc,
                tree,
                place: FieldPath::root(),
            }),
            Err(diagnostic) => diagnostics.push(diagnostic),
        }
    }
    if parsed.is_empty() && diagnostics.is_empty() {
        // Only an empty list form gets here.
        diagnostics.push(Diagnostic::at(
            file,
            Pos { line: 1, column: 1 },
            "items",
            "the list holds no document",
        ));
    }
    (parsed, diagnostics)
}

/// The `kind` of a document's tree, checked to be one guardlab reads.
fn kind_of<'t>(file: &str, tree: &'t PosNode, place: &FieldPath) -> Result<&'t str, Diagnostic> {
    let at = |pos: Pos, field: &str, message: String| {
        Diagnostic::at(file, pos, place.key(field).to_string(), message)
    };
    let kinds = KINDS.map(|k| format!("`{k}`")).join(", ");
    let PosKind::Mapping(_) = &tree.kind else {
        return Err(Diagnostic::at(
            file,
            tree.pos,
            place.to_string(),
            "expected a mapping with apiVersion, kind, metadata and spec",
        ));
    };
    let Some((key, value)) = tree.entry("kind") else {
        return Err(at(
            tree.pos,
            "kind",
            format!("missing field `kind`, expected one of {kinds}"),
        ));
    };
    let kind = value
        .scalar()
        .ok_or_else(|| at(key.pos, "kind", format!("expected one of {kinds}")))?;
    if KINDS.contains(&kind) {
        Ok(kind)
    } else {
        Err(at(
            value.pos,
            "kind",
            format!("unknown kind `{kind}`, expected one of {kinds}"),
        ))
    }
}

fn deserialize_by_kind(
    file: &str,
    tree: &PosNode,
    de: serde_yaml::Deserializer<'_>,
) -> Result<Document, Diagnostic> {
    let kind = kind_of(file, tree, &FieldPath::root())?;
    let typed = match kind {
        KIND_FINGERPRINT => deserialize(de).map(Document::Fingerprint),
        KIND_POLICY => deserialize(de).map(Document::Policy),
        KIND_FINGERPRINT_GROUP => deserialize(de).map(Document::FingerprintGroup),
        _ => deserialize(de).map(Document::Deviation),
    };
    typed.map_err(|err| {
        let diagnostic = diagnostic_from_serde(file, tree.pos, &err);
        explain_spyctl_field(kind, tree, diagnostic)
    })
}

fn deserialize<T: DeserializeOwned>(
    de: serde_yaml::Deserializer<'_>,
) -> Result<T, serde_yaml::Error> {
    T::deserialize(de)
}

/// An "unknown field" that spyctl knows (`disableProcesses`, `clusterSelector`, a selector's
/// `matchFields`...) is not a typo: say that guardlab does not support it, rather than that it
/// does not exist. `diagnostic.field` is relative to the document's root.
fn explain_spyctl_field(kind: &str, tree: &PosNode, mut diagnostic: Diagnostic) -> Diagnostic {
    let Some(key) = diagnostic
        .message
        .starts_with("unknown field `")
        .then(|| named_field(&diagnostic.message))
        .flatten()
    else {
        return diagnostic;
    };
    // At the top level serde_yaml names no path and the diagnostic's field is the key itself.
    let container = if diagnostic.field == key {
        FieldPath::root()
    } else {
        FieldPath::parse(&diagnostic.field)
    };
    let doc_type = tree
        .get(&FieldPath::root().key("metadata").key("type"))
        .and_then(PosNode::scalar);
    if spyctl::accepts_field(kind, doc_type, &container, &key) {
        diagnostic.message = format!(
            "`{key}` is a spyctl field guardlab does not support (its engine would not apply it); remove it to use this document with guardlab"
        );
    }
    diagnostic
}

/// Places a validation problem in the file: at the offending key when it is there, else at
/// the nearest enclosing field that is (a missing field is reported where it should be).
fn diagnostic_for(file: &str, parsed: &Parsed, problem: &Problem) -> Diagnostic {
    Diagnostic::at(
        file,
        parsed.tree.locate(&problem.path),
        parsed.place.join(&problem.path).to_string(),
        problem.message.clone(),
    )
}
