//! What a policy's `response` says to do about a deviation: which flags, which kills.
//!
//! For each kind of action, the items of `actions` whose selectors all match the deviation
//! (its container, pod, namespace and process) apply; when none of that kind matches, the
//! `default` items of that kind apply. Of several red (or ops) flags that apply, the most
//! severe is raised. A policy without a `response` has the default one (a high red flag).

use std::fmt;

use guardlab_events::{ContainerInfo, ProcessKey};
use serde::Serialize;

use super::selector::{container_matches, labels_match, namespace_labels};
use crate::glob::glob_match;
use crate::model::{
    ContainerSelector, DeviationType, FlagAction, LabelSelector, MachineSelector, ProcessSelector,
    Response, ResponseAction, Severity,
};

/// A kill the engine decided on, for a backend to carry out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ActionKind {
    AgentKillPod,
    AgentKillProcess,
    AgentKillProcessGroup,
    AgentKillProcessTree,
}

impl ActionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::AgentKillPod => "agentKillPod",
            ActionKind::AgentKillProcess => "agentKillProcess",
            ActionKind::AgentKillProcessGroup => "agentKillProcessGroup",
            ActionKind::AgentKillProcessTree => "agentKillProcessTree",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FlagClass {
    Red,
    Ops,
}

impl FlagClass {
    /// `red` or `ops`.
    pub fn as_str(self) -> &'static str {
        match self {
            FlagClass::Red => "red",
            FlagClass::Ops => "ops",
        }
    }
}

impl fmt::Display for FlagClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for ActionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who deviated: the container and, when known, the process.
pub(crate) struct Subject<'a> {
    pub info: &'a ContainerInfo,
    pub name: Option<&'a str>,
    pub exe: Option<&'a str>,
    pub euser: Option<&'a str>,
}

/// A flag raised on a deviation (enforce mode).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Flag {
    pub class: FlagClass,
    pub severity: Severity,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub impact: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    pub policy_uid: String,
    pub policy_name: String,
    pub deviation_uid: String,
    pub checksum: String,
    #[serde(rename = "type")]
    pub kind: DeviationType,
    pub container_id: String,
    pub container_name: String,
    pub namespace: String,
    pub pod: String,
    pub pid: u32,
    pub process: String,
    pub exe: String,
    /// Why it deviates, when no policy could allow it (an untrusted executable, see
    /// [`super::Finding::reason`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub timestamp: f64,
}

/// Where a kill is aimed. `process` is the process key (host pid and start time), so that a
/// backend never kills a process that reused the pid.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    pub cgroup_id: u64,
    pub container_id: String,
    pub namespace: String,
    pub pod: String,
    pub pid: u32,
    pub process: ProcessKey,
    pub name: String,
}

/// A response action decided for a deviation: carried out by a backend when `initiated`
/// (enforce mode), only logged otherwise (audit mode).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    pub action: ActionKind,
    pub initiated: bool,
    pub message: String,
    pub policy_uid: String,
    pub policy_name: String,
    pub deviation_uid: String,
    pub target: Target,
    pub timestamp: f64,
}

impl Decision {
    /// The text the public tool logs, e.g. `(audit mode): Would have initiated
    /// "agentKillPod" action for "jupyter-notebook-x" pod. Not initiated due to "audit" mode.`
    pub(crate) fn message(action: ActionKind, target: &Target, initiated: bool) -> String {
        let what = match action {
            ActionKind::AgentKillPod => {
                let pod = if target.pod.is_empty() {
                    &target.container_id
                } else {
                    &target.pod
                };
                format!("\"{pod}\" pod")
            }
            ActionKind::AgentKillProcess => format!("\"{}\" process", target.name),
            ActionKind::AgentKillProcessGroup => format!("\"{}\" process group", target.name),
            ActionKind::AgentKillProcessTree => format!("\"{}\" process tree", target.name),
        };
        if initiated {
            format!(
                "(enforce mode): Initiated \"{}\" action for {what}.",
                action.as_str()
            )
        } else {
            format!(
                "(audit mode): Would have initiated \"{}\" action for {what}. Not initiated due to \"audit\" mode.",
                action.as_str()
            )
        }
    }
}

/// The flags and kills that apply to one deviation.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Effective {
    pub red: Option<FlagAction>,
    pub ops: Option<FlagAction>,
    pub kills: Vec<ActionKind>,
}

/// The selectors of one action, whichever kind it is.
struct Selectors<'a> {
    namespace: Option<&'a LabelSelector>,
    pod: Option<&'a LabelSelector>,
    container: Option<&'a ContainerSelector>,
    machine: Option<&'a MachineSelector>,
    process: Option<&'a ProcessSelector>,
}

fn selectors_of(action: &ResponseAction) -> Selectors<'_> {
    match action {
        ResponseAction::MakeRedFlag(f) | ResponseAction::MakeOpsFlag(f) => Selectors {
            namespace: f.namespace_selector.as_ref(),
            pod: f.pod_selector.as_ref(),
            container: f.container_selector.as_ref(),
            machine: f.machine_selector.as_ref(),
            process: f.process_selector.as_ref(),
        },
        ResponseAction::AgentKillPod(s)
        | ResponseAction::AgentKillProcess(s)
        | ResponseAction::AgentKillProcessGroup(s)
        | ResponseAction::AgentKillProcessTree(s) => Selectors {
            namespace: s.namespace_selector.as_ref(),
            pod: s.pod_selector.as_ref(),
            container: s.container_selector.as_ref(),
            machine: s.machine_selector.as_ref(),
            process: s.process_selector.as_ref(),
        },
    }
}

/// True when every selector the action has matches (an action with none applies everywhere).
fn applies(action: &ResponseAction, s: &Subject) -> bool {
    let sel = selectors_of(action);
    if let Some(ns) = sel.namespace
        && !labels_match(ns, &namespace_labels(s.info))
    {
        return false;
    }
    if let Some(pod) = sel.pod
        && !labels_match(pod, &s.info.pod_labels)
    {
        return false;
    }
    if let Some(c) = sel.container
        && !container_matches(c, s.info)
    {
        return false;
    }
    if let Some(m) = sel.machine
        && let Some(host) = &m.hostname
        && !glob_match(host, &s.info.machine)
    {
        return false;
    }
    if let Some(p) = sel.process {
        let any = |patterns: &[String], value: Option<&str>| {
            patterns.is_empty()
                || value.is_some_and(|v| patterns.iter().any(|pat| glob_match(pat, v)))
        };
        if !(any(&p.name, s.name) && any(&p.exe, s.exe) && any(&p.euser, s.euser)) {
            return false;
        }
    }
    true
}

/// 0 red flag, 1 ops flag, 2.. kills.
fn slot(action: &ResponseAction) -> usize {
    match action {
        ResponseAction::MakeRedFlag(_) => 0,
        ResponseAction::MakeOpsFlag(_) => 1,
        ResponseAction::AgentKillPod(_) => 2,
        ResponseAction::AgentKillProcess(_) => 3,
        ResponseAction::AgentKillProcessGroup(_) => 4,
        ResponseAction::AgentKillProcessTree(_) => 5,
    }
}

pub(crate) fn effective(response: &Response, subject: &Subject) -> Effective {
    let applies = |a: &&ResponseAction| applies(a, subject);
    let mut chosen: [Vec<&ResponseAction>; 6] = Default::default();
    for action in response.actions.iter().filter(applies) {
        chosen[slot(action)].push(action);
    }
    for (k, list) in chosen.iter_mut().enumerate() {
        if list.is_empty() {
            // No item of this kind in `actions` applies: the default ones do.
            list.extend(
                response
                    .default
                    .iter()
                    .filter(|a| slot(a) == k)
                    .filter(applies),
            );
        }
    }
    let most_severe = |items: &[&ResponseAction]| {
        items
            .iter()
            .filter_map(|a| match a {
                ResponseAction::MakeRedFlag(f) | ResponseAction::MakeOpsFlag(f) => Some(f),
                _ => None,
            })
            .min_by_key(|f| f.severity)
            .cloned()
    };
    let mut out = Effective {
        red: most_severe(&chosen[0]),
        ops: most_severe(&chosen[1]),
        kills: Vec::new(),
    };
    for (k, kind) in [
        (2, ActionKind::AgentKillPod),
        (3, ActionKind::AgentKillProcess),
        (4, ActionKind::AgentKillProcessGroup),
        (5, ActionKind::AgentKillProcessTree),
    ] {
        if !chosen[k].is_empty() {
            out.kills.push(kind);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ActionSelectors;
    use crate::policy::default_response;

    fn info() -> ContainerInfo {
        ContainerInfo {
            cgroup_id: 1,
            container_id: "c1".into(),
            container_name: "notebook".into(),
            image: "jupyter/minimal-notebook:latest".into(),
            namespace: "cryptominer".into(),
            pod_name: "jupyter-notebook-abc".into(),
            pod_labels: [("app".to_string(), "jupyter-notebook".to_string())].into(),
            ..ContainerInfo::default()
        }
    }

    fn subject<'a>(info: &'a ContainerInfo, exe: &'a str) -> Subject<'a> {
        Subject {
            info,
            name: Some("minerd"),
            exe: Some(exe),
            euser: Some("jovyan"),
        }
    }

    fn flag(severity: Severity) -> ResponseAction {
        ResponseAction::MakeRedFlag(FlagAction::new(severity))
    }

    #[test]
    fn the_default_response_is_a_high_red_flag() {
        let i = info();
        let e = effective(&default_response(), &subject(&i, "/tmp/minerd"));
        assert_eq!(e.red.map(|f| f.severity), Some(Severity::High));
        assert!(e.kills.is_empty());
        assert!(e.ops.is_none());
    }

    #[test]
    fn matching_actions_apply_and_others_do_not() {
        let i = info();
        let ns = LabelSelector {
            match_labels: [(
                "kubernetes.io/metadata.name".to_string(),
                "cryptominer".to_string(),
            )]
            .into(),
            ..LabelSelector::default()
        };
        let response = Response {
            default: vec![flag(Severity::High)],
            actions: vec![
                ResponseAction::AgentKillPod(ActionSelectors {
                    namespace_selector: Some(ns),
                    ..ActionSelectors::default()
                }),
                ResponseAction::AgentKillProcess(ActionSelectors {
                    process_selector: Some(ProcessSelector {
                        exe: vec!["/tmp/*".into()],
                        ..ProcessSelector::default()
                    }),
                    ..ActionSelectors::default()
                }),
            ],
            ..Response::default()
        };
        let e = effective(&response, &subject(&i, "/tmp/minerd"));
        assert_eq!(
            e.kills,
            vec![ActionKind::AgentKillPod, ActionKind::AgentKillProcess]
        );
        let e = effective(&response, &subject(&i, "/usr/bin/ls"));
        assert_eq!(
            e.kills,
            vec![ActionKind::AgentKillPod],
            "the process selector does not match ls"
        );
        let mut other = info();
        other.namespace = "default".into();
        let e = effective(&response, &subject(&other, "/usr/bin/ls"));
        assert!(e.kills.is_empty());
        assert_eq!(
            e.red.map(|f| f.severity),
            Some(Severity::High),
            "the default flag still applies"
        );
    }

    #[test]
    fn a_flag_in_actions_replaces_the_default_flag_and_the_most_severe_wins() {
        let i = info();
        let response = Response {
            default: vec![flag(Severity::Low)],
            actions: vec![flag(Severity::Medium), flag(Severity::Critical)],
            ..Response::default()
        };
        let e = effective(&response, &subject(&i, "/tmp/minerd"));
        assert_eq!(e.red.map(|f| f.severity), Some(Severity::Critical));
    }

    #[test]
    fn default_kills_apply_when_no_action_of_their_kind_matches() {
        let i = info();
        let response = Response {
            default: vec![
                flag(Severity::High),
                ResponseAction::AgentKillProcess(ActionSelectors::default()),
            ],
            actions: vec![],
            ..Response::default()
        };
        let e = effective(&response, &subject(&i, "/usr/bin/ls"));
        assert_eq!(e.kills, vec![ActionKind::AgentKillProcess]);
    }

    #[test]
    fn messages_follow_the_public_wording() {
        let target = Target {
            cgroup_id: 1,
            container_id: "c1".into(),
            namespace: "cryptominer".into(),
            pod: "jupyter-notebook-abc".into(),
            pid: 42,
            process: ProcessKey(42, 1),
            name: "minerd".into(),
        };
        assert_eq!(
            Decision::message(ActionKind::AgentKillPod, &target, false),
            "(audit mode): Would have initiated \"agentKillPod\" action for \"jupyter-notebook-abc\" pod. Not initiated due to \"audit\" mode."
        );
        assert_eq!(
            Decision::message(ActionKind::AgentKillProcess, &target, true),
            "(enforce mode): Initiated \"agentKillProcess\" action for \"minerd\" process."
        );
    }
}
