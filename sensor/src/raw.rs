//! Rust mirrors of the records and map entries in `bpf/guardlab.h`.
//!
//! `bpf/guardlab.bpf.c` pins the size and every field offset of these structs with `SIZE` and
//! `LAYOUT` lines that clang checks; [`LAYOUT`] and [`SIZES`] below give the Rust side's
//! values, and the `layout_matches_the_c_side` test compares the two line by line. A layout
//! change on one side fails until the other follows.
#![allow(unsafe_code)] // kernel records copied from ring buffer bytes into the plain-old-data structs they are

#[cfg(test)]
use std::mem::offset_of;
use std::mem::size_of;

pub const EV_EXEC: u32 = 1;
pub const EV_FORK: u32 = 2;
pub const EV_EXIT: u32 = 3;
pub const EV_CONNECT: u32 = 4;
pub const EV_LISTEN: u32 = 5;
pub const EV_ACCEPT: u32 = 6;
pub const EV_DNS: u32 = 7;

pub const EXEC_ARGS_TRUNCATED: u32 = 1;
pub const EXEC_PATH_TRUNCATED: u32 = 2;
pub const EXEC_KILLED: u32 = 4;
pub const EXEC_PATH_FROM_FILENAME: u32 = 8;
pub const EXEC_PATH_DETACHED: u32 = 16;
// EXEC_KILL_FAILED (32) is not read here: the kernel also counts it in `kill_failures`.

pub const DNS_TRUNCATED: u32 = 1;

pub const WATCH_EXEC_ENFORCE: u32 = 1;
pub const WATCH_CONNECT_ENFORCE: u32 = 2;
pub const WATCH_TREE_ENFORCE: u32 = 4;
pub const WATCH_DNS_ALLOW: u32 = 8;

pub const PATH_MAX_LEN: usize = 256;
pub const PATH_BUF: usize = 512;
pub const ARGS_MAX: usize = 1024;
pub const DNS_MAX: usize = 4096;
pub const PORT_RANGES: usize = 16;
pub const TREE_PATH: usize = 244;
pub const DNS_NAME: usize = 248;

pub const IPPROTO_UDP: u8 = 17;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EvHdr {
    pub kind: u32,
    pub pid: u32,
    pub ts: u64,
    pub cgroup_id: u64,
    pub start: u64,
    pub tid: u32,
    pub flags: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExecEv {
    pub h: EvHdr,
    pub ppid: u32,
    pub ns_pid: u32,
    pub pstart: u64,
    pub uid: u32,
    pub euid: u32,
    pub gid: u32,
    pub args_len: u32,
    pub comm: [u8; 16],
    pub key_cgroup: u64,
    pub path: [u8; PATH_BUF],
    pub args: [u8; ARGS_MAX],
}

/// The part of [`ExecEv`] that is always sent: the kernel sends only `args_len` bytes of argv.
pub const EXEC_FIXED: usize = std::mem::offset_of!(ExecEv, args);

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ForkEv {
    pub h: EvHdr,
    pub ppid: u32,
    pub ns_pid: u32,
    pub pstart: u64,
    pub comm: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExitEv {
    pub h: EvHdr,
    pub exit_code: u32,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SockEv {
    pub h: EvHdr,
    pub protocol: u8,
    pub refused: u8,
    pub lport: u16,
    pub rport: u16,
    pub _pad: u16,
    pub laddr: [u8; 16],
    pub raddr: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct DnsEv {
    pub h: EvHdr,
    pub len: u32,
    pub _pad: u32,
    pub data: [u8; DNS_MAX],
}

pub const DNS_FIXED: usize = std::mem::offset_of!(DnsEv, data);

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExecAllowKey {
    pub cgroup_id: u64,
    pub path: [u8; PATH_MAX_LEN],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NetAllowKey {
    /// The cgroup id's bytes, then the IPv6 (or IPv4-mapped) address; aya's LPM key adds
    /// the prefix length in front.
    pub cgroup_id: [u8; 8],
    pub addr: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetAllowVal {
    pub count: u32,
    pub ranges: [PortRange; PORT_RANGES],
}

/// Key of `exec_tree` after aya's LPM prefix length: (cgroup, parent node) then path bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExecTreeKey {
    pub cgroup_id: [u8; 8],
    pub parent: [u8; 4],
    pub path: [u8; TREE_PATH],
}

/// Key of `dns_names` after aya's LPM prefix length: cgroup, then the reversed name's bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DnsNameKey {
    pub cgroup_id: [u8; 8],
    pub name: [u8; DNS_NAME],
}

/// Key of `dns_allow`: an address an allowed name resolved to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DnsAllowKey {
    pub cgroup_id: u64,
    pub addr: [u8; 16],
}

/// Value of `resolvers`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resolver {
    pub addr: [u8; 16],
}

/// Key of the `listeners` map: a listening socket's cgroup and port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ListenerKey {
    pub cgroup_id: u64,
    pub port: u32,
    pub _pad: u32,
}

/// Value of the `listeners` map: the process that called listen().
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcKey {
    pub pid: u32,
    pub _pad: u32,
    pub start: u64,
}

// SAFETY: aya::Pod asks for types that may be copied to and from the kernel as raw bytes. These
// are `repr(C)` structs of integers and integer arrays: every bit pattern is a valid value, and
// none has implicit padding (their sizes are the sums of their fields, checked by SIZES), so
// no uninitialised byte is handed to the kernel.
unsafe impl aya::Pod for ExecAllowKey {}
// SAFETY: as above.
unsafe impl aya::Pod for NetAllowKey {}
// SAFETY: as above.
unsafe impl aya::Pod for NetAllowVal {}
// SAFETY: as above.
unsafe impl aya::Pod for ListenerKey {}
// SAFETY: as above.
unsafe impl aya::Pod for ProcKey {}
// SAFETY: as above.
unsafe impl aya::Pod for ExecTreeKey {}
// SAFETY: as above.
unsafe impl aya::Pod for DnsNameKey {}
// SAFETY: as above.
unsafe impl aya::Pod for DnsAllowKey {}
// SAFETY: as above.
unsafe impl aya::Pod for Resolver {}

#[cfg(test)]
/// The bytes aya's `lpm_trie::Key` puts in front of [`NetAllowKey`]: the u32 prefix length,
/// which the C struct `net_allow_key` declares itself.
const LPM_PREFIX: usize = 4;

#[cfg(test)]
/// `(C struct, field, offset)` for every field mirrored here, in the C names. Compared with
/// the `LAYOUT(...)` lines of `bpf/guardlab.bpf.c` by a test.
pub const LAYOUT: &[(&str, &str, usize)] = &[
    ("ev_hdr", "kind", offset_of!(EvHdr, kind)),
    ("ev_hdr", "pid", offset_of!(EvHdr, pid)),
    ("ev_hdr", "ts", offset_of!(EvHdr, ts)),
    ("ev_hdr", "cgroup_id", offset_of!(EvHdr, cgroup_id)),
    ("ev_hdr", "start", offset_of!(EvHdr, start)),
    ("ev_hdr", "tid", offset_of!(EvHdr, tid)),
    ("ev_hdr", "flags", offset_of!(EvHdr, flags)),
    ("exec_ev", "h", offset_of!(ExecEv, h)),
    ("exec_ev", "ppid", offset_of!(ExecEv, ppid)),
    ("exec_ev", "ns_pid", offset_of!(ExecEv, ns_pid)),
    ("exec_ev", "pstart", offset_of!(ExecEv, pstart)),
    ("exec_ev", "uid", offset_of!(ExecEv, uid)),
    ("exec_ev", "euid", offset_of!(ExecEv, euid)),
    ("exec_ev", "gid", offset_of!(ExecEv, gid)),
    ("exec_ev", "args_len", offset_of!(ExecEv, args_len)),
    ("exec_ev", "comm", offset_of!(ExecEv, comm)),
    ("exec_ev", "key_cgroup", offset_of!(ExecEv, key_cgroup)),
    ("exec_ev", "path", offset_of!(ExecEv, path)),
    ("exec_ev", "args", offset_of!(ExecEv, args)),
    ("fork_ev", "h", offset_of!(ForkEv, h)),
    ("fork_ev", "ppid", offset_of!(ForkEv, ppid)),
    ("fork_ev", "ns_pid", offset_of!(ForkEv, ns_pid)),
    ("fork_ev", "pstart", offset_of!(ForkEv, pstart)),
    ("fork_ev", "comm", offset_of!(ForkEv, comm)),
    ("exit_ev", "h", offset_of!(ExitEv, h)),
    ("exit_ev", "exit_code", offset_of!(ExitEv, exit_code)),
    ("exit_ev", "_pad", offset_of!(ExitEv, _pad)),
    ("sock_ev", "h", offset_of!(SockEv, h)),
    ("sock_ev", "protocol", offset_of!(SockEv, protocol)),
    ("sock_ev", "refused", offset_of!(SockEv, refused)),
    ("sock_ev", "lport", offset_of!(SockEv, lport)),
    ("sock_ev", "rport", offset_of!(SockEv, rport)),
    ("sock_ev", "_pad", offset_of!(SockEv, _pad)),
    ("sock_ev", "laddr", offset_of!(SockEv, laddr)),
    ("sock_ev", "raddr", offset_of!(SockEv, raddr)),
    ("dns_ev", "h", offset_of!(DnsEv, h)),
    ("dns_ev", "len", offset_of!(DnsEv, len)),
    ("dns_ev", "_pad", offset_of!(DnsEv, _pad)),
    ("dns_ev", "data", offset_of!(DnsEv, data)),
    (
        "exec_allow_key",
        "cgroup_id",
        offset_of!(ExecAllowKey, cgroup_id),
    ),
    ("exec_allow_key", "path", offset_of!(ExecAllowKey, path)),
    ("net_allow_key", "prefixlen", 0),
    (
        "net_allow_key",
        "cgroup_id",
        LPM_PREFIX + offset_of!(NetAllowKey, cgroup_id),
    ),
    (
        "net_allow_key",
        "addr",
        LPM_PREFIX + offset_of!(NetAllowKey, addr),
    ),
    ("port_range", "lo", offset_of!(PortRange, lo)),
    ("port_range", "hi", offset_of!(PortRange, hi)),
    ("net_allow_val", "count", offset_of!(NetAllowVal, count)),
    ("net_allow_val", "ranges", offset_of!(NetAllowVal, ranges)),
    (
        "listener_key",
        "cgroup_id",
        offset_of!(ListenerKey, cgroup_id),
    ),
    ("listener_key", "port", offset_of!(ListenerKey, port)),
    ("listener_key", "_pad", offset_of!(ListenerKey, _pad)),
    ("proc_key", "pid", offset_of!(ProcKey, pid)),
    ("proc_key", "_pad", offset_of!(ProcKey, _pad)),
    ("proc_key", "start", offset_of!(ProcKey, start)),
    ("exec_tree_key", "prefixlen", 0),
    (
        "exec_tree_key",
        "cgroup_id",
        LPM_PREFIX + offset_of!(ExecTreeKey, cgroup_id),
    ),
    (
        "exec_tree_key",
        "parent",
        LPM_PREFIX + offset_of!(ExecTreeKey, parent),
    ),
    (
        "exec_tree_key",
        "path",
        LPM_PREFIX + offset_of!(ExecTreeKey, path),
    ),
    ("dns_name_key", "prefixlen", 0),
    (
        "dns_name_key",
        "cgroup_id",
        LPM_PREFIX + offset_of!(DnsNameKey, cgroup_id),
    ),
    (
        "dns_name_key",
        "name",
        LPM_PREFIX + offset_of!(DnsNameKey, name),
    ),
    (
        "dns_allow_key",
        "cgroup_id",
        offset_of!(DnsAllowKey, cgroup_id),
    ),
    ("dns_allow_key", "addr", offset_of!(DnsAllowKey, addr)),
    ("resolver", "addr", offset_of!(Resolver, addr)),
];

#[cfg(test)]
/// `(C struct, size)` of every struct mirrored here; compared with the `SIZE(...)` lines.
pub const SIZES: &[(&str, usize)] = &[
    ("ev_hdr", size_of::<EvHdr>()),
    ("exec_ev", size_of::<ExecEv>()),
    ("fork_ev", size_of::<ForkEv>()),
    ("exit_ev", size_of::<ExitEv>()),
    ("sock_ev", size_of::<SockEv>()),
    ("dns_ev", size_of::<DnsEv>()),
    ("exec_allow_key", size_of::<ExecAllowKey>()),
    ("net_allow_key", LPM_PREFIX + size_of::<NetAllowKey>()),
    ("port_range", size_of::<PortRange>()),
    ("net_allow_val", size_of::<NetAllowVal>()),
    ("listener_key", size_of::<ListenerKey>()),
    ("proc_key", size_of::<ProcKey>()),
    ("exec_tree_key", LPM_PREFIX + size_of::<ExecTreeKey>()),
    ("dns_name_key", LPM_PREFIX + size_of::<DnsNameKey>()),
    ("dns_allow_key", size_of::<DnsAllowKey>()),
    ("resolver", size_of::<Resolver>()),
];

/// Reads a `T` from the front of a ring buffer record, zero-filling what the kernel did not
/// send (exec and DNS records are sent without their unused tail). `None` when the record is
/// shorter than `min` bytes.
pub fn read_record<T: Copy>(bytes: &[u8], min: usize) -> Option<T> {
    if bytes.len() < min || min > size_of::<T>() {
        return None;
    }
    let mut value = std::mem::MaybeUninit::<T>::zeroed();
    let n = bytes.len().min(size_of::<T>());
    // SAFETY: `value` is `size_of::<T>()` bytes and we copy at most that many; every `T` used
    // here is a `repr(C)` struct of integers and byte arrays, valid for any bit pattern
    // (zero-filled where the record was short).
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), value.as_mut_ptr().cast::<u8>(), n);
        Some(value.assume_init())
    }
}

#[cfg(test)]
/// The bytes of a record struct as the kernel sends them, for tests that feed the reader.
pub fn record_bytes<T: Copy>(record: &T) -> Vec<u8> {
    // SAFETY: `record` is a valid reference to `size_of::<T>()` bytes; the record structs of
    // this module are `repr(C)` structs of integers and byte arrays without padding, so all of
    // those bytes are initialised.
    unsafe {
        std::slice::from_raw_parts((record as *const T).cast::<u8>(), size_of::<T>()).to_vec()
    }
}

/// The text before the first NUL.
pub fn c_str(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_records_are_zero_filled_and_too_short_ones_refused() {
        let mut bytes = vec![0u8; EXEC_FIXED + 3];
        bytes[0] = EV_EXEC as u8;
        bytes[EXEC_FIXED..].copy_from_slice(b"a\0b");
        let ev: ExecEv = read_record(&bytes, EXEC_FIXED).unwrap();
        assert_eq!(ev.h.kind, EV_EXEC);
        assert_eq!(&ev.args[..4], b"a\0b\0");
        assert!(read_record::<ExecEv>(&bytes[..EXEC_FIXED - 1], EXEC_FIXED).is_none());
    }

    /// The `LAYOUT(struct, field, offset);` and `SIZE(struct, size);` lines of the C source.
    fn c_layout_lines(macro_name: &str) -> Vec<Vec<String>> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/bpf/guardlab.bpf.c");
        let source = std::fs::read_to_string(path).unwrap();
        let prefix = format!("{macro_name}(");
        source
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix)?.strip_suffix(");"))
            .map(|args| args.split(',').map(|a| a.trim().to_string()).collect())
            .collect()
    }

    #[test]
    fn layout_matches_the_c_side() {
        let mut c: Vec<(String, String, usize)> = c_layout_lines("LAYOUT")
            .into_iter()
            .map(|a| (a[0].clone(), a[1].clone(), a[2].parse().unwrap()))
            .collect();
        let mut rust: Vec<(String, String, usize)> = LAYOUT
            .iter()
            .map(|(s, f, o)| (s.to_string(), f.to_string(), *o))
            .collect();
        c.sort();
        rust.sort();
        assert!(
            c.len() > 40,
            "the LAYOUT lines of guardlab.bpf.c were not found: {c:?}"
        );
        assert_eq!(
            rust, c,
            "raw.rs (left) and guardlab.bpf.c (right) disagree on offsets"
        );

        let mut c: Vec<(String, usize)> = c_layout_lines("SIZE")
            .into_iter()
            .map(|a| (a[0].clone(), a[1].parse().unwrap()))
            .collect();
        let mut rust: Vec<(String, usize)> =
            SIZES.iter().map(|(s, n)| (s.to_string(), *n)).collect();
        c.sort();
        rust.sort();
        assert_eq!(
            rust, c,
            "raw.rs (left) and guardlab.bpf.c (right) disagree on sizes"
        );
    }

    #[test]
    fn c_str_stops_at_nul() {
        assert_eq!(c_str(b"/usr/bin/id\0garbage"), "/usr/bin/id");
        assert_eq!(c_str(b"no-nul"), "no-nul");
    }
}
