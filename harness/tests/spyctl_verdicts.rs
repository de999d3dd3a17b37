//! `guardlab validate` against `spyctl validate`, file by file.
//!
//! - `--strict` gives spyctl's verdict on every file of the spyctl peer data
//!   (`../shared/peer-data/spyctl/`) and on every document guardlab writes.
//! - Plain `validate` gives spyctl's verdict everywhere except where README's "Differences from
//!   spyctl" lists a difference, each with its reason; edge documents (guardlab's own documents,
//!   each changed in one place) show every listed difference, and show that nothing else
//!   differs in the places the list is about.

mod spyctl;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_yaml::Value;
use spyctl::Verdict;
use spyctl::documents::{guardlab, root, write_all};

/// guardlab's verdict: valid (exit 0) or not (exit 1); anything else is not a verdict.
fn guardlab_valid(file: &Path, strict: bool) -> bool {
    let mut cmd = guardlab();
    cmd.arg("validate");
    if strict {
        cmd.arg("--strict");
    }
    let output = cmd.arg(file).output().unwrap();
    match output.status.code() {
        Some(0) => true,
        Some(1) => false,
        _ => panic!(
            "guardlab validate{} {} gave no verdict: {}",
            if strict { " --strict" } else { "" },
            file.display(),
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

fn peer_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (the spyctl peer data beside the repository)",
                dir.display()
            )
        }) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, files);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                files.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&root().join("../shared/peer-data/spyctl"), &mut files);
    files.sort();
    assert!(
        files.len() > 60,
        "the peer data holds {} files",
        files.len()
    );
    files
}

/// The peer files and every document guardlab writes (one per file), under `dir`.
fn corpus(dir: &Path) -> Vec<PathBuf> {
    let mut files = peer_files();
    files.extend(write_all(dir).iter().flat_map(|w| w.all()));
    files
}

#[test]
fn strict_validate_and_spyctl_agree_on_the_peer_files_and_on_what_guardlab_writes() {
    let dir = tempfile::tempdir().unwrap();
    let files = corpus(dir.path());
    let verdicts = spyctl::validate_all(&files);
    let disagreements: Vec<String> = files
        .iter()
        .zip(&verdicts)
        .filter(|(file, verdict)| guardlab_valid(file, true) != verdict.is_valid())
        .map(|(file, verdict)| format!("{}: spyctl says {verdict:?}", file.display()))
        .collect();
    assert!(
        disagreements.is_empty(),
        "guardlab validate --strict and spyctl disagree on {} of {} files:\n{}",
        disagreements.len(),
        files.len(),
        disagreements.join("\n")
    );
}

/// Whether spyctl refuses `file` only because its policy has no `spec.mode` (the older format).
fn refused_only_for_missing_mode(file: &Path, verdict: &Verdict) -> bool {
    let Verdict::Invalid(why) = verdict else {
        return false;
    };
    let doc: Value = serde_yaml::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    let no_mode = doc["kind"] == "SpyderbatPolicy" && doc["spec"].get("mode").is_none();
    no_mode && why.contains("1 validation error") && why.contains("spec.mode\n  Field required")
}

// ---------------------------------------------------------------------------------------------
// Edge documents: guardlab's own, each changed in one place.

/// Which of guardlab's documents an edge document starts from.
#[derive(Clone, Copy, Debug)]
enum Base {
    Policy,
    Fingerprint,
    ProcessDeviation,
    EgressDeviation,
}

struct Edge {
    name: &'static str,
    base: Base,
    change: fn(&mut Value),
    /// The README's name of the difference this document shows, if any.
    listed: Option<&'static str>,
}

fn node<'v>(value: &'v mut Value, path: &str) -> &'v mut Value {
    path.split('.')
        .fold(value, |v, key| match key.parse::<usize>() {
            Ok(i) => &mut v[i],
            Err(_) => &mut v[key],
        })
}

fn set(value: &mut Value, path: &str, yaml: &str) {
    *node(value, path) = serde_yaml::from_str(yaml).unwrap();
}

fn remove(value: &mut Value, path: &str) {
    let (parent, key) = path.rsplit_once('.').unwrap_or(("", path));
    let parent = if parent.is_empty() {
        value
    } else {
        node(value, parent)
    };
    parent
        .as_mapping_mut()
        .unwrap_or_else(|| panic!("{path}: not in a mapping"))
        .remove(key)
        .unwrap_or_else(|| panic!("{path}: no such key"));
}

const EGRESS_0: &str = "spec.networkPolicy.egress.0";

fn edges() -> Vec<Edge> {
    use Base::*;
    let edge = |name, base, change, listed| Edge {
        name,
        base,
        change,
        listed,
    };
    vec![
        // The listed differences.
        edge(
            "no-mode",
            Policy,
            |d| remove(d, "spec.mode"),
            Some("mode-optional"),
        ),
        edge(
            "api-version-v2",
            Policy,
            |d| set(d, "apiVersion", "spyderbat/v2"),
            Some("api-version"),
        ),
        edge(
            "empty-metadata-name",
            Policy,
            |d| set(d, "metadata.name", "''"),
            Some("empty-values"),
        ),
        edge(
            "empty-process-name",
            Policy,
            |d| set(d, "spec.processPolicy.0.name", "''"),
            Some("empty-values"),
        ),
        edge(
            "empty-process-id",
            Policy,
            |d| set(d, "spec.processPolicy.0.id", "''"),
            Some("empty-values"),
        ),
        edge(
            "no-exe",
            Policy,
            |d| set(d, "spec.processPolicy.0.exe", "[]"),
            Some("empty-values"),
        ),
        edge(
            "empty-exe",
            Policy,
            |d| set(d, "spec.processPolicy.0.exe", "['']"),
            Some("empty-values"),
        ),
        edge(
            "no-euser-in-list",
            Policy,
            |d| set(d, "spec.processPolicy.0.euser", "[]"),
            Some("empty-values"),
        ),
        edge(
            "no-dns-name",
            Policy,
            |d| set(d, &format!("{EGRESS_0}.to"), "[{dnsSelector: []}]"),
            Some("empty-values"),
        ),
        edge(
            "empty-dns-name",
            Policy,
            |d| set(d, &format!("{EGRESS_0}.to"), "[{dnsSelector: ['']}]"),
            Some("empty-values"),
        ),
        edge(
            "empty-image",
            Policy,
            |d| set(d, "spec.containerSelector.image", "''"),
            Some("empty-values"),
        ),
        edge(
            "no-default-action",
            Policy,
            |d| set(d, "spec.response.default", "[]"),
            Some("empty-values"),
        ),
        edge(
            "empty-policy-uid",
            ProcessDeviation,
            |d| set(d, "metadata.policy_uid", "''"),
            Some("empty-values"),
        ),
        edge(
            "root-without-euser",
            Policy,
            |d| remove(d, "spec.processPolicy.0.euser"),
            Some("root-euser"),
        ),
        edge(
            "fingerprint-root-without-euser",
            Fingerprint,
            |d| remove(d, "spec.processPolicy.0.euser"),
            Some("root-euser"),
        ),
        edge(
            "port-0",
            Policy,
            |d| set(d, &format!("{EGRESS_0}.ports.0.port"), "0"),
            Some("port-zero"),
        ),
        edge(
            "timestamp-as-text",
            Policy,
            |d| {
                set(
                    d,
                    "metadata.latestTimestamp",
                    "'Thu, 28 Nov 2024 08:00:30 GMT'",
                )
            },
            Some("timestamps"),
        ),
        edge(
            "cidr-without-prefix",
            Policy,
            |d| {
                set(
                    d,
                    &format!("{EGRESS_0}.to"),
                    "[{ipBlock: {cidr: 198.18.1.53}}]",
                )
            },
            Some("cidr"),
        ),
        edge(
            "except-outside-cidr",
            Policy,
            |d| {
                set(
                    d,
                    &format!("{EGRESS_0}.to"),
                    "[{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}}]",
                )
            },
            Some("cidr"),
        ),
        edge(
            "cluster-selector",
            Policy,
            |d| set(d, "spec.clusterSelector", "{matchFields: {name: c}}"),
            Some("unsupported-features"),
        ),
        edge(
            "match-fields",
            Policy,
            |d| set(d, "spec.containerSelector", "{matchFields: {image: x}}"),
            Some("unsupported-features"),
        ),
        edge(
            "disable-processes",
            Policy,
            |d| set(d, "spec.disableProcesses", "all"),
            Some("unsupported-features"),
        ),
        edge(
            "renice-action",
            Policy,
            |d| {
                set(
                    d,
                    "spec.response.actions",
                    "[{agentReniceProcess: {priority: '10', podSelector: {matchLabels: {a: b}}}}]",
                )
            },
            Some("unsupported-features"),
        ),
        edge(
            "empty-machine-selector",
            Policy,
            |d| set(d, "spec.machineSelector", "{}"),
            Some("machine-selector"),
        ),
        edge(
            "egress-deviation-without-egress",
            EgressDeviation,
            |d| remove(d, "spec.networkPolicy"),
            Some("deviation-shape"),
        ),
        edge(
            "process-deviation-without-process",
            ProcessDeviation,
            |d| remove(d, "spec.processPolicy"),
            Some("deviation-shape"),
        ),
        edge(
            "unknown-deviation-type",
            ProcessDeviation,
            |d| set(d, "metadata.type", "weird"),
            Some("deviation-shape"),
        ),
        edge(
            "empty-processes-list",
            Policy,
            |d| set(d, &format!("{EGRESS_0}.processes"), "[]"),
            Some("empty-processes"),
        ),
        edge(
            "long-flag-content",
            Policy,
            |d| {
                set(
                    d,
                    "spec.response.default.0.makeRedFlag.content",
                    &"x".repeat(400),
                )
            },
            Some("flag-text-length"),
        ),
        edge(
            "deviation-naming-another-process",
            EgressDeviation,
            |d| set(d, "spec.networkPolicy.egress.0.processes", "[nope_0]"),
            Some("deviation-process-ids"),
        ),
        // Where both refuse, or both accept: no difference.
        edge("no-response", Policy, |d| remove(d, "spec.response"), None),
        edge("no-enabled", Policy, |d| remove(d, "spec.enabled"), None),
        edge(
            "unknown-type",
            Policy,
            |d| set(d, "metadata.type", "pod"),
            None,
        ),
        edge(
            "unknown-spec-field",
            Policy,
            |d| set(d, "spec.extra", "1"),
            None,
        ),
        edge(
            "unknown-process-field",
            Policy,
            |d| set(d, "spec.processPolicy.0.extra", "1"),
            None,
        ),
        edge(
            "port-65536",
            Policy,
            |d| set(d, &format!("{EGRESS_0}.ports.0.port"), "65536"),
            None,
        ),
        edge(
            "protocol-sctp",
            Policy,
            |d| set(d, &format!("{EGRESS_0}.ports.0.protocol"), "SCTP"),
            None,
        ),
        edge(
            "no-ports",
            Policy,
            |d| set(d, &format!("{EGRESS_0}.ports"), "[]"),
            None,
        ),
        edge(
            "no-processes",
            Policy,
            |d| remove(d, &format!("{EGRESS_0}.processes")),
            None,
        ),
        edge(
            "unknown-process-id",
            Policy,
            |d| set(d, &format!("{EGRESS_0}.processes"), "[nope_0]"),
            None,
        ),
        edge(
            "no-peer",
            Policy,
            |d| set(d, &format!("{EGRESS_0}.to"), "[]"),
            None,
        ),
        edge(
            "cidr-with-host-bits",
            Policy,
            |d| {
                set(
                    d,
                    &format!("{EGRESS_0}.to"),
                    "[{ipBlock: {cidr: 198.18.1.53/24}}]",
                )
            },
            None,
        ),
        edge(
            "no-ingress",
            Policy,
            |d| remove(d, "spec.networkPolicy.ingress"),
            None,
        ),
        edge(
            "empty-container-selector",
            Policy,
            |d| set(d, "spec.containerSelector", "{}"),
            None,
        ),
        edge(
            "no-container-selector",
            Policy,
            |d| remove(d, "spec.containerSelector"),
            None,
        ),
        edge(
            "empty-pod-selector",
            Policy,
            |d| set(d, "spec.podSelector", "{}"),
            None,
        ),
        edge(
            "bad-operator",
            Policy,
            |d| {
                set(
                    d,
                    "spec.podSelector",
                    "{matchExpressions: [{key: a, operator: Foo, values: [x]}]}",
                )
            },
            None,
        ),
        edge(
            "in-without-values",
            Policy,
            |d| {
                set(
                    d,
                    "spec.podSelector",
                    "{matchExpressions: [{key: a, operator: In}]}",
                )
            },
            None,
        ),
        edge(
            "unknown-mode",
            Policy,
            |d| set(d, "spec.mode", "block"),
            None,
        ),
        edge(
            "unknown-severity",
            Policy,
            |d| set(d, "spec.response.default.0.makeRedFlag.severity", "urgent"),
            None,
        ),
        edge(
            "action-without-selector",
            Policy,
            |d| set(d, "spec.response.actions", "[{agentKillProcess: {}}]"),
            None,
        ),
        edge(
            "two-actions-in-one",
            Policy,
            |d| set(d, "spec.response.default.0.agentKillPod", "{}"),
            None,
        ),
        edge(
            "fingerprint-with-mode",
            Fingerprint,
            |d| set(d, "spec.mode", "audit"),
            None,
        ),
        edge(
            "fingerprint-with-response",
            Fingerprint,
            |d| set(d, "spec.response", "{default: [], actions: []}"),
            None,
        ),
        edge(
            "deviation-without-checksum",
            ProcessDeviation,
            |d| remove(d, "metadata.checksum"),
            None,
        ),
        edge(
            "unknown-deviation-spec-field",
            ProcessDeviation,
            |d| set(d, "spec.extra", "1"),
            None,
        ),
    ]
}

/// Places where spyctl ignores keys it does not know (its models allow extra keys there), so a
/// file with one is valid to spyctl: guardlab keeps such keys instead of refusing the file.
fn unknown_keys_spyctl_ignores() -> Vec<Edge> {
    use Base::*;
    let edge = |name, base, change| Edge {
        name,
        base,
        change,
        listed: None,
    };
    vec![
        edge("policy-metadata-extra", Policy, |d| {
            set(d, "metadata.team", "data-science")
        }),
        edge("fingerprint-metadata-extra", Fingerprint, |d| {
            set(d, "metadata.team", "data-science")
        }),
        edge("network-policy-extra", Policy, |d| {
            set(d, "spec.networkPolicy.comment", "reviewed")
        }),
        edge("response-extra", Policy, |d| {
            set(d, "spec.response.comment", "reviewed")
        }),
        edge("deviation-metadata-extra", ProcessDeviation, |d| {
            set(d, "metadata.team", "data-science")
        }),
    ]
}

/// Writes each edge document under `dir`; (edge, file).
fn write_edges(dir: &Path, edges: Vec<Edge>) -> Vec<(Edge, PathBuf)> {
    let written = write_all(dir);
    let live = written.iter().find(|w| w.story == "live").unwrap();
    let parse =
        |p: &Path| -> Value { serde_yaml::from_str(&std::fs::read_to_string(p).unwrap()).unwrap() };
    let deviation = |kind: &str| {
        live.deviations
            .iter()
            .map(|p| parse(p))
            .find(|d| d["metadata"]["type"] == kind)
            .unwrap_or_else(|| panic!("the live run has a {kind} deviation"))
    };
    let edge_dir = dir.join("edges");
    std::fs::create_dir_all(&edge_dir).unwrap();
    edges
        .into_iter()
        .map(|edge| {
            let mut doc = match edge.base {
                Base::Policy => parse(&live.policy),
                Base::Fingerprint => parse(&live.fingerprints[0]),
                Base::ProcessDeviation => deviation("process"),
                Base::EgressDeviation => deviation("egress"),
            };
            (edge.change)(&mut doc);
            let path = edge_dir.join(format!("{}.yaml", edge.name));
            std::fs::write(&path, serde_yaml::to_string(&doc).unwrap()).unwrap();
            (edge, path)
        })
        .collect()
}

/// The names README's "Differences from spyctl" section lists (`- **name**: ...`).
fn readme_differences() -> BTreeSet<String> {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let start = readme
        .find("\n## Differences from spyctl")
        .expect("README has a section `## Differences from spyctl`");
    let section = &readme[start + 1..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    section
        .lines()
        .filter_map(|l| l.strip_prefix("- **"))
        .filter_map(|l| l.split_once("**"))
        .map(|(name, _)| name.to_string())
        .collect()
}

#[test]
fn plain_validate_differs_from_spyctl_only_where_the_readme_says() {
    let dir = tempfile::tempdir().unwrap();
    let edges = write_edges(dir.path(), edges());
    let corpus = corpus(&dir.path().join("corpus"));
    let edge_files: Vec<PathBuf> = edges.iter().map(|(_, f)| f.clone()).collect();
    let all: Vec<PathBuf> = corpus.iter().chain(&edge_files).cloned().collect();
    let verdicts = spyctl::validate_all(&all);
    let (corpus_verdicts, edge_verdicts) = verdicts.split_at(corpus.len());
    let mut unexplained = Vec::new();

    // The peer files and guardlab's documents: the only difference is the older format.
    let mut older_format = 0;
    for (file, verdict) in corpus.iter().zip(corpus_verdicts) {
        if guardlab_valid(file, false) == verdict.is_valid() {
            continue;
        }
        if refused_only_for_missing_mode(file, verdict) {
            older_format += 1;
        } else {
            unexplained.push(format!(
                "{}: guardlab {}, spyctl {verdict:?}",
                file.display(),
                if verdict.is_valid() {
                    "refuses"
                } else {
                    "accepts"
                }
            ));
        }
    }
    assert!(
        older_format > 0,
        "the policy library is in the older format"
    );

    // The edge documents: each listed difference is real, and nothing else differs.
    let mut shown = BTreeSet::new();
    for ((edge, file), verdict) in edges.iter().zip(edge_verdicts) {
        let plain = guardlab_valid(file, false);
        match edge.listed {
            Some(name) if plain == verdict.is_valid() => unexplained.push(format!(
                "{}: README lists `{name}`, but guardlab and spyctl agree here ({})",
                edge.name,
                if plain { "valid" } else { "invalid" }
            )),
            Some(name) => {
                shown.insert(name.to_string());
            }
            None if plain != verdict.is_valid() => unexplained.push(format!(
                "{}: guardlab {}, spyctl {verdict:?} (not in README's list)",
                edge.name,
                if plain { "accepts" } else { "refuses" }
            )),
            None => {}
        }
    }
    assert!(
        unexplained.is_empty(),
        "differences between `guardlab validate` and `spyctl validate` that README does not explain:\n{}",
        unexplained.join("\n")
    );
    // The list and the documents that show it are the same list.
    assert_eq!(
        readme_differences(),
        shown,
        "README's `Differences from spyctl` and the differences the edge documents show"
    );
}

#[test]
fn strict_validate_refuses_the_older_format_as_spyctl_does() {
    let dir = tempfile::tempdir().unwrap();
    let edges = write_edges(
        dir.path(),
        edges()
            .into_iter()
            .filter(|e| e.listed.is_none() || e.listed == Some("mode-optional"))
            .collect(),
    );
    let files: Vec<PathBuf> = edges.iter().map(|(_, f)| f.clone()).collect();
    let verdicts = spyctl::validate_all(&files);
    for ((edge, file), verdict) in edges.iter().zip(&verdicts) {
        assert_eq!(
            guardlab_valid(file, true),
            verdict.is_valid(),
            "{}: guardlab validate --strict and spyctl ({verdict:?})",
            edge.name
        );
    }
}

#[test]
fn unknown_keys_that_spyctl_ignores_are_accepted_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let edges = write_edges(dir.path(), unknown_keys_spyctl_ignores());
    let files: Vec<PathBuf> = edges.iter().map(|(_, f)| f.clone()).collect();
    let verdicts = spyctl::validate_all(&files);
    for ((edge, file), verdict) in edges.iter().zip(&verdicts) {
        assert!(
            verdict.is_valid(),
            "{}: spyctl ignores this key: {verdict:?}",
            edge.name
        );
        for strict in [false, true] {
            assert!(
                guardlab_valid(file, strict),
                "{}: guardlab validate{} refuses a key spyctl ignores",
                edge.name,
                if strict { " --strict" } else { "" }
            );
        }
    }
    // Kept: a policy with an unknown metadata key, merged, still has it.
    let (_, policy) = &edges[0];
    let (_, fingerprint) = &edges[1];
    let merged = spyctl::documents::stdout_of(
        guardlab()
            .args(["merge", "--policy"])
            .arg(policy)
            .arg("--with")
            .arg(fingerprint),
    );
    let merged: Value = serde_yaml::from_str(&merged).unwrap();
    assert_eq!(merged["metadata"]["team"], "data-science", "{merged:?}");
}
