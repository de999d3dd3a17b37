//! Helpers of the local lab's acceptance tests: options for a test lab, a lock for the shared
//! notebook port, and (in `leftovers`) a record of what a running lab holds and the check that
//! nothing of it is left after `down`.
#![allow(unsafe_code)] // tests make the system calls they check (geteuid, kill, mount, setns...)
#![allow(dead_code)] // Each test binary uses a part of it.

pub use guardlab_lab_test_support as leftovers;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use guardlab_lab::Progress;
use guardlab_lab::local::{ImageSource, LocalLabOptions};

#[allow(unused_imports)] // Not every test binary checks for leftovers.
pub use leftovers::*;

pub fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the local lab tests make namespaces, cgroups, mounts and load eBPF programs: run them as root \
         (sudo -E cargo test -p guardlab-lab)"
    );
}

/// Prints progress with the time since the test started.
pub struct TestProgress(pub Instant);

impl TestProgress {
    pub fn new() -> TestProgress {
        TestProgress(Instant::now())
    }
}

impl Progress for TestProgress {
    fn phase(&self, what: &str) {
        eprintln!("[{:6.1}s] {what}", self.0.elapsed().as_secs_f64());
    }
    fn detail(&self, line: &str) {
        eprintln!("          {line}");
    }
}

/// Tests of one binary that use the notebook port run one at a time...
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// ...and across processes (other test binaries, other checkouts) an abstract unix socket
/// named after the port: binding it is the lock, it leaves no file and the kernel frees it
/// when its holder dies.
pub struct PortLock(std::os::unix::net::UnixListener);

pub fn lock_port(port: u16) -> PortLock {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("guardlab-test-port-{port}");
    let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let started = Instant::now();
    loop {
        match std::os::unix::net::UnixListener::bind_addr(&address) {
            Ok(listener) => return PortLock(listener),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                assert!(
                    started.elapsed() < Duration::from_secs(1800),
                    "port {port} stayed taken by another test"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("locking port {port}: {e}"),
        }
    }
}

/// A unique lab name for this test process.
pub fn lab_name(what: &str) -> String {
    format!("t-{what}-{}", std::process::id())
}

/// The program that runs `up`, `down` and the daemon.
pub fn local_lab_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_guardlab-local-lab"))
}

/// A miner tarball for the lab's sourceforge.net (the download only has to succeed here).
pub fn miner_tarball(dir: &Path) -> PathBuf {
    let binary = dir.join("minerd");
    fs::write(&binary, "#!/bin/sh\necho 'guardlab test miner'\n").unwrap();
    let tarball = dir.join("pooler-cpuminer-2.5.1-linux-x86_64.tar.gz");
    fs::write(
        &tarball,
        guardlab_minerd::pack_release_tarball(&binary).unwrap(),
    )
    .unwrap();
    tarball
}

/// Options of a test lab: its own name, the crate's daemon, a test miner tarball. With
/// `image_cache`, the image is built into (or taken from) that cache instead of the default
/// one, sharing the default cache's downloads: a build into an empty cache goes through every
/// step of a cold build but downloads nothing the default cache has.
pub fn options(lab: &str, scratch: &Path, image_cache: Option<&Path>) -> LocalLabOptions {
    let mut options = LocalLabOptions::new(lab);
    options.daemon_command = vec![local_lab_exe().into_os_string(), "daemon".into()];
    options.miner_tarball = Some(miner_tarball(scratch));
    if let (
        Some(cache),
        ImageSource::Recipe {
            recipe_dir,
            cache_dir: default_cache,
            ..
        },
    ) = (image_cache, &options.image)
    {
        options.image = ImageSource::Recipe {
            recipe_dir: recipe_dir.clone(),
            cache_dir: cache.to_path_buf(),
            downloads_dir: Some(default_cache.join("downloads")),
        };
    }
    options
}
