//! The image builder's errors: one variant per thing that goes wrong (the recipe, its lock, the
//! host's configuration, a build step, the image check, the cache), each with its cause as a
//! typed source, and their conversion into the lab's [`LabError`](guardlab_lab_api::LabError).
//!
//! A leaf module: every other module of the image builder uses it, it uses none of them.

use std::ffi::OsString;
use std::path::PathBuf;

use guardlab_services::ServicesError;

use super::DEBIAN_MIRROR_ENV;

/// Why the pod image could not be read, built, checked, locked or looked up in its cache.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A value of the recipe is wrong (or the recipe is no recipe at all); the message names
    /// the file, the line and the field when there are any.
    #[error("{}{message}", location(file, *line, field.as_deref()))]
    Recipe {
        file: PathBuf,
        line: Option<usize>,
        field: Option<String>,
        message: String,
    },

    /// The recipe is not the YAML the builder reads (a value of the wrong type, an unknown
    /// field, a value its own check refuses).
    #[error("{}:{line}:{column}: bad image recipe: {source}", file.display())]
    RecipeYaml {
        file: PathBuf,
        line: usize,
        column: usize,
        #[source]
        source: serde_yaml::Error,
    },

    /// A file the recipe names (a file it installs, its lock) cannot be read.
    #[error(
        "{}{}",
        location(recipe, *line, Some(field)),
        unreadable(field, path, source)
    )]
    RecipeFileUnreadable {
        recipe: PathBuf,
        line: Option<usize>,
        field: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The lock the recipe names (`venv.lock`) is not a lock guardlab reads.
    #[error("{source} (the lock of {}field `venv.lock`)", location(recipe, *line, None))]
    Lock {
        recipe: PathBuf,
        /// The recipe's line that names the lock.
        line: Option<usize>,
        #[source]
        source: ServicesError,
    },

    /// `guardlab image lock`: pip did not install a package the recipe asks for (its name in
    /// `venv.packages` is not the name pip knows it by).
    #[error(
        "{}: field `venv.packages`: pip installed no {} although venv.packages asks for it",
        recipe.display(),
        packages.join(", ")
    )]
    UnresolvedPackages {
        recipe: PathBuf,
        packages: Vec<String>,
    },

    /// `guardlab image lock`: a file pip downloaded cannot be pinned.
    #[error("hashing a download: {source}")]
    DownloadHash {
        #[source]
        source: ServicesError,
    },

    /// Building needs root and this process is not.
    #[error("root is missing: {}", not_root_hint(task))]
    NotRoot { task: &'static str },

    /// The host's apt configuration names no Debian source to debootstrap from.
    #[error("{} is missing: {NO_APT_SOURCE_HINT}", no_apt_source(etc_apt))]
    NoAptSource { etc_apt: PathBuf },

    /// A program the host crate had just made sure of is gone.
    #[error("{program} is missing: {PROGRAM_GONE_HINT}")]
    ProgramGone { program: &'static str },

    /// Something the host lacks and guardlab did not (or may not) install.
    #[error(transparent)]
    Host(#[from] guardlab_host::HostError),

    /// A host file that the host's pip configuration names cannot be copied in for the build.
    #[error("copying the host's {} for pip: {source}", path.display())]
    HostPipFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A program of the build failed.
    #[error(transparent)]
    Step(#[from] StepFailed),

    /// debootstrap failed because the mirror lacks the recipe's suite or is signed by a key
    /// this host does not know.
    #[error(
        "{failure}\nThe pod image is pinned to the Debian suite `{suite}` (debian.suite in {}), \
         and the mirror {mirror} ({origin}) {}. On a host whose apt sources name no Debian \
         mirror (an Ubuntu host, say), set {DEBIAN_MIRROR_ENV} to a Debian mirror's URL{}",
        recipe.display(),
        if *lacks_suite { "does not carry it" } else { "is signed by a key this host does not know" },
        if *unknown_key { " and install the package debian-archive-keyring" } else { "" }
    )]
    SuiteNotOnMirror {
        failure: Box<StepFailed>,
        suite: String,
        recipe: PathBuf,
        mirror: String,
        /// Where the mirror was found (an apt source's file and line, or the variable).
        origin: String,
        lacks_suite: bool,
        unknown_key: bool,
    },

    /// pip could not install the pinned environment.
    #[error(
        "{failure}\n(the image installs exactly {}; if a pinned file is no longer on the index, \
         make new pins with `guardlab image lock`)",
        lock.display()
    )]
    PinnedInstall {
        failure: Box<StepFailed>,
        lock: PathBuf,
    },

    /// The built image lacks what the scenario relies on, or has what it must not have.
    #[error(transparent)]
    Check(#[from] CheckFailure),

    /// A file target of the recipe leads out of the image (through a symbolic link in it).
    #[error("the recipe's file target {target} leads out of the image (to {})", resolved.display())]
    TargetOutsideImage { target: String, resolved: PathBuf },

    /// A path cannot be handed to the kernel.
    #[error("path {path:?} has a NUL byte")]
    NulInPath { path: OsString },

    /// An image's record (`image.yaml`) cannot be read or written.
    #[error("{}: {action} the image record: {source}", path.display())]
    Record {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: serde_yaml::Error,
    },

    /// A build ended without a finished image in its place.
    #[error("the pod image built at {} is not complete", dir.display())]
    Incomplete { dir: PathBuf },

    /// A lab's registration in an image cannot be written.
    #[error("writing {}: {source}", path.display())]
    Registration {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// What a lab's state file names as its image registration is none.
    #[error(
        "{} is not a pod image registration (`<image>/{}/<id>`): not removed",
        path.display(),
        super::USERS_DIR
    )]
    NotARegistration { path: PathBuf },

    /// A lab's state file is not JSON: nobody can tell which image that lab uses.
    #[error("{}: {source}: cannot tell which pod image that lab uses", path.display())]
    LabState {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// A prune removed what it could; these entries stayed.
    #[error("pruning the image cache {}: {}", cache.display(), join(failures))]
    Prune {
        cache: PathBuf,
        failures: Vec<ImageError>,
    },

    /// A file or system call failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// A program that the build runs (debootstrap, pip, useradd...) failed; its last lines are
/// kept.
#[derive(Debug, thiserror::Error)]
#[error("{step} failed ({status}): {command}{}", output_text(output))]
pub struct StepFailed {
    /// What the build was doing: `debootstrap`, `pip install`, `useradd`...
    pub step: String,
    /// The program and its arguments.
    pub command: String,
    /// How it ended (`exit status: 1`, `signal: 9 (SIGKILL)`).
    pub status: String,
    /// Its last lines of output, oldest first.
    pub output: Vec<String>,
}

impl StepFailed {
    pub(super) fn new(
        step: &str,
        command: String,
        status: std::process::ExitStatus,
        output: Vec<String>,
    ) -> StepFailed {
        StepFailed {
            step: step.to_string(),
            command,
            status: status.to_string(),
            output,
        }
    }
}

/// What the check of a built image found wrong (or the user step found in the way).
#[derive(Debug, thiserror::Error)]
pub enum CheckFailure {
    #[error(
        "the image has the package `{package}`, which the recipe forbids (something pulled it in)"
    )]
    ForbiddenPackage { package: String },

    #[error("the image has the command `{command}` ({found}), which the recipe forbids")]
    ForbiddenCommand { command: String, found: String },

    #[error("the image's user is `{found}`, not `{expected}`")]
    WrongUser { found: String, expected: String },

    #[error(
        "`sudo -l` works for {user} in the image; the recipe's user must not be a sudoer: {listing}"
    )]
    Sudoer { user: String, listing: String },

    #[error("the image's group {gid} is `{found}`, not `{expected}` as the recipe says")]
    GroupTaken {
        gid: u32,
        found: String,
        expected: String,
    },
}

fn not_root_hint(task: &str) -> String {
    format!("{task} needs root: run with sudo")
}

fn no_apt_source(etc_apt: &std::path::Path) -> String {
    format!(
        "a `deb` source in the host's apt configuration ({})",
        etc_apt.display()
    )
}

const NO_APT_SOURCE_HINT: &str = "the pod image is built with debootstrap from the host's Debian \
     mirror; configure apt (sources.list or sources.list.d/*.sources) first";

const PROGRAM_GONE_HINT: &str = "the host crate found it a moment ago and now it is gone";

fn unreadable(field: &str, path: &std::path::Path, source: &std::io::Error) -> String {
    format!(
        "cannot read {}: {source}{}",
        path.display(),
        if field == "venv.lock" {
            " (make it with `guardlab image lock`)"
        } else {
            ""
        }
    )
}

fn location(file: &std::path::Path, line: Option<usize>, field: Option<&str>) -> String {
    let mut out = file.display().to_string();
    if let Some(l) = line {
        out.push_str(&format!(":{l}"));
    }
    out.push_str(": ");
    if let Some(field) = field {
        out.push_str(&format!("field `{field}`: "));
    }
    out
}

fn output_text(output: &[String]) -> String {
    if output.is_empty() {
        String::new()
    } else {
        format!("; its last output:\n  {}", output.join("\n  "))
    }
}

fn join(failures: &[ImageError]) -> String {
    failures
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl ImageError {
    /// A [`ImageError::Recipe`] about `file`.
    pub(super) fn recipe(
        file: &std::path::Path,
        line: Option<usize>,
        field: &str,
        message: impl Into<String>,
    ) -> ImageError {
        ImageError::Recipe {
            file: file.to_path_buf(),
            line,
            field: Some(field.to_string()),
            message: message.into(),
        }
    }

    /// What is missing and what to do, for the errors that say something is not on this host.
    fn missing(&self) -> Option<(String, String)> {
        match self {
            ImageError::NotRoot { task } => Some(("root".into(), not_root_hint(task))),
            ImageError::NoAptSource { etc_apt } => {
                Some((no_apt_source(etc_apt), NO_APT_SOURCE_HINT.into()))
            }
            ImageError::ProgramGone { program } => {
                Some((program.to_string(), PROGRAM_GONE_HINT.into()))
            }
            _ => None,
        }
    }

    /// The bad input this error is about, as file, line, field and message, when it is one.
    fn input(&self) -> Option<(PathBuf, Option<usize>, Option<String>, String)> {
        match self {
            ImageError::Recipe {
                file,
                line,
                field,
                message,
            } => Some((file.clone(), *line, field.clone(), message.clone())),
            ImageError::RecipeYaml {
                file, line, source, ..
            } => Some((
                file.clone(),
                Some(*line),
                None,
                format!("bad image recipe: {source}"),
            )),
            ImageError::RecipeFileUnreadable {
                recipe,
                line,
                field,
                path,
                source,
            } => Some((
                recipe.clone(),
                *line,
                Some(field.to_string()),
                unreadable(field, path, source),
            )),
            ImageError::Lock {
                recipe,
                line,
                source,
            } => {
                let at = location(recipe, *line, Some("venv.lock"));
                let at = at.trim_end_matches(": ");
                Some(match source {
                    ServicesError::Lock {
                        file,
                        line,
                        message,
                    } => (
                        file.clone(),
                        Some(*line),
                        None,
                        format!("{message} (the lock of {at})"),
                    ),
                    other => (
                        recipe.clone(),
                        *line,
                        Some("venv.lock".into()),
                        other.to_string(),
                    ),
                })
            }
            ImageError::UnresolvedPackages { recipe, packages } => Some((
                recipe.clone(),
                None,
                Some("venv.packages".into()),
                format!(
                    "pip installed no {} although venv.packages asks for it",
                    packages.join(", ")
                ),
            )),
            _ => None,
        }
    }
}

impl From<ImageError> for guardlab_lab_api::LabError {
    fn from(e: ImageError) -> Self {
        use guardlab_lab_api::LabError;
        if let Some((file, line, field, message)) = e.input() {
            return LabError::Input {
                file: Some(file),
                line,
                field,
                message,
            };
        }
        if let Some((what, hint)) = e.missing() {
            return LabError::Missing { what, hint };
        }
        match e {
            ImageError::Host(host) => LabError::Host(host),
            e => LabError::backend("the pod image", e),
        }
    }
}

/// `.context(...)` on I/O results: the I/O error becomes [`ImageError::Io`] with a sentence of
/// what was being done.
pub(super) trait IoContext<T> {
    /// `what` is computed only on error: `.context(|| format!("creating {}", p.display()))`.
    fn context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T, ImageError>;
}

impl<T> IoContext<T> for Result<T, std::io::Error> {
    fn context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T, ImageError> {
        self.map_err(|source| ImageError::Io {
            context: what().into(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use guardlab_lab_api::LabError;
    use std::error::Error as _;

    #[test]
    fn recipe_and_lock_problems_become_bad_input_naming_file_line_and_field() {
        let err = ImageError::recipe(
            std::path::Path::new("/r/recipe.yaml"),
            Some(6),
            "venv.owner",
            "`bob` is neither `root` nor the recipe's user `jovyan`",
        );
        let text = err.to_string();
        let lab = LabError::from(err);
        assert!(lab.is_bad_input());
        assert_eq!(lab.to_string(), text);
        assert!(text.starts_with("/r/recipe.yaml:6: field `venv.owner`: `bob`"));

        let err = ImageError::RecipeFileUnreadable {
            recipe: "/r/recipe.yaml".into(),
            line: Some(6),
            field: "venv.lock",
            path: "/r/nope.lock".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        let text = err.to_string();
        assert!(
            text.starts_with("/r/recipe.yaml:6: field `venv.lock`: cannot read /r/nope.lock: ")
                && text.ends_with("(make it with `guardlab image lock`)"),
            "{text}"
        );
        assert_eq!(LabError::from(err).to_string(), text);

        let err = ImageError::Lock {
            recipe: "/r/recipe.yaml".into(),
            line: Some(6),
            source: ServicesError::Lock {
                file: "/r/venv.lock".into(),
                line: 3,
                message: "`six` is pinned twice (first at line 1)".into(),
            },
        };
        let text = err.to_string();
        assert_eq!(
            text,
            "/r/venv.lock:3: `six` is pinned twice (first at line 1) (the lock of \
             /r/recipe.yaml:6: field `venv.lock`)"
        );
        let lab = LabError::from(err);
        assert!(lab.is_bad_input());
        assert_eq!(lab.to_string(), text);
    }

    #[test]
    fn missing_things_host_refusals_and_the_rest_keep_their_kind() {
        let err = ImageError::NotRoot {
            task: "building the pod image (debootstrap, chroot)",
        };
        let text = err.to_string();
        let lab = LabError::from(err);
        assert!(matches!(&lab, LabError::Missing { what, .. } if what == "root"));
        assert_eq!(lab.to_string(), text);

        let err = ImageError::NoAptSource {
            etc_apt: "/etc/apt".into(),
        };
        let text = err.to_string();
        assert_eq!(LabError::from(err).to_string(), text);

        let err = ImageError::Check(CheckFailure::ForbiddenPackage {
            package: "iputils-ping".into(),
        });
        let lab = LabError::from(err);
        assert!(matches!(lab, LabError::Backend { .. }));
        assert_eq!(
            lab.source().unwrap().to_string(),
            "the image has the package `iputils-ping`, which the recipe forbids (something \
             pulled it in)"
        );
    }

    #[test]
    fn a_failed_step_names_its_command_and_quotes_its_last_lines() {
        let status = std::process::Command::new("/bin/sh")
            .args(["-c", "exit 3"])
            .status()
            .unwrap();
        let failure = StepFailed::new(
            "useradd",
            "/usr/sbin/useradd --uid 1000 jovyan".into(),
            status,
            vec!["useradd: UID 1000 is not unique".into()],
        );
        assert_eq!(
            failure.to_string(),
            "useradd failed (exit status: 3): /usr/sbin/useradd --uid 1000 jovyan; its last \
             output:\n  useradd: UID 1000 is not unique"
        );
        let err = ImageError::PinnedInstall {
            failure: Box::new(failure),
            lock: "/r/venv.lock".into(),
        };
        assert!(
            err.source().is_none(),
            "the failure is quoted once, not chained"
        );
        assert!(
            err.to_string()
                .contains("\n(the image installs exactly /r/venv.lock;")
        );
    }
}
