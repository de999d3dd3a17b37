//! The local lab's pod image: a Debian root filesystem built from the recipe in
//! `manifests/image/` and cached by the recipe's hash.
//!
//! The kind backend pulls `jupyter/minimal-notebook`; the local backend has no registry to pull
//! from, so it builds an image-like root filesystem with the same things the scenario relies on
//! (bash, ps, curl, wget, sudo, python3, no ping, the `jovyan` user, a Python environment with
//! Jupyter and a `start-notebook.py`). The build is debootstrap from the host's Debian mirror,
//! then pip inside a chroot with the image's own python, reaching the package index the way the
//! host does (its pip configuration and CA bundle, copied in for the build only).
//!
//! Cache layout, under [`default_cache_dir`]:
//! - `<hash>/rootfs`: a finished image (`<hash>/image.yaml` describes it, the mtime of
//!   `<hash>/last-used` says when a lab last took it, `<hash>/users/<lab>-<id>` registers a lab
//!   that uses it, naming the lab's state file). A build happens in
//!   `.build-<hash>-<pid>/` and is renamed to `<hash>/` only when complete, so an interrupted
//!   build never looks finished; the next build removes the leftovers.
//! - `downloads/debs`, `downloads/pip`: debootstrap's and pip's downloads, kept for rebuilds
//!   (another place can be given, [`ImageCache::downloads`], so that caches share them).
//! - `.<hash>.lock` (one build per recipe), `.prune.lock` (pruning against lookups).
//!
//! Old images are pruned after each build ([`prune_images`]): every other recipe's image goes,
//! except the most recently used one (a step back stays cheap) and any image a lab uses: one
//! registered in it whose state file exists (whatever its state directory), or one that
//! records it in its state file in the cache's labs directories.
//!
//! Everything here fails with an [`ImageError`], which says what went wrong in the image's own
//! terms; it becomes the lab's `LabError` at the lab's boundary (bad recipe or lock input,
//! something missing on the host, or a failure of "the pod image").
#![allow(unsafe_code)] // geteuid(2) and umount2(2) of what a removed tree still has mounted

mod build;
mod cache;
mod check;
mod chroot;
mod error;
mod host;
mod lock;
mod pip;
mod recipe;
mod stage;

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use guardlab_host::Progress;
use serde::{Deserialize, Serialize};

pub use cache::{
    DEFAULT_LABS_DIR, ImageCache, ImageUser, LAB_CONFIG_FILE, LAB_STATE_FILE, PrunedEntry,
    PrunedKind, Registration, USERS_DIR, image_registrations, images_used_by_labs, prune_images,
    remove_registration,
};
pub use chroot::{Bind, RunAs, rootfs_command};
pub use error::{CheckFailure, ImageError, StepFailed};
pub use guardlab_services::{INDEX_LOCK_FILE, Pin, PythonLock, normalize_project_name};
pub use host::{AptSource, host_apt_source};
pub use lock::{LockReport, lock_recipe};
pub use recipe::{
    LoadedRecipe, RECIPE_FILE, Recipe, load as load_recipe, load_unlocked as load_recipe_unlocked,
};

use error::IoContext;

/// A finished image in the cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuiltImage {
    /// The root filesystem (use it read-only: it is shared by every pod of this image).
    pub rootfs: PathBuf,
    /// sha256 (hex) of the recipe and the files it installs.
    pub recipe_hash: String,
    /// The image name from the recipe, e.g. `jupyter/minimal-notebook:latest`.
    pub image: String,
    /// `sha256:<recipe hash>`, what a container runtime would report as the image id.
    pub image_id: String,
    /// How a container of this image runs.
    pub config: ImageConfig,
}

/// Like an OCI image config: what the runtime applies to the pod's command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageConfig {
    /// The notebook user's name, uid and gid.
    pub user: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    pub working_dir: PathBuf,
    /// Environment of the container's processes, sorted by name.
    pub env: Vec<(String, String)>,
}

/// What `<hash>/image.yaml` records about a build.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImageRecord {
    pub image: String,
    pub recipe_hash: String,
    pub debian_suite: String,
    pub debian_mirror: String,
    pub build_seconds: f64,
    pub size_bytes: u64,
    /// `pip freeze` of the image's Python environment.
    pub python_packages: Vec<String>,
}

/// Name of the record of a finished image, next to its `rootfs`.
const RECORD_FILE: &str = "image.yaml";
/// Scratch directory inside the root filesystem while it builds (removed afterwards).
const BUILD_SCRATCH: &str = "/tmp/guardlab-build";
/// The PATH of commands that the build runs as root inside the image.
const ROOT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Environment variable naming the Debian mirror to debootstrap from, for hosts whose apt
/// sources name none that carries the recipe's suite (an Ubuntu host, say).
pub const DEBIAN_MIRROR_ENV: &str = "GUARDLAB_DEBIAN_MIRROR";

/// `$XDG_CACHE_HOME/guardlab/images`, else `~/.cache/guardlab/images` (root's under sudo).
pub fn default_cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .map(|h| h.join(".cache"))
        })
        .unwrap_or_else(|| PathBuf::from("/var/cache"));
    base.join("guardlab").join("images")
}

/// The hash under which the image of the recipe in `recipe_dir` is cached.
pub fn image_recipe_hash(recipe_dir: &Path) -> Result<String, ImageError> {
    Ok(recipe::load(recipe_dir)?.hash)
}

/// The image of `recipe_dir` when it is already in the cache, without building anything.
pub fn cached_image(recipe_dir: &Path, cache_dir: &Path) -> Result<Option<BuiltImage>, ImageError> {
    let loaded = recipe::load(recipe_dir)?;
    let dir = cache_dir.join(&loaded.hash);
    Ok(is_complete(&dir).then(|| built_image(&loaded, &dir)))
}

/// The image of the recipe in `recipe_dir`: from the cache when it is there (well under a
/// second), else built (a few minutes, needs root) and cached. Blocking. For a caller that is
/// no lab (nothing registers as the image's user); see [`ensure_cached_image`].
pub fn ensure_image(
    recipe_dir: &Path,
    cache_dir: &Path,
    progress: &dyn Progress,
) -> Result<BuiltImage, ImageError> {
    ensure_cached_image(recipe_dir, &ImageCache::new(cache_dir), None, progress)
}

/// [`ensure_image`] with the cache's places given, for `user` when a lab will run on the image:
/// it is registered in the image before the image is returned (and removes the registration at
/// `down`: [`remove_registration`]), so that no prune takes the image while the lab's state file
/// exists. After a build, the images of other recipes are pruned ([`prune_images`]): all but
/// the most recently used one and those labs use.
pub fn ensure_cached_image(
    recipe_dir: &Path,
    cache: &ImageCache,
    user: Option<&ImageUser>,
    progress: &dyn Progress,
) -> Result<BuiltImage, ImageError> {
    let loaded = recipe::load(recipe_dir)?;
    let final_dir = cache.dir.join(&loaded.hash);
    if cache::use_if_complete(cache, &final_dir, user)? {
        progress.phase(&format!(
            "using the cached pod image {} ({})",
            loaded.recipe.image,
            final_dir.display()
        ));
        return Ok(built_image(&loaded, &final_dir));
    }
    require_root()?;
    fs::create_dir_all(&cache.dir)
        .context(|| format!("creating the image cache {}", cache.dir.display()))?;
    // One build per recipe at a time; whoever waited finds the image built. Held until the
    // end, so that a prune by another build never takes this image before it is registered.
    let _build_lock = cache::BuildLock::acquire(&cache.dir, &loaded.hash)?;
    if cache::use_if_complete(cache, &final_dir, user)? {
        progress.phase(&format!(
            "using the pod image {} that another build just finished",
            loaded.recipe.image
        ));
        return Ok(built_image(&loaded, &final_dir));
    }
    build::build_image(&loaded, cache, &final_dir, progress)?;
    // Registered (and marked used) before the prune below, which then keeps it whatever.
    if !cache::use_if_complete(cache, &final_dir, user)? {
        return Err(ImageError::Incomplete { dir: final_dir });
    }
    // The new image is in place: a failure to tidy up is reported, not fatal.
    if let Err(e) = prune_images(cache, &loaded.hash, progress) {
        progress.detail(&format!("old pod images were not removed: {e}"));
    }
    Ok(built_image(&loaded, &final_dir))
}

fn is_complete(dir: &Path) -> bool {
    dir.join(RECORD_FILE).is_file() && dir.join("rootfs").is_dir()
}

fn built_image(loaded: &LoadedRecipe, dir: &Path) -> BuiltImage {
    let r = &loaded.recipe;
    BuiltImage {
        rootfs: dir.join("rootfs"),
        recipe_hash: loaded.hash.clone(),
        image: r.image.clone(),
        image_id: format!("sha256:{}", loaded.hash),
        config: ImageConfig {
            user: r.user.name.0.clone(),
            uid: r.user.uid,
            gid: r.user.gid,
            home: PathBuf::from(&r.user.home.0),
            working_dir: PathBuf::from(&r.config.working_dir.0),
            env: r
                .config
                .env
                .iter()
                .map(|(k, v)| (k.0.clone(), v.clone()))
                .collect(),
        },
    }
}

/// The record of a finished image (build time, size, Python packages).
pub fn image_record(image: &BuiltImage) -> Result<ImageRecord, ImageError> {
    let path = image
        .rootfs
        .parent()
        .unwrap_or(&image.rootfs)
        .join(RECORD_FILE);
    let text = fs::read_to_string(&path).context(|| format!("reading {}", path.display()))?;
    serde_yaml::from_str(&text).map_err(|source| ImageError::Record {
        path,
        action: "reading",
        source,
    })
}

fn require_root() -> Result<(), ImageError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(ImageError::NotRoot {
            task: "building the pod image (debootstrap, chroot)",
        });
    }
    Ok(())
}

/// Removes a directory tree, first detaching anything still mounted under it (the build never
/// mounts in the host's namespace, but a tree left by someone else might have mounts: removing
/// through them would delete what they show).
fn remove_tree(path: &Path) -> Result<(), ImageError> {
    if !path.exists() {
        return Ok(());
    }
    let canonical = path
        .canonicalize()
        .context(|| format!("resolving {}", path.display()))?;
    let mut mounts: Vec<PathBuf> = guardlab_host::mounts()?
        .into_iter()
        .map(|m| m.target)
        .filter(|m| m.starts_with(&canonical))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    for m in mounts {
        if let Ok(c) = std::ffi::CString::new(m.as_os_str().as_encoded_bytes()) {
            // SAFETY: a valid NUL-terminated path.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
    fs::remove_dir_all(path).context(|| format!("removing {}", path.display()))
}

/// Removes what interrupted builds left: those of this recipe (the caller holds its lock, so
/// none is running), and those of other recipes whose lock is free (their build is not running
/// either: a build holds its recipe's lock until it ends).
fn remove_stale_builds(
    cache_dir: &Path,
    hash: &str,
    progress: &dyn Progress,
) -> Result<(), ImageError> {
    let rd = fs::read_dir(cache_dir).context(|| format!("reading {}", cache_dir.display()))?;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(build_hash) = name
            .strip_prefix(".build-")
            .and_then(|rest| rest.split_once('-'))
            .map(|(h, _pid)| h.to_string())
        else {
            continue;
        };
        // Held until the end of this iteration when it is another recipe's.
        let _other_lock;
        if build_hash != hash {
            let lock_path = cache_dir.join(format!(".{build_hash}.lock"));
            let Ok(lock) = fs::File::open(&lock_path) else {
                continue;
            };
            if lock.try_lock().is_err() {
                continue;
            }
            _other_lock = lock;
        }
        progress.detail(&format!(
            "removing an interrupted build {}",
            e.path().display()
        ));
        remove_tree(&e.path())?;
    }
    Ok(())
}

/// debootstrap's path. `lab up` made sure of it before any slow work (with its own host, which
/// carries `--no-install`); a direct caller of [`ensure_image`] gets it here through the host
/// crate: installed after saying so, or refused naming the package (under
/// `GUARDLAB_NO_INSTALL`, when not root, without apt-get).
fn ensure_debootstrap(progress: &dyn Progress) -> Result<PathBuf, ImageError> {
    let host = guardlab_host::Host::new(false);
    host.ensure(&[&guardlab_host::catalog::DEBOOTSTRAP], progress)?;
    host.find_program("debootstrap")
        .ok_or(ImageError::ProgramGone {
            program: "debootstrap",
        })
}

/// Bytes used on disk under `path` (hard links counted once), like `du -s`.
pub fn disk_usage(path: &Path) -> u64 {
    fn walk(p: &Path, seen: &mut HashSet<(u64, u64)>, total: &mut u64) {
        let Ok(meta) = fs::symlink_metadata(p) else {
            return;
        };
        if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
            return;
        }
        *total += meta.blocks() * 512;
        if meta.is_dir()
            && let Ok(rd) = fs::read_dir(p)
        {
            for e in rd.flatten() {
                walk(&e.path(), seen, total);
            }
        }
    }
    let mut seen = HashSet::new();
    let mut total = 0;
    walk(path, &mut seen, &mut total);
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interrupted_builds_are_removed_unless_their_build_still_runs() {
        let cache =
            std::env::temp_dir().join(format!("guardlab-stale-unit-{}", std::process::id()));
        let _ = fs::remove_dir_all(&cache);
        for d in [".build-ours-1", ".build-dead-2", ".build-running-3", "keep"] {
            fs::create_dir_all(cache.join(d).join("rootfs/etc")).unwrap();
        }
        fs::write(cache.join(".dead.lock"), "").unwrap();
        let running = fs::File::create(cache.join(".running.lock")).unwrap();
        running.lock().unwrap();
        remove_stale_builds(&cache, "ours", &guardlab_host::NoProgress).unwrap();
        let mut left: Vec<String> = fs::read_dir(&cache)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".lock"))
            .collect();
        left.sort();
        assert_eq!(left, vec![".build-running-3", "keep"]);
        drop(running);
        fs::remove_dir_all(&cache).unwrap();
    }

    /// `remove_tree` finds the mounts under a tree through the host crate's mountinfo reader.
    #[test]
    fn mountinfo_paths_are_unescaped() {
        use guardlab_host::unescape_mountinfo;
        assert_eq!(unescape_mountinfo("/a\\040b\\011c"), "/a b\tc");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/end\\04"), "/end\\04");
    }
}
