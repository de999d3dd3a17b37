//! What a pod may keep: the counts and bytes charged to it against
//! [`Limits`](crate::limits::Limits), the one flag of
//! each limit met, the events it may send in a second, and the processes followed.

use guardlab_events::ProcessKey;
use rustc_hash::FxHashSet;

use super::{ContainerId, Live, Sym, Tracker, USER_OVER_BUDGET};
use crate::limits::LimitFlag;
use crate::model::epoch_seconds;

/// What one pod keeps, counted against [`Limits`](crate::limits::Limits).
#[derive(Default)]
pub(super) struct PodUse {
    pub nodes: u32,
    pub roots: u32,
    pub live: u32,
    pub dns_names: FxHashSet<Sym>,
    pub dns_addresses: u32,
    /// The bytes charged to the pod, against `state-mb`.
    pub bytes: u64,
    /// The second (of event time) being counted against `events-per-second`, and its events.
    pub second: u64,
    pub events_in_second: u32,
}

/// The bytes charged for one entry of each table (the entry and its share of the indexes), so
/// that the budget of a pod does not depend on allocator details.
pub(crate) mod cost {
    pub const NODE: u64 = 112;
    pub const LIVE: u64 = 48;
    pub const DNS_ADDRESS: u64 = 56;
    pub const SYM: u64 = 48;
}

impl Tracker {
    /// A limit was met in a pod: its one flag is raised (the first time) or counted.
    pub(crate) fn limit_met(
        &mut self,
        limit: &'static str,
        value: u64,
        container: ContainerId,
        ts: u64,
        past: &str,
    ) {
        if let Some(&i) = self.flags.get(&(limit, container)) {
            self.stats.limits[i].count += 1;
            return;
        }
        let info = &self.containers[container.index()].info;
        let pod = if info.pod_name.is_empty() {
            info.container_id.as_str()
        } else {
            info.pod_name.as_str()
        };
        let message = format!("limit {limit}={value} met in pod {pod}: {past}");
        self.flags
            .insert((limit, container), self.stats.limits.len());
        self.stats.limits.push(LimitFlag {
            limit,
            value,
            container_id: info.container_id.clone(),
            container_name: info.container_name.clone(),
            namespace: info.namespace.clone(),
            pod: info.pod_name.clone(),
            timestamp: epoch_seconds(ts),
            count: 1,
            message,
        });
    }

    /// Charge `bytes` of new state to a pod: false (and the `state-mb` flag) when its budget has
    /// no room for them, and then nothing may be kept.
    pub(crate) fn charge(&mut self, container: ContainerId, bytes: u64, ts: u64) -> bool {
        let budget = self.limits.state_bytes();
        let pod = &mut self.containers[container.index()].pod;
        if pod.bytes + bytes > budget {
            let mb = u64::from(self.limits.state_mb);
            self.limit_met(
                "state-mb",
                mb,
                container,
                ts,
                "the pod's state is full: nothing new is kept for it (programs run as their parent's, names and connections are left out); everything is still checked against the policies",
            );
            return false;
        }
        pod.bytes += bytes;
        true
    }

    /// Give back bytes charged to a pod (state it no longer keeps).
    pub(crate) fn credit(&mut self, container: ContainerId, bytes: u64) {
        let pod = &mut self.containers[container.index()].pod;
        pod.bytes = pod.bytes.saturating_sub(bytes);
    }

    /// The process `key` of `container` is followed (it runs, and `live-processes` had room).
    pub(crate) fn follows(&self, key: &ProcessKey, container: ContainerId) -> bool {
        self.live_in(key, container).is_some()
    }

    /// The name and exe of an exec, interned for its pod; none when its budget has no room.
    pub(crate) fn intern_program(
        &mut self,
        container: ContainerId,
        name: &str,
        exe: &str,
        ts: u64,
    ) -> Option<(Sym, Sym)> {
        let name = self.intern_for(container, name, ts)?;
        let exe = self.intern_for(container, exe, ts)?;
        Some((name, exe))
    }

    /// Intern a string for a pod, charged to it; none when its budget has no room.
    pub(super) fn intern_for(&mut self, container: ContainerId, s: &str, ts: u64) -> Option<Sym> {
        if let Some(sym) = self.syms.find(s) {
            return Some(sym);
        }
        let bytes = cost::SYM + 2 * s.len() as u64;
        self.charge(container, bytes, ts)
            .then(|| self.syms.intern(s))
    }

    /// Count an event against its pod's `events-per-second`: false when it is over.
    pub(super) fn admit(&mut self, container: ContainerId, ts: u64) -> bool {
        let limit = self.limits.events_per_second;
        let second = ts / 1_000_000_000;
        let pod = &mut self.containers[container.index()].pod;
        if second > pod.second {
            pod.second = second;
            pod.events_in_second = 0;
        }
        if pod.events_in_second >= limit {
            self.limit_met(
                "events-per-second",
                u64::from(limit),
                container,
                ts,
                "events past it in one second (of their timestamps) are dropped and counted here; exits are never dropped",
            );
            return false;
        }
        pod.events_in_second += 1;
        true
    }

    /// Follow a new running process of a pod, when `live-processes` has room.
    pub(super) fn follow(&mut self, key: ProcessKey, live: Live, ts: u64) {
        let c = live.container;
        if let Some(known) = self.live.get_mut(&key)
            && known.container == c
        {
            known.image = live.image;
            return;
        }
        let limit = self.limits.live_processes;
        if self.containers[c.index()].pod.live >= limit {
            self.limit_met(
                "live-processes",
                u64::from(limit),
                c,
                ts,
                "new processes are not followed: their connections name no process (any), their children's parents come from the exec",
            );
            return;
        }
        if !self.charge(c, cost::LIVE, ts) {
            return;
        }
        if let Some(old) = self.live.insert(key, live) {
            // The key ran in another container (a forged or broken stream): it moves here.
            let pod = &mut self.containers[old.container.index()].pod;
            pod.live = pod.live.saturating_sub(1);
            pod.bytes = pod.bytes.saturating_sub(cost::LIVE);
        }
        self.containers[c.index()].pod.live += 1;
    }

    pub(super) fn unfollow(&mut self, key: &ProcessKey, container: ContainerId) {
        if self.live_in(key, container).is_some() {
            self.live.remove(key);
            let pod = &mut self.containers[container.index()].pod;
            pod.live = pod.live.saturating_sub(1);
            pod.bytes = pod.bytes.saturating_sub(cost::LIVE);
        }
    }

    /// The effective user of an exec, interned for its pod.
    pub(super) fn euser(
        &mut self,
        container: ContainerId,
        euser: Option<&str>,
        euid: u32,
        ts: u64,
    ) -> Sym {
        let sym = match euser {
            Some(user) => self.intern_for(container, user, ts),
            None => match self.euid_names.get(&euid) {
                Some(&sym) => Some(sym),
                None => {
                    let sym = self.intern_for(container, &euid.to_string(), ts);
                    if let Some(sym) = sym {
                        self.euid_names.insert(euid, sym);
                    }
                    sym
                }
            },
        };
        sym.unwrap_or_else(|| self.syms.intern(USER_OVER_BUDGET))
    }
}
