//! The lab's internet, wired: sockets bound inside the internet namespace and handed to the
//! services (`guardlab-services`: DNS, the lab's sourceforge.net, the package index; the lab CA)
//! and to the mining pool (`guardlab-minerd`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use guardlab_services::{
    InternetSockets, InternetSpec, LAB_INDEX_HOST, LabCa, LabInternet, LabInternetHandle,
    SOURCEFORGE_HOST, ServiceAddress, Zone,
};

use crate::local::config::{DaemonConfig, ServicesConfig};
use crate::local::netns::Netns;
use crate::local::network::{
    DNS_ADDRESS, INDEX_ADDRESS, POOL_ADDRESS, POOL_HOST, POOL_PORT, SOURCEFORGE_ADDRESS,
};
use crate::local::protocol::Visitors;
use crate::{IoContext, LabError};

/// The lab hosts' names and addresses (the DNS zone).
pub fn zone_records() -> Vec<(String, IpAddr)> {
    vec![
        (
            SOURCEFORGE_HOST.to_string(),
            IpAddr::V4(SOURCEFORGE_ADDRESS),
        ),
        (
            format!("www.{SOURCEFORGE_HOST}"),
            IpAddr::V4(SOURCEFORGE_ADDRESS),
        ),
        (LAB_INDEX_HOST.to_string(), IpAddr::V4(INDEX_ADDRESS)),
        (POOL_HOST.to_string(), IpAddr::V4(POOL_ADDRESS)),
    ]
}

/// Addresses the internet namespace must have for the configured services.
pub fn host_addresses(config: &DaemonConfig) -> Vec<Ipv4Addr> {
    if config.services.is_some() {
        vec![
            DNS_ADDRESS,
            SOURCEFORGE_ADDRESS,
            INDEX_ADDRESS,
            POOL_ADDRESS,
        ]
    } else {
        Vec::new()
    }
}

/// Sockets bound inside the internet namespace.
pub struct ServiceSockets {
    internet: InternetSockets,
    pool: std::net::TcpListener,
    config: ServicesConfig,
}

impl ServiceSockets {
    pub fn bind(ns: &Netns, config: &ServicesConfig) -> Result<ServiceSockets, LabError> {
        let at = |ip: Ipv4Addr, port: u16| SocketAddr::from((ip, port));
        let internet = InternetSockets {
            dns_udp: vec![ns.udp_socket(at(DNS_ADDRESS, 53))?],
            dns_tcp: vec![ns.tcp_listener(at(DNS_ADDRESS, 53))?],
            http: vec![
                ns.tcp_listener(at(SOURCEFORGE_ADDRESS, 80))?,
                ns.tcp_listener(at(INDEX_ADDRESS, 80))?,
            ],
            https: vec![
                ns.tcp_listener(at(SOURCEFORGE_ADDRESS, 443))?,
                ns.tcp_listener(at(INDEX_ADDRESS, 443))?,
            ],
        };
        let pool = ns.tcp_listener(at(POOL_ADDRESS, POOL_PORT))?;
        Ok(ServiceSockets {
            internet,
            pool,
            config: config.clone(),
        })
    }
}

fn services_error(e: guardlab_services::ServicesError) -> LabError {
    LabError::backend("the lab's internet", e)
}

/// The running services.
pub struct LabServices {
    internet: LabInternetHandle,
    pool: guardlab_minerd::PoolHandle,
    ca_pem: String,
}

impl LabServices {
    pub async fn start(
        _config: &DaemonConfig,
        sockets: ServiceSockets,
    ) -> Result<LabServices, LabError> {
        let ServiceSockets {
            internet,
            pool,
            config,
        } = sockets;
        let ca = LabCa::load_or_create(&config.ca_dir).map_err(services_error)?;
        let ca_pem = ca.ca_cert_pem();
        let tarball = std::fs::read(&config.miner_tarball).context(|| {
            format!(
                "reading the miner tarball {}",
                config.miner_tarball.display()
            )
        })?;
        let spec = InternetSpec {
            zone: Zone::new(zone_records()),
            sites: vec![
                guardlab_services::sourceforge_site(bytes::Bytes::from(tarball)),
                guardlab_services::package_index_site(LAB_INDEX_HOST, &config.wheels_dir)
                    .map_err(services_error)?,
            ],
            ca: Arc::new(ca),
        };
        let internet = LabInternet::start(spec, internet)
            .await
            .map_err(services_error)?;
        let pool = guardlab_minerd::start_pool(pool, guardlab_minerd::PoolConfig::default())
            .await
            .map_err(|e| LabError::backend("the lab's mining pool", e))?;
        Ok(LabServices {
            internet,
            pool,
            ca_pem,
        })
    }

    /// The lab CA's certificate (PEM), for the pod's trust store.
    pub fn ca_pem(&self) -> String {
        self.ca_pem.clone()
    }

    /// `/etc/pip.conf` of the pod.
    pub fn pip_conf(&self) -> String {
        guardlab_services::pip_conf(LAB_INDEX_HOST)
    }

    /// One line per listening service.
    pub fn describe(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .internet
            .addresses()
            .iter()
            .map(|address| match address {
                ServiceAddress::DnsUdp(a) => format!("dns {a}/udp"),
                ServiceAddress::DnsTcp(a) => format!("dns {a}/tcp"),
                ServiceAddress::Web { scheme, address } => {
                    format!("{scheme:?} {address}").to_lowercase()
                }
            })
            .collect();
        lines.push(format!(
            "stratum pool {POOL_HOST} {}",
            self.pool.local_addr()
        ));
        lines
    }

    pub fn visitors(&self) -> Visitors {
        Visitors {
            web: self
                .internet
                .requests()
                .iter()
                .map(|r| {
                    let scheme = format!("{:?}", r.scheme).to_lowercase();
                    format!(
                        "{scheme} {} {}{} {} from {}",
                        r.method, r.host, r.path, r.status, r.peer
                    )
                })
                .collect(),
            dns: self
                .internet
                .dns_queries()
                .iter()
                .map(|q| {
                    format!(
                        "{} {} -> {:?} from {}",
                        q.name, q.record_type, q.answers, q.peer
                    )
                })
                .collect(),
            pool: self
                .pool
                .clients()
                .iter()
                .filter_map(|c| serde_json::to_value(c).ok())
                .collect(),
        }
    }
}
