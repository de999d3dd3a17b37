//! Starting and stopping: nothing left in the kernel, the binary's stream and errors.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use guardlab_sensor::SensorConfig;

/// Ids of loaded programs and of the programs behind every link, per bpftool.
fn kernel_program_ids() -> (Vec<u64>, Vec<u64>) {
    host_tools(&[&guardlab_host::catalog::BPFTOOL]);
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

/// The ids in the binary's `loaded eBPF programs 1 2 3` stderr line.
fn program_ids_in(line: &str) -> Vec<u32> {
    let ids = line
        .split_once("loaded eBPF programs ")
        .unwrap_or_else(|| panic!("not the programs line: {line}"))
        .1;
    ids.split_whitespace()
        .map(|id| id.parse().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_streams_ndjson_until_sigterm_or_sigint_and_leaves_nothing_loaded() {
    require_root();
    let _serial = serial().await;
    for (signal, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")] {
        let cg = cgroup("binary");
        let mut child = Command::new(SENSOR_BIN)
            .args(["--cgroup", cg.path().to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        let programs = program_ids_in(&stderr.next().unwrap().unwrap());
        assert_eq!(programs.len(), 9, "{programs:?}");
        let watching = stderr.next().unwrap().unwrap();
        assert_eq!(
            watching,
            format!(
                "guardlab-sensor: watching {} (cgroup {})",
                cg.path().display(),
                cg.id()
            )
        );
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
        // Our own child, which has not been waited for (its pid is ours).
        guardlab_host::process::signal(child.id(), signal).unwrap();
        for line in lines {
            text.push_str(&line.unwrap());
            text.push('\n');
        }
        let status = child.wait().unwrap();
        let rest: Vec<String> = stderr.map_while(Result::ok).collect();
        assert!(status.success(), "{name}: {status:?}: {rest:?}");
        let events = guardlab_sensor::events::read_ndjson(text.as_bytes()).expect("valid NDJSON");
        assert!(
            execs(&events).any(|x| x.argv == ["/bin/true", "binary-marker"]),
            "{name}: {text}"
        );
        assert!(
            rest.iter().any(|l| l.contains("the kernel dropped 0")),
            "{name}: {rest:?}"
        );
        assert_gone(&programs);
    }
}

#[test]
fn the_binary_without_root_fails_saying_to_use_sudo() {
    require_root(); // to become someone else
    // The build's copy may be out of nobody's reach (a checkout under /root is 0700): run a
    // copy in a directory everyone may enter.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.path().join("guardlab-sensor");
    std::fs::copy(SENSOR_BIN, &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(&bin)
        .args(["--cgroup", "/sys/fs/cgroup"])
        .current_dir("/")
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

/// A client of `--serve`: parsed events, each line read within 10 s.
struct Client(std::io::Lines<BufReader<std::net::TcpStream>>);

impl Client {
    fn connect(port: u16) -> Client {
        let conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Client(BufReader::new(conn).lines())
    }

    fn next_event(&mut self) -> guardlab_sensor::Event {
        let line = self
            .0
            .next()
            .expect("stream open")
            .expect("a line within 10 s");
        guardlab_sensor::events::parse_line(&line, 1).unwrap()
    }

    /// Reads until the `container` event of `container_id`, returning its cgroup id.
    fn container(&mut self, container_id: &str) -> u64 {
        loop {
            if let guardlab_sensor::EventBody::Container(c) = self.next_event().body
                && c.container_id == container_id
            {
                return c.cgroup_id;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_finds_container_cgroups_and_serves_them_to_late_clients() {
    require_root();
    let _serial = serial().await;
    // Two cgroups named like Docker's, nested in a test cgroup (dropped before their parent).
    let parent = cgroup("allc");
    let parent_name = parent
        .path()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let ids: Vec<String> = (1..=2u64)
        .map(|n| format!("{n:016x}{:016x}{:032x}", std::process::id(), parent.id()))
        .collect();
    let containers: Vec<_> = ids
        .iter()
        .map(|id| {
            guardlab_sensor::cgroup::OwnedCgroup::create(&format!(
                "{parent_name}/docker-{id}.scope"
            ))
            .unwrap()
        })
        .collect();
    // The first container is also given with --cgroup, spelled differently: the scan must
    // see it is the same cgroup, not fail to watch it again (every two seconds).
    let spelled = parent
        .path()
        .join("..")
        .join(&parent_name)
        .join(containers[0].path().file_name().unwrap());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(SENSOR_BIN)
        .args(["--all-containers", "--serve", &format!("127.0.0.1:{port}")])
        .arg("--cgroup")
        .arg(&spelled)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut next_stderr = || stderr.next().unwrap().unwrap();
    program_ids_in(&next_stderr());
    assert!(next_stderr().contains("serving NDJSON on"));
    assert_eq!(
        next_stderr(),
        format!(
            "guardlab-sensor: watching {} (cgroup {})",
            spelled.display(),
            containers[0].id()
        )
    );
    // The scan goes through container cgroups in order: a failure to watch the first would
    // be printed before the second is watched.
    let line = next_stderr();
    assert_eq!(
        line,
        format!(
            "guardlab-sensor: watching {} (cgroup {})",
            containers[1].path().display(),
            containers[1].id()
        ),
        "the scan watches the second container, and only that"
    );

    // A first client sees both container events go by...
    let mut first = Client::connect(port);
    let mut seen = vec![first.container(&ids[0]), first.container(&ids[1])];
    seen.sort();
    assert_eq!(seen, [containers[0].id(), containers[1].id()]);
    // ...so a client that connects now is late: it gets them from the sensor's memory.
    let mut late = Client::connect(port);
    assert_eq!(late.container(&ids[0]), containers[0].id());
    let mut late2 = Client::connect(port);
    assert_eq!(late2.container(&ids[1]), containers[1].id());

    let out = run(command_in(
        containers[1].path(),
        "/bin/true",
        &["allc-marker"],
    ))
    .await;
    assert!(out.status.success());
    loop {
        if let guardlab_sensor::EventBody::Exec(x) = late.next_event().body
            && x.argv == ["/bin/true", "allc-marker"]
        {
            assert_eq!(x.cgroup_id, containers[1].id());
            break;
        }
    }
    // Our own child, which has not been waited for (its pid is ours).
    guardlab_host::process::signal(child.id(), libc::SIGTERM).unwrap();
    assert!(child.wait().unwrap().success());
    let rest: Vec<String> = stderr.map_while(Result::ok).collect();
    assert!(
        rest.iter().any(|l| l.contains("the kernel dropped")),
        "{rest:?}"
    );
    assert!(!rest.iter().any(|l| l.contains("not watching")), "{rest:?}");
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
