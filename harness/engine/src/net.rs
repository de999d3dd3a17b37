//! Addresses, blocks, ports, protocols and DNS names of network nodes: the one parser that
//! validation and the engine share, containment, and canonical order.
//!
//! * A `cidr` (or an `except` item) is `address/prefix` with the host bits zero, as spyctl
//!   (Python's `ip_network`) requires; anything else is refused with a [`CidrError`] that says
//!   why. An IPv4-mapped IPv6 block of prefix 96 or more (`::ffff:198.18.0.0/112`) is read as
//!   the IPv4 block it maps (`198.18.0.0/16`): the engine compares addresses in canonical
//!   form, so it would otherwise match nothing.
//! * A protocol is `TCP` or `UDP`, as written; anything else is unknown ([`parse_protocol`]
//!   gives `None`): validation reports it, the deviation matcher refuses the policy, and a
//!   merge never counts an unknown protocol as covering or covered.
//! * DNS names compare in normal form ([`normalize_dns_name`]): lower case, without the
//!   trailing dot of a fully qualified name.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::net::IpAddr;

use guardlab_events::Protocol;
pub use ipnet::IpNet;

use crate::glob::glob_match;
use crate::model::{IpBlock, Peer, PortSpec};

/// Why a `cidr` is not an IP block. The messages are validation's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("expected `address/prefix`, e.g. `198.18.0.0/15`")]
    NoPrefix,
    #[error("`{0}` is not an IP address")]
    Address(String),
    #[error("prefix `{prefix}` is not a number from 0 to {width}")]
    Prefix { prefix: String, width: u8 },
    #[error("host bits are set after the /{0} prefix")]
    HostBits(u8),
}

/// Parse an IP block (see the module documentation).
pub fn parse_cidr(text: &str) -> Result<IpNet, CidrError> {
    let (address, prefix) = text.split_once('/').ok_or(CidrError::NoPrefix)?;
    let addr: IpAddr = address
        .parse()
        .map_err(|_| CidrError::Address(address.to_string()))?;
    let width = if addr.is_ipv4() { 32 } else { 128 };
    let prefix_len: u8 =
        prefix
            .parse()
            .ok()
            .filter(|p| *p <= width)
            .ok_or_else(|| CidrError::Prefix {
                prefix: prefix.to_string(),
                width,
            })?;
    let net = IpNet::new(addr, prefix_len).map_err(|_| CidrError::Prefix {
        prefix: prefix.to_string(),
        width,
    })?;
    if net.addr() != net.network() {
        return Err(CidrError::HostBits(prefix_len));
    }
    Ok(canonical_net(net))
}

/// An IPv4-mapped IPv6 block of prefix 96 or more as the IPv4 block it maps.
fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96).unwrap_or(net),
            None => net,
        },
        _ => net,
    }
}

/// The host block of one address: `a.b.c.d/32` or `x::y/128` (v4-mapped IPv6 as IPv4).
pub fn host_net(ip: IpAddr) -> IpNet {
    IpNet::from(ip.to_canonical())
}

/// [`host_net`] as the text of a `cidr`.
pub fn host_cidr(ip: IpAddr) -> String {
    host_net(ip).to_string()
}

/// An `ipBlock` ready for matching. A block whose `cidr` does not parse covers nothing but
/// an identical block (validation reports it; the engine does not guess).
#[derive(Clone, Debug)]
pub struct Block {
    pub net: Option<IpNet>,
    pub except: Vec<IpNet>,
    pub text: String,
}

impl Block {
    pub fn new(block: &IpBlock) -> Block {
        Block {
            net: parse_cidr(&block.cidr).ok(),
            except: block
                .except
                .iter()
                .filter_map(|e| parse_cidr(e).ok())
                .collect(),
            text: block.cidr.clone(),
        }
    }

    /// True when every address of `other` is in this block and none is excepted.
    pub fn covers(&self, other: &Block) -> bool {
        match (&self.net, &other.net) {
            (Some(a), Some(b)) => a.contains(b) && !self.except.iter().any(|e| overlaps(e, b)),
            _ => self.text == other.text && self.except.is_empty(),
        }
    }

    pub fn covers_ip(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        match &self.net {
            Some(net) => net.contains(&ip) && !self.except.iter().any(|e| e.contains(&ip)),
            None => false,
        }
    }
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(b) || b.contains(a)
}

/// A DNS name (or name pattern) in normal form: lower case, no trailing dot.
pub fn normalize_dns_name(name: &str) -> Cow<'_, str> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

/// True when the DNS name (or name pattern) `name` is covered by the pattern `pattern`;
/// both compare in normal form.
pub fn dns_covers(pattern: &str, name: &str) -> bool {
    let (pattern, name) = (normalize_dns_name(pattern), normalize_dns_name(name));
    pattern == name || glob_match(&pattern, &name)
}

/// True when `peer` (one item of `to`/`from`) is covered by one of `peers`.
pub fn peer_covered(peers: &[Peer], peer: &Peer) -> bool {
    match peer {
        Peer::DnsSelector(names) => names.iter().all(|name| {
            peers.iter().any(|p| matches!(p, Peer::DnsSelector(ns) if ns.iter().any(|pat| dns_covers(pat, name))))
        }),
        Peer::IpBlock(block) => {
            let block = Block::new(block);
            peers.iter().any(|p| matches!(p, Peer::IpBlock(b) if Block::new(b).covers(&block)))
        }
    }
}

/// `TCP` or `UDP`; anything else is no protocol the engine knows.
pub fn parse_protocol(text: &str) -> Option<Protocol> {
    match text {
        "TCP" => Some(Protocol::Tcp),
        "UDP" => Some(Protocol::Udp),
        _ => None,
    }
}

/// A port range of one protocol (`None`: a protocol the engine does not know, which covers
/// nothing and is covered by nothing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ports {
    pub protocol: Option<Protocol>,
    pub lo: u32,
    pub hi: u32,
}

impl Ports {
    pub fn new(spec: &PortSpec) -> Ports {
        Ports {
            protocol: parse_protocol(&spec.protocol),
            lo: spec.port,
            hi: spec.end_port.unwrap_or(spec.port).max(spec.port),
        }
    }

    pub fn covers(&self, other: &Ports) -> bool {
        self.protocol.is_some()
            && self.protocol == other.protocol
            && self.lo <= other.lo
            && other.hi <= self.hi
    }

    /// True when a connection of `protocol` to `port` lies in this range.
    pub fn allows(&self, protocol: Protocol, port: u16) -> bool {
        let port = u32::from(port);
        self.protocol == Some(protocol) && self.lo <= port && port <= self.hi
    }
}

/// True when every range of `inner` lies inside one range of `outer`.
pub fn ports_covered(outer: &[PortSpec], inner: &[PortSpec]) -> bool {
    let outer: Vec<Ports> = outer.iter().map(Ports::new).collect();
    inner
        .iter()
        .map(Ports::new)
        .all(|p| outer.iter().any(|o| o.covers(&p)))
}

/// Canonical order of ports: by port, then end, then protocol.
pub fn port_order(a: &PortSpec, b: &PortSpec) -> Ordering {
    (a.port, a.end_port.unwrap_or(a.port), &a.protocol).cmp(&(
        b.port,
        b.end_port.unwrap_or(b.port),
        &b.protocol,
    ))
}

/// Canonical order of peers: DNS names (by name), then IPv4 blocks, then IPv6 blocks (by
/// address, then prefix), then anything that does not parse (by text).
pub fn peer_order(a: &Peer, b: &Peer) -> Ordering {
    peer_key(a).cmp(&peer_key(b))
}

fn peer_key(p: &Peer) -> (u8, u128, u8, String) {
    match p {
        Peer::DnsSelector(names) => (0, 0, 0, names.join(",")),
        Peer::IpBlock(block) => match parse_cidr(&block.cidr) {
            Ok(IpNet::V4(net)) => (
                1,
                u128::from(u32::from(net.network())),
                net.prefix_len(),
                block.except.join(","),
            ),
            Ok(IpNet::V6(net)) => (
                2,
                u128::from(net.network()),
                net.prefix_len(),
                block.except.join(","),
            ),
            Err(_) => (3, 0, 0, block.cidr.clone()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        parse_cidr(s).unwrap()
    }

    #[test]
    fn parses_blocks_strictly() {
        assert_eq!(net("10.0.0.0/8").prefix_len(), 8);
        assert_eq!(net("198.18.0.7/32").prefix_len(), 32);
        assert_eq!(net("::/0").prefix_len(), 0);
        assert_eq!(parse_cidr("198.18.0.7"), Err(CidrError::NoPrefix));
        assert_eq!(
            parse_cidr("198.18.0.0/33"),
            Err(CidrError::Prefix {
                prefix: "33".into(),
                width: 32
            })
        );
        assert_eq!(
            parse_cidr("not-an-ip/8"),
            Err(CidrError::Address("not-an-ip".into()))
        );
        assert_eq!(parse_cidr("198.18.0.1/15"), Err(CidrError::HostBits(15)));
        assert!(
            CidrError::HostBits(15).to_string().contains("host bits"),
            "validation's wording"
        );
        assert_eq!(
            net("::ffff:198.18.0.0/112"),
            net("198.18.0.0/16"),
            "v4-mapped blocks are IPv4 blocks"
        );
    }

    #[test]
    fn supernets_contain_subnets_and_hosts() {
        let wide = net("198.18.0.0/15");
        assert!(wide.contains(&net("198.19.255.0/24")));
        assert!(wide.contains(&"198.18.4.4".parse::<IpAddr>().unwrap()));
        assert!(!wide.contains(&"198.20.0.1".parse::<IpAddr>().unwrap()));
        assert!(
            !net("198.18.0.0/24").contains(&wide),
            "a subnet does not contain its supernet"
        );
        assert!(net("0.0.0.0/0").contains(&wide));
        assert!(
            !net("0.0.0.0/0").contains(&"::1".parse::<IpAddr>().unwrap()),
            "families never mix"
        );
        assert!(net("2001:db8::/32").contains(&"2001:db8::42".parse::<IpAddr>().unwrap()));
    }

    #[test]
    fn except_blocks_are_carved_out() {
        let block = Block::new(&IpBlock {
            cidr: "198.18.0.0/15".into(),
            except: vec!["198.18.1.0/24".into()],
        });
        assert!(block.covers_ip("198.18.0.9".parse().unwrap()));
        assert!(block.covers_ip("::ffff:198.18.0.9".parse().unwrap()));
        assert!(!block.covers_ip("198.18.1.9".parse().unwrap()));
        let overlapping = Block::new(&IpBlock {
            cidr: "198.18.0.0/23".into(),
            except: vec![],
        });
        assert!(
            !block.covers(&overlapping),
            "a block that overlaps an except is not covered"
        );
    }

    #[test]
    fn host_cidrs() {
        assert_eq!(host_cidr("198.18.0.7".parse().unwrap()), "198.18.0.7/32");
        assert_eq!(host_cidr("2001:db8::1".parse().unwrap()), "2001:db8::1/128");
        assert_eq!(
            host_cidr("::ffff:198.18.0.7".parse().unwrap()),
            "198.18.0.7/32"
        );
    }

    #[test]
    fn port_ranges() {
        let tcp = |port, end_port| PortSpec {
            protocol: "TCP".into(),
            port,
            end_port,
        };
        assert!(ports_covered(
            &[tcp(1000, Some(2000))],
            &[tcp(1500, None), tcp(1000, Some(2000))]
        ));
        assert!(!ports_covered(
            &[tcp(1000, Some(2000))],
            &[tcp(1500, Some(2500))]
        ));
        assert!(!ports_covered(
            &[tcp(53, None)],
            &[PortSpec {
                protocol: "UDP".into(),
                port: 53,
                end_port: None
            }]
        ));
    }

    #[test]
    fn only_tcp_and_udp_are_protocols() {
        assert_eq!(parse_protocol("TCP"), Some(Protocol::Tcp));
        assert_eq!(parse_protocol("UDP"), Some(Protocol::Udp));
        assert_eq!(parse_protocol("SCTP"), None);
        assert_eq!(
            parse_protocol("tcp"),
            None,
            "written as the format spells it"
        );
        let sctp = PortSpec {
            protocol: "SCTP".into(),
            port: 80,
            end_port: None,
        };
        assert!(
            !Ports::new(&sctp).covers(&Ports::new(&sctp)),
            "an unknown protocol is never taken for TCP"
        );
        assert!(!Ports::new(&sctp).allows(Protocol::Tcp, 80));
    }

    #[test]
    fn dns_names_compare_in_normal_form() {
        assert_eq!(normalize_dns_name("PyPI.org."), "pypi.org");
        assert_eq!(normalize_dns_name("pypi.org"), "pypi.org");
        assert!(dns_covers("*.example.com", "pool.Example.com."));
        assert!(dns_covers("pypi.org.", "PYPI.org"));
        assert!(!dns_covers("*.example.com", "example.org"));
    }

    #[test]
    fn peers_sort_names_then_v4_then_v6() {
        let ip = |c: &str| {
            Peer::IpBlock(IpBlock {
                cidr: c.into(),
                except: vec![],
            })
        };
        let mut peers = [
            ip("2001:db8::1/128"),
            ip("52.46.140.46/32"),
            Peer::DnsSelector(vec!["b.org".into()]),
            ip("3.210.19.214/32"),
            Peer::DnsSelector(vec!["a.org".into()]),
        ];
        peers.sort_by(peer_order);
        let text: Vec<String> = peers
            .iter()
            .map(|p| match p {
                Peer::DnsSelector(n) => n.join(","),
                Peer::IpBlock(b) => b.cidr.clone(),
            })
            .collect();
        assert_eq!(
            text,
            [
                "a.org",
                "b.org",
                "3.210.19.214/32",
                "52.46.140.46/32",
                "2001:db8::1/128"
            ]
        );
    }
}
