//! `lab up` gets what the lab needs from the host before it makes anything or starts slow work:
//! what it may not install is refused, naming the program and its Debian package, and nothing of
//! the lab is left.

mod common;

use guardlab_host::{Host, Ledger, StderrProgress};
use guardlab_lab::local::LocalLab;
use guardlab_lab::{Lab, NoProgress};

#[tokio::test(flavor = "multi_thread")]
async fn under_no_install_missing_programs_are_refused_before_anything_is_made() {
    common::require_root();
    // The kernel facts first, as `up` would get them, so that what is refused below is the
    // programs (on this host: nothing to do).
    let real = Host::new(false);
    real.ensure_cgroup2(&StderrProgress).unwrap();
    real.ensure_filesystem("overlay", "the pod's root", &StderrProgress)
        .unwrap();

    let scratch = tempfile::tempdir().unwrap();
    let name = common::lab_name("no-install");
    // An empty image cache and services cache: the image must be built (debootstrap) and the
    // package index's wheels fetched (python3, pip).
    let mut options = common::options(
        &name,
        scratch.path(),
        Some(&scratch.path().join("image-cache")),
    );
    options.state_dir = scratch.path().join("labs");
    options.services_cache_dir = scratch.path().join("services-cache");
    let empty_bin = scratch.path().join("bin");
    std::fs::create_dir(&empty_bin).unwrap();
    let mut host = Host::new(true);
    // A host on which no program is found.
    host.search_path = vec![empty_bin];
    host.ledger = Ledger::in_dir(&scratch.path().join("host-state"));
    options.host = host;
    let mut lab = LocalLab::new(options).unwrap();

    let needed: Vec<&str> = lab
        .needed_programs()
        .unwrap()
        .iter()
        .map(|r| r.package)
        .collect();
    for package in ["iproute2", "debootstrap", "python3", "python3-pip"] {
        assert!(needed.contains(&package), "{package} in {needed:?}");
    }

    let err = lab.up(&NoProgress).await.unwrap_err().to_string();
    for said in [
        "debootstrap (Debian package `debootstrap`",
        "ip (Debian package `iproute2`",
        "python3 -m pip (Debian package `python3-pip`",
        "--no-install",
        "apt-get install debootstrap iproute2",
    ] {
        assert!(err.contains(said), "`{said}` in: {err}");
    }
    assert!(!lab.lab_dir().exists(), "no lab directory was made");
    assert!(
        !scratch.path().join("labs").exists(),
        "no labs directory was made"
    );
    assert!(
        !scratch.path().join("image-cache").exists(),
        "no image build started"
    );
    assert!(
        !scratch.path().join("host-state/host-changes").exists(),
        "nothing recorded as installed"
    );
}
