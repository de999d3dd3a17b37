//! The image recipe (`manifests/image/recipe.yaml`): parsing, checking and hashing.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use guardlab_input::{FileError, MaxBytes, YamlLimits};
use guardlab_services::PythonLock;

use super::error::{ImageError, IoContext};

/// The recipe's file name inside the recipe directory.
pub const RECIPE_FILE: &str = "recipe.yaml";

/// Bumped when the way an image is built changes, so that images built by an older harness are
/// not reused (it is part of the hash).
const BUILDER_VERSION: &str = "guardlab-image-builder/1";

/// A parsed, checked recipe.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// The image name the pod reports, e.g. `jupyter/minimal-notebook:latest`.
    pub image: String,
    pub debian: DebianSpec,
    pub user: UserSpec,
    pub venv: VenvSpec,
    #[serde(default)]
    pub files: Vec<FileSpec>,
    pub config: ConfigSpec,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebianSpec {
    /// The Debian suite, by name (`bookworm`): the image is pinned to it whatever the host runs.
    pub suite: SuiteName,
    #[serde(default = "default_variant")]
    pub variant: DebootstrapVariant,
    pub packages: Vec<PackageName>,
    #[serde(default)]
    pub forbidden_packages: Vec<PackageName>,
    #[serde(default)]
    pub forbidden_commands: Vec<CommandName>,
}

fn default_variant() -> DebootstrapVariant {
    DebootstrapVariant("minbase".into())
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserSpec {
    pub name: AccountName,
    pub uid: u32,
    pub group: AccountName,
    pub gid: u32,
    pub home: AbsolutePath,
    pub shell: AbsolutePath,
    #[serde(default)]
    pub home_dirs: Vec<RelativeName>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VenvSpec {
    pub path: AbsolutePath,
    /// The account that owns the environment (the recipe's user), or `root`.
    pub owner: AccountName,
    /// pip requirement specifiers, e.g. `jupyter-server>=2.14,<3`: what `guardlab image lock`
    /// resolves into the lock.
    pub packages: Vec<Requirement>,
    /// The lock file (relative to the recipe directory): exact versions and hashes of every
    /// package of the environment. The build installs exactly it.
    pub lock: RelativeName,
    /// Python modules that must import with the environment's python after the build.
    #[serde(default)]
    pub check_imports: Vec<ModuleName>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// Relative to the recipe directory.
    pub source: RelativeName,
    /// Where it goes in the image.
    pub target: AbsolutePath,
    pub mode: FileMode,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigSpec {
    pub working_dir: AbsolutePath,
    #[serde(default)]
    pub env: BTreeMap<EnvName, String>,
}

/// Defines a string newtype that is checked while it is deserialized, so that a bad value is
/// reported by serde_yaml with its line and column.
macro_rules! checked_string {
    ($(#[$meta:meta])* $name:ident, $check:expr) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
        #[serde(try_from = "String")]
        pub struct $name(pub String);

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(value: String) -> Result<Self, String> {
                let check: fn(&str) -> Result<(), String> = $check;
                check(&value)?;
                Ok(Self(value))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }
    };
}

fn plain_word(value: &str, what: &str, extra: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if value.starts_with('-') {
        return Err(format!("{what} `{value}` starts with `-`"));
    }
    match value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || extra.contains(*c)))
    {
        Some(c) => Err(format!("{what} `{value}` has the character `{c}`")),
        None => Ok(()),
    }
}

checked_string!(
    /// A Debian suite name.
    SuiteName,
    |v| {
        plain_word(v, "suite", "-._")?;
        if v == "host" {
            return Err("suite `host` is no longer allowed: the image is pinned to a suite of its \
                        own (for example `bookworm`), so that every host builds the same image"
                .into());
        }
        Ok(())
    }
);
checked_string!(
    /// A debootstrap variant.
    DebootstrapVariant,
    |v| match v {
        "minbase" | "buildd" | "-" => Ok(()),
        _ => Err(format!(
            "variant `{v}` is not one of minbase, buildd, - (debootstrap's default)"
        )),
    }
);
checked_string!(
    /// A Debian package name.
    PackageName,
    |v| {
        plain_word(v, "package name", "+-.")?;
        if v.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(format!("package name `{v}` has upper-case letters"));
        }
        Ok(())
    }
);
checked_string!(
    /// A command name looked up on the image's PATH.
    CommandName,
    |v| plain_word(v, "command name", "+-._")
);
checked_string!(
    /// A user or group name.
    AccountName,
    |v| plain_word(v, "account name", "-_.")
);
checked_string!(
    /// A single path component, or a relative path without `..`.
    RelativeName,
    |v| {
        if v.is_empty() {
            return Err("relative path is empty".into());
        }
        if v.starts_with('/') {
            return Err(format!("`{v}` must be relative"));
        }
        if v.split('/').any(|part| part.is_empty() || part == "." || part == "..") {
            return Err(format!(
                "`{v}` must not have empty, `.` or `..` components"
            ));
        }
        Ok(())
    }
);
checked_string!(
    /// An absolute path inside the image, without `..`.
    AbsolutePath,
    |v| {
        if !v.starts_with('/') {
            return Err(format!("`{v}` must be an absolute path"));
        }
        if v.len() > 1 && v[1..].split('/').any(|part| part.is_empty() || part == "." || part == "..") {
            return Err(format!(
                "`{v}` must not have empty, `.` or `..` components"
            ));
        }
        if v.contains(['\0', '\n']) {
            return Err(format!("`{v}` has a NUL or a newline"));
        }
        Ok(())
    }
);
checked_string!(
    /// A pip requirement specifier (kept simple: a name, extras and version ranges).
    Requirement,
    |v| {
        plain_word(v, "pip requirement", "-_.[],<>=!~ ")?;
        if v.contains("  ") {
            return Err(format!("pip requirement `{v}` has double spaces"));
        }
        Ok(())
    }
);
checked_string!(
    /// A dotted Python module name.
    ModuleName,
    |v| {
        plain_word(v, "module name", "_.")?;
        if v.split('.').any(|p| p.is_empty() || p.starts_with(|c: char| c.is_ascii_digit())) {
            return Err(format!("`{v}` is not a Python module name"));
        }
        Ok(())
    }
);
checked_string!(
    /// An environment variable name.
    EnvName,
    |v| {
        plain_word(v, "environment variable name", "_")?;
        if v.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(format!("environment variable name `{v}` starts with a digit"));
        }
        Ok(())
    }
);

impl Requirement {
    /// The project name the requirement starts with: `jupyter-server>=2.14,<3` ->
    /// `jupyter-server` (as written, not normalized).
    pub fn project_name(&self) -> &str {
        let end = self
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
            .unwrap_or(self.len());
        &self[..end]
    }
}

/// An octal file mode, written as a string (`"0755"`) because YAML 1.2 reads `0755` as decimal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct FileMode(pub u32);

impl TryFrom<String> for FileMode {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        match u32::from_str_radix(&value, 8) {
            Ok(mode) if mode <= 0o7777 && !value.is_empty() => Ok(FileMode(mode)),
            _ => Err(format!(
                "mode `{value}` is not an octal file mode such as \"0755\""
            )),
        }
    }
}

impl Recipe {
    /// Checks that need the whole recipe (each field is already checked on its own).
    fn check(&self, file: &Path, text: &str) -> Result<(), ImageError> {
        let bad = |needle: &str, field: &str, message: String| {
            ImageError::recipe(file, line_of(text, needle), field, message)
        };
        if self.image.trim().is_empty() || self.image.contains(char::is_whitespace) {
            return Err(bad(
                "image:",
                "image",
                format!("`{}` is not an image name", self.image),
            ));
        }
        if self.debian.packages.is_empty() {
            return Err(bad(
                "packages:",
                "debian.packages",
                "the list is empty".into(),
            ));
        }
        if let Some(p) = self
            .debian
            .packages
            .iter()
            .find(|p| self.debian.forbidden_packages.contains(p))
        {
            return Err(bad(
                &format!("- {p}"),
                "debian.packages",
                format!("`{p}` is also in `debian.forbidden_packages`"),
            ));
        }
        if self.venv.owner.0 != "root" && self.venv.owner != self.user.name {
            return Err(bad(
                "owner:",
                "venv.owner",
                format!(
                    "`{}` is neither `root` nor the recipe's user `{}`",
                    self.venv.owner, self.user.name
                ),
            ));
        }
        if self.venv.packages.is_empty() {
            return Err(bad("venv:", "venv.packages", "the list is empty".into()));
        }
        if self.user.uid == 0 {
            return Err(bad(
                "uid:",
                "user.uid",
                "the notebook user must not be root".into(),
            ));
        }
        let mut targets = std::collections::BTreeSet::new();
        for f in &self.files {
            if !targets.insert(f.target.0.clone()) {
                return Err(bad(
                    &format!("target: {}", f.target),
                    "files.target",
                    format!("`{}` is installed twice", f.target),
                ));
            }
        }
        Ok(())
    }
}

/// The line (1-based) of the first line that contains `needle`; `None` for checks that look at
/// the whole recipe, where serde has no position to give, when no line has it.
fn line_of(text: &str, needle: &str) -> Option<usize> {
    text.lines().position(|l| l.contains(needle)).map(|i| i + 1)
}

/// A recipe with the content of every file it installs, and its hash.
#[derive(Clone, Debug)]
pub struct LoadedRecipe {
    pub recipe: Recipe,
    pub dir: PathBuf,
    /// The contents of `files`, in the recipe's order.
    pub file_contents: Vec<Vec<u8>>,
    /// The venv's lock, parsed.
    pub venv_lock: PythonLock,
    /// sha256 (hex) over the builder version, the recipe's bytes and every installed file.
    pub hash: String,
}

/// Reads, checks and hashes the recipe in `dir`, and its lock.
pub fn load(dir: &Path) -> Result<LoadedRecipe, ImageError> {
    load_with(dir, true)
}

/// [`load`] for `guardlab image lock`, which makes the lock: a missing or broken lock is
/// replaced, so it is not read (the result's lock has no pins).
pub fn load_unlocked(dir: &Path) -> Result<LoadedRecipe, ImageError> {
    load_with(dir, false)
}

/// The recipe's text: UTF-8, no bigger than any YAML file guardlab reads, its nesting and
/// aliases within guardlab's limits (a recipe is a few lines; anything else is no recipe).
fn read_recipe(file: &Path) -> Result<String, ImageError> {
    let refused = |line, message: String| ImageError::Recipe {
        file: file.to_path_buf(),
        line,
        field: None,
        message,
    };
    let text = match guardlab_input::read_text(file, MaxBytes::YAML) {
        Ok(text) => text,
        Err(FileError::Io { source, .. }) => {
            return Err(source).context(|| format!("reading the image recipe {}", file.display()));
        }
        Err(FileError::NotUtf8 { line, column, .. }) => {
            return Err(refused(Some(line), format!("column {column}: not UTF-8")));
        }
        Err(other) => return Err(refused(None, other.to_string())),
    };
    match guardlab_input::scan_yaml(&text, &YamlLimits::default()) {
        Err(e) if e.limit().is_some() => Err(refused(Some(e.line()), e.to_string())),
        _ => Ok(text),
    }
}

fn load_with(dir: &Path, locked: bool) -> Result<LoadedRecipe, ImageError> {
    let file = dir.join(RECIPE_FILE);
    let text = read_recipe(&file)?;
    let bytes = text.as_bytes();
    let recipe: Recipe = serde_yaml::from_str(&text).map_err(|source| match source.location() {
        Some(at) => ImageError::RecipeYaml {
            file: file.clone(),
            line: at.line(),
            column: at.column(),
            source,
        },
        None => ImageError::Recipe {
            file: file.clone(),
            line: None,
            field: None,
            message: format!("bad image recipe: {source}"),
        },
    })?;
    recipe.check(&file, &text)?;

    let mut hasher = Sha256::new();
    hash_part(&mut hasher, "builder", BUILDER_VERSION.as_bytes());
    hash_part(&mut hasher, RECIPE_FILE, bytes);
    let mut file_contents = Vec::with_capacity(recipe.files.len());
    for f in &recipe.files {
        let source = dir.join(&f.source.0);
        let content = std::fs::read(&source).map_err(|e| ImageError::RecipeFileUnreadable {
            recipe: file.clone(),
            line: line_of(&text, &format!("source: {}", f.source)),
            field: "files.source",
            path: source.clone(),
            source: e,
        })?;
        hash_part(&mut hasher, &f.source, &content);
        file_contents.push(content);
    }
    let lock_path = dir.join(&recipe.venv.lock.0);
    if !locked {
        return Ok(LoadedRecipe {
            venv_lock: PythonLock {
                file: lock_path,
                pins: Vec::new(),
                sha256: String::new(),
            },
            recipe,
            dir: dir.to_path_buf(),
            file_contents,
            hash: hex::encode(hasher.finalize()),
        });
    }
    let lock_line = line_of(&text, &format!("lock: {}", recipe.venv.lock));
    let lock_bytes =
        std::fs::read(&lock_path).map_err(|source| ImageError::RecipeFileUnreadable {
            recipe: file.clone(),
            line: lock_line,
            field: "venv.lock",
            path: lock_path.clone(),
            source,
        })?;
    let venv_lock = PythonLock::read(&lock_path).map_err(|source| ImageError::Lock {
        recipe: file.clone(),
        line: lock_line,
        source,
    })?;
    for p in &recipe.venv.packages {
        if venv_lock.pin(p.project_name()).is_none() {
            let line = line_of(&text, &format!("- {p}")).or_else(|| line_of(&text, p));
            return Err(ImageError::recipe(
                &file,
                line,
                "venv.packages",
                format!(
                    "`{p}` is not pinned in {}: run `guardlab image lock`",
                    lock_path.display()
                ),
            ));
        }
    }
    hash_part(&mut hasher, &recipe.venv.lock, &lock_bytes);
    Ok(LoadedRecipe {
        recipe,
        dir: dir.to_path_buf(),
        file_contents,
        venv_lock,
        hash: hex::encode(hasher.finalize()),
    })
}

/// Length-prefixed, so that moving bytes between parts changes the hash.
fn hash_part(hasher: &mut Sha256, name: &str, content: &[u8]) {
    hasher.update((name.len() as u64).to_le_bytes());
    hasher.update(name.as_bytes());
    hasher.update((content.len() as u64).to_le_bytes());
    hasher.update(content);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_recipe(dir: &Path, text: &str) {
        std::fs::write(dir.join(RECIPE_FILE), text).unwrap();
    }

    const GOOD: &str = "image: x/y:1
debian:
  suite: bookworm
  packages: [bash]
user: {name: jovyan, uid: 1000, group: users, gid: 100, home: /home/jovyan, shell: /bin/bash}
venv: {path: /opt/venv, owner: jovyan, packages: [ipykernel], lock: venv.lock}
files:
  - {source: a.sh, target: /usr/local/bin/a.sh, mode: \"0755\"}
config: {working_dir: /home/jovyan, env: {PATH: /bin}}
";

    fn scratch() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "guardlab-recipe-unit-{}-{}",
            std::process::id(),
            guardlab_host::unix_time_ns()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.sh"), "echo a\n").unwrap();
        std::fs::write(dir.join("venv.lock"), LOCK).unwrap();
        dir
    }

    const LOCK: &str = "ipykernel==6.31.0 \\\n    --hash=sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n";

    #[test]
    fn a_good_recipe_loads_and_its_hash_follows_the_installed_files() {
        let dir = scratch();
        write_recipe(&dir, GOOD);
        let first = load(&dir).unwrap();
        assert_eq!(first.recipe.files[0].mode, FileMode(0o755));
        assert_eq!(first.hash.len(), 64);
        assert_eq!(load(&dir).unwrap().hash, first.hash, "the hash is stable");
        std::fs::write(dir.join("a.sh"), "echo b\n").unwrap();
        let second = load(&dir).unwrap().hash;
        assert_ne!(second, first.hash);
        // A new pin is a new image.
        std::fs::write(dir.join("venv.lock"), LOCK.replace("6.31.0", "6.31.1")).unwrap();
        assert_ne!(load(&dir).unwrap().hash, second);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_values_are_reported_with_file_line_and_field() {
        let dir = scratch();
        for (bad, line, words) in [
            (GOOD.replace("\"0755\"", "\"0989\""), 8, "octal"),
            (GOOD.replace("suite: bookworm", "suite: a/b"), 3, "suite"),
            (GOOD.replace("suite: bookworm", "suite: host"), 3, "pinned"),
            (
                GOOD.replace("[ipykernel]", "[ipykernel, notebook]"),
                6,
                "not pinned",
            ),
            (
                GOOD.replace("lock: venv.lock", "lock: nope.lock"),
                6,
                "venv.lock",
            ),
            (GOOD.replace("[bash]", "[Bash]"), 4, "upper-case"),
            (
                GOOD.replace("home: /home/jovyan", "home: home"),
                5,
                "absolute",
            ),
            (
                GOOD.replace("packages: [bash]", "pakages: [bash]"),
                4,
                "pakages",
            ),
            (GOOD.replace("owner: jovyan", "owner: bob"), 6, "venv.owner"),
            (
                GOOD.replace("source: a.sh", "source: missing.sh"),
                8,
                "files.source",
            ),
            (
                GOOD.replace(
                    "packages: [bash]",
                    &format!("packages: {}", "[".repeat(50_000)),
                ),
                4,
                "nested deeper than 128",
            ),
            (GOOD.replace("bookworm", "book\u{fffd}worm"), 3, "suite"),
        ] {
            write_recipe(&dir, &bad);
            let err = load(&dir).unwrap_err().to_string();
            let file = dir.join(RECIPE_FILE).display().to_string();
            assert!(
                err.starts_with(&format!("{file}:{line}")),
                "{err} should start with {file}:{line}"
            );
            assert!(err.contains(words), "{err} should mention {words}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_recipe_that_is_not_utf8_is_refused_with_its_line() {
        let dir = scratch();
        let mut bytes = GOOD.as_bytes().to_vec();
        let at = GOOD.find("bookworm").unwrap();
        bytes[at] = 0xff;
        std::fs::write(dir.join(RECIPE_FILE), bytes).unwrap();
        let err = load(&dir).unwrap_err().to_string();
        let file = dir.join(RECIPE_FILE).display().to_string();
        assert!(
            err.starts_with(&format!("{file}:3: column 10: not UTF-8")),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
