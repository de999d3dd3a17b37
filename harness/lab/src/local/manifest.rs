//! The pod the local backend runs, read from the same Deployment YAML that the kind backend
//! applies (`manifests/kubernetes/jupyter-notebook.yaml`), so both backends run one pod.
//!
//! Only the fields the local backend uses are read; a field of the wrong type or a missing one
//! is an error that names the file, the line and the field (serde_yaml's messages carry the
//! field path and position).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::local::cgroup_limits::ResourceLimits;
use crate::local::manifest_limits::{self, KIND_CLUSTER_FILE};
use crate::local::seccomp::{self, Profile};
use crate::{IoContext, LabError};

/// The Deployment file, relative to the manifests directory.
pub const DEPLOYMENT_FILE: &str = "kubernetes/jupyter-notebook.yaml";
/// The Namespace file, relative to the manifests directory.
pub const NAMESPACE_FILE: &str = "kubernetes/namespace.yaml";

/// What the local backend needs to know about the pod it runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodTemplate {
    /// Kubernetes namespace (`cryptominer`).
    pub namespace: String,
    /// Labels of the namespace, when `namespace.yaml` declares it.
    pub namespace_labels: BTreeMap<String, String>,
    /// Name of the Deployment; pod names start with it (`jupyter-notebook`).
    pub deployment: String,
    /// Labels of the pod template (`app: jupyter-notebook`, ...).
    pub labels: BTreeMap<String, String>,
    pub container_name: String,
    /// Image reference as written (`jupyter/minimal-notebook:latest`).
    pub image: String,
    /// `command` of the container (replaces the image's entrypoint when set).
    pub command: Vec<String>,
    /// `args` of the container (replaces the image's cmd when set).
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub ports: Vec<ContainerPort>,
    pub run_as_user: Option<u32>,
    pub run_as_group: Option<u32>,
    /// `securityContext.allowPrivilegeEscalation` (`false` sets no_new_privs).
    pub allow_privilege_escalation: Option<bool>,
    /// `securityContext.capabilities`, names as Kubernetes writes them (`NET_RAW`, `ALL`).
    pub capabilities_add: Vec<String>,
    pub capabilities_drop: Vec<String>,
    /// `securityContext.seccompProfile` (the container's over the pod's).
    #[serde(default)]
    pub seccomp: Seccomp,
    /// `resources.limits` of the container, and the kubelet's pids limit.
    #[serde(default)]
    pub limits: ResourceLimits,
    /// Kubernetes' `pod-template-hash`: a short hash of the template, the middle part of pod
    /// names (`jupyter-notebook-<hash>-<suffix>`).
    pub template_hash: String,
    /// The Deployment file it was read from, for messages about it.
    #[serde(default)]
    pub file: PathBuf,
}

/// The seccomp filter of the pod's processes, as `securityContext.seccompProfile` asks.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Seccomp {
    /// `Unconfined`, or no `seccompProfile` (Kubernetes' default): no filter.
    #[default]
    Unconfined,
    /// `RuntimeDefault`: the container runtime's default profile
    /// (`manifests/seccomp/runtime-default.json`, see [`seccomp`]).
    RuntimeDefault(Box<Profile>),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub container_port: u16,
    pub protocol: String,
}

impl PodTemplate {
    /// Bad input in the Deployment this template was read from, at `field`.
    pub fn error(&self, field: &str, message: impl Into<String>) -> LabError {
        LabError::input(&self.file, None, Some(field), message)
    }

    /// The first TCP port the container declares (8888 for the notebook).
    pub fn http_port(&self) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.protocol.eq_ignore_ascii_case("TCP"))
            .map(|p| p.container_port)
    }
}

// The YAML shapes, only the parts we read. Unknown fields are allowed: this is a real Kubernetes
// manifest and the kind backend may use fields we ignore.

#[derive(Deserialize)]
struct TypeMeta {
    kind: Option<String>,
}

#[derive(Deserialize)]
struct ObjectMeta {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Deployment {
    metadata: ObjectMeta,
    spec: DeploymentSpec,
}

#[derive(Deserialize)]
struct DeploymentSpec {
    template: PodTemplateSpec,
}

#[derive(Deserialize, Serialize)]
struct PodTemplateSpec {
    #[serde(default)]
    metadata: TemplateMeta,
    spec: PodSpec,
}

#[derive(Deserialize, Serialize, Default)]
struct TemplateMeta {
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct PodSpec {
    containers: Vec<Container>,
    #[serde(default)]
    security_context: Option<PodSecurityContext>,
}

#[derive(Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct Container {
    name: String,
    image: String,
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: Vec<EnvVar>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    ports: Vec<Port>,
    #[serde(default)]
    security_context: Option<SecurityContext>,
    #[serde(default)]
    resources: Option<Resources>,
}

#[derive(Deserialize, Serialize, Default)]
struct Resources {
    /// Quantities as written (`1Gi`, `500m`, or a YAML number).
    #[serde(default)]
    limits: BTreeMap<String, serde_yaml::Value>,
    #[serde(default)]
    requests: BTreeMap<String, serde_yaml::Value>,
}

#[derive(Deserialize, Serialize)]
struct EnvVar {
    name: String,
    #[serde(default)]
    value: String,
}

#[derive(Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct Port {
    #[serde(default)]
    name: Option<String>,
    container_port: u16,
    #[serde(default = "tcp")]
    protocol: String,
}

fn tcp() -> String {
    "TCP".into()
}

#[derive(Deserialize, Serialize, Clone, Default)]
#[serde(rename_all = "camelCase")]
struct PodSecurityContext {
    #[serde(default)]
    run_as_user: Option<u32>,
    #[serde(default)]
    run_as_group: Option<u32>,
    #[serde(default)]
    seccomp_profile: Option<SeccompProfile>,
}

#[derive(Deserialize, Serialize, Clone)]
#[serde(rename_all = "camelCase")]
struct SeccompProfile {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    localhost_profile: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Default)]
#[serde(rename_all = "camelCase")]
struct SecurityContext {
    #[serde(default)]
    run_as_user: Option<u32>,
    #[serde(default)]
    run_as_group: Option<u32>,
    #[serde(default)]
    allow_privilege_escalation: Option<bool>,
    #[serde(default)]
    capabilities: Option<Capabilities>,
    #[serde(default)]
    seccomp_profile: Option<SeccompProfile>,
}

#[derive(Deserialize, Serialize, Clone, Default)]
struct Capabilities {
    #[serde(default)]
    add: Vec<String>,
    #[serde(default)]
    drop: Vec<String>,
}

#[derive(Deserialize)]
struct Namespace {
    metadata: ObjectMeta,
}

/// Bad input in a manifest file (serde's messages carry the line and the field path).
fn manifest_error(file: &Path, message: impl std::fmt::Display) -> LabError {
    LabError::input(file, None, None, message.to_string())
}

/// Bad input in a manifest file at `field`.
fn field_error(file: &Path, field: &str, message: impl Into<String>) -> LabError {
    LabError::input(file, None, Some(field), message)
}

/// Read the pod template from a manifests directory (`manifests/`).
pub fn load(manifests_dir: &Path) -> Result<PodTemplate, LabError> {
    let file = manifests_dir.join(DEPLOYMENT_FILE);
    let text = std::fs::read_to_string(&file).context(|| format!("reading {}", file.display()))?;
    let namespace_file = manifests_dir.join(NAMESPACE_FILE);
    let namespace_text = match std::fs::read_to_string(&namespace_file) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).context(|| format!("reading {}", namespace_file.display())),
    };
    let mut template = parse(
        &file,
        &text,
        namespace_text
            .as_deref()
            .map(|t| (namespace_file.as_path(), t)),
        &|| Profile::load(&manifests_dir.join(seccomp::RUNTIME_DEFAULT_FILE)),
    )?;
    // Kubernetes sets a pod's pids limit from the kubelet's configuration: the kind cluster's.
    let kind_file = manifests_dir.join(KIND_CLUSTER_FILE);
    match std::fs::read_to_string(&kind_file) {
        Ok(kind_text) => {
            template.limits.pids = manifest_limits::pod_pids_limit(&kind_file, &kind_text)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).context(|| format!("reading {}", kind_file.display())),
    }
    Ok(template)
}

/// Parse a Deployment YAML (several documents allowed; the Deployment is the one used) and,
/// optionally, the Namespace YAML. `file` only names the file in errors; `runtime_default`
/// gives the runtime's default seccomp profile, when the Deployment asks for it.
pub fn parse(
    file: &Path,
    text: &str,
    namespace: Option<(&Path, &str)>,
    runtime_default: &dyn Fn() -> Result<Profile, LabError>,
) -> Result<PodTemplate, LabError> {
    let deployments = documents_of_kind(text, "Deployment").map_err(|e| manifest_error(file, e))?;
    let (offset, document) = match deployments.as_slice() {
        [one] => *one,
        [] => return Err(manifest_error(file, "no document with `kind: Deployment`")),
        _ => {
            return Err(manifest_error(
                file,
                "more than one Deployment; the local backend runs exactly one",
            ));
        }
    };
    let deployment: Deployment =
        serde_yaml::from_str(document).map_err(|e| manifest_error(file, shift_line(&e, offset)))?;

    let template = &deployment.spec.template;
    let container = match template.spec.containers.as_slice() {
        [one] => one,
        [] => {
            return Err(field_error(
                file,
                "spec.template.spec.containers",
                "no container",
            ));
        }
        _ => {
            return Err(field_error(
                file,
                "spec.template.spec.containers",
                "the local backend runs one container per pod",
            ));
        }
    };
    // A container's field wins over the pod's, field by field, as in Kubernetes.
    let pod_security = template.spec.security_context.clone().unwrap_or_default();
    let security = container.security_context.clone().unwrap_or_default();
    let capabilities = security.capabilities.clone().unwrap_or_default();
    let namespace_name = deployment
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let namespace_labels = match namespace {
        Some((ns_file, ns_text)) => {
            let ns = match documents_of_kind(ns_text, "Namespace")
                .map_err(|e| manifest_error(ns_file, e))?
                .first()
            {
                Some((offset, document)) => serde_yaml::from_str::<Namespace>(document)
                    .map_err(|e| manifest_error(ns_file, shift_line(&e, *offset)))?,
                None => {
                    return Err(manifest_error(
                        ns_file,
                        "no document with `kind: Namespace`",
                    ));
                }
            };
            if ns.metadata.name != namespace_name {
                return Err(field_error(
                    ns_file,
                    "metadata.name",
                    format!(
                        "namespace `{}` but the Deployment in {} is in `{namespace_name}`",
                        ns.metadata.name,
                        file.display()
                    ),
                ));
            }
            ns.metadata.labels
        }
        None => BTreeMap::new(),
    };
    for key in template
        .metadata
        .labels
        .keys()
        .chain(deployment.metadata.labels.keys())
    {
        if key.is_empty() {
            return Err(field_error(file, "metadata.labels", "empty label key"));
        }
    }
    if container.image.trim().is_empty() {
        return Err(field_error(
            file,
            "spec.template.spec.containers[0].image",
            "empty",
        ));
    }
    let container_field = "spec.template.spec.containers[0]";
    let seccomp = match security
        .seccomp_profile
        .as_ref()
        .map(|p| {
            (
                p,
                format!("{container_field}.securityContext.seccompProfile"),
            )
        })
        .or_else(|| {
            pod_security.seccomp_profile.as_ref().map(|p| {
                (
                    p,
                    "spec.template.spec.securityContext.seccompProfile".to_string(),
                )
            })
        }) {
        None => Seccomp::Unconfined,
        Some((profile, field)) => match profile.kind.as_str() {
            "Unconfined" => Seccomp::Unconfined,
            "RuntimeDefault" => Seccomp::RuntimeDefault(Box::new(runtime_default()?)),
            other => {
                return Err(field_error(
                    file,
                    &format!("{field}.type"),
                    format!(
                        "`{other}`{}: the local backend knows RuntimeDefault and Unconfined",
                        profile
                            .localhost_profile
                            .as_ref()
                            .map(|p| format!(" ({p})"))
                            .unwrap_or_default()
                    ),
                ));
            }
        },
    };
    let limits = match &container.resources {
        Some(resources) => manifest_limits::limits_of(
            file,
            &format!("{container_field}.resources.limits"),
            &resources.limits,
        )?,
        None => ResourceLimits::default(),
    };
    let template_yaml = serde_yaml::to_string(template).map_err(|e| {
        LabError::backend(
            format!("encoding the pod template of {}", file.display()),
            e,
        )
    })?;
    Ok(PodTemplate {
        namespace: namespace_name,
        namespace_labels,
        deployment: deployment.metadata.name.clone(),
        labels: template.metadata.labels.clone(),
        container_name: container.name.clone(),
        image: container.image.clone(),
        command: container.command.clone(),
        args: container.args.clone(),
        env: container
            .env
            .iter()
            .map(|e| (e.name.clone(), e.value.clone()))
            .collect(),
        working_dir: container.working_dir.clone(),
        ports: container
            .ports
            .iter()
            .map(|p| ContainerPort {
                name: p.name.clone(),
                container_port: p.container_port,
                protocol: p.protocol.clone(),
            })
            .collect(),
        run_as_user: security.run_as_user.or(pod_security.run_as_user),
        run_as_group: security.run_as_group.or(pod_security.run_as_group),
        allow_privilege_escalation: security.allow_privilege_escalation,
        capabilities_add: capabilities.add,
        capabilities_drop: capabilities.drop,
        seccomp,
        limits,
        template_hash: kube_safe_hash(template_yaml.as_bytes(), 10),
        file: file.to_path_buf(),
    })
}

/// The documents of a multi-document YAML whose `kind` is `kind`, each with the 0-based line
/// it starts on (so errors can be given in lines of the whole file).
fn documents_of_kind<'t>(text: &'t str, kind: &str) -> Result<Vec<(usize, &'t str)>, String> {
    let mut found = Vec::new();
    for (offset, document) in split_documents(text) {
        let meta: Option<TypeMeta> =
            serde_yaml::from_str(document).map_err(|e| shift_line(&e, offset))?;
        if meta.and_then(|m| m.kind).as_deref() == Some(kind) {
            found.push((offset, document));
        }
    }
    Ok(found)
}

/// Split multi-document YAML on `---` lines; each piece with the 0-based line it starts on.
fn split_documents(text: &str) -> Vec<(usize, &str)> {
    let mut pieces = Vec::new();
    let mut start_byte = 0;
    let mut start_line = 0;
    let mut byte = 0;
    for (number, line) in text.split_inclusive('\n').enumerate() {
        if line.trim_end() == "---" {
            pieces.push((start_line, &text[start_byte..byte]));
            start_byte = byte + line.len();
            start_line = number + 1;
        }
        byte += line.len();
    }
    pieces.push((start_line, &text[start_byte..]));
    pieces
}

/// serde_yaml reports lines relative to the document; make them relative to the file.
fn shift_line(error: &serde_yaml::Error, offset: usize) -> String {
    let message = error.to_string();
    match error.location() {
        Some(location) => {
            let within = format!("at line {} column {}", location.line(), location.column());
            let real = format!(
                "at line {} column {}",
                location.line() + offset,
                location.column()
            );
            message.replace(&within, &real)
        }
        None => message,
    }
}

/// A hash in the alphabet Kubernetes uses for generated names (no vowels, no confusable digits).
pub fn kube_safe_hash(data: &[u8], len: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let digest = Sha256::digest(data);
    digest
        .iter()
        .take(len)
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// The default manifests directory: `manifests/` of the source tree this crate was built from,
/// overridable with `GUARDLAB_MANIFESTS`.
pub fn default_manifests_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("GUARDLAB_MANIFESTS") {
        return PathBuf::from(dir);
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../manifests");
    // `/work/guardlab/manifests` in messages, not `.../harness/lab/../../manifests`.
    dir.canonicalize().unwrap_or(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_profile() -> Result<Profile, LabError> {
        panic!("this Deployment asks for no seccomp profile")
    }

    /// A Deployment of one container with these lines in the pod's spec (`pod`, indented by
    /// 6) and in the container (`container`, indented by 8).
    fn deployment(pod: &str, container: &str) -> String {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\nspec:\n  template:\n    \
             spec:\n{pod}      containers:\n      - name: c\n        image: i\n{container}"
        )
    }

    #[test]
    fn reads_the_project_deployment() {
        let pod = load(&default_manifests_dir()).unwrap();
        assert_eq!(pod.namespace, "cryptominer");
        assert_eq!(pod.deployment, "jupyter-notebook");
        assert_eq!(pod.container_name, "minimal-notebook");
        assert_eq!(pod.image, "jupyter/minimal-notebook:latest");
        assert_eq!(
            pod.labels.get("app").map(String::as_str),
            Some("jupyter-notebook")
        );
        assert_eq!(pod.http_port(), Some(8888));
        assert_eq!(
            pod.args.first().map(String::as_str),
            Some("start-notebook.py")
        );
        assert!(
            pod.args.iter().any(|a| a == "--IdentityProvider.token="),
            "{:?}",
            pod.args
        );
        assert_eq!((pod.run_as_user, pod.run_as_group), (Some(1000), Some(100)));
        assert_eq!(pod.template_hash.len(), 10);
        // The hardening a runtime gives, written once in the Deployment (and the kubelet's
        // pids limit in the kind config).
        let Seccomp::RuntimeDefault(profile) = &pod.seccomp else {
            panic!("the Deployment asks for the runtime's default seccomp profile")
        };
        assert!(profile.syscalls.len() > 10);
        assert_eq!(
            pod.limits,
            ResourceLimits {
                memory: Some(1 << 30),
                cpu_millis: Some(1000),
                pids: Some(1024),
            }
        );
        assert!(
            pod.args
                .iter()
                .any(|a| a == "--ServerApp.allow_remote_access=False"),
            "the notebook refuses Host headers that are not loopback names: {:?}",
            pod.args
        );
        assert_eq!(
            pod.namespace_labels
                .get("app.kubernetes.io/part-of")
                .map(String::as_str),
            Some("guardlab")
        );
    }

    #[test]
    fn errors_name_the_file_the_line_and_the_field() {
        let text = "apiVersion: v1\nkind: Service\nmetadata:\n  name: x\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\nspec:\n  template:\n    spec:\n      containers:\n      - name: c\n        image: i\n        ports:\n        - containerPort: notanumber\n";
        let err = parse(Path::new("m/d.yaml"), text, None, &no_profile)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("m/d.yaml: "), "{err}");
        assert!(err.contains("containerPort"), "{err}");
        assert!(err.contains("line 17"), "{err}");
    }

    #[test]
    fn a_missing_deployment_is_an_error() {
        let err = parse(
            Path::new("x.yaml"),
            "kind: Service\nmetadata:\n  name: s\n",
            None,
            &no_profile,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("no document with `kind: Deployment`"),
            "{err}"
        );
    }

    #[test]
    fn the_template_hash_is_stable_and_kube_safe() {
        let a = kube_safe_hash(b"x", 10);
        assert_eq!(a, kube_safe_hash(b"x", 10));
        assert!(a.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
        assert_ne!(a, kube_safe_hash(b"y", 10));
    }

    #[test]
    fn the_containers_seccomp_profile_wins_over_the_pods() {
        let profile = || {
            Ok(Profile::parse(
                Path::new("p.json"),
                r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]}"#,
            )?)
        };
        let pod_runtime =
            "      securityContext:\n        seccompProfile:\n          type: RuntimeDefault\n";
        let container_unconfined =
            "        securityContext:\n          seccompProfile:\n            type: Unconfined\n";
        let parsed = |pod: &str, container: &str| {
            parse(
                Path::new("d.yaml"),
                &deployment(pod, container),
                None,
                &profile,
            )
        };
        assert!(matches!(
            parsed(pod_runtime, "").unwrap().seccomp,
            Seccomp::RuntimeDefault(p) if p.syscalls.len() == 1
        ));
        assert_eq!(
            parsed(pod_runtime, container_unconfined).unwrap().seccomp,
            Seccomp::Unconfined
        );
        assert_eq!(parsed("", "").unwrap().seccomp, Seccomp::Unconfined);
        let localhost = "        securityContext:\n          seccompProfile:\n            type: Localhost\n            localhostProfile: my.json\n";
        let err = parsed("", localhost).unwrap_err().to_string();
        assert!(
            err.contains("d.yaml")
                && err.contains("containers[0].securityContext.seccompProfile.type")
                && err.contains("my.json"),
            "{err}"
        );
    }

    #[test]
    fn resource_limits_are_read_and_bad_ones_named() {
        let parsed = |container: &str| {
            parse(
                Path::new("d.yaml"),
                &deployment("", container),
                None,
                &no_profile,
            )
        };
        let limits = parsed("        resources:\n          limits:\n            cpu: 500m\n            memory: 256Mi\n")
            .unwrap()
            .limits;
        assert_eq!(limits.cpu_millis, Some(500));
        assert_eq!(limits.memory, Some(256 << 20));
        assert_eq!(limits.pids, None, "parse alone reads no kind config");
        let err = parsed("        resources:\n          limits:\n            memory: a lot\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("spec.template.spec.containers[0].resources.limits.memory"),
            "{err}"
        );
    }
}
