//! The local lab's acceptance: up from cold (the image built into an empty cache) and from the
//! cache; the tutorial's notebook cell and terminal commands through the real Jupyter APIs; the
//! lab's internet (DNS, sourceforge.net over HTTP and HTTPS, the package index) and nothing
//! beyond it; the sensor's events; the responses; and nothing left after `down`.
//!
//! Root only. Prints the figures the issue asks for (cold and cached `up`, lab memory).

mod common;

use std::time::{Duration, Instant};

use common::*;
use guardlab_events::EventBody;
use guardlab_jupyter::{JupyterClient, Terminal};
use guardlab_lab::local::state::process_start_time;
use guardlab_lab::local::{DEFAULT_NOTEBOOK_PORT, ImageSource, LocalLab, cgroup};
use guardlab_lab::{AllowedDestination, Enforcement, Lab, LabAction, LabInfo, NoProgress};

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

/// RSS (KiB) of every process of the lab's cgroup tree: (daemon, pod).
fn lab_memory_kib(lab: &LocalLab) -> (u64, u64) {
    let state = lab.state().unwrap().unwrap();
    let rss = |pids: Vec<u32>| -> u64 {
        pids.iter()
            .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
            .filter_map(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .map(str::to_string)
            })
            .filter_map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
            })
            .sum()
    };
    let daemon = rss(cgroup::pids_in_tree(&state.cgroup.join("daemon")));
    let pods = state
        .pods
        .iter()
        .map(|p| rss(cgroup::pids_in_tree(&p.cgroup)))
        .sum();
    (daemon, pods)
}

/// The host's own addresses (not loopback): the pod must not reach them.
fn host_addresses() -> Vec<String> {
    let output = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .filter_map(|a| a.split('/').next())
        .filter(|a| !a.starts_with("127."))
        .map(str::to_string)
        .collect()
}

async fn hello_world(info: &LabInfo) {
    let jupyter = JupyterClient::new(&info.notebook_url).unwrap();
    jupyter
        .wait_until_up(Duration::from_secs(60))
        .await
        .unwrap();
    let mut kernel = jupyter.start_kernel().await.unwrap();
    let cell = kernel
        .run_cell("print(\"Hello world!\")", COMMAND_TIMEOUT)
        .await
        .unwrap();
    kernel.close().await.unwrap();
    assert_eq!(cell.stdout, "Hello world!\n", "{cell:?}");
}

/// Host pids of the pod's processes whose command line is `words`.
fn pod_processes(cgroup_path: &std::path::Path, words: &[&str]) -> Vec<u32> {
    let cmdline: String = words.iter().map(|w| format!("{w}\0")).collect();
    cgroup::pids_in_tree(cgroup_path)
        .into_iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default() == cmdline
        })
        .collect()
}

/// The parent of a process, from /proc.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Running: not gone and not a zombie.
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            let state = stat[stat.rfind(')').unwrap() + 1..]
                .split_whitespace()
                .next()
                .unwrap_or("X")
                .to_string();
            state != "Z" && state != "X"
        })
        .unwrap_or(false)
}

/// Waits until the process `pid` that started at `started` has been reaped by its parent (its
/// /proc entry is gone, or is a later process's). A killed process leaves its cgroup's
/// `cgroup.procs` and stops running before its parent learns of it; only once the terminal's
/// bash has reaped its job is the job's end certain to be said before the next prompt.
async fn wait_until_reaped(what: &str, pid: u32, started: u64) {
    wait_until(what, || process_start_time(pid) != Some(started)).await;
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `KillProcessGroup` in the pod: a terminal job of three processes (a subshell and its two
/// sleeps: one process group) next to another job (another group); killing the group of one
/// of the sleeps ends the whole job and nothing else.
async fn a_process_group_is_killed_and_nothing_else(
    lab: &mut LocalLab,
    terminal: &mut Terminal,
    cgroup_path: &std::path::Path,
) {
    let (output, code) = run(
        terminal,
        "(sleep 1201 & sleep 1202 & wait) & sleep 1203 & echo started",
    )
    .await;
    assert_eq!(code, 0, "{output}");
    let mut found = (Vec::new(), Vec::new(), Vec::new());
    wait_until("the job's processes in the pod", || {
        found = (
            pod_processes(cgroup_path, &["sleep", "1201"]),
            pod_processes(cgroup_path, &["sleep", "1202"]),
            pod_processes(cgroup_path, &["sleep", "1203"]),
        );
        found.0.len() == 1 && found.1.len() == 1 && found.2.len() == 1
    })
    .await;
    let (first, second, other) = (found.0[0], found.1[0], found.2[0]);
    let subshell = parent_of(first).unwrap();
    let subshell_started = process_start_time(subshell).unwrap();
    assert_eq!(parent_of(second), Some(subshell));
    let shell = parent_of(subshell).unwrap();
    assert_eq!(
        parent_of(other),
        Some(shell),
        "both jobs are the terminal's"
    );
    let group = cgroup::process_group(first).unwrap();
    assert_eq!(
        [subshell, first, second].map(cgroup::process_group),
        [Some(group); 3],
        "the job is one process group"
    );
    let other_group = cgroup::process_group(other).unwrap();
    assert_ne!(other_group, group, "the other job is another group");
    assert_ne!(cgroup::process_group(shell), Some(group));

    // Never anything outside the pod.
    let refused = lab
        .carry_out(&LabAction::KillProcessGroup {
            pid: std::process::id(),
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("not in a pod of this lab"), "{refused}");

    lab.carry_out(&LabAction::KillProcessGroup { pid: second })
        .await
        .unwrap();
    wait_until("the group's processes to end", || {
        [subshell, first, second].iter().all(|p| !running(*p))
    })
    .await;
    wait_until_reaped("bash to reap the killed job", subshell, subshell_started).await;
    assert!(running(other), "the other group's sleep lives on");
    assert!(running(shell), "the terminal's shell lives on");
    // `jobs` says how the reaped job ended. Not `wait`'s notice: `wait` without arguments
    // discards the status of every job already dead (POSIX allows it), so whether it said
    // "Killed" depended on whether bash had reaped the other sleep, killed just before, by the
    // time `wait` began.
    let (output, code) = run(terminal, "jobs; kill $!; wait; echo still here").await;
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("still here"), "{output}");
    assert!(
        output
            .lines()
            .any(|l| l.contains("Killed") && l.contains("sleep 1202")),
        "bash saw its job killed: {output}"
    );
    wait_until("the other sleep to end by the terminal's kill", || {
        !running(other)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_from_cold_and_from_cache_then_the_tutorial_runs_in_the_lab() {
    require_root();
    let _serial = SERIAL.lock().await;
    let _port = lock_port(DEFAULT_NOTEBOOK_PORT);
    let scratch = tempfile::tempdir().unwrap();
    // An empty image cache: this `up` builds the image, every step of it; it shares the
    // default cache's downloads (debootstrap's .debs, pip's cache), so it measures the build
    // without downloading again what the default cache has.
    let cold_cache = tempfile::Builder::new()
        .prefix("guardlab-cold-cache-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let name = lab_name("tutorial");
    let mut lab = LocalLab::new(options(&name, scratch.path(), Some(cold_cache.path()))).unwrap();
    let progress = TestProgress::new();

    let started = Instant::now();
    let cold = lab.up(&progress).await;
    let cold_seconds = started.elapsed().as_secs_f64();
    let mut holdings = Holdings::gather(&lab);
    // The lab says which image its pod runs on (so that no prune of the cache takes it), and
    // the image knows it was used.
    let ImageSource::Recipe { recipe_dir, .. } = &lab.options().image else {
        panic!("the test lab builds its image")
    };
    let image_dir = cold_cache
        .path()
        .join(guardlab_lab::image::image_recipe_hash(recipe_dir).unwrap());
    let recorded = lab.state().unwrap().and_then(|s| s.image_rootfs);
    // ... and the lab is registered in the image while it is up (whatever its state dir).
    let registration = lab.state().unwrap().and_then(|s| s.image_registration);
    let registered = registration.as_ref().is_some_and(|r| {
        r.starts_with(image_dir.join(guardlab_lab::image::USERS_DIR))
            && std::fs::read_to_string(r).is_ok_and(|t| t.contains(&name))
    });
    let cold_result = match cold {
        Ok(info) => {
            hello_world(&info).await;
            Ok(())
        }
        Err(e) => Err(e),
    };
    lab.down(&progress).await.expect("down after the cold up");
    cold_result.expect("lab up from cold");
    assert_nothing_left(&holdings);
    assert_eq!(recorded, Some(image_dir.join("rootfs")));
    assert!(image_dir.join("last-used").is_file());
    assert!(registered, "not registered in its image: {registration:?}");
    let registration = registration.unwrap();
    assert!(
        !registration.exists(),
        "{} is left after down",
        registration.display()
    );

    let started = Instant::now();
    let cached = lab.up(&progress).await;
    let cached_seconds = started.elapsed().as_secs_f64();
    let checks = async {
        let info = cached.expect("lab up from the cache");
        holdings = Holdings::gather(&lab);
        let pod = info.pods[0].clone();
        let mut events = lab.events().await.expect("events");

        // The baseline, as a learner types it in a notebook.
        let jupyter = JupyterClient::new(&info.notebook_url).unwrap();
        let status = jupyter
            .wait_until_up(Duration::from_secs(60))
            .await
            .unwrap();
        assert!(!status.started.is_empty());
        let mut kernel = jupyter.start_kernel().await.unwrap();
        let cell = kernel
            .run_cell("print(\"Hello world!\")", COMMAND_TIMEOUT)
            .await
            .unwrap();
        assert_eq!(cell.stdout, "Hello world!\n", "{cell:?}");
        let cell = kernel
            .run_cell(
                "!pip install --upgrade pip setuptools wheel",
                Duration::from_secs(180),
            )
            .await
            .unwrap();
        assert!(
            cell.error.is_none() && cell.stdout.contains("Successfully installed"),
            "pip through the lab's index: {cell:?}"
        );
        kernel.close().await.unwrap();

        // The attack's commands, in a Jupyter terminal.
        let mut terminal = jupyter.open_terminal().await.unwrap();
        let (output, code) = run(&mut terminal, "id").await;
        assert_eq!(code, 0);
        assert!(
            output.contains("uid=1000(jovyan) gid=100(users)"),
            "{output}"
        );
        // sudo asks for jovyan's password, as in the original lab; the learner gives up (Ctrl-C).
        let sudo = terminal
            .run_answering("sudo -l", &[("password for", "\u{3}")], COMMAND_TIMEOUT)
            .await
            .unwrap();
        eprintln!("$ sudo -l\n{}[exit {}]", sudo.output, sudo.exit_status);
        assert_ne!(sudo.exit_status, 0);
        assert!(
            sudo.output.contains("[sudo] password for jovyan"),
            "{}",
            sudo.output
        );
        let (output, code) = run(&mut terminal, "sudo -n -l").await;
        assert_ne!(code, 0);
        assert!(output.contains("a password is required"), "{output}");
        let (output, code) = run(&mut terminal, "ping -n 3 sourceforge.net").await;
        assert_eq!(code, 127);
        assert!(output.contains("ping: command not found"), "{output}");
        let (_, code) = run(&mut terminal, "curl sourceforge.net > /dev/null").await;
        assert_eq!(code, 0, "curl sourceforge.net");
        let (output, code) = run(&mut terminal, "curl -sS sourceforge.net | head -c 300").await;
        assert_eq!(code, 0);
        assert!(output.contains("SourceForge"), "{output}");
        let (output, code) =
            run(&mut terminal, "wget https://sourceforge.net/projects/cpuminer/files/pooler-cpuminer-2.5.1-linux-x86_64.tar.gz/download")
                .await;
        assert_eq!(code, 0, "wget over HTTPS with the lab CA: {output}");
        let (output, code) = run(&mut terminal, "tar -tzf download").await;
        assert_eq!((code, output.trim()), (0, "minerd"));
        // Nothing beyond the lab: a public address (TEST-NET-3) and the host.
        let (output, code) = run(&mut terminal, "curl -sS --max-time 5 http://203.0.113.1/").await;
        assert_ne!(code, 0, "a public address must be unreachable: {output}");
        assert!(
            !output.contains("timed out"),
            "refused for lack of a route, not by a timeout: {output}"
        );
        for address in host_addresses() {
            let (output, code) = run(
                &mut terminal,
                &format!("curl -sS --max-time 5 http://{address}:{DEFAULT_NOTEBOOK_PORT}/"),
            )
            .await;
            assert_ne!(
                code, 0,
                "the host's {address} must be unreachable: {output}"
            );
        }
        // 127.0.0.1 in the pod is the pod's own loopback: the host's (where the notebook is
        // forwarded) is not reachable.
        let (output, code) = run(
            &mut terminal,
            &format!("curl -sS --max-time 5 http://127.0.0.1:{DEFAULT_NOTEBOOK_PORT}/api/status"),
        )
        .await;
        assert_ne!(code, 0, "the host's loopback must be unreachable: {output}");
        let (output, _) = run(&mut terminal, "ps -aux").await;
        assert!(output.contains("jupyter"), "{output}");
        assert!(
            !output.contains("guardlab-local-lab"),
            "the pod sees its own processes only: {output}"
        );
        terminal.close().await.unwrap();

        // The lab's services saw the learner.
        let visitors = lab.visitors().await.unwrap();
        assert!(
            visitors
                .web
                .iter()
                .any(|v| v.contains("sourceforge.net/projects/cpuminer")),
            "{:?}",
            visitors.web
        );
        assert!(
            visitors
                .dns
                .iter()
                .any(|v| v.starts_with("sourceforge.net A")),
            "{:?}",
            visitors.dns
        );

        // The sensor saw the pod: its container event, its first process, and `id`.
        let mut container = false;
        let mut root_exec = false;
        let mut id_exec = false;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !(container && root_exec && id_exec) && Instant::now() < deadline {
            let Ok(Some(event)) = tokio::time::timeout(Duration::from_secs(1), events.recv()).await
            else {
                continue;
            };
            match &event.body {
                EventBody::Container(c) if c.pod_name == pod.name => {
                    assert_eq!(Some(c.cgroup_id), pod.cgroup_id);
                    assert_eq!(c.namespace, "cryptominer");
                    assert_eq!(c.image, "jupyter/minimal-notebook:latest");
                    container = true;
                }
                EventBody::Exec(e) if Some(e.cgroup_id) == pod.cgroup_id => {
                    if e.pid == pod.root_pid.unwrap() {
                        root_exec = true;
                    }
                    if e.argv == ["id"] {
                        assert_eq!(e.uid, 1000);
                        id_exec = true;
                    }
                }
                _ => {}
            }
        }
        assert!(
            container && root_exec && id_exec,
            "events: container {container}, root exec {root_exec}, id {id_exec}"
        );

        let (daemon_kib, pod_kib) = lab_memory_kib(&lab);
        eprintln!(
            "FIGURES: cold lab up (image build included) {cold_seconds:.1} s; cached lab up {cached_seconds:.1} s; \
             lab memory {:.0} MiB RSS (daemon with sensor and services {:.0} MiB, pod {:.0} MiB)",
            (daemon_kib + pod_kib) as f64 / 1024.0,
            daemon_kib as f64 / 1024.0,
            pod_kib as f64 / 1024.0
        );
    };
    let outcome = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(checks)).await;
    holdings.merge(Holdings::gather(&lab));
    lab.down(&progress).await.expect("lab down");
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    assert_nothing_left(&holdings);
    assert!(
        cached_seconds < cold_seconds,
        "the cached up ({cached_seconds:.1} s) must be faster than the cold one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_kill_the_pods_processes_only_and_a_killed_pod_is_replaced() {
    require_root();
    // One lab at a time in this binary: the cold build takes both cores.
    let _serial = SERIAL.lock().await;
    let scratch = tempfile::tempdir().unwrap();
    let name = lab_name("responses");
    let mut options = options(&name, scratch.path(), None);
    options.forward = Some("127.0.0.1:0".parse().unwrap());
    let mut lab = LocalLab::new(options).unwrap();
    let info = lab.up(&TestProgress::new()).await;
    let mut holdings = Holdings::gather(&lab);
    let checks = async {
        let info = info.expect("lab up");
        let pod = info.pods[0].clone();
        let jupyter = JupyterClient::new(&info.notebook_url).unwrap();
        let mut terminal = jupyter.open_terminal().await.unwrap();
        let (output, _) = run(&mut terminal, "sleep 1000 & echo started $!").await;
        assert!(output.contains("started"), "{output}");
        // The host pid of that sleep: the pod cgroup's process running `sleep 1000`.
        let cgroup_path = pod.cgroup_path.clone().unwrap();
        let find_sleeper = || {
            cgroup::pids_in_tree(&cgroup_path).into_iter().find(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default()
                    == "sleep\x001000\x00"
            })
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut sleeper = find_sleeper();
        while sleeper.is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            sleeper = find_sleeper();
        }
        let sleeper = sleeper.expect("the sleep in the pod's cgroup");
        let sleeper_started = process_start_time(sleeper).unwrap();

        // Never anything outside the pod.
        let refused = lab
            .carry_out(&LabAction::KillProcess {
                pid: std::process::id(),
            })
            .await;
        assert!(
            refused
                .unwrap_err()
                .to_string()
                .contains("not in a pod of this lab")
        );
        lab.carry_out(&LabAction::KillProcess { pid: sleeper })
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while cgroup::pids_in_tree(&cgroup_path).contains(&sleeper) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            !cgroup::pids_in_tree(&cgroup_path).contains(&sleeper),
            "the sleep was killed"
        );
        // Gone from the cgroup is not yet reaped: bash says its job was killed only before the
        // first prompt after reaping it.
        wait_until_reaped("bash to reap the killed sleep", sleeper, sleeper_started).await;
        let (output, code) = run(&mut terminal, "echo still here").await;
        assert_eq!(code, 0);
        assert!(
            output.starts_with("still here"),
            "the rest of the pod lives on: {output}"
        );
        assert!(
            output
                .lines()
                .any(|l| l.contains("Killed") && l.contains("sleep 1000")),
            "bash saw its job killed: {output}"
        );
        a_process_group_is_killed_and_nothing_else(&mut lab, &mut terminal, &cgroup_path).await;
        drop(terminal);

        // A killed pod comes back as a new pod of the same Deployment.
        lab.carry_out(&LabAction::KillPod {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
        })
        .await
        .unwrap();
        holdings.merge(Holdings::gather(&lab));
        let now = lab.status().await.unwrap().expect("the lab still runs");
        assert_eq!(now.pods.len(), 1);
        assert_ne!(now.pods[0].name, pod.name);
        assert!(now.pods[0].name.starts_with("jupyter-notebook-"));
        assert!(!cgroup_path.exists(), "the old pod's cgroup is gone");
        hello_world(&now).await;

        // When the pod's first process dies, the Deployment brings a new pod, as on a cluster.
        let second = now.pods[0].clone();
        lab.carry_out(&LabAction::KillProcess {
            pid: second.root_pid.unwrap(),
        })
        .await
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let third = loop {
            holdings.merge(Holdings::gather(&lab));
            if let Some(info) = lab.status().await.unwrap()
                && info.pods.first().is_some_and(|p| p.name != second.name)
            {
                break info;
            }
            assert!(
                Instant::now() < deadline,
                "no new pod after the first process died"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let exit = lab.daemon_status().await.unwrap().unwrap().pod_exit;
        assert_eq!(
            exit.as_deref(),
            Some("signal 9"),
            "status tells how the pod ended"
        );
        hello_world(&third).await;

        // The pod's first process is in the process group of the daemon that started it (as a
        // runtime's child is): killing that group ends the pod's members only. The daemon
        // lives on and the Deployment brings a new pod.
        let daemon = lab.state().unwrap().unwrap().daemon.unwrap();
        let root = third.pods[0].root_pid.unwrap();
        assert_eq!(
            cgroup::process_group(root),
            cgroup::process_group(daemon.pid),
            "this check needs the pod's first process in the daemon's group"
        );
        lab.carry_out(&LabAction::KillProcessGroup { pid: root })
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            holdings.merge(Holdings::gather(&lab));
            if let Some(info) = lab.status().await.unwrap()
                && info
                    .pods
                    .first()
                    .is_some_and(|p| p.name != third.pods[0].name)
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no new pod after the first process's group was killed"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(daemon.is_alive(), "the daemon, in the same group, lives on");
    };
    let outcome = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(checks)).await;
    holdings.merge(Holdings::gather(&lab));
    lab.down(&NoProgress).await.expect("lab down");
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    assert_nothing_left(&holdings);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforcement_reaches_the_sensor_and_can_be_lifted() {
    require_root();
    // One lab at a time in this binary: the cold build takes both cores.
    let _serial = SERIAL.lock().await;
    let scratch = tempfile::tempdir().unwrap();
    let name = lab_name("enforce");
    let mut options = options(&name, scratch.path(), None);
    options.forward = Some("127.0.0.1:0".parse().unwrap());
    let mut lab = LocalLab::new(options).unwrap();
    let info = lab.up(&TestProgress::new()).await;
    let holdings = Holdings::gather(&lab);
    let checks = async {
        let info = info.expect("lab up");
        let pod = info.pods[0].clone();
        let jupyter = JupyterClient::new(&info.notebook_url).unwrap();
        let mut terminal = jupyter.open_terminal().await.unwrap();
        let (_, code) = run(
            &mut terminal,
            "curl -sS --max-time 5 sourceforge.net > /dev/null",
        )
        .await;
        assert_eq!(code, 0);

        // Connections: only the lab's DNS; exec: only the shell, id and curl.
        let enforcement = Enforcement {
            executables: Some(vec![
                "/usr/bin/bash".into(),
                "/usr/bin/id".into(),
                "/usr/bin/curl".into(),
            ]),
            destinations: Some(vec![AllowedDestination {
                network: "198.18.1.53/32".into(),
                first_port: 53,
                last_port: 53,
            }]),
            policy: None,
        };
        lab.enforce(&pod, &enforcement).await.expect("enforce");
        let (output, code) = run(
            &mut terminal,
            "curl -sS --max-time 5 sourceforge.net > /dev/null",
        )
        .await;
        assert_ne!(code, 0, "the connect is refused: {output}");
        assert!(
            !output.contains("Could not resolve"),
            "DNS is still allowed: {output}"
        );
        let (output, code) = run(&mut terminal, "id -u").await;
        assert_eq!((code, output.trim()), (0, "1000"));
        let (output, code) = run(&mut terminal, "ls /").await;
        assert_eq!(
            code, 137,
            "ls is not allowed: killed before it runs: {output}"
        );

        lab.enforce(&pod, &Enforcement::default())
            .await
            .expect("lift enforcement");
        let (_, code) = run(
            &mut terminal,
            "curl -sS --max-time 5 sourceforge.net > /dev/null",
        )
        .await;
        assert_eq!(code, 0, "allowed again");
        let (_, code) = run(&mut terminal, "ls /").await;
        assert_eq!(code, 0, "allowed again");
        terminal.close().await.unwrap();
    };
    let outcome = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(checks)).await;
    lab.down(&NoProgress).await.expect("lab down");
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    assert_nothing_left(&holdings);
}
