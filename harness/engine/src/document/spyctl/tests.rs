//! spyctl 0.24.2's verdicts, each checked against what `spyctl validate -f` says of the same
//! text (run by hand with spyctl 0.24.2 when these were written; the spyctl oracle tests run
//! it for real).

use super::*;

const POLICY: &str = "\
apiVersion: spyderbat/v1
kind: SpyderbatPolicy
metadata:
  name: app-policy
  type: container
  latestTimestamp: 1700000000.5
spec:
  mode: audit
  containerSelector:
    image: app:1
  processPolicy:
  - name: sh
    exe: [/bin/sh]
    id: sh_0
    euser: [root]
    children:
    - {name: curl, exe: [/usr/bin/curl], id: curl_0}
  networkPolicy:
    ingress: []
    egress:
    - to: [{dnsSelector: [example.com]}]
      processes: [curl_0]
      ports: [{protocol: TCP, port: 443}]
  response:
    default: [{makeRedFlag: {severity: high}}]
    actions: []
";

const DEVIATION: &str = "\
apiVersion: spyderbat/v1
kind: GuardianDeviation
metadata: {type: egress, policy_uid: pol:1, checksum: abc, uid: dev:1}
spec:
  processPolicy:
  - policyNode:
      id: sh_0
      children:
      - {name: curl, exe: [/usr/bin/curl], id: curl_0}
  networkPolicy:
    egress:
    - to: [{ipBlock: {cidr: 198.18.0.1/32}}]
      processes: [curl_0]
      ports: [{protocol: UDP, port: 53}]
";

/// The problems spyctl would have with `text`, as `line: field: message`.
fn refusals(text: &str) -> Vec<String> {
    check_file("f.yaml", text)
        .into_iter()
        .map(|d| format!("{}: {}: {}", d.line, d.field, d.message))
        .collect()
}

fn accepted(text: &str) {
    assert_eq!(refusals(text), Vec::<String>::new(), "{text}");
}

fn refused(text: &str, line: usize, words: &str) {
    let found = refusals(text);
    assert!(
        found
            .iter()
            .any(|r| r.starts_with(&format!("{line}: ")) && r.contains(words)),
        "expected a refusal on line {line} with {words:?}, found {found:#?}"
    );
}

#[test]
fn a_complete_policy_and_deviation_are_accepted() {
    accepted(POLICY);
    accepted(DEVIATION);
}

#[test]
fn a_policy_without_mode_is_refused_as_the_library_s_are() {
    refused(
        &POLICY.replace("  mode: audit\n", ""),
        7,
        "spec.mode: field required",
    );
}

#[test]
fn pydantic_converts_what_it_can() {
    // A port as text, a boolean as a word, a number as a timestamp: all converted.
    accepted(&POLICY.replace("port: 443", "port: '443'"));
    accepted(&POLICY.replace("  mode: audit\n", "  mode: audit\n  enabled: 'yes'\n"));
    accepted(&POLICY.replace("port: 443", "port: 443.0"));
    // What it cannot.
    refused(
        &POLICY.replace("port: 443", "port: https"),
        23,
        "whole number",
    );
    refused(
        &POLICY.replace("port: 443", "port: 70000"),
        23,
        "from 0 to 65535",
    );
    refused(
        &POLICY.replace("name: app-policy", "name: 12"),
        4,
        "expected a string",
    );
    // YAML 1.1: `yes` is a boolean, not the string a mode would need.
    refused(
        &POLICY.replace("mode: audit", "mode: yes"),
        8,
        "'enforce' or 'audit'",
    );
}

#[test]
fn spyctl_s_own_checks_and_the_ones_that_never_run() {
    refused(
        &POLICY.replace("processes: [curl_0]", "processes: []"),
        22,
        "at least 1",
    );
    refused(
        &POLICY.replace("processes: [curl_0]", "processes: [wget_0]"),
        22,
        "no process with id",
    );
    refused(
        &POLICY.replace("id: curl_0", "id: sh_0"),
        17,
        "duplicate process id 'sh_0'",
    );
    refused(
        &POLICY.replace(
            "{dnsSelector: [example.com]}",
            "{ipBlock: {cidr: 10.0.0.1/8}}",
        ),
        21,
        "matches none",
    );
    // spyctl declares these two checks but never runs them (see schema.rs).
    accepted(&POLICY.replace("port: 443}", "port: 443, endPort: 80}"));
    accepted(&POLICY.replace(
        "{dnsSelector: [example.com]}",
        "{ipBlock: {cidr: 10.0.0.0/8, except: [192.168.0.0/16]}}",
    ));
}

#[test]
fn unknown_keys_are_refused_or_ignored_as_each_model_says() {
    refused(
        &POLICY.replace("  mode: audit\n", "  mode: audit\n  colour: red\n"),
        9,
        "extra field `colour`",
    );
    // spyctl knows these, and so they are fine by it.
    accepted(&POLICY.replace(
        "  mode: audit\n",
        "  mode: audit\n  disableProcesses: all\n",
    ));
    // Metadata, a deviation's top level and networkPolicy ignore what they do not know.
    accepted(&POLICY.replace("  type: container\n", "  type: container\n  orgUid: o:1\n"));
    accepted(&format!("{DEVIATION}status: open\n"));
    accepted(&POLICY.replace("    ingress: []\n", "    ingress: []\n    notes: x\n"));
    refused(
        &format!("{POLICY}status: open\n"),
        27,
        "extra field `status`",
    );
}

#[test]
fn one_document_a_list_or_an_items_list() {
    let two = format!("{POLICY}---\n{DEVIATION}");
    refused(&two, 27, "expected a single document in the stream");
    refused("", 1, "no document");
    refused("just text\n", 1, "a mapping or a list of mappings");

    let item = |doc: &str| {
        let mut lines = doc.lines();
        let first = lines.next().unwrap_or_default();
        let rest: String = lines.map(|l| format!("\n  {l}")).collect();
        format!("- {first}{rest}\n")
    };
    accepted(&format!("{}{}", item(POLICY), item(DEVIATION)));
    accepted(&format!(
        "apiVersion: spyderbat/v1\nitems:\n{}{}",
        item(DEVIATION),
        item(&DEVIATION.replace("dev:1", "dev:2"))
    ));
    // An item's metadata must be all strings there: a policy with a timestamp is refused.
    refused(
        &format!("apiVersion: spyderbat/v1\nitems:\n{}", item(POLICY)),
        3,
        "matches none",
    );
    refused("items: []\n", 1, "apiVersion: field required");
}

#[test]
fn a_fragment_that_needs_a_conversion_is_accepted_once() {
    // A deviation's process items are a union (a node, or a fragment under a policy node): the
    // ids a member takes count once, also when a value needs a conversion.
    accepted(&DEVIATION.replace("port: 53", "port: '53'"));
    refused(
        &DEVIATION.replace("id: curl_0}", "id: sh_0}"),
        6,
        "duplicate process id",
    );
}

#[test]
fn what_pyyaml_cannot_load_is_refused_with_its_line() {
    refused(
        &POLICY.replace(
            "  type: container\n",
            "  type: container\n  type: container\n",
        ),
        6,
        "duplicate key 'type'",
    );
    refused(
        &POLICY.replace("mode: audit", "mode: !audit x"),
        8,
        "no constructor",
    );
}

#[test]
fn fields_spyctl_declares_are_known_by_path() {
    let spec = FieldPath::root().key("spec");
    assert!(accepts_field(
        "SpyderbatPolicy",
        Some("container"),
        &spec,
        "disableProcesses"
    ));
    assert!(accepts_field(
        "SpyderbatPolicy",
        None,
        &spec,
        "clusterSelector"
    ));
    assert!(!accepts_field("SpyderbatPolicy", None, &spec, "colour"));
    assert!(!accepts_field(
        "SpyderbatPolicy",
        Some("cluster"),
        &spec,
        "mode"
    ));
    assert!(accepts_field(
        "SpyderbatFingerprint",
        None,
        &spec.key("containerSelector"),
        "matchFields"
    ));
    let action = spec
        .key("response")
        .key("actions")
        .index(0)
        .key("makeOpsFlag");
    assert!(accepts_field(
        "SpyderbatPolicy",
        None,
        &action,
        "description"
    ));
    assert!(!accepts_field("SpyderbatPolicy", None, &action, "impact"));
    let node = spec
        .key("processPolicy")
        .index(0)
        .key("policyNode")
        .key("children")
        .index(0);
    assert!(accepts_field(
        "GuardianDeviation",
        None,
        &node,
        "listeningSockets"
    ));
}
