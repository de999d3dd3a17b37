//! `minerd`: guardlab's stand-in for pooler's cpuminer 2.5.1 (see the crate docs).

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use guardlab_minerd::miner::{self, Algorithm, MinerOptions, PoolUrl};

const AFTER_HELP: &str = "\
Example (the cryptominer scenario's attack step):
  ./minerd --url fakeminingpool.example.com -u ME -p passwd

A URL without a scheme means stratum+tcp (port 3333 unless given). Unlike pooler's cpuminer,
whose default algorithm is scrypt and whose scheme-less URLs mean http (getwork), this stand-in
speaks only Stratum v1 over plain TCP and hashes only sha256d.

guardlab-only options (not in cpuminer) bound a run for tests:
  ./minerd -o stratum+tcp://127.0.0.1:3333 -u ME -p passwd -t 1 --max-shares 1 --duration 60";

/// CPU miner (guardlab's stand-in for pooler's cpuminer 2.5.1): burns CPU on sha256d and
/// submits shares to a Stratum v1 pool.
#[derive(Debug, Parser)]
#[command(name = "minerd", disable_version_flag = true, after_help = AFTER_HELP)]
struct Args {
    /// Algorithm: sha256d; scrypt and scrypt:N are accepted but hashed as sha256d
    #[arg(
        short = 'a',
        long = "algo",
        value_name = "ALGO",
        default_value = "sha256d"
    )]
    algo: String,
    #[arg(
        short = 'o',
        long = "url",
        value_name = "URL",
        help = "URL of mining server: [stratum+tcp://][USER[:PASS]@]HOST[:PORT]"
    )]
    url: Option<String>,
    /// username:password pair for mining server
    #[arg(short = 'O', long = "userpass", value_name = "U:P")]
    userpass: Option<String>,
    /// username for mining server
    #[arg(short = 'u', long = "user", value_name = "USERNAME")]
    user: Option<String>,
    /// password for mining server
    #[arg(short = 'p', long = "pass", value_name = "PASSWORD")]
    pass: Option<String>,
    /// number of miner threads (default: number of processors)
    #[arg(short = 't', long = "threads", value_name = "N")]
    threads: Option<usize>,
    /// number of times to retry if a network call fails (default: retry indefinitely)
    #[arg(
        short = 'r',
        long = "retries",
        value_name = "N",
        allow_negative_numbers = true
    )]
    retries: Option<i64>,
    /// time to pause between retries, in seconds
    #[arg(
        short = 'R',
        long = "retry-pause",
        value_name = "N",
        default_value_t = 30
    )]
    retry_pause: u64,
    /// upper bound on time between hash meter reports, in seconds
    #[arg(short = 's', long = "scantime", value_name = "N", default_value_t = 5)]
    scantime: u64,
    /// disable per-thread hashmeter output
    #[arg(short = 'q', long = "quiet")]
    quiet: bool,
    /// enable debug output
    #[arg(short = 'D', long = "debug")]
    debug: bool,
    /// verbose dump of protocol-level activities
    #[arg(short = 'P', long = "protocol-dump")]
    protocol_dump: bool,
    /// display version information and exit
    #[arg(short = 'V', long = "version")]
    version: bool,
    /// guardlab only: exit (status 0) after N accepted shares
    #[arg(long = "max-shares", value_name = "N")]
    max_shares: Option<u64>,
    /// guardlab only: exit (status 0) after SECS seconds
    #[arg(long = "duration", value_name = "SECS")]
    duration: Option<u64>,
}

fn print_version() {
    println!(
        "cpuminer 2.5.1 (guardlab stand-in, guardlab-minerd {})",
        env!("CARGO_PKG_VERSION")
    );
    println!(
        " NOT pooler's cpuminer: guardlab's lab stand-in, sha256d over Stratum v1 (stratum+tcp) only"
    );
    println!(" features: sha256d stratum+tcp");
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("minerd: {message}");
    eprintln!("Try `minerd --help' for more information.");
    ExitCode::from(1)
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.version {
        print_version();
        return ExitCode::SUCCESS;
    }
    let algorithm = match args.algo.as_str() {
        "sha256d" => Algorithm::Sha256d,
        a if a == "scrypt" || a.starts_with("scrypt:") => Algorithm::Scrypt,
        other => return usage_error(&format!("unknown algorithm -- '{other}'")),
    };
    let Some(url) = args.url else {
        return usage_error("no URL supplied");
    };
    let url = match PoolUrl::parse(&url) {
        Ok(url) => url,
        Err(e) => return usage_error(&e.to_string()),
    };
    // Later sources win, as in cpuminer: URL credentials, then -O, then -u / -p.
    let (mut user, mut pass) = (url.user.clone(), url.pass.clone());
    if let Some(userpass) = &args.userpass {
        let Some((u, p)) = userpass.split_once(':') else {
            return usage_error(&format!("invalid username:password pair -- '{userpass}'"));
        };
        (user, pass) = (Some(u.to_string()), Some(p.to_string()));
    }
    user = args.user.or(user);
    pass = args.pass.or(pass);
    let threads = match args.threads {
        Some(0) => return usage_error("invalid number of threads -- '0'"),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let options = MinerOptions {
        url,
        user: user.unwrap_or_default(),
        pass: pass.unwrap_or_default(),
        threads,
        algorithm,
        quiet: args.quiet,
        debug: args.debug,
        protocol_dump: args.protocol_dump,
        // Negative (cpuminer's -1) means retry forever.
        retries: args.retries.and_then(|r| u32::try_from(r).ok()),
        retry_pause: Duration::from_secs(args.retry_pause),
        scan_time: Duration::from_secs(args.scantime.max(1)),
        max_shares: args.max_shares,
        duration: args.duration.map(Duration::from_secs),
    };
    match miner::run(options) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("minerd: {e}");
            ExitCode::from(1)
        }
    }
}
