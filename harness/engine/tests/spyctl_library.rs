//! The public spyctl policy library, written by others, is our compatibility test: every
//! policy in it must parse, validate and round-trip; the peer's deliberately broken files
//! must be refused with a message that names what is wrong.
//!
//! The files live in the `shared/` folder beside the repository (`<repo>/../shared`), which
//! both developers' checkouts and CI have. Its absence fails the tests: a compatibility
//! check that quietly checks nothing would be worse than none.

use std::fs;
use std::path::{Path, PathBuf};

use guardlab_engine::document::{Diagnostic, Document, load_document, parse_document, to_yaml};

fn peer_dir(sub: &str) -> PathBuf {
    // CARGO_MANIFEST_DIR is <repo>/harness/engine.
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared");
    let dir = shared.join("peer-data/spyctl").join(sub);
    assert!(
        dir.is_dir(),
        "the peer spyctl files are missing: expected the folder {} (the `shared/` folder must sit beside the repository)",
        dir.display()
    );
    dir
}

/// Every `.yaml`/`.yml` file under `dir`, recursively, sorted so failures read the same each run.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in
            fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path
                .extension()
                .is_some_and(|ext| ext == "yaml" || ext == "yml")
            {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn read(path: &Path) -> (String, String) {
    let text =
        fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    (path.display().to_string(), text)
}

fn show(diagnostics: &[Diagnostic]) -> String {
    diagnostics.iter().map(|d| format!("  {d}\n")).collect()
}

#[test]
fn every_library_policy_parses_validates_and_round_trips() {
    let files = yaml_files(&peer_dir("policy_library"));
    // The library holds container and linux-service policies; a handful would mean a broken copy.
    assert!(
        files.len() >= 50,
        "expected the whole policy library, found only {} files",
        files.len()
    );

    let mut failures = Vec::new();
    for path in &files {
        let (name, text) = read(path);
        let doc = match load_document(&name, &text) {
            Ok(doc) => doc,
            Err(diagnostics) => {
                failures.push(format!("{name} was refused:\n{}", show(&diagnostics)));
                continue;
            }
        };
        assert!(
            matches!(doc, Document::Policy(_)),
            "{name}: the library holds policies, read as {}",
            doc.kind()
        );

        let written = to_yaml(&doc);
        match parse_document(&format!("{name} (rewritten)"), &written) {
            Ok(again) if again == doc => {}
            Ok(again) => failures.push(format!(
                "{name} changed in a round trip:\nbefore: {doc:?}\nafter:  {again:?}"
            )),
            Err(diagnostics) => failures.push(format!(
                "{name} rewritten does not parse:\n{}{written}",
                show(&diagnostics)
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} library files failed:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

#[test]
fn the_written_form_is_canonical_spyctl() {
    let (name, text) = read(&peer_dir("policy_library").join("container/coredns-policy.yaml"));
    let written = to_yaml(&load_document(&name, &text).unwrap_or_else(|d| panic!("{}", show(&d))));
    let top_keys: Vec<&str> = written
        .lines()
        .filter(|l| !l.starts_with(' ') && !l.starts_with('-'))
        .collect();
    assert_eq!(
        top_keys[..4],
        [
            "apiVersion: spyderbat/v1",
            "kind: SpyderbatPolicy",
            "metadata:",
            "spec:"
        ]
    );
    // Response actions are single-key maps as spyctl writes them, not YAML tags.
    assert!(written.contains("  - makeRedFlag:\n"), "{written}");
    assert!(!written.contains('!'), "{written}");
    // Absent optional fields stay absent (no `mode: null`, no `enabled:` invented).
    assert!(
        !written.contains("null") && !written.contains("mode:") && !written.contains("enabled:"),
        "{written}"
    );
}

/// The peer's broken files, each with the words its refusal must contain.
const INVALID: &[(&str, &[&str])] = &[
    (
        "test_invalid_id.yaml",
        &["duplicate process id", "python_0"],
    ),
    (
        "test_invalid_process_policy.yaml",
        &["unknown field", "`names`"],
    ),
    ("test_invalid_selector.yaml", &["missing containerSelector"]),
];

#[test]
fn every_invalid_peer_file_is_refused_with_the_problem_named() {
    let dir = peer_dir("invalid-or-extra");
    let on_disk: Vec<String> = yaml_files(&dir)
        .iter()
        .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
        .filter(|n| n.starts_with("test_invalid_"))
        .collect();
    assert!(
        !on_disk.is_empty(),
        "no test_invalid_* files in {}",
        dir.display()
    );
    // A new broken file in the peer data must get its own expectation here.
    for name in &on_disk {
        assert!(
            INVALID.iter().any(|(n, _)| n == name),
            "{name} has no expected message in INVALID"
        );
    }

    for (file, words) in INVALID {
        let (name, text) = read(&dir.join(file));
        let diagnostics = match load_document(&name, &text) {
            Ok(_) => panic!("{name} was accepted but is invalid"),
            Err(diagnostics) => diagnostics,
        };
        let all = show(&diagnostics);
        assert!(
            diagnostics
                .iter()
                .any(|d| words.iter().all(|w| d.to_string().contains(w))),
            "{name}: no message names the problem ({words:?}):\n{all}"
        );
        for d in &diagnostics {
            assert!(
                d.file == name && d.line > 0 && d.column > 0,
                "{name}: diagnostic without a place: {d}"
            );
        }
    }
}

#[test]
fn invalid_peer_files_point_at_the_offending_line() {
    let dir = peer_dir("invalid-or-extra");
    let diagnostics = |file: &str| {
        let (name, text) = read(&dir.join(file));
        load_document(&name, &text).expect_err("file is invalid")
    };

    // `names:` on line 57, column 11, under the fourth-level process node.
    let unknown = diagnostics("test_invalid_process_policy.yaml");
    assert_eq!(unknown.len(), 1, "{}", show(&unknown));
    assert_eq!((unknown[0].line, unknown[0].column), (57, 11));
    assert_eq!(
        unknown[0].field,
        "spec.processPolicy[1].children[0].children[0].children[0]"
    );
    assert!(
        unknown[0]
            .message
            .starts_with("unknown field `names`, expected one of `name`, `exe`"),
        "{}",
        unknown[0]
    );

    // The second `id: python_0` is on line 48; the network rules also name python_1 and
    // python_2, which no process has.
    let ids = diagnostics("test_invalid_id.yaml");
    let duplicate = ids
        .iter()
        .find(|d| d.message.contains("duplicate"))
        .expect("duplicate reported");
    assert_eq!(
        (duplicate.line, duplicate.field.as_str()),
        (48, "spec.processPolicy[1].children[0].id")
    );
    assert!(
        duplicate.message.contains("spec.processPolicy[0]"),
        "names the first use: {duplicate}"
    );
    let dangling: Vec<(usize, &str)> = ids
        .iter()
        .filter(|d| d.message.contains("no process with id"))
        .map(|d| (d.line, d.field.as_str()))
        .collect();
    assert_eq!(
        dangling,
        [
            (75, "spec.networkPolicy.ingress[1].processes[0]"),
            (76, "spec.networkPolicy.ingress[1].processes[1]"),
            (101, "spec.networkPolicy.egress[2].processes[0]"),
            (115, "spec.networkPolicy.egress[3].processes[0]"),
        ]
    );

    // No containerSelector at all: reported at `spec:` (line 7), where it belongs.
    let selector = diagnostics("test_invalid_selector.yaml");
    assert_eq!(selector.len(), 1, "{}", show(&selector));
    assert_eq!(
        (selector[0].line, selector[0].field.as_str()),
        (7, "spec.containerSelector")
    );
}
