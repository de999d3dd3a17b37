//! Everything the engine writes is a valid spyctl document that reads back unchanged: the
//! fingerprints, groups, policies, deviations and merged policies of the notebook story.

use guardlab_engine::deviation::{DeviationMatcher, ROOT_ANCHOR};
use guardlab_engine::document::{Document, parse_document, to_yaml};
use guardlab_engine::fingerprint::{fingerprint_groups, fingerprints};
use guardlab_engine::merge::{merge_deviation, merge_document, merge_policy};
use guardlab_engine::model::Mode;
use guardlab_engine::policy::{PolicyError, create_policy, create_policy_from};
use guardlab_engine::validate::validate;
use guardlab_test_support::notebook::{CG, FIRST, baseline};
use guardlab_test_support::stream::prog;

fn check(doc: Document) {
    let problems = validate(&doc);
    let text = to_yaml(&doc);
    assert!(problems.is_empty(), "{problems:?}\n{text}");
    let back =
        parse_document("engine-output.yaml", &text).unwrap_or_else(|d| panic!("{d:?}\n{text}"));
    assert_eq!(back, doc, "round trip\n{text}");
}

#[test]
fn the_story_s_documents_validate_and_round_trip() {
    let mut nb = baseline(&FIRST);
    let fps = fingerprints(&nb.s.events);
    for fp in &fps {
        check(Document::Fingerprint(fp.clone()));
    }
    for group in fingerprint_groups(&nb.s.events) {
        check(Document::FingerprintGroup(group));
    }
    let policy = create_policy(&fps, None, Mode::Audit).unwrap();
    check(Document::Policy(policy.clone()));

    let bash = nb.terminal();
    nb.attack(bash);
    // A `kubectl exec` shell: a new root.
    let shell = nb.s.spawn(CG, None, prog("/bin/sh", &["sh"], "root"));
    nb.s.connect(
        CG,
        shell,
        guardlab_events::Protocol::Tcp,
        ("198.18.0.2", 40000),
        ("198.18.0.99", 22),
    );
    nb.s.accept(CG, nb.server, ("198.18.0.2", 8888), ("198.18.0.77", 41000));
    let mut m = DeviationMatcher::new(std::slice::from_ref(&policy)).unwrap();
    m.observe_all(&nb.s.events);
    let report = m.report();
    assert!(report.deviations().any(|d| {
        d.spec
            .process_policy
            .iter()
            .any(|p| p.policy_node.id == ROOT_ANCHOR)
    }));
    assert!(report.deviations().any(|d| {
        d.spec
            .network_policy
            .as_ref()
            .is_some_and(|n| !n.ingress.is_empty())
    }));
    let mut merged = policy.clone();
    for d in report.deviations() {
        check(Document::Deviation(d.clone()));
        merged = merge_deviation(&merged, d).unwrap();
        check(Document::Policy(merged.clone()));
    }
    let grown = merge_policy(&policy, &fingerprints(&nb.s.events)[0]).unwrap();
    check(Document::Policy(grown));
}

#[test]
fn documents_of_any_kind_go_in_one_call() {
    let mut nb = baseline(&FIRST);
    let fps = fingerprints(&nb.s.events);
    let groups = fingerprint_groups(&nb.s.events);
    let from_fp =
        create_policy_from(&[Document::Fingerprint(fps[0].clone())], None, Mode::Audit).unwrap();
    let from_group = create_policy_from(
        &[Document::FingerprintGroup(groups[0].clone())],
        None,
        Mode::Audit,
    )
    .unwrap();
    assert_eq!(from_fp, from_group);
    let err =
        create_policy_from(&[Document::Policy(from_fp.clone())], None, Mode::Audit).unwrap_err();
    assert!(matches!(err, PolicyError::WrongKind { .. }), "{err}");

    let bash = nb.terminal();
    nb.attack(bash);
    let report =
        guardlab_engine::deviation::find_deviations(std::slice::from_ref(&from_fp), &nb.s.events)
            .unwrap();
    let mut merged = from_fp.clone();
    for d in report.deviations() {
        merged = merge_document(&merged, &Document::Deviation(d.clone())).unwrap();
    }
    let after = fingerprint_groups(&nb.s.events);
    let with_group =
        merge_document(&from_fp, &Document::FingerprintGroup(after[0].clone())).unwrap();
    assert_eq!(
        with_group.spec.process_policy, merged.spec.process_policy,
        "the same behaviour, merged either way"
    );
    assert_eq!(
        merge_document(&merged, &Document::Policy(merged.clone())).unwrap(),
        merged
    );
}
