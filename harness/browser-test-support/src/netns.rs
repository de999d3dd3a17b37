//! A network namespace with only loopback, for a browser test: the browser, its driver and the
//! server under test all run there, so a request to anything but 127.0.0.0/8 fails at once
//! ("network unreachable") instead of leaving the machine.
//!
//! The namespace belongs to one thread made for it: the thread unshares its network namespace,
//! brings `lo` up and runs the test's body on a tokio runtime of its own. Sockets opened and
//! processes started from that thread (and threads it starts) live in the namespace; the rest of
//! the test process stays in the host's.

use std::fs::{self, File};
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use guardlab_host::{Host, Progress, catalog};
use nix::sched::CloneFlags;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::BrowserTestError;

/// Where a thread's network namespace is, as `/proc` names it: its inode.
fn current_netns_inode() -> Result<u64, BrowserTestError> {
    fs::metadata("/proc/thread-self/ns/net")
        .map(|m| m.ino())
        .map_err(|source| BrowserTestError::io("reading /proc/thread-self/ns/net", source))
}

/// A network namespace with only `lo`, owned by a thread of its own.
pub struct LoopbackNetns;

impl LoopbackNetns {
    /// What the namespace's setup needs from the host (`ip`, to bring `lo` up), plus the
    /// browser's requirements: installed now, before the namespace exists, because inside it
    /// apt-get cannot reach its mirror.
    pub fn ensure_host(progress: &dyn Progress) -> Result<(), BrowserTestError> {
        let host = Host::new(false);
        let mut needed = vec![&catalog::IP];
        needed.extend(catalog::BROWSER_TEST);
        host.ensure(&needed, progress)?;
        Ok(())
    }

    /// Runs `body` in a new network namespace whose only device is `lo` (up), on a
    /// current-thread tokio runtime made in it, and returns what `body` returns.
    ///
    /// First installs what the browser tests need ([`LoopbackNetns::ensure_host`]). When `body`
    /// is done (or panics), the runtime is dropped (and with it every [`Process`] and
    /// [`crate::Browser`] still held, which kill their process groups), and then every process
    /// still in the namespace is killed: a failing test leaves nothing behind. A process that
    /// had to be killed that way is a leak in the code under test and is reported as
    /// [`BrowserTestError::LeftInNamespace`]. A panic in `body` is resumed on the caller's thread, so
    /// the test fails with its message.
    pub fn run<F, Fut, T>(body: F) -> Result<T, BrowserTestError>
    where
        F: FnOnce(Netns) -> Fut + Send + 'static,
        Fut: Future<Output = T>,
        T: Send + 'static,
    {
        if !nix::unistd::geteuid().is_root() {
            return Err(BrowserTestError::NotRoot);
        }
        Self::ensure_host(&guardlab_host::StderrProgress)?;
        let ip = Host::new(true)
            .find_program("ip")
            .ok_or_else(|| BrowserTestError::Namespace("`ip` is not on the search path".into()))?;
        let (inode_tx, inode_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("loopback-netns".into())
            .spawn(move || -> Result<T, BrowserTestError> {
                let setup = (|| {
                    nix::sched::unshare(CloneFlags::CLONE_NEWNET).map_err(|e| {
                        BrowserTestError::Namespace(format!("unshare(CLONE_NEWNET): {e}"))
                    })?;
                    let inode = current_netns_inode()?;
                    let _ = inode_tx.send(inode);
                    let out = Command::new(&ip)
                        .args(["link", "set", "lo", "up"])
                        .stdin(Stdio::null())
                        .output()
                        .map_err(|e| BrowserTestError::io("running `ip link set lo up`", e))?;
                    if !out.status.success() {
                        return Err(BrowserTestError::Namespace(format!(
                            "`ip link set lo up` failed ({}): {}",
                            out.status,
                            String::from_utf8_lossy(&out.stderr).trim()
                        )));
                    }
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| BrowserTestError::io("building the namespace's runtime", e))?;
                    Ok((Netns { inode }, runtime))
                })();
                let (netns, runtime) = setup?;
                let result = runtime.block_on(body(netns));
                drop(runtime);
                Ok(result)
            })
            .map_err(|e| BrowserTestError::io("starting the namespace's thread", e))?;
        let joined = thread.join();
        // The inode is sent before anything can start in the namespace; without it nothing did.
        let left = match inode_rx.try_recv() {
            Ok(inode) => kill_everything_in(inode),
            Err(_) => Vec::new(),
        };
        match joined {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(Err(e)) => Err(e),
            Ok(Ok(_)) if !left.is_empty() => Err(BrowserTestError::LeftInNamespace(left)),
            Ok(Ok(value)) => Ok(value),
        }
    }
}

/// Kills every process whose network namespace is `inode`; returns what each was
/// (`pid command`).
fn kill_everything_in(inode: u64) -> Vec<String> {
    let mut killed = Vec::new();
    // A killed process's children may be reparented and still alive a moment later: repeat
    // until a pass finds nothing (bounded: each pass kills what it finds).
    for _ in 0..20 {
        let found = processes_in(inode);
        if found.is_empty() {
            break;
        }
        for (pid, what) in found {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            if !killed.contains(&what) {
                killed.push(what);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    killed
}

/// The processes (thread-group leaders) whose network namespace is `inode`, as `(pid, "pid
/// command")`; zombies have no namespace links and are not listed.
pub fn processes_in(inode: u64) -> Vec<(i32, String)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| fs::metadata(format!("/proc/{pid}/ns/net")).is_ok_and(|m| m.ino() == inode))
        .map(|pid| {
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            (pid, format!("{pid} {}", comm.trim()))
        })
        .collect()
}

/// The namespace a [`LoopbackNetns::run`] body runs in.
#[derive(Clone, Debug)]
pub struct Netns {
    inode: u64,
}

impl Netns {
    /// The namespace's inode (`/proc/<pid>/ns/net`), to tell which processes are in it.
    pub fn inode(&self) -> u64 {
        self.inode
    }

    /// Fails unless the calling thread is in this namespace: processes and sockets made from
    /// another thread would be in the host's namespace and reach the outside.
    pub fn check_current_thread(&self) -> Result<(), BrowserTestError> {
        let here = current_netns_inode()?;
        if here == self.inode {
            Ok(())
        } else {
            Err(BrowserTestError::Namespace(format!(
                "this thread is in network namespace {here}, not the test's ({}): start \
                 processes and sockets from the body of LoopbackNetns::run",
                self.inode
            )))
        }
    }

    /// The names of the namespace's network devices, as the kernel lists them from here.
    pub fn interfaces(&self) -> Result<Vec<String>, BrowserTestError> {
        self.check_current_thread()?;
        let mut names: Vec<String> = nix::ifaddrs::getifaddrs()
            .map_err(|e| BrowserTestError::Namespace(format!("getifaddrs: {e}")))?
            .map(|a| a.interface_name)
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Tries a TCP connection to `addr` from the namespace and returns the error it fails
    /// with; a connection that succeeds is [`BrowserTestError::Reachable`].
    pub fn connect_error(&self, addr: SocketAddr) -> Result<std::io::Error, BrowserTestError> {
        self.check_current_thread()?;
        match TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
            Ok(_) => Err(BrowserTestError::Reachable(addr.to_string())),
            Err(e) => Ok(e),
        }
    }

    /// A loopback port nothing listens on now (the namespace is new, so only the test's own
    /// processes compete for ports).
    pub fn free_port(&self) -> Result<u16, BrowserTestError> {
        self.check_current_thread()?;
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| BrowserTestError::io("binding a loopback port", e))?;
        listener
            .local_addr()
            .map(|a| a.port())
            .map_err(|e| BrowserTestError::io("reading a bound port", e))
    }

    /// Starts `command` in this namespace, in a process group of its own, as `run_as` (or as
    /// this process's user), with HOME and the XDG directories in a fresh directory that user
    /// owns ([`ProcessHome`]); its stdout and stderr go to `<home>/<name>.log`. The process
    /// group is killed when the [`Process`] is dropped.
    pub fn spawn(
        &self,
        name: &str,
        mut command: Command,
        run_as: Option<RunAs>,
    ) -> Result<Process, BrowserTestError> {
        self.check_current_thread()?;
        let home = ProcessHome::new(run_as)?;
        let log_path = home.path().join(format!("{name}.log"));
        let log = File::create(&log_path)
            .map_err(|e| BrowserTestError::io(format!("creating {}", log_path.display()), e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| BrowserTestError::io("duplicating a log file", e))?;
        home.apply(&mut command);
        command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0);
        if let Some(user) = run_as {
            // std drops supplementary groups (setgroups(0)) before setuid when root sets a uid.
            command.uid(user.uid).gid(user.gid);
        }
        let child = command
            .spawn()
            .map_err(|e| BrowserTestError::io(format!("starting {name}"), e))?;
        Ok(Process {
            name: name.to_string(),
            child,
            log_path,
            home,
        })
    }
}

/// An unprivileged user to run the browser or the server as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

impl RunAs {
    /// Debian's `nobody`/`nogroup` (65534): owns no file, so it can write only where the test
    /// lets it (its [`ProcessHome`]).
    pub const NOBODY: RunAs = RunAs {
        uid: 65534,
        gid: 65534,
    };
}

/// A fresh directory for one process: HOME and the XDG directories, owned by the user the
/// process runs as; removed on drop.
#[derive(Debug)]
pub struct ProcessHome {
    dir: TempDir,
}

impl ProcessHome {
    const SUBDIRS: [&'static str; 5] = ["home", "config", "cache", "data", "runtime"];

    pub fn new(owner: Option<RunAs>) -> Result<ProcessHome, BrowserTestError> {
        let dir = tempfile::Builder::new()
            .prefix("guardlab-browser-")
            .tempdir()
            .map_err(|e| BrowserTestError::io("creating a process's home directory", e))?;
        let home = ProcessHome { dir };
        for sub in Self::SUBDIRS {
            let path = home.path().join(sub);
            fs::create_dir(&path)
                .map_err(|e| BrowserTestError::io(format!("creating {}", path.display()), e))?;
        }
        if let Some(user) = owner {
            home.give_to(home.path(), user)?;
            for sub in Self::SUBDIRS {
                home.give_to(&home.path().join(sub), user)?;
            }
        }
        Ok(home)
    }

    fn give_to(&self, path: &Path, user: RunAs) -> Result<(), BrowserTestError> {
        std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid)).map_err(|e| {
            BrowserTestError::io(format!("giving {} to uid {}", path.display(), user.uid), e)
        })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A directory inside the home, owned like it (for a browser profile, say).
    pub fn subdir(&self, name: &str) -> Result<PathBuf, BrowserTestError> {
        let path = self.path().join(name);
        fs::create_dir_all(&path)
            .map_err(|e| BrowserTestError::io(format!("creating {}", path.display()), e))?;
        let meta = fs::metadata(self.path())
            .map_err(|e| BrowserTestError::io(format!("reading {}", self.path().display()), e))?;
        std::os::unix::fs::chown(&path, Some(meta.uid()), Some(meta.gid()))
            .map_err(|e| BrowserTestError::io(format!("chown {}", path.display()), e))?;
        Ok(path)
    }

    fn apply(&self, command: &mut Command) {
        let p = self.path();
        command
            .env("HOME", p.join("home"))
            .env("XDG_CONFIG_HOME", p.join("config"))
            .env("XDG_CACHE_HOME", p.join("cache"))
            .env("XDG_DATA_HOME", p.join("data"))
            .env("XDG_RUNTIME_DIR", p.join("runtime"))
            .env("TMPDIR", p.join("runtime"));
    }
}

/// A process started in the namespace; its process group is killed (SIGKILL) and the process
/// reaped when this is dropped.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    log_path: PathBuf,
    home: ProcessHome,
}

impl Process {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn home(&self) -> &ProcessHome {
        &self.home
    }

    /// The last lines of the process's stdout and stderr.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(&self.log_path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Waits until no other live process is in this process's group (what it started has
    /// exited), for at most `timeout`; says whether they left.
    pub async fn wait_for_group_to_leave(&self, timeout: Duration) -> bool {
        let start = Instant::now();
        let leader = self.child.id();
        loop {
            let others = fs::read_dir("/proc")
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter_map(guardlab_host::ProcStat::read)
                .any(|p| p.pgrp == leader && p.pid != leader && p.state != 'Z');
            if !others {
                return true;
            }
            if start.elapsed() > timeout {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The process's exit status if it has exited (it is reaped then), `None` while it runs.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, BrowserTestError> {
        self.child
            .try_wait()
            .map_err(|e| BrowserTestError::io(format!("waiting for {}", self.name), e))
    }

    /// Waits for the process to exit (polling), for at most `timeout`; returns its status.
    /// The timeout's error ends with the end of its log.
    pub async fn wait_for_exit(
        &mut self,
        timeout: Duration,
    ) -> Result<ExitStatus, BrowserTestError> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            if start.elapsed() > timeout {
                return Err(BrowserTestError::Timeout {
                    what: format!("{} to exit; its log:\n{}", self.name, self.log_tail(20)),
                    waited: timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until something accepts TCP connections at `addr` (polling), failing early when
    /// the process exits and after `timeout`, with the end of its log.
    pub async fn wait_for_port(
        &mut self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<(), BrowserTestError> {
        let start = Instant::now();
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(BrowserTestError::Exited {
                    name: self.name.clone(),
                    status: status.to_string(),
                    log: self.log_tail(20),
                });
            }
            if start.elapsed() > timeout {
                return Err(BrowserTestError::Timeout {
                    what: format!(
                        "{} to listen on {addr}; its log:\n{}",
                        self.name,
                        self.log_tail(20)
                    ),
                    waited: timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // The group, not only the process: chromedriver's browser and its helpers are in it.
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
