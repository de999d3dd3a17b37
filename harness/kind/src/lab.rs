//! [`KindLab`]: the lab on a Kubernetes cluster, kind or an existing one.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use guardlab_events::Event;
use guardlab_lab_api::{Backend, IoContext, Lab, LabAction, LabError, LabInfo, Progress};
use kube::Client;
use tokio::sync::mpsc;

use crate::config::KindCluster;
use crate::connect::connect;
use crate::forward::{LocalForward, open_pod_stream};
use crate::gate::{GateError, open_gate, wait_for_notebook_start};
use crate::gate_program::{GATE_PORT, GateState};
use crate::image::{build_sensor_image, remove_image};
use crate::k8s::{
    self, WorkloadKind, apply_objects, delete_objects, notebook_pods, sensor_pod_on, serving_pod,
    wait_for_rollout, workloads,
};
use crate::manifests::{CLUSTER_CONFIG, lab_objects};
use crate::names::{
    NOTEBOOK_PORT, NOTEBOOK_SELECTOR, SENSOR_DAEMONSET, SENSOR_PORT, check_namespace_name,
};
use crate::options::{KindOptions, Target};
use crate::sensor_link::{kill_process, kill_process_group};
use crate::state::{ImageRecord, LabState, StateTarget};
use crate::stream::{ClaimedGates, EventStream, Retry, StreamConfig, claim, unclaim};
use crate::tools::{KindCli, check_tools, connect_docker, docker_host, search_path};
use crate::undo::{Undo, undo};

/// A lab made with a client of its own ([`KindLab::with_client`]) has no kind cluster to make
/// or talk to: its target must be a kubeconfig context.
#[derive(Debug, thiserror::Error)]
#[error("a lab with a given client must target a context")]
pub struct GivenClientNeedsContext;

impl From<GivenClientNeedsContext> for LabError {
    fn from(error: GivenClientNeedsContext) -> LabError {
        LabError::Input {
            file: None,
            line: None,
            field: Some("target".into()),
            message: error.to_string(),
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

    /// A client for the cluster of `target` (the given one, if any).
    async fn client_for(
        &self,
        target: &StateTarget,
        kind: Option<&KindCli>,
    ) -> Result<Client, LabError> {
        if let Some(client) = &self.given_client {
            return Ok(client.clone());
        }
        let search_path = search_path(self.options.search_path.as_deref());
        Ok(connect(target, kind, &search_path).await?)
    }

    /// The previous state, checked against the options.
    fn load_state(&self) -> Result<Option<LabState>, LabError> {
        Ok(LabState::load_in(
            &self.options.state_file(),
            &self.options.namespace,
        )?)
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
            return Err(GivenClientNeedsContext.into());
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
            KindCluster::parse(CLUSTER_CONFIG.path, CLUSTER_CONFIG.text)?;
            std::fs::write(&config_path, CLUSTER_CONFIG.text)
                .context(|| format!("writing {}", config_path.display()))?;
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

    async fn info(&self, client: &Client) -> Result<LabInfo, LabError> {
        let port = self
            .forward
            .as_ref()
            .map(|f| f.address().port())
            .unwrap_or(self.options.local_port);
        Ok(LabInfo {
            backend: Backend::Kind,
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
        Ok(wait_for_rollout(client, &all, rollout, poll, progress).await?)
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
            return Err(GateError::Unwatched {
                sensor,
                limit: gate_timeout,
                container_id: info.container_id,
                namespace,
                pod: info.name,
                stream_error: stream.last_error(),
            }
            .into());
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
        let state = self.load_state()?.ok_or_else(|| LabError::NotUp {
            backend: Backend::Kind,
            detail: format!(
                "no {}; run `guardlab lab up --backend kind` first",
                self.options.state_file().display()
            ),
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
    fn backend(&self) -> Backend {
        Backend::Kind
    }

    async fn up(&mut self, progress: &dyn Progress) -> Result<LabInfo, LabError> {
        check_namespace_name(&self.options.namespace)?;
        if self.given_client.is_some() && matches!(self.options.target, Target::Kind { .. }) {
            return Err(GivenClientNeedsContext.into());
        }
        let objects = lab_objects(&self.options.namespace, &self.options.sensor_image)?;
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
        let applied = apply_objects(
            &client,
            &objects,
            &mut state,
            &path,
            &mut created_now,
            progress,
        )
        .await
        .map_err(LabError::from);
        let started = match applied {
            Ok(()) => self.start_notebook(&client, &objects, progress).await,
            Err(e) => Err(e),
        };
        if let Err(cause) = started {
            // Streams started for a lab that is being removed would only fail.
            self.streams.clear();
            let lab = Undo {
                client: &client,
                state_file: &path,
                delete_timeout: self.options.delete_timeout,
                poll: self.options.poll_interval,
            };
            return Err(undo(lab, &mut state, &created_now, cause, progress)
                .await
                .into());
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
                let kind = KindCli::find(&search_path(self.options.search_path.as_deref())).await?;
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
            let docker = connect_docker(&host).await?;
            remove_image(&docker, &image.tag).await?;
        }
        Ok(LabState::remove(&path)?)
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
                    return Err(LabError::Action {
                        action: format!("refusing to delete pod {ns}/{name}"),
                        reason: format!("it is outside the lab's namespace {namespace}"),
                    });
                }
                Ok(k8s::delete_pod(&client, ns, name).await?)
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
                        Ok(kill_process_group(stream, *pid, &node, timeout).await?)
                    }
                    _ => {
                        let tree = matches!(action, LabAction::KillProcessTree { .. });
                        Ok(kill_process(stream, *pid, tree, &node, timeout).await?)
                    }
                }
            }
        }
    }
}
