//! Running commands inside a root filesystem during the build (and in tests).
//!
//! Every command gets its own private mount namespace: /proc, a minimal /dev and any bind mounts
//! are made there, so they vanish with the command, whatever happens to the harness (even
//! SIGKILL); nothing is ever mounted in the host's namespace. The command also dies with the
//! harness thread that started it (PR_SET_PDEATHSIG).
#![allow(unsafe_code)] // unshare, mount and chroot between fork and exec (pre_exec)

use std::ffi::{CString, OsStr};
use std::io::{BufRead, BufReader};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use guardlab_host::Progress;

use super::error::{ImageError, IoContext, StepFailed};

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

fn cstring(p: impl AsRef<OsStr>) -> Result<CString, ImageError> {
    CString::new(p.as_ref().as_bytes()).map_err(|_| ImageError::NulInPath {
        path: p.as_ref().to_os_string(),
    })
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
) -> Result<Command, ImageError> {
    let rootfs = rootfs
        .canonicalize()
        .context(|| format!("opening the root filesystem {}", rootfs.display()))?;
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
            .collect::<Result<_, ImageError>>()?,
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
pub fn private_mount_command(program: &str) -> Result<Command, ImageError> {
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
) -> Result<(), ImageError> {
    let (reader, writer) = std::io::pipe().context(|| format!("making a pipe for {what}"))?;
    let writer2 = writer
        .try_clone()
        .context(|| format!("making a pipe for {what}"))?;
    command.stdin(Stdio::null()).stdout(writer).stderr(writer2);
    let mut child = command.spawn().context(|| format!("starting {what}"))?;
    // The pipe's write ends live in `command`: keep only what the failure message names, so
    // that the read below ends with the child.
    let command_line = command_line(&command);
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
    let status = child.wait().context(|| format!("waiting for {what}"))?;
    if status.success() {
        return Ok(());
    }
    Err(StepFailed::new(what, command_line, status, tail.into_iter().collect()).into())
}

/// Runs a command to completion and returns its stdout; fails with its stderr and stdout.
pub fn run_capture(mut command: Command, what: &str) -> Result<String, ImageError> {
    let out = command
        .stdin(Stdio::null())
        .output()
        .context(|| format!("running {what}"))?;
    if !out.status.success() {
        let output: Vec<String> = [&out.stderr, &out.stdout]
            .iter()
            .flat_map(|bytes| {
                String::from_utf8_lossy(bytes)
                    .lines()
                    .map(str::trim_end)
                    .filter(|l| !l.is_empty())
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect();
        let skip = output.len().saturating_sub(TAIL_LINES);
        let command_line = command_line(&command);
        return Err(
            StepFailed::new(what, command_line, out.status, output[skip..].to_vec()).into(),
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `program arg arg...` of `command`, for the message of a failure.
fn command_line(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|word| word.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}
