//! The start gate's program and what it says, as plain values: the Python program the
//! notebook's container runs first, the `args` that put it in front of the notebook's own, and
//! the line its log shows while it waits. No I/O here: the manifests rewrite the Deployment
//! with it, the fake API server of the tests plays a kubelet with it, and [`crate::gate`] (the
//! cluster side: reading the log, opening the gate) reads the log with it. Why there is a gate
//! and the order `up` keeps are in [`crate::gate`].

use k8s_openapi::api::core::v1::Pod;

/// The gate's port on the pod's loopback (next to the notebook's 8888; in no Service).
pub const GATE_PORT: u16 = 8887;

/// How much of a container's log is read to find the gate's line: the gate prints it after
/// start.sh's few lines, so a longer log belongs to a notebook that is past its gate.
pub const LOG_LIMIT: i64 = 64 * 1024;

/// What the gate's line says before its pid.
pub fn gate_waiting_prefix(port: u16) -> String {
    format!("guardlab start gate: waiting on 127.0.0.1:{port} as pid ")
}

/// The line the gate prints once it listens on `port`: with its pid inside its container
/// (`pid`), the pid its exec will have in the sensor's events (`ns_pid`).
pub fn gate_waiting_line(port: u16, pid: u32) -> String {
    format!("{}{pid}", gate_waiting_prefix(port))
}

/// The pid in a line of the gate's, when `line` is one.
fn waiting_pid(line: &str, port: u16) -> Option<u32> {
    let pid = line.strip_prefix(&gate_waiting_prefix(port))?;
    pid.bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| pid.parse().ok())
        .flatten()
}

/// The gate, a Python program for `python3 -c` (on the image's PATH). Its own arguments
/// (`sys.argv[1:]`) are the command it becomes.
pub fn gate_program(port: u16) -> String {
    format!(
        "import os,socket,sys;s=socket.create_server(('127.0.0.1',{port}));\
         print('{}%d'%os.getpid(),flush=True);c,_=s.accept();c.close();s.close();\
         os.execvp(sys.argv[1],sys.argv[1:])",
        gate_waiting_prefix(port)
    )
}

/// The notebook container's args behind the gate: `python3 -c GATE <original args...>`.
pub fn gate_args(original: &[String]) -> Vec<String> {
    let mut args = vec![
        "python3".to_string(),
        "-c".to_string(),
        gate_program(GATE_PORT),
    ];
    args.extend(original.iter().cloned());
    args
}

/// The original args, when `args` are the gate's.
pub fn gated_command(args: &[String]) -> Option<&[String]> {
    match args {
        [python, c, program, rest @ ..]
            if python == "python3" && c == "-c" && *program == gate_program(GATE_PORT) =>
        {
            Some(rest)
        }
        _ => None,
    }
}

/// Whether the pod's notebook container (its first) starts behind the gate.
pub fn is_gated(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.args.as_deref())
        .is_some_and(|args| gated_command(args).is_some())
}

/// Where a notebook container is with its gate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GateState {
    /// The container does not run yet, or its gate does not listen yet: why.
    Starting(String),
    /// The gate listens and nobody has opened it. `pid`: the gate's pid inside its container,
    /// as it announced it (its exec to the notebook has that `ns_pid`).
    Waiting { pid: u32 },
    /// The gate was opened (or the pod has none): the notebook runs.
    Open,
}

/// What the container's log (its first [`LOG_LIMIT`] bytes) says of the gate.
pub fn state_from_log(log: &str, truncated: bool) -> GateState {
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect();
    match lines
        .iter()
        .enumerate()
        .find_map(|(i, l)| Some((i, waiting_pid(l, GATE_PORT)?)))
    {
        Some((i, pid)) if i + 1 == lines.len() && !truncated => GateState::Waiting { pid },
        Some(_) => GateState::Open,
        None if truncated => GateState::Open,
        None => GateState::Starting(format!(
            "its start gate does not listen yet (no `{}<pid>` line in its log)",
            gate_waiting_prefix(GATE_PORT)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read};
    use std::process::{Command, Stdio};
    use std::time::Duration;

    #[test]
    fn the_gate_args_keep_the_original_args_after_the_program() {
        let original: Vec<String> = ["start-notebook.py", "--IdentityProvider.token="]
            .map(String::from)
            .to_vec();
        let args = gate_args(&original);
        assert_eq!(args[..2], ["python3", "-c"]);
        assert_eq!(args[2], gate_program(GATE_PORT));
        assert!(args[2].contains("('127.0.0.1',8887)"), "{}", args[2]);
        assert_eq!(gated_command(&args), Some(&original[..]));
        assert_eq!(gated_command(&original), None);
        let mut other = args.clone();
        other[2] = gate_program(9999);
        assert_eq!(
            gated_command(&other),
            None,
            "another program is not the gate"
        );
    }

    #[test]
    fn the_log_says_where_the_gate_is() {
        let line = gate_waiting_line(GATE_PORT, 7);
        assert_eq!(
            line,
            "guardlab start gate: waiting on 127.0.0.1:8887 as pid 7"
        );
        // start.sh echoes its args (the program, with the line inside it) before the gate runs.
        let echo = format!(
            "Entered start.sh with args: python3 -c {}",
            gate_program(GATE_PORT)
        );
        assert!(matches!(
            state_from_log(&format!("{echo}\n"), false),
            GateState::Starting(_)
        ));
        assert_eq!(
            state_from_log(&format!("{echo}\n{line}\n"), false),
            GateState::Waiting { pid: 7 }
        );
        assert_eq!(
            state_from_log(&format!("{echo}\n{line}\n\n"), false),
            GateState::Waiting { pid: 7 }
        );
        // A line without a pid (or with something else) is not the gate's.
        for other in [
            "guardlab start gate: waiting on 127.0.0.1:8887",
            "guardlab start gate: waiting on 127.0.0.1:8887 as pid ",
            "guardlab start gate: waiting on 127.0.0.1:8887 as pid 7x",
            "guardlab start gate: waiting on 127.0.0.1:8887 as pid -7",
        ] {
            assert!(
                matches!(
                    state_from_log(&format!("{echo}\n{other}\n"), false),
                    GateState::Starting(_)
                ),
                "{other}"
            );
        }
        assert_eq!(
            state_from_log(
                &format!("{echo}\n{line}\nEntered start.sh with args: jupyter lab\n"),
                false
            ),
            GateState::Open
        );
        assert_eq!(
            state_from_log(&format!("{echo}\n{line}\n"), true),
            GateState::Open
        );
        assert_eq!(state_from_log("x\n", true), GateState::Open);
    }

    /// The real gate program, run by the machine's python3 on a free loopback port: it waits
    /// (printing its line once it listens), accepts one connection, then becomes the command
    /// it was given, in the same process.
    #[test]
    fn the_gate_program_waits_for_one_connection_then_becomes_the_command() {
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        guardlab_host::Host::new(false)
            .ensure(
                &[&guardlab_host::catalog::PYTHON3],
                &guardlab_host::StderrProgress,
            )
            .unwrap_or_else(|e| panic!("this test runs the gate program with python3: {e}"));
        let mut child = Command::new("python3")
            .args(["-c", &gate_program(port), "sh", "-c", "echo started $$"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 must be installed for this test (apt-get install python3)");
        let pid = child.id();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim_end(), gate_waiting_line(port, pid));

        // It waits: still running, nothing more said.
        std::thread::sleep(Duration::from_millis(300));
        assert!(child.try_wait().unwrap().is_none(), "the gate must wait");

        // One connection: accepted, then closed by the gate.
        let mut connection = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        connection
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut rest = Vec::new();
        connection.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "the gate sends nothing");

        // Then it is the command, with the same pid.
        let mut after = String::new();
        stdout.read_to_string(&mut after).unwrap();
        assert_eq!(after.trim_end(), format!("started {pid}"));
        let status = child.wait().unwrap();
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        assert!(status.success(), "{status}: {stderr}");
        assert!(stderr.is_empty(), "{stderr}");
        // Nothing listens on the gate's port any more.
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    }
}
