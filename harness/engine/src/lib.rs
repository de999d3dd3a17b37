//! The guard-policy engine. Pure: no I/O, no clock, no async. Events in; fingerprints,
//! policies, deviations and investigation traces out, in the public spyctl YAML model.
//!
//! Every rule here is a function of its inputs, so it can be unit-tested and replayed from a
//! recording; files, terminals and time live in the `guardlab` binary.

pub mod model;

pub mod document;
pub mod validate;

pub mod deviation;
pub mod fingerprint;
pub mod glob;
pub mod merge;
pub mod policy;
pub mod trace;
