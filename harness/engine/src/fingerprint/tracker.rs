//! The process and container bookkeeping shared by fingerprinting, deviation matching and
//! investigation, so that all three agree on who a process's parent is and on which
//! connections count. Every rule the module documentation of [`crate::fingerprint`] states
//! about ancestry, loopback and ports is implemented here, once.

use std::net::IpAddr;

use guardlab_events::{ContainerInfo, Event, EventBody, ProcessKey, Protocol};
use rustc_hash::FxHashMap;
use serde::Serialize;

use super::process_name;

/// An interned string.
pub(crate) type Sym = u32;
/// "No such thing" for the `u32` indexes below (kept as plain integers for compactness).
pub(crate) const NONE: u32 = u32::MAX;

#[derive(Default)]
pub(crate) struct Symbols {
    index: FxHashMap<Box<str>, Sym>,
    names: Vec<Box<str>>,
}

impl Symbols {
    pub(crate) fn intern(&mut self, s: &str) -> Sym {
        if let Some(&sym) = self.index.get(s) {
            return sym;
        }
        let sym = self.names.len() as Sym;
        self.names.push(s.into());
        self.index.insert(s.into(), sym);
        sym
    }

    pub(crate) fn get(&self, sym: Sym) -> &str {
        &self.names[sym as usize]
    }
}

pub(crate) struct ContainerRec {
    pub info: ContainerInfo,
    pub first_ts: u64,
    pub last_ts: u64,
}

/// One exec'd program image: a process after an `exec`. A process that execs twice is two
/// images, the second the child of the first.
pub(crate) struct Image {
    pub container: u32,
    /// The parent image, or [`NONE`] for a root of the container's forest.
    pub parent: u32,
    pub key: ProcessKey,
    pub name: Sym,
    pub exe: Sym,
    pub euser: Sym,
    pub ts: u64,
}

#[derive(Clone, Copy)]
struct Live {
    container: u32,
    /// The image this process runs: its own after exec, its parent's after a fork without
    /// exec; [`NONE`] when its lineage is unknown (it was running before we saw it).
    image: u32,
}

/// Which way a connection went, seen from the container.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

/// A connection that crosses the pod's boundary.
pub(crate) struct NetObs {
    pub container: u32,
    /// The image of the process that owns the socket, or [`NONE`] when unknown.
    pub image: u32,
    pub key: ProcessKey,
    pub direction: Direction,
    pub protocol: Protocol,
    /// The remote end (destination of egress, peer of ingress), canonical (no v4-mapped v6).
    pub ip: IpAddr,
    /// The port the policy speaks of: the destination port of egress, the local (listening)
    /// port of ingress; never the peer's ephemeral port.
    pub port: u16,
    /// The peer's own port (ephemeral for ingress), for traces only.
    pub remote_port: u16,
    /// The DNS name an earlier answer gave for `ip`, or [`NONE`].
    pub dns: Sym,
    pub ts: u64,
    pub refused: bool,
}

pub(crate) enum Step {
    /// Nothing the engine keeps (unknown container, loopback, lost, ...).
    Ignored,
    Container(u32),
    Exec(u32),
    Fork,
    Exit {
        key: ProcessKey,
        code: Option<i32>,
        signal: Option<i32>,
    },
    Net(NetObs),
    Listen {
        image: u32,
        protocol: Protocol,
        port: u16,
    },
    Dns,
}

/// What the engine saw and what it left out, so that nothing is dropped silently.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    pub events: u64,
    pub containers: u64,
    /// Exec'd program images (processes after exec).
    pub processes: u64,
    /// Events of a cgroup no `container` event introduced; left out.
    pub unknown_container_events: u64,
    /// Loopback or pod-internal connections and loopback listening sockets; left out by design.
    pub loopback_connections: u64,
    /// Accepted connections without a local port; left out (no port to name).
    pub accepts_without_local_port: u64,
    /// Connections (kept, with no process ids: any) and listening sockets (left out) of a
    /// process whose start we never saw.
    pub unknown_process_connections: u64,
    /// Events the sensor reported lost.
    pub lost_events: u64,
}

#[derive(Default)]
pub(crate) struct Tracker {
    pub syms: Symbols,
    cgroups: FxHashMap<u64, u32>,
    pub containers: Vec<ContainerRec>,
    live: FxHashMap<ProcessKey, Live>,
    pub images: Vec<Image>,
    dns: FxHashMap<(u32, IpAddr), Sym>,
    euid_names: FxHashMap<u32, Sym>,
    pub stats: Stats,
}

/// Loopback, or the pod talking to its own address: traffic that never leaves the pod.
fn intra_pod(remote: IpAddr, local: Option<IpAddr>) -> bool {
    remote.is_loopback()
        || remote.is_unspecified()
        || local.map(|l| l.to_canonical()) == Some(remote)
}

impl Tracker {
    pub(crate) fn observe(&mut self, event: &Event) -> Step {
        self.stats.events += 1;
        let cgroup = match &event.body {
            EventBody::Container(info) => return self.container(info, event.ts),
            EventBody::Lost(lost) => {
                self.stats.lost_events += lost.count;
                return Step::Ignored;
            }
            EventBody::Exec(e) => e.cgroup_id,
            EventBody::Fork(e) => e.cgroup_id,
            EventBody::Exit(e) => e.cgroup_id,
            EventBody::Connect(c) | EventBody::Accept(c) => c.cgroup_id,
            EventBody::Listen(l) => l.cgroup_id,
            EventBody::Dns(d) => d.cgroup_id,
        };
        let Some(&container) = self.cgroups.get(&cgroup) else {
            self.stats.unknown_container_events += 1;
            return Step::Ignored;
        };
        let rec = &mut self.containers[container as usize];
        rec.first_ts = rec.first_ts.min(event.ts);
        rec.last_ts = rec.last_ts.max(event.ts);
        match &event.body {
            EventBody::Exec(exec) => {
                // A process we know (forked, or exec'ing again) keeps its lineage; a new one
                // hangs under its parent when the parent is in this container, else is a root.
                let parent = match self.live.get(&exec.key) {
                    Some(live) => live.image,
                    None => exec
                        .parent
                        .and_then(|p| self.live.get(&p))
                        .filter(|l| l.container == container)
                        .map_or(NONE, |l| l.image),
                };
                let name = self.syms.intern(process_name(exec));
                let exe = self.syms.intern(&exec.exe);
                let euser = match &exec.euser {
                    Some(user) => self.syms.intern(user),
                    None => match self.euid_names.get(&exec.euid) {
                        Some(&sym) => sym,
                        None => {
                            let sym = self.syms.intern(&exec.euid.to_string());
                            self.euid_names.insert(exec.euid, sym);
                            sym
                        }
                    },
                };
                let image = self.images.len() as u32;
                self.images.push(Image {
                    container,
                    parent,
                    key: exec.key,
                    name,
                    exe,
                    euser,
                    ts: event.ts,
                });
                self.live.insert(exec.key, Live { container, image });
                self.stats.processes += 1;
                Step::Exec(image)
            }
            EventBody::Fork(fork) => {
                let image = self
                    .live
                    .get(&fork.parent)
                    .filter(|l| l.container == container)
                    .map_or(NONE, |l| l.image);
                self.live.insert(fork.key, Live { container, image });
                Step::Fork
            }
            EventBody::Exit(exit) => {
                self.live.remove(&exit.key);
                Step::Exit {
                    key: exit.key,
                    code: exit.code,
                    signal: exit.signal,
                }
            }
            EventBody::Connect(c) | EventBody::Accept(c) => {
                let direction = if matches!(event.body, EventBody::Connect(_)) {
                    Direction::Egress
                } else {
                    Direction::Ingress
                };
                let ip = c.remote_ip.to_canonical();
                if intra_pod(ip, c.local_ip) {
                    self.stats.loopback_connections += 1;
                    return Step::Ignored;
                }
                let port = match direction {
                    Direction::Egress => c.remote_port,
                    Direction::Ingress => match c.local_port {
                        Some(port) => port,
                        None => {
                            self.stats.accepts_without_local_port += 1;
                            return Step::Ignored;
                        }
                    },
                };
                let image = self.live.get(&c.process).map_or(NONE, |l| l.image);
                if image == NONE {
                    self.stats.unknown_process_connections += 1;
                }
                let dns = self.dns.get(&(container, ip)).copied().unwrap_or(NONE);
                Step::Net(NetObs {
                    container,
                    image,
                    key: c.process,
                    direction,
                    protocol: c.protocol,
                    ip,
                    port,
                    remote_port: c.remote_port,
                    dns,
                    ts: event.ts,
                    refused: c.refused,
                })
            }
            EventBody::Listen(l) => {
                if l.ip.to_canonical().is_loopback() {
                    self.stats.loopback_connections += 1;
                    return Step::Ignored;
                }
                let image = self.live.get(&l.process).map_or(NONE, |live| live.image);
                if image == NONE {
                    self.stats.unknown_process_connections += 1;
                }
                Step::Listen {
                    image,
                    protocol: l.protocol,
                    port: l.port,
                }
            }
            EventBody::Dns(answer) => {
                let name = self.syms.intern(&answer.name);
                for addr in &answer.addresses {
                    self.dns.insert((container, addr.to_canonical()), name);
                }
                Step::Dns
            }
            EventBody::Container(_) | EventBody::Lost(_) => unreachable!("handled above"),
        }
    }

    fn container(&mut self, info: &ContainerInfo, ts: u64) -> Step {
        if let Some(&idx) = self.cgroups.get(&info.cgroup_id) {
            // Told again (a sensor restart): the newest facts win, the times stay.
            let rec = &mut self.containers[idx as usize];
            rec.info = info.clone();
            rec.first_ts = rec.first_ts.min(ts);
            rec.last_ts = rec.last_ts.max(ts);
            return Step::Container(idx);
        }
        let idx = self.containers.len() as u32;
        self.cgroups.insert(info.cgroup_id, idx);
        self.containers.push(ContainerRec {
            info: info.clone(),
            first_ts: ts,
            last_ts: ts,
        });
        self.stats.containers += 1;
        Step::Container(idx)
    }
}
