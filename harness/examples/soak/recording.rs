//! The live run's recording, read step by step: each step's events, their time span, what was
//! lost, the programs it exec'd, and its facts (terminal output).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;

use serde_json::Value as Json;

/// One step of the recording: its events, their time span, what was lost, and its facts.
#[derive(Default)]
pub struct RecordedStep {
    pub events: u64,
    pub first_ts: Option<u64>,
    pub last_ts: u64,
    pub lost: u64,
    pub execs: BTreeMap<String, u64>,
    pub facts: Json,
}

impl RecordedStep {
    pub fn seconds(&self) -> f64 {
        self.first_ts
            .map(|first| (self.last_ts.saturating_sub(first)) as f64 / 1e9)
            .unwrap_or(0.0)
    }

    pub fn rate(&self) -> f64 {
        self.events as f64 / self.seconds().max(1e-3)
    }

    /// The output of the step's `index`th terminal command.
    pub fn output(&self, index: usize) -> String {
        self.facts
            .get("terminal_output")
            .and_then(|o| o.get(index))
            .and_then(Json::as_str)
            .unwrap_or_default()
            .to_string()
    }
}

/// The recording, read line by line (it may be large): step by step.
pub fn read_recording(path: &Path) -> Result<BTreeMap<String, RecordedStep>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut steps: BTreeMap<String, RecordedStep> = BTreeMap::new();
    let mut current = String::new();
    for line in BufReader::new(file).lines() {
        let line = line.map_err(|e| format!("{}: {e}", path.display()))?;
        let Ok(value) = serde_json::from_str::<Json>(&line) else {
            continue;
        };
        if let Some(step) = value.get("step") {
            current = step
                .get("name")
                .and_then(Json::as_str)
                .unwrap_or_default()
                .to_string();
            if step.get("at").and_then(Json::as_str) == Some("end")
                && let Some(facts) = step.get("facts")
            {
                steps.entry(current.clone()).or_default().facts = facts.clone();
            }
            continue;
        }
        let Some(ts) = value.get("ts").and_then(Json::as_u64) else {
            continue;
        };
        let step = steps.entry(current.clone()).or_default();
        step.events += 1;
        step.first_ts.get_or_insert(ts);
        step.last_ts = step.last_ts.max(ts);
        match value.get("type").and_then(Json::as_str) {
            Some("lost") => step.lost += value.get("count").and_then(Json::as_u64).unwrap_or(0),
            Some("exec") => {
                let exe = value
                    .get("exe")
                    .and_then(Json::as_str)
                    .unwrap_or_default()
                    .to_string();
                *step.execs.entry(exe).or_default() += 1;
            }
            _ => {}
        }
    }
    Ok(steps)
}
