//! Connect (TCP and UDP), listen, accept and DNS events of a watched cgroup.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Stdio;
use std::str::FromStr;
use std::time::Duration;

use common::*;
use guardlab_sensor::events::Protocol;
use guardlab_sensor::{EventBody, SensorConfig};
use hickory_proto::op::{Message, MessageType};
use hickory_proto::rr::rdata::{A, CNAME};
use hickory_proto::rr::{Name, RData, Record};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_listens_and_accepts_are_reported_for_the_owning_process() {
    require_root();
    let _serial = serial().await;
    let cg = cgroup("net");
    let (mut sensor, mut events) = start(SensorConfig::default());
    let id = sensor.watch(cg.path(), info("net")).unwrap();

    // TCP connect out of the cgroup, to a listener of the test (IPv4 and IPv6).
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let listener6 = TcpListener::bind("[::1]:0").unwrap();
    let port6 = listener6.local_addr().unwrap().port();
    let out = run(command_in(
        cg.path(),
        PROBE,
        &["connect", &format!("127.0.0.1:{port}")],
    ))
    .await;
    assert!(out.status.success(), "{}", stdout(&out));
    let out = run(command_in(
        cg.path(),
        PROBE,
        &["connect", &format!("[::1]:{port6}")],
    ))
    .await;
    assert!(out.status.success(), "{}", stdout(&out));
    // An unconnected UDP datagram (sendmsg).
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let uport = udp.local_addr().unwrap().port();
    let out = run(command_in(
        cg.path(),
        PROBE,
        &["udp", &format!("127.0.0.1:{uport}")],
    ))
    .await;
    assert!(out.status.success(), "{}", stdout(&out));

    // A listener inside the cgroup, and a connection into it from the test.
    let mut cmd = command_in(cg.path(), PROBE, &["listen", "127.0.0.1:0"]);
    cmd.stdout(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let lport: u16 = first
        .strip_prefix("ok listening ")
        .unwrap_or_else(|| panic!("{first}"))
        .parse()
        .unwrap();
    let client = TcpStream::connect(("127.0.0.1", lport)).unwrap();
    let client_addr = client.local_addr().unwrap();
    let accepted = tokio::task::spawn_blocking(move || {
        let line = lines.next().unwrap().unwrap();
        child.wait().unwrap();
        line
    })
    .await
    .unwrap();
    assert_eq!(accepted, format!("ok accepted {client_addr}"));

    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    events
        .wait_for("connect, udp, listen and accept", WAIT, |seen| {
            let n = seen
                .iter()
                .filter(|e| {
                    matches!(
                        &e.body,
                        EventBody::Connect(_) | EventBody::Listen(_) | EventBody::Accept(_)
                    )
                })
                .count();
            n >= 5
        })
        .await;
    events.settle(Duration::from_millis(200)).await;
    let seen = &events.seen;
    let probe_execs: Vec<_> = execs(seen).filter(|x| x.exe == real(PROBE)).collect();
    let key_of = |arg: &str| probe_execs.iter().find(|x| x.argv[1] == arg).map(|x| x.key);
    let key_of_argv = |args: &[&str]| {
        probe_execs
            .iter()
            .find(|x| x.argv[1..] == *args)
            .map(|x| x.key)
    };

    let tcp = connects(seen)
        .find(|c| c.remote_port == port)
        .expect("TCP connect");
    assert_eq!(
        (tcp.protocol, tcp.remote_ip, tcp.refused, tcp.cgroup_id),
        (Protocol::Tcp, lo, false, id)
    );
    assert_eq!(
        Some(tcp.process),
        key_of_argv(&["connect", &format!("127.0.0.1:{port}")])
    );
    let tcp6 = connects(seen)
        .find(|c| c.remote_port == port6)
        .expect("TCP connect over IPv6");
    assert_eq!(tcp6.remote_ip, IpAddr::from_str("::1").unwrap());
    assert_eq!(
        Some(tcp6.process),
        key_of_argv(&["connect", &format!("[::1]:{port6}")])
    );
    let udp_ev = connects(seen)
        .find(|c| c.remote_port == uport)
        .expect("UDP sendmsg");
    assert_eq!((udp_ev.protocol, udp_ev.remote_ip), (Protocol::Udp, lo));
    assert_eq!(Some(udp_ev.process), key_of("udp"));

    let listen_key = key_of("listen").expect("exec of the listening probe");
    let listen = seen
        .iter()
        .find_map(|e| match &e.body {
            EventBody::Listen(l) => Some(l),
            _ => None,
        })
        .expect("listen event");
    assert_eq!(
        (listen.process, listen.ip, listen.port, listen.protocol),
        (listen_key, lo, lport, Protocol::Tcp)
    );
    let accept = seen
        .iter()
        .find_map(|e| match &e.body {
            EventBody::Accept(a) => Some(a),
            _ => None,
        })
        .expect("accept event");
    assert_eq!(
        accept.process, listen_key,
        "accepted connection attributed to the listener's process"
    );
    assert_eq!(
        (accept.local_ip, accept.local_port),
        (Some(lo), Some(lport))
    );
    assert_eq!(
        SocketAddr::new(accept.remote_ip, accept.remote_port),
        client_addr
    );
    assert_eq!(accept.cgroup_id, id);
    drop(listener);
    drop(listener6);
    sensor.stop().await.unwrap();
}

/// Answers every A query for NAME with a CNAME to an edge name and that name's address.
fn dns_server(sock: UdpSocket, answer: Ipv4Addr) -> std::thread::JoinHandle<usize> {
    sock.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    std::thread::spawn(move || {
        let mut served = 0;
        let mut buf = [0u8; 1500];
        while let Ok((n, peer)) = sock.recv_from(&mut buf) {
            let Ok(query) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut reply = Message::new();
            reply
                .set_id(query.id())
                .set_message_type(MessageType::Response)
                .set_recursion_available(true);
            let q = query.queries()[0].clone();
            let edge = Name::from_str("edge.lab.test.").unwrap();
            reply.add_answer(Record::from_rdata(
                q.name().clone(),
                60,
                RData::CNAME(CNAME(edge.clone())),
            ));
            reply.add_answer(Record::from_rdata(edge, 60, RData::A(A(answer))));
            reply.add_query(q);
            sock.send_to(&reply.to_vec().unwrap(), peer).unwrap();
            served += 1;
            if served == 2 {
                break;
            }
        }
        served
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_answers_received_in_the_cgroup_are_reported() {
    require_root();
    let _serial = serial().await;
    let cg = cgroup("dns");
    let (mut sensor, mut events) = start(SensorConfig::default());
    let id = sensor.watch(cg.path(), info("dns")).unwrap();

    // A resolver on a loopback address of its own, port 53 (the sensor keys on source port 53).
    let server_ip = Ipv4Addr::new(127, 53, (std::process::id() % 250) as u8 + 1, 53);
    let server = UdpSocket::bind((server_ip, 53)).unwrap();
    let served = dns_server(server, Ipv4Addr::new(198, 18, 0, 77));
    let addr = format!("{server_ip}:53");

    // Outside the cgroup first: its answer must not be reported.
    let mut outside = std::process::Command::new(PROBE);
    outside.args(["dns", &addr, "outside.lab.test"]);
    let out = run(outside).await;
    assert_eq!(stdout(&out), "ok 198.18.0.77");
    let out = run(command_in(
        cg.path(),
        PROBE,
        &["dns", &addr, "Miner.Lab.TEST"],
    ))
    .await;
    assert_eq!(stdout(&out), "ok 198.18.0.77");
    assert_eq!(served.join().unwrap(), 2);

    events
        .wait_for("the DNS answer", WAIT, |seen| {
            seen.iter().any(|e| matches!(e.body, EventBody::Dns(_)))
        })
        .await;
    events.settle(Duration::from_millis(200)).await;
    let answers: Vec<_> = events
        .seen
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::Dns(d) => Some(d),
            _ => None,
        })
        .collect();
    assert_eq!(
        answers.len(),
        1,
        "only the watched process's answer: {answers:#?}"
    );
    assert_eq!(answers[0].name, "miner.lab.test");
    assert_eq!(
        answers[0].addresses,
        vec![IpAddr::V4(Ipv4Addr::new(198, 18, 0, 77))]
    );
    assert_eq!(answers[0].cgroup_id, id);
    // The query itself went out as a UDP sendmsg to port 53.
    let q = connects(&events.seen)
        .find(|c| c.remote_port == 53)
        .expect("the query's sendmsg");
    assert_eq!(
        (q.protocol, q.remote_ip),
        (Protocol::Udp, IpAddr::V4(server_ip))
    );
    sensor.stop().await.unwrap();
}

/// Entries of the kernel's `listeners` map (id `map`) for `cgroup_id`.
fn listener_entries(map: u64, cgroup_id: u64) -> usize {
    let dump = bpftool_json(&["map", "dump", "id", &map.to_string()]);
    dump.as_array()
        .expect("a map dump is an array")
        .iter()
        .filter(|entry| {
            // With the object's BTF bpftool prints the key's fields; without, its bytes.
            let key = entry.get("formatted").map_or(&entry["key"], |f| &f["key"]);
            match key.get("cgroup_id") {
                Some(id) => id.as_u64() == Some(cgroup_id),
                None => {
                    let bytes: Vec<u8> = key
                        .as_array()
                        .expect("key bytes")
                        .iter()
                        .map(|b| {
                            u8::from_str_radix(b.as_str().unwrap().trim_start_matches("0x"), 16)
                                .unwrap()
                        })
                        .collect();
                    bytes[..8] == cgroup_id.to_ne_bytes()
                }
            }
        })
        .count()
}

async fn wait_for_listener_entries(map: u64, cgroup_id: u64, n: usize, what: &str) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let found = listener_entries(map, cgroup_id);
        if found == n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: {found} listener entries for cgroup {cgroup_id}, expected {n}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts `probe serve` in `cgroup` and waits until it listens.
fn serve_in(cgroup: &std::path::Path) -> std::process::Child {
    let mut cmd = command_in(cgroup, PROBE, &["serve", "127.0.0.1:0"]);
    cmd.stdout(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.starts_with("ok listening "), "{first}");
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_owners_are_forgotten_when_the_listener_closes_or_the_cgroup_is_unwatched() {
    require_root();
    let _serial = serial().await;
    let cg = cgroup("listeners");
    let (mut sensor, _events) = start(SensorConfig::default());
    let id = sensor.watch(cg.path(), info("listeners")).unwrap();
    let map = map_id_of(sensor.program_ids(), "listeners");

    let mut server = serve_in(cg.path());
    wait_for_listener_entries(map, id, 1, "while listening").await;
    server.kill().unwrap();
    server.wait().unwrap();
    wait_for_listener_entries(map, id, 0, "after the listener closed").await;

    // Unwatched while the listener is open: unwatch removes the entry...
    let mut server = serve_in(cg.path());
    wait_for_listener_entries(map, id, 1, "listening again").await;
    sensor.unwatch(id).unwrap();
    assert_eq!(listener_entries(map, id), 0, "after unwatch");
    // ...and a listener opened after the unwatch adds none.
    let mut other = serve_in(cg.path());
    server.kill().unwrap();
    server.wait().unwrap();
    other.kill().unwrap();
    other.wait().unwrap();
    assert_eq!(listener_entries(map, id), 0, "unwatched cgroup");
    sensor.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_and_unreadable_dns_answers_are_counted_not_dropped_silently() {
    require_root();
    let _serial = serial().await;
    let cg = cgroup("bigdns");
    let (mut sensor, mut events) = start(SensorConfig::default());
    let id = sensor.watch(cg.path(), info("bigdns")).unwrap();

    let server_ip = Ipv4Addr::new(127, 54, (std::process::id() % 250) as u8 + 1, 53);
    let sock = UdpSocket::bind((server_ip, 53)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    // First query: 300 A records (about 4.8 KiB, more than the kernel copies). Second: garbage.
    let server = std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        for round in 0..2 {
            let (n, peer) = sock.recv_from(&mut buf).unwrap();
            let query = Message::from_vec(&buf[..n]).unwrap();
            let reply = if round == 0 {
                let mut reply = Message::new();
                reply
                    .set_id(query.id())
                    .set_message_type(MessageType::Response);
                let q = query.queries()[0].clone();
                for i in 0..300u16 {
                    let a = Ipv4Addr::new(198, 18, 10 + (i / 250) as u8, (i % 250) as u8 + 1);
                    reply.add_answer(Record::from_rdata(q.name().clone(), 60, RData::A(A(a))));
                }
                reply.add_query(q);
                reply.to_vec().unwrap()
            } else {
                b"\x42\x42\x81\x80 definitely not DNS".to_vec()
            };
            sock.send_to(&reply, peer).unwrap();
        }
    });
    let addr = format!("{server_ip}:53");
    for name in ["big.lab.test", "garbled.lab.test"] {
        // The probe cannot read these answers either (it says so); the sensor sees them.
        run(command_in(cg.path(), PROBE, &["dns", &addr, name])).await;
    }
    server.join().unwrap();

    events
        .wait_for("the cut answer", WAIT, |seen| {
            seen.iter().any(|e| matches!(e.body, EventBody::Dns(_)))
        })
        .await;
    let deadline = std::time::Instant::now() + WAIT;
    while sensor.stats().dns_unreadable == 0 && std::time::Instant::now() < deadline {
        events.settle(Duration::from_millis(50)).await;
    }
    let answer = events
        .seen
        .iter()
        .find_map(|e| match &e.body {
            EventBody::Dns(d) => Some(d),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        (answer.name.as_str(), answer.cgroup_id),
        ("big.lab.test", id)
    );
    // What fits in 4 KiB: the header, the question, and about 250 of the 16-byte records.
    assert!(
        (200..300).contains(&answer.addresses.len()),
        "{} addresses",
        answer.addresses.len()
    );
    assert_eq!(
        answer.addresses[0],
        IpAddr::V4(Ipv4Addr::new(198, 18, 10, 1))
    );
    let stats = sensor.stop().await.unwrap();
    assert_eq!(
        (stats.dns_truncated, stats.dns_unreadable),
        (1, 1),
        "{stats:?}"
    );
}
