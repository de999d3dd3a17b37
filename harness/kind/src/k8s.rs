//! What the kind backend does through the Kubernetes API: apply, wait, explain, delete.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use guardlab_lab::{LabError, PodInfo, Progress};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use tokio::time::Instant;

use crate::manifests::{Manifest, NOTEBOOK_SELECTOR, Object, SENSOR_SELECTOR};
use crate::state::{LabState, ObjectRecord};

/// The field manager of guardlab's server-side applies.
pub const FIELD_MANAGER: &str = "guardlab";

/// A Kubernetes API error as a lab error, with what was being done.
pub fn api_error(context: &str, error: kube::Error) -> LabError {
    match error {
        kube::Error::Api(status) => crate::failed(format!(
            "{context}: {} ({}, HTTP {})",
            status.message, status.reason, status.code
        )),
        other => crate::failed(format!("{context}: {other}")),
    }
}

fn dynamic_api(client: &Client, object: &Object) -> Api<DynamicObject> {
    let resource = object.api_resource();
    match object.namespace() {
        Some(ns) if object.is_namespaced() => Api::namespaced_with(client.clone(), ns, &resource),
        _ => Api::all_with(client.clone(), &resource),
    }
}

fn record_api(client: &Client, record: &ObjectRecord) -> Api<DynamicObject> {
    let (group, version) = match record.api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", record.api_version.as_str()),
    };
    let resource = kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
        group,
        version,
        &record.kind,
    ));
    match &record.namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    }
}

/// Server-side apply every object, in order. Each object is recorded in the state file before
/// it is applied (as created when it did not exist), and the ones this call created are pushed
/// to `created_now`, so the caller can remove them if a later step fails.
pub async fn apply_objects(
    client: &Client,
    manifests: &[Manifest],
    state: &mut LabState,
    state_path: &Path,
    created_now: &mut Vec<ObjectRecord>,
    progress: &dyn Progress,
) -> Result<(), LabError> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for manifest in manifests {
        let object = &manifest.object;
        let what = object.describe();
        let api = dynamic_api(client, object);
        let existed = api
            .get_opt(object.name())
            .await
            .map_err(|e| api_error(&format!("looking up {what}"), e))?
            .is_some();
        let record = ObjectRecord {
            api_version: object.api_version().to_string(),
            kind: object.kind().to_string(),
            namespace: object
                .namespace()
                .filter(|_| object.is_namespaced())
                .map(str::to_string),
            name: object.name().to_string(),
            created: !existed,
        };
        if !existed {
            created_now.push(record.clone());
        }
        state.record_object(record);
        state.save(state_path)?;
        api.patch(object.name(), &params, &Patch::Apply(&object.to_dynamic()))
            .await
            .map_err(|e| {
                api_error(
                    &format!("applying {what} from {}:{}", manifest.file, manifest.line),
                    e,
                )
            })?;
        progress.detail(&format!(
            "{} {what}",
            if existed { "updated" } else { "created" }
        ));
    }
    Ok(())
}

/// A workload whose rollout `up` waits for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    pub kind: WorkloadKind,
    pub namespace: String,
    pub name: String,
    /// Label selector of its pods, `k=v,k=v`.
    pub selector: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkloadKind {
    Deployment,
    DaemonSet,
}

impl Workload {
    fn describe(&self) -> String {
        format!("{:?} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// The Deployments and DaemonSets among the manifests.
pub fn workloads(manifests: &[Manifest]) -> Vec<Workload> {
    let selector = |labels: Option<&BTreeMap<String, String>>| {
        labels
            .map(|l| {
                l.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default()
    };
    manifests
        .iter()
        .filter_map(|m| {
            let (kind, labels) = match &m.object {
                Object::Deployment(d) => (
                    WorkloadKind::Deployment,
                    d.spec.as_ref()?.selector.match_labels.as_ref(),
                ),
                Object::DaemonSet(d) => (
                    WorkloadKind::DaemonSet,
                    d.spec.as_ref()?.selector.match_labels.as_ref(),
                ),
                _ => return None,
            };
            Some(Workload {
                kind,
                namespace: m.object.namespace().unwrap_or_default().to_string(),
                name: m.object.name().to_string(),
                selector: selector(labels),
            })
        })
        .collect()
}

/// Why a pod is not ready.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodProblem {
    /// It will not get better by waiting: stop now.
    Stuck(String),
    /// It may still come up.
    Waiting(String),
}

/// Waiting reasons that do not resolve by waiting longer.
const STUCK_REASONS: [&str; 5] = [
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CrashLoopBackOff",
    "CreateContainerConfigError",
];

fn hint(reason: &str, pod: &str, namespace: &str, container: &str) -> String {
    match reason {
        "ImagePullBackOff" | "ErrImagePull" | "ErrImageNeverPull" | "InvalidImageName" => {
            "the node cannot get the image: check its name and the node's network; for guardlab-sensor, \
             it must have been loaded into the nodes (`kind load docker-image`) or pushed to a registry \
             the cluster pulls from"
                .to_string()
        }
        "CrashLoopBackOff" => format!(
            "the container keeps exiting; its last output: kubectl logs -n {namespace} {pod} -c {container} --previous"
        ),
        "CreateContainerConfigError" => "the container's configuration refers to something missing (a Secret, a ConfigMap, a user)".to_string(),
        _ => String::new(),
    }
}

/// What keeps a pod from being ready, if anything.
pub fn pod_problem(pod: &Pod) -> Option<PodProblem> {
    let name = pod.metadata.name.as_deref().unwrap_or("?");
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("?");
    let status = pod.status.as_ref();
    let conditions = status.and_then(|s| s.conditions.as_ref());
    let condition = |kind: &str| conditions.and_then(|cs| cs.iter().find(|c| c.type_ == kind));
    if let Some(c) = condition("PodScheduled").filter(|c| c.status == "False") {
        return Some(PodProblem::Waiting(format!(
            "pod {namespace}/{name} is Pending, not scheduled: {}: {}",
            c.reason.as_deref().unwrap_or("?"),
            c.message.as_deref().unwrap_or("")
        )));
    }
    let statuses: Vec<&ContainerStatus> = status
        .into_iter()
        .flat_map(|s| {
            s.init_container_statuses
                .iter()
                .flatten()
                .chain(s.container_statuses.iter().flatten())
        })
        .collect();
    for cs in &statuses {
        let Some(waiting) = cs.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
            continue;
        };
        let reason = waiting.reason.as_deref().unwrap_or("Waiting");
        let mut text = format!("pod {namespace}/{name}, container {}: {reason}", cs.name);
        if let Some(message) = waiting.message.as_deref().filter(|m| !m.is_empty()) {
            text.push_str(&format!(" ({message})"));
        }
        if let Some(t) = cs.last_state.as_ref().and_then(|s| s.terminated.as_ref()) {
            text.push_str(&format!(
                "; last exit code {}{}",
                t.exit_code,
                t.reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            ));
        }
        let h = hint(reason, name, namespace, &cs.name);
        if !h.is_empty() {
            text.push_str(&format!(": {h}"));
        }
        if STUCK_REASONS.contains(&reason) {
            return Some(PodProblem::Stuck(text));
        }
        return Some(PodProblem::Waiting(text));
    }
    if status.and_then(|s| s.phase.as_deref()) == Some("Failed") {
        return Some(PodProblem::Stuck(format!("pod {namespace}/{name} failed")));
    }
    if condition("Ready").is_some_and(|c| c.status == "True") {
        return None;
    }
    let not_ready: Vec<&str> = statuses
        .iter()
        .filter(|c| !c.ready)
        .map(|c| c.name.as_str())
        .collect();
    Some(PodProblem::Waiting(if not_ready.is_empty() {
        format!("pod {namespace}/{name} is not ready yet")
    } else {
        format!(
            "pod {namespace}/{name}: container {} is not ready yet",
            not_ready.join(", ")
        )
    }))
}

/// Whether the workload's rollout is complete.
async fn is_ready(client: &Client, w: &Workload) -> Result<bool, LabError> {
    let context = format!("reading {}", w.describe());
    Ok(match w.kind {
        WorkloadKind::Deployment => {
            let d = Api::<Deployment>::namespaced(client.clone(), &w.namespace)
                .get(&w.name)
                .await
                .map_err(|e| api_error(&context, e))?;
            let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let generation = d.metadata.generation.unwrap_or(0);
            d.status.is_some_and(|s| {
                s.observed_generation.unwrap_or(0) >= generation
                    && s.updated_replicas.unwrap_or(0) >= want
                    && s.ready_replicas.unwrap_or(0) >= want
                    && s.available_replicas.unwrap_or(0) >= want
            })
        }
        WorkloadKind::DaemonSet => {
            let d = Api::<DaemonSet>::namespaced(client.clone(), &w.namespace)
                .get(&w.name)
                .await
                .map_err(|e| api_error(&context, e))?;
            let generation = d.metadata.generation.unwrap_or(0);
            d.status.is_some_and(|s| {
                s.desired_number_scheduled > 0
                    && s.observed_generation.unwrap_or(0) >= generation
                    && s.number_ready >= s.desired_number_scheduled
                    && s.updated_number_scheduled.unwrap_or(0) >= s.desired_number_scheduled
            })
        }
    })
}

pub async fn list_pods(
    client: &Client,
    namespace: &str,
    selector: &str,
) -> Result<Vec<Pod>, LabError> {
    Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(selector))
        .await
        .map(|l| l.items)
        .map_err(|e| api_error(&format!("listing pods {selector} in {namespace}"), e))
}

/// Wait until every workload is rolled out, at most `timeout`. Stops early, with the pod, the
/// container and the reason, when a pod is stuck (image pull, crash loop...); at the deadline
/// says what each workload is still waiting for.
pub async fn wait_for_rollout(
    client: &Client,
    workloads: &[Workload],
    timeout: Duration,
    poll: Duration,
    progress: &dyn Progress,
) -> Result<(), LabError> {
    let started = Instant::now();
    let mut last_reported: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let mut waiting = Vec::new();
        for w in workloads {
            if is_ready(client, w).await? {
                if last_reported
                    .insert(w.describe(), "ready".into())
                    .as_deref()
                    != Some("ready")
                {
                    progress.detail(&format!("{} is ready", w.describe()));
                }
                continue;
            }
            let pods = list_pods(client, &w.namespace, &w.selector).await?;
            let mut reasons = Vec::new();
            for pod in pods
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
            {
                match pod_problem(pod) {
                    Some(PodProblem::Stuck(why)) => {
                        return Err(crate::failed(format!(
                            "{} cannot become ready: {why}",
                            w.describe()
                        )));
                    }
                    Some(PodProblem::Waiting(why)) => reasons.push(why),
                    None => {}
                }
            }
            if pods.is_empty() {
                reasons.push(match w.kind {
                    WorkloadKind::Deployment => "no pod created yet".to_string(),
                    WorkloadKind::DaemonSet => {
                        "no pod created yet (no node it can run on?)".to_string()
                    }
                });
            }
            let line = format!("{}: {}", w.describe(), reasons.join("; "));
            if last_reported.insert(w.describe(), line.clone()).as_deref() != Some(line.as_str()) {
                progress.detail(&line);
            }
            waiting.push(line);
        }
        if waiting.is_empty() {
            return Ok(());
        }
        if started.elapsed() >= timeout {
            return Err(crate::failed(format!(
                "the rollout did not finish within {}s: {}",
                timeout.as_secs(),
                waiting.join(" | ")
            )));
        }
        tokio::time::sleep(poll).await;
    }
}

/// Delete objects (in the order given) and wait, at most `timeout`, until they are gone.
pub async fn delete_objects(
    client: &Client,
    records: &[ObjectRecord],
    timeout: Duration,
    poll: Duration,
    progress: &dyn Progress,
) -> Result<(), LabError> {
    for record in records {
        let api = record_api(client, record);
        match api.delete(&record.name, &DeleteParams::background()).await {
            Ok(_) => progress.detail(&format!("deleting {}", record.describe())),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(api_error(&format!("deleting {}", record.describe()), e)),
        }
    }
    let started = Instant::now();
    loop {
        let mut left = Vec::new();
        for record in records {
            let api = record_api(client, record);
            if api
                .get_opt(&record.name)
                .await
                .map_err(|e| api_error(&format!("checking {}", record.describe()), e))?
                .is_some()
            {
                left.push(record.describe());
            }
        }
        if left.is_empty() {
            return Ok(());
        }
        if started.elapsed() >= timeout {
            return Err(crate::failed(format!(
                "still there {}s after deletion: {}",
                timeout.as_secs(),
                left.join(", ")
            )));
        }
        tokio::time::sleep(poll).await;
    }
}

/// Delete one pod (its Deployment brings a new one).
pub async fn delete_pod(client: &Client, namespace: &str, name: &str) -> Result<(), LabError> {
    Api::<Pod>::namespaced(client.clone(), namespace)
        .delete(name, &DeleteParams::default())
        .await
        .map(drop)
        .map_err(|e| api_error(&format!("deleting pod {namespace}/{name}"), e))
}

/// Whether a pod is running, ready and not being deleted.
pub fn is_serving(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod.status.as_ref().is_some_and(|s| {
            s.phase.as_deref() == Some("Running")
                && s.conditions
                    .iter()
                    .flatten()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

/// The newest serving pod matching `selector` (after a pod is killed, its replacement).
pub async fn serving_pod(
    client: &Client,
    namespace: &str,
    selector: &str,
) -> Result<Pod, LabError> {
    let mut pods: Vec<Pod> = list_pods(client, namespace, selector)
        .await?
        .into_iter()
        .filter(is_serving)
        .collect();
    pods.sort_by(|a, b| {
        a.metadata
            .creation_timestamp
            .cmp(&b.metadata.creation_timestamp)
    });
    pods.pop()
        .ok_or_else(|| crate::failed(format!("no ready pod {selector} in namespace {namespace}")))
}

/// The sensor pod on `node`.
pub async fn sensor_pod_on(client: &Client, namespace: &str, node: &str) -> Result<Pod, LabError> {
    list_pods(client, namespace, SENSOR_SELECTOR)
        .await?
        .into_iter()
        .find(|p| {
            p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node) && is_serving(p)
        })
        .ok_or_else(|| {
            crate::failed(format!(
                "no ready guardlab-sensor pod on node {node} in namespace {namespace}"
            ))
        })
}

/// The lab's notebook pods, as the runner knows them.
pub async fn notebook_pods(client: &Client, namespace: &str) -> Result<Vec<PodInfo>, LabError> {
    let pods = list_pods(client, namespace, NOTEBOOK_SELECTOR).await?;
    Ok(pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(pod_info)
        .collect())
}

/// `containerd://abc` → `abc`.
pub fn bare_container_id(id: &str) -> &str {
    id.split_once("://").map(|(_, id)| id).unwrap_or(id)
}

pub fn pod_info(pod: &Pod) -> PodInfo {
    let container = pod.spec.as_ref().and_then(|s| s.containers.first());
    let name = container.map(|c| c.name.clone()).unwrap_or_default();
    let status = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == name));
    PodInfo {
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        name: pod.metadata.name.clone().unwrap_or_default(),
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        container_name: name,
        container_id: status
            .and_then(|s| s.container_id.as_deref())
            .map(|id| bare_container_id(id).to_string())
            .unwrap_or_default(),
        image: container.and_then(|c| c.image.clone()).unwrap_or_default(),
        image_id: status.map(|s| s.image_id.clone()).unwrap_or_default(),
        cgroup_path: None,
        cgroup_id: None,
        root_pid: None,
    }
}
