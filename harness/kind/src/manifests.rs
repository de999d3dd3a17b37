//! The lab's Kubernetes manifests, read into k8s-openapi types.
//!
//! The files under `manifests/` are compiled in, so `guardlab` applies exactly what the
//! repository holds wherever it runs from. Each document is checked twice: it must deserialize
//! into its k8s-openapi type, and serializing that value back must keep every field the file
//! had; k8s-openapi ignores unknown fields, so the second check is what catches a misspelt one.

use std::fmt;

use guardlab_lab_api::LabError;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ApiResource, DynamicObject};
use serde_json::Value as Json;

use crate::gate_program::gate_args;
use crate::names::{MANIFEST_NAMESPACE, NOTEBOOK_DEPLOYMENT, SENSOR_CONTAINER, SENSOR_DAEMONSET};

/// A file of the repository, compiled in.
#[derive(Clone, Copy, Debug)]
pub struct EmbeddedFile {
    /// Path from the workspace root, used in messages.
    pub path: &'static str,
    pub text: &'static str,
}

/// The kind cluster config.
pub const CLUSTER_CONFIG: EmbeddedFile = EmbeddedFile {
    path: "manifests/kind/cluster.yaml",
    text: include_str!("../../../manifests/kind/cluster.yaml"),
};

/// The lab's manifests, in the order they are applied (the namespace first, the sensor before
/// the pod it watches).
pub const LAB_MANIFESTS: [EmbeddedFile; 3] = [
    EmbeddedFile {
        path: "manifests/kubernetes/namespace.yaml",
        text: include_str!("../../../manifests/kubernetes/namespace.yaml"),
    },
    EmbeddedFile {
        path: "manifests/kubernetes/guardlab-sensor.yaml",
        text: include_str!("../../../manifests/kubernetes/guardlab-sensor.yaml"),
    },
    EmbeddedFile {
        path: "manifests/kubernetes/jupyter-notebook.yaml",
        text: include_str!("../../../manifests/kubernetes/jupyter-notebook.yaml"),
    },
];

/// A manifest that is not what it should be: file, line and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct ManifestError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

impl From<ManifestError> for LabError {
    fn from(error: ManifestError) -> LabError {
        LabError::input(error.file, Some(error.line), None, error.message)
    }
}

macro_rules! objects {
    ($($variant:ident => $ty:ty, $api_version:literal, $namespaced:literal;)*) => {
        /// One Kubernetes object of a manifest, typed.
        #[derive(Clone, Debug, PartialEq)]
        pub enum Object {
            $($variant(Box<$ty>),)*
        }

        impl Object {
            fn from_document(
                api_version: &str,
                kind: &str,
                text: &str,
            ) -> Option<Result<Object, serde_yaml::Error>> {
                match (api_version, kind) {
                    $(($api_version, stringify!($variant)) => Some(
                        serde_yaml::from_str::<$ty>(text).map(|o| Object::$variant(Box::new(o))),
                    ),)*
                    _ => None,
                }
            }

            pub fn kind(&self) -> &'static str {
                match self {
                    $(Object::$variant(_) => stringify!($variant),)*
                }
            }

            pub fn api_version(&self) -> &'static str {
                match self {
                    $(Object::$variant(_) => $api_version,)*
                }
            }

            /// Whether objects of this kind live in a namespace.
            pub fn is_namespaced(&self) -> bool {
                match self {
                    $(Object::$variant(_) => $namespaced,)*
                }
            }

            pub fn meta(&self) -> &ObjectMeta {
                match self {
                    $(Object::$variant(o) => &o.metadata,)*
                }
            }

            pub fn meta_mut(&mut self) -> &mut ObjectMeta {
                match self {
                    $(Object::$variant(o) => &mut o.metadata,)*
                }
            }

            /// The object as JSON, with its `apiVersion` and `kind`.
            pub fn to_json(&self) -> Json {
                let value = match self {
                    $(Object::$variant(o) => serde_json::to_value(o),)*
                };
                value.expect("k8s-openapi objects serialize")
            }

            /// Kinds this module knows, for messages.
            pub fn known_kinds() -> &'static [&'static str] {
                &[$(concat!($api_version, " ", stringify!($variant)),)*]
            }
        }
    };
}

objects! {
    Namespace => Namespace, "v1", false;
    ServiceAccount => ServiceAccount, "v1", true;
    ConfigMap => ConfigMap, "v1", true;
    Service => Service, "v1", true;
    Deployment => Deployment, "apps/v1", true;
    DaemonSet => DaemonSet, "apps/v1", true;
    ClusterRole => ClusterRole, "rbac.authorization.k8s.io/v1", false;
    ClusterRoleBinding => ClusterRoleBinding, "rbac.authorization.k8s.io/v1", false;
    Role => Role, "rbac.authorization.k8s.io/v1", true;
    RoleBinding => RoleBinding, "rbac.authorization.k8s.io/v1", true;
}

impl Object {
    pub fn name(&self) -> &str {
        self.meta().name.as_deref().unwrap_or_default()
    }

    pub fn namespace(&self) -> Option<&str> {
        self.meta().namespace.as_deref()
    }

    /// How the API addresses this kind (group, version, plural).
    pub fn api_resource(&self) -> ApiResource {
        let (group, version) = match self.api_version().split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", self.api_version()),
        };
        ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
            group,
            version,
            self.kind(),
        ))
    }

    /// The object as kube's untyped object, for server-side apply.
    pub fn to_dynamic(&self) -> DynamicObject {
        serde_json::from_value(self.to_json()).expect("a typed object is a valid dynamic object")
    }

    /// `Kind namespace/name`, or `Kind name` for cluster-scoped objects.
    pub fn describe(&self) -> String {
        match self.namespace() {
            Some(ns) => format!("{} {ns}/{}", self.kind(), self.name()),
            None => format!("{} {}", self.kind(), self.name()),
        }
    }

    /// The object as YAML, as it would be applied.
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(&self.to_json()).expect("JSON values serialize as YAML")
    }
}

/// One object of a manifest file, with where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Manifest {
    pub file: String,
    /// The line of the object's `apiVersion` in `file`.
    pub line: usize,
    pub object: Object,
}

impl fmt::Display for Manifest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}:{})",
            self.object.describe(),
            self.file,
            self.line
        )
    }
}

/// Parse every document of a manifest file into typed objects.
pub fn parse_manifests(file: &str, text: &str) -> Result<Vec<Manifest>, ManifestError> {
    let mut out = Vec::new();
    for (start, document) in split_documents(text) {
        let error = |line: usize, message: String| ManifestError {
            file: file.to_string(),
            line,
            message,
        };
        let located = |e: serde_yaml::Error| {
            let line = e.location().map(|l| start + l.line() - 1).unwrap_or(start);
            error(line, e.to_string())
        };
        let value: serde_yaml::Value = serde_yaml::from_str(&document).map_err(located)?;
        if value.is_null() {
            continue; // only comments
        }
        let field = |name: &str| -> Result<String, ManifestError> {
            match value.get(name) {
                Some(serde_yaml::Value::String(s)) => Ok(s.clone()),
                Some(_) => Err(error(
                    line_of_key(text, start, name),
                    format!("`{name}` must be a string"),
                )),
                None => Err(error(start, format!("the document has no `{name}`"))),
            }
        };
        let api_version = field("apiVersion")?;
        let kind = field("kind")?;
        let object = match Object::from_document(&api_version, &kind, &document) {
            Some(parsed) => parsed.map_err(located)?,
            None => {
                return Err(error(
                    line_of_key(text, start, "kind"),
                    format!(
                        "unsupported object `{api_version} {kind}`; supported: {}",
                        Object::known_kinds().join(", ")
                    ),
                ));
            }
        };
        let original = serde_json::to_value(&value).map_err(|e| error(start, e.to_string()))?;
        if let Some(path) = first_dropped_field(&original, &object.to_json(), String::new()) {
            let key = path.rsplit(['.', '[']).next().unwrap_or(&path).to_string();
            return Err(error(
                line_of_key(text, start, &key),
                format!("unknown field `{path}` for {api_version} {kind}"),
            ));
        }
        if object.name().is_empty() {
            return Err(error(start, format!("{kind} has no metadata.name")));
        }
        // Where the object itself begins, after the comments above it.
        let line = line_of_key(text, start, "apiVersion");
        out.push(Manifest {
            file: file.to_string(),
            line,
            object,
        });
    }
    Ok(out)
}

/// The lab's objects, for namespace `namespace`, with the sensor's image set to `sensor_image`
/// and the notebook's container behind the start gate ([`crate::gate`]).
pub fn lab_objects(namespace: &str, sensor_image: &str) -> Result<Vec<Manifest>, ManifestError> {
    let mut all = Vec::new();
    for file in LAB_MANIFESTS {
        all.extend(parse_manifests(file.path, file.text)?);
    }
    for manifest in &mut all {
        retarget(&mut manifest.object, namespace);
        if let Object::DaemonSet(ds) = &mut manifest.object
            && ds.metadata.name.as_deref() == Some(SENSOR_DAEMONSET)
        {
            let containers = ds
                .spec
                .as_mut()
                .and_then(|s| s.template.spec.as_mut())
                .map(|s| &mut s.containers);
            let sensor =
                containers.and_then(|cs| cs.iter_mut().find(|c| c.name == SENSOR_CONTAINER));
            match sensor {
                Some(c) => c.image = Some(sensor_image.to_string()),
                None => {
                    return Err(ManifestError {
                        file: manifest.file.clone(),
                        line: manifest.line,
                        message: format!(
                            "DaemonSet {SENSOR_DAEMONSET} has no container `{SENSOR_CONTAINER}`"
                        ),
                    });
                }
            }
        }
        gate_notebook(manifest)?;
    }
    Ok(all)
}

/// Put the notebook's container behind the start gate (see [`crate::gate`]): its args become
/// `python3 -c GATE <args>`, which the image's start.sh execs. Other objects are left alone.
fn gate_notebook(manifest: &mut Manifest) -> Result<(), ManifestError> {
    if let Object::Deployment(d) = &mut manifest.object
        && d.metadata.name.as_deref() == Some(NOTEBOOK_DEPLOYMENT)
    {
        // The notebook starts behind the start gate (see `gate`): its args become
        // `python3 -c GATE <args>`, which the image's start.sh execs.
        let notebook = d
            .spec
            .as_mut()
            .and_then(|s| s.template.spec.as_mut())
            .and_then(|s| s.containers.first_mut());
        match notebook {
            Some(c) if c.command.is_none() && c.args.as_ref().is_some_and(|a| !a.is_empty()) => {
                let original = c.args.take().unwrap_or_default();
                c.args = Some(gate_args(&original));
            }
            _ => {
                return Err(ManifestError {
                    file: manifest.file.clone(),
                    line: manifest.line,
                    message: format!(
                        "Deployment {NOTEBOOK_DEPLOYMENT}: its first container needs `args` (the \
                         command the image's start.sh execs) and no `command`: the kind backend \
                         puts its start gate in front of those args"
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Move an object from the manifests' namespace to `namespace`.
fn retarget(object: &mut Object, namespace: &str) {
    let from = MANIFEST_NAMESPACE;
    match object {
        Object::Namespace(ns) if ns.metadata.name.as_deref() == Some(from) => {
            ns.metadata.name = Some(namespace.to_string());
        }
        Object::ClusterRoleBinding(b) => {
            for s in b.subjects.iter_mut().flatten() {
                if s.namespace.as_deref() == Some(from) {
                    s.namespace = Some(namespace.to_string());
                }
            }
        }
        Object::RoleBinding(b) => {
            for s in b.subjects.iter_mut().flatten() {
                if s.namespace.as_deref() == Some(from) {
                    s.namespace = Some(namespace.to_string());
                }
            }
        }
        _ => {}
    }
    if object.is_namespaced() {
        let meta = object.meta_mut();
        if meta.namespace.is_none() || meta.namespace.as_deref() == Some(from) {
            meta.namespace = Some(namespace.to_string());
        }
    }
}

/// The documents of a YAML stream with the line each starts on (1-based).
fn split_documents(text: &str) -> Vec<(usize, String)> {
    let mut documents = Vec::new();
    let mut current = String::new();
    let mut start = 1;
    for (i, line) in text.lines().enumerate() {
        if line == "---" || line.starts_with("--- ") {
            documents.push((start, std::mem::take(&mut current)));
            start = i + 2;
            continue;
        }
        current.push_str(line);
        current.push('\n');
    }
    documents.push((start, current));
    documents
}

/// The line of the first `key:` at or after line `from` (1-based), or `from` itself.
pub(crate) fn line_of_key(text: &str, from: usize, key: &str) -> usize {
    let pattern = format!("{key}:");
    text.lines()
        .enumerate()
        .skip(from.saturating_sub(1))
        .find(|(_, line)| {
            let line = line.trim_start().trim_start_matches("- ");
            line.starts_with(&pattern) || line.starts_with(&format!("\"{key}\":"))
        })
        .map(|(i, _)| i + 1)
        .unwrap_or(from)
}

/// The path of the first field of `original` that `round_trip` lost.
fn first_dropped_field(original: &Json, round_trip: &Json, path: String) -> Option<String> {
    match (original, round_trip) {
        (Json::Object(a), Json::Object(b)) => a.iter().find_map(|(k, v)| {
            let p = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            match b.get(k) {
                None if !is_empty(v) => Some(p),
                None => None,
                Some(w) => first_dropped_field(v, w, p),
            }
        }),
        (Json::Array(a), Json::Array(b)) => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (v, w))| first_dropped_field(v, w, format!("{path}[{i}]"))),
        _ => None,
    }
}

/// Values k8s-openapi leaves out when serializing (`{}`, `null`, `[]`): dropping those loses nothing.
fn is_empty(v: &Json) -> bool {
    match v {
        Json::Null => true,
        Json::Object(m) => m.is_empty(),
        Json::Array(a) => a.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::{NOTEBOOK_PORT, SENSOR_PORT};

    fn all() -> Vec<Manifest> {
        lab_objects(MANIFEST_NAMESPACE, "guardlab-sensor:0.1.0").unwrap()
    }

    fn find<'a>(all: &'a [Manifest], kind: &str, name: &str) -> &'a Object {
        &all.iter()
            .find(|m| m.object.kind() == kind && m.object.name() == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
            .object
    }

    #[test]
    fn every_shipped_manifest_parses_into_its_k8s_openapi_type() {
        let all = all();
        let kinds: Vec<String> = all.iter().map(|m| m.object.describe()).collect();
        assert_eq!(
            kinds,
            [
                "Namespace cryptominer",
                "ServiceAccount cryptominer/guardlab-sensor",
                "DaemonSet cryptominer/guardlab-sensor",
                "Deployment cryptominer/jupyter-notebook",
                "Service cryptominer/jupyter-notebook",
            ]
        );
        // Each object points at its own `apiVersion` line, past the comments above it.
        for m in &all {
            let file = LAB_MANIFESTS.iter().find(|f| f.path == m.file).unwrap();
            let line = file.text.lines().nth(m.line - 1).unwrap();
            assert!(line.starts_with("apiVersion: "), "{m}: {line}");
        }
        for m in &all {
            assert_eq!(
                m.object.meta().labels.as_ref().unwrap()["app.kubernetes.io/part-of"],
                "guardlab",
                "{m}"
            );
        }
    }

    #[test]
    fn the_notebook_deployment_keeps_what_the_local_backend_reads() {
        let all = all();
        let Object::Deployment(d) = find(&all, "Deployment", NOTEBOOK_DEPLOYMENT) else {
            unreachable!()
        };
        let spec = d.spec.as_ref().unwrap();
        assert_eq!(
            spec.selector.match_labels.as_ref().unwrap()["app"],
            "jupyter-notebook"
        );
        let pod = spec.template.spec.as_ref().unwrap();
        assert_eq!(
            spec.template
                .metadata
                .as_ref()
                .unwrap()
                .labels
                .as_ref()
                .unwrap()["app"],
            "jupyter-notebook"
        );
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("jupyter/minimal-notebook:latest"));
        let args = c.args.as_ref().unwrap();
        assert!(
            args.contains(&"--IdentityProvider.token=".to_string()),
            "{args:?}"
        );
        assert_eq!(
            c.ports.as_ref().unwrap()[0].container_port,
            i32::from(NOTEBOOK_PORT)
        );
        // The notebook answers loopback names only (allow_remote_access=False), so the
        // kubelet's probe, which would send the pod's IP as Host, names localhost.
        assert!(
            args.contains(&"--ServerApp.allow_remote_access=False".to_string()),
            "{args:?}"
        );
        let probe = c
            .readiness_probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .unwrap();
        assert_eq!(probe.path.as_deref(), Some("/api"));
        let headers = probe.http_headers.as_deref().unwrap_or_default();
        assert!(
            headers
                .iter()
                .any(|h| h.name.eq_ignore_ascii_case("Host") && h.value == "localhost"),
            "{headers:?}"
        );
        // The hardening the local backend applies too: the runtime's seccomp profile and
        // limits (requests below them, so the pod fits a small kind node).
        let security = c.security_context.as_ref().unwrap();
        assert_eq!(
            security.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
            Some("RuntimeDefault")
        );
        assert_ne!(
            security.allow_privilege_escalation,
            Some(false),
            "no no_new_privs: `sudo -l` must ask for the password"
        );
        let resources = c.resources.as_ref().unwrap();
        let limits = resources.limits.as_ref().unwrap();
        assert_eq!(limits["cpu"].0, "1");
        assert_eq!(limits["memory"].0, "1Gi");
        assert!(
            resources
                .requests
                .as_ref()
                .is_some_and(|r| r.contains_key("cpu"))
        );
        let Object::Service(s) = find(&all, "Service", NOTEBOOK_DEPLOYMENT) else {
            unreachable!()
        };
        assert_eq!(
            s.spec.as_ref().unwrap().selector.as_ref().unwrap()["app"],
            "jupyter-notebook"
        );
    }

    #[test]
    fn the_applied_notebook_starts_behind_the_gate_and_the_file_does_not() {
        let original = [
            "start-notebook.py",
            "--IdentityProvider.token=",
            "--ServerApp.password=",
            "--ServerApp.allow_remote_access=False",
        ];
        let container = |all: &[Manifest]| {
            let Object::Deployment(d) = find(all, "Deployment", NOTEBOOK_DEPLOYMENT) else {
                unreachable!()
            };
            d.spec
                .as_ref()
                .unwrap()
                .template
                .spec
                .as_ref()
                .unwrap()
                .containers[0]
                .clone()
        };
        let applied = container(&all());
        let mut expected = vec![
            "python3".to_string(),
            "-c".to_string(),
            crate::gate_program::gate_program(crate::gate_program::GATE_PORT),
        ];
        expected.extend(original.map(String::from));
        assert_eq!(applied.args.as_deref(), Some(&expected[..]));
        assert_eq!(
            applied.command, None,
            "the image's entrypoint (tini, start.sh) stays"
        );

        // The file is applied by plain `kubectl apply` too: no gate there.
        let file = LAB_MANIFESTS
            .iter()
            .find(|f| f.path.ends_with("jupyter-notebook.yaml"))
            .unwrap();
        let raw = container(&parse_manifests(file.path, file.text).unwrap());
        assert_eq!(raw.args.as_deref(), Some(&original.map(String::from)[..]));
        // Everything else is as in the file: the readiness probe (which fails until the
        // notebook runs) and the ports; the gate's port is in no Service and no container port.
        assert_eq!(applied.readiness_probe, raw.readiness_probe);
        assert_eq!(applied.ports, raw.ports);
        let all = all();
        for m in &all {
            if let Object::Service(s) = &m.object {
                for p in s.spec.as_ref().unwrap().ports.iter().flatten() {
                    assert_ne!(p.port, i32::from(crate::gate_program::GATE_PORT), "{m}");
                }
            }
        }
        assert!(
            !applied
                .ports
                .iter()
                .flatten()
                .any(|p| p.container_port == i32::from(crate::gate_program::GATE_PORT))
        );
    }

    #[test]
    fn a_notebook_without_args_cannot_be_gated() {
        let text = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: jupyter-notebook\nspec:\n  selector: {}\n  template:\n    spec:\n      containers:\n      - name: n\n        image: x\n";
        let mut all = parse_manifests("d.yaml", text).unwrap();
        let err = {
            // lab_objects reads the compiled-in files; apply its patch to this one.
            let Object::Deployment(d) = &mut all[0].object else {
                unreachable!()
            };
            d.spec
                .as_mut()
                .unwrap()
                .template
                .spec
                .as_mut()
                .unwrap()
                .containers[0]
                .args = None;
            gate_notebook(&mut all[0]).unwrap_err().to_string()
        };
        assert!(err.contains("needs `args`"), "{err}");
    }

    #[test]
    fn the_sensor_daemonset_has_what_the_sensor_needs_and_no_more() {
        let all = all();
        let Object::DaemonSet(ds) = find(&all, "DaemonSet", SENSOR_DAEMONSET) else {
            unreachable!()
        };
        let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        assert_eq!(pod.host_pid, Some(true));
        assert_ne!(
            pod.host_network,
            Some(true),
            "the control port must stay in the pod's netns"
        );
        assert_eq!(pod.automount_service_account_token, Some(false));
        let c = pod
            .containers
            .iter()
            .find(|c| c.name == SENSOR_CONTAINER)
            .unwrap();
        assert_eq!(c.security_context.as_ref().unwrap().privileged, Some(true));
        assert_eq!(c.image.as_deref(), Some("guardlab-sensor:0.1.0"));
        let args = c.args.clone().unwrap();
        let serve = args.iter().position(|a| a == "--serve").unwrap();
        assert_eq!(args[serve + 1], format!("127.0.0.1:{SENSOR_PORT}"));
        let mounts = c.volume_mounts.as_ref().unwrap();
        let volumes = pod.volumes.as_ref().unwrap();
        let host_path_of = |mount_path: &str| {
            let m = mounts
                .iter()
                .find(|m| m.mount_path == mount_path)
                .unwrap_or_else(|| panic!("{mount_path}"));
            let v = volumes.iter().find(|v| v.name == m.name).unwrap();
            (
                v.host_path.as_ref().unwrap().path.clone(),
                m.read_only.unwrap_or(false),
            )
        };
        assert_eq!(
            host_path_of("/sys/kernel/btf"),
            ("/sys/kernel/btf".into(), true)
        );
        assert_eq!(
            host_path_of("/host/sys/fs/cgroup"),
            ("/sys/fs/cgroup".into(), true)
        );
        // Nothing else: no tracefs, debugfs or bpffs (the sensor needs none of them,
        // sensor/tests/no_kernel_filesystems.rs), and no volume that no mount uses.
        let mut mount_paths: Vec<&str> = mounts.iter().map(|m| m.mount_path.as_str()).collect();
        mount_paths.sort_unstable();
        assert_eq!(mount_paths, ["/host/sys/fs/cgroup", "/sys/kernel/btf"]);
        assert_eq!(volumes.len(), mounts.len(), "{volumes:?}");
        let Object::ServiceAccount(sa) = find(&all, "ServiceAccount", SENSOR_DAEMONSET) else {
            unreachable!()
        };
        assert_eq!(sa.automount_service_account_token, Some(false));
    }

    /// The image of the sensor DaemonSet's container.
    fn sensor_image(ds: &DaemonSet) -> Option<String> {
        ds.spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
            .image
            .clone()
    }

    #[test]
    fn the_files_name_the_image_up_builds_so_plain_kubectl_apply_matches() {
        let file = LAB_MANIFESTS
            .iter()
            .find(|f| f.path.ends_with("guardlab-sensor.yaml"))
            .unwrap();
        let raw = parse_manifests(file.path, file.text).unwrap();
        let Object::DaemonSet(ds) = find(&raw, "DaemonSet", SENSOR_DAEMONSET) else {
            unreachable!()
        };
        let image = sensor_image(ds);
        assert_eq!(
            image,
            Some(format!("guardlab-sensor:{}", env!("CARGO_PKG_VERSION")))
        );
        assert_eq!(crate::KindOptions::default().sensor_image, image.unwrap());
    }

    #[test]
    fn another_namespace_moves_every_namespaced_object() {
        let all = lab_objects("participant-7", "registry.invalid/guardlab-sensor:1").unwrap();
        assert_eq!(all[0].object.name(), "participant-7");
        for m in &all[1..] {
            assert_eq!(m.object.namespace(), Some("participant-7"), "{m}");
        }
        let Object::DaemonSet(ds) = find(&all, "DaemonSet", SENSOR_DAEMONSET) else {
            unreachable!()
        };
        let image = sensor_image(ds);
        assert_eq!(image.as_deref(), Some("registry.invalid/guardlab-sensor:1"));
    }

    #[test]
    fn a_misspelt_field_is_refused_with_file_line_and_path() {
        let text = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n---\n# the pod\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: b\nspec:\n  selector: {}\n  template:\n    spec:\n      hostPid: true\n      containers: []\n";
        let err = parse_manifests("x.yaml", text).unwrap_err();
        assert_eq!(err.line, 15, "{err}");
        assert!(
            err.message
                .contains("unknown field `spec.template.spec.hostPid`"),
            "{err}"
        );
        assert!(err.to_string().starts_with("x.yaml:15: "), "{err}");
    }

    #[test]
    fn a_wrong_type_is_refused_with_its_line() {
        let text = "apiVersion: v1\nkind: Service\nmetadata:\n  name: a\nspec:\n  ports:\n  - port: eighty\n";
        let err = parse_manifests("s.yaml", text).unwrap_err();
        assert_eq!(err.line, 7, "{err}");
        assert!(err.message.contains("invalid"), "{err}");
    }

    #[test]
    fn unsupported_kinds_and_missing_names_are_refused() {
        let err = parse_manifests(
            "p.yaml",
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: a\n",
        )
        .unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.message.contains("unsupported object `v1 Pod`"), "{err}");
        let err = parse_manifests("n.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {}\n")
            .unwrap_err();
        assert!(err.message.contains("no metadata.name"), "{err}");
        let err = parse_manifests("k.yaml", "apiVersion: v1\nmetadata: {}\n").unwrap_err();
        assert!(err.message.contains("no `kind`"), "{err}");
    }
}
