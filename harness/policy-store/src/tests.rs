//! The store on the tutorial's story, as the runner and the console use it.

use guardlab_engine::model::Mode;
use guardlab_engine::policy::{self, PolicyStatus};
use guardlab_test_support::notebook::{FIRST, baseline};

use super::*;

/// A store that learned the notebook's baseline, and the fingerprint's name.
fn learned() -> (
    PolicyStore,
    guardlab_test_support::notebook::Notebook,
    String,
) {
    let nb = baseline(&FIRST);
    let mut store = PolicyStore::default();
    for e in &nb.s.events {
        assert!(store.observe(e).is_empty(), "no policy: no finding");
    }
    let names = store.fingerprint_names_for_image(Some("*minimal-notebook*"));
    assert_eq!(names.len(), 1, "one container, one fingerprint: {names:?}");
    let name = names[0].clone();
    (store, nb, name)
}

#[test]
fn a_policy_from_the_fingerprint_sees_the_terminal_and_the_attack() {
    let (mut store, mut nb, fingerprint) = learned();
    assert!(store.learning());
    let before = store.generation();
    let preview = store
        .preview_policy(
            std::slice::from_ref(&fingerprint),
            Some("jupyter-policy"),
            Mode::Audit,
        )
        .unwrap();
    assert_eq!(store.generation(), before, "a preview changes nothing");
    assert!(store.policies().is_empty());

    let made = store
        .create_policy(
            std::slice::from_ref(&fingerprint),
            Some("jupyter-policy"),
            Mode::Audit,
        )
        .unwrap()
        .clone();
    assert_eq!(made, preview, "the policy made is the one previewed");
    assert!(!store.learning(), "a policy ends the baseline");
    assert_eq!(policy::status(&made), PolicyStatus::Auditing);

    // The terminal's `ls` deviates, in audit mode too.
    let seen = nb.s.events.len();
    let bash = nb.terminal();
    let mut found = 0;
    for e in &nb.s.events[seen..] {
        found += store.observe(e).iter().filter(|f| f.new).count();
    }
    assert!(found >= 2, "bash and ls deviate: {found}");
    let changes = store.changes_since(before).unwrap();
    assert!(
        changes
            .iter()
            .any(|(_, c)| matches!(c, Change::Deviation { .. }))
    );

    store.set_mode("jupyter-policy", Mode::Enforce).unwrap();
    assert_eq!(
        policy::status(store.policy("jupyter-policy").unwrap()),
        PolicyStatus::Enforcing
    );
    let seen = nb.s.events.len();
    nb.attack(bash);
    for e in &nb.s.events[seen..] {
        store.observe(e);
    }
    assert!(!store.flags().is_empty(), "the attack raises red flags");
    let last = store.flags().last().unwrap();
    assert!(last.event_ns > 0);
    let investigation = store.investigation();
    assert!(
        investigation
            .deviations
            .iter()
            .any(|d| d.chain.iter().any(|p| p.name == "minerd")),
        "the miner is traced"
    );

    store.set_enabled("jupyter-policy", false).unwrap();
    assert_eq!(
        policy::status(store.latest_policy().unwrap()),
        PolicyStatus::Disabled
    );
}

#[test]
fn merged_deviations_are_allowed_next_time() {
    let (mut store, mut nb, fingerprint) = learned();
    store
        .create_policy(&[fingerprint], None, Mode::Audit)
        .unwrap();
    let seen = nb.s.events.len();
    nb.terminal();
    for e in &nb.s.events[seen..] {
        store.observe(e);
    }
    let uid = policy::policy_uid(store.latest_policy().unwrap());
    let unique = store
        .deviation_report()
        .policies
        .iter()
        .find(|p| p.uid == uid)
        .unwrap()
        .unique;
    assert!(unique > 0);
    let (_, merged) = store.merge_deviations(&uid, &[]).unwrap();
    assert_eq!(merged, unique);

    // The same terminal again: nothing new.
    let merged_policy = store.latest_policy().unwrap().clone();
    let report =
        guardlab_engine::deviation::find_deviations(&[merged_policy], &nb.s.events).unwrap();
    assert_eq!(
        report.unique(),
        0,
        "{:?}",
        report.deviations().collect::<Vec<_>>()
    );
}

#[test]
fn what_the_store_refuses_is_named() {
    let (mut store, _nb, fingerprint) = learned();
    assert!(matches!(
        store.preview_policy(&[], None, Mode::Audit),
        Err(StoreError::NothingSelected)
    ));
    let err = store
        .preview_policy(&["nope".into()], None, Mode::Audit)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "no fingerprint named \"nope\" in the store"
    );
    store
        .create_policy(std::slice::from_ref(&fingerprint), Some("p"), Mode::Audit)
        .unwrap();
    assert!(matches!(
        store.create_policy(&[fingerprint], Some("p"), Mode::Audit),
        Err(StoreError::NameTaken(n)) if n == "p"
    ));
    assert!(matches!(
        store.set_mode("other", Mode::Enforce),
        Err(StoreError::NoPolicy(n)) if n == "other"
    ));
    assert!(matches!(
        store.merge_deviations("p", &["no-such".into()]),
        Err(StoreError::NoDeviation { .. })
    ));
    let mut broken = store.latest_policy().unwrap().clone();
    broken.metadata.name = "q".into();
    broken.spec.process_policy.clear();
    assert!(matches!(
        store.add_policy(broken),
        Err(StoreError::Invalid(_))
    ));
}

#[test]
fn a_reader_that_fell_behind_is_told_to_read_again() {
    let (mut store, _nb, fingerprint) = learned();
    store
        .create_policy(&[fingerprint], Some("p"), Mode::Audit)
        .unwrap();
    let g = store.generation();
    for i in 0..CHANGES_KEPT + 1 {
        let mode = if i % 2 == 0 {
            Mode::Enforce
        } else {
            Mode::Audit
        };
        store.set_mode("p", mode).unwrap();
    }
    assert_eq!(store.changes_since(g), None);
    let recent = store.changes_since(store.generation() - 3).unwrap();
    assert_eq!(recent.len(), 3);
    assert_eq!(store.changes_since(store.generation()), Some(Vec::new()));
}
