//! The lab interface (**API boundary** between the scenario runner and the backends).
//!
//! A lab is a place where the scenario's pod runs with a sensor watching it. The runner only
//! talks to [`Lab`]; `guardlab-lab`'s `LocalLab` (namespaces and a cgroup on this host) and
//! `guardlab-kind`'s `KindLab` (a Kubernetes cluster) implement it. This crate holds the trait,
//! what it reports ([`LabInfo`], [`PodInfo`]), what it carries out ([`LabAction`],
//! [`Enforcement`]), which backend is which ([`Backend`]) and the one error type
//! ([`LabError`]): no backend, no clap, no aya, so that a backend or a front end can depend on
//! it without compiling the others.

#![allow(async_fn_in_trait)] // The runner uses labs through generics, never `dyn`.

mod backend;
mod error;

use std::collections::BTreeMap;
use std::path::PathBuf;

use guardlab_events::Event;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

pub use backend::{Backend, UnknownBackend};
pub use error::{IoContext, LabError};
pub use guardlab_host::{NoProgress, Progress};

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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabInfo {
    pub backend: Backend,
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
    /// A whole policy compiled for the kernel (`guardlab-kernel-policy`): the process tree,
    /// destinations, DNS names and resolver. When set it replaces `executables` and
    /// `destinations`; `None` lifts it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<KernelPolicy>,
}

/// A policy as the kernel enforces it: which executable each process node may start as which
/// child node, and where the pod may connect.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelPolicy {
    /// Edges of the process tree. Node 0 is the container's root context (a process no
    /// allowed exec has placed yet); the policy's nodes are numbered from 1.
    pub nodes: Vec<KernelNode>,
    pub destinations: Vec<AllowedDestination>,
    /// Names (`pypi.org`, `*.example.com`) whose DNS answers allow their addresses.
    pub dns_names: Vec<AllowedDnsName>,
    /// The pod's resolver (an address); `None`: the backend's own (the lab's DNS server).
    pub resolver: Option<String>,
    /// Where the kernel allows more than the policy says (a glob it cannot match exactly,
    /// an `except` it cannot subtract...), one sentence each. The engine still reports those
    /// deviations.
    pub widened: Vec<String>,
}

/// A task running as policy node `parent` may exec a file matching `exe` (an absolute path, or
/// a prefix ending in `*`) and then runs as `node`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelNode {
    pub parent: u32,
    pub exe: String,
    pub node: u32,
    /// The process node's `id` in the policy (`python3_0`): numbers stay with their nodes
    /// when the policy is edited.
    pub policy_node: String,
}

/// A DNS name or `*.` domain, and the ports the addresses its answers give may be reached on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowedDnsName {
    pub name: String,
    pub first_port: u16,
    pub last_port: u16,
}

/// One allowed destination: an address or CIDR network, and a port range.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowedDestination {
    /// `198.18.2.10`, `198.18.0.0/15`, `::1/128`...
    pub network: String,
    pub first_port: u16,
    pub last_port: u16,
}

/// A lab backend.
pub trait Lab {
    /// Which backend this is.
    fn backend(&self) -> Backend;

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
        Err(LabError::Unsupported {
            backend: self.backend(),
            what: "kernel enforcement".into(),
            instead: "respond with carry_out actions".into(),
        })
    }
}
