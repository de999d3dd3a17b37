//! The notebook's port-forward: a loopback address of the host to the notebook's port in the
//! pod.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use super::Daemon;

/// 127.0.0.1:<port> on the host to the notebook's port, through the pod's loopback (as
/// `kubectl port-forward` does).
pub(super) async fn forward_loop(listener: TcpListener, daemon: Arc<Daemon>) {
    let port = daemon.config.pod.http_port().unwrap_or(8888);
    loop {
        let (mut client, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let daemon = daemon.clone();
        tokio::spawn(async move {
            let Ok(socket) = daemon.network.pod.tcp_socket(false).await else {
                return;
            };
            let Ok(mut upstream) = socket
                .connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
                .await
            else {
                return;
            };
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        });
    }
}
