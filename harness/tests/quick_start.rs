//! The README's quick start is `cargo run -- scenario cryptominer`: a bare `cargo run` in a
//! workspace with several binaries only works while exactly one member names a `default-run`.
//! A second one (easy to add by accident next to a new binary) breaks the quick start.

use std::process::Command;

#[test]
fn cargo_run_picks_guardlab() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let default_runs: Vec<(String, String)> = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| {
            Some((
                p["name"].as_str()?.to_string(),
                p["default_run"].as_str()?.to_string(),
            ))
        })
        .collect();
    assert_eq!(
        default_runs,
        vec![("guardlab".to_string(), "guardlab".to_string())],
        "only the guardlab package may set default-run, or `cargo run` cannot choose"
    );
}
