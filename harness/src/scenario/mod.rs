//! Scenarios: steps as data, run against a lab or a recording, checked against snapshots. (being written)
