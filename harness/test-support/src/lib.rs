//! Hand-written event streams for tests, shared by the engine's unit and integration tests,
//! its benchmark and the file commands' tests (`harness/tests/cli_files.rs`).
//!
//! * [`stream`]: a builder of event streams in time order ([`stream::Stream`]), the exec of a
//!   plain program ([`stream::prog`]), a pod's container ([`stream::pod_container`]) and a
//!   deterministic pseudo-random sequence ([`stream::Rng`]).
//! * [`attack`]: what an attacker who controls the pod can make the sensor report, to show that
//!   the engine's state and output stay bounded: deep chains of shells, a process exec'ing again
//!   and again, exec storms, connection floods, thousands of DNS names, one event repeated.
//! * [`notebook`]: the tutorial's story as events: a Jupyter notebook pod's baseline, a
//!   terminal, then a miner-like download-and-run, with everything that changes from run to
//!   run in reality drawn from a seed.
//!
//! It depends on the event format (`guardlab-events`) alone, never on the engine: the engine's
//! unit tests use it as a dev-dependency, and a crate that depended on the engine would bring
//! them a second copy of the engine whose types are not the ones under test.

pub mod attack;
pub mod notebook;
pub mod stream;
