//! What a step does: one [`Action`] per step, its key in the file naming it, and the
//! parameters of each.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::NoArgs;
use super::wait::{Condition, Timeout};

/// What a step does. In the file, the variant's name is the step's action key.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Bring the lab up (or reuse it) and start reading the sensor's events.
    LabUp(LabUp),
    /// Run one notebook cell through the Jupyter kernel API.
    NotebookCell(NotebookCell),
    /// Type commands into a Jupyter terminal (one terminal per session name).
    Terminal(Terminal),
    /// Wait for events without doing anything.
    WaitEvents(WaitEvents),
    /// Learn the fingerprints from everything seen so far (the baseline window).
    Fingerprint(SnapshotRef),
    /// Make a policy from the fingerprints.
    CreatePolicy(CreatePolicy),
    /// Switch the policy's mode.
    SetMode(ModeWord),
    /// Enable the policy.
    Enable(NoArgs),
    /// Disable the policy: it produces nothing from here on.
    Disable(NoArgs),
    /// Add a kill to the policy's response (`agentKillProcess`, its group or tree, or the
    /// pod), for the policy's own containers.
    AddResponse(guardlab_engine::policy::KillAction),
    /// Merge the deviations found so far into the policy (the tutorial's "add the processes
    /// to the policy"): what they did is allowed from here on.
    MergeDeviations(MergeDeviations),
    /// Compare the deviations found since the previous such step with a snapshot.
    ExpectDeviations(SnapshotRef),
    /// Rebuild the causal trace of every deviation and compare it with a snapshot.
    Investigate(SnapshotRef),
    /// Check that the lab's mining pool saw a client (the miner reached it).
    CheckPoolReached(CheckPoolReached),
}

impl Action {
    /// The action's key in the file.
    pub fn key(&self) -> &'static str {
        match self {
            Action::LabUp(_) => "lab_up",
            Action::NotebookCell(_) => "notebook_cell",
            Action::Terminal(_) => "terminal",
            Action::WaitEvents(_) => "wait_events",
            Action::Fingerprint(_) => "fingerprint",
            Action::CreatePolicy(_) => "create_policy",
            Action::SetMode(_) => "set_mode",
            Action::Enable(_) => "enable",
            Action::Disable(_) => "disable",
            Action::AddResponse(_) => "add_response",
            Action::MergeDeviations(_) => "merge_deviations",
            Action::ExpectDeviations(_) => "expect_deviations",
            Action::Investigate(_) => "investigate",
            Action::CheckPoolReached(_) => "check_pool_reached",
        }
    }

    /// The snapshot file this step is checked against, when it has one.
    pub fn snapshot(&self) -> Option<&str> {
        match self {
            Action::Fingerprint(s) | Action::ExpectDeviations(s) | Action::Investigate(s) => {
                Some(s.snapshot.as_str())
            }
            Action::CreatePolicy(c) => c.snapshot.as_deref(),
            Action::MergeDeviations(m) => m.snapshot.as_deref(),
            _ => None,
        }
    }
}

pub(super) const ACTION_KEYS: &[&str] = &[
    "lab_up",
    "notebook_cell",
    "terminal",
    "wait_events",
    "fingerprint",
    "create_policy",
    "set_mode",
    "enable",
    "disable",
    "add_response",
    "merge_deviations",
    "expect_deviations",
    "investigate",
    "check_pool_reached",
];

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabUp {
    /// Met once the lab is up and its events flow, e.g. the notebook server's exec.
    #[serde(default, with = "serde_yaml::with::singleton_map_recursive")]
    pub wait_for: Vec<Condition>,
    #[serde(default = "default_lab_timeout")]
    pub timeout: Timeout,
}

fn default_lab_timeout() -> Timeout {
    Timeout(Duration::from_secs(60))
}

fn default_cell_timeout() -> Timeout {
    Timeout(Duration::from_secs(180))
}

fn default_command_timeout() -> Timeout {
    Timeout(Duration::from_secs(60))
}

fn default_wait_timeout() -> Timeout {
    Timeout(Duration::from_secs(30))
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotebookCell {
    /// The cell's source, as a learner types it.
    pub code: String,
    /// Events that must be seen before the step ends (the cell's reply came already).
    #[serde(default, with = "serde_yaml::with::singleton_map_recursive")]
    pub wait_for: Vec<Condition>,
    #[serde(default = "default_cell_timeout")]
    pub timeout: Timeout,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Terminal {
    /// Terminals are opened on first use of a session name and kept for later steps.
    #[serde(default = "default_session")]
    pub session: String,
    pub commands: Vec<TerminalCommand>,
}

fn default_session() -> String {
    "main".into()
}

/// One command line typed into a terminal. Written as a plain string, or as a mapping.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TerminalCommand {
    pub run: String,
    /// Do not wait for the shell's prompt: the program keeps running (a miner).
    pub background: bool,
    /// What to type when the command's output shows a prompt (each once, in order), as a
    /// learner would: e.g. Ctrl-C (`"\x03"`) at sudo's password prompt.
    pub answers: Vec<Answer>,
    /// What to wait for after typing it. Default: the exit of the command's program (its first
    /// word's basename), or its exec when it runs in the background.
    pub wait_for: Vec<Condition>,
    pub timeout: Timeout,
}

impl TerminalCommand {
    /// The program the command line starts: the basename of its first word.
    pub fn program(run: &str) -> String {
        let first = run.split_whitespace().next().unwrap_or("");
        first.rsplit('/').next().unwrap_or(first).to_string()
    }
}

/// Type `reply` when `prompt` appears in a command's output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Answer {
    pub prompt: String,
    pub reply: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TerminalCommandMap {
    run: String,
    #[serde(default)]
    background: bool,
    #[serde(default)]
    answers: Vec<Answer>,
    #[serde(default, with = "serde_yaml::with::singleton_map_recursive")]
    wait_for: Option<Vec<Condition>>,
    #[serde(default = "default_command_timeout")]
    timeout: Timeout,
}

impl<'de> Deserialize<'de> for TerminalCommand {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TerminalCommand;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a command line, or a mapping with `run`")
            }
            fn visit_str<E: de::Error>(self, run: &str) -> Result<TerminalCommand, E> {
                Ok(command_from(TerminalCommandMap {
                    run: run.to_string(),
                    background: false,
                    answers: Vec::new(),
                    wait_for: None,
                    timeout: default_command_timeout(),
                }))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<TerminalCommand, A::Error> {
                let m =
                    TerminalCommandMap::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(command_from(m))
            }
        }
        d.deserialize_any(V)
    }
}

fn command_from(m: TerminalCommandMap) -> TerminalCommand {
    let program = TerminalCommand::program(&m.run);
    let wait_for = m.wait_for.unwrap_or_else(|| {
        if program.is_empty() {
            Vec::new()
        } else if m.background {
            vec![Condition::Exec(program)]
        } else {
            vec![Condition::Exit(program)]
        }
    });
    TerminalCommand {
        run: m.run,
        background: m.background,
        answers: m.answers,
        wait_for,
        timeout: m.timeout,
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitEvents {
    #[serde(rename = "for", with = "serde_yaml::with::singleton_map_recursive")]
    pub wait_for: Vec<Condition>,
    #[serde(default = "default_wait_timeout")]
    pub timeout: Timeout,
}

/// A step checked against one snapshot file, `snapshots/<scenario>/<snapshot>.snap`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRef {
    pub snapshot: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MergeDeviations {
    /// Only the deviations of these types (`process`, `egress`, `ingress`); all when left out.
    #[serde(default)]
    pub types: Vec<guardlab_engine::model::DeviationType>,
    /// The policy after the merge is checked against this snapshot.
    #[serde(default)]
    pub snapshot: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreatePolicy {
    /// `metadata.name` of the policy.
    pub name: String,
    pub mode: ModeWord,
    /// Only the fingerprints of images matching this glob (default: every fingerprint).
    #[serde(default)]
    pub image: Option<String>,
    /// The policy as created is checked against this snapshot.
    #[serde(default)]
    pub snapshot: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModeWord {
    Audit,
    Enforce,
}

impl From<ModeWord> for guardlab_engine::model::Mode {
    fn from(m: ModeWord) -> Self {
        match m {
            ModeWord::Audit => guardlab_engine::model::Mode::Audit,
            ModeWord::Enforce => guardlab_engine::model::Mode::Enforce,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckPoolReached {
    /// The pool must have seen at least this many clients; `0`: the pool must have seen none
    /// (the miner was stopped before it reached the pool), still none at the timeout.
    #[serde(default = "one")]
    pub clients: usize,
    /// ... that authorized as this user, when given.
    #[serde(default)]
    pub user: Option<String>,
    /// Events the sensor must have seen first (the miner's connection to the pool); one seen
    /// earlier in the run counts, else the check waits for it.
    #[serde(default, with = "serde_yaml::with::singleton_map_recursive")]
    pub wait_for: Vec<Condition>,
    #[serde(default = "default_wait_timeout")]
    pub timeout: Timeout,
}

fn one() -> usize {
    1
}
