//! [`KindLab`]: the lab on a Kubernetes cluster, kind or an existing one.

use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use guardlab_events::Event;
use guardlab_lab::{Lab, LabAction, LabError, LabInfo, Progress};
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::KindCluster;
use crate::forward::{LocalForward, open_pod_stream};
use crate::image::{build_sensor_image, default_workspace_root, remove_image};
use crate::k8s::{
    self, apply_objects, delete_objects, list_pods, notebook_pods, sensor_pod_on, serving_pod,
    wait_for_rollout, workloads,
};
use crate::manifests::{
    CLUSTER_CONFIG, MANIFEST_NAMESPACE, NOTEBOOK_PORT, NOTEBOOK_SELECTOR, SENSOR_PORT,
    check_namespace_name, lab_objects,
};
use crate::sensor_link::{
    StreamEnd, Watch, WatchedContainer, kill_process, kill_process_group, stream_events,
};
use crate::state::{ImageRecord, LabState, ObjectRecord, StateTarget, default_state_dir, io_error};
use crate::tools::{KindCli, check_tools, connect_docker, docker_host, search_path};

/// Where the lab runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A kind cluster of this name, created by `up` unless it exists.
    Kind { cluster: String },
    /// An existing cluster, by kubeconfig context (a shared workshop cluster): never created
    /// or deleted, no Docker needed.
    Context { context: String },
}

/// Everything `up` needs to know; `Default` is `guardlab lab up --backend kind`.
#[derive(Clone, Debug)]
pub struct KindOptions {
    pub target: Target,
    /// The lab's namespace (one per participant on a shared cluster).
    pub namespace: String,
    /// The notebook's local port on 127.0.0.1 (0: any free port, for tests).
    pub local_port: u16,
    /// The sensor's image: built and loaded on kind, pulled by the nodes elsewhere.
    pub sensor_image: String,
    /// How long `up` waits for the rollout (the notebook image is large).
    pub rollout_timeout: Duration,
    /// How long `down` waits for deleted objects to be gone.
    pub delete_timeout: Duration,
    /// How often rollouts and deletions are checked.
    pub poll_interval: Duration,
    pub state_dir: PathBuf,
    /// The sensor image's build context.
    pub workspace_root: PathBuf,
    /// The Docker engine (`unix:///...` or `tcp://...`); `None`: `DOCKER_HOST`, else the default socket.
    pub docker_host: Option<String>,
    /// Where to look for `kind`; `None`: `PATH`.
    pub search_path: Option<OsString>,
}

impl Default for KindOptions {
    fn default() -> Self {
        KindOptions {
            target: Target::Kind {
                cluster: "guardlab".into(),
            },
            namespace: MANIFEST_NAMESPACE.into(),
            local_port: 1234,
            sensor_image: format!("guardlab-sensor:{}", env!("CARGO_PKG_VERSION")),
            rollout_timeout: Duration::from_secs(600),
            delete_timeout: Duration::from_secs(180),
            poll_interval: Duration::from_secs(2),
            state_dir: default_state_dir(),
            workspace_root: default_workspace_root(),
            docker_host: None,
            search_path: None,
        }
    }
}

impl KindOptions {
    /// The state file of this target and namespace.
    pub fn state_file(&self) -> PathBuf {
        let target = match &self.target {
            Target::Kind { cluster } => format!("kind-{cluster}"),
            Target::Context { context } => format!("context-{context}"),
        };
        let safe: String = format!("{target}-{}", self.namespace)
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.state_dir.join(format!("{safe}.json"))
    }

    fn state_target(&self, cluster_created: bool) -> StateTarget {
        match &self.target {
            Target::Kind { cluster } => StateTarget::Kind {
                cluster: cluster.clone(),
                created: cluster_created,
            },
            Target::Context { context } => StateTarget::Context {
                context: context.clone(),
            },
        }
    }
}

/// The lab on Kubernetes.
pub struct KindLab {
    options: KindOptions,
    /// A client given by the embedder (tests): used instead of kind or the kubeconfig.
    given_client: Option<Client>,
    forward: Option<LocalForward>,
    tasks: Vec<JoinHandle<()>>,
}

impl KindLab {
    pub fn new(options: KindOptions) -> Self {
        KindLab {
            options,
            given_client: None,
            forward: None,
            tasks: Vec::new(),
        }
    }

    /// A lab on the cluster `client` talks to. The target must be a `Context` (its name is only
    /// recorded): nothing of Docker or kind is used.
    pub fn with_client(options: KindOptions, client: Client) -> Self {
        KindLab {
            options,
            given_client: Some(client),
            forward: None,
            tasks: Vec::new(),
        }
    }

    pub fn options(&self) -> &KindOptions {
        &self.options
    }

    /// The notebook's forwarded address, while the lab is up in this process.
    pub fn notebook_address(&self) -> Option<SocketAddr> {
        self.forward.as_ref().map(LocalForward::address)
    }

    async fn client_for(
        &self,
        target: &StateTarget,
        kind: Option<&KindCli>,
    ) -> Result<Client, LabError> {
        if let Some(client) = &self.given_client {
            return Ok(client.clone());
        }
        match target {
            StateTarget::Kind { cluster, .. } => {
                let kind = match kind {
                    Some(kind) => kind.clone(),
                    None => KindCli::find(&search_path(self.options.search_path.as_deref()))
                        .await
                        .map_err(|hint| LabError::Missing {
                            what: "the kind CLI".into(),
                            hint,
                        })?,
                };
                let yaml = kind.kubeconfig(cluster).await?;
                let kubeconfig = Kubeconfig::from_yaml(&yaml).map_err(|e| {
                    LabError::Failed(format!("the kubeconfig of kind cluster {cluster}: {e}"))
                })?;
                let options = KubeConfigOptions {
                    context: Some(format!("kind-{cluster}")),
                    ..Default::default()
                };
                let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .map_err(|e| {
                        LabError::Failed(format!("the kubeconfig of kind cluster {cluster}: {e}"))
                    })?;
                Client::try_from(config).map_err(|e| {
                    LabError::Failed(format!("connecting to kind cluster {cluster}: {e}"))
                })
            }
            StateTarget::Context { context } => {
                let options = KubeConfigOptions {
                    context: Some(context.clone()),
                    ..Default::default()
                };
                let config = kube::Config::from_kubeconfig(&options).await.map_err(|e| {
                    LabError::Failed(format!("kubeconfig context `{context}`: {e}"))
                })?;
                Client::try_from(config).map_err(|e| {
                    LabError::Failed(format!("connecting with context `{context}`: {e}"))
                })
            }
        }
    }

    /// The previous state, checked against the options.
    fn load_state(&self) -> Result<Option<LabState>, LabError> {
        let path = self.options.state_file();
        let state = LabState::load(&path)?;
        if let Some(state) = &state
            && state.namespace != self.options.namespace
        {
            return Err(LabError::Failed(format!(
                "{} records a lab in namespace {}, not {}",
                path.display(),
                state.namespace,
                self.options.namespace
            )));
        }
        Ok(state)
    }

    /// Everything before the API: tools, cluster, image. Returns the client.
    async fn prepare_cluster(
        &self,
        state: &mut LabState,
        progress: &dyn Progress,
    ) -> Result<Client, LabError> {
        let path = self.options.state_file();
        let Target::Kind { cluster } = &self.options.target else {
            progress.phase("connecting to the cluster");
            return self.client_for(&state.target, None).await;
        };
        if self.given_client.is_some() {
            return Err(LabError::Failed(
                "a lab with a given client must target a context".into(),
            ));
        }
        progress.phase("checking Docker and kind");
        let host = docker_host(self.options.docker_host.as_deref());
        let tools = check_tools(&host, &search_path(self.options.search_path.as_deref())).await?;

        progress.phase(&format!("kind cluster {cluster}"));
        if tools.kind.clusters().await?.iter().any(|c| c == cluster) {
            progress.detail(&format!("reusing the existing cluster {cluster}"));
        } else {
            state.target = self.options.state_target(true);
            state.save(&path)?;
            let config_path = self
                .options
                .state_dir
                .join(format!("kind-{cluster}-cluster.yaml"));
            KindCluster::parse(CLUSTER_CONFIG.path, CLUSTER_CONFIG.text)
                .map_err(|e| LabError::Failed(e.to_string()))?;
            std::fs::write(&config_path, CLUSTER_CONFIG.text)
                .map_err(|e| io_error(format!("writing {}", config_path.display()), e))?;
            tools
                .kind
                .create_cluster(cluster, &config_path, progress)
                .await?;
        }

        progress.phase(&format!(
            "building {} from sensor/Dockerfile",
            self.options.sensor_image
        ));
        let tag = self.options.sensor_image.clone();
        let previously_created = state
            .image
            .as_ref()
            .is_some_and(|i| i.tag == tag && i.created);
        // Recorded before the build: a build interrupted after tagging still gets removed.
        let existed = tools.docker.inspect_image(&tag).await.is_ok();
        state.image = Some(ImageRecord {
            tag: tag.clone(),
            created: previously_created || !existed,
        });
        state.save(&path)?;
        build_sensor_image(&tools.docker, &self.options.workspace_root, &tag, progress).await?;

        progress.phase(&format!("loading {tag} into the nodes of {cluster}"));
        tools.kind.load_image(cluster, &tag).await?;
        self.client_for(&state.target, Some(&tools.kind)).await
    }

    /// Remove what this run created after a failed step, and say so in the error.
    async fn undo(
        &self,
        client: &Client,
        state: &mut LabState,
        created_now: &[ObjectRecord],
        error: LabError,
        progress: &dyn Progress,
    ) -> LabError {
        progress.phase("removing what this run applied");
        let newest_first: Vec<ObjectRecord> = created_now.iter().rev().cloned().collect();
        let cleanup = delete_objects(
            client,
            &newest_first,
            self.options.delete_timeout,
            self.options.poll_interval,
            progress,
        )
        .await;
        let removed: Vec<String> = newest_first.iter().map(ObjectRecord::describe).collect();
        let path = self.options.state_file();
        let mut message = error.to_string();
        match cleanup {
            Ok(()) => {
                state.objects.retain(|o| !created_now.iter().any(|c| c.same_object(o)));
                let nothing_left = state.objects.iter().all(|o| !o.created)
                    && state.image.as_ref().is_none_or(|i| !i.created)
                    && !matches!(state.target, StateTarget::Kind { created: true, .. });
                let saved = if nothing_left { LabState::remove(&path) } else { state.save(&path) };
                if let Err(e) = saved {
                    message.push_str(&format!("; and the state file: {e}"));
                }
                if removed.is_empty() {
                    message.push_str("; this run created no object");
                } else {
                    message.push_str(&format!("; removed what this run created: {}", removed.join(", ")));
                }
            }
            Err(e) => message.push_str(&format!(
                "; removing what this run created failed too ({e}); `guardlab lab down --backend kind` retries, from {}",
                path.display()
            )),
        }
        if let StateTarget::Kind {
            cluster,
            created: true,
        } = &state.target
        {
            message.push_str(&format!(
                "; the kind cluster {cluster} is kept for another try (`guardlab lab down --backend kind` removes it)"
            ));
        }
        LabError::Failed(message)
    }

    async fn info(&self, client: &Client) -> Result<LabInfo, LabError> {
        let port = self
            .forward
            .as_ref()
            .map(|f| f.address().port())
            .unwrap_or(self.options.local_port);
        Ok(LabInfo {
            backend: "kind".into(),
            notebook_url: format!("http://127.0.0.1:{port}/"),
            pods: notebook_pods(client, &self.options.namespace).await?,
        })
    }

    fn stop_tasks(&mut self) {
        if let Some(forward) = self.forward.take() {
            forward.stop();
        }
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }

    async fn current_client(&self) -> Result<(Client, LabState), LabError> {
        let state = self.load_state()?.ok_or_else(|| {
            LabError::Failed(format!(
                "the kind lab is not up (no {}); run `guardlab lab up --backend kind` first",
                self.options.state_file().display()
            ))
        })?;
        Ok((self.client_for(&state.target, None).await?, state))
    }
}

impl Drop for KindLab {
    fn drop(&mut self) {
        self.stop_tasks();
    }
}

impl Lab for KindLab {
    fn backend(&self) -> &'static str {
        "kind"
    }

    async fn up(&mut self, progress: &dyn Progress) -> Result<LabInfo, LabError> {
        check_namespace_name(&self.options.namespace).map_err(LabError::Failed)?;
        if self.given_client.is_some() && matches!(self.options.target, Target::Kind { .. }) {
            return Err(LabError::Failed(
                "a lab with a given client must target a context".into(),
            ));
        }
        let objects = lab_objects(&self.options.namespace, &self.options.sensor_image)
            .map_err(|e| LabError::Failed(e.to_string()))?;
        let path = self.options.state_file();
        let mut state = match self.load_state()? {
            Some(state) => state,
            None => LabState::new(self.options.state_target(false), &self.options.namespace),
        };
        let client = self.prepare_cluster(&mut state, progress).await?;

        progress.phase(&format!(
            "applying {} objects to namespace {}",
            objects.len(),
            self.options.namespace
        ));
        let mut created_now = Vec::new();
        if let Err(e) = apply_objects(
            &client,
            &objects,
            &mut state,
            &path,
            &mut created_now,
            progress,
        )
        .await
        {
            return Err(self
                .undo(&client, &mut state, &created_now, e, progress)
                .await);
        }

        progress.phase(&format!(
            "waiting for the rollout (at most {}s)",
            self.options.rollout_timeout.as_secs()
        ));
        let workloads = workloads(&objects);
        if let Err(e) = wait_for_rollout(
            &client,
            &workloads,
            self.options.rollout_timeout,
            self.options.poll_interval,
            progress,
        )
        .await
        {
            return Err(self
                .undo(&client, &mut state, &created_now, e, progress)
                .await);
        }

        if self.forward.is_none() {
            progress.phase(&format!(
                "forwarding 127.0.0.1:{} to the notebook",
                self.options.local_port
            ));
            let address = SocketAddr::from((Ipv4Addr::LOCALHOST, self.options.local_port));
            self.forward = Some(
                LocalForward::start(
                    client.clone(),
                    self.options.namespace.clone(),
                    NOTEBOOK_SELECTOR.into(),
                    NOTEBOOK_PORT,
                    address,
                )
                .await?,
            );
        }
        self.info(&client).await
    }

    async fn status(&self) -> Result<Option<LabInfo>, LabError> {
        let Some(state) = self.load_state()? else {
            return Ok(None);
        };
        let client = self.client_for(&state.target, None).await?;
        self.info(&client).await.map(Some)
    }

    async fn down(&mut self, progress: &dyn Progress) -> Result<(), LabError> {
        self.stop_tasks();
        let path = self.options.state_file();
        let Some(mut state) = self.load_state()? else {
            progress.detail(&format!("nothing to remove (no {})", path.display()));
            return Ok(());
        };
        match state.target.clone() {
            StateTarget::Kind {
                cluster,
                created: true,
            } if self.given_client.is_none() => {
                progress.phase(&format!(
                    "deleting kind cluster {cluster}, which `up` created"
                ));
                let kind = KindCli::find(&search_path(self.options.search_path.as_deref()))
                    .await
                    .map_err(|hint| LabError::Missing {
                        what: "the kind CLI".into(),
                        hint,
                    })?;
                kind.delete_cluster(&cluster).await?;
                state.objects.clear();
                state.target = self.options.state_target(false);
                state.save(&path)?;
            }
            target => {
                let created = state.created_objects_newest_first();
                if !created.is_empty() {
                    progress.phase(&format!(
                        "deleting the {} objects `up` created",
                        created.len()
                    ));
                    let client = self.client_for(&target, None).await?;
                    delete_objects(
                        &client,
                        &created,
                        self.options.delete_timeout,
                        self.options.poll_interval,
                        progress,
                    )
                    .await?;
                }
                state.objects.clear();
                state.save(&path)?;
            }
        }
        if let Some(image) = state.image.clone().filter(|i| i.created) {
            progress.phase(&format!("removing image {}, which `up` built", image.tag));
            let host = docker_host(self.options.docker_host.as_deref());
            let docker = connect_docker(&host)
                .await
                .map_err(|hint| LabError::Missing {
                    what: "Docker".into(),
                    hint,
                })?;
            remove_image(&docker, &image.tag).await?;
        }
        LabState::remove(&path)
    }

    async fn events(&mut self) -> Result<mpsc::Receiver<Event>, LabError> {
        let (client, _) = self.current_client().await?;
        let namespace = self.options.namespace.clone();
        let first = watch_of(&client, &namespace).await?;
        let (watch_tx, watch_rx) = watch::channel(first);
        let (tx, rx) = mpsc::channel(4096);
        let poll = self.options.poll_interval;

        // Follow the notebook pods (a killed pod is replaced by one with a new container).
        let (c, ns, closed) = (client.clone(), namespace.clone(), tx.clone());
        self.tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = closed.closed() => return,
                    _ = tokio::time::sleep(poll) => {}
                }
                if let Ok(next) = watch_of(&c, &ns).await
                    && !next.node.is_empty()
                {
                    watch_tx.send_if_modified(|w| {
                        if *w != next {
                            *w = next;
                            true
                        } else {
                            false
                        }
                    });
                }
            }
        }));

        // Stream from the sensor on the notebook's node, reconnecting when the stream ends.
        self.tasks.push(tokio::spawn(async move {
            let mut failures = 0;
            while failures < 10 && !tx.is_closed() {
                let node = watch_rx.borrow().node.clone();
                let result = async {
                    let sensor = sensor_pod_on(&client, &namespace, &node).await?;
                    let name = sensor.metadata.name.unwrap_or_default();
                    let stream = open_pod_stream(&client, &namespace, &name, SENSOR_PORT).await?;
                    stream_events(stream, watch_rx.clone(), &tx).await
                }
                .await;
                match result {
                    Ok(StreamEnd::ReceiverGone) => return,
                    Ok(StreamEnd::NodeChanged) => failures = 0,
                    Ok(StreamEnd::Closed) | Err(_) => {
                        failures += 1;
                        tokio::time::sleep(poll).await;
                    }
                }
            }
        }));
        Ok(rx)
    }

    async fn carry_out(&mut self, action: &LabAction) -> Result<(), LabError> {
        let (client, _) = self.current_client().await?;
        let namespace = &self.options.namespace;
        match action {
            LabAction::KillPod {
                namespace: ns,
                name,
            } => {
                if ns != namespace {
                    return Err(LabError::Failed(format!(
                        "refusing to delete pod {ns}/{name}: it is outside the lab's namespace {namespace}"
                    )));
                }
                k8s::delete_pod(&client, ns, name).await
            }
            LabAction::KillProcess { pid }
            | LabAction::KillProcessTree { pid }
            | LabAction::KillProcessGroup { pid } => {
                // The sensor on the notebook's node kills, and only in the containers it
                // watches: pids are the node's, not ours.
                let notebook = serving_pod(&client, namespace, NOTEBOOK_SELECTOR).await?;
                let node = notebook.spec.and_then(|s| s.node_name).unwrap_or_default();
                let sensor = sensor_pod_on(&client, namespace, &node).await?;
                let name = sensor.metadata.name.unwrap_or_default();
                let stream = open_pod_stream(&client, namespace, &name, SENSOR_PORT).await?;
                let timeout = Duration::from_secs(10);
                match action {
                    LabAction::KillProcessGroup { .. } => {
                        kill_process_group(stream, *pid, &node, timeout).await
                    }
                    _ => {
                        let tree = matches!(action, LabAction::KillProcessTree { .. });
                        kill_process(stream, *pid, tree, &node, timeout).await
                    }
                }
            }
        }
    }
}

/// The notebook containers to watch, and their node.
async fn watch_of(client: &Client, namespace: &str) -> Result<Watch, LabError> {
    let pods = list_pods(client, namespace, NOTEBOOK_SELECTOR).await?;
    let namespace_labels = kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .get_opt(namespace)
        .await
        .map_err(|e| k8s::api_error(&format!("reading namespace {namespace}"), e))?
        .and_then(|n| n.metadata.labels)
        .unwrap_or_default();
    let mut watch = Watch::default();
    for pod in pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
    {
        if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) {
            watch.node = node;
        }
        let info = k8s::pod_info(pod);
        if info.container_id.is_empty() {
            continue; // not started yet
        }
        watch.containers.push(WatchedContainer {
            container_id: info.container_id,
            container_name: info.container_name,
            image: info.image,
            image_id: info.image_id,
            namespace: info.namespace,
            namespace_labels: namespace_labels.clone(),
            pod_name: info.name,
            pod_uid: pod.metadata.uid.clone().unwrap_or_default(),
            pod_labels: info.labels,
        });
    }
    Ok(watch)
}
