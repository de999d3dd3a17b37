//! What spyctl writes, guardlab reads, and the other way round (issue 14); and no text, however
//! hostile, makes reading crash or take unbounded memory (issue 13.2).

use std::fs;
use std::path::{Path, PathBuf};

use guardlab_engine::document::{
    Diagnostic, Document, load_document, load_documents, load_located, parse_documents, spyctl,
    to_spyctl_yaml, to_yaml,
};
use guardlab_engine::model::EgressNode;

fn peer(path: &str) -> PathBuf {
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/peer-data/spyctl")
        .join(path);
    assert!(
        file.exists(),
        "the peer spyctl files are missing: expected {} (the `shared/` folder must sit beside the repository)",
        file.display()
    );
    file
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn show(diagnostics: &[Diagnostic]) -> String {
    diagnostics.iter().map(|d| format!("  {d}\n")).collect()
}

/// A library policy as a Spyderbat organisation exports it: metadata guardlab does not model.
fn exported_policy() -> String {
    read(&peer("policy_library/container/coredns-policy.yaml")).replace(
        "  type: container\n",
        "  type: container\n  uid: pol:Xk2f9aQ\n  orgUid: spyderbatuid\n  version: 7\n  createdBy: someone@example.com\n  creationTimestamp: 1677247249.5\n  selectorHash: 9a1b\n",
    )
}

#[test]
fn exported_metadata_is_kept_and_written_back_as_it_was() {
    let text = exported_policy();
    let doc = load_document("exported.yaml", &text).unwrap_or_else(|d| panic!("{}", show(&d)));
    let written = to_yaml(&doc);
    for line in [
        "  uid: pol:Xk2f9aQ\n",
        "  orgUid: spyderbatuid\n",
        "  version: 7\n",
        "  createdBy: someone@example.com\n",
        "  creationTimestamp: 1677247249.5\n",
        "  selectorHash: 9a1b\n",
    ] {
        assert!(written.contains(line), "{line:?} lost:\n{written}");
    }
    // The unmodelled fields follow the modelled ones, in the order they were read.
    let order: Vec<&str> = written
        .lines()
        .filter_map(|l| l.strip_prefix("  ")?.split(':').next())
        .take_while(|k| !k.starts_with(' '))
        .collect();
    let pos = |k: &str| order.iter().position(|o| *o == k).unwrap();
    assert!(pos("orgUid") < pos("version") && pos("version") < pos("createdBy"));
    assert_eq!(load_document("again", &written).unwrap(), doc);
}

#[test]
fn an_unknown_field_in_spec_is_still_refused_and_a_spyctl_one_is_named_as_such() {
    let typo = exported_policy().replace(
        "  processPolicy:\n",
        "  procesPolicy: []\n  processPolicy:\n",
    );
    let d = load_document("typo.yaml", &typo).unwrap_err();
    assert!(
        d[0].message.starts_with("unknown field `procesPolicy`"),
        "{}",
        show(&d)
    );
    let spyctl_field = exported_policy().replace(
        "  processPolicy:\n",
        "  disableProcesses: all\n  processPolicy:\n",
    );
    let d = load_document("spyctl.yaml", &spyctl_field).unwrap_err();
    let line = spyctl_field
        .lines()
        .position(|l| l.contains("disableProcesses"))
        .unwrap()
        + 1;
    assert_eq!(
        (d[0].line, d[0].field.as_str()),
        (line, "spec"),
        "{}",
        show(&d)
    );
    assert!(
        d[0].message
            .contains("`disableProcesses` is a spyctl field guardlab does not support"),
        "{}",
        show(&d)
    );
}

#[test]
fn keys_spyctl_ignores_in_spec_are_kept_and_written_back() {
    // spyctl's models of `networkPolicy`, `response` and a selector expression ignore keys they
    // do not know; guardlab keeps them where they were, after the fields it models.
    let text = exported_policy()
        .replacen("spec:\n", "spec:\n  mode: audit\n", 1)
        .replacen(
            "  networkPolicy:\n",
            "  networkPolicy:\n    comment: reviewed by ops\n",
            1,
        )
        .replacen(
            "  response:\n",
            "  response:\n    reviewer: {team: sre, ticket: 42}\n",
            1,
        )
        .replacen(
            "  namespaceSelector:\n",
            "  namespaceSelector:\n    matchExpressions:\n    - {key: tier, operator: In, values: [dns], note: kept}\n",
            1,
        );
    let doc = load_document("kept.yaml", &text).unwrap_or_else(|d| panic!("{}", show(&d)));
    let Document::Policy(policy) = &doc else {
        panic!("a policy: {doc:?}")
    };
    assert_eq!(
        policy.spec.network_policy.extra.get("comment"),
        Some(&"reviewed by ops".into())
    );
    let written = to_yaml(&doc);
    for kept in [
        "    comment: reviewed by ops\n",
        "    reviewer:\n      team: sre\n      ticket: 42\n",
        "      note: kept\n",
    ] {
        assert!(written.contains(kept), "{kept:?} lost:\n{written}");
    }
    assert_eq!(load_document("again", &written).unwrap(), doc);
    // spyctl accepts them too.
    assert_eq!(
        spyctl::check_file("kept.yaml", &text),
        [],
        "spyctl's verdict"
    );
    // Where spyctl refuses an unknown key (an egress rule), guardlab still does.
    let refused = text.replacen(
        "    egress: []\n",
        "    egress:\n    - weight: 3\n      to: [{dnsSelector: [example.com]}]\n      ports: [{protocol: TCP, port: 443}]\n",
        1,
    );
    assert_ne!(refused, text, "the policy has an egress list");
    let d = load_document("refused.yaml", &refused).unwrap_err();
    assert!(
        d[0].message.starts_with("unknown field `weight`"),
        "{}",
        show(&d)
    );
    assert!(!spyctl::check_file("refused.yaml", &refused).is_empty());
}

fn as_item(doc: &str) -> String {
    let mut lines = doc.lines();
    let first = lines.next().unwrap_or_default();
    let rest: String = lines.map(|l| format!("\n  {l}")).collect();
    format!("- {first}{rest}\n")
}

#[test]
fn spyctl_s_list_forms_are_read_with_the_line_of_each_item() {
    let policy = read(&peer("policy_library/container/coredns-policy.yaml"));
    let other = read(&peer("policy_library/container/pause-policy.yaml"));
    let items = format!(
        "apiVersion: spyderbat/v1\nitems:\n{}{}",
        as_item(&policy),
        as_item(&other)
    );
    let docs = load_located("items.yaml", &items).unwrap_or_else(|d| panic!("{}", show(&d)));
    assert_eq!(docs.len(), 2);
    assert_eq!((docs[0].line, docs[0].field.as_str()), (3, "items[0]"));
    let second = 3 + policy.lines().count();
    assert_eq!((docs[1].line, docs[1].field.as_str()), (second, "items[1]"));
    assert_eq!(docs[0].document, load_document("p", &policy).unwrap());

    // A bare list of documents too.
    let list = format!("{}{}", as_item(&policy), as_item(&other));
    assert_eq!(load_documents("list.yaml", &list).unwrap().len(), 2);

    // A problem in an item is named by its place and line.
    let bad = items.replacen(
        "\n      id: coredns_0\n",
        "\n      id: coredns_0\n      names: x\n",
        1,
    );
    let d = load_documents("bad.yaml", &bad).unwrap_err();
    assert_eq!(d.len(), 1, "{}", show(&d));
    let line = bad.lines().position(|l| l.contains("names: x")).unwrap() + 1;
    assert_eq!(
        (d[0].line, d[0].field.as_str()),
        (line, "items[0].spec.processPolicy[0]"),
        "{}",
        show(&d)
    );
    assert!(
        d[0].message.starts_with("unknown field `names`"),
        "{}",
        show(&d)
    );
    // So is a rule broken after reading.
    let bad = items.replacen("\n      id: coredns_0\n", "\n      id: ''\n", 1);
    let d = load_documents("bad.yaml", &bad).unwrap_err();
    assert_eq!(
        d[0].field,
        "items[0].spec.processPolicy[0].id",
        "{}",
        show(&d)
    );

    // "kind: missing field `kind`" no more; a list of nothing is still no document.
    let d = parse_documents("empty.yaml", "apiVersion: spyderbat/v1\nitems: []\n").unwrap_err();
    assert!(d[0].message.contains("holds no document"), "{}", show(&d));
}

#[test]
fn several_documents_are_written_as_spyctl_writes_them() {
    let policy = load_document(
        "p",
        &read(&peer("policy_library/container/coredns-policy.yaml")),
    )
    .unwrap();
    let other = load_document(
        "p",
        &read(&peer("policy_library/container/pause-policy.yaml")),
    )
    .unwrap();
    assert_eq!(
        to_spyctl_yaml(std::slice::from_ref(&policy)),
        to_yaml(&policy)
    );
    assert_eq!(to_spyctl_yaml(&[]), "");
    let both = to_spyctl_yaml(&[policy.clone(), other.clone()]);
    assert!(both.starts_with("apiVersion: spyderbat/v1\nitems:\n- apiVersion: spyderbat/v1\n  kind: SpyderbatPolicy\n"), "{both}");
    assert!(!both.contains("\n---"), "{both}");
    assert_eq!(load_documents("both", &both).unwrap(), [policy, other]);
}

#[test]
fn an_empty_process_list_is_not_written() {
    // spyctl refuses `processes: []`; guardlab reads it as "any process" and writes nothing.
    let text = read(&peer("policy_library/container/coredns-policy.yaml")).replace(
        "    egress: []\n",
        "    egress:\n    - to: [{dnsSelector: [example.com]}]\n      processes: []\n      ports: [{protocol: TCP, port: 443}]\n",
    );
    let doc = load_document("p", &text).unwrap_or_else(|d| panic!("{}", show(&d)));
    let Document::Policy(policy) = &doc else {
        panic!()
    };
    assert_eq!(
        policy.spec.network_policy.egress,
        [EgressNode {
            processes: Vec::new(),
            ..policy.spec.network_policy.egress[0].clone()
        }]
    );
    let written = to_yaml(&doc);
    assert!(!written.contains("processes"), "{written}");
    assert_eq!(load_document("again", &written).unwrap(), doc);
}

#[test]
fn strict_says_what_spyctl_says_of_the_peer_files() {
    // spyctl 0.24.2 refuses every policy of the library: they predate `spec.mode`.
    let dir = peer("policy_library");
    let mut files: Vec<PathBuf> = ["container", "linux_services"]
        .iter()
        .flat_map(|sub| fs::read_dir(dir.join(sub)).unwrap())
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 64);
    for file in &files {
        let text = read(file);
        let name = file.display().to_string();
        assert!(
            load_document(&name, &text).is_ok(),
            "plain validate reads {name}"
        );
        let refusals = spyctl::check_file(&name, &text);
        assert_eq!(refusals.len(), 1, "{name}:\n{}", show(&refusals));
        assert_eq!(refusals[0].field, "spec.mode", "{}", refusals[0]);
        assert_eq!(refusals[0].message, "field required", "{}", refusals[0]);
        // With a mode, spyctl accepts it.
        let with_mode = text.replacen("spec:\n", "spec:\n  mode: audit\n", 1);
        assert_eq!(
            spyctl::check_file(&name, &with_mode),
            [],
            "{name} with a mode"
        );
    }
    for (file, words) in [
        ("test_invalid_id.yaml", "duplicate process id 'python_0'"),
        ("test_invalid_process_policy.yaml", "extra field `names`"),
        ("test_invalid_selector.yaml", "spec.mode: field required"),
    ] {
        let path = peer(&format!("invalid-or-extra/{file}"));
        let refusals = spyctl::check_file(file, &read(&path));
        assert!(
            refusals.iter().any(|d| d.to_string().contains(words)),
            "{file}: {words:?} not in\n{}",
            show(&refusals)
        );
    }
}

/// The classic alias bomb: each level names the one below it ten times.
fn laughs(levels: usize) -> String {
    let mut text = String::from(
        "apiVersion: spyderbat/v1\nkind: SpyderbatPolicy\nmetadata:\n  name: lol\n  type: container\n  l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n",
    );
    for i in 1..levels {
        let refs = vec![format!("*l{}", i - 1); 10].join(", ");
        text.push_str(&format!("  l{i}: &l{i} [{refs}]\n"));
    }
    text
}

#[test]
fn no_text_makes_reading_crash_or_grow_without_bound() {
    // Each case: the text, the line of the refusal, and words of its message. Each would have
    // taken gigabytes, or the whole stack, before the limits.
    let deep_block: String = (0..200).map(|i| format!("{}k:\n", " ".repeat(i))).collect();
    let cases: Vec<(String, usize, &str)> = vec![
        (laughs(9), 10, "billion laughs"),
        ("[".repeat(50_000), 1, "nested deeper than 128"),
        (
            format!("{}x\n", "- ".repeat(50_000)),
            1,
            "nested deeper than 128",
        ),
        (
            format!("a: {}", "{b: ".repeat(50_000)),
            1,
            "nested deeper than 128",
        ),
        (deep_block, 129, "nested deeper than 128"),
    ];
    for (text, line, words) in &cases {
        for diagnostics in [
            load_documents("hostile.yaml", text).unwrap_err(),
            spyctl::check_file("hostile.yaml", text),
        ] {
            assert_eq!(diagnostics.len(), 1, "{}", show(&diagnostics));
            assert_eq!(diagnostics[0].line, *line, "{}", diagnostics[0]);
            assert!(diagnostics[0].message.contains(words), "{}", diagnostics[0]);
        }
    }
    // Aliases within the limits are fine: a PyYAML dump writes them for a value used twice.
    let shared = exported_policy()
        .replace(
            "  podSelector:\n    matchLabels:\n      k8s-app: kube-dns\n",
            "  podSelector: &labels\n    matchLabels:\n      k8s-app: kube-dns\n",
        )
        .replace(
            "  namespaceSelector:\n    matchLabels:\n      kubernetes.io/metadata.name: kube-system\n",
            "  namespaceSelector: *labels\n",
        );
    assert!(shared.contains("*labels"), "{shared}");
    let doc = load_document("shared.yaml", &shared).unwrap_or_else(|d| panic!("{}", show(&d)));
    let Document::Policy(policy) = doc else {
        panic!()
    };
    assert_eq!(policy.spec.namespace_selector, policy.spec.pod_selector);
}

#[test]
fn truncated_and_tabbed_text_is_refused_on_the_right_line() {
    let text = read(&peer("policy_library/container/coredns-policy.yaml"));
    let cut = &text[..text.find("    ingress: []").unwrap() + "    ingress: [".len()];
    let d = load_documents("cut.yaml", cut).unwrap_err();
    assert!(d[0].message.starts_with("invalid YAML"), "{}", show(&d));
    // A tab that breaks the indentation is reported where it is, not on the line before.
    let tabbed = text.replace("  type: container\n", "\ttype: container\n");
    let d = load_documents("tab.yaml", &tabbed).unwrap_err();
    assert_eq!((d[0].line, d[0].column), (5, 1), "{}", show(&d));
    assert!(d[0].message.contains("tab"), "{}", show(&d));
}
