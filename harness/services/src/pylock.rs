//! pip requirement files with hashes ("locks"): the exact Python packages of the pod image's
//! environment and of the lab's package index, under `manifests/image/`. pip installs or
//! downloads exactly them (`--require-hashes`), so every host builds the same image and serves
//! the same wheels, whatever the package index holds by then.
//!
//! The format is pip's own, restricted to what guardlab writes: one `name==version` per
//! requirement, each with one or more `--hash=sha256:<hex>` options, lines continued with `\`,
//! `#` comments.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::ServicesError;

/// A project name in PEP 503 normal form: lowercase, runs of `-`, `_`, `.` become one `-`.
pub fn normalize_project_name(name: &str) -> String {
    let mut normalized = String::with_capacity(name.len());
    let mut in_separator_run = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !in_separator_run {
                normalized.push('-');
            }
            in_separator_run = true;
        } else {
            normalized.push(c.to_ascii_lowercase());
            in_separator_run = false;
        }
    }
    normalized
}

/// One pinned package.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pin {
    /// The name as written.
    pub name: String,
    /// PEP 503 normal form of the name.
    pub project: String,
    pub version: String,
    /// sha256 (lowercase hex) of the files that may be installed for this pin.
    pub hashes: Vec<String>,
    /// Line of the file where the pin starts.
    pub line: usize,
}

/// A lock file, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PythonLock {
    pub file: PathBuf,
    pub pins: Vec<Pin>,
    /// sha256 (hex) of the file's bytes: what caches of its downloads are keyed by.
    pub sha256: String,
}

impl PythonLock {
    /// Reads and parses `file`.
    pub fn read(file: &Path) -> Result<PythonLock, ServicesError> {
        let lock_error = |line, message: String| ServicesError::Lock {
            file: file.to_path_buf(),
            line,
            message,
        };
        let text = match guardlab_input::read_text(file, guardlab_input::MaxBytes::LOCK) {
            Ok(text) => text,
            Err(guardlab_input::FileError::Io { source, .. }) => {
                return Err(ServicesError::file("read", file, source));
            }
            Err(guardlab_input::FileError::NotUtf8 { line, column, .. }) => {
                return Err(lock_error(line, format!("column {column}: not UTF-8")));
            }
            // A lock of pins is a few hundred lines: a file this big is not one.
            Err(other) => return Err(lock_error(1, other.to_string())),
        };
        PythonLock::parse(file, &text)
    }

    /// Parses the text of `file`; an error names the file, the line and what is wrong.
    pub fn parse(file: &Path, text: &str) -> Result<PythonLock, ServicesError> {
        let err = |line: usize, message: String| ServicesError::Lock {
            file: file.to_path_buf(),
            line,
            message,
        };
        let mut pins: Vec<Pin> = Vec::new();
        let mut logical = String::new();
        let mut start = 0;
        let lines: Vec<&str> = text.lines().collect();
        for (i, raw) in lines.iter().enumerate() {
            let number = i + 1;
            let content = match raw.find('#') {
                // `#` starts a comment at the start of a line or after whitespace (pip's rule).
                Some(at) if at == 0 || raw[..at].ends_with(char::is_whitespace) => &raw[..at],
                _ => raw,
            };
            if logical.is_empty() {
                start = number;
            }
            let (content, continued) = match content.trim_end().strip_suffix('\\') {
                Some(c) => (c, true),
                None => (content, false),
            };
            logical.push_str(content);
            logical.push(' ');
            if continued && number < lines.len() {
                continue;
            }
            let words: Vec<&str> = logical.split_whitespace().collect();
            if !words.is_empty() {
                let pin = parse_pin(&words, start).map_err(|m| err(start, m))?;
                if let Some(first) = pins.iter().find(|p| p.project == pin.project) {
                    return Err(err(
                        start,
                        format!(
                            "`{}` is pinned twice (first at line {})",
                            pin.name, first.line
                        ),
                    ));
                }
                pins.push(pin);
            }
            logical.clear();
        }
        if pins.is_empty() {
            return Err(err(1, "no pinned package: the lock is empty".into()));
        }
        Ok(PythonLock {
            file: file.to_path_buf(),
            pins,
            sha256: hex::encode(Sha256::digest(text.as_bytes())),
        })
    }

    /// The pin of a project (any spelling of its name).
    pub fn pin(&self, name: &str) -> Option<&Pin> {
        let project = normalize_project_name(name);
        self.pins.iter().find(|p| p.project == project)
    }

    /// The lock's text: `header` as `#` lines, then the pins sorted by project, each hash on a
    /// continuation line (the layout pip-tools writes, so diffs stay one line per change).
    pub fn render(header: &str, pins: &[Pin]) -> String {
        let mut sorted: Vec<&Pin> = pins.iter().collect();
        sorted.sort_by(|a, b| a.project.cmp(&b.project));
        let mut out = String::new();
        for line in header.lines() {
            if line.is_empty() {
                out.push_str("#\n");
            } else {
                let _ = writeln!(out, "# {line}");
            }
        }
        for pin in sorted {
            let mut hashes = pin.hashes.clone();
            hashes.sort();
            hashes.dedup();
            let _ = write!(out, "{}=={}", pin.name, pin.version);
            for h in hashes {
                let _ = write!(out, " \\\n    --hash=sha256:{h}");
            }
            out.push('\n');
        }
        out
    }
}

fn parse_pin(words: &[&str], line: usize) -> Result<Pin, String> {
    let requirement = words[0];
    let (name, version) = requirement.split_once("==").ok_or_else(|| {
        format!("`{requirement}` is not pinned: a lock has only `name==version` requirements")
    })?;
    let name_ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !name_ok {
        return Err(format!("`{name}` is not a package name"));
    }
    let version_ok = !version.is_empty()
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '!' | '-' | '_'));
    if !version_ok {
        return Err(format!("`{version}` is not an exact version of `{name}`"));
    }
    let mut hashes = Vec::new();
    for option in &words[1..] {
        let hash = option
            .strip_prefix("--hash=sha256:")
            .ok_or_else(|| format!("`{option}`: only `--hash=sha256:<hex>` options are allowed"))?;
        if hash.len() != 64
            || !hash
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        {
            return Err(format!(
                "`{option}` is not a sha256 (64 lowercase hex digits)"
            ));
        }
        hashes.push(hash.to_string());
    }
    if hashes.is_empty() {
        return Err(format!(
            "`{requirement}` has no `--hash=sha256:...`: every pin carries the hashes of its files"
        ));
    }
    Ok(Pin {
        name: name.to_string(),
        project: normalize_project_name(name),
        version: version.to_string(),
        hashes,
        line,
    })
}

/// The pin of a downloaded distribution file (a wheel, or an sdist `name-version.tar.gz`):
/// name and version from its file name, sha256 of its bytes.
pub fn pin_of_file(path: &Path) -> Result<Pin, ServicesError> {
    let bad = |detail: &str| ServicesError::BadWheel {
        path: path.to_path_buf(),
        detail: detail.to_string(),
    };
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| bad("the file name is not UTF-8"))?;
    let (name, version) = if let Some(stem) = file_name.strip_suffix(".whl") {
        let mut parts = stem.split('-');
        match (parts.next(), parts.next()) {
            (Some(n), Some(v)) if !n.is_empty() && !v.is_empty() => (n, v),
            _ => return Err(bad("not a wheel file name")),
        }
    } else if let Some(stem) = file_name
        .strip_suffix(".tar.gz")
        .or_else(|| file_name.strip_suffix(".zip"))
    {
        // The version is what follows the last `-` (sdist names use `_` inside names).
        stem.rsplit_once('-')
            .filter(|(n, v)| !n.is_empty() && !v.is_empty())
            .ok_or_else(|| bad("not an sdist file name (name-version.tar.gz)"))?
    } else {
        return Err(bad("neither a wheel nor an sdist"));
    };
    let bytes = std::fs::read(path).map_err(|e| ServicesError::file("read", path, e))?;
    Ok(Pin {
        name: name.to_string(),
        project: normalize_project_name(name),
        version: version.to_string(),
        hashes: vec![hex::encode(Sha256::digest(&bytes))],
        line: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn project_names_are_normalized_per_pep_503() {
        assert_eq!(
            normalize_project_name("Foo.Bar__baz-_-qux"),
            "foo-bar-baz-qux"
        );
        assert_eq!(normalize_project_name("setuptools"), "setuptools");
    }

    #[test]
    fn pins_are_read_with_continuations_comments_and_lines() {
        let text = format!(
            "# header\n\nJinja2==3.1.6 \\\n    --hash=sha256:{A} \\\n    --hash=sha256:{B}  # two files\n\
             pip==26.3 --hash=sha256:{B}\n"
        );
        let lock = PythonLock::parse(Path::new("x.lock"), &text).unwrap();
        assert_eq!(lock.pins.len(), 2);
        assert_eq!(lock.pins[0].project, "jinja2");
        assert_eq!(lock.pins[0].version, "3.1.6");
        assert_eq!(lock.pins[0].hashes, [A, B]);
        assert_eq!(lock.pins[0].line, 3);
        assert_eq!(lock.pins[1].line, 6);
        assert_eq!(lock.pin("JINJA2").unwrap().name, "Jinja2");
        assert!(lock.pin("wheel").is_none());
        assert_eq!(lock.sha256.len(), 64);
    }

    #[test]
    fn render_then_parse_gives_the_same_pins_sorted() {
        let pins = vec![
            Pin {
                name: "wheel".into(),
                project: "wheel".into(),
                version: "0.48.0".into(),
                hashes: vec![B.into(), A.into(), B.into()],
                line: 0,
            },
            Pin {
                name: "Pip".into(),
                project: "pip".into(),
                version: "26.3".into(),
                hashes: vec![A.into()],
                line: 0,
            },
        ];
        let text = PythonLock::render("made by a test\n\nsecond line", &pins);
        assert!(
            text.starts_with("# made by a test\n#\n# second line\nPip==26.3 \\\n"),
            "{text}"
        );
        let lock = PythonLock::parse(Path::new("x.lock"), &text).unwrap();
        let got: Vec<(&str, &str, usize)> = lock
            .pins
            .iter()
            .map(|p| (p.project.as_str(), p.version.as_str(), p.hashes.len()))
            .collect();
        assert_eq!(got, [("pip", "26.3", 1), ("wheel", "0.48.0", 2)]);
    }

    #[test]
    fn bad_locks_are_refused_naming_the_line() {
        for (text, line, words) in [
            (format!("pip>=26 --hash=sha256:{A}\n"), 1, "not pinned"),
            ("# only\npip==26.3\n".to_string(), 2, "no `--hash"),
            (
                format!("pip==26.3 --hash=md5:{A}\n"),
                1,
                "only `--hash=sha256",
            ),
            (
                "pip==26.3 --hash=sha256:abc\n".to_string(),
                1,
                "not a sha256",
            ),
            (
                format!("pip==26.3 --hash=sha256:{A}\n\nPIP==26.2 --hash=sha256:{B}\n"),
                3,
                "pinned twice (first at line 1)",
            ),
            ("# nothing\n".to_string(), 1, "empty"),
            (format!("p ip==1 --hash=sha256:{A}\n"), 1, "not pinned"),
        ] {
            let err = PythonLock::parse(Path::new("m/x.lock"), &text)
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(&format!("m/x.lock:{line}: ")) && err.contains(words),
                "{text:?}: {err}"
            );
        }
    }

    #[test]
    fn downloaded_files_give_their_pins() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = dir.path().join("jupyter_server-2.21.1-py3-none-any.whl");
        std::fs::write(&wheel, b"w").unwrap();
        let sdist = dir.path().join("pandoc_filters-1.5.1.tar.gz");
        std::fs::write(&sdist, b"s").unwrap();
        let w = pin_of_file(&wheel).unwrap();
        assert_eq!(
            (w.project.as_str(), w.version.as_str()),
            ("jupyter-server", "2.21.1")
        );
        assert_eq!(w.hashes, [hex::encode(Sha256::digest(b"w"))]);
        let s = pin_of_file(&sdist).unwrap();
        assert_eq!(
            (s.project.as_str(), s.version.as_str()),
            ("pandoc-filters", "1.5.1")
        );
        assert!(pin_of_file(&dir.path().join("notes.txt")).is_err());
    }

    #[test]
    fn a_lock_that_is_too_big_or_not_utf8_is_refused_with_its_place() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.lock");
        std::fs::write(
            &bad,
            format!("pip==26.3 --hash=sha256:{A}\n# \u{e9}\u{e9}")
                .as_bytes()
                .iter()
                .copied()
                .chain([0xff])
                .collect::<Vec<_>>(),
        )
        .unwrap();
        let err = PythonLock::read(&bad).unwrap_err().to_string();
        assert!(err.ends_with("bad.lock:2: column 5: not UTF-8"), "{err}");
        let big = dir.path().join("big.lock");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(1 << 30)
            .unwrap();
        let err = PythonLock::read(&big).unwrap_err().to_string();
        assert!(err.contains("1 GiB is more than the 4 MiB"), "{err}");
    }
}
