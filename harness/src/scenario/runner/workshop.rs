//! Workshop mode (`--step --console`): before a step the console can do, the runner waits
//! until the learner does it there, or presses Enter to have guardlab do it.
//!
//! What counts as done is read from the shared store, relative to where it was when the wait
//! began: a new policy (`create_policy`), the newest policy in the step's mode (`set_mode`)
//! or enabled state (`enable`, `disable`), a page looked at (`expect_deviations`: the
//! Deviations tab; `investigate`: the Investigation page). The step then runs as always and
//! checks the same snapshots; for `create_policy` it goes on with the learner's policy.

use guardlab_engine::model::Mode;
use guardlab_engine::policy;
use guardlab_policy_store::{Change, PolicyStore, WorkshopStep};

use super::super::backend::ScenarioBackend;
use std::time::{Duration, Instant};

use guardlab_events::EventBody;

use super::super::backend::StepError;
use super::super::file::{Action, Condition, Step, Terminal, TerminalCommand};
use super::super::pace::{Pace, Pacer};
use super::Runner;

/// What the learner is asked to do in the console for a step, if the console can do it.
fn console_task(action: &Action) -> Option<String> {
    Some(match action {
        Action::CreatePolicy(c) => {
            return Some(format!(
                "On Fingerprints, select the notebook's fingerprint, press Create policy, look at the preview, name it {}, and Save it (mode {}).",
                c.name,
                match Mode::from(c.mode) {
                    Mode::Audit => "Audit",
                    Mode::Enforce => "Enforcing",
                }
            ));
        }
        Action::SetMode(m) => match Mode::from(*m) {
            Mode::Enforce => {
                "On the policy's Policy info tab, set the mode to Enforcing and press Save."
            }
            Mode::Audit => "On the policy's Policy info tab, set the mode to Audit and press Save.",
        },
        Action::Enable(_) => "On the policy's Policy info tab, switch Enabled on and press Save.",
        Action::Disable(_) => {
            "On the policy's Policy info tab, switch Enabled off and press Save."
        }
        Action::AddResponse(_) => {
            "On the policy's Policy info tab, add the kill to the response actions and press Save."
        }
        Action::MergeDeviations(_) => {
            "On the policy's Deviations tab, select the deviations and press Merge into policy."
        }
        Action::ExpectDeviations(_) => "Open the policy's Deviations tab and look at what deviated.",
        Action::Investigate(_) => "Open Investigation: one graph from the container's root process to the miner.",
        _ => return None,
    }
    .to_string())
}

/// Whether the store shows the learner did `action` since `since` (a generation), with
/// `policies` the number of policies then.
fn done_in_console(
    action: &Action,
    store: &PolicyStore,
    since: u64,
    policies: usize,
) -> Option<Learner> {
    let latest = store.latest_policy();
    let viewed = |page: &str| {
        store.changes_since(since).is_some_and(|changes| {
            changes
                .iter()
                .any(|(_, c)| matches!(c, Change::Viewed { page: p } if p == page))
        })
    };
    let changed_policy = || {
        store.changes_since(since).is_some_and(|changes| {
            changes
                .iter()
                .any(|(_, c)| matches!(c, Change::PolicyChanged { .. }))
        })
    };
    match action {
        Action::CreatePolicy(_) if store.policies().len() > policies => {
            latest.map(|p| Learner::MadePolicy(p.metadata.name.clone()))
        }
        Action::SetMode(m) => latest
            .filter(|p| policy::mode(p) == Mode::from(*m) && store.generation() > since)
            .map(|_| Learner::Did),
        Action::Enable(_) => latest
            .filter(|p| policy::is_enabled(p) && store.generation() > since)
            .map(|_| Learner::Did),
        Action::Disable(_) => latest
            .filter(|p| !policy::is_enabled(p))
            .map(|_| Learner::Did),
        Action::MergeDeviations(_) | Action::AddResponse(_) if changed_policy() => {
            Some(Learner::Did)
        }
        Action::ExpectDeviations(_) if viewed("deviations") => Some(Learner::Did),
        Action::Investigate(_) if viewed("investigation") => Some(Learner::Did),
        _ => None,
    }
}

enum Learner {
    Did,
    MadePolicy(String),
}

/// The learner pressed "Have guardlab do it" in the console since generation `since`.
fn asked_to_go(store: &PolicyStore, since: u64) -> bool {
    store
        .changes_since(since)
        .is_some_and(|changes| changes.iter().any(|(_, c)| matches!(c, Change::Go)))
}

impl<B: ScenarioBackend> Runner<'_, B> {
    /// Pause before `step` (`--step`): Enter runs it; with a console, the learner may do it
    /// there instead. Stop ends the run here.
    pub(super) async fn pause(&mut self, step: &Step) -> Pace {
        let Some(mut pacer) = self.pacer.take() else {
            return Pace::Run;
        };
        let pace = match (&self.console_url, console_task(&step.action)) {
            (Some(url), Some(task)) => {
                let url = url.clone();
                self.wait_for_learner(&mut pacer, step, &task, &url).await
            }
            // On a live lab the learner may type a terminal step's commands: the step itself
            // waits for them or for Enter (see `typed_by_person`).
            (Some(_), None)
                if matches!(step.action, Action::Terminal(_)) && self.backend.is_live() =>
            {
                Pace::Run
            }
            // Nothing to do in the console: Enter runs it, and so does a closed input (the
            // console is where the person is).
            (Some(_), None) => {
                if !pacer.closed() {
                    self.out
                        .line("       Press Enter to run this step (q and Enter to stop here).");
                }
                pacer.wait_line().await.unwrap_or(Pace::Run)
            }
            _ => pacer.ask(&self.out).await,
        };
        self.pacer = Some(pacer);
        pace
    }

    async fn wait_for_learner(
        &mut self,
        pacer: &mut Pacer,
        step: &Step,
        task: &str,
        url: &str,
    ) -> Pace {
        let store = self.engine.store.clone();
        store.update(|s| s.set_workshop_step(Some(self.workshop_step(step, task))));
        let (since, policies) = store.read(|s| (s.generation(), s.policies().len()));
        self.out
            .line(format!("       In the console ({url}): {task}"));
        self.out
            .line("       Or press Enter to have guardlab do it (q and Enter to stop here).");
        let mut watch = store.watch();
        let ask = pacer.wait_line();
        tokio::pin!(ask);
        let mut input_open = true;
        let pace = loop {
            if let Some(did) = store.read(|s| done_in_console(&step.action, s, since, policies)) {
                self.out.line("       Done in the console: checking it.");
                if let Learner::MadePolicy(name) = did {
                    self.learner_made_policy = Some(name);
                }
                break Pace::Run;
            }
            if store.read(|s| asked_to_go(s, since)) {
                self.out
                    .line("       Asked in the console: guardlab does it.");
                break Pace::Run;
            }
            tokio::select! {
                answer = &mut ask, if input_open => match answer {
                    Some(pace) => break pace,
                    // The input closed: the console alone decides.
                    None => input_open = false,
                },
                changed = watch.changed() => {
                    if changed.is_err() {
                        break Pace::Stop;
                    }
                }
            }
        };
        store.update(|s| s.set_workshop_step(None));
        pace
    }

    /// What the console shows of the step the run waits at.
    fn workshop_step(&self, step: &Step, task: &str) -> WorkshopStep {
        WorkshopStep {
            number: self.step_at.0,
            of: self.step_at.1,
            name: step.name.clone(),
            explain: step
                .explain
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
            task: task.to_string(),
        }
    }
}

impl<B: ScenarioBackend> Runner<'_, B> {
    /// Workshop mode on a live lab: the learner may type a terminal step's commands in the
    /// notebook's terminal themselves. The step is theirs once every condition its commands
    /// wait for is met by what the pod did; Enter has guardlab type them instead (`false`).
    /// What else the learner ran is said as extra, not a failure.
    pub(super) async fn typed_by_person(
        &mut self,
        step: &Step,
        terminal: &Terminal,
    ) -> Result<bool, StepError> {
        if self.console_url.is_none() || !self.backend.is_live() {
            return Ok(false);
        }
        let Some(mut pacer) = self.pacer.take() else {
            return Ok(false);
        };
        let result = self.await_person(&mut pacer, step, terminal).await;
        self.pacer = Some(pacer);
        result
    }

    async fn await_person(
        &mut self,
        pacer: &mut Pacer,
        step: &Step,
        terminal: &Terminal,
    ) -> Result<bool, StepError> {
        let programs: Vec<String> = terminal
            .commands
            .iter()
            .map(|c| TerminalCommand::program(&c.run))
            .collect();
        let mut pending: Vec<Condition> = terminal
            .commands
            .iter()
            .flat_map(|c| c.wait_for.iter().cloned())
            .collect();
        self.out.line(
            "       Type these in a terminal of the notebook (http://127.0.0.1:1234, New > Terminal), or press Enter to have guardlab type them:",
        );
        for command in &terminal.commands {
            self.out.line(format!("         $ {}", command.run));
        }
        let store = self.engine.store.clone();
        let commands: Vec<&str> = terminal.commands.iter().map(|c| c.run.as_str()).collect();
        let task = format!(
            "Type these in a terminal of the notebook (http://127.0.0.1:1234, New > Terminal): {}",
            commands.join(" ; ")
        );
        let shown = self.workshop_step(step, &task);
        store.update(|s| s.set_workshop_step(Some(shown)));
        let since = store.read(|s| s.generation());
        let result = self
            .await_typing(pacer, &programs, &mut pending, since)
            .await;
        store.update(|s| s.set_workshop_step(None));
        result
    }

    async fn await_typing(
        &mut self,
        pacer: &mut Pacer,
        programs: &[String],
        pending: &mut Vec<Condition>,
        since: u64,
    ) -> Result<bool, StepError> {
        let store = self.engine.store.clone();
        let mut extra: Vec<String> = Vec::new();
        let ask = pacer.wait_line();
        tokio::pin!(ask);
        let mut input_open = true;
        while !pending.is_empty() {
            if store.read(|s| asked_to_go(s, since)) {
                self.out
                    .line("       Asked in the console: guardlab types them.");
                return Ok(false);
            }
            let deadline = Instant::now() + Duration::from_millis(500);
            tokio::select! {
                answer = &mut ask, if input_open => match answer {
                    Some(_) => return Ok(false),
                    None => input_open = false,
                },
                event = self.backend.next_event(deadline) => {
                    let Some(event) = event? else { continue };
                    self.engine.names.observe(&event);
                    pending.retain(|c| !self.engine.names.matches(c, &event));
                    if let EventBody::Exec(exec) = &event.body
                        && !programs.iter().any(|p| exec.comm.starts_with(p.as_str()))
                        && !extra.contains(&exec.comm)
                    {
                        extra.push(exec.comm.clone());
                    }
                    self.observe(event).await?;
                }
            }
        }
        self.out
            .detail("typed by the learner: every command the step expects ran");
        self.person_acted = true;
        if !extra.is_empty() {
            self.out.detail(format!(
                "extra (not part of the step, not a failure): {}",
                extra.join(", ")
            ));
        }
        Ok(true)
    }
}
