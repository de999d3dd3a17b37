//! One step of a scenario: a name, a text for the learner, the backends it runs on, and one
//! action, read from a mapping whose action key names the action.

use std::fmt;

use guardlab_lab_api::Backend;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

use super::action::{ACTION_KEYS, Action};

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
pub(super) const LIVE_BACKENDS: &[&str] = &["local", "kind"];

/// A live backend, as a step's `backends:` (or a scenario's `runs_on.backends`) names it.
pub(super) struct LiveBackend(pub(super) Backend);

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
                        "add_response" => Action::AddResponse(map.next_value()?),
                        "merge_deviations" => Action::MergeDeviations(map.next_value()?),
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
