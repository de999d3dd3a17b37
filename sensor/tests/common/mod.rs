//! Shared by the sensor's integration tests: root check, test cgroups, running commands inside
//! them, collecting events with a deadline, and a client of the binary's control protocol.

#![allow(unsafe_code)] // tests make the system calls they check (geteuid, kill, mount, setns...)
#![allow(
    dead_code,
    reason = "each test binary uses a different part of this module"
)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use guardlab_host::{Host, Requirement, StderrProgress};
use guardlab_sensor::cgroup::{OwnedCgroup, spawn_into};
use guardlab_sensor::events::control::{SensorReply, WatchedContainer};
use guardlab_sensor::{ContainerInfo, Event, EventBody, Sensor, SensorConfig};
use tokio::sync::mpsc::Receiver;

pub const PROBE: &str = env!("CARGO_BIN_EXE_guardlab-sensor-probe");
pub const SENSOR_BIN: &str = env!("CARGO_BIN_EXE_guardlab-sensor");

/// Tests in one binary share the CPU and the kernel's hooks: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// These tests load eBPF programs: without root they fail, saying so.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the sensor tests load eBPF programs and create cgroups: they need root; run them with sudo \
         (sudo -E cargo test -p guardlab-sensor)"
    );
}

/// The host programs a test runs (`ip`, `bpftool`, `unshare`...), through guardlab-host: a
/// fresh machine gets them installed (said first; CI is root), and a failure names the package
/// and the command.
pub fn host_tools(tools: &[&Requirement]) {
    if let Err(e) = Host::new(false).ensure(tools, &StderrProgress) {
        panic!("this test runs host programs: {e}");
    }
}

/// A cgroup name no other test (or test run) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "guardlab-test-{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn cgroup(prefix: &str) -> OwnedCgroup {
    OwnedCgroup::create(&unique(prefix)).expect("creating a test cgroup")
}

pub fn start(config: SensorConfig) -> (Sensor, Events) {
    let mut sensor = Sensor::start(config).expect("starting the sensor");
    let rx = sensor.events().expect("event stream");
    (
        sensor,
        Events {
            rx,
            seen: Vec::new(),
        },
    )
}

pub fn info(name: &str) -> ContainerInfo {
    ContainerInfo {
        container_name: name.into(),
        image: "guardlab/test".into(),
        ..Default::default()
    }
}

/// `program args...` set up to join `cgroup` right before its exec.
pub fn command_in(cgroup: &Path, program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args);
    spawn_into(&mut cmd, cgroup).expect("cgroup path");
    cmd
}

/// Also enter the network namespace `netns` (an open /run/netns/NAME) before exec.
pub fn in_netns(cmd: &mut Command, netns: &std::fs::File) {
    let fd = netns.as_raw_fd();
    // SAFETY: setns is async-signal-safe; the fd stays open until the command has started.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Runs to completion without blocking the runtime (the sensor's reader runs meanwhile).
pub async fn run(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().expect("running a test command"))
        .await
        .unwrap()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub struct Events {
    pub rx: Receiver<Event>,
    pub seen: Vec<Event>,
}

impl Events {
    /// Collects until `done(seen)` holds; panics with everything seen after `timeout`.
    pub async fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[Event]) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        while !done(&self.seen) {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some(event)) => self.seen.push(event),
                Ok(None) => panic!(
                    "event stream ended while waiting for {what}; saw {:#?}",
                    self.seen
                ),
                Err(_) => panic!(
                    "timed out after {timeout:?} waiting for {what}; saw {:#?}",
                    self.seen
                ),
            }
        }
    }

    /// Collects whatever arrives during `d`.
    pub async fn settle(&mut self, d: Duration) {
        let deadline = Instant::now() + d;
        while let Ok(Some(event)) = tokio::time::timeout(
            deadline.saturating_duration_since(Instant::now()),
            self.rx.recv(),
        )
        .await
        {
            self.seen.push(event);
        }
    }
}

pub fn execs(events: &[Event]) -> impl Iterator<Item = &guardlab_sensor::events::ProcessExec> {
    events.iter().filter_map(|e| match &e.body {
        EventBody::Exec(x) => Some(x),
        _ => None,
    })
}

pub fn forks(events: &[Event]) -> impl Iterator<Item = &guardlab_sensor::events::ProcessFork> {
    events.iter().filter_map(|e| match &e.body {
        EventBody::Fork(x) => Some(x),
        _ => None,
    })
}

pub fn exits(events: &[Event]) -> impl Iterator<Item = &guardlab_sensor::events::ProcessExit> {
    events.iter().filter_map(|e| match &e.body {
        EventBody::Exit(x) => Some(x),
        _ => None,
    })
}

pub fn connects(events: &[Event]) -> impl Iterator<Item = &guardlab_sensor::events::Connection> {
    events.iter().filter_map(|e| match &e.body {
        EventBody::Connect(x) => Some(x),
        _ => None,
    })
}

/// The path the kernel reports for an executable: symlinks resolved.
pub fn real(path: impl AsRef<Path>) -> String {
    std::fs::canonicalize(path.as_ref())
        .unwrap_or_else(|e| panic!("{}: {e}", path.as_ref().display()))
        .to_string_lossy()
        .into_owned()
}

/// A network namespace made with `ip netns add`, deleted on drop.
pub struct NetNs {
    pub name: String,
    pub file: std::fs::File,
}

impl NetNs {
    /// A namespace with lo up and the given addresses on lo.
    pub fn create(prefix: &str, addrs: &[&str]) -> NetNs {
        let name = unique(prefix);
        ip(&["netns", "add", &name]);
        let ns = NetNs {
            file: std::fs::File::open(PathBuf::from("/run/netns").join(&name)).expect("netns file"),
            name,
        };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        for a in addrs {
            ip(&["-n", &ns.name, "addr", "add", a, "dev", "lo"]);
        }
        ns
    }

    /// Runs `f` on a thread that has entered the namespace (sockets made there live in it).
    pub fn spawn_in<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let fd = self.file.try_clone().expect("dup netns fd");
        std::thread::spawn(move || {
            // SAFETY: setns on this thread only (network namespaces are per thread).
            let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

pub fn ip(args: &[&str]) {
    host_tools(&[&guardlab_host::catalog::IP]);
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("running ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `bpftool -j ARGS`, parsed.
pub fn bpftool_json(args: &[&str]) -> serde_json::Value {
    host_tools(&[&guardlab_host::catalog::BPFTOOL]);
    let out = Command::new("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .expect("running bpftool");
    assert!(
        out.status.success(),
        "bpftool {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("bpftool -j output")
}

/// The kernel id of the map `name` used by one of `programs` (a sensor's program ids).
pub fn map_id_of(programs: &[u32], name: &str) -> u64 {
    for prog in programs {
        let info = bpftool_json(&["prog", "show", "id", &prog.to_string()]);
        for map in info["map_ids"].as_array().into_iter().flatten() {
            let id = map.as_u64().unwrap();
            let map_info = bpftool_json(&["map", "show", "id", &id.to_string()]);
            if map_info["name"] == name {
                return id;
            }
        }
    }
    panic!("no map {name} among the maps of programs {programs:?}")
}

/// One connection to the sensor: lines out, parsed lines in (each within 10 s).
pub struct Conn {
    writer: TcpStream,
    lines: std::io::Lines<BufReader<TcpStream>>,
}

impl Conn {
    pub fn open(port: u16) -> Conn {
        let conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Conn {
            writer: conn.try_clone().unwrap(),
            lines: BufReader::new(conn).lines(),
        }
    }

    pub fn send(&mut self, line: &str) {
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .unwrap();
    }

    pub fn line(&mut self) -> Option<String> {
        self.lines.next().map(|l| l.expect("a line within 10 s"))
    }

    pub fn event(&mut self) -> Event {
        let line = self.line().expect("the stream stays open");
        guardlab_sensor::events::parse_line(&line, 1).unwrap()
    }

    /// Reads events until `pick` returns something; every event read goes into `seen`.
    pub fn until<T>(&mut self, seen: &mut Vec<Event>, pick: impl Fn(&Event) -> Option<T>) -> T {
        loop {
            let event = self.event();
            let found = pick(&event);
            seen.push(event);
            if let Some(found) = found {
                return found;
            }
        }
    }
}

/// A request line on a connection of its own, and the sensor's one-line reply.
pub fn request(port: u16, line: &str) -> SensorReply {
    let mut conn = Conn::open(port);
    conn.send(line);
    let reply = serde_json::from_str(&conn.line().expect("a reply")).unwrap();
    assert_eq!(conn.line(), None, "the sensor closes after its reply");
    reply
}

/// `{"op":"kill",...}` on a connection of its own, and the reply.
pub fn kill(port: u16, pid: u32, tree: bool) -> SensorReply {
    request(
        port,
        &format!(r#"{{"op":"kill","pid":{pid},"tree":{tree}}}"#),
    )
}

/// `{"op":"kill_group",...}` on a connection of its own, and the reply.
pub fn kill_group(port: u16, pid: u32) -> SensorReply {
    request(port, &format!(r#"{{"op":"kill_group","pid":{pid}}}"#))
}

/// A loopback port nothing listens on (for the sensor's --serve).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A container id (64 hex digits) unique to this test run and the cgroup `parent`.
pub fn container_id(n: u64, parent: &OwnedCgroup) -> String {
    format!("{n:016x}{:016x}{:032x}", std::process::id(), parent.id())
}

pub fn watched(id: &str, pod: &str) -> WatchedContainer {
    WatchedContainer {
        container_id: id.into(),
        container_name: "notebook".into(),
        image: "guardlab/test:1".into(),
        namespace: "cryptominer".into(),
        pod_name: pod.into(),
        pod_uid: "uid-1".into(),
        pod_labels: [("app".to_string(), "jupyter-notebook".to_string())].into(),
        ..Default::default()
    }
}

pub fn subscribe(containers: &[WatchedContainer]) -> String {
    serde_json::json!({"op": "subscribe", "containers": containers}).to_string()
}

pub fn exec_with_arg(event: &Event, arg: &str) -> Option<u32> {
    match &event.body {
        EventBody::Exec(x) if x.argv.iter().any(|a| a == arg) => Some(x.pid),
        _ => None,
    }
}

pub fn wait_gone(child: &mut std::process::Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "pid {} still runs", child.id());
        std::thread::sleep(Duration::from_millis(20));
    }
}
