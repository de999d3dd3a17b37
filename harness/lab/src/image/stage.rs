//! The work area that an image build and a lock making share: a fresh build directory in the
//! cache (removed unless it is committed), the recipe's Debian suite debootstrapped into it from
//! the host's mirror (step 1), commands run as root inside it, and the venv with pip's way to
//! the package index.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use guardlab_host::Progress;

use super::chroot::{self, Bind};
use super::error::{ImageError, IoContext};
use super::pip::{BuildScratch, PipSetup};
use super::recipe::LoadedRecipe;
use super::{
    DEBIAN_MIRROR_ENV, ImageCache, RECIPE_FILE, ROOT_PATH, ensure_debootstrap, host,
    remove_stale_builds, remove_tree,
};

/// Messages of debootstrap when the mirror does not carry the suite.
const NO_SUITE_MESSAGES: &[&str] = &[
    "Failed getting release file",
    "Invalid Release file",
    "Couldn't download",
];
/// Messages of debootstrap when the suite is signed by a key this host does not know.
const UNKNOWN_KEY_MESSAGES: &[&str] = &[
    "Release signed by unknown key",
    "Release file signed by unknown key",
];

/// The build directory: removed on drop unless it was renamed into place.
pub(super) struct BuildDir {
    pub(super) path: PathBuf,
    committed: bool,
}

impl BuildDir {
    pub(super) fn commit(mut self, final_dir: &Path) -> Result<(), ImageError> {
        fs::rename(&self.path, final_dir).context(|| {
            format!(
                "moving the finished image {} to {}",
                self.path.display(),
                final_dir.display()
            )
        })?;
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

/// What a build is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Purpose {
    /// A finished image.
    Image,
    /// New lock files for the recipe: its unpinned requirements resolved now, by the image's
    /// own pip (the interpreter and platform the lock is for).
    Lock,
}

/// The image being built: its work directory (removed unless committed) and root filesystem.
pub(super) struct Stage<'a> {
    pub(super) loaded: &'a LoadedRecipe,
    pub(super) work: BuildDir,
    pub(super) rootfs: PathBuf,
    /// The Debian suite and the mirror it came from, for the image's record.
    pub(super) suite: String,
    pub(super) mirror: String,
    pip_cache: PathBuf,
    pub(super) started: Instant,
    steps: usize,
}

impl Stage<'_> {
    /// A command that runs as root inside the image, with extra bind mounts.
    pub(super) fn in_root(
        &self,
        binds: &[Bind],
        argv: &[&str],
    ) -> Result<std::process::Command, ImageError> {
        let mut c = chroot::rootfs_command(&self.rootfs, None, None, binds, argv[0])?;
        c.args(&argv[1..]).envs([
            ("PATH", ROOT_PATH),
            ("HOME", "/root"),
            ("LANG", "C.UTF-8"),
            ("DEBIAN_FRONTEND", "noninteractive"),
        ]);
        Ok(c)
    }

    /// "step 2/6: ..." as a phase line.
    pub(super) fn step(&self, progress: &dyn Progress, n: usize, what: &str) {
        progress.phase(&format!("step {n}/{}: {what}", self.steps));
    }

    pub(super) fn venv_python(&self) -> String {
        format!("{}/bin/python", self.loaded.recipe.venv.path)
    }
}

/// Step 1: a fresh work directory with the recipe's Debian suite debootstrapped into it.
pub(super) fn bootstrap<'a>(
    loaded: &'a LoadedRecipe,
    cache: &ImageCache,
    purpose: Purpose,
    progress: &dyn Progress,
) -> Result<Stage<'a>, ImageError> {
    let r = &loaded.recipe;
    remove_stale_builds(&cache.dir, &loaded.hash, progress)?;
    let debootstrap = ensure_debootstrap(progress)?;
    let suite = r.debian.suite.0.clone();
    let mut source = host::host_apt_source(Path::new("/etc/apt"), &suite)?;
    if let Some(mirror) = std::env::var(DEBIAN_MIRROR_ENV)
        .ok()
        .filter(|m| !m.is_empty())
    {
        source.origin = format!("${DEBIAN_MIRROR_ENV}");
        source.uri = mirror;
        source.keyring = None;
    }
    let work = BuildDir {
        path: cache
            .dir
            .join(format!(".build-{}-{}", loaded.hash, std::process::id())),
        committed: false,
    };
    fs::create_dir_all(&work.path).context(|| format!("creating {}", work.path.display()))?;
    let rootfs = work.path.join("rootfs");
    let debs = cache.downloads.join("debs");
    let pip_cache = cache.downloads.join("pip");
    for d in [&rootfs, &debs, &pip_cache] {
        fs::create_dir_all(d).context(|| format!("creating {}", d.display()))?;
    }
    let stage = Stage {
        loaded,
        work,
        rootfs,
        suite: suite.clone(),
        mirror: source.uri.clone(),
        pip_cache,
        started: Instant::now(),
        steps: match purpose {
            Purpose::Image => 6,
            Purpose::Lock => 4,
        },
    };

    stage.step(
        progress,
        1,
        &format!(
            "debootstrap {suite} ({} variant) from the mirror {} ({})",
            r.debian.variant, source.uri, source.origin
        ),
    );
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
    cmd.arg(&suite).arg(&stage.rootfs).arg(&source.uri);
    chroot::run_streaming(cmd, "debootstrap", progress).map_err(|e| match e {
        ImageError::Step(failure) => {
            let said = |messages: &[&str]| {
                failure
                    .output
                    .iter()
                    .any(|line| messages.iter().any(|m| line.contains(m)))
            };
            let lacks_suite = said(NO_SUITE_MESSAGES);
            let unknown_key = said(UNKNOWN_KEY_MESSAGES);
            if lacks_suite || unknown_key {
                ImageError::SuiteNotOnMirror {
                    failure: Box::new(failure),
                    suite: suite.clone(),
                    recipe: loaded.dir.join(RECIPE_FILE),
                    mirror: source.uri.clone(),
                    origin: source.origin.clone(),
                    lacks_suite,
                    unknown_key,
                }
            } else {
                ImageError::Step(failure)
            }
        }
        other => other,
    })?;
    Ok(stage)
}

/// The venv, made with the image's python3, and pip's way to the index (the host's settings).
pub(super) fn create_venv(
    stage: &Stage<'_>,
    scratch: &BuildScratch,
    progress: &dyn Progress,
) -> Result<PipSetup, ImageError> {
    let r = &stage.loaded.recipe;
    progress.detail(&format!("creating the Python environment {}", r.venv.path));
    chroot::run_streaming(
        stage.in_root(&[], &["/usr/bin/python3", "-m", "venv", &r.venv.path])?,
        "python3 -m venv",
        progress,
    )?;
    PipSetup::prepare(scratch, &stage.pip_cache, progress)
}
