//! The pool side of the miner: one Stratum connection at a time (connect, subscribe,
//! authorize, then follow the pool's notifications into new work and its answers into share
//! verdicts), retried as cpuminer retries, until a bound of the run is reached.

use std::convert::Infallible;
use std::fmt;
use std::io::{BufRead, BufReader, ErrorKind};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;

use super::url::PoolUrl;
use super::{MinerError, Shared, TICK, USER_AGENT, Work};
use crate::stratum::{Message, Notify, Request, Response, SubscribeResult, method};
use crate::work::{Job, Target};

/// Longest line accepted from the pool.
const MAX_LINE: usize = 1024 * 1024;
/// cpuminer gives up on a pool that sends nothing for this long.
const STRATUM_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Time allowed for the subscribe and authorize answers.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Request ids, as cpuminer numbers them (submits count up from `FIRST_SUBMIT_ID`).
const SUBSCRIBE_ID: u64 = 1;
const AUTHORIZE_ID: u64 = 2;

/// Why a connection to the pool ended (and is retried); the messages are cpuminer's log lines.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("Stratum connection failed: cannot resolve {host}: {source}")]
    Resolve {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Stratum connection failed: {host} has no address")]
    NoAddress { host: String },
    #[error("Stratum connection failed: {address}: {source}")]
    Connect {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The connected socket could not be set up (read timeout, second handle for writing).
    #[error("Stratum connection failed: {0}")]
    Socket(#[source] std::io::Error),
    /// The pool closed the connection (possibly in the middle of a line).
    #[error("Stratum connection interrupted")]
    Closed,
    /// Reading from or writing to the pool failed.
    #[error("Stratum connection interrupted: {0}")]
    Interrupted(#[source] std::io::Error),
    #[error("Stratum line too long")]
    LineTooLong,
    #[error("stratum_subscribe timed out")]
    SubscribeTimeout,
    #[error("stratum_authorize timed out")]
    AuthorizeTimeout,
    /// The pool's answer to subscribe, as it sent it.
    #[error("Stratum subscribe failed: {answer}")]
    SubscribeRefused { answer: String },
    #[error("Failed to get extranonce1")]
    BadExtranonce1,
    #[error("Invalid value of extranonce2_size")]
    BadExtranonce2Size,
    #[error("Stratum authentication failed")]
    AuthorizeRefused,
    /// Nothing from the pool for `STRATUM_IDLE_TIMEOUT`.
    #[error("Stratum connection timed out")]
    IdleTimeout,
    #[error("Stratum requested reconnect")]
    ReconnectRequested,
}

/// A bound of the run that was reached: the run stops (no retry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bound {
    Shares { accepted: u64, max: u64 },
    Duration(Duration),
}

impl fmt::Display for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bound::Shares { accepted, max } => {
                write!(f, "{accepted} accepted share(s) (--max-shares {max})")
            }
            Bound::Duration(duration) => write!(f, "{} s (--duration)", duration.as_secs()),
        }
    }
}

/// Stop conditions of a bounded run; `Some(bound)` once one holds.
fn bound_reached(shared: &Shared, started: Instant) -> Option<Bound> {
    let options = &shared.options;
    let accepted = shared.accepted.load(Ordering::SeqCst);
    if let Some(max) = options.max_shares
        && accepted >= max
    {
        return Some(Bound::Shares { accepted, max });
    }
    if let Some(duration) = options.duration
        && started.elapsed() >= duration
    {
        return Some(Bound::Duration(duration));
    }
    None
}

/// Connects, follows the pool and reconnects after each failure (at most `retries` times)
/// until a bound of the run is reached.
pub(super) fn connection_loop(shared: &Shared) -> Result<(), MinerError> {
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
            Err(End::Broken(error)) => error,
        };
        *shared.writer.lock().expect("writer lock") = None;
        shared.set_work(None);
        shared.log(&error.to_string());
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
    fn next(&mut self) -> Result<Read, ConnectionError> {
        match self.reader.read_until(b'\n', &mut self.partial) {
            Ok(0) => Err(ConnectionError::Closed),
            Ok(_) if self.partial.ends_with(b"\n") => {
                let line = String::from_utf8_lossy(&self.partial).into_owned();
                self.partial.clear();
                Ok(Read::Line(line))
            }
            Ok(_) => Err(ConnectionError::Closed),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if self.partial.len() > MAX_LINE {
                    return Err(ConnectionError::LineTooLong);
                }
                Ok(Read::Idle)
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(Read::Idle),
            Err(e) => Err(ConnectionError::Interrupted(e)),
        }
    }
}

/// How a connection ended: a bound of the run was reached (stop), or it broke (retry).
enum End {
    Bound(Bound),
    Broken(ConnectionError),
}

impl From<ConnectionError> for End {
    fn from(error: ConnectionError) -> End {
        End::Broken(error)
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
        .map_err(ConnectionError::Socket)?;
    let _ = stream.set_nodelay(true);
    let writer = stream.try_clone().map_err(ConnectionError::Socket)?;
    *shared.writer.lock().expect("writer lock") = Some(writer);
    let mut lines = LineReader {
        reader: BufReader::new(stream),
        partial: Vec::new(),
    };
    let send_failed = ConnectionError::Interrupted;

    shared
        .send(Request::call(SUBSCRIBE_ID, method::SUBSCRIBE, [USER_AGENT]))
        .map_err(send_failed)?;
    let mut subscription: Option<Subscription> = None;
    let answer = wait_for_response(shared, started, &mut lines, &mut subscription, SUBSCRIBE_ID)?;
    let result = SubscribeResult::deserialize(&answer.result)
        .ok()
        .filter(|_| answer.is_success())
        .ok_or_else(|| ConnectionError::SubscribeRefused {
            answer: line_of(&answer),
        })?;
    let extranonce1 =
        hex::decode(&result.extranonce1).map_err(|_| ConnectionError::BadExtranonce1)?;
    if !(1..=100).contains(&result.extranonce2_size) {
        return Err(ConnectionError::BadExtranonce2Size.into());
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
        return Err(ConnectionError::AuthorizeRefused.into());
    }

    let mut last_line = Instant::now();
    loop {
        if let Some(reason) = bound_reached(shared, started) {
            return Err(End::Bound(reason));
        }
        match lines.next()? {
            Read::Idle if last_line.elapsed() >= STRATUM_IDLE_TIMEOUT => {
                return Err(ConnectionError::IdleTimeout.into());
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

fn connect(url: &PoolUrl) -> Result<TcpStream, ConnectionError> {
    // The system resolver: in the lab, the lab's DNS answers for the pool's name.
    let addresses = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|source| ConnectionError::Resolve {
            host: url.host.clone(),
            source,
        })?;
    let mut last = ConnectionError::NoAddress {
        host: url.host.clone(),
    };
    for address in addresses {
        match TcpStream::connect_timeout(&address, CONNECT_TIMEOUT) {
            Ok(stream) => return Ok(stream),
            Err(source) => last = ConnectionError::Connect { address, source },
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
                return Err(End::Broken(if id == SUBSCRIBE_ID {
                    ConnectionError::SubscribeTimeout
                } else {
                    ConnectionError::AuthorizeTimeout
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
) -> Result<Option<Response>, ConnectionError> {
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
        "client.reconnect" => return Err(ConnectionError::ReconnectRequested),
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
