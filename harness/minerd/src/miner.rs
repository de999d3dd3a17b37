//! The miner side of the stand-in: a Stratum v1 client and sha256d nonce search on plain
//! std threads, behaving (and logging) like pooler's cpuminer 2.5.1 as far as the lab can
//! observe it: one TCP connection to the pool, a thread per CPU at nice 19 burning CPU on
//! real hashing, shares submitted as they are found.
//!
//! This module holds what a run shares between its parts: the options, the work being mined
//! and the counters ([`run`] starts both sides on them). `session` is the pool side (connect,
//! subscribe, authorize, follow the pool, retry), `hashing` the miner threads, `url` the
//! `--url` forms and `log` cpuminer's log lines.

mod hashing;
mod log;
mod session;
mod url;

use std::collections::HashSet;
use std::io::{ErrorKind, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::stratum::Message;
use crate::work::{Job, Target};

pub use log::applog;
pub use session::ConnectionError;
pub use url::{DEFAULT_PORT, PoolUrl, UrlError};

use hashing::miner_thread;
use log::format_khash;
use session::connection_loop;

/// What the stand-in says it is when it subscribes: cpuminer's agent string, marked.
pub const USER_AGENT: &str = "cpuminer/2.5.1 (guardlab stand-in)";
/// How often the connection loop and idle miner threads look at their stop conditions.
const TICK: Duration = Duration::from_millis(200);
/// Request ids, as cpuminer numbers them; submits count up from 4.
const FIRST_SUBMIT_ID: u64 = 4;

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
    GaveUp {
        attempts: u32,
        #[source]
        last: ConnectionError,
    },
    #[error("cannot start miner thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// The job being mined, with what the connection added to it.
struct Work {
    job: Job,
    extranonce1: Vec<u8>,
    extranonce2_size: usize,
    target: Target,
    generation: u64,
}

/// What the connection and the miner threads share for the whole run.
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
