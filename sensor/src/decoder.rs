//! Ring buffer records to [`Event`]s: clock conversion, flags, user names, DNS parsing.
#![allow(unsafe_code)] // clock_gettime(2), and kernel records read as the bytes they are

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use guardlab_events::{
    Connection, DnsAnswer, ExeStatus, Listen, ProcessExec, ProcessExit, ProcessFork, ProcessKey,
    Protocol,
};

use crate::dns::{self, Parsed};
use crate::raw::*;
use crate::{Event, EventBody, cgroup, users};

/// What user space did with the kernel's records, shared with the [`Sensor`](crate::Sensor)
/// handle: records the decoder could not turn into events, and events the reader delivered.
#[derive(Debug, Default)]
pub(crate) struct DecoderCounters {
    dns_truncated: AtomicU64,
    dns_unreadable: AtomicU64,
    /// Records too short for their kind, or of a kind this loader does not know: lost.
    unreadable_records: AtomicU64,
    /// Events handed to the consumer of `Sensor::events`.
    pub(crate) delivered: AtomicU64,
    /// Events decoded after the consumer had gone: nobody got them.
    pub(crate) undelivered: AtomicU64,
}

/// A record the decoder cannot read: too short for its kind, or of an unknown kind.
struct Unreadable;

impl DecoderCounters {
    /// Records that could not be read so far.
    pub(crate) fn unreadable_records(&self) -> u64 {
        self.unreadable_records.load(Ordering::Relaxed)
    }

    /// (truncated, unreadable) DNS messages so far.
    pub(crate) fn dns(&self) -> (u64, u64) {
        (
            self.dns_truncated.load(Ordering::Relaxed),
            self.dns_unreadable.load(Ordering::Relaxed),
        )
    }
}

/// What the decoder keeps per watched cgroup.
#[derive(Debug)]
struct CgroupCtx {
    path: PathBuf,
    users: users::UserTable,
}

/// Turns ring buffer records into events.
pub(crate) struct Decoder {
    /// CLOCK_REALTIME - CLOCK_BOOTTIME, in ns.
    epoch_offset: i128,
    cgroups: HashMap<u64, CgroupCtx>,
    counters: Arc<DecoderCounters>,
    /// Whether this process is in the init pid namespace, where the records' pids (the
    /// kernel's init-namespace pids) name the same processes in this process's /proc.
    pids_are_local: bool,
}

/// The inode of the initial pid namespace (`PROC_PID_INIT_INO`, fixed by the kernel).
const INIT_PID_NS_INO: u64 = 0xEFFF_FFFC;

/// Whether this process's pid namespace is the initial one (not so in a kind node's pod with
/// hostPID, whose namespace is the node container's).
fn in_init_pid_ns() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/pid").is_ok_and(|m| m.ino() == INIT_PID_NS_INO)
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `clock` is one of the libc constants below and `ts` is a valid, writable
    // timespec; clock_gettime writes nothing else.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// Now on CLOCK_BOOTTIME, the clock the kernel stamps records with, in ns.
pub(crate) fn boot_now() -> u64 {
    clock_ns(libc::CLOCK_BOOTTIME) as u64
}

fn ip_of(bytes: [u8; 16]) -> IpAddr {
    Ipv6Addr::from(bytes).to_canonical()
}

/// argv as the kernel copied it: NUL-separated, possibly cut (then the last piece is the
/// beginning of an argument, kept as such).
fn split_argv(args: &[u8]) -> Vec<String> {
    let mut argv: Vec<String> = args
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    if args.last() == Some(&0) || args.is_empty() {
        argv.pop(); // the empty piece after the final NUL
    }
    argv
}

/// How far the kernel could resolve the exe path, from its EXEC_PATH_* flags (the most
/// serious first).
fn exe_status(flags: u32) -> ExeStatus {
    if flags & EXEC_PATH_FROM_FILENAME != 0 {
        ExeStatus::Unresolved
    } else if flags & EXEC_PATH_DETACHED != 0 {
        ExeStatus::Fileless
    } else if flags & EXEC_PATH_TRUNCATED != 0 {
        ExeStatus::Truncated
    } else {
        ExeStatus::Resolved
    }
}

impl Decoder {
    pub(crate) fn new(counters: Arc<DecoderCounters>) -> Self {
        // The pair with the smallest gap between the two boot-time reads bounds the error best.
        let mut best = (i128::MAX, 0i128);
        for _ in 0..5 {
            let b1 = clock_ns(libc::CLOCK_BOOTTIME);
            let r = clock_ns(libc::CLOCK_REALTIME);
            let b2 = clock_ns(libc::CLOCK_BOOTTIME);
            if b2 - b1 < best.0 {
                best = (b2 - b1, r - (b1 + b2) / 2);
            }
        }
        Decoder {
            epoch_offset: best.1,
            cgroups: HashMap::new(),
            counters,
            pids_are_local: in_init_pid_ns(),
        }
    }

    /// Starts keeping context for a cgroup (its path, for user names).
    pub(crate) fn watch(&mut self, id: u64, path: PathBuf) {
        self.cgroups.insert(
            id,
            CgroupCtx {
                path,
                users: Default::default(),
            },
        );
    }

    /// What the decoder and its reader counted.
    pub(crate) fn counters(&self) -> &DecoderCounters {
        &self.counters
    }

    /// Drops what was kept for an unwatched cgroup.
    pub(crate) fn forget(&mut self, id: u64) {
        self.cgroups.remove(&id);
    }

    pub(crate) fn knows(&self, id: u64) -> bool {
        self.cgroups.contains_key(&id)
    }

    /// A CLOCK_BOOTTIME time (the records' clock) in ns since the Unix epoch.
    pub(crate) fn epoch(&self, boot_ns: u64) -> u64 {
        (i128::from(boot_ns) + self.epoch_offset).clamp(0, i128::from(u64::MAX)) as u64
    }

    /// Now, in ns since the Unix epoch, on the same clock as decoded events.
    pub(crate) fn now(&self) -> u64 {
        self.epoch(boot_now())
    }

    /// The name of `uid` as the process `pid` (a record's init-namespace pid) in cgroup
    /// `cgroup_id` sees it, through `/proc/<pid>/root/etc/passwd`. Outside the init pid
    /// namespace (a kind node) `/proc/<pid>` may be another process entirely: only the
    /// cgroup's members are read there (`cgroup.procs` lists pids in this process's own
    /// namespace).
    fn user_name(&mut self, cgroup_id: u64, uid: u32, pid: u32) -> Option<String> {
        let event_pid = self.pids_are_local.then_some(pid);
        match self.cgroups.get_mut(&cgroup_id) {
            Some(ctx) => {
                let path = &ctx.path;
                ctx.users
                    .name(uid, || event_pid.into_iter().chain(cgroup::read_pids(path)))
            }
            // A record that was still queued when its cgroup was unwatched: look the name up
            // once, keeping nothing.
            None => users::UserTable::default().name(uid, || event_pid),
        }
    }

    /// The event of a record; `None` for a record that makes none (a DNS message that answers
    /// nothing, or one that cannot be read: counted).
    pub(crate) fn decode(&mut self, bytes: &[u8]) -> Option<Event> {
        match self.decode_record(bytes) {
            Ok(event) => event,
            Err(Unreadable) => {
                self.counters
                    .unreadable_records
                    .fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    fn decode_record(&mut self, bytes: &[u8]) -> Result<Option<Event>, Unreadable> {
        let h: EvHdr = read_record(bytes, std::mem::size_of::<EvHdr>()).ok_or(Unreadable)?;
        let ts = self.epoch(h.ts);
        let key = ProcessKey(h.pid, h.start);
        let body = match h.kind {
            EV_EXEC => {
                let e: ExecEv = read_record(bytes, EXEC_FIXED).ok_or(Unreadable)?;
                let args_len = (e.args_len as usize)
                    .min(ARGS_MAX)
                    .min(bytes.len().saturating_sub(EXEC_FIXED));
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
                    // What the kernel resolved, as is: for an unresolved path that is the name
                    // given to execve (possibly relative). Resolving it here against
                    // /proc/PID/cwd would give the host's view of a process that may be gone.
                    exe: c_str(&e.path),
                    comm: c_str(&e.comm),
                    argv: split_argv(&e.args[..args_len]),
                    argv_truncated: h.flags & EXEC_ARGS_TRUNCATED != 0,
                    uid: e.uid,
                    euid: e.euid,
                    gid: e.gid,
                    user,
                    euser,
                    exe_status: exe_status(h.flags),
                    killed: h.flags & EXEC_KILLED != 0,
                })
            }
            EV_FORK => {
                let e: ForkEv =
                    read_record(bytes, std::mem::size_of::<ForkEv>()).ok_or(Unreadable)?;
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
                let e: ExitEv =
                    read_record(bytes, std::mem::size_of::<ExitEv>()).ok_or(Unreadable)?;
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
                let e: SockEv =
                    read_record(bytes, std::mem::size_of::<SockEv>()).ok_or(Unreadable)?;
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
                let e: SockEv =
                    read_record(bytes, std::mem::size_of::<SockEv>()).ok_or(Unreadable)?;
                EventBody::Listen(Listen {
                    process: key,
                    cgroup_id: h.cgroup_id,
                    protocol: Protocol::Tcp,
                    ip: ip_of(e.laddr),
                    port: e.lport,
                })
            }
            EV_DNS => {
                let e: DnsEv = read_record(bytes, DNS_FIXED).ok_or(Unreadable)?;
                let len = (e.len as usize).min(DNS_MAX);
                let truncated = h.flags & DNS_TRUNCATED != 0;
                if truncated {
                    self.counters.dns_truncated.fetch_add(1, Ordering::Relaxed);
                }
                match dns::parse_answer(&e.data[..len], truncated) {
                    Parsed::Resolved { name, addresses } => EventBody::Dns(DnsAnswer {
                        cgroup_id: h.cgroup_id,
                        name,
                        addresses,
                    }),
                    Parsed::Nothing => return Ok(None),
                    Parsed::Unreadable => {
                        self.counters.dns_unreadable.fetch_add(1, Ordering::Relaxed);
                        return Ok(None);
                    }
                }
            }
            _ => return Err(Unreadable),
        };
        Ok(Some(Event::new(ts, body)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes of a record struct, as the kernel would send them.
    fn bytes_of<T: Copy>(record: &T) -> Vec<u8> {
        // SAFETY: `record` is a valid reference to `size_of::<T>()` bytes; every `T` used here
        // is a `repr(C)` struct of integers and byte arrays without padding, so all of those
        // bytes are initialised.
        unsafe {
            std::slice::from_raw_parts((record as *const T).cast::<u8>(), size_of::<T>()).to_vec()
        }
    }

    fn zeroed<T: Copy>() -> T {
        // SAFETY: only used for the record structs of raw.rs: integers and byte arrays, for
        // which all-zero bytes are a valid value.
        unsafe { std::mem::zeroed() }
    }

    fn decoder() -> Decoder {
        Decoder::new(Arc::default())
    }

    fn exec_record(flags: u32, path: &str, args: &[u8]) -> Vec<u8> {
        let mut ev: ExecEv = zeroed();
        ev.h.kind = EV_EXEC;
        ev.h.pid = std::process::id();
        ev.h.start = 77;
        ev.h.flags = flags;
        ev.ppid = 1;
        ev.pstart = 5;
        ev.path[..path.len()].copy_from_slice(path.as_bytes());
        ev.comm[..4].copy_from_slice(b"true");
        ev.args[..args.len()].copy_from_slice(args);
        ev.args_len = args.len() as u32;
        // The kernel sends the fixed part and args_len bytes of argv.
        bytes_of(&ev)[..EXEC_FIXED + args.len()].to_vec()
    }

    fn decode_exec(d: &mut Decoder, bytes: &[u8]) -> ProcessExec {
        match d.decode(bytes) {
            Some(Event {
                body: EventBody::Exec(x),
                ..
            }) => x,
            other => panic!("not an exec: {other:?}"),
        }
    }

    #[test]
    fn exit_status_decodes_into_code_or_signal() {
        let mut d = decoder();
        let mut ev: ExitEv = zeroed();
        ev.h.kind = EV_EXIT;
        ev.h.pid = 42;
        for (status, expected) in [(3 << 8, (Some(3), None)), (9, (None, Some(9)))] {
            ev.exit_code = status;
            let Some(Event {
                body: EventBody::Exit(x),
                ..
            }) = d.decode(&bytes_of(&ev))
            else {
                panic!("not an exit")
            };
            assert_eq!((x.code, x.signal), expected, "status {status:#x}");
        }
    }

    #[test]
    fn argv_and_exec_flags_decode() {
        let mut d = decoder();
        let x = decode_exec(
            &mut d,
            &exec_record(0, "/usr/bin/true", b"true\0-a\0\0x y\0"),
        );
        assert_eq!(
            x.argv,
            ["true", "-a", "", "x y"],
            "empty arguments are kept"
        );
        assert!(!x.argv_truncated && !x.killed);
        assert_eq!(
            (x.exe.as_str(), x.exe_status),
            ("/usr/bin/true", ExeStatus::Resolved)
        );
        assert_eq!(
            (x.comm.as_str(), x.parent),
            ("true", Some(ProcessKey(1, 5)))
        );
        assert_eq!(x.key, ProcessKey(std::process::id(), 77));

        // Cut in the middle of an argument: the piece is kept, and marked.
        let x = decode_exec(
            &mut d,
            &exec_record(EXEC_ARGS_TRUNCATED, "/usr/bin/true", b"true\0abc"),
        );
        assert_eq!(x.argv, ["true", "abc"]);
        assert!(x.argv_truncated);

        let x = decode_exec(&mut d, &exec_record(0, "/usr/bin/true", b""));
        assert!(x.argv.is_empty(), "{:?}", x.argv);

        let x = decode_exec(
            &mut d,
            &exec_record(
                EXEC_KILLED | EXEC_PATH_DETACHED,
                "memfd:minerd",
                b"minerd\0",
            ),
        );
        assert!(x.killed);
        assert_eq!(
            (x.exe.as_str(), x.exe_status),
            ("memfd:minerd", ExeStatus::Fileless)
        );

        let x = decode_exec(&mut d, &exec_record(EXEC_PATH_TRUNCATED, "/a/b", b"b\0"));
        assert_eq!(x.exe_status, ExeStatus::Truncated);
        // An unresolved path is reported as given, never completed from the host's view.
        let x = decode_exec(
            &mut d,
            &exec_record(
                EXEC_PATH_FROM_FILENAME | EXEC_PATH_TRUNCATED,
                "./miner",
                b"x\0",
            ),
        );
        assert_eq!(
            (x.exe.as_str(), x.exe_status),
            ("./miner", ExeStatus::Unresolved)
        );
    }

    #[test]
    fn boot_time_stamps_convert_to_the_wall_clock() {
        let d = decoder();
        let boot = clock_ns(libc::CLOCK_BOOTTIME) as u64;
        let wall = i128::from(guardlab_host::unix_time_ns());
        let converted = i128::from(d.epoch(boot));
        assert!(
            (converted - wall).abs() < 1_000_000_000,
            "{converted} vs wall clock {wall}"
        );
    }

    #[test]
    fn records_that_cannot_be_read_are_counted_as_lost() {
        let counters = Arc::new(DecoderCounters::default());
        let mut d = Decoder::new(counters.clone());
        // Shorter than a header; a fork record cut after its header; a kind nobody knows.
        assert!(d.decode(&[1, 2, 3]).is_none());
        let mut fork: ForkEv = zeroed();
        fork.h.kind = EV_FORK;
        let bytes = bytes_of(&fork);
        assert!(d.decode(&bytes[..std::mem::size_of::<EvHdr>()]).is_none());
        let mut unknown: ForkEv = zeroed();
        unknown.h.kind = 200;
        assert!(d.decode(&bytes_of(&unknown)).is_none());
        assert_eq!(counters.unreadable_records(), 3);
        // A whole record decodes, and counts nothing.
        assert!(d.decode(&bytes).is_some());
        assert_eq!(counters.unreadable_records(), 3);
        assert_eq!(counters.dns(), (0, 0));
    }

    #[test]
    fn dns_records_that_cannot_be_read_are_counted() {
        let counters = Arc::new(DecoderCounters::default());
        let mut d = Decoder::new(counters.clone());
        let mut ev: DnsEv = zeroed();
        ev.h.kind = EV_DNS;
        ev.data[..7].copy_from_slice(b"garbage");
        ev.len = 7;
        assert!(d.decode(&bytes_of(&ev)).is_none());
        assert_eq!(counters.dns(), (0, 1));
        ev.h.flags = DNS_TRUNCATED;
        assert!(d.decode(&bytes_of(&ev)).is_none());
        assert_eq!(counters.dns(), (1, 2));
    }

    #[test]
    fn unwatched_cgroups_are_forgotten() {
        let mut d = decoder();
        d.watch(7, "/sys/fs/cgroup/x".into());
        assert!(d.knows(7));
        d.forget(7);
        assert!(!d.knows(7));
        // A late record of the forgotten cgroup is still decoded, and keeps nothing.
        let mut bytes = exec_record(0, "/usr/bin/true", b"true\0");
        let at = std::mem::offset_of!(EvHdr, cgroup_id);
        bytes[at..at + 8].copy_from_slice(&7u64.to_ne_bytes());
        let x = decode_exec(&mut d, &bytes);
        assert_eq!((x.cgroup_id, x.user.as_deref()), (7, Some("root")));
        assert!(!d.knows(7) && d.cgroups.is_empty());
    }
}
