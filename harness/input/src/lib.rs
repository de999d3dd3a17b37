//! Untrusted input files, read within bounds.
//!
//! Every file guardlab reads may come from someone else: a policy exported from another
//! organisation, a recording sent with a bug report, a scenario from a workshop. A few hundred
//! bytes of YAML aliases can expand to gigabytes, a deeply nested document can overflow a
//! recursive parser's stack, and a file can simply be too big to hold in memory. This crate
//! stops each of those *before* a parser builds anything, with an error that names the file,
//! the line and the limit:
//!
//! * [`file`] reads a whole file as text: no bigger than a limit, and UTF-8 (the first bad byte
//!   is named by its line and column).
//! * [`yaml`] scans a YAML text with a streaming parser and refuses nesting deeper than a limit
//!   and aliases that would expand beyond one, before `serde_yaml` or a tree builder sees it.
//!
//! The limits have defaults that no honest file comes near; [`ENV_MAX_INPUT_BYTES`] raises the
//! size limit for people with big recordings.

pub mod file;
pub mod yaml;

pub use file::{ENV_MAX_INPUT_BYTES, FileError, MaxBytes, read_text};
pub use yaml::{YamlError, YamlLimit, YamlLimits, scan_yaml};
