//! Making the recipe's lock files (`guardlab image lock`): the build's first steps, stopped
//! after an unpinned pip install, then what pip chose pinned by version and sha256.

use std::fs;
use std::path::{Path, PathBuf};

use guardlab_host::Progress;
use guardlab_services::{Pin, PythonLock};

use super::cache::BuildLock;
use super::chroot;
use super::error::{ImageError, IoContext};
use super::pip::BuildScratch;
use super::recipe::LoadedRecipe;
use super::stage::{Purpose, bootstrap, create_venv};
use super::{BUILD_SCRATCH, ImageCache, RECIPE_FILE};

/// What [`lock_recipe`] wrote.
#[derive(Clone, Debug)]
pub struct LockReport {
    /// (lock file, pins before, pins after).
    pub files: Vec<(PathBuf, Vec<Pin>, Vec<Pin>)>,
}

/// Makes the recipe's lock files anew: debootstraps the recipe's suite, installs the recipe's
/// unpinned `venv.packages` with the image's own pip, pins what pip chose (with the sha256 of
/// the files it chose for this interpreter and platform), and pins the newest wheels of the lab
/// index's baseline requirements the same way. The lock files are rewritten only when
/// everything succeeded. Needs root (debootstrap, chroot).
pub fn lock_recipe(
    loaded: &LoadedRecipe,
    cache: &ImageCache,
    index_lock: &Path,
    progress: &dyn Progress,
) -> Result<LockReport, ImageError> {
    let r = &loaded.recipe;
    progress.phase(&format!(
        "making new pins for {} and {} from {}'s venv.packages (a few minutes)",
        loaded.venv_lock.file.display(),
        index_lock.display(),
        loaded.dir.join(RECIPE_FILE).display()
    ));
    fs::create_dir_all(&cache.dir).context(|| format!("creating {}", cache.dir.display()))?;
    // The recipe's build lock: a build of the same recipe would take our work directory for
    // an interrupted build of its own.
    let _build_lock = BuildLock::acquire(&cache.dir, &loaded.hash)?;
    let stage = bootstrap(loaded, cache, Purpose::Lock, progress)?;
    let scratch = BuildScratch {
        rootfs: stage.rootfs.clone(),
    };
    let pip = create_venv(&stage, &scratch, progress)?;
    let venv_python = stage.venv_python();
    let pip_run = |args: &[&str], what: &str| -> Result<(), ImageError> {
        let mut argv = vec![
            venv_python.as_str(),
            "-m",
            "pip",
            args[0],
            "--no-input",
            "--progress-bar",
            "off",
            "--disable-pip-version-check",
        ];
        argv.extend_from_slice(&args[1..]);
        let mut cmd = stage.in_root(&pip.binds, &argv)?;
        cmd.envs(&pip.env);
        chroot::run_streaming(cmd, what, progress)
    };
    stage.step(
        progress,
        3,
        "resolving the recipe's Python packages with pip",
    );
    let mut install = vec![
        "install",
        "--root-user-action=ignore",
        "--only-binary=:all:",
    ];
    install.extend(r.venv.packages.iter().map(|p| p.0.as_str()));
    pip_run(&install, "pip install")?;
    let freeze = chroot::run_capture(
        {
            let mut c = stage.in_root(&[], &[&venv_python, "-m", "pip", "freeze"])?;
            c.env("PIP_DISABLE_PIP_VERSION_CHECK", "1");
            c
        },
        "pip freeze",
    )?;
    fs::write(scratch.dir().join("frozen.txt"), &freeze).context(|| "writing frozen.txt")?;
    stage.step(progress, 4, "downloading the chosen files to hash them");
    let venv_dir = format!("{BUILD_SCRATCH}/venv-files");
    let index_dir = format!("{BUILD_SCRATCH}/index-files");
    let frozen = format!("{BUILD_SCRATCH}/frozen.txt");
    pip_run(
        &[
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--dest",
            &venv_dir,
            "--requirement",
            &frozen,
        ],
        "pip download (venv)",
    )?;
    let mut index_args = vec!["download", "--only-binary=:all:", "--dest", &index_dir];
    index_args.extend(guardlab_services::BASELINE_REQUIREMENTS);
    pip_run(&index_args, "pip download (lab index)")?;

    let pins_in = |inside: &str| -> Result<Vec<Pin>, ImageError> {
        let dir = stage.rootfs.join(inside.trim_start_matches('/'));
        let mut pins = Vec::new();
        for e in fs::read_dir(&dir).context(|| format!("reading {}", dir.display()))? {
            let path = e.context(|| format!("reading {}", dir.display()))?.path();
            let mut pin = guardlab_services::pin_of_file(&path)
                .map_err(|source| ImageError::DownloadHash { source })?;
            // One spelling for every name, whatever the file names use.
            pin.name = pin.project.clone();
            pins.push(pin);
        }
        Ok(pins)
    };
    let venv_pins = pins_in(&venv_dir)?;
    let index_pins = pins_in(&index_dir)?;
    let missing: Vec<String> = r
        .venv
        .packages
        .iter()
        .map(|p| guardlab_services::normalize_project_name(p.project_name()))
        .filter(|p| !venv_pins.iter().any(|pin| &pin.project == p))
        .collect();
    if !missing.is_empty() {
        return Err(ImageError::UnresolvedPackages {
            recipe: loaded.dir.join(RECIPE_FILE),
            packages: missing,
        });
    }
    let header = |what: &str| {
        format!(
            "{what}\n\nExact versions and the sha256 of the files pip installs (`--require-hashes`), for\n\
             Debian {} and its python3. Made by `guardlab image lock` from recipe.yaml;\n\
             a change here is a reviewed change (it may rewrite snapshots).",
            stage.suite
        )
    };
    let venv_text = PythonLock::render(
        &header("The pod image's Python environment (recipe.yaml: venv.lock)."),
        &venv_pins,
    );
    let index_text = PythonLock::render(
        &header(
            "The wheels the lab's package index serves for the baseline's\n`pip install --upgrade pip setuptools wheel`.",
        ),
        &index_pins,
    );
    let before = |path: &Path| PythonLock::read(path).map(|l| l.pins).unwrap_or_default();
    let report = LockReport {
        files: vec![
            (
                loaded.venv_lock.file.clone(),
                before(&loaded.venv_lock.file),
                venv_pins,
            ),
            (index_lock.to_path_buf(), before(index_lock), index_pins),
        ],
    };
    for (path, text) in [
        (&loaded.venv_lock.file, venv_text),
        (&index_lock.to_path_buf(), index_text),
    ] {
        let tmp = path.with_extension("lock.new");
        fs::write(&tmp, text).context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, path).context(|| format!("replacing {}", path.display()))?;
    }
    Ok(report)
}
