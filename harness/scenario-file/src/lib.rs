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

mod action;
mod step;
mod wait;

use std::path::{Path, PathBuf};

use guardlab_input::{FileError, MaxBytes};
use serde::{Deserialize, Deserializer, Serialize};

pub use action::{
    Action, Answer, CheckPoolReached, CreatePolicy, LabUp, ModeWord, NotebookCell, SnapshotRef,
    Terminal, TerminalCommand, WaitEvents,
};
pub use step::Step;
pub use wait::{Condition, Timeout};

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
    /// The live backends the scenario runs on, and why not on the others; every backend when
    /// left out. A replay runs what a live run on one of them recorded.
    #[serde(default)]
    pub runs_on: Option<RunsOn>,
    pub steps: Vec<Step>,
}

/// `runs_on:` of a scenario: `{backends: [local], why: "..."}`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunsOn {
    #[serde(deserialize_with = "live_backends")]
    pub backends: Vec<guardlab_lab_api::Backend>,
    /// Why the others cannot run it: said when one is asked to.
    pub why: String,
}

fn live_backends<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<guardlab_lab_api::Backend>, D::Error> {
    let list: Vec<step::LiveBackend> = serde::Deserialize::deserialize(d)?;
    if list.is_empty() {
        return Err(serde::de::Error::custom(
            "runs_on.backends: name at least one backend (local, kind)",
        ));
    }
    Ok(list.into_iter().map(|b| b.0).collect())
}

impl Scenario {
    /// Whether `backend` may run this scenario; when not, why (from `runs_on.why`).
    pub fn refuses(&self, backend: guardlab_lab_api::Backend) -> Option<String> {
        let runs_on = self.runs_on.as_ref()?;
        if !backend.is_live() || runs_on.backends.contains(&backend) {
            return None;
        }
        let names: Vec<_> = runs_on.backends.iter().map(|b| b.name()).collect();
        Some(format!(
            "scenario {} runs on the {} backend{} only: {}",
            self.name,
            names.join(", "),
            if names.len() == 1 { "" } else { "s" },
            runs_on.why
        ))
    }
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

/// A scenario file that could not be read, with where.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("{file}: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// Too big, or not UTF-8 (its line and column).
    #[error(transparent)]
    Input(#[from] guardlab_input::FileError),
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
            ScenarioError::Input(e) => e.line(),
            _ => None,
        }
    }
}

/// Parse a scenario from text; `file` names it in errors. Nesting and aliases beyond
/// [`guardlab_input::YamlLimits`] are refused before anything is built.
pub fn parse_scenario(file: &str, text: &str) -> Result<Scenario, ScenarioError> {
    if let Err(e) = guardlab_input::scan_yaml(text, &guardlab_input::YamlLimits::default()) {
        // A tab is reported on its own line here; serde_yaml reports what else is wrong.
        if e.limit().is_some() || e.to_string().contains("tab") {
            return Err(ScenarioError::Syntax {
                file: file.to_string(),
                line: e.line(),
                column: e.column(),
                message: e.to_string(),
            });
        }
    }
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
            | Action::MergeDeviations(_)
            | Action::AddResponse(_)
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

/// Read and parse a scenario file (up to [`MaxBytes::YAML`], UTF-8).
pub fn load_scenario(path: &Path) -> Result<Scenario, ScenarioError> {
    let file = display_path(path);
    let max = MaxBytes::from_env_or(MaxBytes::YAML)?;
    let text = guardlab_input::read_text(path, max).map_err(|e| match e {
        FileError::Io { source, .. } => ScenarioError::Read {
            file: file.clone(),
            source,
        },
        other => ScenarioError::Input(other),
    })?;
    parse_scenario(&file, &text)
}

/// The name a scenario file goes by before it is read (for reports about a file that cannot
/// be): its file name without `.yaml`.
pub fn name_of_file(path: &Path) -> String {
    path.file_stem().map_or_else(
        || display_path(path),
        |stem| stem.to_string_lossy().into_owned(),
    )
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
    use super::step::LIVE_BACKENDS;
    use super::*;
    use guardlab_lab_api::Backend;

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
    fn a_scenario_says_the_backends_it_runs_on_and_why_not_the_others() {
        let text = GOOD.replacen(
            "steps:",
            "runs_on: {backends: [local], why: the kind backend has no in-kernel prevention}\nsteps:",
            1,
        );
        let s = parse_scenario("demo.yaml", &text).unwrap();
        assert_eq!(s.refuses(Backend::Local), None);
        assert_eq!(s.refuses(Backend::Replay), None);
        let why = s.refuses(Backend::Kind).unwrap();
        assert!(
            why.ends_with(
                "runs on the local backend only: the kind backend has no in-kernel prevention"
            ),
            "{why}"
        );
        assert_eq!(
            parse_scenario("demo.yaml", GOOD)
                .unwrap()
                .refuses(Backend::Kind),
            None
        );
        let bad = text.replace("backends: [local]", "backends: [replay]");
        let err = parse_scenario("demo.yaml", &bad).unwrap_err().to_string();
        assert!(err.contains("replay"), "{err}");
    }

    #[test]
    fn merge_deviations_takes_types_and_a_snapshot_and_needs_a_policy() {
        let text = GOOD.replace(
            "  - name: off\n",
            "  - name: merge\n    explain: Allow what the terminal did.\n    merge_deviations: {types: [process], snapshot: merged}\n  - name: off\n",
        );
        let s = parse_scenario("demo.yaml", &text).unwrap();
        let Action::MergeDeviations(m) = &s.steps[4].action else {
            panic!("{:?}", s.steps[4].action)
        };
        assert_eq!(m.types, [guardlab_engine::model::DeviationType::Process]);
        assert_eq!(s.steps[4].action.snapshot(), Some("merged"));
        let bare = GOOD.replace(
            "  - name: off\n    explain: Off.\n    disable:\n",
            "  - name: m\n    explain: M.\n    merge_deviations: {}\n",
        );
        assert!(parse_scenario("demo.yaml", &bare).is_ok());
        let early = GOOD.replace(
            "    create_policy: {name: p, mode: audit}\n",
            "    merge_deviations: {}\n",
        );
        let err = parse_scenario("demo.yaml", &early).unwrap_err().to_string();
        assert!(err.contains("merge_deviations: needs a policy"), "{err}");
        let kill = GOOD.replace("    disable:\n", "    add_response: agentKillProcess\n");
        let s = parse_scenario("demo.yaml", &kill).unwrap();
        assert_eq!(
            s.steps[4].action,
            Action::AddResponse(guardlab_engine::policy::KillAction::AgentKillProcess)
        );
        let bad = text.replace("types: [process]", "types: [files]");
        assert!(parse_scenario("demo.yaml", &bad).is_err());
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
    fn limits_and_tabs_are_refused_with_their_line() {
        let bomb = "name: demo\na: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n";
        let err = parse_scenario("bomb.yaml", bomb).unwrap_err();
        assert_eq!(err.line(), Some(6), "{err}");
        assert!(err.to_string().contains("billion laughs"), "{err}");

        let deep = format!("name: demo\nsteps: {}\n", "[".repeat(50_000));
        let err = parse_scenario("deep.yaml", &deep).unwrap_err();
        assert!(err.to_string().starts_with("deep.yaml:2:"), "{err}");
        assert!(err.to_string().contains("nested deeper than 128"), "{err}");

        let tab = GOOD.replace("    explain: Type.\n", "\texplain: Type.\n");
        let line = tab.lines().position(|l| l.starts_with('\t')).unwrap() + 1;
        let err = parse_scenario("tab.yaml", &tab).unwrap_err();
        assert_eq!(err.line(), Some(line), "{err}");
        assert!(err.to_string().contains("tab"), "{err}");
    }

    #[test]
    fn a_file_that_is_not_utf8_or_too_big_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.yaml");
        std::fs::write(&bad, b"name: demo\ndescription: \xff\n").unwrap();
        let err = load_scenario(&bad).unwrap_err();
        assert_eq!(err.line(), Some(2), "{err}");
        assert!(
            err.to_string().contains("bad.yaml:2:14: not UTF-8"),
            "{err}"
        );

        let big = dir.path().join("big.yaml");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(1 << 30)
            .unwrap();
        let err = load_scenario(&big).unwrap_err();
        assert!(
            err.to_string().contains("1 GiB is more than the 16 MiB"),
            "{err}"
        );
        assert_eq!(name_of_file(&big), "big");
    }
}
