//! spyctl's list forms: `{apiVersion: spyderbat/v1, items: [...]}`, what spyctl writes for
//! several documents, and a bare YAML list of documents, which spyctl reads too.
//!
//! An item cannot be deserialized straight from the text (its `kind` decides its type, and
//! serde_yaml's streaming deserializer cannot look ahead), so the list is read as a
//! `serde_yaml::Value` and each item deserialized from it; the path of a bad value
//! (`serde_path_to_error`) then finds its line in the item's position tree.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_path_to_error::Segment;

use super::diagnostic::{diagnostic_from_serde, named_field, plain_words};
use super::tree::{PosKind, PosNode};
use super::{Diagnostic, Parsed, explain_spyctl_field, kind_of};
use crate::model::{API_VERSION, Document, KIND_FINGERPRINT, KIND_FINGERPRINT_GROUP, KIND_POLICY};
use crate::validate::{FieldPath, PathSegment};

/// A bare list of documents, or a mapping with `items` and no `kind`.
pub(super) fn is_list_form(tree: &PosNode) -> bool {
    match &tree.kind {
        PosKind::Sequence(_) => true,
        PosKind::Mapping(_) => tree.entry("items").is_some() && tree.entry("kind").is_none(),
        PosKind::Scalar { .. } => false,
    }
}

/// The documents of a list form, each with its tree and its place (`items[2]`), and a
/// diagnostic for each item that is not a document.
pub(super) fn expand(
    file: &str,
    tree: &PosNode,
    de: serde_yaml::Deserializer<'_>,
) -> (Vec<Parsed>, Vec<Diagnostic>) {
    let value = match serde_yaml::Value::deserialize(de) {
        Ok(value) => value,
        Err(err) => {
            return (
                Vec::new(),
                vec![diagnostic_from_serde(file, tree.pos, &err)],
            );
        }
    };
    let (items, items_tree, place) = match (&tree.kind, value) {
        (PosKind::Sequence(_), serde_yaml::Value::Sequence(items)) => {
            (items, tree, FieldPath::root())
        }
        (PosKind::Mapping(_), serde_yaml::Value::Mapping(mut list)) => {
            let mut problems = Vec::new();
            match tree.entry("apiVersion") {
                None => problems.push(Diagnostic::at(
                    file,
                    tree.pos,
                    "apiVersion",
                    format!("missing field `apiVersion` of the list, expected `{API_VERSION}`"),
                )),
                Some((key, version)) if version.scalar() != Some(API_VERSION) => {
                    problems.push(Diagnostic::at(
                        file,
                        key.pos,
                        "apiVersion",
                        format!("unsupported apiVersion of the list, expected `{API_VERSION}`"),
                    ))
                }
                Some(_) => {}
            }
            let (Some(serde_yaml::Value::Sequence(items)), Some((_, items_tree))) =
                (list.remove("items"), tree.entry("items"))
            else {
                let at = tree.entry("items").map_or(tree.pos, |(key, _)| key.pos);
                problems.push(Diagnostic::at(
                    file,
                    at,
                    "items",
                    "expected a list of documents",
                ));
                return (Vec::new(), problems);
            };
            if !problems.is_empty() {
                return (Vec::new(), problems);
            }
            (items, items_tree, FieldPath::root().key("items"))
        }
        _ => {
            return (
                Vec::new(),
                vec![Diagnostic::at(
                    file,
                    tree.pos,
                    "",
                    "the YAML parsers disagree on this document's shape; please report this file",
                )],
            );
        }
    };
    let PosKind::Sequence(item_trees) = &items_tree.kind else {
        return (Vec::new(), Vec::new());
    };
    let mut parsed = Vec::new();
    let mut diagnostics = Vec::new();
    for (i, (item, item_tree)) in items.into_iter().zip(item_trees).enumerate() {
        let place = place.index(i);
        if is_list_form(item_tree) {
            diagnostics.push(Diagnostic::at(
                file,
                item_tree.pos,
                place.to_string(),
                "a list inside a list: spyctl's lists hold documents, not lists",
            ));
            continue;
        }
        match deserialize_item(file, item_tree, item, &place) {
            Ok(doc) => parsed.push(Parsed {
                doc,
                tree: item_tree.clone(),
                place,
            }),
            Err(diagnostic) => diagnostics.push(diagnostic),
        }
    }
    (parsed, diagnostics)
}

fn deserialize_item(
    file: &str,
    tree: &PosNode,
    value: serde_yaml::Value,
    place: &FieldPath,
) -> Result<Document, Diagnostic> {
    let kind = kind_of(file, tree, place)?;
    let typed = match kind {
        KIND_FINGERPRINT => from_value(value).map(Document::Fingerprint),
        KIND_POLICY => from_value(value).map(Document::Policy),
        KIND_FINGERPRINT_GROUP => from_value(value).map(Document::FingerprintGroup),
        _ => from_value(value).map(Document::Deviation),
    };
    typed.map_err(|(path, err)| {
        let message = plain_words(&err.to_string());
        // An unknown key is shown at itself, and named by the field that holds it, as
        // serde_yaml does for a document of its own (its path here ends with the key).
        let (at, path) = match named_field(&message) {
            Some(key)
                if message.starts_with("unknown field")
                    && matches!(path.segments().last(), Some(PathSegment::Key(last)) if *last == key) =>
            {
                let holder = path.parent().unwrap_or_default();
                (path, holder)
            }
            _ => (path.clone(), path),
        };
        let relative = Diagnostic::at(file, tree.locate(&at), path.to_string(), message);
        let explained = explain_spyctl_field(kind, tree, relative);
        Diagnostic {
            field: place.join(&path).to_string(),
            ..explained
        }
    })
}

/// A typed value from a YAML value, or the path of the value that is wrong and why.
fn from_value<T: DeserializeOwned>(
    value: serde_yaml::Value,
) -> Result<T, (FieldPath, serde_yaml::Error)> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err
            .path()
            .iter()
            .fold(FieldPath::root(), |path, segment| match segment {
                Segment::Seq { index } => path.index(*index),
                Segment::Map { key } => path.key(key),
                // Response actions and `to`/`from` items are single-key maps in the YAML.
                Segment::Enum { variant } => path.key(variant),
                Segment::Unknown => path,
            });
        (path, err.into_inner())
    })
}
