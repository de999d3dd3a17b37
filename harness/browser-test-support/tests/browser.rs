//! The browser-test support on a page of its own: chromium drives the demo page in a
//! loopback-only namespace, as root with an in-process server, and as `nobody` with the server
//! as a separate process. Root: the namespace, installing chromium, dropping to a user.
//!
//! Every test here makes a network namespace and starts a browser: they run one at a time
//! (SERIAL), so two browsers never compete for the two cores and a failure names one test.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use guardlab_browser_test_support::page::{
    DEMO_LABELS, RequestCount, STATUS_AFTER, STATUS_BEFORE, demo_router,
};
use guardlab_browser_test_support::{
    Browser, BrowserOptions, BrowserTestError, FetchOutcome, LoopbackNetns, Netns, RunAs,
    assert_not_blank, netns,
};

static SERIAL: Mutex<()> = Mutex::new(());

/// Addresses outside loopback the page tries to reach: one of the lab's test range and one of
/// TEST-NET-1 (documentation; routed nowhere). Both must fail.
const OUTSIDE: [&str; 2] = ["198.18.0.1", "192.0.2.1"];

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the browser tests need root (a network namespace, installing chromium with apt-get, \
         dropping to an unprivileged user): run them as root"
    );
}

/// What both tests check once the page is open: the button changes the status, the SVG's
/// labels are there, its screenshot is not blank, and nothing outside loopback answers.
async fn drive_demo_page(netns: &Netns, browser: &Browser, url: &str, shots: &Path) {
    browser.goto(url).await.unwrap();
    assert_eq!(browser.text("#status").await.unwrap(), STATUS_BEFORE);
    browser.click("#apply").await.unwrap();
    let status = browser
        .wait_for_text("#status", STATUS_AFTER, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(status, STATUS_AFTER);

    assert_eq!(
        browser.svg_text_labels("svg#graph").await.unwrap(),
        DEMO_LABELS
    );

    let graph = browser
        .screenshot_element("svg#graph", "graph")
        .await
        .unwrap();
    assert!(graph.starts_with(shots), "{}", graph.display());
    let census = assert_not_blank(&graph, 0.05).unwrap();
    // The element's screenshot is the SVG's box (520x220 CSS pixels), not the window.
    assert!(
        census.width >= 520 && census.height >= 220 && census.width < 1280,
        "{census:?}"
    );
    let page = browser.screenshot("page").await.unwrap();
    assert_not_blank(&page, 0.01).unwrap();

    // The page's own origin answers; addresses outside loopback do not.
    assert_eq!(
        browser
            .fetch_from_page(&format!("{url}requests"), Duration::from_secs(5))
            .await
            .unwrap(),
        FetchOutcome::Answered(200)
    );
    for host in OUTSIDE {
        let error = browser
            .assert_unreachable(&format!("http://{host}/"))
            .await
            .unwrap();
        assert!(error.contains("Failed to fetch"), "{host}: {error}");
        let socket = netns
            .connect_error(SocketAddr::new(host.parse().unwrap(), 80))
            .unwrap();
        assert_eq!(
            socket.kind(),
            std::io::ErrorKind::NetworkUnreachable,
            "{host}: {socket}"
        );
    }
}

/// After the session: chromium asked for nothing outside loopback but the probes.
fn assert_only_loopback_requested(log: &guardlab_browser_test_support::NetworkLog, url: &str) {
    assert!(
        log.urls.iter().any(|u| u == url),
        "the net log lacks the page {url}: {:?}",
        log.urls
    );
    let outside = log.outside_loopback(&OUTSIDE);
    assert!(outside.is_empty(), "chromium requested {outside:?}");
}

#[test]
fn root_browser_drives_an_in_process_server_in_a_loopback_only_namespace() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require_root();
    let temp = tempfile::tempdir().unwrap();
    let shots = temp.path().join("screenshots");
    let shots_in = shots.clone();
    let inode = LoopbackNetns::run(move |netns| async move {
        assert_eq!(netns.interfaces().unwrap(), ["lo"]);

        let count = RequestCount::default();
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(axum::serve(listener, demo_router(count.clone())).into_future());

        let browser = Browser::start(&netns, BrowserOptions::new(&shots_in, "browser_root"))
            .await
            .unwrap();
        eprintln!("browser session started in {:?}", browser.started_in());
        drive_demo_page(&netns, &browser, &url, &shots_in).await;
        // The page and its one fetch of /requests, both from the browser.
        assert_eq!(count.get(), 2);
        let log = browser.close().await.unwrap();
        assert_only_loopback_requested(&log, &url);
        netns.inode()
    })
    .unwrap();
    assert!(shots.join("graph.png").is_file());
    assert!(netns::processes_in(inode).is_empty());
}

#[test]
fn unprivileged_browser_and_server_run_as_nobody() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require_root();
    let temp = tempfile::tempdir().unwrap();
    let shots = temp.path().join("screenshots");
    let shots_in = shots.clone();
    LoopbackNetns::run(move |netns| async move {
        let port = netns.free_port().unwrap();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut command = Command::new(env!("CARGO_BIN_EXE_browser-test-page"));
        command.arg(addr.to_string());
        let mut server = netns
            .spawn("browser-test-page", command, Some(RunAs::NOBODY))
            .unwrap();
        server
            .wait_for_port(addr, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(uid_of(server.pid()), RunAs::NOBODY.uid);

        let browser = Browser::start(
            &netns,
            BrowserOptions::new(&shots_in, "browser_nobody").run_as(RunAs::NOBODY),
        )
        .await
        .unwrap();
        // Every process of the browser (chromedriver, chromium and its helpers) is nobody's.
        let browser_processes: Vec<(i32, String)> = netns::processes_in(netns.inode())
            .into_iter()
            .filter(|(pid, _)| *pid as u32 != server.pid())
            .collect();
        assert!(
            browser_processes
                .iter()
                .any(|(_, what)| what.contains("chrom")),
            "{browser_processes:?}"
        );
        for (pid, what) in &browser_processes {
            assert_eq!(uid_of(*pid as u32), RunAs::NOBODY.uid, "{what}");
        }
        let url = format!("http://{addr}/");
        drive_demo_page(&netns, &browser, &url, &shots_in).await;
        let log = browser.close().await.unwrap();
        assert_only_loopback_requested(&log, &url);
    })
    .unwrap();
    assert!(shots.join("graph.png").is_file());
}

#[test]
#[allow(clippy::zombie_processes)] // The leftover is never waited for, on purpose.
fn a_process_left_in_the_namespace_is_killed_and_reported() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require_root();
    let result = LoopbackNetns::run(|netns| async move {
        // Started outside any Process guard and never waited for, on purpose: nothing kills
        // it when the body ends, so only the namespace's sweep can.
        let mut sleeper = Command::new("sleep");
        sleeper.arg("600");
        let child = sleeper.spawn().unwrap();
        (netns.inode(), child.id())
    });
    let Err(BrowserTestError::LeftInNamespace(left)) = result else {
        panic!("the leftover sleep was not reported: {result:?}");
    };
    assert!(left.iter().any(|l| l.contains("sleep")), "{left:?}");
}

#[test]
fn a_panic_in_the_body_fails_the_test_and_still_cleans_up() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require_root();
    let (inode_tx, inode_rx) = std::sync::mpsc::channel();
    let outcome = std::panic::catch_unwind(|| {
        LoopbackNetns::run(move |netns| async move {
            let mut command = Command::new("sleep");
            command.arg("600");
            let _process = netns.spawn("sleep", command, None).unwrap();
            inode_tx.send(netns.inode()).unwrap();
            panic!("the body failed");
        })
    });
    let panic = outcome.expect_err("the body's panic reaches the caller");
    assert_eq!(panic.downcast_ref::<&str>(), Some(&"the body failed"));
    let inode = inode_rx.recv().unwrap();
    assert!(netns::processes_in(inode).is_empty());
}

fn uid_of(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}
