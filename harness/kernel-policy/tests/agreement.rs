//! The agreement check on a generated stream: a stopped exec the engine does not find is a
//! difference with its reason; events the kernel did not stop are not counted.

use guardlab_events::EventBody;
use guardlab_kernel_policy::agreement::Agreement;
use guardlab_test_support::stream::{Stream, prog};

#[test]
fn a_stopped_exec_without_a_finding_is_a_difference_and_others_are_not_counted() {
    let mut s = Stream::new(1_700_000_000, 100);
    let root = s.spawn(7, None, prog("/usr/bin/bash", &["bash"], "root"));
    s.spawn(7, Some(root), prog("/usr/bin/wget", &["wget", "x"], "root"));
    s.spawn(7, Some(root), prog("/usr/bin/ls", &["ls"], "root"));
    // The kernel killed wget at its exec.
    for e in &mut s.events {
        if let EventBody::Exec(x) = &mut e.body
            && x.exe == "/usr/bin/wget"
        {
            x.killed = true;
        }
    }
    let mut agreement = Agreement::default();
    for e in &s.events {
        agreement.observe(e, &[]);
    }
    assert_eq!((agreement.stopped, agreement.flagged), (1, 0));
    assert!(!agreement.agrees());
    assert_eq!(agreement.differences.len(), 1);
    assert!(
        agreement.differences[0]
            .event
            .starts_with("exec of /usr/bin/wget (pid "),
        "{:?}",
        agreement.differences
    );
    let summary = agreement.summary();
    assert!(
        summary
            .starts_with("kernel and engine differ: 1 stopped, 0 flagged; exec of /usr/bin/wget"),
        "{summary}"
    );
}
