//! `--html FILE`: a run as one self-contained page, for a workshop's hand-out or a CI
//! artifact. Its steps, the fingerprint and policy YAML, the policy graph with the deviations
//! drawn in, the investigation graph and the flags. The graphs are SVG laid out and drawn by
//! `guardlab-graph`; the style is inline; the page has no script and loads nothing, so it
//! opens the same offline, from a mail attachment or a CI artifact.

use std::fmt::Write as _;
use std::path::Path;

use guardlab_engine::document::to_yaml;
use guardlab_engine::model::{Document, FingerprintGroup, Policy};
use guardlab_engine::policy;

use super::run_report::RunReport;

/// What the page shows besides the report: the run's documents, from its store.
pub struct HtmlInputs<'a> {
    pub report: &'a RunReport,
    pub groups: &'a [FingerprintGroup],
    /// The policy as the run left it.
    pub policy: Option<&'a Policy>,
}

const STYLE: &str = "body{font:14px/1.45 'DejaVu Sans',sans-serif;margin:24px auto;max-width:1200px;color:#1d2330}\
h1{margin-bottom:0}h2{border-bottom:1px solid #dde;padding-bottom:4px;margin-top:32px}\
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #e4e6ee;vertical-align:top}\
pre{background:#f3f4f8;padding:10px;overflow:auto;font:12px/1.35 'DejaVu Sans Mono',monospace;max-height:480px}\
.graph{border:1px solid #dde;overflow:auto;max-height:80vh}.pass{color:#1a7f37}.fail{color:#c41d1d}\
.muted{color:#778}details{margin:8px 0}";

fn esc(text: &str) -> String {
    guardlab_graph::svg::escape(text)
}

/// The page, as a string.
pub fn render(inputs: &HtmlInputs) -> String {
    let report = inputs.report;
    let mut page = String::new();
    let result = format!("{:?}", report.result).to_lowercase();
    let class = if result == "pass" { "pass" } else { "fail" };
    let _ = write!(
        page,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>guardlab — {name}</title>\
         <style>{STYLE}</style></head><body><h1>Scenario {name}</h1>\
         <p>Backend {backend}, {steps} steps in {secs:.1} s: <strong class=\"{class}\" id=\"result\">{result}</strong>. {events}</p>",
        name = esc(&report.scenario),
        backend = report.backend.name(),
        steps = report.steps.len(),
        secs = report.duration_ms as f64 / 1000.0,
        events = esc(&report.events.describe()),
    );
    if let Some(error) = &report.error {
        let _ = write!(page, "<p class=\"fail\">{}</p>", esc(error));
    }

    page.push_str("<h2>Steps</h2><table><tr><th>#</th><th>Step</th><th>Action</th><th>Result</th><th>Time</th><th>Said</th></tr>");
    for step in &report.steps {
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.2} s</td><td>{}</td></tr>",
            step.index + 1,
            esc(&step.name),
            step.action,
            step.result.word(),
            step.duration_ms as f64 / 1000.0,
            esc(&step.messages.join("; "))
        );
    }
    page.push_str("</table>");

    page.push_str("<h2>Fingerprints</h2>");
    for fingerprint in guardlab_engine::fingerprint::fingerprints_of_groups(inputs.groups) {
        let _ = write!(
            page,
            "<details><summary>{}</summary><pre>{}</pre></details>",
            esc(&fingerprint.metadata.name),
            esc(&to_yaml(&Document::Fingerprint(fingerprint.clone())))
        );
    }

    let deviations: Vec<_> = report
        .deviations
        .as_ref()
        .map(|r| r.deviations().cloned().collect())
        .unwrap_or_default();
    if let Some(policy) = inputs.policy {
        let uid = policy::policy_uid(policy);
        let mine: Vec<_> = deviations
            .iter()
            .filter(|d| d.metadata.policy_uid == uid)
            .cloned()
            .collect();
        let graph = guardlab_graph::policy_graph(policy, &mine);
        let _ = write!(
            page,
            "<h2>Policy {name}</h2><p>{status}; {n} deviations drawn in red where they would add to it.</p>\
             <div class=\"graph\" id=\"policy-graph\">{svg}</div>\
             <details><summary>The policy's YAML</summary><pre>{yaml}</pre></details>",
            name = esc(&policy.metadata.name),
            status = policy::status(policy),
            n = mine.len(),
            svg = guardlab_graph::to_svg(&graph, &guardlab_graph::layout(&graph)),
            yaml = esc(&to_yaml(&Document::Policy(policy.clone())))
        );
    }

    if let Some(investigation) = &report.investigation {
        let graph = guardlab_graph::investigation_graph(&investigation.tree());
        let _ = write!(
            page,
            "<h2>Investigation</h2><p class=\"muted\">One causal graph from the container's root process to \
             every deviant process and connection; an exec that replaced a program is a dashed edge.</p>\
             <div class=\"graph\" id=\"investigation-graph\">{}</div>\
             <details><summary>As text</summary><pre>{}</pre></details>",
            guardlab_graph::to_svg(&graph, &guardlab_graph::layout(&graph)),
            esc(&investigation.render_text())
        );
    }

    if let Some(deviation_report) = &report.deviations {
        page.push_str("<h2>Flags</h2><table><tr><th>Severity</th><th>Deviation</th><th>Process</th><th>Policy</th></tr>");
        for flag in deviation_report.flags.iter().rev() {
            let _ = write!(
                page,
                "<tr><td class=\"fail\">{:?}</td><td>{:?} {}</td><td>{} (pid {})</td><td>{}</td></tr>",
                flag.severity,
                flag.kind,
                esc(&flag.deviation_uid),
                esc(&flag.process),
                flag.pid,
                esc(&flag.policy_name)
            );
        }
        page.push_str("</table>");
    }
    page.push_str("<p class=\"muted\">Written by guardlab.</p></body></html>\n");
    page
}

/// Write the page to `path` whole or not at all (a temporary file renamed into place).
pub fn write(path: &Path, inputs: &HtmlInputs) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut file, render(inputs).as_bytes())?;
    // A report is for reading (a temporary file starts private).
    file.as_file().set_permissions(
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o644),
    )?;
    file.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_of_a_replayed_run_has_its_graphs_and_nothing_to_load() {
        use crate::scenario::{RunOptions, run_blocking};
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let dir = tempfile::tempdir().unwrap();
        let html = dir.path().join("run.html");
        let mut options = RunOptions::replay(
            root.join("scenarios/cryptominer.yaml"),
            root.join("snapshots/cryptominer"),
            root.join("scenarios/cryptominer.ndjson"),
        );
        options.html = Some(html.clone());
        let report = run_blocking(&options);
        assert_eq!(report.error, None);
        let page = std::fs::read_to_string(&html).unwrap();
        assert!(
            page.contains("id=\"policy-graph\"") && page.contains("id=\"investigation-graph\"")
        );
        for label in ["minerd", "wget", "bash", "jupyter-notebook-policy"] {
            assert!(page.contains(label), "{label} is on the page");
        }
        assert!(page.matches("<svg").count() >= 2);
        assert!(
            page.contains("class=\"node process deviant"),
            "deviations drawn"
        );
        // Self-contained: nothing to fetch, no script.
        for outside in ["src=", "href=", "url(", "<script", "@import"] {
            assert!(!page.contains(outside), "{outside} on the page");
        }
    }
}
