//! The miner side of the stand-in: a Stratum v1 client and sha256d nonce search on plain
//! std threads, behaving (and logging) like pooler's cpuminer 2.5.1 as far as the lab can
//! observe it: one TCP connection to the pool, a thread per CPU at nice 19 burning CPU on
//! real hashing, shares submitted as they are found.

use std::collections::HashSet;
use std::convert::Infallible;
use std::fmt;
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;

use crate::stratum::{Message, Notify, Request, Response, Submit, SubscribeResult, method};
use crate::work::{Job, NonceScanner, Target};

/// What the stand-in says it is when it subscribes: cpuminer's agent string, marked.
pub const USER_AGENT: &str = "cpuminer/2.5.1 (guardlab stand-in)";
/// Port used when the URL names none (common Stratum pool port).
pub const DEFAULT_PORT: u16 = 3333;
/// Longest line accepted from the pool.
const MAX_LINE: usize = 1024 * 1024;
/// How often the connection loop looks at its stop conditions.
const TICK: Duration = Duration::from_millis(200);
/// cpuminer gives up on a pool that sends nothing for this long.
const STRATUM_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Time allowed for the subscribe and authorize answers.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Request ids, as cpuminer numbers them; submits count up from 4.
const SUBSCRIBE_ID: u64 = 1;
const AUTHORIZE_ID: u64 = 2;
const FIRST_SUBMIT_ID: u64 = 4;

/// A pool address from `--url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolUrl {
    pub host: String,
    pub port: u16,
    /// Credentials given in the URL (`stratum+tcp://user:pass@host:port`).
    pub user: Option<String>,
    pub pass: Option<String>,
}

/// Why `--url` was refused; messages follow cpuminer's.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    #[error("unknown protocol -- '{0}'")]
    UnknownProtocol(String),
    #[error(
        "unsupported protocol -- '{0}' (guardlab's stand-in speaks only stratum+tcp; a URL without a scheme means stratum+tcp here)"
    )]
    Unsupported(String),
    #[error("invalid URL -- '{0}'")]
    Invalid(String),
}

impl PoolUrl {
    /// Accepts `stratum+tcp://[user[:pass]@]host[:port][/...]`, `host:port` and a bare
    /// `host` (port 3333). IPv6 literals go in brackets.
    pub fn parse(url: &str) -> Result<PoolUrl, UrlError> {
        let rest = match url.split_once("://") {
            Some((scheme, rest)) => {
                if scheme.eq_ignore_ascii_case("stratum+tcp") {
                    rest
                } else if ["http", "https", "stratum+tcps"]
                    .iter()
                    .any(|s| scheme.eq_ignore_ascii_case(s))
                {
                    return Err(UrlError::Unsupported(url.to_string()));
                } else {
                    return Err(UrlError::UnknownProtocol(url.to_string()));
                }
            }
            None => url,
        };
        let invalid = || UrlError::Invalid(url.to_string());
        let rest = rest.split('/').next().unwrap_or_default();
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((userinfo, hostport)) => (Some(userinfo), hostport),
            None => (None, rest),
        };
        let (user, pass) = match userinfo {
            None => (None, None),
            Some(info) => match info.split_once(':') {
                Some((u, p)) => (Some(u.to_string()), Some(p.to_string())),
                None => (Some(info.to_string()), None),
            },
        };
        let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
            let (host, after) = bracketed.split_once(']').ok_or_else(invalid)?;
            match after {
                "" => (host, None),
                _ => (host, Some(after.strip_prefix(':').ok_or_else(invalid)?)),
            }
        } else {
            match hostport.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (hostport, None),
            }
        };
        if host.is_empty() || host.contains(':') && !hostport.starts_with('[') {
            return Err(invalid());
        }
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) => p.parse().ok().filter(|&p| p != 0).ok_or_else(invalid)?,
        };
        Ok(PoolUrl {
            host: host.to_string(),
            port,
            user,
            pass,
        })
    }
}

impl fmt::Display for PoolUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "stratum+tcp://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "stratum+tcp://{}:{}", self.host, self.port)
        }
    }
}

/// Hash function requested with `--algo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Sha256d,
    /// Accepted for command-line compatibility with cpuminer (whose default it is);
    /// the stand-in still hashes sha256d.
    Scrypt,
}

/// Everything `minerd` was asked to do.
#[derive(Debug, Clone, PartialEq)]
pub struct MinerOptions {
    pub url: PoolUrl,
    pub user: String,
    pub pass: String,
    pub threads: usize,
    pub algorithm: Algorithm,
    /// No per-thread hash meter lines.
    pub quiet: bool,
    pub debug: bool,
    /// Print every protocol line sent and received.
    pub protocol_dump: bool,
    /// Connection attempts after a failure; `None` retries forever (cpuminer's default).
    pub retries: Option<u32>,
    pub retry_pause: Duration,
    /// Longest stretch between hash meter reports.
    pub scan_time: Duration,
    /// guardlab only: stop after this many accepted shares.
    pub max_shares: Option<u64>,
    /// guardlab only: stop after this long.
    pub duration: Option<Duration>,
}

/// What a bounded run achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinerSummary {
    pub accepted: u64,
    pub rejected: u64,
    pub hashes: u64,
}

/// Why the miner gave up.
#[derive(Debug, thiserror::Error)]
pub enum MinerError {
    #[error("could not reach the pool after {attempts} attempt(s); last error: {last}")]
    GaveUp { attempts: u32, last: String },
    #[error("cannot start miner thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Writes a cpuminer-style log line (`[YYYY-MM-DD hh:mm:ss] text`, local time) to stderr.
pub fn applog(text: &str) {
    let line = format!("[{}] {}\n", local_timestamp(), text);
    // One write per line so that threads do not interleave; stderr is unbuffered.
    let _ = std::io::stderr().write_all(line.as_bytes());
}

fn local_timestamp() -> String {
    // SAFETY: time and localtime_r only write into the tm we own.
    unsafe {
        let now = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&now, &mut tm).is_null() {
            return "????-??-?? ??:??:??".into();
        }
        format!(
            "{}-{:02}-{:02} {:02}:{:02}:{:02}",
            tm.tm_year + 1900,
            tm.tm_mon + 1,
            tm.tm_mday,
            tm.tm_hour,
            tm.tm_min,
            tm.tm_sec
        )
    }
}

/// The job being mined, with what the connection added to it.
struct Work {
    job: Job,
    extranonce1: Vec<u8>,
    extranonce2_size: usize,
    target: Target,
    generation: u64,
}

struct Shared {
    options: MinerOptions,
    work: Mutex<Option<Arc<Work>>>,
    work_changed: Condvar,
    /// Bumped whenever the current work is replaced or withdrawn: miner threads drop
    /// what they are scanning when it moves.
    generation: AtomicU64,
    next_extranonce2: AtomicU64,
    /// Write side of the live connection, for submits from miner threads.
    writer: Mutex<Option<TcpStream>>,
    next_submit_id: AtomicU64,
    pending_submits: Mutex<HashSet<u64>>,
    stop: AtomicBool,
    hashrates: Mutex<Vec<f64>>,
    hashes: AtomicU64,
    accepted: AtomicU64,
    rejected: AtomicU64,
}

impl Shared {
    fn log(&self, text: &str) {
        applog(text);
    }

    fn debug(&self, text: &str) {
        if self.options.debug {
            applog(&format!("DEBUG: {text}"));
        }
    }

    fn set_work(&self, work: Option<Work>) {
        let mut current = self.work.lock().expect("work lock");
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        *current = work.map(|mut work| {
            work.generation = generation;
            Arc::new(work)
        });
        self.work_changed.notify_all();
    }

    fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.set_work(None);
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn total_khash(&self) -> String {
        format_khash(self.hashrates.lock().expect("rates lock").iter().sum())
    }

    fn send(&self, message: impl Into<Message>) -> std::io::Result<()> {
        let line = message.into().to_line();
        if self.options.protocol_dump {
            self.log(&format!("> {}", line.trim_end()));
        }
        match self.writer.lock().expect("writer lock").as_mut() {
            Some(stream) => stream.write_all(line.as_bytes()),
            None => Err(ErrorKind::NotConnected.into()),
        }
    }
}

/// cpuminer prints rates below 1 Ghash/s with two decimals.
fn format_khash(hashes_per_second: f64) -> String {
    if hashes_per_second < 1e6 {
        format!("{:.2}", hashes_per_second / 1e3)
    } else {
        format!("{:.0}", hashes_per_second / 1e3)
    }
}

/// Mines until a stop condition holds (`max_shares`, `duration`) or, with bounded
/// `retries`, the pool stays unreachable. Without bounds it runs until the process is killed.
pub fn run(options: MinerOptions) -> Result<MinerSummary, MinerError> {
    let threads = options.threads.max(1);
    let shared = Arc::new(Shared {
        work: Mutex::new(None),
        work_changed: Condvar::new(),
        generation: AtomicU64::new(0),
        next_extranonce2: AtomicU64::new(0),
        writer: Mutex::new(None),
        next_submit_id: AtomicU64::new(FIRST_SUBMIT_ID),
        pending_submits: Mutex::new(HashSet::new()),
        stop: AtomicBool::new(false),
        hashrates: Mutex::new(vec![0.0; threads]),
        hashes: AtomicU64::new(0),
        accepted: AtomicU64::new(0),
        rejected: AtomicU64::new(0),
        options,
    });
    if shared.options.algorithm == Algorithm::Scrypt {
        shared.log(
            "note: guardlab's minerd stand-in does not implement scrypt; hashing sha256d instead",
        );
    }
    let mut miners = Vec::with_capacity(threads);
    for id in 0..threads {
        let for_thread = shared.clone();
        // Unnamed, like cpuminer's threads: they keep the process name `minerd`, which is
        // what a sensor sees on their tasks.
        let spawned = std::thread::Builder::new().spawn(move || miner_thread(&for_thread, id));
        match spawned {
            Ok(handle) => miners.push(handle),
            Err(e) => {
                shared.request_stop();
                return Err(MinerError::Thread(e));
            }
        }
    }
    shared.log(&format!(
        "{threads} miner threads started, using 'sha256d' algorithm."
    ));

    let outcome = connection_loop(&shared);
    shared.request_stop();
    for miner in miners {
        let _ = miner.join();
    }
    outcome.map(|()| MinerSummary {
        accepted: shared.accepted.load(Ordering::SeqCst),
        rejected: shared.rejected.load(Ordering::SeqCst),
        hashes: shared.hashes.load(Ordering::SeqCst),
    })
}

/// Stop conditions of a bounded run; `Some(reason)` once one holds.
fn bound_reached(shared: &Shared, started: Instant) -> Option<String> {
    let options = &shared.options;
    let accepted = shared.accepted.load(Ordering::SeqCst);
    if let Some(max) = options.max_shares
        && accepted >= max
    {
        return Some(format!("{accepted} accepted share(s) (--max-shares {max})"));
    }
    if let Some(duration) = options.duration
        && started.elapsed() >= duration
    {
        return Some(format!("{} s (--duration)", duration.as_secs()));
    }
    None
}

fn connection_loop(shared: &Shared) -> Result<(), MinerError> {
    let started = Instant::now();
    shared.log(&format!("Starting Stratum on {}", shared.options.url));
    let mut failures = 0u32;
    loop {
        let error = match session(shared, started) {
            Ok(never) => match never {},
            Err(End::Bound(reason)) => {
                shared.log(&format!("guardlab: stopping after {reason}"));
                return Ok(());
            }
            Err(End::Failed(error)) => error,
        };
        *shared.writer.lock().expect("writer lock") = None;
        shared.set_work(None);
        shared.log(&error);
        failures += 1;
        if let Some(retries) = shared.options.retries
            && failures > retries
        {
            shared.log("...terminating workio thread");
            return Err(MinerError::GaveUp {
                attempts: failures,
                last: error,
            });
        }
        shared.log(&format!(
            "...retry after {} seconds",
            shared.options.retry_pause.as_secs()
        ));
        let pause_until = Instant::now() + shared.options.retry_pause;
        while Instant::now() < pause_until {
            if let Some(reason) = bound_reached(shared, started) {
                shared.log(&format!("guardlab: stopping after {reason}"));
                return Ok(());
            }
            std::thread::sleep(TICK);
        }
    }
}

/// Reads newline-terminated lines with a short poll so that the caller can look at its
/// clock between reads.
struct LineReader {
    reader: BufReader<TcpStream>,
    partial: Vec<u8>,
}

enum Read {
    Line(String),
    Idle,
}

impl LineReader {
    fn next(&mut self) -> Result<Read, String> {
        match self.reader.read_until(b'\n', &mut self.partial) {
            Ok(0) => Err("Stratum connection interrupted".into()),
            Ok(_) if self.partial.ends_with(b"\n") => {
                let line = String::from_utf8_lossy(&self.partial).into_owned();
                self.partial.clear();
                Ok(Read::Line(line))
            }
            Ok(_) => Err("Stratum connection interrupted".into()),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if self.partial.len() > MAX_LINE {
                    return Err("Stratum line too long".into());
                }
                Ok(Read::Idle)
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(Read::Idle),
            Err(e) => Err(format!("Stratum connection interrupted: {e}")),
        }
    }
}

/// How a connection ended: a bound of the run was reached (stop), or it failed (retry).
enum End {
    Bound(String),
    Failed(String),
}

impl From<String> for End {
    fn from(error: String) -> End {
        End::Failed(error)
    }
}

impl From<&str> for End {
    fn from(error: &str) -> End {
        End::Failed(error.to_string())
    }
}

/// Connection state between the subscribe answer and the end of the connection.
struct Subscription {
    extranonce1: Vec<u8>,
    extranonce2_size: usize,
    next_difficulty: f64,
}

/// One connection: connect, subscribe, authorize, then follow the pool. Returns the stop
/// reason when a bound is reached, or the error that ended the connection.
fn session(shared: &Shared, started: Instant) -> Result<Infallible, End> {
    let options = &shared.options;
    let stream = connect(&options.url)?;
    shared.debug(&format!("connected to {:?}", stream.peer_addr().ok()));
    stream
        .set_read_timeout(Some(TICK))
        .map_err(|e| format!("Stratum connection failed: {e}"))?;
    let _ = stream.set_nodelay(true);
    let writer = stream
        .try_clone()
        .map_err(|e| format!("Stratum connection failed: {e}"))?;
    *shared.writer.lock().expect("writer lock") = Some(writer);
    let mut lines = LineReader {
        reader: BufReader::new(stream),
        partial: Vec::new(),
    };
    let send_failed =
        |e: std::io::Error| End::Failed(format!("Stratum connection interrupted: {e}"));

    shared
        .send(Request::call(SUBSCRIBE_ID, method::SUBSCRIBE, [USER_AGENT]))
        .map_err(send_failed)?;
    let mut subscription: Option<Subscription> = None;
    let answer = wait_for_response(shared, started, &mut lines, &mut subscription, SUBSCRIBE_ID)?;
    let result = SubscribeResult::deserialize(&answer.result)
        .ok()
        .filter(|_| answer.is_success())
        .ok_or_else(|| format!("Stratum subscribe failed: {}", line_of(&answer)))?;
    let extranonce1 =
        hex::decode(&result.extranonce1).map_err(|_| "Failed to get extranonce1".to_string())?;
    if !(1..=100).contains(&result.extranonce2_size) {
        return Err("Invalid value of extranonce2_size".into());
    }
    subscription = Some(Subscription {
        extranonce1,
        extranonce2_size: result.extranonce2_size,
        next_difficulty: 1.0,
    });

    shared
        .send(Request::call(
            AUTHORIZE_ID,
            method::AUTHORIZE,
            [&options.user, &options.pass],
        ))
        .map_err(send_failed)?;
    let answer = wait_for_response(shared, started, &mut lines, &mut subscription, AUTHORIZE_ID)?;
    if !answer.is_success() {
        return Err("Stratum authentication failed".into());
    }

    let mut last_line = Instant::now();
    loop {
        if let Some(reason) = bound_reached(shared, started) {
            return Err(End::Bound(reason));
        }
        match lines.next()? {
            Read::Idle if last_line.elapsed() >= STRATUM_IDLE_TIMEOUT => {
                return Err("Stratum connection timed out".into());
            }
            Read::Idle => {}
            Read::Line(line) => {
                last_line = Instant::now();
                if let Some(response) = handle_line(shared, &mut subscription, &line)? {
                    share_result(shared, &response);
                }
            }
        }
    }
}

fn connect(url: &PoolUrl) -> Result<TcpStream, String> {
    // The system resolver: in the lab, the lab's DNS answers for the pool's name.
    let addresses = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|e| {
            format!(
                "Stratum connection failed: cannot resolve {}: {e}",
                url.host
            )
        })?;
    let mut last = format!("Stratum connection failed: {} has no address", url.host);
    for address in addresses {
        match TcpStream::connect_timeout(&address, CONNECT_TIMEOUT) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = format!("Stratum connection failed: {address}: {e}"),
        }
    }
    Err(last)
}

fn line_of(response: &Response) -> String {
    Message::from(response.clone())
        .to_line()
        .trim_end()
        .to_string()
}

/// Reads until the response to `id`, handling the pool's notifications in between.
fn wait_for_response(
    shared: &Shared,
    started: Instant,
    lines: &mut LineReader,
    subscription: &mut Option<Subscription>,
    id: u64,
) -> Result<Response, End> {
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    loop {
        if let Some(reason) = bound_reached(shared, started) {
            return Err(End::Bound(reason));
        }
        match lines.next()? {
            Read::Idle if Instant::now() >= deadline => {
                return Err(End::Failed(if id == SUBSCRIBE_ID {
                    "stratum_subscribe timed out".into()
                } else {
                    "stratum_authorize timed out".into()
                }));
            }
            Read::Idle => {}
            Read::Line(line) => {
                if let Some(response) = handle_line(shared, subscription, &line)? {
                    if response.id.as_u64() == Some(id) {
                        return Ok(response);
                    }
                    share_result(shared, &response);
                }
            }
        }
    }
}

/// Handles one line from the pool; a response is returned to the caller.
fn handle_line(
    shared: &Shared,
    subscription: &mut Option<Subscription>,
    line: &str,
) -> Result<Option<Response>, String> {
    if shared.options.protocol_dump {
        shared.log(&format!("< {}", line.trim_end()));
    }
    let request = match Message::parse_line(line) {
        Ok(Message::Response(response)) => return Ok(Some(response)),
        Ok(Message::Request(request)) => request,
        Err(e) => {
            shared.log(&format!("JSON decode failed: {e}"));
            return Ok(None);
        }
    };
    match request.method.as_str() {
        method::NOTIFY => {
            let Some(sub) = subscription.as_ref() else {
                return Ok(None); // Not subscribed yet: nothing to build work with.
            };
            let job = request
                .params_as::<Notify>()
                .map_err(|e| e.to_string())
                .and_then(|n| Job::from_notify(&n).map_err(|e| e.to_string()));
            let job = match job {
                Ok(job) => job,
                Err(e) => {
                    shared.log(&format!("Stratum notify: invalid parameters: {e}"));
                    return Ok(None);
                }
            };
            shared.debug(&format!(
                "job_id='{}' ntime={} difficulty={}",
                job.job_id,
                hex::encode(job.ntime),
                sub.next_difficulty
            ));
            let had_work = shared.work.lock().expect("work lock").is_some();
            if job.clean_jobs && had_work {
                shared.log("Stratum requested work restart");
            }
            shared.set_work(Some(Work {
                target: Target::from_difficulty(sub.next_difficulty),
                extranonce1: sub.extranonce1.clone(),
                extranonce2_size: sub.extranonce2_size,
                generation: 0, // Set by set_work.
                job,
            }));
        }
        method::SET_DIFFICULTY => {
            let difficulty = request
                .params_as::<Vec<f64>>()
                .ok()
                .and_then(|p| p.first().copied())
                .filter(|d| d.is_finite() && *d > 0.0);
            match (difficulty, subscription.as_mut()) {
                (Some(d), Some(sub)) => {
                    sub.next_difficulty = d;
                    shared.debug(&format!("Stratum difficulty set to {d}"));
                }
                (Some(_), None) => {}
                (None, _) => shared.log("Stratum set_difficulty: invalid parameters"),
            }
        }
        "client.get_version" => {
            let _ = shared.send(Response::ok(request.id, USER_AGENT));
        }
        "client.show_message" => {
            let text = request
                .params_as::<Vec<String>>()
                .ok()
                .and_then(|p| p.into_iter().next())
                .unwrap_or_default();
            shared.log(&format!("Pool message: {text}"));
        }
        "client.reconnect" => return Err("Stratum requested reconnect".into()),
        other => {
            if !request.id.is_null() {
                let reply = Response {
                    id: request.id.clone(),
                    result: Value::Null,
                    error: serde_json::json!([-3, format!("Method '{other}' not found"), null]),
                };
                let _ = shared.send(reply);
            }
        }
    }
    Ok(None)
}

/// Logs the pool's verdict on a share, in cpuminer's words.
fn share_result(shared: &Shared, response: &Response) {
    let Some(id) = response.id.as_u64() else {
        return;
    };
    if !shared
        .pending_submits
        .lock()
        .expect("pending lock")
        .remove(&id)
    {
        return;
    }
    let ok = response.is_success();
    if ok {
        shared.accepted.fetch_add(1, Ordering::SeqCst);
    } else {
        shared.rejected.fetch_add(1, Ordering::SeqCst);
    }
    let accepted = shared.accepted.load(Ordering::SeqCst);
    let total = accepted + shared.rejected.load(Ordering::SeqCst);
    shared.log(&format!(
        "accepted: {accepted}/{total} ({:.2}%), {} khash/s {}",
        100.0 * accepted as f64 / total as f64,
        shared.total_khash(),
        if ok { "(yay!!!)" } else { "(booooo)" }
    ));
    if !ok && shared.options.debug {
        shared.debug(&format!(
            "reject reason: {}",
            response.error_message().unwrap_or_default()
        ));
    }
}

/// Like cpuminer: miner threads run at nice 19 and, on Linux, SCHED_IDLE (SCHED_BATCH if
/// that is refused), so the miner takes only CPU nobody else wants.
fn lower_priority() {
    // SAFETY: plain syscalls on the calling thread with a valid parameter struct.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 19);
        let param = libc::sched_param { sched_priority: 0 };
        if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) != 0 {
            libc::sched_setscheduler(0, libc::SCHED_BATCH, &param);
        }
    }
}

fn wait_for_work(shared: &Shared) -> Option<Arc<Work>> {
    let mut current = shared.work.lock().expect("work lock");
    loop {
        if shared.stopping() {
            return None;
        }
        if let Some(work) = current.as_ref() {
            return Some(work.clone());
        }
        current = shared
            .work_changed
            .wait_timeout(current, TICK)
            .expect("work lock")
            .0;
    }
}

/// Hashes between looks at the clock and at the current work.
const BATCH: u32 = 4096;

fn miner_thread(shared: &Shared, id: usize) {
    lower_priority();
    while let Some(work) = wait_for_work(shared) {
        // Every piece of work gets its own extranonce2, hence its own coinbase and Merkle
        // root, so threads never search the same headers.
        let counter = shared.next_extranonce2.fetch_add(1, Ordering::SeqCst);
        let mut extranonce2 = vec![0u8; work.extranonce2_size];
        for (byte, value) in extranonce2.iter_mut().zip(counter.to_le_bytes()) {
            *byte = value;
        }
        let header = work
            .job
            .header(&work.extranonce1, &extranonce2, work.job.ntime, [0; 4]);
        let mut scanner = NonceScanner::new(&header);
        let mut nonce: u32 = 0;
        let mut meter_start = Instant::now();
        let mut meter_hashes: u64 = 0;
        'scan: loop {
            let mut found = None;
            let mut done = 0u32;
            while done < BATCH {
                let candidate = nonce;
                nonce = nonce.wrapping_add(1);
                done += 1;
                if work
                    .target
                    .is_met_by(&scanner.hash(candidate.to_be_bytes()))
                {
                    found = Some(candidate);
                    break;
                }
                if nonce == 0 {
                    break; // Nonce space exhausted.
                }
            }
            meter_hashes += u64::from(done);
            shared.hashes.fetch_add(u64::from(done), Ordering::Relaxed);
            let moved = shared.generation.load(Ordering::SeqCst) != work.generation;
            let exhausted = nonce == 0;
            let elapsed = meter_start.elapsed();
            if found.is_some() || moved || exhausted || elapsed >= shared.options.scan_time {
                report_hashrate(shared, id, meter_hashes, elapsed);
                meter_start = Instant::now();
                meter_hashes = 0;
            }
            if let Some(nonce) = found {
                submit_share(shared, &work, &extranonce2, nonce);
            }
            if moved || exhausted || shared.stopping() {
                break 'scan;
            }
        }
    }
}

fn report_hashrate(shared: &Shared, id: usize, hashes: u64, elapsed: Duration) {
    let rate = hashes as f64 / elapsed.as_secs_f64().max(1e-6);
    shared.hashrates.lock().expect("rates lock")[id] = rate;
    if !shared.options.quiet {
        shared.log(&format!(
            "thread {id}: {hashes} hashes, {} khash/s",
            format_khash(rate)
        ));
    }
}

fn submit_share(shared: &Shared, work: &Work, extranonce2: &[u8], nonce: u32) {
    let id = shared.next_submit_id.fetch_add(1, Ordering::SeqCst);
    let submit = Submit {
        worker: shared.options.user.clone(),
        job_id: work.job.job_id.clone(),
        extranonce2: hex::encode(extranonce2),
        ntime: hex::encode(work.job.ntime),
        nonce: hex::encode(nonce.to_be_bytes()),
    };
    shared.debug(&format!(
        "submitting job_id='{}' extranonce2={} nonce={}",
        submit.job_id, submit.extranonce2, submit.nonce
    ));
    shared
        .pending_submits
        .lock()
        .expect("pending lock")
        .insert(id);
    if shared
        .send(Request::call(id, method::SUBMIT, submit))
        .is_err()
    {
        // The connection is gone; the share is stale by the time it comes back.
        shared
            .pending_submits
            .lock()
            .expect("pending lock")
            .remove(&id);
        shared.log("submit_upstream_work stratum_send_line failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(host: &str, port: u16) -> PoolUrl {
        PoolUrl {
            host: host.into(),
            port,
            user: None,
            pass: None,
        }
    }

    #[test]
    fn urls_in_the_forms_the_scenario_and_cpuminer_use() {
        assert_eq!(
            PoolUrl::parse("fakeminingpool.example.com").unwrap(),
            url("fakeminingpool.example.com", 3333)
        );
        assert_eq!(
            PoolUrl::parse("fakeminingpool.example.com:4444").unwrap(),
            url("fakeminingpool.example.com", 4444)
        );
        assert_eq!(
            PoolUrl::parse("stratum+tcp://198.18.0.7:3333").unwrap(),
            url("198.18.0.7", 3333)
        );
        assert_eq!(
            PoolUrl::parse("STRATUM+TCP://pool/").unwrap(),
            url("pool", 3333)
        );
        assert_eq!(
            PoolUrl::parse("stratum+tcp://[::1]:3334").unwrap(),
            url("::1", 3334)
        );
        let with_credentials = PoolUrl::parse("stratum+tcp://ME:passwd@pool:3333").unwrap();
        assert_eq!(with_credentials.user.as_deref(), Some("ME"));
        assert_eq!(with_credentials.pass.as_deref(), Some("passwd"));
        assert_eq!(with_credentials.to_string(), "stratum+tcp://pool:3333");
        assert_eq!(
            PoolUrl::parse("[::1]").unwrap().to_string(),
            "stratum+tcp://[::1]:3333"
        );
    }

    #[test]
    fn bad_urls_are_refused_with_cpuminer_messages() {
        assert_eq!(
            PoolUrl::parse("gopher://pool").unwrap_err().to_string(),
            "unknown protocol -- 'gopher://pool'"
        );
        assert!(matches!(
            PoolUrl::parse("http://pool:8332"),
            Err(UrlError::Unsupported(_))
        ));
        for bad in [
            "",
            ":3333",
            "pool:",
            "pool:0",
            "pool:99999",
            "pool:x",
            "a:b:c",
        ] {
            assert_eq!(
                PoolUrl::parse(bad),
                Err(UrlError::Invalid(bad.to_string())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn hash_rates_print_like_cpuminer() {
        assert_eq!(format_khash(1234.5), "1.23");
        assert_eq!(format_khash(2_500_000.0), "2500");
    }
}
