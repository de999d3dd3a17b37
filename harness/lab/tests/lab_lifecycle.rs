//! The local lab's lifecycle: `up` twice is harmless, `status` says where the notebook is, the
//! notebook answers on the host's loopback only, and `down` removes everything the lab made,
//! also after the harness or the daemon was killed with SIGKILL in the middle of `up`.
//!
//! Root only; the image comes from the cache (built once when it is missing).
#![allow(unsafe_code)] // tests make the system calls they check (geteuid, kill, mount, setns...)

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use guardlab_lab::local::{DEFAULT_NOTEBOOK_PORT, LocalLab};
use guardlab_lab::{Lab, NoProgress};

/// `GET path` on a host loopback address; the status code and the body.
fn http_get(address: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))
        .expect("connect to the notebook");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Listening TCP sockets on `port` from /proc/net/tcp{,6}: their local addresses (hex).
fn listeners_on(port: u16) -> Vec<String> {
    let mut found = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address is ADDR:PORT in hex; state 0A is LISTEN.
            if fields.len() > 3
                && fields[3] == "0A"
                && let Some((address, p)) = fields[1].split_once(':')
                && u16::from_str_radix(p, 16).ok() == Some(port)
            {
                found.push(address.to_string());
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_twice_is_harmless_status_tells_where_and_the_notebook_is_on_loopback_only() {
    require_root();
    let _serial = SERIAL.lock().await;
    let _port = lock_port(DEFAULT_NOTEBOOK_PORT);
    let scratch = tempfile::tempdir().unwrap();
    let name = lab_name("lifecycle");
    let options = options(&name, scratch.path(), None);
    let mut lab = LocalLab::new(options.clone()).unwrap();
    let progress = TestProgress::new();

    let mut registration = None;
    let result = async {
        let first = lab.up(&progress).await.expect("lab up");
        let holdings = Holdings::gather(&lab);
        // Registered in its pod image while up, so that no prune of the cache takes the image.
        registration = lab.state().unwrap().and_then(|s| s.image_registration);
        let path = registration
            .as_ref()
            .expect("the lab records its registration");
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("the registration {}: {e}", path.display()));
        assert!(
            text.contains(&lab.lab_dir().join("state.json").display().to_string()),
            "{text}"
        );
        assert_eq!(first.notebook_url, "http://127.0.0.1:1234/");
        assert_eq!(first.pods.len(), 1);
        let pod = &first.pods[0];
        assert_eq!(pod.namespace, "cryptominer");
        assert!(pod.name.starts_with("jupyter-notebook-"), "{}", pod.name);
        assert_eq!(
            pod.name.split('-').count(),
            4,
            "jupyter-notebook-<hash>-<suffix>: {}",
            pod.name
        );
        assert_eq!(
            pod.labels.get("app").map(String::as_str),
            Some("jupyter-notebook")
        );
        assert_eq!(pod.container_name, "minimal-notebook");
        assert_eq!(pod.image, "jupyter/minimal-notebook:latest");
        assert!(pod.cgroup_id.is_some() && pod.root_pid.is_some());

        // The notebook, through the host's loopback.
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, DEFAULT_NOTEBOOK_PORT));
        let (status, body) = http_get(address, "/api/status");
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("\"started\""), "{body}");
        // Only 127.0.0.1 listens on the port: nothing on 0.0.0.0 or [::].
        let listeners = listeners_on(DEFAULT_NOTEBOOK_PORT);
        assert_eq!(
            listeners,
            vec!["0100007F".to_string()],
            "listeners on port 1234: {listeners:?}"
        );

        // A second `up` (from another LocalLab, as a second command would) reuses the lab.
        let mut again = LocalLab::new(options.clone()).unwrap();
        let second = again.up(&NoProgress).await.expect("second lab up");
        assert_eq!(second, first, "the second up must find the same lab");
        let status = again
            .status()
            .await
            .unwrap()
            .expect("status of a running lab");
        assert_eq!(status.notebook_url, "http://127.0.0.1:1234/");
        assert_eq!(status.pods[0].name, pod.name);
        let detailed = again.daemon_status().await.unwrap().unwrap();
        assert_eq!(detailed.phase, "ready");
        assert!(detailed.sensor, "the sensor runs");
        assert!(
            detailed
                .services
                .iter()
                .any(|s| s.contains("198.18.1.53:53")),
            "{:?}",
            detailed.services
        );
        assert!(
            !holdings.bpf_programs.is_empty(),
            "the sensor's programs are recorded"
        );
        Ok::<_, String>(holdings)
    }
    .await;

    let started = Instant::now();
    lab.down(&progress).await.expect("lab down");
    eprintln!("down took {:.2} s", started.elapsed().as_secs_f64());
    let holdings = result.unwrap();
    assert_nothing_left(&holdings);
    let registration = registration.unwrap();
    assert!(
        !registration.exists() && registration.parent().unwrap().is_dir(),
        "down removes the registration {} and nothing else of the image",
        registration.display()
    );
    assert_eq!(lab.status().await.unwrap(), None);
    assert!(listeners_on(DEFAULT_NOTEBOOK_PORT).is_empty());
}

/// Where to kill in the middle of `up`.
#[derive(Clone, Copy, Debug)]
enum KillPoint {
    /// The state file exists, the daemon does not yet.
    Preparing,
    /// The daemon recorded itself.
    DaemonStarted,
    /// The pod's first process is recorded.
    PodStarted,
    /// `up` returned; then the daemon is killed.
    DaemonAfterReady,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_after_a_sigkill_at_any_point_of_up_leaves_nothing() {
    require_root();
    let scratch = tempfile::tempdir().unwrap();
    // Make sure the image is cached, so that the kill points are about the lab, not the build.
    let mut warm_options = options(&lab_name("warm"), scratch.path(), None);
    warm_options.forward = Some("127.0.0.1:0".parse().unwrap());
    warm_options.sensor = false;
    let mut warm = LocalLab::new(warm_options).unwrap();
    let warmed = warm.up(&TestProgress::new()).await;
    warm.down(&NoProgress).await.expect("warming up: lab down");
    warmed.expect("warming up: lab up");

    for point in [
        KillPoint::Preparing,
        KillPoint::DaemonStarted,
        KillPoint::PodStarted,
        KillPoint::DaemonAfterReady,
    ] {
        eprintln!("--- kill point {point:?}");
        let name = lab_name(&format!("kill{}", point as u8));
        let opts = {
            let mut o = options(&name, scratch.path(), None);
            o.forward = Some("127.0.0.1:0".parse().unwrap());
            o
        };
        let mut lab = LocalLab::new(opts.clone()).unwrap();
        let mut harness = Command::new(local_lab_exe())
            .args(["up", "--lab", &name, "--forward", "127.0.0.1:0"])
            .args(["--miner-tarball"])
            .arg(opts.miner_tarball.as_ref().unwrap())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut holdings = Holdings::gather(&lab);
        let mut registration = None;
        let deadline = Instant::now() + Duration::from_secs(240);
        loop {
            let state = lab.state().ok().flatten();
            if let Some(path) = state.as_ref().and_then(|s| s.image_registration.clone()) {
                registration = Some(path);
            }
            holdings.merge(Holdings::gather(&lab));
            let reached = match (point, &state) {
                (KillPoint::Preparing, Some(_)) => true,
                (KillPoint::DaemonStarted, Some(s)) => s.daemon.is_some(),
                (KillPoint::PodStarted, Some(s)) => s.pods.iter().any(|p| p.root.is_some()),
                (KillPoint::DaemonAfterReady, _) => harness.try_wait().unwrap().is_some(),
                _ => false,
            };
            if reached {
                break;
            }
            if let Some(status) = harness.try_wait().unwrap() {
                panic!("{point:?}: the harness ended ({status}) before the kill point");
            }
            assert!(
                Instant::now() < deadline,
                "{point:?}: the kill point was not reached in time"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        match point {
            KillPoint::DaemonAfterReady => {
                assert!(harness.wait().unwrap().success(), "up failed");
                holdings.merge(Holdings::gather(&lab));
                let daemon = lab.state().unwrap().unwrap().daemon.unwrap();
                // SAFETY: kill(2) of the daemon we just started.
                unsafe { libc::kill(daemon.pid as i32, libc::SIGKILL) };
                while daemon.is_alive() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                // The lab is broken now: `status` says so, and `up` starts it afresh.
                assert_eq!(
                    lab.status().await.unwrap(),
                    None,
                    "a lab without its daemon is not up"
                );
                assert!(
                    lab.state().unwrap().is_some(),
                    "its state is still there for `down`"
                );
                let info = lab
                    .up(&NoProgress)
                    .await
                    .expect("up after the daemon was killed");
                assert_eq!(info.pods.len(), 1);
                holdings.merge(Holdings::gather(&lab));
                assert_ne!(
                    lab.state().unwrap().unwrap().daemon.unwrap(),
                    daemon,
                    "a new daemon"
                );
            }
            KillPoint::PodStarted => {
                harness.kill().unwrap();
                harness.wait().unwrap();
                // The daemon goes on without its harness: it answers while it starts, and a new
                // `up` waits for it and reuses it.
                let daemon = lab.state().unwrap().unwrap().daemon.unwrap();
                let status = lab
                    .daemon_status()
                    .await
                    .unwrap()
                    .expect("the daemon answers");
                assert!(
                    status.phase == "starting" || status.phase == "ready",
                    "{status:?}"
                );
                assert_eq!(status.daemon_pid, daemon.pid);
                let info = lab.up(&NoProgress).await.expect("up after a killed up");
                assert_eq!(info.pods.len(), 1);
                assert_eq!(
                    lab.state().unwrap().unwrap().daemon,
                    Some(daemon),
                    "the same daemon"
                );
            }
            _ => {
                harness.kill().unwrap();
                harness.wait().unwrap();
            }
        }
        // Whatever the daemon goes on making until `down` stops it is found by `down` too.
        tokio::time::sleep(Duration::from_millis(300)).await;
        holdings.merge(Holdings::gather(&lab));
        if let Some(path) = lab.state().unwrap().and_then(|s| s.image_registration) {
            registration = Some(path);
        }
        let registration = registration.expect("the lab records its image registration");
        if !matches!(point, KillPoint::Preparing) {
            // The lookup registered the lab before the image was used.
            assert!(
                registration.is_file(),
                "{point:?}: {} is missing",
                registration.display()
            );
        }
        lab.down(&NoProgress)
            .await
            .unwrap_or_else(|e| panic!("{point:?}: lab down: {e}"));
        assert_nothing_left(&holdings);
        assert!(
            !registration.exists(),
            "{point:?}: down left the registration {}",
            registration.display()
        );
        // Nothing of this lab in the cgroup tree, whatever was recorded.
        let cgroup_root = guardlab_lab::local::cgroup::cgroup2_mount().unwrap();
        assert!(
            !cgroup_root.join("guardlab").join(&name).exists(),
            "{point:?}: the lab's cgroup is left"
        );
    }
}
