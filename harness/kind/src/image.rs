//! Building the sensor's image through the Docker API.

use std::fs;
use std::path::{Path, PathBuf};

use bollard::Docker;
use bollard::query_parameters::{BuildImageOptionsBuilder, RemoveImageOptionsBuilder};
use futures::StreamExt;
use guardlab_lab::{LabError, Progress};

use crate::state::io_error;

/// The Dockerfile, relative to the workspace root (the build context).
pub const SENSOR_DOCKERFILE: &str = "sensor/Dockerfile";

/// Top-level entries of the workspace that never go into the build context: build outputs
/// (`target`, the helpers' `target-*`) and git's data. They are large and the build needs none.
fn left_out(top_level: &str) -> bool {
    top_level == ".git" || top_level == "target" || top_level.starts_with("target-")
}

/// The build context: the workspace as an uncompressed tar, without build outputs and `.git`.
/// Entries are in name order, so the same tree gives the same archive.
pub fn build_context(root: &Path) -> Result<Vec<u8>, LabError> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    add_directory(&mut builder, root, Path::new(""))?;
    builder
        .into_inner()
        .map_err(|e| io_error("finishing the build context".into(), e))
}

fn add_directory(
    builder: &mut tar::Builder<Vec<u8>>,
    root: &Path,
    relative: &Path,
) -> Result<(), LabError> {
    let dir = root.join(relative);
    let reading = |e| io_error(format!("reading {}", dir.display()), e);
    let mut entries: Vec<_> = fs::read_dir(&dir)
        .map_err(reading)?
        .collect::<Result<_, _>>()
        .map_err(reading)?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        if relative.as_os_str().is_empty() && left_out(&name.to_string_lossy()) {
            continue;
        }
        let path = relative.join(&name);
        let adding = |e| io_error(format!("adding {} to the build context", path.display()), e);
        if entry.file_type().map_err(adding)?.is_dir() {
            builder
                .append_dir(&path, root.join(&path))
                .map_err(adding)?;
            add_directory(builder, root, &path)?;
        } else {
            builder
                .append_path_with_name(root.join(&path), &path)
                .map_err(adding)?;
        }
    }
    Ok(())
}

/// Build `tag` from `sensor/Dockerfile` with `root` as the context. Returns whether the tag is
/// new (it did not exist before), which decides whether `down` removes it.
pub async fn build_sensor_image(
    docker: &Docker,
    root: &Path,
    tag: &str,
    progress: &dyn Progress,
) -> Result<bool, LabError> {
    if !root.join(SENSOR_DOCKERFILE).is_file() {
        return Err(crate::failed(format!(
            "{} is missing: the sensor image is built from the workspace at {}",
            root.join(SENSOR_DOCKERFILE).display(),
            root.display()
        )));
    }
    let existed = docker.inspect_image(tag).await.is_ok();
    let context = build_context(root)?;
    progress.detail(&format!(
        "build context: {} MiB",
        context.len() / (1024 * 1024)
    ));
    let options = BuildImageOptionsBuilder::default()
        .dockerfile(SENSOR_DOCKERFILE)
        .t(tag)
        .rm(true)
        .forcerm(true)
        .build();
    let mut stream = docker.build_image(options, None, Some(bollard::body_full(context.into())));
    while let Some(item) = stream.next().await {
        let info = item.map_err(|e| match e {
            // A step of the Dockerfile failed: the engine's message says which and why.
            bollard::errors::Error::DockerStreamError { error } => crate::failed(format!(
                "building {tag} from {SENSOR_DOCKERFILE} failed: {error}"
            )),
            other => crate::failed(format!("building {tag} from {SENSOR_DOCKERFILE}: {other}")),
        })?;
        if let Some(detail) = info.error_detail {
            return Err(crate::failed(format!(
                "building {tag} from {SENSOR_DOCKERFILE} failed: {}",
                detail.message.unwrap_or_default()
            )));
        }
        if let Some(line) = info
            .stream
            .as_deref()
            .map(str::trim_end)
            .filter(|l| !l.is_empty())
        {
            progress.detail(line);
        }
    }
    Ok(!existed)
}

pub async fn remove_image(docker: &Docker, tag: &str) -> Result<(), LabError> {
    let options = RemoveImageOptionsBuilder::default().force(false).build();
    match docker.remove_image(tag, Some(options), None).await {
        Ok(_) => Ok(()),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(()),
        Err(e) => Err(crate::failed(format!("removing image {tag}: {e}"))),
    }
}

/// The workspace this crate was built from (the sensor's build context by default).
pub fn default_workspace_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(archive: &[u8]) -> Vec<String> {
        let mut a = tar::Archive::new(archive);
        a.entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn the_context_leaves_out_build_outputs_and_git_only_at_the_top() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in [
            "target/debug",
            "target-g",
            ".git",
            "sensor/src",
            "harness/target",
        ] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        fs::write(root.join("Cargo.toml"), "[workspace]\n").unwrap();
        fs::write(root.join("sensor/Dockerfile"), "FROM scratch\n").unwrap();
        fs::write(root.join("sensor/src/main.rs"), "fn main() {}\n").unwrap();
        fs::write(root.join("target/debug/big"), "x").unwrap();
        fs::write(root.join(".git/HEAD"), "ref").unwrap();
        fs::write(
            root.join("harness/target/kept"),
            "a member's own dir named target is source",
        )
        .unwrap();
        std::os::unix::fs::symlink("Cargo.toml", root.join("link")).unwrap();
        let archive = build_context(root).unwrap();
        assert_eq!(
            names(&archive),
            [
                "Cargo.toml",
                "harness",
                "harness/target",
                "harness/target/kept",
                "link",
                "sensor",
                "sensor/Dockerfile",
                "sensor/src",
                "sensor/src/main.rs",
            ]
        );
    }

    #[test]
    fn the_real_context_has_what_the_dockerfile_builds_from() {
        let root = default_workspace_root();
        let archive = build_context(&root).unwrap();
        let names = names(&archive);
        for needed in [
            "Cargo.toml",
            "Cargo.lock",
            SENSOR_DOCKERFILE,
            "sensor/Cargo.toml",
            "sensor/events/Cargo.toml",
        ] {
            assert!(
                names.iter().any(|n| n == needed),
                "{needed} missing from the context"
            );
        }
        assert!(
            !names.iter().any(|n| n.starts_with("target")),
            "build outputs in the context"
        );
        let dockerfile = fs::read_to_string(root.join(SENSOR_DOCKERFILE)).unwrap();
        assert!(dockerfile.contains("-p guardlab-sensor"), "{dockerfile}");
        assert!(dockerfile.contains("--locked"));
        // Classic-builder syntax only (the Docker API's default builder has no BuildKit).
        assert!(!dockerfile.contains("--mount="), "{dockerfile}");
        assert!(dockerfile.contains("ENTRYPOINT [\"/usr/local/bin/guardlab-sensor\"]"));
    }

    #[tokio::test]
    async fn building_without_the_dockerfile_says_where_it_looked() {
        let dir = tempfile::tempdir().unwrap();
        // A client that would fail on first use: the check comes before any call.
        let docker =
            Docker::connect_with_http("http://127.0.0.1:9", 1, bollard::API_DEFAULT_VERSION)
                .unwrap();
        let err = build_sensor_image(&docker, dir.path(), "t:1", &guardlab_lab::NoProgress)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("sensor/Dockerfile is missing"), "{err}");
    }
}
