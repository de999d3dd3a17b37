//! Building the pod image from its recipe: debootstrap from the host's mirror (the recipe's
//! pinned suite), the notebook user, a venv with exactly the recipe's lock installed by the
//! image's own pip, the recipe's files; checked before it is used. The same steps, stopped after
//! an unpinned pip install, make the lock files (`guardlab image lock`, see [`lock_recipe`]).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use guardlab_services::{Pin, PythonLock};

use super::chroot::{self, Bind, RunAs};
use super::recipe::{LoadedRecipe, Recipe};
use super::{
    BUILD_SCRATCH, ImageCache, ImageRecord, RECORD_FILE, ROOT_PATH, disk_usage, ensure_debootstrap,
    host, io, remove_stale_builds, remove_tree,
};
use crate::{Progress, image_bridge::LegacyImageError as LabError}; // Bridge: image errors

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

/// What a build is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Purpose {
    /// A finished image.
    Image,
    /// New lock files for the recipe: its unpinned requirements resolved now, by the image's
    /// own pip (the interpreter and platform the lock is for).
    Lock,
}

/// Environment variable naming the Debian mirror to debootstrap from, for hosts whose apt
/// sources name none that carries the recipe's suite (an Ubuntu host, say).
pub const DEBIAN_MIRROR_ENV: &str = "GUARDLAB_DEBIAN_MIRROR";

/// The image being built: its work directory (removed unless committed) and root filesystem.
struct Stage<'a> {
    loaded: &'a LoadedRecipe,
    work: BuildDir,
    rootfs: PathBuf,
    suite: String,
    mirror: String,
    pip_cache: PathBuf,
    started: Instant,
    steps: usize,
}

impl Stage<'_> {
    /// A command that runs as root inside the image, with extra bind mounts.
    fn in_root(&self, binds: &[Bind], argv: &[&str]) -> Result<std::process::Command, LabError> {
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
    fn step(&self, progress: &dyn Progress, n: usize, what: &str) {
        progress.phase(&format!("step {n}/{}: {what}", self.steps));
    }

    fn venv_python(&self) -> String {
        format!("{}/bin/python", self.loaded.recipe.venv.path)
    }
}

/// Builds the image of `loaded` into `final_dir` (the caller holds the recipe's build lock).
pub(super) fn build_image(
    loaded: &LoadedRecipe,
    cache: &ImageCache,
    final_dir: &Path,
    progress: &dyn Progress,
) -> Result<(), LabError> {
    let r = &loaded.recipe;
    progress.phase(&format!(
        "building the pod image {} (recipe {}): a one-time job of a few minutes",
        r.image,
        &loaded.hash[..12]
    ));
    if final_dir.exists() {
        // Not complete (checked by the caller): not ours to keep.
        remove_tree(final_dir).map_err(io(format!("removing {}", final_dir.display())))?;
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
        .map_err(io(format!("copying {}", loaded.venv_lock.file.display())))?;
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
    chroot::run_streaming(cmd, "pip install", progress).map_err(|e| {
        LabError::Failed(format!(
            "{e}\n(the image installs exactly {}; if a pinned file is no longer on the index, \
             make new pins with `guardlab image lock`)",
            loaded.venv_lock.file.display()
        ))
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
    .map_err(io("writing /etc/hosts"))?;
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
    let text = serde_yaml::to_string(&record)
        .map_err(|e| LabError::Failed(format!("writing the image record: {e}")))?;
    let record_path = stage.work.path.join(RECORD_FILE);
    let mut f = fs::File::create(&record_path)
        .map_err(io(format!("creating {}", record_path.display())))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(io(format!("writing {}", record_path.display())))?;
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
) -> Result<LockReport, LabError> {
    let r = &loaded.recipe;
    progress.phase(&format!(
        "making new pins for {} and {} from {}'s venv.packages (a few minutes)",
        loaded.venv_lock.file.display(),
        index_lock.display(),
        loaded.dir.join(super::RECIPE_FILE).display()
    ));
    fs::create_dir_all(&cache.dir).map_err(io(format!("creating {}", cache.dir.display())))?;
    // The recipe's build lock: a build of the same recipe would take our work directory for
    // an interrupted build of its own.
    let _build_lock = super::cache::BuildLock::acquire(&cache.dir, &loaded.hash)?;
    let stage = bootstrap(loaded, cache, Purpose::Lock, progress)?;
    let scratch = BuildScratch {
        rootfs: stage.rootfs.clone(),
    };
    let pip = create_venv(&stage, &scratch, progress)?;
    let venv_python = stage.venv_python();
    let pip_run = |args: &[&str], what: &str| -> Result<(), LabError> {
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
    fs::write(scratch.dir().join("frozen.txt"), &freeze).map_err(io("writing frozen.txt"))?;
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

    let pins_in = |inside: &str| -> Result<Vec<Pin>, LabError> {
        let dir = stage.rootfs.join(inside.trim_start_matches('/'));
        let mut pins = Vec::new();
        for e in fs::read_dir(&dir).map_err(io(format!("reading {}", dir.display())))? {
            let path = e.map_err(io(format!("reading {}", dir.display())))?.path();
            let mut pin = guardlab_services::pin_of_file(&path)
                .map_err(|e| LabError::Failed(format!("hashing a download: {e}")))?;
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
        .map(|p| requirement_project(p))
        .filter(|p| !venv_pins.iter().any(|pin| &pin.project == p))
        .collect();
    if !missing.is_empty() {
        return Err(LabError::Failed(format!(
            "pip installed no {} although venv.packages asks for it",
            missing.join(", ")
        )));
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
        fs::write(&tmp, text).map_err(io(format!("writing {}", tmp.display())))?;
        fs::rename(&tmp, path).map_err(io(format!("replacing {}", path.display())))?;
    }
    Ok(report)
}

/// `jupyter-server>=2.14,<3` -> `jupyter-server` in PEP 503 form.
fn requirement_project(requirement: &str) -> String {
    let end = requirement
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        .unwrap_or(requirement.len());
    guardlab_services::normalize_project_name(&requirement[..end])
}

/// Step 1: a fresh work directory with the recipe's Debian suite debootstrapped into it.
fn bootstrap<'a>(
    loaded: &'a LoadedRecipe,
    cache: &ImageCache,
    purpose: Purpose,
    progress: &dyn Progress,
) -> Result<Stage<'a>, LabError> {
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
    fs::create_dir_all(&work.path).map_err(io(format!("creating {}", work.path.display())))?;
    let rootfs = work.path.join("rootfs");
    let debs = cache.downloads.join("debs");
    let pip_cache = cache.downloads.join("pip");
    for d in [&rootfs, &debs, &pip_cache] {
        fs::create_dir_all(d).map_err(io(format!("creating {}", d.display())))?;
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
    chroot::run_streaming(cmd, "debootstrap", progress).map_err(|e| {
        let text = e.to_string();
        let no_suite = ["Failed getting release file", "Invalid Release file", "Couldn't download"]
            .iter()
            .any(|m| text.contains(m));
        let unsigned = text.contains("Release signed by unknown key")
            || text.contains("Release file signed by unknown key");
        if no_suite || unsigned {
            LabError::Failed(format!(
                "{text}\nThe pod image is pinned to the Debian suite `{suite}` (debian.suite in {}), \
                 and the mirror {} ({}) {}. On a host whose apt sources name no Debian mirror \
                 (an Ubuntu host, say), set {DEBIAN_MIRROR_ENV} to a Debian mirror's URL{}",
                loaded.dir.join(super::RECIPE_FILE).display(),
                source.uri,
                source.origin,
                if no_suite { "does not carry it" } else { "is signed by a key this host does not know" },
                if unsigned { " and install the package debian-archive-keyring" } else { "" }
            ))
        } else {
            e
        }
    })?;
    Ok(stage)
}

/// Step 2: the notebook user, and the directories of its home.
fn create_user(stage: &Stage<'_>, progress: &dyn Progress) -> Result<(), LabError> {
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
            return Err(LabError::Failed(format!(
                "the image's group {} is `{other}`, not `{}` as the recipe says",
                r.user.gid, r.user.group
            )));
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

/// The venv, made with the image's python3, and pip's way to the index (the host's settings).
fn create_venv(
    stage: &Stage<'_>,
    scratch: &BuildScratch,
    progress: &dyn Progress,
) -> Result<PipSetup, LabError> {
    let r = &stage.loaded.recipe;
    progress.detail(&format!("creating the Python environment {}", r.venv.path));
    chroot::run_streaming(
        stage.in_root(&[], &["/usr/bin/python3", "-m", "venv", &r.venv.path])?,
        "python3 -m venv",
        progress,
    )?;
    PipSetup::prepare(scratch, &stage.pip_cache, progress)
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
