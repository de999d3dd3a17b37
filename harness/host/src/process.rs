//! Processes of this host, read and signalled one way everywhere: `/proc/<pid>/stat` parsed
//! once ([`ProcStat`]), signals sent through a pidfd of the very process that was looked at
//! ([`Pidfd`]), so that a pid reused between the look and the kill is never signalled.
#![allow(unsafe_code)] // pidfd_open(2) and pidfd_send_signal(2), which neither std nor nix wrap

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// The fields of `/proc/<pid>/stat` that guardlab uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: u32,
    /// The kernel's 15-byte `comm` (between the first `(` and the last `)`).
    pub comm: String,
    /// `R`, `S`, `Z`...
    pub state: char,
    pub ppid: u32,
    /// Process group.
    pub pgrp: u32,
    pub session: u32,
    /// CPU time spent in user mode, in clock ticks (field 14).
    pub utime_ticks: u64,
    /// CPU time spent in kernel mode, in clock ticks (field 15).
    pub stime_ticks: u64,
    /// Start time after boot, in clock ticks (field 22): with the pid, it names a process for
    /// its whole life.
    pub start_ticks: u64,
}

impl ProcStat {
    /// Reads `/proc/<pid>/stat`; `None` when the process is gone (or not visible here).
    pub fn read(pid: u32) -> Option<ProcStat> {
        Self::read_in("/proc", pid)
    }

    /// [`ProcStat::read`] under another procfs mount (a pid namespace's own /proc).
    pub fn read_in(proc_root: &str, pid: u32) -> Option<ProcStat> {
        let text = fs::read_to_string(format!("{proc_root}/{pid}/stat")).ok()?;
        ProcStat::parse(&text)
    }

    /// Parses the text of a stat file. The comm may hold spaces and parentheses: the fields
    /// after it start after the *last* `)`.
    pub fn parse(text: &str) -> Option<ProcStat> {
        let open = text.find('(')?;
        let close = text.rfind(')')?;
        if close < open {
            return None;
        }
        let pid = text[..open].trim().parse().ok()?;
        let comm = text[open + 1..close].to_string();
        let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
        // rest[0] is field 3 (state); field N is rest[N - 3].
        let field = |n: usize| rest.get(n - 3).copied();
        Some(ProcStat {
            pid,
            comm,
            state: field(3)?.chars().next()?,
            ppid: field(4)?.parse().ok()?,
            pgrp: field(5)?.parse().ok()?,
            session: field(6)?.parse().ok()?,
            utime_ticks: field(14)?.parse().ok()?,
            stime_ticks: field(15)?.parse().ok()?,
            start_ticks: field(22)?.parse().ok()?,
        })
    }
}

/// A pidfd: a handle on one process that stays valid (and keeps naming that process, not a
/// successor with the same pid) until it is closed.
#[derive(Debug)]
pub struct Pidfd {
    fd: OwnedFd,
    pid: u32,
}

impl Pidfd {
    /// Opens a pidfd for `pid` (`ESRCH` when there is no such process).
    pub fn open(pid: u32) -> io::Result<Pidfd> {
        // SAFETY: pidfd_open(2) with no flags returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        Ok(Pidfd { fd, pid })
    }

    /// Opens a pidfd for the process `pid` that started at `start_ticks` (its [`ProcStat`]),
    /// checking after opening that it is still that process: `None` when it has exited or its
    /// pid now belongs to another one.
    pub fn open_checked(pid: u32, start_ticks: u64) -> Option<Pidfd> {
        let pidfd = Pidfd::open(pid).ok()?;
        // Once the pidfd is open the pid cannot be reused for another process while the
        // start time still matches: the pidfd names the process we looked at.
        (ProcStat::read(pid)?.start_ticks == start_ticks).then_some(pidfd)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends `signal`; `ESRCH` when the process has exited since.
    pub fn send_signal(&self, signal: i32) -> io::Result<()> {
        // SAFETY: pidfd_send_signal(2) on a descriptor we own, without siginfo or flags.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

// The descriptor, for waiting on it: a pidfd becomes readable when its process has ended.
impl AsFd for Pidfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Pidfd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Sends `signal` to the process `pid` if it is still the one that started at `start_ticks`.
/// `Ok(false)` when it has exited (or its pid was reused): nothing was signalled.
pub fn signal_if_same(pid: u32, start_ticks: u64, signal: i32) -> io::Result<bool> {
    match Pidfd::open_checked(pid, start_ticks) {
        None => Ok(false),
        Some(fd) => match fd.send_signal(signal) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(false),
            Err(e) => Err(e),
        },
    }
}

/// Sends `signal` to whatever process has `pid` now, through a pidfd. For a process this
/// program started and has not reaped (it cannot be reused while a zombie): others should use
/// [`signal_if_same`].
pub fn signal(pid: u32, signal: i32) -> io::Result<bool> {
    match Pidfd::open(pid).and_then(|fd| fd.send_signal(signal)) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_past_a_comm_with_spaces_and_parentheses() {
        let text = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 \
                    1000 100 18446744073709551615\n";
        let stat = ProcStat::parse(text).unwrap();
        assert_eq!(
            stat,
            ProcStat {
                pid: 4242,
                comm: "a (b) c".into(),
                state: 'S',
                ppid: 1,
                pgrp: 4242,
                session: 4242,
                utime_ticks: 1,
                stime_ticks: 2,
                start_ticks: 987654,
            }
        );
        assert_eq!(ProcStat::parse("12 (x) S 1 2"), None, "too short");
        assert_eq!(ProcStat::parse("garbage"), None);
    }

    #[test]
    fn this_process_is_read_and_a_signal_reaches_only_the_same_process() {
        let me = ProcStat::read(std::process::id()).unwrap();
        assert_eq!(me.pid, std::process::id());
        assert!(me.start_ticks > 0);

        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let stat = ProcStat::read(pid).unwrap();
        assert_eq!(stat.ppid, std::process::id());
        // Another start time: not that process, not signalled.
        assert!(!signal_if_same(pid, stat.start_ticks + 1, libc::SIGKILL).unwrap());
        assert!(child.try_wait().unwrap().is_none(), "still running");
        assert!(signal_if_same(pid, stat.start_ticks, libc::SIGKILL).unwrap());
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        // Reaped: gone, nothing to signal.
        assert!(!signal_if_same(pid, stat.start_ticks, libc::SIGKILL).unwrap());
        assert!(ProcStat::read(pid).is_none_or(|s| s.start_ticks != stat.start_ticks));
    }
}
