//! The lab's own little internet, served by the harness: DNS for the lab names, web hosts
//! (the lab's `sourceforge.net`), a Python package index, and the lab CA that signs their
//! certificates.
//!
//! Sockets belong to the network namespace they were created in, so the caller binds them
//! inside the lab's "internet" namespace and hands them over already bound;
//! [`LabInternet::start`] adopts them into the tokio runtime and serves until
//! [`LabInternetHandle::shutdown`].
//!
//! ```no_run
//! # async fn example(miner_tarball: bytes::Bytes) -> Result<(), guardlab_services::ServicesError> {
//! use std::sync::Arc;
//! use guardlab_services::*;
//! let ca = Arc::new(LabCa::load_or_create(std::path::Path::new("/var/cache/guardlab/ca"))?);
//! let wheels = std::path::Path::new("/var/cache/guardlab/wheels");
//! let lock = PythonLock::read(std::path::Path::new("manifests/image/index-wheels.lock"))?;
//! fetch_wheels(wheels, &lock)?;
//! let web_ip = "198.18.0.10".parse().unwrap();
//! let spec = InternetSpec {
//!     zone: Zone::new(vec![
//!         (SOURCEFORGE_HOST.to_string(), web_ip),
//!         (LAB_INDEX_HOST.to_string(), web_ip),
//!     ]),
//!     sites: vec![
//!         sourceforge_site(miner_tarball),
//!         package_index_site(LAB_INDEX_HOST, wheels)?,
//!     ],
//!     ca,
//! };
//! // Bound inside the lab-internet namespace:
//! let sockets = InternetSockets {
//!     dns_udp: vec![std::net::UdpSocket::bind("198.18.0.2:53").unwrap()],
//!     dns_tcp: vec![std::net::TcpListener::bind("198.18.0.2:53").unwrap()],
//!     http: vec![std::net::TcpListener::bind("198.18.0.10:80").unwrap()],
//!     https: vec![std::net::TcpListener::bind("198.18.0.10:443").unwrap()],
//! };
//! let internet = LabInternet::start(spec, sockets).await?;
//! // ... the scenario runs ...
//! let downloads = internet.requests();
//! internet.shutdown().await;
//! # Ok(()) }
//! ```

mod ca;
mod dns;
mod error;
mod index;
mod pylock;
mod sourceforge;
mod web;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinSet;

pub use ca::{CA_CERT_FILE, CA_KEY_FILE, LabCa};
pub use dns::{DnsOutcome, DnsQueryLog, DnsTransport, Zone};
pub use error::ServicesError;
pub use index::{
    BASELINE_REQUIREMENTS, FetchedWheels, INDEX_LOCK_FILE, LAB_INDEX_HOST, Wheel, fetch_wheels,
    missing_pins, package_index_site, pip_conf, read_wheels,
};
pub use pylock::{Pin, PythonLock, normalize_project_name, pin_of_file};
pub use sourceforge::{MINER_DOWNLOAD_PATH, SOURCEFORGE_HOST, sourceforge_site};
pub use web::{RequestLog, Route, Scheme, Site};

use dns::{DnsServer, describe};
use web::{Router, WebContext, accept_loop};

/// What the lab internet serves.
#[derive(Clone, Debug)]
pub struct InternetSpec {
    /// The DNS names of the lab. Every site whose host is a name must be in it.
    pub zone: Zone,
    /// The web hosts; every HTTP and HTTPS listener serves all of them, by Host header.
    pub sites: Vec<Site>,
    /// Signs the one HTTPS certificate, which names every site.
    pub ca: Arc<LabCa>,
}

/// The already-bound sockets to serve on (bound in the lab-internet namespace by the caller).
/// They are made non-blocking here. Every list may be empty, but not all of them.
#[derive(Debug, Default)]
pub struct InternetSockets {
    pub dns_udp: Vec<std::net::UdpSocket>,
    pub dns_tcp: Vec<std::net::TcpListener>,
    pub http: Vec<std::net::TcpListener>,
    pub https: Vec<std::net::TcpListener>,
}

/// Starts the lab internet.
pub struct LabInternet;

impl LabInternet {
    /// Checks `spec` and starts DNS and web serving on `sockets`. Must be called inside a tokio
    /// runtime; serving goes on in spawned tasks until the handle is shut down or dropped.
    pub async fn start(
        spec: InternetSpec,
        sockets: InternetSockets,
    ) -> Result<LabInternetHandle, ServicesError> {
        let InternetSockets {
            dns_udp,
            dns_tcp,
            http,
            https,
        } = sockets;
        if dns_udp.is_empty() && dns_tcp.is_empty() && http.is_empty() && https.is_empty() {
            return Err(ServicesError::NoSockets);
        }
        let router = Router::new(&spec.sites)?;
        for site in &spec.sites {
            let is_ip_literal = site.host.parse::<IpAddr>().is_ok();
            if !is_ip_literal && spec.zone.addresses_of(&site.host).is_empty() {
                return Err(ServicesError::BadSite {
                    host: site.host.clone(),
                    detail: "the zone has no address for it, so nothing in the lab can reach it"
                        .to_string(),
                });
            }
        }
        if (!http.is_empty() || !https.is_empty()) && spec.sites.is_empty() {
            return Err(ServicesError::NoSites);
        }
        let tls = if https.is_empty() {
            None
        } else {
            let hosts = router.hosts();
            let names: Vec<&str> = hosts.iter().map(String::as_str).collect();
            Some(spec.ca.server_config(&names)?)
        };

        let mut addresses = Vec::new();
        let mut web_listeners = Vec::new();
        for (scheme, listeners) in [(Scheme::Http, http), (Scheme::Https, https)] {
            for listener in listeners {
                let what = describe(
                    match scheme {
                        Scheme::Http => "HTTP",
                        Scheme::Https => "HTTPS",
                    },
                    listener.local_addr(),
                );
                let listener = listener
                    .set_nonblocking(true)
                    .and_then(|()| tokio::net::TcpListener::from_std(listener))
                    .map_err(|e| ServicesError::socket(what.clone(), e))?;
                let address = listener
                    .local_addr()
                    .map_err(|e| ServicesError::socket(what, e))?;
                addresses.push(ServiceAddress::Web { scheme, address });
                web_listeners.push((scheme, listener));
            }
        }
        for socket in &dns_udp {
            if let Ok(address) = socket.local_addr() {
                addresses.push(ServiceAddress::DnsUdp(address));
            }
        }
        for listener in &dns_tcp {
            if let Ok(address) = listener.local_addr() {
                addresses.push(ServiceAddress::DnsTcp(address));
            }
        }

        let dns_log = Arc::new(Mutex::new(Vec::new()));
        let dns = if dns_udp.is_empty() && dns_tcp.is_empty() {
            None
        } else {
            Some(DnsServer::start(
                &spec.zone,
                dns_udp,
                dns_tcp,
                dns_log.clone(),
            )?)
        };

        let request_log = Arc::new(Mutex::new(Vec::new()));
        let context = Arc::new(WebContext {
            router: Arc::new(router),
            log: request_log.clone(),
        });
        let mut web = JoinSet::new();
        for (scheme, listener) in web_listeners {
            let tls = match scheme {
                Scheme::Http => None,
                Scheme::Https => tls.clone(),
            };
            web.spawn(accept_loop(listener, scheme, tls, context.clone()));
        }
        tracing::info!(?addresses, "lab internet up");
        Ok(LabInternetHandle {
            dns,
            web,
            dns_log,
            request_log,
            addresses,
        })
    }
}

/// Where one service of the lab internet listens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceAddress {
    DnsUdp(SocketAddr),
    DnsTcp(SocketAddr),
    Web { scheme: Scheme, address: SocketAddr },
}

/// The running lab internet. Dropping it stops serving too (without waiting); prefer
/// [`LabInternetHandle::shutdown`], which returns once every socket is closed.
pub struct LabInternetHandle {
    dns: Option<DnsServer>,
    web: JoinSet<()>,
    dns_log: Arc<Mutex<Vec<DnsQueryLog>>>,
    request_log: Arc<Mutex<Vec<RequestLog>>>,
    addresses: Vec<ServiceAddress>,
}

impl LabInternetHandle {
    /// Every web request answered so far, in order.
    pub fn requests(&self) -> Vec<RequestLog> {
        self.request_log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Every DNS query answered so far, in order.
    pub fn dns_queries(&self) -> Vec<DnsQueryLog> {
        self.dns_log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Where each service listens.
    pub fn addresses(&self) -> &[ServiceAddress] {
        &self.addresses
    }

    /// Stops serving and closes every socket and connection.
    pub async fn shutdown(mut self) {
        self.web.shutdown().await;
        if let Some(dns) = self.dns.take() {
            // Open TCP clients hold the DNS server for up to its idle timeout; do not wait
            // that long: dropping it on timeout aborts them.
            if tokio::time::timeout(Duration::from_secs(2), dns.shutdown())
                .await
                .is_err()
            {
                tracing::debug!("DNS shutdown timed out; aborting its tasks");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The caller may keep the handle in a spawned task or move it across threads.
    #[test]
    fn handle_and_spec_can_cross_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        fn assert_send<T: Send>() {}
        assert_send::<LabInternetHandle>();
        assert_send_sync::<InternetSpec>();
        assert_send::<InternetSockets>();
        assert_send_sync::<LabCa>();
    }
}
