//! The lab's DNS: authoritative answers for the lab names, NXDOMAIN for every other name.
//! The lab has no route out, so nothing is ever forwarded.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Edns, Header, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::xfer::Protocol;
use hickory_server::ServerFuture;
use hickory_server::authority::MessageResponseBuilder;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};

use crate::ServicesError;

/// Time to live of every answer, and of negative answers (SOA minimum).
const TTL_SECONDS: u32 = 60;
/// A TCP client that sends nothing for this long is dropped.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// The lab's names and their addresses. A name may appear several times (A and AAAA, or
/// several addresses); matching is case-insensitive and ignores a trailing dot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Zone {
    pub records: Vec<(String, IpAddr)>,
}

impl Zone {
    pub fn new(records: Vec<(String, IpAddr)>) -> Zone {
        Zone { records }
    }

    /// The addresses of `name` in this zone (empty when the name is not in the zone).
    pub fn addresses_of(&self, name: &str) -> Vec<IpAddr> {
        let wanted = normalize_name(name);
        self.records
            .iter()
            .filter(|(record_name, _)| normalize_name(record_name) == wanted)
            .map(|(_, address)| *address)
            .collect()
    }

    /// Checks every name and builds the lookup table: normalized name -> addresses.
    fn table(&self) -> Result<BTreeMap<String, Vec<IpAddr>>, ServicesError> {
        let mut table: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
        for (index, (name, address)) in self.records.iter().enumerate() {
            let bad = |detail: String| ServicesError::BadZoneRecord {
                index,
                name: name.clone(),
                detail,
            };
            let normalized = normalize_name(name);
            if normalized.is_empty() {
                return Err(bad("the name is empty".to_string()));
            }
            if normalized.parse::<IpAddr>().is_ok() {
                return Err(bad("the name is an IP address".to_string()));
            }
            Name::from_ascii(&normalized).map_err(|e| bad(format!("not a DNS name: {e}")))?;
            let addresses = table.entry(normalized).or_default();
            if !addresses.contains(address) {
                addresses.push(*address);
            }
        }
        Ok(table)
    }
}

/// Lowercase, without the trailing dot: the form names are compared and logged in.
pub(crate) fn normalize_name(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// How a DNS query was answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DnsOutcome {
    /// The name is in the zone and has records of the asked type.
    Answer,
    /// The name is in the zone but has no record of the asked type (NOERROR, empty answer).
    NoData,
    /// The name is not in the zone.
    NxDomain,
    /// Not a standard query (updates, notifies...).
    NotImplemented,
    /// The request could not be understood.
    FormatError,
}

/// Transport a DNS query came over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DnsTransport {
    Udp,
    Tcp,
}

/// One DNS query the lab answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsQueryLog {
    pub peer: SocketAddr,
    pub transport: DnsTransport,
    /// Lowercase, without the trailing dot (empty when the request had no question).
    pub name: String,
    /// The asked type as DNS spells it: "A", "AAAA", "MX"...
    pub record_type: String,
    pub outcome: DnsOutcome,
    pub answers: Vec<IpAddr>,
}

/// The hickory request handler: answers from the zone and logs each query.
struct ZoneHandler {
    table: BTreeMap<String, Vec<IpAddr>>,
    soa: Record,
    log: Arc<Mutex<Vec<DnsQueryLog>>>,
}

impl ZoneHandler {
    fn record(&self, entry: DnsQueryLog) {
        tracing::debug!(?entry, "dns query");
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(entry);
    }
}

#[async_trait::async_trait]
impl RequestHandler for ZoneHandler {
    async fn handle_request<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let transport = match request.protocol() {
            Protocol::Tcp => DnsTransport::Tcp,
            _ => DnsTransport::Udp,
        };
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(request_edns) = request.edns() {
            let mut edns = Edns::new();
            edns.set_max_payload(request_edns.max_payload().max(512));
            edns.set_version(0);
            builder.edns(edns);
        }

        let request_header = request.header();
        let info = match request.request_info() {
            Ok(info)
                if request_header.message_type() == MessageType::Query
                    && request_header.op_code() == OpCode::Query =>
            {
                info
            }
            failed => {
                let (code, outcome) = if failed.is_ok() {
                    (ResponseCode::NotImp, DnsOutcome::NotImplemented)
                } else {
                    (ResponseCode::FormErr, DnsOutcome::FormatError)
                };
                self.record(DnsQueryLog {
                    peer: request.src(),
                    transport,
                    name: String::new(),
                    record_type: String::new(),
                    outcome,
                    answers: Vec::new(),
                });
                let response = builder.error_msg(request_header, code);
                return send(&mut response_handle, response, request_header, code).await;
            }
        };

        let query = info.query;
        let query_name: Name = query.original().name().clone();
        let query_type = query.query_type();
        let name = normalize_name(&query_name.to_ascii());
        let in_zone = self.table.get(&name);
        let answers: Vec<IpAddr> = in_zone
            .map(|addresses| {
                addresses
                    .iter()
                    .copied()
                    .filter(|address| match query_type {
                        RecordType::A => address.is_ipv4(),
                        RecordType::AAAA => address.is_ipv6(),
                        RecordType::ANY => true,
                        _ => false,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let (code, outcome) = match (in_zone, answers.is_empty()) {
            (None, _) => (ResponseCode::NXDomain, DnsOutcome::NxDomain),
            (Some(_), true) => (ResponseCode::NoError, DnsOutcome::NoData),
            (Some(_), false) => (ResponseCode::NoError, DnsOutcome::Answer),
        };
        let answer_records: Vec<Record> = answers
            .iter()
            .map(|address| {
                let rdata = match address {
                    IpAddr::V4(v4) => RData::A(A(*v4)),
                    IpAddr::V6(v6) => RData::AAAA(AAAA(*v6)),
                };
                let mut record = Record::from_rdata(query_name.clone(), TTL_SECONDS, rdata);
                record.set_dns_class(DNSClass::IN);
                record
            })
            .collect();
        // Negative answers carry the SOA so resolvers cache them for the SOA minimum.
        let soa_records: Vec<&Record> = if answer_records.is_empty() {
            vec![&self.soa]
        } else {
            Vec::new()
        };

        self.record(DnsQueryLog {
            peer: request.src(),
            transport,
            name,
            record_type: query_type.to_string(),
            outcome,
            answers,
        });

        let mut header = Header::response_from_request(request_header);
        header.set_authoritative(true);
        // The lab DNS is the pod's resolver: it answers every name itself.
        header.set_recursion_available(true);
        header.set_response_code(code);
        let response = builder.build(
            header,
            answer_records.iter(),
            std::iter::empty(),
            soa_records,
            std::iter::empty(),
        );
        send(&mut response_handle, response, request_header, code).await
    }
}

async fn send<'a, R: ResponseHandler>(
    response_handle: &mut R,
    response: hickory_server::authority::MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
    request_header: &Header,
    code: ResponseCode,
) -> ResponseInfo {
    match response_handle.send_response(response).await {
        Ok(info) => info,
        Err(error) => {
            tracing::warn!(%error, ?code, "cannot send a DNS response");
            let mut header = Header::response_from_request(request_header);
            header.set_response_code(ResponseCode::ServFail);
            header.into()
        }
    }
}

fn lab_soa() -> Result<Record, ServicesError> {
    let name = |text: &str| {
        Name::from_str(text).map_err(|source| ServicesError::SoaName {
            name: text.to_string(),
            source,
        })
    };
    let soa = SOA::new(
        name("ns.guardlab.test.")?,
        name("hostmaster.guardlab.test.")?,
        1,
        3600,
        600,
        86400,
        TTL_SECONDS,
    );
    Ok(Record::from_rdata(
        Name::root(),
        TTL_SECONDS,
        RData::SOA(soa),
    ))
}

/// A running DNS server.
pub(crate) struct DnsServer {
    server: ServerFuture<ZoneHandler>,
}

impl DnsServer {
    /// Serves `zone` on the given already-bound sockets.
    pub(crate) fn start(
        zone: &Zone,
        udp: Vec<std::net::UdpSocket>,
        tcp: Vec<std::net::TcpListener>,
        log: Arc<Mutex<Vec<DnsQueryLog>>>,
    ) -> Result<DnsServer, ServicesError> {
        let handler = ZoneHandler {
            table: zone.table()?,
            soa: lab_soa()?,
            log,
        };
        let mut server = ServerFuture::new(handler);
        for socket in udp {
            let what = describe("DNS UDP", socket.local_addr());
            server
                .register_socket_std(socket)
                .map_err(|e| ServicesError::socket(what, e))?;
        }
        for listener in tcp {
            let what = describe("DNS TCP", listener.local_addr());
            server
                .register_listener_std(listener, TCP_IDLE_TIMEOUT)
                .map_err(|e| ServicesError::socket(what, e))?;
        }
        Ok(DnsServer { server })
    }

    pub(crate) async fn shutdown(mut self) {
        if let Err(error) = self.server.shutdown_gracefully().await {
            tracing::warn!(%error, "the DNS server stopped with an error");
        }
    }
}

pub(crate) fn describe(what: &str, address: std::io::Result<SocketAddr>) -> String {
    match address {
        Ok(address) => format!("{what} {address}"),
        Err(_) => what.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zone_table_normalizes_and_rejects_bad_names() {
        let zone = Zone::new(vec![
            (
                "SourceForge.net.".to_string(),
                "198.18.0.10".parse().unwrap(),
            ),
            (
                "sourceforge.net".to_string(),
                "198.18.0.10".parse().unwrap(),
            ),
            (
                "sourceforge.net".to_string(),
                "2001:db8::1".parse().unwrap(),
            ),
        ]);
        let table = zone.table().unwrap();
        assert_eq!(table.len(), 1);
        assert_eq!(table["sourceforge.net"].len(), 2);
        assert_eq!(zone.addresses_of("SOURCEFORGE.NET.").len(), 3);

        for bad in ["", "198.18.0.1", "bad name with spaces"] {
            let zone = Zone::new(vec![(bad.to_string(), "198.18.0.1".parse().unwrap())]);
            let error = zone.table().unwrap_err().to_string();
            assert!(error.starts_with("zone record 0"), "{bad:?}: {error}");
        }
    }
}
