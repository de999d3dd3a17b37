//! spyctl, the reference implementation of guardlab's file formats, as a judge in the tests
//! (`tests/spyctl_*.rs`).
//!
//! The spyctl that runs is pinned with all its dependencies by version and sha256 in
//! `tests/spyctl/spyctl.lock` (remake it with `cargo run -p guardlab --example spyctl_lock`). It
//! is installed once into a venv under `$XDG_CACHE_HOME/guardlab/` (else `~/.cache/guardlab/`),
//! with the host's python3 (installed through apt when missing, saying so) and the host's pip
//! configuration, keyed by the lock's hash.
//!
//! spyctl reads and writes its home: `~/.spyctl/config` and `~/.spyctl/.secrets/secrets` (made
//! when missing), and `~/.spyctl/.v_check_cache`, the time of its last look at the package index
//! for a newer spyctl (it looks when the file is missing, empty, unreadable, in the future or
//! older than four hours, and rewrites it on every run). So every run gets a home of its own,
//! prepared so that spyctl has no reason to go online: a config whose one context names a secret
//! that does not exist (merges need a current context; anything that would call the Spyderbat API
//! stops at the missing secret), and a version-check time of now. Its proxies point at a closed
//! port on loopback, so a look that happens anyway fails loudly instead of reaching out. Its
//! working directory is a sibling of that home: spyctl looks for `.spyctl/config` in every
//! directory above the working directory too.
#![allow(dead_code)]

pub mod documents;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use guardlab_services::PythonLock;

/// Where a proxy would be: a closed port on loopback (discard), so that a request fails at once.
const NO_PROXY_HERE: &str = "http://127.0.0.1:9";

/// The config spyctl finds in its home: one context, offline.
const OFFLINE_CONFIG: &str = "apiVersion: spyderbat/v1
kind: Config
contexts:
- name: guardlab-offline
  secret: guardlab-no-such-secret
  context:
    organization: guardlab-offline
current-context: guardlab-offline
";

pub fn lock_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/spyctl/spyctl.lock")
}

fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .expect("neither XDG_CACHE_HOME nor HOME is set")
        .join("guardlab")
}

/// The venv with the pinned spyctl, made once (`.complete` marks a finished one; a venv cannot
/// be moved, so an unfinished one is removed and made again).
fn venv() -> &'static Path {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| {
        let lock = PythonLock::read(&lock_file()).unwrap_or_else(|e| panic!("{e}"));
        let key = &lock.sha256[..12];
        let cache = cache_dir();
        std::fs::create_dir_all(&cache).unwrap();
        let dir = cache.join(format!("spyctl-test-venv-{key}"));
        let guard = std::fs::File::create(cache.join(format!(".spyctl-test-venv-{key}.lock")))
            .expect("creating the venv's lock file");
        guard.lock().expect("locking the spyctl venv");
        if dir.join(".complete").is_file() {
            return dir;
        }
        let _ = std::fs::remove_dir_all(&dir);
        use guardlab_host::catalog::{PYTHON3, VENV};
        guardlab_host::Host::new(false)
            .ensure(&[&PYTHON3, &VENV], &guardlab_host::StderrProgress)
            .unwrap_or_else(|e| panic!("the spyctl oracle runs spyctl in a venv: {e}"));
        eprintln!(
            "making the spyctl venv {} from {} (once)",
            dir.display(),
            lock_file().display()
        );
        let status = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&dir)
            .status()
            .expect("python3 is needed for the spyctl oracle");
        assert!(status.success(), "python3 -m venv {} failed", dir.display());
        let status = Command::new(dir.join("bin/python"))
            .args([
                "-m",
                "pip",
                "install",
                "--no-input",
                "--progress-bar",
                "off",
                "--disable-pip-version-check",
                "--require-hashes",
                "--no-deps",
                "--only-binary=:all:",
                "--requirement",
            ])
            .arg(lock_file())
            .status()
            .unwrap();
        assert!(
            status.success(),
            "pip install --require-hashes -r {} failed: the lock has wheels for the CPython \
             versions its header names (see `python3 --version`), and pip uses the host's pip \
             configuration to reach the package index",
            lock_file().display()
        );
        std::fs::write(dir.join(".complete"), "").unwrap();
        dir
    })
}

/// spyctl's verdict on a file, read from what it printed: `spyctl validate` exits 0 also when
/// the document is invalid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// `<Kind> valid!` (or `List of objects valid!`).
    Valid,
    /// spyctl's reasons, without colours.
    Invalid(String),
}

impl Verdict {
    pub fn is_valid(&self) -> bool {
        *self == Verdict::Valid
    }
}

/// What one spyctl run printed and how it ended.
pub struct Run {
    pub args: Vec<String>,
    pub code: Option<i32>,
    pub stdout: String,
    /// Without colours.
    pub stderr: String,
}

impl Run {
    fn from_output(args: &[&str], output: Output) -> Run {
        Run {
            args: args.iter().map(|a| a.to_string()).collect(),
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: strip_colours(&String::from_utf8_lossy(&output.stderr)),
        }
    }

    fn describe(&self) -> String {
        format!(
            "spyctl {} exited {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.args.join(" "),
            self.code,
            self.stdout,
            self.stderr
        )
    }

    /// The run's YAML output; panics (with what spyctl said) unless it succeeded.
    pub fn yaml(&self) -> serde_yaml::Value {
        assert_eq!(self.code, Some(0), "{}", self.describe());
        serde_yaml::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("spyctl printed no YAML ({e}): {}", self.describe()))
    }
}

/// spyctl colours its messages with ANSI escapes (`ESC [ ... m`).
fn strip_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Runs the pinned spyctl with `args` in a home of its own (see the module's documentation).
pub fn run(args: &[&str]) -> Run {
    let venv = venv();
    let scratch = tempfile::tempdir().expect("a temporary directory for spyctl");
    let home = scratch.path().join("home");
    let cwd = scratch.path().join("cwd");
    std::fs::create_dir_all(home.join(".spyctl/.secrets")).unwrap();
    std::fs::create_dir_all(&cwd).unwrap();
    std::fs::write(home.join(".spyctl/config"), OFFLINE_CONFIG).unwrap();
    std::fs::write(home.join(".spyctl/.secrets/secrets"), "").unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs_f64();
    std::fs::write(home.join(".spyctl/.v_check_cache"), format!("{now}")).unwrap();
    let output = Command::new(venv.join("bin/spyctl"))
        .args(args)
        .current_dir(&cwd)
        .env_clear()
        .env("HOME", &home)
        .env(
            "PATH",
            format!(
                "{}:/usr/local/bin:/usr/bin:/bin",
                venv.join("bin").display()
            ),
        )
        .env("LANG", "C.UTF-8")
        .env("HTTP_PROXY", NO_PROXY_HERE)
        .env("HTTPS_PROXY", NO_PROXY_HERE)
        .env("ALL_PROXY", NO_PROXY_HERE)
        .env("http_proxy", NO_PROXY_HERE)
        .env("https_proxy", NO_PROXY_HERE)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("running spyctl");
    let run = Run::from_output(args, output);
    // The prepared home must have kept spyctl offline: it rewrites the time of its version
    // check on every run, and it never needs a secret for what the tests ask of it.
    assert!(
        !run.stderr.contains("127.0.0.1"),
        "spyctl tried to go online: {}",
        run.describe()
    );
    run
}

/// `spyctl validate -f FILE`, read into a verdict.
pub fn validate(file: &Path) -> Verdict {
    let file = file.to_str().expect("a UTF-8 path");
    let run = run(&["validate", "--no-colorize", "-f", file]);
    let out = format!("{}{}", run.stdout, run.stderr);
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    if run.stderr.contains("Traceback (most recent call last)") {
        // spyctl 0.24.2 validates a `{apiVersion, items: [...]}` file and then looks up its
        // `kind` to print "<kind> valid!": a KeyError there comes after the validation passed
        // (an invalid list stops earlier, at "Invalid object ... See error logs.").
        let after_validation = run.stderr.contains("in handle_validate")
            && run.stderr.trim_end().ends_with("KeyError: 'kind'");
        assert!(after_validation, "spyctl crashed: {}", run.describe());
        return Verdict::Valid;
    }
    let valid_line = lines.iter().any(|l| l.ends_with(" valid!"));
    let invalid = lines.iter().any(|l| {
        l.starts_with("Invalid object in")
            || l.starts_with("Error:")
            || l.starts_with("Resource file does not contain")
    });
    match (run.code, valid_line, invalid) {
        (Some(0), true, false) => Verdict::Valid,
        (Some(0 | 1), _, true) => Verdict::Invalid(out.trim().to_string()),
        _ => panic!("spyctl gave no verdict: {}", run.describe()),
    }
}

/// [`validate`] on many files, a few at a time (each run starts a Python interpreter).
pub fn validate_all(files: &[PathBuf]) -> Vec<Verdict> {
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .min(8);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let verdicts: Vec<std::sync::Mutex<Option<Verdict>>> =
        files.iter().map(|_| std::sync::Mutex::new(None)).collect();
    venv();
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(file) = files.get(i) else { break };
                    *verdicts[i].lock().unwrap() = Some(validate(file));
                }
            });
        }
    });
    verdicts
        .into_iter()
        .map(|v| v.into_inner().unwrap().expect("every file was judged"))
        .collect()
}

/// `spyctl create policy -f FILE -n NAME -o yaml`: the policy spyctl makes.
pub fn create_policy(from: &Path, name: &str) -> serde_yaml::Value {
    let from = from.to_str().expect("a UTF-8 path");
    run(&[
        "create",
        "policy",
        "--no-colorize",
        "-f",
        from,
        "-n",
        name,
        "-o",
        "yaml",
    ])
    .yaml()
}

/// `spyctl merge -f POLICY -w WITH -o yaml -y`: the policy grown by one file (spyctl takes one
/// `--with-file`; a file of several documents is a list of them).
pub fn merge(policy: &Path, with: &Path) -> serde_yaml::Value {
    let policy = policy.to_str().expect("a UTF-8 path");
    let with = with.to_str().expect("a UTF-8 path");
    run(&[
        "merge",
        "--no-colorize",
        "-f",
        policy,
        "-w",
        with,
        "-o",
        "yaml",
        "-y",
    ])
    .yaml()
}

/// Each document of a YAML stream (`---`-separated) in a file of its own under `dir`, named
/// `<stem>-<n>.yaml`, byte for byte as written; each item of spyctl's list form (`items:`, as
/// guardlab writes several documents) in a file of its own too: spyctl reads one document per
/// file.
pub fn split_documents(text: &str, dir: &Path, stem: &str) -> Vec<PathBuf> {
    let mut chunks = vec![String::new()];
    for line in text.split_inclusive('\n') {
        if line.trim_end() == "---" {
            chunks.push(String::new());
        } else {
            chunks
                .last_mut()
                .expect("one chunk at least")
                .push_str(line);
        }
    }
    let mut files = Vec::new();
    for chunk in chunks.iter().filter(|c| !c.trim().is_empty()) {
        let value: serde_yaml::Value = serde_yaml::from_str(chunk).unwrap();
        let items = value
            .get("items")
            .filter(|_| value.get("kind").is_none())
            .and_then(|items| items.as_sequence());
        let texts = match items {
            Some(items) => items
                .iter()
                .map(|item| serde_yaml::to_string(item).unwrap())
                .collect(),
            None => vec![chunk.clone()],
        };
        for text in texts {
            let path = dir.join(format!("{stem}-{:02}.yaml", files.len()));
            std::fs::write(&path, text).unwrap();
            files.push(path);
        }
    }
    files
}
