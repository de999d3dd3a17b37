//! The daemon's pods: made (state recorded first, writable layer, cgroup, files, the sensor's
//! watch, the first process), reaped when their first process ends, and replaced.
#![allow(unsafe_code)] // waiting on a pod's pidfd with tokio (the AsyncFd owns it)

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::pod_files::write_pod_files;
use super::readiness::wait_ready;
use super::report::{Reporter, log};
use super::{Daemon, DaemonError};
use crate::local::cgroup;
use crate::local::cgroup_limits::CgroupLayout;
use crate::local::config::PodRuntime;
use crate::local::pod::{self, ExitStatus};
use crate::local::state::{PodRecord, ProcessRecord};
use crate::{IoContext, LabError, PodInfo};

/// A pod the daemon runs.
pub(super) struct RunningPod {
    pub(super) info: PodInfo,
    pub(super) record: PodRecord,
    /// Set when the first process exits.
    pub(super) exited: watch::Receiver<Option<ExitStatus>>,
}

/// Largest size of a pod's writable layer (tmpfs; only what is written uses memory).
const POD_LAYER_SIZE: &str = "4g";

/// A pod name suffix as Kubernetes makes them (5 characters of its safe alphabet).
fn pod_suffix() -> String {
    crate::local::manifest::kube_safe_hash(guardlab_host::random_hex(16).as_bytes(), 5)
}

pub(super) async fn create_pod(
    daemon: &Daemon,
    reporter: &Reporter,
) -> Result<RunningPod, LabError> {
    let config = &daemon.config;
    let template = &config.pod;
    let name = format!(
        "{}-{}-{}",
        template.deployment,
        template.template_hash,
        pod_suffix()
    );
    // The pod's cgroups: v2 under the lab's, and v1 where this host keeps a limited controller.
    let cgroup_name = format!("pod-{name}");
    let cgroups = CgroupLayout::of_this_process()?.pod_cgroups(
        &config.lab,
        &cgroup_name,
        &config.cgroup.join(&cgroup_name),
        &template.limits,
    );
    let record = PodRecord {
        name: name.clone(),
        cgroup: cgroups.v2.clone(),
        dir: config.lab_dir.join("pods").join(&name),
        root: None,
        v1_cgroups: cgroups.v1_dirs(),
    };
    daemon.recorder.update(|s| {
        s.pods.push(record.clone());
        for dir in cgroups.v1_lab_dirs() {
            if !s.v1_cgroups.contains(&dir) {
                s.v1_cgroups.push(dir);
            }
        }
    })?;
    std::fs::create_dir_all(&record.dir)
        .context(|| format!("creating {}", record.dir.display()))?;
    // The pod's writable layer lives on its own tmpfs: it is thrown away with the pod, and
    // removing it is an unmount instead of deleting every file pip wrote.
    daemon
        .recorder
        .update(|s| s.host_mounts.push(record.dir.clone()))?;
    nix::mount::mount(
        Some("guardlab-pod"),
        &record.dir,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
        Some(format!("mode=0700,size={}", POD_LAYER_SIZE).as_str()),
    )
    .map_err(std::io::Error::from)
    .context(|| {
        format!(
            "mounting the pod's writable layer on {}",
            record.dir.display()
        )
    })?;
    cgroups.create()?;

    let runtime: &PodRuntime = &config.runtime;
    let spec = runtime.container_spec(template, &record.dir, &name)?;
    write_pod_files(daemon, &spec, &name)?;
    reporter.detail(format!(
        "pod {}/{name}: {}",
        template.namespace,
        spec.argv.join(" ")
    ));

    let cgroup_id = cgroup::cgroup_id(&record.cgroup)?;
    let mut labels = template.labels.clone();
    labels.insert("pod-template-hash".into(), template.template_hash.clone());
    let mut info = PodInfo {
        namespace: template.namespace.clone(),
        name: name.clone(),
        labels,
        container_name: template.container_name.clone(),
        container_id: guardlab_host::random_hex(32),
        image: runtime.image.clone(),
        image_id: runtime.image_id.clone(),
        cgroup_path: Some(record.cgroup.clone()),
        cgroup_id: Some(cgroup_id),
        root_pid: None,
    };
    // Watch before the first process runs: its exec is the root of the pod's process tree.
    if let Some(sensor) = daemon
        .sensor
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_mut()
    {
        sensor.watch(&info, &template.namespace_labels)?;
    }

    let netns_fd = daemon.network.pod.raw_fd();
    let recorder_state = &daemon.recorder;
    let pod_name = name.clone();
    // The clone runs on this thread: the child is a copy of it alone.
    let spawned = tokio::task::block_in_place(|| {
        pod::spawn(&spec, &cgroups, netns_fd, |pid| {
            recorder_state.update(|s| {
                if let Some(p) = s.pods.iter_mut().find(|p| p.name == pod_name) {
                    p.root = ProcessRecord::of(pid);
                }
            })
        })
    });
    let process = match spawned {
        Ok(process) => process,
        Err(e) => {
            if let Some(sensor) = daemon
                .sensor
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_mut()
            {
                sensor.unwatch(&info);
            }
            return Err(e);
        }
    };
    info.root_pid = Some(process.pid);
    let record = daemon
        .recorder
        .snapshot()
        .pods
        .into_iter()
        .find(|p| p.name == name)
        .unwrap_or(record);
    // Reap the first process when it exits, and say so.
    let (exit_tx, exit_rx) = watch::channel(None);
    // SAFETY: the AsyncFd owns the pidfd and it stays open for as long as it is registered.
    let pidfd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(
            process.pidfd,
            tokio::io::Interest::READABLE,
        )
    }
    .map_err(|e| e.into_parts().1)
    .context(|| "watching the pod's first process")?;
    let pid = process.pid;
    tokio::spawn(async move {
        let _ = pidfd.readable().await;
        let status = pod::wait_pidfd(pidfd.get_ref());
        log(&format!("pod process {pid} ended: {status:?}"));
        let _ = exit_tx.send(Some(status.unwrap_or(ExitStatus::Code(-1))));
    });
    Ok(RunningPod {
        info,
        record,
        exited: exit_rx,
    })
}

/// Remove the current pod (all its processes, its cgroup, its writable layer) and start a new
/// one. Called with `pod_lifecycle` held.
pub(super) async fn replace_pod(daemon: &Arc<Daemon>) -> Result<(), LabError> {
    let old = daemon.pods.lock().unwrap_or_else(|e| e.into_inner()).pop();
    if let Some(old) = old {
        let cgroup_path = old.record.cgroup.clone();
        tokio::task::spawn_blocking(move || {
            cgroup::kill_tree(&cgroup_path, Duration::from_secs(20))
        })
        .await
        .map_err(DaemonError::Task)??;
        let mut exited = old.exited.clone();
        while exited.borrow().is_none() {
            if exited.changed().await.is_err() {
                break;
            }
        }
        if let Some(sensor) = daemon
            .sensor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            sensor.unwatch(&old.info);
        }
        cgroup::remove_tree(&old.record.cgroup)?;
        for dir in &old.record.v1_cgroups {
            cgroup::remove_tree(dir)?;
        }
        let _ = nix::mount::umount2(&old.record.dir, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir_all(&old.record.dir);
        daemon
            .recorder
            .update(|s| s.host_mounts.retain(|m| m != &old.record.dir))?;
        daemon
            .recorder
            .update(|s| s.pods.retain(|p| p.name != old.record.name))?;
    }
    let pod = create_pod(daemon, &Reporter).await?;
    let exited = pod.exited.clone();
    daemon
        .pods
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(pod);
    wait_ready(daemon, exited).await?;
    let info = daemon.info();
    daemon.recorder.update(|s| {
        s.phase = "ready".into();
        s.info = Some(info);
    })
}
