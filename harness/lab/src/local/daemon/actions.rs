//! Response actions carried out by the daemon, on the processes of its pods only.

use std::path::PathBuf;
use std::sync::Arc;

use super::Daemon;
use super::pods::replace_pod;
use super::report::log;
use crate::local::cgroup;
use crate::local::protocol::action_text;
use crate::{LabAction, LabError};

/// A host pid belongs to the lab's pods when it is in one of their cgroups: the daemon never
/// kills anything else. The pod's cgroup, or the refusal of `action`.
fn pod_of_pid(daemon: &Daemon, pid: u32, action: &LabAction) -> Result<PathBuf, LabError> {
    let pods = daemon.pods.lock().unwrap_or_else(|e| e.into_inner());
    pods.iter()
        .find(|p| cgroup::pids_in_tree(&p.record.cgroup).contains(&pid))
        .map(|p| p.record.cgroup.clone())
        .ok_or_else(|| LabError::Action {
            action: action_text(action),
            reason: format!("process {pid} is not in a pod of this lab"),
        })
}

pub(super) async fn carry_out(daemon: &Arc<Daemon>, action: &LabAction) -> Result<(), LabError> {
    log(&format!("carry out {action:?}"));
    match action {
        LabAction::KillProcess { pid } => {
            let cgroup_path = pod_of_pid(daemon, *pid, action)?;
            cgroup::kill_in_tree(&cgroup_path, *pid)
        }
        LabAction::KillProcessTree { pid } => {
            let cgroup_path = pod_of_pid(daemon, *pid, action)?;
            let killed = cgroup::kill_process_tree_in(&cgroup_path, *pid)?;
            log(&format!("killed the process tree of {pid}: {killed:?}"));
            Ok(())
        }
        LabAction::KillProcessGroup { pid } => {
            let cgroup_path = pod_of_pid(daemon, *pid, action)?;
            // Only the group's members in this pod: the pod's first process shares its group
            // with the daemon, which must never be hit.
            let killed = cgroup::kill_group_in_tree(&cgroup_path, *pid)?;
            log(&format!("killed the process group of {pid}: {killed:?}"));
            Ok(())
        }
        LabAction::KillPod { namespace, name } => {
            let matches = daemon
                .pods
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .any(|p| &p.info.namespace == namespace && &p.info.name == name);
            if !matches {
                return Err(LabError::Action {
                    action: action_text(action),
                    reason: format!("no pod {namespace}/{name} in this lab"),
                });
            }
            let _guard = daemon.pod_lifecycle.lock().await;
            replace_pod(daemon).await
        }
    }
}
