//! Compiles a guard policy into what the kernel enforces for a pod ([`KernelPolicy`]): the
//! process tree as (parent node, exe pattern, node) edges, the CIDRs and DNS names of its
//! egress rules with their ports. Pure (no aya, no I/O), so the runner calls it directly and
//! hands the result to `Lab::enforce` in an [`Enforcement`](guardlab_lab_api::Enforcement).
//!
//! ```
//! use guardlab_engine::model::{Spec, ProcessNode};
//! let spec = Spec {
//!     process_policy: vec![ProcessNode {
//!         name: "python3".into(),
//!         exe: vec!["/opt/conda/bin/python3*".into()],
//!         id: "python3_0".into(),
//!         ..Default::default()
//!     }],
//!     ..Default::default()
//! };
//! let policy = guardlab_kernel_policy::compile(&spec, None).unwrap();
//! assert_eq!(policy.nodes[0].node, 1);
//! assert_eq!(policy.nodes[0].exe, "/opt/conda/bin/python3*");
//! ```

pub mod agreement;

use std::collections::BTreeMap;

use guardlab_engine::model::{Mode, Peer, PortSpec, ProcessNode, ResponseAction, Spec};
pub use guardlab_lab_api::{AllowedDestination, AllowedDnsName, KernelNode, KernelPolicy};
use ipnet::IpNet;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompileError {
    #[error("processPolicy node {node}: exe {exe:?} is not an absolute path or glob")]
    RelativeExe { node: String, exe: String },
    #[error("networkPolicy.egress[{index}]: ipBlock cidr {cidr:?} is not an address or network")]
    BadCidr { index: usize, cidr: String },
    #[error("networkPolicy.egress[{index}]: port {port} is not a port number (0 to 65535)")]
    BadPort { index: usize, port: u32 },
}

/// True when the policy asks for kernel enforcement: enabled, in enforce mode, and its
/// response kills the process (or its group or tree) on a deviation.
pub fn enforces_in_kernel(spec: &Spec) -> bool {
    let kills = |a: &ResponseAction| {
        matches!(
            a,
            ResponseAction::AgentKillProcess(_)
                | ResponseAction::AgentKillProcessGroup(_)
                | ResponseAction::AgentKillProcessTree(_)
        )
    };
    spec.enabled != Some(false)
        && spec.mode == Some(Mode::Enforce)
        && spec
            .response
            .as_ref()
            .is_some_and(|r| r.default.iter().chain(&r.actions).any(kills))
}

/// Compiles `spec`. Nodes are numbered from 1 in the order of the tree (depth first, as
/// written); with `previous` (what was compiled for the same pod before an edit), a node whose
/// `id` was there keeps its number and new nodes take numbers after the highest, so that the
/// processes already running as some node keep their place in the tree.
pub fn compile(spec: &Spec, previous: Option<&KernelPolicy>) -> Result<KernelPolicy, CompileError> {
    let mut out = KernelPolicy::default();
    let mut numbers: BTreeMap<String, u32> = previous
        .map(|p| {
            p.nodes
                .iter()
                .map(|n| (n.policy_node.clone(), n.node))
                .collect()
        })
        .unwrap_or_default();
    let mut next = numbers.values().max().copied().unwrap_or(0) + 1;
    let mut number_of = |id: &str| -> u32 {
        *numbers.entry(id.to_string()).or_insert_with(|| {
            next += 1;
            next - 1
        })
    };
    // The node each (parent number, kernel pattern) leads to: the kernel keys its tree by
    // these alone, so a later sibling with a pattern already there (told apart from the
    // earlier one by its name only) shares the earlier one's node.
    let mut edges: BTreeMap<(u32, String), (u32, String)> = BTreeMap::new();
    // Depth first, as written: (parent number, node).
    let mut stack: Vec<(u32, &ProcessNode)> =
        spec.process_policy.iter().rev().map(|n| (0, n)).collect();
    while let Some((parent, node)) = stack.pop() {
        let patterns = node
            .exe
            .iter()
            .map(|exe| {
                kernel_pattern(exe)
                    .map(|pattern| (exe, pattern))
                    .ok_or_else(|| CompileError::RelativeExe {
                        node: node.id.clone(),
                        exe: exe.clone(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let shared = patterns
            .iter()
            .find_map(|(_, pattern)| edges.get(&(parent, pattern.clone())));
        let number = match shared {
            Some((number, earlier)) => {
                out.widened.push(format!(
                    "process nodes {earlier} and {}: the same exe under the same parent, told \
                     apart by name only, are one node in the kernel, which allows the children \
                     of both",
                    node.id
                ));
                *number
            }
            None => number_of(&node.id),
        };
        for (exe, pattern) in patterns {
            if pattern != *exe {
                out.widened.push(format!(
                    "process node {}: exe {exe:?} is matched in the kernel as {pattern:?}",
                    node.id
                ));
            }
            if edges.contains_key(&(parent, pattern.clone())) {
                continue;
            }
            edges.insert((parent, pattern.clone()), (number, node.id.clone()));
            out.nodes.push(KernelNode {
                parent,
                exe: pattern,
                node: number,
                policy_node: node.id.clone(),
            });
        }
        for child in node.children.iter().flatten().rev() {
            stack.push((number, child));
        }
    }

    if spec.process_policy.iter().any(names_a_process) {
        out.widened.push(
            "process names are not checked in the kernel: a program rule allows its exe under \
             any name"
                .into(),
        );
    }
    out.widened.push(
        "loopback, and the pod's resolver on port 53, are reachable by every process in the \
         kernel"
            .into(),
    );

    for (index, egress) in spec.network_policy.egress.iter().enumerate() {
        if !egress.processes.is_empty() {
            out.widened.push(format!(
                "networkPolicy.egress[{index}]: allowed to every process of the pod, not only {}",
                egress.processes.join(", ")
            ));
        }
        let ports = port_ranges(index, &egress.ports)?;
        for peer in &egress.to {
            match peer {
                Peer::IpBlock(block) => {
                    let net = parse_net(&block.cidr).ok_or_else(|| CompileError::BadCidr {
                        index,
                        cidr: block.cidr.clone(),
                    })?;
                    if !block.except.is_empty() {
                        out.widened.push(format!(
                            "networkPolicy.egress[{index}]: {net} is allowed whole, except {} included",
                            block.except.join(", ")
                        ));
                    }
                    for (first_port, last_port) in &ports {
                        out.destinations.push(AllowedDestination {
                            network: net.to_string(),
                            first_port: *first_port,
                            last_port: *last_port,
                        });
                    }
                }
                Peer::DnsSelector(names) => {
                    for name in names {
                        let (name, widened) = kernel_dns_name(name);
                        if widened {
                            out.widened.push(format!(
                                "networkPolicy.egress[{index}]: DNS name pattern matched in the kernel as {name:?}"
                            ));
                        }
                        for (first_port, last_port) in &ports {
                            out.dns_names.push(AllowedDnsName {
                                name: name.clone(),
                                first_port: *first_port,
                                last_port: *last_port,
                            });
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Whether `node` or one of its children names its process (a name other than `*`).
fn names_a_process(node: &ProcessNode) -> bool {
    node.name != "*" || node.children.iter().flatten().any(names_a_process)
}

/// The pattern the kernel matches for a policy `exe`: the path itself, a prefix ending in `*`,
/// or, for any other glob, the prefix before its first metacharacter followed by `*` (which
/// allows more than the policy; the engine still reports the difference). `None` for a
/// relative path.
pub fn kernel_pattern(exe: &str) -> Option<String> {
    if !exe.starts_with('/') && !exe.starts_with('*') {
        return None;
    }
    let first_meta = exe.find(['*', '?', '[']);
    Some(match first_meta {
        None => exe.to_string(),
        Some(i) if i == exe.len() - 1 && exe.ends_with('*') => exe.to_string(),
        Some(i) => format!("{}*", &exe[..i]),
    })
}

/// The kernel matches exact names and `*.domain`; any other pattern becomes the widest
/// `*.domain` after its last metacharacter (or `*`). Returns (pattern, widened).
fn kernel_dns_name(name: &str) -> (String, bool) {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let meta = |s: &str| s.contains(['*', '?', '[']);
    if !meta(&name) || (name.starts_with("*.") && !meta(&name[2..])) || name == "*" {
        return (name, false);
    }
    let last = name.rfind(['*', '?', '[']).unwrap_or(0);
    match name[last..].find('.') {
        Some(dot) if !meta(&name[last + dot + 1..]) && last + dot + 1 < name.len() => {
            (format!("*.{}", &name[last + dot + 1..]), true)
        }
        _ => ("*".to_string(), true),
    }
}

fn parse_net(cidr: &str) -> Option<IpNet> {
    cidr.parse()
        .ok()
        .or_else(|| cidr.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

/// Port ranges of an egress rule; none listed means every port.
fn port_ranges(index: usize, ports: &[PortSpec]) -> Result<Vec<(u16, u16)>, CompileError> {
    if ports.is_empty() {
        return Ok(vec![(0, u16::MAX)]);
    }
    ports
        .iter()
        .map(|p| {
            let bad = |port| CompileError::BadPort { index, port };
            let first = u16::try_from(p.port).map_err(|_| bad(p.port))?;
            let last = p.end_port.unwrap_or(p.port);
            let last = u16::try_from(last).map_err(|_| bad(last))?;
            Ok((first, last.max(first)))
        })
        .collect()
}

#[cfg(test)]
mod tests;
