//! Where the pod's limits go on each cgroup layout, against fake cgroup trees (temporary
//! directories laid out like /sys/fs/cgroup, with the mountinfo and /proc/self/cgroup text a
//! host of that layout has): pure cgroup v2, hybrid (v2 with hugetlb only, pids/memory/cpu as
//! v1 hierarchies, cpu co-mounted with cpuacct, the process in a nested memory cgroup), a
//! controller that is nowhere, and `down` removing the v1 directories a lab recorded.
//! The layout of the machine the tests run on is run for real by `pod_sandbox` and the lab
//! tests; these need no root.

use std::fs;
use std::path::{Path, PathBuf};

use guardlab_lab::NoProgress;
use guardlab_lab::local::cgroup_limits::{CgroupLayout, Controller, Home, ResourceLimits};
use guardlab_lab::local::state::{LabState, PodRecord, STATE_VERSION, StateFile};
use guardlab_lab::local::teardown::teardown;

const LIMITS: ResourceLimits = ResourceLimits {
    memory: Some(1 << 30),
    cpu_millis: Some(1500),
    pids: Some(1024),
};

fn mountinfo_line(id: u32, root: &str, target: &Path, fstype: &str, options: &str) -> String {
    format!(
        "{id} 23 0:{id} {root} {} rw,nosuid,nodev,noexec,relatime shared:{id} - {fstype} {fstype} {options}\n",
        target.display()
    )
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn on_pure_cgroup_v2_the_limits_go_into_the_pods_v2_cgroup() {
    let tree = tempfile::tempdir().unwrap();
    let root = tree.path();
    fs::write(
        root.join("cgroup.controllers"),
        "cpuset cpu io memory hugetlb pids rdma misc\n",
    )
    .unwrap();
    fs::write(root.join("cgroup.subtree_control"), "cpu io memory pids\n").unwrap();
    let mountinfo = mountinfo_line(
        30,
        "/",
        root,
        "cgroup2",
        "rw,nsdelegate,memory_recursiveprot",
    );
    let layout = CgroupLayout::read(&mountinfo, "0::/user.slice/user-0.slice/session-1.scope\n");
    assert_eq!(layout.v2.as_deref(), Some(root));
    assert!(layout.v1.is_empty());
    for controller in Controller::ALL {
        assert_eq!(layout.home(controller), Some(Home::V2), "{controller:?}");
    }
    layout.check(&LIMITS).unwrap();

    let pod_v2 = root.join("guardlab/lab-a/pod-p");
    let cgroups = layout.pod_cgroups("lab-a", "pod-p", &pod_v2, &LIMITS);
    assert!(cgroups.v1.is_empty() && cgroups.v1_dirs().is_empty());
    // A sibling that has processes (the daemon's) is made by `lab up`; here only the pod's.
    cgroups.create().unwrap();
    // Enabled in the directories guardlab owns, not in the host's root.
    for dir in ["guardlab", "guardlab/lab-a"] {
        assert_eq!(
            read(&root.join(dir).join("cgroup.subtree_control")),
            "+pids +memory +cpu"
        );
    }
    assert_eq!(
        read(&root.join("cgroup.subtree_control")),
        "cpu io memory pids\n"
    );
    assert_eq!(read(&pod_v2.join("pids.max")), "1024");
    assert_eq!(read(&pod_v2.join("memory.max")), (1u64 << 30).to_string());
    assert_eq!(read(&pod_v2.join("cpu.max")), "150000 100000");
    // Nothing moves on v2: the clone goes straight into the cgroup.
    drop(cgroups.enter().unwrap());
}

#[test]
fn on_pure_cgroup_v2_a_root_that_does_not_enable_a_controller_is_refused_with_the_fix() {
    let tree = tempfile::tempdir().unwrap();
    let root = tree.path();
    fs::write(root.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
    fs::write(root.join("cgroup.subtree_control"), "cpu pids\n").unwrap();
    let mountinfo = mountinfo_line(30, "/", root, "cgroup2", "rw");
    let layout = CgroupLayout::read(&mountinfo, "0::/\n");
    let err = layout.check(&LIMITS).unwrap_err().to_string();
    assert!(
        err.contains("`memory`")
            && err.contains(&format!(
                "echo +memory > {}/cgroup.subtree_control",
                root.display()
            ))
            && err.contains("resources.limits.memory"),
        "{err}"
    );
    // Without a memory limit, nothing needs it.
    let no_memory = ResourceLimits {
        memory: None,
        ..LIMITS
    };
    layout.check(&no_memory).unwrap();
}

/// This machine's layout: cgroup v2 at `unified` with hugetlb only, v1 hierarchies for the
/// rest (cpu with cpuacct here), the process in a nested memory cgroup.
fn hybrid(root: &Path) -> (String, String) {
    let unified = root.join("unified");
    fs::create_dir_all(&unified).unwrap();
    fs::write(unified.join("cgroup.controllers"), "hugetlb\n").unwrap();
    fs::write(unified.join("cgroup.subtree_control"), "").unwrap();
    let mut mountinfo = String::new();
    let hierarchies = [
        (31, "cpu,cpuacct", "rw,cpu,cpuacct"),
        (32, "memory", "rw,memory"),
        (33, "pids", "rw,pids"),
        (34, "systemd", "rw,xattr,name=systemd"),
        (35, "freezer", "rw,freezer,clone_children"),
    ];
    for (id, dir, options) in hierarchies {
        fs::create_dir_all(root.join(dir)).unwrap();
        mountinfo += &mountinfo_line(id, "/", &root.join(dir), "cgroup", options);
    }
    mountinfo += &mountinfo_line(36, "/", &unified, "cgroup2", "rw");
    let own = "9:name=systemd:/\n8:pids:/\n6:freezer:/\n4:memory:/sandbox/s1\n\
               1:cpu,cpuacct:/\n0::/\n";
    (mountinfo, own.to_string())
}

#[test]
fn on_a_hybrid_host_the_limits_go_into_v1_cgroups_below_the_processs_own() {
    let tree = tempfile::tempdir().unwrap();
    let root = tree.path();
    let (mountinfo, own) = hybrid(root);
    let layout = CgroupLayout::read(&mountinfo, &own);
    assert_eq!(layout.v2.as_deref(), Some(root.join("unified").as_path()));
    assert_eq!(layout.v2_controllers, ["hugetlb"]);
    let memory = match layout.home(Controller::Memory) {
        Some(Home::V1(h)) => h.clone(),
        other => panic!("memory is on v1 here: {other:?}"),
    };
    assert_eq!(memory.own, "/sandbox/s1");
    match layout.home(Controller::Cpu) {
        Some(Home::V1(h)) => assert_eq!(h.mount_options(), "cpu,cpuacct"),
        other => panic!("cpu is on v1 here: {other:?}"),
    }
    // Flags are not controllers, a name is kept.
    assert!(layout.v1.iter().any(|h| h.options == ["freezer"]));
    assert!(layout.v1.iter().any(|h| h.options == ["name=systemd"]));
    layout.check(&LIMITS).unwrap();

    let pod_v2 = root.join("unified/guardlab/lab-b/pod-p");
    let cgroups = layout.pod_cgroups("lab-b", "pod-p", &pod_v2, &LIMITS);
    let expected: Vec<PathBuf> = [
        "pids/guardlab/lab-b/pod-p",
        "memory/sandbox/s1/guardlab/lab-b/pod-p",
        "cpu,cpuacct/guardlab/lab-b/pod-p",
    ]
    .iter()
    .map(|d| root.join(d))
    .collect();
    assert_eq!(cgroups.v1_dirs(), expected);
    assert_eq!(
        cgroups.v1_lab_dirs(),
        expected
            .iter()
            .map(|d| d.parent().unwrap().to_path_buf())
            .collect::<Vec<_>>()
    );
    cgroups.create().unwrap();
    assert_eq!(read(&expected[0].join("pids.max")), "1024");
    assert_eq!(
        read(&expected[1].join("memory.limit_in_bytes")),
        (1u64 << 30).to_string()
    );
    assert_eq!(read(&expected[2].join("cpu.cfs_period_us")), "100000");
    assert_eq!(read(&expected[2].join("cpu.cfs_quota_us")), "150000");
    // Nothing of the limits on v2 (it has none of these controllers); the pod's v2 cgroup is
    // still made (the sensor watches it, the pod is cloned into it).
    assert!(pod_v2.is_dir());
    assert!(!pod_v2.join("memory.max").exists());
    assert!(
        !root
            .join("unified/guardlab/cgroup.subtree_control")
            .exists()
    );
}

#[test]
fn a_hierarchy_mounted_from_a_sub_cgroup_places_the_pod_below_the_processs_cgroup() {
    let tree = tempfile::tempdir().unwrap();
    let root = tree.path();
    fs::create_dir_all(root.join("pids")).unwrap();
    // The mount shows /outer at its top, and the process is in /outer/inner.
    let mountinfo = mountinfo_line(40, "/outer", &root.join("pids"), "cgroup", "rw,pids");
    let layout = CgroupLayout::read(&mountinfo, "3:pids:/outer/inner\n");
    let only_pids = ResourceLimits {
        pids: Some(10),
        ..ResourceLimits::default()
    };
    let cgroups = layout.pod_cgroups("l", "pod-p", &root.join("v2/pod-p"), &only_pids);
    assert_eq!(
        cgroups.v1_dirs(),
        [root.join("pids/inner/guardlab/l/pod-p")]
    );
}

#[test]
fn a_controller_that_is_nowhere_refuses_the_lab_saying_which_and_why() {
    let tree = tempfile::tempdir().unwrap();
    let root = tree.path();
    fs::write(root.join("cgroup.controllers"), "hugetlb\n").unwrap();
    let mut mountinfo = mountinfo_line(30, "/", root, "cgroup2", "rw");
    fs::create_dir_all(root.join("p")).unwrap();
    mountinfo += &mountinfo_line(31, "/", &root.join("p"), "cgroup", "rw,pids");
    let layout = CgroupLayout::read(&mountinfo, "1:pids:/\n0::/\n");
    let err = layout.check(&LIMITS).unwrap_err().to_string();
    assert!(
        err.contains("`memory`") && err.contains("neither in cgroup v2") && err.contains("hugetlb"),
        "{err}"
    );
    let pids_only = ResourceLimits {
        pids: Some(5),
        ..ResourceLimits::default()
    };
    layout.check(&pids_only).unwrap();
    // No limits, no controllers needed: a host without any still runs the lab.
    CgroupLayout::read("", "")
        .check(&ResourceLimits::default())
        .unwrap();
}

#[test]
fn down_removes_the_v1_cgroups_the_state_file_records() {
    let tree = tempfile::tempdir().unwrap();
    let root = tree.path();
    let lab_dir = root.join("labs/lab-c");
    fs::create_dir_all(&lab_dir).unwrap();
    let lab_v1 = [
        root.join("memory/guardlab/lab-c"),
        root.join("pids/guardlab/lab-c"),
    ];
    let pod_v1: Vec<PathBuf> = lab_v1.iter().map(|d| d.join("pod-p")).collect();
    let left_by_an_older_pod = lab_v1[0].join("pod-old");
    for dir in pod_v1.iter().chain([&left_by_an_older_pod]) {
        fs::create_dir_all(dir).unwrap();
    }
    // Another lab's directory beside it stays.
    let other = root.join("memory/guardlab/lab-d");
    fs::create_dir_all(&other).unwrap();
    StateFile::in_dir(&lab_dir)
        .save(&LabState {
            version: STATE_VERSION,
            lab: "lab-c".into(),
            v1_cgroups: lab_v1.to_vec(),
            pods: vec![PodRecord {
                name: "p".into(),
                v1_cgroups: pod_v1.clone(),
                ..Default::default()
            }],
            phase: "ready".into(),
            ..Default::default()
        })
        .unwrap();
    teardown(&lab_dir, &NoProgress).unwrap();
    for dir in lab_v1.iter().chain(&pod_v1) {
        assert!(!dir.exists(), "{} is left", dir.display());
    }
    assert!(other.is_dir(), "another lab's cgroup stays");
    assert!(
        !root.join("pids/guardlab").exists(),
        "an empty guardlab/ goes"
    );
    assert!(
        root.join("memory/guardlab").is_dir(),
        "one another lab uses stays"
    );
    assert!(!lab_dir.exists());
}
