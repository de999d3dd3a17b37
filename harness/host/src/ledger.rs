//! The ledger: one line per change guardlab made to the host (a package it installed, a
//! filesystem it mounted, a kernel module it loaded), so that `guardlab clean` can undo or list
//! them. It lives outside every cache, in `/var/lib/guardlab/host-changes` by default.
//!
//! Format: `<kind>\t<what>\t<unix seconds>\t<purpose>` per line; a line that does not parse is
//! kept as it is and ignored (a newer guardlab may write more kinds).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::HostError;

/// The ledger's file name in the state directory.
pub const LEDGER_FILE: &str = "host-changes";

/// What kind of change a ledger line records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LedgerKind {
    /// A Debian package installed with apt-get.
    Package,
    /// A filesystem mounted (the value is the mount point).
    Mount,
    /// A kernel module loaded with modprobe.
    Module,
}

impl LedgerKind {
    fn as_str(self) -> &'static str {
        match self {
            LedgerKind::Package => "package",
            LedgerKind::Mount => "mount",
            LedgerKind::Module => "module",
        }
    }

    fn parse(s: &str) -> Option<LedgerKind> {
        match s {
            "package" => Some(LedgerKind::Package),
            "mount" => Some(LedgerKind::Mount),
            "module" => Some(LedgerKind::Module),
            _ => None,
        }
    }
}

/// One change guardlab made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerEntry {
    pub kind: LedgerKind,
    /// The package name, mount point or module name.
    pub what: String,
    /// When, in seconds since the epoch.
    pub at: u64,
    /// Why guardlab made it.
    pub purpose: String,
}

/// The ledger file of a state directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ledger {
    path: PathBuf,
}

impl Ledger {
    /// The ledger in `state_dir` (created on the first record).
    pub fn in_dir(state_dir: &Path) -> Ledger {
        Ledger {
            path: state_dir.join(LEDGER_FILE),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every change recorded, oldest first; the same change recorded twice is listed once.
    pub fn entries(&self) -> Result<Vec<LedgerEntry>, HostError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(HostError::Io {
                    context: format!("reading {}", self.path.display()),
                    source,
                });
            }
        };
        let mut out: Vec<LedgerEntry> = Vec::new();
        for line in text.lines() {
            let mut fields = line.splitn(4, '\t');
            let (Some(kind), Some(what), Some(at), purpose) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            let (Some(kind), Ok(at)) = (LedgerKind::parse(kind), at.parse::<u64>()) else {
                continue;
            };
            if out.iter().any(|e| e.kind == kind && e.what == what) {
                continue;
            }
            out.push(LedgerEntry {
                kind,
                what: what.to_string(),
                at,
                purpose: purpose.unwrap_or_default().to_string(),
            });
        }
        Ok(out)
    }

    /// The entries of one kind.
    pub fn entries_of(&self, kind: LedgerKind) -> Result<Vec<LedgerEntry>, HostError> {
        Ok(self
            .entries()?
            .into_iter()
            .filter(|e| e.kind == kind)
            .collect())
    }

    /// Appends one change (with `O_APPEND`, so concurrent writers do not interleave a line).
    pub fn record(&self, kind: LedgerKind, what: &str, purpose: &str) -> Result<(), HostError> {
        let io = |context: String| move |source| HostError::Io { context, source };
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        }
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let clean = |s: &str| s.replace(['\t', '\n'], " ");
        let line = format!(
            "{}\t{}\t{at}\t{}\n",
            kind.as_str(),
            clean(what),
            clean(purpose)
        );
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .map_err(io(format!("writing {}", self.path.display())))
    }

    /// Rewrites the ledger without the entries `drop` selects (after `guardlab clean` undid
    /// them). Removes the file when nothing is left.
    pub fn forget(&self, drop: impl Fn(&LedgerEntry) -> bool) -> Result<(), HostError> {
        let io = |context: String| move |source| HostError::Io { context, source };
        let keep: Vec<LedgerEntry> = self.entries()?.into_iter().filter(|e| !drop(e)).collect();
        if keep.is_empty() {
            return match fs::remove_file(&self.path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(io(format!("removing {}", self.path.display()))(e))
                }
                _ => Ok(()),
            };
        }
        let text: String = keep
            .iter()
            .map(|e| format!("{}\t{}\t{}\t{}\n", e.kind.as_str(), e.what, e.at, e.purpose))
            .collect();
        let tmp = self.path.with_extension("new");
        fs::write(&tmp, text).map_err(io(format!("writing {}", tmp.display())))?;
        fs::rename(&tmp, &self.path).map_err(io(format!("replacing {}", self.path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_listed_once_each_in_order_and_forgotten_on_request() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::in_dir(&dir.path().join("state"));
        assert_eq!(
            ledger.entries().unwrap(),
            vec![],
            "no file: nothing recorded"
        );
        ledger
            .record(LedgerKind::Package, "debootstrap", "builds\tthe pod image")
            .unwrap();
        ledger
            .record(LedgerKind::Mount, "/run/guardlab/cgroup2", "cgroup v2")
            .unwrap();
        ledger
            .record(LedgerKind::Package, "debootstrap", "again")
            .unwrap();
        // A line of a kind this version does not know is ignored, not an error.
        let mut text = fs::read_to_string(ledger.path()).unwrap();
        text.push_str("firmware\tx\t1\ty\nnot a line\n");
        fs::write(ledger.path(), text).unwrap();

        let entries = ledger.entries().unwrap();
        let listed: Vec<(LedgerKind, &str, &str)> = entries
            .iter()
            .map(|e| (e.kind, e.what.as_str(), e.purpose.as_str()))
            .collect();
        assert_eq!(
            listed,
            [
                (LedgerKind::Package, "debootstrap", "builds the pod image"),
                (LedgerKind::Mount, "/run/guardlab/cgroup2", "cgroup v2"),
            ]
        );
        assert!(
            entries[0].at > 1_600_000_000,
            "a real time: {}",
            entries[0].at
        );
        assert_eq!(ledger.entries_of(LedgerKind::Mount).unwrap().len(), 1);

        ledger.forget(|e| e.kind == LedgerKind::Mount).unwrap();
        assert_eq!(ledger.entries_of(LedgerKind::Mount).unwrap(), vec![]);
        assert_eq!(ledger.entries_of(LedgerKind::Package).unwrap().len(), 1);
        ledger.forget(|_| true).unwrap();
        assert!(!ledger.path().exists(), "an empty ledger is removed");
    }
}
