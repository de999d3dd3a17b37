//! The driver against a real Jupyter server on 127.0.0.1 (token off, as in the lab).
//!
//! The server runs from a virtualenv made once under the XDG cache dir with the host's python3
//! and pip (and so the host's pip configuration); every test starts its own server on a free
//! port, in a temporary home, and stops it (and its kernels and terminals) when it ends.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use guardlab_host::ProcStat;
use guardlab_jupyter::{JupyterClient, JupyterError, strip_ansi};
use sha2::{Digest, Sha256};

/// What the test server needs, as in the pod image's recipe.
const REQUIREMENTS: &[&str] = &[
    "jupyter-server>=2.14,<3",
    "ipykernel>=6.29,<7",
    "terminado>=0.18,<1",
];

const LONG: Duration = Duration::from_secs(60);

fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .expect("neither XDG_CACHE_HOME nor HOME is set")
        .join("guardlab")
}

/// The venv with Jupyter, made once (`.complete` marks a finished one; a venv cannot be moved,
/// so an unfinished one is removed and made again).
fn venv() -> &'static Path {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| {
        let hash = hex::encode(Sha256::digest(REQUIREMENTS.join("\n")));
        let dir = cache_dir().join(format!("jupyter-test-venv-{}", &hash[..12]));
        std::fs::create_dir_all(cache_dir()).unwrap();
        let lock = std::fs::File::create(
            cache_dir().join(format!(".jupyter-test-venv-{}.lock", &hash[..12])),
        )
        .unwrap();
        lock.lock().unwrap();
        if dir.join(".complete").is_file() {
            return dir;
        }
        let _ = std::fs::remove_dir_all(&dir);
        // A fresh machine may have no python3 or no venv module (Debian splits it out): get
        // them the way the lab gets its tools.
        use guardlab_host::catalog::{PYTHON3, VENV};
        guardlab_host::Host::new(false)
            .ensure(&[&PYTHON3, &VENV], &guardlab_host::StderrProgress)
            .unwrap_or_else(|e| {
                panic!("the Jupyter driver tests run a Jupyter server in a venv: {e}")
            });
        eprintln!("making the test venv {} (once)", dir.display());
        let status = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&dir)
            .status()
            .expect("python3 is needed for the Jupyter driver tests");
        assert!(status.success(), "python3 -m venv failed");
        let status = Command::new(dir.join("bin/python"))
            .args([
                "-m",
                "pip",
                "install",
                "--no-input",
                "--progress-bar",
                "off",
            ])
            .args(REQUIREMENTS)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "pip install {} failed (it uses the host's pip configuration)",
            REQUIREMENTS.join(" ")
        );
        std::fs::write(dir.join(".complete"), "").unwrap();
        dir
    })
}

/// A Jupyter server for one test; stopped with everything it started on drop.
struct Server {
    child: Child,
    port: u16,
    _home: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        let venv = venv();
        let home = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let h = home.path();
        let log = std::fs::File::create(h.join("server.log")).unwrap();
        let child = Command::new(venv.join("bin/jupyter"))
            .args([
                "server",
                "--ServerApp.ip=127.0.0.1",
                &format!("--ServerApp.port={port}"),
                "--ServerApp.port_retries=0",
                "--IdentityProvider.token=",
                "--ServerApp.password=",
                "--ServerApp.open_browser=False",
                // CI runs the tests as root; Jupyter refuses root without it.
                "--allow-root",
            ])
            .arg(format!("--ServerApp.root_dir={}", h.display()))
            .current_dir(h)
            .env_clear()
            .env("HOME", h)
            .env(
                "PATH",
                format!(
                    "{}:/usr/local/bin:/usr/bin:/bin",
                    venv.join("bin").display()
                ),
            )
            .env("SHELL", "/bin/bash")
            .env("LANG", "C.UTF-8")
            .env("JUPYTER_CONFIG_DIR", h.join("config"))
            .env("JUPYTER_DATA_DIR", h.join("data"))
            .env("JUPYTER_RUNTIME_DIR", h.join("runtime"))
            .env("IPYTHONDIR", h.join("ipython"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Server {
            child,
            port,
            _home: home,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    async fn client(&self) -> JupyterClient {
        let c = JupyterClient::new(&self.url()).unwrap();
        if let Err(e) = c.wait_until_up(LONG).await {
            let log =
                std::fs::read_to_string(self._home.path().join("server.log")).unwrap_or_default();
            panic!("{e}\nserver log:\n{log}");
        }
        c
    }
}

/// Every process below `pid` (kernels and terminal shells start their own sessions, so a
/// process group would not reach them), with its start time.
fn descendants(pid: u32) -> Vec<ProcStat> {
    let all: Vec<ProcStat> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter_map(ProcStat::read)
        .collect();
    let mut found = vec![pid];
    let mut below = Vec::new();
    let mut i = 0;
    while i < found.len() {
        let cur = found[i];
        for p in all.iter().filter(|p| p.ppid == cur) {
            found.push(p.pid);
            below.push(p.clone());
        }
        i += 1;
    }
    below
}

impl Drop for Server {
    fn drop(&mut self) {
        let pid = self.child.id();
        let below = descendants(pid);
        // Our own child, not yet reaped: its pid cannot name another process.
        let _ = guardlab_host::process::signal(pid, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && self.child.try_wait().ok().flatten().is_none() {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for p in below {
            // Only the very process seen above: its pid may have been reused since it exited.
            let _ = guardlab_host::process::signal_if_same(p.pid, p.start_ticks, libc::SIGKILL);
        }
    }
}

#[tokio::test]
async fn cells_print_raise_and_return_values() {
    let server = Server::start();
    let jupyter = server.client().await;
    let status = jupyter.status().await.unwrap();
    assert!(!status.started.is_empty(), "{status:?}");

    let mut kernel = jupyter.start_kernel().await.unwrap();
    let hello = kernel
        .run_cell("print(\"Hello world!\")", LONG)
        .await
        .unwrap();
    assert_eq!(hello.stdout, "Hello world!\n");
    assert_eq!(hello.stderr, "");
    assert_eq!(hello.error, None);
    assert_eq!(hello.status, "ok");
    assert_eq!(hello.execution_count, Some(1));

    let boom = kernel.run_cell("1 / 0", LONG).await.unwrap();
    assert_eq!(boom.status, "error");
    let error = boom.error.expect("an error");
    assert_eq!(error.ename, "ZeroDivisionError");
    assert!(
        error.evalue.contains("division by zero"),
        "{}",
        error.evalue
    );
    assert!(
        strip_ansi(&error.traceback.join("\n")).contains("1 / 0"),
        "{:?}",
        error.traceback
    );

    let value = kernel
        .run_cell(
            "import sys\nprint('to stderr', file=sys.stderr)\nx = 6 * 7\nx",
            LONG,
        )
        .await
        .unwrap();
    assert_eq!(value.result.as_deref(), Some("42"));
    assert_eq!(value.stderr, "to stderr\n");
    assert_eq!(value.execution_count, Some(3));

    // A shell escape, as the baseline's `!pip install ...` cell: its output is the cell's stdout.
    let shell = kernel.run_cell("!echo from-a-shell", LONG).await.unwrap();
    assert_eq!(shell.stdout.trim(), "from-a-shell");

    let id = kernel.id().to_string();
    assert!(jupyter.kernel_ids().await.unwrap().contains(&id));
    kernel.close().await.unwrap();
    assert!(!jupyter.kernel_ids().await.unwrap().contains(&id));
}

#[tokio::test]
async fn a_cell_that_runs_too_long_times_out_and_can_be_interrupted() {
    let server = Server::start();
    let jupyter = server.client().await;
    let mut kernel = jupyter.start_kernel().await.unwrap();
    let started = Instant::now();
    let err = kernel
        .run_cell(
            "import time\nprint('started', flush=True)\ntime.sleep(60)",
            Duration::from_secs(2),
        )
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(30));
    let text = err.to_string();
    assert!(matches!(err, JupyterError::Timeout { .. }), "{text}");
    assert!(text.contains("notebook cell `import time...`"), "{text}");
    assert!(
        text.contains("started"),
        "the partial output is in the message: {text}"
    );
    let interrupted = kernel
        .interrupt(LONG)
        .await
        .unwrap()
        .expect("the timed-out cell");
    assert_eq!(
        interrupted.error.map(|e| e.ename).as_deref(),
        Some("KeyboardInterrupt")
    );
    assert_eq!(interrupted.stdout, "started\n");
    let after = kernel.run_cell("print('after')", LONG).await.unwrap();
    assert_eq!(after.stdout, "after\n");
    kernel.close().await.unwrap();
}

#[tokio::test]
async fn terminal_commands_give_their_own_output_and_exit_status() {
    let server = Server::start();
    let jupyter = server.client().await;
    let mut terminal = jupyter.open_terminal().await.unwrap();

    let hi = terminal.run("echo hi", LONG).await.unwrap();
    assert_eq!(hi.output, "hi\n");
    assert_eq!(hi.exit_status, 0);

    let f = terminal.run("false", LONG).await.unwrap();
    assert_eq!((f.output.as_str(), f.exit_status), ("", 1));

    // Two in a row, each with its own output.
    let one = terminal.run("echo one", LONG).await.unwrap();
    let two = terminal.run("echo two", LONG).await.unwrap();
    assert_eq!(
        (one.output.as_str(), two.output.as_str()),
        ("one\n", "two\n")
    );

    // No newline at the end, an error on stderr, colours, several lines.
    assert_eq!(
        terminal.run("printf abc", LONG).await.unwrap().output,
        "abc"
    );
    let ls = terminal
        .run("ls /guardlab-nonexistent", LONG)
        .await
        .unwrap();
    assert_eq!(ls.exit_status, 2);
    assert!(
        ls.output.contains("No such file or directory"),
        "{:?}",
        ls.output
    );
    let colour = terminal
        .run("printf '\\033[31mred\\033[0m\\n'", LONG)
        .await
        .unwrap();
    assert_eq!(colour.output, "red\n");
    let multi = terminal
        .run("for i in 1 2 3; do\necho line $i\ndone", LONG)
        .await
        .unwrap();
    assert_eq!(multi.output, "line 1\nline 2\nline 3\n");
    let status = terminal.run("(exit 7)", LONG).await.unwrap();
    assert_eq!(status.exit_status, 7);

    let name = terminal.name().to_string();
    assert!(jupyter.terminal_names().await.unwrap().contains(&name));
    terminal.close().await.unwrap();
    assert!(!jupyter.terminal_names().await.unwrap().contains(&name));
}

#[tokio::test]
async fn a_command_that_runs_too_long_times_out_until_interrupted() {
    let server = Server::start();
    let jupyter = server.client().await;
    let mut terminal = jupyter.open_terminal().await.unwrap();
    let started = Instant::now();
    let err = terminal
        .run("echo sleeping; sleep 60", Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(30));
    let text = err.to_string();
    assert!(matches!(err, JupyterError::Timeout { .. }), "{text}");
    assert!(
        text.contains("the end of `echo sleeping; sleep 60` in terminal"),
        "{text}"
    );
    assert!(text.contains("sleeping"), "{text}");
    // The terminal says it is busy rather than mixing the next command with this one.
    let busy = terminal.run("echo next", LONG).await.unwrap_err();
    assert!(busy.to_string().contains("still running"), "{busy}");
    let interrupted = terminal.interrupt(LONG).await.unwrap();
    assert_eq!(interrupted.exit_status, 130);
    assert_eq!(
        terminal.run("echo back", LONG).await.unwrap().output,
        "back\n"
    );
    terminal.close().await.unwrap();
}

#[tokio::test]
async fn a_prompt_in_a_command_can_be_answered() {
    let server = Server::start();
    let jupyter = server.client().await;
    let mut terminal = jupyter.open_terminal().await.unwrap();
    let out = terminal
        .run_answering(
            "read -p 'Name? ' name; echo \"hello $name\"",
            &[("Name? ", "bob\r")],
            LONG,
        )
        .await
        .unwrap();
    assert!(out.output.ends_with("hello bob\n"), "{:?}", out.output);
    // Ctrl-C at a prompt ends the command, as at sudo's password prompt.
    let out = terminal
        .run_answering(
            "read -p 'Password: ' secret",
            &[("Password: ", "\u{3}")],
            LONG,
        )
        .await
        .unwrap();
    assert_eq!(out.exit_status, 130);
    terminal.close().await.unwrap();
}

/// Jupyter refuses a state-changing request without the XSRF cookie and header; the client
/// sends them.
#[tokio::test]
async fn posts_without_xsrf_are_refused_and_the_client_sends_it() {
    let server = Server::start();
    let jupyter = server.client().await;
    let mut s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    let body = "{\"name\": \"python3\"}";
    write!(
        s,
        "POST /api/kernels HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        server.port,
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("_xsrf"), "{answer}");
    assert!(jupyter.kernel_ids().await.unwrap().is_empty());
    let kernel = jupyter.start_kernel().await.unwrap();
    assert_eq!(
        jupyter.kernel_ids().await.unwrap(),
        vec![kernel.id().to_string()]
    );
    kernel.close().await.unwrap();
}

#[tokio::test]
async fn an_unreachable_server_is_a_clear_error() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let jupyter = JupyterClient::new(&format!("http://127.0.0.1:{port}/")).unwrap();
    let err = jupyter.status().await.unwrap_err().to_string();
    assert!(
        err.contains(&format!("GET http://127.0.0.1:{port}/api/status")),
        "{err}"
    );
    let err = jupyter
        .wait_until_up(Duration::from_millis(600))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("timed out after"), "{err}");
}
