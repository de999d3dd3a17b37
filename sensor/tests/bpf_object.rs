//! The committed eBPF object must be rebuilt whenever its sources change: `bpf/build.sh`
//! records the sha256 of every input (and of the object) in `bpf/SOURCES.sha256`.

use std::collections::BTreeMap;
use std::path::Path;

use sha2::{Digest, Sha256};

#[test]
fn the_committed_object_was_built_from_the_current_sources() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("bpf");
    let listing = std::fs::read_to_string(dir.join("SOURCES.sha256"))
        .expect("bpf/SOURCES.sha256 (written by bpf/build.sh)");
    let mut recorded = BTreeMap::new();
    for (i, line) in listing.lines().enumerate() {
        let (hash, file) = line.split_once("  ").unwrap_or_else(|| {
            panic!(
                "bpf/SOURCES.sha256 line {}: expected `<sha256>  <file>`, got {line:?}",
                i + 1
            )
        });
        recorded.insert(file.to_string(), hash.to_string());
    }
    // Every source in the directory must be covered, so a new header cannot slip by.
    let mut expected: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.ends_with(".c") || n.ends_with(".h") || n == "build.sh" || n == "guardlab.bpf.o"
        })
        .collect();
    expected.sort();
    let listed: Vec<String> = recorded.keys().cloned().collect();
    assert_eq!(
        listed, expected,
        "bpf/SOURCES.sha256 does not list exactly the sources: run sensor/bpf/build.sh (just bpf)"
    );
    for (file, hash) in &recorded {
        let bytes = std::fs::read(dir.join(file)).unwrap();
        let actual = hex::encode(Sha256::digest(&bytes));
        assert_eq!(
            &actual, hash,
            "sensor/bpf/{file} changed since guardlab.bpf.o was built: run sensor/bpf/build.sh (just bpf) and commit the object"
        );
    }
}
