//! The machine's side of the kind backend: the Docker engine (through its API) and the `kind` CLI.

use std::ffi::{OsStr, OsString};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bollard::Docker;
use guardlab_lab::{LabError, Progress};
use tokio::process::Command;

/// The default Docker socket when `DOCKER_HOST` is not set.
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";

const INSTALL_DOCKER: &str = "install Docker Engine (or Docker Desktop) and start it, \
     or point DOCKER_HOST at a running engine";
const INSTALL_KIND: &str = "install kind (https://kind.sigs.k8s.io/docs/user/quick-start/#installation, \
     e.g. `go install sigs.k8s.io/kind@latest`) and put it on PATH";

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
pub async fn check_tools(docker_host: &str, search_path: &OsStr) -> Result<Tools, LabError> {
    let docker = connect_docker(docker_host).await;
    let kind = KindCli::find(search_path).await;
    match (docker, kind) {
        (Ok(docker), Ok(kind)) => Ok(Tools { docker, kind }),
        (Err(d), Ok(_)) => Err(LabError::Missing {
            what: "Docker".into(),
            hint: d,
        }),
        (Ok(_), Err(k)) => Err(LabError::Missing {
            what: "the kind CLI".into(),
            hint: k,
        }),
        (Err(d), Err(k)) => Err(LabError::Missing {
            what: "Docker and the kind CLI".into(),
            hint: format!("{d}; {k}"),
        }),
    }
}

/// Connect to the Docker engine and ping it. The error says what is wrong and what to install.
pub async fn connect_docker(host: &str) -> Result<Docker, String> {
    let version = bollard::API_DEFAULT_VERSION;
    let docker = if let Some(path) = host
        .strip_prefix("unix://")
        .or(host.starts_with('/').then_some(host))
    {
        Docker::connect_with_unix(path, 120, version)
    } else if host.starts_with("tcp://") || host.starts_with("http://") {
        Docker::connect_with_http(&host.replacen("tcp://", "http://", 1), 120, version)
    } else {
        return Err(format!(
            "DOCKER_HOST `{host}` is not supported (use unix:///path/to/docker.sock or tcp://host:port); {INSTALL_DOCKER}"
        ));
    };
    let docker =
        docker.map_err(|e| format!("no Docker engine at {host} ({e}); {INSTALL_DOCKER}"))?;
    match tokio::time::timeout(Duration::from_secs(10), docker.ping()).await {
        Ok(Ok(_)) => Ok(docker),
        Ok(Err(e)) => Err(format!(
            "the Docker engine at {host} does not answer ({e}); {INSTALL_DOCKER}"
        )),
        Err(_) => Err(format!(
            "the Docker engine at {host} did not answer within 10s; {INSTALL_DOCKER}"
        )),
    }
}

/// The `kind` command line tool.
#[derive(Clone, Debug)]
pub struct KindCli {
    pub path: PathBuf,
}

impl KindCli {
    /// Find `kind` on `search_path` (a PATH-style list) and check that it runs.
    pub async fn find(search_path: &OsStr) -> Result<KindCli, String> {
        let path = find_executable("kind", search_path).ok_or_else(|| {
            format!(
                "no `kind` executable on PATH ({}); {INSTALL_KIND}",
                search_path.to_string_lossy()
            )
        })?;
        let cli = KindCli { path };
        cli.run(&["version"])
            .await
            .map_err(|e| format!("{e}; {INSTALL_KIND}"))?;
        Ok(cli)
    }

    /// Run kind with `args`, returning its standard output.
    async fn run(&self, args: &[&str]) -> Result<String, String> {
        let output = Command::new(&self.path)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| format!("cannot run {}: {e}", self.path.display()))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(8).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            Err(format!(
                "`kind {}` failed ({}): {}",
                args.join(" "),
                output.status,
                tail.join(" | ")
            ))
        }
    }

    pub async fn clusters(&self) -> Result<Vec<String>, LabError> {
        let out = self
            .run(&["get", "clusters"])
            .await
            .map_err(crate::failed)?;
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
    ) -> Result<(), LabError> {
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
        .map_err(crate::failed)
    }

    pub async fn delete_cluster(&self, name: &str) -> Result<(), LabError> {
        self.run(&["delete", "cluster", "--name", name])
            .await
            .map(drop)
            .map_err(crate::failed)
    }

    /// The cluster's kubeconfig (kind writes it to the user's kubeconfig too, as `kind-NAME`).
    pub async fn kubeconfig(&self, name: &str) -> Result<String, LabError> {
        self.run(&["get", "kubeconfig", "--name", name])
            .await
            .map_err(crate::failed)
    }

    pub async fn load_image(&self, cluster: &str, image: &str) -> Result<(), LabError> {
        self.run(&["load", "docker-image", image, "--name", cluster])
            .await
            .map(drop)
            .map_err(crate::failed)
    }
}

/// The first executable file called `name` in a PATH-style list.
pub fn find_executable(name: &str, search_path: &OsStr) -> Option<PathBuf> {
    std::env::split_paths(search_path)
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// The PATH to search: the given one, else the process's.
pub fn search_path(given: Option<&OsStr>) -> OsString {
    given
        .map(OsStr::to_os_string)
        .or_else(|| std::env::var_os("PATH"))
        .unwrap_or_default()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Write an executable script from another process, so that no file descriptor open for
    /// writing is inherited by a concurrent test's fork (which would make exec fail with ETXTBSY).
    pub(crate) fn write_script(path: &Path, content: &str) {
        let status = std::process::Command::new("sh")
            .args([
                "-c",
                "printf '%s' \"$1\" > \"$2\" && chmod 755 \"$2\"",
                "sh",
                content,
            ])
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success());
    }

    #[tokio::test]
    async fn without_docker_and_kind_both_are_named_with_what_to_install() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("no-docker.sock");
        let host = format!("unix://{}", socket.display());
        let err = match check_tools(&host, dir.path().as_os_str()).await {
            Err(e) => e,
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

    #[tokio::test]
    async fn a_kind_that_is_found_but_does_not_run_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let kind = dir.path().join("kind");
        write_script(
            &kind,
            "#!/bin/sh\necho 'kind: broken install' >&2\nexit 3\n",
        );
        let err = KindCli::find(dir.path().as_os_str()).await.unwrap_err();
        assert!(err.contains("`kind version` failed"), "{err}");
        assert!(err.contains("broken install"), "{err}");
    }

    #[tokio::test]
    async fn the_kind_cli_is_driven_with_the_expected_arguments() {
        // A stand-in `kind` that logs its arguments and answers like kind does.
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let kind = dir.path().join("kind");
        write_script(
            &kind,
            &format!(
                "#!/bin/sh\necho \"$*\" >> {}\ncase \"$1 $2\" in\n  'get clusters') echo guardlab; echo other ;;\n  'get kubeconfig') echo 'apiVersion: v1' ;;\nesac\n",
                log.display()
            ),
        );
        let not_executable = tempfile::tempdir().unwrap();
        std::fs::write(not_executable.path().join("kind"), "").unwrap();
        let path = std::env::join_paths([not_executable.path(), dir.path()]).unwrap();
        let cli = KindCli::find(&path).await.unwrap();
        assert_eq!(cli.path, kind);
        assert_eq!(cli.clusters().await.unwrap(), ["guardlab", "other"]);
        assert_eq!(
            cli.kubeconfig("guardlab").await.unwrap(),
            "apiVersion: v1\n"
        );
        cli.load_image("guardlab", "guardlab-sensor:0.1.0")
            .await
            .unwrap();
        cli.create_cluster("guardlab", Path::new("/c.yaml"), &guardlab_lab::NoProgress)
            .await
            .unwrap();
        cli.delete_cluster("guardlab").await.unwrap();
        let logged = std::fs::read_to_string(&log).unwrap();
        assert_eq!(
            logged.lines().collect::<Vec<_>>(),
            [
                "version",
                "get clusters",
                "get kubeconfig --name guardlab",
                "load docker-image guardlab-sensor:0.1.0 --name guardlab",
                "create cluster --name guardlab --config /c.yaml --wait 180s",
                "delete cluster --name guardlab",
            ]
        );
    }

    #[test]
    fn docker_host_prefers_the_given_one() {
        assert_eq!(docker_host(Some("unix:///x.sock")), "unix:///x.sock");
    }

    #[tokio::test]
    async fn an_unsupported_docker_host_is_explained() {
        let err = connect_docker("ssh://somewhere").await.unwrap_err();
        assert!(err.contains("not supported"), "{err}");
    }
}
