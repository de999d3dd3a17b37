//! A child process run to its end and measured by the kernel: its exit, its peak resident
//! memory (`ru_maxrss` from wait4(2), which covers the child and the descendants it waited
//! for) and its wall time. The child may be given an address-space ceiling, so that a parser
//! that would take the machine's memory fails inside the ceiling instead (and is counted as a
//! crash) rather than taking the machine down with it.
#![allow(unsafe_code)] // wait4(2) for the child's rusage, setrlimit(2) between fork and exec

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How a measured child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    Code(i32),
    Signal(i32),
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Code(c) => write!(f, "exit {c}"),
            Ended::Signal(s) => write!(f, "killed by signal {s}"),
        }
    }
}

/// What the kernel said about a child that ended.
#[derive(Clone, Copy, Debug)]
pub struct Measured {
    pub ended: Ended,
    /// Peak resident set, bytes.
    pub peak_rss: u64,
    pub wall: Duration,
    /// It was killed for running past its deadline.
    pub timed_out: bool,
}

impl Measured {
    pub fn peak_mb(&self) -> f64 {
        self.peak_rss as f64 / 1_000_000.0
    }
}

/// Give `command` at most `bytes` of address space (RLIMIT_AS), set between fork and exec.
pub fn limit_address_space(command: &mut Command, bytes: u64) {
    let limit = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: bytes,
    };
    // SAFETY: setrlimit is async-signal-safe and only reads `limit`, copied into the closure;
    // nothing is allocated between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Whether `pid`, our child, has ended, without reaping it (so its pid stays ours to signal).
fn has_ended(pid: libc::pid_t) -> std::io::Result<bool> {
    // SAFETY: an all-zero siginfo_t is a valid value of the plain C struct.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid on our own child with a valid pointer; WNOWAIT leaves it unreaped.
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: waitid filled `info` (si_pid is 0 when the child has not ended).
    Ok(unsafe { info.si_pid() } != 0)
}

/// Wait for `child` (started at `started`) with wait4(2) and return what the kernel measured.
/// Past `deadline` it is killed (SIGKILL) and `timed_out` is set. `child` must not have been
/// waited for; it is reaped here.
pub fn wait(
    child: &Child,
    started: Instant,
    deadline: Option<Duration>,
) -> std::io::Result<Measured> {
    let pid = child.id() as libc::pid_t;
    let mut timed_out = false;
    if let Some(limit) = deadline {
        while !has_ended(pid)? {
            if !timed_out && started.elapsed() > limit {
                // SAFETY: kill(2) of our child, which has not been reaped (WNOWAIT above), so
                // the pid is still its.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                timed_out = true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero rusage is a valid value of the plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: wait4 on our own unreaped child, with valid pointers to locals.
        let got = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if got == pid {
            break;
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
    let wall = started.elapsed();
    let ended = if libc::WIFSIGNALED(status) {
        Ended::Signal(libc::WTERMSIG(status))
    } else {
        Ended::Code(libc::WEXITSTATUS(status))
    };
    Ok(Measured {
        ended,
        // Linux reports ru_maxrss in kilobytes.
        peak_rss: usage.ru_maxrss as u64 * 1024,
        wall,
        timed_out,
    })
}

/// Run `command` to its end (killed past `deadline`), its standard output and error into
/// files, measured.
pub fn run(
    command: &mut Command,
    stdout: &Path,
    stderr: &Path,
    deadline: Option<Duration>,
) -> std::io::Result<Measured> {
    command
        .stdin(Stdio::null())
        .stdout(File::create(stdout)?)
        .stderr(File::create(stderr)?);
    let started = Instant::now();
    let child = command.spawn()?;
    wait(&child, started, deadline)
}

/// The last `n` lines of `text`, on one line.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" / ")
}
