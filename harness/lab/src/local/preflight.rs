//! What the local lab needs from the host, made sure of at the start of `lab up`, before
//! anything of the lab exists and before any slow work (the image build, the wheels' download):
//! whatever is missing is installed, mounted or loaded by [`guardlab_host::Host`] after saying
//! so, or refused with an error that names it and the Debian package that brings it
//! (`--no-install`, not root, no apt-get).
//!
//! | need | why | how |
//! | --- | --- | --- |
//! | root, BTF, Linux 5.17+ | the sensor | `guardlab_sensor::preflight` (refused) |
//! | a cgroup v2 mount | the lab's cgroup, the sensor's hooks | `Host::ensure_cgroup2` (mounted) |
//! | the `pids`, `memory`, `cpu` controllers (v2 or v1) | the pod's limits | `CgroupLayout::check` (refused when nowhere) |
//! | the overlay filesystem | the pod's root | `Host::ensure_filesystem` (module loaded) |
//! | the veth driver | the lab's link | built in or autoloaded (modprobe: kmod); refused when absent |
//! | `ip` (iproute2) | the lab's network devices | `Host::ensure` |
//! | debootstrap | the image build, when the image is not cached | `Host::ensure` |
//! | python3, `python3 -m pip` | the package index's wheels, when not cached | `Host::ensure` |
//!
//! Nothing else of the host is assumed: the sysctls the lab writes are its own network
//! namespaces' (an IPv6 knob a kernel lacks is skipped), nothing is pinned in bpffs and no
//! tracefs is used.

use std::fs;
use std::path::{Path, PathBuf};

use guardlab_host::{Requirement, catalog};

use crate::local::cgroup_limits::CgroupLayout;
use crate::local::{ImageSource, LocalLab, manifest};
use crate::{LabError, Progress};

/// What the preflight found, for the rest of `up`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostReady {
    /// Where cgroup v2 is mounted (the host's, or the one guardlab just made).
    pub cgroup2: PathBuf,
}

impl LocalLab {
    /// Makes sure the host has everything this lab needs (see the module's table), in an order
    /// that refuses before any slow work: kernel facts first, then one install of every missing
    /// package. Changes nothing of the lab.
    pub fn preflight(&self, progress: &dyn Progress) -> Result<HostReady, LabError> {
        let options = self.options();
        let host = &options.host;
        if options.sensor {
            guardlab_sensor::preflight().map_err(|e| LabError::Missing {
                what: "what the lab's sensor needs".into(),
                hint: e.to_string(),
            })?;
        } else {
            LocalLab::require_root()?;
        }
        let cgroup2 = host.ensure_cgroup2(progress)?;
        // The controllers of the pod's limits, wherever this host keeps them.
        let limits = manifest::load(&options.manifests_dir)?.limits;
        CgroupLayout::of_this_process()?.check(&limits)?;
        host.ensure_filesystem(
            "overlay",
            "the pod's root filesystem is an overlay of its image",
            progress,
        )?;
        let needed = self.needed_programs()?;
        host.ensure(&needed, progress)?;
        Ok(HostReady { cgroup2 })
    }

    /// The programs this `up` will run: `ip` always, debootstrap when the image must be built,
    /// python3 and pip when the package index lacks wheels, modprobe when the kernel must load
    /// its veth module.
    pub fn needed_programs(&self) -> Result<Vec<&'static Requirement>, LabError> {
        let options = self.options();
        let mut needed: Vec<&'static Requirement> = vec![&catalog::IP];
        if veth_driver(&kernel_release())? == KernelModule::Loadable {
            // The kernel loads it on first use, through modprobe.
            needed.push(&catalog::MODPROBE);
        }
        if let ImageSource::Recipe {
            recipe_dir,
            cache_dir,
            ..
        } = &options.image
            && crate::image::cached_image(recipe_dir, cache_dir)?.is_none()
        {
            needed.push(&catalog::DEBOOTSTRAP);
        }
        if options.services && !self.missing_wheels()?.is_empty() {
            needed.extend([&catalog::PYTHON3, &catalog::PIP]);
        }
        Ok(needed)
    }
}

/// How the running kernel has a driver (a module such as `veth` or `overlay`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelModule {
    /// The module is loaded.
    Loaded,
    /// Built into the kernel.
    BuiltIn,
    /// A module the kernel loads on first use (or `modprobe` loads), through modprobe (Debian
    /// package kmod).
    Loadable,
    /// The kernel's module tree shows it has none.
    Absent,
    /// The host has no module tree to tell (`/lib/modules/<release>` is absent, as with kernels
    /// built without modules): the first use says so if it fails.
    Unknown,
}

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// How the running kernel (of release `release`) has the module `module`, from `/sys/module`
/// and the kernel's module tree.
pub fn kernel_module(module: &str, release: &str) -> KernelModule {
    let tree = Path::new("/lib/modules").join(release);
    let read = |name: &str| fs::read_to_string(tree.join(name)).ok();
    classify_module(
        module,
        Path::new("/sys/module").join(module).exists(),
        !release.is_empty() && tree.is_dir(),
        read("modules.builtin").as_deref(),
        read("modules.dep").as_deref(),
    )
}

/// The decision of [`kernel_module`] on given facts: whether `/sys/module/<module>` exists,
/// whether the kernel's module tree exists, and its `modules.builtin` and `modules.dep`.
pub fn classify_module(
    module: &str,
    loaded: bool,
    has_module_tree: bool,
    builtin: Option<&str>,
    dep: Option<&str>,
) -> KernelModule {
    if loaded {
        return KernelModule::Loaded;
    }
    if !has_module_tree {
        return KernelModule::Unknown;
    }
    // Lines name module files, `kernel/drivers/net/veth.ko` (compressed: `.ko.xz`, `.ko.zst`);
    // in modules.dep followed by `:` and the dependencies.
    let lists = |text: Option<&str>| {
        text.unwrap_or_default().lines().any(|line| {
            let file = line.split(':').next().unwrap_or_default();
            let name = file.rsplit('/').next().unwrap_or_default();
            name.contains(".ko") && name.split(".ko").next() == Some(module)
        })
    };
    if lists(builtin) {
        KernelModule::BuiltIn
    } else if lists(dep) {
        KernelModule::Loadable
    } else {
        KernelModule::Absent
    }
}

/// The veth driver as the lab needs it: an error when the kernel has none.
pub fn veth_driver(release: &str) -> Result<KernelModule, LabError> {
    match kernel_module("veth", release) {
        KernelModule::Absent => Err(LabError::Missing {
            what: "the kernel's veth driver".into(),
            hint: "the lab joins its namespaces with a veth pair, and this kernel has it neither \
                   built in nor as a module (CONFIG_VETH): use a kernel that has it"
                .into(),
        }),
        found => Ok(found),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_driver_is_found_loaded_built_in_or_as_a_module() {
        let dep = "kernel/fs/overlayfs/overlay.ko.zst:\n\
                   kernel/drivers/net/veth.ko.xz: kernel/net/core/page_pool.ko\n";
        let builtin = "kernel/drivers/net/veth.ko\nkernel/fs/ext4/ext4.ko\n";
        let c = |module, loaded, tree, b, d| classify_module(module, loaded, tree, b, d);
        assert_eq!(c("veth", true, false, None, None), KernelModule::Loaded);
        assert_eq!(c("veth", false, false, None, None), KernelModule::Unknown);
        assert_eq!(
            c("veth", false, true, Some(builtin), None),
            KernelModule::BuiltIn
        );
        assert_eq!(
            c("veth", false, true, Some(""), Some(dep)),
            KernelModule::Loadable
        );
        assert_eq!(
            c("overlay", false, true, Some(builtin), Some(dep)),
            KernelModule::Loadable
        );
        // Names that only look like it are other modules.
        let lookalike = "kernel/drivers/net/vethx.ko:\nkernel/drivers/net/myveth.ko:\n";
        assert_eq!(
            c("veth", false, true, Some(""), Some(lookalike)),
            KernelModule::Absent
        );
        assert_eq!(c("veth", false, true, None, None), KernelModule::Absent);
    }
}
