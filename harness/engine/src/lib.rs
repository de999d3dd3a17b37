//! The guard-policy engine. Pure: no I/O, no clock, no async.
pub mod model;
