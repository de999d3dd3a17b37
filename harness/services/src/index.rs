//! The lab's Python package index: a PEP 503 "simple" index over a directory of wheels, for
//! the baseline's `pip install --upgrade pip setuptools wheel`. The wheels are fetched once
//! through the host's own pip (and its own configuration) and cached; the lab never reaches
//! a real registry.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::ServicesError;
use crate::pylock::{PythonLock, normalize_project_name};
use crate::web::{Route, Site};

/// The lab name of the package index (not a real registry's name).
pub const LAB_INDEX_HOST: &str = "pypi.guardlab.test";

/// What the baseline upgrades: `pip install --upgrade pip setuptools wheel`. The exact wheels
/// the lab's index serves for them (and their dependencies) are pinned in
/// [`INDEX_LOCK_FILE`].
pub const BASELINE_REQUIREMENTS: [&str; 3] = ["pip", "setuptools", "wheel"];

/// The lock of the lab index's wheels, in the image recipe's directory (`manifests/image/`).
pub const INDEX_LOCK_FILE: &str = "index-wheels.lock";

/// The pod's pip configuration (`/etc/pip.conf`): the lab index, trusted through the system
/// bundle in which the lab CA is installed.
pub fn pip_conf(index_host: &str) -> String {
    format!(
        "# Written by guardlab: the lab's own package index, trusted through the lab CA.\n\
         [global]\n\
         index-url = https://{index_host}/simple\n\
         cert = /etc/ssl/certs/ca-certificates.crt\n"
    )
}

/// One wheel of the index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wheel {
    pub file_name: String,
    /// PEP 503 normal form of the project the wheel belongs to.
    pub project: String,
    pub sha256: String,
    pub bytes: Bytes,
}

/// Reads every `*.whl` in `dir` (other files are ignored), sorted by file name.
pub fn read_wheels(dir: &Path) -> Result<Vec<Wheel>, ServicesError> {
    wheel_paths(dir)?
        .into_iter()
        .map(|path| {
            let (file_name, project) = parse_wheel_file_name(&path)?;
            let bytes = fs::read(&path).map_err(|e| ServicesError::file("read", &path, e))?;
            Ok(Wheel {
                file_name,
                project,
                sha256: hex::encode(Sha256::digest(&bytes)),
                bytes: Bytes::from(bytes),
            })
        })
        .collect()
}

/// The index as a lab site on `host`: `/simple/`, `/simple/<project>/` (PEP 503 pages with
/// `#sha256=` links) and `/files/<wheel>`.
pub fn package_index_site(host: &str, wheel_dir: &Path) -> Result<Site, ServicesError> {
    let wheels = read_wheels(wheel_dir)?;
    if wheels.is_empty() {
        return Err(ServicesError::BadWheel {
            path: wheel_dir.to_path_buf(),
            detail: "no wheels here: fill the directory with fetch_wheels first".to_string(),
        });
    }
    let mut projects: BTreeMap<&str, Vec<&Wheel>> = BTreeMap::new();
    for wheel in &wheels {
        projects.entry(&wheel.project).or_default().push(wheel);
    }

    let html = |title: &str, links: &str| {
        Bytes::from(format!(
            "<!DOCTYPE html>\n<html>\n<head>\n<meta name=\"pypi:repository-version\" content=\"1.0\">\n\
             <title>{title}</title>\n</head>\n<body>\n<h1>{title}</h1>\n{links}</body>\n</html>\n"
        ))
    };
    const HTML: &str = "text/html; charset=utf-8";

    let mut routes = Vec::new();
    let mut root_links = String::new();
    for (project, project_wheels) in &projects {
        let _ = writeln!(
            root_links,
            "<a href=\"/simple/{project}/\">{project}</a><br/>"
        );
        let mut links = String::new();
        for wheel in project_wheels {
            let _ = writeln!(
                links,
                "<a href=\"/files/{name}#sha256={sha}\">{name}</a><br/>",
                name = wheel.file_name,
                sha = wheel.sha256
            );
        }
        let page = html(&format!("Links for {project}"), &links);
        routes.push(Route::new(
            format!("/simple/{project}/"),
            HTML,
            page.clone(),
        ));
        routes.push(Route::new(format!("/simple/{project}"), HTML, page));
    }
    let root = html("Simple index", &root_links);
    routes.push(Route::new("/simple/", HTML, root.clone()));
    routes.push(Route::new("/simple", HTML, root));
    for wheel in wheels {
        routes.push(Route::new(
            format!("/files/{}", wheel.file_name),
            "application/octet-stream",
            wheel.bytes,
        ));
    }
    Ok(Site {
        host: host.to_string(),
        routes,
    })
}

/// What [`fetch_wheels`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchedWheels {
    /// False when every pin already had its file in the directory (nothing was run).
    pub downloaded: bool,
    /// Every wheel now in the directory: one per pin.
    pub wheels: Vec<PathBuf>,
}

/// Fills `dir` with exactly the wheels `lock` pins, through the host's pip (`python3 -m pip
/// download --require-hashes --no-deps --only-binary=:all:`, with the host's own pip
/// configuration): pip checks each file against the lock's sha256, and so does this function
/// for what is already in `dir`. Wheels in `dir` that match no pin are removed: the directory
/// is what the lab's index serves, and nothing a person or an older guardlab left there may be
/// served. A no-op when every pin has its file. pip downloads into a staging directory inside
/// `dir`, removed afterwards, so a failed or killed fetch leaves no half file.
pub fn fetch_wheels(dir: &Path, lock: &PythonLock) -> Result<FetchedWheels, ServicesError> {
    fs::create_dir_all(dir).map_err(|e| ServicesError::file("create", dir, e))?;
    if missing_pins(dir, lock)?.is_empty() {
        return Ok(FetchedWheels {
            downloaded: false,
            wheels: wheel_paths(dir)?,
        });
    }
    let staging = tempfile::Builder::new()
        .prefix(".pip-download-")
        .tempdir_in(dir)
        .map_err(|e| ServicesError::file("create a staging directory in", dir, e))?;
    tracing::info!(
        dir = %dir.display(),
        "fetching the wheels pinned in {} through the host's pip (once; cached afterwards)",
        lock.file.display()
    );
    run_host_pip_download(staging.path(), lock)?;
    for path in wheel_paths(staging.path())? {
        let (file_name, _) = parse_wheel_file_name(&path)?;
        let target = dir.join(&file_name);
        fs::rename(&path, &target).map_err(|e| ServicesError::file("move into place", &path, e))?;
    }
    let still_missing = missing_pins(dir, lock)?;
    if !still_missing.is_empty() {
        return Err(ServicesError::Pip {
            requirements: lock.file.display().to_string(),
            detail: format!(
                "pip succeeded but left no wheel for {}",
                still_missing.join(", ")
            ),
            output: Vec::new(),
        });
    }
    Ok(FetchedWheels {
        downloaded: true,
        wheels: wheel_paths(dir)?,
    })
}

/// The pins of `lock` (as `name==version`) without a wheel in `dir` whose sha256 the pin
/// allows. Wheels in `dir` that match no pin are removed.
pub fn missing_pins(dir: &Path, lock: &PythonLock) -> Result<Vec<String>, ServicesError> {
    let mut found = vec![false; lock.pins.len()];
    if dir.exists() {
        for path in wheel_paths(dir)? {
            let bytes = fs::read(&path).map_err(|e| ServicesError::file("read", &path, e))?;
            let sha = hex::encode(Sha256::digest(&bytes));
            match lock.pins.iter().position(|p| p.hashes.contains(&sha)) {
                Some(i) => found[i] = true,
                None => {
                    tracing::info!(
                        "removing {}: not a wheel pinned in {}",
                        path.display(),
                        lock.file.display()
                    );
                    fs::remove_file(&path).map_err(|e| ServicesError::file("remove", &path, e))?;
                }
            }
        }
    }
    Ok(lock
        .pins
        .iter()
        .zip(found)
        .filter(|(_, f)| !f)
        .map(|(p, _)| format!("{}=={}", p.name, p.version))
        .collect())
}

fn wheel_paths(dir: &Path) -> Result<Vec<PathBuf>, ServicesError> {
    let entries = fs::read_dir(dir).map_err(|e| ServicesError::file("list", dir, e))?;
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| ServicesError::file("list", dir, e))?;
        let path = entry.path();
        if path.is_file() && path.extension().is_some_and(|ext| ext == "whl") {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
}

/// `{name}-{version}(-{build})?-{python}-{abi}-{platform}.whl` -> (file name, normalized name).
fn parse_wheel_file_name(path: &Path) -> Result<(String, String), ServicesError> {
    let bad = |detail: &str| ServicesError::BadWheel {
        path: path.to_path_buf(),
        detail: detail.to_string(),
    };
    let file_name = path
        .file_name()
        .and_then(|name| name.to_str())
        .ok_or_else(|| bad("the file name is not UTF-8"))?;
    if !file_name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(bad(
            "a wheel file name has only letters, digits, '.', '_' and '-'",
        ));
    }
    let stem = file_name
        .strip_suffix(".whl")
        .ok_or_else(|| bad("not a .whl file"))?;
    let parts: Vec<&str> = stem.split('-').collect();
    if !(parts.len() == 5 || parts.len() == 6) || parts.iter().any(|p| p.is_empty()) {
        return Err(bad(
            "not a wheel file name (name-version[-build]-python-abi-platform.whl)",
        ));
    }
    Ok((file_name.to_string(), normalize_project_name(parts[0])))
}

/// Runs the host's `python3 -m pip download` into `target`, its output going to the log as
/// progress; its last lines go into the error when it fails.
fn run_host_pip_download(target: &Path, lock: &PythonLock) -> Result<(), ServicesError> {
    const KEEP_LINES: usize = 20;
    let pip_error = |detail: String, output: Vec<String>| ServicesError::Pip {
        requirements: lock.file.display().to_string(),
        detail,
        output,
    };
    let mut child = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--require-hashes",
            "--no-deps",
            "--only-binary=:all:",
            "--progress-bar",
            "off",
            "--disable-pip-version-check",
            "--no-input",
            "--dest",
        ])
        .arg(target)
        .arg("--requirement")
        .arg(&lock.file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            pip_error(
                format!("cannot run python3 -m pip ({e}); install python3 and python3-pip"),
                Vec::new(),
            )
        })?;

    let stderr = child.stderr.take();
    let stderr_reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        if let Some(stderr) = stderr {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                tracing::info!(target: "guardlab_services::pip", "{line}");
                lines.push(line);
            }
        }
        lines
    });
    let mut output = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            tracing::info!(target: "guardlab_services::pip", "{line}");
            output.push(line);
        }
    }
    let status = child
        .wait()
        .map_err(|e| pip_error(format!("cannot wait for pip: {e}"), Vec::new()))?;
    output.extend(stderr_reader.join().unwrap_or_default());
    if status.success() {
        return Ok(());
    }
    let tail = output[output.len().saturating_sub(KEEP_LINES)..].to_vec();
    Err(pip_error(format!("pip exited with {status}"), tail))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wheel_file_names_are_parsed_or_refused() {
        let ok = parse_wheel_file_name(Path::new("/x/Typing_Extensions-4.0-py3-none-any.whl"));
        assert_eq!(
            ok.unwrap(),
            (
                "Typing_Extensions-4.0-py3-none-any.whl".to_string(),
                "typing-extensions".to_string()
            )
        );
        assert!(parse_wheel_file_name(Path::new("/x/pkg-1.0-1-py3-none-any.whl")).is_ok());
        for bad in [
            "pkg-1.0.whl",
            "pkg-1.0-py3-none-any.zip",
            "pk g-1-py3-none-any.whl",
        ] {
            let error = parse_wheel_file_name(&Path::new("/x").join(bad)).unwrap_err();
            assert!(
                error.to_string().starts_with(&format!("/x/{bad}: ")),
                "{error}"
            );
        }
    }

    #[test]
    fn only_wheels_with_a_pinned_hash_count_and_others_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let sha = |b: &[u8]| hex::encode(Sha256::digest(b));
        fs::write(dir.path().join("pip-26.0-py3-none-any.whl"), b"pip").unwrap();
        // Right name, wrong bytes: left by someone else, not what the lock pins.
        fs::write(
            dir.path().join("wheel-0.48.0-py3-none-any.whl"),
            b"tampered",
        )
        .unwrap();
        fs::write(dir.path().join("notes.txt"), b"x").unwrap();
        let lock_text = format!(
            "pip==26.0 --hash=sha256:{}\nwheel==0.48.0 --hash=sha256:{}\n",
            sha(b"pip"),
            sha(b"wheel")
        );
        let lock = PythonLock::parse(Path::new("index.lock"), &lock_text).unwrap();
        let missing = missing_pins(dir.path(), &lock).unwrap();
        assert_eq!(missing, vec!["wheel==0.48.0".to_string()]);
        assert!(
            !dir.path().join("wheel-0.48.0-py3-none-any.whl").exists(),
            "removed"
        );
        assert!(dir.path().join("pip-26.0-py3-none-any.whl").exists());
        assert!(
            dir.path().join("notes.txt").exists(),
            "not a wheel: not ours to judge"
        );
        assert_eq!(
            missing_pins(&dir.path().join("absent"), &lock).unwrap(),
            ["pip==26.0", "wheel==0.48.0"]
        );
    }

    #[test]
    fn index_pages_link_every_wheel_with_its_sha256() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("Demo_Pkg-1.0-py3-none-any.whl"), b"one").unwrap();
        fs::write(dir.path().join("demo.pkg-2.0-py3-none-any.whl"), b"two").unwrap();
        let site = package_index_site("pypi.guardlab.test", dir.path()).unwrap();
        let page = |path: &str| {
            let route = site.routes.iter().find(|r| r.path == path).unwrap();
            String::from_utf8(route.body.to_vec()).unwrap()
        };
        let project = page("/simple/demo-pkg/");
        assert!(project.contains(&format!(
            "<a href=\"/files/Demo_Pkg-1.0-py3-none-any.whl#sha256={}\">",
            hex::encode(Sha256::digest(b"one"))
        )));
        assert!(project.contains(&format!(
            "<a href=\"/files/demo.pkg-2.0-py3-none-any.whl#sha256={}\">",
            hex::encode(Sha256::digest(b"two"))
        )));
        assert!(page("/simple/").contains("<a href=\"/simple/demo-pkg/\">demo-pkg</a>"));
        let file = site
            .routes
            .iter()
            .find(|r| r.path == "/files/demo.pkg-2.0-py3-none-any.whl")
            .unwrap();
        assert_eq!(&file.body[..], b"two");

        let empty = tempfile::tempdir().unwrap();
        let error = package_index_site("x.test", empty.path())
            .unwrap_err()
            .to_string();
        assert!(error.contains("no wheels here"), "{error}");
    }

    #[test]
    fn pip_conf_points_at_the_lab_index_and_system_bundle() {
        assert_eq!(
            pip_conf(LAB_INDEX_HOST),
            "# Written by guardlab: the lab's own package index, trusted through the lab CA.\n\
             [global]\n\
             index-url = https://pypi.guardlab.test/simple\n\
             cert = /etc/ssl/certs/ca-certificates.crt\n"
        );
    }
}
