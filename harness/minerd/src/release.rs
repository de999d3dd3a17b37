//! The stand-in packed the way pooler's Linux release is: a gzip'd tar holding a single
//! `minerd` executable at the top, so the scenario's `tar -xzf download` leaves
//! `./minerd` in the working directory.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;

/// Name of pooler's release file (the last path segment before `/download` in the
/// scenario's URL).
pub const RELEASE_TARBALL_NAME: &str = "pooler-cpuminer-2.5.1-linux-x86_64.tar.gz";
/// The only entry in the tarball.
pub const RELEASE_ENTRY: &str = "minerd";
/// Timestamp of every entry: the commit of cpuminer's v2.5.1 tag (2020-06-25 15:02:57 UTC).
/// Fixed so that the served file, and its hash, do not change from build to build of
/// the same binary.
pub const RELEASE_MTIME: u64 = 1_593_097_377;

/// Packs `minerd_binary` as the release tarball and returns its bytes. The output depends
/// only on the binary's content: fixed mtime, owner root:root (uid/gid 0), mode 0755, and
/// a gzip header without name or time.
pub fn pack_release_tarball(minerd_binary: &Path) -> io::Result<Vec<u8>> {
    let binary = std::fs::read(minerd_binary).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot read minerd binary {}: {e}", minerd_binary.display()),
        )
    })?;
    let mut header = tar::Header::new_ustar();
    header.set_path(RELEASE_ENTRY)?;
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(binary.len() as u64);
    header.set_mode(0o755);
    header.set_uid(0);
    header.set_gid(0);
    header.set_username("root")?;
    header.set_groupname("root")?;
    header.set_mtime(RELEASE_MTIME);
    header.set_cksum();

    // GzEncoder's default header carries mtime 0 and no file name: deterministic. Fast
    // compression: a debug build of minerd is ~30 MB, and size does not matter here.
    let gzip = GzEncoder::new(Vec::new(), Compression::fast());
    let mut archive = tar::Builder::new(gzip);
    archive.append(&header, binary.as_slice())?;
    let mut gzip = archive.into_inner()?;
    gzip.flush()?;
    gzip.finish()
}

/// Environment variable naming the `minerd` binary to pack, overriding the search.
pub const MINERD_ENV: &str = "GUARDLAB_MINERD";

/// Finds the `minerd` built from this workspace: `$GUARDLAB_MINERD` if set, else a
/// `minerd` next to the running executable or one directory up (test executables live in
/// `target/<profile>/deps`). `cargo build` and `cargo test` build it (the package is a
/// default member); `cargo run -p guardlab` alone does not.
pub fn find_minerd_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(MINERD_ENV) {
        return Some(PathBuf::from(path));
    }
    let exe = std::env::current_exe().ok()?;
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join(RELEASE_ENTRY))
        .find(|candidate| candidate.is_file())
}

fn not_found(why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!(
            "no `minerd` next to this program ({why}); build it with \
             `cargo build --bin minerd`, or set {MINERD_ENV}"
        ),
    )
}

/// The cargo command that builds minerd when this program was started by cargo (`cargo run`
/// sets `CARGO` and `CARGO_MANIFEST_DIR`), in the same profile.
///
/// It is built the way `cargo run` at the workspace root resolved features (all default
/// members, not `--package guardlab-minerd` alone, which resolves other features for tokio,
/// clap and the rest and so compiles them all again): only minerd's own code is compiled.
fn cargo_build_command() -> io::Result<std::process::Command> {
    let (Some(cargo), Some(manifest_dir)) = (
        std::env::var_os("CARGO"),
        std::env::var_os("CARGO_MANIFEST_DIR"),
    ) else {
        return Err(not_found(
            "not started by cargo, so it cannot be built here",
        ));
    };
    let exe = std::env::current_exe()?;
    // `target/<profile>/guardlab` or `target/<profile>/deps/<test>`: build in that profile.
    let release = exe
        .ancestors()
        .skip(1)
        .take(2)
        .any(|dir| dir.file_name().is_some_and(|n| n == "release"));
    // `CARGO_MANIFEST_DIR` is the guardlab package's; the workspace is two levels up when
    // this is the project's own checkout (`harness/`), else the package itself.
    let package_dir = Path::new(&manifest_dir);
    let workspace_manifest = package_dir
        .ancestors()
        .map(|d| d.join("Cargo.toml"))
        .find(|m| std::fs::read_to_string(m).is_ok_and(|text| text.contains("[workspace]")))
        .unwrap_or_else(|| package_dir.join("Cargo.toml"));
    let mut build = std::process::Command::new(cargo);
    build
        .args(["build", "--bin", RELEASE_ENTRY, "--manifest-path"])
        .arg(&workspace_manifest);
    if release {
        build.arg("--release");
    }
    Ok(build)
}

/// [`find_minerd_binary`], and when there is none but this program was started by cargo,
/// build it first with the same cargo, so that `cargo run -- scenario ...` works on a fresh
/// clone (plain `cargo run` builds only the `guardlab` binary). Cargo's own progress goes to
/// stderr.
pub fn ensure_minerd_binary() -> io::Result<PathBuf> {
    if let Some(path) = find_minerd_binary() {
        return Ok(path);
    }
    let mut build = cargo_build_command()?;
    eprintln!("guardlab: building the scenario's miner stand-in (minerd) with cargo");
    let status = build.status()?;
    if !status.success() {
        return Err(io::Error::other(format!(
            "building minerd failed ({status})"
        )));
    }
    find_minerd_binary().ok_or_else(|| not_found("cargo built it somewhere else"))
}

/// A build of minerd running in the background (see [`start_minerd_build`]). Dropped before
/// [`MinerBuild::wait`], it kills the build: nothing outlives the lab start that wanted it.
#[derive(Debug)]
pub struct MinerBuild {
    child: Option<std::process::Child>,
    log: PathBuf,
}

impl MinerBuild {
    /// Waits for the build; its result is minerd's path, or an error with cargo's last lines.
    pub fn wait(mut self) -> io::Result<PathBuf> {
        let mut child = self.child.take().expect("waited once");
        let status = child.wait()?;
        if !status.success() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(20)..].join("\n  ");
            return Err(io::Error::other(format!(
                "building minerd failed ({status}); cargo said (last lines, all in {}):\n  {tail}",
                self.log.display()
            )));
        }
        find_minerd_binary().ok_or_else(|| not_found("cargo built it somewhere else"))
    }
}

impl Drop for MinerBuild {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts building minerd with cargo in the background, its output going to `log`, so that it
/// compiles while the lab does other slow work (the pod image). `None` when there is nothing
/// to build: minerd is already there, or this program was not started by cargo (then
/// [`ensure_minerd_binary`] says what to do).
pub fn start_minerd_build(log: &Path) -> Option<MinerBuild> {
    if find_minerd_binary().is_some() {
        return None;
    }
    let mut build = cargo_build_command().ok()?;
    let out = std::fs::File::create(log).ok()?;
    let err = out.try_clone().ok()?;
    let child = build
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .ok()?;
    Some(MinerBuild {
        child: Some(child),
        log: log.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn packs_one_executable_entry_deterministically() {
        let dir = tempfile::tempdir().unwrap();
        let binary = dir.path().join("some-build-output");
        std::fs::write(&binary, b"\x7fELF not really").unwrap();
        let first = pack_release_tarball(&binary).unwrap();
        let second = pack_release_tarball(&binary).unwrap();
        assert_eq!(first, second, "same input must give the same bytes");
        assert_eq!(&first[..2], &[0x1f, 0x8b], "gzip magic");

        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(first.as_slice()));
        let mut entries = archive.entries().unwrap();
        let mut entry = entries.next().unwrap().unwrap();
        assert_eq!(entry.path().unwrap().to_str(), Some("minerd"));
        assert_eq!(entry.header().mode().unwrap(), 0o755);
        assert_eq!(entry.header().mtime().unwrap(), RELEASE_MTIME);
        assert_eq!(entry.header().uid().unwrap(), 0);
        let mut content = Vec::new();
        entry.read_to_end(&mut content).unwrap();
        assert_eq!(content, b"\x7fELF not really");
        assert!(entries.next().is_none(), "exactly one entry");
    }

    #[test]
    fn a_missing_binary_is_an_error_naming_it() {
        let err = pack_release_tarball(Path::new("/nonexistent/minerd")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/minerd"), "{err}");
    }
}
