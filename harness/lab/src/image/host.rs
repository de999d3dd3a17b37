//! What the image build borrows from the host's own configuration: its Debian mirror and suite
//! (apt sources) and how it reaches the Python package index (pip configuration, CA bundle,
//! proxies). Nothing here names a registry: it is all read at build time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::image_bridge::LegacyImageError as LabError; // Bridge: image errors

/// A `deb` source of the host's apt configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AptSource {
    pub uri: String,
    pub suite: String,
    pub components: Vec<String>,
    /// The keyring file that signs it, when the source names one.
    pub keyring: Option<PathBuf>,
    /// Where it was read, for messages.
    pub origin: String,
}

/// The host's Debian source to debootstrap `suite` from: the first `deb` source of that suite,
/// else the first whose suite is a release (no `-updates`, `-security`, `-backports`: a main
/// archive, which carries the other releases too), else the first `deb` source. The suite of
/// the result is always `suite`; a mirror that lacks it makes debootstrap fail, and the build
/// then says so.
pub fn host_apt_source(etc_apt: &Path, suite: &str) -> Result<AptSource, LabError> {
    let mut sources = Vec::new();
    let list = etc_apt.join("sources.list");
    if let Ok(text) = std::fs::read_to_string(&list) {
        sources.extend(parse_one_line_style(&text, &list));
    }
    let dir = etc_apt.join("sources.list.d");
    let mut entries: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(_) => Vec::new(),
    };
    entries.sort();
    for path in entries {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        match path.extension().and_then(|e| e.to_str()) {
            Some("sources") => sources.extend(parse_deb822(&text, &path)),
            Some("list") => sources.extend(parse_one_line_style(&text, &path)),
            _ => {}
        }
    }
    let is_release = |s: &AptSource| !s.suite.contains(['-', '/']);
    let chosen = sources
        .iter()
        .find(|s| s.suite == suite)
        .or_else(|| sources.iter().find(|s| is_release(s)))
        .or(sources.first())
        .cloned()
        .map(|mut s| {
            if s.suite != suite {
                // Its keyring signs its own release; debootstrap's default keyring (Debian's
                // archive keys) signs `suite`.
                s.keyring = None;
                s.origin = format!("{}, asked for {suite} instead of {}", s.origin, s.suite);
                s.suite = suite.to_string();
            }
            s
        });
    chosen.ok_or_else(|| LabError::Missing {
        what: format!(
            "a `deb` source in the host's apt configuration ({})",
            etc_apt.display()
        ),
        hint: "the pod image is built with debootstrap from the host's Debian mirror; configure \
               apt (sources.list or sources.list.d/*.sources) first"
            .into(),
    })
}

fn parse_one_line_style(text: &str, path: &Path) -> Vec<AptSource> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(rest) = line
            .strip_prefix("deb ")
            .or_else(|| line.strip_prefix("deb\t"))
        else {
            continue;
        };
        let mut rest = rest.trim_start();
        let mut keyring = None;
        if let Some(opts) = rest.strip_prefix('[') {
            let Some(end) = opts.find(']') else { continue };
            for opt in opts[..end].split_whitespace() {
                if let Some(k) = opt.strip_prefix("signed-by=") {
                    keyring = Some(PathBuf::from(k));
                }
            }
            rest = opts[end + 1..].trim_start();
        }
        let mut words = rest.split_whitespace();
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            continue;
        };
        out.push(AptSource {
            uri: uri.to_string(),
            suite: suite.to_string(),
            components: words.map(str::to_string).collect(),
            keyring: keyring.filter(|k| k.is_absolute()),
            origin: format!("{}:{}", path.display(), i + 1),
        });
    }
    out
}

fn parse_deb822(text: &str, path: &Path) -> Vec<AptSource> {
    let mut out = Vec::new();
    // Paragraphs are separated by blank lines; continuation lines start with white space.
    let mut fields: BTreeMap<String, String> = BTreeMap::new();
    let mut last: Option<String> = None;
    let mut start_line = 1;
    let mut flush = |fields: &mut BTreeMap<String, String>, start_line: usize| {
        if fields.is_empty() {
            return;
        }
        let get = |k: &str| {
            fields
                .get(&k.to_ascii_lowercase())
                .map(|s| s.trim().to_string())
        };
        let enabled = get("Enabled").is_none_or(|v| v.eq_ignore_ascii_case("yes"));
        let types = get("Types").unwrap_or_default();
        if enabled && types.split_whitespace().any(|t| t == "deb") {
            let uris = get("URIs").unwrap_or_default();
            let suites = get("Suites").unwrap_or_default();
            let components: Vec<String> = get("Components")
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_string)
                .collect();
            // Signed-By is either a file or an inline key block: only a file can be given to
            // debootstrap.
            let keyring = get("Signed-By")
                .filter(|v| !v.contains('\n') && v.starts_with('/'))
                .map(PathBuf::from);
            for uri in uris.split_whitespace() {
                for suite in suites.split_whitespace() {
                    out.push(AptSource {
                        uri: uri.to_string(),
                        suite: suite.to_string(),
                        components: components.clone(),
                        keyring: keyring.clone(),
                        origin: format!("{}:{}", path.display(), start_line),
                    });
                }
            }
        }
        fields.clear();
    };
    for (i, line) in text.lines().enumerate() {
        if line.starts_with('#') {
            continue;
        }
        if line.trim().is_empty() {
            flush(&mut fields, start_line);
            last = None;
            continue;
        }
        if fields.is_empty() && last.is_none() {
            start_line = i + 1;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(k) = &last {
                let v = fields.entry(k.clone()).or_default();
                v.push('\n');
                v.push_str(line.trim());
            }
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            let k = k.trim().to_ascii_lowercase();
            fields.insert(k.clone(), v.trim().to_string());
            last = Some(k);
        }
    }
    flush(&mut fields, start_line);
    out
}

/// The host's pip configuration, merged from its files and `PIP_*` environment, ready to be
/// replayed inside the image's chroot. Paths to host files (CA bundles, local wheel directories)
/// are collected so that the build can copy or bind-mount them in and rewrite the values.
#[derive(Clone, Debug, Default)]
pub struct HostPipConfig {
    /// `(section, key) -> value`, later files winning, as pip does.
    pub file_settings: BTreeMap<(String, String), String>,
    /// `PIP_*` variables and proxy variables from the environment.
    pub env: BTreeMap<String, String>,
    /// The files that were read, for the progress display.
    pub files_read: Vec<PathBuf>,
}

/// pip settings that name a file on the host (copied into the chroot).
pub const FILE_KEYS: &[&str] = &["cert", "client-cert"];
/// pip settings that may name local directories on the host (bind-mounted into the chroot).
pub const DIR_LIST_KEYS: &[&str] = &["find-links"];
/// Environment variables that are not pip's but that Python's HTTPS stack or pip honour.
const FORWARDED_ENV: &[&str] = &[
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "REQUESTS_CA_BUNDLE",
    "SSL_CERT_FILE",
];
/// `PIP_*` variables that would change where or how the build installs, not how it downloads.
const IGNORED_PIP_ENV: &[&str] = &[
    "PIP_CONFIG_FILE",
    "PIP_CACHE_DIR",
    "PIP_TARGET",
    "PIP_PREFIX",
    "PIP_ROOT",
    "PIP_USER",
    "PIP_REQUIRE_VIRTUALENV",
    "PIP_BREAK_SYSTEM_PACKAGES",
    "PIP_SRC",
    "PIP_LOG",
];

/// Reads the host's pip configuration the way pip finds it: global files, user files, then the
/// file named by `PIP_CONFIG_FILE`, then the environment.
pub fn host_pip_config(env: &BTreeMap<String, String>) -> HostPipConfig {
    let mut files: Vec<PathBuf> = Vec::new();
    let xdg_dirs = env
        .get("XDG_CONFIG_DIRS")
        .cloned()
        .unwrap_or_else(|| "/etc/xdg".into());
    for d in xdg_dirs.split(':').filter(|d| !d.is_empty()) {
        files.push(Path::new(d).join("pip/pip.conf"));
    }
    files.push(PathBuf::from("/etc/pip.conf"));
    if let Some(home) = env.get("HOME") {
        files.push(Path::new(home).join(".pip/pip.conf"));
        let xdg_home = env
            .get("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(home).join(".config"));
        files.push(xdg_home.join("pip/pip.conf"));
    }
    if let Some(f) = env.get("PIP_CONFIG_FILE")
        && f != "/dev/null"
    {
        files.push(PathBuf::from(f));
    }
    let mut config = HostPipConfig::default();
    for f in files {
        if let Ok(text) = std::fs::read_to_string(&f) {
            for (section, key, value) in parse_ini(&text) {
                config.file_settings.insert((section, key), value);
            }
            config.files_read.push(f);
        }
    }
    for (k, v) in env {
        let pip = k.starts_with("PIP_") && !IGNORED_PIP_ENV.contains(&k.as_str());
        if pip || FORWARDED_ENV.contains(&k.as_str()) {
            config.env.insert(k.clone(), v.clone());
        }
    }
    config
}

/// pip's configuration files are INI files: `[section]`, `key = value` (or `key: value`),
/// continuation lines indented, `#` and `;` comments.
fn parse_ini(text: &str) -> Vec<(String, String, String)> {
    let mut out: Vec<(String, String, String)> = Vec::new();
    let mut section = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with(['#', ';']) {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                if !last.2.is_empty() {
                    last.2.push('\n');
                }
                last.2.push_str(trimmed);
            }
            continue;
        }
        if let Some(name) = trimmed.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            section = name.trim().to_string();
            continue;
        }
        let split = trimmed.find(['=', ':']);
        if let Some(i) = split {
            let key = trimmed[..i].trim().to_ascii_lowercase().replace('_', "-");
            out.push((section.clone(), key, trimmed[i + 1..].trim().to_string()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb822_sources_give_the_release_suite_first() {
        let text = "Types: deb\n# comment\nURIs: http://mirror.invalid/debian\nSuites: bookworm bookworm-updates\nComponents: main contrib\nSigned-By: /usr/share/keyrings/k.gpg\n\nTypes: deb\nURIs: http://mirror.invalid/debian-security\nSuites: bookworm-security\nComponents: main\n";
        let dir = std::env::temp_dir().join(format!("guardlab-apt-unit-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sources.list.d")).unwrap();
        std::fs::write(dir.join("sources.list.d/debian.sources"), text).unwrap();
        let s = host_apt_source(&dir, "bookworm").unwrap();
        assert_eq!(s.uri, "http://mirror.invalid/debian");
        assert_eq!(s.suite, "bookworm");
        assert_eq!(s.components, vec!["main", "contrib"]);
        assert_eq!(s.keyring, Some(PathBuf::from("/usr/share/keyrings/k.gpg")));
        assert!(s.origin.ends_with("debian.sources:1"), "{}", s.origin);

        // A host of another release: its main archive, asked for the pinned suite, with
        // debootstrap's own keyring instead of the host release's.
        let s = host_apt_source(&dir, "trixie").unwrap();
        assert_eq!(s.uri, "http://mirror.invalid/debian");
        assert_eq!(s.suite, "trixie");
        assert_eq!(s.keyring, None);
        assert!(
            s.origin.contains("asked for trixie instead of bookworm"),
            "{}",
            s.origin
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn one_line_sources_are_read_with_their_options() {
        let v = parse_one_line_style(
            "# x\ndeb-src http://a.invalid/d sid main\ndeb [arch=amd64 signed-by=/k.gpg] http://a.invalid/d trixie main\n",
            Path::new("/etc/apt/sources.list"),
        );
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].suite, "trixie");
        assert_eq!(v[0].keyring, Some(PathBuf::from("/k.gpg")));
        assert_eq!(v[0].origin, "/etc/apt/sources.list:3");
    }

    #[test]
    fn no_source_is_a_clear_error() {
        let err = host_apt_source(Path::new("/nonexistent-guardlab"), "bookworm").unwrap_err();
        assert!(err.to_string().contains("apt"), "{err}");
    }

    #[test]
    fn pip_ini_and_environment_are_merged() {
        let v = parse_ini(
            "[global]\ncert = /c.crt\nfind_links =\n   /a\n   /b\n; c\n[install]\nno-binary: x\n",
        );
        assert_eq!(
            v,
            vec![
                ("global".into(), "cert".into(), "/c.crt".into()),
                ("global".into(), "find-links".into(), "/a\n/b".into()),
                ("install".into(), "no-binary".into(), "x".into()),
            ]
        );
        let env: BTreeMap<String, String> = [
            ("PIP_CERT", "/c.crt"),
            ("PIP_TARGET", "/x"),
            ("HOME", "/nonexistent-guardlab"),
            ("https_proxy", "http://p.invalid:3128"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let c = host_pip_config(&env);
        assert_eq!(c.env.get("PIP_CERT").map(String::as_str), Some("/c.crt"));
        assert!(!c.env.contains_key("PIP_TARGET"));
        assert!(c.env.contains_key("https_proxy"));
    }
}
