//! guardlab's eBPF sensor, user-space side.
//!
//! The kernel side (`bpf/guardlab.bpf.c`, compiled into the committed `bpf/guardlab.bpf.o`)
//! reports process and network activity of *watched* cgroups into a ring buffer and carries the
//! enforcement hooks. [`Sensor`] loads it, attaches it, reads the ring buffer with tokio's
//! `AsyncFd`, and turns each record into a [`guardlab_events::Event`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), guardlab_sensor::SensorError> {
//! use guardlab_sensor::{ContainerInfo, Sensor, SensorConfig};
//! let mut sensor = Sensor::start(SensorConfig::default())?;
//! let mut events = sensor.events()?;
//! let id = sensor.watch("/sys/fs/cgroup/unified/mypod".as_ref(), ContainerInfo::default())?;
//! while let Some(event) = events.recv().await {
//!     println!("{event:?}");
//! }
//! sensor.unwatch(id)?;
//! let stats = sensor.stop().await?;
//! println!("{} events dropped", stats.dropped);
//! # Ok(()) }
//! ```
//!
//! Clocks: the kernel stamps records with CLOCK_BOOTTIME (`bpf_ktime_get_boot_ns`), which the
//! decoder converts to nanoseconds since the Unix epoch with an offset measured once at start.
//! Process keys carry the kernel's `task_struct::start_boottime` of the thread group leader,
//! CLOCK_BOOTTIME too (the clock of `starttime` in `/proc/PID/stat`).
//!
//! Modules: `loader` (the [`Sensor`] handle: load, attach, watch, stop), `allowlist` (the two
//! enforcement allow-lists), `reader` (the ring buffer task), `decoder` (records to events),
//! `raw` (the C structs' mirrors).
#![allow(unsafe_code)] // geteuid(2) in the preflight

mod allowlist;
pub mod cgroup;
mod decoder;
mod dns;
mod kernel_policy;
mod loader;
mod raw;
mod reader;
pub mod serve_connection;
mod task_nodes;
mod users;

use std::path::{Path, PathBuf};
use std::time::Duration;

use aya::util::KernelVersion;

pub use guardlab_events as events;
pub use guardlab_events::{ContainerInfo, Event, EventBody};
pub use ipnet::IpNet;

pub use allowlist::AllowedDestination;
pub use kernel_policy::{AllowedDnsName, ExecRule, KernelPolicy};
pub use loader::{Sensor, SensorStats};
pub use task_nodes::{Placement, RunningProcess, place};

/// The oldest kernel the object loads on: bpf_loop (5.17) is the newest feature it uses.
pub const MIN_KERNEL: (u32, u32) = (5, 17);

/// Where the running kernel exposes its BTF.
pub const BTF_PATH: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum SensorError {
    #[error(
        "the sensor needs root to load eBPF programs (effective uid is {euid}); run it with sudo"
    )]
    NotRoot { euid: u32 },
    #[error(
        "this kernel has no BTF: {} is missing (the sensor needs a kernel built with CONFIG_DEBUG_INFO_BTF=y)",
        path.display()
    )]
    NoBtf { path: PathBuf },
    #[error("Linux {found} is too old: the sensor needs Linux {}.{} or newer (bpf_loop, ring buffers, BTF tracepoints)", MIN_KERNEL.0, MIN_KERNEL.1)]
    KernelTooOld { found: String },
    #[error(
        "Sensor::start must be called from within a Tokio runtime (it spawns the ring buffer reader)"
    )]
    NoRuntime,
    #[error(
        "ring_buffer_bytes = {0}: it must be a power of two and a multiple of the page size (4096)"
    )]
    BadRingBufferSize(u32),
    #[error("reading the kernel's BTF: {0}")]
    Btf(#[source] aya::BtfError),
    #[error("loading the eBPF object: {0}")]
    Load(#[source] aya::EbpfError),
    #[error(
        "the eBPF object has no program or map named {name}: bpf/guardlab.bpf.o and the loader disagree (rebuild it with sensor/bpf/build.sh)"
    )]
    NotInObject { name: &'static str },
    #[error("eBPF program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("registering the ring buffer's fd with the Tokio reactor: {0}")]
    RingBuffer(#[source] std::io::Error),
    #[error("no cgroup v2 hierarchy is mounted (looked in /proc/self/mountinfo)")]
    NoCgroup2,
    #[error("{path}: not a cgroup v2 directory")]
    NotCgroup2 { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cgroup {0} is not watched")]
    NotWatched(u64),
    #[error("cgroup {id} ({path}) is already watched")]
    AlreadyWatched { id: u64, path: PathBuf },
    #[error("exec allow-list entry {path:?}: {reason}")]
    BadExecPath { path: String, reason: &'static str },
    #[error(
        "connect allow-list: network {net} needs {count} port ranges after merging, at most {} fit",
        raw::PORT_RANGES
    )]
    TooManyPortRanges { net: IpNet, count: usize },
    #[error("kernel policy: exe pattern {pattern:?}: {reason}")]
    BadExecPattern {
        pattern: String,
        reason: &'static str,
    },
    #[error("kernel policy: DNS name {name:?}: {reason}")]
    BadDnsName { name: String, reason: String },
    #[error("the event stream was already taken (Sensor::events can be called once)")]
    EventsTaken,
}

impl SensorError {
    /// For `map_err`: an io error at `path`.
    pub(crate) fn io_at(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> SensorError {
        let path = path.into();
        move |source| SensorError::Io { path, source }
    }
}

/// How to run the sensor.
#[derive(Clone, Debug)]
pub struct SensorConfig {
    /// Size of the kernel ring buffer in bytes: a power of two, multiple of the page size.
    /// An exec record is 608 bytes plus its argv (at most 1 KiB), a DNS record 4144 bytes,
    /// the others 48 to 80 bytes.
    pub ring_buffer_bytes: u32,
    /// Events buffered between the reader and the consumer of [`Sensor::events`]. When it is
    /// full the reader waits, the ring buffer fills, and the kernel counts drops (reported as
    /// `lost` events): a slow consumer never loses events silently.
    pub channel_capacity: usize,
    /// How often the per-CPU drop counters are read (they are also read at stop).
    pub drop_poll_interval: Duration,
    /// The kernel wakes the reader only once an eighth of the ring buffer is full (one wakeup
    /// per record would cost a context switch per exec). Below that, this timer is what
    /// delivers records: it bounds how late a lone event arrives, and costs one wake-up per
    /// interval while idle.
    pub drain_interval: Duration,
    /// Which `sched_process_exit` program reports exits.
    pub exit_hook: ExitHook,
}

/// How the kernel side finds the last thread of an exiting process (the exit to report).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ExitHook {
    /// `GroupDead` where the kernel's tracepoint passes `group_dead`, else `LiveCount`.
    #[default]
    Auto,
    /// The tracepoint's `group_dead` argument (newer kernels): exactly one thread has it.
    GroupDead,
    /// `signal->live` is 0, plus a map that lets only the first thread that sees it report
    /// (for kernels whose tracepoint has no `group_dead`).
    LiveCount,
}

impl Default for SensorConfig {
    fn default() -> Self {
        SensorConfig {
            ring_buffer_bytes: 8 << 20,
            channel_capacity: 65536,
            drop_poll_interval: Duration::from_millis(200),
            drain_interval: Duration::from_millis(10),
            exit_hook: ExitHook::Auto,
        }
    }
}

/// Checks that this system can run the sensor (root, BTF, kernel version), with an error that
/// says what to do. [`Sensor::start`] calls it first.
pub fn preflight() -> Result<(), SensorError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    check_requirements(
        euid,
        Path::new(BTF_PATH),
        KernelVersion::current().map_err(|e| e.to_string()),
    )
}

/// [`preflight`] on given facts: the effective uid, where the kernel's BTF should be, and the
/// kernel version (or why it could not be read).
pub fn check_requirements(
    euid: u32,
    btf: &Path,
    kernel: Result<KernelVersion, String>,
) -> Result<(), SensorError> {
    if euid != 0 {
        return Err(SensorError::NotRoot { euid });
    }
    if !btf.exists() {
        return Err(SensorError::NoBtf { path: btf.into() });
    }
    let version = kernel.map_err(|e| SensorError::KernelTooOld {
        found: format!("(unknown: {e})"),
    })?;
    if version < KernelVersion::new(MIN_KERNEL.0 as u8, MIN_KERNEL.1 as u8, 0) {
        return Err(SensorError::KernelTooOld {
            found: version.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preflight_names_what_is_missing() {
        let here = Path::new(env!("CARGO_MANIFEST_DIR"));
        let new = KernelVersion::new(6, 1, 0);
        assert!(check_requirements(0, here, Ok(new)).is_ok());

        let err = check_requirements(1000, here, Ok(new)).unwrap_err();
        assert!(
            matches!(err, SensorError::NotRoot { euid: 1000 }) && err.to_string().contains("sudo"),
            "{err}"
        );

        let missing = Path::new("/nonexistent/btf/vmlinux");
        let err = check_requirements(0, missing, Ok(new)).unwrap_err();
        assert!(matches!(err, SensorError::NoBtf { .. }), "{err}");
        assert!(
            err.to_string().contains("/nonexistent/btf/vmlinux")
                && err.to_string().contains("CONFIG_DEBUG_INFO_BTF"),
            "{err}"
        );

        let err = check_requirements(0, here, Ok(KernelVersion::new(5, 10, 200))).unwrap_err();
        assert!(matches!(err, SensorError::KernelTooOld { .. }), "{err}");
        assert!(
            err.to_string().contains("Linux 5.10.200 is too old")
                && err.to_string().contains("5.17 or newer"),
            "{err}"
        );
        // The oldest supported release passes.
        assert!(check_requirements(0, here, Ok(KernelVersion::new(5, 17, 0))).is_ok());

        let err = check_requirements(0, here, Err("no uname".into())).unwrap_err();
        assert!(err.to_string().contains("unknown: no uname"), "{err}");
    }
}
