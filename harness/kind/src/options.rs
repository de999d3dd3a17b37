//! What `up` needs to know ([`KindOptions`]): where the lab runs ([`Target`]), its namespace,
//! its images, its timeouts and where its state is kept.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use crate::image::default_workspace_root;
use crate::names::MANIFEST_NAMESPACE;
use crate::state::{StateTarget, default_state_dir};

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

    /// How the state file records the target (`cluster_created`: `up` made the kind cluster).
    pub fn state_target(&self, cluster_created: bool) -> StateTarget {
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
