//! `guardlab doctor` and `guardlab clean` through the real binary, on guardlab's directories
//! pointed at temporary ones (`XDG_CACHE_HOME`, `GUARDLAB_HOST_STATE_DIR`, `--labs-dir`), so
//! that nothing of this host's own guardlab state is read or removed.
#![allow(unsafe_code)] // tests make the system calls they check (geteuid, kill, mount, setns...)

use std::fs;
use std::path::{Path, PathBuf};

use assert_cmd::Command;

/// A temporary home for guardlab's state: a cache with a pod image, wheels and a lab CA, a
/// ledger that records a package and a cgroup v2 mount, an empty labs directory.
struct Places {
    dir: tempfile::TempDir,
}

impl Places {
    fn new(ledger: &str) -> Places {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache/guardlab");
        let rootfs = cache.join("images/0123abcd/rootfs/usr/bin");
        fs::create_dir_all(&rootfs).unwrap();
        fs::write(rootfs.join("python3"), vec![7u8; 200_000]).unwrap();
        fs::create_dir_all(cache.join("images/downloads/debs")).unwrap();
        fs::write(cache.join("images/downloads/debs/libc6.deb"), b"deb").unwrap();
        fs::write(cache.join("images/.0123abcd.lock"), b"").unwrap();
        fs::create_dir_all(cache.join("wheels")).unwrap();
        fs::write(cache.join("wheels/wheel-0.45.1-py3-none-any.whl"), b"whl").unwrap();
        fs::create_dir_all(cache.join("lab-ca")).unwrap();
        fs::write(cache.join("lab-ca/ca.pem"), b"pem").unwrap();
        fs::create_dir_all(dir.path().join("state")).unwrap();
        fs::write(dir.path().join("state/host-changes"), ledger).unwrap();
        fs::create_dir_all(dir.path().join("labs")).unwrap();
        Places { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn guardlab(&self, args: &[&str]) -> Command {
        let mut cmd = Command::cargo_bin("guardlab").unwrap();
        cmd.args(args)
            .env("XDG_CACHE_HOME", self.path("cache"))
            .env("GUARDLAB_HOST_STATE_DIR", self.path("state"))
            .env_remove("GUARDLAB_NO_INSTALL");
        cmd
    }

    fn clean(&self, extra: &[&str]) -> std::process::Output {
        let labs = self.path("labs");
        let mut args = vec!["clean", "--labs-dir", labs.to_str().unwrap()];
        args.extend(extra);
        self.guardlab(&args).output().unwrap()
    }
}

const PACKAGES: &str = "package\tclang\t1700000000\tclang: compiles the sensor's eBPF programs\n\
                        package\tdebootstrap\t1700000100\tdebootstrap: builds the pod's root filesystem\n";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Every file under `dir`, relative, sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p.clone());
            }
            out.push(p.strip_prefix(dir).unwrap().display().to_string());
        }
    }
    out.sort();
    out
}

#[test]
fn doctor_lists_every_requirement_with_its_package_and_what_guardlab_installed() {
    let places = Places::new(PACKAGES);
    let out = places.guardlab(&["doctor"]).output().unwrap();
    let stdout = text(&out.stdout);
    let code = out.status.code();
    assert!(
        code == Some(0) || code == Some(1),
        "exit 0 or 1, got {code:?}: {}",
        text(&out.stderr)
    );
    assert_eq!(
        code == Some(0),
        stdout.contains("The local lab can run here."),
        "the exit code says what the last line says:\n{stdout}"
    );
    for (what, package) in [
        ("debootstrap", "debootstrap"),
        ("ip", "iproute2"),
        ("clang", "clang"),
        ("python3 -m pip", "python3-pip"),
        ("/usr/include/bpf/bpf_helpers.h", "libbpf-dev"),
        ("bpftrace", "bpftrace"),
    ] {
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{what} ")))
            .unwrap_or_else(|| panic!("no row for {what}:\n{stdout}"));
        assert!(
            line.split_whitespace().any(|w| w == package),
            "{what}'s package {package}: {line}"
        );
    }
    for fact in [
        "root",
        "BTF",
        "kernel",
        "cgroup v2",
        "cgroups",
        "overlay",
        "veth",
    ] {
        assert!(
            stdout.lines().any(|l| l.trim_start().starts_with(fact)),
            "{fact} in:\n{stdout}"
        );
    }
    // The ledger's packages are named as guardlab's.
    assert!(
        stdout.contains("package clang: clang: compiles the sensor's eBPF programs")
            && stdout.contains("package debootstrap:"),
        "{stdout}"
    );
    let clang = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("clang "))
        .unwrap();
    assert!(
        clang.contains("ok (installed by guardlab)") || clang.contains("missing"),
        "{clang}"
    );
}

#[test]
fn doctor_under_no_install_says_that_nothing_may_be_installed() {
    let places = Places::new("");
    for (args, env) in [
        (vec!["doctor", "--no-install"], None),
        (vec!["--no-install", "doctor"], None),
        (vec!["doctor"], Some("1")),
    ] {
        let mut cmd = places.guardlab(&args);
        if let Some(value) = env {
            cmd.env("GUARDLAB_NO_INSTALL", value);
        }
        let out = cmd.output().unwrap();
        let stdout = text(&out.stdout);
        assert!(
            stdout
                .lines()
                .next()
                .unwrap_or_default()
                .contains("--no-install"),
            "{args:?} {env:?}:\n{stdout}"
        );
        assert!(
            stdout.contains("Changes guardlab made to this host"),
            "{stdout}"
        );
        assert!(stdout.contains("  none"), "an empty ledger: {stdout}");
    }
}

#[test]
fn clean_dry_run_lists_and_removes_nothing_then_clean_removes_and_lists_the_packages() {
    let places = Places::new(PACKAGES);
    let before = files(places.dir.path());

    let out = places.clean(&["--dry-run"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let cache = places.path("cache/guardlab");
    let size = regex::Regex::new(r" \([0-9]+(\.[0-9])? (B|KiB|MiB|GiB)\)$").unwrap();
    for entry in ["images", "wheels", "lab-ca"] {
        let line = stdout
            .lines()
            .find(|l| {
                l.starts_with(&format!(
                    "would remove cache {}",
                    cache.join(entry).display()
                ))
            })
            .unwrap_or_else(|| panic!("{entry} listed:\n{stdout}"));
        assert!(size.is_match(line), "with its size: {line}");
    }
    assert!(
        stdout.contains("  clang: clang: compiles the sensor's eBPF programs")
            && stdout.contains("remove them with: apt-get remove clang debootstrap"),
        "{stdout}"
    );
    assert_eq!(
        files(places.dir.path()),
        before,
        "--dry-run removed nothing"
    );

    let out = places.clean(&[]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    for entry in ["images", "wheels", "lab-ca"] {
        assert!(
            stdout.contains(&format!("removing cache {}", cache.join(entry).display())),
            "{entry}: {stdout}"
        );
    }
    assert!(!cache.exists(), "the cache is gone");
    assert!(
        stdout.contains("remove them with: apt-get remove clang debootstrap"),
        "the packages are still listed: {stdout}"
    );
    assert!(
        places.path("state/host-changes").exists(),
        "packages not removed stay recorded"
    );

    // Nothing left to remove: said so, still fine.
    let out = places.clean(&[]);
    assert!(out.status.success());
    assert!(
        text(&out.stdout).contains("no guardlab cache at"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn clean_touches_nothing_outside_guardlabs_directories() {
    // A ledger line naming a mount that is not guardlab's, and a link in the cache that leads
    // out of it.
    let places = Places::new("mount\t/sys/fs/cgroup\t1700000000\tnot ours\n");
    let outside = places.path("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("precious"), b"keep me").unwrap();
    std::os::unix::fs::symlink(&outside, places.path("cache/guardlab/link")).unwrap();

    let out = places.clean(&[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{}{stderr}", text(&out.stdout));
    assert!(
        stderr.contains("/sys/fs/cgroup") && stderr.contains("not guardlab's mount point"),
        "{stderr}"
    );
    assert_eq!(
        fs::read(outside.join("precious")).unwrap(),
        b"keep me",
        "the link was removed, not what it leads to"
    );
    assert!(!places.path("cache/guardlab").exists());
    assert!(
        fs::read_to_string(places.path("state/host-changes"))
            .unwrap()
            .contains("/sys/fs/cgroup"),
        "a refused line stays in the ledger"
    );
}

#[test]
fn clean_takes_down_a_lab_left_behind() {
    assert!(
        // SAFETY: geteuid has no preconditions and cannot fail.
        unsafe { libc::geteuid() } == 0,
        "removing a lab needs root: run this test as root (sudo)"
    );
    let places = Places::new("");
    // What a harness killed right after `up` wrote its state file leaves: the state, nothing
    // made yet.
    let lab_dir = places.path("labs/t-left-behind");
    fs::create_dir_all(lab_dir.join("pods")).unwrap();
    guardlab_lab::local::state::StateFile::in_dir(&lab_dir)
        .save(&guardlab_lab::local::state::LabState {
            version: guardlab_lab::local::state::STATE_VERSION,
            lab: "t-left-behind".into(),
            phase: "preparing".into(),
            dirs: vec![lab_dir.join("pods")],
            ..Default::default()
        })
        .unwrap();

    let out = places.clean(&["--dry-run"]);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "would remove lab t-left-behind ({}, preparing)",
            lab_dir.display()
        )),
        "{stdout}"
    );
    assert!(lab_dir.join("state.json").exists());

    let out = places.clean(&[]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("removing lab t-left-behind"), "{stdout}");
    assert!(!lab_dir.exists(), "the lab is gone");
    assert!(
        !places.path("labs").exists(),
        "and the empty labs directory"
    );
}

#[test]
fn clean_remove_packages_runs_apt_get_remove_and_forgets_them() {
    assert!(
        // SAFETY: geteuid has no preconditions and cannot fail.
        unsafe { libc::geteuid() } == 0,
        "removing packages needs root: run this test as root (sudo)"
    );
    let places = Places::new(PACKAGES);
    // An apt-get that records what it was asked, found before the host's own.
    let bin = places.path("bin");
    fs::create_dir_all(&bin).unwrap();
    let log = places.path("apt.log");
    fs::write(
        bin.join("apt-get"),
        format!(
            "#!/bin/sh\necho \"$*\" >> {}\necho 'Removing clang ...'\n",
            log.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(bin.join("apt-get"), fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );

    let labs = places.path("labs");
    let dry = places
        .guardlab(&[
            "clean",
            "--remove-packages",
            "--dry-run",
            "--labs-dir",
            labs.to_str().unwrap(),
        ])
        .env("PATH", &path)
        .output()
        .unwrap();
    assert!(
        text(&dry.stdout).contains("would run: apt-get remove clang debootstrap"),
        "{}",
        text(&dry.stdout)
    );
    assert!(!log.exists(), "--dry-run ran nothing");

    let out = places
        .guardlab(&[
            "clean",
            "--remove-packages",
            "--labs-dir",
            labs.to_str().unwrap(),
        ])
        .env("PATH", &path)
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert_eq!(
        fs::read_to_string(&log).unwrap(),
        "-y -q remove clang debootstrap\n"
    );
    assert!(stdout.contains("removed clang debootstrap"), "{stdout}");
    assert!(
        !places.path("state").exists(),
        "nothing is recorded any more, and the ledger's directory is gone"
    );
}
