//! The lab's state file: every resource the lab makes is written here BEFORE it is made, so
//! that `down` can remove all of it even when the harness or the daemon was killed with SIGKILL
//! at any point.
//!
//! Most resources die with the lab's processes (network namespaces, veths, the pod's mounts
//! live in namespaces that only lab processes hold), and every lab process is born in the lab's
//! cgroup, so the heart of `down` is "kill the cgroup, then remove the directories". The rest is
//! recorded so that `down` can check and remove it when it outlived its processes.
#![allow(unsafe_code)] // flock(2) of the lab lock

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use guardlab_host::ProcStat;
use serde::{Deserialize, Serialize};

use crate::{IoContext, LabError, LabInfo};

/// Bumped when a field changes meaning; a newer state file is refused with a clear error.
pub const STATE_VERSION: u32 = 1;

// Where they were defined first; the image module still names them here.
pub use crate::lab_files::{CONFIG_FILE, DAEMON_LOG, LOCK_FILE, SOCKET_FILE, STATE_FILE};

/// A process, identified across pid reuse by its start time (clock ticks since boot, field 22
/// of `/proc/<pid>/stat`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    pub pid: u32,
    pub start_time: u64,
}

impl ProcessRecord {
    /// The record of a running process.
    pub fn of(pid: u32) -> Option<ProcessRecord> {
        process_start_time(pid).map(|start_time| ProcessRecord { pid, start_time })
    }

    /// The process still runs (same pid, same start time) and is not a zombie.
    pub fn is_alive(&self) -> bool {
        ProcStat::read(self.pid).is_some_and(|stat| {
            !matches!(stat.state, 'Z' | 'X') && stat.start_ticks == self.start_time
        })
    }

    /// Sends SIGKILL through a pidfd if this is still the recorded process (a reused pid is
    /// never signalled); `false` when it has ended.
    pub fn kill(&self) -> std::io::Result<bool> {
        guardlab_host::process::signal_if_same(self.pid, self.start_time, libc::SIGKILL)
    }
}

/// The start time of a process (clock ticks after boot), `None` when it is gone.
pub fn process_start_time(pid: u32) -> Option<u64> {
    ProcStat::read(pid).map(|stat| stat.start_ticks)
}

/// One pod the daemon made.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    pub name: String,
    /// The pod's cgroup directory (under the lab's cgroup).
    pub cgroup: PathBuf,
    /// The pod's directory: writable layer, overlay work dir, mount point, log.
    pub dir: PathBuf,
    /// The container's first process, once started.
    pub root: Option<ProcessRecord>,
    /// The pod's cgroups in cgroup v1 hierarchies, where the host keeps a limited controller
    /// there (see `cgroup_limits`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub v1_cgroups: Vec<PathBuf>,
}

/// A network namespace the daemon made. Unnamed (no bind mount): it lives as long as a lab
/// process holds it; `inode` identifies it for checks (`/proc/<pid>/ns/net -> net:[inode]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetnsRecord {
    pub role: String,
    pub inode: u64,
}

/// A veth pair: both ends live in lab namespaces; recorded so `down` can remove an end that
/// would ever show up in the host's namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VethRecord {
    pub name: String,
    pub peer: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabState {
    pub version: u32,
    pub lab: String,
    /// The lab's cgroup: the daemon's and the pods' cgroups are below it.
    pub cgroup: PathBuf,
    /// The lab's cgroups in cgroup v1 hierarchies (`<hierarchy>/<own>/guardlab/<lab>`), the
    /// pods' v1 cgroups are below them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub v1_cgroups: Vec<PathBuf>,
    /// The image root filesystem the lab's pods run on. Recorded before the image is looked up,
    /// so that pruning the image cache (`image::prune_images`) never removes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_rootfs: Option<PathBuf>,
    /// The lab's registration as a user of its image (`<image>/users/<lab>-<id>`, see
    /// `image::ImageUser`), recorded before it is made; removed at `down`. Whatever directory
    /// the lab's state is in, no prune removes an image with a registration whose state file
    /// exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_registration: Option<PathBuf>,
    pub daemon: Option<ProcessRecord>,
    pub pods: Vec<PodRecord>,
    pub netns: Vec<NetnsRecord>,
    pub veths: Vec<VethRecord>,
    /// Mounts in the host's mount namespace (the design makes none; kept for the sensor's bpffs
    /// pins or anything later).
    pub host_mounts: Vec<PathBuf>,
    /// Files pinned in bpffs by the sensor.
    pub bpf_pins: Vec<PathBuf>,
    /// Directories to remove on `down`.
    pub dirs: Vec<PathBuf>,
    /// BPF program ids the sensor loaded (for checks: they must be gone after `down`).
    pub bpf_programs: Vec<u32>,
    /// `starting`, `ready` or `failed: <why>`.
    pub phase: String,
    /// What `status` reports once ready.
    pub info: Option<LabInfo>,
}

/// A state file that cannot be used (part "the lab's state file" of a [`LabError`]).
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Not JSON of a [`LabState`].
    #[error("{}: {error} (remove it by hand if it is not a guardlab state file)", path.display())]
    Unreadable {
        path: PathBuf,
        error: serde_json::Error,
    },
    /// Written by a build with another [`STATE_VERSION`].
    #[error("{}: state version {found}, this build reads version {STATE_VERSION}", path.display())]
    Version { path: PathBuf, found: u32 },
    /// The state could not be encoded.
    #[error("encoding {}: {error}", path.display())]
    Encode {
        path: PathBuf,
        error: serde_json::Error,
    },
}

impl From<StateError> for LabError {
    fn from(error: StateError) -> LabError {
        LabError::backend("the lab's state file", error)
    }
}

/// The state file of one lab, in the lab's directory.
#[derive(Clone, Debug)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub fn in_dir(lab_dir: &Path) -> StateFile {
        StateFile {
            path: lab_dir.join(STATE_FILE),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The state, or `None` when there is no state file.
    pub fn load(&self) -> Result<Option<LabState>, LabError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).context(|| format!("reading {}", self.path.display())),
        };
        let state: LabState =
            serde_json::from_str(&text).map_err(|error| StateError::Unreadable {
                path: self.path.clone(),
                error,
            })?;
        if state.version != STATE_VERSION {
            return Err(StateError::Version {
                path: self.path.clone(),
                found: state.version,
            }
            .into());
        }
        Ok(Some(state))
    }

    /// Write the whole state atomically (temporary file, fsync, rename): a reader never sees
    /// half a file, and a crash leaves the previous or the new state.
    pub fn save(&self, state: &LabState) -> Result<(), LabError> {
        let writing = || format!("writing {}", self.path.display());
        let tmp = self
            .path
            .with_extension(format!("json.tmp{}", std::process::id()));
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .context(writing)?;
        let mut text = serde_json::to_vec_pretty(state).map_err(|error| StateError::Encode {
            path: self.path.clone(),
            error,
        })?;
        text.push(b'\n');
        file.write_all(&text).context(writing)?;
        file.sync_all().context(writing)?;
        fs::rename(&tmp, &self.path).context(writing)?;
        Ok(())
    }
}

/// An exclusive lock on a lab (`flock` on `<lab dir>/lock`): `up` and `down` of one lab never
/// overlap. The kernel drops it when its holder dies, so a killed harness never leaves it held.
pub struct LabLock {
    _file: fs::File,
}

impl LabLock {
    pub fn acquire(lab_dir: &Path) -> Result<LabLock, LabError> {
        let path = lab_dir.join(LOCK_FILE);
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .context(|| format!("opening {}", path.display()))?;
        // SAFETY: flock on a file descriptor we own.
        let rc = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_EX) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .context(|| format!("locking {}", path.display()));
        }
        Ok(LabLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_and_loads_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::in_dir(dir.path());
        assert_eq!(file.load().unwrap(), None);
        let state = LabState {
            version: STATE_VERSION,
            lab: "t".into(),
            cgroup: "/sys/fs/cgroup/guardlab/t".into(),
            phase: "starting".into(),
            ..Default::default()
        };
        file.save(&state).unwrap();
        assert_eq!(file.load().unwrap(), Some(state));
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from(STATE_FILE)]);
    }

    #[test]
    fn refuses_other_versions() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::in_dir(dir.path());
        file.save(&LabState {
            version: 99,
            ..Default::default()
        })
        .unwrap();
        let err = file.load().unwrap_err().to_string();
        assert!(err.contains("state version 99"), "{err}");
    }

    #[test]
    fn knows_this_process_is_alive() {
        let me = ProcessRecord::of(std::process::id()).unwrap();
        assert!(me.is_alive());
        let other = ProcessRecord {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(
            !other.is_alive(),
            "a reused pid must not count as the same process"
        );
    }
}
