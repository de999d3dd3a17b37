//! The machine's side of the kind backend: the Docker engine (through its API) and the `kind` CLI.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use bollard::Docker;
use guardlab_lab_api::{LabError, Progress};
use tokio::process::Command;

use crate::io_failure::{Doing, IoFailure};

/// The default Docker socket when `DOCKER_HOST` is not set.
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";

const INSTALL_DOCKER: &str = "install Docker Engine (or Docker Desktop) and start it, \
     or point DOCKER_HOST at a running engine";
const INSTALL_KIND: &str = "install kind (https://kind.sigs.k8s.io/docs/user/quick-start/#installation, \
     e.g. `go install sigs.k8s.io/kind@latest`) and put it on PATH";

/// Why there is no Docker engine to use; each says what to install or start.
#[derive(Debug, thiserror::Error)]
pub enum DockerUnavailable {
    #[error(
        "DOCKER_HOST `{host}` is not supported (use unix:///path/to/docker.sock or tcp://host:port); {INSTALL_DOCKER}"
    )]
    UnsupportedHost { host: String },
    #[error("no Docker engine at {host} ({source}); {INSTALL_DOCKER}")]
    NoEngine {
        host: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("the Docker engine at {host} does not answer ({source}); {INSTALL_DOCKER}")]
    NoAnswer {
        host: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("the Docker engine at {host} did not answer within {}s; {INSTALL_DOCKER}", limit.as_secs())]
    Silent { host: String, limit: Duration },
}

/// Why there is no `kind` CLI to use; each says what to install.
#[derive(Debug, thiserror::Error)]
pub enum KindUnavailable {
    #[error("no `kind` executable on PATH ({}); {INSTALL_KIND}", search_path.to_string_lossy())]
    NotOnPath { search_path: OsString },
    /// Found, but `kind version` fails.
    #[error("{0}; {INSTALL_KIND}")]
    DoesNotRun(#[source] KindRunError),
}

/// A run of the `kind` CLI that failed.
#[derive(Debug, thiserror::Error)]
pub enum KindRunError {
    #[error(transparent)]
    Spawn(IoFailure),
    /// It ran and failed; `stderr_tail`: the last lines it wrote to its standard error.
    #[error("`kind {args}` failed ({status}): {}", stderr_tail.join(" | "))]
    Failed {
        args: String,
        status: ExitStatus,
        stderr_tail: Vec<String>,
    },
}

/// What `up` needs from the machine and did not find: Docker, kind or both, each with why.
#[derive(Debug, thiserror::Error)]
#[error("{} is missing: {}", self.what(), self.hint())]
pub struct MissingTools {
    pub docker: Option<DockerUnavailable>,
    pub kind: Option<KindUnavailable>,
}

impl MissingTools {
    /// What is missing, in words: `Docker`, `the kind CLI` or both.
    pub fn what(&self) -> &'static str {
        match (&self.docker, &self.kind) {
            (Some(_), Some(_)) => "Docker and the kind CLI",
            (Some(_), None) => "Docker",
            _ => "the kind CLI",
        }
    }

    /// Why each is missing and what to install.
    pub fn hint(&self) -> String {
        let docker = self.docker.iter().map(ToString::to_string);
        let kind = self.kind.iter().map(ToString::to_string);
        docker.chain(kind).collect::<Vec<_>>().join("; ")
    }
}

impl From<MissingTools> for LabError {
    fn from(missing: MissingTools) -> LabError {
        LabError::Missing {
            what: missing.what().into(),
            hint: missing.hint(),
        }
    }
}

impl From<DockerUnavailable> for LabError {
    fn from(docker: DockerUnavailable) -> LabError {
        MissingTools {
            docker: Some(docker),
            kind: None,
        }
        .into()
    }
}

impl From<KindUnavailable> for LabError {
    fn from(kind: KindUnavailable) -> LabError {
        MissingTools {
            docker: None,
            kind: Some(kind),
        }
        .into()
    }
}

impl From<KindRunError> for LabError {
    fn from(error: KindRunError) -> LabError {
        match error {
            KindRunError::Spawn(e) => e.into(),
            KindRunError::Failed {
                args,
                status,
                stderr_tail,
            } => LabError::Command {
                command: format!("kind {args}"),
                status: status.to_string(),
                output: stderr_tail,
            },
        }
    }
}

/// Docker and kind, found and answering.
pub struct Tools {
    pub docker: Docker,
    pub kind: KindCli,
}

/// The Docker host to use: the given one, else `DOCKER_HOST`, else the default socket.
pub fn docker_host(given: Option<&str>) -> String {
    given
        .map(str::to_string)
        .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| DEFAULT_DOCKER_HOST.to_string())
}

/// Check both tools and report every missing one at once, with what to install.
pub async fn check_tools(docker_host: &str, search_path: &OsStr) -> Result<Tools, MissingTools> {
    let docker = connect_docker(docker_host).await;
    let kind = KindCli::find(search_path).await;
    match (docker, kind) {
        (Ok(docker), Ok(kind)) => Ok(Tools { docker, kind }),
        (docker, kind) => Err(MissingTools {
            docker: docker.err(),
            kind: kind.err(),
        }),
    }
}

/// Connect to the Docker engine and ping it. The error says what is wrong and what to install.
pub async fn connect_docker(host: &str) -> Result<Docker, DockerUnavailable> {
    let version = bollard::API_DEFAULT_VERSION;
    let docker = if let Some(path) = host
        .strip_prefix("unix://")
        .or(host.starts_with('/').then_some(host))
    {
        Docker::connect_with_unix(path, 120, version)
    } else if host.starts_with("tcp://") || host.starts_with("http://") {
        Docker::connect_with_http(&host.replacen("tcp://", "http://", 1), 120, version)
    } else {
        return Err(DockerUnavailable::UnsupportedHost {
            host: host.to_string(),
        });
    };
    let docker = docker.map_err(|source| DockerUnavailable::NoEngine {
        host: host.to_string(),
        source,
    })?;
    let limit = Duration::from_secs(10);
    match tokio::time::timeout(limit, docker.ping()).await {
        Ok(Ok(_)) => Ok(docker),
        Ok(Err(source)) => Err(DockerUnavailable::NoAnswer {
            host: host.to_string(),
            source,
        }),
        Err(_) => Err(DockerUnavailable::Silent {
            host: host.to_string(),
            limit,
        }),
    }
}

/// The `kind` command line tool.
#[derive(Clone, Debug)]
pub struct KindCli {
    pub path: PathBuf,
}

impl KindCli {
    /// Find `kind` on `search_path` (a PATH-style list) and check that it runs.
    pub async fn find(search_path: &OsStr) -> Result<KindCli, KindUnavailable> {
        // The host's program lookup, on exactly the directories given.
        let mut host = guardlab_host::Host::new(false);
        host.search_path = std::env::split_paths(search_path).collect();
        let path = host
            .find_program("kind")
            .ok_or_else(|| KindUnavailable::NotOnPath {
                search_path: search_path.to_os_string(),
            })?;
        let cli = KindCli { path };
        cli.run(&["version"])
            .await
            .map_err(KindUnavailable::DoesNotRun)?;
        Ok(cli)
    }

    /// Run kind with `args`, returning its standard output.
    async fn run(&self, args: &[&str]) -> Result<String, KindRunError> {
        let output = Command::new(&self.path)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .doing(|| format!("cannot run {}", self.path.display()))
            .map_err(KindRunError::Spawn)?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let mut tail: Vec<String> = stderr.lines().rev().take(8).map(str::to_string).collect();
            tail.reverse();
            Err(KindRunError::Failed {
                args: args.join(" "),
                status: output.status,
                stderr_tail: tail,
            })
        }
    }

    pub async fn clusters(&self) -> Result<Vec<String>, KindRunError> {
        let out = self.run(&["get", "clusters"]).await?;
        Ok(out
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect())
    }

    pub async fn create_cluster(
        &self,
        name: &str,
        config: &Path,
        progress: &dyn Progress,
    ) -> Result<(), KindRunError> {
        progress.detail(&format!(
            "kind create cluster --name {name} --config {}",
            config.display()
        ));
        let config = config.to_string_lossy();
        self.run(&[
            "create", "cluster", "--name", name, "--config", &config, "--wait", "180s",
        ])
        .await
        .map(drop)
    }

    pub async fn delete_cluster(&self, name: &str) -> Result<(), KindRunError> {
        self.run(&["delete", "cluster", "--name", name])
            .await
            .map(drop)
    }

    /// The cluster's kubeconfig (kind writes it to the user's kubeconfig too, as `kind-NAME`).
    pub async fn kubeconfig(&self, name: &str) -> Result<String, KindRunError> {
        self.run(&["get", "kubeconfig", "--name", name]).await
    }

    pub async fn load_image(&self, cluster: &str, image: &str) -> Result<(), KindRunError> {
        self.run(&["load", "docker-image", image, "--name", cluster])
            .await
            .map(drop)
    }
}

/// The PATH to search: the given one, else the process's.
pub fn search_path(given: Option<&OsStr>) -> OsString {
    given
        .map(OsStr::to_os_string)
        .or_else(|| std::env::var_os("PATH"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn without_docker_and_kind_both_are_named_with_what_to_install() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("no-docker.sock");
        let host = format!("unix://{}", socket.display());
        let err = match check_tools(&host, dir.path().as_os_str()).await {
            // What the lab says, at its boundary.
            Err(e) => LabError::from(e),
            Ok(_) => panic!("tools found in an empty directory"),
        };
        let LabError::Missing { what, hint } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(what, "Docker and the kind CLI");
        assert!(hint.contains("install Docker Engine"), "{hint}");
        assert!(hint.contains(&socket.display().to_string()), "{hint}");
        assert!(hint.contains("install kind"), "{hint}");
        assert!(
            err.to_string()
                .starts_with("Docker and the kind CLI is missing: "),
            "{err}"
        );
    }

    #[test]
    fn docker_host_prefers_the_given_one() {
        assert_eq!(docker_host(Some("unix:///x.sock")), "unix:///x.sock");
    }

    #[tokio::test]
    async fn an_unsupported_docker_host_is_explained() {
        let err = connect_docker("ssh://somewhere")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("not supported"), "{err}");
    }
}
