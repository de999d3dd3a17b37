//! spyctl as the judge of what guardlab writes: every document passes `spyctl validate`, and
//! spyctl's own `create policy` and `merge` give the documents guardlab's do.
//!
//! spyctl runs pinned, offline, from a venv the tests make once (see `spyctl/mod.rs`).

mod spyctl;

use std::path::{Path, PathBuf};

use serde_yaml::{Mapping, Value};
use spyctl::Verdict;
use spyctl::documents::{POLICY_NAME, guardlab, root, stdout_of, write_all};

fn assert_all_valid(files: &[PathBuf]) {
    assert!(!files.is_empty(), "nothing to judge");
    let verdicts = spyctl::validate_all(files);
    let refused: Vec<String> = files
        .iter()
        .zip(&verdicts)
        .filter_map(|(file, verdict)| match verdict {
            Verdict::Valid => None,
            Verdict::Invalid(why) => Some(format!(
                "{}:\n{}\n--- the file:\n{}",
                file.display(),
                why,
                std::fs::read_to_string(file).unwrap_or_default()
            )),
        })
        .collect();
    assert!(
        refused.is_empty(),
        "spyctl refuses {} of {} documents guardlab wrote:\n\n{}",
        refused.len(),
        files.len(),
        refused.join("\n\n")
    );
}

#[test]
fn every_document_the_file_commands_write_passes_spyctl_validate() {
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = write_all(dir.path()).iter().flat_map(|w| w.all()).collect();
    assert_all_valid(&files);
}

#[test]
fn every_document_a_scenario_run_writes_with_out_passes_spyctl_validate() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let output = guardlab()
        .args(["scenario", "cryptominer", "--backend", "replay", "--out"])
        .arg(&out)
        .current_dir(root())
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let mut files = Vec::new();
    for part in ["fingerprints", "policy", "deviations"] {
        let mut here: Vec<PathBuf> = std::fs::read_dir(out.join(part))
            .unwrap_or_else(|e| panic!("{}: {e}", out.join(part).display()))
            .map(|e| e.unwrap().path())
            .collect();
        assert!(!here.is_empty(), "--out wrote nothing into {part}/");
        here.sort();
        files.extend(here);
    }
    assert_all_valid(&files);
}

/// guardlab's side of a comparison, made comparable with spyctl's where the two write the same
/// meaning differently: spyctl's `create policy` and `merge` leave `enabled` out, and an absent
/// `enabled` is an enabled policy to spyctl (`resources/policies.py` reads it with a default of
/// true); guardlab writes `enabled: true`.
fn without_enabled_true(mut policy: Value) -> Value {
    let spec = policy
        .get_mut("spec")
        .and_then(Value::as_mapping_mut)
        .expect("a policy has a spec");
    if spec.get("enabled") == Some(&Value::Bool(true)) {
        spec.remove("enabled");
    }
    policy
}

fn parse(path: &Path) -> Value {
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Parsed documents are equal when their mappings hold the same keys with equal values (in any
/// order) and their lists the same items in the same order: serde_yaml's `Value` compares
/// mappings that way. On a difference, both documents as YAML.
fn difference(what: &str, guardlab: &Value, spyctl: &Value) -> Option<String> {
    (guardlab != spyctl).then(|| {
        let mut paths = Vec::new();
        differing_paths(guardlab, spyctl, "", &mut paths);
        format!(
            "{what}: guardlab and spyctl differ at {}\n--- guardlab\n{}\n--- spyctl\n{}",
            paths.join(", "),
            serde_yaml::to_string(guardlab).unwrap(),
            serde_yaml::to_string(spyctl).unwrap()
        )
    })
}

/// Where two documents differ: the deepest mapping keys whose values differ, or a list whose
/// items differ (its length, or their order).
fn differing_paths(a: &Value, b: &Value, at: &str, paths: &mut Vec<String>) {
    match (a, b) {
        (Value::Mapping(a), Value::Mapping(b)) => {
            for (key, value) in a {
                let name = key
                    .as_str()
                    .map_or_else(|| format!("{key:?}"), str::to_string);
                let here = if at.is_empty() {
                    name
                } else {
                    format!("{at}.{name}")
                };
                match b.get(key) {
                    Some(other) if other == value => {}
                    Some(other) => differing_paths(value, other, &here, paths),
                    None => paths.push(format!("{here} (only guardlab)")),
                }
            }
            for key in b.keys().filter(|k| !a.contains_key(*k)) {
                let name = key
                    .as_str()
                    .map_or_else(|| format!("{key:?}"), str::to_string);
                paths.push(format!("{at}.{name} (only spyctl)"));
            }
        }
        (Value::Sequence(x), Value::Sequence(y)) if x.len() == y.len() => {
            for (i, (x, y)) in x.iter().zip(y).enumerate() {
                if x != y {
                    differing_paths(x, y, &format!("{at}[{i}]"), paths);
                }
            }
        }
        _ => paths.push(at.to_string()),
    }
}

fn assert_same(what: &str, guardlab: &Value, spyctl: &Value) {
    if let Some(difference) = difference(what, guardlab, spyctl) {
        panic!("{difference}");
    }
}

#[test]
fn spyctl_create_policy_from_each_fingerprint_is_guardlab_policy_create() {
    let dir = tempfile::tempdir().unwrap();
    let mut compared = 0;
    for written in write_all(dir.path()) {
        for from in written.fingerprints.iter().chain(&written.groups) {
            let ours: Value = serde_yaml::from_str(&stdout_of(
                guardlab()
                    .args(["policy", "create", "--name", POLICY_NAME, "--from"])
                    .arg(from),
            ))
            .unwrap();
            let theirs = spyctl::create_policy(from, POLICY_NAME);
            assert_same(
                &format!("a policy from {} ({} story)", from.display(), written.story),
                &without_enabled_true(ours),
                &theirs,
            );
            compared += 1;
        }
    }
    assert!(compared >= 4, "compared {compared} policies");
}

/// The policy spyctl merges into: guardlab's, with the uid its deviations name (spyctl merges a
/// deviation only into the policy whose `metadata.uid` is the deviation's `policy_uid`; guardlab
/// computes that uid from the policy and does not write it).
fn with_uid_of_deviations(policy: &Path, deviations: &[PathBuf], into: &Path) -> String {
    let uid = parse(&deviations[0])["metadata"]["policy_uid"]
        .as_str()
        .expect("a deviation names its policy")
        .to_string();
    let mut value = parse(policy);
    value["metadata"]
        .as_mapping_mut()
        .unwrap()
        .insert("uid".into(), uid.clone().into());
    std::fs::write(into, serde_yaml::to_string(&value).unwrap()).unwrap();
    uid
}

/// spyctl's list form: one document holding the others under `items`. spyctl takes one
/// `--with-file`, and a file of several YAML documents is an error to it.
fn as_item_list(files: &[PathBuf], into: &Path) {
    let items: Vec<Value> = files.iter().map(|f| parse(f)).collect();
    let mut list = Mapping::new();
    list.insert("apiVersion".into(), "spyderbat/v1".into());
    list.insert("items".into(), Value::Sequence(items));
    std::fs::write(into, serde_yaml::to_string(&Value::Mapping(list)).unwrap()).unwrap();
}

/// `policy` with each list of network rules replaced by the connections it allows, one
/// (peer, port, process) per entry, sorted: the layout of the rules is the one difference of
/// a merge that README's "Differences from spyctl" names (spyctl appends a rule per merged
/// document; guardlab keeps one rule per peer and port, sorted). What they allow must agree.
fn allowed_connections(mut policy: Value) -> Value {
    let Some(network) = policy["spec"]
        .get_mut("networkPolicy")
        .and_then(Value::as_mapping_mut)
    else {
        return policy;
    };
    for direction in ["ingress", "egress"] {
        let Some(rules) = network.get_mut(direction) else {
            continue;
        };
        let peer_key = if direction == "egress" { "to" } else { "from" };
        let mut allowed = Vec::new();
        for rule in rules.as_sequence().into_iter().flatten() {
            let list = |key: &str| -> Vec<Value> {
                match rule.get(key).and_then(Value::as_sequence) {
                    Some(items) if !items.is_empty() => items.clone(),
                    // No list (or an empty one) is "any" (README: empty-processes).
                    _ => vec![Value::from("*")],
                }
            };
            for peer in list(peer_key) {
                for port in list("ports") {
                    for process in list("processes") {
                        allowed.push(serde_yaml::to_string(&(&peer, &port, &process)).unwrap());
                    }
                }
            }
        }
        allowed.sort();
        allowed.dedup();
        *rules = Value::Sequence(allowed.into_iter().map(Value::from).collect());
    }
    policy
}

#[test]
fn spyctl_merge_is_guardlab_merge() {
    let dir = tempfile::tempdir().unwrap();
    let mut differences = Vec::new();
    for written in write_all(dir.path()) {
        let story = written.story;
        let base = dir.path().join(format!("{story}-policy-with-uid.yaml"));
        let uid = with_uid_of_deviations(&written.policy, &written.deviations, &base);
        let list = dir.path().join(format!("{story}-deviations-list.yaml"));
        as_item_list(&written.deviations, &list);
        let mut theirs = spyctl::merge(&base, &list);
        // The uid was ours to add for spyctl's check; guardlab's merge does not write it.
        let removed = theirs["metadata"].as_mapping_mut().unwrap().remove("uid");
        assert_eq!(removed, Some(Value::from(uid)));
        differences.extend(difference(
            &format!(
                "the {story} policy merged with its {} deviations",
                written.deviations.len()
            ),
            &allowed_connections(parse(&written.merged_deviations)),
            &allowed_connections(theirs),
        ));

        let theirs = spyctl::merge(&written.policy, &written.run_fingerprints);
        differences.extend(difference(
            &format!("the {story} policy merged with the run's fingerprint"),
            &allowed_connections(parse(&written.merged_fingerprints)),
            &allowed_connections(theirs),
        ));
    }
    assert!(
        differences.is_empty(),
        "{} of 4 merges differ:\n\n{}",
        differences.len(),
        differences.join("\n\n")
    );
}
