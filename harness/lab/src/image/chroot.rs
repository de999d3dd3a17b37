//! Running commands inside a root filesystem during the build (and in tests).
//!
//! Every command gets its own private mount namespace: /proc, a minimal /dev and any bind mounts
//! are made there, so they vanish with the command, whatever happens to the harness (even
//! SIGKILL); nothing is ever mounted in the host's namespace. The command also dies with the
//! harness thread that started it (PR_SET_PDEATHSIG).

use std::ffi::{CString, OsStr};
use std::io::{BufRead, BufReader};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{Progress, image_bridge::LegacyImageError as LabError}; // Bridge: image errors

/// A bind mount made for one command: a host path onto a path inside the root filesystem.
#[derive(Clone, Debug)]
pub struct Bind {
    pub host: PathBuf,
    /// Absolute path inside the root filesystem; it must exist (a directory for a directory).
    pub inside: PathBuf,
    pub read_only: bool,
}

/// Who runs the command inside the root filesystem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

fn cstring(p: impl AsRef<OsStr>) -> Result<CString, LabError> {
    CString::new(p.as_ref().as_bytes())
        .map_err(|_| LabError::Failed(format!("path {:?} has a NUL byte", p.as_ref())))
}

/// Device nodes of the minimal /dev: name, major, minor.
const DEVICES: &[(&str, u32, u32)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// Everything the child needs, as C strings made before `fork` (the child must not allocate:
/// the harness is multi-threaded).
struct Prepared {
    proc_dir: CString,
    dev_dir: CString,
    devices: Vec<(CString, libc::dev_t)>,
    dev_dirs: Vec<CString>,
    dev_links: Vec<(CString, CString)>,
    binds: Vec<(CString, CString, bool)>,
    root: CString,
    slash: CString,
    proc_type: CString,
    tmpfs_type: CString,
    dev_options: CString,
    workdir: CString,
}

/// A command that runs `program` inside `rootfs` (chroot), with /proc and a minimal /dev, the
/// environment cleared (set what it needs), as root or as `run_as`, in `workdir` (`/` if none).
pub fn rootfs_command(
    rootfs: &Path,
    run_as: Option<RunAs>,
    workdir: Option<&str>,
    binds: &[Bind],
    program: &str,
) -> Result<Command, LabError> {
    let rootfs = rootfs.canonicalize().map_err(|source| LabError::Io {
        context: format!("opening the root filesystem {}", rootfs.display()),
        source,
    })?;
    let inside = |p: &Path| rootfs.join(p.strip_prefix("/").unwrap_or(p));
    let dev = rootfs.join("dev");
    let mut binds_c = Vec::new();
    for b in binds {
        binds_c.push((cstring(&b.host)?, cstring(inside(&b.inside))?, b.read_only));
    }
    let prepared = Prepared {
        proc_dir: cstring(rootfs.join("proc"))?,
        dev_dir: cstring(&dev)?,
        devices: DEVICES
            .iter()
            .map(|(n, ma, mi)| Ok((cstring(dev.join(n))?, libc::makedev(*ma, *mi))))
            .collect::<Result<_, LabError>>()?,
        dev_dirs: vec![cstring(dev.join("pts"))?, cstring(dev.join("shm"))?],
        dev_links: vec![
            (cstring("/proc/self/fd")?, cstring(dev.join("fd"))?),
            (cstring("/proc/self/fd/0")?, cstring(dev.join("stdin"))?),
            (cstring("/proc/self/fd/1")?, cstring(dev.join("stdout"))?),
            (cstring("/proc/self/fd/2")?, cstring(dev.join("stderr"))?),
        ],
        binds: binds_c,
        root: cstring(&rootfs)?,
        slash: cstring("/")?,
        proc_type: cstring("proc")?,
        tmpfs_type: cstring("tmpfs")?,
        dev_options: cstring("mode=755,size=1m")?,
        workdir: cstring(workdir.unwrap_or("/"))?,
    };
    let mut command = Command::new(program);
    command.env_clear();
    // SAFETY: the closure only makes system calls on memory prepared before fork (no allocation,
    // no locks), as `pre_exec` requires.
    unsafe {
        command.pre_exec(move || enter(&prepared, run_as));
    }
    Ok(command)
}

/// Runs in the child between fork and exec.
fn enter(p: &Prepared, run_as: Option<RunAs>) -> std::io::Result<()> {
    fn check(rc: libc::c_int) -> std::io::Result<()> {
        if rc == -1 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
    // SAFETY: plain system calls with valid NUL-terminated strings owned by `p`.
    unsafe {
        check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0))?;
        check(libc::unshare(libc::CLONE_NEWNS))?;
        // Private, so nothing mounted here propagates back to the host.
        check(libc::mount(
            std::ptr::null(),
            p.slash.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ))?;
        check(libc::mount(
            p.proc_type.as_ptr(),
            p.proc_dir.as_ptr(),
            p.proc_type.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        ))?;
        check(libc::mount(
            p.tmpfs_type.as_ptr(),
            p.dev_dir.as_ptr(),
            p.tmpfs_type.as_ptr(),
            libc::MS_NOSUID | libc::MS_NOEXEC,
            p.dev_options.as_ptr().cast(),
        ))?;
        for (path, dev) in &p.devices {
            check(libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o666, *dev))?;
            // mknod applies the umask.
            check(libc::chmod(path.as_ptr(), 0o666))?;
        }
        for d in &p.dev_dirs {
            check(libc::mkdir(d.as_ptr(), 0o755))?;
        }
        for (target, link) in &p.dev_links {
            check(libc::symlink(target.as_ptr(), link.as_ptr()))?;
        }
        for (host, inside, read_only) in &p.binds {
            check(libc::mount(
                host.as_ptr(),
                inside.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            ))?;
            if *read_only {
                check(libc::mount(
                    std::ptr::null(),
                    inside.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                    std::ptr::null(),
                ))?;
            }
        }
        check(libc::chroot(p.root.as_ptr()))?;
        check(libc::chdir(p.slash.as_ptr()))?;
        if let Some(user) = run_as {
            check(libc::setgroups(1, &user.gid))?;
            check(libc::setgid(user.gid))?;
            check(libc::setuid(user.uid))?;
        }
        check(libc::chdir(p.workdir.as_ptr()))?;
    }
    Ok(())
}

/// A command that runs on the host in a private mount namespace, killed if the harness dies
/// (for debootstrap, which mounts /proc and /sys in its target while it works).
pub fn private_mount_command(program: &str) -> Result<Command, LabError> {
    let slash = cstring("/")?;
    let mut command = Command::new(program);
    // SAFETY: only system calls on memory prepared before fork.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) == -1
                || libc::unshare(libc::CLONE_NEWNS) == -1
                || libc::mount(
                    std::ptr::null(),
                    slash.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) == -1
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(command)
}

/// How many output lines a failure message quotes.
const TAIL_LINES: usize = 25;

/// Runs a command, showing its output (stdout and stderr, interleaved) as progress details, and
/// fails with the tail of that output when it does not succeed. `what` names it in messages.
pub fn run_streaming(
    mut command: Command,
    what: &str,
    progress: &dyn Progress,
) -> Result<(), LabError> {
    let (reader, writer) = std::io::pipe().map_err(|source| LabError::Io {
        context: format!("making a pipe for {what}"),
        source,
    })?;
    let writer2 = writer.try_clone().map_err(|source| LabError::Io {
        context: format!("making a pipe for {what}"),
        source,
    })?;
    command.stdin(Stdio::null()).stdout(writer).stderr(writer2);
    let mut child = command.spawn().map_err(|source| LabError::Io {
        context: format!("starting {what}"),
        source,
    })?;
    // The pipe's write ends live in `command`: drop it so the read below ends with the child.
    drop(command);
    let mut tail: std::collections::VecDeque<String> = Default::default();
    let mut reader = BufReader::new(reader);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) => break,
            Ok(_) => {
                let text = String::from_utf8_lossy(&buf);
                // Progress bars redraw with carriage returns: keep the last state of the line.
                let line = text.trim_end().rsplit('\r').next().unwrap_or("").trim_end();
                if line.is_empty() {
                    continue;
                }
                progress.detail(line);
                if tail.len() == TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(line.to_string());
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    let status = child.wait().map_err(|source| LabError::Io {
        context: format!("waiting for {what}"),
        source,
    })?;
    if status.success() {
        return Ok(());
    }
    let tail: Vec<String> = tail.into_iter().collect();
    Err(LabError::Failed(format!(
        "{what} failed ({status}); its last output:\n  {}",
        tail.join("\n  ")
    )))
}

/// Runs a command to completion and returns its stdout; fails with its stderr.
pub fn run_capture(mut command: Command, what: &str) -> Result<String, LabError> {
    let out = command
        .stdin(Stdio::null())
        .output()
        .map_err(|source| LabError::Io {
            context: format!("running {what}"),
            source,
        })?;
    if !out.status.success() {
        return Err(LabError::Failed(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
