//! The two enforcement allow-lists of a watched cgroup: executables (kill at exec) and
//! destinations (refuse connect/sendmsg), and how they are compiled into map entries.

use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;
use std::ops::RangeInclusive;

use aya::Ebpf;
use aya::maps::lpm_trie::Key as LpmKey;
use aya::maps::{HashMap as BpfHashMap, LpmTrie};

use crate::loader::{Watch, map};
use crate::raw::*;
use crate::{IpNet, Sensor, SensorError};

/// One allowed destination for [`Sensor::set_connect_allowlist`]: a network and a port range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowedDestination {
    pub net: IpNet,
    pub ports: RangeInclusive<u16>,
}

impl AllowedDestination {
    pub fn new(net: IpNet, ports: RangeInclusive<u16>) -> Self {
        AllowedDestination { net, ports }
    }

    /// Every port of `net`.
    pub fn any_port(net: IpNet) -> Self {
        AllowedDestination {
            net,
            ports: 0..=u16::MAX,
        }
    }
}

impl Sensor {
    /// Turns kill-at-exec on for a watched cgroup with the executables it may run (`Some`), or
    /// off (`None`). Paths are compared with the resolved executable path the process sees
    /// (the `exe` of exec events: symlinks resolved, e.g. `/usr/bin/dash` for `/bin/sh` on a
    /// merged-/usr system), exactly. Any other exec in the cgroup is killed with SIGKILL before
    /// its first instruction, and so is every exec whose path the kernel could not resolve
    /// whole (an `exe_status` other than `resolved`: too long or deep, fileless, unresolved).
    pub fn set_exec_allowlist(
        &mut self,
        cgroup_id: u64,
        paths: Option<Vec<String>>,
    ) -> Result<(), SensorError> {
        let mut wanted = BTreeSet::new();
        for p in paths.iter().flatten() {
            wanted.insert(exec_path_key(p)?);
        }
        self.replace_allowlist(
            cgroup_id,
            WATCH_EXEC_ENFORCE,
            paths.is_some(),
            |bpf, watch| {
                let mut allow: BpfHashMap<_, ExecAllowKey, u8> = map(bpf, "exec_allow")?;
                let map_err = |source| SensorError::Map {
                    name: "exec_allow",
                    source,
                };
                let missing: Vec<_> = wanted.difference(&watch.exec_keys).copied().collect();
                for path in missing {
                    allow
                        .insert(ExecAllowKey { cgroup_id, path }, 1, 0)
                        .map_err(map_err)?;
                    watch.exec_keys.insert(path);
                }
                let stale: Vec<_> = watch.exec_keys.difference(&wanted).copied().collect();
                for path in stale {
                    let _ = allow.remove(&ExecAllowKey { cgroup_id, path });
                    watch.exec_keys.remove(&path);
                }
                Ok(())
            },
        )
    }

    /// Turns destination enforcement on for a watched cgroup (`Some`) or off (`None`). With it
    /// on, TCP connects and UDP connects/sends to anything but loopback (127.0.0.0/8, ::1) and
    /// the listed destinations fail with EPERM, and are reported with `refused: true`.
    pub fn set_connect_allowlist(
        &mut self,
        cgroup_id: u64,
        destinations: Option<Vec<AllowedDestination>>,
    ) -> Result<(), SensorError> {
        let entries = compile_destinations(destinations.as_deref().unwrap_or(&[]))?;
        self.replace_allowlist(
            cgroup_id,
            WATCH_CONNECT_ENFORCE,
            destinations.is_some(),
            |bpf, watch| replace_net_allow(bpf, watch, cgroup_id, &entries),
        )
    }

    /// Replaces one allow-list of a watched cgroup (`swap` updates the map and the `Watch`'s
    /// record of its entries, entry by entry, so that unwatching removes whatever got in even
    /// if it fails half way). Enforcement `flag` is turned off before the swap and on after
    /// it, and a list replaced while on keeps the union of old and new until the old entries
    /// go: there is no moment where an executable or destination allowed before and after
    /// is refused.
    fn replace_allowlist(
        &mut self,
        cgroup_id: u64,
        flag: u32,
        enforce: bool,
        swap: impl FnOnce(&mut Ebpf, &mut Watch) -> Result<(), SensorError>,
    ) -> Result<(), SensorError> {
        let flags = self
            .watches
            .get(&cgroup_id)
            .ok_or(SensorError::NotWatched(cgroup_id))?
            .flags;
        if !enforce {
            self.set_watch_flags(cgroup_id, flags & !flag)?;
        }
        {
            let watch = self
                .watches
                .get_mut(&cgroup_id)
                .ok_or(SensorError::NotWatched(cgroup_id))?;
            let bpf = self
                .bpf
                .as_mut()
                .expect("the eBPF object lives as long as the Sensor");
            swap(bpf, watch)?;
        }
        if enforce {
            self.set_watch_flags(cgroup_id, flags | flag)?;
        }
        Ok(())
    }
}

fn exec_path_key(path: &str) -> Result<[u8; PATH_MAX_LEN], SensorError> {
    let bad = |reason| SensorError::BadExecPath {
        path: path.to_string(),
        reason,
    };
    if !path.starts_with('/') {
        return Err(bad("must be an absolute path"));
    }
    if path.len() >= PATH_MAX_LEN {
        return Err(bad("longer than 255 bytes"));
    }
    if path.contains('\0') {
        return Err(bad("contains a NUL byte"));
    }
    let mut key = [0u8; PATH_MAX_LEN];
    key[..path.len()].copy_from_slice(path.as_bytes());
    Ok(key)
}

pub(crate) fn to_v6_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// Makes the `net_allow` entries of `cgroup_id` exactly `entries` (from
/// [`compile_destinations`]), recording each in `watch` as it goes in and forgetting each stale
/// one as it goes out, so that unwatching removes whatever got in.
pub(crate) fn replace_net_allow(
    bpf: &mut Ebpf,
    watch: &mut Watch,
    cgroup_id: u64,
    entries: &[([u8; 16], u8, NetAllowVal)],
) -> Result<(), SensorError> {
    let mut allow: LpmTrie<_, NetAllowKey, NetAllowVal> = map(bpf, "net_allow")?;
    let mut wanted = HashSet::new();
    for (addr, prefix, value) in entries {
        let key = NetAllowKey {
            cgroup_id: cgroup_id.to_ne_bytes(),
            addr: *addr,
        };
        let prefix = 64 + u32::from(*prefix);
        allow
            .insert(&LpmKey::new(prefix, key), *value, 0)
            .map_err(|source| SensorError::Map {
                name: "net_allow",
                source,
            })?;
        watch.net_keys.insert((prefix, key));
        wanted.insert((prefix, key));
    }
    let stale: Vec<_> = watch.net_keys.difference(&wanted).copied().collect();
    for (prefix, key) in stale {
        let _ = allow.remove(&LpmKey::new(prefix, key));
        watch.net_keys.remove(&(prefix, key));
    }
    Ok(())
}

/// One LPM trie entry per distinct network: (address, prefix over 128 bits, port ranges). Each
/// entry carries the port ranges of every listed network that contains it, so that the longest
/// match the kernel finds is enough to decide.
pub(crate) fn compile_destinations(
    list: &[AllowedDestination],
) -> Result<Vec<([u8; 16], u8, NetAllowVal)>, SensorError> {
    // (address bits, prefix over 128 bits, original net, ports)
    let norm: Vec<(u128, u8, IpNet, RangeInclusive<u16>)> = list
        .iter()
        .map(|d| {
            let net = d.net.trunc();
            let prefix = match net {
                IpNet::V4(n) => 96 + n.prefix_len(),
                IpNet::V6(n) => n.prefix_len(),
            };
            (
                u128::from_be_bytes(to_v6_bytes(net.network())),
                prefix,
                net,
                d.ports.clone(),
            )
        })
        .collect();
    let mask = |prefix: u8| {
        if prefix == 0 {
            0
        } else {
            u128::MAX << (128 - u32::from(prefix))
        }
    };
    let mut nets: Vec<(u128, u8, IpNet)> = norm.iter().map(|(a, p, n, _)| (*a, *p, *n)).collect();
    nets.sort();
    nets.dedup();
    let mut out = Vec::new();
    for (addr, prefix, net) in nets {
        let ranges: Vec<(u16, u16)> = norm
            .iter()
            .filter(|(a, p, _, _)| *p <= prefix && addr & mask(*p) == *a)
            .filter(|(_, _, _, r)| r.start() <= r.end())
            .map(|(_, _, _, r)| (*r.start(), *r.end()))
            .collect();
        let value =
            port_value(ranges).map_err(|count| SensorError::TooManyPortRanges { net, count })?;
        out.push((addr.to_be_bytes(), prefix, value));
    }
    Ok(out)
}

/// The map value for a set of port ranges, merged; `Err(count)` when more than
/// [`PORT_RANGES`] remain after merging.
pub(crate) fn port_value(mut ranges: Vec<(u16, u16)>) -> Result<NetAllowVal, usize> {
    ranges.sort();
    let mut merged: Vec<(u16, u16)> = Vec::new();
    for (lo, hi) in ranges {
        match merged.last_mut() {
            Some(last) if u32::from(lo) <= u32::from(last.1) + 1 => last.1 = last.1.max(hi),
            _ => merged.push((lo, hi)),
        }
    }
    if merged.len() > PORT_RANGES {
        return Err(merged.len());
    }
    let mut value = NetAllowVal {
        count: merged.len() as u32,
        ..Default::default()
    };
    for (slot, (lo, hi)) in value.ranges.iter_mut().zip(merged) {
        *slot = PortRange { lo, hi };
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(net: &str, ports: RangeInclusive<u16>) -> AllowedDestination {
        AllowedDestination::new(net.parse().unwrap(), ports)
    }
    #[test]
    fn nested_networks_inherit_the_ports_of_the_networks_around_them() {
        let entries = compile_destinations(&[
            dest("198.18.0.0/15", 443..=443),
            dest("198.18.0.7/32", 80..=80),
            dest("198.18.0.7/32", 81..=90),
        ])
        .unwrap();
        assert_eq!(entries.len(), 2);
        let wide = entries.iter().find(|e| e.1 == 96 + 15).unwrap();
        assert_eq!(
            &wide.2.ranges[..wide.2.count as usize],
            &[PortRange { lo: 443, hi: 443 }]
        );
        let host = entries.iter().find(|e| e.1 == 128).unwrap();
        assert_eq!(&host.0[10..], &[0xff, 0xff, 198, 18, 0, 7]);
        assert_eq!(
            &host.2.ranges[..host.2.count as usize],
            &[PortRange { lo: 80, hi: 90 }, PortRange { lo: 443, hi: 443 }]
        );
    }

    #[test]
    fn too_many_port_ranges_is_an_error_naming_the_network() {
        let list: Vec<_> = (0..17u16)
            .map(|i| dest("2001:db8::/32", i * 10..=i * 10))
            .collect();
        let err = compile_destinations(&list).unwrap_err();
        assert!(err.to_string().contains("2001:db8::/32"), "{err}");
    }

    #[test]
    fn exec_paths_must_be_absolute_and_short() {
        assert!(exec_path_key("/usr/bin/id").is_ok());
        assert!(
            exec_path_key("id")
                .unwrap_err()
                .to_string()
                .contains("absolute")
        );
        assert!(exec_path_key(&format!("/{}", "a".repeat(300))).is_err());
    }
}
