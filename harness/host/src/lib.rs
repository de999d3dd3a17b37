//! What guardlab needs from the host it runs on, and every change it makes there.
//!
//! guardlab runs on a machine nobody prepared for it: no tracefs, no clang, no debootstrap, maybe
//! no cgroup v2 mount. Each thing it needs from the host is a [`Requirement`] (a program, a
//! header, a Python module) with the Debian package that brings it and the reason guardlab needs
//! it. [`Host::ensure`] checks a set of them and, for what is missing, either
//!
//! - installs the packages with apt-get, after saying what it installs and why (one phase line,
//!   the installer's output as detail), and records each package it installed in the
//!   [`Ledger`] so that `guardlab clean` can list them later; or
//! - refuses, when installs are refused (`--no-install`, or `GUARDLAB_NO_INSTALL=1`), when this
//!   process is not root, or when the host has no apt-get: the error names every missing thing,
//!   its package and the command that installs them.
//!
//! Mounts ([`Host::ensure_cgroup2`]) and kernel modules ([`Host::ensure_filesystem`]) follow the
//! same rule: said before they are made, refused under `--no-install`, recorded in the ledger.
//!
//! Nothing here depends on state a previous run or a person left behind: every check looks at
//! the host as it is now.
//!
//! It also holds the few host facilities every guardlab crate uses, so that each exists once:
//! [`ProcStat`] (`/proc/<pid>/stat`), [`Pidfd`] and [`process::signal_if_same`] (signals that
//! cannot reach a process that reused a pid), [`unix_time_ns`], [`random_hex`] and
//! [`runtime`] (the tokio runtime).
#![allow(unsafe_code)] // geteuid(2): whether this process may install

mod apt;
mod clock;
mod ledger;
mod mounts;
pub mod process;
mod random;
mod requirement;
mod runtime;

use std::path::PathBuf;

pub use clock::unix_time_ns;
pub use ledger::{Ledger, LedgerEntry, LedgerKind};
pub use mounts::{Mount, cgroup2_mount, mounts, parse_mountinfo, unescape_mountinfo};
pub use process::{Pidfd, ProcStat};
pub use random::random_hex;
pub use requirement::{Probe, Requirement, catalog};
pub use runtime::runtime;

/// Environment variable that refuses installs and mounts like `--no-install` (any value but
/// empty or `0`).
pub const NO_INSTALL_ENV: &str = "GUARDLAB_NO_INSTALL";

/// Environment variable naming the directory of guardlab's host state (the ledger); by default
/// [`DEFAULT_STATE_DIR`].
pub const STATE_DIR_ENV: &str = "GUARDLAB_HOST_STATE_DIR";

/// Where guardlab records what it changed on the host. Outside every cache directory, so that
/// removing caches does not lose the list of installed packages.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/guardlab";

/// Where guardlab mounts cgroup v2 on a host that has none mounted.
pub const OWN_CGROUP2_MOUNT: &str = "/run/guardlab/cgroup2";

/// Progress of long work, shown by the CLI layer.
pub trait Progress: Send + Sync {
    /// A new phase starts, e.g. "building the pod image".
    fn phase(&self, what: &str);
    /// A line of detail inside the current phase (a tool's output line).
    fn detail(&self, line: &str);
}

/// Progress that goes nowhere.
pub struct NoProgress;

impl Progress for NoProgress {
    fn phase(&self, _: &str) {}
    fn detail(&self, _: &str) {}
}

/// Progress for tests and helper programs: phases on stderr, details dropped (a test's output
/// is only shown when it fails, and then the phase says enough).
pub struct StderrProgress;

impl Progress for StderrProgress {
    fn phase(&self, what: &str) {
        eprintln!("guardlab: {what}");
    }
    fn detail(&self, _: &str) {}
}

/// Whether guardlab may change the host to get what it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Installs {
    /// Install missing packages, mount missing filesystems, load missing modules (saying so).
    Allowed,
    /// Refuse instead, naming what is missing and how to get it (`--no-install`).
    Refused,
}

impl Installs {
    /// [`Installs::Refused`] when `no_install` is set or [`NO_INSTALL_ENV`] says so.
    pub fn from_flag_and_env(no_install: bool) -> Installs {
        let env = std::env::var(NO_INSTALL_ENV).unwrap_or_default();
        if no_install || !(env.is_empty() || env == "0") {
            Installs::Refused
        } else {
            Installs::Allowed
        }
    }
}

/// Something missing, with the package that brings it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Missing {
    pub name: String,
    pub package: String,
    pub purpose: String,
}

/// Why guardlab did not install what is missing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotInstalledBecause {
    /// `--no-install` or [`NO_INSTALL_ENV`].
    Refused,
    /// Installing needs root.
    NotRoot,
    /// The host has no apt-get (not Debian or Ubuntu).
    NoApt,
    /// apt-get installed the packages, and the thing is still not there.
    StillMissing,
}

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("{}", missing_message(missing, *because))]
    Missing {
        missing: Vec<Missing>,
        because: NotInstalledBecause,
    },
    #[error("`{command}` failed ({status}){}", tail_text(output))]
    InstallFailed {
        command: String,
        status: String,
        /// The installer's last lines.
        output: Vec<String>,
    },
    /// A kernel feature guardlab cannot add by itself.
    #[error("this kernel has no {what}: {hint}")]
    Kernel { what: String, hint: String },
    /// A mount guardlab needs and would make, refused or failed.
    #[error("{what} is not mounted and guardlab did not mount it: {why}")]
    Mount { what: String, why: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

fn tail_text(output: &[String]) -> String {
    if output.is_empty() {
        String::new()
    } else {
        format!("; its last lines:\n  {}", output.join("\n  "))
    }
}

fn missing_message(missing: &[Missing], because: NotInstalledBecause) -> String {
    let list = missing
        .iter()
        .map(|m| format!("{} (Debian package `{}`: {})", m.name, m.package, m.purpose))
        .collect::<Vec<_>>()
        .join(", ");
    let mut packages: Vec<&str> = missing.iter().map(|m| m.package.as_str()).collect();
    packages.sort_unstable();
    packages.dedup();
    let command = format!("apt-get install {}", packages.join(" "));
    let why = match because {
        NotInstalledBecause::Refused => format!(
            "guardlab did not install it because installs are refused (--no-install or \
             {NO_INSTALL_ENV}); install it with `{command}`, or run without --no-install"
        ),
        NotInstalledBecause::NotRoot => format!(
            "installing needs root: run guardlab as root (it then installs it), or `sudo {command}`"
        ),
        NotInstalledBecause::NoApt => format!(
            "this host has no apt-get, so guardlab cannot install it: install the equivalent of \
             `{command}` with the host's package manager"
        ),
        NotInstalledBecause::StillMissing => format!(
            "`{command}` ran and it is still missing: check that the package provides it on \
             this release"
        ),
    };
    format!("missing on this host: {list}. {why}")
}

/// The host as guardlab changes it: whether it may install, how it finds programs, where it
/// records changes.
#[derive(Clone, Debug)]
pub struct Host {
    pub installs: Installs,
    /// Where programs are looked for: `$PATH`, then the sbin directories (root's programs are
    /// there even when a user's PATH lacks them).
    pub search_path: Vec<PathBuf>,
    /// The ledger of what guardlab changed on this host.
    pub ledger: Ledger,
    /// The installer (`apt-get`, found on the search path); replaceable in tests.
    pub apt_get: Option<PathBuf>,
    /// dpkg's query tool, which tells whether a package is installed; replaceable in tests.
    pub dpkg_query: PathBuf,
    /// Whether this process may install (root); replaceable in tests.
    pub is_root: bool,
}

impl Host {
    /// This host, with installs allowed unless `no_install` or [`NO_INSTALL_ENV`] refuse them.
    pub fn new(no_install: bool) -> Host {
        let mut search_path: Vec<PathBuf> = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        for d in [
            "/usr/local/sbin",
            "/usr/local/bin",
            "/usr/sbin",
            "/usr/bin",
            "/sbin",
            "/bin",
        ] {
            if !search_path.iter().any(|p| p == std::path::Path::new(d)) {
                search_path.push(PathBuf::from(d));
            }
        }
        let state_dir = std::env::var_os(STATE_DIR_ENV)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        let mut host = Host {
            installs: Installs::from_flag_and_env(no_install),
            search_path,
            ledger: Ledger::in_dir(&state_dir),
            apt_get: None,
            dpkg_query: PathBuf::from("dpkg-query"),
            // SAFETY: geteuid has no preconditions and cannot fail.
            is_root: unsafe { libc::geteuid() } == 0,
        };
        host.apt_get = host.find_program("apt-get");
        host
    }

    /// The first executable file called `name` on the search path.
    pub fn find_program(&self, name: &str) -> Option<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        if name.contains('/') {
            let p = PathBuf::from(name);
            return p.is_file().then_some(p);
        }
        self.search_path.iter().map(|d| d.join(name)).find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    }

    /// The requirements of `requirements` that this host does not meet now.
    pub fn missing<'a>(&self, requirements: &[&'a Requirement]) -> Vec<&'a Requirement> {
        requirements
            .iter()
            .copied()
            .filter(|r| !r.is_met(self))
            .collect()
    }
}
