//! The enforcement hooks: kill at exec, refuse connect/sendmsg.

mod common;

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener};
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use guardlab_sensor::events::ExeStatus;
use guardlab_sensor::{AllowedDestination, SensorConfig, SensorError};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_outside_the_allowlist_is_killed_before_its_first_instruction() {
    require_root();
    let _serial = serial().await;
    let cg = cgroup("killexec");
    let dir = tempfile::tempdir().unwrap();
    for sub in ["allowed", "denied"] {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
        std::fs::copy(PROBE, dir.path().join(sub).join("probe")).unwrap();
    }
    let allowed = real(dir.path().join("allowed/probe"));
    let denied = real(dir.path().join("denied/probe"));
    let (mut sensor, mut events) = start(SensorConfig::default());
    let id = sensor.watch(cg.path(), info("killexec")).unwrap();
    sensor
        .set_exec_allowlist(id, Some(vec![allowed.clone()]))
        .unwrap();

    // The probe's first action is to create the marker: it must never exist.
    let marker = dir.path().join("denied-ran");
    let out = run(command_in(
        cg.path(),
        &denied,
        &["touch", marker.to_str().unwrap()],
    ))
    .await;
    assert_eq!(out.status.signal(), Some(9), "killed by SIGKILL: {out:?}");
    assert!(!marker.exists(), "the denied program ran");

    let marker_ok = dir.path().join("allowed-ran");
    let out = run(command_in(
        cg.path(),
        &allowed,
        &["touch", marker_ok.to_str().unwrap()],
    ))
    .await;
    assert!(out.status.success(), "{out:?}");
    assert!(marker_ok.exists());

    events
        .wait_for("the killed exec and its exit", WAIT, |seen| {
            execs(seen)
                .find(|x| x.exe == denied)
                .is_some_and(|x| exits(seen).any(|e| e.key == x.key))
        })
        .await;
    let killed = execs(&events.seen).find(|x| x.exe == denied).unwrap();
    assert!(
        killed.killed,
        "the exec event says it was killed: {killed:?}"
    );
    assert_eq!(killed.exe_status, ExeStatus::Resolved);
    let exit = exits(&events.seen).find(|e| e.key == killed.key).unwrap();
    assert_eq!((exit.signal, exit.code), (Some(9), None));
    events
        .wait_for("the allowed exec", WAIT, |seen| {
            execs(seen).any(|x| x.exe == allowed)
        })
        .await;
    assert!(execs(&events.seen).all(|x| x.exe != allowed || !x.killed));

    // Off again: the same program runs.
    sensor.set_exec_allowlist(id, None).unwrap();
    let marker3 = dir.path().join("denied-ran-after-off");
    let out = run(command_in(
        cg.path(),
        &denied,
        &["touch", marker3.to_str().unwrap()],
    ))
    .await;
    assert!(out.status.success(), "{out:?}");
    assert!(marker3.exists());

    // Bad entries are refused with the entry named.
    let err = sensor
        .set_exec_allowlist(id, Some(vec!["probe".into()]))
        .unwrap_err();
    assert!(
        matches!(err, SensorError::BadExecPath { .. }) && err.to_string().contains("\"probe\""),
        "{err}"
    );
    assert!(matches!(
        sensor.set_exec_allowlist(id + 1_000_000, None),
        Err(SensorError::NotWatched(_))
    ));
    assert_eq!(sensor.stop().await.unwrap().kill_failures, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_whose_path_cannot_be_vouched_for_is_killed_even_when_it_matches() {
    require_root();
    let _serial = serial().await;
    let cg = cgroup("untrusted");
    // A probe 33 directories deep: more components than the kernel walks (32), so its path
    // comes out truncated to the last 32, "/d/d/.../d/probe".
    let dir = tempfile::tempdir().unwrap();
    let mut deep = dir.path().to_path_buf();
    for _ in 0..33 {
        deep.push("d");
    }
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::copy(PROBE, deep.join("probe")).unwrap();
    let deep_probe = real(deep.join("probe"));
    let parts: Vec<&str> = deep_probe.split('/').filter(|p| !p.is_empty()).collect();
    assert!(parts.len() > 32, "{deep_probe}");
    let suffix = format!("/{}", parts[parts.len() - 32..].join("/"));

    let (mut sensor, mut events) = start(SensorConfig::default());
    let id = sensor.watch(cg.path(), info("untrusted")).unwrap();
    // Listed: the real probe, the deep probe's real path, and even the truncated path the
    // kernel will produce. None of that may let a truncated or fileless path through.
    sensor
        .set_exec_allowlist(
            id,
            Some(vec![real(PROBE), deep_probe.clone(), suffix.clone()]),
        )
        .unwrap();

    let marker = dir.path().join("deep-ran");
    let out = run(command_in(
        cg.path(),
        &deep_probe,
        &["touch", marker.to_str().unwrap()],
    ))
    .await;
    assert_eq!(out.status.signal(), Some(9), "truncated path: {out:?}");
    assert!(!marker.exists(), "the program with a truncated path ran");

    // The allowed probe copies itself into a memfd and execs it: killed at that exec.
    let marker2 = dir.path().join("fileless-ran");
    let out = run(command_in(
        cg.path(),
        PROBE,
        &["memfd-exec", "minerd", "touch", marker2.to_str().unwrap()],
    ))
    .await;
    assert_eq!(out.status.signal(), Some(9), "fileless exec: {out:?}");
    assert!(!marker2.exists(), "the fileless program ran");

    events
        .wait_for("both killed execs", WAIT, |seen| {
            execs(seen).filter(|x| x.killed).count() == 2
        })
        .await;
    let truncated = execs(&events.seen).find(|x| x.exe == suffix).unwrap();
    assert_eq!(
        (truncated.exe_status, truncated.killed),
        (ExeStatus::Truncated, true)
    );
    let fileless = execs(&events.seen)
        .find(|x| x.exe == "memfd:minerd")
        .unwrap();
    assert_eq!(
        (fileless.exe_status, fileless.killed),
        (ExeStatus::Fileless, true)
    );
    // The exec that started it, from an allowed path, was not killed.
    let outer = execs(&events.seen)
        .find(|x| x.key == fileless.key && x.exe == real(PROBE))
        .unwrap();
    assert!(!outer.killed);
    assert_eq!(sensor.stop().await.unwrap().kill_failures, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_outside_the_allowlist_gets_eperm_while_allowed_ones_and_loopback_connect() {
    require_root();
    let _serial = serial().await;
    let cg = cgroup("refuse");
    // A lab network namespace: lo carries two lab addresses; one listener serves them all.
    let ns = NetNs::create("refuse", &["198.18.0.1/32", "198.18.0.2/32"]);
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    let server = ns.spawn_in(move || {
        let listener = TcpListener::bind("0.0.0.0:0").unwrap();
        port_tx.send(listener.local_addr().unwrap().port()).unwrap();
        listener.set_nonblocking(true).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut accepted = 0;
        while accepted < 3 && std::time::Instant::now() < deadline {
            match listener.accept() {
                Ok(_) => accepted += 1,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
        accepted
    });
    let port = port_rx.recv().unwrap();

    let (mut sensor, mut events) = start(SensorConfig::default());
    let id = sensor.watch(cg.path(), info("refuse")).unwrap();
    let allow = vec![AllowedDestination::new(
        "198.18.0.1/32".parse().unwrap(),
        port..=port,
    )];
    sensor.set_connect_allowlist(id, Some(allow)).unwrap();

    let probe = |args: Vec<String>| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut cmd = command_in(cg.path(), PROBE, &refs);
        in_netns(&mut cmd, &ns.file);
        cmd
    };
    let connect = |addr: String| probe(vec!["connect".into(), addr]);

    let ok = run(connect(format!("198.18.0.1:{port}"))).await;
    assert!(ok.status.success(), "allowed destination: {}", stdout(&ok));
    let refused = run(connect(format!("198.18.0.2:{port}"))).await;
    assert!(
        stdout(&refused).starts_with("err errno=1 "),
        "other address: {}",
        stdout(&refused)
    );
    let wrong_port = run(connect(format!("198.18.0.1:{}", port.wrapping_add(1)))).await;
    assert!(
        stdout(&wrong_port).starts_with("err errno=1 "),
        "other port: {}",
        stdout(&wrong_port)
    );
    let udp = run(probe(vec!["udp".into(), "198.18.0.2:9".into()])).await;
    assert!(
        stdout(&udp).starts_with("err errno=1 "),
        "UDP sendmsg: {}",
        stdout(&udp)
    );
    let lo = run(connect(format!("127.0.0.1:{port}"))).await;
    assert!(
        lo.status.success(),
        "loopback stays allowed: {}",
        stdout(&lo)
    );

    // Off again: the refused address connects.
    sensor.set_connect_allowlist(id, None).unwrap();
    let after = run(connect(format!("198.18.0.2:{port}"))).await;
    assert!(
        after.status.success(),
        "after turning enforcement off: {}",
        stdout(&after)
    );
    assert_eq!(server.join().unwrap(), 3);

    let lab2 = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2));
    events
        .wait_for("refused and allowed connects", WAIT, |seen| {
            connects(seen)
                .filter(|c| c.remote_ip == lab2 && c.remote_port == port)
                .count()
                == 2
        })
        .await;
    let to_lab2: Vec<_> = connects(&events.seen)
        .filter(|c| c.remote_ip == lab2 && c.remote_port == port)
        .collect();
    assert!(to_lab2[0].refused, "{to_lab2:?}");
    assert!(!to_lab2[1].refused, "{to_lab2:?}");
    assert!(connects(&events.seen).any(|c| c.remote_ip == lab2 && c.remote_port == 9 && c.refused));
    assert!(
        connects(&events.seen)
            .any(|c| c.remote_ip == IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)) && !c.refused),
        "{:#?}",
        events.seen
    );
    sensor.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_connects_and_sends_are_refused_outside_the_allowlist() {
    require_root();
    let _serial = serial().await;
    let cg = cgroup("refuse6");
    // Lab addresses on lo of a namespace of our own: ULA for IPv6, 198.18/15 for IPv4 (reached
    // through AF_INET6 sockets as ::ffff:198.18.0.x).
    let ns = NetNs::create(
        "refuse6",
        &[
            "198.18.0.1/32",
            "198.18.0.2/32",
            "fd00:198:18::1/128",
            "fd00:198:18::2/128",
        ],
    );
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    let server = ns.spawn_in(move || {
        // Dual stack: takes IPv6 and IPv4-mapped connections.
        let listener = TcpListener::bind("[::]:0").unwrap();
        port_tx.send(listener.local_addr().unwrap().port()).unwrap();
        listener.set_nonblocking(true).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut peers = Vec::new();
        while peers.len() < 3 && std::time::Instant::now() < deadline {
            match listener.accept() {
                Ok((_, peer)) => peers.push(peer.ip()),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
        peers
    });
    let port = port_rx.recv().unwrap();

    let (mut sensor, mut events) = start(SensorConfig::default());
    let id = sensor.watch(cg.path(), info("refuse6")).unwrap();
    sensor
        .set_connect_allowlist(
            id,
            Some(vec![
                AllowedDestination::new("fd00:198:18::1/128".parse().unwrap(), port..=port),
                AllowedDestination::new("198.18.0.1/32".parse().unwrap(), port..=port),
            ]),
        )
        .unwrap();
    let probe = |args: &[&str]| {
        let mut cmd = command_in(cg.path(), PROBE, args);
        in_netns(&mut cmd, &ns.file);
        cmd
    };
    let expect = |what: &str, out: &std::process::Output, ok: bool| {
        let line = stdout(out);
        if ok {
            assert!(out.status.success(), "{what}: {line}");
        } else {
            assert!(
                line.starts_with("err errno=1 "),
                "{what} must get EPERM: {line}"
            );
        }
    };
    let at = |ip: &str, port: u16| format!("[{ip}]:{port}");

    let out = run(probe(&["connect", &at("fd00:198:18::1", port)])).await;
    expect("connect6 to the allowed address", &out, true);
    let out = run(probe(&["connect", &at("fd00:198:18::2", port)])).await;
    expect("connect6 to another address", &out, false);
    let out = run(probe(&["connect", &at("fd00:198:18::1", port + 1)])).await;
    expect("connect6 to another port", &out, false);
    let out = run(probe(&["connect", &at("::ffff:198.18.0.1", port)])).await;
    expect("connect6 to an allowed IPv4-mapped address", &out, true);
    let out = run(probe(&["connect", &at("::ffff:198.18.0.2", port)])).await;
    expect("connect6 to another IPv4-mapped address", &out, false);
    let out = run(probe(&["udp", &at("fd00:198:18::2", 9)])).await;
    expect("sendmsg6 to another address", &out, false);
    let out = run(probe(&["udp", &at("fd00:198:18::1", port)])).await;
    expect("sendmsg6 to the allowed address", &out, true);
    let out = run(probe(&["connect", &at("::1", port)])).await;
    expect("connect6 to loopback", &out, true);

    let mut peers = server.join().unwrap();
    peers.sort();
    let mut expected: Vec<IpAddr> = vec![
        "fd00:198:18::1".parse().unwrap(),
        "::ffff:198.18.0.1".parse().unwrap(),
        "::1".parse().unwrap(),
    ];
    expected.sort();
    assert_eq!(
        peers, expected,
        "the allowed connections, and only those, arrived"
    );

    let ula2: IpAddr = "fd00:198:18::2".parse().unwrap();
    let ula1: IpAddr = "fd00:198:18::1".parse().unwrap();
    let lab2 = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2));
    events
        .wait_for("the eight connects", WAIT, |seen| {
            connects(seen).count() >= 8
        })
        .await;
    let find = |ip: IpAddr, port: u16, udp: bool| {
        connects(&events.seen)
            .find(|c| {
                c.remote_ip == ip
                    && c.remote_port == port
                    && (c.protocol == guardlab_sensor::events::Protocol::Udp) == udp
            })
            .unwrap_or_else(|| panic!("no connect to {ip} port {port}: {:#?}", events.seen))
    };
    assert!(find(ula2, port, false).refused);
    assert!(find(ula1, port + 1, false).refused);
    assert!(!find(ula1, port, false).refused);
    // IPv4-mapped destinations are reported as the IPv4 address they are.
    assert!(find(lab2, port, false).refused);
    assert!(!find(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)), port, false).refused);
    assert!(find(ula2, 9, true).refused);
    assert!(!find(ula1, port, true).refused);
    assert!(!find(IpAddr::V6(Ipv6Addr::LOCALHOST), port, false).refused);
    sensor.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udp_socket_refused_after_enforcement_starts_is_reported_again() {
    require_root();
    let _serial = serial().await;
    let cg = cgroup("udpverdict");
    let ns = NetNs::create("udpverdict", &["198.18.0.1/32", "198.18.0.2/32"]);
    let (mut sensor, mut events) = start(SensorConfig::default());
    let id = sensor.watch(cg.path(), info("udpverdict")).unwrap();

    // One socket, one datagram per line written to the probe.
    let mut cmd = command_in(cg.path(), PROBE, &["udp-lines", "198.18.0.2:9"]);
    in_netns(&mut cmd, &ns.file);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut send = move || {
        stdin.write_all(b"go\n").unwrap();
        stdin.flush().unwrap();
        lines.next().unwrap().unwrap()
    };
    let lab2 = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2));
    let reports = |seen: &[guardlab_sensor::Event]| -> Vec<bool> {
        connects(seen)
            .filter(|c| c.remote_ip == lab2 && c.remote_port == 9)
            .map(|c| c.refused)
            .collect()
    };

    assert_eq!(send(), "ok sent");
    assert_eq!(send(), "ok sent");
    events
        .wait_for("the first send", WAIT, |seen| !reports(seen).is_empty())
        .await;
    let only = AllowedDestination::any_port("198.18.0.1/32".parse().unwrap());
    sensor.set_connect_allowlist(id, Some(vec![only])).unwrap();
    assert!(send().starts_with("err errno=1 "));
    assert!(send().starts_with("err errno=1 "));
    events
        .wait_for("the refusal", WAIT, |seen| reports(seen).len() >= 2)
        .await;
    sensor.set_connect_allowlist(id, None).unwrap();
    assert_eq!(send(), "ok sent");
    drop(send); // closes stdin: the probe exits
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success());
    events.settle(Duration::from_millis(300)).await;
    // Once per verdict: allowed, then refused; repeats of either are not reported again.
    assert_eq!(reports(&events.seen), [false, true], "{:#?}", events.seen);
    sensor.stop().await.unwrap();
}
