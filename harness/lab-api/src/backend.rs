//! Which backend: one enum for the CLI, the runner, the recordings and the reports.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a scenario runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Namespaces and a cgroup on this host.
    Local,
    /// A kind (Kubernetes in Docker) cluster, or an existing one.
    Kind,
    /// The engine side only, from a recorded event stream.
    Replay,
}

impl Backend {
    /// Every backend, in the order `--help` lists them.
    pub const ALL: [Backend; 3] = [Backend::Local, Backend::Kind, Backend::Replay];

    /// The name used on the command line, in scenario files (`backends:`) and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Local => "local",
            Backend::Kind => "kind",
            Backend::Replay => "replay",
        }
    }

    /// Backends with a real lab (a pod that runs), as opposed to a recording.
    pub fn is_live(self) -> bool {
        !matches!(self, Backend::Replay)
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A backend name that is none of [`Backend::ALL`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown backend `{0}`: use local, kind or replay")]
pub struct UnknownBackend(pub String);

impl FromStr for Backend {
    type Err = UnknownBackend;
    fn from_str(s: &str) -> Result<Backend, UnknownBackend> {
        Backend::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| UnknownBackend(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_serialize_as_they_are_written() {
        for b in Backend::ALL {
            assert_eq!(b.name().parse::<Backend>().unwrap(), b);
            assert_eq!(
                serde_json::to_string(&b).unwrap(),
                format!("\"{}\"", b.name())
            );
        }
        let err = "docker".parse::<Backend>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown backend `docker`: use local, kind or replay"
        );
        assert!(Backend::Kind.is_live() && !Backend::Replay.is_live());
    }
}
