//! `guardlab console` against a lab from `guardlab lab up`: the console runs the engine on the
//! lab's event stream from its start, so the notebook's fingerprint is there to make a policy
//! of; Ctrl-C stops the console and leaves the lab up; `lab down` then leaves nothing.
//!
//! Root only (CI is root): the local lab. Its own lab name and an ephemeral notebook port.
#![allow(unsafe_code)] // geteuid and kill, the calls the test makes itself

mod scenario_common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use guardlab_browser_test_support::http;
use guardlab_lab::Lab;
use guardlab_lab::local::{LocalLab, LocalLabOptions};
use guardlab_lab_test_support::{Holdings, assert_nothing_left};
use scenario_common::root;
use serde_json::json;

fn guardlab(lab: &str) -> Command {
    let mut command = Command::new(assert_cmd::cargo::cargo_bin("guardlab"));
    command
        .env("GUARDLAB_LAB", lab)
        .env("GUARDLAB_NOTEBOOK_ADDRESS", "127.0.0.1:0")
        .current_dir(root());
    command
}

/// Takes the lab down however the test ends.
struct LabDown(String);

impl Drop for LabDown {
    fn drop(&mut self) {
        let _ = guardlab(&self.0)
            .args(["lab", "down", "--namespace", &self.0])
            .status();
    }
}

#[test]
fn the_console_reads_a_lab_from_lab_up_and_leaves_it_up() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test runs the local lab: run it as root (sudo cargo test)"
    );
    let name = format!("t-console-{}", std::process::id());
    let down = LabDown(name.clone());
    let up = guardlab(&name)
        .args(["lab", "up", "--namespace", &name])
        .output()
        .unwrap();
    assert!(
        up.status.success(),
        "lab up: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    let lab = LocalLab::new(LocalLabOptions::new(&name)).unwrap();
    let mut holdings = Holdings::gather(&lab);

    let mut console = guardlab(&name)
        .args(["console", "--console-listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(console.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let url = first
        .strip_prefix("guard console: http://")
        .unwrap_or_else(|| panic!("the console said {first:?}"));
    let addr: SocketAddr = url.split('/').next().unwrap().parse().unwrap();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // The lab's notebook started before the console: its fingerprint comes from the events
        // the lab kept.
        let deadline = Instant::now() + Duration::from_secs(120);
        let fingerprint = loop {
            let (_, state) = http::get_json(addr, "/api/state").await.unwrap();
            if let Some(name) = state["fingerprints"][0]["name"].as_str() {
                assert_eq!(
                    state["fingerprints"][0]["image"],
                    "jupyter/minimal-notebook:latest"
                );
                assert!(state["eventsSeen"].as_u64().unwrap() > 0);
                break name.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no fingerprint within 120 s: {state}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let (status, made) = http::post_json(
            addr,
            "/api/policies",
            &json!({ "fingerprints": [fingerprint], "name": "lab-policy" }),
        )
        .await
        .unwrap();
        assert_eq!(status, 201, "{made}");
        let (_, policy) = http::get_json(addr, "/api/policies/lab-policy")
            .await
            .unwrap();
        assert_eq!(policy["status"], "Auditing", "{policy}");
        assert!(policy["yaml"].as_str().unwrap().contains("start-notebook"));

        // Enforcing with a kill, the policy goes into the kernel at once: a terminal's shell,
        // which the baseline never ran, is killed at its exec.
        let (status, saved) = http::post_json(
            addr,
            "/api/policies/lab-policy",
            &json!({ "mode": "enforce", "addKill": "agentKillProcess" }),
        )
        .await
        .unwrap();
        assert_eq!(status, 200, "{saved}");
        let said = lines.next().unwrap().unwrap();
        assert!(
            said.starts_with("the kernel now enforces policy lab-policy:"),
            "{said}"
        );
        let info = lab.status().await.unwrap().expect("the lab is up");
        let notebook = guardlab_jupyter::JupyterClient::new(&info.notebook_url).unwrap();
        // The shell dies before it runs: the terminal may open and close, or fail.
        if let Ok(mut terminal) = notebook.open_terminal().await {
            let _ = terminal.run("ls", Duration::from_secs(5)).await;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, policy) = http::get_json(addr, "/api/policies/lab-policy")
                .await
                .unwrap();
            let bash = policy["deviations"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|d| d["summary"].as_str().is_some_and(|s| s.contains("bash")));
            if let Some(bash) = bash {
                assert!(bash["count"].as_u64().unwrap() >= 1, "{bash}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no deviation for the shell: {policy}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let (_, flags) = http::get_json(addr, "/api/flags").await.unwrap();
        assert!(
            flags["flags"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["process"] == "bash"),
            "{flags}"
        );
    });

    // Ctrl-C stops the console, not the lab.
    // SAFETY: kill has no memory preconditions; the pid is our own child's.
    unsafe { libc::kill(console.id() as i32, libc::SIGINT) };
    let status = console.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{status:?}");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(
        rest.iter()
            .any(|l| l == "the kernel no longer enforces policy lab-policy: lifted"),
        "the console's policy is lifted when it stops: {rest:?}"
    );
    let still = guardlab(&name)
        .args(["lab", "status", "--namespace", &name])
        .output()
        .unwrap();
    assert!(
        still.status.success(),
        "the lab is still up: {}",
        String::from_utf8_lossy(&still.stdout)
    );

    holdings.merge(Holdings::gather(&lab));
    drop(down);
    assert_nothing_left(&holdings);
}
