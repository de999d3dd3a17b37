//! Runs the lab pool by itself on loopback, to try minerd (or a real miner) against it:
//!
//!   cargo run -p guardlab-minerd --example lab_pool -- 127.0.0.1:3333 [DIFFICULTY]
//!   cargo run -p guardlab-minerd --bin minerd -- -o 127.0.0.1:3333 -u ME -p passwd
//!
//! Prints the clients it has seen every five seconds; stop it with Ctrl-C.

use std::time::Duration;

use guardlab_minerd::{PoolConfig, start_pool};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let address = args.next().unwrap_or_else(|| "127.0.0.1:3333".into());
    let mut config = PoolConfig::default();
    if let Some(difficulty) = args.next() {
        config.difficulty = difficulty.parse()?;
    }
    let ip: std::net::IpAddr = address.parse::<std::net::SocketAddr>()?.ip();
    if !ip.is_loopback() {
        return Err(format!("{address}: the example pool listens on loopback only").into());
    }
    let pool = start_pool(std::net::TcpListener::bind(&address)?, config).await?;
    eprintln!("lab pool listening on {}", pool.local_addr());
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {
                for client in pool.clients() {
                    eprintln!(
                        "{} user={:?} accepted={} rejected={} connected={}",
                        client.peer,
                        client.user.unwrap_or_default(),
                        client.shares_accepted,
                        client.shares_rejected,
                        client.disconnected.is_none()
                    );
                }
            }
        }
    }
    pool.shutdown().await;
    Ok(())
}
