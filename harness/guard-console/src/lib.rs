//! The guard console: the tutorial's pages in a browser, on loopback.
//!
//! `guardlab console` and `guardlab scenario NAME --console` serve it on `127.0.0.1:1235`:
//! **Fingerprints** (one per image; select, preview the policy, create it), **Policies** (list;
//! a policy's graph with its deviations; the Deviations tab; Policy info with mode, Enabled
//! and Save), **Investigation** (one causal graph) and **Flags** (newest first), updated live
//! over server-sent events. Every action calls the same [`PolicyStore`] method the scenario's
//! steps call; the console holds no state of its own besides the page.
//!
//! - `shared` — [`SharedStore`]: the store behind a lock, and a watch of its generation.
//! - `server` — [`ConsoleServer`]: the bind rules (loopback only, unless `--listen-any`, which
//!   then needs a token) and the routes.
//! - `api` — the JSON and SVG the pages read, and the actions they post.
//! - `assets` — the page, its script and style, embedded in the binary.

mod api;
mod assets;
mod graphs;
mod server;
mod shared;

pub use server::{ConsoleError, ConsoleOptions, ConsoleServer, DEFAULT_PORT};
pub use shared::SharedStore;

pub use guardlab_policy_store::PolicyStore;
