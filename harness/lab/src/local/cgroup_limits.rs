//! The pod's resource limits (pids, memory, CPU), put where this host has the controllers.
//!
//! Hosts differ: a pure cgroup v2 host has every controller in its one hierarchy; a hybrid host
//! mounts cgroup v2 (here `/sys/fs/cgroup/unified`, holding only `hugetlb`) beside cgroup v1
//! hierarchies that hold `pids`, `memory` and `cpu`; a v1-only host has no v2 controllers at all
//! (guardlab's own v2 mount holds none). [`CgroupLayout`] reads where each controller is, from
//! mountinfo, `/proc/self/cgroup` and the v2 root's `cgroup.controllers`, and the limits go
//! there:
//! - on cgroup v2, into the pod's v2 cgroup (`<v2>/guardlab/<lab>/pod-<name>`, the one the pod is
//!   cloned into with `CLONE_INTO_CGROUP`), after enabling the controllers in the
//!   `cgroup.subtree_control` of the directories guardlab owns above it (`guardlab/`,
//!   `guardlab/<lab>/`); the v2 root must enable them for its children already (systemd does),
//!   and a root that does not is refused with the command that enables them: guardlab does not
//!   change the host's root cgroup;
//! - on cgroup v1, into a cgroup of the pod in that hierarchy, below the cgroup this process is
//!   in there (`<hierarchy>/<own cgroup>/guardlab/<lab>/pod-<name>`), so that a lab started
//!   inside a limited cgroup stays inside its limits. `CLONE_INTO_CGROUP` works on v2 only: the
//!   thread that clones the pod's first process enters each of these cgroups just before the
//!   clone and goes back just after ([`PodCgroups::enter`]), so the pod is born inside them.
//!
//! Every v1 directory is recorded in the lab's state file before it is made (the pod's in its
//! `PodRecord`, the lab's in `LabState::v1_cgroups`) and removed by `lab down`.
//!
//! A controller that a limit needs and that is nowhere (neither v2 nor v1) refuses the lab,
//! saying which and why ([`CgroupLayout::check`]).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{IoContext, LabError};

/// The CFS period of a CPU limit (100 ms, as Kubernetes sets it).
pub const CPU_PERIOD_US: u64 = 100_000;

/// A pod's limits: the Deployment's `resources.limits` and the kubelet's `podPidsLimit`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceLimits {
    /// Bytes (`resources.limits.memory`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    /// Thousandths of a CPU (`resources.limits.cpu`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<u64>,
    /// Processes and threads (`podPidsLimit` of the kubelet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
}

/// The controllers a limit is kept by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Controller {
    Pids,
    Memory,
    Cpu,
}

impl Controller {
    pub const ALL: [Controller; 3] = [Controller::Pids, Controller::Memory, Controller::Cpu];

    /// The kernel's name of it.
    pub fn name(self) -> &'static str {
        match self {
            Controller::Pids => "pids",
            Controller::Memory => "memory",
            Controller::Cpu => "cpu",
        }
    }

    /// The field of the manifests that asks for it.
    fn asked_by(self) -> &'static str {
        match self {
            Controller::Pids => "the kubelet's podPidsLimit (manifests/kind/cluster.yaml)",
            Controller::Memory => "the Deployment's resources.limits.memory",
            Controller::Cpu => "the Deployment's resources.limits.cpu",
        }
    }
}

impl ResourceLimits {
    /// The controllers these limits need.
    pub fn controllers(&self) -> Vec<Controller> {
        let wanted = [
            (Controller::Pids, self.pids.is_some()),
            (Controller::Memory, self.memory.is_some()),
            (Controller::Cpu, self.cpu_millis.is_some()),
        ];
        wanted
            .into_iter()
            .filter_map(|(c, w)| w.then_some(c))
            .collect()
    }
}

/// A cgroup v1 hierarchy as mounted here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct V1Hierarchy {
    /// Its mount point (`/sys/fs/cgroup/memory`).
    pub mount: PathBuf,
    /// The cgroup the mount shows at its top (mountinfo's root, `/` mostly).
    pub root: String,
    /// Its controllers (`["cpu", "cpuacct"]`), and `name=...` for a named hierarchy.
    pub options: Vec<String>,
    /// This process's cgroup in it (from `/proc/self/cgroup`), e.g. `/`.
    pub own: String,
}

impl V1Hierarchy {
    fn has(&self, controller: &str) -> bool {
        self.options.iter().any(|o| o == controller)
    }

    /// The directory of a cgroup path of this hierarchy (as `/proc/<pid>/cgroup` names it).
    fn dir_of(&self, cgroup: &str) -> PathBuf {
        let root = self.root.trim_end_matches('/');
        let relative = cgroup
            .strip_prefix(root)
            .filter(|rest| rest.is_empty() || rest.starts_with('/'))
            .unwrap_or("/");
        self.mount.join(relative.trim_start_matches('/'))
    }

    /// The controllers to give `mount -t cgroup` for this hierarchy (the pod mounts it).
    pub fn mount_options(&self) -> String {
        self.options.join(",")
    }
}

/// Where this host keeps each controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupLayout {
    /// The cgroup v2 mount, if any.
    pub v2: Option<PathBuf>,
    /// The controllers of the v2 root (`cgroup.controllers`).
    pub v2_controllers: Vec<String>,
    /// The controllers the v2 root enables for its children (`cgroup.subtree_control`).
    pub v2_enabled: Vec<String>,
    /// Every cgroup v1 hierarchy mounted here.
    pub v1: Vec<V1Hierarchy>,
}

/// Where one controller is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Home<'a> {
    V2,
    V1(&'a V1Hierarchy),
}

fn words(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_string).collect()
}

impl CgroupLayout {
    /// This process's layout.
    pub fn of_this_process() -> Result<CgroupLayout, LabError> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")
            .context(|| "reading /proc/self/mountinfo")?;
        let own =
            fs::read_to_string("/proc/self/cgroup").context(|| "reading /proc/self/cgroup")?;
        Ok(CgroupLayout::read(&mountinfo, &own))
    }

    /// The layout from mountinfo text and `/proc/<pid>/cgroup` text; the v2 root's files are
    /// read where mountinfo says it is (a test gives a temporary directory laid out like
    /// `/sys/fs/cgroup`).
    pub fn read(mountinfo: &str, own_cgroups: &str) -> CgroupLayout {
        let mut layout = CgroupLayout {
            v2: None,
            v2_controllers: Vec::new(),
            v2_enabled: Vec::new(),
            v1: Vec::new(),
        };
        for line in mountinfo.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let left: Vec<&str> = left.split_whitespace().collect();
            let right: Vec<&str> = right.split_whitespace().collect();
            let (Some(root), Some(target), Some(fstype)) =
                (left.get(3), left.get(4), right.first())
            else {
                continue;
            };
            let target = PathBuf::from(guardlab_host::unescape_mountinfo(target));
            match *fstype {
                "cgroup2" if layout.v2.is_none() => {
                    let read =
                        |name: &str| fs::read_to_string(target.join(name)).unwrap_or_default();
                    layout.v2_controllers = words(&read("cgroup.controllers"));
                    layout.v2_enabled = words(&read("cgroup.subtree_control"));
                    layout.v2 = Some(target);
                }
                "cgroup" => {
                    let options: Vec<String> = right
                        .get(2)
                        .unwrap_or(&"")
                        .split(',')
                        // Controllers and a hierarchy's name; mount flags (`clone_children`,
                        // `release_agent=`...) are not part of what it is.
                        .filter(|o| {
                            let flag = matches!(
                                *o,
                                "rw" | "ro"
                                    | ""
                                    | "none"
                                    | "all"
                                    | "noprefix"
                                    | "clone_children"
                                    | "xattr"
                                    | "cpuset_v2_mode"
                                    | "favordynmods"
                                    | "nofavordynmods"
                            );
                            !flag && (!o.contains('=') || o.starts_with("name="))
                        })
                        .map(str::to_string)
                        .collect();
                    // The same hierarchy mounted twice is one hierarchy.
                    if layout.v1.iter().any(|h| h.options == options) {
                        continue;
                    }
                    let own = CgroupLayout::read_own_path(own_cgroups, &options)
                        .unwrap_or_else(|| root.to_string());
                    layout.v1.push(V1Hierarchy {
                        mount: target,
                        root: guardlab_host::unescape_mountinfo(root),
                        options,
                        own,
                    });
                }
                _ => {}
            }
        }
        layout
    }

    /// Where `controller` is: cgroup v2 when its root has it, else the v1 hierarchy that has it.
    pub fn home(&self, controller: Controller) -> Option<Home<'_>> {
        let name = controller.name();
        if self.v2.is_some() && self.v2_controllers.iter().any(|c| c == name) {
            return Some(Home::V2);
        }
        self.v1.iter().find(|h| h.has(name)).map(Home::V1)
    }

    /// Refuses limits a controller of which is nowhere, or on cgroup v2 but not enabled for the
    /// root's children (guardlab does not change the host's root cgroup).
    pub fn check(&self, limits: &ResourceLimits) -> Result<(), LabError> {
        for controller in limits.controllers() {
            let name = controller.name();
            match self.home(controller) {
                None => {
                    return Err(LabError::Missing {
                        what: format!("the cgroup controller `{name}`"),
                        hint: format!(
                            "{} needs it, and this host has it neither in cgroup v2 ({}) nor as \
                             a cgroup v1 hierarchy (none is mounted with it); enable it in the \
                             kernel (CONFIG_CGROUP_{}) or remove the limit",
                            controller.asked_by(),
                            match &self.v2 {
                                Some(v2) => format!(
                                    "{}/cgroup.controllers: {}",
                                    v2.display(),
                                    self.v2_controllers.join(" ")
                                ),
                                None => "not mounted".into(),
                            },
                            match controller {
                                Controller::Pids => "PIDS",
                                Controller::Memory => "MEMCG (CONFIG_MEMCG)",
                                Controller::Cpu => "SCHED (CONFIG_CFS_BANDWIDTH)",
                            }
                        ),
                    });
                }
                Some(Home::V2) if !self.v2_enabled.iter().any(|c| c == name) => {
                    let v2 = self.v2.as_deref().unwrap_or(Path::new("/sys/fs/cgroup"));
                    return Err(LabError::Missing {
                        what: format!("the cgroup v2 controller `{name}` for child cgroups"),
                        hint: format!(
                            "{} needs it; {} has it but does not enable it for its children \
                             (systemd hosts do): `echo +{name} > {}/cgroup.subtree_control`",
                            controller.asked_by(),
                            v2.display(),
                            v2.display()
                        ),
                    });
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// The cgroups of pod `pod` of lab `lab`: its v2 cgroup `v2_pod` (under the lab's), and one
    /// per v1 hierarchy holding a controller of `limits`.
    pub fn pod_cgroups(
        &self,
        lab: &str,
        pod: &str,
        v2_pod: &Path,
        limits: &ResourceLimits,
    ) -> PodCgroups {
        let mut v1: Vec<V1Cgroup> = Vec::new();
        for controller in limits.controllers() {
            if let Some(Home::V1(hierarchy)) = self.home(controller)
                && !v1.iter().any(|c| c.hierarchy == *hierarchy)
            {
                let lab_dir = hierarchy.dir_of(&hierarchy.own).join("guardlab").join(lab);
                v1.push(V1Cgroup {
                    dir: lab_dir.join(pod),
                    lab_dir,
                    hierarchy: hierarchy.clone(),
                });
            }
        }
        let v2_controllers = limits
            .controllers()
            .into_iter()
            .filter(|c| self.home(*c) == Some(Home::V2))
            .collect();
        PodCgroups {
            v2: v2_pod.to_path_buf(),
            v2_mount: self.v2.clone(),
            v2_controllers,
            v1,
            limits: *limits,
        }
    }
}

/// The pod's cgroup in one v1 hierarchy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct V1Cgroup {
    /// `<hierarchy>/<own>/guardlab/<lab>/<pod>`.
    pub dir: PathBuf,
    /// `<hierarchy>/<own>/guardlab/<lab>`: recorded in the lab's state, removed by `down`.
    pub lab_dir: PathBuf,
    pub hierarchy: V1Hierarchy,
}

/// Every cgroup of one pod and the limits they keep.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodCgroups {
    /// The pod's v2 cgroup: the pod is cloned into it, the sensor watches it.
    pub v2: PathBuf,
    /// The v2 mount (where the directories guardlab owns start, below it).
    pub v2_mount: Option<PathBuf>,
    /// The limited controllers that are on cgroup v2.
    pub v2_controllers: Vec<Controller>,
    pub v1: Vec<V1Cgroup>,
    pub limits: ResourceLimits,
}

fn write(path: &Path, value: &str) -> Result<(), LabError> {
    fs::write(path, value).context(|| format!("writing {value:?} to {}", path.display()))
}

impl PodCgroups {
    /// Just a v2 cgroup, no limits (tests of the sandbox alone).
    pub fn v2_only(v2: &Path) -> PodCgroups {
        PodCgroups {
            v2: v2.to_path_buf(),
            v2_mount: None,
            v2_controllers: Vec::new(),
            v1: Vec::new(),
            limits: ResourceLimits::default(),
        }
    }

    /// The v1 directories of the pod (for its state record).
    pub fn v1_dirs(&self) -> Vec<PathBuf> {
        self.v1.iter().map(|c| c.dir.clone()).collect()
    }

    /// The v1 directories of the lab above them (for the lab's state record).
    pub fn v1_lab_dirs(&self) -> Vec<PathBuf> {
        self.v1.iter().map(|c| c.lab_dir.clone()).collect()
    }

    /// Make the pod's cgroups and write its limits. The caller recorded them first.
    pub fn create(&self) -> Result<(), LabError> {
        let limits = &self.limits;
        if !self.v2_controllers.is_empty() {
            // Enable the controllers in every directory guardlab owns above the pod's cgroup
            // (below the v2 mount, whose root enables them already: `CgroupLayout::check`).
            let enable: String = self
                .v2_controllers
                .iter()
                .map(|c| format!("+{}", c.name()))
                .collect::<Vec<_>>()
                .join(" ");
            let mut parents: Vec<&Path> = self.v2.ancestors().skip(1).collect();
            parents.reverse();
            for dir in parents {
                let below_mount = self
                    .v2_mount
                    .as_deref()
                    .is_some_and(|m| dir.starts_with(m) && dir != m);
                if below_mount {
                    fs::create_dir_all(dir)
                        .context(|| format!("creating cgroup {}", dir.display()))?;
                    write(&dir.join("cgroup.subtree_control"), &enable)?;
                }
            }
        }
        fs::create_dir_all(&self.v2)
            .context(|| format!("creating cgroup {}", self.v2.display()))?;
        for controller in &self.v2_controllers {
            match controller {
                Controller::Pids => write(&self.v2.join("pids.max"), &number(limits.pids))?,
                Controller::Memory => write(&self.v2.join("memory.max"), &number(limits.memory))?,
                Controller::Cpu => {
                    let quota = limits.cpu_millis.map(cpu_quota_us);
                    write(
                        &self.v2.join("cpu.max"),
                        &format!("{} {CPU_PERIOD_US}", number(quota)),
                    )?
                }
            }
        }
        for cgroup in &self.v1 {
            fs::create_dir_all(&cgroup.dir)
                .context(|| format!("creating cgroup {}", cgroup.dir.display()))?;
            let h = &cgroup.hierarchy;
            if h.has("pids")
                && let Some(pids) = limits.pids
            {
                write(&cgroup.dir.join("pids.max"), &pids.to_string())?;
            }
            if h.has("memory")
                && let Some(memory) = limits.memory
            {
                write(
                    &cgroup.dir.join("memory.limit_in_bytes"),
                    &memory.to_string(),
                )?;
            }
            if h.has("cpu")
                && let Some(millis) = limits.cpu_millis
            {
                write(
                    &cgroup.dir.join("cpu.cfs_period_us"),
                    &CPU_PERIOD_US.to_string(),
                )?;
                write(
                    &cgroup.dir.join("cpu.cfs_quota_us"),
                    &cpu_quota_us(millis).to_string(),
                )?;
            }
        }
        Ok(())
    }

    /// Put the calling thread into each of the pod's v1 cgroups, so that a process it clones
    /// is born there; the returned guard puts it back where it was when dropped. On cgroup v2
    /// nothing moves (`CLONE_INTO_CGROUP`).
    pub fn enter(&self) -> Result<ThreadPlacement, LabError> {
        let own = fs::read_to_string("/proc/thread-self/cgroup")
            .context(|| "reading /proc/thread-self/cgroup")?;
        let tid = nix::unistd::gettid().as_raw() as u32;
        let mut placement = ThreadPlacement {
            tid,
            back_to: Vec::new(),
        };
        for cgroup in &self.v1 {
            let h = &cgroup.hierarchy;
            let here =
                CgroupLayout::read_own_path(&own, &h.options).unwrap_or_else(|| h.own.clone());
            let origin = h.dir_of(&here);
            write_tid(&cgroup.dir.join("tasks"), tid)?;
            placement.back_to.push(origin.join("tasks"));
        }
        Ok(placement)
    }
}

impl CgroupLayout {
    /// The path of a v1 hierarchy with `options` in `/proc/<pid>/cgroup` text.
    fn read_own_path(own_cgroups: &str, options: &[String]) -> Option<String> {
        let mut ours: Vec<&str> = options.iter().map(String::as_str).collect();
        ours.sort_unstable();
        own_cgroups.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, list, path) = (parts.next()?, parts.next()?, parts.next()?);
            let mut listed: Vec<&str> = list.split(',').collect();
            listed.sort_unstable();
            (!list.is_empty() && listed == ours).then(|| path.to_string())
        })
    }
}

/// A thread placed in a pod's v1 cgroups; dropping it puts the thread back.
#[must_use = "dropping it moves the thread back at once"]
pub struct ThreadPlacement {
    tid: u32,
    back_to: Vec<PathBuf>,
}

impl Drop for ThreadPlacement {
    fn drop(&mut self) {
        for tasks in self.back_to.iter().rev() {
            if let Err(e) = write_tid(tasks, self.tid) {
                // Said on stderr (the daemon's log): nothing else can be done about it here.
                eprintln!(
                    "cgroup: could not move thread {} back to {}: {e}",
                    self.tid,
                    tasks.display()
                );
            }
        }
    }
}

fn write_tid(tasks: &Path, tid: u32) -> Result<(), LabError> {
    // One write(2) of the number, as the kernel wants it.
    let mut file = fs::OpenOptions::new()
        .write(true)
        .open(tasks)
        .context(|| format!("opening {}", tasks.display()))?;
    file.write_all(tid.to_string().as_bytes())
        .context(|| format!("moving thread {tid} into {}", tasks.display()))
}

fn number(value: Option<u64>) -> String {
    value.map_or_else(|| "max".to_string(), |v| v.to_string())
}

/// The CFS quota of a CPU limit in thousandths of a CPU (at least 1 ms, as Kubernetes sets it).
pub fn cpu_quota_us(millis: u64) -> u64 {
    (millis * CPU_PERIOD_US / 1000).max(1000)
}
