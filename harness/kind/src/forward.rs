//! Port-forwards through the Kubernetes API (kube-rs's `portforward`, no kubectl).

use std::net::SocketAddr;

use guardlab_lab::LabError;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::Api;
use tokio::io::DuplexStream;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::k8s::{api_error, serving_pod};

/// A TCP stream to `port` of a pod, through the API server.
pub async fn open_pod_stream(
    client: &Client,
    namespace: &str,
    pod: &str,
    port: u16,
) -> Result<DuplexStream, LabError> {
    let mut forwarder = Api::<Pod>::namespaced(client.clone(), namespace)
        .portforward(pod, &[port])
        .await
        .map_err(|e| api_error(&format!("port-forwarding to {namespace}/{pod}:{port}"), e))?;
    // The forwarder's task keeps running after the handle is dropped, until either side closes.
    forwarder.take_stream(port).ok_or_else(|| {
        crate::failed(format!(
            "port-forward to {namespace}/{pod}:{port} gave no stream"
        ))
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
    ) -> Result<LocalForward, LabError> {
        if !address.ip().is_loopback() {
            return Err(crate::failed(format!(
                "refusing to forward {address}: the notebook has no password, only a loopback address may reach it"
            )));
        }
        let listener = TcpListener::bind(address).await.map_err(|source| LabError::Io {
            context: format!("listening on {address} for the notebook (is another lab or program using that port?)"),
            source,
        })?;
        let address = listener.local_addr().map_err(|source| LabError::Io {
            context: "local address".into(),
            source,
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
) -> Result<(), LabError> {
    let pod = serving_pod(client, namespace, selector).await?;
    let name = pod.metadata.name.unwrap_or_default();
    let mut upstream = open_pod_stream(client, namespace, &name, port).await?;
    tokio::io::copy_bidirectional(&mut connection, &mut upstream)
        .await
        .map(drop)
        .map_err(|source| LabError::Io {
            context: format!("forwarding to {namespace}/{name}:{port}"),
            source,
        })
}
