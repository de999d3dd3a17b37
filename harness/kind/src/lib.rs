//! The kind backend: the same lab on a Kubernetes cluster.
//!
//! `guardlab lab up --backend kind` creates (or reuses) a kind cluster, builds the sensor's image
//! and loads it into the nodes, applies `manifests/kubernetes/` with server-side apply (the
//! notebook's start put behind a gate, see [`gate`]), waits for the sensor, subscribes to it for
//! the notebook's container, opens the notebook's gate once the sensor watches it, waits for
//! the rollout, forwards 127.0.0.1:1234 to the notebook and streams the sensor's events.
//! With a kubeconfig context instead of kind it runs on an existing cluster (a shared workshop
//! cluster, one namespace per participant). [`plan`] says all of that without doing it.
//!
//! Everything that talks to the cluster goes through kube-rs; Docker through bollard; kind
//! through its CLI (it has no API).

pub mod config;
pub mod forward;
pub mod gate;
pub mod image;
pub mod k8s;
pub mod lab;
pub mod manifests;
pub mod plan;
pub mod sensor_link;
pub mod state;
pub mod stream;
pub mod tools;

#[cfg(test)]
mod fake_api;
#[cfg(test)]
mod kind_path_tests;
#[cfg(test)]
mod lab_tests;

pub use config::KindCluster;
pub use lab::{KindLab, KindOptions, Target};
pub use manifests::{ManifestError, lab_objects};
pub use plan::{Plan, plan};
pub use sensor_link::{SensorReply, SensorRequest, WatchedContainer};

/// Bridge: kind errors (renovation, issue 12). guardlab-lab now re-exports the lab API's
/// `LabError`, which has no free-text variant; until this crate has its own typed errors, its
/// messages are this, the part "the kind lab" of a `LabError` ([`failed`]). Remove it with
/// them.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KindFailure(pub String);

/// A failure of the kind lab, in words.
pub(crate) fn failed(message: String) -> guardlab_lab::LabError {
    guardlab_lab::LabError::backend("the kind lab", KindFailure(message))
}
