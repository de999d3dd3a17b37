//! The [`Sensor`] handle: loads the object, attaches the host-wide programs, watches cgroups
//! (per-cgroup programs and the `watched` map), and detaches everything on stop or drop.
#![allow(unsafe_code)] // registering the ring buffer's fd with tokio (the RingBuf owns it)

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use aya::maps::lpm_trie::Key as LpmKey;
use aya::maps::{HashMap as BpfHashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, RingBuf};
use aya::programs::cgroup_skb::CgroupSkbLinkId;
use aya::programs::cgroup_sock_addr::CgroupSockAddrLinkId;
use aya::programs::{
    BtfTracePoint, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, Program,
    ProgramError,
};
use aya::{Btf, Ebpf, EbpfLoader};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::decoder::{Decoder, DecoderCounters};
use crate::raw::*;
use crate::reader::{Control, Reader};
use crate::{ContainerInfo, Event, ExitHook, SensorConfig, SensorError, cgroup, preflight};

/// The compiled kernel side, built by `bpf/build.sh` from `bpf/guardlab.bpf.c`.
static OBJECT: &[u8] = aya::include_bytes_aligned!("../bpf/guardlab.bpf.o");

/// Programs that attach per watched cgroup (connect/sendmsg).
const SOCK_ADDR_PROGRAMS: [&str; 4] = ["gl_connect4", "gl_connect6", "gl_sendmsg4", "gl_sendmsg6"];
const DNS_PROGRAM: &str = "gl_dns_ingress";
/// (program, tracepoint) pairs attached once, host-wide; they filter on `watched` in the kernel.
const BTF_TRACEPOINTS: [(&str, &str); 2] = [
    ("gl_exec", "sched_process_exec"),
    ("gl_fork", "sched_process_fork"),
];
/// The two programs for `sched_process_exit`, one of which is attached (see [`ExitHook`]).
const EXIT_GROUP_DEAD: &str = "gl_exit";
const EXIT_LIVE_COUNT: &str = "gl_exit_live";
const SOCK_STATE_PROGRAM: &str = "gl_sock_state";

/// What the sensor delivered, and what it could not deliver or do, so far (all counts since
/// start). Events are lost when the kernel drops them (`dropped`), when user space cannot read
/// a record (`unreadable_records`), or when nobody takes the event stream any more
/// (`undelivered`); see [`SensorStats::lost`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SensorStats {
    /// Events handed to the consumer of [`Sensor::events`] (`lost` events included).
    pub delivered: u64,
    /// Records the kernel could not put in the ring buffer (each also reported as a `lost`
    /// event).
    pub dropped: u64,
    /// Records user space could not read (too short for their kind, or of a kind this loader
    /// does not know: the object and the loader disagree). Not reported as events.
    pub unreadable_records: u64,
    /// Events decoded after the receiver of [`Sensor::events`] was dropped.
    pub undelivered: u64,
    /// Execs the allow-list meant to kill where `bpf_send_signal` failed: those programs ran.
    pub kill_failures: u64,
    /// DNS answers longer than the kernel copies (4 KiB): reported with the addresses of the
    /// records that fit, or not at all when even the question was cut.
    pub dns_truncated: u64,
    /// DNS messages from port 53 that could not be parsed: not reported.
    pub dns_unreadable: u64,
}

impl SensorStats {
    /// Events lost between the kernel and whoever reads [`Sensor::events`]: dropped in the
    /// kernel or unreadable in user space. (Events decoded after the receiver was dropped are
    /// not counted: nobody was listening for them.)
    pub fn lost(&self) -> u64 {
        self.dropped + self.unreadable_records
    }
}

#[derive(Debug)]
enum CgroupLink {
    SockAddr(&'static str, CgroupSockAddrLinkId),
    Skb(CgroupSkbLinkId),
}

/// What the sensor holds for one watched cgroup, so that unwatching removes all of it.
#[derive(Debug)]
pub(crate) struct Watch {
    pub(crate) path: PathBuf,
    links: Vec<CgroupLink>,
    pub(crate) flags: u32,
    /// Paths in `exec_allow` for this cgroup.
    pub(crate) exec_keys: BTreeSet<[u8; PATH_MAX_LEN]>,
    /// (prefix length, key) in `net_allow` for this cgroup.
    pub(crate) net_keys: HashSet<(u32, NetAllowKey)>,
    /// (prefix length, key) in `exec_tree` for this cgroup.
    pub(crate) tree_keys: HashSet<(u32, ExecTreeKey)>,
    /// ((prefix length, key), value) in `dns_names` for this cgroup.
    pub(crate) dns_names: Vec<crate::kernel_policy::DnsNameEntry>,
    /// Whether `resolvers` has an entry for this cgroup.
    pub(crate) has_resolver: bool,
}

/// The loaded, attached sensor. Dropping it detaches and unloads everything; [`Sensor::stop`]
/// does the same but first delivers what is still in the ring buffer.
pub struct Sensor {
    pub(crate) bpf: Option<Ebpf>,
    pub(crate) watches: HashMap<u64, Watch>,
    control: mpsc::UnboundedSender<Control>,
    events: Option<mpsc::Receiver<Event>>,
    drops: Arc<Mutex<PerCpuArray<MapData, u64>>>,
    kill_failures: PerCpuArray<MapData, u64>,
    counters: Arc<DecoderCounters>,
    reader: Option<JoinHandle<()>>,
    stop_reader: Option<oneshot::Sender<()>>,
    program_ids: Vec<u32>,
    exit_hook: ExitHook,
}

impl std::fmt::Debug for Sensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sensor")
            .field("watched", &self.watches.keys().collect::<Vec<_>>())
            .field("program_ids", &self.program_ids)
            .finish_non_exhaustive()
    }
}

fn program_err(name: &'static str) -> impl FnOnce(ProgramError) -> SensorError {
    move |source| SensorError::Program { name, source }
}

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> SensorError {
    move |source| SensorError::Map { name, source }
}

/// The program `name` of the object, as its concrete type `T`.
fn program<'a, T>(bpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, SensorError>
where
    &'a mut T: TryFrom<&'a mut Program, Error = ProgramError>,
{
    bpf.program_mut(name)
        .ok_or(SensorError::NotInObject { name })?
        .try_into()
        .map_err(program_err(name))
}

/// The map `name` of the object (borrowed), as its concrete type `M`.
pub(crate) fn map<'a, M>(bpf: &'a mut Ebpf, name: &'static str) -> Result<M, SensorError>
where
    M: TryFrom<&'a mut Map, Error = MapError>,
{
    M::try_from(bpf.map_mut(name).ok_or(SensorError::NotInObject { name })?).map_err(map_err(name))
}

/// The map `name` taken out of the object (it then lives as long as the returned value).
fn take_map<M>(bpf: &mut Ebpf, name: &'static str) -> Result<M, SensorError>
where
    M: TryFrom<Map, Error = MapError>,
{
    M::try_from(
        bpf.take_map(name)
            .ok_or(SensorError::NotInObject { name })?,
    )
    .map_err(map_err(name))
}

/// Loads and attaches the BTF tracepoint program `name` on `tracepoint`.
fn attach_btf_tracepoint(
    bpf: &mut Ebpf,
    btf: &Btf,
    name: &'static str,
    tracepoint: &str,
) -> Result<(), SensorError> {
    let prog: &mut BtfTracePoint = program(bpf, name)?;
    prog.load(tracepoint, btf).map_err(program_err(name))?;
    prog.attach().map_err(program_err(name))?;
    Ok(())
}

fn sum_per_cpu(counter: &PerCpuArray<MapData, u64>) -> u64 {
    counter.get(&0, 0).map(|v| v.iter().sum()).unwrap_or(0)
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
            // task_nodes (BPF task storage) has no aya type; only the kernel side uses it.
            .allow_unsupported_maps()
            .load(OBJECT)
            .map_err(SensorError::Load)?;

        for (name, tracepoint) in BTF_TRACEPOINTS {
            attach_btf_tracepoint(&mut bpf, &btf, name, tracepoint)?;
        }
        let exit = |bpf: &mut Ebpf, hook: ExitHook| {
            let name = match hook {
                ExitHook::LiveCount => EXIT_LIVE_COUNT,
                _ => EXIT_GROUP_DEAD,
            };
            attach_btf_tracepoint(bpf, &btf, name, "sched_process_exit").map(|()| hook)
        };
        let exit_hook = match config.exit_hook {
            // The verifier refuses gl_exit where the tracepoint has no group_dead argument.
            ExitHook::Auto => exit(&mut bpf, ExitHook::GroupDead)
                .or_else(|_| exit(&mut bpf, ExitHook::LiveCount))?,
            hook => exit(&mut bpf, hook)?,
        };
        attach_btf_tracepoint(&mut bpf, &btf, SOCK_STATE_PROGRAM, "inet_sock_set_state")?;
        for name in SOCK_ADDR_PROGRAMS {
            let prog: &mut CgroupSockAddr = program(&mut bpf, name)?;
            prog.load().map_err(program_err(name))?;
        }
        let prog: &mut CgroupSkb = program(&mut bpf, DNS_PROGRAM)?;
        prog.load().map_err(program_err(DNS_PROGRAM))?;

        let mut program_ids = Vec::new();
        for (_, prog) in bpf.programs() {
            if let Ok(info) = prog.info() {
                program_ids.push(info.id());
            }
        }
        program_ids.sort_unstable();

        let ring: RingBuf<MapData> = take_map(&mut bpf, "events")?;
        let drops = Arc::new(Mutex::new(take_map(&mut bpf, "drops")?));
        let kill_failures = take_map(&mut bpf, "kill_failures")?;

        let _enter = runtime.enter();
        // SAFETY: the RingBuf owns its map's fd for as long as it lives, and as_raw_fd always
        // returns that fd; the AsyncFd owns the RingBuf, so the fd outlives its registration.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|e| SensorError::RingBuffer(e.into()))?;
        let (tx, rx) = mpsc::channel(config.channel_capacity.max(1));
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = oneshot::channel();
        let counters = Arc::new(DecoderCounters::default());
        let reader = Reader::new(
            ring,
            drops.clone(),
            tx,
            control_rx,
            Decoder::new(counters.clone()),
        );
        let handle =
            runtime.spawn(reader.run(config.drop_poll_interval, config.drain_interval, stop_rx));

        Ok(Sensor {
            bpf: Some(bpf),
            watches: HashMap::new(),
            control: control_tx,
            events: Some(rx),
            drops,
            kill_failures,
            counters,
            reader: Some(handle),
            stop_reader: Some(stop_tx),
            program_ids,
            exit_hook,
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

    /// The `sched_process_exit` program in use (never [`ExitHook::Auto`]).
    pub fn exit_hook(&self) -> ExitHook {
        self.exit_hook
    }

    /// Cgroup ids being watched.
    pub fn watched(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.watches.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Events the kernel could not put in the ring buffer so far, summed over CPUs.
    pub fn drops(&self) -> u64 {
        sum_per_cpu(&self.drops.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Everything the sensor could not deliver or do so far.
    pub fn stats(&self) -> SensorStats {
        let (dns_truncated, dns_unreadable) = self.counters.dns();
        SensorStats {
            delivered: self.counters.delivered.load(Ordering::Relaxed),
            dropped: self.drops(),
            unreadable_records: self.counters.unreadable_records(),
            undelivered: self.counters.undelivered.load(Ordering::Relaxed),
            kill_failures: sum_per_cpu(&self.kill_failures),
            dns_truncated,
            dns_unreadable,
        }
    }

    pub(crate) fn bpf(&mut self) -> &mut Ebpf {
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
        let dir = File::open(cgroup_path).map_err(SensorError::io_at(cgroup_path))?;
        info.cgroup_id = id;
        let mut watch = Watch {
            path: cgroup_path.into(),
            links: Vec::new(),
            flags: 0,
            exec_keys: BTreeSet::new(),
            net_keys: HashSet::new(),
            tree_keys: HashSet::new(),
            dns_names: Vec::new(),
            has_resolver: false,
        };
        // The per-cgroup programs report nothing until the id is in `watched`, so: attach,
        // queue the container event, then enable. The container event thus precedes every
        // other event of the cgroup, in the stream and in time (it is stamped here, see the
        // reader), and a failed attach leaves no trace.
        if let Err(e) = self.attach_cgroup(&dir, &mut watch) {
            self.detach_cgroup(id, &mut watch);
            return Err(e);
        }
        let _ = self.control.send(Control::Watch {
            id,
            path: cgroup_path.into(),
            info: Box::new(info),
            // Before the kernel reports anything of the cgroup: the container event's time
            // precedes every record's, however late the reader handles this message.
            at_boot_ns: crate::decoder::boot_now(),
        });
        if let Err(e) = self.set_watch_flags(id, 0) {
            self.detach_cgroup(id, &mut watch);
            let _ = self.control.send(Control::Unwatch { id });
            return Err(e);
        }
        self.watches.insert(id, watch);
        Ok(id)
    }

    fn attach_cgroup(&mut self, dir: &File, watch: &mut Watch) -> Result<(), SensorError> {
        let bpf = self.bpf();
        for name in SOCK_ADDR_PROGRAMS {
            let prog: &mut CgroupSockAddr = program(bpf, name)?;
            // aya attaches with a bpf_link here (kernel >= 5.7). Links always coexist with other
            // programs on the cgroup (a runtime's, another sensor's), and the kernel refuses
            // attach flags on them: hence "Single", which passes none.
            let link = prog
                .attach(dir, CgroupAttachMode::Single)
                .map_err(program_err(name))?;
            watch.links.push(CgroupLink::SockAddr(name, link));
        }
        let prog: &mut CgroupSkb = program(bpf, DNS_PROGRAM)?;
        let link = prog
            .attach(dir, CgroupSkbAttachType::Ingress, CgroupAttachMode::Single)
            .map_err(program_err(DNS_PROGRAM))?;
        watch.links.push(CgroupLink::Skb(link));
        Ok(())
    }

    /// Best effort: undo whatever part of `watch` exists, in the kernel's maps too.
    fn detach_cgroup(&mut self, id: u64, watch: &mut Watch) {
        let bpf = self.bpf();
        for link in watch.links.drain(..) {
            match link {
                CgroupLink::SockAddr(name, link) => {
                    if let Ok(prog) = program::<CgroupSockAddr>(bpf, name) {
                        let _ = prog.detach(link);
                    }
                }
                CgroupLink::Skb(link) => {
                    if let Ok(prog) = program::<CgroupSkb>(bpf, DNS_PROGRAM) {
                        let _ = prog.detach(link);
                    }
                }
            }
        }
        if let Ok(mut watched) = map::<BpfHashMap<_, u64, u32>>(bpf, "watched") {
            let _ = watched.remove(&id);
        }
        if let Ok(mut allow) = map::<BpfHashMap<_, ExecAllowKey, u8>>(bpf, "exec_allow") {
            for path in std::mem::take(&mut watch.exec_keys) {
                let _ = allow.remove(&ExecAllowKey {
                    cgroup_id: id,
                    path,
                });
            }
        }
        if let Ok(mut allow) = map::<LpmTrie<_, NetAllowKey, NetAllowVal>>(bpf, "net_allow") {
            for (prefix, key) in std::mem::take(&mut watch.net_keys) {
                let _ = allow.remove(&LpmKey::new(prefix, key));
            }
        }
        crate::kernel_policy::remove_policy_entries(bpf, id, watch);
        // Listeners still open in the cgroup: their close would remove them, but the owner
        // they name is of no use once the cgroup is not watched.
        if let Ok(mut listeners) = map::<BpfHashMap<_, ListenerKey, ProcKey>>(bpf, "listeners") {
            let ours: Vec<ListenerKey> = listeners
                .keys()
                .filter_map(Result::ok)
                .filter(|k| k.cgroup_id == id)
                .collect();
            for key in ours {
                let _ = listeners.remove(&key);
            }
        }
    }

    /// Stops reporting a cgroup, drops its allow-lists, and (once what the kernel already
    /// queued for it is delivered) forgets it in the decoder.
    pub fn unwatch(&mut self, cgroup_id: u64) -> Result<(), SensorError> {
        let mut watch = self
            .watches
            .remove(&cgroup_id)
            .ok_or(SensorError::NotWatched(cgroup_id))?;
        self.detach_cgroup(cgroup_id, &mut watch);
        let _ = self.control.send(Control::Unwatch { id: cgroup_id });
        Ok(())
    }

    pub(crate) fn set_watch_flags(
        &mut self,
        cgroup_id: u64,
        flags: u32,
    ) -> Result<(), SensorError> {
        let mut watched: BpfHashMap<_, u64, u32> = map(self.bpf(), "watched")?;
        watched
            .insert(cgroup_id, flags, 0)
            .map_err(map_err("watched"))?;
        if let Some(w) = self.watches.get_mut(&cgroup_id) {
            w.flags = flags;
        }
        Ok(())
    }

    /// Detaches and unloads every program, delivers what was still in the ring buffer and a
    /// final `lost` event when the kernel dropped any, then ends the event stream. Returns the
    /// final [`SensorStats`].
    ///
    /// The last events go into the bounded event channel: keep receiving from it (or drop the
    /// receiver) while this runs, or it waits for room.
    pub async fn stop(mut self) -> Result<SensorStats, SensorError> {
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
        Ok(self.stats())
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
