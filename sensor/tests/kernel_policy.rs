//! A compiled policy in the kernel (`Sensor::set_kernel_policy`): the process tree decides
//! each exec by where it happens, prefix globs cover files made later, destinations and the
//! addresses of allowed DNS names connect while others get EPERM, the resolver is always
//! reachable, and lifting or dropping leaves nothing behind.

mod common;

use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::os::unix::process::ExitStatusExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use guardlab_sensor::{
    AllowedDestination, AllowedDnsName, ExecRule, KernelPolicy, SensorConfig, SensorError,
};
use hickory_proto::op::{Message, MessageType};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record};

const WAIT: Duration = Duration::from_secs(10);

fn rule(parent: u32, exe: impl Into<String>, node: u32) -> ExecRule {
    ExecRule {
        parent,
        exe: exe.into(),
        node,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_program_under_the_wrong_parent_is_killed_and_globs_cover_later_files() {
    require_root();
    let _serial = serial().await;
    let cg = cgroup("tree");
    let dir = tempfile::tempdir().unwrap();
    for sub in ["a", "b", "c", "glob"] {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
    }
    for sub in ["a", "b", "c"] {
        std::fs::copy(PROBE, dir.path().join(sub).join("probe")).unwrap();
    }
    let a = real(dir.path().join("a/probe"));
    let b = real(dir.path().join("b/probe"));
    let c = real(dir.path().join("c/probe"));
    let glob_dir = real(dir.path().join("glob"));
    let marker = |name: &str| dir.path().join(name);
    let m = |name: &str| marker(name).to_str().unwrap().to_string();

    let (mut sensor, mut events) = start(SensorConfig::default());
    let id = sensor.watch(cg.path(), info("tree")).unwrap();
    // a at the root may start b; anything in glob/ may run at the root.
    let policy = KernelPolicy {
        exec: vec![
            rule(0, a.clone(), 1),
            rule(1, b.clone(), 2),
            rule(0, format!("{glob_dir}/*"), 3),
        ],
        ..Default::default()
    };
    sensor.set_kernel_policy(id, Some(policy)).unwrap();

    // The right parent: a starts b, which runs.
    let out = run(command_in(
        cg.path(),
        &a,
        &["exec-storm", "1", &b, "touch", &m("b-under-a")],
    ))
    .await;
    assert!(out.status.success(), "b under a: {}", stdout(&out));
    assert!(marker("b-under-a").exists());

    // The same b at the root: killed before its first instruction.
    let out = run(command_in(cg.path(), &b, &["touch", &m("b-at-root")])).await;
    assert_eq!(out.status.signal(), Some(9), "b at the root: {out:?}");
    assert!(!marker("b-at-root").exists(), "b ran at the root");

    // a under a: a is allowed, but not as a's child.
    let out = run(command_in(
        cg.path(),
        &a,
        &["exec-storm", "1", &a, "touch", &m("a-under-a")],
    ))
    .await;
    assert!(
        stdout(&out).contains("signal: 9"),
        "a under a must be killed: {}",
        stdout(&out)
    );
    assert!(!marker("a-under-a").exists());

    // A program created after the policy was set, under the glob: runs.
    let late = format!("{glob_dir}/made-later");
    std::fs::copy(PROBE, &late).unwrap();
    let out = run(command_in(cg.path(), &late, &["touch", &m("late")])).await;
    assert!(out.status.success(), "the glob covers a new file: {out:?}");
    assert!(marker("late").exists());
    // Outside every rule: killed. So is a fileless exec from an allowed program.
    let out = run(command_in(cg.path(), &c, &["touch", &m("c-ran")])).await;
    assert_eq!(out.status.signal(), Some(9), "c: {out:?}");
    let out = run(command_in(
        cg.path(),
        &late,
        &["memfd-exec", "x", "touch", &m("memfd-ran")],
    ))
    .await;
    assert_eq!(out.status.signal(), Some(9), "fileless: {out:?}");
    assert!(!marker("c-ran").exists() && !marker("memfd-ran").exists());

    events
        .wait_for("b's killed exec at the root", WAIT, |seen| {
            execs(seen).any(|x| x.exe == b && x.killed)
        })
        .await;
    assert!(
        execs(&events.seen).any(|x| x.exe == b && !x.killed),
        "b under a was not killed"
    );

    // Bad patterns are refused, naming the pattern, and change nothing.
    let err = sensor
        .set_kernel_policy(
            id,
            Some(KernelPolicy {
                exec: vec![rule(0, "/opt/*/bin/python", 1)],
                ..Default::default()
            }),
        )
        .unwrap_err();
    assert!(
        matches!(err, SensorError::BadExecPattern { .. })
            && err.to_string().contains("/opt/*/bin/python"),
        "{err}"
    );

    // Lifted: everything runs again.
    sensor.set_kernel_policy(id, None).unwrap();
    let out = run(command_in(cg.path(), &b, &["touch", &m("b-after")])).await;
    assert!(out.status.success(), "after lifting: {out:?}");
    let out = run(command_in(cg.path(), &c, &["touch", &m("c-after")])).await;
    assert!(out.status.success(), "after lifting: {out:?}");
    assert_eq!(sensor.stop().await.unwrap().kill_failures, 0);
}

/// Answers `q<i>.<domain>` with one A record: 198.18.4.0 + i under `allowed.test`, 198.18.8.0
/// + i otherwise, until `stop`.
fn dns_server(sock: UdpSocket, stop: Arc<AtomicBool>) {
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::Relaxed) {
        let Ok((n, peer)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let Ok(query) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        let q = query.queries()[0].clone();
        let name = q.name().to_ascii();
        let i: u32 = name
            .strip_prefix('q')
            .and_then(|rest| rest.split('.').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let base = if name.contains("allowed.test") {
            u32::from(Ipv4Addr::new(198, 18, 4, 0))
        } else {
            u32::from(Ipv4Addr::new(198, 18, 8, 0))
        };
        let mut reply = Message::new();
        reply
            .set_id(query.id())
            .set_message_type(MessageType::Response)
            .set_recursion_available(true);
        reply.add_answer(Record::from_rdata(
            q.name().clone(),
            60,
            RData::A(A(Ipv4Addr::from(base + i))),
        ));
        reply.add_query(q);
        let _ = sock.send_to(&reply.to_vec().unwrap(), peer);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destinations_allowed_names_and_the_resolver_connect_and_the_rest_gets_eperm() {
    require_root();
    let _serial = serial().await;
    let cg = cgroup("netpolicy");
    let ns = NetNs::create(
        "netpolicy",
        &["198.18.0.1/32", "198.18.0.2/32", "198.18.0.53/32"],
    );
    // Every address the DNS server hands out is local in the namespace.
    for range in ["198.18.4.0/22", "198.18.8.0/24"] {
        ip(&["-n", &ns.name, "route", "add", "local", range, "dev", "lo"]);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    let stop_server = stop.clone();
    let server = ns.spawn_in(move || {
        let listener = TcpListener::bind("0.0.0.0:0").unwrap();
        port_tx.send(listener.local_addr().unwrap().port()).unwrap();
        listener.set_nonblocking(true).unwrap();
        while !stop_server.load(Ordering::Relaxed) {
            if listener.accept().is_err() {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    });
    let port = port_rx.recv().unwrap();
    let stop_dns = stop.clone();
    let dns = ns.spawn_in(move || {
        dns_server(UdpSocket::bind("198.18.0.53:53").unwrap(), stop_dns);
    });

    let (mut sensor, _events) = start(SensorConfig::default());
    let id = sensor.watch(cg.path(), info("netpolicy")).unwrap();
    let probe_rule = rule(0, real(PROBE), 1);
    let base = KernelPolicy {
        exec: vec![probe_rule],
        destinations: vec![AllowedDestination::new(
            "198.18.0.1/32".parse().unwrap(),
            port..=port,
        )],
        dns_names: Vec::new(),
        resolver: Some("198.18.0.53".parse().unwrap()),
    };
    sensor.set_kernel_policy(id, Some(base.clone())).unwrap();
    let probe = |args: &[&str]| {
        let mut cmd = command_in(cg.path(), PROBE, args);
        in_netns(&mut cmd, &ns.file);
        cmd
    };
    let p = port.to_string();

    let out = run(probe(&["connect", &format!("198.18.0.1:{port}")])).await;
    assert!(out.status.success(), "allowed: {}", stdout(&out));
    let out = run(probe(&["connect", &format!("198.18.0.2:{port}")])).await;
    assert!(stdout(&out).starts_with("err errno=1 "), "{}", stdout(&out));
    // The resolver, though the policy names no DNS; port 53 elsewhere is refused.
    let out = run(probe(&["udp", "198.18.0.53:53"])).await;
    assert!(out.status.success(), "resolver: {}", stdout(&out));
    let out = run(probe(&["udp", "198.18.0.2:53"])).await;
    assert!(stdout(&out).starts_with("err errno=1 "), "{}", stdout(&out));
    // A name the policy does not allow resolves, but its address is refused.
    let out = run(probe(&[
        "dns-connect",
        "3",
        "198.18.0.53:53",
        "allowed.test",
        &p,
    ]))
    .await;
    assert_eq!(
        stdout(&out),
        "ok resolved 3 refused 3 failed 0",
        "no DNS names allowed yet"
    );

    // Allowed names: every answer's address connects at once, also right after the lookup.
    let with_dns = KernelPolicy {
        dns_names: vec![AllowedDnsName {
            name: "*.Allowed.test".into(),
            ports: port..=port,
        }],
        ..base.clone()
    };
    sensor.set_kernel_policy(id, Some(with_dns)).unwrap();
    let started = Instant::now();
    let out = run(probe(&[
        "dns-connect",
        "1000",
        "198.18.0.53:53",
        "allowed.test",
        &p,
    ]))
    .await;
    eprintln!(
        "1000 lookups each followed at once by a connect: {} in {:?}",
        stdout(&out),
        started.elapsed()
    );
    assert_eq!(stdout(&out), "ok resolved 1000 refused 0 failed 0");
    let out = run(probe(&[
        "dns-connect",
        "5",
        "198.18.0.53:53",
        "denied.test",
        &p,
    ]))
    .await;
    assert_eq!(stdout(&out), "ok resolved 5 refused 5 failed 0");

    // Dropping the name drops the addresses it gave.
    sensor.set_kernel_policy(id, Some(base)).unwrap();
    let out = run(probe(&["connect", &format!("198.18.4.7:{port}")])).await;
    assert!(stdout(&out).starts_with("err errno=1 "), "{}", stdout(&out));

    sensor.set_kernel_policy(id, None).unwrap();
    let out = run(probe(&["connect", &format!("198.18.0.2:{port}")])).await;
    assert!(out.status.success(), "after lifting: {}", stdout(&out));

    stop.store(true, Ordering::Relaxed);
    server.join().unwrap();
    dns.join().unwrap();
    sensor.stop().await.unwrap();
}

/// Entries of the sensor's map `name`, per bpftool.
fn entries(programs: &[u32], name: &str) -> usize {
    let id = map_id_of(programs, name).to_string();
    bpftool_json(&["map", "dump", "id", &id])
        .as_array()
        .map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifting_empties_the_maps_and_dropping_the_sensor_leaves_no_maps_or_programs() {
    require_root();
    let _serial = serial().await;
    let cg = cgroup("policyleft");
    let (mut sensor, _events) = start(SensorConfig::default());
    let id = sensor.watch(cg.path(), info("policyleft")).unwrap();
    let programs = sensor.program_ids().to_vec();
    let maps = ["exec_tree", "net_allow", "dns_names", "resolvers"];
    let map_ids: Vec<u64> = maps.iter().map(|m| map_id_of(&programs, m)).collect();
    let policy = KernelPolicy {
        exec: vec![rule(0, "/usr/bin/*", 1), rule(1, real(PROBE), 2)],
        destinations: vec![AllowedDestination::any_port(
            "198.18.0.0/15".parse().unwrap(),
        )],
        dns_names: vec![AllowedDnsName {
            name: "pypi.org".into(),
            ports: 443..=443,
        }],
        resolver: Some("198.18.0.53".parse().unwrap()),
    };
    sensor.set_kernel_policy(id, Some(policy.clone())).unwrap();
    let counts: Vec<usize> = maps.iter().map(|m| entries(&programs, m)).collect();
    assert_eq!(counts, [2, 1, 1, 1], "entries of {maps:?} while enforcing");
    sensor.set_kernel_policy(id, None).unwrap();
    let counts: Vec<usize> = maps.iter().map(|m| entries(&programs, m)).collect();
    assert_eq!(counts, [0, 0, 0, 0], "entries of {maps:?} after lifting");
    assert_eq!(entries(&programs, "dns_allow"), 0);

    // Unwatching removes them too; then dropping the sensor removes maps and programs.
    sensor.set_kernel_policy(id, Some(policy)).unwrap();
    sensor.unwatch(id).unwrap();
    let counts: Vec<usize> = maps.iter().map(|m| entries(&programs, m)).collect();
    assert_eq!(counts, [0, 0, 0, 0], "entries of {maps:?} after unwatch");
    drop(sensor);
    let deadline = Instant::now() + WAIT;
    loop {
        let ids = |what: &str| -> Vec<u64> {
            bpftool_json(&[what, "show"])
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v["id"].as_u64())
                .collect()
        };
        let (progs, live_maps) = (ids("prog"), ids("map"));
        let left_progs: Vec<_> = programs
            .iter()
            .filter(|p| progs.contains(&u64::from(**p)))
            .collect();
        let left_maps: Vec<_> = map_ids.iter().filter(|m| live_maps.contains(m)).collect();
        if left_progs.is_empty() && left_maps.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left after the sensor was dropped: programs {left_progs:?}, maps {left_maps:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A shell started before the policy is placed at its node when the policy is applied: a
/// program the policy allows under the shell then runs, and one it does not is killed (without
/// the placement the shell would be in the root context, and both would be killed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_running_before_the_policy_is_placed_at_its_node() {
    use std::io::{BufRead, BufReader, Write};
    require_root();
    let _serial = serial().await;
    let cg = cgroup("placed");
    let dir = tempfile::tempdir().unwrap();
    for sub in ["b", "c"] {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
        std::fs::copy(PROBE, dir.path().join(sub).join("probe")).unwrap();
    }
    let b = real(dir.path().join("b/probe"));
    let c = real(dir.path().join("c/probe"));
    let shell = real("/bin/sh");
    let marker = |name: &str| dir.path().join(name);
    let m = |name: &str| marker(name).to_str().unwrap().to_string();

    let (mut sensor, mut events) = start(SensorConfig::default());
    let id = sensor.watch(cg.path(), info("placed")).unwrap();
    // The shell waits for a line (`read` is built in: no exec), then runs b and c.
    let script = format!(
        "echo started; read go; '{b}' touch '{}'; echo \"b $?\"; '{c}' touch '{}'; echo \"c $?\"",
        m("b-ran"),
        m("c-ran")
    );
    let mut cmd = command_in(cg.path(), &shell, &["-c", &script]);
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "started");

    // The shell at the root, b under the shell; c nowhere.
    let policy = KernelPolicy {
        exec: vec![rule(0, shell.clone(), 1), rule(1, b.clone(), 2)],
        ..Default::default()
    };
    sensor.set_kernel_policy(id, Some(policy.clone())).unwrap();
    // Applying again keeps the node (the kernel's own is not overwritten).
    let again = sensor.place_running_tasks(id, &policy.exec).unwrap();
    assert_eq!(
        (again.kept, again.placed, again.unplaced),
        (1, 0, 0),
        "{again:?}"
    );

    writeln!(child.stdin.as_mut().unwrap(), "go").unwrap();
    let rest = tokio::task::spawn_blocking(move || {
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
        let status = child.wait().unwrap();
        (rest, status)
    })
    .await
    .unwrap();
    assert!(rest.1.success(), "the shell itself: {rest:?}");
    assert!(
        rest.0.contains("b 0"),
        "b under the placed shell must run: {rest:?}"
    );
    assert!(rest.0.contains("c 137"), "c must be killed: {rest:?}");
    assert!(marker("b-ran").exists() && !marker("c-ran").exists());
    events
        .wait_for("c's killed exec", WAIT, |seen| {
            execs(seen).any(|x| x.exe == c && x.killed)
        })
        .await;
    assert!(execs(&events.seen).any(|x| x.exe == b && !x.killed));
    sensor.set_kernel_policy(id, None).unwrap();
    assert_eq!(sensor.stop().await.unwrap().kill_failures, 0);
}
