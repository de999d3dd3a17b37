//! The pod's first process between the clone and the exec: it waits until the daemon has
//! recorded it, then makes its namespaces, root and user from the [`ChildPlan`] with system
//! calls only (the daemon is multi-threaded: the child is a copy of one thread, and may not
//! allocate or take a lock), and reports a failed step as `(step, errno)` on a pipe.
#![allow(unsafe_code)] // the pod's first process between clone3 and exec: system calls only

use super::plan::ChildPlan;

const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// The steps of the child, reported by number when one fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Step {
    WaitForDaemon = 0,
    JoinNetwork = 1,
    CgroupNamespace = 2,
    PrivateMounts = 3,
    OverlayRoot = 4,
    Mount = 5,
    DeviceNode = 6,
    DevSymlink = 7,
    PivotRoot = 8,
    DetachHostRoot = 9,
    Hostname = 10,
    BoundingSet = 11,
    SupplementaryGroups = 12,
    GroupId = 13,
    UserId = 14,
    ClearCapabilities = 15,
    WorkingDir = 16,
    DevNull = 17,
    Stdio = 18,
    Exec = 19,
    MountPoint = 20,
    ProcSysReadOnly = 21,
    Seccomp = 22,
}

impl Step {
    const ALL: [Step; 23] = [
        Step::WaitForDaemon,
        Step::JoinNetwork,
        Step::CgroupNamespace,
        Step::PrivateMounts,
        Step::OverlayRoot,
        Step::Mount,
        Step::DeviceNode,
        Step::DevSymlink,
        Step::PivotRoot,
        Step::DetachHostRoot,
        Step::Hostname,
        Step::BoundingSet,
        Step::SupplementaryGroups,
        Step::GroupId,
        Step::UserId,
        Step::ClearCapabilities,
        Step::WorkingDir,
        Step::DevNull,
        Step::Stdio,
        Step::Exec,
        Step::MountPoint,
        Step::ProcSysReadOnly,
        Step::Seccomp,
    ];

    /// The step a child reported (`None` for a number no step has).
    pub fn from_code(code: u32) -> Option<Step> {
        Step::ALL.get(code as usize).copied()
    }

    /// What the child was doing, for messages: "the pod's first process failed <this>".
    pub fn describe(self) -> &'static str {
        match self {
            Step::WaitForDaemon => "waiting for the daemon",
            Step::JoinNetwork => "joining the pod's network namespace",
            Step::CgroupNamespace => "creating the cgroup namespace",
            Step::PrivateMounts => "making mounts private",
            Step::OverlayRoot => "mounting the overlay root",
            Step::Mount => "mounting a filesystem in the pod",
            Step::DeviceNode => "creating a device node",
            Step::DevSymlink => "creating a symlink in /dev",
            Step::PivotRoot => "pivot_root into the pod's root",
            Step::DetachHostRoot => "detaching the host's root",
            Step::Hostname => "setting the hostname",
            Step::BoundingSet => "dropping the capability bounding set",
            Step::SupplementaryGroups => "setting supplementary groups",
            Step::GroupId => "setting the group id",
            Step::UserId => "setting the user id",
            Step::ClearCapabilities => "clearing capabilities",
            Step::WorkingDir => "changing to the working directory",
            Step::DevNull => "opening /dev/null",
            Step::Stdio => "setting up stdio",
            Step::Exec => "executing the container's command",
            Step::MountPoint => "creating a mount point",
            Step::ProcSysReadOnly => "making /proc/sys read-only",
            Step::Seccomp => "loading the seccomp filter",
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.describe())
    }
}

/// Report a failed step to the daemon and exit. Async-signal-safe.
fn fail(plan: &ChildPlan, step: Step) -> ! {
    // SAFETY: errno location of this thread; write and _exit are async-signal-safe.
    unsafe {
        let errno = *libc::__errno_location();
        let mut report = [0u8; 8];
        report[..4].copy_from_slice(&(step as u32).to_le_bytes());
        report[4..].copy_from_slice(&errno.to_le_bytes());
        libc::write(plan.err_write, report.as_ptr().cast(), report.len());
        libc::_exit(127)
    }
}

/// The child, between clone and exec: system calls only.
pub(super) fn child_main(plan: &ChildPlan) -> ! {
    // SAFETY: (the whole function) plain system calls on pointers into `plan`, which this process's
    // copy of the parent's memory keeps alive; nothing allocates or takes a lock.
    unsafe {
        let mut byte = 0u8;
        if libc::read(plan.go_read, (&mut byte as *mut u8).cast(), 1) != 1 {
            // The daemon died or gave up before releasing us: leave no trace.
            libc::_exit(1);
        }
        if libc::setns(plan.netns, libc::CLONE_NEWNET) != 0 {
            fail(plan, Step::JoinNetwork);
        }
        // Already in the pod's cgroup (CLONE_INTO_CGROUP): the new namespace is rooted there.
        if libc::unshare(libc::CLONE_NEWCGROUP) != 0 {
            fail(plan, Step::CgroupNamespace);
        }
        if libc::mount(
            std::ptr::null(),
            plan.slash.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            fail(plan, Step::PrivateMounts);
        }
        if libc::mount(
            plan.overlay.as_ptr(),
            plan.rootfs.as_ptr(),
            plan.overlay.as_ptr(),
            0,
            plan.overlay_options.as_ptr().cast(),
        ) != 0
        {
            fail(plan, Step::OverlayRoot);
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
                fail(plan, Step::MountPoint);
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
                fail(plan, Step::Mount);
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
            fail(plan, Step::ProcSysReadOnly);
        }
        for (path, mode, device) in &plan.devices {
            if libc::mknod(path.as_ptr(), *mode, *device) != 0 {
                fail(plan, Step::DeviceNode);
            }
        }
        for (target, link) in &plan.symlinks {
            if libc::symlink(target.as_ptr(), link.as_ptr()) != 0
                && *libc::__errno_location() != libc::EEXIST
            {
                fail(plan, Step::DevSymlink);
            }
        }
        if libc::chdir(plan.rootfs.as_ptr()) != 0 {
            fail(plan, Step::PivotRoot);
        }
        // pivot_root(".", "."): the old root ends up on top of the new one; detach it.
        if libc::syscall(libc::SYS_pivot_root, plan.dot.as_ptr(), plan.dot.as_ptr()) != 0 {
            fail(plan, Step::PivotRoot);
        }
        if libc::umount2(plan.dot.as_ptr(), libc::MNT_DETACH) != 0 {
            fail(plan, Step::DetachHostRoot);
        }
        if libc::chdir(plan.slash.as_ptr()) != 0 {
            fail(plan, Step::DetachHostRoot);
        }
        if libc::sethostname(plan.hostname.as_ptr(), plan.hostname.as_bytes().len()) != 0 {
            fail(plan, Step::Hostname);
        }
        let mut cap = 0;
        while cap <= plan.cap_last {
            let keep = cap < 64 && plan.bounding_set & (1u64 << cap) != 0;
            if !keep
                && libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0
                && *libc::__errno_location() != libc::EINVAL
            {
                fail(plan, Step::BoundingSet);
            }
            cap += 1;
        }
        if plan.no_new_privs && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            fail(plan, Step::BoundingSet);
        }
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        );
        // The seccomp filter, while this process is still root with CAP_SYS_ADMIN: without
        // no_new_privs the kernel refuses a filter to a process without it, and the user change
        // below empties every capability (runc loads it here too). From now on each call is
        // filtered; the few left before the exec are ones the profile allows.
        for filter in &plan.seccomp {
            if libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                filter as *const libc::sock_fprog,
            ) != 0
            {
                fail(plan, Step::Seccomp);
            }
        }
        if libc::setgroups(plan.groups.len(), plan.groups.as_ptr()) != 0 {
            fail(plan, Step::SupplementaryGroups);
        }
        if libc::setresgid(plan.gid, plan.gid, plan.gid) != 0 {
            fail(plan, Step::GroupId);
        }
        // From root to a non-zero uid: the kernel clears the permitted and effective sets.
        if libc::setresuid(plan.uid, plan.uid, plan.uid) != 0 {
            fail(plan, Step::UserId);
        }
        // And the inheritable set, so nothing is left at all.
        let header = [LINUX_CAPABILITY_VERSION_3, 0u32];
        let data = [0u32; 6];
        if libc::syscall(libc::SYS_capset, header.as_ptr(), data.as_ptr()) != 0 {
            fail(plan, Step::ClearCapabilities);
        }
        if libc::chdir(plan.working_dir.as_ptr()) != 0 {
            fail(plan, Step::WorkingDir);
        }
        libc::umask(0o022);
        let null = libc::open(plan.dev_null.as_ptr(), libc::O_RDWR);
        if null < 0 {
            fail(plan, Step::DevNull);
        }
        if libc::dup2(null, 0) < 0
            || libc::dup2(plan.log_fd, 1) < 0
            || libc::dup2(plan.log_fd, 2) < 0
        {
            fail(plan, Step::Stdio);
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
                fail(plan, Step::Exec);
            }
            if errno == libc::EACCES || last_errno == libc::ENOENT {
                last_errno = errno;
            }
        }
        *libc::__errno_location() = last_errno;
        fail(plan, Step::Exec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reported_step_number_names_the_step() {
        for (code, step) in Step::ALL.iter().enumerate() {
            assert_eq!(Step::from_code(code as u32), Some(*step));
            assert_eq!(*step as u32, code as u32);
        }
        assert_eq!(
            Step::from_code(19).map(Step::describe),
            Some("executing the container's command")
        );
        assert_eq!(Step::from_code(99), None);
    }
}
