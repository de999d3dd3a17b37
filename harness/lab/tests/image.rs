//! The pod image, built for real from `manifests/image/` (root: debootstrap and chroot).
//!
//! The image is built at most once per run, into the real cache (the XDG cache dir): on a fresh
//! machine (CI) the first test to need it takes the build path, and the tests check that it did;
//! on a machine that has the image they check that the cache was used. Every command run inside
//! the image here sees its root filesystem read-only, so tests never change the cached image.
#![allow(unsafe_code)] // tests make the system calls they check (geteuid, kill, mount, setns...)

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use guardlab_lab::Progress;
use guardlab_lab::image::{
    Bind, BuiltImage, RunAs, cached_image, default_cache_dir, ensure_image, image_recipe_hash,
    image_record, rootfs_command,
};

/// Records what a build reports.
struct RecordingProgress {
    phases: Mutex<Vec<String>>,
    details: Mutex<usize>,
    started: Instant,
}

impl Default for RecordingProgress {
    fn default() -> Self {
        RecordingProgress {
            phases: Mutex::default(),
            details: Mutex::default(),
            started: Instant::now(),
        }
    }
}

impl Progress for RecordingProgress {
    fn phase(&self, what: &str) {
        eprintln!("[{:6.1} s] {what}", self.started.elapsed().as_secs_f64());
        self.phases.lock().unwrap().push(what.to_string());
    }
    fn detail(&self, _line: &str) {
        *self.details.lock().unwrap() += 1;
    }
}

impl RecordingProgress {
    fn phases(&self) -> Vec<String> {
        self.phases.lock().unwrap().clone()
    }
}

struct SharedImage {
    image: BuiltImage,
    /// The cache had no image for the recipe before this run.
    cache_was_empty: bool,
    phases: Vec<String>,
    details: usize,
    seconds: f64,
}

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!(
            "the pod image tests build a root filesystem with debootstrap and chroot into it: \
             run them as root (sudo -E cargo test -p guardlab-lab --test image)"
        );
    }
}

/// `manifests/image`, found from this crate's directory upwards.
fn recipe_dir() -> PathBuf {
    let mut dir = Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf();
    loop {
        let candidate = dir.join("manifests/image");
        if candidate.join("recipe.yaml").is_file() {
            return candidate;
        }
        assert!(
            dir.pop(),
            "no manifests/image/recipe.yaml above {}",
            env!("CARGO_MANIFEST_DIR")
        );
    }
}

/// The image, built or found once per run; a failed build fails every test that needs it
/// without building again.
fn shared() -> &'static SharedImage {
    static IMAGE: OnceLock<Result<SharedImage, String>> = OnceLock::new();
    require_root();
    match IMAGE.get_or_init(build_once) {
        Ok(s) => s,
        Err(e) => panic!("the pod image could not be built: {e}"),
    }
}

fn build_once() -> Result<SharedImage, String> {
    let recipe = recipe_dir();
    let cache = default_cache_dir();
    let cache_was_empty = cached_image(&recipe, &cache).unwrap().is_none();
    let progress = RecordingProgress::default();
    let started = Instant::now();
    let image = ensure_image(&recipe, &cache, &progress).map_err(|e| e.to_string())?;
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "ensure_image took {seconds:.1} s ({}) -> {}",
        if cache_was_empty { "cold" } else { "cached" },
        image.rootfs.display()
    );
    Ok(SharedImage {
        image,
        cache_was_empty,
        phases: progress.phases(),
        details: *progress.details.lock().unwrap(),
        seconds,
    })
}

/// A command inside the image with its root filesystem read-only, a throw-away home and /tmp.
struct InImage {
    home: tempfile::TempDir,
    tmp: tempfile::TempDir,
}

impl InImage {
    fn new() -> Self {
        let home = tempfile::tempdir().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let image = &shared().image;
        std::os::unix::fs::chown(home.path(), Some(image.config.uid), Some(image.config.gid))
            .unwrap();
        std::fs::set_permissions(
            tmp.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o1777),
        )
        .unwrap();
        InImage { home, tmp }
    }

    fn command(&self, as_user: bool, argv: &[&str]) -> Command {
        let image = &shared().image;
        let binds = [
            Bind {
                host: image.rootfs.clone(),
                inside: "/".into(),
                read_only: true,
            },
            Bind {
                host: self.home.path().to_path_buf(),
                inside: image.config.home.clone(),
                read_only: false,
            },
            Bind {
                host: self.tmp.path().to_path_buf(),
                inside: "/tmp".into(),
                read_only: false,
            },
        ];
        let run_as = as_user.then_some(RunAs {
            uid: image.config.uid,
            gid: image.config.gid,
        });
        let workdir = image.config.working_dir.to_string_lossy().into_owned();
        let mut c = rootfs_command(
            &image.rootfs,
            run_as,
            Some(if as_user { &workdir } else { "/" }),
            &binds,
            argv[0],
        )
        .unwrap();
        c.args(&argv[1..])
            .envs(image.config.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        c
    }

    fn run(&self, as_user: bool, argv: &[&str]) -> Output {
        self.command(as_user, argv).output().unwrap()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn the_first_ensure_builds_only_when_the_cache_has_no_image() {
    let s = shared();
    let built = s.phases.iter().any(|p| p.contains(": debootstrap "));
    let cached = s
        .phases
        .iter()
        .any(|p| p.starts_with("using the cached pod image"));
    if s.cache_was_empty {
        assert!(
            built && !cached,
            "a cold cache must take the build path: {:?}",
            s.phases
        );
        assert!(
            s.details > 0,
            "a build shows debootstrap's and pip's output"
        );
        eprintln!("cold build: {:.1} s", s.seconds);
    } else {
        assert!(
            cached && !built,
            "a warm cache must not build: {:?}",
            s.phases
        );
    }
    let record = image_record(&s.image).unwrap();
    assert_eq!(record.recipe_hash, s.image.recipe_hash);
    assert_eq!(s.image.image_id, format!("sha256:{}", s.image.recipe_hash));
    assert_eq!(s.image.image, "jupyter/minimal-notebook:latest");
    assert!(
        record
            .python_packages
            .iter()
            .any(|p| p.starts_with("jupyter_server==") || p.starts_with("jupyter-server==")),
        "{:?}",
        record.python_packages
    );
    // Exactly the lock: every pin installed at its version, and nothing else but what the
    // venv itself brings (pip, setuptools).
    let lock = guardlab_lab::image::load_recipe(&recipe_dir())
        .unwrap()
        .venv_lock;
    let norm = guardlab_lab::image::normalize_project_name;
    let installed: Vec<(String, String)> = record
        .python_packages
        .iter()
        .filter_map(|l| l.split_once("=="))
        .map(|(n, v)| (norm(n), v.to_string()))
        .collect();
    for pin in &lock.pins {
        assert!(
            installed.contains(&(pin.project.clone(), pin.version.clone())),
            "{}=={} is pinned but not installed: {installed:?}",
            pin.project,
            pin.version
        );
    }
    let extra: Vec<&(String, String)> = installed
        .iter()
        .filter(|(n, _)| lock.pin(n).is_none() && n != "pip" && n != "setuptools")
        .collect();
    assert!(extra.is_empty(), "installed but not pinned: {extra:?}");
    assert_eq!(record.debian_suite, "bookworm", "the recipe's pinned suite");
    eprintln!(
        "image: {} MiB on disk, built in {:.0} s, Debian {}",
        record.size_bytes / (1 << 20),
        record.build_seconds,
        record.debian_suite
    );
}

#[test]
fn a_second_ensure_uses_the_cache_without_rebuilding() {
    let s = shared();
    let before = std::fs::metadata(&s.image.rootfs).unwrap();
    let record_path = s.image.rootfs.parent().unwrap().join("image.yaml");
    let record_before = std::fs::read(&record_path).unwrap();
    let progress = RecordingProgress::default();
    let started = Instant::now();
    let again = ensure_image(&recipe_dir(), &default_cache_dir(), &progress).unwrap();
    eprintln!(
        "cached ensure_image: {:.1} ms (cold or first call of this run: {:.1} s)",
        started.elapsed().as_secs_f64() * 1000.0,
        s.seconds
    );
    assert_eq!(again, s.image);
    let phases = progress.phases();
    assert!(
        phases
            .iter()
            .any(|p| p.starts_with("using the cached pod image")),
        "{phases:?}"
    );
    assert!(
        !phases.iter().any(|p| p.contains(": debootstrap ")),
        "{phases:?}"
    );
    let after = std::fs::metadata(&again.rootfs).unwrap();
    assert_eq!(
        (before.ino(), before.mtime()),
        (after.ino(), after.mtime()),
        "same rootfs"
    );
    assert_eq!(std::fs::read(&record_path).unwrap(), record_before);
}

#[test]
fn the_user_is_jovyan_with_uid_1000_and_gid_100() {
    let c = InImage::new();
    let out = c.run(false, &["/usr/bin/id", "jovyan"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).trim(),
        "uid=1000(jovyan) gid=100(users) groups=100(users)"
    );
    let out = c.run(true, &["/bin/bash", "-lc", "id; pwd; echo $HOME"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("uid=1000(jovyan) gid=100(users)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("\n/home/jovyan\n/home/jovyan\n"),
        "{stdout}"
    );
    // The home the image carries belongs to jovyan (the bind above hides it in commands).
    let home = std::fs::metadata(shared().image.rootfs.join("home/jovyan")).unwrap();
    assert_eq!((home.uid(), home.gid()), (1000, 100));
    let venv = std::fs::symlink_metadata(shared().image.rootfs.join("opt/venv/bin/pip")).unwrap();
    assert_eq!(
        (venv.uid(), venv.gid()),
        (1000, 100),
        "jovyan owns the Python environment"
    );
}

#[test]
fn ping_is_not_installed_but_the_attack_tools_are() {
    let c = InImage::new();
    let out = c.run(true, &["/usr/bin/which", "ping"]);
    assert!(!out.status.success(), "ping found at {}", text(&out.stdout));
    let out = c.run(true, &["/bin/bash", "-lc", "ping -n 3 198.18.0.1"]);
    assert_eq!(out.status.code(), Some(127), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("ping: command not found"),
        "{}",
        text(&out.stderr)
    );
    let out = c.run(
        false,
        &["/usr/bin/dpkg-query", "-W", "-f=${Status}", "iputils-ping"],
    );
    assert!(
        !text(&out.stdout).contains("ok installed"),
        "{}",
        text(&out.stdout)
    );
    // The same lookup finds what the scenario does use.
    for tool in [
        "bash", "id", "ps", "curl", "wget", "tar", "gzip", "sudo", "python3", "python", "pip",
    ] {
        let out = c.run(true, &["/usr/bin/which", tool]);
        assert!(out.status.success(), "{tool} is missing from the image");
    }
    let out = c.run(true, &["/bin/bash", "-lc", "ps -aux"]);
    assert!(
        out.status.success() && text(&out.stdout).contains("PID"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn sudo_asks_jovyan_for_a_password_and_fails() {
    let c = InImage::new();
    let out = c.run(true, &["/usr/bin/sudo", "-l"]);
    assert!(!out.status.success(), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("password"),
        "sudo should fail for want of a password: {}",
        text(&out.stderr)
    );
    let out = c.run(true, &["/usr/bin/sudo", "-n", "-l"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("a password is required"),
        "{}",
        text(&out.stderr)
    );
    // sudo itself works in the image: root may use it.
    let out = c.run(false, &["/usr/bin/sudo", "-n", "true"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let sudoers = std::fs::read_to_string(shared().image.rootfs.join("etc/sudoers")).unwrap();
    assert!(!sudoers.contains("jovyan"));
}

#[test]
fn the_venv_python_imports_the_jupyter_server_kernel_and_terminals() {
    let c = InImage::new();
    let out = c.run(
        true,
        &[
            "/opt/venv/bin/python",
            "-c",
            "import jupyter_server, ipykernel, terminado, sys; print(sys.prefix)",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "/opt/venv");
    let out = c.run(
        true,
        &[
            "/opt/venv/bin/python",
            "-c",
            "import guardlab_no_such_module",
        ],
    );
    assert!(
        !out.status.success(),
        "a missing module must fail the same check"
    );
    // Jupyter's terminals are login shells: the environment is still first on PATH there.
    let out = c.run(
        true,
        &[
            "/bin/bash",
            "-lc",
            "command -v python; command -v jupyter; command -v start-notebook.py",
        ],
    );
    assert_eq!(
        text(&out.stdout),
        "/opt/venv/bin/python\n/opt/venv/bin/jupyter\n/usr/local/bin/start-notebook.py\n",
        "{}",
        text(&out.stderr)
    );
}

/// Kills the notebook server started inside the image.
struct ServerGuard(Child);

impl Drop for ServerGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    s.read_to_string(&mut response).ok()?;
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_string();
    Some((code, body))
}

#[test]
fn start_notebook_serves_jupyter_with_the_deployment_args() {
    let c = InImage::new();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // The Deployment's args, then an address and a port for this host: later args win.
    let ip_arg = "--ServerApp.ip=127.0.0.1".to_string();
    let port_arg = format!("--ServerApp.port={port}");
    let mut cmd = c.command(
        true,
        &[
            "/usr/local/bin/start-notebook.py",
            "--IdentityProvider.token=",
            "--ServerApp.password=",
            &ip_arg,
            &port_arg,
        ],
    );
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut server = ServerGuard(cmd.spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(r) = http_get(port, "/api/status") {
            break r;
        }
        if let Some(exit) = server.0.try_wait().unwrap() {
            let mut err = String::new();
            server
                .0
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("start-notebook.py exited ({exit}): {err}");
        }
        assert!(
            Instant::now() < deadline,
            "the notebook did not answer on port {port} within 90 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(status.0, 200, "{}", status.1);
    assert!(status.1.contains("\"started\""), "{}", status.1);
    // The notebook front end is there for a learner's browser.
    let tree = http_get(port, "/tree").unwrap();
    assert_eq!(tree.0, 200, "GET /tree");
}

#[test]
fn a_changed_recipe_or_installed_file_has_another_hash() {
    let original = recipe_dir();
    let hash = image_recipe_hash(&original).unwrap();
    assert_eq!(hash.len(), 64);
    assert_eq!(image_recipe_hash(&original).unwrap(), hash, "stable");
    let copy = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(&original).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), copy.path().join(e.file_name())).unwrap();
    }
    assert_eq!(
        image_recipe_hash(copy.path()).unwrap(),
        hash,
        "the hash is about content, not place"
    );
    let recipe = copy.path().join("recipe.yaml");
    let text = std::fs::read_to_string(&recipe).unwrap();
    std::fs::write(
        &recipe,
        text.replace("    - gzip\n", "    - gzip\n    - less\n"),
    )
    .unwrap();
    let with_less = image_recipe_hash(copy.path()).unwrap();
    assert_ne!(with_less, hash);
    let cache = tempfile::tempdir().unwrap();
    assert!(cached_image(copy.path(), cache.path()).unwrap().is_none());
    let script = copy.path().join("start-notebook.py");
    let mut s = std::fs::read_to_string(&script).unwrap();
    s.push_str("# changed\n");
    std::fs::write(&script, s).unwrap();
    let with_script = image_recipe_hash(copy.path()).unwrap();
    assert_ne!(with_script, with_less);
    assert_ne!(with_script, hash);
}
