//! The start gate's event rule ([`PreGateFilter`]): a gated container's events from before
//! its gate opened are the lab's plumbing, not the pod's behaviour, and are dropped; only the
//! exec of the pid the gate announced opens it. Why, and why the pid is the one thing that
//! tells the gate's exec from another process's, is in [`crate::gate`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use guardlab_events::{Event, EventBody};
use tokio::sync::watch;

/// What the event stream tells about the gates: the containers the sensor confirmed it
/// watches (it sent their `container` event), and the gated ones whose gate's exec it reported
/// (the gate's own: see the module's documentation).
#[derive(Clone, Debug)]
pub struct GateSignals {
    pub confirmed: watch::Receiver<BTreeSet<String>>,
    pub passed: watch::Receiver<BTreeSet<String>>,
}

impl GateSignals {
    /// Whether the sensor confirms it watches `container_id` within `timeout`.
    pub async fn wait_confirmed(&self, container_id: &str, timeout: Duration) -> bool {
        let mut confirmed = self.confirmed.clone();
        let wait = async {
            confirmed
                .wait_for(|s| s.contains(container_id))
                .await
                .is_ok()
        };
        tokio::time::timeout(timeout, wait).await.unwrap_or(false)
    }
}

/// The event rule of the start gate (see the module's documentation), applied in the order
/// the sensor sends events. Its state outlives reconnections to the sensor.
pub struct PreGateFilter {
    /// Cgroups of gated containers whose gate has not opened yet, with their container ids
    /// and their gates' pids inside the container.
    closed: HashMap<u64, (String, u32)>,
    /// Cgroups that are past their gate, or had none: a `container` event sent again after a
    /// reconnection does not close them.
    open: HashSet<u64>,
    confirmed: watch::Sender<BTreeSet<String>>,
    passed: watch::Sender<BTreeSet<String>>,
}

impl PreGateFilter {
    pub fn new() -> (PreGateFilter, GateSignals) {
        let (confirmed, confirmed_rx) = watch::channel(BTreeSet::new());
        let (passed, passed_rx) = watch::channel(BTreeSet::new());
        (
            PreGateFilter {
                closed: HashMap::new(),
                open: HashSet::new(),
                confirmed,
                passed,
            },
            GateSignals {
                confirmed: confirmed_rx,
                passed: passed_rx,
            },
        )
    }

    /// Whether `event` goes on to the harness. `gated`: the containers whose gate was closed
    /// when the harness subscribed to them, by id, with their gates' pids in the container.
    pub fn admit(&mut self, event: &Event, gated: &BTreeMap<String, u32>) -> bool {
        match &event.body {
            EventBody::Container(c) => {
                match gated.get(&c.container_id) {
                    Some(&pid) if !self.open.contains(&c.cgroup_id) => {
                        self.closed
                            .insert(c.cgroup_id, (c.container_id.clone(), pid));
                    }
                    _ => {
                        self.open.insert(c.cgroup_id);
                    }
                }
                self.confirmed.send_modify(|s| {
                    s.insert(c.container_id.clone());
                });
                true
            }
            EventBody::Exec(x) => match self.closed.get(&x.cgroup_id) {
                None => true,
                Some((_, gate)) if x.ns_pid == *gate => {
                    let (id, _) = self.closed.remove(&x.cgroup_id).expect("just found");
                    self.open.insert(x.cgroup_id);
                    self.passed.send_modify(|s| {
                        s.insert(id);
                    });
                    true
                }
                // Another process (`kubectl exec`, an exec probe) while the gate waits.
                Some(_) => false,
            },
            _ => event
                .cgroup_id()
                .is_none_or(|cg| !self.closed.contains_key(&cg)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate_program::GATE_PORT;
    use guardlab_events::{ContainerInfo, Listen, ProcessExec, Protocol};

    fn container(cgroup_id: u64, id: &str) -> Event {
        Event::new(
            1,
            EventBody::Container(ContainerInfo {
                cgroup_id,
                container_id: id.into(),
                ..Default::default()
            }),
        )
    }

    /// The exec of the process of host pid `pid` and pid `ns_pid` in its container.
    fn exec_in(cgroup_id: u64, pid: u32, ns_pid: u32, argv: &[&str]) -> Event {
        Event::new(
            2,
            EventBody::Exec(ProcessExec {
                key: guardlab_events::ProcessKey(pid, 5),
                cgroup_id,
                pid,
                ns_pid,
                parent: None,
                exe: "/opt/conda/bin/python3.11".into(),
                comm: "start-notebook.".into(),
                argv: argv.iter().map(|a| a.to_string()).collect(),
                argv_truncated: false,
                uid: 1000,
                euid: 1000,
                gid: 100,
                user: None,
                euser: None,
                exe_status: Default::default(),
                killed: false,
            }),
        )
    }

    /// The gate's exec (pid 7 in its container) to start-notebook.py.
    fn exec(cgroup_id: u64, pid: u32) -> Event {
        exec_in(
            cgroup_id,
            pid,
            7,
            &["python", "/usr/local/bin/start-notebook.py"],
        )
    }

    fn listen(cgroup_id: u64, port: u16) -> Event {
        Event::new(
            3,
            EventBody::Listen(Listen {
                process: guardlab_events::ProcessKey(100, 5),
                cgroup_id,
                protocol: Protocol::Tcp,
                ip: "127.0.0.1".parse().unwrap(),
                port,
            }),
        )
    }

    #[test]
    fn before_its_gate_opens_a_gated_container_shows_only_its_container_event() {
        let (mut filter, signals) = PreGateFilter::new();
        let gated: BTreeMap<String, u32> = [("c1".to_string(), 7)].into();
        assert!(filter.admit(&container(11, "c1"), &gated));
        assert!(signals.confirmed.borrow().contains("c1"));
        assert!(signals.passed.borrow().is_empty());
        assert!(!filter.admit(&listen(11, GATE_PORT), &gated), "plumbing");
        // Another container (not gated) and `lost` pass meanwhile.
        assert!(filter.admit(&container(22, "c2"), &gated));
        assert!(filter.admit(&listen(22, 80), &gated));
        let lost = Event::new(
            4,
            EventBody::Lost(guardlab_events::Lost {
                count: 1,
                cpu: None,
            }),
        );
        assert!(filter.admit(&lost, &gated));
        // The gate's exec opens it: the exec and everything after pass.
        assert!(filter.admit(&exec(11, 100), &gated));
        assert!(signals.passed.borrow().contains("c1"));
        assert!(filter.admit(&listen(11, 8888), &gated));
        // A reconnection's new `container` event does not close it again.
        assert!(filter.admit(&container(11, "c1"), &gated));
        assert!(filter.admit(&listen(11, 8888), &gated));
        // A new container of the same id set (a restart: new cgroup) is gated afresh.
        let gated: BTreeMap<String, u32> = [("c3".to_string(), 7)].into();
        assert!(filter.admit(&container(33, "c3"), &gated));
        assert!(!filter.admit(&listen(33, GATE_PORT), &gated));
        assert!(!signals.passed.borrow().contains("c3"));
    }

    /// While the gate waits, other processes may exec in its container (`kubectl exec`, an exec
    /// probe), with any argv: only the exec of the gate's own pid opens it.
    #[test]
    fn only_the_exec_of_the_gates_pid_opens_it() {
        let (mut filter, signals) = PreGateFilter::new();
        let gated: BTreeMap<String, u32> = [("c1".to_string(), 9)].into();
        assert!(filter.admit(&container(11, "c1"), &gated));
        for (pid, ns_pid, argv) in [
            (500, 30, &["sh", "-c", "ls"][..]),
            (501, 31, &["cat", "/tmp/healthy"][..]),
            // Even the notebook's own command, run by someone else.
            (
                502,
                32,
                &["python", "/usr/local/bin/start-notebook.py", "--help"][..],
            ),
            // The gate's pid in another container is not this gate's.
            (503, 9, &["python", "/usr/local/bin/start-notebook.py"][..]),
        ] {
            let cgroup = if pid == 503 { 12 } else { 11 };
            let foreign = exec_in(cgroup, pid, ns_pid, argv);
            assert_eq!(filter.admit(&foreign, &gated), cgroup == 12, "{argv:?}");
            assert!(signals.passed.borrow().is_empty(), "{argv:?}");
            assert!(!filter.admit(&listen(11, 8888), &gated), "{argv:?}");
        }
        // The gate's own exec: `/usr/bin/env python start-notebook.py`, then python itself,
        // both in the gate's pid; the first opens it.
        let env = exec_in(
            11,
            400,
            9,
            &["/usr/bin/env", "python", "/usr/local/bin/start-notebook.py"],
        );
        assert!(filter.admit(&env, &gated));
        assert!(signals.passed.borrow().contains("c1"));
        assert!(filter.admit(&exec_in(11, 400, 9, &["python"]), &gated));
        assert!(filter.admit(&exec_in(11, 600, 40, &["ls"]), &gated));
        assert!(filter.admit(&listen(11, 8888), &gated));
    }
}
