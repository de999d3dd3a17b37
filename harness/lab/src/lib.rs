//! The lab interface, and the local backend.
//!
//! A lab is a place where the scenario's pod runs with a sensor watching it. The scenario runner
//! only talks to [`Lab`]; `LocalLab` (namespaces and a cgroup on this host) and the kind backend
//! (`guardlab-kind`, a Kubernetes cluster) are two implementations of it, and both read the same
//! Deployment from `manifests/`.

#![allow(async_fn_in_trait)] // The runner uses labs through generics, never `dyn`.

pub mod image;
pub mod local;

pub use local::{DaemonOptions, LocalLab, LocalLabOptions, daemon_main};

use std::collections::BTreeMap;
use std::path::PathBuf;

use guardlab_events::Event;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// One pod of the lab, as the runner and the engine need to know it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub container_name: String,
    pub container_id: String,
    pub image: String,
    pub image_id: String,
    /// The container's cgroup, when the backend knows it on this host.
    pub cgroup_path: Option<PathBuf>,
    pub cgroup_id: Option<u64>,
    /// Host pid of the container's first process, when known on this host.
    pub root_pid: Option<u32>,
}

/// What `up` and `status` report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabInfo {
    /// Which backend: `local` or `kind`.
    pub backend: String,
    /// Where a learner opens the notebook, e.g. `http://127.0.0.1:1234/`.
    pub notebook_url: String,
    pub pods: Vec<PodInfo>,
}

/// An action of a policy's response, for the backend to carry out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LabAction {
    /// Kill one process (host pid) with SIGKILL.
    KillProcess { pid: u32 },
    /// Kill a process and all its descendants.
    KillProcessTree { pid: u32 },
    /// Kill the process group of a process (host pid): every member of that group that is a
    /// process of the same pod. Members outside the pod are never touched (the pod's first
    /// process may share its group with the runtime that started it).
    KillProcessGroup { pid: u32 },
    /// Kill the pod (on Kubernetes its Deployment brings a new one).
    KillPod { namespace: String, name: String },
}

/// What a policy in enforce mode lets a pod do, for backends that enforce in the kernel (the
/// local backend's sensor kills a disallowed exec before it runs and refuses a disallowed
/// connect with EPERM). `None` leaves that kind of enforcement off.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enforcement {
    /// Executables the pod may run, as resolved absolute paths (the `exe` of exec events).
    pub executables: Option<Vec<String>>,
    /// Destinations the pod may connect to (loopback is always allowed).
    pub destinations: Option<Vec<AllowedDestination>>,
}

/// One allowed destination: an address or CIDR network, and a port range.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowedDestination {
    /// `198.18.2.10`, `198.18.0.0/15`, `::1/128`...
    pub network: String,
    pub first_port: u16,
    pub last_port: u16,
}

/// Progress of long work (image builds, host installs, rollouts), shown by the CLI layer: the
/// one trait of every guardlab crate, defined with the host checks that report through it.
pub use guardlab_host::{NoProgress, Progress};

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// Something the backend needs is not on this machine (root, Docker, kind, BTF...).
    #[error("{what} is missing: {hint}")]
    Missing { what: String, hint: String },
    /// The lab could not be brought up or torn down.
    #[error("{0}")]
    Failed(String),
    /// A manifest (Deployment, Namespace) is not what the backend can run; the message names
    /// the field and, when known, the line.
    #[error("{}: {message}", file.display())]
    Manifest { file: PathBuf, message: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// Something the host lacks and guardlab did not (or may not) install, mount or load; the
    /// message names it and the Debian package that brings it.
    #[error(transparent)]
    Host(#[from] guardlab_host::HostError),
}

/// A lab backend.
pub trait Lab {
    /// `local` or `kind`.
    fn backend(&self) -> &'static str;

    /// Bring the lab up; harmless when it is already up (returns what is running).
    async fn up(&mut self, progress: &dyn Progress) -> Result<LabInfo, LabError>;

    /// What is running now; `None` when the lab is down.
    async fn status(&self) -> Result<Option<LabInfo>, LabError>;

    /// Remove everything the lab made, also after a harness that was killed mid-way.
    async fn down(&mut self, progress: &dyn Progress) -> Result<(), LabError>;

    /// The sensor's events for the lab's pods, from now on.
    async fn events(&mut self) -> Result<mpsc::Receiver<Event>, LabError>;

    /// Carry out a response action decided by the engine.
    async fn carry_out(&mut self, action: &LabAction) -> Result<(), LabError>;

    /// Enforce a policy in the kernel for one pod (replaces what was enforced before). Backends
    /// without kernel enforcement keep the default, which says so.
    async fn enforce(&mut self, pod: &PodInfo, enforcement: &Enforcement) -> Result<(), LabError> {
        let _ = (pod, enforcement);
        Err(LabError::Missing {
            what: format!("kernel enforcement on the {} backend", self.backend()),
            hint: "respond with carry_out actions instead".into(),
        })
    }
}
