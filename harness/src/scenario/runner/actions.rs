//! What each action of a scenario file does, one arm per [`Action`]: the lab, the notebook
//! and the terminals through the backend; fingerprints, the policy, deviations and the trace
//! through the engine; and each step's snapshot.

use std::collections::BTreeMap;

use guardlab_engine::fingerprint::fingerprints_of_groups;
use guardlab_engine::model::Policy;
use guardlab_engine::policy;
use serde_json::Value as Json;

use super::super::backend::{CheckFailure, ScenarioBackend, StepError};
use super::super::file::{Action, Step, TerminalCommand};
use super::super::recording::{FACT_POOL_CLIENTS, FACT_TERMINAL_OUTPUT};
use super::super::snapshot::{Comparison, yaml, yaml_documents};
use super::super::snapshot_text::{DeviationsSnapshot, kind_word, trace_snapshot};
use super::{Runner, StepDiff};

impl<B: ScenarioBackend> Runner<'_, B> {
    pub(super) async fn step(
        &mut self,
        step: &Step,
        facts: &mut BTreeMap<String, Json>,
        diff: &mut Option<StepDiff>,
    ) -> Result<(), StepError> {
        match &step.action {
            Action::LabUp(up) => {
                self.backend.lab_up(&self.out).await?;
                // A lab whose events do not flow could not run: that is an error, not a finding.
                match self
                    .wait_for(&up.wait_for, up.timeout.0, "the lab's events")
                    .await
                {
                    Err(StepError::Check(failure)) if self.backend.is_live() => {
                        Err(StepError::LabSilent(failure))
                    }
                    other => other,
                }
            }
            Action::NotebookCell(cell) => {
                self.out
                    .detail(format!("cell: {}", cell.code.lines().next().unwrap_or("")));
                let (backend, mut taker) = self.taker();
                backend
                    .notebook_cell(&cell.code, cell.timeout.0, taker.out, &mut taker)
                    .await?;
                self.wait_for(&cell.wait_for, cell.timeout.0, "after the cell")
                    .await
            }
            Action::Terminal(t) => {
                if self.typed_by_person(step, t).await? {
                    return Ok(());
                }
                if !self.terminals.contains(&t.session) {
                    self.terminals.push(t.session.clone());
                }
                let mut outputs = Vec::new();
                for command in &t.commands {
                    self.out.detail(format!("$ {}", command.run));
                    let (backend, mut taker) = self.taker();
                    let output = backend
                        .terminal_command(&t.session, command, taker.out, &mut taker)
                        .await?;
                    outputs.push(Json::String(clip(&output, RECORDED_OUTPUT)));
                    facts.insert(FACT_TERMINAL_OUTPUT.into(), Json::Array(outputs.clone()));
                    let program = TerminalCommand::program(&command.run);
                    if let Some(line) = missing_program(&output, &program) {
                        // The image lacks the program (the tutorial's `ping`, or a tool a
                        // custom image leaves out): nothing ran, so there is nothing to wait
                        // for. What the attacker did not get to run shows in the snapshots.
                        self.out.detail(format!(
                            "`{program}` is not in this image ({line}): nothing ran, not waiting for its events"
                        ));
                        continue;
                    }
                    if let Err(e) = self
                        .wait_for(
                            &command.wait_for,
                            command.timeout.0,
                            &format!("`{}`", command.run),
                        )
                        .await
                    {
                        match e {
                            StepError::Check(failure) => {
                                // Go on with the next command: the rest of the step still tells.
                                self.messages.push(failure.to_string());
                                self.failed = true;
                            }
                            lab => return Err(lab),
                        }
                    }
                }
                Ok(())
            }
            Action::WaitEvents(w) => self.wait_for(&w.wait_for, w.timeout.0, "waiting").await,
            Action::Fingerprint(s) => {
                self.drain().await?;
                let groups = self
                    .engine
                    .store
                    .update(|store| store.finish_fingerprints().to_vec());
                let fps = fingerprints_of_groups(&groups);
                for fp in &fps {
                    self.out.detail(format!(
                        "fingerprint {} ({} processes, {} egress, {} ingress)",
                        fp.metadata.name,
                        count_nodes(&fp.spec.process_policy),
                        fp.spec.network_policy.egress.len(),
                        fp.spec.network_policy.ingress.len()
                    ));
                }
                if fps.is_empty() {
                    return Err(CheckFailure::NoFingerprint.into());
                }
                let values: Vec<_> = groups
                    .iter()
                    .map(|g| self.engine.redactor.value(g))
                    .collect();
                *diff = self.check_snapshot(step, &s.snapshot, &yaml_documents(&values));
                Ok(())
            }
            Action::CreatePolicy(c) => {
                self.drain().await?;
                let store = self.engine.store.clone();
                let policy = if let Some(made) = self.learner_made_policy.take() {
                    // Made by the learner in the console (workshop mode): the run goes on with it.
                    self.out
                        .detail(format!("the policy made in the console: {made}"));
                    store.read(|s| s.policy(&made).cloned())
                } else {
                    let selected =
                        store.read(|s| s.fingerprint_names_for_image(c.image.as_deref()));
                    store.update(|s| {
                        s.create_policy(&selected, Some(&c.name), c.mode.into())
                            .cloned()
                    })
                }
                .map_err(|source| CheckFailure::Store {
                    what: "creating the policy",
                    source,
                })?;
                self.out.detail(format!(
                    "policy {} ({}), uid {}",
                    policy.metadata.name,
                    policy::status(&policy),
                    policy::policy_uid(&policy)
                ));
                // The baseline, replayed against its own policy, must deviate nowhere.
                let baseline = store.read(|s| s.baseline().to_vec());
                let check = guardlab_engine::deviation::find_deviations(
                    std::slice::from_ref(&policy),
                    &baseline,
                )
                .map_err(|source| CheckFailure::Policy {
                    what: "the new policy",
                    source,
                })?;
                if check.unique() > 0 {
                    self.failed = true;
                    for d in check.deviations() {
                        self.messages.push(format!(
                            "the baseline deviates from its own policy: {} {}",
                            kind_word(d.metadata.kind),
                            serde_json::to_string(&d.spec).unwrap_or_default()
                        ));
                    }
                } else {
                    self.out.detail(format!(
                        "the baseline ({} events) replayed against the policy: 0 deviations",
                        baseline.len()
                    ));
                }
                if let Some(name) = &c.snapshot {
                    let text = yaml(&self.engine.redactor.value(&policy));
                    *diff = self.check_snapshot(step, name, &text);
                }
                self.write_policy_out(&step.name);
                Ok(())
            }
            Action::SetMode(m) => {
                self.drain().await?;
                self.change_policy(|p| policy::set_mode(p, (*m).into()))?;
                self.write_policy_out(&step.name);
                Ok(())
            }
            Action::Enable(_) => {
                self.drain().await?;
                self.change_policy(|p| policy::set_enabled(p, true))?;
                self.write_policy_out(&step.name);
                Ok(())
            }
            Action::Disable(_) => {
                self.drain().await?;
                self.change_policy(|p| policy::set_enabled(p, false))?;
                self.write_policy_out(&step.name);
                Ok(())
            }
            Action::AddResponse(kill) => {
                self.drain().await?;
                self.change_policy(|p| policy::add_kill_action(p, *kill))?;
                self.write_policy_out(&step.name);
                Ok(())
            }
            Action::MergeDeviations(m) => {
                self.drain().await?;
                let store = self.engine.store.clone();
                let Some(uid) = store.read(|s| s.latest_policy().map(policy::policy_uid)) else {
                    return Err(CheckFailure::NoPolicy.into());
                };
                let report = store.update(|s| s.deviation_report());
                let chosen: Vec<String> = report
                    .policies
                    .iter()
                    .filter(|p| p.uid == uid)
                    .flat_map(|p| &p.deviations)
                    .filter(|d| m.types.is_empty() || m.types.contains(&d.deviation.metadata.kind))
                    .map(|d| d.uid.clone())
                    .collect();
                if chosen.is_empty() {
                    self.out.detail("no deviation to merge");
                } else {
                    let (merged, count) = store
                        .update(|s| {
                            s.merge_deviations(&uid, &chosen)
                                .map(|(p, n)| (p.clone(), n))
                        })
                        .map_err(|source| CheckFailure::Store {
                            what: "merging the deviations",
                            source,
                        })?;
                    self.out.detail(format!(
                        "{count} deviations merged into policy {}: what they did is allowed from here on",
                        merged.metadata.name
                    ));
                }
                if let Some(name) = &m.snapshot {
                    let policy = store.read(|s| s.latest_policy().cloned());
                    let text = yaml(&self.engine.redactor.value(&policy));
                    *diff = self.check_snapshot(step, name, &text);
                }
                self.write_policy_out(&step.name);
                Ok(())
            }
            Action::ExpectDeviations(s) => {
                self.drain().await?;
                let text = self.deviations_since_last();
                *diff = self.check_snapshot(step, &s.snapshot, &text);
                Ok(())
            }
            Action::Investigate(s) => {
                self.drain().await?;
                let investigation = self.engine.store.read(|s| s.investigation());
                for d in &investigation.deviations {
                    if d.chain.is_empty() {
                        self.failed = true;
                        self.messages.push(format!(
                            "{} deviation {} has no trace: its process started before the sensor saw it",
                            kind_word(d.kind),
                            d.deviation_uid
                        ));
                    }
                }
                self.out.detail(format!(
                    "{} deviations traced",
                    investigation.deviations.len()
                ));
                let text = yaml(&self.engine.redactor.value(&trace_snapshot(&investigation)));
                *diff = self.check_snapshot(step, &s.snapshot, &text);
                // The report shows the investigation as this step saw it (a later `disable`
                // would leave its processes unlabelled).
                self.report.investigation = Some(investigation);
                Ok(())
            }
            Action::CheckPoolReached(check) => {
                // The sensor's side first (the miner's connection), then the pool's.
                self.wait_for_seen(&check.wait_for, check.timeout.0, "the pool check")
                    .await?;
                let clients = self.backend.pool_clients(check).await?;
                facts.insert(FACT_POOL_CLIENTS.into(), Json::Array(clients.clone()));
                let matching: Vec<&Json> = clients
                    .iter()
                    .filter(|c| match &check.user {
                        Some(u) => c.get("user").and_then(Json::as_str) == Some(u.as_str()),
                        None => true,
                    })
                    .collect();
                for c in &matching {
                    self.out.detail(format!(
                        "pool client: user {} agent {} shares accepted {}",
                        c.get("user").and_then(Json::as_str).unwrap_or("-"),
                        c.get("user_agent").and_then(Json::as_str).unwrap_or("-"),
                        c.get("shares_accepted").and_then(Json::as_u64).unwrap_or(0)
                    ));
                }
                if check.clients == 0 && !matching.is_empty() {
                    return Err(CheckFailure::PoolNotClean {
                        seen: matching.len(),
                        user: check.user.clone(),
                    }
                    .into());
                }
                if matching.len() < check.clients {
                    return Err(CheckFailure::PoolClients {
                        seen: matching.len(),
                        user: check.user.clone(),
                        expected: check.clients,
                    }
                    .into());
                }
                Ok(())
            }
        }
    }

    fn change_policy(&mut self, change: impl FnOnce(&mut Policy)) -> Result<(), StepError> {
        let store = self.engine.store.clone();
        let Some(uid) = store.read(|s| s.latest_policy().map(policy::policy_uid)) else {
            return Err(CheckFailure::NoPolicy.into());
        };
        let changed = store
            .update(|s| s.change_policy(&uid, change).cloned())
            .map_err(|source| CheckFailure::Store {
                what: "changing the policy",
                source,
            })?;
        self.out.detail(format!(
            "policy {} is now {}",
            changed.metadata.name,
            policy::status(&changed)
        ));
        Ok(())
    }

    /// The snapshot text of an `expect_deviations` step: the policy's counts, and what is new
    /// since the previous such step.
    fn deviations_since_last(&mut self) -> String {
        let report = self.engine.store.update(|s| s.deviation_report());
        let agreement = &self.kernel.agreement;
        let snapshot = DeviationsSnapshot::since(&report, &mut self.engine.seen)
            .with_prevented(|uid| agreement.prevented(uid));
        for p in &report.policies {
            self.out.detail(format!(
                "policy {} ({}): {}/{} deviations (unique/total), {} new",
                p.name,
                p.status,
                p.unique,
                p.total,
                snapshot.new_deviations()
            ));
        }
        yaml(&self.engine.redactor.value(&snapshot))
    }

    fn check_snapshot(&mut self, step: &Step, name: &str, text: &str) -> Option<StepDiff> {
        self.report
            .snapshots
            .insert(name.to_string(), text.to_string());
        let description = format!(
            "step {:?}: {}",
            step.name,
            step.explain
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        );
        match self.snapshots.dir.check(
            name,
            text,
            self.snapshots.update,
            &self.snapshots.source,
            &description,
        ) {
            Ok(Comparison::Matches) => None,
            Ok(Comparison::Written) => Some(StepDiff::Written),
            Ok(Comparison::Differs { diff }) if self.person_acted && self.covered(name, text) => {
                // What the learner did besides the step shows as extra, and passes.
                self.out
                    .detail("extra, from what the learner did beyond the step (not a failure):");
                for line in diff.lines().filter(|l| {
                    l.starts_with(['+', '-']) && !l.starts_with("+++") && !l.starts_with("---")
                }) {
                    self.out.detail(format!("  {line}"));
                }
                self.messages
                    .push("extra from the learner's own actions (see the output)".into());
                None
            }
            Ok(Comparison::Differs { diff }) => Some(StepDiff::Differs(diff)),
            Ok(Comparison::Missing) => Some(StepDiff::Missing),
            Err(e) => {
                self.failed = true;
                self.messages.push(format!(
                    "snapshot {}: {e}",
                    self.snapshots.dir.path(name).display()
                ));
                None
            }
        }
    }
}

impl<B: ScenarioBackend> Runner<'_, B> {
    /// The snapshot `name` has nothing `text` lacks (see [`super::super::snapshot_extra`]).
    fn covered(&self, name: &str, text: &str) -> bool {
        match self.snapshots.dir.read(name) {
            Ok(Some(expected)) => super::super::snapshot_extra::covers(&expected, text),
            _ => false,
        }
    }
}

/// How much of a terminal command's output a recording keeps.
const RECORDED_OUTPUT: usize = 2000;

fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

/// The shell's "command not found" line for `program` in a command's output, if the shell
/// said so (bash: `bash: ping: command not found`; dash and busybox: `sh: 1: ping: not found`).
pub fn missing_program<'o>(output: &'o str, program: &str) -> Option<&'o str> {
    if program.is_empty() {
        return None;
    }
    // The program is a whole field of the message: `id` is not missing when `uuid` is.
    let bash = format!(": {program}: command not found");
    let sh = format!(": {program}: not found");
    // Ubuntu's command-not-found hook, where an image has it.
    let ubuntu = format!("Command '{program}' not found");
    output.lines().map(str::trim).find(|l| {
        l.ends_with(&bash) || l.ends_with(&sh) || l.starts_with(&ubuntu) || *l == &bash[2..]
    })
}

fn count_nodes(nodes: &[guardlab_engine::model::ProcessNode]) -> usize {
    nodes
        .iter()
        .map(|n| 1 + n.children.as_deref().map(count_nodes).unwrap_or(0))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_program_is_told_by_the_shells_words() {
        let bash = "ping -n 3 sourceforge.net\r\nbash: ping: command not found\r\n";
        assert_eq!(
            missing_program(bash, "ping"),
            Some("bash: ping: command not found")
        );
        assert_eq!(
            missing_program("sh: 1: ps: not found\n", "ps"),
            Some("sh: 1: ps: not found")
        );
        assert!(
            missing_program(
                "Command 'ping' not found, but can be installed with:",
                "ping"
            )
            .is_some()
        );
        // Another program's message (also one whose name ends like it), a missing file, or
        // the words in ordinary output: no.
        assert_eq!(missing_program("bash: uuid: command not found", "id"), None);
        assert_eq!(missing_program("sh: 1: uuid: not found", "id"), None);
        assert_eq!(
            missing_program("id: command not found", "id"),
            Some("id: command not found")
        );
        assert_eq!(missing_program(bash, "curl"), None);
        assert_eq!(
            missing_program("bash: ./minerd: No such file or directory", "minerd"),
            None
        );
        assert_eq!(
            missing_program("grep: command not found in the manual\n", "grep"),
            None
        );
        assert_eq!(missing_program("anything", ""), None);
    }

    #[test]
    fn recorded_output_is_clipped_on_a_char_boundary() {
        assert_eq!(clip("héllo", 2), "hé…");
        assert_eq!(clip("short", 10), "short");
    }
}
