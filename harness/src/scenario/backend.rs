//! What the runner asks of a backend (a live lab, or a recording), and how a step can fail:
//! the lab or a driver broke ([`StepError`], exit 2, the run stops), or the world did not do
//! what the scenario expects ([`CheckFailure`], exit 1, the run goes on). Each keeps the typed
//! error it comes from as its source.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use guardlab_engine::deviation::Decision;
use guardlab_engine::policy::PolicyError;
use guardlab_events::Event;
use guardlab_jupyter::JupyterError;
use guardlab_lab_api::{Backend, KernelPolicy, LabAction, LabError};
use serde_json::Value as Json;

use crate::console::{Console, seconds};

use super::file::{CheckPoolReached, Condition, Step, TerminalCommand};
use super::recording::RecordingError;

/// Why a step could not do what it asked.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The lab failed: `what` names what was asked of it.
    #[error("{what}: {source}")]
    Lab {
        what: String,
        #[source]
        source: LabError,
    },
    /// The Jupyter driver failed: `what` names what it was doing.
    #[error("{what}: {source}")]
    Driver {
        what: &'static str,
        #[source]
        source: JupyterError,
    },
    /// The notebook or the lab's events are asked for before a `lab_up` step brought them.
    #[error("{what} (no lab_up step ran)")]
    BeforeLabUp { what: &'static str },
    /// The lab's event stream ended; `why`, when the lab knows.
    #[error("{what}{}", why.as_deref().map(|w| format!(": {w}")).unwrap_or_default())]
    EventsEnded {
        what: &'static str,
        why: Option<String>,
    },
    /// The recording of this run could not be written.
    #[error("recording: {0}")]
    Recording(#[from] RecordingError),
    /// The recording a replay reads ends before this step.
    #[error(
        "{file}: the recording ends before step {number} ({step:?}): the live run stopped there, or the scenario grew; record it again"
    )]
    RecordingEnds {
        file: String,
        /// Counted from 1.
        number: usize,
        step: String,
    },
    /// A live lab whose events do not flow could not run: an error, not a finding.
    #[error(transparent)]
    LabSilent(CheckFailure),
    /// The world did not behave as the scenario expects: the step fails, the run goes on.
    #[error(transparent)]
    Check(#[from] CheckFailure),
}

impl StepError {
    /// A failed check (exit 1, the run goes on), rather than a lab or driver that broke (exit
    /// 2, the run stops).
    pub fn is_check(&self) -> bool {
        matches!(self, StepError::Check(_))
    }
}

/// What did not hold of what a scenario expects.
#[derive(Debug, thiserror::Error)]
pub enum CheckFailure {
    /// Events a step waits for did not come: within the limit on a live lab (`within`), or in
    /// the recording of the step (`None`).
    #[error("{what}: {} {}", conditions(missing), not_seen(within))]
    NotSeen {
        what: String,
        missing: Vec<Condition>,
        within: Option<Duration>,
    },
    /// A notebook cell raised.
    #[error("the cell failed: {ename}: {evalue}")]
    CellFailed { ename: String, evalue: String },
    /// A notebook cell ended otherwise than `ok`.
    #[error("the cell ended with status {status:?}")]
    CellStatus { status: String },
    /// A terminal command still ran at its limit.
    #[error("`{run}` did not finish: {source}")]
    Unfinished {
        run: String,
        #[source]
        source: JupyterError,
    },
    /// Nothing ran in any container before the fingerprint step.
    #[error("no fingerprint: no program ran in any container")]
    NoFingerprint,
    /// The engine refused a policy: `what` says which.
    #[error("{what}: {source}")]
    Policy {
        what: &'static str,
        #[source]
        source: PolicyError,
    },
    /// The policy store refused a step's change: `what` says which.
    #[error("{what}: {source}")]
    Store {
        what: &'static str,
        #[source]
        source: guardlab_policy_store::StoreError,
    },
    /// The policy could not be compiled for the kernel (the engine still responds to it).
    #[error("policy {policy} cannot be enforced in the kernel: {source}")]
    KernelPolicy {
        policy: String,
        #[source]
        source: guardlab_kernel_policy::CompileError,
    },
    /// A policy step before any policy was made.
    #[error("no policy yet")]
    NoPolicy,
    /// The lab's mining pool saw fewer clients than expected.
    #[error(
        "the pool saw {seen} client(s){}, expected at least {expected}",
        user.as_deref().map(|u| format!(" as user {u}")).unwrap_or_default()
    )]
    PoolClients {
        seen: usize,
        user: Option<String>,
        expected: usize,
    },
    /// The lab's mining pool saw a client where none was expected (`clients: 0`).
    #[error(
        "the pool saw {seen} client(s){}, expected none",
        user.as_deref().map(|u| format!(" as user {u}")).unwrap_or_default()
    )]
    PoolNotClean { seen: usize, user: Option<String> },
    /// A lab with no mining pool of its own was asked about one.
    #[error(
        "the {backend} lab has no mining pool of its own to ask whether {clients} client(s) logged in: this check only runs on the local backend"
    )]
    NoPool { backend: Backend, clients: usize },
    /// The recording of this step lacks what the live run learned outside the events.
    #[error("{file}: the recording of this step has no `{fact}` fact")]
    NotRecorded { file: String, fact: &'static str },
    /// The lab refused or failed a response action (boxed: a lab error is large, and a
    /// failed check is the common result).
    #[error("carrying out {action:?}: {source}")]
    Action {
        action: LabAction,
        #[source]
        source: Box<LabError>,
    },
}

fn conditions(missing: &[Condition]) -> String {
    missing
        .iter()
        .map(Condition::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn not_seen(within: &Option<Duration>) -> String {
    match within {
        Some(limit) => format!("not seen within {}", seconds(*limit)),
        None => "not in the recording of this step".into(),
    }
}

/// A response the engine decided on an event a backend handed over while an action ran: the
/// backend carries it out at once (it holds the lab) and says what came of it
/// ([`EventSink::carried_out`]).
pub struct Response {
    pub(crate) decision: Decision,
    pub(crate) entry: Option<super::latency::EntryId>,
}

impl Response {
    /// What the engine decided.
    pub fn decision(&self) -> &Decision {
        &self.decision
    }
}

/// Where a backend hands the events it reads while an action (a terminal command, a notebook
/// cell) runs, as they come: the runner records each, has the engine observe it (flags are
/// raised at once) and returns the responses to carry out. Without it the engine would see
/// none of an action's events until the action returned (issue 16: an exec storm's deviant
/// execs were flagged hundreds of milliseconds late).
pub trait EventSink {
    /// Take one event; the responses the engine decided on it, for the backend to carry out
    /// now. An error stops the action (the run stops: the recording could not be written).
    fn event(&mut self, event: Event) -> Result<Vec<Response>, StepError>;
    /// What came of carrying out `response`: a failed check is noted (the run goes on); any
    /// other error is given back, and stops the action.
    fn carried_out(
        &mut self,
        response: Response,
        outcome: Result<String, StepError>,
    ) -> Result<(), StepError>;
}

/// Where events come from and where the scenario's actions go.
#[allow(async_fn_in_trait)] // Used through generics only.
pub trait ScenarioBackend {
    /// Which backend this is.
    fn backend(&self) -> Backend;
    /// A live lab (actions happen, responses are carried out) rather than a recording.
    fn is_live(&self) -> bool {
        self.backend().is_live()
    }
    /// Whether `step` runs here (its `backends:`); a replay answers for the backend it recorded.
    fn runs(&self, step: &Step) -> bool {
        step.runs_on(self.backend())
    }
    /// A new step starts (a replay moves to the step's recorded events).
    fn begin_step(&mut self, index: usize, step: &Step) -> Result<(), StepError>;
    /// The step is over; `facts` are what it learned outside the event stream.
    fn end_step(&mut self, index: usize, step: &Step, facts: &BTreeMap<String, Json>);
    async fn lab_up(&mut self, out: &Console) -> Result<(), StepError>;
    /// Run a notebook cell; the events read meanwhile go to `events` as they come (a replay
    /// has none: its recording gives a step's events through [`Self::next_event`]).
    async fn notebook_cell(
        &mut self,
        code: &str,
        timeout: Duration,
        out: &Console,
        events: &mut dyn EventSink,
    ) -> Result<(), StepError>;
    /// Type a terminal command; the events read meanwhile go to `events`, as for
    /// [`Self::notebook_cell`].
    async fn terminal_command(
        &mut self,
        session: &str,
        command: &TerminalCommand,
        out: &Console,
        events: &mut dyn EventSink,
    ) -> Result<String, StepError>;
    /// The next event, or `None` when the deadline passed (live) or the step's recorded events
    /// are used up (replay).
    async fn next_event(&mut self, deadline: Instant) -> Result<Option<Event>, StepError>;
    /// The events there are now without waiting (live), or the rest of the step's (replay).
    async fn drain(&mut self) -> Result<Vec<Event>, StepError>;
    /// Carry out a response action; returns what was done.
    async fn carry_out(&mut self, decision: &Decision) -> Result<String, StepError>;
    /// The lab's mining pool's clients, waiting up to the check's timeout for enough of them.
    async fn pool_clients(&mut self, check: &CheckPoolReached) -> Result<Vec<Json>, StepError>;
    /// Enforce a compiled policy in the kernel for every pod of the lab, replacing what was
    /// enforced before (`None` lifts it). A replay does nothing: its recording holds what the
    /// kernel did; a lab without kernel enforcement refuses (a scenario that needs it says
    /// `runs_on`).
    async fn apply_kernel_policy(&mut self, policy: Option<&KernelPolicy>)
    -> Result<(), StepError>;
    /// What the lab lost or could not do since it started (its sensor's counters), asked for
    /// at the end of a run; `None` where the backend has no such counters (a recording, a
    /// cluster: there the stream's `lost` events are all there is).
    async fn lab_counters(&mut self) -> Option<guardlab_lab::local::LabCounters> {
        None
    }
    /// Tear down (unless `keep`).
    async fn finish(&mut self, keep: bool, out: &Console) -> Result<(), StepError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_say_what_did_not_hold_and_which_stop_the_run() {
        let missing = || vec![Condition::Exit("wget".into()), Condition::Listen(8888)];
        let live = CheckFailure::NotSeen {
            what: "`wget x`".into(),
            missing: missing(),
            within: Some(Duration::from_secs(60)),
        };
        assert_eq!(
            live.to_string(),
            "`wget x`: exit of wget, listening socket on port 8888 not seen within 60.00s"
        );
        let replayed = CheckFailure::NotSeen {
            what: "waiting".into(),
            missing: missing(),
            within: None,
        };
        assert!(
            replayed
                .to_string()
                .ends_with("not in the recording of this step"),
            "{replayed}"
        );
        assert_eq!(
            CheckFailure::PoolClients {
                seen: 0,
                user: Some("ME".into()),
                expected: 1
            }
            .to_string(),
            "the pool saw 0 client(s) as user ME, expected at least 1"
        );

        assert_eq!(
            CheckFailure::PoolNotClean {
                seen: 1,
                user: Some("ME".into())
            }
            .to_string(),
            "the pool saw 1 client(s) as user ME, expected none"
        );

        let check = StepError::from(CheckFailure::NoPolicy);
        assert!(check.is_check());
        // A live lab whose events do not flow says the same words, but stops the run.
        let silent = StepError::LabSilent(live);
        assert!(!silent.is_check());
        assert!(silent.to_string().starts_with("`wget x`: exit of wget"));
        let ended = StepError::EventsEnded {
            what: "the sensor's event stream ended",
            why: Some("no working connection".into()),
        };
        assert_eq!(
            ended.to_string(),
            "the sensor's event stream ended: no working connection"
        );
        assert_eq!(
            StepError::BeforeLabUp {
                what: "the notebook is not connected"
            }
            .to_string(),
            "the notebook is not connected (no lab_up step ran)"
        );
    }
}
