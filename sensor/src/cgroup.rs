//! cgroup v2 helpers: where the hierarchy is mounted, a directory's cgroup id, starting a
//! command inside a cgroup, and recognising container cgroups.
#![allow(unsafe_code)] // open(2) and statfs(2) of cgroup directories

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::SensorError;

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Where the cgroup v2 hierarchy is mounted: `/sys/fs/cgroup` on unified hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones (like this project's CI).
pub fn cgroup2_mount() -> Result<PathBuf, SensorError> {
    let mountinfo = "/proc/self/mountinfo";
    let text = std::fs::read_to_string(mountinfo).map_err(SensorError::io_at(mountinfo))?;
    let mut found: Vec<PathBuf> = Vec::new();
    for line in text.lines() {
        // mountinfo: ... mount_point ... - fstype source options
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split_whitespace().next() != Some("cgroup2") {
            continue;
        }
        if let Some(mount_point) = left.split_whitespace().nth(4) {
            found.push(PathBuf::from(mount_point));
        }
    }
    found.sort_by_key(|p| (p != Path::new("/sys/fs/cgroup"), p.as_os_str().len()));
    found.into_iter().next().ok_or(SensorError::NoCgroup2)
}

/// The cgroup id of a cgroup v2 directory (its kernfs inode number), checking that it is one.
pub fn cgroup_id(path: &Path) -> Result<u64, SensorError> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| SensorError::NotCgroup2 { path: path.into() })?;
    // SAFETY: statfs is a plain C struct of integers, for which all-zero bytes are a valid
    // value; it is only an out buffer.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized, writable buffer.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(SensorError::Io {
            path: path.into(),
            source: io::Error::last_os_error(),
        });
    }
    #[allow(
        clippy::unnecessary_cast,
        reason = "f_type's integer type differs between targets"
    )]
    if st.f_type as i64 != CGROUP2_SUPER_MAGIC {
        return Err(SensorError::NotCgroup2 { path: path.into() });
    }
    let meta = std::fs::metadata(path).map_err(SensorError::io_at(path))?;
    if !meta.is_dir() {
        return Err(SensorError::NotCgroup2 { path: path.into() });
    }
    Ok(meta.ino())
}

/// Make `cmd` join the cgroup at `cgroup` between fork and exec, so that its exec is the first
/// thing the cgroup sees. Writing "0" to cgroup.procs moves the writer itself; the child only
/// makes async-signal-safe calls (open/write/close) on a path prepared beforehand.
pub fn spawn_into(cmd: &mut Command, cgroup: &Path) -> io::Result<()> {
    let procs = CString::new(cgroup.join("cgroup.procs").as_os_str().as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "cgroup path contains a NUL byte",
        )
    })?;
    // SAFETY: the closure runs in the forked child and only calls async-signal-safe functions.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let written = libc::write(fd, b"0".as_ptr().cast(), 1);
            let err = io::Error::last_os_error();
            libc::close(fd);
            if written != 1 {
                return Err(err);
            }
            Ok(())
        });
    }
    Ok(())
}

/// A cgroup this process created and removes on drop: whatever still runs in it is killed
/// first (cgroup.kill), so nothing is left behind.
#[derive(Debug)]
pub struct OwnedCgroup {
    path: PathBuf,
    id: u64,
}

impl OwnedCgroup {
    /// Creates `<cgroup2 mount>/<name>`; `name` should be unique (tests add the pid).
    pub fn create(name: &str) -> Result<Self, SensorError> {
        let path = cgroup2_mount()?.join(name);
        std::fs::create_dir(&path).map_err(SensorError::io_at(&path))?;
        let id = cgroup_id(&path)?;
        Ok(OwnedCgroup { path, id })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// Pids currently in the cgroup.
    pub fn pids(&self) -> Vec<u32> {
        read_pids(&self.path)
    }

    /// Kills every process in it and waits (bounded) until it is empty.
    pub fn kill_all(&self) {
        let _ = std::fs::write(self.path.join("cgroup.kill"), "1");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.pids().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for OwnedCgroup {
    fn drop(&mut self) {
        self.kill_all();
        let deadline = Instant::now() + Duration::from_secs(5);
        // rmdir fails with EBUSY while the last exiting task is still being released.
        while std::fs::remove_dir(&self.path).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Pids listed in a cgroup's cgroup.procs (empty when unreadable).
pub fn read_pids(cgroup: &Path) -> Vec<u32> {
    std::fs::read_to_string(cgroup.join("cgroup.procs"))
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// The container id in a container runtime's cgroup directory name, when it is one:
/// containerd (`cri-containerd-<id>.scope`, or a bare 64-hex directory under kubepods),
/// Docker (`docker-<id>.scope`, `/docker/<id>`), CRI-O (`crio-<id>.scope`) and Podman
/// (`libpod-<id>.scope`).
pub fn container_id_of(dir_name: &str) -> Option<String> {
    let trimmed = dir_name.strip_suffix(".scope").unwrap_or(dir_name);
    let id = ["cri-containerd-", "docker-", "crio-", "libpod-"]
        .iter()
        .find_map(|prefix| trimmed.strip_prefix(prefix))
        .unwrap_or(trimmed);
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_string())
}

/// Every container cgroup under `root`, with its container id.
pub fn find_container_cgroups(root: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if !entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            let path = entry.path();
            match container_id_of(&entry.file_name().to_string_lossy()) {
                Some(id) => out.push((path, id)),
                None => stack.push(path),
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_container_cgroups() {
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        for name in [
            format!("cri-containerd-{id}.scope"),
            format!("docker-{id}.scope"),
            id.to_string(),
            format!("libpod-{id}.scope"),
        ] {
            assert_eq!(container_id_of(&name).as_deref(), Some(id), "{name}");
        }
        assert_eq!(container_id_of("kubepods-besteffort.slice"), None);
        assert_eq!(container_id_of("docker-1234.scope"), None);
    }
}
