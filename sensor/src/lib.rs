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
//! sensor.stop().await?;
//! # Ok(()) }
//! ```
//!
//! Process keys: the kernel's `task_struct::start_time` of the thread group leader, in
//! nanoseconds of CLOCK_MONOTONIC. Event times are CLOCK_MONOTONIC converted to the Unix epoch
//! with an offset measured once at start.

pub mod cgroup;
mod dns;
mod raw;
mod users;

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::net::{IpAddr, Ipv6Addr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aya::maps::lpm_trie::Key as LpmKey;
use aya::maps::{HashMap as BpfHashMap, LpmTrie, MapData, PerCpuArray, RingBuf};
use aya::programs::cgroup_skb::CgroupSkbLinkId;
use aya::programs::cgroup_sock_addr::CgroupSockAddrLinkId;
use aya::programs::{
    BtfTracePoint, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, TracePoint,
};
use aya::util::KernelVersion;
use aya::{Btf, Ebpf, EbpfLoader};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub use guardlab_events as events;
pub use guardlab_events::{ContainerInfo, Event, EventBody};
pub use ipnet::IpNet;

use guardlab_events::{
    Connection, DnsAnswer, Listen, Lost, ProcessExec, ProcessExit, ProcessFork, ProcessKey,
    Protocol,
};
use raw::*;

/// The compiled kernel side, built by `bpf/build.sh` from `bpf/guardlab.bpf.c`.
static OBJECT: &[u8] = aya::include_bytes_aligned!("../bpf/guardlab.bpf.o");

/// The oldest kernel the object loads on: bpf_loop (5.17) is the newest feature it uses.
pub const MIN_KERNEL: (u32, u32) = (5, 17);

/// Programs that attach per watched cgroup (connect/sendmsg).
const SOCK_ADDR_PROGRAMS: [&str; 4] = ["gl_connect4", "gl_connect6", "gl_sendmsg4", "gl_sendmsg6"];
const DNS_PROGRAM: &str = "gl_dns_ingress";
/// (program, tracepoint) pairs attached once, host-wide; they filter on `watched` in the kernel.
const BTF_TRACEPOINTS: [(&str, &str); 3] = [
    ("gl_exec", "sched_process_exec"),
    ("gl_fork", "sched_process_fork"),
    ("gl_exit", "sched_process_exit"),
];
const SOCK_STATE_PROGRAM: &str = "gl_sock_state";

#[derive(Debug, thiserror::Error)]
pub enum SensorError {
    #[error(
        "the sensor needs root to load eBPF programs (effective uid is {euid}); run it with sudo"
    )]
    NotRoot { euid: u32 },
    #[error(
        "this kernel has no BTF: /sys/kernel/btf/vmlinux is missing (the sensor needs a kernel built with CONFIG_DEBUG_INFO_BTF=y)"
    )]
    NoBtf,
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
        PORT_RANGES
    )]
    TooManyPortRanges { net: IpNet, count: usize },
    #[error("the event stream was already taken (Sensor::events can be called once)")]
    EventsTaken,
}

/// How to run the sensor.
#[derive(Clone, Debug)]
pub struct SensorConfig {
    /// Size of the kernel ring buffer in bytes: a power of two, multiple of the page size.
    /// An exec record is 608 bytes plus its argv (at most 1 KiB), others 48 to 1072 bytes.
    pub ring_buffer_bytes: u32,
    /// Events buffered between the reader and the consumer of [`Sensor::events`]. When it is
    /// full the reader waits, the ring buffer fills, and the kernel counts drops (reported as
    /// `lost` events): a slow consumer never loses events silently.
    pub channel_capacity: usize,
    /// How often the per-CPU drop counters are read (they are also read at stop).
    pub drop_poll_interval: Duration,
    /// The kernel wakes the reader only once an eighth of the ring buffer is full (one wakeup
    /// per record would cost a context switch per exec); in between, the reader drains it
    /// this often. It bounds how late a lone event arrives.
    pub drain_interval: Duration,
}

impl Default for SensorConfig {
    fn default() -> Self {
        SensorConfig {
            ring_buffer_bytes: 8 << 20,
            channel_capacity: 65536,
            drop_poll_interval: Duration::from_millis(200),
            drain_interval: Duration::from_millis(10),
        }
    }
}

/// One allowed destination for [`Sensor::set_connect_allowlist`]: a network and a port range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowedDestination {
    pub net: IpNet,
    pub ports: RangeInclusive<u16>,
}

impl AllowedDestination {
    pub fn new(net: IpNet, ports: RangeInclusive<u16>) -> Self {
        AllowedDestination { net, ports }
    }

    /// Every port of `net`.
    pub fn any_port(net: IpNet) -> Self {
        AllowedDestination {
            net,
            ports: 0..=u16::MAX,
        }
    }
}

#[derive(Debug)]
enum CgroupLink {
    SockAddr(&'static str, CgroupSockAddrLinkId),
    Skb(CgroupSkbLinkId),
}

#[derive(Debug)]
struct Watch {
    path: PathBuf,
    links: Vec<CgroupLink>,
    flags: u32,
    exec_keys: BTreeSet<[u8; PATH_MAX_LEN]>,
    net_keys: Vec<(u32, NetAllowKey)>,
}

/// Messages from the [`Sensor`] handle to its reader task.
enum Control {
    Watch {
        id: u64,
        path: PathBuf,
        info: ContainerInfo,
    },
}

/// The loaded, attached sensor. Dropping it detaches and unloads everything; [`Sensor::stop`]
/// does the same but first delivers what is still in the ring buffer.
pub struct Sensor {
    bpf: Option<Ebpf>,
    watches: HashMap<u64, Watch>,
    control: mpsc::UnboundedSender<Control>,
    events: Option<mpsc::Receiver<Event>>,
    drops: Arc<Mutex<PerCpuArray<MapData, u64>>>,
    reader: Option<JoinHandle<()>>,
    stop_reader: Option<oneshot::Sender<()>>,
    program_ids: Vec<u32>,
}

impl std::fmt::Debug for Sensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sensor")
            .field("watched", &self.watches.keys().collect::<Vec<_>>())
            .field("program_ids", &self.program_ids)
            .finish_non_exhaustive()
    }
}

/// Checks what loading needs, with an error that says what to do.
pub fn preflight() -> Result<(), SensorError> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Err(SensorError::NotRoot { euid });
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err(SensorError::NoBtf);
    }
    let version = KernelVersion::current().map_err(|e| SensorError::KernelTooOld {
        found: format!("(unknown: {e})"),
    })?;
    if version < KernelVersion::new(MIN_KERNEL.0 as u8, MIN_KERNEL.1 as u8, 0) {
        return Err(SensorError::KernelTooOld {
            found: version.to_string(),
        });
    }
    Ok(())
}

fn program_err(name: &'static str) -> impl FnOnce(aya::programs::ProgramError) -> SensorError {
    move |source| SensorError::Program { name, source }
}

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> SensorError {
    move |source| SensorError::Map { name, source }
}

fn missing_program(name: &'static str) -> SensorError {
    SensorError::Program {
        name,
        source: aya::programs::ProgramError::UnexpectedProgramType,
    }
}

fn missing_map(name: &'static str) -> SensorError {
    SensorError::Map {
        name,
        source: aya::maps::MapError::InvalidName { name: name.into() },
    }
}

impl Sensor {
    /// Loads the programs and attaches the host-wide ones (exec, fork, exit, socket state).
    /// Nothing is reported until a cgroup is [watched](Sensor::watch). Must be called from
    /// within a Tokio runtime.
    pub fn start(config: SensorConfig) -> Result<Sensor, SensorError> {
        preflight()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| SensorError::NoRuntime)?;
        let size = config.ring_buffer_bytes;
        if !size.is_power_of_two() || size < 4096 {
            return Err(SensorError::BadRingBufferSize(size));
        }
        let btf = Btf::from_sys_fs().map_err(SensorError::Btf)?;
        let mut bpf = EbpfLoader::new()
            .btf(Some(&btf))
            .map_max_entries("events", size)
            .load(OBJECT)
            .map_err(SensorError::Load)?;

        for (name, tracepoint) in BTF_TRACEPOINTS {
            let prog: &mut BtfTracePoint = bpf
                .program_mut(name)
                .ok_or_else(|| missing_program(name))?
                .try_into()
                .map_err(program_err(name))?;
            prog.load(tracepoint, &btf).map_err(program_err(name))?;
            prog.attach().map_err(program_err(name))?;
        }
        let prog: &mut TracePoint = bpf
            .program_mut(SOCK_STATE_PROGRAM)
            .ok_or_else(|| missing_program(SOCK_STATE_PROGRAM))?
            .try_into()
            .map_err(program_err(SOCK_STATE_PROGRAM))?;
        prog.load().map_err(program_err(SOCK_STATE_PROGRAM))?;
        prog.attach("sock", "inet_sock_set_state")
            .map_err(program_err(SOCK_STATE_PROGRAM))?;
        for name in SOCK_ADDR_PROGRAMS {
            let prog: &mut CgroupSockAddr = bpf
                .program_mut(name)
                .ok_or_else(|| missing_program(name))?
                .try_into()
                .map_err(program_err(name))?;
            prog.load().map_err(program_err(name))?;
        }
        let prog: &mut CgroupSkb = bpf
            .program_mut(DNS_PROGRAM)
            .ok_or_else(|| missing_program(DNS_PROGRAM))?
            .try_into()
            .map_err(program_err(DNS_PROGRAM))?;
        prog.load().map_err(program_err(DNS_PROGRAM))?;

        let mut program_ids = Vec::new();
        for (_, prog) in bpf.programs() {
            if let Ok(info) = prog.info() {
                program_ids.push(info.id());
            }
        }
        program_ids.sort_unstable();

        let ring = RingBuf::try_from(
            bpf.take_map("events")
                .ok_or_else(|| missing_map("events"))?,
        )
        .map_err(map_err("events"))?;
        let drops: PerCpuArray<MapData, u64> =
            PerCpuArray::try_from(bpf.take_map("drops").ok_or_else(|| missing_map("drops"))?)
                .map_err(map_err("drops"))?;
        let drops = Arc::new(Mutex::new(drops));

        let _enter = runtime.enter();
        // SAFETY: the RingBuf owns its map's fd for as long as it lives, and as_raw_fd always
        // returns that fd; the AsyncFd owns the RingBuf.
        let ring =
            unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }.map_err(|e| {
                SensorError::Io {
                    path: "ring buffer".into(),
                    source: e.into(),
                }
            })?;
        let (tx, rx) = mpsc::channel(config.channel_capacity.max(1));
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = oneshot::channel();
        let reader = Reader {
            ring,
            drops: drops.clone(),
            last_drops: Vec::new(),
            tx,
            control: control_rx,
            decoder: Decoder::new(),
        };
        let handle =
            runtime.spawn(reader.run(config.drop_poll_interval, config.drain_interval, stop_rx));

        Ok(Sensor {
            bpf: Some(bpf),
            watches: HashMap::new(),
            control: control_tx,
            events: Some(rx),
            drops,
            reader: Some(handle),
            stop_reader: Some(stop_tx),
            program_ids,
        })
    }

    /// The event stream. Can be taken once.
    pub fn events(&mut self) -> Result<mpsc::Receiver<Event>, SensorError> {
        self.events.take().ok_or(SensorError::EventsTaken)
    }

    /// The kernel ids of the loaded programs (for diagnostics, and to check they are gone).
    pub fn program_ids(&self) -> &[u32] {
        &self.program_ids
    }

    /// Cgroup ids being watched.
    pub fn watched(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.watches.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Events the kernel could not put in the ring buffer so far, summed over CPUs.
    pub fn drops(&self) -> u64 {
        let drops = self.drops.lock().unwrap_or_else(|e| e.into_inner());
        drops.get(&0, 0).map(|v| v.iter().sum()).unwrap_or(0)
    }

    fn bpf(&mut self) -> &mut Ebpf {
        self.bpf
            .as_mut()
            .expect("the eBPF object lives as long as the Sensor")
    }

    /// Starts reporting the processes of the cgroup v2 directory `cgroup_path`: sends a
    /// `container` event for it (with `info.cgroup_id` set), adds it to the kernel's watch
    /// map and attaches the per-cgroup programs (connect, sendmsg, DNS) to it. Processes
    /// forked inside it are in it too. Returns the cgroup id.
    ///
    /// Only processes whose own cgroup is this one are reported, not those of sub-cgroups.
    pub fn watch(
        &mut self,
        cgroup_path: &Path,
        mut info: ContainerInfo,
    ) -> Result<u64, SensorError> {
        let id = cgroup::cgroup_id(cgroup_path)?;
        if let Some(w) = self.watches.get(&id) {
            return Err(SensorError::AlreadyWatched {
                id,
                path: w.path.clone(),
            });
        }
        let dir = File::open(cgroup_path).map_err(|source| SensorError::Io {
            path: cgroup_path.into(),
            source,
        })?;
        info.cgroup_id = id;
        let mut watch = Watch {
            path: cgroup_path.into(),
            links: Vec::new(),
            flags: 0,
            exec_keys: BTreeSet::new(),
            net_keys: Vec::new(),
        };
        // The per-cgroup programs report nothing until the id is in `watched`, so: attach,
        // queue the container event, then enable. The container event thus precedes every
        // other event of the cgroup, and a failed attach leaves no trace.
        if let Err(e) = self.attach_cgroup(&dir, &mut watch) {
            self.detach_cgroup(id, &mut watch);
            return Err(e);
        }
        let _ = self.control.send(Control::Watch {
            id,
            path: cgroup_path.into(),
            info,
        });
        if let Err(e) = self.set_watch_flags(id, 0) {
            self.detach_cgroup(id, &mut watch);
            return Err(e);
        }
        self.watches.insert(id, watch);
        Ok(id)
    }

    fn attach_cgroup(&mut self, dir: &File, watch: &mut Watch) -> Result<(), SensorError> {
        let bpf = self.bpf();
        for name in SOCK_ADDR_PROGRAMS {
            let prog: &mut CgroupSockAddr = bpf
                .program_mut(name)
                .ok_or_else(|| missing_program(name))?
                .try_into()
                .map_err(program_err(name))?;
            // aya attaches with a bpf_link here (kernel >= 5.7). Links always coexist with other
            // programs on the cgroup (a runtime's, another sensor's), and the kernel refuses
            // attach flags on them: hence "Single", which passes none.
            let link = prog
                .attach(dir, CgroupAttachMode::Single)
                .map_err(program_err(name))?;
            watch.links.push(CgroupLink::SockAddr(name, link));
        }
        let prog: &mut CgroupSkb = bpf
            .program_mut(DNS_PROGRAM)
            .ok_or_else(|| missing_program(DNS_PROGRAM))?
            .try_into()
            .map_err(program_err(DNS_PROGRAM))?;
        let link = prog
            .attach(dir, CgroupSkbAttachType::Ingress, CgroupAttachMode::Single)
            .map_err(program_err(DNS_PROGRAM))?;
        watch.links.push(CgroupLink::Skb(link));
        Ok(())
    }

    /// Best effort: undo whatever part of `watch` exists.
    fn detach_cgroup(&mut self, id: u64, watch: &mut Watch) {
        let bpf = self.bpf();
        for link in watch.links.drain(..) {
            match link {
                CgroupLink::SockAddr(name, link) => {
                    if let Some(Ok(prog)) =
                        bpf.program_mut(name).map(<&mut CgroupSockAddr>::try_from)
                    {
                        let _ = prog.detach(link);
                    }
                }
                CgroupLink::Skb(link) => {
                    if let Some(Ok(prog)) =
                        bpf.program_mut(DNS_PROGRAM).map(<&mut CgroupSkb>::try_from)
                    {
                        let _ = prog.detach(link);
                    }
                }
            }
        }
        if let Some(Ok(mut watched)) = bpf
            .map_mut("watched")
            .map(BpfHashMap::<_, u64, u32>::try_from)
        {
            let _ = watched.remove(&id);
        }
        if let Some(Ok(mut allow)) = bpf
            .map_mut("exec_allow")
            .map(BpfHashMap::<_, ExecAllowKey, u8>::try_from)
        {
            for path in std::mem::take(&mut watch.exec_keys) {
                let _ = allow.remove(&ExecAllowKey {
                    cgroup_id: id,
                    path,
                });
            }
        }
        if let Some(Ok(mut allow)) = bpf
            .map_mut("net_allow")
            .map(LpmTrie::<_, NetAllowKey, NetAllowVal>::try_from)
        {
            for (prefix, key) in std::mem::take(&mut watch.net_keys) {
                let _ = allow.remove(&LpmKey::new(prefix, key));
            }
        }
    }

    /// Stops reporting a cgroup and drops its allow-lists.
    pub fn unwatch(&mut self, cgroup_id: u64) -> Result<(), SensorError> {
        let mut watch = self
            .watches
            .remove(&cgroup_id)
            .ok_or(SensorError::NotWatched(cgroup_id))?;
        self.detach_cgroup(cgroup_id, &mut watch);
        Ok(())
    }

    fn set_watch_flags(&mut self, cgroup_id: u64, flags: u32) -> Result<(), SensorError> {
        let mut watched: BpfHashMap<_, u64, u32> = BpfHashMap::try_from(
            self.bpf()
                .map_mut("watched")
                .ok_or_else(|| missing_map("watched"))?,
        )
        .map_err(map_err("watched"))?;
        watched
            .insert(cgroup_id, flags, 0)
            .map_err(map_err("watched"))?;
        if let Some(w) = self.watches.get_mut(&cgroup_id) {
            w.flags = flags;
        }
        Ok(())
    }

    /// Turns kill-at-exec on for a watched cgroup with the executables it may run (`Some`), or
    /// off (`None`). Paths are compared with the resolved executable path the process sees
    /// (the `exe` of exec events: symlinks resolved, e.g. `/usr/bin/dash` for `/bin/sh` on a
    /// merged-/usr system), exactly. Any other exec in the cgroup is killed with SIGKILL before
    /// its first instruction. The list is replaced without a window where an allowed
    /// executable is refused.
    pub fn set_exec_allowlist(
        &mut self,
        cgroup_id: u64,
        paths: Option<Vec<String>>,
    ) -> Result<(), SensorError> {
        let flags = self
            .watches
            .get(&cgroup_id)
            .ok_or(SensorError::NotWatched(cgroup_id))?
            .flags;
        let mut wanted = BTreeSet::new();
        for p in paths.iter().flatten() {
            wanted.insert(exec_path_key(p)?);
        }
        let enforce = paths.is_some();
        if !enforce {
            self.set_watch_flags(cgroup_id, flags & !WATCH_EXEC_ENFORCE)?;
        }
        let old = self
            .watches
            .get(&cgroup_id)
            .map(|w| w.exec_keys.clone())
            .unwrap_or_default();
        {
            let mut allow: BpfHashMap<_, ExecAllowKey, u8> = BpfHashMap::try_from(
                self.bpf()
                    .map_mut("exec_allow")
                    .ok_or_else(|| missing_map("exec_allow"))?,
            )
            .map_err(map_err("exec_allow"))?;
            for path in wanted.difference(&old) {
                allow
                    .insert(
                        ExecAllowKey {
                            cgroup_id,
                            path: *path,
                        },
                        1,
                        0,
                    )
                    .map_err(map_err("exec_allow"))?;
            }
            for path in old.difference(&wanted) {
                let _ = allow.remove(&ExecAllowKey {
                    cgroup_id,
                    path: *path,
                });
            }
        }
        if let Some(w) = self.watches.get_mut(&cgroup_id) {
            w.exec_keys = wanted;
        }
        if enforce {
            self.set_watch_flags(cgroup_id, flags | WATCH_EXEC_ENFORCE)?;
        }
        Ok(())
    }

    /// Turns destination enforcement on for a watched cgroup (`Some`) or off (`None`). With it
    /// on, TCP connects and UDP connects/sends to anything but loopback (127.0.0.0/8, ::1) and
    /// the listed destinations fail with EPERM, and are reported with `refused: true`.
    pub fn set_connect_allowlist(
        &mut self,
        cgroup_id: u64,
        destinations: Option<Vec<AllowedDestination>>,
    ) -> Result<(), SensorError> {
        let flags = self
            .watches
            .get(&cgroup_id)
            .ok_or(SensorError::NotWatched(cgroup_id))?
            .flags;
        let entries = compile_destinations(destinations.as_deref().unwrap_or(&[]))?;
        let enforce = destinations.is_some();
        if !enforce {
            self.set_watch_flags(cgroup_id, flags & !WATCH_CONNECT_ENFORCE)?;
        }
        let old = self
            .watches
            .get(&cgroup_id)
            .map(|w| w.net_keys.clone())
            .unwrap_or_default();
        let mut new_keys = Vec::new();
        {
            let mut allow: LpmTrie<_, NetAllowKey, NetAllowVal> = LpmTrie::try_from(
                self.bpf()
                    .map_mut("net_allow")
                    .ok_or_else(|| missing_map("net_allow"))?,
            )
            .map_err(map_err("net_allow"))?;
            for (addr, prefix, value) in &entries {
                let key = NetAllowKey {
                    cgroup_id: cgroup_id.to_ne_bytes(),
                    addr: *addr,
                };
                let prefix = 64 + u32::from(*prefix);
                allow
                    .insert(&LpmKey::new(prefix, key), *value, 0)
                    .map_err(map_err("net_allow"))?;
                new_keys.push((prefix, key));
            }
            for (prefix, key) in old {
                if !new_keys.contains(&(prefix, key)) {
                    let _ = allow.remove(&LpmKey::new(prefix, key));
                }
            }
        }
        if let Some(w) = self.watches.get_mut(&cgroup_id) {
            w.net_keys = new_keys;
        }
        if enforce {
            self.set_watch_flags(cgroup_id, flags | WATCH_CONNECT_ENFORCE)?;
        }
        Ok(())
    }

    /// Detaches and unloads every program, delivers what was still in the ring buffer and a
    /// final `lost` event when the kernel dropped any, then ends the event stream. Returns the
    /// total number of dropped events.
    ///
    /// The last events go into the bounded event channel: keep receiving from it (or drop the
    /// receiver) while this runs, or it waits for room.
    pub async fn stop(mut self) -> Result<u64, SensorError> {
        self.watches.clear();
        // Never taken: nobody will read, so do not wait for room.
        drop(self.events.take());
        // Dropping the object detaches every link and closes every program.
        drop(self.bpf.take());
        if let Some(stop) = self.stop_reader.take() {
            let _ = stop.send(());
        }
        if let Some(reader) = self.reader.take() {
            let _ = reader.await;
        }
        Ok(self.drops())
    }
}

impl Drop for Sensor {
    fn drop(&mut self) {
        drop(self.bpf.take());
        if let Some(reader) = self.reader.take() {
            reader.abort();
        }
    }
}

fn exec_path_key(path: &str) -> Result<[u8; PATH_MAX_LEN], SensorError> {
    let bad = |reason| SensorError::BadExecPath {
        path: path.to_string(),
        reason,
    };
    if !path.starts_with('/') {
        return Err(bad("must be an absolute path"));
    }
    if path.len() >= PATH_MAX_LEN {
        return Err(bad("longer than 255 bytes"));
    }
    if path.contains('\0') {
        return Err(bad("contains a NUL byte"));
    }
    let mut key = [0u8; PATH_MAX_LEN];
    key[..path.len()].copy_from_slice(path.as_bytes());
    Ok(key)
}

fn to_v6_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// One LPM trie entry per distinct network: (address, prefix over 128 bits, port ranges). Each
/// entry carries the port ranges of every listed network that contains it, so that the longest
/// match the kernel finds is enough to decide.
fn compile_destinations(
    list: &[AllowedDestination],
) -> Result<Vec<([u8; 16], u8, NetAllowVal)>, SensorError> {
    // (address bits, prefix over 128 bits, original net, ports)
    let norm: Vec<(u128, u8, IpNet, RangeInclusive<u16>)> = list
        .iter()
        .map(|d| {
            let net = d.net.trunc();
            let prefix = match net {
                IpNet::V4(n) => 96 + n.prefix_len(),
                IpNet::V6(n) => n.prefix_len(),
            };
            (
                u128::from_be_bytes(to_v6_bytes(net.network())),
                prefix,
                net,
                d.ports.clone(),
            )
        })
        .collect();
    let mask = |prefix: u8| {
        if prefix == 0 {
            0
        } else {
            u128::MAX << (128 - u32::from(prefix))
        }
    };
    let mut nets: Vec<(u128, u8, IpNet)> = norm.iter().map(|(a, p, n, _)| (*a, *p, *n)).collect();
    nets.sort();
    nets.dedup();
    let mut out = Vec::new();
    for (addr, prefix, net) in nets {
        let mut ranges: Vec<(u16, u16)> = norm
            .iter()
            .filter(|(a, p, _, _)| *p <= prefix && addr & mask(*p) == *a)
            .filter(|(_, _, _, r)| r.start() <= r.end())
            .map(|(_, _, _, r)| (*r.start(), *r.end()))
            .collect();
        ranges.sort();
        let mut merged: Vec<(u16, u16)> = Vec::new();
        for (lo, hi) in ranges {
            match merged.last_mut() {
                Some(last) if u32::from(lo) <= u32::from(last.1) + 1 => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        if merged.len() > PORT_RANGES {
            return Err(SensorError::TooManyPortRanges {
                net,
                count: merged.len(),
            });
        }
        let mut value = NetAllowVal {
            count: merged.len() as u32,
            ..Default::default()
        };
        for (slot, (lo, hi)) in value.ranges.iter_mut().zip(merged) {
            *slot = PortRange { lo, hi };
        }
        out.push((addr.to_be_bytes(), prefix, value));
    }
    Ok(out)
}

/// Reads the ring buffer and the drop counters; owns everything user space keeps per cgroup.
struct Reader {
    ring: AsyncFd<RingBuf<MapData>>,
    drops: Arc<Mutex<PerCpuArray<MapData, u64>>>,
    last_drops: Vec<u64>,
    tx: mpsc::Sender<Event>,
    control: mpsc::UnboundedReceiver<Control>,
    decoder: Decoder,
}

impl Reader {
    async fn run(
        mut self,
        drop_poll: Duration,
        drain_every: Duration,
        mut stop: oneshot::Receiver<()>,
    ) {
        let mut tick = tokio::time::interval(drop_poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut drain_tick = tokio::time::interval(drain_every.max(Duration::from_millis(1)));
        drain_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = &mut stop => break,
                msg = self.control.recv() => match msg {
                    Some(msg) => self.handle_control(msg).await,
                    None => break,
                },
                guard = self.ring.readable_mut() => {
                    match guard {
                        Ok(mut guard) => guard.clear_ready(),
                        Err(_) => break,
                    }
                    self.drain().await;
                }
                _ = drain_tick.tick() => self.drain().await,
                _ = tick.tick() => self.report_drops().await,
            }
        }
        // The programs are gone by now: what is left in the ring buffer is all there will be.
        while let Ok(msg) = self.control.try_recv() {
            self.handle_control(msg).await;
        }
        self.drain().await;
        self.report_drops().await;
    }

    async fn handle_control(&mut self, msg: Control) {
        match msg {
            Control::Watch { id, path, info } => {
                self.decoder.cgroups.insert(
                    id,
                    CgroupCtx {
                        path: Some(path),
                        users: Default::default(),
                    },
                );
                let ts = self.decoder.now();
                self.send(Event::new(ts, EventBody::Container(info))).await;
            }
        }
    }

    async fn send(&mut self, event: Event) {
        // A closed receiver means nobody listens any more: keep draining so the kernel side
        // does not count drops that nobody would see.
        let _ = self.tx.send(event).await;
    }

    async fn drain(&mut self) {
        loop {
            let decoded = {
                let ring = self.ring.get_mut();
                let Some(item) = ring.next() else { break };
                let cgroup = raw::read_record::<EvHdr>(&item, std::mem::size_of::<EvHdr>())
                    .map(|h| h.cgroup_id);
                // A record of a cgroup whose `container` event is still queued: deliver that first.
                if let Some(id) = cgroup
                    && !self.decoder.cgroups.contains_key(&id)
                {
                    let bytes = item.to_vec();
                    drop(item);
                    while let Ok(msg) = self.control.try_recv() {
                        self.handle_control(msg).await;
                    }
                    self.decoder.decode(&bytes)
                } else {
                    self.decoder.decode(&item)
                }
            };
            if let Some(event) = decoded {
                self.send(event).await;
            }
        }
    }

    async fn report_drops(&mut self) {
        let counts: Vec<u64> = {
            let drops = self.drops.lock().unwrap_or_else(|e| e.into_inner());
            match drops.get(&0, 0) {
                Ok(values) => values.iter().copied().collect(),
                Err(_) => return,
            }
        };
        self.last_drops.resize(counts.len(), 0);
        let ts = self.decoder.now();
        let mut lost = Vec::new();
        for (cpu, (now, last)) in counts.iter().zip(self.last_drops.iter_mut()).enumerate() {
            if *now > *last {
                lost.push(Event::new(
                    ts,
                    EventBody::Lost(Lost {
                        count: *now - *last,
                        cpu: Some(cpu as u32),
                    }),
                ));
                *last = *now;
            }
        }
        for event in lost {
            self.send(event).await;
        }
    }
}

#[derive(Debug)]
struct CgroupCtx {
    path: Option<PathBuf>,
    users: users::UserTable,
}

/// Turns ring buffer records into events.
struct Decoder {
    /// CLOCK_REALTIME - CLOCK_MONOTONIC, in ns.
    epoch_offset: i128,
    cgroups: HashMap<u64, CgroupCtx>,
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and out pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

fn ip_of(bytes: [u8; 16]) -> IpAddr {
    Ipv6Addr::from(bytes).to_canonical()
}

impl Decoder {
    fn new() -> Self {
        // The pair with the smallest gap between the two monotonic reads bounds the error best.
        let mut best = (i128::MAX, 0i128);
        for _ in 0..5 {
            let m1 = clock_ns(libc::CLOCK_MONOTONIC);
            let r = clock_ns(libc::CLOCK_REALTIME);
            let m2 = clock_ns(libc::CLOCK_MONOTONIC);
            if m2 - m1 < best.0 {
                best = (m2 - m1, r - (m1 + m2) / 2);
            }
        }
        Decoder {
            epoch_offset: best.1,
            cgroups: HashMap::new(),
        }
    }

    fn epoch(&self, monotonic_ns: u64) -> u64 {
        (i128::from(monotonic_ns) + self.epoch_offset).clamp(0, i128::from(u64::MAX)) as u64
    }

    fn now(&self) -> u64 {
        self.epoch(clock_ns(libc::CLOCK_MONOTONIC) as u64)
    }

    fn user_name(&mut self, cgroup_id: u64, uid: u32, pid: u32) -> Option<String> {
        let ctx = self.cgroups.entry(cgroup_id).or_insert_with(|| CgroupCtx {
            path: None,
            users: Default::default(),
        });
        let path = ctx.path.clone();
        ctx.users.name(uid, move || {
            std::iter::once(pid).chain(path.as_deref().map(cgroup::read_pids).unwrap_or_default())
        })
    }

    fn decode(&mut self, bytes: &[u8]) -> Option<Event> {
        let h: EvHdr = read_record(bytes, std::mem::size_of::<EvHdr>())?;
        let ts = self.epoch(h.ts);
        let key = ProcessKey(h.pid, h.start);
        let body = match h.kind {
            EV_EXEC => {
                let e: ExecEv = read_record(bytes, EXEC_FIXED)?;
                let mut exe = c_str(&e.path);
                if h.flags & EXEC_PATH_FROM_FILENAME != 0 && !exe.starts_with('/') {
                    // The kernel could not walk the path: resolve the name it was given.
                    if let Ok(cwd) = std::fs::read_link(format!("/proc/{}/cwd", h.pid)) {
                        exe = cwd.join(&exe).to_string_lossy().into_owned();
                    }
                }
                let args_len = (e.args_len as usize)
                    .min(ARGS_MAX)
                    .min(bytes.len().saturating_sub(EXEC_FIXED));
                let mut argv: Vec<String> = e.args[..args_len]
                    .split(|&b| b == 0)
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                if e.args[..args_len].last() == Some(&0) {
                    argv.pop(); // the split after the final NUL
                }
                let user = self.user_name(h.cgroup_id, e.uid, h.pid);
                let euser = if e.euid == e.uid {
                    user.clone()
                } else {
                    self.user_name(h.cgroup_id, e.euid, h.pid)
                };
                EventBody::Exec(ProcessExec {
                    key,
                    cgroup_id: h.cgroup_id,
                    pid: h.pid,
                    ns_pid: e.ns_pid,
                    parent: (e.ppid != 0).then_some(ProcessKey(e.ppid, e.pstart)),
                    exe,
                    comm: c_str(&e.comm),
                    argv,
                    argv_truncated: h.flags & EXEC_ARGS_TRUNCATED != 0,
                    uid: e.uid,
                    euid: e.euid,
                    gid: e.gid,
                    user,
                    euser,
                })
            }
            EV_FORK => {
                let e: ForkEv = read_record(bytes, std::mem::size_of::<ForkEv>())?;
                EventBody::Fork(ProcessFork {
                    key,
                    cgroup_id: h.cgroup_id,
                    pid: h.pid,
                    ns_pid: e.ns_pid,
                    parent: ProcessKey(e.ppid, e.pstart),
                    comm: c_str(&e.comm),
                })
            }
            EV_EXIT => {
                let e: ExitEv = read_record(bytes, std::mem::size_of::<ExitEv>())?;
                let signal = (e.exit_code & 0x7f) as i32;
                EventBody::Exit(ProcessExit {
                    key,
                    cgroup_id: h.cgroup_id,
                    pid: h.pid,
                    code: (signal == 0).then_some(((e.exit_code >> 8) & 0xff) as i32),
                    signal: (signal != 0).then_some(signal),
                })
            }
            EV_CONNECT | EV_ACCEPT => {
                let e: SockEv = read_record(bytes, std::mem::size_of::<SockEv>())?;
                let protocol = if e.protocol == IPPROTO_UDP {
                    Protocol::Udp
                } else {
                    Protocol::Tcp
                };
                let known_local = h.kind == EV_ACCEPT;
                let conn = Connection {
                    process: key,
                    cgroup_id: h.cgroup_id,
                    protocol,
                    local_ip: known_local.then(|| ip_of(e.laddr)),
                    local_port: known_local.then_some(e.lport),
                    remote_ip: ip_of(e.raddr),
                    remote_port: e.rport,
                    refused: e.refused != 0,
                };
                if h.kind == EV_ACCEPT {
                    EventBody::Accept(conn)
                } else {
                    EventBody::Connect(conn)
                }
            }
            EV_LISTEN => {
                let e: SockEv = read_record(bytes, std::mem::size_of::<SockEv>())?;
                EventBody::Listen(Listen {
                    process: key,
                    cgroup_id: h.cgroup_id,
                    protocol: Protocol::Tcp,
                    ip: ip_of(e.laddr),
                    port: e.lport,
                })
            }
            EV_DNS => {
                let e: DnsEv = read_record(bytes, DNS_FIXED)?;
                let len = (e.len as usize).min(DNS_MAX);
                let (name, addresses) = dns::parse_answer(&e.data[..len])?;
                EventBody::Dns(DnsAnswer {
                    cgroup_id: h.cgroup_id,
                    name,
                    addresses,
                })
            }
            _ => return None,
        };
        Some(Event::new(ts, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(net: &str, ports: RangeInclusive<u16>) -> AllowedDestination {
        AllowedDestination::new(net.parse().unwrap(), ports)
    }

    #[test]
    fn nested_networks_inherit_the_ports_of_the_networks_around_them() {
        let entries = compile_destinations(&[
            dest("198.18.0.0/15", 443..=443),
            dest("198.18.0.7/32", 80..=80),
            dest("198.18.0.7/32", 81..=90),
        ])
        .unwrap();
        assert_eq!(entries.len(), 2);
        let wide = entries.iter().find(|e| e.1 == 96 + 15).unwrap();
        assert_eq!(
            &wide.2.ranges[..wide.2.count as usize],
            &[PortRange { lo: 443, hi: 443 }]
        );
        let host = entries.iter().find(|e| e.1 == 128).unwrap();
        assert_eq!(&host.0[10..], &[0xff, 0xff, 198, 18, 0, 7]);
        assert_eq!(
            &host.2.ranges[..host.2.count as usize],
            &[PortRange { lo: 80, hi: 90 }, PortRange { lo: 443, hi: 443 }]
        );
    }

    #[test]
    fn too_many_port_ranges_is_an_error_naming_the_network() {
        let list: Vec<_> = (0..17u16)
            .map(|i| dest("2001:db8::/32", i * 10..=i * 10))
            .collect();
        let err = compile_destinations(&list).unwrap_err();
        assert!(err.to_string().contains("2001:db8::/32"), "{err}");
    }

    #[test]
    fn exec_paths_must_be_absolute_and_short() {
        assert!(exec_path_key("/usr/bin/id").is_ok());
        assert!(
            exec_path_key("id")
                .unwrap_err()
                .to_string()
                .contains("absolute")
        );
        assert!(exec_path_key(&format!("/{}", "a".repeat(300))).is_err());
    }

    #[test]
    fn exit_status_and_argv_decode() {
        let mut d = Decoder::new();
        let mut ev: ExitEv = unsafe { std::mem::zeroed() };
        ev.h.kind = EV_EXIT;
        ev.h.pid = 42;
        ev.exit_code = 3 << 8;
        let bytes = unsafe {
            std::slice::from_raw_parts((&ev as *const ExitEv).cast::<u8>(), size_of_val(&ev))
        };
        let Some(Event {
            body: EventBody::Exit(x),
            ..
        }) = d.decode(bytes)
        else {
            panic!()
        };
        assert_eq!((x.code, x.signal), (Some(3), None));
        ev.exit_code = 9;
        let bytes = unsafe {
            std::slice::from_raw_parts((&ev as *const ExitEv).cast::<u8>(), size_of_val(&ev))
        };
        let Some(Event {
            body: EventBody::Exit(x),
            ..
        }) = d.decode(bytes)
        else {
            panic!()
        };
        assert_eq!((x.code, x.signal), (None, Some(9)));
    }
}
