//! One thing guardlab needs from the host, how to tell whether it is there, and the Debian
//! package that brings it.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::{Host, Missing};

/// How to tell whether a requirement is met.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// An executable of this name on the search path.
    Program(&'static str),
    /// A file at this absolute path (a header, a data file).
    File(&'static str),
    /// A module the host's `python3` can import (`pip`, `ensurepip` for venvs).
    PythonModule(&'static str),
}

/// Something guardlab needs from the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Requirement {
    /// What a user would look for when it is missing: a program, a file, `python3 -m pip`.
    pub name: &'static str,
    /// The Debian package that brings it.
    pub package: &'static str,
    /// Why guardlab needs it, completing "it ...": "builds the pod's root filesystem".
    pub purpose: &'static str,
    /// Which of guardlab's commands need it: "lab", "tests", "bpf build", "benchmark".
    pub needed_by: &'static str,
    pub probe: Probe,
}

impl Requirement {
    /// Whether the host meets this requirement now.
    pub fn is_met(&self, host: &Host) -> bool {
        match self.probe {
            Probe::Program(name) => host.find_program(name).is_some(),
            Probe::File(path) => Path::new(path).exists(),
            Probe::PythonModule(module) => {
                let Some(python) = host.find_program("python3") else {
                    return false;
                };
                Command::new(python)
                    .args([
                        "-c",
                        "import importlib.util,sys; sys.exit(importlib.util.find_spec(sys.argv[1]) is None)",
                        module,
                    ])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            }
        }
    }

    pub(crate) fn as_missing(&self) -> Missing {
        Missing {
            name: self.name.to_string(),
            package: self.package.to_string(),
            purpose: self.purpose.to_string(),
        }
    }
}

/// Everything guardlab, its tests and its benchmarks need from a host, in one place (README's
/// "What the host needs" table lists the same).
pub mod catalog {
    use super::{Probe, Requirement};

    /// The local lab's image builder.
    pub const DEBOOTSTRAP: Requirement = Requirement {
        name: "debootstrap",
        package: "debootstrap",
        purpose: "builds the pod's root filesystem from Debian packages",
        needed_by: "lab (pod image), tests",
        probe: Probe::Program("debootstrap"),
    };
    /// The local lab's network plumbing.
    pub const IP: Requirement = Requirement {
        name: "ip",
        package: "iproute2",
        purpose: "makes and removes the lab's network devices",
        needed_by: "lab, tests",
        probe: Probe::Program("ip"),
    };
    /// The host's Python, for the lab's package index.
    pub const PYTHON3: Requirement = Requirement {
        name: "python3",
        package: "python3",
        purpose: "fetches the wheels of the lab's package index",
        needed_by: "lab (package index), tests",
        probe: Probe::Program("python3"),
    };
    /// `python3 -m pip`, for the lab's package index.
    pub const PIP: Requirement = Requirement {
        name: "python3 -m pip",
        package: "python3-pip",
        purpose: "fetches the wheels of the lab's package index",
        needed_by: "lab (package index), tests",
        probe: Probe::PythonModule("pip"),
    };
    /// `python3 -m venv` (Debian splits ensurepip out of python3).
    pub const VENV: Requirement = Requirement {
        name: "python3 -m venv",
        package: "python3-venv",
        purpose: "makes the Python environments of the tests (Jupyter, spyctl)",
        needed_by: "tests",
        probe: Probe::PythonModule("ensurepip"),
    };
    /// Loading kernel modules the kernel does not autoload.
    pub const MODPROBE: Requirement = Requirement {
        name: "modprobe",
        package: "kmod",
        purpose: "loads the kernel modules the lab needs (overlay, veth)",
        needed_by: "lab (to load a kernel module)",
        probe: Probe::Program("modprobe"),
    };
    /// The eBPF compiler (`sensor/bpf/build.sh` and the test that rebuilds the object).
    pub const CLANG: Requirement = Requirement {
        name: "clang",
        package: "clang",
        purpose: "compiles the sensor's eBPF programs (sensor/bpf/build.sh)",
        needed_by: "bpf build, tests",
        probe: Probe::Program("clang"),
    };
    /// Strips DWARF from the compiled eBPF object.
    pub const LLVM_STRIP: Requirement = Requirement {
        name: "llvm-strip",
        package: "llvm",
        purpose: "strips the compiled eBPF object (sensor/bpf/build.sh)",
        needed_by: "bpf build, tests",
        probe: Probe::Program("llvm-strip"),
    };
    /// libbpf's BPF-side headers.
    pub const LIBBPF_HEADERS: Requirement = Requirement {
        name: "/usr/include/bpf/bpf_helpers.h",
        package: "libbpf-dev",
        purpose: "the eBPF programs include libbpf's headers (sensor/bpf/build.sh)",
        needed_by: "bpf build, tests",
        probe: Probe::File("/usr/include/bpf/bpf_helpers.h"),
    };
    /// bpftool: lists loaded programs and maps (tests), regenerates vmlinux.h.
    pub const BPFTOOL: Requirement = Requirement {
        name: "bpftool",
        package: "bpftool",
        purpose: "lists the kernel's eBPF programs and regenerates vmlinux.h",
        needed_by: "tests, bpf build (vmlinux.h)",
        probe: Probe::Program("bpftool"),
    };
    /// `unshare`, for the tests that run a command in a mount namespace of its own.
    pub const UNSHARE: Requirement = Requirement {
        name: "unshare",
        package: "util-linux",
        purpose: "runs the fresh-host checks in a mount namespace of their own",
        needed_by: "tests",
        probe: Probe::Program("unshare"),
    };
    /// The services tests download from the lab's web hosts as the pod's programs do.
    pub const CURL: Requirement = Requirement {
        name: "curl",
        package: "curl",
        purpose: "downloads from the lab's web hosts in the services tests, as the pod does",
        needed_by: "tests",
        probe: Probe::Program("curl"),
    };
    pub const WGET: Requirement = Requirement {
        name: "wget",
        package: "wget",
        purpose: "downloads from the lab's web hosts in the services tests, as the pod does",
        needed_by: "tests",
        probe: Probe::Program("wget"),
    };
    /// The sensor benchmark's comparison points.
    pub const AUDITCTL: Requirement = Requirement {
        name: "auditctl",
        package: "auditd",
        purpose: "the sensor benchmark compares guardlab's sensor with auditd",
        needed_by: "benchmark",
        probe: Probe::Program("auditctl"),
    };
    pub const BPFTRACE: Requirement = Requirement {
        name: "bpftrace",
        package: "bpftrace",
        purpose: "the sensor benchmark compares guardlab's sensor with bpftrace",
        needed_by: "benchmark",
        probe: Probe::Program("bpftrace"),
    };

    /// `make`: builds AFL++ for the fuzz targets (`cargo afl config --build`).
    pub const MAKE: Requirement = Requirement {
        name: "make",
        package: "make",
        purpose: "builds AFL++ for the fuzz targets (fuzz-run)",
        needed_by: "fuzzing",
        probe: Probe::Program("make"),
    };
    /// `llvm-config`: AFL++ finds clang and LLVM through it to build its runtime.
    pub const LLVM_CONFIG: Requirement = Requirement {
        name: "llvm-config",
        package: "llvm",
        purpose: "AFL++ finds clang and LLVM through it to build its runtime (fuzz-run)",
        needed_by: "fuzzing",
        probe: Probe::Program("llvm-config"),
    };

    /// The browser the web console's tests drive (headless; Debian's build, not a downloaded one).
    pub const CHROMIUM: Requirement = Requirement {
        name: "chromium",
        package: "chromium",
        purpose: "renders the web console in the browser tests",
        needed_by: "tests (browser)",
        probe: Probe::Program("chromium"),
    };
    /// The WebDriver server of Debian's chromium (same version as the browser).
    pub const CHROMEDRIVER: Requirement = Requirement {
        name: "chromedriver",
        package: "chromium-driver",
        purpose: "lets the browser tests drive chromium through WebDriver",
        needed_by: "tests (browser)",
        probe: Probe::Program("chromedriver"),
    };
    /// A font for the browser's text: chromium depends on fontconfig but on no font, and
    /// without one the labels of the console's graphs render as nothing (or boxes) in the tests'
    /// screenshots.
    pub const FONTS: Requirement = Requirement {
        name: "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        package: "fonts-dejavu-core",
        purpose: "renders the text of the web console's pages in the browser tests",
        needed_by: "tests (browser)",
        probe: Probe::File("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),
    };

    /// What the browser tests need (`guardlab-browser-test-support`).
    pub const BROWSER_TEST: [&Requirement; 3] = [&CHROMIUM, &CHROMEDRIVER, &FONTS];

    /// What `fuzz-run` needs to build AFL++ (clang builds its runtime object).
    pub const FUZZ_BUILD: [&Requirement; 3] = [&MAKE, &CLANG, &LLVM_CONFIG];

    /// What `sensor/bpf/build.sh` needs.
    pub const BPF_BUILD: [&Requirement; 3] = [&CLANG, &LLVM_STRIP, &LIBBPF_HEADERS];

    /// Every requirement, for `guardlab doctor`.
    pub const ALL: [&Requirement; 20] = [
        &DEBOOTSTRAP,
        &IP,
        &PYTHON3,
        &PIP,
        &VENV,
        &MODPROBE,
        &CLANG,
        &LLVM_STRIP,
        &LIBBPF_HEADERS,
        &BPFTOOL,
        &UNSHARE,
        &CURL,
        &WGET,
        &AUDITCTL,
        &BPFTRACE,
        &MAKE,
        &LLVM_CONFIG,
        &CHROMIUM,
        &CHROMEDRIVER,
        &FONTS,
    ];
}
