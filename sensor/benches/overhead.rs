//! Sensor overhead benchmark (prints a table; not a test). Needs root.
//!
//!   cargo bench -p guardlab-sensor --bench overhead
//!   cargo bench -p guardlab-sensor --bench overhead -- --execs 2000 --connects 2000 --rounds 1
//!
//! Two storms, each run by guardlab-sensor-probe inside a fresh cgroup:
//!   exec:    N × fork+exec+wait of /bin/true
//!   connect: N × TCP connect+close to a loopback listener
//! under four setups, alternating within each round (the order rotates every round so that
//! drift on a shared machine spreads evenly):
//!   none      no tracing
//!   guardlab  this sensor watching the storm's cgroup (every event decoded and counted)
//!   auditd    auditd with a rule logging execve/execveat (the daemon is started if needed)
//!   bpftrace  a bpftrace one-liner printing every sched_process_exec
//! Reports the median wall time and its ratio to `none`; the CPU time of the storm (its
//! processes, including the kernel work the tracer's hooks add to them) and of the tracer's
//! own user space (guardlab's reader threads; auditd and kauditd; bpftrace), their sum as a
//! ratio to `none` (a busy shared machine disturbs CPU time less than wall time); events seen
//! vs expected; and events lost.
#![allow(unsafe_code)] // tests make the system calls they check (geteuid, kill, mount, setns...)

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use guardlab_host::{Host, ProcStat, Requirement, StderrProgress, catalog};
use guardlab_sensor::cgroup::{OwnedCgroup, spawn_into};
use guardlab_sensor::{ContainerInfo, EventBody, Sensor, SensorConfig};

const PROBE: &str = env!("CARGO_BIN_EXE_guardlab-sensor-probe");
const AUDIT_KEY: &str = "guardlab-bench";
const AUDIT_LOG: &str = "/var/log/audit/audit.log";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Setup {
    None,
    Guardlab,
    Auditd,
    Bpftrace,
}

impl Setup {
    const ALL: [Setup; 4] = [Setup::None, Setup::Guardlab, Setup::Auditd, Setup::Bpftrace];
    fn name(self) -> &'static str {
        match self {
            Setup::None => "none",
            Setup::Guardlab => "guardlab",
            Setup::Auditd => "auditd",
            Setup::Bpftrace => "bpftrace",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Storm {
    Exec,
    Connect,
}

#[derive(Debug)]
struct Run {
    storm: Storm,
    setup: Setup,
    secs: f64,
    /// CPU seconds of the storm's processes.
    storm_cpu: f64,
    /// CPU seconds of the tracer's user space (and kauditd) during the storm.
    tracer_cpu: f64,
    /// Events the tracer delivered for this storm (None: it does not trace this storm).
    seen: Option<u64>,
    expected: u64,
    lost: u64,
}

struct Args {
    execs: u64,
    connects: u64,
    rounds: usize,
    setups: Vec<Setup>,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        execs: 20_000,
        connects: 20_000,
        rounds: 3,
        setups: Setup::ALL.to_vec(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut num = |name: &str| -> Result<u64> {
            let v = it.next().with_context(|| format!("{name} needs a value"))?;
            v.parse()
                .with_context(|| format!("{name} {v:?}: not a number"))
        };
        match a.as_str() {
            "--execs" => args.execs = num("--execs")?,
            "--connects" => args.connects = num("--connects")?,
            "--rounds" => args.rounds = num("--rounds")? as usize,
            "--setups" => {
                let list = it.next().context("--setups needs a value")?;
                args.setups = list
                    .split(',')
                    .map(|name| {
                        Setup::ALL.into_iter().find(|s| s.name() == name).with_context(|| {
                            format!("--setups: unknown setup {name:?} (none, guardlab, auditd, bpftrace)")
                        })
                    })
                    .collect::<Result<_>>()?;
                if !args.setups.contains(&Setup::None) {
                    args.setups.insert(0, Setup::None); // the baseline of every ratio
                }
            }
            "--bench" => {} // passed by cargo bench
            "-h" | "--help" => {
                println!(
                    "usage: cargo bench -p guardlab-sensor --bench overhead [-- --execs N --connects N --rounds N --setups LIST]\n\
                     example: cargo bench -p guardlab-sensor --bench overhead -- --execs 2000 --rounds 1\n\
                     auditd and bpftrace are installed with apt-get when missing (saying so first); \
                     GUARDLAB_NO_INSTALL=1 refuses and names the command instead."
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    Ok(args)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark loads eBPF programs and configures auditd: run it with sudo");
    }
    // The comparison points, installed through guardlab-host when missing (said first,
    // recorded for `guardlab clean`; GUARDLAB_NO_INSTALL=1 refuses and names the command).
    let mut tools: Vec<&Requirement> = Vec::new();
    if args.setups.contains(&Setup::Auditd) {
        tools.push(&catalog::AUDITCTL); // the auditd package brings auditd and auditctl
    }
    if args.setups.contains(&Setup::Bpftrace) {
        tools.push(&catalog::BPFTRACE);
    }
    Host::new(false)
        .ensure(&tools, &StderrProgress)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let runtime = guardlab_host::runtime(2)?;
    let auditd = if args.setups.contains(&Setup::Auditd) {
        Some(AuditDaemon::ensure_running()?)
    } else {
        None
    };

    // Ctrl-C: leave no audit rule, daemon or cgroup behind.
    let started_auditd = auditd.as_ref().and_then(|a| a.started.clone());
    runtime.spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\ninterrupted: cleaning up");
            cleanup_after_interrupt(started_auditd);
            std::process::exit(130);
        }
    });

    // One loopback listener for every connect storm, in a process of its own so that its CPU
    // time is not counted as the sensor's (which runs in this one).
    let mut listener = KilledOnDrop(
        Command::new(PROBE)
            .args(["serve", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .spawn()?,
    );
    let mut first = String::new();
    BufReader::new(listener.0.stdout.take().context("listener stdout")?).read_line(&mut first)?;
    let port: u16 = first
        .trim()
        .strip_prefix("ok listening ")
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("the listener said {first:?}"))?;
    let addr = format!("127.0.0.1:{port}");

    let mut runs = Vec::new();
    let setups = args.setups.clone();
    let total = args.rounds * setups.len() * 2;
    for round in 0..args.rounds {
        for i in 0..setups.len() {
            let setup = setups[(i + round) % setups.len()];
            for storm in [Storm::Exec, Storm::Connect] {
                let n = if storm == Storm::Exec {
                    args.execs
                } else {
                    args.connects
                };
                eprint!(
                    "[{}/{total}] round {} {:?} storm ({n}) with {} ... ",
                    runs.len() + 1,
                    round + 1,
                    storm,
                    setup.name()
                );
                let run = runtime.block_on(one_run(setup, storm, n, &addr))?;
                eprintln!("{:.2}s", run.secs);
                runs.push(run);
            }
        }
    }
    drop(listener);
    drop(auditd);
    print_table(&runs, &args);
    Ok(())
}

/// A helper process of the benchmark, killed and reaped however the benchmark ends (an error
/// in a later setup included).
struct KilledOnDrop(Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn storm_command(cgroup: &OwnedCgroup, storm: Storm, n: u64, addr: &str) -> Result<Command> {
    let mut cmd = Command::new(PROBE);
    match storm {
        Storm::Exec => cmd.args(["exec-storm", &n.to_string(), "/bin/true"]),
        Storm::Connect => cmd.args(["connect-storm", &n.to_string(), addr]),
    };
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
    spawn_into(&mut cmd, cgroup.path())?;
    Ok(cmd)
}

/// Runs the storm: (wall seconds, CPU seconds of it and its children).
async fn timed(mut cmd: Command) -> Result<(f64, f64)> {
    tokio::task::spawn_blocking(move || -> Result<(f64, f64)> {
        let cpu_before = rusage_secs(libc::RUSAGE_CHILDREN);
        let start = Instant::now();
        let out = cmd.output()?;
        let secs = start.elapsed().as_secs_f64();
        let cpu = rusage_secs(libc::RUSAGE_CHILDREN) - cpu_before;
        if !out.status.success() {
            bail!("storm failed: {}", String::from_utf8_lossy(&out.stdout));
        }
        Ok((secs, cpu))
    })
    .await?
}

fn rusage_secs(who: i32) -> f64 {
    // SAFETY: an all-zero rusage is valid, and getrusage only writes into it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `who` is RUSAGE_SELF or RUSAGE_CHILDREN and `ru` a valid, writable rusage.
    unsafe { libc::getrusage(who, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// utime + stime of a process, from /proc/PID/stat (0 when it is gone).
fn proc_cpu_secs(pid: u32) -> f64 {
    let Some(stat) = ProcStat::read(pid) else {
        return 0.0;
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (stat.utime_ticks + stat.stime_ticks) as f64 / hz
}

fn pid_of_comm(comm: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let c = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        (c.trim() == comm).then_some(pid)
    })
}

/// After Ctrl-C: no audit rule, daemon or cgroup of this run is left behind.
fn cleanup_after_interrupt(started_auditd: Option<ProcStat>) {
    let _ = Command::new("auditctl").args(audit_rule("-d")).output();
    if let Some(daemon) = started_auditd {
        // Only the daemon this benchmark started, not a process that took its pid since.
        let _ =
            guardlab_host::process::signal_if_same(daemon.pid, daemon.start_ticks, libc::SIGTERM);
    }
    let prefix = format!("guardlab-bench-{}-", std::process::id());
    if let Ok(root) = guardlab_sensor::cgroup::cgroup2_mount()
        && let Ok(entries) = std::fs::read_dir(&root)
    {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::write(e.path().join("cgroup.kill"), "1");
                std::thread::sleep(Duration::from_millis(200));
                let _ = std::fs::remove_dir(e.path());
            }
        }
    }
}

async fn one_run(setup: Setup, storm: Storm, n: u64, addr: &str) -> Result<Run> {
    let cgroup = OwnedCgroup::create(&format!(
        "guardlab-bench-{}-{}",
        std::process::id(),
        setup.name()
    ))?;
    let cmd = storm_command(&cgroup, storm, n, addr)?;
    // The probe's own exec is an exec too.
    let expected = if storm == Storm::Exec { n + 1 } else { n };
    let mut run = Run {
        storm,
        setup,
        secs: 0.0,
        storm_cpu: 0.0,
        tracer_cpu: 0.0,
        seen: None,
        expected,
        lost: 0,
    };
    match setup {
        Setup::None => (run.secs, run.storm_cpu) = timed(cmd).await?,
        Setup::Guardlab => {
            let mut sensor = Sensor::start(SensorConfig::default())?;
            let mut rx = sensor.events()?;
            let id = sensor.watch(cgroup.path(), ContainerInfo::default())?;
            let counted = Arc::new(AtomicU64::new(0));
            let counter = counted.clone();
            let consumer = tokio::spawn(async move {
                while let Some(e) = rx.recv().await {
                    let hit = match (&e.body, storm) {
                        (EventBody::Exec(x), Storm::Exec) => x.cgroup_id == id,
                        (EventBody::Connect(c), Storm::Connect) => c.cgroup_id == id,
                        _ => false,
                    };
                    if hit {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
            // The reader and consumer threads live in this process, which does nothing else
            // meanwhile (the listener is a process of its own).
            let self_before = rusage_secs(libc::RUSAGE_SELF);
            (run.secs, run.storm_cpu) = timed(cmd).await?;
            let deadline = Instant::now() + Duration::from_secs(10);
            while counted.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            run.tracer_cpu = rusage_secs(libc::RUSAGE_SELF) - self_before;
            run.lost = sensor.stop().await?.dropped;
            consumer.await?;
            run.seen = Some(counted.load(Ordering::Relaxed));
        }
        Setup::Auditd => {
            let lost_before = audit_lost()?;
            let started = guardlab_host::unix_time_ns() as f64 / 1e9;
            let daemons: Vec<u32> = ["auditd", "kauditd"]
                .iter()
                .filter_map(|c| pid_of_comm(c))
                .collect();
            let daemons_cpu = || daemons.iter().map(|p| proc_cpu_secs(*p)).sum::<f64>();
            let cpu_before = daemons_cpu();
            auditctl(&audit_rule("-a"))?;
            let result = timed(cmd).await;
            auditctl(&audit_rule("-d"))?;
            (run.secs, run.storm_cpu) = result?;
            if storm == Storm::Exec {
                run.seen = Some(count_audit_records(started, expected));
            }
            run.tracer_cpu = daemons_cpu() - cpu_before;
            run.lost = audit_lost()?.saturating_sub(lost_before);
        }
        Setup::Bpftrace => {
            let mut tracer = Bpftrace::start()?;
            let pid = tracer.child.id();
            let cpu_before = proc_cpu_secs(pid);
            let result = timed(cmd).await;
            std::thread::sleep(Duration::from_millis(500)); // let it print what it has
            run.tracer_cpu = proc_cpu_secs(pid) - cpu_before;
            let (seen, lost) = tracer.finish()?;
            (run.secs, run.storm_cpu) = result?;
            if storm == Storm::Exec {
                run.seen = Some(seen);
            }
            run.lost = lost;
        }
    }
    Ok(run)
}

/// The auditctl arguments adding (`-a`) or deleting (`-d`) the benchmark's execve rule.
fn audit_rule(op: &str) -> Vec<&str> {
    vec![
        op,
        "always,exit",
        "-F",
        "arch=b64",
        "-S",
        "execve",
        "-S",
        "execveat",
        "-k",
        AUDIT_KEY,
    ]
}

fn auditctl(args: &[&str]) -> Result<()> {
    let out = Command::new("auditctl").args(args).output()?;
    if !out.status.success() {
        bail!(
            "auditctl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn audit_lost() -> Result<u64> {
    let out = Command::new("auditctl").arg("-s").output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("lost ").and_then(|v| v.trim().parse().ok()))
        .context("auditctl -s printed no `lost` line")
}

/// SYSCALL records with our key written to the log since `from` (waits for auditd to catch up).
fn count_audit_records(since_epoch_secs: f64, expected: u64) -> u64 {
    let needle = format!("key=\"{AUDIT_KEY}\"");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // auditd rotates its log every 8 MB (Debian's config): read every generation and keep
        // the records stamped after the storm started.
        let mut n = 0u64;
        let dir = Path::new(AUDIT_LOG).parent().unwrap_or(Path::new("/"));
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if !entry.file_name().to_string_lossy().starts_with("audit.log") {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(entry.path()) else {
                continue;
            };
            // The rule is host-wide: count only the storm's own execs.
            n += text
                .lines()
                .filter(|l| l.starts_with("type=SYSCALL") && l.contains(&needle))
                .filter(|l| {
                    l.contains("exe=\"/usr/bin/true\"") || l.contains("guardlab-sensor-probe")
                })
                .filter(|l| audit_time(l).is_some_and(|t| t >= since_epoch_secs))
                .count() as u64;
        }
        if n >= expected || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The time in `msg=audit(1795860822.891:8057)`.
fn audit_time(line: &str) -> Option<f64> {
    let rest = line.split_once("msg=audit(")?.1;
    rest.split_once(':')?.0.parse().ok()
}

/// auditd running for the benchmark; stopped again at the end if the benchmark started it.
struct AuditDaemon {
    /// The daemon this benchmark started (none when one was already running).
    started: Option<ProcStat>,
    /// Kernel audit settings before the benchmark changed them: (backlog_limit, backlog_wait_time).
    restore: Option<(String, String)>,
}

impl AuditDaemon {
    fn ensure_running() -> Result<AuditDaemon> {
        let pid = || -> Option<u32> {
            let out = Command::new("auditctl").arg("-s").output().ok()?;
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .find_map(|l| l.strip_prefix("pid ")?.trim().parse().ok())
                .filter(|p| *p != 0)
        };
        if pid().is_some() {
            return Ok(AuditDaemon {
                started: None,
                restore: None,
            });
        }
        std::fs::create_dir_all("/var/log/audit")?;
        let status = Command::new("auditd").status().context("starting auditd")?;
        if !status.success() {
            bail!("auditd failed to start ({status})");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(p) = pid() {
                // What Debian's service start loads from /etc/audit/rules.d (without its -D,
                // which would delete everyone's rules): a backlog fit for a busy host.
                let status = Command::new("auditctl").arg("-s").output()?;
                let text = String::from_utf8_lossy(&status.stdout).into_owned();
                let get = |k: &str| {
                    text.lines()
                        .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
                        .unwrap_or_default()
                };
                let restore = (get("backlog_limit "), get("backlog_wait_time "));
                auditctl(&["-b", "8192", "--backlog_wait_time", "60000"])?;
                eprintln!(
                    "started auditd (pid {p}) for the benchmark, backlog 8192 as Debian's rules set it"
                );
                return Ok(AuditDaemon {
                    started: ProcStat::read(p),
                    restore: Some(restore),
                });
            }
            if Instant::now() > deadline {
                bail!("auditd did not register with the kernel within 10 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for AuditDaemon {
    fn drop(&mut self) {
        if let Some(daemon) = &self.started {
            // Only the daemon this benchmark started, not a process that took its pid since.
            let _ = guardlab_host::process::signal_if_same(
                daemon.pid,
                daemon.start_ticks,
                libc::SIGTERM,
            );
        }
        if let Some((limit, wait)) = &self.restore
            && !limit.is_empty()
            && !wait.is_empty()
        {
            let _ = auditctl(&["-b", limit, "--backlog_wait_time", wait]);
        }
    }
}

/// Runs `command` in a mount namespace of its own, private (nothing reaches the host), with
/// tracefs at /sys/kernel/tracing and debugfs at /sys/kernel/debug. bpftrace (0.17) finds
/// tracepoints through tracefs, which a fresh host does not mount; guardlab's sensor needs
/// neither, and the host is left as it was.
fn with_tracefs_of_its_own(command: &mut Command) {
    let c = |s: &str| std::ffi::CString::new(s).expect("no NUL in a constant");
    let (root, tracing, debug, tracefs, debugfs) = (
        c("/"),
        c("/sys/kernel/tracing"),
        c("/sys/kernel/debug"),
        c("tracefs"),
        c("debugfs"),
    );
    let run = move || -> std::io::Result<()> {
        let check = |rc: i32| {
            if rc == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        };
        // SAFETY: system calls with C strings made before the fork; no allocation here.
        unsafe {
            check(libc::unshare(libc::CLONE_NEWNS))?;
            check(libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            check(libc::mount(
                tracefs.as_ptr(),
                tracing.as_ptr(),
                tracefs.as_ptr(),
                0,
                std::ptr::null(),
            ))?;
            check(libc::mount(
                debugfs.as_ptr(),
                debug.as_ptr(),
                debugfs.as_ptr(),
                0,
                std::ptr::null(),
            ))
        }
    };
    // SAFETY: `run` only makes system calls between fork and exec.
    unsafe { command.pre_exec(run) };
}

/// bpftrace printing every exec, its output counted on a thread.
struct Bpftrace {
    child: Child,
    counter: std::thread::JoinHandle<(u64, u64)>,
}

impl Bpftrace {
    fn start() -> Result<Bpftrace> {
        let mut command = Command::new("bpftrace");
        command
            .args(["-e", r#"tracepoint:sched:sched_process_exec { printf("%d %s\n", pid, str(args->filename)); }"#])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        with_tracefs_of_its_own(&mut command);
        let mut child = command.spawn().context(
            "starting bpftrace (in a mount namespace of its own, with tracefs and debugfs mounted)",
        )?;
        let mut lines = BufReader::new(child.stdout.take().context("bpftrace stdout")?).lines();
        // Attached once it says so.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match lines.next() {
                Some(Ok(l)) if l.starts_with("Attaching") => break,
                Some(Ok(_)) => {}
                _ => bail!("bpftrace exited before attaching"),
            }
            if Instant::now() > deadline {
                bail!("bpftrace did not attach within 60 s");
            }
        }
        // bpftrace prints "Lost N events" in its output when its perf buffer overflows.
        let counter = std::thread::spawn(move || {
            let (mut seen, mut lost) = (0u64, 0u64);
            for line in lines.map_while(Result::ok) {
                if line.ends_with(" /bin/true") || line.ends_with("guardlab-sensor-probe") {
                    seen += 1;
                } else if let Some(rest) = line.strip_prefix("Lost ") {
                    lost += rest
                        .split_whitespace()
                        .next()
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0);
                }
            }
            (seen, lost)
        });
        Ok(Bpftrace { child, counter })
    }

    fn finish(&mut self) -> Result<(u64, u64)> {
        // Our own child, not yet reaped: its pid names it.
        let _ = guardlab_host::process::signal(self.child.id(), libc::SIGINT);
        self.child.wait()?;
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        let counter = std::mem::replace(&mut self.counter, std::thread::spawn(|| (0, 0)));
        let (seen, mut lost) = counter
            .join()
            .map_err(|_| anyhow::anyhow!("bpftrace reader panicked"))?;
        for l in err.lines() {
            if let Some(rest) = l.trim().strip_prefix("Lost ") {
                lost += rest
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
            }
        }
        Ok((seen, lost))
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn print_table(runs: &[Run], args: &Args) {
    println!();
    println!(
        "sensor overhead: {} rounds, exec storm = {} x fork+exec of /bin/true, connect storm = {} x loopback TCP connect",
        args.rounds, args.execs, args.connects
    );
    println!(
        "{:<8} {:<9} {:>8} {:>7} {:>9} {:>10} {:>7} {:>14} {:>6}",
        "storm",
        "setup",
        "wall s",
        "wall x",
        "storm cpu",
        "tracer cpu",
        "cpu x",
        "seen/expected",
        "lost"
    );
    for storm in [Storm::Exec, Storm::Connect] {
        let of = |setup: Setup| -> Vec<&Run> {
            runs.iter()
                .filter(|r| r.storm == storm && r.setup == setup)
                .collect()
        };
        let base = of(Setup::None);
        let base_wall = median(base.iter().map(|r| r.secs).collect());
        let base_cpu = median(base.iter().map(|r| r.storm_cpu).collect());
        for setup in args.setups.iter().copied() {
            let these = of(setup);
            let wall = median(these.iter().map(|r| r.secs).collect());
            let storm_cpu = median(these.iter().map(|r| r.storm_cpu).collect());
            let tracer_cpu = median(these.iter().map(|r| r.tracer_cpu).collect());
            let seen = match (
                these.iter().map(|r| r.seen).collect::<Option<Vec<u64>>>(),
                these.first(),
            ) {
                (Some(s), Some(first)) => {
                    format!("{}/{}", s.iter().min().unwrap_or(&0), first.expected)
                }
                _ => "not traced".into(),
            };
            let lost: u64 = these.iter().map(|r| r.lost).sum();
            println!(
                "{:<8} {:<9} {:>8.3} {:>7.3} {:>9.3} {:>10.3} {:>7.3} {:>14} {:>6}",
                format!("{storm:?}").to_lowercase(),
                setup.name(),
                wall,
                wall / base_wall,
                storm_cpu,
                tracer_cpu,
                (storm_cpu + tracer_cpu) / base_cpu,
                seen,
                lost
            );
        }
    }
    println!(
        "wall x = median wall time / median with no tracer; cpu x = (storm + tracer CPU) / storm CPU with no tracer\n\
         (medians; a busy machine disturbs CPU time less than wall time); seen = fewest events delivered in one\n\
         round; lost = summed over rounds (guardlab: kernel drop counters; auditd: `auditctl -s` lost; bpftrace:\n\
         its `Lost N events` lines)."
    );
}
