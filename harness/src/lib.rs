//! guardlab: the harness. A thin layer over focused crates: it reads files and flags, runs the
//! lab and the scenario, and reports; the rules live in `guardlab-engine`.

pub mod cli;
pub mod commands;
pub mod console;
pub mod privilege;
pub mod report;
pub mod scenario;
pub mod signals;
