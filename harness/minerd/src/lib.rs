//! The scenario's cpuminer stand-in and the lab's Stratum v1 pool.
//!
//! The cryptominer scenario downloads pooler's cpuminer 2.5.1 and points it at a pool. The
//! real binary cannot be downloaded in the lab, so this crate provides:
//! - `minerd`, a small binary that takes cpuminer's options, burns CPU on real sha256d and
//!   speaks Stratum v1 ([`miner`], `src/bin/minerd.rs`);
//! - the lab's pool, which checks shares and records every client it sees ([`pool`]);
//! - the release tarball the scenario serves as `download` ([`release`]).

pub mod miner;
pub mod pool;
pub mod release;
pub mod stratum;
pub mod work;

pub use pool::{PoolClient, PoolConfig, PoolError, PoolHandle, start_pool};
pub use release::{
    MinerBuild, RELEASE_TARBALL_NAME, ensure_minerd_binary, find_minerd_binary,
    pack_release_tarball, start_minerd_build,
};
