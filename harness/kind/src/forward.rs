//! Port-forwards through the Kubernetes API (kube-rs's `portforward`, no kubectl).

use std::net::SocketAddr;

use guardlab_lab_api::LabError;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::Api;
use tokio::io::DuplexStream;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::io_failure::{Doing, IoFailure};
use crate::k8s::{ApiError, ClusterError, serving_pod};

/// Why a port-forward could not be opened or served.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("port-forward to {namespace}/{pod}:{port} gave no stream")]
    NoStream {
        namespace: String,
        pod: String,
        port: u16,
    },
    #[error(
        "refusing to forward {address}: the notebook has no password, only a loopback address may reach it"
    )]
    NotLoopback { address: SocketAddr },
    #[error(transparent)]
    Io(#[from] IoFailure),
    /// No pod to forward a connection to.
    #[error(transparent)]
    Pod(#[from] ClusterError),
}

impl From<ForwardError> for LabError {
    fn from(error: ForwardError) -> LabError {
        match error {
            ForwardError::Api(e) => e.into(),
            ForwardError::Io(e) => e.into(),
            ForwardError::Pod(e) => e.into(),
            e @ (ForwardError::NoStream { .. } | ForwardError::NotLoopback { .. }) => {
                LabError::backend("the port-forward", e)
            }
        }
    }
}

/// A TCP stream to `port` of a pod, through the API server.
pub async fn open_pod_stream(
    client: &Client,
    namespace: &str,
    pod: &str,
    port: u16,
) -> Result<DuplexStream, ForwardError> {
    let mut forwarder = Api::<Pod>::namespaced(client.clone(), namespace)
        .portforward(pod, &[port])
        .await
        .map_err(|e| ApiError::new(format!("port-forwarding to {namespace}/{pod}:{port}"), e))?;
    // The forwarder's task keeps running after the handle is dropped, until either side closes.
    forwarder
        .take_stream(port)
        .ok_or_else(|| ForwardError::NoStream {
            namespace: namespace.to_string(),
            pod: pod.to_string(),
            port,
        })
}

/// A local port forwarded to a pod of a Deployment: each connection goes to the newest ready
/// pod at the time it is accepted, so the forward survives the pod being killed and replaced.
pub struct LocalForward {
    address: SocketAddr,
    task: JoinHandle<()>,
}

impl LocalForward {
    /// Listen on `address` (which must be a loopback address: the notebook has no token).
    pub async fn start(
        client: Client,
        namespace: String,
        selector: String,
        pod_port: u16,
        address: SocketAddr,
    ) -> Result<LocalForward, ForwardError> {
        if !address.ip().is_loopback() {
            return Err(ForwardError::NotLoopback { address });
        }
        let listener = TcpListener::bind(address).await.doing(|| {
            format!("listening on {address} for the notebook (is another lab or program using that port?)")
        })?;
        let address = listener.local_addr().doing(|| {
            format!("reading the address the notebook's forward listens on ({address})")
        })?;
        let task = tokio::spawn(async move {
            while let Ok((connection, _)) = listener.accept().await {
                let (client, namespace, selector) =
                    (client.clone(), namespace.clone(), selector.clone());
                tokio::spawn(async move {
                    // A failure closes this connection only; the browser retries.
                    let _ = forward_one(connection, &client, &namespace, &selector, pod_port).await;
                });
            }
        });
        Ok(LocalForward { address, task })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn stop(self) {
        self.task.abort();
    }
}

impl Drop for LocalForward {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward_one(
    mut connection: TcpStream,
    client: &Client,
    namespace: &str,
    selector: &str,
    port: u16,
) -> Result<(), ForwardError> {
    let pod = serving_pod(client, namespace, selector).await?;
    let name = pod.metadata.name.unwrap_or_default();
    let mut upstream = open_pod_stream(client, namespace, &name, port).await?;
    tokio::io::copy_bidirectional(&mut connection, &mut upstream)
        .await
        .doing(|| format!("forwarding to {namespace}/{name}:{port}"))?;
    Ok(())
}
