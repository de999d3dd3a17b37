//! The guard console's acceptance test in a real browser: `guardlab scenario cryptominer
//! --console --step` (workshop mode) with its input closed, and a headless chromium doing
//! every console step of the tutorial through the page, as a learner would: make the policy
//! from the notebook's fingerprint, look at the deviations, enforce, look at the attack's
//! deviations and flags, investigate, disable. The runner goes on only when the store shows
//! each step done, and the run must end with PASS.
//!
//! Everything runs in a network namespace with only loopback (guardlab-browser-test-support):
//! the console, chromium and, for the local backend, the lab's own namespaces and veths.
//! Root: the namespace, installing chromium; the replay run itself is unprivileged (nobody).
//! Both tests start a browser: they run one at a time (SERIAL).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use guardlab_browser_test_support::{
    Browser, BrowserOptions, LoopbackNetns, Netns, Process, RunAs, assert_not_blank,
};
use serde_json::{Value, json};

static SERIAL: Mutex<()> = Mutex::new(());

/// The policy the scenario's snapshots are made with.
const POLICY: &str = "jupyter-notebook-policy";

/// Which run of the tutorial a test drives.
#[derive(Clone, Debug)]
struct Tutorial {
    /// `--backend`.
    backend: &'static str,
    /// Who runs guardlab: nobody for the replay (it needs no root), root for the local lab.
    run_as: Option<RunAs>,
    /// The artifacts' group (the test's name).
    group: &'static str,
    /// How long a step may take to be reached: the local lab's baseline and attack take
    /// minutes, a replay none.
    step_timeout: Duration,
    /// The cache directory guardlab's lab uses (pod images, the lab's CA, the package index's
    /// wheels) instead of the fresh one in its process home.
    lab_cache: Option<String>,
}

/// What a run leaves for the test to look at once the namespace is gone.
struct Screenshots {
    policy_graph: PathBuf,
    investigation_graph: PathBuf,
}

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the console's browser tests need root (a network namespace of their own, installing \
         chromium with apt-get, dropping to nobody; the local backend's lab): run them as root"
    );
}

fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("harness/ is inside the repository")
        .to_path_buf()
}

/// A script for the page: every error and unhandled rejection from now on, kept in
/// `window.__errors` (read by [`page_errors`]).
const ERROR_COLLECTOR: &str = "if (!window.__errors) { window.__errors = []; \
     window.addEventListener('error', e => window.__errors.push(String(e.message || e))); \
     window.addEventListener('unhandledrejection', e => window.__errors.push('unhandled: ' + String(e.reason))); } \
     return true;";

async fn page_errors(browser: &Browser) -> Vec<String> {
    let value = browser
        .eval(
            "return window.__errors || ['the error collector is gone (the page was reloaded)'];",
            vec![],
        )
        .await
        .unwrap();
    serde_json::from_value(value).unwrap()
}

/// guardlab's whole output so far.
fn output(guardlab: &Process) -> String {
    guardlab.log_tail(usize::MAX)
}

/// The output after the header of step `name` (`[ 7/13] terminal-deviations (...)`), if the
/// runner has reached it.
fn after_header(guardlab: &Process, name: &str) -> Option<String> {
    let text = output(guardlab);
    let re = regex::Regex::new(&format!(r"(?m)^\[\s*\d+/\d+\] {} \(", regex::escape(name)))
        .expect("a valid pattern");
    let found = re.find(&text)?;
    Some(text[found.end()..].to_string())
}

/// Waits until the output after step `name`'s header says `words`; fails early if guardlab
/// exits.
async fn wait_for_output(guardlab: &mut Process, name: &str, words: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if after_header(guardlab, name).is_some_and(|rest| rest.contains(words)) {
            return;
        }
        if let Some(status) = guardlab.try_wait().unwrap() {
            panic!(
                "guardlab ended ({status}) before step {name} said {words:?}:\n{}",
                output(guardlab)
            );
        }
        assert!(
            Instant::now() < deadline,
            "step {name} did not say {words:?} within {timeout:?}:\n{}",
            output(guardlab)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the runner waits for the learner at step `name` (it printed the step's console
/// task); fails early if guardlab exits.
async fn wait_for_console_task(guardlab: &mut Process, name: &str, timeout: Duration) {
    let start = Instant::now();
    loop {
        if after_header(guardlab, name).is_some_and(|rest| rest.contains("In the console (")) {
            return;
        }
        if let Some(status) = guardlab.try_wait().unwrap() {
            panic!(
                "guardlab exited ({status}) before step {name} asked for the console; its output:\n{}",
                output(guardlab)
            );
        }
        assert!(
            start.elapsed() < timeout,
            "step {name} did not ask for the console within {timeout:?}; guardlab's output:\n{}",
            guardlab.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Does `act` (a look at a page, which the console reports to the runner) until the runner
/// reaches step `next`: a look counts only after the runner began waiting for it.
async fn repeat_until_step<F, Fut>(
    guardlab: &mut Process,
    next: &str,
    timeout: Duration,
    mut act: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let start = Instant::now();
    loop {
        act().await;
        let wait = Instant::now();
        while wait.elapsed() < Duration::from_secs(3) {
            if after_header(guardlab, next).is_some() {
                return;
            }
            if let Some(status) = guardlab.try_wait().unwrap() {
                panic!(
                    "guardlab exited ({status}) before step {next}; its output:\n{}",
                    output(guardlab)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(
            start.elapsed() < timeout,
            "the runner did not go on to step {next} within {timeout:?}; guardlab's output:\n{}",
            guardlab.log_tail(40)
        );
    }
}

/// The text of the element's `value` (an input, a select, a textarea).
async fn value_of(browser: &Browser, css: &str) -> String {
    let value = browser
        .eval(
            "const e = document.querySelector(arguments[0]); return e ? e.value : null;",
            vec![json!(css)],
        )
        .await
        .unwrap();
    value
        .as_str()
        .unwrap_or_else(|| panic!("no element `{css}` with a value"))
        .to_string()
}

async fn wait_for(browser: &Browser, css: &str, what: &str, timeout: Duration) {
    let css = css.to_string();
    browser
        .wait_until(what, timeout, || {
            let css = css.clone();
            async move { Ok(!browser.find_all(&css).await?.is_empty()) }
        })
        .await
        .unwrap();
}

/// The page shows no error of its own (`#page-error`, `#preview-error` with text).
async fn assert_no_page_error(browser: &Browser, at: &str) {
    let shown = browser
        .eval(
            "return ['#page-error', '#preview-error'].map(s => document.querySelector(s))\
               .filter(e => e && e.textContent.trim()).map(e => e.textContent);",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(shown, json!([]), "the page shows an error at {at}");
}

/// Clicks the element matching `css`, finding it again if the page redrew it between the
/// finding and the click (the graph tab is redrawn, tabs and all, on every live change).
async fn click_fresh(browser: &Browser, css: &str) {
    for attempt in 1.. {
        match browser.click(css).await {
            Ok(()) => return,
            Err(e) if attempt < 5 && e.to_string().contains("stale element") => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// Clicks the policy page's tab `tab` and waits until the page has drawn it (it fetches the
/// policy first).
async fn open_tab(browser: &Browser, tab: &str) {
    let shown = match tab {
        "graph" => "#policy-graph svg",
        "deviations" => "#deviation-counts",
        "info" => "#info-mode",
        _ => panic!("no tab {tab}"),
    };
    // The page draws a tab anew, #tab-body and all: the old one is marked to tell them apart.
    browser
        .eval(
            "document.querySelector('#tab-body')?.setAttribute('data-stale', ''); return true;",
            vec![],
        )
        .await
        .unwrap();
    click_fresh(browser, &format!("#tab-{tab}")).await;
    wait_for(
        browser,
        &format!("#tab-body:not([data-stale]) {shown}"),
        &format!("the {tab} tab"),
        Duration::from_secs(10),
    )
    .await;
}

/// Opens the policy's page from the Policies list, on the tab `tab`.
async fn open_policy_tab(browser: &Browser, tab: &str) {
    browser.click("#nav-policies").await.unwrap();
    wait_for(
        browser,
        "tr.policy a",
        "the Policies list to show the policy",
        Duration::from_secs(10),
    )
    .await;
    let link = browser.find("tr.policy a").await.unwrap();
    assert_eq!(link.text().await.unwrap(), POLICY);
    link.click().await.unwrap();
    browser
        .wait_for_text("#policy-title", POLICY, Duration::from_secs(10))
        .await
        .unwrap();
    open_tab(browser, tab).await;
}

/// For every edge of the SVG under `scope`, the `data-node-id`s of the nodes it joins: an
/// edge starts at the bottom centre of its parent's box and ends at the top centre of its
/// child's (guardlab-graph's drawing); then the nodes no edge enters.
const SVG_EDGES: &str = "const svg = document.querySelector(arguments[0] + ' svg');\
  const boxes = [...svg.querySelectorAll('g.node')].map(g => { const r = g.querySelector('rect');\
    const [x, y, w, h] = ['x', 'y', 'width', 'height'].map(a => Number(r.getAttribute(a)));\
    return { id: g.dataset.nodeId, cls: g.getAttribute('class'), cx: x + w / 2, top: y, bottom: y + h,\
      label: [...g.querySelectorAll('text')].map(t => t.textContent).join(' ') }; });\
  const near = (a, b) => Math.abs(a - b) <= 1.01;\
  const edges = [...svg.querySelectorAll('path.edge')].map(p => {\
    const n = (p.getAttribute('d').match(/-?[0-9.]+/g) || []).map(Number);\
    const from = boxes.find(b => near(b.cx, n[0]) && near(b.bottom, n[1]));\
    const to = boxes.find(b => near(b.cx, n[n.length - 2]) && near(b.top, n[n.length - 1]));\
    return [from ? from.id : null, to ? to.id : null]; });\
  return { boxes, edges };";

/// The whole tutorial through the page; returns the two graphs' screenshots.
async fn drive_tutorial(netns: Netns, tutorial: Tutorial, shots: PathBuf) -> Screenshots {
    let started = Instant::now();
    let step = tutorial.step_timeout;
    let port = netns.free_port().unwrap();
    let console = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    // Through a shell to put the report in the process's own home and to point the lab at
    // its cache (spawn sets $HOME and the XDG directories); exec: the process is guardlab.
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(
            "if [ -n \"$LAB_CACHE\" ]; then export XDG_CACHE_HOME=\"$LAB_CACHE\"; fi; \
             exec \"$0\" scenario cryptominer --backend \"$1\" --console --step \
             --console-listen \"$2\" --json \"$HOME/report.json\"",
        )
        .arg(env!("CARGO_BIN_EXE_guardlab"))
        .arg(tutorial.backend)
        .arg(console.to_string())
        .current_dir(repository_root());
    if let Some(cache) = &tutorial.lab_cache {
        command.env("LAB_CACHE", cache);
    }
    let mut guardlab = netns.spawn("guardlab", command, tutorial.run_as).unwrap();
    let report_path = guardlab.home().path().join("home/report.json");
    // The local lab is up before the console listens.
    guardlab.wait_for_port(console, step).await.unwrap();
    eprintln!("[{:?}] the console listens at {console}", started.elapsed());

    // The learner's browser is nobody's in both runs, on a wide screen: the graphs fit their
    // box's width, and the screenshots (the docs' pictures) are then readable.
    let mut options = BrowserOptions::new(&shots, tutorial.group).run_as(RunAs::NOBODY);
    options.window = (2560, 1440);
    let browser = Browser::start(&netns, options).await.unwrap();
    let url = format!("http://{console}/");
    browser.goto(&url).await.unwrap();
    browser.eval(ERROR_COLLECTOR, vec![]).await.unwrap();
    browser
        .wait_for_text("#live-status", "live", Duration::from_secs(10))
        .await
        .unwrap();

    // Fingerprints: the notebook's, once the baseline is done.
    wait_for_console_task(&mut guardlab, "create-policy", step).await;
    eprintln!("[{:?}] create-policy", started.elapsed());
    browser.click("#nav-fingerprints").await.unwrap();
    browser
        .wait_for_text("#fp-rows", "minimal-notebook", Duration::from_secs(30))
        .await
        .unwrap();
    let row = browser
        .text("tr.fingerprint[data-name='minimal-notebook']")
        .await
        .unwrap();
    assert!(row.contains("jupyter/minimal-notebook"), "{row}");
    browser
        .click(".fp-select[value='minimal-notebook']")
        .await
        .unwrap();
    browser.click("#create-policy").await.unwrap();
    wait_for(
        &browser,
        "#preview-yaml",
        "the policy's preview",
        Duration::from_secs(10),
    )
    .await;
    assert_no_page_error(&browser, "the preview").await;
    let yaml = value_of(&browser, "#preview-yaml").await;
    assert!(yaml.contains("kind: SpyderbatPolicy"), "{yaml}");
    assert!(yaml.contains("mode: audit"), "{yaml}");
    assert_eq!(value_of(&browser, "#policy-mode").await, "audit");
    let name = browser.find("#policy-name").await.unwrap();
    name.clear().await.unwrap();
    browser.type_into("#policy-name", POLICY).await.unwrap();
    assert_eq!(value_of(&browser, "#policy-name").await, POLICY);
    browser.click("#save-policy").await.unwrap();
    browser
        .wait_for_text("#policy-title", POLICY, Duration::from_secs(10))
        .await
        .unwrap();
    assert_no_page_error(&browser, "saving the policy").await;
    let status = browser.text("#policy-status").await.unwrap();
    assert_eq!(status, "Auditing");

    // On a live lab the learner types the terminal's `ls` themselves, in a terminal of the
    // notebook (through Jupyter's own terminal API, as its page does); the step is theirs.
    if tutorial.backend == "local" {
        wait_for_output(
            &mut guardlab,
            "terminal-ls",
            "Type these in a terminal",
            step,
        )
        .await;
        let banner = browser
            .wait_for_text("#workshop-banner", "terminal-ls", Duration::from_secs(10))
            .await
            .unwrap();
        assert!(banner.contains("Have guardlab do it"), "{banner}");
        let notebook = guardlab_jupyter::JupyterClient::new("http://127.0.0.1:1234/").unwrap();
        let mut terminal = notebook.open_terminal().await.unwrap();
        terminal.run("ls", Duration::from_secs(60)).await.unwrap();
        wait_for_output(&mut guardlab, "terminal-ls", "typed by the learner", step).await;
        eprintln!("[{:?}] terminal-ls typed by the learner", started.elapsed());
    }

    // The terminal's deviations: bash and ls, on the Deviations tab.
    wait_for_console_task(&mut guardlab, "terminal-deviations", step).await;
    eprintln!("[{:?}] terminal-deviations", started.elapsed());
    repeat_until_step(
        &mut guardlab,
        "enforce",
        Duration::from_secs(60),
        || async {
            open_tab(&browser, "deviations").await;
        },
    )
    .await;
    let deviations = browser.text("#tab-body table").await.unwrap();
    for program in ["bash", "ls"] {
        assert!(
            deviations.contains(&format!("{program} (")),
            "the Deviations tab lacks {program}:\n{deviations}"
        );
    }

    // Enforce, on Policy info.
    wait_for_console_task(&mut guardlab, "enforce", step).await;
    eprintln!("[{:?}] enforce", started.elapsed());
    open_tab(&browser, "info").await;
    assert_eq!(value_of(&browser, "#info-mode").await, "audit");
    browser
        .click("#info-mode option[value='enforce']")
        .await
        .unwrap();
    browser.click("#info-save").await.unwrap();
    browser
        .wait_for_text("#info-message", "saved: Enforcing", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(browser.text("#policy-status").await.unwrap(), "Enforcing");

    // The attack: on a live lab the learner has guardlab type it, from the console.
    if tutorial.backend == "local" {
        wait_for_output(&mut guardlab, "attack", "Type these in a terminal", step).await;
        browser
            .wait_for_text("#workshop-banner", "attack", Duration::from_secs(10))
            .await
            .unwrap();
        click_fresh(&browser, "#workshop-go").await;
        wait_for_output(&mut guardlab, "attack", "guardlab types them", step).await;
    }

    // Red flags come in live; the Flags page lists the miner.
    wait_for_console_task(&mut guardlab, "attack-deviations", step).await;
    eprintln!("[{:?}] attack-deviations", started.elapsed());
    browser
        .wait_until("the flag count", Duration::from_secs(30), || async {
            let count = browser.text("#flag-count").await?;
            Ok(count.trim().parse::<u32>().is_ok_and(|n| n > 0))
        })
        .await
        .unwrap();
    let live = browser.text("#live-log").await.unwrap();
    assert!(live.contains("flag (high)"), "the live log: {live}");
    browser.click("#nav-flags").await.unwrap();
    let flags = browser
        .wait_for_text("#flags", "minerd", Duration::from_secs(10))
        .await
        .unwrap();
    let listed = browser.find_all("li.flag").await.unwrap().len();
    let count: usize = browser.text("#flag-count").await.unwrap().parse().unwrap();
    assert_eq!(listed, count, "{flags}");

    // The attack's deviations, on the policy's Deviations tab.
    open_policy_tab(&browser, "deviations").await;
    repeat_until_step(
        &mut guardlab,
        "investigate",
        Duration::from_secs(60),
        || async {
            open_tab(&browser, "deviations").await;
        },
    )
    .await;
    let deviations = browser.text("#tab-body table").await.unwrap();
    for program in ["minerd", "wget", "curl"] {
        assert!(
            deviations.contains(program),
            "the Deviations tab lacks {program}:\n{deviations}"
        );
    }
    browser.click("#select-all-deviations").await.unwrap();
    let boxes = browser.find_all(".dev-select").await.unwrap();
    assert!(boxes.len() >= 3, "{deviations}");
    for b in &boxes {
        assert!(b.is_selected().await.unwrap());
    }
    browser.click("#add-to-graph").await.unwrap();
    wait_for(
        &browser,
        "#policy-graph svg g.node.deviant",
        "the deviations in the policy's graph",
        Duration::from_secs(10),
    )
    .await;
    let labels = browser.svg_text_labels("#policy-graph").await.unwrap();
    let text = labels.join("\n");
    // The policy's own processes (the notebook's baseline) and the deviant ones.
    for label in ["jupyter", "bash", "ls", "minerd", "wget", "curl", "tar"] {
        assert!(
            labels.iter().any(|l| l.contains(label)),
            "the policy graph lacks {label}:\n{text}"
        );
    }
    let graph = browser
        .eval(SVG_EDGES, vec![json!("#policy-graph")])
        .await
        .unwrap();
    let deviant: Vec<&Value> = graph["boxes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["cls"].as_str().unwrap().contains("deviant"))
        .collect();
    assert!(
        deviant
            .iter()
            .any(|b| b["label"].as_str().unwrap().contains("minerd")),
        "minerd is not drawn deviant: {deviant:?}"
    );
    assert!(
        !deviant
            .iter()
            .any(|b| b["label"].as_str().unwrap().contains("start-notebook")),
        "the policy's own root is drawn deviant: {deviant:?}"
    );
    let policy_graph = browser
        .screenshot_element("#policy-graph", "policy-graph")
        .await
        .unwrap();
    let census = assert_not_blank(&policy_graph, 0.03).unwrap();
    eprintln!("policy graph: {census:?}");

    // Investigation: one causal graph from the container's root process to the miner.
    wait_for_console_task(&mut guardlab, "investigate", step).await;
    eprintln!("[{:?}] investigate", started.elapsed());
    let mut first = true;
    repeat_until_step(&mut guardlab, "cleanup", Duration::from_secs(60), || {
        let again = !std::mem::replace(&mut first, false);
        let browser = &browser;
        async move {
            if again {
                // The same link again is no new page: through another one.
                browser.click("#nav-flags").await.unwrap();
            }
            browser.click("#nav-investigation").await.unwrap();
        }
    })
    .await;
    wait_for(
        &browser,
        "#investigation-graph svg g.node",
        "the investigation's graph",
        Duration::from_secs(10),
    )
    .await;
    assert_no_page_error(&browser, "the investigation").await;
    let labels = browser
        .svg_text_labels("#investigation-graph")
        .await
        .unwrap();
    let text = labels.join("\n");
    assert!(
        labels
            .iter()
            .any(|l| l.contains("start-notebook") || l.contains("python")),
        "the investigation lacks the container's root process:\n{text}"
    );
    for label in ["jupyter", "bash", "id", "wget", "tar", "minerd"] {
        assert!(
            labels.iter().any(|l| l.contains(label)),
            "the investigation lacks {label}:\n{text}"
        );
    }
    let trace = browser.text("#investigation-text").await.unwrap();
    assert!(trace.contains("minerd"), "{trace}");
    let graph = browser
        .eval(SVG_EDGES, vec![json!("#investigation-graph")])
        .await
        .unwrap();
    let edges: Vec<(String, String)> = graph["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let id = |v: &Value| {
                v.as_str()
                    .unwrap_or_else(|| panic!("an edge joins no node: {graph}"))
                    .to_string()
            };
            (id(&e[0]), id(&e[1]))
        })
        .collect();
    let boxes = graph["boxes"].as_array().unwrap();
    let kind_of = |id: &str| {
        boxes
            .iter()
            .find(|b| b["id"] == id)
            .map(|b| b["cls"].as_str().unwrap().to_string())
            .unwrap()
    };
    // The graph's roots are the containers, and under each exactly one process: its root.
    let roots: Vec<&Value> = boxes
        .iter()
        .filter(|b| !edges.iter().any(|(_, to)| b["id"] == to.as_str()))
        .collect();
    assert!(!roots.is_empty(), "{graph}");
    for container in &roots {
        let id = container["id"].as_str().unwrap();
        assert!(
            container["cls"].as_str().unwrap().contains("group")
                && container["label"]
                    .as_str()
                    .unwrap()
                    .starts_with("container "),
            "a root of the investigation is not a container: {container}"
        );
        let processes: Vec<&String> = edges
            .iter()
            .filter(|(from, to)| from == id && kind_of(to).contains("process"))
            .map(|(_, to)| to)
            .collect();
        assert_eq!(
            processes.len(),
            1,
            "container {id} has not exactly one root process: {processes:?} in {graph}"
        );
        let root = boxes
            .iter()
            .find(|b| b["id"] == processes[0].as_str())
            .unwrap();
        let root_label = root["label"].as_str().unwrap();
        assert!(
            root_label.contains("start-notebook") || root_label.contains("python"),
            "container {id}'s root process: {root_label}"
        );
    }
    let investigation_graph = browser
        .screenshot_element("#investigation-graph", "investigation-graph")
        .await
        .unwrap();
    let census = assert_not_blank(&investigation_graph, 0.03).unwrap();
    eprintln!("investigation graph: {census:?}");

    // Cleanup: the policy disabled on Policy info.
    wait_for_console_task(&mut guardlab, "cleanup", step).await;
    eprintln!("[{:?}] cleanup", started.elapsed());
    open_policy_tab(&browser, "info").await;
    assert_eq!(value_of(&browser, "#info-mode").await, "enforce");
    let enabled = browser.find("#info-enabled").await.unwrap();
    assert!(enabled.is_selected().await.unwrap());
    enabled.click().await.unwrap();
    assert!(!enabled.is_selected().await.unwrap());
    browser.click("#info-save").await.unwrap();
    browser
        .wait_for_text("#info-message", "saved: Disabled", Duration::from_secs(10))
        .await
        .unwrap();

    let status = guardlab.wait_for_exit(step).await.unwrap();
    let out = output(&guardlab);
    assert!(status.success(), "guardlab: {status}; its output:\n{out}");
    assert!(out.contains("PASS"), "{out}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", report_path.display()));
    assert_eq!(report["result"], "pass", "{report:#}");
    assert_eq!(report["backend"], tutorial.backend);
    eprintln!(
        "[{:?}] guardlab passed; its output:\n{out}",
        started.elapsed()
    );

    let errors = page_errors(&browser).await;
    assert!(errors.is_empty(), "the page's script failed: {errors:?}");
    let log = browser.close().await.unwrap();
    assert!(
        log.urls.iter().any(|u| u.starts_with(&url)),
        "the net log lacks the console: {:?}",
        log.urls
    );
    let outside = log.outside_loopback(&[]);
    assert!(outside.is_empty(), "chromium requested {outside:?}");
    Screenshots {
        policy_graph,
        investigation_graph,
    }
}

fn run(tutorial: Tutorial) -> (tempfile::TempDir, Screenshots) {
    let temp = tempfile::tempdir().unwrap();
    let shots = temp.path().join("screenshots");
    let shots_in = shots.clone();
    let screenshots =
        LoopbackNetns::run(move |netns| drive_tutorial(netns, tutorial, shots_in)).unwrap();
    assert!(screenshots.policy_graph.is_file());
    assert!(screenshots.investigation_graph.is_file());
    (temp, screenshots)
}

#[test]
fn the_replayed_tutorial_is_done_in_the_console_by_nobody() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require_root();
    let (_temp, shots) = run(Tutorial {
        backend: "replay",
        run_as: Some(RunAs::NOBODY),
        group: "console_replay",
        step_timeout: Duration::from_secs(60),
        lab_cache: None,
    });
    for (shot, name) in [
        (&shots.policy_graph, "policy-graph.png"),
        (&shots.investigation_graph, "investigation-graph.png"),
    ] {
        assert_eq!(shot.file_name().unwrap(), name);
    }
}

/// `lab up` and `lab down` of a lab of its own, outside the test's namespace, with `cache`.
fn warm_up_lab(cache: &str) {
    let name = format!("t-console-warm-{}", std::process::id());
    let guardlab = || {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_guardlab"));
        command
            .env("XDG_CACHE_HOME", cache)
            .env("GUARDLAB_NOTEBOOK_ADDRESS", "127.0.0.1:0")
            .current_dir(repository_root());
        command
    };
    let up = guardlab()
        .args(["lab", "up", "--namespace", &name])
        .output()
        .unwrap();
    let down = guardlab()
        .args(["lab", "down", "--namespace", &name])
        .output()
        .unwrap();
    assert!(
        up.status.success() && down.status.success(),
        "warming the lab's caches up: {}{}",
        String::from_utf8_lossy(&up.stderr),
        String::from_utf8_lossy(&down.stderr)
    );
}

#[test]
fn the_local_lab_tutorial_is_done_in_the_console() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require_root();
    // The lab's pod image, CA and wheels are root's caches, as when root runs guardlab: the
    // process's own fresh home would have none, and the namespace cannot download them.
    let cache = std::env::var("XDG_CACHE_HOME")
        .ok()
        .filter(|c| c.starts_with('/'))
        .unwrap_or_else(|| format!("{}/.cache", std::env::var("HOME").unwrap()));
    // The namespace has no way out: what a first lab fetches (Debian packages, the pod image,
    // the index's wheels) is fetched here first, by a lab brought up and down outside it.
    warm_up_lab(&cache);
    run(Tutorial {
        backend: "local",
        run_as: None,
        group: "console_local",
        step_timeout: Duration::from_secs(15 * 60),
        lab_cache: Some(cache),
    });
}
