//! Merging the selectors of two documents of one workload: the labels both have, and the one
//! image selector that covers two images of one repository.

use crate::error::PolicyError;
use crate::glob::{common_wildcard, glob_match, merged_name};
use crate::model::{ContainerSelector, LabelSelector};

pub(super) fn common_labels(
    a: &Option<LabelSelector>,
    b: &Option<LabelSelector>,
) -> Option<LabelSelector> {
    let (a, b) = (a.as_ref()?, b.as_ref()?);
    let match_labels = a
        .match_labels
        .iter()
        .filter(|(k, v)| b.match_labels.get(*k) == Some(v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let match_expressions = a
        .match_expressions
        .iter()
        .filter(|e| b.match_expressions.contains(e))
        .cloned()
        .collect();
    let out = LabelSelector {
        match_labels,
        match_expressions,
    };
    (!out.match_labels.is_empty() || !out.match_expressions.is_empty()).then_some(out)
}

/// An image reference in parts: `registry/path` (the repository), `:tag`, `@digest`.
struct ImageRef<'a> {
    repository: &'a str,
    tag: Option<&'a str>,
    digest: Option<&'a str>,
}

impl<'a> ImageRef<'a> {
    fn parse(image: &'a str) -> Self {
        let (rest, digest) = match image.split_once('@') {
            Some((rest, digest)) => (rest, Some(digest)),
            None => (image, None),
        };
        // The tag follows the last `:` after the last `/` (a registry may have a port).
        let name_start = rest.rfind('/').map_or(0, |i| i + 1);
        let (repository, tag) = match rest[name_start..].rfind(':') {
            Some(i) => (&rest[..name_start + i], Some(&rest[name_start + i + 1..])),
            None => (rest, None),
        };
        // A reference with neither tag nor digest means `:latest`.
        let tag = tag.or(digest.is_none().then_some("latest"));
        ImageRef {
            repository,
            tag,
            digest,
        }
    }

    /// The repository as the default registry's short form: `docker.io/library/redis` and
    /// `redis` are the same.
    fn short_repository(&self) -> &'a str {
        let r = self.repository;
        let r = r.strip_prefix("docker.io/").unwrap_or(r);
        r.strip_prefix("library/").unwrap_or(r)
    }
}

/// The image selector that covers two images of one repository (see [`super`]).
fn merge_images(a: &str, b: &str) -> Result<String, PolicyError> {
    if a == b || glob_match(a, b) {
        return Ok(a.to_string());
    }
    if glob_match(b, a) {
        return Ok(b.to_string());
    }
    let (x, y) = (ImageRef::parse(a), ImageRef::parse(b));
    if x.short_repository() != y.short_repository() {
        return Err(PolicyError::ImageMismatch {
            first: a.to_string(),
            second: b.to_string(),
        });
    }
    let digest = match (x.digest, y.digest) {
        (Some(d), Some(e)) if d == e => format!("@{d}"),
        _ => String::new(),
    };
    let repository = x.repository;
    Ok(match (x.tag, y.tag) {
        (Some(s), Some(t)) if s == t => format!("{repository}:{s}{digest}"),
        (Some(s), Some(t)) => {
            let tag = common_wildcard(s, t).unwrap_or_else(|| "*".into());
            format!("{repository}:{tag}")
        }
        // Pinned by digest alone, both.
        (None, None) => format!("{repository}@*"),
        // One by tag, the other by digest alone.
        _ => format!("{repository}[:@]*"),
    })
}

pub(super) fn merge_container_selector(
    a: &Option<ContainerSelector>,
    b: &Option<ContainerSelector>,
) -> Result<Option<ContainerSelector>, PolicyError> {
    let (Some(a), Some(b)) = (a, b) else {
        return Ok(None);
    };
    let image = match (&a.image, &b.image) {
        (Some(x), Some(y)) => Some(merge_images(x, y)?),
        _ => None,
    };
    let equal = |x: &Option<String>, y: &Option<String>| if x == y { x.clone() } else { None };
    let container_name = match (&a.container_name, &b.container_name) {
        (Some(x), Some(y)) => merged_name(x, y),
        _ => None,
    };
    let out = ContainerSelector {
        image,
        image_id: equal(&a.image_id, &b.image_id),
        container_name,
        container_id: equal(&a.container_id, &b.container_id),
    };
    Ok((out != ContainerSelector::default()).then_some(out))
}
