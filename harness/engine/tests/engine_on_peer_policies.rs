//! The engine takes real policies written by others: every policy of the public library
//! compiles for matching, is unchanged by merging itself into itself (both ways), and its
//! canonical form is stable.

use std::path::Path;

use guardlab_engine::deviation::DeviationMatcher;
use guardlab_engine::document::{Document, parse_documents};
use guardlab_engine::merge::{canonicalize, merge_policy, symmetric_merge};

#[test]
fn library_policies_merge_into_themselves_without_change() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/peer-data/spyctl/policy_library");
    let mut files = Vec::new();
    for sub in ["container", "linux_services"] {
        let d = dir.join(sub);
        let entries = std::fs::read_dir(&d).unwrap_or_else(|e| {
            panic!("the peer spyctl files are missing: {} ({e}); the `shared/` folder must sit beside the repository", d.display())
        });
        files.extend(entries.map(|e| e.unwrap().path()));
    }
    files.sort();
    assert!(files.len() > 50, "the library has its files");
    let mut policies = 0;
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let docs =
            parse_documents(&path.display().to_string(), &text).unwrap_or_else(|d| panic!("{d:?}"));
        for doc in docs {
            let Document::Policy(policy) = doc else {
                continue;
            };
            policies += 1;
            let name = path.display();
            DeviationMatcher::new(std::slice::from_ref(&policy))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let mut canonical = policy.clone();
            canonicalize(&mut canonical);
            let mut twice = canonical.clone();
            canonicalize(&mut twice);
            assert_eq!(twice, canonical, "{name}: canonical form is stable");
            assert_eq!(
                merge_policy(&policy, &policy).unwrap(),
                canonical,
                "{name}: asymmetric self-merge"
            );
            assert_eq!(
                symmetric_merge(&policy, &policy).unwrap(),
                canonical,
                "{name}: symmetric self-merge"
            );
        }
    }
    assert!(policies > 50, "{policies} policies");
}
