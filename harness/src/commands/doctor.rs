//! `guardlab doctor`: what this host has of what guardlab needs, as a table. It changes
//! nothing; the exit code says whether the local lab can run here (0) or needs something that
//! cannot be had (1): what guardlab installs or mounts itself when a command needs it counts as
//! had, unless `--no-install` refuses it.
#![allow(unsafe_code)] // geteuid(2) and uname(2)

use std::path::Path;

use guardlab_host::{Host, Installs, LedgerEntry, LedgerKind, Mount, Requirement, catalog};
use guardlab_lab::local::preflight::{KernelModule, kernel_module, kernel_release};

use crate::report::{CommandResult, Failure, Outcome};

/// What the local lab needs of the catalog whatever the host (modprobe only when a module must
/// be loaded, see [`kernel_rows`]).
const LAB_NEEDS: [&Requirement; 4] = [
    &catalog::IP,
    &catalog::DEBOOTSTRAP,
    &catalog::PYTHON3,
    &catalog::PIP,
];

/// How a row stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// There.
    Met,
    /// Not there; guardlab installs, mounts or loads it when a command needs it.
    GuardlabMakesIt,
    /// A fact to know, not a need.
    Note,
    /// Not there and cannot be had, and the lab needs it: doctor exits 1.
    LabBlocked,
    /// Not there and not installable now, but the lab does not need it.
    Missing,
}

/// One row of doctor's tables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub what: String,
    /// The Debian package, for programs and files.
    pub package: String,
    pub state: String,
    pub needed_by: String,
    pub verdict: Verdict,
}

/// The kernel and host facts doctor reports, gathered once.
#[derive(Clone, Debug)]
pub struct KernelFacts {
    pub euid: u32,
    pub btf: bool,
    /// `uname -r`.
    pub release: String,
    pub mounts: Vec<Mount>,
    /// `/proc/filesystems`.
    pub filesystems: String,
    /// `cgroup.controllers` of the cgroup v2 mount, if any.
    pub cgroup2_controllers: Option<String>,
    pub overlay_module: KernelModule,
    pub veth_module: KernelModule,
}

impl KernelFacts {
    fn gather() -> Result<KernelFacts, Failure> {
        let mounts = guardlab_host::mounts()?;
        let release = kernel_release();
        let cgroup2_controllers = mounts
            .iter()
            .find(|m| m.fstype == "cgroup2")
            .and_then(|m| std::fs::read_to_string(m.target.join("cgroup.controllers")).ok());
        Ok(KernelFacts {
            // SAFETY: geteuid has no preconditions and cannot fail.
            euid: unsafe { libc::geteuid() },
            btf: Path::new(guardlab_sensor::BTF_PATH).exists(),
            overlay_module: kernel_module("overlay", &release),
            veth_module: kernel_module("veth", &release),
            release,
            mounts,
            filesystems: std::fs::read_to_string("/proc/filesystems").unwrap_or_default(),
            cgroup2_controllers,
        })
    }

    fn has_filesystem(&self, name: &str) -> bool {
        self.filesystems
            .lines()
            .any(|l| l.split_whitespace().last() == Some(name))
    }

    /// Whether `lab up` would have to load a module (so it needs modprobe).
    pub fn lab_loads_a_module(&self) -> bool {
        !self.has_filesystem("overlay") || self.veth_module == KernelModule::Loadable
    }
}

/// `6.18.44-fc-v1300` -> (6, 18).
pub fn kernel_major_minor(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// How the host's cgroups are laid out: unified (v2 only), hybrid, or v1 only.
pub fn cgroup_layout(mounts: &[Mount], v2_controllers: Option<&str>) -> String {
    let v2 = mounts.iter().find(|m| m.fstype == "cgroup2");
    let mut v1: Vec<String> = mounts
        .iter()
        .filter(|m| m.fstype == "cgroup")
        .map(|m| {
            m.target
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| m.target.display().to_string())
        })
        .collect();
    v1.sort();
    v1.dedup();
    let controllers = || match v2_controllers.map(str::trim) {
        Some("") | None => "no controllers".to_string(),
        Some(list) => format!(
            "controllers: {}",
            list.split_whitespace().collect::<Vec<_>>().join(" ")
        ),
    };
    match (v2, v1.is_empty()) {
        (Some(v2), true) => format!(
            "unified: cgroup v2 only, at {} ({})",
            v2.target.display(),
            controllers()
        ),
        (Some(v2), false) => format!(
            "hybrid: cgroup v2 at {} ({}); v1 hierarchies: {}",
            v2.target.display(),
            controllers(),
            v1.join(", ")
        ),
        (None, false) => format!("cgroup v1 only: {}", v1.join(", ")),
        (None, true) => "no cgroup hierarchy mounted".to_string(),
    }
}

fn row(what: &str, state: String, needed_by: &str, verdict: Verdict) -> Row {
    Row {
        what: what.to_string(),
        package: String::new(),
        state,
        needed_by: needed_by.to_string(),
        verdict,
    }
}

/// The kernel and host rows, given the facts, whether guardlab may mount and load modules, and
/// what the ledger says it mounted.
pub fn kernel_rows(facts: &KernelFacts, installs: Installs, ledger: &[LedgerEntry]) -> Vec<Row> {
    let mut rows = Vec::new();
    let refused = installs == Installs::Refused;
    rows.push(if facts.euid == 0 {
        row("root", "yes".into(), "lab", Verdict::Met)
    } else {
        row(
            "root",
            format!(
                "no (uid {}): `guardlab lab up` and `scenario` re-run themselves through sudo",
                facts.euid
            ),
            "lab",
            Verdict::Note,
        )
    });
    rows.push(if facts.btf {
        row(
            "BTF",
            guardlab_sensor::BTF_PATH.into(),
            "lab (sensor)",
            Verdict::Met,
        )
    } else {
        row(
            "BTF",
            format!(
                "missing: no {}; the kernel needs CONFIG_DEBUG_INFO_BTF=y",
                guardlab_sensor::BTF_PATH
            ),
            "lab (sensor)",
            Verdict::LabBlocked,
        )
    });
    let (need_major, need_minor) = guardlab_sensor::MIN_KERNEL;
    rows.push(match kernel_major_minor(&facts.release) {
        Some(found) if found >= (need_major, need_minor) => row(
            "kernel",
            format!(
                "Linux {} ({need_major}.{need_minor} or newer)",
                facts.release
            ),
            "lab (sensor)",
            Verdict::Met,
        ),
        Some(_) => row(
            "kernel",
            format!(
                "Linux {} is too old: the sensor needs {need_major}.{need_minor} or newer",
                facts.release
            ),
            "lab (sensor)",
            Verdict::LabBlocked,
        ),
        None => row(
            "kernel",
            format!("cannot tell the version of `{}`", facts.release),
            "lab (sensor)",
            Verdict::LabBlocked,
        ),
    });
    let own_mount = |target: &Path| {
        ledger
            .iter()
            .any(|e| e.kind == LedgerKind::Mount && Path::new(&e.what) == target)
    };
    let cgroup2 = facts.mounts.iter().find(|m| m.fstype == "cgroup2");
    rows.push(match cgroup2 {
        Some(m) => row(
            "cgroup v2",
            format!(
                "mounted at {}{}",
                m.target.display(),
                if own_mount(&m.target) {
                    " (mounted by guardlab)"
                } else {
                    ""
                }
            ),
            "lab, tests",
            Verdict::Met,
        ),
        None if !facts.has_filesystem("cgroup2") => row(
            "cgroup v2",
            "missing: this kernel has no cgroup v2 (Linux 4.5+, CONFIG_CGROUPS)".into(),
            "lab, tests",
            Verdict::LabBlocked,
        ),
        None if refused => row(
            "cgroup v2",
            format!(
                "not mounted, and --no-install refuses to mount it: `mkdir -p {0} && mount -t \
                 cgroup2 none {0}`",
                guardlab_host::OWN_CGROUP2_MOUNT
            ),
            "lab, tests",
            Verdict::LabBlocked,
        ),
        None => row(
            "cgroup v2",
            format!(
                "not mounted: guardlab will mount it at {}",
                guardlab_host::OWN_CGROUP2_MOUNT
            ),
            "lab, tests",
            Verdict::GuardlabMakesIt,
        ),
    });
    rows.push(row(
        "cgroups",
        cgroup_layout(&facts.mounts, facts.cgroup2_controllers.as_deref()),
        "",
        Verdict::Note,
    ));
    rows.push(if facts.has_filesystem("overlay") {
        row(
            "overlay",
            "in the kernel".into(),
            "lab (pod root)",
            Verdict::Met,
        )
    } else {
        match facts.overlay_module {
            KernelModule::Loadable if refused => row(
                "overlay",
                "a module not loaded, and --no-install refuses to load it: `modprobe overlay`"
                    .into(),
                "lab (pod root)",
                Verdict::LabBlocked,
            ),
            KernelModule::Loadable => row(
                "overlay",
                "a module guardlab will load (modprobe overlay)".into(),
                "lab (pod root)",
                Verdict::GuardlabMakesIt,
            ),
            _ => row(
                "overlay",
                "missing: the kernel needs CONFIG_OVERLAY_FS".into(),
                "lab (pod root)",
                Verdict::LabBlocked,
            ),
        }
    });
    rows.push(match facts.veth_module {
        KernelModule::Loaded => row("veth", "loaded".into(), "lab (network)", Verdict::Met),
        KernelModule::BuiltIn => row("veth", "built in".into(), "lab (network)", Verdict::Met),
        KernelModule::Loadable => row(
            "veth",
            "a module the kernel loads on first use (through modprobe)".into(),
            "lab (network)",
            Verdict::Met,
        ),
        KernelModule::Absent => row(
            "veth",
            "missing: the kernel needs CONFIG_VETH".into(),
            "lab (network)",
            Verdict::LabBlocked,
        ),
        KernelModule::Unknown => row(
            "veth",
            "cannot tell (no module tree for this kernel); `lab up` says so if it lacks it".into(),
            "lab (network)",
            Verdict::Note,
        ),
    });
    rows
}

/// Why guardlab could not install a missing package now, if it could not.
pub fn install_blocker(installs: Installs, has_apt_get: bool) -> Option<&'static str> {
    if installs == Installs::Refused {
        Some("--no-install refuses to install it")
    } else if !has_apt_get {
        Some("this host has no apt-get")
    } else {
        None
    }
}

/// The row of one requirement.
pub fn requirement_row(
    requirement: &Requirement,
    met: bool,
    installed_by_guardlab: bool,
    blocker: Option<&str>,
    lab_needs: bool,
    needed_by: &str,
) -> Row {
    let (state, verdict) = match (met, blocker) {
        (true, _) if installed_by_guardlab => ("ok (installed by guardlab)".into(), Verdict::Met),
        (true, _) => ("ok".into(), Verdict::Met),
        (false, None) => (
            "missing: guardlab installs it when a command needs it".into(),
            Verdict::GuardlabMakesIt,
        ),
        (false, Some(why)) => (
            format!("missing ({why}): `apt-get install {}`", requirement.package),
            if lab_needs {
                Verdict::LabBlocked
            } else {
                Verdict::Missing
            },
        ),
    };
    Row {
        what: requirement.name.to_string(),
        package: requirement.package.to_string(),
        state,
        needed_by: needed_by.to_string(),
        verdict,
    }
}

/// Columns padded to their widest cell, two spaces apart, indented by two; the last column is
/// not padded.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let columns = headers.len();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, cell) in r.iter().enumerate().take(columns) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::from(" ");
        for (i, cell) in cells.iter().enumerate() {
            out.push(' ');
            out.push_str(cell);
            if i + 1 < columns {
                out.push_str(&" ".repeat(widths[i] - cell.chars().count() + 1));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(headers.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

pub fn run(no_install: bool) -> CommandResult {
    let host = Host::new(no_install);
    let facts = KernelFacts::gather()?;
    let ledger = host.ledger.entries()?;
    let kernel = kernel_rows(&facts, host.installs, &ledger);
    let blocker = install_blocker(host.installs, host.apt_get.is_some());
    let packages_of_guardlab: Vec<&str> = ledger
        .iter()
        .filter(|e| e.kind == LedgerKind::Package)
        .map(|e| e.what.as_str())
        .collect();
    let programs: Vec<Row> = catalog::ALL
        .iter()
        .map(|requirement| {
            let lab_needs = LAB_NEEDS.contains(requirement)
                || (**requirement == catalog::MODPROBE && facts.lab_loads_a_module());
            requirement_row(
                requirement,
                requirement.is_met(&host),
                packages_of_guardlab.contains(&requirement.package),
                blocker,
                lab_needs,
                requirement.needed_by,
            )
        })
        .collect();

    println!(
        "guardlab doctor: what this host has of what guardlab needs ({})\n",
        match (host.installs, blocker) {
            (Installs::Refused, _) => "--no-install: nothing may be installed or mounted",
            (_, Some(_)) => "no apt-get: guardlab cannot install what is missing",
            _ => "what is missing is installed or mounted when a command needs it, said first",
        }
    );
    println!("Kernel and host");
    print!(
        "{}",
        table(
            &["WHAT", "NEEDED BY", "STATE"],
            &kernel
                .iter()
                .map(|r| vec![r.what.clone(), r.needed_by.clone(), r.state.clone()])
                .collect::<Vec<_>>()
        )
    );
    println!("\nPrograms and files");
    print!(
        "{}",
        table(
            &["WHAT", "PACKAGE", "NEEDED BY", "STATE"],
            &programs
                .iter()
                .map(|r| {
                    vec![
                        r.what.clone(),
                        r.package.clone(),
                        r.needed_by.clone(),
                        r.state.clone(),
                    ]
                })
                .collect::<Vec<_>>()
        )
    );
    println!(
        "\nChanges guardlab made to this host ({})",
        host.ledger.path().display()
    );
    if ledger.is_empty() {
        println!("  none");
    } else {
        for entry in &ledger {
            let kind = match entry.kind {
                LedgerKind::Package => "package",
                LedgerKind::Mount => "mount",
                LedgerKind::Module => "module",
            };
            println!("  {kind} {}: {}", entry.what, entry.purpose);
        }
        println!("  `guardlab clean` removes what it can and lists the packages.");
    }

    let blocked: Vec<&str> = kernel
        .iter()
        .chain(&programs)
        .filter(|r| r.verdict == Verdict::LabBlocked)
        .map(|r| r.what.as_str())
        .collect();
    if blocked.is_empty() {
        println!("\nThe local lab can run here.");
        Ok(Outcome::Clean)
    } else {
        println!(
            "\nThe local lab cannot run here: {} (see above).",
            blocked.join(", ")
        );
        Ok(Outcome::Findings)
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn mount(fstype: &str, target: &str) -> Mount {
        Mount {
            fstype: fstype.into(),
            target: PathBuf::from(target),
        }
    }

    fn facts() -> KernelFacts {
        KernelFacts {
            euid: 0,
            btf: true,
            release: "6.18.44-fc-v1300".into(),
            mounts: vec![
                mount("cgroup", "/sys/fs/cgroup/cpu"),
                mount("cgroup", "/sys/fs/cgroup/memory"),
                mount("cgroup2", "/sys/fs/cgroup/unified"),
            ],
            filesystems: "nodev\tcgroup\nnodev\tcgroup2\nnodev\toverlay\n".into(),
            cgroup2_controllers: Some("hugetlb\n".into()),
            overlay_module: KernelModule::Unknown,
            veth_module: KernelModule::Unknown,
        }
    }

    fn verdicts(rows: &[Row]) -> Vec<(&str, Verdict)> {
        rows.iter().map(|r| (r.what.as_str(), r.verdict)).collect()
    }

    #[test]
    fn every_requirement_says_which_commands_need_it() {
        assert!(catalog::ALL.iter().all(|r| !r.needed_by.is_empty()));
        for needed in LAB_NEEDS {
            assert!(
                needed.needed_by.starts_with("lab"),
                "{} is needed by the lab",
                needed.name
            );
        }
    }

    #[test]
    fn kernel_versions_are_read_from_the_release() {
        assert_eq!(kernel_major_minor("6.18.44-fc-v1300"), Some((6, 18)));
        assert_eq!(kernel_major_minor("5.17.0+"), Some((5, 17)));
        assert_eq!(kernel_major_minor("6.1-rc3"), Some((6, 1)));
        assert_eq!(kernel_major_minor("garbage"), None);
    }

    #[test]
    fn the_cgroup_layout_is_named() {
        let f = facts();
        assert_eq!(
            cgroup_layout(&f.mounts, Some("hugetlb\n")),
            "hybrid: cgroup v2 at /sys/fs/cgroup/unified (controllers: hugetlb); v1 hierarchies: \
             cpu, memory"
        );
        assert_eq!(
            cgroup_layout(
                &[mount("cgroup2", "/sys/fs/cgroup")],
                Some("cpu memory pids")
            ),
            "unified: cgroup v2 only, at /sys/fs/cgroup (controllers: cpu memory pids)"
        );
        assert_eq!(
            cgroup_layout(&f.mounts[..2], None),
            "cgroup v1 only: cpu, memory"
        );
        assert_eq!(cgroup_layout(&[], None), "no cgroup hierarchy mounted");
    }

    #[test]
    fn a_host_with_what_the_lab_needs_blocks_nothing() {
        let rows = kernel_rows(&facts(), Installs::Allowed, &[]);
        assert_eq!(
            verdicts(&rows),
            [
                ("root", Verdict::Met),
                ("BTF", Verdict::Met),
                ("kernel", Verdict::Met),
                ("cgroup v2", Verdict::Met),
                ("cgroups", Verdict::Note),
                ("overlay", Verdict::Met),
                ("veth", Verdict::Note),
            ]
        );
        assert_eq!(rows[3].state, "mounted at /sys/fs/cgroup/unified");
    }

    #[test]
    fn a_v1_only_host_gets_cgroup_v2_mounted_unless_installs_are_refused() {
        let mut f = facts();
        f.mounts.retain(|m| m.fstype == "cgroup");
        let allowed = kernel_rows(&f, Installs::Allowed, &[]);
        assert_eq!(allowed[3].verdict, Verdict::GuardlabMakesIt);
        assert!(
            allowed[3]
                .state
                .contains("guardlab will mount it at /run/guardlab/cgroup2"),
            "{}",
            allowed[3].state
        );
        let refused = kernel_rows(&f, Installs::Refused, &[]);
        assert_eq!(refused[3].verdict, Verdict::LabBlocked);
        assert!(
            refused[3].state.contains("--no-install"),
            "{}",
            refused[3].state
        );
    }

    #[test]
    fn what_the_kernel_lacks_blocks_the_lab() {
        let mut f = facts();
        f.euid = 1000;
        f.btf = false;
        f.release = "5.10.0-30-amd64".into();
        f.filesystems = "nodev\tcgroup\n".into();
        f.mounts.clear();
        f.overlay_module = KernelModule::Absent;
        f.veth_module = KernelModule::Absent;
        let rows = kernel_rows(&f, Installs::Allowed, &[]);
        assert_eq!(
            verdicts(&rows),
            [
                ("root", Verdict::Note),
                ("BTF", Verdict::LabBlocked),
                ("kernel", Verdict::LabBlocked),
                ("cgroup v2", Verdict::LabBlocked),
                ("cgroups", Verdict::Note),
                ("overlay", Verdict::LabBlocked),
                ("veth", Verdict::LabBlocked),
            ]
        );
        assert!(rows[0].state.contains("sudo"));
        assert!(rows[1].state.contains("CONFIG_DEBUG_INFO_BTF"));
        assert!(rows[2].state.contains("5.17"));
        assert!(rows[5].state.contains("CONFIG_OVERLAY_FS"));
        assert!(rows[6].state.contains("CONFIG_VETH"));

        // A loadable overlay is loaded by guardlab, which then needs modprobe.
        f.overlay_module = KernelModule::Loadable;
        assert!(f.lab_loads_a_module());
        let rows = kernel_rows(&f, Installs::Allowed, &[]);
        assert_eq!(rows[5].verdict, Verdict::GuardlabMakesIt);
    }

    #[test]
    fn a_missing_program_is_installable_or_blocks_only_what_needs_it() {
        let r = |met, ours, blocker, lab| {
            requirement_row(&catalog::DEBOOTSTRAP, met, ours, blocker, lab, "lab")
        };
        assert_eq!(r(true, false, None, true).state, "ok");
        assert_eq!(
            r(true, true, None, true).state,
            "ok (installed by guardlab)"
        );
        assert_eq!(
            r(false, false, None, true).verdict,
            Verdict::GuardlabMakesIt
        );
        let refused = install_blocker(Installs::Refused, true);
        let row = r(false, false, refused, true);
        assert_eq!(row.verdict, Verdict::LabBlocked);
        assert_eq!(
            row.state,
            "missing (--no-install refuses to install it): `apt-get install debootstrap`"
        );
        assert_eq!(row.package, "debootstrap");
        let no_apt = install_blocker(Installs::Allowed, false);
        assert_eq!(r(false, false, no_apt, false).verdict, Verdict::Missing);
        assert_eq!(install_blocker(Installs::Allowed, true), None);
    }

    #[test]
    fn tables_line_up_their_columns() {
        let text = table(
            &["WHAT", "STATE"],
            &[
                vec!["ip".into(), "ok".into()],
                vec!["debootstrap".into(), "missing".into()],
            ],
        );
        assert_eq!(
            text,
            "  WHAT         STATE\n  ip           ok\n  debootstrap  missing\n"
        );
    }
}
