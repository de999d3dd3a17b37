//! The sensor binary's control protocol (`--serve ADDR --cgroup-root PATH`, what the kind
//! backend speaks): subscribe to containers by id, get only their events, kill their
//! processes and nothing else. Needs root (eBPF, cgroups).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use guardlab_sensor::EventBody;
use guardlab_sensor::cgroup::OwnedCgroup;
use guardlab_sensor::events::control::SensorReply;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_streams_only_the_given_containers_and_kill_stays_inside_them() {
    require_root();
    let _serial = serial().await;
    use std::os::unix::process::ExitStatusExt;

    // A stand-in for a node's cgroup tree: a parent with two containers named like
    // containerd's, and one cgroup nobody subscribes to. Children are dropped first.
    let parent = cgroup("ctl");
    let parent_name = parent
        .path()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let id = |n: u64| container_id(n, &parent);
    let (mine_id, theirs_id) = (id(1), id(2));
    let child = |name: String| OwnedCgroup::create(&format!("{parent_name}/{name}")).unwrap();
    let mine = child(format!("cri-containerd-{mine_id}.scope"));
    let theirs = child(format!("cri-containerd-{theirs_id}.scope"));
    let outside = child(format!("cri-containerd-{}.scope", id(3)));

    let port = free_port();
    let mut sensor = Command::new(SENSOR_BIN)
        .args(["--serve", &format!("127.0.0.1:{port}"), "--cgroup-root"])
        .arg(parent.path())
        .env("NODE_NAME", "node-7")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(sensor.stderr.take().unwrap()).lines();
    loop {
        let line = stderr.next().expect("sensor stderr").unwrap();
        if line.contains("serving the control protocol") {
            break;
        }
    }

    // Not a request: a clear error, then the connection closes.
    let mut bad = Conn::open(port);
    bad.send(r#"{"op":"reboot"}"#);
    let reply: SensorReply = serde_json::from_str(&bad.line().unwrap()).unwrap();
    assert!(
        !reply.ok
            && reply
                .error
                .as_deref()
                .unwrap_or("")
                .contains("request line 1"),
        "{reply:?}"
    );

    // Two clients, one container each: the `container` line comes first, with the identity
    // the client gave and the node's name.
    let mut a = Conn::open(port);
    a.send(&subscribe(&[watched(&mine_id, "pod-a")]));
    let EventBody::Container(info) = a.event().body else {
        panic!("the first line is the container event")
    };
    assert_eq!(
        (
            info.cgroup_id,
            info.container_id.as_str(),
            info.pod_name.as_str()
        ),
        (mine.id(), mine_id.as_str(), "pod-a")
    );
    assert_eq!(
        (info.machine.as_str(), info.namespace.as_str()),
        ("node-7", "cryptominer")
    );
    assert_eq!(info.pod_labels["app"], "jupyter-notebook");
    let mut b = Conn::open(port);
    b.send(&subscribe(&[watched(&theirs_id, "pod-b")]));
    let EventBody::Container(info) = b.event().body else {
        panic!("the first line is the container event")
    };
    assert_eq!(info.cgroup_id, theirs.id());

    // Each sees its own exec, and never the other's.
    let out = run(command_in(theirs.path(), "/bin/true", &["ctl-theirs"])).await;
    assert!(out.status.success());
    let out = run(command_in(mine.path(), "/bin/true", &["ctl-mine"])).await;
    assert!(out.status.success());
    let mut seen_a = Vec::new();
    a.until(&mut seen_a, |e| exec_with_arg(e, "ctl-mine"));
    let mut seen_b = Vec::new();
    b.until(&mut seen_b, |e| exec_with_arg(e, "ctl-theirs"));
    assert!(
        seen_a
            .iter()
            .all(|e| e.cgroup_id().is_none_or(|c| c == mine.id())),
        "{seen_a:#?}"
    );
    assert!(
        seen_b
            .iter()
            .all(|e| e.cgroup_id().is_none_or(|c| c == theirs.id())),
        "{seen_b:#?}"
    );

    // Kill a process of a watched container by the pid its exec reported.
    let mut victim = command_in(mine.path(), "/bin/sleep", &["300"])
        .spawn()
        .unwrap();
    let victim_pid = victim.id();
    let pid = a.until(&mut seen_a, |e| match &e.body {
        EventBody::Exec(x) if x.pid == victim_pid => Some(x.pid),
        _ => None,
    });
    assert_eq!(pid, victim.id());
    assert_eq!(kill(port, pid, false), SensorReply::ok());
    assert_eq!(wait_gone(&mut victim).signal(), Some(libc::SIGKILL));

    // A tree: the shell and both of its children die.
    let mut shell = command_in(
        mine.path(),
        "/bin/sh",
        &["-c", "/bin/sleep 301 & /bin/sleep 302 & wait", "ctl-tree"],
    )
    .spawn()
    .unwrap();
    let pid = a.until(&mut seen_a, |e| exec_with_arg(e, "ctl-tree"));
    while !["301", "302"]
        .iter()
        .all(|arg| seen_a.iter().any(|e| exec_with_arg(e, arg).is_some()))
    {
        let event = a.event();
        seen_a.push(event);
    }
    assert_eq!(kill(port, pid, true), SensorReply::ok());
    assert_eq!(wait_gone(&mut shell).signal(), Some(libc::SIGKILL));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !mine.pids().is_empty() {
        assert!(
            Instant::now() < deadline,
            "left in the container: {:?}",
            mine.pids()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // A process outside the watched containers is refused, and lives on.
    let mut bystander = command_in(outside.path(), "/bin/sleep", &["300"])
        .spawn()
        .unwrap();
    let reply = kill(port, bystander.id(), false);
    assert!(
        !reply.ok
            && reply
                .error
                .as_deref()
                .unwrap_or("")
                .contains("not a live process of a watched container"),
        "{reply:?}"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        bystander.try_wait().unwrap().is_none(),
        "the bystander was killed"
    );
    bystander.kill().unwrap();
    bystander.wait().unwrap();

    // A later subscribe replaces the set: `a` now watches `theirs` instead of `mine`.
    a.send(&subscribe(&[watched(&theirs_id, "pod-b")]));
    a.until(&mut seen_a, |e| match &e.body {
        EventBody::Container(c) if c.cgroup_id == theirs.id() => Some(()),
        _ => None,
    });
    let out = run(command_in(mine.path(), "/bin/true", &["ctl-mine-2"])).await;
    assert!(out.status.success());
    let out = run(command_in(theirs.path(), "/bin/true", &["ctl-theirs-2"])).await;
    assert!(out.status.success());
    let mut after = Vec::new();
    a.until(&mut after, |e| exec_with_arg(e, "ctl-theirs-2"));
    assert!(
        after
            .iter()
            .all(|e| e.cgroup_id().is_none_or(|c| c == theirs.id())),
        "{after:#?}"
    );

    drop((a, b));
    // Our own child, not yet waited for.
    guardlab_host::process::signal(sensor.id(), libc::SIGTERM).unwrap();
    assert!(sensor.wait().unwrap().success());
    let rest: Vec<String> = stderr.map_while(Result::ok).collect();
    assert!(rest.iter().any(|l| l.contains("routed")), "{rest:?}");
}
