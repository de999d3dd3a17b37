//! The hosted workflow that runs the scenario on kind cannot run here (no Docker); this checks
//! that it is a workflow GitHub Actions accepts in shape, and that it runs what it says.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Workflow {
    name: String,
    on: BTreeMap<String, serde_yaml::Value>,
    #[serde(default)]
    permissions: BTreeMap<String, String>,
    #[serde(default)]
    concurrency: Option<serde_yaml::Value>,
    jobs: BTreeMap<String, Job>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Job {
    name: String,
    runs_on: String,
    timeout_minutes: u32,
    #[serde(default)]
    env: BTreeMap<String, String>,
    steps: Vec<Step>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Step {
    name: String,
    #[serde(default)]
    uses: Option<String>,
    #[serde(default)]
    run: Option<String>,
    #[serde(default)]
    with: BTreeMap<String, String>,
    #[serde(default, rename = "if")]
    condition: Option<String>,
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn workflow() -> Workflow {
    let path = workspace().join(".github/workflows/kind-e2e.yml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_workflow_has_its_triggers_and_one_job_on_a_hosted_runner() {
    let w = workflow();
    assert_eq!(w.name, "kind e2e");
    for trigger in ["push", "pull_request", "workflow_dispatch"] {
        assert!(w.on.contains_key(trigger), "no {trigger} trigger");
    }
    assert_eq!(
        w.permissions.get("contents").map(String::as_str),
        Some("read")
    );
    assert!(w.concurrency.is_some());
    let job = &w.jobs["kind-e2e"];
    assert_eq!(job.runs_on, "ubuntu-latest");
    assert!(!job.name.is_empty() && job.env.contains_key("CARGO_TERM_COLOR"));
    assert!(
        (30..=90).contains(&job.timeout_minutes),
        "{}",
        job.timeout_minutes
    );
}

#[test]
fn every_step_is_one_action_or_one_command_and_actions_are_pinned() {
    for step in &workflow().jobs["kind-e2e"].steps {
        assert!(
            step.uses.is_some() != step.run.is_some(),
            "{}: uses or run, not both",
            step.name
        );
        if let Some(uses) = &step.uses {
            let (action, version) = uses
                .split_once('@')
                .unwrap_or_else(|| panic!("{uses} has no @version"));
            assert_eq!(action.split('/').count(), 2, "{uses}");
            assert!(!version.is_empty(), "{uses}");
        }
        if !step.with.is_empty() {
            assert!(step.uses.is_some(), "{}: `with` needs `uses`", step.name);
        }
        if let Some(condition) = &step.condition {
            assert!(
                ["failure()", "always()"].contains(&condition.as_str()),
                "{condition}"
            );
        }
    }
}

#[test]
fn the_job_installs_rust_and_kind_with_our_cluster_config_then_runs_the_scenario() {
    let steps = &workflow().jobs["kind-e2e"].steps;
    let position = |what: &dyn Fn(&Step) -> bool| steps.iter().position(what);
    let uses = |prefix: &'static str| {
        move |s: &Step| s.uses.as_deref().is_some_and(|u| u.starts_with(prefix))
    };
    let runs =
        |text: &'static str| move |s: &Step| s.run.as_deref().is_some_and(|r| r.contains(text));

    let checkout = position(&uses("actions/checkout@")).expect("checkout");
    let rust = position(&uses("dtolnay/rust-toolchain@")).expect("Rust");
    assert_eq!(steps[rust].with["toolchain"], "1.95");
    let kind = position(&uses("helm/kind-action@")).expect("kind");
    let config = &steps[kind].with["config"];
    assert_eq!(config, "manifests/kind/cluster.yaml");
    assert!(workspace().join(config).is_file());
    // The cluster kind-action makes is the one `guardlab lab up --backend kind` reuses.
    assert_eq!(steps[kind].with["cluster_name"], "guardlab");
    let scenario = position(&runs(
        "cargo run --locked -- scenario cryptominer --backend kind",
    ))
    .expect("scenario");
    let down = position(&runs("-- lab down --backend kind")).expect("down");
    assert!(checkout < rust && rust < kind && kind < scenario && scenario < down);
    assert_eq!(steps[down].condition.as_deref(), Some("always()"));
    let dry_run = position(&runs("lab up --backend kind --dry-run")).expect("dry run");
    assert!(dry_run < scenario);
}
