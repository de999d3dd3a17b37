//! The local backend: the scenario's pod in Linux namespaces and a cgroup on this host, on a lab
//! network whose only "internet" is served by the lab itself.
//!
//! [`LocalLab::up`] first makes sure the host has what the lab needs ([`preflight`]: installed,
//! mounted or refused before anything of the lab exists), prepares what takes time or the
//! network (the pod image, the package index's wheels, the miner download), then starts the lab daemon ([`daemon_main`]) detached, inside
//! the lab's cgroup, and waits until the notebook answers. The daemon owns the running lab;
//! [`LocalLab::down`] kills the lab's cgroup and removes everything its state file records.
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
pub mod config;
pub mod daemon;
pub mod events;
pub mod manifest;
pub mod netns;
pub mod network;
pub mod pod;
pub mod preflight;
pub mod protocol;
pub mod sensor;
pub mod services;
pub mod state;
pub mod teardown;

use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use guardlab_events::Event;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

pub use config::{DaemonConfig, PodRuntime, ServicesConfig};
pub use daemon::{DaemonOptions, daemon_main};
pub use protocol::{DaemonStatus, Visitors};

use crate::{Enforcement, Lab, LabAction, LabError, LabInfo, PodInfo, Progress};
use protocol::{Reply, Request, StartMessage};
use state::{LabLock, LabState, STATE_VERSION, StateFile};

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
            return Err(LabError::Failed(format!(
                "lab name {name:?}: use 1 to 40 lowercase letters, digits and '-' (not first)"
            )));
        }
        if let Some(address) = options.forward
            && !address.ip().is_loopback()
        {
            return Err(LabError::Failed(format!(
                "the notebook is forwarded to loopback only, never to {address}: use 127.0.0.1"
            )));
        }
        if options.daemon_command.is_empty() {
            return Err(LabError::Failed("the daemon command is empty".into()));
        }
        // Absolute, so that what the state file records (the image, the image registration)
        // means the same to a `down` or a prune run from another directory.
        let absolute = |path: &Path, what: &str| {
            std::path::absolute(path).map_err(|source| LabError::Io {
                context: format!("{what} {}", path.display()),
                source,
            })
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

    /// Everything the daemon says about the lab; `None` when it is down or its daemon is not
    /// running (see [`LocalLab::state`] for what is left).
    pub async fn daemon_status(&self) -> Result<Option<DaemonStatus>, LabError> {
        match self.request(&Request::Status).await {
            Ok((reply, _, _)) => Ok(reply.status),
            Err(_) if !self.daemon_alive()? => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Who reached the lab's services (web requests, DNS queries, pool clients).
    pub async fn visitors(&self) -> Result<Visitors, LabError> {
        let (reply, _, _) = self.request(&Request::Visitors).await?;
        Ok(reply.visitors.unwrap_or_default())
    }

    /// Events like [`Lab::events`], optionally without the replay of what came before.
    pub async fn event_stream(&self, replay: bool) -> Result<mpsc::Receiver<Event>, LabError> {
        let (_, reader, writer) = self.request(&Request::Events { replay }).await?;
        let (tx, rx) = mpsc::channel(65536);
        tokio::spawn(async move {
            // Holding the write half keeps the stream open; dropping it (when the receiver is
            // gone) tells the daemon to stop.
            let _writer = writer;
            let mut lines = reader.lines();
            let mut number = 1;
            while let Ok(Some(line)) = lines.next_line().await {
                number += 1;
                match guardlab_events::parse_line(&line, number) {
                    Ok(event) => {
                        if tx.send(event).await.is_err() {
                            return; // Dropping the reader closes the connection.
                        }
                    }
                    Err(e) => {
                        eprintln!("lab events: {e}");
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }

    fn socket_path(&self) -> PathBuf {
        self.lab_dir.join(state::SOCKET_FILE)
    }

    fn daemon_alive(&self) -> Result<bool, LabError> {
        Ok(self
            .state()?
            .and_then(|s| s.daemon)
            .is_some_and(|d| d.is_alive()))
    }

    /// One request to the daemon: its reply, and the connection for what follows.
    async fn request(
        &self,
        request: &Request,
    ) -> Result<
        (
            Reply,
            BufReader<tokio::net::unix::OwnedReadHalf>,
            tokio::net::unix::OwnedWriteHalf,
        ),
        LabError,
    > {
        let path = self.socket_path();
        let stream = UnixStream::connect(&path)
            .await
            .map_err(|source| LabError::Io {
                context: format!(
                    "connecting to the lab daemon at {} (is the lab up? `guardlab lab status`)",
                    path.display()
                ),
                source,
            })?;
        let (read, mut write) = stream.into_split();
        let mut line = serde_json::to_vec(request).map_err(|e| LabError::Failed(e.to_string()))?;
        line.push(b'\n');
        write
            .write_all(&line)
            .await
            .map_err(|source| LabError::Io {
                context: "talking to the lab daemon".into(),
                source,
            })?;
        let mut reader = BufReader::new(read);
        let mut answer = String::new();
        let n = tokio::time::timeout(Duration::from_secs(30), reader.read_line(&mut answer))
            .await
            .map_err(|_| LabError::Failed("the lab daemon did not answer within 30 s".into()))?
            .map_err(|source| LabError::Io {
                context: "reading the lab daemon's answer".into(),
                source,
            })?;
        if n == 0 {
            return Err(LabError::Failed(
                "the lab daemon closed the connection".into(),
            ));
        }
        let reply: Reply = serde_json::from_str(answer.trim())
            .map_err(|e| LabError::Failed(format!("the lab daemon's answer {answer:?}: {e}")))?;
        if !reply.ok {
            return Err(LabError::Failed(
                reply
                    .error
                    .unwrap_or_else(|| "the lab daemon refused".into()),
            ));
        }
        Ok((reply, reader, write))
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

    /// The pod's image, built or taken from the cache; `user` is registered in a cached image.
    fn resolve_image(
        &self,
        user: Option<&crate::image::ImageUser>,
        progress: &dyn Progress,
    ) -> Result<PodRuntime, LabError> {
        match &self.options.image {
            ImageSource::Prebuilt(runtime) => Ok(runtime.clone()),
            ImageSource::Recipe {
                recipe_dir,
                cache_dir,
                downloads_dir,
            } => {
                let mut cache = crate::image::ImageCache::new(cache_dir);
                if let Some(downloads) = downloads_dir {
                    cache.downloads = downloads.clone();
                }
                // Pruning after a build keeps the images registered labs use, and (for labs
                // started before labs registered) those recorded by the labs here and in the
                // default state directory.
                if !cache.labs_dirs.contains(&self.options.state_dir) {
                    cache.labs_dirs.push(self.options.state_dir.clone());
                }
                let built = blocking(|| {
                    crate::image::ensure_cached_image(recipe_dir, &cache, user, progress)
                })?;
                Ok(PodRuntime {
                    rootfs: built.rootfs,
                    image: built.image,
                    image_id: built.image_id,
                    env: built.config.env,
                    working_dir: Some(built.config.working_dir.display().to_string()),
                    uid: built.config.uid,
                    gid: built.config.gid,
                    entrypoint: Vec::new(),
                    cmd: Vec::new(),
                })
            }
        }
    }

    /// The image root filesystem the pod will run on, known before it is looked up or built.
    fn image_rootfs(&self) -> Result<PathBuf, LabError> {
        match &self.options.image {
            ImageSource::Prebuilt(runtime) => Ok(runtime.rootfs.clone()),
            ImageSource::Recipe {
                recipe_dir,
                cache_dir,
                ..
            } => Ok(cache_dir
                .join(crate::image::image_recipe_hash(recipe_dir)?)
                .join("rootfs")),
        }
    }

    /// The lab internet's inputs: CA directory, wheels (fetched once through the host's pip),
    /// miner tarball.
    fn prepare_services(
        &self,
        miner_build: Option<guardlab_minerd::MinerBuild>,
        progress: &dyn Progress,
    ) -> Result<ServicesConfig, LabError> {
        let cache = &self.options.services_cache_dir;
        let (lock_path, lock) = self.index_lock()?;
        let wheels_dir = Self::wheels_dir(cache, &lock);
        let missing = self.missing_wheels()?;
        if !missing.is_empty() {
            // The preflight made sure of them; a cache emptied since needs them again.
            self.options.host.ensure(
                &[
                    &guardlab_host::catalog::PYTHON3,
                    &guardlab_host::catalog::PIP,
                ],
                progress,
            )?;
            progress.phase(&format!(
                "fetching the wheels of the lab's package index ({}, pinned in {})",
                missing.join(", "),
                lock_path.display()
            ));
        }
        blocking(|| guardlab_services::fetch_wheels(&wheels_dir, &lock))
            .map_err(|e| LabError::Failed(format!("the lab's package index: {e}")))?;
        let miner_tarball = match &self.options.miner_tarball {
            Some(path) => path.clone(),
            None => {
                let minerd = match miner_build {
                    Some(build) => {
                        progress.phase("the miner's build (cargo): waiting for it to finish");
                        blocking(|| build.wait())
                    }
                    None => blocking(guardlab_minerd::ensure_minerd_binary),
                }
                .map_err(|e| LabError::Missing {
                    what: "the scenario's miner (minerd) for the lab's sourceforge.net".into(),
                    hint: e.to_string(),
                })?;
                let tarball = self.lab_dir.join(guardlab_minerd::RELEASE_TARBALL_NAME);
                let bytes = guardlab_minerd::pack_release_tarball(&minerd).map_err(|source| {
                    LabError::Io {
                        context: format!("packing {}", minerd.display()),
                        source,
                    }
                })?;
                std::fs::write(&tarball, bytes).map_err(|source| LabError::Io {
                    context: format!("writing {}", tarball.display()),
                    source,
                })?;
                tarball
            }
        };
        Ok(ServicesConfig {
            ca_dir: cache.join("lab-ca"),
            wheels_dir,
            miner_tarball,
        })
    }

    /// The baseline requirements the package index has no wheel for yet.
    /// The lock of the lab index's wheels (`manifests/image/index-wheels.lock`), and its path.
    fn index_lock(&self) -> Result<(PathBuf, guardlab_services::PythonLock), LabError> {
        let lock_path = self
            .options
            .manifests_dir
            .join("image")
            .join(guardlab_services::INDEX_LOCK_FILE);
        let lock = guardlab_services::PythonLock::read(&lock_path)
            .map_err(|e| LabError::Failed(format!("the lab's package index: {e}")))?;
        Ok((lock_path, lock))
    }

    /// Exactly the wheels the lock pins, in a directory of that lock's own: what an older lock
    /// (or a person) left elsewhere is never served.
    fn wheels_dir(cache: &Path, lock: &guardlab_services::PythonLock) -> PathBuf {
        cache.join("wheels").join(&lock.sha256[..12])
    }

    /// The pins of the lab index that have no wheel in the cache yet.
    fn missing_wheels(&self) -> Result<Vec<String>, LabError> {
        let (_, lock) = self.index_lock()?;
        guardlab_services::missing_pins(
            &Self::wheels_dir(&self.options.services_cache_dir, &lock),
            &lock,
        )
        .map_err(|e| LabError::Failed(format!("the lab's package index: {e}")))
    }

    /// Start the daemon and wait for its report. On failure everything is removed again.
    async fn start(
        &mut self,
        host: &preflight::HostReady,
        progress: &dyn Progress,
    ) -> Result<LabInfo, LabError> {
        let options = &self.options;
        let lab_cgroup = cgroup::lab_cgroup(&host.cgroup2, &options.lab);
        let image_rootfs = self.image_rootfs()?;
        // A cached image gets this lab's registration when it is looked up.
        let image_user = match &options.image {
            ImageSource::Recipe { .. } => {
                Some(crate::image::ImageUser::new(&options.lab, &self.lab_dir)?)
            }
            ImageSource::Prebuilt(_) => None,
        };
        let image_registration = image_user.as_ref().and_then(|user| {
            image_rootfs
                .parent()
                .map(|image_dir| user.registration_in(image_dir))
        });
        // The state file first: from here on `down` knows what to remove (the registration
        // too), and the registration never exists without its state file, which is what
        // makes a prune keep the image (see `image::cache`).
        let state_file = StateFile::in_dir(&self.lab_dir);
        let mut lab_state = LabState {
            version: STATE_VERSION,
            lab: options.lab.clone(),
            cgroup: lab_cgroup.clone(),
            image_rootfs: Some(image_rootfs),
            image_registration,
            phase: "preparing".into(),
            ..Default::default()
        };
        state_file.save(&lab_state)?;

        let pod = manifest::load(&options.manifests_dir)?;
        // Under `cargo run` on a fresh checkout the miner is not built yet: cargo builds it
        // while the image is made (both take a while; they overlap).
        let miner_build = if options.services && options.miner_tarball.is_none() {
            let build = guardlab_minerd::start_minerd_build(&self.lab_dir.join("minerd-build.log"));
            if build.is_some() {
                progress.phase(
                    "building the scenario's miner stand-in (minerd) with cargo, in the background",
                );
            }
            build
        } else {
            None
        };
        let runtime = self.resolve_image(image_user.as_ref(), progress)?;
        let services = if options.services {
            Some(self.prepare_services(miner_build, progress)?)
        } else {
            None
        };
        let config = DaemonConfig {
            lab: options.lab.clone(),
            lab_dir: self.lab_dir.clone(),
            cgroup: lab_cgroup.clone(),
            pod,
            runtime,
            forward: options.forward,
            services,
            sensor: options.sensor,
            ready_timeout_secs: options.ready_timeout.as_secs().max(1),
        };
        config.write()?;

        lab_state.phase = "starting".into();
        state_file.save(&lab_state)?;
        let daemon_cgroup = lab_cgroup.join("daemon");
        cgroup::create(&daemon_cgroup)?;
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(daemon_cgroup.join("cgroup.procs"))
            .map_err(|source| LabError::Io {
                context: format!("opening {}", daemon_cgroup.display()),
                source,
            })?;
        let log_path = self.lab_dir.join(state::DAEMON_LOG);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|source| LabError::Io {
                context: format!("opening {}", log_path.display()),
                source,
            })?;

        progress.phase("starting the lab daemon");
        let mut command = tokio::process::Command::new(&options.daemon_command[0]);
        command
            .args(&options.daemon_command[1..])
            .arg("--lab-dir")
            .arg(&self.lab_dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(log)
            .kill_on_drop(false);
        let procs_fd = procs.as_raw_fd();
        // SAFETY: the closure makes async-signal-safe system calls only (setsid, write).
        unsafe {
            command.pre_exec(move || {
                // Its own session: a Ctrl-C of `lab up` does not reach it.
                libc::setsid();
                // Into the lab's cgroup before it runs a single instruction of its own, so that
                // `down` finds it whatever happens next.
                let zero = b"0";
                if libc::write(procs_fd, zero.as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn().map_err(|source| LabError::Io {
            context: format!("starting the lab daemon {:?}", options.daemon_command[0]),
            source,
        })?;
        drop(procs);
        let stdout = child.stdout.take();
        self.daemon = Some(child);
        let Some(stdout) = stdout else {
            return Err(LabError::Failed("the lab daemon has no stdout".into()));
        };
        let mut lines = BufReader::new(stdout).lines();
        let limit = options.ready_timeout + Duration::from_secs(120);
        tokio::time::timeout(limit, async {
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<StartMessage>(&line) {
                    Ok(StartMessage::Phase { text }) => progress.phase(&text),
                    Ok(StartMessage::Detail { text }) => progress.detail(&text),
                    Ok(StartMessage::Ready { info }) => return Ok(info),
                    Ok(StartMessage::Failed { error }) => return Err(LabError::Failed(error)),
                    Err(_) => progress.detail(&line),
                }
            }
            Err(LabError::Failed(format!(
                "the lab daemon ended without saying why; see {}",
                log_path.display()
            )))
        })
        .await
        .unwrap_or_else(|_| {
            Err(LabError::Failed(format!(
                "the lab did not come up within {limit:?}"
            )))
        })
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
    fn backend(&self) -> &'static str {
        "local"
    }

    async fn up(&mut self, progress: &dyn Progress) -> Result<LabInfo, LabError> {
        LocalLab::require_root()?;
        // Before anything of the lab exists: a refusal leaves nothing behind.
        let host = blocking(|| self.preflight(progress))?;
        std::fs::create_dir_all(&self.lab_dir).map_err(|source| LabError::Io {
            context: format!("creating {}", self.lab_dir.display()),
            source,
        })?;
        let _ = std::fs::set_permissions(
            &self.options.state_dir,
            std::fs::Permissions::from_mode(0o755),
        );
        let _ = std::fs::set_permissions(&self.lab_dir, std::fs::Permissions::from_mode(0o700));
        let lock = LabLock::acquire(&self.lab_dir)?;

        if let Some(state) = self.state()? {
            let alive = state.daemon.is_some_and(|d| d.is_alive());
            if alive {
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
                            if status.phase.starts_with("failed") || status.phase == "stopped" =>
                        {
                            break;
                        }
                        _ if !self.daemon_alive()? => break,
                        _ if tokio::time::Instant::now() > deadline => break,
                        _ => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                }
            }
            progress.phase("removing what is left of an earlier lab");
            teardown::teardown(&self.lab_dir, progress)?;
            std::fs::create_dir_all(&self.lab_dir).map_err(|source| LabError::Io {
                context: format!("creating {}", self.lab_dir.display()),
                source,
            })?;
        }
        // The teardown removed the directory and with it the lock file: lock again.
        drop(lock);
        let _lock = LabLock::acquire(&self.lab_dir)?;

        match self.start(&host, progress).await {
            Ok(info) => Ok(info),
            Err(error) => {
                // Leave nothing behind; the daemon's log goes into the error.
                let log = std::fs::read_to_string(self.lab_dir.join(state::DAEMON_LOG))
                    .unwrap_or_default();
                let tail: Vec<&str> = log
                    .lines()
                    .rev()
                    .take(20)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                if let Err(e) = blocking(|| teardown::teardown(&self.lab_dir, &Quiet)) {
                    return Err(LabError::Failed(format!(
                        "{error}; and removing the lab failed too: {e}"
                    )));
                }
                self.reap_daemon().await;
                if tail.is_empty() {
                    Err(error)
                } else {
                    Err(LabError::Failed(format!(
                        "{error}\nlab daemon log (last lines):\n  {}",
                        tail.join("\n  ")
                    )))
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
        LocalLab::require_root()?;
        if !self.lab_dir.exists() {
            return Ok(());
        }
        let _lock = LabLock::acquire(&self.lab_dir)?;
        blocking(|| teardown::teardown(&self.lab_dir, progress))?;
        self.reap_daemon().await;
        // The labs' directory too, when this was the last lab.
        let _ = std::fs::remove_dir(&self.options.state_dir);
        Ok(())
    }

    async fn events(&mut self) -> Result<mpsc::Receiver<Event>, LabError> {
        self.event_stream(true).await
    }

    async fn carry_out(&mut self, action: &LabAction) -> Result<(), LabError> {
        self.request(&Request::CarryOut {
            action: action.clone(),
        })
        .await
        .map(|_| ())
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
    /// Reap the daemon if this process started it and it has ended (no zombie left behind).
    async fn reap_daemon(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
        }
    }
}
