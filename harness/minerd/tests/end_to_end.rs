//! The real `minerd` binary against the lab pool on loopback, a hand-driven Stratum client
//! against the pool's share checks, and the release tarball through the system `tar`.
//! Every wait is bounded; a hang fails with what was seen so far.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use guardlab_minerd::stratum::{
    Message, Notify, Request, Response, Submit, SubscribeResult, method,
};
use guardlab_minerd::work::{Job, Target, sha256d};
use guardlab_minerd::{PoolConfig, PoolHandle, pack_release_tarball, start_pool};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

const MINERD: &str = env!("CARGO_BIN_EXE_minerd");
/// Bound on any single miner run; the miner itself is told to stop well before.
const RUN_TIMEOUT: Duration = Duration::from_secs(90);

/// The pool's defaults, but no periodic new jobs: a hand-driven client then sees exactly
/// the lines its calls cause, however slowly the test runs.
fn quiet_config() -> PoolConfig {
    PoolConfig {
        job_interval: Duration::from_secs(3600),
        ..PoolConfig::default()
    }
}

async fn pool(config: PoolConfig) -> PoolHandle {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    start_pool(listener, config).await.expect("pool starts")
}

/// Runs minerd to completion within RUN_TIMEOUT (killing it otherwise).
async fn run_minerd(args: &[&str], cwd: Option<&Path>) -> Output {
    let mut command = tokio::process::Command::new(MINERD);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(cwd) = cwd {
        command.current_dir(cwd);
    }
    let child = command.spawn().expect("spawn minerd");
    match tokio::time::timeout(RUN_TIMEOUT, child.wait_with_output()).await {
        Ok(output) => output.expect("wait for minerd"),
        Err(_) => panic!("minerd {args:?} still running after {RUN_TIMEOUT:?} (killed)"),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minerd_subscribes_authorizes_and_gets_shares_accepted() {
    let pool = pool(PoolConfig::default()).await;
    let url = format!("stratum+tcp://{}", pool.local_addr());
    let output = run_minerd(
        &[
            "-o",
            &url,
            "-u",
            "ME",
            "-p",
            "passwd",
            "-t",
            "1",
            "--max-shares",
            "2",
            "--duration",
            "60",
        ],
        None,
    )
    .await;
    let stderr = text(&output.stderr);
    assert!(
        output.status.success(),
        "minerd failed: {:?}\n{stderr}",
        output.status
    );
    for expected in [
        "1 miner threads started, using 'sha256d' algorithm.",
        &format!("Starting Stratum on {url}"),
        "accepted: 1/1 (100.00%), ",
        "accepted: 2/2 (100.00%), ",
        "(yay!!!)",
        "thread 0: ",
        "guardlab: stopping after 2 accepted share(s) (--max-shares 2)",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    // cpuminer's line format: "[YYYY-MM-DD hh:mm:ss] thread 0: N hashes, X.XX khash/s".
    let meter = stderr.lines().find(|l| l.contains("thread 0: ")).unwrap();
    assert!(
        meter.starts_with("[20") && meter.contains(" hashes, ") && meter.ends_with(" khash/s"),
        "{meter}"
    );

    // The miner has exited: the pool must have seen the connection end.
    let clients = pool
        .wait_for_clients(Duration::from_secs(10), |c| {
            c.len() == 1 && c[0].disconnected.is_some()
        })
        .await
        .expect("pool recorded the miner and its disconnection");
    let client = &clients[0];
    assert_eq!(client.user.as_deref(), Some("ME"));
    assert_eq!(client.password.as_deref(), Some("passwd"));
    assert!(client.subscribed && client.authorized, "{client:?}");
    assert_eq!(client.peer.ip().to_string(), "127.0.0.1");
    assert!(
        client
            .user_agent
            .as_deref()
            .unwrap_or("")
            .starts_with("cpuminer/2.5.1"),
        "{client:?}"
    );
    // It stopped after its second accepted share; more may have been in flight.
    assert!(client.shares_accepted >= 2, "{client:?}");
    assert_eq!(client.shares_rejected, 0, "{client:?}");
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minerd_resolves_host_names_and_quiet_silences_the_hash_meter() {
    // "localhost" goes through the system resolver (/etc/hosts); it may give ::1 first,
    // where nothing listens, so this also covers trying every address.
    let pool = pool(PoolConfig::default()).await;
    let url = format!("localhost:{}", pool.local_addr().port());
    let output = run_minerd(
        &[
            "--url",
            &url,
            "--user",
            "ME",
            "--pass",
            "passwd",
            "-t",
            "1",
            "-q",
            "--max-shares",
            "1",
            "--duration",
            "60",
        ],
        None,
    )
    .await;
    let stderr = text(&output.stderr);
    assert!(
        output.status.success(),
        "minerd failed: {:?}\n{stderr}",
        output.status
    );
    assert!(
        stderr.contains("(--max-shares 1)"),
        "no share within 60 s:\n{stderr}"
    );
    assert!(stderr.contains("accepted: 1/1 (100.00%)"), "{stderr}");
    assert!(
        !stderr.contains("thread 0: "),
        "-q must silence the hash meter:\n{stderr}"
    );
    let clients = pool.clients();
    assert_eq!(clients.len(), 1, "{clients:?}");
    assert_eq!(clients[0].user.as_deref(), Some("ME"));
    assert!(clients[0].shares_accepted >= 1, "{clients:?}");
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minerd_stops_after_its_duration() {
    // Difficulty 1: no share is expected in the time; only the clock stops the miner.
    let pool = pool(PoolConfig {
        difficulty: 1.0,
        ..PoolConfig::default()
    })
    .await;
    let url = format!("stratum+tcp://{}", pool.local_addr());
    let output = run_minerd(
        &["-o", &url, "-u", "ME", "-t", "1", "--duration", "2"],
        None,
    )
    .await;
    let stderr = text(&output.stderr);
    assert!(
        output.status.success(),
        "minerd failed: {:?}\n{stderr}",
        output.status
    );
    assert!(
        stderr.contains("guardlab: stopping after 2 s (--duration)"),
        "{stderr}"
    );
    let clients = pool
        .wait_for_clients(Duration::from_secs(10), |c| {
            c.len() == 1 && c[0].disconnected.is_some()
        })
        .await
        .expect("pool saw the miner come and go");
    assert_eq!(clients[0].user.as_deref(), Some("ME"));
    assert_eq!(clients[0].password.as_deref(), Some(""));
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minerd_gives_up_on_an_unreachable_pool_when_retries_are_bounded() {
    // A port that was just free: nothing listens there.
    let closed: SocketAddr = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let url = format!("stratum+tcp://{closed}");
    let output = run_minerd(&["-o", &url, "-t", "1", "-r", "1", "-R", "1"], None).await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let attempts = stderr
        .lines()
        .filter(|l| l.starts_with('[') && l.contains("] Stratum connection failed"))
        .count();
    assert_eq!(attempts, 2, "one try and one retry:\n{stderr}");
    assert!(
        stderr.contains("minerd: could not reach the pool after 2 attempt(s)"),
        "{stderr}"
    );
    assert!(stderr.contains("...retry after 1 seconds"), "{stderr}");
    assert!(stderr.contains("...terminating workio thread"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minerd_usage_errors_help_and_version() {
    let output = run_minerd(&[], None).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("minerd: no URL supplied"));

    let output = run_minerd(&["-o", "http://pool:8332"], None).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("only stratum+tcp"));

    let output = run_minerd(&["--help"], None).await;
    assert!(output.status.success());
    let help = text(&output.stdout);
    assert!(
        help.contains("./minerd --url fakeminingpool.example.com -u ME -p passwd"),
        "{help}"
    );
    assert!(
        help.contains("--max-shares") && help.contains("guardlab only"),
        "{help}"
    );

    let output = run_minerd(&["--version"], None).await;
    assert!(output.status.success());
    let version = text(&output.stdout);
    assert!(
        version.starts_with("cpuminer 2.5.1 (guardlab stand-in"),
        "{version}"
    );
}

/// A Stratum client driven by hand, to send the pool shares minerd never would.
struct RawClient {
    lines: tokio::io::Lines<BufReader<OwnedReadHalf>>,
    write: OwnedWriteHalf,
}

impl RawClient {
    async fn connect(addr: SocketAddr) -> RawClient {
        let (read, write) = TcpStream::connect(addr).await.unwrap().into_split();
        RawClient {
            lines: BufReader::new(read).lines(),
            write,
        }
    }

    async fn send(&mut self, request: Request) {
        let line = Message::from(request).to_line();
        self.write.write_all(line.as_bytes()).await.unwrap();
    }

    async fn receive(&mut self) -> Message {
        let line = tokio::time::timeout(Duration::from_secs(10), self.lines.next_line())
            .await
            .expect("pool answered within 10 s")
            .unwrap()
            .expect("pool kept the connection open");
        Message::parse_line(&line).unwrap()
    }

    async fn call(&mut self, request: Request) -> Response {
        self.send(request).await;
        match self.receive().await {
            Message::Response(response) => response,
            other => panic!("expected a response, got {other:?}"),
        }
    }

    async fn notification(&mut self, method: &str) -> Request {
        match self.receive().await {
            Message::Request(r) if r.method == method => r,
            other => panic!("expected {method}, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_checks_every_share() {
    let config = quiet_config();
    let difficulty = config.difficulty;
    let pool = pool(config).await;

    // Submitting before subscribing.
    let mut early = RawClient::connect(pool.local_addr()).await;
    let r = early
        .call(Request::call(
            4,
            method::SUBMIT,
            ["ME", "1", "00000000", "00000000", "00000000"],
        ))
        .await;
    assert_eq!(r.error[0], json!(25), "{r:?}");

    let mut client = RawClient::connect(pool.local_addr()).await;
    let r = client
        .call(Request::call(1, method::SUBSCRIBE, ["test-client/1"]))
        .await;
    let subscription = SubscribeResult::deserialize(&r.result).unwrap();
    let extranonce1 = hex::decode(&subscription.extranonce1).unwrap();
    assert_eq!(subscription.extranonce2_size, 4);
    let set_difficulty = client.notification(method::SET_DIFFICULTY).await;
    assert_eq!(set_difficulty.params, json!([difficulty]));
    let notify: Notify = client
        .notification(method::NOTIFY)
        .await
        .params_as()
        .unwrap();
    assert!(notify.clean_jobs);
    assert_eq!(
        notify.merkle_branch.len(),
        2,
        "jobs carry a real Merkle branch"
    );
    let job = Job::from_notify(&notify).unwrap();

    let r = client
        .call(Request::call(2, method::AUTHORIZE, ["ME", "passwd"]))
        .await;
    assert_eq!(r.result, json!(true));

    // Find one nonce whose header meets the share target and one that does not.
    let target = Target::from_difficulty(difficulty);
    let extranonce2 = [0u8, 0, 0, 7];
    let meets = |nonce: u32| {
        target.is_met_by(&sha256d(&job.header(
            &extranonce1,
            &extranonce2,
            job.ntime,
            nonce.to_be_bytes(),
        )))
    };
    let good = (0..u32::MAX).find(|&n| meets(n)).unwrap();
    let bad = (0..u32::MAX).find(|&n| !meets(n)).unwrap();
    let share = |worker: &str, job_id: &str, extranonce2: &str, nonce: u32| Submit {
        worker: worker.into(),
        job_id: job_id.into(),
        extranonce2: extranonce2.into(),
        ntime: notify.ntime.clone(),
        nonce: format!("{nonce:08x}"),
    };
    let cases = [
        (share("ME", &notify.job_id, "00000007", bad), Some(23)),
        (share("ME", "no-such-job", "00000007", good), Some(21)),
        (share("SOMEONE", &notify.job_id, "00000007", good), Some(24)),
        (share("ME", &notify.job_id, "0007", good), Some(20)),
        (share("ME", &notify.job_id, "00000007", good), None),
        (share("ME", &notify.job_id, "00000007", good), Some(22)),
    ];
    for (i, (submit, expected_error)) in cases.into_iter().enumerate() {
        let r = client
            .call(Request::call(10 + i as u64, method::SUBMIT, &submit))
            .await;
        assert_eq!(r.id, json!(10 + i as u64));
        match expected_error {
            None => assert!(r.is_success(), "{submit:?} -> {r:?}"),
            Some(code) => {
                assert_eq!(r.result, json!(false), "{submit:?} -> {r:?}");
                assert_eq!(r.error[0], json!(code), "{submit:?} -> {r:?}");
            }
        }
    }
    // Garbage gets an error answer, not a dropped connection.
    client.write.write_all(b"this is not json\n").await.unwrap();
    let Message::Response(r) = client.receive().await else {
        panic!("expected an error response")
    };
    assert_eq!(r.error[0], json!(20));
    assert_eq!(r.id, Value::Null);

    let clients = pool.clients();
    assert_eq!(clients.len(), 2, "{clients:?}");
    assert!(
        !clients[0].subscribed && clients[0].shares_rejected == 1,
        "{clients:?}"
    );
    let c = &clients[1];
    assert_eq!(c.user_agent.as_deref(), Some("test-client/1"));
    assert_eq!(
        (c.user.as_deref(), c.password.as_deref()),
        (Some("ME"), Some("passwd"))
    );
    assert_eq!((c.shares_accepted, c.shares_rejected), (1, 5), "{c:?}");
    assert_eq!(c.last_reject.as_deref(), Some("Duplicate share"));
    assert!(c.disconnected.is_none());

    drop(client);
    drop(early);
    pool.wait_for_clients(Duration::from_secs(10), |c| {
        c.iter().all(|c| c.disconnected.is_some())
    })
    .await
    .expect("pool saw both clients leave");
    pool.shutdown().await;
}

/// Subscribes and authorizes as ME; returns extranonce1 and the first job.
async fn subscribed_client(pool: &PoolHandle) -> (RawClient, Vec<u8>, Notify) {
    let mut client = RawClient::connect(pool.local_addr()).await;
    let r = client
        .call(Request::call(1, method::SUBSCRIBE, ["test-client/1"]))
        .await;
    let subscription = SubscribeResult::deserialize(&r.result).unwrap();
    client.notification(method::SET_DIFFICULTY).await;
    let notify = client
        .notification(method::NOTIFY)
        .await
        .params_as()
        .unwrap();
    let r = client
        .call(Request::call(2, method::AUTHORIZE, ["ME", "passwd"]))
        .await;
    assert!(r.is_success());
    (
        client,
        hex::decode(subscription.extranonce1).unwrap(),
        notify,
    )
}

/// Whether the header for `nonce` in this job meets `difficulty`.
fn meets(notify: &Notify, en1: &[u8], en2: &[u8], difficulty: f64, nonce: u32) -> bool {
    let job = Job::from_notify(notify).unwrap();
    let header = job.header(en1, en2, job.ntime, nonce.to_be_bytes());
    Target::from_difficulty(difficulty).is_met_by(&sha256d(&header))
}

/// The nonces, in order, whose headers meet `difficulty`.
fn good_nonces<'a>(
    notify: &'a Notify,
    en1: &'a [u8],
    en2: &'a [u8],
    difficulty: f64,
) -> impl Iterator<Item = u32> + 'a {
    (0..u32::MAX).filter(move |&n| meets(notify, en1, en2, difficulty, n))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_raises_the_difficulty_of_a_fast_miner() {
    let easy = 1.0 / 1_048_576.0; // 2^-20: a share every ~4096 hashes.
    let pool = pool(PoolConfig {
        difficulty: easy,
        vardiff: Some(Duration::from_secs(60)),
        ..quiet_config()
    })
    .await;
    let (mut client, extranonce1, first) = subscribed_client(&pool).await;
    let extranonce2 = [0u8; 4];
    let submit = |notify: &Notify, nonce: u32| Submit {
        worker: "ME".into(),
        job_id: notify.job_id.clone(),
        extranonce2: "00000000".into(),
        ntime: notify.ntime.clone(),
        nonce: format!("{nonce:08x}"),
    };
    let mut good = good_nonces(&first, &extranonce1, &extranonce2, easy);
    for id in 10..14 {
        let r = client
            .call(Request::call(
                id,
                method::SUBMIT,
                submit(&first, good.next().unwrap()),
            ))
            .await;
        assert!(r.is_success(), "{r:?}");
    }
    // Four shares well within four intervals: difficulty x4 and a new job.
    let raised = client.notification(method::SET_DIFFICULTY).await;
    assert_eq!(raised.params, json!([easy * 4.0]));
    let second: Notify = client
        .notification(method::NOTIFY)
        .await
        .params_as()
        .unwrap();
    assert_ne!(second.job_id, first.job_id);
    assert!(!second.clean_jobs);
    assert_eq!(pool.clients()[0].difficulty, easy * 4.0);

    // The first job keeps its own (easier) target; the new job needs the new one.
    let r = client
        .call(Request::call(
            20,
            method::SUBMIT,
            submit(&first, good.next().unwrap()),
        ))
        .await;
    assert!(r.is_success(), "old job, old target: {r:?}");
    let easy_but_not_hard = good_nonces(&second, &extranonce1, &extranonce2, easy)
        .find(|&n| !meets(&second, &extranonce1, &extranonce2, easy * 4.0, n))
        .unwrap();
    let r = client
        .call(Request::call(
            21,
            method::SUBMIT,
            submit(&second, easy_but_not_hard),
        ))
        .await;
    assert_eq!(r.error[0], json!(23), "{r:?}");
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_clients_times_out_with_what_it_saw() {
    let pool = pool(quiet_config()).await;
    let err = pool
        .wait_for_clients(Duration::from_millis(200), |c| !c.is_empty())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not met within 200ms"), "{err}");
    pool.shutdown().await;
}

#[test]
fn the_workspace_minerd_is_found_next_to_the_test_executable() {
    // Cargo sets no GUARDLAB_MINERD for tests; the search must find the built binary.
    assert!(std::env::var_os("GUARDLAB_MINERD").is_none());
    let found = guardlab_minerd::find_minerd_binary().expect("minerd found");
    assert_eq!(
        found.canonicalize().unwrap(),
        Path::new(MINERD).canonicalize().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_release_tarball_extracts_to_a_working_minerd() {
    let tarball = pack_release_tarball(Path::new(MINERD)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The scenario saves it under wget's name for the sourceforge URL: `download`.
    std::fs::write(dir.path().join("download"), &tarball).unwrap();

    let listing = std::process::Command::new("tar")
        .args(["-tzf", "download"])
        .current_dir(dir.path())
        .output()
        .expect("system tar runs");
    assert!(listing.status.success(), "{}", text(&listing.stderr));
    assert_eq!(text(&listing.stdout), "minerd\n");

    let extract = std::process::Command::new("tar")
        .args(["-xzf", "download"])
        .current_dir(dir.path())
        .output()
        .expect("system tar runs");
    assert!(extract.status.success(), "{}", text(&extract.stderr));
    let minerd = dir.path().join("minerd");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&minerd).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o755, "mode {mode:o}");

    let version = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new("./minerd")
            .arg("--version")
            .current_dir(dir.path())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("./minerd --version returned within 30 s")
    .unwrap();
    assert!(version.status.success());
    assert!(
        text(&version.stdout).starts_with("cpuminer 2.5.1 (guardlab stand-in"),
        "{}",
        text(&version.stdout)
    );
}
