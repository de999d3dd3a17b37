//! The image cache's bookkeeping: where it keeps what, its locks, which images labs use, and
//! the pruning of old images.
//!
//! Pruning must never take an image from under a lab, whatever directory the lab keeps its
//! state in. So the cache itself knows its users: a lab registers itself in the image's
//! directory (`<image>/users/<lab>-<id>`, naming the lab's state file) when it looks the image
//! up, and removes the registration at `down`. A registration counts while the lab's state file
//! exists (up, coming up, or left by a killed harness until `lab down`); one whose state file
//! is gone (a lab torn down by an older harness, `/run` emptied by a reboot) is stale and the
//! prune removes it. A registration that cannot be read counts as in use.
//!
//! The registration is written by the lookup ([`use_if_complete`]) under the cache's prune lock
//! (shared), which a prune holds exclusive from reading the registrations to moving images
//! away. So either the prune sees the registration and keeps the image, or the lookup comes
//! after the image was moved away and finds none (and builds it again): never an image that
//! disappears after it was found. A lab saves its state file before it registers, so a prune
//! never finds a fresh registration without its state file.
//!
//! The older protection stays as a second line: an image that a lab in one of the cache's
//! `labs_dirs` records in its state file (`image_rootfs`) is kept too.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use guardlab_host::Progress;

use super::error::{ImageError, IoContext};
use super::{RECORD_FILE, disk_usage, is_complete, remove_tree};

/// Where local labs keep their state (`<dir>/<lab>/state.json`).
pub const DEFAULT_LABS_DIR: &str = "/run/guardlab";
/// A lab's configuration in its directory, whose `runtime.rootfs` names the image of a lab
/// started before labs recorded `image_rootfs`.
pub use crate::lab_files::CONFIG_FILE as LAB_CONFIG_FILE;
/// A lab's state file in its directory (`<labs dir>/<lab>/state.json`): a registration counts
/// while it exists, and its `image_rootfs` names the image the lab uses.
pub use crate::lab_files::STATE_FILE as LAB_STATE_FILE;

/// Touched whenever a lab takes the image: its mtime is when the image was last used.
const LAST_USED_FILE: &str = "last-used";
/// Shared by lookups, exclusive while a prune decides and moves images away.
const PRUNE_LOCK_FILE: &str = ".prune.lock";
/// An image being removed is first renamed to this prefix (atomic: nobody sees half an image),
/// then deleted; a prune that crashed in between leaves it for the next one.
const TRASH_PREFIX: &str = ".prune-";
const BUILD_PREFIX: &str = ".build-";
/// The registrations of the labs that use an image: `<image>/users/<lab>-<id>`.
pub const USERS_DIR: &str = "users";

/// The places of an image cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageCache {
    /// Finished images (`<hash>/`), builds in progress, locks.
    pub dir: PathBuf,
    /// debootstrap's and pip's downloads (`debs/`, `pip/`); by default `<dir>/downloads`.
    /// Caches may share one: a build into an empty cache then downloads nothing it has.
    pub downloads: PathBuf,
    /// Directories where labs record their state ([`DEFAULT_LABS_DIR`]): an image a lab there
    /// records in its state file is never pruned. A second line behind the registrations in
    /// the images (see the module's comment), for labs started before labs registered.
    pub labs_dirs: Vec<PathBuf>,
}

impl ImageCache {
    /// A cache in `dir` with its own downloads, also looking at the labs in
    /// [`DEFAULT_LABS_DIR`].
    pub fn new(dir: &Path) -> ImageCache {
        ImageCache {
            dir: dir.to_path_buf(),
            downloads: dir.join("downloads"),
            labs_dirs: vec![PathBuf::from(DEFAULT_LABS_DIR)],
        }
    }
}

/// A lab that uses an image, as it registers itself in the image's directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageUser {
    /// The lab's name.
    pub lab: String,
    /// The lab's state file (absolute): the registration counts while it exists.
    pub state_file: PathBuf,
}

impl ImageUser {
    /// The lab `lab` whose directory is `lab_dir` (which must exist: its path is resolved, so
    /// that the registration names the state file whatever the working directory).
    pub fn new(lab: &str, lab_dir: &Path) -> Result<ImageUser, ImageError> {
        let lab_dir = lab_dir
            .canonicalize()
            .context(|| format!("resolving the lab directory {}", lab_dir.display()))?;
        Ok(ImageUser {
            lab: lab.to_string(),
            state_file: lab_dir.join(LAB_STATE_FILE),
        })
    }

    /// `<lab>-<16 hex digits of the state file's path hash>`: unique per lab and state
    /// directory, readable by a human looking into the cache.
    pub fn id(&self) -> String {
        let digest = Sha256::digest(self.state_file.as_os_str().as_encoded_bytes());
        let name: String = self
            .lab
            .chars()
            .take(40)
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("{name}-{}", &hex::encode(digest)[..16])
    }

    /// Where this lab's registration in the image directory `image_dir` (`<cache>/<hash>`) is.
    pub fn registration_in(&self, image_dir: &Path) -> PathBuf {
        image_dir.join(USERS_DIR).join(self.id())
    }
}

/// What a registration file says (JSON, for the prune and for humans).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct RegistrationFile {
    lab: String,
    /// The registration counts while this file exists.
    state_file: PathBuf,
}

/// A lab's registration found in an image directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    /// The registration file.
    pub path: PathBuf,
    /// The lab and its state file; `None` when the file cannot be read (it counts as in use).
    pub user: Option<ImageUser>,
    /// Its lab is gone: its state file does not exist.
    pub stale: bool,
}

/// The registrations in the image directory `image_dir`, sorted by file. A registration whose
/// state file's existence cannot be told (no permission) is not stale.
pub fn image_registrations(image_dir: &Path) -> Vec<Registration> {
    let Ok(entries) = fs::read_dir(image_dir.join(USERS_DIR)) else {
        return Vec::new();
    };
    let mut found: Vec<Registration> = entries
        .flatten()
        // A dot file is a registration being written (or one whose writer died before it was
        // in place, so before its lab used the image).
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| {
            let path = e.path();
            let user = fs::read_to_string(&path)
                .ok()
                .and_then(|text| serde_json::from_str::<RegistrationFile>(&text).ok())
                .filter(|r| r.state_file.is_absolute())
                .map(|r| ImageUser {
                    lab: r.lab,
                    state_file: r.state_file,
                });
            let stale = user
                .as_ref()
                .is_some_and(|u| state_file_is_gone(&u.state_file));
            Registration { path, user, stale }
        })
        .collect();
    found.sort_by(|a, b| a.path.cmp(&b.path));
    found
}

fn state_file_is_gone(state_file: &Path) -> bool {
    match fs::symlink_metadata(state_file) {
        Ok(_) => false,
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
        ),
    }
}

/// Register `user` in the image directory `image_dir` (written aside, then renamed: a reader
/// never sees half a registration). The caller holds the prune lock shared or the image's
/// build lock.
fn register(user: &ImageUser, image_dir: &Path) -> Result<(), ImageError> {
    let users = image_dir.join(USERS_DIR);
    fs::create_dir_all(&users).context(|| format!("creating {}", users.display()))?;
    let path = user.registration_in(image_dir);
    let tmp = users.join(format!(".{}.tmp{}", user.id(), std::process::id()));
    let mut text = serde_json::to_vec_pretty(&RegistrationFile {
        lab: user.lab.clone(),
        state_file: user.state_file.clone(),
    })
    .map_err(|source| ImageError::Registration {
        path: path.clone(),
        source,
    })?;
    text.push(b'\n');
    fs::write(&tmp, text)
        .and_then(|()| fs::rename(&tmp, &path))
        .inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })
        .context(|| {
            format!(
                "registering lab {} as a user of the pod image at {}",
                user.lab,
                path.display()
            )
        })
}

/// Remove a lab's registration (`<image>/users/<id>`, as its state file records it) at `down`.
/// Fine when it is gone already (the image was pruned after the registration went stale).
pub fn remove_registration(path: &Path) -> Result<(), ImageError> {
    // The state file says where; remove nothing but a registration.
    if path.parent().and_then(Path::file_name) != Some(USERS_DIR.as_ref()) {
        return Err(ImageError::NotARegistration {
            path: path.to_path_buf(),
        });
    }
    // What a registration killed half-way left (`.<id>.tmp<pid>`, never counted as one).
    if let (Some(users), Some(id)) = (path.parent(), path.file_name())
        && let Ok(entries) = fs::read_dir(users)
    {
        let prefix = format!(".{}.tmp", id.to_string_lossy());
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            Ok(())
        }
        Err(source) => Err(source)
            .context(|| format!("removing the pod image registration {}", path.display())),
    }
}

/// What a prune removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrunedEntry {
    /// Where it was in the cache (for an image, `<cache>/<hash>`).
    pub path: PathBuf,
    pub kind: PrunedKind,
    /// Bytes it used on disk.
    pub bytes: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PrunedKind {
    /// A finished image of another recipe.
    Image,
    /// An image directory without its record or root filesystem (not usable).
    UnfinishedImage,
    /// What a build that crashed left (`.build-<hash>-<pid>`).
    InterruptedBuild,
    /// What a prune that crashed left (`.prune-...`).
    InterruptedPrune,
}

/// A lock on a file in the cache directory, released when dropped (or when its holder dies).
pub(super) struct FileLock(#[allow(dead_code)] fs::File);

/// Open (or create) a lock file without truncating it: the lock, not the content, matters.
fn open_lock_file(path: &Path) -> std::io::Result<fs::File> {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

impl FileLock {
    /// The cache's prune lock, shared; `None` when it cannot be had (no cache yet, or a cache
    /// this user may only read: then nobody here prunes either).
    fn prune_shared(dir: &Path) -> Option<FileLock> {
        let path = dir.join(PRUNE_LOCK_FILE);
        let file = open_lock_file(&path)
            .or_else(|_| fs::File::open(&path))
            .ok()?;
        file.lock_shared().ok()?;
        Some(FileLock(file))
    }

    fn prune_exclusive(dir: &Path) -> Result<FileLock, ImageError> {
        let path = dir.join(PRUNE_LOCK_FILE);
        let file = open_lock_file(&path).context(|| format!("opening {}", path.display()))?;
        file.lock()
            .context(|| format!("locking {}", path.display()))?;
        Ok(FileLock(file))
    }
}

/// One build per recipe: the lock on `<cache>/.<hash>.lock`.
pub(super) struct BuildLock(#[allow(dead_code)] FileLock);

impl BuildLock {
    pub(super) fn acquire(dir: &Path, hash: &str) -> Result<BuildLock, ImageError> {
        let path = build_lock_path(dir, hash);
        loop {
            let file = open_lock_file(&path)
                .context(|| format!("creating the lock file {}", path.display()))?;
            file.lock()
                .context(|| format!("locking {}", path.display()))?;
            // A prune removes the lock file of a recipe whose image it removed (holding the
            // lock while it does): a lock on a file no longer at the path locks nothing.
            if same_file(&file, &path) {
                return Ok(BuildLock(FileLock(file)));
            }
        }
    }
}

fn build_lock_path(dir: &Path, hash: &str) -> PathBuf {
    dir.join(format!(".{hash}.lock"))
}

fn same_file(file: &fs::File, path: &Path) -> bool {
    match (file.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// The free lock of a recipe's builds, taken; `None` while a build of it runs (or waits to).
/// `Some(None)`: there is no lock file.
fn try_build_lock(dir: &Path, hash: &str) -> Option<Option<fs::File>> {
    let path = build_lock_path(dir, hash);
    let Ok(file) = fs::File::open(&path) else {
        return Some(None);
    };
    file.try_lock().ok()?;
    Some(Some(file))
}

/// Is `final_dir` a finished image? If so `user` is registered in it and it is marked used, all
/// under the prune lock, so that no prune removes it between the check and the registration
/// (see the module's comment).
pub(super) fn use_if_complete(
    cache: &ImageCache,
    final_dir: &Path,
    user: Option<&ImageUser>,
) -> Result<bool, ImageError> {
    let _lock = FileLock::prune_shared(&cache.dir);
    if !is_complete(final_dir) {
        return Ok(false);
    }
    if let Some(user) = user {
        register(user, final_dir)?;
    }
    mark_used(final_dir);
    Ok(true)
}

/// Record that the image in `dir` was used now. Best effort: a cache this user may only read
/// keeps its old marks.
fn mark_used(dir: &Path) {
    let now = guardlab_host::unix_time_ns() / 1_000_000_000;
    let _ = fs::write(
        dir.join(LAST_USED_FILE),
        format!("{now} (seconds since 1970; the file's mtime is what counts)\n"),
    );
}

/// When the image in `dir` was last used: its mark, else when it was built.
fn last_used(dir: &Path) -> SystemTime {
    [
        dir.join(LAST_USED_FILE),
        dir.join(RECORD_FILE),
        dir.to_path_buf(),
    ]
    .iter()
    .find_map(|p| fs::metadata(p).and_then(|m| m.modified()).ok())
    .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// The image root filesystems that labs in `labs_dir` record, with the lab's name: the
/// `image_rootfs` of each `<lab>/state.json`, else (a lab started before labs recorded it) the
/// `runtime.rootfs` of its `config.json`. A lab counts while its state file exists: up, coming
/// up, or left by a killed harness until `lab down` (its pods may still run).
///
/// A state file that cannot be read is an error: nobody can tell which image that lab uses.
pub fn images_used_by_labs(labs_dir: &Path) -> Result<Vec<(String, PathBuf)>, ImageError> {
    let entries = match fs::read_dir(labs_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(source)
                .context(|| format!("reading the labs' directory {}", labs_dir.display()));
        }
    };
    let mut used = Vec::new();
    for entry in entries.flatten() {
        let lab_dir = entry.path();
        let state_path = lab_dir.join(LAB_STATE_FILE);
        let text = match fs::read_to_string(&state_path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => continue,
            Err(source) => {
                return Err(source).context(|| format!("reading {}", state_path.display()));
            }
        };
        // Read as plain JSON: a state file of another version still says which image it uses.
        let state: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| ImageError::LabState {
                path: state_path.clone(),
                source,
            })?;
        let config_path = lab_dir.join(LAB_CONFIG_FILE);
        let rootfs = match state.get("image_rootfs").and_then(|v| v.as_str()) {
            Some(rootfs) => Some(PathBuf::from(rootfs)),
            None => fs::read_to_string(&config_path)
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .and_then(|c| c["runtime"]["rootfs"].as_str().map(PathBuf::from)),
        };
        if let Some(rootfs) = rootfs {
            let lab = entry.file_name().to_string_lossy().into_owned();
            used.push((lab, rootfs));
        }
    }
    used.sort();
    Ok(used)
}

/// A recipe hash: 64 lowercase hex digits.
fn is_recipe_hash(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn canonical(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| path.to_path_buf())
}

/// `458 MiB`, `1.2 GiB`, `12 KiB`.
pub(super) fn human_size(bytes: u64) -> String {
    const KIB: f64 = 1024.0;
    let b = bytes as f64;
    if b >= KIB * KIB * KIB {
        format!("{:.1} GiB", b / (KIB * KIB * KIB))
    } else if b >= KIB * KIB {
        format!("{:.0} MiB", b / (KIB * KIB))
    } else {
        format!("{:.0} KiB", b / KIB)
    }
}

/// `3 min ago`, `5 h ago`, `2 days ago`.
fn ago(when: SystemTime) -> String {
    let seconds = SystemTime::now()
        .duration_since(when)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    match seconds {
        0..120 => format!("{seconds} s ago"),
        120..7200 => format!("{} min ago", seconds / 60),
        7200..172_800 => format!("{} h ago", seconds / 3600),
        _ => format!("{} days ago", seconds / 86_400),
    }
}

/// Remove from the cache the images of recipes other than `keep`, except the most recently
/// used one of them (going back a step stays cheap), every image a lab uses (registered in it,
/// see the module's comment, or recorded in a state file in `labs_dirs`, see
/// [`images_used_by_labs`]) and every image a build of its recipe is busy with; and what crashed
/// builds and prunes left. Stale registrations (their lab's state file is gone) are removed
/// first. One line per removed entry with its size goes to `progress`.
///
/// Nothing else in the cache is touched (the downloads, the locks of kept recipes).
pub fn prune_images(
    cache: &ImageCache,
    keep: &str,
    progress: &dyn Progress,
) -> Result<Vec<PrunedEntry>, ImageError> {
    let lock = FileLock::prune_exclusive(&cache.dir)?;
    let mut used = Vec::new();
    for labs_dir in &cache.labs_dirs {
        used.extend(images_used_by_labs(labs_dir)?);
    }
    let used_by = |dir: &Path| -> Option<&str> {
        let dir = canonical(dir);
        used.iter()
            .find(|(_, rootfs)| rootfs.parent().map(canonical).as_deref() == Some(dir.as_path()))
            .map(|(lab, _)| lab.as_str())
    };
    let entries = fs::read_dir(&cache.dir)
        .context(|| format!("reading the image cache {}", cache.dir.display()))?;
    let mut images: Vec<(PathBuf, SystemTime)> = Vec::new();
    let mut doomed: Vec<(PathBuf, PrunedKind)> = Vec::new();
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in names {
        let path = cache.dir.join(&name);
        if is_recipe_hash(&name) {
            if !path.is_dir() {
                continue;
            }
            // Under the lock: no lab registers meanwhile.
            let in_use = current_registrations(&path, &name, progress);
            if name == keep {
                continue;
            }
            if let Some(registration) = in_use.first() {
                let who = match &registration.user {
                    Some(user) => format!(
                        "lab {} uses it, its state is {}",
                        user.lab,
                        user.state_file.display()
                    ),
                    None => format!(
                        "a lab registered in {} that cannot be read may use it",
                        registration.path.display()
                    ),
                };
                progress.detail(&format!(
                    "keeping the pod image {} ({who}): {}",
                    &name[..12],
                    path.display()
                ));
                continue;
            }
            if let Some(lab) = used_by(&path) {
                progress.detail(&format!(
                    "keeping the pod image {} (lab {lab} uses it): {}",
                    &name[..12],
                    path.display()
                ));
                continue;
            }
            if try_build_lock(&cache.dir, &name).is_none() {
                continue; // A build of that recipe runs, or just finished and is taking it.
            }
            if is_complete(&path) {
                let used = last_used(&path);
                images.push((path, used));
            } else {
                doomed.push((path, PrunedKind::UnfinishedImage));
            }
        } else if let Some(rest) = name.strip_prefix(BUILD_PREFIX) {
            let Some((hash, _pid)) = rest.rsplit_once('-') else {
                continue;
            };
            // Only when no build of that recipe runs (its lock is free; ours is held).
            if hash != keep && try_build_lock(&cache.dir, hash).is_some() {
                doomed.push((path, PrunedKind::InterruptedBuild));
            }
        } else if name.starts_with(TRASH_PREFIX) {
            doomed.push((path, PrunedKind::InterruptedPrune));
        }
    }
    // The most recently used other image stays.
    images.sort_by_key(|(_, used)| *used);
    if let Some((kept, used)) = images.pop() {
        let name = kept.file_name().unwrap_or_default().to_string_lossy();
        progress.detail(&format!(
            "keeping the previous pod image {} (last used {}): {}",
            &name[..name.len().min(12)],
            ago(used),
            kept.display()
        ));
    }
    if images.is_empty() && doomed.is_empty() {
        return Ok(Vec::new());
    }
    progress.phase("removing old pod images from the cache");
    let mut errors = Vec::new();
    // First out of the way (a crash while deleting must not leave half an image that looks
    // whole), then deleted; all under the lock, so that no other prune deletes it as well.
    let mut trash: Vec<(PathBuf, PrunedEntry, (String, String))> = Vec::new();
    let pid = std::process::id();
    for (path, kind, when) in images
        .into_iter()
        .map(|(path, used)| {
            (
                path,
                PrunedKind::Image,
                format!(", last used {}", ago(used)),
            )
        })
        .chain(doomed.into_iter().map(|(p, k)| (p, k, String::new())))
    {
        let bytes = disk_usage(&path);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let target = match kind {
            PrunedKind::Image | PrunedKind::UnfinishedImage => {
                let target = cache.dir.join(format!("{TRASH_PREFIX}{name}-{pid}"));
                if let Err(e) =
                    fs::rename(&path, &target).context(|| format!("moving {} away", path.display()))
                {
                    errors.push(e);
                    continue;
                }
                // Its recipe's lock file goes too, unless a build just took it.
                if let Some(Some(_held)) = try_build_lock(&cache.dir, &name) {
                    let _ = fs::remove_file(build_lock_path(&cache.dir, &name));
                }
                target
            }
            PrunedKind::InterruptedBuild | PrunedKind::InterruptedPrune => path.clone(),
        };
        let entry = PrunedEntry { path, kind, bytes };
        trash.push((target, entry, (kind_note(kind, &name), when)));
    }
    let mut removed = Vec::new();
    for (target, entry, (what, when)) in trash {
        match remove_tree(&target) {
            Ok(()) => {
                progress.detail(&format!(
                    "removed {what} ({}{when}): {}",
                    human_size(entry.bytes),
                    entry.path.display()
                ));
                removed.push(entry);
            }
            Err(e) => errors.push(e),
        }
    }
    drop(lock);
    if errors.is_empty() {
        Ok(removed)
    } else {
        Err(ImageError::Prune {
            cache: cache.dir.clone(),
            failures: errors,
        })
    }
}

/// The registrations in the image `dir` (named `name`) that count, after removing the stale
/// ones. A stale registration that cannot be removed counts (when in doubt, keep the image).
fn current_registrations(dir: &Path, name: &str, progress: &dyn Progress) -> Vec<Registration> {
    let mut current = Vec::new();
    for registration in image_registrations(dir) {
        if let (true, Some(user)) = (registration.stale, &registration.user) {
            match fs::remove_file(&registration.path) {
                Ok(()) => {
                    progress.detail(&format!(
                        "removed the stale registration of lab {} in the pod image {} (its \
                         state {} is gone): {}",
                        user.lab,
                        &name[..name.len().min(12)],
                        user.state_file.display(),
                        registration.path.display()
                    ));
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(_) => {}
            }
        }
        current.push(registration);
    }
    current
}

fn kind_note(kind: PrunedKind, name: &str) -> String {
    let short = &name[..name.len().min(12)];
    match kind {
        PrunedKind::Image => format!("the old pod image {short}"),
        PrunedKind::UnfinishedImage => format!("the unfinished pod image {short}"),
        PrunedKind::InterruptedBuild => "what an interrupted build left".into(),
        PrunedKind::InterruptedPrune => "what an interrupted prune left".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_ages_read_well() {
        assert_eq!(human_size(12 * 1024), "12 KiB");
        assert_eq!(human_size(458 * 1024 * 1024), "458 MiB");
        assert_eq!(human_size(1288 * 1024 * 1024), "1.3 GiB");
        let now = SystemTime::now();
        assert_eq!(ago(now + Duration::from_secs(5)), "0 s ago");
        assert_eq!(ago(now - Duration::from_secs(3 * 3600)), "3 h ago");
        assert_eq!(ago(now - Duration::from_secs(3 * 86_400)), "3 days ago");
        assert!(is_recipe_hash(&"ab".repeat(32)));
        assert!(!is_recipe_hash("downloads") && !is_recipe_hash(&"AB".repeat(32)));
    }
}
