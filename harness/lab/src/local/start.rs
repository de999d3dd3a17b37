//! What `up` does once the host is ready: the pod's image, the lab internet's inputs, the
//! daemon's config, and the daemon itself, started inside the lab's cgroup; then it follows the
//! daemon's start messages until the lab is ready.
#![allow(unsafe_code)] // the daemon's own session and cgroup, set between fork and exec (pre_exec)

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

use super::config::{DaemonConfig, PodRuntime, ServicesConfig};
use super::daemon::DaemonError;
use super::protocol::{ReportedFailure, StartMessage};
use super::state::{LabState, OwnerRecord, ProcessRecord, STATE_VERSION, StateFile};
use super::{ImageSource, LocalLab, blocking, cgroup, manifest, package_index, preflight};
use crate::{IoContext, LabError, LabInfo, Progress};

impl LocalLab {
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
            .map_err(package_index::error)?;
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
                let bytes = guardlab_minerd::pack_release_tarball(&minerd)
                    .context(|| format!("packing {}", minerd.display()))?;
                std::fs::write(&tarball, bytes)
                    .context(|| format!("writing {}", tarball.display()))?;
                tarball
            }
        };
        Ok(ServicesConfig {
            ca_dir: cache.join("lab-ca"),
            wheels_dir,
            miner_tarball,
        })
    }

    /// Start the daemon and wait for its report. On failure everything is removed again.
    pub(super) async fn start(
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
        // The owner too, before the daemon exists: it watches its owner from its start.
        let owner = match &options.owned_by {
            Some(command) => Some(OwnerRecord {
                process: ProcessRecord::this_process()?,
                command: command.clone(),
            }),
            None => None,
        };
        let mut lab_state = LabState {
            version: STATE_VERSION,
            lab: options.lab.clone(),
            cgroup: lab_cgroup.clone(),
            image_rootfs: Some(image_rootfs),
            image_registration,
            owner,
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
            .context(|| format!("opening {}", daemon_cgroup.display()))?;
        let log_path = self.lab_dir.join(crate::lab_files::DAEMON_LOG);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .context(|| format!("opening {}", log_path.display()))?;

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
        let mut child = command
            .spawn()
            .context(|| format!("starting the lab daemon {:?}", options.daemon_command[0]))?;
        drop(procs);
        let stdout = child.stdout.take();
        self.daemon = Some(child);
        let Some(stdout) = stdout else {
            return Err(DaemonError::NoStdout.into());
        };
        let mut lines = BufReader::new(stdout).lines();
        let limit = options.ready_timeout + Duration::from_secs(120);
        // What the daemon was doing, to name where it failed.
        let mut phase = String::from("starting the lab daemon");
        tokio::time::timeout(limit, async {
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<StartMessage>(&line) {
                    Ok(StartMessage::Phase { text }) => {
                        progress.phase(&text);
                        phase = text;
                    }
                    Ok(StartMessage::Detail { text }) => progress.detail(&text),
                    Ok(StartMessage::Ready { info }) => return Ok(info),
                    Ok(StartMessage::Failed { error }) => {
                        return Err(LabError::backend(phase, ReportedFailure { said: error }));
                    }
                    Err(_) => progress.detail(&line),
                }
            }
            Err(DaemonError::EndedSilently {
                log: log_path.clone(),
            }
            .into())
        })
        .await
        .unwrap_or_else(|_| {
            Err(LabError::Timeout {
                what: "the lab's start".into(),
                limit,
                detail: format!("see {}", log_path.display()),
            })
        })
    }
}
