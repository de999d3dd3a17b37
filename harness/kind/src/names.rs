//! The names, labels and ports of the lab's objects, as the files under
//! `manifests/kubernetes/` write them: what every part of the backend looks objects up by.

/// The namespace the manifests are written for.
pub const MANIFEST_NAMESPACE: &str = "cryptominer";
/// The notebook Deployment and its pod label.
pub const NOTEBOOK_DEPLOYMENT: &str = "jupyter-notebook";
pub const NOTEBOOK_SELECTOR: &str = "app=jupyter-notebook";
pub const NOTEBOOK_PORT: u16 = 8888;
/// The sensor DaemonSet, its container and its pod label.
pub const SENSOR_DAEMONSET: &str = "guardlab-sensor";
pub const SENSOR_CONTAINER: &str = "sensor";
pub const SENSOR_SELECTOR: &str = "app.kubernetes.io/name=guardlab-sensor";
/// The sensor's control port inside its pod (see `sensor_link`).
pub const SENSOR_PORT: u16 = 7070;
