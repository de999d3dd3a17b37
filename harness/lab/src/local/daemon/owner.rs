//! A lab that belongs to a run (`LocalLabOptions::owned_by`: a scenario run brought it up for
//! itself) goes when that run goes, however it goes. The state file names the owner (pid and
//! start time) before the daemon starts; the daemon opens a pidfd of it, which becomes
//! readable when the owner has ended: a clean exit, a crash, SIGKILL. Nothing is guessed from
//! silence or timeouts.
//!
//! Then the daemon removes the lab itself, as `lab down` would: it waits for a pod being
//! replaced, refuses every further change of the state file (so nothing new is made: every
//! resource is recorded before it is made), takes the lab's lock (a `lab down` running at the
//! same time goes first and ends the daemon), leaves the lab's cgroup (so that ending the lab's
//! processes does not end the daemon before it is done), removes everything, and exits.
#![allow(unsafe_code)] // waiting on the owner's pidfd with tokio (the AsyncFd owns it)

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use guardlab_host::Pidfd;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::report::log;
use super::{Daemon, DaemonError, Recorder};
use crate::local::state::{LabLock, OwnerRecord, ProcessRecord, StateFile};
use crate::local::{cgroup, teardown};
use crate::{IoContext, LabError, Progress};

/// Resolves once `owner` has ended (at once when it ended before the daemon looked).
pub(super) async fn ended(owner: &OwnerRecord) {
    let process = owner.process;
    let Some(pidfd) = Pidfd::open_checked(process.pid, process.start_time) else {
        return;
    };
    // SAFETY: the AsyncFd owns the pidfd, which stays open for as long as it is registered.
    match unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) } {
        Ok(pidfd) => {
            let _ = pidfd.readable().await;
        }
        Err(e) => {
            // The pidfd cannot be polled here: look at the same process (pid and start time,
            // which no other process has) every second instead.
            log(&format!(
                "cannot wait on the owner's pidfd ({}): checking it every second",
                e.into_parts().1
            ));
            while process.is_alive() {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// The daemon's progress while it removes its lab: into its log.
struct LogProgress;

impl Progress for LogProgress {
    fn phase(&self, what: &str) {
        log(what);
    }
    fn detail(&self, line: &str) {
        log(line);
    }
}

/// The owner ended: remove the lab (see the module documentation). Returns once the lab is
/// gone; the daemon then exits.
pub(super) async fn remove_lab(
    owner: &OwnerRecord,
    lab_dir: &Path,
    recorder: &Recorder,
    ready: &OnceLock<Arc<Daemon>>,
) -> Result<(), LabError> {
    log(&format!("the lab's owner {owner} ended: removing the lab"));
    // A pod being replaced is finished first, and none is replaced after this.
    let daemon = ready.get().cloned();
    let _no_more_pods = match &daemon {
        Some(daemon) => Some(daemon.pod_lifecycle.lock().await),
        None => None,
    };
    if let Some(daemon) = &daemon {
        log(&format!(
            "events so far: {}",
            super::counters::of(daemon).describe()
        ));
    }
    if let Err(e) = recorder.close(format!("removing: its owner {owner} ended")) {
        // Closed all the same; only `status` may not say why.
        log(&format!("recording the removal: {e}"));
    }
    let lab_dir: PathBuf = lab_dir.to_path_buf();
    let removed = tokio::task::spawn_blocking(move || -> Result<_, LabError> {
        let _lock = LabLock::acquire(&lab_dir)?;
        let me = ProcessRecord::this_process()?;
        // A `lab down` that went first removed the lab (and would have ended this daemon).
        let ours = StateFile::in_dir(&lab_dir)
            .load()?
            .is_some_and(|state| state.daemon == Some(me));
        if !ours {
            return Ok(None);
        }
        leave_lab_cgroup()?;
        let removed = teardown::teardown_by_daemon(&lab_dir, &LogProgress, me)?;
        // The labs' directory too, when this was the last lab.
        if let Some(labs) = lab_dir.parent() {
            let _ = std::fs::remove_dir(labs);
        }
        Ok(Some(removed))
    })
    .await
    .map_err(DaemonError::Task)??;
    match removed {
        Some(removed) => log(&removed.to_string()),
        None => log("the lab was removed meanwhile"),
    }
    Ok(())
}

/// Moves this process (all its threads) to the root of the cgroup v2 hierarchy, which takes
/// processes whatever controllers are enabled below it: then ending every process of the lab's
/// cgroup does not end the daemon, and the lab's cgroups can be removed.
fn leave_lab_cgroup() -> Result<(), LabError> {
    let procs = cgroup::cgroup2_mount()?.join("cgroup.procs");
    std::fs::write(&procs, std::process::id().to_string())
        .context(|| format!("leaving the lab's cgroup (writing {})", procs.display()))
}
