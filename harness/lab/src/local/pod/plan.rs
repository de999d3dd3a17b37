//! The plan of the pod's first process: everything it needs between the clone and the exec
//! (paths and strings as C strings, the mounts, devices and links of its root, its user and
//! capabilities, its compiled seccomp filter, the command and its environment), built before
//! the clone so that the child allocates nothing.

use std::ffi::CString;
use std::fs;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::capabilities::capability_number;
use super::{ContainerSpec, PodError};
use crate::LabError;
use crate::local::cgroup_limits::PodCgroups;
use crate::local::seccomp::{self, Container};

pub(super) struct MountStep {
    pub(super) source: CString,
    pub(super) target: CString,
    pub(super) fstype: CString,
    pub(super) flags: libc::c_ulong,
    pub(super) data: Option<CString>,
    /// Create the mount point first (mode), ignoring "exists".
    pub(super) mkdir: Option<libc::mode_t>,
    /// A failure is ignored (optional mounts such as mqueue).
    pub(super) optional: bool,
}

/// Everything the child needs, built before the clone.
pub(super) struct ChildPlan {
    pub(super) go_read: RawFd,
    pub(super) err_write: RawFd,
    pub(super) netns: RawFd,
    pub(super) log_fd: RawFd,
    pub(super) rootfs: CString,
    pub(super) overlay_options: CString,
    pub(super) overlay: CString,
    pub(super) mounts: Vec<MountStep>,
    pub(super) proc_sys: CString,
    pub(super) devices: Vec<(CString, libc::mode_t, libc::dev_t)>,
    pub(super) symlinks: Vec<(CString, CString)>,
    pub(super) dot: CString,
    pub(super) slash: CString,
    pub(super) dev_null: CString,
    pub(super) hostname: CString,
    pub(super) cap_last: libc::c_ulong,
    pub(super) bounding_set: u64,
    pub(super) no_new_privs: bool,
    /// The seccomp filters to load, in order (empty: unconfined); they point into
    /// `_seccomp_programs`.
    pub(super) seccomp: Vec<libc::sock_fprog>,
    pub(super) _seccomp_programs: Vec<Vec<libc::sock_filter>>,
    pub(super) groups: Vec<libc::gid_t>,
    pub(super) uid: libc::uid_t,
    pub(super) gid: libc::gid_t,
    pub(super) working_dir: CString,
    pub(super) exec_candidates: Vec<CString>,
    pub(super) argv: Vec<*const libc::c_char>,
    pub(super) envp: Vec<*const libc::c_char>,
    /// What `argv` and `envp` point into: kept with them.
    pub(super) _argv_strings: Vec<CString>,
    pub(super) _env_strings: Vec<CString>,
}

/// The descriptors the child uses, open in the daemon when the plan is made.
pub(super) struct ChildFds {
    /// Readable when the daemon has recorded the child's pid: the child waits for it.
    pub(super) go_read: RawFd,
    /// Where the child reports a failed step (close-on-exec: a successful exec closes it).
    pub(super) err_write: RawFd,
    /// The pod's network namespace.
    pub(super) netns: RawFd,
    /// The container's log (its stdout and stderr).
    pub(super) log: RawFd,
}

impl ChildPlan {
    /// The plan for `spec`'s first process, with its root at `spec.rootfs_dir()` (an overlay of
    /// the image layers and `spec.upper_dir()`).
    pub(super) fn new(
        spec: &ContainerSpec,
        fds: ChildFds,
        cgroups: &PodCgroups,
    ) -> Result<ChildPlan, LabError> {
        let (upper, work, rootfs) = (spec.upper_dir(), spec.work_dir(), spec.rootfs_dir());
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
        let mut mounts = vec![
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
        ];
        mounts.extend(cgroup_mounts(&in_root, cgroups)?);
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

        let seccomp_programs = match &spec.seccomp {
            Some(profile) => {
                let bounding_set = spec.bounding_set;
                let has_capability = |name: &str| {
                    capability_number(name).is_some_and(|n| n < 64 && bounding_set & (1 << n) != 0)
                };
                seccomp::compile(
                    profile,
                    &Container {
                        has_capability: &has_capability,
                        kernel: seccomp::running_kernel(),
                    },
                )?
                .programs
            }
            None => Vec::new(),
        };
        let seccomp_filters = seccomp_programs
            .iter()
            .map(|program| libc::sock_fprog {
                // seccompiler refuses programs over BPF_MAXINSNS (4096) instructions.
                len: program.len() as libc::c_ushort,
                filter: program.as_ptr().cast_mut(),
            })
            .collect();
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

        Ok(ChildPlan {
            go_read: fds.go_read,
            err_write: fds.err_write,
            netns: fds.netns,
            log_fd: fds.log,
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
            seccomp: seccomp_filters,
            _seccomp_programs: seccomp_programs,
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
            _argv_strings: argv_c,
            _env_strings: env_c,
        })
    }
}

/// The pod's view of its cgroups at `/sys/fs/cgroup`, read-only and rooted at the pod's own
/// (the cgroup namespace): cgroup v2 there when every limit is on v2; on a host that keeps
/// controllers in cgroup v1, a tmpfs with each of the pod's v1 hierarchies and cgroup v2 at
/// `unified` (as the host lays them out, and as Docker shows them). Optional, like a runtime's:
/// the limits hold whether the pod sees them or not.
fn cgroup_mounts(
    in_root: &dyn Fn(&str) -> Result<CString, LabError>,
    cgroups: &PodCgroups,
) -> Result<Vec<MountStep>, LabError> {
    let read_only = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_RDONLY;
    let cgroup2 = |at: &str, mkdir| -> Result<MountStep, LabError> {
        Ok(MountStep {
            source: cstring("cgroup")?,
            target: in_root(at)?,
            fstype: cstring("cgroup2")?,
            flags: read_only,
            data: None,
            mkdir,
            optional: true,
        })
    };
    if cgroups.v1.is_empty() {
        return Ok(vec![cgroup2("sys/fs/cgroup", None)?]);
    }
    let tmpfs = |flags| -> Result<MountStep, LabError> {
        Ok(MountStep {
            source: cstring("tmpfs")?,
            target: in_root("sys/fs/cgroup")?,
            fstype: cstring("tmpfs")?,
            flags,
            data: Some(cstring("mode=755,size=64k")?),
            mkdir: None,
            optional: true,
        })
    };
    let mut steps = vec![tmpfs(libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC)?];
    for cgroup in &cgroups.v1 {
        let hierarchy = &cgroup.hierarchy;
        let name = hierarchy
            .mount
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| hierarchy.mount_options());
        steps.push(MountStep {
            source: cstring("cgroup")?,
            target: in_root(&format!("sys/fs/cgroup/{name}"))?,
            fstype: cstring("cgroup")?,
            flags: read_only,
            data: Some(cstring(hierarchy.mount_options())?),
            mkdir: Some(0o555),
            optional: true,
        });
    }
    steps.push(cgroup2("sys/fs/cgroup/unified", Some(0o555))?);
    // Then the tmpfs itself read-only, as the rest.
    steps.push(tmpfs(libc::MS_REMOUNT | read_only)?);
    Ok(steps)
}

pub(super) fn cstring(text: impl AsRef<[u8]>) -> Result<CString, LabError> {
    CString::new(text.as_ref().to_vec()).map_err(|_| {
        PodError::NulByte {
            text: String::from_utf8_lossy(text.as_ref()).into_owned(),
        }
        .into()
    })
}

pub(super) fn path_cstring(path: &Path) -> Result<CString, LabError> {
    cstring(path.as_os_str().as_bytes())
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
