//! `guardlab clean`: remove everything guardlab put on this host, saying each thing in one
//! line: the local labs left up or behind, guardlab's caches, the cgroup v2 mount it made; then
//! list the Debian packages it installed (and remove them with `--remove-packages`).
//!
//! It removes only inside guardlab's own directories: the cache directory
//! (`$XDG_CACHE_HOME/guardlab`), the labs' state directory, guardlab's own mount point
//! ([`guardlab_host::OWN_CGROUP2_MOUNT`]) and the ledger's directory. A ledger line naming
//! anything else is reported and left alone.
#![allow(unsafe_code)] // umount2(2) of guardlab's own cgroup v2 mount

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::anyhow;
use guardlab_host::{Host, LedgerEntry, LedgerKind, OWN_CGROUP2_MOUNT, Progress};
use guardlab_lab::local::teardown::{LeftoverLab, leftover_labs, remove_lab};

use crate::cli::CleanArgs;
use crate::console::ConsoleProgress;
use crate::report::{CommandResult, Failure, Outcome};

/// `1.3 GiB`, `412 MiB`, `12 KiB`, `0 B`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if value < 10.0 {
        format!("{value:.1} {}", UNITS[unit])
    } else {
        format!("{value:.0} {}", UNITS[unit])
    }
}

/// guardlab's cache directory: the parent of the image cache, `$XDG_CACHE_HOME/guardlab`.
pub fn cache_root() -> PathBuf {
    let images = guardlab_lab::image::default_cache_dir();
    images.parent().map(Path::to_path_buf).unwrap_or(images)
}

/// Whether `path` is one of guardlab's own directories' entries: strictly inside `root`, whose
/// last component is `guardlab` (a cache root), without `..`.
pub fn is_inside_own_dir(path: &Path, root: &Path) -> bool {
    root.is_absolute()
        && root.file_name().is_some_and(|n| n == "guardlab")
        && path != root
        && path.starts_with(root)
        && !path
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
}

/// Whether a mount point recorded in the ledger is guardlab's own to unmount.
pub fn is_own_mount_point(path: &Path) -> bool {
    path == Path::new(OWN_CGROUP2_MOUNT)
}

/// A cache entry to remove.
#[derive(Debug)]
struct CacheEntry {
    path: PathBuf,
    bytes: u64,
}

/// The entries of the cache root, biggest first; lock files are left for the root's removal.
fn cache_entries(root: &Path) -> Result<Vec<CacheEntry>, Failure> {
    let mut entries = Vec::new();
    let read = match fs::read_dir(root) {
        Ok(read) => read,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(entries),
        Err(e) => return Err(anyhow!("reading {}: {e}", root.display()).into()),
    };
    for entry in read.flatten() {
        let path = root.join(entry.file_name());
        if entry.file_name().to_string_lossy().ends_with(".lock") {
            continue;
        }
        entries.push(CacheEntry {
            bytes: guardlab_lab::image::disk_usage(&path),
            path,
        });
    }
    entries.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.path.cmp(&b.path)));
    Ok(entries)
}

/// A lock file under `root` (two levels deep: the cache's and the image cache's) that another
/// process holds: a build or a test that uses the cache right now.
fn held_lock(root: &Path) -> Option<PathBuf> {
    let mut candidates = Vec::new();
    let mut dirs = vec![(root.to_path_buf(), 0)];
    while let Some((dir, depth)) = dirs.pop() {
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() && depth < 1 {
                dirs.push((path, depth + 1));
            } else if kind.is_file() && path.to_string_lossy().ends_with(".lock") {
                candidates.push(path);
            }
        }
    }
    candidates.into_iter().find(|path| {
        fs::File::open(path)
            .is_ok_and(|f| matches!(f.try_lock(), Err(fs::TryLockError::WouldBlock)))
    })
}

/// The mount points at or under `path`.
fn mounts_under(path: &Path) -> Vec<PathBuf> {
    guardlab_host::mounts()
        .unwrap_or_default()
        .into_iter()
        .map(|m| m.target)
        .filter(|t| t.starts_with(path))
        .collect()
}

fn remove_path(path: &Path) -> std::io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Progress that keeps a removal's details and drops its phase (clean already said it).
struct DetailsOnly<'a>(&'a dyn Progress);

impl Progress for DetailsOnly<'_> {
    fn phase(&self, _: &str) {}
    fn detail(&self, line: &str) {
        self.0.detail(line);
    }
}

/// Runs `clean`.
pub fn run(args: &CleanArgs) -> CommandResult {
    let host = Host::new(false);
    let labs = leftover_labs(&args.labs_dir)?;
    let ledger = host.ledger.entries()?;
    let mounts: Vec<&LedgerEntry> = ledger
        .iter()
        .filter(|e| e.kind == LedgerKind::Mount)
        .collect();
    let packages: Vec<&LedgerEntry> = ledger
        .iter()
        .filter(|e| e.kind == LedgerKind::Package)
        .collect();
    let needs_root = !labs.is_empty()
        || mounts.iter().any(|m| Path::new(&m.what).exists())
        || (args.remove_packages && !packages.is_empty());
    if needs_root && !args.dry_run {
        crate::privilege::ensure_root("removing labs, mounts and packages")?;
    }
    let would = if args.dry_run {
        "would remove"
    } else {
        "removing"
    };
    let mut problems: Vec<String> = Vec::new();

    // 1. Labs, as `lab down` removes them.
    for LeftoverLab { dir, state } in &labs {
        let said = match state {
            Ok(s) => format!("{would} lab {} ({}, {})", s.lab, dir.display(), s.phase),
            Err(e) => format!("{would} lab directory {} ({e})", dir.display()),
        };
        println!("{said}");
        if args.dry_run {
            continue;
        }
        let progress = ConsoleProgress { quiet: false };
        if let Err(e) = remove_lab(dir, &DetailsOnly(&progress)) {
            problems.push(format!("lab {}: {e}", dir.display()));
        }
    }

    // 2. Caches.
    let root = cache_root();
    match fs::symlink_metadata(&root) {
        Err(_) => println!("no guardlab cache at {}", root.display()),
        Ok(m) if m.file_type().is_symlink() => problems.push(format!(
            "{} is a symbolic link: not following it out of guardlab's cache directory",
            root.display()
        )),
        Ok(_) => {
            if let Some(lock) = held_lock(&root) {
                problems.push(format!(
                    "the cache {} is in use ({} is held by a running guardlab or test): left as \
                     it is",
                    root.display(),
                    lock.display()
                ));
            } else {
                for entry in cache_entries(&root)? {
                    if !is_inside_own_dir(&entry.path, &root) {
                        problems.push(format!(
                            "{}: not guardlab's, left alone",
                            entry.path.display()
                        ));
                        continue;
                    }
                    let mounted = mounts_under(&entry.path);
                    if !mounted.is_empty() {
                        problems.push(format!(
                            "{} has a mount under it ({}): left as it is",
                            entry.path.display(),
                            mounted[0].display()
                        ));
                        continue;
                    }
                    println!(
                        "{would} cache {} ({})",
                        entry.path.display(),
                        human_size(entry.bytes)
                    );
                    if !args.dry_run
                        && let Err(e) = remove_path(&entry.path)
                    {
                        problems.push(format!("removing {}: {e}", entry.path.display()));
                    }
                }
                if !args.dry_run {
                    // What is left are lock files nobody holds.
                    if let Err(e) = fs::remove_dir_all(&root) {
                        problems.push(format!("removing {}: {e}", root.display()));
                    }
                }
            }
        }
    }

    // 3. The cgroup v2 mount guardlab made, when no lab uses it.
    let labs_left = !args.dry_run && !leftover_labs(&args.labs_dir)?.is_empty();
    let mut forget_mounts: Vec<String> = Vec::new();
    for entry in &mounts {
        let point = Path::new(&entry.what);
        if !is_own_mount_point(point) {
            problems.push(format!(
                "the ledger names the mount {}, which is not guardlab's mount point ({}): left \
                 alone",
                point.display(),
                OWN_CGROUP2_MOUNT
            ));
            continue;
        }
        let mounted = guardlab_host::mounts()?.iter().any(|m| m.target == point);
        let in_use = fs::read_dir(point.join("guardlab"))
            .map(|r| r.flatten().any(|e| e.file_type().is_ok_and(|t| t.is_dir())))
            .unwrap_or(false);
        if mounted && (labs_left || in_use) {
            println!(
                "keeping the cgroup v2 mount {}: a lab still uses it",
                point.display()
            );
            continue;
        }
        let verb = match (args.dry_run, mounted) {
            (true, true) => "would unmount",
            (true, false) => "would forget",
            (false, true) => "unmounting",
            (false, false) => "forgetting",
        };
        println!(
            "{verb} the cgroup v2 mount guardlab made at {}{}",
            point.display(),
            if mounted { "" } else { " (no longer mounted)" }
        );
        if args.dry_run {
            continue;
        }
        if mounted && let Err(e) = unmount(point) {
            problems.push(format!("unmounting {}: {e}", point.display()));
            continue;
        }
        let _ = fs::remove_dir(point);
        forget_mounts.push(entry.what.clone());
    }
    if !forget_mounts.is_empty() {
        host.ledger
            .forget(|e| e.kind == LedgerKind::Mount && forget_mounts.contains(&e.what))?;
    }

    if !args.dry_run && leftover_labs(&args.labs_dir)?.is_empty() {
        // The labs' directory too, as `lab down` removes it after the last lab (kept when
        // something else is in it).
        let _ = fs::remove_dir(&args.labs_dir);
    }

    // 4. Kernel modules stay loaded: others may use them.
    for entry in ledger.iter().filter(|e| e.kind == LedgerKind::Module) {
        println!(
            "guardlab loaded the kernel module {0}; it stays loaded (others may use it): \
             `modprobe -r {0}` unloads it when nothing does",
            entry.what
        );
    }

    // 5. Packages.
    if packages.is_empty() {
        println!("guardlab installed no Debian packages on this host");
    } else {
        let names: Vec<&str> = packages.iter().map(|p| p.what.as_str()).collect();
        println!("guardlab installed these Debian packages:");
        for p in &packages {
            println!("  {}: {}", p.what, p.purpose);
        }
        let command = format!("apt-get remove {}", names.join(" "));
        if !args.remove_packages {
            println!("remove them with: {command}   (or `guardlab clean --remove-packages`)");
        } else if args.dry_run {
            println!("would run: {command}");
        } else {
            match remove_packages(&host, &names) {
                Ok(()) => {
                    host.ledger.forget(|e| e.kind == LedgerKind::Package)?;
                    println!("removed {}", names.join(" "));
                }
                Err(e) => problems.push(e),
            }
        }
    }
    if !args.dry_run && !host.ledger.path().exists() {
        // Nothing recorded any more: the ledger's directory goes too (its lock file only).
        if let Some(dir) = host.ledger.path().parent() {
            let _ = fs::remove_file(dir.join(".install.lock"));
            let _ = fs::remove_dir(dir);
        }
    }

    if problems.is_empty() {
        Ok(Outcome::Clean)
    } else {
        Err(Failure(anyhow!(
            "clean left something behind:\n  {}",
            problems.join("\n  ")
        )))
    }
}

/// umount(2) of a mount point (not lazily: a busy mount stays and says so).
fn unmount(point: &Path) -> std::io::Result<()> {
    let path = std::ffi::CString::new(point.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::other("a NUL byte in the path"))?;
    // SAFETY: umount2(2) with a valid NUL-terminated path.
    if unsafe { libc::umount2(path.as_ptr(), 0) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `apt-get remove -y <packages>`, its output as progress as it comes.
fn remove_packages(host: &Host, names: &[&str]) -> Result<(), String> {
    use std::io::BufRead;
    let apt_get = host
        .apt_get
        .clone()
        .ok_or("this host has no apt-get: remove the packages with its package manager")?;
    let progress = ConsoleProgress { quiet: false };
    let command_line = format!("apt-get remove -y {}", names.join(" "));
    progress.phase(&format!(
        "removing the Debian packages guardlab installed: {command_line}"
    ));
    let failed = |e: std::io::Error| format!("running {}: {e}", apt_get.display());
    let (reader, writer) = std::io::pipe().map_err(failed)?;
    let mut command = std::process::Command::new(&apt_get);
    command
        .args(["-y", "-q", "remove"])
        .args(names)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(std::process::Stdio::null())
        .stdout(writer.try_clone().map_err(failed)?)
        .stderr(writer);
    let mut child = command.spawn().map_err(failed)?;
    // The pipe's write ends live in `command`: without them the reads end with the child.
    drop(command);
    let mut tail = std::collections::VecDeque::new();
    for line in std::io::BufReader::new(reader)
        .lines()
        .map_while(Result::ok)
    {
        progress.detail(&line);
        if tail.len() == crate::console::render::FAILURE_TAIL {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    let status = child.wait().map_err(failed)?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{command_line}` failed ({status}); its last lines:\n    {}",
            Vec::from(tail).join("\n    ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_a_person_says_them() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(12 * 1024), "12 KiB");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(412 * 1024 * 1024), "412 MiB");
        assert_eq!(human_size(1_395_864_371), "1.3 GiB");
    }

    #[test]
    fn only_guardlabs_own_directories_are_removed() {
        let root = Path::new("/home/u/.cache/guardlab");
        assert!(is_inside_own_dir(&root.join("images"), root));
        assert!(is_inside_own_dir(&root.join("images/downloads"), root));
        assert!(
            !is_inside_own_dir(root, root),
            "the root is removed last, on its own"
        );
        assert!(!is_inside_own_dir(Path::new("/home/u/.cache/other"), root));
        assert!(!is_inside_own_dir(&root.join("../other"), root));
        assert!(
            !is_inside_own_dir(Path::new("/home/u/.cache/x"), Path::new("/home/u/.cache")),
            "a root that is not guardlab's"
        );
        assert!(!is_inside_own_dir(
            Path::new("guardlab/x"),
            Path::new("guardlab")
        ));

        assert!(is_own_mount_point(Path::new("/run/guardlab/cgroup2")));
        assert!(!is_own_mount_point(Path::new("/sys/fs/cgroup")));
        assert!(!is_own_mount_point(Path::new("/run/guardlab/cgroup2/..")));
    }

    #[test]
    fn a_cache_in_use_is_found_by_its_held_lock() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("guardlab");
        fs::create_dir_all(root.join("images")).unwrap();
        fs::write(root.join("images/.abc.lock"), "").unwrap();
        fs::write(root.join(".venv.lock"), "").unwrap();
        assert_eq!(held_lock(&root), None, "nobody holds them");
        // Another open file description holds it, as another process would.
        let holder = fs::File::open(root.join("images/.abc.lock")).unwrap();
        holder.lock().unwrap();
        assert_eq!(held_lock(&root), Some(root.join("images/.abc.lock")));
        drop(holder);
        assert_eq!(held_lock(&root), None);
    }
}
