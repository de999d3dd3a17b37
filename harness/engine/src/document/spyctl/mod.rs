//! What spyctl 0.24.2's `spyctl validate -f FILE` says of a file: `guardlab validate --strict`.
//!
//! spyctl loads the file with PyYAML (one document only, YAML 1.1, no duplicate keys; see
//! [`py`]) and checks the mapping, or each mapping of a top-level list, with the pydantic
//! model of its `kind` (see [`schema`]): a mapping without a `kind` but with `items` is its
//! list form, whose items are checked again one by one. Where plain `guardlab validate`
//! differs (documents that predate `spec.mode`, several documents in one stream, the port
//! range, keys spyctl ignores...), this module says what spyctl says; README's "differences
//! from spyctl" lists each difference and its reason.
//!
//! It checks the guardian documents (policies of type container and linux-service,
//! fingerprints, baselines, fingerprint groups, deviations, and lists of them). A document
//! of another kind spyctl knows (a cluster policy, a notification target...) is refused as
//! one guardlab does not check.
//!
//! Sources read: spyctl 0.24.2 `spyctl/commands/validate.py` (the command),
//! `spyctl/spyctl_lib.py` (`load_resource_file`, `UniqueKeyLoader`, the field names),
//! `spyctl/schemas_v2.py` (`valid_object`, `KIND_TO_SCHEMA` and the models).

mod check;
mod py;
mod schema;

use guardlab_input::{YamlLimits, scan_yaml};

use super::Diagnostic;
use super::tree::{Pos, PositionTree};
use crate::validate::{FieldPath, PathSegment};
use check::Checker;
use py::{Py, PyNode, describe, to_python};
use schema::{Model, OBJECT_LIST, OTHER_SPYCTL_KINDS, Ty, model_for};

/// Everything spyctl 0.24.2 would refuse in `text`; empty when it says the file is valid.
/// spyctl itself stops at the first document it refuses; this goes on, so one run shows all.
pub fn check_file(file: &str, text: &str) -> Vec<Diagnostic> {
    let start = Pos { line: 1, column: 1 };
    let refuse = |pos: Pos, message: String| vec![Diagnostic::at(file, pos, "", message)];
    if let Err(e) = scan_yaml(text, &YamlLimits::default()) {
        return refuse(
            Pos {
                line: e.line(),
                column: e.column(),
            },
            e.to_string(),
        );
    }
    let (documents, starts) = match PositionTree::parse_with_starts(text) {
        Ok(parsed) => parsed,
        Err(e) => {
            let e = guardlab_input::yaml::syntax_error(text, &e);
            return refuse(
                Pos {
                    line: e.line(),
                    column: e.column(),
                },
                e.to_string(),
            );
        }
    };
    if documents.len() > 1 {
        return refuse(
            starts.get(1).copied().unwrap_or(start),
            format!(
                "expected a single document in the stream, found {}: spyctl reads one document per file (write several as a list: `apiVersion: spyderbat/v1` and `items:`)",
                documents.len()
            ),
        );
    }
    let Some(Some(tree)) = documents.into_iter().next() else {
        return refuse(
            start,
            "no document: spyctl needs a mapping or a list of mappings".into(),
        );
    };
    let value = match to_python(&tree) {
        Ok(value) => value,
        Err(e) => return refuse(e.pos, e.message),
    };
    let mut checker = Checker::default();
    let mut refusals = Vec::new();
    match &value.value {
        Py::Dict(_) => object(
            &mut checker,
            &mut refusals,
            &value,
            true,
            &FieldPath::root(),
        ),
        Py::List(items) => {
            for (i, item) in items.iter().enumerate() {
                let place = FieldPath::root().index(i);
                if matches!(item.value, Py::Dict(_)) {
                    object(&mut checker, &mut refusals, item, true, &place);
                } else {
                    refusals.push((
                        item.pos,
                        place,
                        format!(
                            "{} in the list of documents: spyctl fails on anything but a mapping",
                            describe(&item.value)
                        ),
                    ));
                }
            }
        }
        other => {
            return refuse(
                value.pos,
                format!(
                    "the file holds {}: spyctl needs a mapping or a list of mappings",
                    describe(other)
                ),
            );
        }
    }
    let mut diagnostics: Vec<Diagnostic> = refusals
        .into_iter()
        .map(|(pos, path, message)| Diagnostic::at(file, pos, path.to_string(), message))
        .chain(
            checker
                .refusals
                .into_iter()
                .map(|r| Diagnostic::at(file, r.pos, r.path.to_string(), r.message)),
        )
        .collect();
    diagnostics.sort_by_key(|d| (d.line, d.column));
    diagnostics
}

/// spyctl's `valid_object`: a mapping checked by the model of its kind, or a list form.
fn object(
    checker: &mut Checker,
    refusals: &mut Vec<(Pos, FieldPath, String)>,
    node: &PyNode,
    allow_list: bool,
    place: &FieldPath,
) {
    let mut refuse = |pos: Pos, path: FieldPath, message: String| {
        refusals.push((pos, path, message));
    };
    let kind_node = node.value.get("kind");
    if let Some(PyNode {
        value: value @ (Py::List(_) | Py::Dict(_)),
        pos,
    }) = kind_node
    {
        refuse(
            *pos,
            place.key("kind"),
            format!("kind is {}: spyctl fails on it", describe(value)),
        );
        return;
    }
    let kind = match kind_node {
        Some(PyNode {
            value: Py::Str(kind),
            ..
        }) => Some(kind.as_str()),
        _ => None,
    };
    let known =
        kind.is_some_and(|k| model_for(k, None).is_some() || OTHER_SPYCTL_KINDS.contains(&k));
    if !known {
        let Some(items) = node.value.get("items") else {
            let shown = kind_node.map_or("None".to_owned(), |k| describe(&k.value));
            refuse(
                kind_node.map_or(node.pos, |k| k.pos),
                place.key("kind"),
                format!("spyctl has no schema for kind {shown}"),
            );
            return;
        };
        if !allow_list {
            refuse(
                node.pos,
                place.clone(),
                "a list inside a list: spyctl does not allow nested lists".into(),
            );
            return;
        }
        if checker.model(node, &OBJECT_LIST, place).is_none() {
            return;
        }
        if let Py::List(items) = &items.value {
            for (i, item) in items.iter().enumerate() {
                object(checker, refusals, item, false, &place.key("items").index(i));
            }
        }
        return;
    }
    let kind = kind.unwrap_or_default();
    let doc_type = match node.value.get("metadata") {
        None => None,
        Some(PyNode {
            value: Py::Dict(_), ..
        }) => match node.value.get("metadata").and_then(|m| m.value.get("type")) {
            Some(PyNode {
                value: value @ (Py::List(_) | Py::Dict(_)),
                pos,
            }) => {
                refuse(
                    *pos,
                    place.key("metadata").key("type"),
                    format!("type is {}: spyctl fails on it", describe(value)),
                );
                return;
            }
            Some(PyNode {
                value: Py::Str(t), ..
            }) => Some(t.as_str()),
            _ => None,
        },
        Some(other) => {
            refuse(
                other.pos,
                place.key("metadata"),
                format!(
                    "metadata is {}: spyctl fails on it (it looks for metadata.type)",
                    describe(&other.value)
                ),
            );
            return;
        }
    };
    match model_for(kind, doc_type) {
        Some(model) => {
            checker.model(node, model, place);
        }
        None => refuse(
            node.pos,
            place.clone(),
            format!(
                "a {kind}{} document: spyctl checks it with a schema guardlab does not have (guardlab reads guardian documents only)",
                doc_type
                    .map(|t| format!(" of type {t}"))
                    .unwrap_or_default()
            ),
        ),
    }
}

/// Whether spyctl's model for a document of `kind` (and `metadata.type`) declares the field
/// `key` in the mapping at `container` (a path in the document, indices included): guardlab
/// says "spyctl field guardlab does not support" rather than "unknown field" for those.
pub fn accepts_field(kind: &str, doc_type: Option<&str>, container: &FieldPath, key: &str) -> bool {
    let Some(model) = model_for(kind, doc_type) else {
        return false;
    };
    let mut frontier: Vec<Ty> = vec![Ty::Model(model)];
    for segment in container.segments() {
        frontier = frontier
            .into_iter()
            .flat_map(|ty| step(ty, segment))
            .collect();
    }
    frontier
        .into_iter()
        .flat_map(models)
        .any(|m| m.field(key).is_some())
}

/// The types one path segment down from `ty`.
fn step(ty: Ty, segment: &PathSegment) -> Vec<Ty> {
    match (ty, segment) {
        (Ty::Model(model), PathSegment::Key(key)) => {
            model.field(key).map(|f| f.ty).into_iter().collect()
        }
        (Ty::List { item, .. }, PathSegment::Index(_)) => vec![*item],
        (Ty::Union(members), segment) => members.iter().flat_map(|m| step(*m, segment)).collect(),
        _ => Vec::new(),
    }
}

fn models(ty: Ty) -> Vec<&'static Model> {
    match ty {
        Ty::Model(model) => vec![model],
        Ty::Union(members) => members.iter().flat_map(|m| models(*m)).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests;
