//! The pod sandbox on its own (no daemon, no image build): a tiny root filesystem made of this
//! host's bash and coreutils, run as the pod's first process under the runtime's default
//! seccomp profile and with limits in this host's cgroups (v1 or v2, wherever it keeps the
//! controllers), checked from the inside.
//! Root only (namespaces, cgroups, mounts); without root it fails and says to use sudo.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use guardlab_lab::local::cgroup;
use guardlab_lab::local::cgroup_limits::{CgroupLayout, Controller, Home, ResourceLimits};
use guardlab_lab::local::manifest::default_manifests_dir;
use guardlab_lab::local::netns::Netns;
use guardlab_lab::local::pod::{self, ContainerSpec, ExitStatus};
use guardlab_lab::local::seccomp::{Profile, RUNTIME_DEFAULT_FILE};

fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test makes namespaces, cgroups and mounts: run it as root (sudo -E cargo test -p guardlab-lab)"
    );
}

/// Copy host programs and their libraries into `root`.
fn tiny_rootfs(root: &Path) {
    let programs = [
        "/bin/bash",
        "/usr/bin/id",
        "/usr/bin/cat",
        "/usr/bin/ls",
        "/usr/bin/hostname",
        "/usr/bin/touch",
    ];
    let mut files: Vec<PathBuf> = programs.iter().map(PathBuf::from).collect();
    for program in programs {
        let output = Command::new("ldd").arg(program).output().expect("ldd");
        for word in String::from_utf8_lossy(&output.stdout).split_whitespace() {
            if word.starts_with('/') {
                files.push(PathBuf::from(word));
            }
        }
    }
    for file in files {
        let target = root.join(file.strip_prefix("/").unwrap());
        fs::create_dir_all(target.parent().unwrap()).unwrap();
        fs::copy(fs::canonicalize(&file).unwrap(), &target).unwrap();
    }
    for dir in ["etc", "home/jovyan", "proc", "dev", "sys", "tmp"] {
        fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::os::unix::fs::chown(root.join("home/jovyan"), Some(1000), Some(100)).unwrap();
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/bash\njovyan:x:1000:100::/home/jovyan:/bin/bash\n",
    )
    .unwrap();
    fs::write(
        root.join("etc/group"),
        "root:x:0:\ntty:x:5:\nusers:x:100:\n",
    )
    .unwrap();
}

#[test]
fn the_first_process_is_pid_1_as_jovyan_without_capabilities_in_its_own_namespaces() {
    require_root();
    let base = tempfile::Builder::new()
        .prefix("guardlab-pod-test-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let image = base.path().join("image");
    tiny_rootfs(&image);
    let pod_dir = base.path().join("pod");
    fs::create_dir_all(&pod_dir).unwrap();

    let lab = format!("t-sandbox-{}", std::process::id());
    let lab_cgroup = cgroup::cgroup2_mount().unwrap().join("guardlab").join(&lab);
    let limits = ResourceLimits {
        memory: Some(256 << 20),
        cpu_millis: Some(500),
        pids: Some(64),
    };
    let layout = CgroupLayout::of_this_process().unwrap();
    layout.check(&limits).unwrap();
    let cgroups = layout.pod_cgroups(&lab, "pod", &lab_cgroup.join("pod"), &limits);
    // Where the pod sees its pids and memory limits: /sys/fs/cgroup is its own cgroup v2 on a
    // v2 host, and holds its v1 hierarchies by name where the host keeps them in v1.
    let seen_at =
        |controller: Controller, v2_file: &str, v1_file: &str| match layout.home(controller) {
            Some(Home::V1(h)) => format!(
                "/sys/fs/cgroup/{}/{v1_file}",
                h.mount.file_name().unwrap().to_string_lossy()
            ),
            _ => format!("/sys/fs/cgroup/{v2_file}"),
        };
    let pids_max = seen_at(Controller::Pids, "pids.max", "pids.max");
    let memory_max = seen_at(Controller::Memory, "memory.max", "memory.limit_in_bytes");
    cgroups.create().unwrap();
    let netns = Netns::create("pod").unwrap();
    netns.ip(&["link", "set", "lo", "up"]).unwrap();

    let script = format!(
        "echo pid=$$; id; hostname; \
        while IFS= read -r l; do case $l in Cap*|NoNewPrivs*|Seccomp*) echo \"$l\";; esac; done < /proc/self/status; \
        cat /proc/self/cgroup; ls /dev; ls /dev/pts; \
        echo pids.max=$(cat {pids_max}); echo memory.max=$(cat {memory_max}); \
        touch /home/jovyan/written; echo mounts; cat /proc/self/mountinfo; echo end-of-mounts; echo done"
    );
    let spec = ContainerSpec {
        lower_dirs: vec![image.clone()],
        pod_dir: pod_dir.clone(),
        hostname: "jupyter-notebook-test-abcde".into(),
        argv: vec!["bash".into(), "-c".into(), script],
        env: vec!["PATH=/usr/bin:/bin".into(), "HOME=/home/jovyan".into()],
        working_dir: "/home/jovyan".into(),
        uid: 1000,
        gid: 100,
        supplementary_groups: vec![100],
        bounding_set: pod::bounding_set(&[], &[]).unwrap(),
        no_new_privs: false,
        seccomp: Some(Profile::load(&default_manifests_dir().join(RUNTIME_DEFAULT_FILE)).unwrap()),
        log_file: pod_dir.join("container.log"),
    };
    let mut recorded = None;
    let thread_cgroups = || fs::read_to_string("/proc/thread-self/cgroup").unwrap();
    let before = thread_cgroups();
    let process = pod::spawn(&spec, &cgroups, netns.raw_fd(), |pid| {
        recorded = Some(pid);
        Ok(())
    })
    .unwrap();
    let after = thread_cgroups();
    assert_eq!(recorded, Some(process.pid));
    let status = pod::wait_pidfd(&process.pidfd).unwrap();
    let log = fs::read_to_string(&spec.log_file).unwrap();

    // Clean up before asserting, so a failure leaves nothing behind.
    drop(netns);
    cgroup::kill_tree(&lab_cgroup, Duration::from_secs(5)).unwrap();
    cgroup::remove_tree(&lab_cgroup).unwrap();
    cgroup::remove_if_empty(lab_cgroup.parent().unwrap());
    for dir in cgroups.v1_lab_dirs() {
        cgroup::remove_tree(&dir).unwrap();
        cgroup::remove_if_empty(dir.parent().unwrap());
        assert!(!dir.exists(), "{} is left", dir.display());
    }
    let upper_file = spec.upper_dir().join("home/jovyan/written");
    let written_in_upper = upper_file.exists();
    let image_untouched = !image.join("home/jovyan/written").exists();
    drop(base);

    assert_eq!(status, ExitStatus::Code(0), "{log}");
    assert!(log.contains("pid=1\n"), "{log}");
    assert!(
        log.contains("uid=1000(jovyan) gid=100(users) groups=100(users)"),
        "{log}"
    );
    assert!(log.contains("jupyter-notebook-test-abcde\n"), "{log}");
    // The user has no capability at all; the bounding set is the container runtime's default.
    for field in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
        assert!(
            log.contains(&format!("{field}:\t0000000000000000")),
            "{field}: {log}"
        );
    }
    assert!(log.contains("CapBnd:\t00000000a80425fb"), "{log}");
    // No no_new_privs: setuid binaries keep their meaning (sudo fails the learner's way).
    assert!(log.contains("NoNewPrivs:\t0"), "{log}");
    // The runtime's default seccomp profile: a filter (mode 2), loaded without no_new_privs.
    assert!(log.contains("Seccomp:\t2\n"), "{log}");
    // Its limits, as the pod sees them where the host keeps the controllers.
    assert!(log.contains("pids.max=64\n"), "{log}");
    assert!(
        log.contains(&format!("memory.max={}\n", 256 << 20)),
        "{log}"
    );
    // The cloning thread went into the pod's v1 cgroups for the clone, and back.
    assert_eq!(before, after, "the thread is back in its own cgroups");
    assert!(
        log.lines().any(|l| l == "0::/"),
        "the cgroup namespace is rooted at the pod's cgroup: {log}"
    );
    for device in [
        "full", "null", "ptmx", "pts", "random", "shm", "tty", "urandom", "zero",
    ] {
        assert!(
            log.lines().any(|l| l == device),
            "/dev/{device} missing: {log}"
        );
    }
    assert!(log.contains("\nptmx\n"), "devpts has its own ptmx: {log}");
    assert!(
        written_in_upper && image_untouched,
        "writes go to the pod's writable layer only: {log}"
    );
    let mounts = log.split("mounts\n").nth(1).unwrap_or("");
    let mount_points: Vec<&str> = mounts
        .lines()
        .take_while(|l| *l != "end-of-mounts")
        .filter_map(|l| l.split_whitespace().nth(4))
        .collect();
    assert!(
        mount_points.contains(&"/")
            && mount_points.contains(&"/proc")
            && mount_points.contains(&"/dev/pts"),
        "{mounts}"
    );
    assert!(
        mount_points
            .iter()
            .all(|m| !m.contains("/var/tmp") && !m.starts_with("/work") && !m.starts_with("/run")),
        "the host's mounts are not visible: {mount_points:?}"
    );
    assert!(log.trim_end().ends_with("done"), "{log}");
}
