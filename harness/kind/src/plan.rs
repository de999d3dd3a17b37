//! `guardlab lab up --backend kind --dry-run`: every step, the cluster config and every
//! manifest `up` would apply, computed without touching anything.

use std::fmt;

use guardlab_lab_api::LabError;

use crate::config::KindCluster;
use crate::gate_program::{GATE_PORT, gate_waiting_prefix};
use crate::image::SENSOR_DOCKERFILE;
use crate::k8s::{FIELD_MANAGER, WorkloadKind, workloads};
use crate::manifests::{CLUSTER_CONFIG, lab_objects};
use crate::names::{
    NOTEBOOK_DEPLOYMENT, NOTEBOOK_PORT, NOTEBOOK_SELECTOR, SENSOR_PORT, check_namespace_name,
};
use crate::options::{KindOptions, Target};
use crate::tools::docker_host;

/// What `up` would do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// `kind cluster guardlab` or `kubeconfig context NAME`.
    pub target: String,
    pub steps: Vec<String>,
    /// The kind cluster config, when `up` may create a cluster: (path, text).
    pub cluster_config: Option<(String, String)>,
    /// Every object, as applied: (description, source file:line, YAML).
    pub manifests: Vec<(String, String, String)>,
}

/// The plan for `options`. Fails only when the options or the compiled-in manifests are wrong.
pub fn plan(options: &KindOptions) -> Result<Plan, LabError> {
    check_namespace_name(&options.namespace)?;
    let objects = lab_objects(&options.namespace, &options.sensor_image)?;
    let state = options.state_file();
    let mut steps = Vec::new();
    let (target, cluster_config) = match &options.target {
        Target::Kind { cluster } => {
            // The config is shown as it is in the file; parsing it checks it first.
            KindCluster::parse(CLUSTER_CONFIG.path, CLUSTER_CONFIG.text)?;
            steps.push(format!(
                "check that a Docker engine answers at {} and that the `kind` CLI is on PATH \
                 (if not: stop, say what to install, exit code 2)",
                docker_host(options.docker_host.as_deref())
            ));
            steps.push(format!(
                "reuse kind cluster `{cluster}` if `kind get clusters` lists it; otherwise create it: \
                 kind create cluster --name {cluster} --config {} (recorded in {} before it is made)",
                CLUSTER_CONFIG.path,
                state.display()
            ));
            steps.push(format!(
                "build image {} from {SENSOR_DOCKERFILE} through the Docker API, context {} \
                 (without .git and target directories)",
                options.sensor_image,
                options.workspace_root.display()
            ));
            steps.push(format!(
                "load it into the nodes: kind load docker-image {} --name {cluster}",
                options.sensor_image
            ));
            steps.push(format!("connect to the cluster with the kubeconfig of `kind get kubeconfig --name {cluster}` (context kind-{cluster})"));
            (
                format!("kind cluster `{cluster}`"),
                Some((
                    CLUSTER_CONFIG.path.to_string(),
                    CLUSTER_CONFIG.text.to_string(),
                )),
            )
        }
        Target::Context { context } => {
            steps.push(format!(
                "connect to the cluster of kubeconfig context `{context}` (no Docker, no kind; the cluster \
                 is never created or deleted; image {} must be pullable by its nodes)",
                options.sensor_image
            ));
            (format!("kubeconfig context `{context}`"), None)
        }
    };
    let names: Vec<String> = objects.iter().map(|m| m.object.describe()).collect();
    steps.push(format!(
        "server-side apply (field manager `{FIELD_MANAGER}`, force) in this order: {}; each object that \
         does not exist yet is recorded in {} before it is applied",
        names.join(", "),
        state.display()
    ));
    steps.push(format!(
        "the start gate: in the applied Deployment {ns}/{NOTEBOOK_DEPLOYMENT} (not in the file, which plain \
         `kubectl apply` uses as it is) the notebook container's args become `python3 -c <gate> <its args>`: \
         the image's start.sh execs the gate, which listens on 127.0.0.1:{GATE_PORT} inside the pod (in no \
         Service), prints `{}<its pid in the container>`, accepts one connection and execs the original args \
         in the same process; \
         so the notebook starts only once the sensor watches its container (the order of the steps below)",
        gate_waiting_prefix(GATE_PORT),
        ns = options.namespace,
    ));
    let stuck = "stop early on a stuck pod (ImagePullBackOff, CrashLoopBackOff...) naming the pod, container and \
                 reason, and then delete what this run created";
    let rollout = options.rollout_timeout.as_secs();
    let (sensors, notebooks): (Vec<String>, Vec<String>) = {
        let describe = |w: &crate::k8s::Workload| {
            let kind = if w.kind == WorkloadKind::Deployment {
                "Deployment"
            } else {
                "DaemonSet"
            };
            format!("{kind} {}/{}", w.namespace, w.name)
        };
        let all = workloads(&objects);
        (
            all.iter()
                .filter(|w| w.kind == WorkloadKind::DaemonSet)
                .map(describe)
                .collect(),
            all.iter()
                .filter(|w| w.kind == WorkloadKind::Deployment)
                .map(describe)
                .collect(),
        )
    };
    steps.push(format!(
        "wait at most {rollout}s for {} to be ready; {stuck}",
        sensors.join(" and ")
    ));
    steps.push(format!(
        "wait at most {rollout}s for the notebook pod's container to be running (not ready: its readiness probe \
         fails until the notebook runs) and its start gate to wait (the last line of its log is the gate's); {stuck}"
    ));
    steps.push(format!(
        "subscribe: port-forward to port {SENSOR_PORT} of the guardlab-sensor pod on the notebook's node and \
         subscribe to the notebook's container"
    ));
    steps.push(format!(
        "wait at most {}s for the sensor's `container` event for that container, the proof that it watches it; \
         if it does not come, stop (naming that sensor pod), keep the gate closed and delete what this run created",
        options.gate_timeout.as_secs()
    ));
    steps.push(format!(
        "open the start gate: one connection to port {GATE_PORT} of the notebook pod through the API server's \
         port-forward; the gate then becomes start-notebook.py"
    ));
    steps.push(format!(
        "wait at most {rollout}s for {} to be ready (the notebook answers its readiness probe); {stuck}",
        notebooks.join(" and ")
    ));
    steps.push(format!(
        "forward 127.0.0.1:{} to port {NOTEBOOK_PORT} of the newest ready pod {NOTEBOOK_SELECTOR} in {} \
         (kube-rs port-forward; the notebook at http://127.0.0.1:{}/)",
        options.local_port, options.namespace, options.local_port
    ));
    steps.push(format!(
        "events: the subscription above goes on (kills go to the same port {SENSOR_PORT}); a container's events from \
         before its gate opened (all but its `container` event, until the gate's own exec: the exec whose pid in \
         the container is the one the gate printed; another process's exec, a `kubectl exec` or an exec probe, \
         does not open it) are the lab's plumbing and \
         dropped; a pod that replaces the notebook's (agentKillPod) starts behind its gate too, opened once the \
         sensor confirmed its new subscription; a lost connection to the sensor is tried again (after {}s, \
         doubling after each failed try up to {}s); after {}s without a working connection the stream stops \
         and says why",
        options.poll_interval.as_secs(),
        options.stream_backoff_max.as_secs(),
        options.stream_outage_limit.as_secs(),
    ));
    let manifests = objects
        .iter()
        .map(|m| {
            (
                m.object.describe(),
                format!("{}:{}", m.file, m.line),
                m.object.to_yaml(),
            )
        })
        .collect();
    Ok(Plan {
        target,
        steps,
        cluster_config,
        manifests,
    })
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "Plan for `guardlab lab up --backend kind` on {} (dry run: nothing was touched)",
            self.target
        )?;
        writeln!(f)?;
        for (i, step) in self.steps.iter().enumerate() {
            writeln!(f, "{:>2}. {step}", i + 1)?;
        }
        if let Some((path, text)) = &self.cluster_config {
            writeln!(f)?;
            writeln!(f, "# ---- cluster config: {path}")?;
            write!(f, "{}", text.trim_end())?;
            writeln!(f)?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "# ---- {} objects, as they would be applied",
            self.manifests.len()
        )?;
        for (what, source, yaml) in &self.manifests {
            writeln!(f, "---")?;
            writeln!(f, "# {what} (from {source})")?;
            write!(f, "{}", yaml.trim_end())?;
            writeln!(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifests::parse_manifests;

    fn options(dir: &std::path::Path) -> KindOptions {
        KindOptions {
            state_dir: dir.to_path_buf(),
            ..KindOptions::default()
        }
    }

    #[test]
    fn the_kind_plan_lists_every_step_the_config_and_every_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let plan = plan(&options(dir.path())).unwrap();
        let text = plan.to_string();
        for expected in [
            "kind create cluster --name guardlab --config manifests/kind/cluster.yaml",
            "kind load docker-image guardlab-sensor:0.1.0 --name guardlab",
            "sensor/Dockerfile",
            "server-side apply",
            "ImagePullBackOff",
            "127.0.0.1:1234",
            "# ---- cluster config: manifests/kind/cluster.yaml",
            "apiVersion: kind.x-k8s.io/v1alpha4",
            "# Deployment cryptominer/jupyter-notebook (from manifests/kubernetes/jupyter-notebook.yaml:16)",
            "image: jupyter/minimal-notebook:latest",
        ] {
            assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
        }
        assert!(!text.contains("0.0.0.0"), "{text}");
        assert_eq!(plan.manifests.len(), 5);

        // The start gate: what is patched, and the order around it.
        let step = |start: &str| {
            plan.steps
                .iter()
                .position(|s| s.starts_with(start))
                .unwrap_or_else(|| panic!("no step `{start}` in {:#?}", plan.steps))
        };
        let order = [
            step("server-side apply"),
            step("the start gate: in the applied Deployment cryptominer/jupyter-notebook"),
            step("wait at most 600s for DaemonSet cryptominer/guardlab-sensor"),
            step("wait at most 600s for the notebook pod's container to be running"),
            step("subscribe: port-forward to port 7070"),
            step("wait at most 60s for the sensor's `container` event"),
            step("open the start gate: one connection to port 8887"),
            step("wait at most 600s for Deployment cryptominer/jupyter-notebook to be ready"),
            step("forward 127.0.0.1:1234"),
        ];
        assert!(order.is_sorted(), "{:#?}", plan.steps);
        let gate = &plan.steps[order[1]];
        assert!(
            gate.contains("`python3 -c <gate> <its args>`")
                && gate.contains("plain `kubectl apply`"),
            "{gate}"
        );
        let (_, _, deployment) = plan
            .manifests
            .iter()
            .find(|(what, _, _)| what == "Deployment cryptominer/jupyter-notebook")
            .unwrap();
        assert!(
            deployment.contains("- python3\n        - -c\n        - 'import os,socket,sys;")
                && deployment.contains("sys.argv[1:])'\n        - start-notebook.py\n"),
            "{deployment}"
        );
        // The printed manifests are themselves valid manifests, the same objects `up` applies.
        let printed: String = plan
            .manifests
            .iter()
            .map(|(_, _, y)| format!("---\n{y}"))
            .collect();
        let reparsed = parse_manifests("plan", &printed).unwrap();
        let applied = lab_objects("cryptominer", "guardlab-sensor:0.1.0").unwrap();
        assert_eq!(
            reparsed.iter().map(|m| &m.object).collect::<Vec<_>>(),
            applied.iter().map(|m| &m.object).collect::<Vec<_>>()
        );
        // And nothing was touched: no state file.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn the_context_plan_needs_no_docker_and_keeps_the_participant_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let options = KindOptions {
            target: Target::Context {
                context: "workshop".into(),
            },
            namespace: "participant-7".into(),
            ..options(dir.path())
        };
        let text = plan(&options).unwrap().to_string();
        assert!(text.contains("kubeconfig context `workshop`"), "{text}");
        assert!(!text.contains("kind create cluster"), "{text}");
        assert!(!text.contains("cluster config"), "{text}");
        assert!(text.contains("namespace: participant-7"), "{text}");
        assert!(!text.contains("namespace: cryptominer"), "{text}");
    }

    #[test]
    fn a_bad_namespace_is_refused_before_anything() {
        let dir = tempfile::tempdir().unwrap();
        let options = KindOptions {
            namespace: "Bad_Name".into(),
            ..options(dir.path())
        };
        let err = plan(&options).unwrap_err();
        assert!(err.is_bad_input(), "{err:?}");
        let err = err.to_string();
        assert!(
            err.contains("`Bad_Name` is not a valid namespace name"),
            "{err}"
        );
    }
}
