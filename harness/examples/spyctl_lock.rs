//! Makes `harness/tests/spyctl/spyctl.lock`: the spyctl the oracle tests run (tests/spyctl_*.rs),
//! pinned by version and sha256 with all its dependencies, the way `guardlab image lock` pins
//! the pod image's packages: pip resolves the unpinned requirement in a fresh venv, `pip freeze`
//! says what it chose, and `pip download --no-deps` fetches exactly those files to hash them.
//!
//! Wheels with compiled code differ per Python version, so the files of every version in
//! [`PYTHONS`] (x86_64 manylinux) are hashed too: the tests' venv installs on any of them with
//! `--require-hashes`.
//!
//! ```sh
//! cargo run -p guardlab --example spyctl_lock                  # spyctl 0.24.2, the pinned one
//! cargo run -p guardlab --example spyctl_lock -- --version 0.25.0
//! git diff harness/tests/spyctl/spyctl.lock                     # review, then run the tests
//! ```
//!
//! Needs python3 with venv (installed through apt when missing, saying so) and the host's pip
//! configuration (its route to the package index).

use std::path::{Path, PathBuf};
use std::process::Command;

use guardlab_host::catalog::{PYTHON3, VENV};
use guardlab_host::{Host, StderrProgress};
use guardlab_services::{Pin, PythonLock, normalize_project_name, pin_of_file};

/// The spyctl the lock pins unless `--version` says otherwise.
const DEFAULT_VERSION: &str = "0.24.2";

/// The Python versions whose wheels are hashed: Debian bookworm's (3.11), Ubuntu 24.04's (3.12)
/// and Debian trixie's (3.13). spyctl's python-dateutil 4 needs 3.11 or newer.
const PYTHONS: [&str; 3] = ["3.11", "3.12", "3.13"];

/// The platforms of compiled wheels (pip also takes the older manylinux tags these cover).
const PLATFORMS: [&str; 2] = ["manylinux_2_28_x86_64", "manylinux2014_x86_64"];

fn main() {
    if let Err(e) = run() {
        eprintln!("spyctl_lock: {e}");
        std::process::exit(2);
    }
}

fn run() -> Result<(), String> {
    let mut version = DEFAULT_VERSION.to_string();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--version" => {
                version = args
                    .next()
                    .ok_or("--version needs a spyctl version, e.g. 0.24.2")?;
            }
            "-h" | "--help" => {
                println!(
                    "Pins spyctl and its dependencies by version and sha256 in {}.\n\n\
                     Usage: cargo run -p guardlab --example spyctl_lock [-- --version X.Y.Z]",
                    lock_path().display()
                );
                return Ok(());
            }
            other => return Err(format!("unknown argument `{other}` (try --help)")),
        }
    }
    Host::new(false)
        .ensure(&[&PYTHON3, &VENV], &StderrProgress)
        .map_err(|e| format!("making the lock needs python3 and its venv module: {e}"))?;
    let work = tempfile::tempdir().map_err(|e| format!("making a work directory: {e}"))?;
    let venv = work.path().join("venv");
    run_command(
        Command::new("python3").args(["-m", "venv"]).arg(&venv),
        "python3 -m venv",
    )?;
    let python = venv.join("bin/python");
    let pip = |args: &[&str]| {
        let mut cmd = Command::new(&python);
        cmd.args(["-m", "pip"])
            .args(&args[..1])
            .args([
                "--no-input",
                "--progress-bar",
                "off",
                "--disable-pip-version-check",
            ])
            .args(&args[1..]);
        cmd
    };
    eprintln!("resolving spyctl=={version} with pip");
    let requirement = format!("spyctl=={version}");
    run_command(
        &mut pip(&["install", "--only-binary=:all:", &requirement]),
        "pip install",
    )?;
    let freeze = Command::new(&python)
        .args(["-m", "pip", "freeze", "--disable-pip-version-check"])
        .output()
        .map_err(|e| format!("running pip freeze: {e}"))?;
    if !freeze.status.success() {
        return Err(format!(
            "pip freeze failed: {}",
            String::from_utf8_lossy(&freeze.stderr)
        ));
    }
    let frozen = work.path().join("frozen.txt");
    std::fs::write(&frozen, &freeze.stdout).map_err(|e| format!("writing frozen.txt: {e}"))?;

    let mut pins: Vec<Pin> = Vec::new();
    for python_version in PYTHONS {
        eprintln!("downloading the chosen files for CPython {python_version} to hash them");
        let dest = work.path().join(format!("files-{python_version}"));
        let mut download = vec![
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--implementation",
            "cp",
            "--python-version",
            python_version,
        ];
        for platform in PLATFORMS {
            download.extend(["--platform", platform]);
        }
        let dest_text = dest.display().to_string();
        let frozen_text = frozen.display().to_string();
        download.extend(["--dest", &dest_text, "--requirement", &frozen_text]);
        run_command(&mut pip(&download), "pip download")?;
        for entry in std::fs::read_dir(&dest).map_err(|e| format!("reading {dest_text}: {e}"))? {
            let path = entry
                .map_err(|e| format!("reading {dest_text}: {e}"))?
                .path();
            let mut pin = pin_of_file(&path).map_err(|e| e.to_string())?;
            pin.name = pin.project.clone();
            match pins.iter_mut().find(|p| p.project == pin.project) {
                Some(known) if known.version != pin.version => {
                    return Err(format!(
                        "{}: version {} for CPython {python_version}, {} for another",
                        pin.project, pin.version, known.version
                    ));
                }
                Some(known) => known.hashes.extend(pin.hashes),
                None => pins.push(pin),
            }
        }
    }
    if !pins
        .iter()
        .any(|p| p.project == normalize_project_name("spyctl"))
    {
        return Err("pip downloaded no spyctl wheel".into());
    }
    let header = format!(
        "spyctl {version} and its dependencies for the spyctl oracle tests (harness/tests/spyctl_*.rs).\n\n\
         Exact versions and the sha256 of every file pip may install (`--require-hashes`) on CPython\n\
         {} (x86_64). Made by `cargo run -p guardlab --example spyctl_lock`; a change here is a\n\
         reviewed change (the oracle may answer differently).",
        PYTHONS.join(", ")
    );
    let text = PythonLock::render(&header, &pins);
    let lock = lock_path();
    // Parsing what we wrote checks it the way the tests will read it.
    PythonLock::parse(&lock, &text).map_err(|e| format!("the new lock does not parse: {e}"))?;
    let tmp = lock.with_extension("lock.new");
    std::fs::write(&tmp, &text).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &lock).map_err(|e| format!("replacing {}: {e}", lock.display()))?;
    println!("{}: {} pins", lock.display(), pins.len());
    Ok(())
}

fn lock_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/spyctl/spyctl.lock")
}

fn run_command(cmd: &mut Command, what: &str) -> Result<(), String> {
    let status = cmd.status().map_err(|e| format!("running {what}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({status})"))
    }
}
