//! Agreement of the kernel and the engine: every event the kernel stopped (an exec it killed,
//! a connect it refused) must be a finding of the engine when the engine sees the same stream
//! (a deviation of a policy, with its decisions). A stopped event the engine does not find is
//! a difference, listed with its reason: the kernel enforced something the policy allows (a
//! wider or older compiled policy, or a kernel bug), which a person must look at.
//!
//! Pure: fed event by event with the engine's findings for it ([`Agreement::observe`]).

use std::collections::BTreeMap;

use guardlab_engine::deviation::Finding;
use guardlab_events::{Event, EventBody};
use serde::Serialize;

/// What the kernel stopped, and what the engine made of it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Agreement {
    /// Events the kernel stopped.
    pub stopped: usize,
    /// Of those, the ones the engine found as deviations.
    pub flagged: usize,
    /// Those with a kill among the engine's decisions (its response would have killed them).
    pub kill_decided: usize,
    /// Each stopped event the engine did not find, with why.
    pub differences: Vec<Difference>,
    /// Deviation uid -> what the kernel did to it (`killed at exec`, `connect refused`).
    #[serde(skip)]
    prevented: BTreeMap<String, &'static str>,
}

/// A stopped event the engine did not find.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Difference {
    /// `exec of /usr/bin/wget (pid 3907)`, `connect of pid 12 to 198.18.0.5:443`.
    pub event: String,
    /// When, in nanoseconds since the Unix epoch.
    pub ts: u64,
    pub reason: String,
}

/// What the kernel did to `event`: `None` when it did not stop it.
pub fn stopped_by_kernel(event: &Event) -> Option<(&'static str, String)> {
    match &event.body {
        EventBody::Exec(e) if e.killed => Some((
            "killed at exec",
            format!("exec of {} (pid {})", e.exe, e.pid),
        )),
        EventBody::Connect(c) if c.refused => Some((
            "connect refused",
            format!(
                "connect of pid {} to {}:{}",
                c.process.pid(),
                c.remote_ip,
                c.remote_port
            ),
        )),
        _ => None,
    }
}

impl Agreement {
    /// Takes one event and the engine's findings for it.
    pub fn observe(&mut self, event: &Event, findings: &[Finding]) {
        let Some((what, described)) = stopped_by_kernel(event) else {
            return;
        };
        self.stopped += 1;
        if findings.is_empty() {
            self.differences.push(Difference {
                event: described,
                ts: event.ts,
                reason: "the kernel stopped it, but no policy of the engine makes it a deviation \
                         (the kernel enforced a wider or older policy than the engine holds)"
                    .into(),
            });
            return;
        }
        self.flagged += 1;
        // Every response action is a kill (of the process, its group or tree, or the pod).
        if findings
            .iter()
            .any(|f| f.decisions.iter().any(|d| d.initiated))
        {
            self.kill_decided += 1;
        }
        for f in findings {
            self.prevented.insert(f.deviation_uid.clone(), what);
        }
    }

    /// What the kernel did to a deviation's events, when it stopped one.
    pub fn prevented(&self, deviation_uid: &str) -> Option<&'static str> {
        self.prevented.get(deviation_uid).copied()
    }

    /// Whether every stopped event was found.
    pub fn agrees(&self) -> bool {
        self.differences.is_empty()
    }

    /// `kernel and engine agree: 5 stopped, 5 flagged`, or the differences.
    pub fn summary(&self) -> String {
        if self.agrees() {
            return format!(
                "kernel and engine agree: {} stopped, {} flagged",
                self.stopped, self.flagged
            );
        }
        let listed: Vec<String> = self
            .differences
            .iter()
            .map(|d| format!("{}: {}", d.event, d.reason))
            .collect();
        format!(
            "kernel and engine differ: {} stopped, {} flagged; {}",
            self.stopped,
            self.flagged,
            listed.join("; ")
        )
    }
}
