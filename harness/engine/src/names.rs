//! The names and uids the engine derives from what it sees, in one place so that every module
//! that writes or reads them agrees: a process node's name from an exec ([`process_name`]), an
//! image's short name ([`image_short_name`]), and the uid deviations are filed under
//! ([`policy_uid`]).
//!
//! **Policy uid** (ours): `metadata.uid` when the policy has one (the public tool assigns it
//! when a policy is applied); otherwise `pol:` and the first 16 hex digits of the SHA-256 of
//! the policy's name, so that the same policy file gives the same uid on every run and
//! deviations found against it can be merged back into it.

use guardlab_events::ProcessExec;
use sha2::{Digest, Sha256};

use crate::model::GuardDocument;

/// `comm` is at most this many bytes (the kernel's TASK_COMM_LEN less the NUL).
const COMM_MAX: usize = 15;

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The name of a process node for an exec: its `comm` as the kernel has it, cut at 15 bytes
/// like the kernel cuts it (`jupyter-noteboo`, not `jupyter-notebook`), because that is the
/// name Spyderbat writes (see **Names** in [`crate::fingerprint`]). With no `comm`, the
/// basename of `argv[0]`, then of the exe, cut the same way, so that a name never says more
/// than the kernel's would.
pub fn process_name(exec: &ProcessExec) -> &str {
    let comm = exec.comm.as_str();
    if !comm.is_empty() {
        return comm;
    }
    let name = match exec.argv.first().map(|a| basename(a)) {
        Some(name) if !name.is_empty() => name,
        _ => basename(&exec.exe),
    };
    cut_like_comm(name)
}

/// `name` cut to at most [`COMM_MAX`] bytes, at a character boundary.
fn cut_like_comm(name: &str) -> &str {
    if name.len() <= COMM_MAX {
        return name;
    }
    let mut end = COMM_MAX;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

/// The short name of an image reference: `docker.io/jupyter/minimal-notebook:latest` gives
/// `minimal-notebook`.
pub fn image_short_name(image: &str) -> &str {
    let no_digest = image.split('@').next().unwrap_or(image);
    let last = basename(no_digest);
    last.split(':').next().unwrap_or(last)
}

/// The uid deviations are filed under (see the module documentation).
pub fn policy_uid(policy: &GuardDocument) -> String {
    if let Some(uid) = policy.metadata.uid.as_deref().filter(|u| !u.is_empty()) {
        return uid.to_string();
    }
    let digest = Sha256::digest(policy.metadata.name.as_bytes());
    format!("pol:{}", &hex::encode(digest)[..16])
}
