//! The lab's Stratum v1 mining pool (`fakeminingpool.example.com` in the scenario).
//!
//! It behaves like a small real pool: answers subscribe and authorize, sets a low share
//! difficulty so that a CPU finds shares within seconds (raising it per connection, as
//! pools' "vardiff" does, when shares come faster than wanted), hands out jobs, and checks
//! every submitted share by recomputing its sha256d. Its purpose in the lab is to be asked
//! afterwards who reached it: it records every client (peer, credentials, first contact,
//! shares accepted and rejected).
//!
//! The lab binds sockets inside its network namespaces and hands them over, so the pool
//! takes an already bound [`std::net::TcpListener`].

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::stratum::{Message, Request, Response, StratumError, Submit, SubscribeResult, method};
use crate::work::{Job, Target, decode_fixed, decode_hex, sha256d};

/// Longest line a client may send; longer ones close the connection.
const MAX_LINE: usize = 64 * 1024;
/// Jobs a connection may still submit shares for (older ones are stale).
const JOBS_KEPT: usize = 8;

/// How the pool treats miners.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    /// Starting share difficulty sent with `mining.set_difficulty`. The default, 2^-16,
    /// means a share every ~65 thousand hashes: within about 3 s even for an unoptimized
    /// build of minerd (~25 khash/s), so a miner proves quickly that it reached the pool.
    pub difficulty: f64,
    /// Wanted time between a connection's shares. When four shares arrive within four such
    /// intervals, the connection's difficulty is multiplied by four (and a new job sent), so
    /// an optimized miner (~2 Mhash/s a thread) settles at about one share a second instead
    /// of flooding. `None` keeps the difficulty fixed.
    pub vardiff: Option<Duration>,
    /// Size of the miner-chosen part of the coinbase.
    pub extranonce2_size: usize,
    /// A fresh job is sent this often (cpuminer drops a pool that is silent for 120 s).
    pub job_interval: Duration,
}

impl Default for PoolConfig {
    fn default() -> PoolConfig {
        PoolConfig {
            difficulty: 1.0 / 65536.0,
            vardiff: Some(Duration::from_secs(1)),
            extranonce2_size: 4,
            job_interval: Duration::from_secs(30),
        }
    }
}

/// What the pool knows about one connection.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolClient {
    /// Address the connection came from, as the pool saw it.
    pub peer: SocketAddr,
    /// When the TCP connection was accepted.
    pub first_contact: SystemTime,
    /// First parameter of `mining.subscribe`, if any.
    pub user_agent: Option<String>,
    /// User and password of the last `mining.authorize`.
    pub user: Option<String>,
    pub password: Option<String>,
    pub subscribed: bool,
    pub authorized: bool,
    pub shares_accepted: u64,
    pub shares_rejected: u64,
    /// Share difficulty last sent to this client (0 before it subscribed).
    pub difficulty: f64,
    /// Why the last share was refused.
    pub last_reject: Option<String>,
    /// When the connection ended; `None` while it is open.
    pub disconnected: Option<SystemTime>,
}

/// Why the pool could not start, or a wait on it ended without what was asked.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("pool: cannot use the listening socket: {0}")]
    Listener(#[source] std::io::Error),
    #[error("pool: difficulty must be a positive finite number, got {0}")]
    BadDifficulty(f64),
    #[error("pool: extranonce2 size must be 1 to 8 bytes, got {0}")]
    BadExtranonce2Size(usize),
    #[error("pool: condition not met within {waited:?}; clients seen: {clients:?}")]
    Timeout {
        waited: Duration,
        clients: Vec<PoolClient>,
    },
}

/// A running pool. Dropping it stops the pool too; [`PoolHandle::shutdown`] also waits
/// until every connection is closed.
pub struct PoolHandle {
    local_addr: SocketAddr,
    clients: Arc<Mutex<Vec<PoolClient>>>,
    changes: watch::Receiver<u64>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl PoolHandle {
    /// Address the pool listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Every client seen so far, in order of first contact.
    pub fn clients(&self) -> Vec<PoolClient> {
        self.clients.lock().expect("pool state lock").clone()
    }

    /// Waits until `condition` holds for the clients seen, for at most `timeout`.
    pub async fn wait_for_clients(
        &self,
        timeout: Duration,
        mut condition: impl FnMut(&[PoolClient]) -> bool,
    ) -> Result<Vec<PoolClient>, PoolError> {
        let mut changes = self.changes.clone();
        let wait = async {
            loop {
                let clients = self.clients();
                if condition(&clients) {
                    return Some(clients);
                }
                if changes.changed().await.is_err() {
                    return None; // The pool stopped: nothing will change any more.
                }
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(Some(clients)) => Ok(clients),
            _ => Err(PoolError::Timeout {
                waited: timeout,
                clients: self.clients(),
            }),
        }
    }

    /// Stops accepting, closes every connection and waits for all of it to finish.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for PoolHandle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort(); // Aborting the accept loop drops its JoinSet, which aborts connections.
        }
    }
}

/// Starts the pool on an already bound listener. Must run inside a tokio runtime.
pub async fn start_pool(
    listener: std::net::TcpListener,
    config: PoolConfig,
) -> Result<PoolHandle, PoolError> {
    if !(config.difficulty.is_finite() && config.difficulty > 0.0) {
        return Err(PoolError::BadDifficulty(config.difficulty));
    }
    if !(1..=8).contains(&config.extranonce2_size) {
        return Err(PoolError::BadExtranonce2Size(config.extranonce2_size));
    }
    listener
        .set_nonblocking(true)
        .map_err(PoolError::Listener)?;
    let local_addr = listener.local_addr().map_err(PoolError::Listener)?;
    let listener = tokio::net::TcpListener::from_std(listener).map_err(PoolError::Listener)?;

    let clients = Arc::new(Mutex::new(Vec::new()));
    let (changed, changes) = watch::channel(0u64);
    let (stop, mut stopped) = oneshot::channel();
    let shared = Arc::new(Shared {
        clients: clients.clone(),
        changed,
        config,
        chain: Chain::new(),
    });
    let task = tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let index = shared.record_new_client(peer);
                        connections.spawn(serve_connection(shared.clone(), stream, index));
                    }
                    // Transient accept errors (for example EMFILE) must not end the pool.
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                },
                // Reap finished connections so the set does not grow without bound.
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        connections.shutdown().await;
    });
    Ok(PoolHandle {
        local_addr,
        clients,
        changes,
        stop: Some(stop),
        task: Some(task),
    })
}

struct Shared {
    clients: Arc<Mutex<Vec<PoolClient>>>,
    changed: watch::Sender<u64>,
    config: PoolConfig,
    chain: Chain,
}

impl Shared {
    fn record_new_client(&self, peer: SocketAddr) -> usize {
        let index = {
            let mut clients = self.clients.lock().expect("pool state lock");
            clients.push(PoolClient {
                peer,
                first_contact: SystemTime::now(),
                user_agent: None,
                user: None,
                password: None,
                subscribed: false,
                authorized: false,
                shares_accepted: 0,
                shares_rejected: 0,
                difficulty: 0.0,
                last_reject: None,
                disconnected: None,
            });
            clients.len() - 1
        };
        self.changed.send_modify(|n| *n += 1);
        index
    }

    fn update(&self, index: usize, f: impl FnOnce(&mut PoolClient)) {
        f(&mut self.clients.lock().expect("pool state lock")[index]);
        self.changed.send_modify(|n| *n += 1);
    }
}

/// The made-up chain the pool mines on: a fixed previous block and a couple of fake
/// transactions, so that jobs carry a real Merkle branch.
struct Chain {
    prevhash: [u8; 32],
    merkle_branch: Vec<[u8; 32]>,
}

impl Chain {
    fn new() -> Chain {
        let mut prevhash = sha256d(b"guardlab lab pool: previous block");
        // Make it look like a block hash: the displayed form starts with zeros, i.e. the
        // last raw bytes are zero; in Stratum word order that is the last word.
        prevhash[28..].fill(0);
        Chain {
            prevhash,
            merkle_branch: (0u8..2)
                .map(|i| sha256d(&[b"guardlab lab pool: transaction ".as_slice(), &[i]].concat()))
                .collect(),
        }
    }

    /// A job whose coinbase reserves `4 + extranonce2_size` script bytes for the extranonces.
    fn job(&self, job_id: String, extranonce2_size: usize, clean_jobs: bool) -> Job {
        const HEIGHT: [u8; 4] = [0x03, 0x40, 0x0d, 0x03]; // BIP 34 height push (200000).
        const TAG: &[u8] = b"/guardlab lab pool/";
        let script_len = HEIGHT.len() + 1 + TAG.len() + 4 + extranonce2_size;
        let mut coinb1 = Vec::new();
        coinb1.extend_from_slice(&1u32.to_le_bytes()); // Transaction version.
        coinb1.push(1); // One input, spending nothing.
        coinb1.extend_from_slice(&[0; 32]);
        coinb1.extend_from_slice(&[0xff; 4]); // Previous output index: none.
        coinb1.push(script_len as u8);
        coinb1.extend_from_slice(&HEIGHT);
        coinb1.push(TAG.len() as u8);
        coinb1.extend_from_slice(TAG);
        let mut coinb2 = Vec::new();
        coinb2.extend_from_slice(&[0xff; 4]); // Sequence.
        coinb2.push(1); // One output: 50 coins to an OP_RETURN, nobody's.
        coinb2.extend_from_slice(&5_000_000_000u64.to_le_bytes());
        coinb2.extend_from_slice(&[2, 0x6a, 0x00]);
        coinb2.extend_from_slice(&0u32.to_le_bytes()); // Lock time.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(0);
        Job {
            job_id,
            prevhash: self.prevhash,
            coinb1,
            coinb2,
            merkle_branch: self.merkle_branch.clone(),
            version: 0x2000_0000u32.to_be_bytes(),
            nbits: 0x1d00_ffffu32.to_be_bytes(),
            ntime: now.to_be_bytes(),
            clean_jobs,
        }
    }
}

/// What makes a share unique: job, extranonce2, ntime, nonce.
type ShareKey = (String, Vec<u8>, [u8; 4], [u8; 4]);

/// A job as sent to one connection, with the share target in force when it was sent.
struct IssuedJob {
    job: Job,
    target: Target,
}

/// Per-connection protocol state.
struct Session {
    index: usize,
    extranonce1: [u8; 4],
    extranonce2_size: usize,
    subscribed: bool,
    authorized_users: HashSet<String>,
    difficulty: f64,
    /// Vardiff bookkeeping: accepted shares since `retarget_start`.
    shares_since_retarget: u32,
    retarget_start: Instant,
    next_job: u64,
    jobs: VecDeque<IssuedJob>,
    /// (job, extranonce2, ntime, nonce) of every accepted share.
    seen_shares: HashSet<ShareKey>,
}

async fn serve_connection(shared: Arc<Shared>, stream: TcpStream, index: usize) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut session = Session {
        index,
        // Unique per connection so that two miners never search the same coinbases.
        extranonce1: (index as u32 + 1).to_be_bytes(),
        extranonce2_size: shared.config.extranonce2_size,
        subscribed: false,
        authorized_users: HashSet::new(),
        difficulty: shared.config.difficulty,
        shares_since_retarget: 0,
        retarget_start: Instant::now(),
        next_job: 1,
        jobs: VecDeque::new(),
        seen_shares: HashSet::new(),
    };
    let mut new_jobs = tokio::time::interval(shared.config.job_interval);
    new_jobs.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    new_jobs.tick().await; // The first tick is immediate; jobs start with the subscription.
    let mut line = Vec::new();
    loop {
        tokio::select! {
            read = read_line_bounded(&mut reader, &mut line) => {
                // End of stream, error, or a line longer than MAX_LINE: hang up.
                if !matches!(read, Ok(true)) {
                    break;
                }
                let replies = handle_line(&shared, &mut session, &line);
                line.clear();
                if send_all(&mut write, &replies).await.is_err() {
                    break;
                }
            }
            _ = new_jobs.tick(), if session.subscribed => {
                let notify = issue_job(&shared, &mut session, false);
                if send_all(&mut write, &[notify]).await.is_err() {
                    break;
                }
            }
        }
    }
    shared.update(index, |c| c.disconnected = Some(SystemTime::now()));
}

/// Appends bytes to `line` up to and including a newline; `Ok(false)` at end of stream or
/// when the line outgrows [`MAX_LINE`]. Cancel-safe: bytes are moved from the reader's
/// buffer to `line` without an await in between, so a cancelled call loses nothing.
async fn read_line_bounded<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
) -> std::io::Result<bool> {
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(false);
        }
        let (taken, complete) = match available.iter().position(|&b| b == b'\n') {
            Some(at) => (at + 1, true),
            None => (available.len(), false),
        };
        line.extend_from_slice(&available[..taken]);
        reader.consume(taken);
        if line.len() > MAX_LINE {
            return Ok(false);
        }
        if complete {
            return Ok(true);
        }
    }
}

async fn send_all(write: &mut OwnedWriteHalf, messages: &[Message]) -> std::io::Result<()> {
    let text: String = messages.iter().map(Message::to_line).collect();
    write.write_all(text.as_bytes()).await
}

fn issue_job(shared: &Shared, session: &mut Session, clean_jobs: bool) -> Message {
    let job_id = format!("{:x}", session.next_job);
    session.next_job += 1;
    let job = shared
        .chain
        .job(job_id, shared.config.extranonce2_size, clean_jobs);
    let notify = job.to_notify();
    session.jobs.push_back(IssuedJob {
        job,
        target: Target::from_difficulty(session.difficulty),
    });
    if session.jobs.len() > JOBS_KEPT {
        session.jobs.pop_front();
    }
    Request::notification(method::NOTIFY, notify).into()
}

fn handle_line(shared: &Shared, session: &mut Session, line: &[u8]) -> Vec<Message> {
    let request = match std::str::from_utf8(line).map(Message::parse_line) {
        Ok(Ok(Message::Request(request))) => request,
        // Responses from a miner (to nothing we asked) are ignored; garbage is answered.
        Ok(Ok(Message::Response(_))) => return vec![],
        _ => return vec![Response::reject(Value::Null, StratumError::Other).into()],
    };
    let id = request.id.clone();
    match request.method.as_str() {
        method::SUBSCRIBE => {
            let params: Vec<Value> = request.params_as().unwrap_or_default();
            let user_agent = params.first().and_then(Value::as_str).map(str::to_string);
            session.subscribed = true;
            shared.update(session.index, |c| {
                c.subscribed = true;
                c.user_agent = user_agent;
            });
            let subscription = format!("{:08x}", session.index + 1);
            let result = SubscribeResult {
                subscriptions: vec![
                    (method::SET_DIFFICULTY.into(), subscription.clone()),
                    (method::NOTIFY.into(), subscription),
                ],
                extranonce1: hex::encode(session.extranonce1),
                extranonce2_size: shared.config.extranonce2_size,
            };
            session.retarget_start = Instant::now();
            // The response must come first: cpuminer reads exactly one line after subscribing.
            vec![
                Response::ok(id, result).into(),
                set_difficulty(shared, session),
                issue_job(shared, session, true),
            ]
        }
        method::AUTHORIZE => {
            let params: Vec<Value> = request.params_as().unwrap_or_default();
            let text = |i: usize| params.get(i).and_then(Value::as_str).map(str::to_string);
            let (user, password) = (text(0), text(1));
            // A lab pool welcomes everyone; what matters is that it remembers them.
            if let Some(user) = &user {
                session.authorized_users.insert(user.clone());
            }
            let authorized = user.is_some();
            shared.update(session.index, |c| {
                c.authorized |= authorized;
                c.user = user;
                c.password = password;
            });
            if authorized {
                vec![Response::ok(id, true).into()]
            } else {
                vec![Response::reject(id, StratumError::Other).into()]
            }
        }
        method::SUBMIT => {
            let verdict = check_share(session, &request);
            let reject = verdict.err().map(|e| e.message().to_string());
            shared.update(session.index, |c| match reject {
                None => c.shares_accepted += 1,
                Some(reason) => {
                    c.shares_rejected += 1;
                    c.last_reject = Some(reason);
                }
            });
            match verdict {
                Ok(()) => {
                    let mut replies = vec![Response::ok(id, true).into()];
                    if retarget(shared, session) {
                        replies.push(set_difficulty(shared, session));
                        // Miners apply a new difficulty from the next job on.
                        replies.push(issue_job(shared, session, false));
                    }
                    replies
                }
                Err(e) => vec![Response::reject(id, e).into()],
            }
        }
        // Real pools also see mining.extranonce.subscribe and friends; politely decline.
        _ => vec![Response::reject(id, StratumError::Other).into()],
    }
}

fn set_difficulty(shared: &Shared, session: &Session) -> Message {
    let difficulty = session.difficulty;
    shared.update(session.index, |c| c.difficulty = difficulty);
    Request::notification(method::SET_DIFFICULTY, [difficulty]).into()
}

/// Vardiff after an accepted share: whether the difficulty went up.
fn retarget(shared: &Shared, session: &mut Session) -> bool {
    const SHARES: u32 = 4;
    let Some(interval) = shared.config.vardiff else {
        return false;
    };
    session.shares_since_retarget += 1;
    if session.shares_since_retarget < SHARES {
        return false;
    }
    let too_fast = session.retarget_start.elapsed() < interval * SHARES;
    session.shares_since_retarget = 0;
    session.retarget_start = Instant::now();
    if too_fast {
        session.difficulty *= f64::from(SHARES);
    }
    too_fast
}

fn check_share(session: &mut Session, request: &Request) -> Result<(), StratumError> {
    if !session.subscribed {
        return Err(StratumError::NotSubscribed);
    }
    let submit: Submit = request.params_as().map_err(|_| StratumError::Other)?;
    if !session.authorized_users.contains(&submit.worker) {
        return Err(StratumError::UnauthorizedWorker);
    }
    let IssuedJob { job, target } = session
        .jobs
        .iter()
        .find(|j| j.job.job_id == submit.job_id)
        .ok_or(StratumError::JobNotFound)?;
    let extranonce2 = decode_hex("extranonce2", &submit.extranonce2)
        .ok()
        .filter(|e| e.len() == session.extranonce2_size)
        .ok_or(StratumError::Other)?;
    let ntime = decode_fixed::<4>("ntime", &submit.ntime).map_err(|_| StratumError::Other)?;
    let nonce = decode_fixed::<4>("nonce", &submit.nonce).map_err(|_| StratumError::Other)?;
    let header = job.header(&session.extranonce1, &extranonce2, ntime, nonce);
    if !target.is_met_by(&sha256d(&header)) {
        return Err(StratumError::LowDifficultyShare);
    }
    if !session
        .seen_shares
        .insert((submit.job_id, extranonce2, ntime, nonce))
    {
        return Err(StratumError::DuplicateShare);
    }
    Ok(())
}
