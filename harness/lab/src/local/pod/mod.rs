//! The pod sandbox: the container's first process, cloned into new pid, mount, uts and ipc
//! namespaces, straight into the pod's cgroups (`CLONE_INTO_CGROUP` for its v2 cgroup; the
//! cloning thread enters its v1 cgroups, where the host keeps controllers there, for the
//! clone: see [`crate::local::cgroup_limits`]), so it is never outside them, then moved into the
//! pod's network namespace and a cgroup namespace rooted at its cgroups. It mounts an overlay
//! (the cached image read-only, a per-pod writable layer), `/proc`, a minimal `/dev` (with its
//! own devpts for the Jupyter terminals), a read-only `/sys` with its cgroups (read-only) at
//! `/sys/fs/cgroup`, pivots into it, sets its hostname, loads its seccomp filter, becomes the
//! container's user with no capabilities and execs the container's command, which is then
//! pid 1 of the pod, as in a Kubernetes pod.
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
//!
//! Seccomp as a runtime gives it: the Deployment's `RuntimeDefault` profile is compiled before
//! the clone ([`crate::local::seccomp`]) and loaded by the child. Without no_new_privs the
//! kernel lets only a process with CAP_SYS_ADMIN load a filter, so the child loads it while it
//! is still root with every capability, after the bounding set is dropped and before it
//! changes its user (which empties its capabilities), as runc does; the calls it makes after
//! that (setgroups, setresgid, setresuid, capset, chdir, open, dup2, close_range, signal
//! masks, execve) are ones the profile allows. The filter then holds for the container's
//! command and everything it starts (`Seccomp: 2` in `/proc/<pid>/status`).
//!
//! Its parts: `plan` (everything the child needs, built before the clone: the compiled
//! filter too), `child` (the code between the clone and the exec, and its failure report),
//! `capabilities` (the bounding set) and `image_users` (the image's users and groups). This module makes the pod's directories
//! and descriptors, clones, releases the child once its pid is recorded, reads its report and
//! reaps it.
#![allow(unsafe_code)] // clone3(2) into the pod's cgroup and namespaces

mod capabilities;
mod child;
mod image_users;
mod plan;

use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use crate::local::cgroup_limits::PodCgroups;
use crate::local::seccomp::Profile;
use crate::{IoContext, LabError};
use child::child_main;
use plan::{ChildFds, ChildPlan};

pub use capabilities::{
    RUNTIME_DEFAULT_CAPABILITIES, UnknownCapability, bounding_set, capability_number,
};
pub use child::Step;
pub use image_users::{image_groups, image_user_name};

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
const CLONE_PIDFD: u64 = 0x1000;
const P_PIDFD: libc::idtype_t = 3;

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
    /// The seccomp profile of the container's processes (`None`: unconfined).
    pub seccomp: Option<Profile>,
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

/// Why the pod's first process could not start (part "the pod sandbox" of a [`LabError`]).
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    /// A path, argument or environment entry holds a NUL byte, which no system call takes.
    #[error("a NUL byte in {text:?}")]
    NulByte { text: String },
    /// The container has no command to run.
    #[error("the container has no command (the Deployment gives none)")]
    NoCommand,
    /// The container has no image to run on.
    #[error("the container has no image layer")]
    NoImageLayer,
    /// The first process reported a failed step (`None`: a step number no step has).
    #[error(
        "the pod's first process failed {}{}: {error}",
        step.map_or("an unknown step", Step::describe),
        program.as_ref().map(|p| format!(" ({p})")).unwrap_or_default()
    )]
    StepFailed {
        step: Option<Step>,
        /// The command, when executing it failed.
        program: Option<String>,
        error: std::io::Error,
    },
}

impl From<PodError> for LabError {
    fn from(error: PodError) -> LabError {
        LabError::backend("the pod sandbox", error)
    }
}

/// The running container's first process.
#[derive(Debug)]
pub struct PodProcess {
    pub pid: u32,
    /// A pidfd of it: readable when it exits; reaps it with [`wait_pidfd`].
    pub pidfd: OwnedFd,
}

fn pipe() -> Result<(OwnedFd, OwnedFd), LabError> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context(|| "creating a pipe");
    }
    // SAFETY: fresh descriptors we own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Prepare the pod's directories and start its first process in the pod's cgroups (made, with
/// their limits, by the caller). `record` is called with the pid as soon as it exists and
/// before it does anything (the state file records it), then the process goes on; the call
/// returns once the container's command is executing.
pub fn spawn(
    spec: &ContainerSpec,
    cgroups: &PodCgroups,
    netns_fd: RawFd,
    record: impl FnOnce(u32) -> Result<(), LabError>,
) -> Result<PodProcess, LabError> {
    let (upper, work, rootfs) = (spec.upper_dir(), spec.work_dir(), spec.rootfs_dir());
    for dir in [&upper, &work, &rootfs] {
        fs::create_dir_all(dir).context(|| format!("creating {}", dir.display()))?;
    }
    // The overlay's root takes the upper dir's owner and mode.
    fs::set_permissions(&upper, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .context(|| format!("chmod {}", upper.display()))?;
    if spec.argv.is_empty() {
        return Err(PodError::NoCommand.into());
    }
    if spec.lower_dirs.is_empty() {
        return Err(PodError::NoImageLayer.into());
    }

    let cgroup = &cgroups.v2;
    let cgroup_dir =
        fs::File::open(cgroup).context(|| format!("opening cgroup {}", cgroup.display()))?;
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(libc::O_CLOEXEC)
        .open(&spec.log_file)
        .context(|| format!("opening {}", spec.log_file.display()))?;
    let (go_read, go_write) = pipe()?;
    let (err_read, err_write) = pipe()?;

    let plan = ChildPlan::new(
        spec,
        ChildFds {
            go_read: go_read.as_raw_fd(),
            err_write: err_write.as_raw_fd(),
            netns: netns_fd,
            log: log.as_raw_fd(),
        },
        cgroups,
    )?;

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
    // The pod's v1 cgroups (if any) hold this thread for the clone, so the child is born there.
    let placement = cgroups.enter()?;
    // SAFETY: clone3 without CLONE_VM is a fork of this thread; the child only runs
    // `child_main`, which makes system calls on the prepared plan and never returns.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if pid == 0 {
        child_main(&plan);
    }
    drop(placement);
    if pid < 0 {
        return Err(std::io::Error::last_os_error())
            .context(|| "clone3 of the pod's first process");
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
            Err(std::io::Error::last_os_error()).context(|| "starting the pod")
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
            return Err(e).context(|| "reading the pod's start report");
        }
        if n == 0 {
            break;
        }
        got += n as usize;
    }
    if got == 0 {
        return Ok(PodProcess { pid, pidfd });
    }
    let code = u32::from_le_bytes(report[..4].try_into().unwrap_or_default());
    let errno = i32::from_le_bytes(report[4..].try_into().unwrap_or_default());
    let _ = wait_pidfd(&pidfd);
    let step = Step::from_code(code);
    Err(PodError::StepFailed {
        step,
        program: (step == Some(Step::Exec)).then(|| spec.argv[0].clone()),
        error: std::io::Error::from_raw_os_error(errno),
    }
    .into())
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
