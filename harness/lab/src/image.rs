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

mod cache;
mod chroot;
mod host;
mod recipe;

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

pub use cache::{
    DEFAULT_LABS_DIR, ImageCache, ImageUser, PrunedEntry, PrunedKind, Registration, USERS_DIR,
    image_registrations, images_used_by_labs, prune_images, remove_registration,
};
pub use chroot::{Bind, RunAs, rootfs_command};
pub use host::{AptSource, host_apt_source};
pub use recipe::{LoadedRecipe, RECIPE_FILE, Recipe, load as load_recipe};

use crate::{LabError, Progress};

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
pub fn image_recipe_hash(recipe_dir: &Path) -> Result<String, LabError> {
    Ok(recipe::load(recipe_dir)?.hash)
}

/// The image of `recipe_dir` when it is already in the cache, without building anything.
pub fn cached_image(recipe_dir: &Path, cache_dir: &Path) -> Result<Option<BuiltImage>, LabError> {
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
) -> Result<BuiltImage, LabError> {
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
) -> Result<BuiltImage, LabError> {
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
    fs::create_dir_all(&cache.dir).map_err(|source| LabError::Io {
        context: format!("creating the image cache {}", cache.dir.display()),
        source,
    })?;
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
    build(&loaded, cache, &final_dir, progress)?;
    // Registered (and marked used) before the prune below, which then keeps it whatever.
    if !cache::use_if_complete(cache, &final_dir, user)? {
        return Err(LabError::Failed(format!(
            "the pod image built at {} is not complete",
            final_dir.display()
        )));
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
pub fn image_record(image: &BuiltImage) -> Result<ImageRecord, LabError> {
    let path = image
        .rootfs
        .parent()
        .unwrap_or(&image.rootfs)
        .join(RECORD_FILE);
    let text = fs::read_to_string(&path).map_err(|source| LabError::Io {
        context: format!("reading {}", path.display()),
        source,
    })?;
    serde_yaml::from_str(&text)
        .map_err(|e| LabError::Failed(format!("{}: bad image record: {e}", path.display())))
}

fn require_root() -> Result<(), LabError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(LabError::Missing {
            what: "root".into(),
            hint: "building the pod image (debootstrap, chroot) needs root: run with sudo".into(),
        });
    }
    Ok(())
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> LabError {
    let context = context.into();
    move |source| LabError::Io { context, source }
}

/// The build directory: removed on drop unless it was renamed into place.
struct BuildDir {
    path: PathBuf,
    committed: bool,
}

impl BuildDir {
    fn commit(mut self, final_dir: &Path) -> Result<(), LabError> {
        fs::rename(&self.path, final_dir).map_err(io(format!(
            "moving the finished image {} to {}",
            self.path.display(),
            final_dir.display()
        )))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for BuildDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = remove_tree(&self.path);
        }
    }
}

/// Removes a directory tree, first detaching anything still mounted under it (the build never
/// mounts in the host's namespace, but a tree left by someone else might have mounts: removing
/// through them would delete what they show).
fn remove_tree(path: &Path) -> std::io::Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let canonical = path.canonicalize()?;
    let mut mounts: Vec<PathBuf> = fs::read_to_string("/proc/self/mountinfo")?
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mountinfo(m)))
        .filter(|m| m.starts_with(&canonical))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    for m in mounts {
        if let Ok(c) = std::ffi::CString::new(m.as_os_str().as_encoded_bytes()) {
            // SAFETY: a valid NUL-terminated path.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
    fs::remove_dir_all(path)
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(digits) = std::str::from_utf8(&b[i + 1..i + 4])
            && let Ok(v) = u8::from_str_radix(digits, 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Files the build puts inside the image (host CA bundle, pip configuration, the host's
/// resolv.conf) and takes out again, also when the build fails.
struct BuildScratch {
    rootfs: PathBuf,
}

impl BuildScratch {
    fn dir(&self) -> PathBuf {
        self.rootfs.join(BUILD_SCRATCH.trim_start_matches('/'))
    }
}

impl Drop for BuildScratch {
    fn drop(&mut self) {
        let _ = remove_tree(&self.dir());
        // The pod runtime gives each pod its own resolver configuration.
        let _ = fs::write(self.rootfs.join("etc/resolv.conf"), "");
    }
}

fn build(
    loaded: &LoadedRecipe,
    cache: &ImageCache,
    final_dir: &Path,
    progress: &dyn Progress,
) -> Result<(), LabError> {
    let cache_dir = &cache.dir;
    let started = Instant::now();
    let r = &loaded.recipe;
    let short = &loaded.hash[..12];
    progress.phase(&format!(
        "building the pod image {} (recipe {short}): a one-time job of a few minutes",
        r.image
    ));
    remove_stale_builds(cache_dir, &loaded.hash, progress)?;
    if final_dir.exists() {
        // Not complete (checked by the caller): not ours to keep.
        remove_tree(final_dir).map_err(io(format!("removing {}", final_dir.display())))?;
    }
    let debootstrap = ensure_debootstrap(progress)?;
    let source = host::host_apt_source(Path::new("/etc/apt"))?;
    let suite = if r.debian.suite.0 == "host" {
        source.suite.clone()
    } else {
        r.debian.suite.0.clone()
    };

    let work = BuildDir {
        path: cache_dir.join(format!(".build-{}-{}", loaded.hash, std::process::id())),
        committed: false,
    };
    fs::create_dir_all(&work.path).map_err(io(format!("creating {}", work.path.display())))?;
    let rootfs = work.path.join("rootfs");
    let debs = cache.downloads.join("debs");
    let pip_cache = cache.downloads.join("pip");
    for d in [&rootfs, &debs, &pip_cache] {
        fs::create_dir_all(d).map_err(io(format!("creating {}", d.display())))?;
    }

    // 1. Debian packages.
    progress.phase(&format!(
        "debootstrap {suite} ({} variant) from the host's mirror {} ({})",
        r.debian.variant, source.uri, source.origin
    ));
    let mut cmd = chroot::private_mount_command(&debootstrap.to_string_lossy())?;
    cmd.arg(format!("--variant={}", r.debian.variant.0))
        .arg(format!(
            "--include={}",
            r.debian
                .packages
                .iter()
                .map(|p| p.0.as_str())
                .collect::<Vec<_>>()
                .join(",")
        ))
        .arg(format!("--cache-dir={}", debs.display()));
    if !source.components.is_empty() {
        cmd.arg(format!("--components={}", source.components.join(",")));
    }
    if let Some(k) = source.keyring.as_ref().filter(|k| k.is_file()) {
        cmd.arg(format!("--keyring={}", k.display()));
    }
    cmd.arg(&suite).arg(&rootfs).arg(&source.uri);
    chroot::run_streaming(cmd, "debootstrap", progress)?;

    let scratch = BuildScratch {
        rootfs: rootfs.clone(),
    };
    let root_env = [
        ("PATH", ROOT_PATH),
        ("HOME", "/root"),
        ("LANG", "C.UTF-8"),
        ("DEBIAN_FRONTEND", "noninteractive"),
    ];
    let in_root = |binds: &[Bind], argv: &[&str]| -> Result<std::process::Command, LabError> {
        let mut c = chroot::rootfs_command(&rootfs, None, None, binds, argv[0])?;
        c.args(&argv[1..]).envs(root_env);
        Ok(c)
    };

    // 2. The notebook user.
    progress.phase(&format!(
        "creating the user {} ({}:{} {})",
        r.user.name, r.user.uid, r.user.gid, r.user.group
    ));
    let group_line = chroot::run_capture(
        in_root(&[], &["/usr/bin/getent", "group", &r.user.gid.to_string()])?,
        "getent group",
    )
    .unwrap_or_default();
    match group_line
        .split(':')
        .next()
        .filter(|n| !n.trim().is_empty())
    {
        Some(name) if name == r.user.group.0 => {}
        Some(other) => {
            return Err(LabError::Failed(format!(
                "the image's group {} is `{other}`, not `{}` as the recipe says",
                r.user.gid, r.user.group
            )));
        }
        None => chroot::run_streaming(
            in_root(
                &[],
                &[
                    "/usr/sbin/groupadd",
                    "--gid",
                    &r.user.gid.to_string(),
                    &r.user.group,
                ],
            )?,
            "groupadd",
            progress,
        )?,
    }
    chroot::run_streaming(
        in_root(
            &[],
            &[
                "/usr/sbin/useradd",
                "--no-log-init",
                "--create-home",
                "--no-user-group",
                "--home-dir",
                &r.user.home,
                "--shell",
                &r.user.shell,
                "--uid",
                &r.user.uid.to_string(),
                "--gid",
                &r.user.gid.to_string(),
                &r.user.name,
            ],
        )?,
        "useradd",
        progress,
    )?;
    let owner = format!("{}:{}", r.user.uid, r.user.gid);
    for d in &r.user.home_dirs {
        let inside = format!("{}/{}", r.user.home, d);
        chroot::run_capture(in_root(&[], &["/bin/mkdir", "-p", &inside])?, "mkdir")?;
        chroot::run_capture(in_root(&[], &["/bin/chown", &owner, &inside])?, "chown")?;
    }

    // 3. The Python environment, with the image's python, reaching the index as the host does.
    progress.phase(&format!("creating the Python environment {}", r.venv.path));
    chroot::run_streaming(
        in_root(&[], &["/usr/bin/python3", "-m", "venv", &r.venv.path])?,
        "python3 -m venv",
        progress,
    )?;
    let pip = PipSetup::prepare(&scratch, &pip_cache, progress)?;
    progress.phase(&format!(
        "installing {} into {} with pip (host's pip configuration: {})",
        r.venv
            .packages
            .iter()
            .map(|p| p.0.as_str())
            .collect::<Vec<_>>()
            .join(" "),
        r.venv.path,
        pip.describe()
    ));
    let venv_python = format!("{}/bin/python", r.venv.path);
    let mut argv: Vec<&str> = vec![
        &venv_python,
        "-m",
        "pip",
        "install",
        "--no-input",
        "--progress-bar",
        "off",
        "--root-user-action=ignore",
        "--disable-pip-version-check",
    ];
    argv.extend(r.venv.packages.iter().map(|p| p.0.as_str()));
    let mut cmd = in_root(&pip.binds, &argv)?;
    cmd.envs(&pip.env);
    chroot::run_streaming(cmd, "pip install", progress)?;
    let freeze = chroot::run_capture(
        {
            let mut c = in_root(&[], &[&venv_python, "-m", "pip", "freeze", "--all"])?;
            c.env("PIP_DISABLE_PIP_VERSION_CHECK", "1");
            c
        },
        "pip freeze",
    )?;
    if r.venv.owner.0 != "root" {
        chroot::run_capture(
            in_root(&[], &["/bin/chown", "-R", &owner, &r.venv.path])?,
            "chown",
        )?;
    }

    // 4. The recipe's files.
    progress.phase("installing the recipe's files");
    for (f, content) in r.files.iter().zip(&loaded.file_contents) {
        install_file(&rootfs, &f.target, content, f.mode.0)?;
        progress.detail(&format!("{} -> {} ({:o})", f.source, f.target, f.mode.0));
    }

    // 5. Tidy up what a container image does not carry.
    progress.phase("cleaning up");
    drop(scratch);
    fs::write(
        rootfs.join("etc/hosts"),
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    )
    .map_err(io("writing /etc/hosts"))?;
    for dir in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        let dir = rootfs.join(dir);
        if let Ok(rd) = fs::read_dir(&dir) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_file() && p.file_name().is_some_and(|n| n != "lock") {
                    let _ = fs::remove_file(&p);
                }
            }
        }
    }

    // 6. Check the result before anyone relies on it.
    progress.phase("checking the image");
    check_image(&rootfs, r, &in_root)?;

    let record = ImageRecord {
        image: r.image.clone(),
        recipe_hash: loaded.hash.clone(),
        debian_suite: suite,
        debian_mirror: source.uri.clone(),
        build_seconds: started.elapsed().as_secs_f64(),
        size_bytes: disk_usage(&rootfs),
        python_packages: freeze.lines().map(str::to_string).collect(),
    };
    let text = serde_yaml::to_string(&record)
        .map_err(|e| LabError::Failed(format!("writing the image record: {e}")))?;
    let record_path = work.path.join(RECORD_FILE);
    let mut f = fs::File::create(&record_path)
        .map_err(io(format!("creating {}", record_path.display())))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(io(format!("writing {}", record_path.display())))?;
    work.commit(final_dir)?;
    progress.phase(&format!(
        "built the pod image {} in {:.0} s ({} MiB) at {}",
        r.image,
        record.build_seconds,
        record.size_bytes / (1 << 20),
        final_dir.display()
    ));
    Ok(())
}

/// Removes what interrupted builds left: those of this recipe (the caller holds its lock, so
/// none is running), and those of other recipes whose lock is free (their build is not running
/// either: a build holds its recipe's lock until it ends).
fn remove_stale_builds(
    cache_dir: &Path,
    hash: &str,
    progress: &dyn Progress,
) -> Result<(), LabError> {
    let rd = fs::read_dir(cache_dir).map_err(io(format!("reading {}", cache_dir.display())))?;
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
        remove_tree(&e.path()).map_err(io(format!("removing {}", e.path().display())))?;
    }
    Ok(())
}

/// debootstrap's path. `lab up` made sure of it before any slow work (with its own host, which
/// carries `--no-install`); a direct caller of [`ensure_image`] gets it here through the host
/// crate: installed after saying so, or refused naming the package (under
/// `GUARDLAB_NO_INSTALL`, when not root, without apt-get).
fn ensure_debootstrap(progress: &dyn Progress) -> Result<PathBuf, LabError> {
    let host = guardlab_host::Host::new(false);
    host.ensure(&[&guardlab_host::catalog::DEBOOTSTRAP], progress)?;
    host.find_program("debootstrap")
        .ok_or_else(|| LabError::Missing {
            what: "debootstrap".into(),
            hint: "the host crate found it a moment ago and now it is gone".into(),
        })
}

/// How the chroot's pip reaches the package index: the host's pip settings, with the host files
/// they name (CA bundles, local wheel directories) copied or bind-mounted into the scratch dir.
struct PipSetup {
    env: BTreeMap<String, String>,
    binds: Vec<Bind>,
    summary: Vec<String>,
}

impl PipSetup {
    fn prepare(
        scratch: &BuildScratch,
        pip_cache: &Path,
        progress: &dyn Progress,
    ) -> Result<Self, LabError> {
        let dir = scratch.dir();
        fs::create_dir_all(dir.join("pip-cache"))
            .map_err(io(format!("creating {}", dir.display())))?;
        // The host's resolver, for the build only (a file of our own to bind onto).
        let resolv = scratch.rootfs.join("etc/resolv.conf");
        let _ = fs::remove_file(&resolv);
        fs::write(&resolv, "").map_err(io(format!("creating {}", resolv.display())))?;
        let mut setup = PipSetup {
            env: BTreeMap::new(),
            binds: vec![
                Bind {
                    host: PathBuf::from("/etc/resolv.conf"),
                    inside: PathBuf::from("/etc/resolv.conf"),
                    read_only: true,
                },
                Bind {
                    host: pip_cache.to_path_buf(),
                    inside: PathBuf::from(format!("{BUILD_SCRATCH}/pip-cache")),
                    read_only: false,
                },
            ],
            summary: Vec::new(),
        };
        let host_env: BTreeMap<String, String> = std::env::vars().collect();
        let host = host::host_pip_config(&host_env);
        for f in &host.files_read {
            setup.summary.push(f.display().to_string());
        }
        let mut counter = 0usize;
        let mut settings: BTreeMap<(String, String), String> = BTreeMap::new();
        for ((section, key), value) in &host.file_settings {
            let value = setup.rewrite(&dir, key, value, &mut counter)?;
            settings.insert((section.clone(), key.clone()), value);
        }
        for (k, v) in &host.env {
            let key = k
                .strip_prefix("PIP_")
                .map(|s| s.to_ascii_lowercase().replace('_', "-"))
                .unwrap_or_else(|| match k.as_str() {
                    "REQUESTS_CA_BUNDLE" | "SSL_CERT_FILE" => "cert".into(),
                    _ => String::new(),
                });
            let value = setup.rewrite(&dir, &key, v, &mut counter)?;
            setup.summary.push(format!("${k}"));
            setup.env.insert(k.clone(), value);
        }
        let mut conf = String::from("# The host's pip configuration, for the image build only.\n");
        let mut section = None;
        for ((s, k), v) in &settings {
            if section != Some(s) {
                conf.push_str(&format!("[{s}]\n"));
                section = Some(s);
            }
            conf.push_str(&format!("{k} = {}\n", v.replace('\n', "\n    ")));
        }
        let conf_path = dir.join("pip.conf");
        fs::write(&conf_path, conf).map_err(io(format!("writing {}", conf_path.display())))?;
        setup.env.insert(
            "PIP_CONFIG_FILE".into(),
            format!("{BUILD_SCRATCH}/pip.conf"),
        );
        setup
            .env
            .insert("PIP_CACHE_DIR".into(), format!("{BUILD_SCRATCH}/pip-cache"));
        for line in &setup.summary {
            progress.detail(&format!("pip setting from the host: {line}"));
        }
        Ok(setup)
    }

    /// A value as the chroot must see it: host files copied in, host directories bind-mounted.
    fn rewrite(
        &mut self,
        dir: &Path,
        key: &str,
        value: &str,
        counter: &mut usize,
    ) -> Result<String, LabError> {
        if host::FILE_KEYS.contains(&key) && Path::new(value).is_file() {
            *counter += 1;
            let name = format!("file-{counter}");
            fs::copy(value, dir.join(&name))
                .map_err(io(format!("copying the host's {value} for pip")))?;
            return Ok(format!("{BUILD_SCRATCH}/{name}"));
        }
        if host::DIR_LIST_KEYS.contains(&key) {
            let mut out = Vec::new();
            for item in value.split_whitespace() {
                let local = item.strip_prefix("file://").unwrap_or(item);
                if !local.starts_with('/') {
                    out.push(item.to_string());
                    continue;
                }
                if !Path::new(local).is_dir() {
                    // pip would only warn about it.
                    continue;
                }
                *counter += 1;
                let name = format!("links-{counter}");
                fs::create_dir_all(dir.join(&name)).map_err(io("creating a bind-mount point"))?;
                self.binds.push(Bind {
                    host: PathBuf::from(local),
                    inside: PathBuf::from(format!("{BUILD_SCRATCH}/{name}")),
                    read_only: true,
                });
                out.push(format!("{BUILD_SCRATCH}/{name}"));
            }
            return Ok(out.join(if value.contains('\n') { "\n" } else { " " }));
        }
        Ok(value.to_string())
    }

    fn describe(&self) -> String {
        if self.summary.is_empty() {
            "none, pip's defaults".into()
        } else {
            self.summary.join(", ")
        }
    }
}

/// Writes a recipe file into the image, refusing a target whose parent leaves the image.
fn install_file(rootfs: &Path, target: &str, content: &[u8], mode: u32) -> Result<(), LabError> {
    let path = rootfs.join(target.trim_start_matches('/'));
    let parent = path.parent().unwrap_or(rootfs);
    fs::create_dir_all(parent).map_err(io(format!("creating {}", parent.display())))?;
    let real_parent = parent
        .canonicalize()
        .map_err(io(format!("resolving {}", parent.display())))?;
    let real_root = rootfs
        .canonicalize()
        .map_err(io(format!("resolving {}", rootfs.display())))?;
    if !real_parent.starts_with(&real_root) {
        return Err(LabError::Failed(format!(
            "the recipe's file target {target} leads out of the image (to {})",
            real_parent.display()
        )));
    }
    let path = real_parent.join(path.file_name().unwrap_or_default());
    let _ = fs::remove_file(&path);
    fs::write(&path, content).map_err(io(format!("writing {}", path.display())))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(mode))
        .map_err(io(format!("setting the mode of {}", path.display())))
}

/// Makes a command that runs as root inside the image being built, with extra bind mounts.
type InRoot<'a> = dyn Fn(&[Bind], &[&str]) -> Result<std::process::Command, LabError> + 'a;

/// The image has what the scenario relies on, and not what it must not have.
fn check_image(rootfs: &Path, r: &Recipe, in_root: &InRoot) -> Result<(), LabError> {
    for p in &r.debian.forbidden_packages {
        let status = in_root(&[], &["/usr/bin/dpkg-query", "-W", "-f=${Status}", p])?
            .output()
            .map_err(io("running dpkg-query"))?;
        if String::from_utf8_lossy(&status.stdout).contains("ok installed") {
            return Err(LabError::Failed(format!(
                "the image has the package `{p}`, which the recipe forbids (something pulled it in)"
            )));
        }
    }
    let user = RunAs {
        uid: r.user.uid,
        gid: r.user.gid,
    };
    let as_user = |argv: &[&str]| -> Result<std::process::Command, LabError> {
        let mut c = chroot::rootfs_command(rootfs, Some(user), Some(&r.user.home), &[], argv[0])?;
        c.args(&argv[1..])
            .envs(r.config.env.iter().map(|(k, v)| (k.0.as_str(), v.as_str())));
        Ok(c)
    };
    for c in &r.debian.forbidden_commands {
        let out = as_user(&["/bin/bash", "-lc", &format!("command -v {c}")])?
            .output()
            .map_err(io("running bash"))?;
        if out.status.success() {
            return Err(LabError::Failed(format!(
                "the image has the command `{c}` ({}), which the recipe forbids",
                String::from_utf8_lossy(&out.stdout).trim()
            )));
        }
    }
    let ids = chroot::run_capture(as_user(&["/usr/bin/id"])?, "id")?;
    let expected = format!(
        "uid={}({}) gid={}({})",
        r.user.uid, r.user.name, r.user.gid, r.user.group
    );
    if !ids.starts_with(&expected) {
        return Err(LabError::Failed(format!(
            "the image's user is `{}`, not `{expected}`",
            ids.trim()
        )));
    }
    let sudo = as_user(&["/usr/bin/sudo", "-n", "-l"])?
        .output()
        .map_err(io("running sudo"))?;
    if sudo.status.success() {
        return Err(LabError::Failed(format!(
            "`sudo -l` works for {} in the image; the recipe's user must not be a sudoer: {}",
            r.user.name,
            String::from_utf8_lossy(&sudo.stdout).trim()
        )));
    }
    if !r.venv.check_imports.is_empty() {
        let python = format!("{}/bin/python", r.venv.path);
        let code = format!(
            "import {}",
            r.venv
                .check_imports
                .iter()
                .map(|m| m.0.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        chroot::run_capture(
            as_user(&[&python, "-c", &code])?,
            &format!("`{code}` in the image"),
        )?;
    }
    Ok(())
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
        remove_stale_builds(&cache, "ours", &crate::NoProgress).unwrap();
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

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape_mountinfo("/a\\040b\\011c"), "/a b\tc");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/end\\04"), "/end\\04");
    }
}
