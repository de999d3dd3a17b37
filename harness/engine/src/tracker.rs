//! The process and container bookkeeping shared by fingerprinting, deviation matching and
//! investigation, so that all three agree on who a process's parent is and on which
//! connections count. Every rule the module documentation of [`crate::fingerprint`] states
//! about ancestry, loopback, ports and DNS names is implemented here, once.
//!
//! Events are untrusted input: a process key is only ever looked up among the processes of
//! the container the event is tagged with, so an event that names a process of another
//! container (a sensor bug, a process that moved cgroups, a forged recording) never ties two
//! containers' forests together; it is taken as a process whose start was not seen.
//!
//! **Program nodes.** An exec'd program is a node of its container's forest, keyed by its parent
//! node, name, exe and exe status: the same program started again by the same parent is the
//! node it already has, so the forest (and all that hangs off it) grows with the distinct
//! programs a pod runs, not with its execs. Everything that grows with what a pod does is kept
//! within [`Limits`], each limit met raising one [`LimitFlag`] in [`Stats::limits`] (see
//! [`crate::limits`] for what the engine does past each).

use std::net::IpAddr;

use guardlab_events::{ContainerInfo, Event, EventBody, ExeStatus, ProcessKey, Protocol};
use rustc_hash::FxHashMap;
use serde::Serialize;

use crate::id::typed_id;
use crate::limits::{LimitFlag, Limits, MAX_PROCESS_DEPTH, StateSize};
use crate::names::process_name;

mod budget;
mod dns;
mod interned;

use budget::{PodUse, cost};
pub(crate) use interned::{NameSets, Symbols};

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
    /// A program node ([`Image`]), in the order of the first execs of each.
    pub(crate) ImageId
);

pub(crate) struct ContainerRec {
    pub info: ContainerInfo,
    pub first_ts: u64,
    pub last_ts: u64,
    /// What this pod keeps, counted against the limits.
    pod: PodUse,
}

/// A program node: the programs a process of a container exec'd, keyed by parent node, name,
/// exe and exe status (see the module documentation). A process that execs twice runs two
/// nodes, the second the child of the first.
pub(crate) struct Image {
    pub container: ContainerId,
    /// The parent node; none for a root of the container's forest.
    pub parent: Option<ImageId>,
    pub name: Sym,
    pub exe: Sym,
    /// How far `exe` is the executable's path: anything but resolved is never covered by an
    /// exe glob (see [`crate::deviation`]).
    pub exe_status: ExeStatus,
    /// The effective user of its first exec.
    pub euser: Sym,
    /// Program nodes from the root: 0 for a root.
    pub depth: u32,
    /// Distinct programs under it.
    children: u32,
}

/// The identity of a program node.
type ImageKey = (ContainerId, Option<ImageId>, Sym, Sym, ExeStatus);

#[derive(Clone, Copy)]
struct Live {
    container: ContainerId,
    /// The node this process runs: its own after exec, its parent's after a fork without exec
    /// (or after an exec a limit kept from having a node); none when its lineage is unknown
    /// (it was running before we saw it).
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
    /// The node of the process that owns the socket; none when unknown.
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

/// One exec, as the tracker placed it.
pub(crate) struct ExecObs<'e> {
    pub container: ContainerId,
    pub key: ProcessKey,
    /// The node the process runs from now on: the exec's own when `placed`; else (a limit kept
    /// the exec from having a node) the node of its parent process, none when that is unknown.
    pub image: Option<ImageId>,
    /// `image` is the exec's own node.
    pub placed: bool,
    /// `image` is the exec's own node, made by this exec (its first).
    pub new: bool,
    /// The program, as the exec named it.
    pub name: &'e str,
    pub exe: &'e str,
    pub exe_status: ExeStatus,
    pub euser: Sym,
    pub ts: u64,
}

pub(crate) enum Step<'e> {
    /// Nothing the engine keeps (unknown container, loopback, lost, over a limit, ...).
    Ignored,
    Container(ContainerId),
    Exec(ExecObs<'e>),
    Fork {
        key: ProcessKey,
        parent: ProcessKey,
    },
    Exit {
        key: ProcessKey,
        code: Option<i32>,
        signal: Option<i32>,
    },
    Net(NetObs),
    /// A name lookup: a UDP datagram to port 53. Not a connection (see **Name lookups** in
    /// [`crate::fingerprint`]): fingerprints and deviations leave it out, traces list it.
    Lookup(NetObs),
    Listen {
        image: Option<ImageId>,
        protocol: Protocol,
        port: u16,
    },
    Dns,
}

/// What the engine saw and what it left out, so that nothing is dropped silently.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    pub events: u64,
    pub containers: u64,
    /// Execs (a program run again is one more exec of the node it already has).
    pub processes: u64,
    /// Execs whose executable the sensor could not resolve to a path (`exe_status`
    /// fileless, truncated or unresolved): kept with the exe as reported, but never allowed
    /// by a policy's exe glob.
    pub untrusted_exes: u64,
    /// Events of a cgroup no `container` event introduced; left out.
    pub unknown_container_events: u64,
    /// Loopback or pod-internal connections and loopback listening sockets; left out by design.
    pub loopback_connections: u64,
    /// Name lookups (UDP datagrams to port 53): not connections, so left out of fingerprints
    /// and deviations, as Spyderbat leaves them out; their answers name the connections that
    /// follow.
    pub name_lookups: u64,
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
    /// The limits met, one flag per limit and pod, in the order they were first met.
    pub limits: Vec<LimitFlag>,
}

#[derive(Default)]
pub(crate) struct Tracker {
    pub limits: Limits,
    pub syms: Symbols,
    cgroups: FxHashMap<u64, ContainerId>,
    pub containers: Vec<ContainerRec>,
    live: FxHashMap<ProcessKey, Live>,
    pub images: Vec<Image>,
    image_index: FxHashMap<ImageKey, ImageId>,
    /// Per (container, address): the names DNS answers gave for it (a set of `name_sets`).
    dns: FxHashMap<(ContainerId, IpAddr), NameSetId>,
    pub name_sets: NameSets,
    euid_names: FxHashMap<u32, Sym>,
    /// The latest event time seen.
    latest_ts: u64,
    pub stats: Stats,
    /// The flag of each limit met, by limit and pod (an index into `stats.limits`).
    flags: FxHashMap<(&'static str, ContainerId), usize>,
}

/// Loopback, or the pod talking to its own address: traffic that never leaves the pod.
fn intra_pod(remote: IpAddr, local: Option<IpAddr>) -> bool {
    remote.is_loopback()
        || remote.is_unspecified()
        || local.map(|l| l.to_canonical()) == Some(remote)
}

/// The port of DNS queries: a UDP datagram to it is a name lookup, not a connection.
const DNS_PORT: u16 = 53;

/// The user written for an exec whose user the pod's state budget had no room for.
const USER_OVER_BUDGET: &str = "?";

impl Tracker {
    pub(crate) fn new(limits: Limits) -> Self {
        Tracker {
            limits: Limits {
                process_depth: limits.process_depth.clamp(1, MAX_PROCESS_DEPTH),
                ..limits
            },
            ..Tracker::default()
        }
    }

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

    /// The node a running process of `container` runs, if it is known.
    fn image_of(&self, key: &ProcessKey, container: ContainerId) -> Option<ImageId> {
        self.live_in(key, container).and_then(|l| l.image)
    }

    /// The node of a new exec under `parent`: found, made, or none when a limit keeps it from
    /// having one (the flag is raised here).
    #[allow(clippy::too_many_arguments)]
    fn place(
        &mut self,
        container: ContainerId,
        parent: Option<ImageId>,
        name: &str,
        exe: &str,
        exe_status: ExeStatus,
        euser: Sym,
        ts: u64,
    ) -> Option<(ImageId, bool)> {
        // Deeper than the limit: a child of its ancestor one level above the last, so that it
        // sits on the last level (see `crate::limits`).
        let mut parent = parent;
        if let Some(p) = parent {
            let limit = self.limits.process_depth;
            if self.images[p.index()].depth + 1 >= limit {
                self.limit_met(
                    "process-depth",
                    u64::from(limit),
                    container,
                    ts,
                    "deeper programs are taken as children of their ancestor one level above the limit, on its last level",
                );
                parent = self.images[p.index()].parent;
            }
        }
        if let (Some(name), Some(exe)) = (self.syms.find(name), self.syms.find(exe))
            && let Some(&id) = self
                .image_index
                .get(&(container, parent, name, exe, exe_status))
        {
            return Some((id, false));
        }
        let siblings = match parent {
            Some(p) => self.images[p.index()].children,
            None => self.containers[container.index()].pod.roots,
        };
        if siblings >= self.limits.children {
            self.limit_met(
                "children",
                u64::from(self.limits.children),
                container,
                ts,
                "a new program under a process node this full is checked against the policies but has no node: it runs as its parent's program, and fingerprints leave it out",
            );
            return None;
        }
        if self.containers[container.index()].pod.nodes >= self.limits.processes {
            self.limit_met(
                "processes",
                u64::from(self.limits.processes),
                container,
                ts,
                "a new program of a pod this full is checked against the policies but has no node: it runs as its parent's program, and fingerprints leave it out",
            );
            return None;
        }
        let name = self.intern_for(container, name, ts)?;
        let exe = self.intern_for(container, exe, ts)?;
        if !self.charge(container, cost::NODE, ts) {
            return None;
        }
        let depth = parent.map_or(0, |p| self.images[p.index()].depth + 1);
        let id = ImageId::new(self.images.len());
        self.images.push(Image {
            container,
            parent,
            name,
            exe,
            exe_status,
            euser,
            depth,
            children: 0,
        });
        self.image_index
            .insert((container, parent, name, exe, exe_status), id);
        match parent {
            Some(p) => self.images[p.index()].children += 1,
            None => self.containers[container.index()].pod.roots += 1,
        }
        self.containers[container.index()].pod.nodes += 1;
        Some((id, true))
    }

    pub(crate) fn observe<'e>(&mut self, event: &'e Event) -> Step<'e> {
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
        // Exits only free state: never dropped, so that a storm does not leave processes
        // followed forever.
        if !matches!(event.body, EventBody::Exit(_)) && !self.admit(container, event.ts) {
            return Step::Ignored;
        }
        let rec = &mut self.containers[container.index()];
        rec.first_ts = rec.first_ts.min(event.ts);
        rec.last_ts = rec.last_ts.max(event.ts);
        match &event.body {
            EventBody::Exec(exec) => {
                // A process we know keeps its lineage: forked, it runs its parent's node;
                // exec'ing again, its previous node is the parent. A new one hangs under its
                // parent when the parent runs in this container, else is a root. A process
                // forked by a parent we did not know yet (its events came out of order) takes
                // the parent its exec names, when that one is known by now.
                let parent = match self.live_in(&exec.key, container) {
                    Some(Live {
                        image: Some(image), ..
                    }) => Some(image),
                    _ => exec.parent.and_then(|p| self.image_of(&p, container)),
                };
                let name = process_name(exec);
                let euser = self.euser(container, exec.euser.as_deref(), exec.euid, event.ts);
                let placed = self.place(
                    container,
                    parent,
                    name,
                    &exec.exe,
                    exec.exe_status,
                    euser,
                    event.ts,
                );
                let image = placed.map(|(id, _)| id).or(parent);
                self.follow(exec.key, Live { container, image }, event.ts);
                self.stats.processes += 1;
                if !exec.exe_status.is_resolved() {
                    self.stats.untrusted_exes += 1;
                }
                Step::Exec(ExecObs {
                    container,
                    key: exec.key,
                    image,
                    placed: placed.is_some(),
                    new: placed.is_some_and(|(_, new)| new),
                    name,
                    exe: &exec.exe,
                    exe_status: exec.exe_status,
                    euser,
                    ts: event.ts,
                })
            }
            EventBody::Fork(fork) => {
                let image = self.image_of(&fork.parent, container);
                self.follow(fork.key, Live { container, image }, event.ts);
                Step::Fork {
                    key: fork.key,
                    parent: fork.parent,
                }
            }
            EventBody::Exit(exit) => {
                self.unfollow(&exit.key, container);
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
                let dns = self.dns.get(&(container, ip)).copied();
                let lookup = direction == Direction::Egress
                    && c.protocol == Protocol::Udp
                    && port == DNS_PORT;
                if lookup {
                    self.stats.name_lookups += 1;
                } else if image.is_none() {
                    self.stats.unknown_process_connections += 1;
                }
                let obs = NetObs {
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
                };
                if lookup {
                    Step::Lookup(obs)
                } else {
                    Step::Net(obs)
                }
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
                self.observe_answer(container, &answer.name, &answer.addresses, event.ts);
                Step::Dns
            }
            EventBody::Container(_) | EventBody::Lost(_) => unreachable!("handled above"),
        }
    }

    fn observe_container(&mut self, info: &ContainerInfo, ts: u64) -> Step<'static> {
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
            pod: PodUse::default(),
        });
        self.stats.containers += 1;
        Step::Container(idx)
    }

    /// How much the tracker keeps (see [`StateSize`]).
    pub(crate) fn size(&self) -> StateSize {
        let pods: usize = self.containers.iter().map(|c| c.pod.dns_names.len()).sum();
        self.syms.size()
            + self.name_sets.size()
            + StateSize::table(self.containers.len(), size_of::<ContainerRec>(), 0)
            + StateSize::table(pods, size_of::<Sym>() + 8, 0)
            + StateSize::table(self.live.len(), size_of::<(ProcessKey, Live)>() + 8, 0)
            + StateSize::table(
                self.images.len(),
                size_of::<Image>() + size_of::<(ImageKey, ImageId)>() + 8,
                0,
            )
            + StateSize::table(
                self.dns.len(),
                size_of::<((ContainerId, IpAddr), NameSetId)>() + 8,
                0,
            )
            + StateSize::table(self.euid_names.len(), 16, 0)
            + StateSize::table(self.stats.limits.len(), size_of::<LimitFlag>() + 128, 0)
    }
}

#[cfg(test)]
mod tests;
