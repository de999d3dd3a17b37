//! The host's mounts, and the two kernel facilities guardlab may add itself: a cgroup v2 mount
//! (hosts that mount only cgroup v1) and a filesystem module that is not loaded (overlay).
#![allow(unsafe_code)] // mount(2) of cgroup v2 where the host has none

use std::ffi::CString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Host, HostError, Installs, LedgerKind, OWN_CGROUP2_MOUNT, Progress, catalog};

/// One line of `/proc/self/mountinfo`, the parts guardlab uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// `tracefs`, `cgroup2`, `bpf`...
    pub fstype: String,
    /// Where it is mounted.
    pub target: PathBuf,
}

/// The mounts of this process's mount namespace.
pub fn mounts() -> Result<Vec<Mount>, HostError> {
    let text = fs::read_to_string("/proc/self/mountinfo").map_err(|source| HostError::Io {
        context: "reading /proc/self/mountinfo".into(),
        source,
    })?;
    Ok(parse_mountinfo(&text))
}

/// Parses mountinfo text (`... mountpoint ... - fstype source options` per line).
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split_whitespace().next()?;
            let target = left.split_whitespace().nth(4)?;
            Some(Mount {
                fstype: fstype.to_string(),
                target: PathBuf::from(unescape_mountinfo(target)),
            })
        })
        .collect()
}

/// mountinfo escapes spaces and a few other bytes as `\ooo`.
pub fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        // `\ooo` with a value that fits a byte; anything else is kept as it is.
        let escaped = (bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b)))
        .then(|| {
            bytes[i + 1..i + 4]
                .iter()
                .fold(0u32, |v, b| v * 8 + u32::from(b - b'0'))
        })
        .and_then(|v| u8::try_from(v).ok());
        if let Some(value) = escaped {
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where cgroup v2 is mounted (`/sys/fs/cgroup` on pure v2 hosts, `/sys/fs/cgroup/unified` on
/// hybrid ones), if anywhere.
pub fn cgroup2_mount() -> Result<Option<PathBuf>, HostError> {
    Ok(mounts()?
        .into_iter()
        .find(|m| m.fstype == "cgroup2")
        .map(|m| m.target))
}

fn kernel_filesystems() -> String {
    fs::read_to_string("/proc/filesystems").unwrap_or_default()
}

fn has_filesystem(filesystems: &str, name: &str) -> bool {
    filesystems
        .lines()
        .any(|l| l.split_whitespace().last() == Some(name))
}

impl Host {
    /// Where cgroup v2 is mounted; on a host that mounts none, guardlab mounts it at
    /// [`OWN_CGROUP2_MOUNT`] after saying so (refused under `--no-install`). The hierarchy is
    /// the kernel's one v2 hierarchy: a second mount of it changes nothing for cgroup v1 users.
    pub fn ensure_cgroup2(&self, progress: &dyn Progress) -> Result<PathBuf, HostError> {
        if let Some(found) = cgroup2_mount()? {
            return Ok(found);
        }
        if !has_filesystem(&kernel_filesystems(), "cgroup2") {
            return Err(HostError::Kernel {
                what: "cgroup v2".into(),
                hint: "the lab's pods and the sensor's hooks need it (CONFIG_CGROUPS, Linux 4.5+)"
                    .into(),
            });
        }
        let target = Path::new(OWN_CGROUP2_MOUNT);
        if self.installs == Installs::Refused {
            return Err(HostError::Mount {
                what: "cgroup v2".into(),
                why: format!(
                    "installs and mounts are refused (--no-install); mount it yourself, e.g. \
                     `mkdir -p {0} && mount -t cgroup2 none {0}`",
                    target.display()
                ),
            });
        }
        let _lock = self.install_lock()?;
        if let Some(found) = cgroup2_mount()? {
            return Ok(found);
        }
        progress.phase(&format!(
            "mounting cgroup v2 at {} (no cgroup v2 mount on this host; the lab's pods and the \
             sensor's hooks need one); `guardlab clean` unmounts it",
            target.display()
        ));
        fs::create_dir_all(target).map_err(|source| HostError::Io {
            context: format!("creating {}", target.display()),
            source,
        })?;
        let c = |s: &str| CString::new(s).expect("no NUL in a constant");
        let dst =
            CString::new(target.as_os_str().as_encoded_bytes()).map_err(|_| HostError::Mount {
                what: "cgroup v2".into(),
                why: "the mount point has a NUL byte".into(),
            })?;
        // SAFETY: mount(2) with valid C strings and no data.
        let rc = unsafe {
            libc::mount(
                c("none").as_ptr(),
                dst.as_ptr(),
                c("cgroup2").as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(HostError::Mount {
                what: "cgroup v2".into(),
                why: format!(
                    "mount -t cgroup2 none {} failed: {}",
                    target.display(),
                    std::io::Error::last_os_error()
                ),
            });
        }
        self.ledger.record(
            LedgerKind::Mount,
            &target.to_string_lossy(),
            "cgroup v2 for the lab's pods and the sensor",
        )?;
        Ok(target.to_path_buf())
    }

    /// Makes sure the kernel knows the filesystem `name` (`overlay`): when it is not in
    /// `/proc/filesystems`, loads its module with modprobe after saying so (refused under
    /// `--no-install`).
    pub fn ensure_filesystem(
        &self,
        name: &str,
        why: &str,
        progress: &dyn Progress,
    ) -> Result<(), HostError> {
        if has_filesystem(&kernel_filesystems(), name) {
            return Ok(());
        }
        let hint = |extra: &str| HostError::Kernel {
            what: format!("{name} filesystem"),
            hint: format!("{why}; {extra}"),
        };
        if self.installs == Installs::Refused {
            return Err(hint(&format!(
                "installs and module loads are refused (--no-install): run `modprobe {name}`"
            )));
        }
        self.ensure(&[&catalog::MODPROBE], progress)?;
        let modprobe = self
            .find_program("modprobe")
            .unwrap_or_else(|| PathBuf::from("modprobe"));
        progress.phase(&format!(
            "loading the kernel module {name} (modprobe {name}): {why}"
        ));
        let loaded = Command::new(modprobe)
            .arg(name)
            .status()
            .is_ok_and(|s| s.success());
        if !loaded || !has_filesystem(&kernel_filesystems(), name) {
            return Err(hint(&format!(
                "`modprobe {name}` did not add it: the kernel needs CONFIG_{}_FS",
                name.to_uppercase()
            )));
        }
        self.ledger.record(LedgerKind::Module, name, why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_gives_each_mounts_type_and_unescaped_target() {
        let text = "\
22 1 0:21 / /sys rw,nosuid shared:7 - sysfs sysfs rw
35 22 0:30 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw
36 22 0:31 / /sys/kernel/tracing rw - tracefs nodev rw
40 22 0:32 / /mnt/with\\040space rw - tmpfs tmpfs rw
41 22 0:33 / /mnt/odd\\777 rw - tmpfs tmpfs rw
garbage
";
        let mounts = parse_mountinfo(text);
        let got: Vec<(&str, &str)> = mounts
            .iter()
            .map(|m| (m.fstype.as_str(), m.target.to_str().unwrap()))
            .collect();
        assert_eq!(
            got,
            [
                ("sysfs", "/sys"),
                ("cgroup2", "/sys/fs/cgroup/unified"),
                ("tracefs", "/sys/kernel/tracing"),
                ("tmpfs", "/mnt/with space"),
                // Not an escape the kernel writes (over 255): kept as it is.
                ("tmpfs", "/mnt/odd\\777"),
            ]
        );
    }

    #[test]
    fn filesystems_are_matched_by_their_whole_name() {
        let list = "nodev\tsysfs\nnodev\tcgroup2\n\text4\nnodev\toverlay\n";
        assert!(has_filesystem(list, "overlay"));
        assert!(has_filesystem(list, "ext4"));
        assert!(!has_filesystem(list, "cgroup"), "cgroup2 is not cgroup");
        assert!(!has_filesystem(list, "over"));
    }

    #[test]
    fn a_missing_module_under_no_install_is_refused_naming_modprobe() {
        let dir = tempfile::tempdir().unwrap();
        let mut host = Host::new(true);
        host.ledger = crate::Ledger::in_dir(dir.path());
        let err = host
            .ensure_filesystem("nosuchfs", "a test needs it", &crate::NoProgress)
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("nosuchfs filesystem")
                && text.contains("modprobe nosuchfs")
                && text.contains("--no-install"),
            "{text}"
        );
        assert!(!host.ledger.path().exists(), "nothing recorded");
    }
}
