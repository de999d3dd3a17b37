//! The guard-policy engine. Pure: no I/O, no clock, no async. Events in; fingerprints,
//! policies, deviations and investigation traces out, in the public spyctl YAML model.
//!
//! Every rule here is a function of its inputs, so it can be unit-tested and replayed from a
//! recording; files, terminals and time live in the `guardlab` binary.
//!
//! The engine takes events in the order it is given them. A recording or a sensor's output
//! may be out of time order (per-CPU buffers are drained one after the other): sort it with
//! [`sort_events`] before replaying it, and look at `Stats::out_of_order_events` (in
//! [`fingerprint::Stats`]) to tell the user when a stream was not sorted.
//!
//! The modules come in four groups, below. A module uses modules of its own group and of the
//! groups before it, never of a group after it, and the uses between modules form no loop.

// The public format, and the values and rules every part shares.
pub mod canonical;
pub mod error;
pub mod glob;
mod id;
pub mod limits;
pub mod model;
pub mod names;
pub mod net;
pub mod window;

// Files: the rules a document keeps, and reading and writing it.
pub mod document;
pub mod validate;

// From events: the processes and connections of each container, and its fingerprint.
pub mod fingerprint;
mod tracker;

// Policies: merged, made, matched against a stream, and deviations investigated.
pub mod deviation;
pub mod merge;
pub mod policy;
pub mod trace;

use guardlab_events::Event;

/// Put events in time order. Stable: events with the same time keep the order they came in
/// (a fork before its exec, an answer before the connection it explains).
pub fn sort_events(events: &mut [Event]) {
    events.sort_by_key(|e| e.ts);
}
