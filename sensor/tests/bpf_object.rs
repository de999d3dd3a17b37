//! The committed eBPF object must be what its sources build into: `bpf/build.sh` records the
//! sha256 of every input (and of the object) in `bpf/SOURCES.sha256`, with the toolchain it
//! used, and a fresh build with that toolchain must give the same bytes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

fn bpf_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("bpf")
}

/// (file -> sha256, toolchain line name -> value) from SOURCES.sha256.
fn recorded() -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let listing = std::fs::read_to_string(bpf_dir().join("SOURCES.sha256"))
        .expect("bpf/SOURCES.sha256 (written by bpf/build.sh)");
    let mut hashes = BTreeMap::new();
    let mut toolchain = BTreeMap::new();
    for (i, line) in listing.lines().enumerate() {
        if let Some(comment) = line.strip_prefix("# ") {
            let (name, value) = comment.split_once(": ").unwrap_or_else(|| {
                panic!(
                    "bpf/SOURCES.sha256 line {}: expected `# <tool>: <version>`, got {line:?}",
                    i + 1
                )
            });
            toolchain.insert(name.to_string(), value.to_string());
            continue;
        }
        let (hash, file) = line.split_once("  ").unwrap_or_else(|| {
            panic!(
                "bpf/SOURCES.sha256 line {}: expected `<sha256>  <file>`, got {line:?}",
                i + 1
            )
        });
        hashes.insert(file.to_string(), hash.to_string());
    }
    (hashes, toolchain)
}

#[test]
fn the_committed_object_was_built_from_the_current_sources() {
    let dir = bpf_dir();
    let (hashes, toolchain) = recorded();
    assert!(
        toolchain.contains_key("clang") && toolchain.contains_key("libbpf-dev"),
        "bpf/SOURCES.sha256 does not record the toolchain: run sensor/bpf/build.sh (just bpf)"
    );
    // Every source in the directory must be covered, so a new header cannot slip by.
    let mut expected: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.ends_with(".c") || n.ends_with(".h") || n == "build.sh" || n == "guardlab.bpf.o"
        })
        .collect();
    expected.sort();
    let listed: Vec<String> = hashes.keys().cloned().collect();
    assert_eq!(
        listed, expected,
        "bpf/SOURCES.sha256 does not list exactly the sources: run sensor/bpf/build.sh (just bpf)"
    );
    for (file, hash) in &hashes {
        let bytes = std::fs::read(dir.join(file)).unwrap();
        let actual = hex::encode(Sha256::digest(&bytes));
        assert_eq!(
            &actual, hash,
            "sensor/bpf/{file} changed since guardlab.bpf.o was built: run sensor/bpf/build.sh (just bpf) and commit the object"
        );
    }
}

/// Needs clang, llvm-strip and libbpf-dev of the recorded versions (CI installs Debian's
/// clang, llvm and libbpf-dev). Without them it fails and says what is missing: it never
/// passes without having compared the bytes.
#[test]
fn a_fresh_build_gives_the_committed_bytes() {
    let (_, toolchain) = recorded();
    let clang = Command::new(std::env::var("CLANG").unwrap_or_else(|_| "clang".into()))
        .arg("--version")
        .output();
    let clang = match clang {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string(),
        _ => panic!(
            "this test rebuilds bpf/guardlab.bpf.o and needs clang, llvm and libbpf-dev \
             (apt-get install clang llvm libbpf-dev; CI installs them)"
        ),
    };
    assert_eq!(
        Some(&clang),
        toolchain.get("clang"),
        "the installed clang is not the one guardlab.bpf.o was built with (bpf/SOURCES.sha256): \
         another clang gives other bytes. Install that one, or rebuild with sensor/bpf/build.sh \
         and commit the object"
    );
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(bpf_dir().join("build.sh"))
        .arg("--out")
        .arg(tmp.path())
        .output()
        .expect("running bpf/build.sh");
    assert!(
        out.status.success(),
        "bpf/build.sh --out failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fresh = std::fs::read(tmp.path().join("guardlab.bpf.o")).unwrap();
    let committed = std::fs::read(bpf_dir().join("guardlab.bpf.o")).unwrap();
    // libbpf's headers are the other input outside the tree: name them when the bytes differ.
    let libbpf = Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", "libbpf-dev"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    assert!(
        fresh == committed,
        "a fresh build of bpf/guardlab.bpf.c ({} bytes) differs from the committed object ({} bytes); \
         libbpf-dev here is {libbpf:?}, the object was built with {:?}. Rebuild with \
         sensor/bpf/build.sh and commit the object",
        fresh.len(),
        committed.len(),
        toolchain.get("libbpf-dev")
    );
    // Nothing of this checkout's location is in the object.
    let here = env!("CARGO_MANIFEST_DIR").as_bytes();
    assert!(
        !committed.windows(here.len()).any(|w| w == here),
        "the object embeds the checkout's path"
    );
}
