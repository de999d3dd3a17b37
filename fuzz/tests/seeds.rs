//! Every seed (`fuzz/seeds/<target>/`) and every saved finding (`fuzz/regressions/<target>/`,
//! inputs that once crashed or hung a target, kept after the fix) through its target, as plain
//! code: a panic fails the test. The fuzzing itself is `fuzz-run` (see `src/bin/fuzz_run.rs`).

use std::path::Path;

#[test]
fn every_seed_and_every_saved_finding_runs_through_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut ran = 0;
    for target in guardlab_fuzz::TARGETS {
        let mut seeds = 0;
        for folder in ["seeds", "regressions"] {
            let dir = root.join(folder).join(target);
            let Ok(entries) = std::fs::read_dir(&dir) else {
                assert_eq!(folder, "regressions", "{} is missing", dir.display());
                continue;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                let outcome = std::panic::catch_unwind(|| guardlab_fuzz::run(target, &data));
                assert!(outcome.is_ok(), "{target} panics on {}", path.display());
                if folder == "seeds" {
                    seeds += 1;
                }
                ran += 1;
            }
        }
        assert!(seeds > 0, "AFL++ needs at least one seed for {target}");
    }
    assert!(ran >= guardlab_fuzz::TARGETS.len());
}

#[test]
fn the_seeds_are_accepted_input_so_fuzzing_starts_from_the_good_paths() {
    // A seed the parser refuses would only explore error paths from the start.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    for entry in std::fs::read_dir(root.join("document")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        guardlab_engine::document::load_documents(&path.display().to_string(), &text)
            .unwrap_or_else(|d| panic!("{}", guardlab_engine::document::Diagnostics(d)));
    }
    for entry in std::fs::read_dir(root.join("events")).unwrap() {
        let path = entry.unwrap().path();
        let events = guardlab_events::read_ndjson(std::io::BufReader::new(
            std::fs::File::open(&path).unwrap(),
        ))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(!events.is_empty());
    }
    for entry in std::fs::read_dir(root.join("scenario_file")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        guardlab_scenario_file::parse_scenario("seed.yaml", &text)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}
