//! The replay backend: the engine side of a scenario from a recording, with no lab and no
//! privileges. Every step gets the events the live run consumed in it; actions on the world
//! (the notebook, terminals, kills) are not done again, and checks of the world (the pool's
//! clients) read what the live run recorded.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use guardlab_engine::deviation::Decision;
use guardlab_events::Event;
use guardlab_lab_api::Backend;
use serde_json::Value as Json;

use crate::console::Console;

use super::backend::{CheckFailure, EventSink, ScenarioBackend, StepError};
use super::file::{CheckPoolReached, Scenario, Step, TerminalCommand};
use super::recording::{FACT_POOL_CLIENTS, FACT_TERMINAL_OUTPUT, RecordedOn, Recording};

/// A recording that is not of the scenario to replay.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{file} is a recording of scenario {recorded:?}, not {scenario:?}")]
    OtherScenario {
        file: String,
        recorded: String,
        scenario: String,
    },
    #[error(
        "{file}: step {number} is {recorded:?} in the recording but {step:?} in the scenario: the scenario changed since it was recorded; record it again (`guardlab scenario {scenario} --record {file}`)"
    )]
    StepChanged {
        file: String,
        /// Counted from 1.
        number: usize,
        recorded: String,
        step: String,
        scenario: String,
    },
}

pub struct ReplayBackend {
    recording: Recording,
    file: String,
    /// The events of the step that runs, not yet consumed.
    current: VecDeque<Event>,
    facts: BTreeMap<String, Json>,
    /// Terminal commands replayed so far in this step.
    commands: usize,
}

impl ReplayBackend {
    /// Check that the recording was made from this scenario (same steps, same order).
    pub fn new(scenario: &Scenario, recording: Recording, file: &str) -> Result<Self, ReplayError> {
        if recording.header.scenario != scenario.name {
            return Err(ReplayError::OtherScenario {
                file: file.to_string(),
                recorded: recording.header.scenario.clone(),
                scenario: scenario.name.clone(),
            });
        }
        for (i, (step, recorded)) in scenario.steps.iter().zip(&recording.steps).enumerate() {
            if step.name != recorded.name {
                return Err(ReplayError::StepChanged {
                    file: file.to_string(),
                    number: i + 1,
                    recorded: recorded.name.clone(),
                    step: step.name.clone(),
                    scenario: scenario.name.clone(),
                });
            }
        }
        Ok(ReplayBackend {
            recording,
            file: file.to_string(),
            current: VecDeque::new(),
            facts: BTreeMap::new(),
            commands: 0,
        })
    }

    pub fn header(&self) -> &super::recording::Header {
        &self.recording.header
    }
}

impl ScenarioBackend for ReplayBackend {
    fn backend(&self) -> Backend {
        Backend::Replay
    }

    /// The steps of the backend the recording was made on; a synthetic recording stands in
    /// for every backend and has all steps.
    fn runs(&self, step: &Step) -> bool {
        let header = &self.recording.header;
        header.synthetic
            || match header.backend {
                RecordedOn::Backend(backend) => step.runs_on(backend),
                RecordedOn::Synthetic => step.backends.is_empty(),
            }
    }

    fn begin_step(&mut self, index: usize, step: &Step) -> Result<(), StepError> {
        let Some(recorded) = self.recording.steps.get_mut(index) else {
            return Err(StepError::RecordingEnds {
                file: self.file.clone(),
                number: index + 1,
                step: step.name.clone(),
            });
        };
        self.current = std::mem::take(&mut recorded.events).into();
        self.facts = std::mem::take(&mut recorded.facts);
        self.commands = 0;
        Ok(())
    }

    fn end_step(&mut self, _index: usize, _step: &Step, _facts: &BTreeMap<String, Json>) {}

    async fn lab_up(&mut self, out: &Console) -> Result<(), StepError> {
        let h = &self.recording.header;
        let kind = if h.synthetic {
            "a synthetic recording"
        } else {
            "a recording of a live run"
        };
        out.detail(format!(
            "replaying {} ({kind} on the {} backend)",
            self.file, h.backend
        ));
        Ok(())
    }

    async fn notebook_cell(
        &mut self,
        _code: &str,
        _timeout: Duration,
        _out: &Console,
        _events: &mut dyn EventSink,
    ) -> Result<(), StepError> {
        Ok(())
    }

    /// What the live run's command printed (older recordings kept no output: empty).
    async fn terminal_command(
        &mut self,
        _session: &str,
        _command: &TerminalCommand,
        out: &Console,
        _events: &mut dyn EventSink,
    ) -> Result<String, StepError> {
        let index = self.commands;
        self.commands += 1;
        let output = match self.facts.get(FACT_TERMINAL_OUTPUT) {
            Some(Json::Array(outputs)) => outputs
                .get(index)
                .and_then(Json::as_str)
                .unwrap_or_default()
                .to_string(),
            _ => String::new(),
        };
        out.output(&output, 3);
        Ok(output)
    }

    async fn next_event(&mut self, _deadline: Instant) -> Result<Option<Event>, StepError> {
        Ok(self.current.pop_front())
    }

    async fn drain(&mut self) -> Result<Vec<Event>, StepError> {
        Ok(self.current.drain(..).collect())
    }

    async fn carry_out(&mut self, decision: &Decision) -> Result<String, StepError> {
        Ok(format!(
            "not carried out again in a replay (pid {})",
            decision.target.pid
        ))
    }

    async fn pool_clients(&mut self, _check: &CheckPoolReached) -> Result<Vec<Json>, StepError> {
        match self.facts.get(FACT_POOL_CLIENTS) {
            Some(Json::Array(clients)) => Ok(clients.clone()),
            _ => Err(CheckFailure::NotRecorded {
                file: self.file.clone(),
                fact: FACT_POOL_CLIENTS,
            }
            .into()),
        }
    }

    async fn apply_kernel_policy(
        &mut self,
        _policy: Option<&guardlab_lab_api::KernelPolicy>,
    ) -> Result<(), StepError> {
        // The recording holds what the kernel did (killed execs, refused connects).
        Ok(())
    }

    async fn finish(&mut self, _keep: bool, _out: &Console) -> Result<(), StepError> {
        Ok(())
    }
}
