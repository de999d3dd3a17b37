//! [`KindLab`]: the lab on a Kubernetes cluster, kind or an existing one.

use std::ffi::OsString;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use guardlab_events::Event;
use guardlab_lab::{Lab, LabAction, LabError, LabInfo, Progress};
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::sync::mpsc;

use crate::config::KindCluster;
use crate::forward::{LocalForward, open_pod_stream};
use crate::gate::{GATE_PORT, GateState, open_gate, wait_for_notebook_start};
use crate::image::{build_sensor_image, default_workspace_root, remove_image};
use crate::k8s::{
    self, WorkloadKind, apply_objects, delete_objects, notebook_pods, sensor_pod_on, serving_pod,
    wait_for_rollout, workloads,
};
use crate::manifests::{
    CLUSTER_CONFIG, MANIFEST_NAMESPACE, NOTEBOOK_PORT, NOTEBOOK_SELECTOR, SENSOR_DAEMONSET,
    SENSOR_PORT, check_namespace_name, lab_objects,
};
use crate::sensor_link::{kill_process, kill_process_group};
use crate::state::{ImageRecord, LabState, ObjectRecord, StateTarget, default_state_dir, io_error};
use crate::stream::{ClaimedGates, EventStream, Retry, StreamConfig, claim, unclaim};
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
    /// How long `up` waits for the rollout (the notebook image is large); each of its waits
    /// (the sensor's DaemonSet, the notebook's container running, the notebook ready) has this bound.
    pub rollout_timeout: Duration,
    /// How long `up` waits for the sensor's `container` event of the notebook's container
    /// (the proof that the sensor watches it), and then for its start gate to open.
    pub gate_timeout: Duration,
    /// How long `down` waits for deleted objects to be gone.
    pub delete_timeout: Duration,
    /// The longest wait between two tries of the event stream to reach the sensor (the wait
    /// starts at `poll_interval` and doubles after each failed try in a row).
    pub stream_backoff_max: Duration,
    /// How long the event stream tries to reach the sensor without success (no session that
    /// delivered a line or stayed open `stream_backoff_max`, since the last one that did)
    /// before it gives up and says why.
    pub stream_outage_limit: Duration,
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
            gate_timeout: Duration::from_secs(60),
            delete_timeout: Duration::from_secs(180),
            stream_backoff_max: Duration::from_secs(30),
            stream_outage_limit: Duration::from_secs(300),
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
    /// Event streams, the newest last: `up` starts one (before the notebook's start gate
    /// opens) and `events` hands its receiver over; `events` starts another when the receiver
    /// was handed over already.
    streams: Vec<EventStream>,
    /// Why the newest stream gave up, once it was removed from `streams` (until another starts).
    stream_failure: Option<String>,
    /// Whose start gates are being or were opened (one opener per gate).
    claimed: ClaimedGates,
}

impl KindLab {
    pub fn new(options: KindOptions) -> Self {
        KindLab {
            options,
            given_client: None,
            forward: None,
            streams: Vec::new(),
            stream_failure: None,
            claimed: ClaimedGates::default(),
        }
    }

    /// A lab on the cluster `client` talks to. The target must be a `Context` (its name is only
    /// recorded): nothing of Docker or kind is used.
    pub fn with_client(options: KindOptions, client: Client) -> Self {
        KindLab {
            options,
            given_client: Some(client),
            forward: None,
            streams: Vec::new(),
            stream_failure: None,
            claimed: ClaimedGates::default(),
        }
    }

    pub fn options(&self) -> &KindOptions {
        &self.options
    }

    /// The notebook's forwarded address, while the lab is up in this process.
    pub fn notebook_address(&self) -> Option<SocketAddr> {
        self.forward.as_ref().map(LocalForward::address)
    }

    /// Why the lab's event stream (the one `up` started, or `events` did) gave up, once it did:
    /// the sensor could not be reached for `stream_outage_limit`. The receiver `events` gave
    /// closes then; this says why. `None` while it runs (reconnecting or not).
    pub fn event_stream_failure(&self) -> Option<String> {
        match self.streams.last() {
            Some(stream) => stream.failure(),
            None => self.stream_failure.clone(),
        }
    }

    /// Resolves with [`KindLab::event_stream_failure`] once the newest event stream gives up
    /// (never, if there is none or it ends otherwise). It borrows nothing: `lab up` awaits it
    /// next to its stop signal and prints it.
    pub fn event_stream_gave_up(&self) -> impl Future<Output = String> + Send + use<> {
        let stream = self.streams.last().map(EventStream::gave_up);
        async move {
            match stream {
                Some(gave_up) => gave_up.await,
                None => std::future::pending().await,
            }
        }
    }

    /// The newest event stream's last error (reaching the sensor, reading the pods, opening a
    /// gate), also while it tries again.
    pub fn event_stream_last_error(&self) -> Option<String> {
        self.streams.last().and_then(EventStream::last_error)
    }

    /// Drop the streams that ended, keeping why the newest one gave up.
    fn prune_streams(&mut self) {
        if let Some(failure) = self.streams.last().and_then(EventStream::failure) {
            self.stream_failure = Some(failure);
        }
        self.streams.retain(EventStream::is_running);
    }

    /// Keep a new stream, the newest.
    fn push_stream(&mut self, stream: EventStream) {
        self.stream_failure = None;
        self.streams.push(stream);
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
                    crate::failed(format!("the kubeconfig of kind cluster {cluster}: {e}"))
                })?;
                let options = KubeConfigOptions {
                    context: Some(format!("kind-{cluster}")),
                    ..Default::default()
                };
                let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .map_err(|e| {
                        crate::failed(format!("the kubeconfig of kind cluster {cluster}: {e}"))
                    })?;
                Client::try_from(config).map_err(|e| {
                    crate::failed(format!("connecting to kind cluster {cluster}: {e}"))
                })
            }
            StateTarget::Context { context } => {
                let options = KubeConfigOptions {
                    context: Some(context.clone()),
                    ..Default::default()
                };
                let config = kube::Config::from_kubeconfig(&options)
                    .await
                    .map_err(|e| crate::failed(format!("kubeconfig context `{context}`: {e}")))?;
                Client::try_from(config)
                    .map_err(|e| crate::failed(format!("connecting with context `{context}`: {e}")))
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
            return Err(crate::failed(format!(
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
            return Err(crate::failed(
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
                .map_err(|e| crate::failed(e.to_string()))?;
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
        crate::failed(message)
    }

    async fn info(&self, client: &Client) -> Result<LabInfo, LabError> {
        let port = self
            .forward
            .as_ref()
            .map(|f| f.address().port())
            .unwrap_or(self.options.local_port);
        Ok(LabInfo {
            backend: guardlab_lab::Backend::Kind,
            notebook_url: format!("http://127.0.0.1:{port}/"),
            pods: notebook_pods(client, &self.options.namespace).await?,
        })
    }

    fn stop_tasks(&mut self) {
        if let Some(forward) = self.forward.take() {
            forward.stop();
        }
        self.streams.clear();
        self.stream_failure = None;
    }

    fn stream_config(&self, client: &Client) -> StreamConfig {
        StreamConfig {
            client: client.clone(),
            namespace: self.options.namespace.clone(),
            poll: self.options.poll_interval,
            retry: Retry {
                first: self.options.poll_interval,
                max: self.options.stream_backoff_max,
                outage_limit: self.options.stream_outage_limit,
            },
            gate_timeout: self.options.gate_timeout,
            claimed: self.claimed.clone(),
        }
    }

    /// The running event stream, started if there is none.
    async fn running_stream(&mut self, client: &Client) -> Result<&EventStream, LabError> {
        self.prune_streams();
        if self.streams.is_empty() {
            let stream = EventStream::start(self.stream_config(client)).await?;
            self.push_stream(stream);
        }
        Ok(self.streams.last().expect("a stream was just started"))
    }

    /// From the sensor's DaemonSet to the notebook ready behind its open start gate (see
    /// [`crate::gate`]): every step after `apply`, each bounded, each failure saying what is
    /// stuck.
    async fn start_notebook(
        &mut self,
        client: &Client,
        objects: &[crate::manifests::Manifest],
        progress: &dyn Progress,
    ) -> Result<(), LabError> {
        let namespace = self.options.namespace.clone();
        let (rollout, poll) = (self.options.rollout_timeout, self.options.poll_interval);
        let all = workloads(objects);
        let sensors: Vec<_> = all
            .iter()
            .filter(|w| w.kind == WorkloadKind::DaemonSet)
            .cloned()
            .collect();
        progress.phase(&format!(
            "waiting for the {SENSOR_DAEMONSET} DaemonSet (at most {}s)",
            rollout.as_secs()
        ));
        wait_for_rollout(client, &sensors, rollout, poll, progress).await?;

        progress.phase(&format!(
            "waiting for the notebook's container to run, its start gate waiting on port {GATE_PORT} (at most {}s)",
            rollout.as_secs()
        ));
        let (pod, gate) =
            wait_for_notebook_start(client, &namespace, rollout, poll, progress).await?;
        let info = k8s::pod_info(&pod);
        // Claimed before the stream starts, so that its follow task leaves this gate to us;
        // given back if `up` fails before it opened it, so that a later try may.
        let ours =
            matches!(gate, GateState::Waiting { .. }) && claim(&self.claimed, &info.container_id);
        let opened = self.watch_and_open(client, &pod, ours, progress).await;
        if opened.is_err() && ours {
            unclaim(&self.claimed, &info.container_id);
        }
        opened?;

        progress.phase(&format!(
            "waiting for the rollout (at most {}s)",
            rollout.as_secs()
        ));
        wait_for_rollout(client, &all, rollout, poll, progress).await
    }

    /// Subscribe to the sensor for the notebook's container, wait for the sensor's `container`
    /// event for it, then (when `ours`) open its start gate.
    async fn watch_and_open(
        &mut self,
        client: &Client,
        pod: &k8s_openapi::api::core::v1::Pod,
        ours: bool,
        progress: &dyn Progress,
    ) -> Result<(), LabError> {
        let namespace = self.options.namespace.clone();
        let poll = self.options.poll_interval;
        let info = k8s::pod_info(pod);
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();

        progress.phase(&format!(
            "subscribing to the {SENSOR_DAEMONSET} pod on node {node} for container {} of pod {}",
            info.container_id, info.name
        ));
        let gate_timeout = self.options.gate_timeout;
        let stream = self.running_stream(client).await?;
        progress.phase(&format!(
            "waiting for the sensor's `container` event for it (at most {}s)",
            gate_timeout.as_secs()
        ));
        let signals = stream.signals().clone();
        if !signals
            .wait_confirmed(&info.container_id, gate_timeout)
            .await
        {
            let sensor = match sensor_pod_on(client, &namespace, &node).await {
                Ok(p) => format!(
                    "the {SENSOR_DAEMONSET} pod {namespace}/{} on node {node}",
                    p.metadata.name.unwrap_or_default()
                ),
                Err(e) => format!("the {SENSOR_DAEMONSET} pod on node {node} ({e})"),
            };
            let last = stream
                .last_error()
                .map(|e| format!("; the stream's last error: {e}"))
                .unwrap_or_default();
            return Err(crate::failed(format!(
                "{sensor} did not confirm within {}s that it watches container {} of pod {namespace}/{} \
                 (no `container` event){last}; the notebook stays behind its start gate, unwatched \
                 containers are never started; the sensor's log: kubectl logs -n {namespace} -l {} -c sensor",
                gate_timeout.as_secs(),
                info.container_id,
                info.name,
                crate::manifests::SENSOR_SELECTOR,
            )));
        }
        progress.detail(&format!(
            "the sensor watches container {}",
            info.container_id
        ));

        if ours {
            progress.phase(&format!(
                "opening the start gate of pod {} (its port {GATE_PORT}, through the API server's port-forward)",
                info.name
            ));
            open_gate(
                client,
                &namespace,
                &info.name,
                &info.container_id,
                &signals.passed,
                gate_timeout,
                poll,
            )
            .await?;
        }
        Ok(())
    }

    async fn current_client(&self) -> Result<(Client, LabState), LabError> {
        let state = self.load_state()?.ok_or_else(|| {
            crate::failed(format!(
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
    fn backend(&self) -> guardlab_lab::Backend {
        guardlab_lab::Backend::Kind
    }

    async fn up(&mut self, progress: &dyn Progress) -> Result<LabInfo, LabError> {
        check_namespace_name(&self.options.namespace).map_err(crate::failed)?;
        if self.given_client.is_some() && matches!(self.options.target, Target::Kind { .. }) {
            return Err(crate::failed(
                "a lab with a given client must target a context".into(),
            ));
        }
        let objects = lab_objects(&self.options.namespace, &self.options.sensor_image)
            .map_err(|e| crate::failed(e.to_string()))?;
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

        if let Err(e) = self.start_notebook(&client, &objects, progress).await {
            // Streams started for a lab that is being removed would only fail.
            self.streams.clear();
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
        // The stream `up` started (before the notebook's gate opened), when it still runs.
        self.prune_streams();
        if let Some(rx) = self.streams.last_mut().and_then(EventStream::take_receiver) {
            return Ok(rx);
        }
        // `up` ran in another process (`lab up`), or the receiver was handed over already: a
        // new stream, whose follow task opens the gates of notebook containers that wait.
        let (client, _) = self.current_client().await?;
        let mut stream = EventStream::start(self.stream_config(&client)).await?;
        let rx = stream
            .take_receiver()
            .expect("a new stream has its receiver");
        self.push_stream(stream);
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
                    return Err(crate::failed(format!(
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
