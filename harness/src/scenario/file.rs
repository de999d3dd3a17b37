//! The scenario file format: a scenario is data (`scenarios/<name>.yaml`), the runner knows no
//! scenario's specifics.
//!
//! ```yaml
//! name: cryptominer
//! description: One line for `guardlab scenario --list`.
//! lab: {namespace: cryptominer, deployment: jupyter-notebook}
//! steps:
//!   - name: baseline-hello            # a slug: names the step in reports and snapshot diffs
//!     explain: Run a first cell.      # shown to the learner before the step runs
//!     notebook_cell: {code: 'print("Hello world!")'}
//!   - name: terminal-ls
//!     explain: ...
//!     terminal:
//!       session: attacker             # one terminal per session name, opened on first use
//!       commands:
//!         - ls                        # waits for the exit of `ls` (the first word)
//!         - {run: ./minerd ..., background: true, wait_for: [{connect: pool.example.com}]}
//! ```
//!
//! Every step has a `name`, an `explain` text and exactly one action key (see [`Action`]).
//! A step that only makes sense on some lab backends says so with `backends: [local]`: on the
//! others it is reported as not applicable, and passes (e.g. checking the lab's own mining pool,
//! which a Kubernetes cluster does not have).
//! Unknown keys and wrong types are errors that name the file, the line, the column and the
//! key path, e.g. `scenarios/x.yaml:12:5: steps[3].terminal: unknown field ...`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use guardlab_lab_api::Backend;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

/// A whole scenario file.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// The name `guardlab scenario NAME` runs; also the snapshot directory's name.
    pub name: String,
    /// One line, shown by `guardlab scenario --list`.
    pub description: String,
    /// What the live backends bring up.
    #[serde(default)]
    pub lab: LabSpec,
    pub steps: Vec<Step>,
}

/// The lab the scenario runs in (informational for the runner; the lab reads `manifests/`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabSpec {
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub deployment: Option<String>,
}

/// One step: a name, a text for the learner, and what to do.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub name: String,
    pub explain: String,
    pub action: Action,
    /// The lab backends the step runs on (live ones only); empty: all of them.
    pub backends: Vec<Backend>,
}

impl Step {
    /// Whether the step runs on this lab backend (a replay counts as the backend it recorded).
    pub fn runs_on(&self, backend: Backend) -> bool {
        self.backends.is_empty() || self.backends.contains(&backend)
    }
}

/// The names a step's `backends:` takes: the live backends (a replay runs the steps of the
/// backend it recorded).
const LIVE_BACKENDS: &[&str] = &["local", "kind"];

/// A live backend, as a step's `backends:` names it.
struct LiveBackend(Backend);

impl<'de> Deserialize<'de> for LiveBackend {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A visitor, so that the error is raised while the scalar is read and carries its
        // path and line.
        struct V;
        impl Visitor<'_> for V {
            type Value = LiveBackend;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a lab backend: local or kind")
            }
            fn visit_str<E: de::Error>(self, name: &str) -> Result<LiveBackend, E> {
                match name.parse::<Backend>() {
                    Ok(backend) if backend.is_live() => Ok(LiveBackend(backend)),
                    _ => Err(E::unknown_variant(name, LIVE_BACKENDS)),
                }
            }
        }
        d.deserialize_str(V)
    }
}

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
            _ => None,
        }
    }
}

const ACTION_KEYS: &[&str] = &[
    "lab_up",
    "notebook_cell",
    "terminal",
    "wait_events",
    "fingerprint",
    "create_policy",
    "set_mode",
    "enable",
    "disable",
    "expect_deviations",
    "investigate",
    "check_pool_reached",
];

/// A duration written as `500ms`, `30s` or `2m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeout(pub Duration);

impl Timeout {
    pub fn parse(text: &str) -> Result<Timeout, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let n: u64 = number
            .parse()
            .map_err(|_| format!("{text:?} is not a duration: write e.g. 500ms, 30s or 2m"))?;
        let d = match unit.trim() {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n * 60),
            _ => return Err(format!("{text:?}: the unit must be ms, s or m")),
        };
        Ok(Timeout(d))
    }
}

impl fmt::Display for Timeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl<'de> Deserialize<'de> for Timeout {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A visitor, so that the error is raised while the scalar is read and carries its
        // path and line.
        struct V;
        impl Visitor<'_> for V {
            type Value = Timeout;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as 500ms, 30s or 2m")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Timeout, E> {
                Timeout::parse(text).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

impl Serialize for Timeout {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Something to wait for in the sensor's events. All conditions of a list must be met.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Condition {
    /// A program with this process name (the kernel's `comm`, as fingerprints name it) or
    /// this executable basename started.
    Exec(String),
    /// A process with this name (as for `exec`) ended.
    Exit(String),
    /// An outbound connection to this host: a DNS name (an earlier DNS answer gave the
    /// address), an IP address, or `*` for any address, optionally with `:port` (`*:53`: a
    /// DNS query, wherever the pod's resolver is).
    Connect(String),
    /// A socket started listening on this port.
    Listen(u16),
    /// A container was introduced (its `container` event).
    Container(NoArgs),
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Condition::Exec(n) => write!(f, "exec of {n}"),
            Condition::Exit(n) => write!(f, "exit of {n}"),
            Condition::Connect(h) => write!(f, "connection to {h}"),
            Condition::Listen(p) => write!(f, "listening socket on port {p}"),
            Condition::Container(_) => write!(f, "a container"),
        }
    }
}

/// An empty mapping: `disable: {}`, or nothing at all (`disable:`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NoArgs;

impl<'de> Deserialize<'de> for NoArgs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Empty {}
        Option::<Empty>::deserialize(d).map(|_| NoArgs)
    }
}

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
    /// The pool must have seen at least this many clients.
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

impl<'de> Deserialize<'de> for Step {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Step;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a step: a mapping with `name`, `explain` and one action key")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Step, A::Error> {
                let mut name: Option<String> = None;
                let mut explain: Option<String> = None;
                let mut action: Option<Action> = None;
                let mut backends: Option<Vec<Backend>> = None;
                while let Some(key) = map.next_key::<String>()? {
                    let parsed = match key.as_str() {
                        "name" => {
                            if name.is_some() {
                                return Err(de::Error::duplicate_field("name"));
                            }
                            name = Some(map.next_value()?);
                            continue;
                        }
                        "explain" => {
                            if explain.is_some() {
                                return Err(de::Error::duplicate_field("explain"));
                            }
                            explain = Some(map.next_value()?);
                            continue;
                        }
                        "backends" => {
                            if backends.is_some() {
                                return Err(de::Error::duplicate_field("backends"));
                            }
                            let list: Vec<LiveBackend> = map.next_value()?;
                            if list.is_empty() {
                                return Err(de::Error::custom(
                                    "backends: name at least one backend (local, kind), or leave the key out to run everywhere",
                                ));
                            }
                            backends = Some(list.into_iter().map(|b| b.0).collect());
                            continue;
                        }
                        "lab_up" => Action::LabUp(map.next_value()?),
                        "notebook_cell" => Action::NotebookCell(map.next_value()?),
                        "terminal" => Action::Terminal(map.next_value()?),
                        "wait_events" => Action::WaitEvents(map.next_value()?),
                        "fingerprint" => Action::Fingerprint(map.next_value()?),
                        "create_policy" => Action::CreatePolicy(map.next_value()?),
                        "set_mode" => Action::SetMode(map.next_value()?),
                        "enable" => Action::Enable(map.next_value()?),
                        "disable" => Action::Disable(map.next_value()?),
                        "expect_deviations" => Action::ExpectDeviations(map.next_value()?),
                        "investigate" => Action::Investigate(map.next_value()?),
                        "check_pool_reached" => Action::CheckPoolReached(map.next_value()?),
                        other => {
                            return Err(de::Error::custom(format_args!(
                                "unknown field `{other}`, expected `name`, `explain`, `backends` or an action: {}",
                                ACTION_KEYS.join(", ")
                            )));
                        }
                    };
                    if let Some(first) = &action {
                        return Err(de::Error::custom(format_args!(
                            "a step has one action, this one has `{}` and `{key}`",
                            first.key()
                        )));
                    }
                    action = Some(parsed);
                }
                let name = name.ok_or_else(|| de::Error::missing_field("name"))?;
                if name.is_empty()
                    || !name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                {
                    return Err(de::Error::custom(format_args!(
                        "name {name:?}: use lowercase letters, digits and '-' (it names snapshot files and reports)"
                    )));
                }
                let explain = explain.ok_or_else(|| de::Error::missing_field("explain"))?;
                let action = action.ok_or_else(|| {
                    de::Error::custom(format_args!(
                        "step {name:?} has no action: add one of {}",
                        ACTION_KEYS.join(", ")
                    ))
                })?;
                Ok(Step {
                    name,
                    explain,
                    action,
                    backends: backends.unwrap_or_default(),
                })
            }
        }
        d.deserialize_map(V)
    }
}

/// A scenario file that could not be read, with where.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("{file}: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// `file:line:column: path: message`.
    #[error("{file}:{line}:{column}: {message}")]
    Syntax {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
    #[error(
        "no scenario {name:?} in {dir}: the scenarios are {known} (`guardlab scenario --list`)"
    )]
    Unknown {
        name: String,
        dir: String,
        known: String,
    },
}

impl ScenarioError {
    /// The line the error is on, when it is about one.
    pub fn line(&self) -> Option<usize> {
        match self {
            ScenarioError::Syntax { line, .. } => Some(*line),
            _ => None,
        }
    }
}

/// Parse a scenario from text; `file` names it in errors.
pub fn parse_scenario(file: &str, text: &str) -> Result<Scenario, ScenarioError> {
    let scenario: Scenario = serde_yaml::from_str(text).map_err(|e| {
        let (line, column) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((0, 0));
        let mut message = e.to_string();
        // serde_yaml appends " at line L column C"; we lead with it instead.
        if let Some(cut) = message.rfind(" at line ") {
            message.truncate(cut);
        }
        ScenarioError::Syntax {
            file: file.to_string(),
            line,
            column,
            message,
        }
    })?;
    check(file, &scenario)?;
    Ok(scenario)
}

/// Rules serde cannot say: unique step names and snapshots, a policy before policy steps.
fn check(file: &str, s: &Scenario) -> Result<(), ScenarioError> {
    let invalid = |message: String| ScenarioError::Invalid {
        file: file.to_string(),
        message,
    };
    if s.steps.is_empty() {
        return Err(invalid("steps: a scenario needs at least one step".into()));
    }
    let mut names = std::collections::BTreeSet::new();
    let mut snapshots = std::collections::BTreeMap::new();
    let mut policy = false;
    let mut fingerprinted = false;
    for (i, step) in s.steps.iter().enumerate() {
        if !names.insert(step.name.as_str()) {
            return Err(invalid(format!(
                "steps[{i}].name: {:?} is used by an earlier step",
                step.name
            )));
        }
        if let Some(snap) = step.action.snapshot() {
            if snap.is_empty() || snap.contains('/') || snap.starts_with('.') {
                return Err(invalid(format!(
                    "steps[{i}].{}.snapshot: {snap:?} must be a plain file name",
                    step.action.key()
                )));
            }
            if let Some(other) = snapshots.insert(snap.to_string(), step.name.clone()) {
                return Err(invalid(format!(
                    "steps[{i}].{}.snapshot: {snap:?} is already the snapshot of step {other:?}",
                    step.action.key()
                )));
            }
        }
        if !step.backends.is_empty()
            && matches!(
                step.action,
                Action::LabUp(_) | Action::Fingerprint(_) | Action::CreatePolicy(_)
            )
        {
            // Later steps build on these: leaving one out on some backend breaks the rest.
            return Err(invalid(format!(
                "steps[{i}].backends: a `{}` step runs on every backend (later steps need it): remove `backends`",
                step.action.key()
            )));
        }
        match &step.action {
            Action::Fingerprint(_) => fingerprinted = true,
            Action::CreatePolicy(_) if !fingerprinted => {
                return Err(invalid(format!(
                    "steps[{i}].create_policy: a policy is made from fingerprints: add a `fingerprint` step before it"
                )));
            }
            Action::CreatePolicy(_) => policy = true,
            Action::SetMode(_)
            | Action::Enable(_)
            | Action::Disable(_)
            | Action::ExpectDeviations(_)
            | Action::Investigate(_)
                if !policy =>
            {
                return Err(invalid(format!(
                    "steps[{i}].{}: needs a policy: add a `create_policy` step before it",
                    step.action.key()
                )));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Read and parse a scenario file.
pub fn load_scenario(path: &Path) -> Result<Scenario, ScenarioError> {
    let file = display_path(path);
    let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
        file: file.clone(),
        source,
    })?;
    parse_scenario(&file, &text)
}

/// A path as errors show it: relative to the current directory when it is inside it.
pub fn display_path(path: &Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(&cwd).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| path.to_path_buf())
        .display()
        .to_string()
}

/// The scenario files of a directory (`*.yaml`), sorted by name.
pub fn scenario_files(dir: &Path) -> Result<Vec<PathBuf>, ScenarioError> {
    let entries = std::fs::read_dir(dir).map_err(|source| ScenarioError::Read {
        file: display_path(dir),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml") && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// Find a scenario by name (a file `<dir>/<name>.yaml`) or take a path to a file.
pub fn resolve_scenario(dir: &Path, name_or_path: &str) -> Result<PathBuf, ScenarioError> {
    let as_path = Path::new(name_or_path);
    if name_or_path.ends_with(".yaml")
        || name_or_path.ends_with(".yml")
        || name_or_path.contains('/')
    {
        return Ok(as_path.to_path_buf());
    }
    let candidate = dir.join(format!("{name_or_path}.yaml"));
    if candidate.is_file() {
        return Ok(candidate);
    }
    let known: Vec<String> = scenario_files(dir)
        .unwrap_or_default()
        .iter()
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    Err(ScenarioError::Unknown {
        name: name_or_path.to_string(),
        dir: display_path(dir),
        known: if known.is_empty() {
            "none".into()
        } else {
            known.join(", ")
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
name: demo
description: A demo.
steps:
  - name: up
    explain: Bring it up.
    lab_up: {wait_for: [{exec: jupyter-notebook}]}
  - name: t
    explain: Type.
    terminal:
      commands:
        - ls -la
        - {run: ./minerd -u x, background: true}
        - {run: ping -n 3 example.com, wait_for: []}
  - name: fp
    explain: Learn.
    fingerprint: {snapshot: fingerprints}
  - name: pol
    explain: Make it.
    create_policy: {name: p, mode: audit}
  - name: off
    explain: Off.
    disable:
";

    #[test]
    fn a_good_file_parses_with_defaults() {
        let s = parse_scenario("demo.yaml", GOOD).unwrap();
        assert_eq!(s.steps.len(), 5);
        let Action::Terminal(t) = &s.steps[1].action else {
            panic!("terminal")
        };
        assert_eq!(t.session, "main");
        assert_eq!(t.commands[0].wait_for, vec![Condition::Exit("ls".into())]);
        assert_eq!(
            t.commands[1].wait_for,
            vec![Condition::Exec("minerd".into())]
        );
        assert!(t.commands[2].wait_for.is_empty());
        assert_eq!(s.steps[4].action, Action::Disable(NoArgs));
        assert_eq!(s.steps[2].action.snapshot(), Some("fingerprints"));
    }

    #[test]
    fn unknown_keys_name_file_line_and_path() {
        let text = GOOD.replace("        - ls -la\n", "        - {run: ls, bogus: 1}\n");
        let err = parse_scenario("scenarios/demo.yaml", &text)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("scenarios/demo.yaml:11:"), "{err}");
        assert!(err.contains("steps[1].terminal.commands[0]"), "{err}");
        assert!(err.contains("unknown field `bogus`"), "{err}");
    }

    #[test]
    fn unknown_step_keys_and_two_actions_are_refused() {
        let text = GOOD.replace("    disable:\n", "    disabel:\n");
        let err = parse_scenario("d.yaml", &text).unwrap_err().to_string();
        assert!(
            err.contains("steps[4]") && err.contains("unknown field `disabel`"),
            "{err}"
        );
        assert!(err.starts_with("d.yaml:"), "{err}");

        let text = GOOD.replace("    disable:\n", "    disable:\n    enable:\n");
        let err = parse_scenario("d.yaml", &text).unwrap_err().to_string();
        assert!(
            err.contains("one action") && err.contains("`disable` and `enable`"),
            "{err}"
        );
    }

    #[test]
    fn wrong_types_are_refused_with_the_key() {
        let text = GOOD.replace("mode: audit", "mode: loud");
        let err = parse_scenario("d.yaml", &text).unwrap_err();
        assert_eq!(err.line(), Some(19), "{err}");
        assert!(
            err.to_string().contains("steps[3].create_policy.mode"),
            "{err}"
        );

        let text = GOOD.replace("lab_up: {wait_for", "lab_up: {timeout: soon, wait_for");
        let err = parse_scenario("d.yaml", &text).unwrap_err().to_string();
        assert!(
            err.contains("steps[0].lab_up.timeout") && err.contains("not a duration"),
            "{err}"
        );
    }

    #[test]
    fn rules_across_steps() {
        let text = GOOD.replace("name: pol", "name: fp");
        let err = parse_scenario("d.yaml", &text).unwrap_err().to_string();
        assert!(
            err.contains("steps[3].name") && err.contains("earlier step"),
            "{err}"
        );

        let text = GOOD.replace(
            "    fingerprint: {snapshot: fingerprints}\n",
            "    wait_events: {for: [{exec: ls}]}\n",
        );
        let err = parse_scenario("d.yaml", &text).unwrap_err().to_string();
        assert!(err.contains("add a `fingerprint` step"), "{err}");
    }

    #[test]
    fn steps_can_be_limited_to_backends() {
        let text = GOOD.replace(
            "  - name: off\n",
            "  - name: pool\n    explain: Pool.\n    backends: [local]\n    check_pool_reached: {user: ME}\n  - name: off\n",
        );
        let s = parse_scenario("d.yaml", &text).unwrap();
        let pool = &s.steps[4];
        assert_eq!(pool.backends, vec![Backend::Local]);
        assert!(pool.runs_on(Backend::Local));
        assert!(!pool.runs_on(Backend::Kind));
        assert!(
            s.steps[0].runs_on(Backend::Kind),
            "no `backends`: everywhere"
        );

        let bad = text.replace("backends: [local]", "backends: [docker]");
        let err = parse_scenario("d.yaml", &bad).unwrap_err();
        assert_eq!(err.line(), Some(22), "{err}");
        assert!(err.to_string().contains("steps[4].backends"), "{err}");
        assert!(
            err.to_string().contains("expected `local` or `kind`"),
            "{err}"
        );

        let replay = text.replace("backends: [local]", "backends: [kind, replay]");
        let err = parse_scenario("d.yaml", &replay).unwrap_err().to_string();
        assert!(err.contains("expected `local` or `kind`"), "{err}");
        assert_eq!(
            LIVE_BACKENDS,
            Backend::ALL
                .iter()
                .filter(|b| b.is_live())
                .map(|b| b.name())
                .collect::<Vec<_>>()
        );

        let empty = text.replace("backends: [local]", "backends: []");
        let err = parse_scenario("d.yaml", &empty).unwrap_err().to_string();
        assert!(err.contains("at least one backend"), "{err}");

        let fp = GOOD.replace(
            "    fingerprint: {snapshot: fingerprints}\n",
            "    backends: [kind]\n    fingerprint: {snapshot: fingerprints}\n",
        );
        let err = parse_scenario("d.yaml", &fp).unwrap_err().to_string();
        assert!(
            err.contains("steps[2].backends") && err.contains("every backend"),
            "{err}"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(
            Timeout::parse("500ms").unwrap().0,
            Duration::from_millis(500)
        );
        assert_eq!(Timeout::parse("2m").unwrap().0, Duration::from_secs(120));
        assert!(Timeout::parse("2h").is_err());
        assert_eq!(Timeout(Duration::from_secs(30)).to_string(), "30s");
    }
}
