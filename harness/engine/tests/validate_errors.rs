//! Every validation rule, checked on hand-written bad documents, with the exact line of each
//! reported problem.
//!
//! The fixtures under `tests/fixtures/validate/` say what they expect inline: a line that
//! must be reported ends in `# ERROR: <text>`, and `<text>` must appear in the `field: message`
//! of a diagnostic on that very line. Diagnostics on unmarked lines fail the test too, so a
//! fixture pins down both what is reported and where.

use std::fs;
use std::path::{Path, PathBuf};

use guardlab_engine::document::{
    Diagnostic, Diagnostics, Document, load_document, load_documents, parse_document,
    parse_documents, to_yaml, to_yaml_documents,
};
use guardlab_engine::model::Mode;
use guardlab_engine::validate::{FieldPath, validate};

const MARKER: &str = "# ERROR: ";

fn fixture(name: &str) -> (PathBuf, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/validate")
        .join(name);
    let text =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    (path, text)
}

/// (line, expected text) for every `# ERROR:` marker of a fixture.
fn expected_errors(text: &str) -> Vec<(usize, String)> {
    let mut expected = Vec::new();
    for (i, line) in text.lines().enumerate() {
        for marker in line.split(MARKER).skip(1) {
            expected.push((i + 1, marker.trim().to_owned()));
        }
    }
    expected
}

fn field_and_message(d: &Diagnostic) -> String {
    if d.field.is_empty() {
        d.message.clone()
    } else {
        format!("{}: {}", d.field, d.message)
    }
}

/// Loads a fixture and checks its diagnostics against its markers, one for one.
fn check_fixture(name: &str) {
    let (path, text) = fixture(name);
    let expected = expected_errors(&text);
    assert!(!expected.is_empty(), "{name} has no {MARKER:?} markers");
    let file = path.display().to_string();
    let diagnostics = match load_documents(&file, &text) {
        Ok(docs) => panic!(
            "{name} was accepted ({} documents) but has {} expected errors",
            docs.len(),
            expected.len()
        ),
        Err(diagnostics) => diagnostics,
    };
    let listing: String = diagnostics.iter().map(|d| format!("  {d}\n")).collect();

    for d in &diagnostics {
        assert_eq!(d.file, file);
        assert!(
            expected.iter().any(|(line, text)| *line == d.line && field_and_message(d).contains(text.as_str())),
            "{name}: unexpected diagnostic (no marker on line {} matches it): {d}\nall:\n{listing}",
            d.line
        );
    }
    for (line, text) in &expected {
        assert!(
            diagnostics
                .iter()
                .any(|d| d.line == *line && field_and_message(d).contains(text.as_str())),
            "{name}:{line}: expected a diagnostic containing {text:?}, got:\n{listing}"
        );
    }
}

#[test]
fn header_metadata_and_selectors() {
    check_fixture("header_and_selectors.yaml");
}

#[test]
fn unknown_metadata_type() {
    check_fixture("unknown_type.yaml");
}

#[test]
fn linux_services_need_a_service_selector() {
    check_fixture("linux_service_without_selector.yaml");
}

#[test]
fn process_nodes_and_unique_ids() {
    check_fixture("processes.yaml");
}

#[test]
fn network_peers_ports_and_process_references() {
    check_fixture("network.yaml");
}

#[test]
fn responses_and_action_selectors() {
    check_fixture("response.yaml");
}

#[test]
fn fingerprints_have_no_policy_fields() {
    check_fixture("fingerprint_with_policy_fields.yaml");
}

#[test]
fn deviations_and_fingerprint_groups() {
    check_fixture("deviations_and_groups.yaml");
}

#[test]
fn shape_errors_name_field_and_line_in_every_document() {
    check_fixture("shape_errors.yaml");
}

#[test]
fn diagnostics_read_file_line_column_field_message() {
    let (_, text) = fixture("processes.yaml");
    let diagnostics = load_document("processes.yaml", &text).expect_err("invalid");
    let rendered: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
    assert!(
        rendered.contains(&"processes.yaml:12:7: spec.processPolicy[0].children[0].exe: needs at least one executable path".to_owned()),
        "{rendered:#?}"
    );
    // Reported in file order, whatever order the rules ran in.
    assert!(
        diagnostics
            .windows(2)
            .all(|w| (w[0].line, w[0].column) <= (w[1].line, w[1].column)),
        "{rendered:#?}"
    );
    // One error value for callers that report with `?`: all diagnostics, one per line.
    let all = Diagnostics(diagnostics.clone()).to_string();
    assert_eq!(all.lines().count(), diagnostics.len());
}

#[test]
fn syntax_errors_are_reported_with_their_line() {
    let text = "apiVersion: spyderbat/v1\nkind: SpyderbatPolicy\nmetadata: {name: a, type: container\nspec: {}\n";
    let diagnostics = parse_documents("broken.yaml", text).expect_err("not YAML");
    assert_eq!(diagnostics.len(), 1, "{diagnostics:?}");
    let d = &diagnostics[0];
    assert!(d.message.starts_with("invalid YAML: "), "{d}");
    // The flow mapping opened on line 3 is never closed; the parser notices at `spec: {}`'s
    // colon on line 4.
    assert_eq!((d.line, d.column), (4, 5), "{d}");
    assert!(d.message.contains("flow mapping"), "{d}");
}

#[test]
fn a_file_without_documents_is_refused() {
    for text in ["", "# only a comment\n", "---\n...\n"] {
        let diagnostics = parse_documents("empty.yaml", text).expect_err("no document");
        assert!(
            diagnostics[0]
                .message
                .starts_with("no document in this file"),
            "{:?}",
            diagnostics[0]
        );
    }
}

#[test]
fn valid_policy_without_mode_stays_without_mode() {
    let (_, text) = fixture("valid_notebook_policy.yaml");
    let doc = load_document("valid_notebook_policy.yaml", &text)
        .unwrap_or_else(|d| panic!("{}", Diagnostics(d)));
    let Document::Policy(policy) = &doc else {
        panic!("read as {}", doc.kind())
    };
    assert_eq!(
        policy.spec.mode, None,
        "a policy without a mode is read as audit by the engine, but not rewritten"
    );
    let written = to_yaml(&doc);
    assert!(!written.contains("mode"), "{written}");
    assert_eq!(
        parse_document("rewritten", &written).expect("rewritten parses"),
        doc
    );

    // With a mode it is kept through a round trip.
    let mut enforcing = policy.clone();
    enforcing.spec.mode = Some(Mode::Enforce);
    let written = to_yaml(&Document::Policy(enforcing.clone()));
    assert!(written.contains("  mode: enforce\n"), "{written}");
    assert_eq!(
        load_document("rewritten", &written).expect("valid"),
        Document::Policy(enforcing)
    );
}

#[test]
fn several_documents_in_one_file() {
    let (_, text) = fixture("valid_multi_document.yaml");
    let docs = load_documents("valid_multi_document.yaml", &text)
        .unwrap_or_else(|d| panic!("{}", Diagnostics(d)));
    let kinds: Vec<&str> = docs.iter().map(Document::kind).collect();
    assert_eq!(
        kinds,
        [
            "SpyderbatFingerprint",
            "GuardianDeviation",
            "GuardianDeviation",
            "FingerprintGroup"
        ]
    );
    for doc in &docs {
        assert_eq!(validate(doc), [], "{doc:?}");
    }

    // The stream round-trips as a stream.
    let written = to_yaml_documents(&docs);
    assert_eq!(
        parse_documents("rewritten", &written).expect("rewritten parses"),
        docs
    );

    // parse_document wants exactly one and says where the second begins.
    let diagnostics =
        parse_document("valid_multi_document.yaml", &text).expect_err("four documents");
    assert_eq!(
        (diagnostics[0].line, diagnostics[0].message.as_str()),
        (16, "expected exactly one document, found 4")
    );
}

#[test]
fn validate_works_on_documents_built_in_code() {
    // The engine validates what it builds itself (no file, no lines): problems carry paths.
    let (_, text) = fixture("valid_notebook_policy.yaml");
    let Document::Policy(mut policy) = load_document("p.yaml", &text).expect("valid") else {
        panic!("not a policy")
    };
    policy.spec.network_policy.egress[0]
        .processes
        .push("ghost_0".into());
    policy.spec.process_policy[0]
        .children
        .as_mut()
        .expect("children")[0]
        .id = "python3_0".into();
    let problems = validate(&Document::Policy(policy));
    let paths: Vec<String> = problems.iter().map(|p| p.path.to_string()).collect();
    assert_eq!(
        paths,
        [
            "spec.processPolicy[0].children[0].id",
            "spec.networkPolicy.egress[0].processes[0]",
            "spec.networkPolicy.egress[0].processes[1]",
        ],
        "{problems:#?}"
    );
    let expected = FieldPath::root()
        .key("spec")
        .key("networkPolicy")
        .key("egress")
        .index(0)
        .key("processes")
        .index(1);
    assert_eq!(problems[2].path, expected);
    assert_eq!(
        problems[2].message,
        "no process with id `ghost_0` in spec.processPolicy"
    );
}
