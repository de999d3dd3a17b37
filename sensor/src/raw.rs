//! Rust mirrors of the records and map entries in `bpf/guardlab.h`.
//!
//! Both sides assert the same sizes (the C side with `_Static_assert`), so a layout change on
//! one side only fails to build until the other follows.

use std::mem::size_of;

pub const EV_EXEC: u32 = 1;
pub const EV_FORK: u32 = 2;
pub const EV_EXIT: u32 = 3;
pub const EV_CONNECT: u32 = 4;
pub const EV_LISTEN: u32 = 5;
pub const EV_ACCEPT: u32 = 6;
pub const EV_DNS: u32 = 7;

pub const EXEC_ARGS_TRUNCATED: u32 = 1;
pub const EXEC_PATH_FROM_FILENAME: u32 = 8;

pub const WATCH_EXEC_ENFORCE: u32 = 1;
pub const WATCH_CONNECT_ENFORCE: u32 = 2;

pub const PATH_MAX_LEN: usize = 256;
pub const PATH_BUF: usize = 512;
pub const ARGS_MAX: usize = 1024;
pub const DNS_MAX: usize = 1024;
pub const PORT_RANGES: usize = 16;

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

// SAFETY: plain old data, `repr(C)`, no padding the kernel could leave uninitialised that we
// would read as a reference, and every bit pattern is a valid value.
unsafe impl aya::Pod for ExecAllowKey {}
unsafe impl aya::Pod for NetAllowKey {}
unsafe impl aya::Pod for NetAllowVal {}

const _: () = assert!(size_of::<EvHdr>() == 40);
const _: () = assert!(size_of::<ExecEv>() == 1632);
const _: () = assert!(size_of::<ForkEv>() == 72);
const _: () = assert!(size_of::<ExitEv>() == 48);
const _: () = assert!(size_of::<SockEv>() == 80);
const _: () = assert!(size_of::<DnsEv>() == 1072);
const _: () = assert!(size_of::<ExecAllowKey>() == 264);
// The C key has a u32 prefix length in front (aya's `lpm_trie::Key` adds it): 4 + 24 = 28.
const _: () = assert!(size_of::<NetAllowKey>() == 24);
const _: () = assert!(size_of::<NetAllowVal>() == 68);

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

    #[test]
    fn c_str_stops_at_nul() {
        assert_eq!(c_str(b"/usr/bin/id\0garbage"), "/usr/bin/id");
        assert_eq!(c_str(b"no-nul"), "no-nul");
    }
}
