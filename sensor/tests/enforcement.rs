//! The enforcement hooks: kill at exec, refuse connect/sendmsg.

mod common;

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use common::*;
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
    let exit = exits(&events.seen).find(|e| e.key == killed.key).unwrap();
    assert_eq!((exit.signal, exit.code), (Some(9), None));

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
    sensor.stop().await.unwrap();
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
