//! Addresses, blocks and ports of network nodes: containment and canonical order.

use std::cmp::Ordering;
use std::net::IpAddr;

use crate::glob::glob_match;
use crate::model::{IpBlock, Peer, PortSpec};

/// An address block, `a.b.c.d/n` or `x::y/n`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl IpNet {
    /// Parse `addr/prefix`, or a bare address (a host block). `None` when it is not one.
    pub fn parse(cidr: &str) -> Option<IpNet> {
        let (addr, prefix) = match cidr.split_once('/') {
            Some((a, p)) => (
                a.trim().parse::<IpAddr>().ok()?,
                Some(p.trim().parse::<u8>().ok()?),
            ),
            None => (cidr.trim().parse::<IpAddr>().ok()?, None),
        };
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(IpNet { addr, prefix })
    }

    pub fn host(ip: IpAddr) -> IpNet {
        let ip = ip.to_canonical();
        IpNet {
            addr: ip,
            prefix: if ip.is_ipv4() { 32 } else { 128 },
        }
    }

    fn masked(addr: IpAddr, prefix: u8) -> u128 {
        match addr {
            IpAddr::V4(a) => {
                let v = u32::from(a) as u128;
                if prefix == 0 {
                    0
                } else {
                    v & ((u32::MAX << (32 - prefix as u32)) as u128)
                }
            }
            IpAddr::V6(a) => {
                let v = u128::from(a);
                if prefix == 0 {
                    0
                } else {
                    v & (u128::MAX << (128 - prefix as u32))
                }
            }
        }
    }

    /// True when `other` lies inside this block (this block is a supernet of it).
    pub fn contains(&self, other: &IpNet) -> bool {
        self.addr.is_ipv4() == other.addr.is_ipv4()
            && self.prefix <= other.prefix
            && Self::masked(self.addr, self.prefix) == Self::masked(other.addr, self.prefix)
    }

    pub fn contains_ip(&self, ip: IpAddr) -> bool {
        self.contains(&IpNet::host(ip))
    }

    fn overlaps(&self, other: &IpNet) -> bool {
        self.contains(other) || other.contains(self)
    }

    fn sort_key(&self) -> (u8, u128, u8) {
        let family = if self.addr.is_ipv4() { 1 } else { 2 };
        (family, Self::masked(self.addr, self.prefix), self.prefix)
    }
}

/// The host block of one address: `a.b.c.d/32` or `x::y/128`.
pub fn host_cidr(ip: IpAddr) -> String {
    let net = IpNet::host(ip);
    format!("{}/{}", net.addr, net.prefix)
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
            net: IpNet::parse(&block.cidr),
            except: block
                .except
                .iter()
                .filter_map(|e| IpNet::parse(e))
                .collect(),
            text: block.cidr.clone(),
        }
    }

    /// True when every address of `other` is in this block and none is excepted.
    pub fn covers(&self, other: &Block) -> bool {
        match (&self.net, &other.net) {
            (Some(a), Some(b)) => a.contains(b) && !self.except.iter().any(|e| e.overlaps(b)),
            _ => self.text == other.text && self.except.is_empty(),
        }
    }

    pub fn covers_ip(&self, ip: IpAddr) -> bool {
        match &self.net {
            Some(net) => net.contains_ip(ip) && !self.except.iter().any(|e| e.contains_ip(ip)),
            None => false,
        }
    }
}

/// True when the DNS name (or name pattern) `name` is covered by the pattern `pattern`;
/// DNS names compare without regard to case.
pub fn dns_covers(pattern: &str, name: &str) -> bool {
    if pattern.eq_ignore_ascii_case(name) {
        return true;
    }
    glob_match(&pattern.to_ascii_lowercase(), &name.to_ascii_lowercase())
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

/// A port range of one protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ports {
    pub tcp: bool,
    pub lo: u32,
    pub hi: u32,
}

impl Ports {
    pub fn new(spec: &PortSpec) -> Ports {
        Ports {
            tcp: !spec.protocol.eq_ignore_ascii_case("UDP"),
            lo: spec.port,
            hi: spec.end_port.unwrap_or(spec.port).max(spec.port),
        }
    }

    pub fn covers(&self, other: &Ports) -> bool {
        self.tcp == other.tcp && self.lo <= other.lo && other.hi <= self.hi
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
        Peer::IpBlock(block) => match IpNet::parse(&block.cidr) {
            Some(net) => {
                let (family, addr, prefix) = net.sort_key();
                (family, addr, prefix, block.except.join(","))
            }
            None => (3, 0, 0, block.cidr.clone()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_blocks_and_hosts() {
        assert_eq!(IpNet::parse("10.0.0.0/8").unwrap().prefix, 8);
        assert_eq!(IpNet::parse("198.18.0.7").unwrap().prefix, 32);
        assert_eq!(IpNet::parse("::1").unwrap().prefix, 128);
        assert!(IpNet::parse("198.18.0.0/33").is_none());
        assert!(IpNet::parse("not-an-ip/8").is_none());
        assert_eq!(
            IpNet::parse("::ffff:198.18.0.1/32").unwrap().addr,
            "198.18.0.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn supernets_contain_subnets_and_hosts() {
        let wide = IpNet::parse("198.18.0.0/15").unwrap();
        assert!(wide.contains(&IpNet::parse("198.19.255.0/24").unwrap()));
        assert!(wide.contains_ip("198.18.4.4".parse().unwrap()));
        assert!(!wide.contains_ip("198.20.0.1".parse().unwrap()));
        assert!(
            !IpNet::parse("198.18.0.0/24").unwrap().contains(&wide),
            "a subnet does not contain its supernet"
        );
        assert!(IpNet::parse("0.0.0.0/0").unwrap().contains(&wide));
        assert!(
            !IpNet::parse("0.0.0.0/0")
                .unwrap()
                .contains_ip("::1".parse().unwrap()),
            "families never mix"
        );
        assert!(
            IpNet::parse("2001:db8::/32")
                .unwrap()
                .contains_ip("2001:db8::42".parse().unwrap())
        );
    }

    #[test]
    fn except_blocks_are_carved_out() {
        let block = Block::new(&IpBlock {
            cidr: "198.18.0.0/15".into(),
            except: vec!["198.18.1.0/24".into()],
        });
        assert!(block.covers_ip("198.18.0.9".parse().unwrap()));
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
    fn dns_names_glob_match_without_case() {
        assert!(dns_covers("*.example.com", "pool.Example.com"));
        assert!(dns_covers("pypi.org", "PYPI.org"));
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
