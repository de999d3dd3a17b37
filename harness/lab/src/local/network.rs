//! The lab network: the pod's namespace, joined by a veth pair to a lab "internet" namespace
//! that has no uplink. Lab hosts are addresses on the internet namespace's loopback.
//!
//! ```text
//!   pod netns                      internet netns (no other interface)
//!   eth0 198.18.0.2/24  <--veth-->  pod0 198.18.0.1/24
//!   default via 198.18.0.1         lo: 198.18.1.53 (DNS), 198.18.2.x (web, index, pool)
//! ```
//!
//! Nothing connects either namespace to the host's: a packet to a public address or to the
//! host reaches the internet namespace, finds no route and is answered "unreachable" there.

use std::net::Ipv4Addr;

use crate::LabError;
use crate::local::netns::Netns;
use crate::local::state::VethRecord;

pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const POD_ADDRESS: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const POD_PREFIX: u8 = 24;
/// The lab's resolver (`/etc/resolv.conf` of the pod).
pub const DNS_ADDRESS: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 53);
/// The lab's `sourceforge.net`.
pub const SOURCEFORGE_ADDRESS: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 10);
/// The lab's package index.
pub const INDEX_ADDRESS: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 20);
/// `fakeminingpool.example.com`.
pub const POOL_ADDRESS: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 30);
/// The pool's port: a bare `--url host` means Stratum on 3333 for the scenario's miner.
pub const POOL_PORT: u16 = 3333;
pub const POOL_HOST: &str = "fakeminingpool.example.com";

/// The pod's interface and its peer in the internet namespace.
pub const POD_INTERFACE: &str = "eth0";
pub const PEER_INTERFACE: &str = "pod0";

/// The two namespaces of a lab, configured.
#[derive(Debug)]
pub struct LabNetwork {
    pub internet: Netns,
    pub pod: Netns,
}

impl LabNetwork {
    /// Create both namespaces and the veth between them. `record` is called with the veth
    /// before it is made.
    pub fn create(
        host_addresses: &[Ipv4Addr],
        record_veth: &mut dyn FnMut(VethRecord) -> Result<(), LabError>,
    ) -> Result<LabNetwork, LabError> {
        let internet = Netns::create("internet")?;
        let pod = Netns::create("pod")?;
        record_veth(VethRecord {
            name: POD_INTERFACE.into(),
            peer: PEER_INTERFACE.into(),
        })?;
        // Made inside the pod's namespace with its peer created straight in the internet
        // namespace: no end ever exists in the host's namespace.
        let internet_tid = internet.tid().to_string();
        pod.ip(&[
            "link",
            "add",
            "name",
            POD_INTERFACE,
            "type",
            "veth",
            "peer",
            "name",
            PEER_INTERFACE,
            "netns",
            &internet_tid,
        ])
        .map_err(veth_error)?;

        for ns in [&pod, &internet] {
            ns.ip(&["link", "set", "lo", "up"])?;
        }
        // No IPv6 on the lab link: the lab speaks IPv4 only and stays quiet. A kernel without
        // IPv6 (no such knob) has none to turn off.
        pod.sysctl_if_present(&format!("net/ipv6/conf/{POD_INTERFACE}/disable_ipv6"), "1")?;
        internet.sysctl_if_present(&format!("net/ipv6/conf/{PEER_INTERFACE}/disable_ipv6"), "1")?;
        pod.ip(&[
            "addr",
            "add",
            &format!("{POD_ADDRESS}/{POD_PREFIX}"),
            "dev",
            POD_INTERFACE,
        ])?;
        pod.ip(&["link", "set", POD_INTERFACE, "up"])?;
        pod.ip(&["route", "add", "default", "via", &GATEWAY.to_string()])?;
        internet.ip(&[
            "addr",
            "add",
            &format!("{GATEWAY}/{POD_PREFIX}"),
            "dev",
            PEER_INTERFACE,
        ])?;
        internet.ip(&["link", "set", PEER_INTERFACE, "up"])?;
        for address in host_addresses {
            internet.ip(&["addr", "add", &format!("{address}/32"), "dev", "lo"])?;
        }
        // Forwarding on, with nowhere to forward to: a packet for anything but a lab host gets
        // an immediate "unreachable" instead of a silent drop.
        internet.sysctl("net/ipv4/ip_forward", "1")?;
        Ok(LabNetwork { internet, pod })
    }
}

/// The veth pair could not be made: when `ip` says the kernel does not know the device type,
/// the error says that the kernel lacks the veth driver and how to get it.
fn veth_error(error: LabError) -> LabError {
    let said_no_driver = matches!(
        &error,
        LabError::Command { output, .. } if output.iter().any(|line| lacks_device_type(line))
    );
    if said_no_driver {
        let text = error.to_string();
        LabError::Missing {
            what: "the kernel's veth driver".into(),
            hint: format!(
                "{text}; the lab joins its namespaces with a veth pair: the kernel needs \
                 CONFIG_VETH, built in or as a module loaded with `modprobe veth` (Debian \
                 package kmod)"
            ),
        }
    } else {
        error
    }
}

/// What iproute2 says when the kernel has no driver for a link type (newer and older wording).
fn lacks_device_type(ip_error: &str) -> bool {
    ip_error.contains("Unknown device type") || ip_error.contains("Operation not supported")
}

/// `/etc/resolv.conf` of the pod.
pub fn resolv_conf(namespace: &str) -> String {
    format!(
        "# Written by guardlab: the lab's own resolver.\nnameserver {DNS_ADDRESS}\nsearch {namespace}.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:1\n"
    )
}

/// `/etc/hosts` of the pod, as the kubelet writes it.
pub fn etc_hosts(hostname: &str) -> String {
    format!(
        "# Kubernetes-managed hosts file (written by guardlab).\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n{POD_ADDRESS}\t{hostname}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_lab_address_is_in_the_benchmark_range() {
        for address in [
            GATEWAY,
            POD_ADDRESS,
            DNS_ADDRESS,
            SOURCEFORGE_ADDRESS,
            INDEX_ADDRESS,
            POOL_ADDRESS,
        ] {
            let [a, b, ..] = address.octets();
            assert!(
                a == 198 && (b == 18 || b == 19),
                "{address} is outside 198.18.0.0/15"
            );
        }
    }

    #[test]
    fn a_kernel_without_veth_is_named_with_the_way_to_get_it() {
        let ip_failed = |said: &str| LabError::Command {
            command: "ip link add name eth0 type veth (in the pod namespace)".into(),
            status: "exit status: 2".into(),
            output: vec![said.to_string()],
        };
        for said in [
            "Error: Unknown device type.",
            "RTNETLINK answers: Operation not supported",
        ] {
            let failed = ip_failed(said);
            let ip_text = failed.to_string();
            let err = veth_error(failed).to_string();
            assert!(
                err.contains("veth driver")
                    && err.contains("CONFIG_VETH")
                    && err.contains("modprobe veth")
                    && err.contains("kmod")
                    && err.contains(&ip_text)
                    && err.contains(said),
                "{err}"
            );
        }
        let other = ip_failed("RTNETLINK answers: File exists");
        let other_text = other.to_string();
        assert_eq!(veth_error(other).to_string(), other_text);
    }

    #[test]
    fn the_pod_resolves_through_the_lab() {
        assert!(resolv_conf("cryptominer").contains("nameserver 198.18.1.53\n"));
        assert!(etc_hosts("jupyter-notebook-x-y").ends_with("198.18.0.2\tjupyter-notebook-x-y\n"));
    }
}
