//! guardlab-sensor-probe: the small client the sensor's tests and benchmark run inside test
//! cgroups, so that what the sensor sees is a real process doing real syscalls.
//!
//! Results go to stdout as one line (`ok ...` or `err errno=N ...`); the exit status is 0 for
//! `ok` and 1 for `err` (`spin-exit` and `threads` exit with the status they are given).
#![allow(unsafe_code)] // the probe's memfd exec and socket options, which the tests need raw

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Command, ExitCode, Stdio};
use std::str::FromStr;
use std::time::Duration;

use clap::{Parser, Subcommand};
use hickory_proto::op::{Message, MessageType, Query};
use hickory_proto::rr::{Name, RData, RecordType};

#[derive(Parser)]
#[command(
    about = "A tiny client for guardlab-sensor's tests and benchmark (connects, DNS, markers, storms)",
    after_help = "Example:\n  guardlab-sensor-probe connect 127.0.0.1:8080\n  guardlab-sensor-probe dns 127.0.0.53:53 example.test"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create (or truncate) FILE: the first thing the process does.
    Touch { file: String },
    /// Open a TCP connection to ADDR and close it.
    Connect { addr: SocketAddr },
    /// Send one UDP datagram to ADDR from an unconnected socket (sendto).
    Udp { addr: SocketAddr },
    /// Ask SERVER (ip:port) for NAME's A record over UDP and print the addresses.
    Dns { server: SocketAddr, name: String },
    /// Listen on ADDR (port 0 picks one), print `ok listening PORT`, accept one connection,
    /// print `ok accepted PEER`.
    Listen { addr: SocketAddr },
    /// Listen on ADDR, print `ok listening PORT`, then accept and close connections until
    /// killed.
    Serve { addr: SocketAddr },
    /// Start N threads that each sleep briefly, then exit with status CODE.
    Threads { n: usize, code: u8 },
    /// Start N threads that spin, then exit the process (exit_group) with status CODE while
    /// they run: all threads exit at once.
    SpinExit { n: usize, code: u8 },
    /// Copy this program into a memfd named NAME and exec it from there (fileless execution)
    /// with ARGS, e.g. `memfd-exec guardlab-fileless touch /tmp/marker`.
    MemfdExec {
        name: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Send one UDP datagram to ADDR per line read from stdin, always from the same socket,
    /// printing `ok sent` or `err ...` for each.
    UdpLines { addr: SocketAddr },
    /// Run PROGRAM with ARGS N times, one after the other (fork + exec + wait).
    ExecStorm {
        n: usize,
        program: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Open and close N TCP connections to ADDR, one after the other.
    ConnectStorm { n: usize, addr: SocketAddr },
    /// N times: ask SERVER for the A record of `q<i>.DOMAIN`, then connect to the first
    /// address on PORT at once; print `ok resolved N refused K failed F` (K: connects that got
    /// EPERM, F: other failures).
    DnsConnect {
        n: usize,
        server: SocketAddr,
        domain: String,
        port: u16,
    },
}

fn errno_line(what: &str, e: &std::io::Error) -> ExitCode {
    println!("err errno={} {what}: {e}", e.raw_os_error().unwrap_or(0));
    ExitCode::FAILURE
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Touch { file } => match std::fs::File::create(&file) {
            Ok(_) => {
                println!("ok touched {file}");
                ExitCode::SUCCESS
            }
            Err(e) => errno_line("touch", &e),
        },
        Cmd::Connect { addr } => match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(s) => {
                println!(
                    "ok connected {}",
                    s.local_addr().map(|a| a.to_string()).unwrap_or_default()
                );
                ExitCode::SUCCESS
            }
            Err(e) => errno_line("connect", &e),
        },
        Cmd::Udp { addr } => {
            let bind: SocketAddr = if addr.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            }
            .parse()
            .unwrap();
            let sock = match UdpSocket::bind(bind) {
                Ok(s) => s,
                Err(e) => return errno_line("bind", &e),
            };
            match sock.send_to(b"guardlab", addr) {
                Ok(_) => {
                    println!("ok sent");
                    ExitCode::SUCCESS
                }
                Err(e) => errno_line("sendto", &e),
            }
        }
        Cmd::Dns { server, name } => dns(server, &name),
        Cmd::DnsConnect {
            n,
            server,
            domain,
            port,
        } => dns_connect(n, server, &domain, port),
        Cmd::Listen { addr } => {
            let listener = match TcpListener::bind(addr) {
                Ok(l) => l,
                Err(e) => return errno_line("listen", &e),
            };
            println!(
                "ok listening {}",
                listener.local_addr().map(|a| a.port()).unwrap_or(0)
            );
            let _ = std::io::stdout().flush();
            match listener.accept() {
                Ok((_, peer)) => {
                    println!("ok accepted {peer}");
                    ExitCode::SUCCESS
                }
                Err(e) => errno_line("accept", &e),
            }
        }
        Cmd::Serve { addr } => {
            let listener = match TcpListener::bind(addr) {
                Ok(l) => l,
                Err(e) => return errno_line("listen", &e),
            };
            // A deep accept queue (std asks for 128): a storm of connects must not find it
            // full while this process waits for a CPU, or SYNs are dropped and retried a
            // second later.
            // SAFETY: listen(2) again on a listening socket only changes its backlog.
            unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&listener), 4096) };
            println!(
                "ok listening {}",
                listener.local_addr().map(|a| a.port()).unwrap_or(0)
            );
            let _ = std::io::stdout().flush();
            for conn in listener.incoming() {
                drop(conn);
            }
            ExitCode::SUCCESS
        }
        Cmd::Threads { n, code } => {
            let handles: Vec<_> = (0..n)
                .map(|_| std::thread::spawn(|| std::thread::sleep(Duration::from_millis(20))))
                .collect();
            for h in handles {
                let _ = h.join();
            }
            println!("ok threads {n}");
            ExitCode::from(code)
        }
        Cmd::SpinExit { n, code } => spin_exit(n, code),
        Cmd::MemfdExec { name, args } => memfd_exec(&name, &args),
        Cmd::UdpLines { addr } => udp_lines(addr),
        Cmd::ExecStorm { n, program, args } => {
            for i in 0..n {
                match Command::new(&program)
                    .args(&args)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .status()
                {
                    Ok(s) if s.success() => {}
                    Ok(s) => {
                        println!("err errno=0 run {i} of {program}: {s}");
                        return ExitCode::FAILURE;
                    }
                    Err(e) => return errno_line("exec", &e),
                }
            }
            println!("ok ran {n}");
            ExitCode::SUCCESS
        }
        Cmd::ConnectStorm { n, addr } => {
            for _ in 0..n {
                match TcpStream::connect(addr) {
                    // Close with a reset: thousands of TIME_WAIT sockets would slow later
                    // connects down (port search) and skew the benchmark from run to run.
                    Ok(stream) => {
                        let linger = libc::linger {
                            l_onoff: 1,
                            l_linger: 0,
                        };
                        // SAFETY: a valid socket fd and a properly sized option value.
                        unsafe {
                            libc::setsockopt(
                                std::os::fd::AsRawFd::as_raw_fd(&stream),
                                libc::SOL_SOCKET,
                                libc::SO_LINGER,
                                (&linger as *const libc::linger).cast(),
                                std::mem::size_of::<libc::linger>() as libc::socklen_t,
                            );
                        }
                    }
                    Err(e) => return errno_line("connect", &e),
                }
            }
            println!("ok connected {n}");
            ExitCode::SUCCESS
        }
    }
}

fn spin_exit(n: usize, code: u8) -> ExitCode {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    static STARTED: AtomicUsize = AtomicUsize::new(0);
    static STOP: AtomicBool = AtomicBool::new(false);
    for _ in 0..n {
        std::thread::spawn(|| {
            STARTED.fetch_add(1, Ordering::SeqCst);
            while !STOP.load(Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        });
    }
    while STARTED.load(Ordering::SeqCst) < n {
        std::hint::spin_loop();
    }
    // exit_group while every thread runs: the kernel makes them all exit together.
    std::process::exit(i32::from(code))
}

fn memfd_exec(name: &str, args: &[String]) -> ExitCode {
    use std::ffi::CString;
    use std::os::fd::FromRawFd;
    let image = match std::fs::read("/proc/self/exe") {
        Ok(b) => b,
        Err(e) => return errno_line("read /proc/self/exe", &e),
    };
    let Ok(cname) = CString::new(name) else {
        println!("err errno=0 bad memfd name {name:?}");
        return ExitCode::FAILURE;
    };
    // SAFETY: a valid NUL-terminated name and no flags; the fd returned is ours.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), 0) };
    if fd < 0 {
        return errno_line("memfd_create", &std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by memfd_create and nothing else owns it.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    if let Err(e) = file.write_all(&image) {
        return errno_line("write memfd", &e);
    }
    let argv: Vec<CString> = std::iter::once(name.to_string())
        .chain(args.iter().cloned())
        .map(|a| CString::new(a).unwrap_or_default())
        .collect();
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let env: Vec<CString> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut kv = k.into_encoded_bytes();
            kv.push(b'=');
            kv.extend(v.into_encoded_bytes());
            CString::new(kv).ok()
        })
        .collect();
    let mut env_ptrs: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    env_ptrs.push(std::ptr::null());
    let _ = std::io::stdout().flush();
    // SAFETY: `fd` is an open memfd holding an ELF image; argv and envp are NULL-terminated
    // arrays of pointers to NUL-terminated strings that outlive the call (it only returns on
    // failure).
    unsafe { libc::fexecve(fd, argv_ptrs.as_ptr(), env_ptrs.as_ptr()) };
    errno_line("fexecve", &std::io::Error::last_os_error())
}

fn udp_lines(addr: SocketAddr) -> ExitCode {
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .unwrap();
    let sock = match UdpSocket::bind(bind) {
        Ok(s) => s,
        Err(e) => return errno_line("bind", &e),
    };
    let mut line = String::new();
    while std::io::stdin()
        .read_line(&mut line)
        .map(|n| n > 0)
        .unwrap_or(false)
    {
        match sock.send_to(b"guardlab", addr) {
            Ok(_) => println!("ok sent"),
            Err(e) => {
                errno_line("sendto", &e);
            }
        }
        let _ = std::io::stdout().flush();
        line.clear();
    }
    ExitCode::SUCCESS
}

fn dns_connect(n: usize, server: SocketAddr, domain: &str, port: u16) -> ExitCode {
    let (mut resolved, mut refused, mut failed) = (0, 0, 0);
    for i in 0..n {
        let addrs = match lookup(server, &format!("q{i}.{domain}")) {
            Ok(addrs) => addrs,
            Err(e) => {
                println!("err errno=0 lookup {i}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let Some(ip) = addrs.first() else {
            println!("err errno=0 lookup {i}: no address");
            return ExitCode::FAILURE;
        };
        resolved += 1;
        match TcpStream::connect((*ip, port)) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => refused += 1,
            Err(_) => failed += 1,
        }
    }
    println!("ok resolved {resolved} refused {refused} failed {failed}");
    ExitCode::SUCCESS
}

/// The A and AAAA addresses SERVER answers for NAME.
fn lookup(server: SocketAddr, name: &str) -> Result<Vec<std::net::IpAddr>, String> {
    let qname = Name::from_str(name).map_err(|e| e.to_string())?;
    let mut msg = Message::new();
    msg.set_id(0x4243)
        .set_message_type(MessageType::Query)
        .set_recursion_desired(true);
    msg.add_query(Query::query(qname, RecordType::A));
    let bytes = msg.to_vec().map_err(|e| e.to_string())?;
    let bind = if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let sock = UdpSocket::bind(bind).map_err(|e| e.to_string())?;
    let _ = sock.set_read_timeout(Some(Duration::from_secs(5)));
    sock.send_to(&bytes, server).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 1500];
    let (n, _) = sock.recv_from(&mut buf).map_err(|e| e.to_string())?;
    let answer = Message::from_vec(&buf[..n]).map_err(|e| e.to_string())?;
    Ok(answer
        .answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::A(a) => Some(std::net::IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(std::net::IpAddr::V6(a.0)),
            _ => None,
        })
        .collect())
}

fn dns(server: SocketAddr, name: &str) -> ExitCode {
    let Ok(qname) = Name::from_str(name) else {
        println!("err errno=0 bad name {name:?}");
        return ExitCode::FAILURE;
    };
    let mut msg = Message::new();
    msg.set_id(0x4242)
        .set_message_type(MessageType::Query)
        .set_recursion_desired(true);
    msg.add_query(Query::query(qname, RecordType::A));
    let bytes = msg.to_vec().expect("a one-question query encodes");
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .unwrap();
    let sock = match UdpSocket::bind(bind) {
        Ok(s) => s,
        Err(e) => return errno_line("bind", &e),
    };
    let _ = sock.set_read_timeout(Some(Duration::from_secs(5)));
    if let Err(e) = sock.send_to(&bytes, server) {
        return errno_line("sendto", &e);
    }
    let mut buf = [0u8; 1500];
    match sock.recv_from(&mut buf) {
        Ok((n, _)) => match Message::from_vec(&buf[..n]) {
            Ok(answer) => {
                let addrs: Vec<String> = answer
                    .answers()
                    .iter()
                    .filter_map(|r| match r.data() {
                        RData::A(a) => Some(a.0.to_string()),
                        RData::AAAA(a) => Some(a.0.to_string()),
                        _ => None,
                    })
                    .collect();
                println!("ok {}", addrs.join(" "));
                ExitCode::SUCCESS
            }
            Err(e) => {
                println!("err errno=0 bad answer: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => errno_line("recv", &e),
    }
}
