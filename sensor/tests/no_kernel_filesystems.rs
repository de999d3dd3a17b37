//! The sensor needs no tracefs, no debugfs and no bpffs (issue #11): a fresh host mounts none
//! of them, and neither does a kind node's sensor pod.
//!
//! The sensor binary runs in a mount namespace of its own where all three are gone: the child
//! process, before it execs the sensor, unshares its mount namespace, makes every mount in it
//! private (nothing it does reaches the host), mounts tracefs and debugfs itself and opens
//! debugfs's `tracing` automount (so the unmounting below removes real mounts on every machine,
//! also one that mounts none), then unmounts every tracefs, debugfs and bpf filesystem and
//! checks that none is left. Then the sensor must report an exec, a listen, an accept and a
//! connect of its watched cgroup (the exec tracepoint, the socket-state tracepoint and the
//! connect hook). The sensor's own mountinfo is read from outside while it runs, and the host's
//! mounts must be the same afterwards.
#![allow(unsafe_code)] // tests make the system calls they check (geteuid, kill, mount, setns...)

mod common;

use std::ffi::CString;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use guardlab_host::{Mount, parse_mountinfo};
use guardlab_sensor::{Event, EventBody};

/// The filesystems the sensor must not need (mountinfo's names).
const UNNEEDED: [&str; 3] = ["tracefs", "debugfs", "bpf"];
const TRACING: &str = "/sys/kernel/tracing";
const DEBUG: &str = "/sys/kernel/debug";
/// debugfs's automount point for tracefs.
const DEBUG_TRACING: &str = "/sys/kernel/debug/tracing";
const BPFFS: &str = "/sys/fs/bpf";

// statfs(2)'s f_type of each (linux/magic.h).
const TRACEFS_MAGIC: i64 = 0x7472_6163;
const DEBUGFS_MAGIC: i64 = 0x6462_6720;
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// How long the sensor has for its first lines and for each wanted event.
const WAIT: Duration = Duration::from_secs(20);

fn unneeded(mounts: &[Mount]) -> Vec<(String, String)> {
    let mut found: Vec<(String, String)> = mounts
        .iter()
        .filter(|m| UNNEEDED.contains(&m.fstype.as_str()))
        .map(|m| (m.fstype.clone(), m.target.display().to_string()))
        .collect();
    found.sort();
    found
}

/// What of the host's mount namespace the test could change: tracefs, debugfs and bpf mounts
/// anywhere, and every mount under /sys/kernel and /sys/fs/bpf.
fn host_kernel_mounts() -> Vec<(String, String)> {
    let mounts = guardlab_host::mounts().expect("reading the host's mountinfo");
    let mut found: Vec<(String, String)> = mounts
        .iter()
        .filter(|m| {
            UNNEEDED.contains(&m.fstype.as_str())
                || m.target.starts_with("/sys/kernel")
                || m.target.starts_with(BPFFS)
        })
        .map(|m| (m.fstype.clone(), m.target.display().to_string()))
        .collect();
    found.sort();
    found
}

fn c(path: &str) -> CString {
    CString::new(path).expect("no NUL in a path")
}

/// What the child does between fork and exec. Everything is prepared here, in the parent: the
/// child only makes system calls (no allocation between fork and exec in a threaded process).
/// It writes what it did, a line per step, to `log` (a pipe the parent reads), so a failure
/// says which step failed.
struct BareKernelMounts {
    log: RawFd,
    root: CString,
    tracing: CString,
    debug: CString,
    debug_tracing: CString,
    bpffs: CString,
    tracefs_type: CString,
    debugfs_type: CString,
    /// Every mount point to unmount, deepest first: the mounts of the namespace the child
    /// starts with (a copy of this one, read through /proc/self/mountinfo), and the ones it
    /// makes itself.
    targets: Vec<CString>,
}

impl BareKernelMounts {
    fn new(log: RawFd) -> BareKernelMounts {
        let here = guardlab_host::mounts().expect("reading /proc/self/mountinfo");
        let mut targets: Vec<String> = unneeded(&here).into_iter().map(|(_, t)| t).collect();
        targets.extend([DEBUG_TRACING, TRACING, DEBUG].map(String::from));
        targets.sort_by_key(|t| std::cmp::Reverse(t.matches('/').count()));
        targets.dedup();
        BareKernelMounts {
            log,
            root: c("/"),
            tracing: c(TRACING),
            debug: c(DEBUG),
            debug_tracing: c(DEBUG_TRACING),
            bpffs: c(BPFFS),
            tracefs_type: c("tracefs"),
            debugfs_type: c("debugfs"),
            targets: targets.iter().map(|t| c(t)).collect(),
        }
    }

    fn write(&self, bytes: &[u8]) {
        // SAFETY: write(2) of a valid buffer to our pipe; async-signal-safe.
        unsafe { libc::write(self.log, bytes.as_ptr().cast(), bytes.len()) };
    }

    /// One line of the log, in parts (no allocation to join them).
    fn say(&self, parts: &[&[u8]]) {
        for part in parts {
            self.write(part);
        }
        self.write(b"\n");
    }

    /// The error of the call that just failed, after saying which step it was.
    fn failed(&self, step: &[&[u8]]) -> std::io::Error {
        let error = std::io::Error::last_os_error();
        self.write(b"FAILED: ");
        self.say(step);
        error
    }

    /// statfs(2)'s f_type at `path`, or None when nothing is there.
    fn fs_type(path: &CString) -> Option<i64> {
        // SAFETY: statfs fills the zeroed struct we own.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: a valid C string and a valid out pointer.
        let rc = unsafe { libc::statfs(path.as_ptr(), &mut st) };
        (rc == 0).then_some(st.f_type as i64)
    }

    fn mount(&self, fstype: &CString, target: &CString, magic: i64) -> std::io::Result<()> {
        let step: [&[u8]; 4] = [b"mount -t ", fstype.as_bytes(), b" at ", target.as_bytes()];
        // SAFETY: mount(2) with valid C strings and no data.
        let rc = unsafe {
            libc::mount(
                fstype.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(self.failed(&step));
        }
        if Self::fs_type(target) != Some(magic) {
            self.say(&[b"FAILED: ", target.as_bytes(), b" is not what was mounted"]);
            return Err(std::io::Error::from_raw_os_error(libc::EIO));
        }
        self.say(&[b"mounted ", fstype.as_bytes(), b" at ", target.as_bytes()]);
        Ok(())
    }

    fn in_child(&self) -> std::io::Result<()> {
        // The child is single-threaded and only this process's mount namespace changes.
        // SAFETY: a plain system call on values this code owns; failure is checked.
        if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
            return Err(self.failed(&[b"unshare(CLONE_NEWNS)"]));
        }
        self.say(&[b"in a mount namespace of its own"]);
        // SAFETY: a plain system call on values this code owns; failure is checked.
        let rc = unsafe {
            libc::mount(
                std::ptr::null(),
                self.root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(self.failed(&[b"mount --make-rprivate /"]));
        }
        self.say(&[b"every mount private"]);

        self.mount(&self.tracefs_type, &self.tracing, TRACEFS_MAGIC)?;
        self.mount(&self.debugfs_type, &self.debug, DEBUGFS_MAGIC)?;
        // Entering debugfs's tracing directory mounts tracefs there (an automount).
        // SAFETY: a plain system call on values this code owns; failure is checked.
        let fd = unsafe {
            libc::open(
                self.debug_tracing.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(self.failed(&[b"open ", self.debug_tracing.as_bytes()]));
        }
        // SAFETY: a plain system call on values this code owns; failure is checked.
        unsafe { libc::close(fd) };
        if Self::fs_type(&self.debug_tracing) != Some(TRACEFS_MAGIC) {
            self.say(&[
                b"FAILED: no tracefs automounted at ",
                self.debug_tracing.as_bytes(),
            ]);
            return Err(std::io::Error::from_raw_os_error(libc::EIO));
        }
        self.say(&[b"tracefs automounted at ", self.debug_tracing.as_bytes()]);

        for target in &self.targets {
            // Mounts can be stacked on one point: unmount until none is left there. A detach
            // also takes the mounts below it (the automount with its debugfs).
            for _ in 0..16 {
                // SAFETY: a plain system call on values this code owns; failure is checked.
                if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } == 0 {
                    self.say(&[b"unmounted ", target.as_bytes()]);
                    continue;
                }
                match std::io::Error::last_os_error().raw_os_error() {
                    // Not (or no longer) a mount point, or gone with its parent mount.
                    Some(libc::EINVAL) | Some(libc::ENOENT) => break,
                    _ => return Err(self.failed(&[b"umount ", target.as_bytes()])),
                }
            }
        }

        for path in [&self.tracing, &self.debug, &self.debug_tracing, &self.bpffs]
            .into_iter()
            .chain(&self.targets)
        {
            if let Some(t) = Self::fs_type(path)
                && [TRACEFS_MAGIC, DEBUGFS_MAGIC, BPF_FS_MAGIC].contains(&t)
            {
                self.say(&[b"FAILED: still mounted at ", path.as_bytes()]);
                return Err(std::io::Error::from_raw_os_error(libc::EBUSY));
            }
        }
        self.say(&[b"no tracefs, debugfs or bpffs left"]);
        Ok(())
    }
}

/// The sensor process: killed (and reaped) if the test ends early.
struct Sensor(Child);

impl Drop for Sensor {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn mount_namespace(pid: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/mnt"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/ns/mnt: {e}"))
        .display()
        .to_string()
}

/// The tracefs, debugfs and bpf mounts the running sensor's mount namespace has.
fn sensor_unneeded_mounts(pid: u32) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/mountinfo: {e}"));
    unneeded(&parse_mountinfo(&text))
}

#[test]
fn the_sensor_reports_execs_and_sockets_with_no_tracefs_debugfs_or_bpffs_mounted() {
    require_root();
    let host_before = host_kernel_mounts();
    let cg = cgroup("bare-mounts");

    let (mut log, log_writer) = std::io::pipe().expect("a pipe for the child's steps");
    let child = BareKernelMounts::new(log_writer.as_raw_fd());
    let mut command = Command::new(SENSOR_BIN);
    command
        .arg("--cgroup")
        .arg(cg.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: in_child only makes system calls on memory prepared before the fork.
    unsafe { command.pre_exec(move || child.in_child()) };
    let spawned = command.spawn();
    // The child's copy of the pipe closed at its exec (or exit); ours closes here.
    drop(command);
    drop(log_writer);
    let mut steps = String::new();
    log.read_to_string(&mut steps).unwrap();
    eprintln!("the child's steps before it exec'd the sensor:\n{steps}");
    let sensor = Sensor(spawned.unwrap_or_else(|e| {
        panic!("preparing the sensor's mount namespace failed: {e}; its steps:\n{steps}")
    }));
    for step in [
        "in a mount namespace of its own",
        "every mount private",
        "mounted tracefs at /sys/kernel/tracing",
        "mounted debugfs at /sys/kernel/debug",
        "tracefs automounted at /sys/kernel/debug/tracing",
        "unmounted /sys/kernel/tracing",
        "unmounted /sys/kernel/debug",
        "no tracefs, debugfs or bpffs left",
    ] {
        assert!(
            steps.lines().any(|l| l == step),
            "the child did not report {step:?}; its steps:\n{steps}"
        );
    }

    // Checked from outside, in the sensor's own namespace, while it runs.
    let pid = sensor.0.id();
    assert_ne!(
        mount_namespace(&pid.to_string()),
        mount_namespace("self"),
        "the sensor must run in a mount namespace of its own"
    );
    assert_eq!(
        sensor_unneeded_mounts(pid),
        Vec::<(String, String)>::new(),
        "the sensor's mount namespace still has these"
    );

    let mut sensor = sensor;
    let stderr = BufReader::new(sensor.0.stderr.take().unwrap());
    let (err_tx, err_rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = err_tx.send(line);
        }
    });
    let mut stderr_seen = Vec::new();
    let mut stderr_line = |what: &str| -> String {
        let line = err_rx.recv_timeout(WAIT).unwrap_or_else(|_| {
            panic!("the sensor wrote no {what} line; its stderr: {stderr_seen:#?}")
        });
        stderr_seen.push(line.clone());
        line
    };
    let loaded = stderr_line("`loaded eBPF programs`");
    assert!(loaded.contains("loaded eBPF programs"), "{loaded}");
    let watching = stderr_line("`watching`");
    assert!(watching.contains("watching"), "{watching}");

    let events_out = BufReader::new(sensor.0.stdout.take().unwrap());
    let (tx, rx) = mpsc::channel::<Event>();
    std::thread::spawn(move || {
        for (n, line) in events_out.lines().map_while(Result::ok).enumerate() {
            let event = guardlab_sensor::events::parse_line(&line, n + 1)
                .unwrap_or_else(|e| panic!("the sensor's line {}: {e}: {line}", n + 1));
            if tx.send(event).is_err() {
                return;
            }
        }
    });

    // An exec, a listener with an accepted connection, and a connect, all in the cgroup.
    let out = command_in(cg.path(), "/bin/true", &["bare-mounts-marker"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut listener = command_in(cg.path(), PROBE, &["listen", "127.0.0.1:0"]);
    listener.stdout(Stdio::piped());
    let mut listener = listener.spawn().unwrap();
    let mut lines = BufReader::new(listener.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let port: u16 = first
        .strip_prefix("ok listening ")
        .unwrap_or_else(|| panic!("{first}"))
        .parse()
        .unwrap();
    let connect = command_in(cg.path(), PROBE, &["connect", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert!(connect.status.success(), "{}", stdout(&connect));
    let accepted = lines.next().unwrap().unwrap();
    assert!(accepted.starts_with("ok accepted"), "{accepted}");
    assert!(listener.wait().unwrap().success());

    let wanted = |seen: &[Event]| -> [bool; 4] {
        let mut found = [false; 4];
        for event in seen {
            match &event.body {
                EventBody::Exec(x) if x.argv == ["/bin/true", "bare-mounts-marker"] => {
                    found[0] = true
                }
                EventBody::Listen(l) if l.port == port => found[1] = true,
                EventBody::Accept(a) if a.local_port == Some(port) => found[2] = true,
                EventBody::Connect(c) if c.remote_port == port => found[3] = true,
                _ => {}
            }
        }
        found
    };
    let mut seen = Vec::new();
    let deadline = Instant::now() + WAIT;
    while wanted(&seen) != [true; 4] {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(event) => seen.push(event),
            Err(_) => panic!(
                "no [exec, listen, accept, connect] each from the sensor without tracefs, \
                 debugfs or bpffs (found {:?}); saw {seen:#?}",
                wanted(&seen)
            ),
        }
    }

    // The sensor mounted nothing while it worked.
    assert_eq!(
        sensor_unneeded_mounts(pid),
        Vec::<(String, String)>::new(),
        "the sensor's mount namespace has these after it ran"
    );
    // Our own child, which has not been waited for.
    guardlab_host::process::signal(pid, libc::SIGTERM).unwrap();
    let status = sensor.0.wait().unwrap();
    assert!(status.success(), "the sensor at SIGTERM: {status:?}");

    assert_eq!(
        host_kernel_mounts(),
        host_before,
        "the host's mounts changed: the child's mounts or unmounts leaked out of its namespace"
    );
}
