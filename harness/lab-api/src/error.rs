//! The lab's one error type: a variant per kind of failure the runner and the reports tell
//! apart, each with its cause as a typed source.

use std::path::PathBuf;
use std::time::Duration;

use crate::Backend;

/// Why a lab could not do what was asked. Every variant says what failed in words a user acts
/// on; the backend's own typed error, when there is one, is the [`source`](std::error::Error::source).
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// Something the backend needs is not on this machine (root, Docker, kind, BTF...).
    #[error("{what} is missing: {hint}")]
    Missing { what: String, hint: String },

    /// Something the host lacks and guardlab did not (or may not) install, mount or load; the
    /// message names it and the Debian package that brings it.
    #[error(transparent)]
    Host(#[from] guardlab_host::HostError),

    /// Bad input (a manifest, the image recipe, a lock file, an option): the message names the
    /// file, the line and the field when there are any.
    #[error("{}{message}", location(file, *line, field))]
    Input {
        file: Option<PathBuf>,
        line: Option<usize>,
        field: Option<String>,
        message: String,
    },

    /// The backend cannot do this at all (kernel enforcement on kind, say).
    #[error("the {backend} backend has no {what}: {instead}")]
    Unsupported {
        backend: Backend,
        what: String,
        instead: String,
    },

    /// The lab is not up (or no longer): status, events and actions need a running lab.
    #[error("the {backend} lab is not up{}", detail_text(detail))]
    NotUp { backend: Backend, detail: String },

    /// A response action the lab refuses or could not carry out (a process outside the pod,
    /// one that is gone).
    #[error("{action}: {reason}")]
    Action { action: String, reason: String },

    /// Something did not happen in time; `detail` says what was seen meanwhile (a log).
    #[error("{what} did not happen within {}{}", seconds(*limit), detail_text(detail))]
    Timeout {
        what: String,
        limit: Duration,
        detail: String,
    },

    /// A program the lab runs failed; its last lines are kept.
    #[error("{command} failed ({status}){}", output_text(output))]
    Command {
        command: String,
        status: String,
        output: Vec<String>,
    },

    /// A file or system call failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// A part of the backend failed; `source` is its own typed error (the pod image, the lab
    /// daemon, the Kubernetes API...), `part` names it for the user.
    #[error("{part}: {source}")]
    Backend {
        part: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

fn location(file: &Option<PathBuf>, line: Option<usize>, field: &Option<String>) -> String {
    let mut out = String::new();
    if let Some(f) = file {
        out.push_str(&f.display().to_string());
        if let Some(l) = line {
            out.push_str(&format!(":{l}"));
        }
        out.push_str(": ");
    }
    if let Some(field) = field {
        out.push_str(&format!("field `{field}`: "));
    }
    out
}

fn detail_text(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!("; {detail}")
    }
}

fn output_text(output: &[String]) -> String {
    if output.is_empty() {
        String::new()
    } else {
        format!("; its last output:\n  {}", output.join("\n  "))
    }
}

fn seconds(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

impl LabError {
    /// A [`LabError::Backend`] from a backend's own error.
    pub fn backend(
        part: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> LabError {
        LabError::Backend {
            part: part.into(),
            source: Box::new(source),
        }
    }

    /// A [`LabError::Input`] about a file (and, when known, a line and a field).
    pub fn input(
        file: impl Into<PathBuf>,
        line: Option<usize>,
        field: Option<&str>,
        message: impl Into<String>,
    ) -> LabError {
        LabError::Input {
            file: Some(file.into()),
            line,
            field: field.map(str::to_string),
            message: message.into(),
        }
    }

    /// True when the user's input (a file, an option) is what is wrong.
    pub fn is_bad_input(&self) -> bool {
        matches!(self, LabError::Input { .. })
    }
}

/// `.context(...)` on I/O results: the I/O error becomes [`LabError::Io`] with a sentence of
/// what was being done, instead of a variant built by hand at each call.
pub trait IoContext<T> {
    /// `what` is computed only on error: `.context(|| format!("creating {}", p.display()))`.
    fn context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T, LabError>;
}

impl<T> IoContext<T> for Result<T, std::io::Error> {
    fn context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T, LabError> {
        self.map_err(|source| LabError::Io {
            context: what().into(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[derive(Debug, thiserror::Error)]
    #[error("the daemon said no")]
    struct DaemonSaidNo;

    #[test]
    fn messages_name_what_failed_and_keep_their_sources() {
        let io: Result<(), std::io::Error> = Err(std::io::Error::from_raw_os_error(libc_enoent()));
        let err = io.context(|| "creating /run/guardlab/x").unwrap_err();
        assert!(
            err.to_string().starts_with("creating /run/guardlab/x: "),
            "{err}"
        );
        assert!(err.source().is_some());

        let err = LabError::backend("the lab daemon", DaemonSaidNo);
        assert_eq!(err.to_string(), "the lab daemon: the daemon said no");
        assert_eq!(err.source().unwrap().to_string(), "the daemon said no");

        let err = LabError::input(
            "manifests/image/recipe.yaml",
            Some(12),
            Some("venv.lock"),
            "cannot read it",
        );
        assert_eq!(
            err.to_string(),
            "manifests/image/recipe.yaml:12: field `venv.lock`: cannot read it"
        );
        assert!(err.is_bad_input());

        let err = LabError::Timeout {
            what: "the notebook's answer".into(),
            limit: Duration::from_secs(60),
            detail: "its log: ...".into(),
        };
        assert_eq!(
            err.to_string(),
            "the notebook's answer did not happen within 60 s; its log: ..."
        );
        let err = LabError::Command {
            command: "ip link add".into(),
            status: "exit status: 2".into(),
            output: vec!["RTNETLINK answers: Operation not supported".into()],
        };
        assert!(
            err.to_string()
                .ends_with("its last output:\n  RTNETLINK answers: Operation not supported")
        );
    }

    fn libc_enoent() -> i32 {
        2
    }
}
