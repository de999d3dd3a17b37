//! The kind backend: the same lab on a Kubernetes cluster.
//!
//! `guardlab lab up --backend kind` creates (or reuses) a kind cluster, builds the sensor's image
//! and loads it into the nodes, applies `manifests/kubernetes/` with server-side apply (the
//! notebook's start put behind a gate, see [`gate`]), waits for the sensor, subscribes to it for
//! the notebook's container, opens the notebook's gate once the sensor watches it, waits for
//! the rollout, forwards 127.0.0.1:1234 to the notebook and streams the sensor's events.
//! With a kubeconfig context instead of kind it runs on an existing cluster (a shared workshop
//! cluster, one namespace per participant). [`plan()`] says all of that without doing it.
//!
//! Everything that talks to the cluster goes through kube-rs; Docker through bollard; kind
//! through its CLI (it has no API).
//!
//! Errors: each part has its own (`k8s::ClusterError`, `gate::GateError`,
//! `sensor_link::SensorLinkError`, `tools::MissingTools`...), with the failure it comes from as
//! a typed source; [`KindLab`] turns them into the lab's one error, `guardlab_lab_api::LabError`
//! (each part's `From` impl says which kind of failure it is).

pub mod config;
pub mod connect;
pub mod forward;
pub mod gate;
pub mod gate_program;
pub mod image;
pub mod io_failure;
pub mod k8s;
pub mod lab;
pub mod manifests;
pub mod names;
pub mod options;
pub mod plan;
pub mod pre_gate;
pub mod sensor_link;
pub mod state;
pub mod stream;
pub mod tools;
pub mod undo;

pub use config::KindCluster;
pub use lab::KindLab;
pub use manifests::{ManifestError, lab_objects};
pub use options::{KindOptions, Target};
pub use plan::{Plan, plan};
pub use sensor_link::{SensorReply, SensorRequest, WatchedContainer};
