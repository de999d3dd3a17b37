//! The local lab backend: the scenario's pod in namespaces and a cgroup on this host
//! ([`LocalLab`]), and the pod image it runs ([`image`]).
//!
//! The lab interface itself (the [`Lab`] trait, what it reports and carries out, its one
//! [`LabError`]) is `guardlab-lab-api`'s; it is re-exported here so that users of the local
//! backend need one crate. The kind backend (`guardlab-kind`, a Kubernetes cluster) implements
//! the same trait, and both read the same Deployment from `manifests/`.

pub mod image;
pub mod lab_files;
pub mod local;

pub use guardlab_lab_api::{
    AllowedDestination, AllowedDnsName, Backend, Enforcement, IoContext, KernelNode, KernelPolicy,
    Lab, LabAction, LabError, LabInfo, NoProgress, PodInfo, Progress,
};
pub use local::{DaemonOptions, LocalLab, LocalLabOptions, daemon_main};
