//! The local backend: the scenario's pod in Linux namespaces and a cgroup on this host, on a lab
//! network whose only "internet" is served by the lab itself.
//!
//! [`LocalLab::up`] first makes sure the host has what the lab needs ([`preflight`]: installed,
//! mounted or refused before anything of the lab exists), prepares what takes time or the
//! network (the pod image, the package index's wheels, the miner download), then starts the
//! lab daemon ([`daemon_main`]) detached, inside the lab's cgroup, and waits until the notebook
//! answers (`start`). The daemon owns the running lab; `LocalLab` talks to it over its control
//! socket (`client`). [`LocalLab::down`] kills the lab's cgroup and removes everything its
//! state file records ([`teardown`]).
//!
//! A lab either belongs to a run ([`LocalLabOptions::owned_by`]: a scenario run brings up a lab
//! for itself) and goes when that run's process ends, however it ends (its daemon watches the
//! owner through a pidfd and removes the lab), or it has no owner (`lab up`, `--keep-lab`) and
//! stays until `down`. [`LocalLab::inspect`] says which, and what a killed lab left behind.
//!
//! ```no_run
//! # async fn demo() -> Result<(), guardlab_lab::LabError> {
//! use guardlab_lab::{Lab, LocalLab, LocalLabOptions, NoProgress};
//! let mut lab = LocalLab::new(LocalLabOptions::new("cryptominer"))?;
//! let info = lab.up(&NoProgress).await?;
//! println!("open {}", info.notebook_url); // http://127.0.0.1:1234/
//! let mut events = lab.events().await?;
//! # let _ = events.recv().await;
//! lab.down(&NoProgress).await?;
//! # Ok(()) }
//! ```

pub mod cgroup;
pub mod cgroup_limits;
mod client;
pub mod config;
pub mod daemon;
pub mod events;
mod exe_paths;
pub mod manifest;
pub mod manifest_limits;
pub mod netns;
pub mod network;
mod package_index;
pub mod pod;
pub mod preflight;
pub mod protocol;
pub mod seccomp;
pub mod sensor;
pub mod services;
mod start;
pub mod state;
pub mod teardown;

use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use guardlab_events::Event;
use tokio::sync::mpsc;

pub use config::{DaemonConfig, PodRuntime, ServicesConfig};
pub use daemon::{DaemonOptions, daemon_main};
pub use protocol::{DaemonStatus, LabCounters, Visitors};
pub use state::OwnerRecord;
pub use teardown::Removed;

use crate::{
    Backend, Enforcement, IoContext, Lab, LabAction, LabError, LabInfo, PodInfo, Progress,
};
use protocol::Request;
use state::{LabLock, LabState, ProcessRecord, StateFile};

/// The port a learner opens, as in the original lab.
pub const DEFAULT_NOTEBOOK_PORT: u16 = 1234;

/// Where the pod's image comes from.
#[derive(Clone, Debug)]
pub enum ImageSource {
    /// Built from the recipe in this directory (`manifests/image`), cached by its hash.
    Recipe {
        recipe_dir: PathBuf,
        cache_dir: PathBuf,
        /// debootstrap's and pip's downloads; `None`: `<cache_dir>/downloads`. Another cache's
        /// downloads make a build into an empty cache download nothing they have.
        downloads_dir: Option<PathBuf>,
    },
    /// An image root filesystem already on disk (tests, or a custom image).
    Prebuilt(PodRuntime),
}

/// How to run a local lab.
#[derive(Clone, Debug)]
pub struct LocalLabOptions {
    /// The lab's name: its directory, its cgroup. Lowercase letters, digits and `-`.
    pub lab: String,
    /// Where labs keep their state (`/run/guardlab`).
    pub state_dir: PathBuf,
    /// The manifests directory (`manifests/`): the Deployment is read from it.
    pub manifests_dir: PathBuf,
    pub image: ImageSource,
    /// Host address forwarded to the notebook; must be a loopback address. `None`: no forward.
    pub forward: Option<SocketAddr>,
    /// Serve the lab's internet (DNS, sourceforge.net, package index, mining pool).
    pub services: bool,
    /// Cache of the lab CA and the package index's wheels.
    pub services_cache_dir: PathBuf,
    /// The file served as the scenario's miner download; by default `minerd` next to this
    /// program (or one directory up, for test binaries) packed as pooler's release tarball.
    pub miner_tarball: Option<PathBuf>,
    /// Run the eBPF sensor on the lab's pod.
    pub sensor: bool,
    /// Program and arguments that run [`daemon_main`]; `--lab-dir <dir>` is appended. By default
    /// this program with `lab daemon` (the hidden subcommand of `guardlab`).
    pub daemon_command: Vec<OsString>,
    /// How long the notebook may take to answer once the pod started.
    pub ready_timeout: Duration,
    /// The host, as `up` gets what the lab needs from it (see [`preflight`]): whether it may
    /// install, mount and load modules (`--no-install` refuses), where it finds programs and
    /// records its changes. By default installs follow `GUARDLAB_NO_INSTALL`.
    pub host: guardlab_host::Host,
    /// `Some(what)`: the lab belongs to the process that brings it up (`what` names it for
    /// `lab status`, e.g. `guardlab scenario cryptominer`). When that process ends, however it
    /// ends (SIGKILL too), the lab's daemon removes the lab; its `up` never reuses a lab that is
    /// there, it starts afresh. `None` (`lab up`, `scenario --keep-lab`): the lab has no owner
    /// and stays until `down`.
    pub owned_by: Option<String>,
}

impl LocalLabOptions {
    /// The defaults for a lab named `lab`: image from `manifests/image`, notebook on
    /// 127.0.0.1:1234, services and sensor on.
    pub fn new(lab: &str) -> LocalLabOptions {
        let manifests_dir = manifest::default_manifests_dir();
        let image_cache = crate::image::default_cache_dir();
        let services_cache_dir = image_cache
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/var/cache/guardlab"));
        let exe = std::env::current_exe()
            .map(PathBuf::into_os_string)
            .unwrap_or_else(|_| "guardlab".into());
        LocalLabOptions {
            lab: lab.to_string(),
            state_dir: PathBuf::from(crate::image::DEFAULT_LABS_DIR),
            image: ImageSource::Recipe {
                recipe_dir: manifests_dir.join("image"),
                cache_dir: image_cache,
                downloads_dir: None,
            },
            manifests_dir,
            forward: Some(SocketAddr::from((
                Ipv4Addr::LOCALHOST,
                DEFAULT_NOTEBOOK_PORT,
            ))),
            services: true,
            services_cache_dir,
            miner_tarball: None,
            sensor: true,
            daemon_command: vec![exe, "lab".into(), "daemon".into()],
            ready_timeout: Duration::from_secs(120),
            host: guardlab_host::Host::new(false),
            owned_by: None,
        }
    }
}

/// The local backend.
pub struct LocalLab {
    options: LocalLabOptions,
    lab_dir: PathBuf,
    /// The daemon, when this process started it (so that `down` reaps it).
    daemon: Option<tokio::process::Child>,
}

impl LocalLab {
    pub fn new(options: LocalLabOptions) -> Result<LocalLab, LabError> {
        let name = &options.lab;
        let valid = !name.is_empty()
            && name.len() <= 40
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !name.starts_with('-');
        if !valid {
            return Err(bad_option(
                "lab",
                format!(
                    "lab name {name:?}: use 1 to 40 lowercase letters, digits and '-' (not first)"
                ),
            ));
        }
        if let Some(address) = options.forward
            && !address.ip().is_loopback()
        {
            return Err(bad_option(
                "forward",
                format!(
                    "the notebook is forwarded to loopback only, never to {address}: use 127.0.0.1"
                ),
            ));
        }
        if options.daemon_command.is_empty() {
            return Err(bad_option("daemon_command", "the daemon command is empty"));
        }
        // Absolute, so that what the state file records (the image, the image registration)
        // means the same to a `down` or a prune run from another directory.
        let absolute = |path: &Path, what: &str| {
            std::path::absolute(path).context(|| format!("{what} {}", path.display()))
        };
        let mut options = options;
        options.state_dir = absolute(&options.state_dir, "the state directory")?;
        if let ImageSource::Recipe { cache_dir, .. } = &mut options.image {
            *cache_dir = absolute(cache_dir, "the image cache")?;
        }
        let lab_dir = options.state_dir.join(&options.lab);
        Ok(LocalLab {
            options,
            lab_dir,
            daemon: None,
        })
    }

    pub fn options(&self) -> &LocalLabOptions {
        &self.options
    }

    /// The lab's directory (state file, config, control socket, logs, pod layers).
    pub fn lab_dir(&self) -> &Path {
        &self.lab_dir
    }

    /// The state file as it is now (`None`: the lab is down).
    pub fn state(&self) -> Result<Option<LabState>, LabError> {
        StateFile::in_dir(&self.lab_dir).load()
    }

    fn require_root() -> Result<(), LabError> {
        if !nix::unistd::Uid::effective().is_root() {
            return Err(LabError::Missing {
                what: "root".into(),
                hint: "the local lab makes namespaces, cgroups and mounts: run it with sudo".into(),
            });
        }
        Ok(())
    }
}

/// A bad value of [`LocalLabOptions`]: the field and what to do.
fn bad_option(field: &str, message: impl Into<String>) -> LabError {
    LabError::Input {
        file: None,
        line: None,
        field: Some(field.to_string()),
        message: message.into(),
    }
}

/// `up` could not bring the lab up (part "the lab did not come up" of a [`LabError`]): why,
/// with what the daemon logged last, or with why removing the lab failed too.
#[derive(Debug, thiserror::Error)]
pub enum UpFailed {
    /// The lab was removed again; the daemon's log says what it did last.
    #[error("{error}\nlab daemon log (last lines):\n  {}", daemon_log.join("\n  "))]
    WithDaemonLog {
        error: Box<LabError>,
        daemon_log: Vec<String>,
    },
    /// Removing the half-made lab failed as well: `lab down` has to try again.
    #[error("{error}; and removing the lab failed too: {teardown}")]
    NotRemoved {
        error: Box<LabError>,
        teardown: Box<LabError>,
    },
}

impl From<UpFailed> for LabError {
    fn from(error: UpFailed) -> LabError {
        LabError::backend("the lab did not come up", error)
    }
}

/// A lab that belongs to another run that is still going (part "the lab" of a [`LabError`]).
#[derive(Debug, thiserror::Error)]
#[error(
    "lab {lab} belongs to {owner}, which is still running: it removes the lab when it ends \
     (wait for it, or stop it)"
)]
pub struct InUse {
    pub lab: String,
    pub owner: OwnerRecord,
}

impl From<InUse> for LabError {
    fn from(error: InUse) -> LabError {
        LabError::backend("the lab", error)
    }
}

/// What there is of a lab now ([`LocalLab::inspect`]).
#[derive(Debug)]
pub enum LabCondition {
    /// No state file: nothing of the lab exists.
    Down,
    /// Its daemon answers: the phase says whether the lab is up (`ready`), coming up
    /// (`preparing`, `starting`), broken (`failed: ...`) or being removed by its daemon
    /// (`removing: ...`, its owner ended); `owner` whether it belongs to a run.
    Running(Box<DaemonStatus>),
    /// A state file and no daemon that answers: a lab whose daemon was killed or did not
    /// start, left behind. `lab down` (or the next `up`) removes it.
    LeftBehind {
        state: Box<LabState>,
        /// Lab processes still running (pods without their daemon).
        processes: usize,
        /// Recorded mounts still mounted in the host's mount namespace.
        mounts: usize,
    },
}

/// Why an earlier lab is being removed, for the phase line of `up`: who left it, and how.
pub fn leftover_phrase(state: &LabState) -> String {
    let daemon_alive = state.daemon.is_some_and(|d| d.is_alive());
    match &state.owner {
        Some(owner) if !owner.process.is_alive() => format!(
            "lab {} was left behind by {owner}, which ended before it was removed: removing it",
            state.lab
        ),
        _ if !daemon_alive => format!(
            "lab {} was left half made (its daemon is not running): removing what is left",
            state.lab
        ),
        _ => format!("removing lab {}, to start afresh", state.lab),
    }
}

/// Run blocking work from async code without stalling a multi-threaded runtime.
fn blocking<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

/// Progress that goes both to the caller and nowhere else; used to keep `down` quiet inside `up`.
struct Quiet;

impl Progress for Quiet {
    fn phase(&self, _: &str) {}
    fn detail(&self, _: &str) {}
}

impl Lab for LocalLab {
    fn backend(&self) -> Backend {
        Backend::Local
    }

    async fn up(&mut self, progress: &dyn Progress) -> Result<LabInfo, LabError> {
        LocalLab::require_root()?;
        // Before anything of the lab exists: a refusal leaves nothing behind.
        let host = blocking(|| self.preflight(progress))?;
        std::fs::create_dir_all(&self.lab_dir)
            .context(|| format!("creating {}", self.lab_dir.display()))?;
        let _ = std::fs::set_permissions(
            &self.options.state_dir,
            std::fs::Permissions::from_mode(0o755),
        );
        let _ = std::fs::set_permissions(&self.lab_dir, std::fs::Permissions::from_mode(0o700));
        let lock = LabLock::acquire(&self.lab_dir)?;

        if let Some(owner) = self.in_use_by_another()? {
            return Err(InUse {
                lab: self.options.lab.clone(),
                owner,
            }
            .into());
        }
        if let Some(state) = self.state()? {
            let alive = state.daemon.is_some_and(|d| d.is_alive());
            // An owned lab is only ever its owner's; an owned `up` starts afresh.
            let reusable = alive && state.owner.is_none() && self.options.owned_by.is_none();
            if reusable {
                // Up already, or coming up (another `up` was killed half-way): wait for it.
                let deadline = tokio::time::Instant::now()
                    + self.options.ready_timeout
                    + Duration::from_secs(60);
                loop {
                    match self.daemon_status().await {
                        Ok(Some(status)) if status.phase == "ready" => {
                            progress.phase("the lab is already up");
                            return Ok(status.info);
                        }
                        Ok(Some(status))
                            if status.phase.starts_with("failed")
                                || status.phase.starts_with("removing")
                                || status.phase == "stopped" =>
                        {
                            break;
                        }
                        _ if !self.daemon_alive()? => break,
                        _ if tokio::time::Instant::now() > deadline => break,
                        _ => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                }
            }
            progress.phase(&leftover_phrase(&state));
            teardown::teardown(&self.lab_dir, progress)?;
            std::fs::create_dir_all(&self.lab_dir)
                .context(|| format!("creating {}", self.lab_dir.display()))?;
        }
        // The teardown removed the directory and with it the lock file: lock again.
        drop(lock);
        let _lock = LabLock::acquire(&self.lab_dir)?;

        match self.start(&host, progress).await {
            Ok(info) => Ok(info),
            Err(error) => {
                // Leave nothing behind; the daemon's log goes into the error.
                let log = std::fs::read_to_string(self.lab_dir.join(crate::lab_files::DAEMON_LOG))
                    .unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                let daemon_log: Vec<String> = lines[lines.len().saturating_sub(20)..]
                    .iter()
                    .map(|line| line.to_string())
                    .collect();
                if let Err(teardown) = blocking(|| teardown::teardown(&self.lab_dir, &Quiet)) {
                    return Err(UpFailed::NotRemoved {
                        error: Box::new(error),
                        teardown: Box::new(teardown),
                    }
                    .into());
                }
                self.reap_daemon().await;
                if daemon_log.is_empty() {
                    Err(error)
                } else {
                    Err(UpFailed::WithDaemonLog {
                        error: Box::new(error),
                        daemon_log,
                    }
                    .into())
                }
            }
        }
    }

    async fn status(&self) -> Result<Option<LabInfo>, LabError> {
        Ok(self
            .daemon_status()
            .await?
            .filter(|s| s.phase == "ready")
            .map(|s| s.info))
    }

    async fn down(&mut self, progress: &dyn Progress) -> Result<(), LabError> {
        self.take_down(progress).await.map(|_| ())
    }

    async fn events(&mut self) -> Result<mpsc::Receiver<Event>, LabError> {
        self.event_stream(true).await
    }

    async fn carry_out(&mut self, action: &LabAction) -> Result<(), LabError> {
        let (reply, _, _) = self
            .exchange(&Request::CarryOut {
                action: action.clone(),
            })
            .await?;
        if reply.ok {
            Ok(())
        } else {
            // The daemon answers why; the action is named here, as the caller knows it.
            Err(LabError::Action {
                action: protocol::action_text(action),
                reason: client::refusal(&reply),
            })
        }
    }

    async fn enforce(&mut self, pod: &PodInfo, enforcement: &Enforcement) -> Result<(), LabError> {
        self.request(&Request::Enforce {
            pod: pod.name.clone(),
            enforcement: enforcement.clone(),
        })
        .await
        .map(|_| ())
    }
}

impl LocalLab {
    /// [`Lab::down`], saying what it removed.
    pub async fn take_down(&mut self, progress: &dyn Progress) -> Result<Removed, LabError> {
        LocalLab::require_root()?;
        if !self.lab_dir.exists() {
            return Ok(Removed::default());
        }
        let _lock = LabLock::acquire(&self.lab_dir)?;
        let removed = blocking(|| teardown::teardown(&self.lab_dir, progress))?;
        self.reap_daemon().await;
        // The labs' directory too, when this was the last lab.
        let _ = std::fs::remove_dir(&self.options.state_dir);
        Ok(removed)
    }

    /// The run this lab belongs to, when that is another process and it still runs (the lab
    /// is its own: `up` refuses it).
    pub fn in_use_by_another(&self) -> Result<Option<OwnerRecord>, LabError> {
        let Some(state) = self.state()? else {
            return Ok(None);
        };
        let me = ProcessRecord::this_process()?;
        Ok(state
            .owner
            .filter(|owner| owner.process != me && owner.process.is_alive()))
    }

    /// What there is of the lab now: nothing, a daemon that answers (up, coming up, failed,
    /// being removed; owned or not), or what a killed lab left behind.
    pub async fn inspect(&self) -> Result<LabCondition, LabError> {
        if self.state()?.is_none() {
            return Ok(LabCondition::Down);
        }
        match self.request(&Request::Status).await {
            Ok((reply, _, _)) => match reply.status {
                Some(status) => Ok(LabCondition::Running(Box::new(status))),
                None => Err(protocol::ControlError::Closed.into()),
            },
            Err(e) if self.daemon_alive()? => Err(e),
            // No daemon: what is there now (its daemon may have just finished removing it).
            Err(_) => Ok(match self.state()? {
                None => LabCondition::Down,
                Some(state) => {
                    let processes = if state.cgroup.as_os_str().is_empty() {
                        0
                    } else {
                        cgroup::pids_in_tree(&state.cgroup).len()
                    };
                    let mounted = guardlab_host::mounts().unwrap_or_default();
                    let mounts = state
                        .host_mounts
                        .iter()
                        .filter(|m| mounted.iter().any(|info| &info.target == *m))
                        .count();
                    LabCondition::LeftBehind {
                        state: Box::new(state),
                        processes,
                        mounts,
                    }
                }
            }),
        }
    }

    /// Reap the daemon if this process started it and it has ended (no zombie left behind).
    async fn reap_daemon(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
        }
    }
}
