//! The sensor in the daemon (`guardlab-sensor`): loaded once per lab, watching the lab's pod
//! cgroups, its events fanned out to the daemon's clients. Its programs and links are held by
//! the daemon's file descriptors only (nothing is pinned), so they go away with the daemon,
//! also when it is killed.

use std::collections::BTreeMap;
use std::path::PathBuf;

use guardlab_events::ContainerInfo;
use guardlab_sensor::{
    AllowedDestination, AllowedDnsName, ExecRule, IpNet, KernelPolicy, Sensor, SensorConfig,
};
use std::sync::Arc;

use crate::local::events::EventBus;

use crate::local::exe_paths::kernel_patterns;
use crate::local::network::DNS_ADDRESS;
use crate::{Enforcement, LabError, PodInfo};

fn sensor_error(e: guardlab_sensor::SensorError) -> LabError {
    LabError::backend("the sensor", e)
}

/// A pod the sensor cannot watch or enforce on (part "the sensor" of a [`LabError`]).
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The pod has no cgroup on this host.
    #[error("pod {pod} has no cgroup to watch")]
    NoCgroup { pod: String },
    /// The sensor does not watch the pod.
    #[error("pod {pod} is not watched by the sensor")]
    NotWatched { pod: String },
}

impl From<WatchError> for LabError {
    fn from(error: WatchError) -> LabError {
        LabError::backend("the sensor", error)
    }
}

pub struct SensorHandle {
    sensor: Sensor,
    /// Pod name -> (cgroup id, cgroup directory).
    watched: BTreeMap<String, (u64, PathBuf)>,
}

/// Load the sensor; its events go to `events` (and from there to every client).
pub fn start(events: Arc<EventBus>) -> Result<SensorHandle, LabError> {
    let mut sensor = Sensor::start(SensorConfig::default()).map_err(sensor_error)?;
    let mut stream = sensor.events().map_err(sensor_error)?;
    tokio::spawn(async move {
        while let Some(event) = stream.recv().await {
            events.publish(event);
        }
    });
    Ok(SensorHandle {
        sensor,
        watched: BTreeMap::new(),
    })
}

impl SensorHandle {
    pub fn program_ids(&self) -> Vec<u32> {
        self.sensor.program_ids().to_vec()
    }

    /// What the sensor delivered and lost so far.
    pub fn stats(&self) -> guardlab_sensor::SensorStats {
        self.sensor.stats()
    }

    /// Nothing is pinned in bpffs.
    pub fn pins(&self) -> Vec<PathBuf> {
        Vec::new()
    }

    /// Start watching a pod's cgroup (before its first process runs, so its exec is seen).
    pub fn watch(
        &mut self,
        pod: &PodInfo,
        namespace_labels: &BTreeMap<String, String>,
    ) -> Result<(), LabError> {
        let Some(cgroup) = &pod.cgroup_path else {
            return Err(WatchError::NoCgroup {
                pod: pod.name.clone(),
            }
            .into());
        };
        let info = ContainerInfo {
            cgroup_id: pod.cgroup_id.unwrap_or(0),
            container_id: pod.container_id.clone(),
            container_name: pod.container_name.clone(),
            image: pod.image.clone(),
            image_id: pod.image_id.clone(),
            namespace: pod.namespace.clone(),
            namespace_labels: namespace_labels.clone(),
            pod_name: pod.name.clone(),
            pod_labels: pod.labels.clone(),
            machine: nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        let id = self.sensor.watch(cgroup, info).map_err(sensor_error)?;
        self.watched.insert(pod.name.clone(), (id, cgroup.clone()));
        Ok(())
    }

    pub fn unwatch(&mut self, pod: &PodInfo) {
        if let Some((id, _)) = self.watched.remove(&pod.name) {
            let _ = self.sensor.unwatch(id);
        }
    }

    /// Apply a policy's enforcement to a pod.
    pub fn enforce(&mut self, pod: &str, enforcement: &Enforcement) -> Result<(), LabError> {
        let Some((id, cgroup)) = self.watched.get(pod).cloned() else {
            return Err(WatchError::NotWatched {
                pod: pod.to_string(),
            }
            .into());
        };
        if let Some(policy) = &enforcement.policy {
            let policy = kernel_policy(policy, &cgroup)?;
            return self
                .sensor
                .set_kernel_policy(id, Some(policy))
                .map_err(sensor_error);
        }
        self.sensor
            .set_kernel_policy(id, None)
            .map_err(sensor_error)?;
        let destinations = match &enforcement.destinations {
            None => None,
            Some(list) => Some(destinations(list, "enforcement.destinations")?),
        };
        self.sensor
            .set_exec_allowlist(id, enforcement.executables.clone())
            .map_err(sensor_error)?;
        self.sensor
            .set_connect_allowlist(id, destinations)
            .map_err(sensor_error)?;
        Ok(())
    }
}

fn destinations(
    list: &[crate::AllowedDestination],
    field: &str,
) -> Result<Vec<AllowedDestination>, LabError> {
    list.iter()
        .map(|d| {
            let net: IpNet = d
                .network
                .parse()
                .or_else(|_| d.network.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| LabError::Input {
                    file: None,
                    line: None,
                    field: Some(field.into()),
                    message: format!(
                        "allowed destination {:?}: not an address or CIDR network",
                        d.network
                    ),
                })?;
            Ok(AllowedDestination::new(net, d.first_port..=d.last_port))
        })
        .collect()
}

/// The pod's root as its processes see it (`/proc/PID/root` of one of them), to resolve a
/// policy's executables the way the kernel reports them. `None` when the pod runs nothing.
fn pod_root(cgroup: &std::path::Path) -> Option<PathBuf> {
    let procs = std::fs::read_to_string(cgroup.join("cgroup.procs")).ok()?;
    let pid: u32 = procs.lines().next()?.trim().parse().ok()?;
    Some(PathBuf::from(format!("/proc/{pid}/root")))
}

/// What the sensor enforces for a compiled policy: its executables also as resolved in the
/// pod (both forms allowed), and the lab's resolver unless the policy names one.
fn kernel_policy(
    policy: &crate::KernelPolicy,
    cgroup: &std::path::Path,
) -> Result<KernelPolicy, LabError> {
    let root = pod_root(cgroup);
    let mut exec = Vec::new();
    for node in &policy.nodes {
        for exe in kernel_patterns(root.as_deref(), &node.exe) {
            exec.push(ExecRule {
                parent: node.parent,
                exe,
                node: node.node,
            });
        }
    }
    let resolver = match &policy.resolver {
        None => std::net::IpAddr::V4(DNS_ADDRESS),
        Some(text) => text.parse().map_err(|_| LabError::Input {
            file: None,
            line: None,
            field: Some("enforcement.policy.resolver".into()),
            message: format!("resolver {text:?}: not an IP address"),
        })?,
    };
    Ok(KernelPolicy {
        exec,
        destinations: destinations(&policy.destinations, "enforcement.policy.destinations")?,
        dns_names: policy
            .dns_names
            .iter()
            .map(|n| AllowedDnsName {
                name: n.name.clone(),
                ports: n.first_port..=n.last_port,
            })
            .collect(),
        resolver: Some(resolver),
    })
}
