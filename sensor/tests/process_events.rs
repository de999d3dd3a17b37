//! Exec, fork and exit events of processes in a watched cgroup, and none from outside it.

mod common;

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use common::*;
use guardlab_sensor::events::{ExeStatus, ProcessKey};
use guardlab_sensor::{EventBody, ExitHook, Sensor, SensorConfig};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_fork_and_exit_of_a_watched_cgroup_are_reported_with_their_fields() {
    require_root();
    let _serial = serial().await;
    let cg = cgroup("proc");
    let (mut sensor, mut events) = start(SensorConfig::default());
    let id = sensor.watch(cg.path(), info("proc")).unwrap();
    assert_eq!(id, cg.id());

    // The container event comes first and carries the cgroup id.
    events
        .wait_for("the container event", WAIT, |seen| !seen.is_empty())
        .await;
    match &events.seen[0].body {
        EventBody::Container(c) => {
            assert_eq!(c.cgroup_id, id);
            assert_eq!(c.container_name, "proc");
        }
        other => panic!("first event is not the container: {other:?}"),
    }

    // sh forks twice (probe, true), the probe starts threads (not processes), sh exits 3.
    let script = format!("{PROBE} threads 3 5; /bin/true inside-marker; exit 3");
    let out = run(command_in(cg.path(), "/bin/sh", &["-c", &script])).await;
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    events
        .wait_for("sh's exit", WAIT, |seen| {
            exits(seen).any(|x| x.code == Some(3))
                && execs(seen).any(|x| x.argv.contains(&"inside-marker".to_string()))
        })
        .await;
    events.settle(Duration::from_millis(300)).await;
    let seen = &events.seen;

    let sh = execs(seen).find(|x| x.comm == "sh").expect("exec of sh");
    assert_eq!(sh.exe, real("/bin/sh"));
    assert_eq!(sh.argv, vec!["/bin/sh", "-c", script.as_str()]);
    assert!(!sh.argv_truncated);
    assert_eq!(sh.cgroup_id, id);
    assert_eq!(sh.pid, sh.key.0);
    assert_eq!(sh.ns_pid, sh.pid, "host pid namespace");
    assert_eq!((sh.uid, sh.euid, sh.gid), (0, 0, 0));
    assert_eq!(sh.user.as_deref(), Some("root"));
    assert_eq!(sh.euser.as_deref(), Some("root"));
    assert_eq!(
        sh.parent.map(ProcessKey::pid),
        Some(std::process::id()),
        "parent is the test process"
    );

    let probe = execs(seen)
        .find(|x| x.exe == real(PROBE))
        .expect("exec of the probe");
    assert_eq!(probe.argv[1..], ["threads", "3", "5"]);
    let tru = execs(seen)
        .find(|x| x.argv.contains(&"inside-marker".to_string()))
        .unwrap();
    assert_eq!(tru.exe, real("/bin/true"));
    assert_eq!(tru.comm, "true");

    // Each child was forked by sh, then exec'd under the same key.
    for child in [probe, tru] {
        let fork = forks(seen)
            .find(|f| f.key == child.key)
            .unwrap_or_else(|| panic!("no fork for {child:?}"));
        assert_eq!(fork.parent, sh.key);
        assert_eq!(fork.comm, "sh");
        assert_eq!(child.parent, Some(sh.key));
    }
    // The probe's threads are not processes: no fork from it, and a single exit.
    assert!(
        forks(seen).all(|f| f.parent != probe.key),
        "threads reported as forks: {seen:#?}"
    );
    let probe_exits: Vec<_> = exits(seen).filter(|x| x.key == probe.key).collect();
    assert_eq!(probe_exits.len(), 1, "{seen:#?}");
    assert_eq!(
        (probe_exits[0].code, probe_exits[0].signal),
        (Some(5), None)
    );
    let sh_exit = exits(seen).find(|x| x.key == sh.key).unwrap();
    assert_eq!((sh_exit.code, sh_exit.signal), (Some(3), None));
    assert!(seen.iter().all(|e| e.cgroup_id().is_none_or(|c| c == id)));
    assert!(
        execs(seen).all(|x| x.exe_status == ExeStatus::Resolved && !x.killed),
        "{seen:#?}"
    );

    // Times are the wall clock's (boot-time clock converted once at start).
    let now = i128::from(guardlab_host::unix_time_ns());
    for event in seen {
        let skew = (i128::from(event.ts) - now).abs();
        assert!(
            skew < 5_000_000_000,
            "event time {} is {skew} ns from the wall clock {now}: {event:?}",
            event.ts
        );
    }

    // Killed by a signal.
    let out = run(command_in(cg.path(), "/bin/sh", &["-c", "kill -9 $$"])).await;
    assert_eq!(out.status.signal(), Some(9));
    events
        .wait_for("an exit by SIGKILL", WAIT, |seen| {
            exits(seen).any(|x| x.signal == Some(9))
        })
        .await;
    let killed = exits(&events.seen).find(|x| x.signal == Some(9)).unwrap();
    assert_eq!(killed.code, None);

    sensor.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_outside_the_watched_cgroup_produce_nothing() {
    require_root();
    let _serial = serial().await;
    let watched = cgroup("watched");
    let other = cgroup("other");
    let (mut sensor, mut events) = start(SensorConfig::default());
    sensor.watch(watched.path(), info("watched")).unwrap();

    // Outside: in the test's own cgroup and in another, unwatched one.
    let mut outside = std::process::Command::new("/bin/sh");
    outside.args(["-c", "/bin/true outside-marker-1"]);
    let out = run(outside).await;
    assert!(out.status.success());
    let out = run(command_in(
        other.path(),
        "/bin/sh",
        &["-c", "/bin/true outside-marker-2; exit 0"],
    ))
    .await;
    assert!(out.status.success());
    // Inside, last: once it is seen, anything from outside would have been seen before it.
    let out = run(command_in(watched.path(), "/bin/true", &["inside-marker"])).await;
    assert!(out.status.success());
    events
        .wait_for("the inside exec and exit", WAIT, |seen| {
            let inside = execs(seen).find(|x| x.argv.contains(&"inside-marker".to_string()));
            inside.is_some_and(|x| exits(seen).any(|e| e.key == x.key))
        })
        .await;
    events.settle(Duration::from_millis(300)).await;
    let stray: Vec<_> = events
        .seen
        .iter()
        .filter(|e| {
            e.cgroup_id().is_some_and(|c| c != watched.id())
                || format!("{e:?}").contains("outside-marker")
        })
        .collect();
    assert!(
        stray.is_empty(),
        "events from outside the watched cgroup: {stray:#?}"
    );
    sensor.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exe_is_absolute_for_relative_execs_argv_is_bounded_and_ns_pid_is_the_containers() {
    require_root();
    let _serial = serial().await;
    let cg = cgroup("argv");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy("/bin/true", dir.path().join("mytrue")).unwrap();
    let (mut sensor, mut events) = start(SensorConfig::default());
    sensor.watch(cg.path(), info("argv")).unwrap();

    // A relative exec: the kernel-side path walk gives the absolute path.
    let mut cmd = command_in(cg.path(), "./mytrue", &["relative-marker"]);
    cmd.current_dir(dir.path());
    assert!(run(cmd).await.status.success());
    // 40 arguments of 100 bytes: more than the 1 KiB the kernel copies.
    let long: Vec<String> = (0..40)
        .map(|i| format!("{i:02}{}", "x".repeat(98)))
        .collect();
    let long_refs: Vec<&str> = long.iter().map(String::as_str).collect();
    assert!(
        run(command_in(cg.path(), "/bin/true", &long_refs))
            .await
            .status
            .success()
    );
    // A new pid namespace: the process is pid 1 inside it.
    let out = run(command_in(
        cg.path(),
        "unshare",
        &["--pid", "--fork", "/bin/true", "pidns-marker"],
    ))
    .await;
    assert!(out.status.success(), "{out:?}");

    events
        .wait_for("three execs", WAIT, |seen| {
            let has = |m: &str| execs(seen).any(|x| x.argv.iter().any(|a| a.starts_with(m)));
            has("relative-marker")
                && execs(seen).any(|x| x.argv_truncated)
                && execs(seen).any(|x| x.argv == ["/bin/true", "pidns-marker"])
        })
        .await;
    let seen = &events.seen;
    let rel = execs(seen)
        .find(|x| x.argv.contains(&"relative-marker".to_string()))
        .unwrap();
    assert_eq!(rel.exe, real(dir.path().join("mytrue")));
    assert_eq!(rel.argv[0], "./mytrue");

    let trunc = execs(seen)
        .find(|x| x.argv.get(1).is_some_and(|a| a.starts_with("00x")))
        .unwrap();
    assert!(trunc.argv_truncated, "{trunc:?}");
    let bytes: usize = trunc.argv.iter().map(|a| a.len() + 1).sum();
    assert!(bytes <= 1024 + 1, "kept {bytes} bytes of argv");
    assert_eq!(
        trunc.argv[1], long[0],
        "whole arguments before the cut are intact"
    );

    let pidns = execs(seen)
        .find(|x| x.argv == ["/bin/true", "pidns-marker"])
        .unwrap();
    assert_eq!(pidns.ns_pid, 1, "{pidns:?}");
    assert_ne!(pidns.pid, 1);
    sensor.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_process_exits_exactly_once_even_when_its_threads_exit_together() {
    require_root();
    let _serial = serial().await;
    // Auto takes the group_dead program wherever the kernel accepts it.
    let (sensor, _) = start(SensorConfig::default());
    let auto = sensor.exit_hook();
    drop(sensor);
    if auto == ExitHook::LiveCount {
        let refused = Sensor::start(SensorConfig {
            exit_hook: ExitHook::GroupDead,
            ..Default::default()
        });
        assert!(refused.is_err(), "Auto fell back although group_dead loads");
    }
    let hooks: &[ExitHook] = if auto == ExitHook::GroupDead {
        &[ExitHook::GroupDead, ExitHook::LiveCount]
    } else {
        &[ExitHook::LiveCount]
    };
    for &hook in hooks {
        let cg = cgroup("threadexit");
        let (mut sensor, mut events) = start(SensorConfig {
            exit_hook: hook,
            ..Default::default()
        });
        assert_eq!(sensor.exit_hook(), hook);
        sensor.watch(cg.path(), info("threadexit")).unwrap();

        // 200 processes, each with 3 spinning threads when it calls exit_group: its 4 threads
        // exit at the same moment on different CPUs.
        const RUNS: usize = 200;
        let out = run(command_in(
            cg.path(),
            PROBE,
            &[
                "exec-storm",
                &RUNS.to_string(),
                PROBE,
                "spin-exit",
                "3",
                "0",
            ],
        ))
        .await;
        assert!(out.status.success(), "{}", stdout(&out));

        let spinners = |seen: &[guardlab_sensor::Event]| -> Vec<ProcessKey> {
            execs(seen)
                .filter(|x| x.argv.get(1).is_some_and(|a| a == "spin-exit"))
                .map(|x| x.key)
                .collect()
        };
        events
            .wait_for("every spinner's exit", Duration::from_secs(30), |seen| {
                let keys = spinners(seen);
                keys.len() == RUNS && keys.iter().all(|k| exits(seen).any(|e| e.key == *k))
            })
            .await;
        events.settle(Duration::from_millis(500)).await;
        // (code, signal) of every exit reported per process.
        type Statuses = Vec<(Option<i32>, Option<i32>)>;
        let mut per_process: HashMap<ProcessKey, Statuses> = HashMap::new();
        for e in exits(&events.seen) {
            per_process
                .entry(e.key)
                .or_default()
                .push((e.code, e.signal));
        }
        for key in spinners(&events.seen) {
            assert_eq!(
                per_process.get(&key).map(Vec::as_slice),
                Some(&[(Some(0), None)][..]),
                "{hook:?}: process {key} must exit exactly once, with status 0"
            );
        }
        assert_eq!(sensor.stop().await.unwrap().dropped, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fileless_exec_reports_the_memfd_name_and_is_marked() {
    require_root();
    let _serial = serial().await;
    let cg = cgroup("fileless");
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("fileless-ran");
    let (mut sensor, mut events) = start(SensorConfig::default());
    sensor.watch(cg.path(), info("fileless")).unwrap();

    // The probe copies itself into a memfd and execs that (memfd_create + fexecve).
    let out = run(command_in(
        cg.path(),
        PROBE,
        &["memfd-exec", "minerd", "touch", marker.to_str().unwrap()],
    ))
    .await;
    assert!(out.status.success(), "{out:?}");
    assert!(marker.exists());
    events
        .wait_for("the exec from the memfd", WAIT, |seen| {
            execs(seen).any(|x| x.argv.first().is_some_and(|a| a == "minerd"))
        })
        .await;
    let outer = execs(&events.seen)
        .find(|x| x.argv.get(1).is_some_and(|a| a == "memfd-exec"))
        .unwrap();
    assert_eq!(
        (outer.exe.as_str(), outer.exe_status),
        (real(PROBE).as_str(), ExeStatus::Resolved)
    );
    let inner = execs(&events.seen)
        .find(|x| x.argv.first().is_some_and(|a| a == "minerd"))
        .unwrap();
    assert_eq!(inner.exe, "memfd:minerd", "{inner:?}");
    assert_eq!(inner.exe_status, ExeStatus::Fileless);
    assert!(!inner.killed);
    assert_eq!(inner.key, outer.key, "same process, new image");
    sensor.stop().await.unwrap();
}
