//! kind's cluster configuration (`kind: Cluster`, `apiVersion: kind.x-k8s.io/v1alpha4`).
//!
//! Only the parts guardlab uses are modelled, and unknown fields are refused, so a typo in
//! `manifests/kind/cluster.yaml` fails here (with file and line) rather than being ignored by
//! kind or, worse, half-applied.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::manifests::ManifestError;

pub const KIND_API_VERSION: &str = "kind.x-k8s.io/v1alpha4";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KindCluster {
    pub kind: String,
    pub api_version: String,
    /// The cluster's name; `kind create cluster --name` overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networking: Option<Networking>,
    #[serde(default)]
    pub nodes: Vec<Node>,
    /// kubeadm and kubelet configuration patches (YAML documents), e.g. the kubelet's
    /// `podPidsLimit`, which the local backend reads too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kubeadm_config_patches: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Networking {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_server_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_server_port: Option<u16>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeRole {
    ControlPlane,
    Worker,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Node {
    pub role: NodeRole,
    /// The node image (kind's default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_mounts: Vec<Mount>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_port_mappings: Vec<PortMapping>,
}

/// A path of the machine mounted into a node container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Mount {
    pub host_path: String,
    pub container_path: String,
    #[serde(default)]
    pub read_only: bool,
    #[serde(default)]
    pub selinux_relabel: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub propagation: Option<MountPropagation>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MountPropagation {
    None,
    HostToContainer,
    Bidirectional,
}

/// A port of a node published on the machine (docker's `-p`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortMapping {
    pub container_port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<u16>,
    /// kind's default is 0.0.0.0, every interface of the machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<PortProtocol>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum PortProtocol {
    Tcp,
    Udp,
    Sctp,
}

impl KindCluster {
    /// Parse a cluster config; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<KindCluster, ManifestError> {
        let cluster: KindCluster = serde_yaml::from_str(text).map_err(|e| ManifestError {
            file: file.to_string(),
            line: e.location().map(|l| l.line()).unwrap_or(1),
            message: e.to_string(),
        })?;
        cluster
            .validate()
            .map_err(|(field, message)| ManifestError {
                file: file.to_string(),
                line: crate::manifests::line_of_key(text, 1, field),
                message,
            })?;
        Ok(cluster)
    }

    /// What kind would accept, plus guardlab's own rule: nothing listens beyond loopback.
    /// Errors name the field (for the line lookup) and say what is wrong.
    fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.kind != "Cluster" {
            return Err((
                "kind",
                format!("kind must be `Cluster`, not `{}`", self.kind),
            ));
        }
        if self.api_version != KIND_API_VERSION {
            return Err((
                "apiVersion",
                format!(
                    "apiVersion must be `{KIND_API_VERSION}`, not `{}`",
                    self.api_version
                ),
            ));
        }
        if !self.nodes.iter().any(|n| n.role == NodeRole::ControlPlane) {
            return Err((
                "nodes",
                "nodes: at least one node must have role control-plane".into(),
            ));
        }
        if let Some(address) = self
            .networking
            .as_ref()
            .and_then(|n| n.api_server_address.as_ref())
            && !is_loopback(address)
        {
            return Err((
                "apiServerAddress",
                format!("networking.apiServerAddress must be a loopback address, not `{address}`"),
            ));
        }
        for (i, node) in self.nodes.iter().enumerate() {
            for (j, mount) in node.extra_mounts.iter().enumerate() {
                if !mount.host_path.starts_with('/') || !mount.container_path.starts_with('/') {
                    return Err((
                        "extraMounts",
                        format!(
                            "nodes[{i}].extraMounts[{j}]: hostPath and containerPath must be absolute"
                        ),
                    ));
                }
            }
            for (j, mapping) in node.extra_port_mappings.iter().enumerate() {
                let address = mapping.listen_address.as_deref().unwrap_or("0.0.0.0");
                if !is_loopback(address) {
                    return Err((
                        "extraPortMappings",
                        format!(
                            "nodes[{i}].extraPortMappings[{j}].listenAddress must be a loopback \
                             address (kind's default is 0.0.0.0, every interface), not `{address}`"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Every mount of every node, with the node's index.
    pub fn mounts(&self) -> impl Iterator<Item = (usize, &Mount)> {
        self.nodes
            .iter()
            .enumerate()
            .flat_map(|(i, n)| n.extra_mounts.iter().map(move |m| (i, m)))
    }
}

fn is_loopback(address: &str) -> bool {
    address
        .parse::<IpAddr>()
        .map(|a| a.is_loopback())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifests::CLUSTER_CONFIG;

    #[test]
    fn the_shipped_cluster_config_parses_and_is_what_the_sensor_needs() {
        let cluster = KindCluster::parse(CLUSTER_CONFIG.path, CLUSTER_CONFIG.text).unwrap();
        assert_eq!(cluster.name.as_deref(), Some("guardlab"));
        assert_eq!(
            cluster
                .networking
                .as_ref()
                .unwrap()
                .api_server_address
                .as_deref(),
            Some("127.0.0.1")
        );
        for (i, node) in cluster.nodes.iter().enumerate() {
            let mounted = |path: &str| node.extra_mounts.iter().find(|m| m.container_path == path);
            let btf =
                mounted("/sys/kernel/btf").unwrap_or_else(|| panic!("node {i}: no BTF mount"));
            assert!(btf.read_only, "node {i}: BTF must be mounted read-only");
            assert_eq!(btf.host_path, "/sys/kernel/btf");
            // The sensor needs no tracefs, debugfs or bpffs (sensor/tests/no_kernel_filesystems.rs).
            for (_, m) in cluster.mounts() {
                for unneeded in ["/sys/fs/bpf", "/sys/kernel/tracing", "/sys/kernel/debug"] {
                    assert!(
                        !m.container_path.starts_with(unneeded)
                            && !m.host_path.starts_with(unneeded),
                        "node {i}: {m:?} mounts what the sensor does not need"
                    );
                }
            }
            // The node's own cgroup tree and /proc are what the sensor must see (see the file's
            // comments); the machine's would break the kubelet or expose the user's processes.
            for (_, m) in cluster.mounts() {
                assert!(!m.container_path.starts_with("/sys/fs/cgroup"), "{m:?}");
                assert!(!m.host_path.starts_with("/proc"), "{m:?}");
            }
            assert!(node.extra_port_mappings.is_empty());
        }
        // The pod's pids limit is the kubelet's; the local backend reads the same patch.
        assert!(
            cluster
                .kubeadm_config_patches
                .iter()
                .any(|p| p.contains("kind: KubeletConfiguration")
                    && p.contains("podPidsLimit: 1024")),
            "{:?}",
            cluster.kubeadm_config_patches
        );
    }

    #[test]
    fn unknown_fields_are_refused_with_their_line() {
        let text = "kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\nnodes:\n- role: control-plane\n  extraMounts:\n  - hostPath: /a\n    containerPath: /a\n    readonly: true\n";
        let err = KindCluster::parse("cluster.yaml", text).unwrap_err();
        assert_eq!(err.line, 8, "{err}");
        assert!(
            err.to_string().contains("unknown field `readonly`"),
            "{err}"
        );
        assert!(err.to_string().starts_with("cluster.yaml:8:"), "{err}");
    }

    #[test]
    fn wrong_kind_or_version_or_role_is_refused() {
        let base =
            "kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\nnodes:\n- role: control-plane\n";
        assert!(KindCluster::parse("c", base).is_ok());
        let err = KindCluster::parse("c", &base.replace("v1alpha4", "v1alpha3")).unwrap_err();
        assert!(err.message.contains("apiVersion must be"), "{err}");
        assert_eq!(err.line, 2);
        let err = KindCluster::parse("c", &base.replace("kind: Cluster", "kind: Pod")).unwrap_err();
        assert!(err.message.contains("kind must be `Cluster`"), "{err}");
        let err = KindCluster::parse("c", &base.replace("control-plane", "master")).unwrap_err();
        assert!(err.message.contains("unknown variant `master`"), "{err}");
        let err = KindCluster::parse("c", &base.replace("control-plane", "worker")).unwrap_err();
        assert!(err.message.contains("control-plane"), "{err}");
    }

    #[test]
    fn anything_listening_beyond_loopback_is_refused() {
        let base = "kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\nnodes:\n- role: control-plane\n  extraPortMappings:\n  - containerPort: 30000\n    hostPort: 1234\n";
        let err = KindCluster::parse("c", base).unwrap_err();
        assert!(err.message.contains("kind's default is 0.0.0.0"), "{err}");
        assert_eq!(err.line, 5);
        let ok = format!("{base}    listenAddress: 127.0.0.1\n");
        assert!(KindCluster::parse("c", &ok).is_ok());
        let err = KindCluster::parse(
            "c",
            "kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\nnetworking:\n  apiServerAddress: 0.0.0.0\nnodes:\n- role: control-plane\n",
        )
        .unwrap_err();
        assert!(
            err.message.contains("apiServerAddress must be a loopback"),
            "{err}"
        );
        assert_eq!(err.line, 4);
    }
}
