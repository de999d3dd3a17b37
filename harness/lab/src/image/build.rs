//! Building the pod image from its recipe: debootstrap from the host's mirror (the recipe's
//! pinned suite, [`super::stage`]), the notebook user, a venv with exactly the recipe's lock
//! installed by the image's own pip, the recipe's files; checked ([`super::check`]) before it is
//! committed to the cache. The same first steps make the lock files ([`super::lock`]).

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use guardlab_host::Progress;

use super::check::check_image;
use super::chroot;
use super::error::{CheckFailure, ImageError, IoContext};
use super::pip::BuildScratch;
use super::recipe::LoadedRecipe;
use super::stage::{Purpose, Stage, bootstrap, create_venv};
use super::{BUILD_SCRATCH, ImageCache, ImageRecord, RECORD_FILE, disk_usage, remove_tree};

/// Builds the image of `loaded` into `final_dir` (the caller holds the recipe's build lock).
pub(super) fn build_image(
    loaded: &LoadedRecipe,
    cache: &ImageCache,
    final_dir: &Path,
    progress: &dyn Progress,
) -> Result<(), ImageError> {
    let r = &loaded.recipe;
    progress.phase(&format!(
        "building the pod image {} (recipe {}): a one-time job of a few minutes",
        r.image,
        &loaded.hash[..12]
    ));
    if final_dir.exists() {
        // Not complete (checked by the caller): not ours to keep.
        remove_tree(final_dir)?;
    }
    let stage = bootstrap(loaded, cache, Purpose::Image, progress)?;
    create_user(&stage, progress)?;

    // 3. The Python environment: exactly the lock, with the image's python, reaching the index
    // as the host does.
    let scratch = BuildScratch {
        rootfs: stage.rootfs.clone(),
    };
    let pip = create_venv(&stage, &scratch, progress)?;
    let lock_inside = format!("{BUILD_SCRATCH}/venv.lock");
    fs::copy(&loaded.venv_lock.file, scratch.dir().join("venv.lock"))
        .context(|| format!("copying {}", loaded.venv_lock.file.display()))?;
    stage.step(
        progress,
        3,
        &format!(
            "installing the {} packages pinned in {} into {} with pip (host's pip configuration: {})",
            loaded.venv_lock.pins.len(),
            loaded.venv_lock.file.display(),
            r.venv.path,
            pip.describe()
        ),
    );
    let venv_python = stage.venv_python();
    let argv = [
        venv_python.as_str(),
        "-m",
        "pip",
        "install",
        "--no-input",
        "--progress-bar",
        "off",
        "--root-user-action=ignore",
        "--disable-pip-version-check",
        "--require-hashes",
        "--only-binary=:all:",
        "--requirement",
        &lock_inside,
    ];
    let mut cmd = stage.in_root(&pip.binds, &argv)?;
    cmd.envs(&pip.env);
    chroot::run_streaming(cmd, "pip install", progress).map_err(|e| match e {
        ImageError::Step(failure) => ImageError::PinnedInstall {
            failure: Box::new(failure),
            lock: loaded.venv_lock.file.clone(),
        },
        other => other,
    })?;
    let freeze = chroot::run_capture(
        {
            let mut c = stage.in_root(&[], &[&venv_python, "-m", "pip", "freeze", "--all"])?;
            c.env("PIP_DISABLE_PIP_VERSION_CHECK", "1");
            c
        },
        "pip freeze",
    )?;
    if r.venv.owner.0 != "root" {
        let owner = format!("{}:{}", r.user.uid, r.user.gid);
        chroot::run_capture(
            stage.in_root(&[], &["/bin/chown", "-R", &owner, &r.venv.path])?,
            "chown",
        )?;
    }

    // 4. The recipe's files.
    stage.step(progress, 4, "installing the recipe's files");
    for (f, content) in r.files.iter().zip(&loaded.file_contents) {
        install_file(&stage.rootfs, &f.target, content, f.mode.0)?;
        progress.detail(&format!("{} -> {} ({:o})", f.source, f.target, f.mode.0));
    }

    // 5. Tidy up what a container image does not carry.
    stage.step(progress, 5, "cleaning up");
    drop(scratch);
    fs::write(
        stage.rootfs.join("etc/hosts"),
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    )
    .context(|| "writing /etc/hosts")?;
    for dir in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        let dir = stage.rootfs.join(dir);
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
    stage.step(progress, 6, "checking the image");
    check_image(&stage.rootfs, r, &|binds, argv| stage.in_root(binds, argv))?;

    let record = ImageRecord {
        image: r.image.clone(),
        recipe_hash: loaded.hash.clone(),
        debian_suite: stage.suite.clone(),
        debian_mirror: stage.mirror.clone(),
        build_seconds: stage.started.elapsed().as_secs_f64(),
        size_bytes: disk_usage(&stage.rootfs),
        python_packages: freeze.lines().map(str::to_string).collect(),
    };
    let record_path = stage.work.path.join(RECORD_FILE);
    let text = serde_yaml::to_string(&record).map_err(|source| ImageError::Record {
        path: record_path.clone(),
        action: "writing",
        source,
    })?;
    let mut f =
        fs::File::create(&record_path).context(|| format!("creating {}", record_path.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .context(|| format!("writing {}", record_path.display()))?;
    stage.work.commit(final_dir)?;
    progress.phase(&format!(
        "built the pod image {} in {:.0} s ({} MiB) at {}",
        r.image,
        record.build_seconds,
        record.size_bytes / (1 << 20),
        final_dir.display()
    ));
    Ok(())
}

/// Step 2: the notebook user, and the directories of its home.
fn create_user(stage: &Stage<'_>, progress: &dyn Progress) -> Result<(), ImageError> {
    let r = &stage.loaded.recipe;
    stage.step(
        progress,
        2,
        &format!(
            "creating the user {} ({}:{} {})",
            r.user.name, r.user.uid, r.user.gid, r.user.group
        ),
    );
    let group_line = chroot::run_capture(
        stage.in_root(&[], &["/usr/bin/getent", "group", &r.user.gid.to_string()])?,
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
            return Err(CheckFailure::GroupTaken {
                gid: r.user.gid,
                found: other.to_string(),
                expected: r.user.group.to_string(),
            }
            .into());
        }
        None => chroot::run_streaming(
            stage.in_root(
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
        stage.in_root(
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
        chroot::run_capture(stage.in_root(&[], &["/bin/mkdir", "-p", &inside])?, "mkdir")?;
        chroot::run_capture(
            stage.in_root(&[], &["/bin/chown", &owner, &inside])?,
            "chown",
        )?;
    }
    Ok(())
}

/// Writes a recipe file into the image, refusing a target whose parent leaves the image.
fn install_file(rootfs: &Path, target: &str, content: &[u8], mode: u32) -> Result<(), ImageError> {
    let path = rootfs.join(target.trim_start_matches('/'));
    let parent = path.parent().unwrap_or(rootfs);
    fs::create_dir_all(parent).context(|| format!("creating {}", parent.display()))?;
    let real_parent = parent
        .canonicalize()
        .context(|| format!("resolving {}", parent.display()))?;
    let real_root = rootfs
        .canonicalize()
        .context(|| format!("resolving {}", rootfs.display()))?;
    if !real_parent.starts_with(&real_root) {
        return Err(ImageError::TargetOutsideImage {
            target: target.to_string(),
            resolved: real_parent,
        });
    }
    let path = real_parent.join(path.file_name().unwrap_or_default());
    let _ = fs::remove_file(&path);
    fs::write(&path, content).context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(mode))
        .context(|| format!("setting the mode of {}", path.display()))
}
