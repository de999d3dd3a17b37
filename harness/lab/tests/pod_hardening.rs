//! The running lab's pod, checked from INSIDE (through a Jupyter terminal, as the scenario's
//! attacker works): the host is protected as a container runtime protects it (a seccomp filter
//! from the runtime's default profile, pids and memory limits in the pod's cgroups wherever
//! this host keeps the controllers, a notebook that answers loopback names only), and the pod
//! is as open inside as the tutorial's (`sudo -l` asks for jovyan's password; a default route
//! into the lab's internet, and nothing beyond it).
//!
//! Root only.

mod common;

use std::time::Duration;

use common::*;
use guardlab_jupyter::{JupyterClient, Terminal};
use guardlab_lab::local::LocalLab;
use guardlab_lab::local::cgroup_limits::{CgroupLayout, Controller, Home};
use guardlab_lab::local::manifest::{self, default_manifests_dir};
use guardlab_lab::{Lab, NoProgress};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

async fn run(terminal: &mut Terminal, command: &str) -> (String, i32) {
    let result = terminal
        .run(command, COMMAND_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("`{command}`: {e}"));
    eprintln!(
        "$ {command}\n{}[exit {}]",
        result.output, result.exit_status
    );
    (result.output, result.exit_status)
}

/// The status of `GET /api` on `address` with this Host header, from the host.
async fn status_with_host(address: &str, host: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!("GET /api HTTP/1.0\r\nHost: {host}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

/// Where the pod sees a limit of `controller`: its own cgroup v2 at /sys/fs/cgroup, or the
/// hierarchy's directory there when the host keeps the controller in cgroup v1.
fn seen_at(layout: &CgroupLayout, controller: Controller, v2_file: &str, v1_file: &str) -> String {
    match layout.home(controller) {
        Some(Home::V1(h)) => format!(
            "/sys/fs/cgroup/{}/{v1_file}",
            h.mount.file_name().unwrap().to_string_lossy()
        ),
        Some(Home::V2) => format!("/sys/fs/cgroup/{v2_file}"),
        None => panic!("this host has no {controller:?} controller"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pod_is_confined_as_by_a_runtime_and_as_open_inside_as_the_tutorials() {
    require_root();
    let _serial = SERIAL.lock().await;
    let scratch = tempfile::tempdir().unwrap();
    let name = lab_name("harden");
    let mut options = options(&name, scratch.path(), None);
    options.forward = Some("127.0.0.1:0".parse().unwrap());
    let mut lab = LocalLab::new(options).unwrap();
    let info = lab.up(&TestProgress::new()).await;
    let mut holdings = Holdings::gather(&lab);
    let checks = async {
        let info = info.expect("lab up");
        let limits = manifest::load(&default_manifests_dir()).unwrap().limits;
        let (pids, memory) = (limits.pids.unwrap(), limits.memory.unwrap());
        let layout = CgroupLayout::of_this_process().unwrap();
        let jupyter = JupyterClient::new(&info.notebook_url).unwrap();
        jupyter
            .wait_until_up(Duration::from_secs(60))
            .await
            .unwrap();
        let mut terminal = jupyter.open_terminal().await.unwrap();

        // Seccomp: a filter (mode 2), without no_new_privs.
        let (output, code) = run(
            &mut terminal,
            "grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status",
        )
        .await;
        assert_eq!(code, 0, "{output}");
        assert!(output.contains("Seccomp:\t2"), "{output}");
        assert!(output.contains("NoNewPrivs:\t0"), "{output}");
        // ... and it is the runtime's default profile: userfaultfd is refused with EPERM,
        // which the kernel alone would allow (UFFD_USER_MODE_ONLY needs no privilege).
        let (output, code) = run(
            &mut terminal,
            "python3 -c 'import ctypes; l = ctypes.CDLL(None, use_errno=True); \
             print(\"userfaultfd\", l.syscall(323, 1), ctypes.get_errno())'",
        )
        .await;
        assert_eq!(code, 0, "{output}");
        assert!(
            output.contains("userfaultfd -1 1"),
            "EPERM from the filter: {output}"
        );

        // The pod's limits, in its own cgroups, wherever this host keeps the controllers.
        let pids_max = seen_at(&layout, Controller::Pids, "pids.max", "pids.max");
        let memory_max = seen_at(
            &layout,
            Controller::Memory,
            "memory.max",
            "memory.limit_in_bytes",
        );
        let (output, code) = run(&mut terminal, &format!("cat {pids_max} {memory_max}")).await;
        assert_eq!(code, 0, "{output}");
        let values: Vec<&str> = output.split_whitespace().collect();
        assert_eq!(values, [pids.to_string(), memory.to_string()], "{output}");
        // The same from the host: the pod's first process is in those cgroups.
        let state = lab.state().unwrap().unwrap();
        let pod = &state.pods[0];
        for dir in &pod.v1_cgroups {
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
            let root = pod.root.unwrap().pid.to_string();
            assert!(
                procs.lines().any(|l| l == root),
                "{}: {procs}",
                dir.display()
            );
        }
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", pod.root.unwrap().pid)).unwrap();
        assert!(status.contains("Seccomp:\t2\n"), "{status}");

        // As open inside as the tutorial's pod: sudo asks for jovyan's password.
        let sudo = terminal
            .run_answering("sudo -l", &[("password for", "\u{3}")], COMMAND_TIMEOUT)
            .await
            .unwrap();
        eprintln!("$ sudo -l\n{}[exit {}]", sudo.output, sudo.exit_status);
        assert!(
            sudo.output.contains("[sudo] password for jovyan"),
            "{}",
            sudo.output
        );

        // A default route, into the lab's internet (gateway 198.18.0.1), and nothing beyond.
        let (output, code) = run(&mut terminal, "cat /proc/net/route").await;
        assert_eq!(code, 0, "{output}");
        assert!(
            output.lines().any(|l| l
                .split_whitespace()
                .take(3)
                .eq(["eth0", "00000000", "010012C6"])),
            "a default route via 198.18.0.1: {output}"
        );

        // The notebook answers loopback names only, inside the pod...
        for (host, expected) in [
            ("localhost:8888", "200"),
            ("127.0.0.1:8888", "200"),
            ("rebind.example:8888", "403"),
            ("198.18.0.2:8888", "403"),
        ] {
            let (output, code) = run(
                &mut terminal,
                &format!("curl -s -o /dev/null -w '%{{http_code}}\\n' -H 'Host: {host}' http://127.0.0.1:8888/api"),
            )
            .await;
            assert_eq!((code, output.trim()), (0, expected), "Host {host}");
        }
        terminal.close().await.unwrap();
        // ... and through the port-forward, where a learner's browser would reach it.
        let address = info
            .notebook_url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let port = address.rsplit(':').next().unwrap();
        assert_eq!(status_with_host(&address, &address).await, "200");
        assert_eq!(
            status_with_host(&address, &format!("localhost:{port}")).await,
            "200"
        );
        assert_eq!(
            status_with_host(&address, &format!("attacker.example:{port}")).await,
            "403",
            "DNS rebinding: a name that resolves to 127.0.0.1 is refused"
        );
        holdings.merge(Holdings::gather(&lab));
        let on_v1 = [Controller::Pids, Controller::Memory]
            .iter()
            .any(|c| matches!(layout.home(*c), Some(Home::V1(_))));
        assert_eq!(
            !holdings.v1_cgroups.is_empty(),
            on_v1,
            "the lab records the v1 cgroups it makes: {:?}",
            holdings.v1_cgroups
        );
    };
    let outcome = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(checks)).await;
    holdings.merge(Holdings::gather(&lab));
    lab.down(&NoProgress).await.expect("lab down");
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    assert_nothing_left(&holdings);
}
