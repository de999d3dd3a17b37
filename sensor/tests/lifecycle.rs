//! Starting and stopping: nothing left in the kernel, the binary's stream and errors.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use guardlab_sensor::SensorConfig;

/// Ids of loaded programs and of the programs behind every link, per bpftool.
fn kernel_program_ids() -> (Vec<u64>, Vec<u64>) {
    let ids = |args: &[&str], field: &str| -> Vec<u64> {
        let out = Command::new("bpftool")
            .args(args)
            .output()
            .expect("running bpftool");
        assert!(
            out.status.success(),
            "bpftool {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool -j output");
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p[field].as_u64())
            .collect()
    };
    (
        ids(&["-j", "prog", "show"], "id"),
        ids(&["-j", "link", "show"], "prog_id"),
    )
}

/// Program release is deferred in the kernel (RCU): poll briefly.
fn assert_gone(ours: &[u32]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (progs, links) = kernel_program_ids();
        let left: Vec<_> = ours
            .iter()
            .filter(|id| progs.contains(&u64::from(**id)) || links.contains(&u64::from(**id)))
            .collect();
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "programs still loaded or linked after the sensor stopped: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_or_dropping_the_sensor_leaves_no_programs_or_links() {
    require_root();
    let _serial = serial().await;
    for how in ["stop", "drop"] {
        let cg = cgroup("lifecycle");
        let (mut sensor, _events) = start(SensorConfig::default());
        sensor.watch(cg.path(), info("lifecycle")).unwrap();
        let ours = sensor.program_ids().to_vec();
        assert_eq!(ours.len(), 9, "{ours:?}");
        let (progs, links) = kernel_program_ids();
        assert!(
            ours.iter().all(|id| progs.contains(&u64::from(*id))),
            "{how}: bpftool does not list {ours:?}"
        );
        assert!(
            ours.iter()
                .filter(|id| links.contains(&u64::from(**id)))
                .count()
                >= 9,
            "{how}: every program linked"
        );
        if how == "stop" {
            sensor.stop().await.unwrap();
        } else {
            drop(sensor);
        }
        assert_gone(&ours);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_streams_ndjson_until_sigterm_and_reports_drops() {
    require_root();
    let _serial = serial().await;
    let cg = cgroup("binary");
    let mut child = Command::new(SENSOR_BIN)
        .args(["--cgroup", cg.path().to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // The container event is written once the cgroup is watched.
    let first = lines.next().expect("a first line").unwrap();
    assert!(first.contains(r#""type":"container""#), "{first}");
    let out = run(command_in(cg.path(), "/bin/true", &["binary-marker"])).await;
    assert!(out.status.success());
    let mut text = first + "\n";
    let deadline = Instant::now() + Duration::from_secs(10);
    for line in lines.by_ref() {
        let line = line.unwrap();
        text.push_str(&line);
        text.push('\n');
        if line.contains(r#""type":"exit""#) || Instant::now() > deadline {
            break;
        }
    }
    // SAFETY: plain kill(2) of our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    for line in lines {
        text.push_str(&line.unwrap());
        text.push('\n');
    }
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{status:?}: {stderr}");
    let events = guardlab_sensor::events::read_ndjson(text.as_bytes()).expect("valid NDJSON");
    assert!(
        execs(&events).any(|x| x.argv == ["/bin/true", "binary-marker"]),
        "{text}"
    );
    assert!(stderr.contains("the kernel dropped 0"), "{stderr}");
}

#[test]
fn the_binary_without_root_fails_saying_to_use_sudo() {
    require_root(); // to become someone else
    let out = Command::new(SENSOR_BIN)
        .args(["--cgroup", "/sys/fs/cgroup"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("run it with sudo"), "{stderr}");
}

#[test]
fn help_shows_an_example_and_no_target_is_an_error() {
    let out = Command::new(SENSOR_BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && help.contains("Examples:") && help.contains("--cgroup"),
        "{help}"
    );
    let out = Command::new(SENSOR_BIN).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing to watch"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_finds_container_cgroups_and_serves_them_to_late_clients() {
    require_root();
    let _serial = serial().await;
    // A cgroup named like Docker's, nested in a test cgroup (dropped before its parent).
    let parent = cgroup("allc");
    let container_id = format!("{:032x}{:032x}", std::process::id(), parent.id());
    let parent_name = parent
        .path()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let container = guardlab_sensor::cgroup::OwnedCgroup::create(&format!(
        "{parent_name}/docker-{container_id}.scope"
    ))
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(SENSOR_BIN)
        .args(["--all-containers", "--serve", &format!("127.0.0.1:{port}")])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = stderr.next().unwrap().unwrap();
    assert!(first.contains("serving NDJSON on"), "{first}");

    // A client that connects after the container was found still gets its container event.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut lines = BufReader::new(conn).lines();
    let mut seen = Vec::new();
    let mut next_event = || {
        let line = lines
            .next()
            .expect("stream open")
            .expect("a line within 10 s");
        let event = guardlab_sensor::events::parse_line(&line, 1).unwrap();
        seen.push(line);
        event
    };
    loop {
        if let guardlab_sensor::EventBody::Container(c) = next_event().body
            && c.container_id == container_id
        {
            assert_eq!(c.cgroup_id, container.id());
            break;
        }
    }
    let out = run(command_in(container.path(), "/bin/true", &["allc-marker"])).await;
    assert!(out.status.success());
    loop {
        if let guardlab_sensor::EventBody::Exec(x) = next_event().body
            && x.argv == ["/bin/true", "allc-marker"]
        {
            assert_eq!(x.cgroup_id, container.id());
            break;
        }
    }
    // SAFETY: plain kill(2) of our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    let rest: Vec<String> = stderr.map_while(Result::ok).collect();
    assert!(
        rest.iter().any(|l| l.contains("the kernel dropped")),
        "{rest:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_refuses_what_is_not_a_cgroup_and_a_second_watch() {
    require_root();
    let _serial = serial().await;
    let cg = cgroup("twice");
    let (mut sensor, _events) = start(SensorConfig::default());
    let err = sensor
        .watch(std::path::Path::new("/tmp"), info("tmp"))
        .unwrap_err();
    assert!(
        matches!(err, guardlab_sensor::SensorError::NotCgroup2 { .. })
            && err.to_string().contains("/tmp"),
        "{err}"
    );
    let id = sensor.watch(cg.path(), info("twice")).unwrap();
    let err = sensor.watch(cg.path(), info("twice")).unwrap_err();
    assert!(err.to_string().contains("already watched"), "{err}");
    assert_eq!(sensor.watched(), vec![id]);
    sensor.unwatch(id).unwrap();
    assert!(sensor.watched().is_empty());
    assert!(matches!(
        sensor.unwatch(id),
        Err(guardlab_sensor::SensorError::NotWatched(_))
    ));
    // Watching again after unwatching works: the links were really removed.
    sensor.watch(cg.path(), info("again")).unwrap();
    sensor.stop().await.unwrap();
}
