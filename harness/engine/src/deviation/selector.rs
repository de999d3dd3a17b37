//! Which containers and processes a selector picks: the selectors of a policy (which
//! containers it applies to) and those of its response's actions (which deviations an action
//! applies to) match the same way.

use std::borrow::Cow;
use std::collections::BTreeMap;

use guardlab_events::ContainerInfo;

use crate::glob::{glob_match, is_glob};
use crate::model::{ContainerSelector, LabelSelector};

/// The namespace's labels, with the `kubernetes.io/metadata.name` label Kubernetes always sets.
pub(super) fn namespace_labels(info: &ContainerInfo) -> BTreeMap<String, String> {
    let mut labels = info.namespace_labels.clone();
    if !info.namespace.is_empty() {
        labels
            .entry("kubernetes.io/metadata.name".into())
            .or_insert_with(|| info.namespace.clone());
    }
    labels
}

/// Image references name the default registry in several ways; a selector written with the
/// short form matches the long form too. A reference with neither tag nor digest means
/// `:latest`, so `nginx` is also matched as `nginx:latest` (and by `nginx:*`).
fn image_forms(image: &str) -> Vec<Cow<'_, str>> {
    let mut forms = vec![Cow::Borrowed(image)];
    if let Some(rest) = image.strip_prefix("docker.io/") {
        forms.push(Cow::Borrowed(rest));
        if let Some(short) = rest.strip_prefix("library/") {
            forms.push(Cow::Borrowed(short));
        }
    }
    let name = image.rsplit('/').next().unwrap_or(image);
    if !name.contains(':') && !image.contains('@') && !image.is_empty() {
        let tagged: Vec<Cow<'_, str>> = forms
            .iter()
            .map(|f| Cow::Owned(format!("{f}:latest")))
            .collect();
        forms.extend(tagged);
    }
    forms
}

pub(super) fn container_matches(sel: &ContainerSelector, info: &ContainerInfo) -> bool {
    if let Some(image) = &sel.image
        && !image_forms(&info.image)
            .iter()
            .any(|form| glob_match(image, form))
    {
        return false;
    }
    if let Some(id) = &sel.image_id
        && !glob_match(id, &info.image_id)
    {
        return false;
    }
    if let Some(name) = &sel.container_name
        && !glob_match(name, &info.container_name)
    {
        return false;
    }
    if let Some(id) = &sel.container_id {
        // A short container id (as `docker ps` shows) selects the full one.
        let matched = if is_glob(id) {
            glob_match(id, &info.container_id)
        } else {
            info.container_id.starts_with(id.as_str()) && !id.is_empty()
        };
        if !matched {
            return false;
        }
    }
    true
}

pub(super) fn labels_match(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    sel.match_labels
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v))
        && sel.match_expressions.iter().all(|e| {
            let value = labels.get(&e.key);
            match e.operator.as_str() {
                "In" => value.is_some_and(|v| e.values.contains(v)),
                "NotIn" => value.is_none_or(|v| !e.values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        })
}
