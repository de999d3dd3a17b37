//! The files of a local lab's directory (`<labs dir>/<lab>/`), named once: the local backend
//! makes them, and the image cache reads a lab's state and config files to tell which image
//! the lab uses. A leaf, so that the image module does not reach into the local backend for
//! them.

/// The lab's state file (see `local::state`): written before any resource is made.
pub const STATE_FILE: &str = "state.json";
/// What `lab up` hands the daemon (see `local::config`).
pub const CONFIG_FILE: &str = "config.json";
/// The daemon's control socket (see `local::protocol`).
pub const SOCKET_FILE: &str = "control.sock";
/// The daemon's log (its stderr).
pub const DAEMON_LOG: &str = "daemon.log";
/// The lock that keeps `up` and `down` of one lab apart.
pub const LOCK_FILE: &str = "lock";
