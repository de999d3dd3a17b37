//! A compiled policy in the kernel for one watched cgroup: the process tree (which executable
//! each policy node may start as which child node), the destinations, the DNS names whose
//! answers allow their addresses, and the pod's resolver. See [`Sensor::set_kernel_policy`].

use std::collections::HashSet;
use std::net::IpAddr;
use std::ops::RangeInclusive;

use aya::Ebpf;
use aya::maps::lpm_trie::Key as LpmKey;
use aya::maps::{HashMap as BpfHashMap, LpmTrie};

use crate::allowlist::{
    AllowedDestination, compile_destinations, port_value, replace_net_allow, to_v6_bytes,
};
use crate::loader::{Watch, map};
use crate::raw::*;
use crate::{Sensor, SensorError};

/// One edge of the policy's process tree: a task running as policy node `parent` (0: the
/// container's root context, a task no allowed exec has placed yet) may exec a file matching
/// `exe`, and then runs as `node`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecRule {
    pub parent: u32,
    /// An absolute resolved path (`/usr/bin/python3.11`), or a prefix glob ending in `*`
    /// (`/home/jovyan/*`, matched in the kernel: it also covers files created later). A `*`
    /// matches `/` too, as in the policy format.
    pub exe: String,
    pub node: u32,
}

/// A DNS name (`pypi.org`) or every name under a domain (`*.example.com`), and the ports the
/// addresses its answers give may be reached on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowedDnsName {
    pub name: String,
    pub ports: RangeInclusive<u16>,
}

/// What [`Sensor::set_kernel_policy`] puts in the kernel for one cgroup.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelPolicy {
    pub exec: Vec<ExecRule>,
    pub destinations: Vec<AllowedDestination>,
    pub dns_names: Vec<AllowedDnsName>,
    /// The pod's DNS server: reachable on port 53 (UDP and TCP) whatever the policy says, and
    /// the only source whose answers allow addresses. Without it no answer allows anything.
    pub resolver: Option<IpAddr>,
}

/// A `dns_names` entry: ((prefix length, key), the ports its answers allow).
pub(crate) type DnsNameEntry = ((u32, DnsNameKey), NetAllowVal);

const POLICY_FLAGS: u32 = WATCH_TREE_ENFORCE | WATCH_CONNECT_ENFORCE | WATCH_DNS_ALLOW;

impl Sensor {
    /// Enforces a compiled policy on a watched cgroup (`Some`), replacing what was there (also
    /// a [`Sensor::set_connect_allowlist`] list), or lifts it (`None`).
    ///
    /// With a policy, an exec is killed (SIGKILL before its first instruction, reported with
    /// `killed`) unless an [`ExecRule`] of the node the task runs as matches its resolved
    /// path (or the path could not be resolved whole); a connect or UDP send to anything but
    /// loopback, the destinations, the resolver on port 53, and the addresses of answers for
    /// the DNS names gets EPERM. Entries are added before stale ones go, and enforcement is
    /// switched on after its entries are in: nothing allowed before and after is ever refused
    /// while a policy is replaced.
    pub fn set_kernel_policy(
        &mut self,
        cgroup_id: u64,
        policy: Option<KernelPolicy>,
    ) -> Result<(), SensorError> {
        let Some(policy) = policy else {
            let flags = self.watch_of(cgroup_id)?.flags;
            self.set_watch_flags(cgroup_id, flags & !POLICY_FLAGS)?;
            let (bpf, watch) = self.bpf_and_watch(cgroup_id)?;
            remove_policy_entries(bpf, cgroup_id, watch);
            return Ok(());
        };
        let tree = policy
            .exec
            .iter()
            .map(|r| tree_key(cgroup_id, r).map(|k| (k, r.node)))
            .collect::<Result<Vec<_>, _>>()?;
        let names = compile_dns_names(cgroup_id, &policy.dns_names)?;
        let nets = compile_destinations(&policy.destinations)?;
        let (bpf, watch) = self.bpf_and_watch(cgroup_id)?;

        let mut exec_tree: LpmTrie<_, ExecTreeKey, u32> = map(bpf, "exec_tree")?;
        let wanted: HashSet<_> = tree.iter().map(|(k, _)| *k).collect();
        for ((prefix, key), node) in &tree {
            exec_tree
                .insert(&LpmKey::new(*prefix, *key), node, 0)
                .map_err(map_err("exec_tree"))?;
            watch.tree_keys.insert((*prefix, *key));
        }
        let stale: Vec<_> = watch.tree_keys.difference(&wanted).copied().collect();
        for (prefix, key) in stale {
            let _ = exec_tree.remove(&LpmKey::new(prefix, key));
            watch.tree_keys.remove(&(prefix, key));
        }

        replace_net_allow(bpf, watch, cgroup_id, &nets)?;

        if watch.dns_names != names {
            let mut dns_names: LpmTrie<_, DnsNameKey, NetAllowVal> = map(bpf, "dns_names")?;
            for ((prefix, key), value) in &names {
                dns_names
                    .insert(&LpmKey::new(*prefix, *key), *value, 0)
                    .map_err(map_err("dns_names"))?;
                if !watch.dns_names.iter().any(|(k, _)| *k == (*prefix, *key)) {
                    watch.dns_names.push(((*prefix, *key), *value));
                }
            }
            let old = std::mem::replace(&mut watch.dns_names, names);
            for ((prefix, key), _) in old {
                if !watch.dns_names.iter().any(|(k, _)| *k == (prefix, key)) {
                    let _ = dns_names.remove(&LpmKey::new(prefix, key));
                }
            }
            // Addresses earlier answers allowed, with the ports of names as they were: they
            // come back with the next answer for a name still allowed.
            remove_dns_answers(bpf, cgroup_id);
        }

        let mut resolvers: BpfHashMap<_, u64, Resolver> = map(bpf, "resolvers")?;
        match policy.resolver {
            Some(ip) => {
                let value = Resolver {
                    addr: to_v6_bytes(ip),
                };
                resolvers
                    .insert(cgroup_id, value, 0)
                    .map_err(map_err("resolvers"))?;
                watch.has_resolver = true;
            }
            None => {
                let _ = resolvers.remove(&cgroup_id);
                watch.has_resolver = false;
            }
        }
        let flags = watch.flags | POLICY_FLAGS;
        // The processes already running take their nodes before enforcement is on, and
        // again after, for those forked in between from a process that had none.
        self.place_running_tasks(cgroup_id, &policy.exec)?;
        self.set_watch_flags(cgroup_id, flags)?;
        self.place_running_tasks(cgroup_id, &policy.exec)?;
        Ok(())
    }

    fn watch_of(&self, cgroup_id: u64) -> Result<&Watch, SensorError> {
        self.watches
            .get(&cgroup_id)
            .ok_or(SensorError::NotWatched(cgroup_id))
    }

    fn bpf_and_watch(&mut self, cgroup_id: u64) -> Result<(&mut Ebpf, &mut Watch), SensorError> {
        let watch = self
            .watches
            .get_mut(&cgroup_id)
            .ok_or(SensorError::NotWatched(cgroup_id))?;
        let bpf = self
            .bpf
            .as_mut()
            .expect("the eBPF object lives as long as the Sensor");
        Ok((bpf, watch))
    }
}

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> SensorError {
    move |source| SensorError::Map { name, source }
}

/// Removes every policy entry of a cgroup from the kernel (best effort: an entry that cannot be
/// removed now is one the cgroup's removal makes unreachable).
pub(crate) fn remove_policy_entries(bpf: &mut Ebpf, cgroup_id: u64, watch: &mut Watch) {
    if let Ok(mut m) = map::<LpmTrie<_, ExecTreeKey, u32>>(bpf, "exec_tree") {
        for (prefix, key) in std::mem::take(&mut watch.tree_keys) {
            let _ = m.remove(&LpmKey::new(prefix, key));
        }
    }
    if let Ok(mut m) = map::<LpmTrie<_, NetAllowKey, NetAllowVal>>(bpf, "net_allow") {
        for (prefix, key) in std::mem::take(&mut watch.net_keys) {
            let _ = m.remove(&LpmKey::new(prefix, key));
        }
    }
    if let Ok(mut m) = map::<LpmTrie<_, DnsNameKey, NetAllowVal>>(bpf, "dns_names") {
        for ((prefix, key), _) in std::mem::take(&mut watch.dns_names) {
            let _ = m.remove(&LpmKey::new(prefix, key));
        }
    }
    if let Ok(mut m) = map::<BpfHashMap<_, u64, Resolver>>(bpf, "resolvers") {
        let _ = m.remove(&cgroup_id);
        watch.has_resolver = false;
    }
    remove_dns_answers(bpf, cgroup_id);
}

/// The addresses DNS answers allowed the cgroup (the kernel adds them, so they are found by
/// walking the map).
fn remove_dns_answers(bpf: &mut Ebpf, cgroup_id: u64) {
    if let Ok(mut m) = map::<BpfHashMap<_, DnsAllowKey, NetAllowVal>>(bpf, "dns_allow") {
        let ours: Vec<DnsAllowKey> = m
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.cgroup_id == cgroup_id)
            .collect();
        for key in ours {
            let _ = m.remove(&key);
        }
    }
}

/// The `exec_tree` entry of a rule: (prefix length in bits, key).
fn tree_key(cgroup_id: u64, rule: &ExecRule) -> Result<(u32, ExecTreeKey), SensorError> {
    let bad = |reason| SensorError::BadExecPattern {
        pattern: rule.exe.clone(),
        reason,
    };
    let (bytes, exact) = match rule.exe.strip_suffix('*') {
        Some(prefix) => (prefix.as_bytes(), false),
        None => (rule.exe.as_bytes(), true),
    };
    if !rule.exe.starts_with('/') && rule.exe != "*" {
        return Err(bad("must be an absolute path or end in `*`"));
    }
    if bytes.iter().any(|b| matches!(b, b'*' | b'?' | b'[')) {
        return Err(bad(
            "only exact paths and a trailing `*` are matched in the kernel",
        ));
    }
    if bytes.contains(&0) {
        return Err(bad("contains a NUL byte"));
    }
    // An exact path is matched with the NUL after it: it needs one more byte.
    let used = bytes.len() + usize::from(exact);
    if used > TREE_PATH {
        return Err(bad("longer than the kernel matches (243 bytes)"));
    }
    let mut key = ExecTreeKey {
        cgroup_id: cgroup_id.to_ne_bytes(),
        parent: rule.parent.to_ne_bytes(),
        path: [0; TREE_PATH],
    };
    key.path[..bytes.len()].copy_from_slice(bytes);
    Ok((8 * (12 + used as u32), key))
}

/// The reversed-name bytes a DNS name pattern matches on, and whether it is exact.
fn dns_pattern(name: &str) -> Result<(Vec<u8>, bool), SensorError> {
    let bad = |reason: &str| SensorError::BadDnsName {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    let lower = name.trim_end_matches('.').to_ascii_lowercase();
    let (body, exact) = if lower == "*" {
        (String::new(), false)
    } else if let Some(rest) = lower.strip_prefix("*.") {
        // "*.example.com" covers names ending in ".example.com": reversed, "moc.elpmaxe."
        (format!(".{rest}"), false)
    } else {
        (lower.clone(), true)
    };
    if body.bytes().any(|b| matches!(b, b'*' | b'?' | b'[' | 0)) {
        return Err(bad(
            "only exact names and a leading `*.` are matched in the kernel",
        ));
    }
    if exact && body.is_empty() {
        return Err(bad("empty"));
    }
    if body.len() + usize::from(exact) > DNS_NAME {
        return Err(bad("longer than the kernel matches (247 bytes)"));
    }
    Ok((body.bytes().rev().collect(), exact))
}

/// `dns_names` entries. Each carries the ports of every pattern that covers it, so that the
/// longest match alone decides (as for `net_allow`).
fn compile_dns_names(
    cgroup_id: u64,
    names: &[AllowedDnsName],
) -> Result<Vec<DnsNameEntry>, SensorError> {
    let patterns = names
        .iter()
        .map(|n| dns_pattern(&n.name).map(|(bytes, exact)| (bytes, exact, n)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut out: Vec<DnsNameEntry> = Vec::new();
    for (bytes, exact, allowed) in &patterns {
        let covers = |(b, e, _): &&(Vec<u8>, bool, &AllowedDnsName)| {
            if *e {
                *exact && b == bytes
            } else {
                bytes.starts_with(b)
            }
        };
        let ranges: Vec<(u16, u16)> = patterns
            .iter()
            .filter(covers)
            .filter(|(_, _, n)| n.ports.start() <= n.ports.end())
            .map(|(_, _, n)| (*n.ports.start(), *n.ports.end()))
            .collect();
        let value = port_value(ranges).map_err(|count| SensorError::BadDnsName {
            name: allowed.name.clone(),
            reason: format!("{count} port ranges after merging, at most {PORT_RANGES} fit"),
        })?;
        let mut key = DnsNameKey {
            cgroup_id: cgroup_id.to_ne_bytes(),
            name: [0; DNS_NAME],
        };
        key.name[..bytes.len()].copy_from_slice(bytes);
        let prefix = 8 * (8 + (bytes.len() + usize::from(*exact)) as u32);
        if !out.iter().any(|((p, k), _)| *p == prefix && *k == key) {
            out.push(((prefix, key), value));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(exe: &str) -> ExecRule {
        ExecRule {
            parent: 3,
            exe: exe.into(),
            node: 4,
        }
    }

    #[test]
    fn exact_paths_take_their_nul_and_globs_only_their_prefix() {
        let (bits, key) = tree_key(7, &rule("/usr/bin/id")).unwrap();
        assert_eq!(bits, 8 * (12 + 12));
        assert_eq!(&key.path[..12], b"/usr/bin/id\0");
        assert_eq!(key.parent, 3u32.to_ne_bytes());
        let (bits, key) = tree_key(7, &rule("/home/jovyan/*")).unwrap();
        assert_eq!(bits, 8 * (12 + 13));
        assert_eq!(&key.path[..14], b"/home/jovyan/\0");
        assert_eq!(tree_key(7, &rule("*")).unwrap().0, 8 * 12);
    }

    #[test]
    fn patterns_the_kernel_cannot_match_are_refused_by_name() {
        for bad in ["python3", "/usr/bin/py?hon", "/opt/*/bin/python", "/a[bc]"] {
            let err = tree_key(1, &rule(bad)).unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
        assert!(tree_key(1, &rule(&format!("/{}", "a".repeat(243)))).is_err());
        assert!(tree_key(1, &rule(&format!("/{}", "a".repeat(242)))).is_ok());
    }

    #[test]
    fn dns_names_are_reversed_lower_case_and_inherit_covering_ports() {
        assert_eq!(
            dns_pattern("PyPI.org.").unwrap(),
            (b"gro.ipyp".to_vec(), true)
        );
        assert_eq!(
            dns_pattern("*.Example.com").unwrap(),
            (b"moc.elpmaxe.".to_vec(), false)
        );
        assert!(dns_pattern("pypi.*").is_err());
        let names = [
            AllowedDnsName {
                name: "*.example.com".into(),
                ports: 443..=443,
            },
            AllowedDnsName {
                name: "pool.example.com".into(),
                ports: 3333..=3333,
            },
        ];
        let entries = compile_dns_names(9, &names).unwrap();
        assert_eq!(entries.len(), 2);
        let pool = entries
            .iter()
            .find(|((p, _), _)| *p == 8 * (8 + 17))
            .unwrap();
        assert_eq!(
            &pool.1.ranges[..pool.1.count as usize],
            &[
                PortRange { lo: 443, hi: 443 },
                PortRange { lo: 3333, hi: 3333 }
            ]
        );
        let wild = entries
            .iter()
            .find(|((p, _), _)| *p == 8 * (8 + 12))
            .unwrap();
        assert_eq!(wild.1.count, 1);
    }
}
