//! The pod sandbox: the container's first process, cloned into new pid, mount, uts and ipc
//! namespaces, straight into the pod's cgroup (`CLONE_INTO_CGROUP`, so it is never outside it),
//! then moved into the pod's network namespace and a cgroup namespace rooted at its cgroup. It
//! mounts an overlay (the cached image read-only, a per-pod writable layer), `/proc`, a minimal
//! `/dev` (with its own devpts for the Jupyter terminals), a read-only `/sys`, pivots into it,
//! sets its hostname, becomes the container's user with no capabilities and execs the
//! container's command, which is then pid 1 of the pod, as in a Kubernetes pod.
//!
//! The daemon is multi-threaded, so the clone is a fork of one thread: between the clone and the
//! exec the child makes system calls only, on memory prepared before the clone (no allocation,
//! no locks). It reports a failure as `(step, errno)` on a close-on-exec pipe; a successful
//! exec closes the pipe.
//!
//! Capabilities as a container runtime gives them: the container's user (jovyan) has none at all
//! (permitted, effective, inheritable and ambient sets empty), and the bounding set is the
//! runtime's default set ([`RUNTIME_DEFAULT_CAPABILITIES`], changed by the Deployment's
//! `securityContext.capabilities`). So a setuid-root program such as `sudo` works as on a real
//! cluster: it asks jovyan for a password and refuses, because jovyan is not in sudoers. With an
//! empty bounding set it would fail with "unable to change to root gid" instead, and with
//! `no_new_privs` (only when the Deployment says `allowPrivilegeEscalation: false`) with
//! "effective uid is not 0": errors a learner never sees in the original lab.

use std::ffi::CString;
use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::LabError;

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
const CLONE_PIDFD: u64 = 0x1000;
const P_PIDFD: libc::idtype_t = 3;
const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `struct clone_args` of clone3(2).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// What the container runs and how, resolved from the Deployment and the image config.
#[derive(Clone, Debug)]
pub struct ContainerSpec {
    /// Read-only image layers, top first.
    pub lower_dirs: Vec<PathBuf>,
    /// The pod's directory: `upper/`, `work/` and `rootfs/` are made in it.
    pub pod_dir: PathBuf,
    pub hostname: String,
    /// The full command line (Deployment command/args over the image's).
    pub argv: Vec<String>,
    /// `KEY=VALUE` entries.
    pub env: Vec<String>,
    pub working_dir: String,
    pub uid: u32,
    pub gid: u32,
    pub supplementary_groups: Vec<u32>,
    /// Capabilities kept in the bounding set (bit mask); the user's own sets are always empty.
    pub bounding_set: u64,
    /// Set no_new_privs (Kubernetes' `allowPrivilegeEscalation: false`).
    pub no_new_privs: bool,
    /// The container's stdout and stderr go here (what `kubectl logs` would show).
    pub log_file: PathBuf,
}

impl ContainerSpec {
    pub fn upper_dir(&self) -> PathBuf {
        self.pod_dir.join("upper")
    }
    pub fn work_dir(&self) -> PathBuf {
        self.pod_dir.join("work")
    }
    pub fn rootfs_dir(&self) -> PathBuf {
        self.pod_dir.join("rootfs")
    }
}

/// The capabilities containerd and Docker leave in a container's bounding set by default.
pub const RUNTIME_DEFAULT_CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "NET_RAW",
    "SYS_CHROOT",
    "MKNOD",
    "AUDIT_WRITE",
    "SETFCAP",
];

/// Linux capability names (without `CAP_`), by number.
const CAPABILITY_NAMES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// The number of a capability named as Kubernetes does (`NET_RAW`; `CAP_NET_RAW` is accepted).
pub fn capability_number(name: &str) -> Option<u32> {
    let name = name.trim().to_ascii_uppercase();
    let name = name.strip_prefix("CAP_").unwrap_or(&name);
    CAPABILITY_NAMES
        .iter()
        .position(|n| *n == name)
        .map(|i| i as u32)
}

/// The bounding set (a bit mask) of a container: the runtime's default set, minus `drop`, plus
/// `add` (`ALL` in either means every capability). Unknown names are an error naming them.
pub fn bounding_set(add: &[String], drop: &[String]) -> Result<u64, String> {
    let all = (1u64 << CAPABILITY_NAMES.len()) - 1;
    let mask_of = |names: &[String]| -> Result<u64, String> {
        let mut mask = 0;
        for name in names {
            if name.trim().eq_ignore_ascii_case("ALL") {
                mask = all;
            } else {
                mask |= 1
                    << capability_number(name)
                        .ok_or_else(|| format!("unknown capability {name:?}"))?;
            }
        }
        Ok(mask)
    };
    let default = RUNTIME_DEFAULT_CAPABILITIES
        .iter()
        .filter_map(|n| capability_number(n))
        .fold(0u64, |m, c| m | (1 << c));
    Ok((default & !mask_of(drop)?) | mask_of(add)?)
}

/// The running container's first process.
#[derive(Debug)]
pub struct PodProcess {
    pub pid: u32,
    /// A pidfd of it: readable when it exits; reaps it with [`wait_pidfd`].
    pub pidfd: OwnedFd,
}

/// The steps of the child, for error messages.
const STEPS: &[&str] = &[
    "waiting for the daemon",               // 0
    "joining the pod's network namespace",  // 1
    "creating the cgroup namespace",        // 2
    "making mounts private",                // 3
    "mounting the overlay root",            // 4
    "mounting a filesystem in the pod",     // 5
    "creating a device node",               // 6
    "creating a symlink in /dev",           // 7
    "pivot_root into the pod's root",       // 8
    "detaching the host's root",            // 9
    "setting the hostname",                 // 10
    "dropping the capability bounding set", // 11
    "setting supplementary groups",         // 12
    "setting the group id",                 // 13
    "setting the user id",                  // 14
    "clearing capabilities",                // 15
    "changing to the working directory",    // 16
    "opening /dev/null",                    // 17
    "setting up stdio",                     // 18
    "executing the container's command",    // 19
    "creating a mount point",               // 20
    "making /proc/sys read-only",           // 21
];

struct MountStep {
    source: CString,
    target: CString,
    fstype: CString,
    flags: libc::c_ulong,
    data: Option<CString>,
    /// Create the mount point first (mode), ignoring "exists".
    mkdir: Option<libc::mode_t>,
    /// A failure is ignored (optional mounts such as mqueue).
    optional: bool,
}

/// Everything the child needs, built before the clone.
struct ChildPlan {
    go_read: RawFd,
    err_write: RawFd,
    netns: RawFd,
    log_fd: RawFd,
    rootfs: CString,
    overlay_options: CString,
    overlay: CString,
    mounts: Vec<MountStep>,
    proc_sys: CString,
    devices: Vec<(CString, libc::mode_t, libc::dev_t)>,
    symlinks: Vec<(CString, CString)>,
    dot: CString,
    slash: CString,
    dev_null: CString,
    hostname: CString,
    cap_last: libc::c_ulong,
    bounding_set: u64,
    no_new_privs: bool,
    groups: Vec<libc::gid_t>,
    uid: libc::uid_t,
    gid: libc::gid_t,
    working_dir: CString,
    exec_candidates: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
}

fn cstring(text: impl AsRef<[u8]>) -> Result<CString, LabError> {
    CString::new(text.as_ref().to_vec()).map_err(|_| {
        LabError::Failed(format!(
            "a NUL byte in {:?}",
            String::from_utf8_lossy(text.as_ref())
        ))
    })
}

fn path_cstring(path: &Path) -> Result<CString, LabError> {
    cstring(path.as_os_str().as_bytes())
}

fn io_error(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> LabError {
    let context = context.into();
    move |source| LabError::Io { context, source }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), LabError> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(LabError::Io {
            context: "creating a pipe".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: fresh descriptors we own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The command's candidate paths: as given when it has a slash, else each PATH entry.
fn exec_candidates(program: &str, env: &[String]) -> Vec<String> {
    if program.contains('/') {
        return vec![program.to_string()];
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|dir| format!("{}/{program}", dir.trim_end_matches('/')))
        .collect()
}

/// Prepare the pod's directories and start its first process. `record` is called with the
/// pid as soon as it exists and before it does anything (the state file records it), then the
/// process goes on; the call returns once the container's command is executing.
pub fn spawn(
    spec: &ContainerSpec,
    cgroup: &Path,
    netns_fd: RawFd,
    record: impl FnOnce(u32) -> Result<(), LabError>,
) -> Result<PodProcess, LabError> {
    let (upper, work, rootfs) = (spec.upper_dir(), spec.work_dir(), spec.rootfs_dir());
    for dir in [&upper, &work, &rootfs] {
        fs::create_dir_all(dir).map_err(io_error(format!("creating {}", dir.display())))?;
    }
    // The overlay's root takes the upper dir's owner and mode.
    fs::set_permissions(&upper, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .map_err(io_error(format!("chmod {}", upper.display())))?;
    if spec.argv.is_empty() {
        return Err(LabError::Failed(
            "the container has no command (the Deployment gives none)".into(),
        ));
    }
    if spec.lower_dirs.is_empty() {
        return Err(LabError::Failed("the container has no image layer".into()));
    }

    let cgroup_dir =
        fs::File::open(cgroup).map_err(io_error(format!("opening cgroup {}", cgroup.display())))?;
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(libc::O_CLOEXEC)
        .open(&spec.log_file)
        .map_err(io_error(format!("opening {}", spec.log_file.display())))?;
    let (go_read, go_write) = pipe()?;
    let (err_read, err_write) = pipe()?;

    let lower = spec
        .lower_dirs
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let overlay_options = format!(
        "lowerdir={lower},upperdir={},workdir={}",
        upper.display(),
        work.display()
    );
    let in_root = |relative: &str| path_cstring(&rootfs.join(relative));
    let nosuid_nodev_noexec = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    let mounts = vec![
        MountStep {
            source: cstring("proc")?,
            target: in_root("proc")?,
            fstype: cstring("proc")?,
            flags: nosuid_nodev_noexec,
            data: None,
            mkdir: Some(0o555),
            optional: false,
        },
        MountStep {
            source: cstring("tmpfs")?,
            target: in_root("dev")?,
            fstype: cstring("tmpfs")?,
            flags: libc::MS_NOSUID | libc::MS_STRICTATIME,
            data: Some(cstring("mode=755,size=65536k")?),
            mkdir: Some(0o755),
            optional: false,
        },
        MountStep {
            source: cstring("devpts")?,
            target: in_root("dev/pts")?,
            fstype: cstring("devpts")?,
            flags: libc::MS_NOSUID | libc::MS_NOEXEC,
            // gid 5 is `tty` in Debian; a private instance so the pod sees only its terminals.
            data: Some(cstring("newinstance,ptmxmode=0666,mode=0620,gid=5")?),
            mkdir: Some(0o755),
            optional: false,
        },
        MountStep {
            source: cstring("shm")?,
            target: in_root("dev/shm")?,
            fstype: cstring("tmpfs")?,
            flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            data: Some(cstring("mode=1777,size=65536k")?),
            mkdir: Some(0o1777),
            optional: false,
        },
        MountStep {
            source: cstring("mqueue")?,
            target: in_root("dev/mqueue")?,
            fstype: cstring("mqueue")?,
            flags: nosuid_nodev_noexec,
            data: None,
            mkdir: Some(0o755),
            optional: true,
        },
        MountStep {
            source: cstring("sysfs")?,
            target: in_root("sys")?,
            fstype: cstring("sysfs")?,
            flags: nosuid_nodev_noexec | libc::MS_RDONLY,
            data: None,
            mkdir: Some(0o555),
            optional: false,
        },
        MountStep {
            source: cstring("cgroup")?,
            target: in_root("sys/fs/cgroup")?,
            fstype: cstring("cgroup2")?,
            flags: nosuid_nodev_noexec | libc::MS_RDONLY,
            data: None,
            mkdir: None,
            optional: true,
        },
    ];
    let char_device = libc::S_IFCHR | 0o666;
    let devices = [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ]
    .iter()
    .map(|(name, major, minor)| {
        Ok((
            in_root(&format!("dev/{name}"))?,
            char_device,
            libc::makedev(*major, *minor),
        ))
    })
    .collect::<Result<Vec<_>, LabError>>()?;
    let symlinks = [
        ("pts/ptmx", "dev/ptmx"),
        ("/proc/self/fd", "dev/fd"),
        ("/proc/self/fd/0", "dev/stdin"),
        ("/proc/self/fd/1", "dev/stdout"),
        ("/proc/self/fd/2", "dev/stderr"),
    ]
    .iter()
    .map(|(target, link)| Ok((cstring(target)?, in_root(link)?)))
    .collect::<Result<Vec<_>, LabError>>()?;

    let cap_last = fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(63);
    let argv_c = spec
        .argv
        .iter()
        .map(cstring)
        .collect::<Result<Vec<_>, _>>()?;
    let env_c = spec
        .env
        .iter()
        .map(cstring)
        .collect::<Result<Vec<_>, _>>()?;
    let mut argv: Vec<*const libc::c_char> = argv_c.iter().map(|c| c.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = env_c.iter().map(|c| c.as_ptr()).collect();
    envp.push(std::ptr::null());

    let plan = ChildPlan {
        go_read: go_read.as_raw_fd(),
        err_write: err_write.as_raw_fd(),
        netns: netns_fd,
        log_fd: log.as_raw_fd(),
        rootfs: path_cstring(&rootfs)?,
        overlay_options: cstring(&overlay_options)?,
        overlay: cstring("overlay")?,
        mounts,
        proc_sys: in_root("proc/sys")?,
        devices,
        symlinks,
        dot: cstring(".")?,
        slash: cstring("/")?,
        dev_null: cstring("/dev/null")?,
        hostname: cstring(&spec.hostname)?,
        cap_last,
        bounding_set: spec.bounding_set,
        no_new_privs: spec.no_new_privs,
        groups: spec.supplementary_groups.clone(),
        uid: spec.uid,
        gid: spec.gid,
        working_dir: cstring(&spec.working_dir)?,
        exec_candidates: exec_candidates(&spec.argv[0], &spec.env)
            .iter()
            .map(cstring)
            .collect::<Result<_, _>>()?,
        argv,
        envp,
    };

    let mut pidfd: libc::c_int = -1;
    let args = CloneArgs {
        flags: (libc::CLONE_NEWPID | libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC)
            as u64
            | CLONE_INTO_CGROUP
            | CLONE_PIDFD,
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup_dir.as_raw_fd() as u64,
        ..Default::default()
    };
    // SAFETY: clone3 without CLONE_VM is a fork of this thread; the child only runs
    // `child_main`, which makes system calls on the prepared plan and never returns.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if pid < 0 {
        return Err(LabError::Io {
            context: "clone3 of the pod's first process".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    if pid == 0 {
        child_main(&plan);
    }
    let pid = pid as u32;
    // SAFETY: clone3 returned this pidfd for the child.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    drop(go_read);
    drop(err_write);
    drop(plan);

    let released = record(pid).and_then(|()| {
        // SAFETY: writing one byte from a local buffer to our pipe.
        let written = unsafe { libc::write(go_write.as_raw_fd(), b"g".as_ptr().cast(), 1) };
        if written == 1 {
            Ok(())
        } else {
            Err(LabError::Io {
                context: "starting the pod".into(),
                source: std::io::Error::last_os_error(),
            })
        }
    });
    drop(go_write);
    if let Err(e) = released {
        // The child sees the pipe close and exits; reap it.
        let _ = wait_pidfd(&pidfd);
        return Err(e);
    }

    let mut report = [0u8; 8];
    let mut got = 0;
    while got < report.len() {
        // SAFETY: reading into the rest of a local buffer.
        let n = unsafe {
            libc::read(
                err_read.as_raw_fd(),
                report[got..].as_mut_ptr().cast(),
                report.len() - got,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(LabError::Io {
                context: "reading the pod's start report".into(),
                source: e,
            });
        }
        if n == 0 {
            break;
        }
        got += n as usize;
    }
    if got == 0 {
        return Ok(PodProcess { pid, pidfd });
    }
    let step = u32::from_le_bytes(report[..4].try_into().unwrap_or_default()) as usize;
    let errno = i32::from_le_bytes(report[4..].try_into().unwrap_or_default());
    let _ = wait_pidfd(&pidfd);
    let what = STEPS.get(step).copied().unwrap_or("an unknown step");
    let detail = if step == 19 {
        format!(" ({})", spec.argv[0])
    } else {
        String::new()
    };
    Err(LabError::Failed(format!(
        "the pod's first process failed {what}{detail}: {}",
        std::io::Error::from_raw_os_error(errno)
    )))
}

/// Reap a process by its pidfd (blocks until it exits). Returns the wait status.
pub fn wait_pidfd(pidfd: &OwnedFd) -> Result<ExitStatus, std::io::Error> {
    // SAFETY: a zeroed siginfo_t is valid for waitid to fill.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: waitid on our pidfd.
        let rc = unsafe {
            libc::waitid(
                P_PIDFD,
                pidfd.as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED,
            )
        };
        if rc == 0 {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    // SAFETY: waitid filled a SIGCHLD siginfo.
    let (code, status) = unsafe { (info.si_code, info.si_status()) };
    Ok(if code == libc::CLD_EXITED {
        ExitStatus::Code(status)
    } else {
        ExitStatus::Signal(status)
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit code {c}"),
            ExitStatus::Signal(s) => write!(f, "signal {s}"),
        }
    }
}

/// Report a failed step to the daemon and exit. Async-signal-safe.
fn fail(plan: &ChildPlan, step: u32) -> ! {
    // SAFETY: errno location of this thread; write and _exit are async-signal-safe.
    unsafe {
        let errno = *libc::__errno_location();
        let mut report = [0u8; 8];
        report[..4].copy_from_slice(&step.to_le_bytes());
        report[4..].copy_from_slice(&errno.to_le_bytes());
        libc::write(plan.err_write, report.as_ptr().cast(), report.len());
        libc::_exit(127)
    }
}

/// The child, between clone and exec: system calls only.
fn child_main(plan: &ChildPlan) -> ! {
    // SAFETY (whole function): plain system calls on pointers into `plan`, which this process's
    // copy of the parent's memory keeps alive; nothing allocates or takes a lock.
    unsafe {
        let mut byte = 0u8;
        if libc::read(plan.go_read, (&mut byte as *mut u8).cast(), 1) != 1 {
            // The daemon died or gave up before releasing us: leave no trace.
            libc::_exit(1);
        }
        if libc::setns(plan.netns, libc::CLONE_NEWNET) != 0 {
            fail(plan, 1);
        }
        // Already in the pod's cgroup (CLONE_INTO_CGROUP): the new namespace is rooted there.
        if libc::unshare(libc::CLONE_NEWCGROUP) != 0 {
            fail(plan, 2);
        }
        if libc::mount(
            std::ptr::null(),
            plan.slash.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            fail(plan, 3);
        }
        if libc::mount(
            plan.overlay.as_ptr(),
            plan.rootfs.as_ptr(),
            plan.overlay.as_ptr(),
            0,
            plan.overlay_options.as_ptr().cast(),
        ) != 0
        {
            fail(plan, 4);
        }
        libc::umask(0);
        for step in &plan.mounts {
            if let Some(mode) = step.mkdir
                && libc::mkdir(step.target.as_ptr(), mode) != 0
                && *libc::__errno_location() != libc::EEXIST
            {
                if step.optional {
                    continue;
                }
                fail(plan, 20);
            }
            let data = step
                .data
                .as_ref()
                .map_or(std::ptr::null(), |d| d.as_ptr().cast());
            if libc::mount(
                step.source.as_ptr(),
                step.target.as_ptr(),
                step.fstype.as_ptr(),
                step.flags,
                data,
            ) != 0
                && !step.optional
            {
                fail(plan, 5);
            }
        }
        // /proc/sys read-only, as container runtimes do.
        if libc::mount(
            plan.proc_sys.as_ptr(),
            plan.proc_sys.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        ) != 0
            || libc::mount(
                std::ptr::null(),
                plan.proc_sys.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND
                    | libc::MS_REMOUNT
                    | libc::MS_RDONLY
                    | libc::MS_NOSUID
                    | libc::MS_NODEV
                    | libc::MS_NOEXEC,
                std::ptr::null(),
            ) != 0
        {
            fail(plan, 21);
        }
        for (path, mode, device) in &plan.devices {
            if libc::mknod(path.as_ptr(), *mode, *device) != 0 {
                fail(plan, 6);
            }
        }
        for (target, link) in &plan.symlinks {
            if libc::symlink(target.as_ptr(), link.as_ptr()) != 0
                && *libc::__errno_location() != libc::EEXIST
            {
                fail(plan, 7);
            }
        }
        if libc::chdir(plan.rootfs.as_ptr()) != 0 {
            fail(plan, 8);
        }
        // pivot_root(".", "."): the old root ends up on top of the new one; detach it.
        if libc::syscall(libc::SYS_pivot_root, plan.dot.as_ptr(), plan.dot.as_ptr()) != 0 {
            fail(plan, 8);
        }
        if libc::umount2(plan.dot.as_ptr(), libc::MNT_DETACH) != 0 {
            fail(plan, 9);
        }
        if libc::chdir(plan.slash.as_ptr()) != 0 {
            fail(plan, 9);
        }
        if libc::sethostname(plan.hostname.as_ptr(), plan.hostname.as_bytes().len()) != 0 {
            fail(plan, 10);
        }
        let mut cap = 0;
        while cap <= plan.cap_last {
            let keep = cap < 64 && plan.bounding_set & (1u64 << cap) != 0;
            if !keep
                && libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0
                && *libc::__errno_location() != libc::EINVAL
            {
                fail(plan, 11);
            }
            cap += 1;
        }
        if plan.no_new_privs && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            fail(plan, 11);
        }
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        );
        if libc::setgroups(plan.groups.len(), plan.groups.as_ptr()) != 0 {
            fail(plan, 12);
        }
        if libc::setresgid(plan.gid, plan.gid, plan.gid) != 0 {
            fail(plan, 13);
        }
        // From root to a non-zero uid: the kernel clears the permitted and effective sets.
        if libc::setresuid(plan.uid, plan.uid, plan.uid) != 0 {
            fail(plan, 14);
        }
        // And the inheritable set, so nothing is left at all.
        let header = [LINUX_CAPABILITY_VERSION_3, 0u32];
        let data = [0u32; 6];
        if libc::syscall(libc::SYS_capset, header.as_ptr(), data.as_ptr()) != 0 {
            fail(plan, 15);
        }
        if libc::chdir(plan.working_dir.as_ptr()) != 0 {
            fail(plan, 16);
        }
        libc::umask(0o022);
        let null = libc::open(plan.dev_null.as_ptr(), libc::O_RDWR);
        if null < 0 {
            fail(plan, 17);
        }
        if libc::dup2(null, 0) < 0
            || libc::dup2(plan.log_fd, 1) < 0
            || libc::dup2(plan.log_fd, 2) < 0
        {
            fail(plan, 18);
        }
        // The daemon's descriptors (sockets, its log) must not leak into the pod.
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC);
        // The Rust runtime ignores SIGPIPE; an ignored signal stays ignored across exec.
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        let mut last_errno = libc::ENOENT;
        for candidate in &plan.exec_candidates {
            libc::execve(candidate.as_ptr(), plan.argv.as_ptr(), plan.envp.as_ptr());
            let errno = *libc::__errno_location();
            if errno != libc::ENOENT && errno != libc::ENOTDIR && errno != libc::EACCES {
                fail(plan, 19);
            }
            if errno == libc::EACCES || last_errno == libc::ENOENT {
                last_errno = errno;
            }
        }
        *libc::__errno_location() = last_errno;
        fail(plan, 19)
    }
}

/// The user's supplementary groups from the image's `/etc/group` (as container runtimes do),
/// with the primary group first.
pub fn image_groups(rootfs: &Path, user: &str, gid: u32) -> Vec<u32> {
    let mut groups = vec![gid];
    if let Ok(text) = fs::read_to_string(rootfs.join("etc/group")) {
        for line in text.lines() {
            let fields: Vec<&str> = line.split(':').collect();
            if let [_, _, id, members] = fields.as_slice()
                && members.split(',').any(|m| m == user)
                && let Ok(id) = id.parse::<u32>()
                && !groups.contains(&id)
            {
                groups.push(id);
            }
        }
    }
    groups
}

/// The user name of a uid in the image's `/etc/passwd`.
pub fn image_user_name(rootfs: &Path, uid: u32) -> Option<String> {
    let text = fs::read_to_string(rootfs.join("etc/passwd")).ok()?;
    text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() > 2 && fields[2].parse::<u32>().ok() == Some(uid))
            .then(|| fields[0].to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bounding_set_is_the_runtimes_default_changed_by_the_deployment() {
        // Docker's and containerd's well-known default: CapBnd 00000000a80425fb.
        assert_eq!(bounding_set(&[], &[]).unwrap(), 0xa80425fb);
        assert_eq!(bounding_set(&[], &["ALL".into()]).unwrap(), 0);
        assert_eq!(
            bounding_set(&["NET_ADMIN".into()], &["ALL".into()]).unwrap(),
            1 << 12
        );
        assert_eq!(
            bounding_set(&[], &["CAP_NET_RAW".into()]).unwrap(),
            0xa80405fb
        );
        assert!(
            bounding_set(&["NET_FLY".into()], &[])
                .unwrap_err()
                .contains("NET_FLY")
        );
    }

    #[test]
    fn finds_commands_on_the_container_path() {
        let env = vec!["PATH=/opt/venv/bin:/usr/bin".to_string()];
        assert_eq!(
            exec_candidates("start-notebook.py", &env),
            vec![
                "/opt/venv/bin/start-notebook.py",
                "/usr/bin/start-notebook.py"
            ]
        );
        assert_eq!(exec_candidates("/bin/sh", &env), vec!["/bin/sh"]);
    }

    #[test]
    fn reads_groups_and_users_from_the_image() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("etc")).unwrap();
        fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\nusers:x:100:\nsudo:x:27:\naudio:x:29:jovyan,other\n",
        )
        .unwrap();
        fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/bash\njovyan:x:1000:100::/home/jovyan:/bin/bash\n",
        )
        .unwrap();
        assert_eq!(image_groups(dir.path(), "jovyan", 100), vec![100, 29]);
        assert_eq!(image_user_name(dir.path(), 1000).as_deref(), Some("jovyan"));
        assert_eq!(image_user_name(dir.path(), 7), None);
    }
}
