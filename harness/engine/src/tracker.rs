//! The process and container bookkeeping shared by fingerprinting, deviation matching and
//! investigation, so that all three agree on who a process's parent is and on which
//! connections count. Every rule the module documentation of [`crate::fingerprint`] states
//! about ancestry, loopback, ports and DNS names is implemented here, once.
//!
//! Events are untrusted input: a process key is only ever looked up among the processes of
//! the container the event is tagged with, so an event that names a process of another
//! container (a sensor bug, a process that moved cgroups, a forged recording) never ties two
//! containers' forests together; it is taken as a process whose start was not seen.

use std::collections::hash_map::Entry;
use std::net::IpAddr;

use guardlab_events::{ContainerInfo, Event, EventBody, ExeStatus, ProcessKey, Protocol};
use rustc_hash::FxHashMap;
use serde::Serialize;

use crate::id::typed_id;
use crate::names::process_name;
use crate::net::normalize_dns_name;

typed_id!(
    /// An interned string of [`Symbols`].
    pub(crate) Sym
);
typed_id!(
    /// A set of DNS names of [`NameSets`].
    pub(crate) NameSetId
);
typed_id!(
    /// A container, in the order `container` events introduced them.
    pub(crate) ContainerId
);
typed_id!(
    /// An exec'd program [`Image`], in the order of the execs.
    pub(crate) ImageId
);

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
        let sym = Sym::new(self.names.len());
        self.names.push(s.into());
        self.index.insert(s.into(), sym);
        sym
    }

    pub(crate) fn get(&self, sym: Sym) -> &str {
        &self.names[sym.index()]
    }
}

/// Interned sets of DNS names: every name the answers of one container gave for one address,
/// sorted by text so that a set is the same whatever order the answers came in.
#[derive(Default)]
pub(crate) struct NameSets {
    sets: Vec<Box<[Sym]>>,
    index: FxHashMap<Box<[Sym]>, NameSetId>,
}

impl NameSets {
    pub(crate) fn get(&self, set: NameSetId) -> &[Sym] {
        &self.sets[set.index()]
    }

    /// The set `set` (or the empty set for none) with `name` added.
    fn with(&mut self, syms: &Symbols, set: Option<NameSetId>, name: Sym) -> NameSetId {
        let current: &[Sym] = match set {
            Some(set) => self.get(set),
            None => &[],
        };
        if let Some(set) = set
            && current.contains(&name)
        {
            return set;
        }
        let mut names: Vec<Sym> = current.to_vec();
        names.push(name);
        names.sort_by(|a, b| syms.get(*a).cmp(syms.get(*b)));
        let names: Box<[Sym]> = names.into();
        if let Some(&id) = self.index.get(&names) {
            return id;
        }
        let id = NameSetId::new(self.sets.len());
        self.sets.push(names.clone());
        self.index.insert(names, id);
        id
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
    pub container: ContainerId,
    /// The parent image; none for a root of the container's forest.
    pub parent: Option<ImageId>,
    pub key: ProcessKey,
    pub name: Sym,
    pub exe: Sym,
    /// How far `exe` is the executable's path: anything but resolved is never covered by an
    /// exe glob (see [`crate::deviation`]).
    pub exe_status: ExeStatus,
    pub euser: Sym,
    pub ts: u64,
}

#[derive(Clone, Copy)]
struct Live {
    container: ContainerId,
    /// The image this process runs: its own after exec, its parent's after a fork without
    /// exec; none when its lineage is unknown (it was running before we saw it).
    image: Option<ImageId>,
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
    pub container: ContainerId,
    /// The image of the process that owns the socket; none when unknown.
    pub image: Option<ImageId>,
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
    /// The names earlier answers gave for `ip` (a set of [`NameSets`]), if any did.
    pub dns: Option<NameSetId>,
    pub ts: u64,
    pub refused: bool,
}

pub(crate) enum Step {
    /// Nothing the engine keeps (unknown container, loopback, lost, ...).
    Ignored,
    Container(ContainerId),
    Exec(ImageId),
    Fork,
    Exit {
        key: ProcessKey,
        code: Option<i32>,
        signal: Option<i32>,
    },
    Net(NetObs),
    Listen {
        image: Option<ImageId>,
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
    /// Execs whose executable the sensor could not resolve to a path (`exe_status`
    /// fileless, truncated or unresolved): kept with the exe as reported, but never allowed
    /// by a policy's exe glob.
    pub untrusted_exes: u64,
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
    /// Events whose time is before that of an event already seen. The engine takes events in
    /// the order given, so a child's exec before its parent's makes a bogus root: sort a
    /// stream with [`crate::sort_events`] first, and warn when this is not 0.
    pub out_of_order_events: u64,
}

#[derive(Default)]
pub(crate) struct Tracker {
    pub syms: Symbols,
    cgroups: FxHashMap<u64, ContainerId>,
    pub containers: Vec<ContainerRec>,
    live: FxHashMap<ProcessKey, Live>,
    pub images: Vec<Image>,
    /// Per (container, address): the names DNS answers gave for it (a set of `name_sets`).
    dns: FxHashMap<(ContainerId, IpAddr), NameSetId>,
    pub name_sets: NameSets,
    euid_names: FxHashMap<u32, Sym>,
    /// The latest event time seen.
    latest_ts: u64,
    pub stats: Stats,
}

/// Loopback, or the pod talking to its own address: traffic that never leaves the pod.
fn intra_pod(remote: IpAddr, local: Option<IpAddr>) -> bool {
    remote.is_loopback()
        || remote.is_unspecified()
        || local.map(|l| l.to_canonical()) == Some(remote)
}

impl Tracker {
    /// The running process `key` of `container`, if there is one (see the module
    /// documentation: never a process of another container).
    fn live_in(&self, key: &ProcessKey, container: ContainerId) -> Option<Live> {
        self.live
            .get(key)
            .copied()
            .filter(|l| l.container == container)
    }

    /// The container an event belongs to, when a `container` event introduced its cgroup.
    pub(crate) fn container_of(&self, event: &Event) -> Option<ContainerId> {
        self.cgroups.get(&event.cgroup_id()?).copied()
    }

    pub(crate) fn container(&self, id: ContainerId) -> &ContainerRec {
        &self.containers[id.index()]
    }

    pub(crate) fn image(&self, id: ImageId) -> &Image {
        &self.images[id.index()]
    }

    /// The names of a set of [`NameSets`] (sorted); none for no set.
    pub(crate) fn dns_names(&self, set: Option<NameSetId>) -> impl Iterator<Item = &str> {
        let syms: &[Sym] = match set {
            Some(set) => self.name_sets.get(set),
            None => &[],
        };
        syms.iter().map(|&s| self.syms.get(s))
    }

    /// The names of a set of [`NameSets`] as one text: sorted, separated by `, `.
    pub(crate) fn dns_text(&self, set: Option<NameSetId>) -> Option<String> {
        set.map(|set| self.dns_names(Some(set)).collect::<Vec<_>>().join(", "))
    }

    /// The image a running process of `container` runs, if it is known.
    fn image_of(&self, key: &ProcessKey, container: ContainerId) -> Option<ImageId> {
        self.live_in(key, container).and_then(|l| l.image)
    }

    pub(crate) fn observe(&mut self, event: &Event) -> Step {
        self.stats.events += 1;
        if event.ts < self.latest_ts {
            self.stats.out_of_order_events += 1;
        }
        self.latest_ts = self.latest_ts.max(event.ts);
        match &event.body {
            EventBody::Container(info) => return self.observe_container(info, event.ts),
            EventBody::Lost(lost) => {
                self.stats.lost_events += lost.count;
                return Step::Ignored;
            }
            _ => {}
        }
        let Some(cgroup) = event.cgroup_id() else {
            return Step::Ignored;
        };
        let Some(&container) = self.cgroups.get(&cgroup) else {
            self.stats.unknown_container_events += 1;
            return Step::Ignored;
        };
        let rec = &mut self.containers[container.index()];
        rec.first_ts = rec.first_ts.min(event.ts);
        rec.last_ts = rec.last_ts.max(event.ts);
        match &event.body {
            EventBody::Exec(exec) => {
                // A process we know keeps its lineage: forked, it runs its parent's image;
                // exec'ing again, its previous image is the parent. A new one hangs under its
                // parent when the parent runs in this container, else is a root. A process
                // forked by a parent we did not know yet (its events came out of order) takes
                // the parent its exec names, when that one is known by now.
                let parent = match self.live_in(&exec.key, container) {
                    Some(Live {
                        image: Some(image), ..
                    }) => Some(image),
                    _ => exec.parent.and_then(|p| self.image_of(&p, container)),
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
                let image = ImageId::new(self.images.len());
                self.images.push(Image {
                    container,
                    parent,
                    key: exec.key,
                    name,
                    exe,
                    exe_status: exec.exe_status,
                    euser,
                    ts: event.ts,
                });
                self.live.insert(
                    exec.key,
                    Live {
                        container,
                        image: Some(image),
                    },
                );
                self.stats.processes += 1;
                if !exec.exe_status.is_resolved() {
                    self.stats.untrusted_exes += 1;
                }
                Step::Exec(image)
            }
            EventBody::Fork(fork) => {
                let image = self.image_of(&fork.parent, container);
                self.live.insert(fork.key, Live { container, image });
                Step::Fork
            }
            EventBody::Exit(exit) => {
                if self.live_in(&exit.key, container).is_some() {
                    self.live.remove(&exit.key);
                }
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
                let image = self.image_of(&c.process, container);
                if image.is_none() {
                    self.stats.unknown_process_connections += 1;
                }
                let dns = self.dns.get(&(container, ip)).copied();
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
                let image = self.image_of(&l.process, container);
                if image.is_none() {
                    self.stats.unknown_process_connections += 1;
                }
                Step::Listen {
                    image,
                    protocol: l.protocol,
                    port: l.port,
                }
            }
            EventBody::Dns(answer) => {
                let name = normalize_dns_name(&answer.name);
                if name.is_empty() {
                    return Step::Dns;
                }
                let name = self.syms.intern(&name);
                for addr in &answer.addresses {
                    match self.dns.entry((container, addr.to_canonical())) {
                        Entry::Occupied(mut known) => {
                            let set = self.name_sets.with(&self.syms, Some(*known.get()), name);
                            known.insert(set);
                        }
                        Entry::Vacant(new) => {
                            new.insert(self.name_sets.with(&self.syms, None, name));
                        }
                    }
                }
                Step::Dns
            }
            EventBody::Container(_) | EventBody::Lost(_) => unreachable!("handled above"),
        }
    }

    fn observe_container(&mut self, info: &ContainerInfo, ts: u64) -> Step {
        if let Some(&idx) = self.cgroups.get(&info.cgroup_id) {
            // Told again (a sensor restart): the newest facts win, the times stay.
            let rec = &mut self.containers[idx.index()];
            rec.info = info.clone();
            rec.first_ts = rec.first_ts.min(ts);
            rec.last_ts = rec.last_ts.max(ts);
            return Step::Container(idx);
        }
        let idx = ContainerId::new(self.containers.len());
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

#[cfg(test)]
mod tests;
