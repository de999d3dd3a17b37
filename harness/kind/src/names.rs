//! The names, labels and ports of the lab's objects, as the files under
//! `manifests/kubernetes/` write them: what every part of the backend looks objects up by; and
//! the rule a namespace name (one per participant) must follow.

use guardlab_lab_api::LabError;

/// The namespace the manifests are written for.
pub const MANIFEST_NAMESPACE: &str = "cryptominer";
/// The notebook Deployment and its pod label.
pub const NOTEBOOK_DEPLOYMENT: &str = "jupyter-notebook";
pub const NOTEBOOK_SELECTOR: &str = "app=jupyter-notebook";
pub const NOTEBOOK_PORT: u16 = 8888;
/// The sensor DaemonSet, its container and its pod label.
pub const SENSOR_DAEMONSET: &str = "guardlab-sensor";
pub const SENSOR_CONTAINER: &str = "sensor";
pub const SENSOR_SELECTOR: &str = "app.kubernetes.io/name=guardlab-sensor";
/// The sensor's control port inside its pod (see `sensor_link`).
pub const SENSOR_PORT: u16 = 7070;

/// A namespace name Kubernetes would refuse: not an RFC 1123 label.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{name}` is not a valid namespace name (lower-case letters, digits and `-`, \
     at most 63, starting and ending with a letter or digit)"
)]
pub struct InvalidNamespace {
    pub name: String,
}

impl From<InvalidNamespace> for LabError {
    /// The lab's namespace is an option (`--namespace`, a scenario's `lab.namespace`).
    fn from(error: InvalidNamespace) -> LabError {
        LabError::Input {
            file: None,
            line: None,
            field: Some("namespace".into()),
            message: error.to_string(),
        }
    }
}

/// Kubernetes namespace names are RFC 1123 labels.
pub fn check_namespace_name(name: &str) -> Result<(), InvalidNamespace> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(InvalidNamespace {
            name: name.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_names_are_checked() {
        assert!(check_namespace_name("participant-7").is_ok());
        for bad in ["", "Upper", "-a", "a-", "a_b", &"a".repeat(64)] {
            assert!(check_namespace_name(bad).is_err(), "{bad}");
        }
    }
}
