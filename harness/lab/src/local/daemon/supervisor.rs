//! The pod's supervisor: the Deployment's part of the daemon, which replaces a pod whose first
//! process ended.

use std::sync::Arc;
use std::time::Duration;

use super::Daemon;
use super::pods::replace_pod;
use super::report::log;

/// Watch the pod: when its first process ends by itself, replace the pod as its Deployment
/// would, with a growing delay; give up after repeated quick failures.
pub(super) async fn supervise(daemon: Arc<Daemon>) {
    let mut failures: u32 = 0;
    loop {
        let mut exited = match daemon.pods.lock().unwrap_or_else(|e| e.into_inner()).last() {
            Some(pod) => pod.exited.clone(),
            None => return,
        };
        let started = tokio::time::Instant::now();
        while exited.borrow().is_none() {
            if exited.changed().await.is_err() {
                break;
            }
        }
        let status = *exited.borrow();
        // A replacement by `carry_out` holds the lock; wait for it and look again.
        let _guard = daemon.pod_lifecycle.lock().await;
        let current_exited = daemon
            .pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last()
            .map(|p| p.exited.borrow().is_some());
        if current_exited != Some(true) {
            continue; // Already replaced.
        }
        let how = status
            .map(|s| s.to_string())
            .unwrap_or_else(|| "unknown".into());
        *daemon.pod_exit.lock().unwrap_or_else(|e| e.into_inner()) = Some(how.clone());
        failures = if started.elapsed() < Duration::from_secs(60) {
            failures + 1
        } else {
            1
        };
        if failures > 5 {
            log(&format!("the pod keeps exiting ({how}); giving up"));
            let _ = daemon
                .recorder
                .update(|s| s.phase = format!("failed: the pod keeps exiting ({how})"));
            return;
        }
        let delay = Duration::from_secs(1 << failures.min(5));
        log(&format!(
            "the pod's first process ended ({how}); replacing the pod in {delay:?}"
        ));
        tokio::time::sleep(delay).await;
        if let Err(e) = replace_pod(&daemon).await {
            log(&format!("replacing the pod failed: {e}"));
        }
    }
}
