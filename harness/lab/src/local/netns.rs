//! Network namespaces held by a thread of the daemon.
//!
//! A network namespace is per thread: a dedicated thread `unshare`s a new one and then runs, on
//! request, the work that must happen inside it (binding or creating sockets, writing its
//! sysctls). A socket keeps the namespace it was created in, so a socket made there can be used
//! from any thread afterwards. The namespaces are unnamed (no bind mount under /run/netns):
//! they live exactly as long as the daemon and the pod hold them, so nothing outlives a killed
//! lab.
#![allow(unsafe_code)] // setns(2) and unshare(2) in the threads that hold the namespaces

use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;

use crate::{IoContext, LabError};

type Job = Box<dyn FnOnce() + Send>;

/// A namespace's thread failed (part "the lab network" of a [`LabError`]).
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The thread ended before it made its namespace.
    #[error("the {role} namespace's thread ended before it made the namespace")]
    ThreadEnded { role: String },
    /// The thread is gone: nothing runs inside the namespace any more.
    #[error("the {role} namespace's thread is gone")]
    ThreadGone { role: String },
}

impl From<NetnsError> for LabError {
    fn from(error: NetnsError) -> LabError {
        LabError::backend("the lab network", error)
    }
}

/// A network namespace and the thread that lives in it.
pub struct Netns {
    role: String,
    tid: i32,
    fd: OwnedFd,
    inode: u64,
    jobs: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Netns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Netns")
            .field("role", &self.role)
            .field("tid", &self.tid)
            .field("inode", &self.inode)
            .finish()
    }
}

impl Netns {
    /// A new, empty network namespace (only a loopback, down) held by a new thread.
    pub fn create(role: &str) -> Result<Netns, LabError> {
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(i32, OwnedFd), std::io::Error>>();
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name(format!("netns-{role}"))
            .spawn(move || {
                // SAFETY: unshare(2) of the network namespace affects only this thread.
                if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                    let _ = ready_tx.send(Err(std::io::Error::last_os_error()));
                    return;
                }
                let opened = fs::File::open("/proc/thread-self/ns/net").map(OwnedFd::from);
                // SAFETY: gettid(2) has no preconditions.
                let tid = unsafe { libc::gettid() };
                let _ = ready_tx.send(opened.map(|fd| (tid, fd)));
                for job in jobs_rx {
                    job();
                }
            })
            .context(|| format!("starting the {role} namespace thread"))?;
        let (tid, fd) = ready_rx
            .recv()
            .map_err(|_| NetnsError::ThreadEnded {
                role: role.to_string(),
            })?
            .context(|| format!("creating the {role} network namespace"))?;
        let inode = fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .map(|m| m.ino())
            .context(|| format!("reading the {role} namespace"))?;
        Ok(Netns {
            role: role.to_string(),
            tid,
            fd,
            inode,
            jobs: jobs_tx,
        })
    }

    /// The namespace's thread is gone: it no longer runs what must happen inside it.
    fn gone(&self) -> LabError {
        NetnsError::ThreadGone {
            role: self.role.clone(),
        }
        .into()
    }

    pub fn role(&self) -> &str {
        &self.role
    }

    /// The thread id of the namespace's thread: `ip ... netns <tid>` names this namespace.
    pub fn tid(&self) -> i32 {
        self.tid
    }

    /// The namespace's inode number (`net:[inode]`).
    pub fn inode(&self) -> u64 {
        self.inode
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Run `work` on the namespace's thread, inside the namespace, and wait for its result.
    pub fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, LabError> {
        let (tx, rx) = mpsc::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = tx.send(work());
            }))
            .map_err(|_| self.gone())?;
        rx.recv().map_err(|_| self.gone())
    }

    /// Like [`Netns::run`] without blocking the async runtime.
    pub async fn run_async<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, LabError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = tx.send(work());
            }))
            .map_err(|_| self.gone())?;
        rx.await.map_err(|_| self.gone())
    }

    /// A command that runs inside the namespace (it joins it before exec).
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        let fd = self.fd.as_raw_fd();
        // SAFETY: setns(2) is async-signal-safe; the fd is inherited across fork.
        unsafe {
            command.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        command
    }

    /// Run `ip <args>` inside the namespace; its error output becomes the error.
    pub fn ip(&self, args: &[&str]) -> Result<(), LabError> {
        let program = ip_program().ok_or_else(|| LabError::Missing {
            what: format!("`ip` ({})", guardlab_host::catalog::IP.package),
            hint: format!(
                "it {}: `apt-get install {}` (`guardlab lab up` installs it unless --no-install)",
                guardlab_host::catalog::IP.purpose,
                guardlab_host::catalog::IP.package
            ),
        })?;
        let output = self
            .command(&program.to_string_lossy())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context(|| format!("running {} (iproute2)", program.display()))?;
        if !output.status.success() {
            return Err(LabError::Command {
                command: format!("ip {} (in the {} namespace)", args.join(" "), self.role),
                status: output.status.to_string(),
                output: String::from_utf8_lossy(&output.stderr)
                    .lines()
                    .map(str::to_string)
                    .collect(),
            });
        }
        Ok(())
    }

    /// Write a sysctl of this namespace, e.g. `net/ipv4/ip_forward`.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), LabError> {
        let path = format!("/proc/sys/{key}");
        let value = value.to_string();
        let shown = path.clone();
        self.run(move || fs::write(&path, value))?
            .context(|| format!("writing {shown} in the {} namespace", self.role))
    }

    /// Write a sysctl of this namespace when the kernel has it; `false` when it has not (the
    /// IPv6 knobs of a kernel booted with `ipv6.disable=1` or built without IPv6).
    pub fn sysctl_if_present(&self, key: &str, value: &str) -> Result<bool, LabError> {
        let path = format!("/proc/sys/{key}");
        let value = value.to_string();
        let shown = path.clone();
        self.run(move || {
            if !std::path::Path::new(&path).exists() {
                return Ok(false);
            }
            fs::write(&path, value).map(|()| true)
        })?
        .context(|| format!("writing {shown} in the {} namespace", self.role))
    }

    /// A TCP listener bound inside the namespace.
    pub fn tcp_listener(
        &self,
        address: std::net::SocketAddr,
    ) -> Result<std::net::TcpListener, LabError> {
        self.run(move || std::net::TcpListener::bind(address))?
            .context(|| format!("binding TCP {address} in the {} namespace", self.role))
    }

    /// A UDP socket bound inside the namespace.
    pub fn udp_socket(
        &self,
        address: std::net::SocketAddr,
    ) -> Result<std::net::UdpSocket, LabError> {
        self.run(move || std::net::UdpSocket::bind(address))?
            .context(|| format!("binding UDP {address} in the {} namespace", self.role))
    }

    /// A new, unconnected TCP socket of this namespace, for the caller to connect (the
    /// port-forward connects to the pod this way).
    pub async fn tcp_socket(&self, ipv6: bool) -> Result<tokio::net::TcpSocket, LabError> {
        let fd = self
            .run_async(move || {
                let domain = if ipv6 { libc::AF_INET6 } else { libc::AF_INET };
                // SAFETY: socket(2); the result is checked before it is owned.
                let fd = unsafe {
                    libc::socket(
                        domain,
                        libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                        0,
                    )
                };
                if fd < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    // SAFETY: a fresh descriptor nobody else owns.
                    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
                }
            })
            .await?
            .context(|| format!("creating a socket in the {} namespace", self.role))?;
        let stream = std::net::TcpStream::from(fd);
        Ok(tokio::net::TcpSocket::from_std_stream(stream))
    }
}

/// The `ip` program (iproute2), looked for where the host crate looks (PATH, then the sbin
/// directories, which a user's PATH under sudo may lack); `None` when the host has none.
pub fn ip_program() -> Option<std::path::PathBuf> {
    guardlab_host::Host::new(false).find_program("ip")
}

/// The inode of a namespace file such as `/proc/<pid>/ns/net`.
pub fn namespace_inode(path: &str) -> Option<u64> {
    fs::metadata(path).ok().map(|m| m.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_has_its_own_loopback_and_sockets() {
        if !nix::unistd::Uid::effective().is_root() {
            panic!("this test creates network namespaces: run it as root (sudo)");
        }
        let ns = Netns::create("test").unwrap();
        assert_ne!(Some(ns.inode()), namespace_inode("/proc/self/ns/net"));
        ns.ip(&["link", "set", "lo", "up"]).unwrap();
        ns.ip(&["addr", "add", "198.18.200.1/32", "dev", "lo"])
            .unwrap();
        let listener = ns.tcp_listener("198.18.200.1:0".parse().unwrap()).unwrap();
        let address = listener.local_addr().unwrap();
        // Never connect to a lab address from the host's namespace: it would route out.
        let connected = ns
            .run(move || std::net::TcpStream::connect(address).is_ok())
            .unwrap();
        assert!(connected);
        ns.sysctl("net/ipv4/ip_forward", "1").unwrap();
        let forward = ns
            .run(|| fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap())
            .unwrap();
        assert_eq!(forward.trim(), "1");
    }
}
