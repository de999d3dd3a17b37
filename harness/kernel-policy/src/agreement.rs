//! Agreement of the kernel and the engine: every event the kernel stopped (an exec it killed,
//! a connect it refused) must be a finding of the engine when the engine sees the same stream
//! (a deviation of a policy, with its decisions). A stopped event the engine does not find is
//! a difference, listed with its reason: the kernel enforced something the policy allows (an
//! older compiled policy, a DNS answer from before the policy reached the kernel, or a kernel
//! bug), which a person must look at.
//!
//! The other way, while the kernel enforces a policy ([`Agreement::enforcing`]): an exec or
//! connect the engine decides to kill that the kernel let run is a difference too, with the
//! places where the kernel's policy is wider than the engine's (its `widened` list) as the
//! reason, or, with none, as unexplained.
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
    /// Execs and connects the engine decided to kill that the kernel let run while it
    /// enforced a policy.
    pub let_run: usize,
    /// Each stopped event the engine did not find, and each event it decided to kill that the
    /// kernel let run, with why.
    pub differences: Vec<Difference>,
    /// While the kernel enforces a policy: where that policy is wider than the engine's.
    #[serde(skip)]
    enforcing: Option<Vec<String>>,
    /// Deviation uid -> what the kernel did to it (`killed at exec`, `connect refused`).
    #[serde(skip)]
    prevented: BTreeMap<String, &'static str>,
}

/// A stopped event the engine did not find, or an event it decided to kill that the kernel
/// let run.
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
    let what = match &event.body {
        EventBody::Exec(e) if e.killed => "killed at exec",
        EventBody::Connect(c) if c.refused => "connect refused",
        _ => return None,
    };
    Some((what, described(event)?))
}

/// How an exec or connect is described in a difference, whether the kernel stopped it or not.
fn described(event: &Event) -> Option<String> {
    match &event.body {
        EventBody::Exec(e) => Some(format!("exec of {} (pid {})", e.exe, e.pid)),
        EventBody::Connect(c) => Some(format!(
            "connect of pid {} to {}:{}",
            c.process.pid(),
            c.remote_ip,
            c.remote_port
        )),
        _ => None,
    }
}

/// Whether the engine's response to `findings` kills (every response action is a kill: of the
/// process, its group or tree, or the pod).
fn kill_decided(findings: &[Finding]) -> bool {
    findings
        .iter()
        .any(|f| f.decisions.iter().any(|d| d.initiated))
}

impl Agreement {
    /// From now on the kernel enforces `policy` (`None`: it enforces nothing): execs and
    /// connects the engine decides to kill must then be stopped events.
    pub fn enforcing(&mut self, policy: Option<&guardlab_lab_api::KernelPolicy>) {
        self.enforcing = policy.map(|p| p.widened.clone());
    }

    /// Takes one event and the engine's findings for it.
    pub fn observe(&mut self, event: &Event, findings: &[Finding]) {
        let Some((what, described)) = stopped_by_kernel(event) else {
            self.observe_let_run(event, findings);
            return;
        };
        self.stopped += 1;
        if findings.is_empty() {
            self.differences.push(Difference {
                event: described,
                ts: event.ts,
                reason: "the kernel stopped it, but no policy of the engine makes it a deviation \
                         (the kernel enforced an older policy than the engine holds, or, for a \
                         connect, the address came from a DNS answer the kernel did not see: \
                         one from before the policy reached it)"
                    .into(),
            });
            return;
        }
        self.flagged += 1;
        if kill_decided(findings) {
            self.kill_decided += 1;
        }
        for f in findings {
            self.prevented.insert(f.deviation_uid.clone(), what);
        }
    }

    /// An exec or connect the kernel let run: a difference when the kernel enforces a policy
    /// and the engine decides to kill it.
    fn observe_let_run(&mut self, event: &Event, findings: &[Finding]) {
        let Some(widened) = &self.enforcing else {
            return;
        };
        let Some(described) = described(event) else {
            return;
        };
        if !kill_decided(findings) {
            return;
        }
        self.let_run += 1;
        let reason = if widened.is_empty() {
            "the engine decides to kill it, but the kernel let it run, and the kernel's policy \
             is nowhere wider than the engine's (a kernel bug, or a policy the kernel has not \
             got yet)"
                .to_string()
        } else {
            format!(
                "the engine decides to kill it, but the kernel let it run: the kernel's policy \
                 is wider than the engine's ({})",
                widened.join("; ")
            )
        };
        self.differences.push(Difference {
            event: described,
            ts: event.ts,
            reason,
        });
    }

    /// What the kernel did to a deviation's events, when it stopped one.
    pub fn prevented(&self, deviation_uid: &str) -> Option<&'static str> {
        self.prevented.get(deviation_uid).copied()
    }

    /// Whether every stopped event was found (and, while the kernel enforced a policy, every
    /// exec and connect the engine decided to kill was stopped).
    pub fn agrees(&self) -> bool {
        self.differences.is_empty()
    }

    /// `kernel and engine agree: 5 stopped, 5 flagged`, or the differences (with the kills
    /// the kernel let run, when there are any).
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
        let let_run = if self.let_run > 0 {
            format!(", {} let run", self.let_run)
        } else {
            String::new()
        };
        format!(
            "kernel and engine differ: {} stopped, {} flagged{let_run}; {}",
            self.stopped,
            self.flagged,
            listed.join("; ")
        )
    }
}
