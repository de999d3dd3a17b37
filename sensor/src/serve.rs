//! `guardlab-sensor --serve ADDR` without `--cgroup`/`--all-containers`: the control protocol
//! of `guardlab_events::control` (what the kind backend speaks through a port-forward).
//!
//! One task per TCP connection parses the client's lines and forwards them as [`Command`]s to
//! the main loop, which owns the [`Sensor`] and the [`Control`] state: which connection wants
//! which containers, which cgroups are watched for them (shared, counted), and the processes
//! seen in them (for kills). The main loop routes each event to the connections that watch its
//! cgroup, so a connection only ever sees its own containers.
//!
//! Pids: events carry the kernel's init-namespace pids. The sensor's /proc may be another pid
//! namespace's (on kind, the node is a container and `hostPID` gives the node's namespace), so
//! a `kill` does not use the pid as is: the sensor looks up the start time and container pid
//! (`ns_pid`) it saw in that process's exec or fork event, and signals the process with both
//! among the pids its own view of the cgroup's `cgroup.procs` lists. Where both namespaces are
//! the same (this host, CI), that finds the same pid; a process never seen in a watched
//! container's events is refused. Everything after that (a tree's members, a process group's
//! id and members) is read in the sensor's own /proc, where all those numbers agree.
//! `tests/nested_pidns.rs` runs this in the kind layout: the sensor in a pid namespace of its
//! own, the containers in namespaces made inside it.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use guardlab_sensor::cgroup::{self, find_container_cgroups};
use guardlab_sensor::events::Lost;
use guardlab_sensor::events::control::{SensorReply, SensorRequest, WatchedContainer};
use guardlab_sensor::{ContainerInfo, Event, EventBody, Sensor};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

/// Lines buffered per connection before it counts as too slow (and is sent a `lost` event).
const CONNECTION_BUFFER: usize = 65536;

/// What a connection asks of the main loop.
pub enum Command {
    Subscribe {
        conn: u64,
        containers: Vec<WatchedContainer>,
        out: mpsc::Sender<String>,
    },
    Disconnect {
        conn: u64,
    },
    Kill {
        pid: u32,
        tree: bool,
        reply: oneshot::Sender<SensorReply>,
    },
    KillGroup {
        pid: u32,
        reply: oneshot::Sender<SensorReply>,
    },
}

/// Accepts connections until the listener fails; each one gets a task.
pub async fn accept(listener: TcpListener, commands: mpsc::Sender<Command>) -> std::io::Result<()> {
    let mut next = 0u64;
    loop {
        let (conn, peer) = listener.accept().await?;
        next += 1;
        let (id, commands) = (next, commands.clone());
        tokio::spawn(async move {
            if let Err(e) = connection(id, conn, &commands).await {
                eprintln!("guardlab-sensor: client {peer}: {e}");
            }
            let _ = commands.send(Command::Disconnect { conn: id }).await;
        });
    }
}

async fn write_reply(
    writer: &mut tokio::net::tcp::OwnedWriteHalf,
    reply: &SensorReply,
) -> std::io::Result<()> {
    let line = serde_json::to_string(reply).unwrap_or_default() + "\n";
    writer.write_all(line.as_bytes()).await?;
    writer.flush().await
}

fn parse_request(line: &str, number: usize) -> Result<SensorRequest, String> {
    serde_json::from_str(line).map_err(|e| {
        format!(
            "request line {number} is not a guardlab-sensor request ({{\"op\":\"subscribe\",...}}, {{\"op\":\"kill\",...}} or {{\"op\":\"kill_group\",...}}): {e}"
        )
    })
}

/// Hands a kill to the main loop and waits for its answer.
async fn ask(
    commands: &mpsc::Sender<Command>,
    command: impl FnOnce(oneshot::Sender<SensorReply>) -> Command,
) -> SensorReply {
    let (reply, answer) = oneshot::channel();
    let _ = commands.send(command(reply)).await;
    answer
        .await
        .unwrap_or_else(|_| SensorReply::error("the sensor is stopping"))
}

async fn connection(
    id: u64,
    conn: TcpStream,
    commands: &mpsc::Sender<Command>,
) -> std::io::Result<()> {
    let (reader, mut writer) = conn.into_split();
    let mut lines = BufReader::new(reader).lines();
    let mut number = 0;
    let first = loop {
        let Some(line) = lines.next_line().await? else {
            return Ok(());
        };
        number += 1;
        if !line.trim().is_empty() {
            break line;
        }
    };
    let containers = match parse_request(&first, number) {
        Ok(SensorRequest::Kill { pid, tree }) => {
            let reply = ask(commands, |reply| Command::Kill { pid, tree, reply }).await;
            return write_reply(&mut writer, &reply).await;
        }
        Ok(SensorRequest::KillGroup { pid }) => {
            let reply = ask(commands, |reply| Command::KillGroup { pid, reply }).await;
            return write_reply(&mut writer, &reply).await;
        }
        Ok(SensorRequest::Subscribe { containers }) => containers,
        Err(e) => return write_reply(&mut writer, &SensorReply::error(e)).await,
    };
    let (out, mut lines_out) = mpsc::channel::<String>(CONNECTION_BUFFER);
    let subscribe = |containers| Command::Subscribe {
        conn: id,
        containers,
        out: out.clone(),
    };
    if commands.send(subscribe(containers)).await.is_err() {
        return Ok(());
    }
    let mut writer = tokio::io::BufWriter::new(writer);
    loop {
        tokio::select! {
            line = lines.next_line() => {
                let Some(line) = line? else { return Ok(()) };
                number += 1;
                if line.trim().is_empty() {
                    continue;
                }
                match parse_request(&line, number) {
                    Ok(SensorRequest::Subscribe { containers }) => {
                        if commands.send(subscribe(containers)).await.is_err() {
                            return Ok(());
                        }
                    }
                    // Replies would interleave with events: kills use their own connection.
                    Ok(SensorRequest::Kill { .. } | SensorRequest::KillGroup { .. }) => {
                        return Err(std::io::Error::other(format!(
                            "request line {number}: a kill or kill_group must be the first line of its own connection, not sent on an event stream"
                        )));
                    }
                    Err(e) => return Err(std::io::Error::other(e)),
                }
            }
            line = lines_out.recv() => {
                let Some(line) = line else { break };
                writer.write_all(line.as_bytes()).await?;
                // Batch what is already waiting into one write.
                while let Ok(line) = lines_out.try_recv() {
                    writer.write_all(line.as_bytes()).await?;
                }
                writer.flush().await?;
            }
        }
    }
    writer.flush().await
}

/// One client that subscribed.
struct Connection {
    out: mpsc::Sender<String>,
    wanted: Vec<WatchedContainer>,
    /// Container id to cgroup id, for the wanted containers whose cgroup was found.
    resolved: HashMap<String, u64>,
    /// Lines it could not take (its buffer was full), reported with the next line it takes.
    lost: u64,
}

impl Connection {
    fn send(&mut self, line: &str, ts: u64) {
        if self.lost > 0 {
            let lost = Event::new(
                ts,
                EventBody::Lost(Lost {
                    count: self.lost,
                    cpu: None,
                }),
            );
            let lost = serde_json::to_string(&lost).unwrap_or_default() + "\n";
            if self.out.try_send(lost).is_err() {
                self.lost += 1;
                return;
            }
            self.lost = 0;
        }
        if self.out.try_send(line.to_string()).is_err() {
            self.lost += 1;
        }
    }

    fn watches(&self, cgroup_id: u64) -> bool {
        self.resolved.values().any(|&id| id == cgroup_id)
    }
}

/// A cgroup watched for one or more connections.
struct WatchedCgroup {
    path: PathBuf,
    users: usize,
}

/// A process seen in a watched cgroup, by its init-namespace pid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SeenProcess {
    start_ns: u64,
    ns_pid: u32,
    cgroup_id: u64,
}

/// The main loop's state for the control protocol.
pub struct Control {
    root: PathBuf,
    machine: String,
    connections: HashMap<u64, Connection>,
    cgroups: HashMap<u64, WatchedCgroup>,
    processes: HashMap<u32, SeenProcess>,
    /// Last error per container id that could not be watched (printed once).
    failed: HashMap<String, String>,
}

impl Control {
    pub fn new(root: PathBuf, machine: String) -> Self {
        Control {
            root,
            machine,
            connections: HashMap::new(),
            cgroups: HashMap::new(),
            processes: HashMap::new(),
            failed: HashMap::new(),
        }
    }

    /// Whether some subscribed container has no cgroup yet (its pod is still starting).
    pub fn pending(&self) -> bool {
        self.connections.values().any(|c| {
            c.wanted
                .iter()
                .any(|w| !c.resolved.contains_key(&w.container_id))
        })
    }

    pub fn handle(&mut self, command: Command, sensor: &mut Sensor) {
        match command {
            Command::Subscribe {
                conn,
                containers,
                out,
            } => {
                let connection = self.connections.entry(conn).or_insert(Connection {
                    out,
                    wanted: Vec::new(),
                    resolved: HashMap::new(),
                    lost: 0,
                });
                let keep: BTreeSet<&str> =
                    containers.iter().map(|c| c.container_id.as_str()).collect();
                let dropped: Vec<u64> = connection
                    .resolved
                    .iter()
                    .filter(|(id, _)| !keep.contains(id.as_str()))
                    .map(|(_, &cg)| cg)
                    .collect();
                connection
                    .resolved
                    .retain(|id, _| keep.contains(id.as_str()));
                connection.wanted = containers;
                for cg in dropped {
                    self.release(cg, sensor);
                }
                self.resolve(sensor);
            }
            Command::Disconnect { conn } => {
                if let Some(connection) = self.connections.remove(&conn) {
                    for cg in connection.resolved.into_values() {
                        self.release(cg, sensor);
                    }
                }
            }
            Command::Kill { pid, tree, reply } => {
                let answer = match self.kill(pid, tree) {
                    Ok(killed) => {
                        eprintln!(
                            "guardlab-sensor: killed pid {pid} (pids {killed:?} in this sensor's /proc)"
                        );
                        SensorReply::ok()
                    }
                    Err(e) => {
                        eprintln!("guardlab-sensor: refused to kill pid {pid}: {e}");
                        SensorReply::error(e)
                    }
                };
                let _ = reply.send(answer);
            }
            Command::KillGroup { pid, reply } => {
                let answer = match self.kill_group(pid) {
                    Ok((pgid, killed)) => {
                        eprintln!(
                            "guardlab-sensor: killed the process group of pid {pid} (group {pgid}, pids {killed:?} in this sensor's /proc)"
                        );
                        SensorReply::ok()
                    }
                    Err(e) => {
                        eprintln!(
                            "guardlab-sensor: refused to kill the process group of pid {pid}: {e}"
                        );
                        SensorReply::error(e)
                    }
                };
                let _ = reply.send(answer);
            }
        }
    }

    /// One connection less on `cgroup_id`; the last one unwatches it.
    fn release(&mut self, cgroup_id: u64, sensor: &mut Sensor) {
        let Some(watched) = self.cgroups.get_mut(&cgroup_id) else {
            return;
        };
        watched.users = watched.users.saturating_sub(1);
        if watched.users == 0 {
            let path = self.cgroups.remove(&cgroup_id).map(|w| w.path);
            let _ = sensor.unwatch(cgroup_id);
            self.processes.retain(|_, p| p.cgroup_id != cgroup_id);
            if let Some(path) = path {
                eprintln!(
                    "guardlab-sensor: no longer watching {} (cgroup {cgroup_id})",
                    path.display()
                );
            }
        }
    }

    /// Finds the cgroups of subscribed containers that have none yet, watches them, and sends
    /// each connection its `container` line before any other event of that cgroup.
    pub fn resolve(&mut self, sensor: &mut Sensor) {
        // Containers whose cgroup went away: their watch ends (the pod's replacement is a new
        // container, which the client subscribes to).
        let gone: Vec<u64> = self
            .cgroups
            .iter()
            .filter(|(_, w)| !w.path.exists())
            .map(|(&id, _)| id)
            .collect();
        for id in gone {
            for connection in self.connections.values_mut() {
                connection.resolved.retain(|_, cg| *cg != id);
            }
            if let Some(w) = self.cgroups.remove(&id) {
                let _ = sensor.unwatch(id);
                self.processes.retain(|_, p| p.cgroup_id != id);
                eprintln!(
                    "guardlab-sensor: {} is gone (cgroup {id})",
                    w.path.display()
                );
            }
        }
        if !self.pending() {
            return;
        }
        let found: HashMap<String, PathBuf> = find_container_cgroups(&self.root)
            .into_iter()
            .map(|(path, id)| (id, path))
            .collect();
        let ts = now_ns();
        for connection in self.connections.values_mut() {
            for wanted in connection.wanted.clone() {
                if connection.resolved.contains_key(&wanted.container_id) {
                    continue;
                }
                let Some(path) = found.get(&wanted.container_id) else {
                    continue;
                };
                let mut info = info_of(&wanted, &self.machine);
                let cgroup_id = match cgroup::cgroup_id(path) {
                    Ok(id) if self.cgroups.contains_key(&id) => id,
                    Ok(_) => match sensor.watch(path, info.clone()) {
                        Ok(id) => {
                            eprintln!(
                                "guardlab-sensor: watching {} (cgroup {id}) for container {}",
                                path.display(),
                                wanted.container_id
                            );
                            self.failed.remove(&wanted.container_id);
                            self.cgroups.insert(
                                id,
                                WatchedCgroup {
                                    path: path.clone(),
                                    users: 0,
                                },
                            );
                            id
                        }
                        Err(e) => {
                            note_failure(&mut self.failed, &wanted.container_id, path, &e);
                            continue;
                        }
                    },
                    Err(e) => {
                        note_failure(&mut self.failed, &wanted.container_id, path, &e);
                        continue;
                    }
                };
                if let Some(w) = self.cgroups.get_mut(&cgroup_id) {
                    w.users += 1;
                }
                connection
                    .resolved
                    .insert(wanted.container_id.clone(), cgroup_id);
                info.cgroup_id = cgroup_id;
                let line = serde_json::to_string(&Event::new(ts, EventBody::Container(info)))
                    .unwrap_or_default()
                    + "\n";
                connection.send(&line, ts);
            }
        }
    }

    /// Sends `event` to the connections that watch its cgroup (a `lost` event to all), and
    /// keeps track of the processes it names.
    pub fn route(&mut self, event: &Event) {
        match &event.body {
            // Each connection got its own `container` line (with its identity) at subscribe.
            EventBody::Container(_) => return,
            EventBody::Exec(x) => {
                self.processes.insert(
                    x.pid,
                    SeenProcess {
                        start_ns: x.key.1,
                        ns_pid: x.ns_pid,
                        cgroup_id: x.cgroup_id,
                    },
                );
            }
            EventBody::Fork(x) => {
                self.processes.insert(
                    x.pid,
                    SeenProcess {
                        start_ns: x.key.1,
                        ns_pid: x.ns_pid,
                        cgroup_id: x.cgroup_id,
                    },
                );
            }
            EventBody::Exit(x)
                if self.processes.get(&x.pid).map(|p| p.start_ns) == Some(x.key.1) =>
            {
                self.processes.remove(&x.pid);
            }
            _ => {}
        }
        let line = serde_json::to_string(event).unwrap_or_default() + "\n";
        let cgroup = event.cgroup_id();
        for connection in self.connections.values_mut() {
            if cgroup.is_none_or(|id| connection.watches(id)) {
                connection.send(&line, event.ts);
            }
        }
    }

    /// The pid in this sensor's /proc of `pid` (an init-namespace pid from the events), and
    /// the cgroup it is in.
    fn translate(&self, pid: u32) -> Result<(u32, &Path), String> {
        let seen = self.processes.get(&pid).ok_or_else(|| {
            format!("pid {pid} is not a live process of a watched container (the sensor kills only running processes it reported in the containers it was asked to watch)")
        })?;
        let path = &self
            .cgroups
            .get(&seen.cgroup_id)
            .ok_or_else(|| format!("pid {pid}'s container is no longer watched"))?
            .path;
        let local = local_pid(path, seen.start_ns, seen.ns_pid, Path::new("/proc"))?;
        Ok((local, path))
    }

    /// Kills `pid` (an init-namespace pid from the events), and its descendants when `tree`.
    /// Returns the pids signalled, as this sensor's /proc numbers them.
    fn kill(&self, pid: u32, tree: bool) -> Result<Vec<u32>, String> {
        let (local, path) = self.translate(pid)?;
        let targets = if tree {
            stop_tree(local, path)
        } else {
            vec![local]
        };
        signal(local, libc::SIGKILL).map_err(|e| format!("kill({local}): {e}"))?;
        for &p in &targets {
            if p != local {
                let _ = signal(p, libc::SIGKILL);
            }
        }
        Ok(targets)
    }

    /// Kills the process group of `pid` (an init-namespace pid from the events): its members
    /// in the watched containers' cgroups, never a process outside them. Returns the group's
    /// id and the pids signalled, as this sensor's /proc numbers them.
    fn kill_group(&self, pid: u32) -> Result<(u32, Vec<u32>), String> {
        let (local, _) = self.translate(pid)?;
        let stat = read_stat(Path::new("/proc"), local)
            .ok_or_else(|| format!("pid {pid} (pid {local} here) has exited"))?;
        // 0: the group's leader has no pid in this namespace (it lives in an ancestor one), so
        // its members cannot be told from other groups whose leaders are also out of sight.
        if stat.pgrp == 0 {
            return Err(format!(
                "pid {pid}'s process group is not visible in this sensor's pid namespace (its leader is outside it): not killing a group it cannot name"
            ));
        }
        let cgroups: Vec<&Path> = self.cgroups.values().map(|w| w.path.as_path()).collect();
        let members = stop_group(stat.pgrp, &cgroups, Path::new("/proc"));
        if members.is_empty() {
            return Err(format!(
                "pid {pid} (pid {local} here) and its process group {} have exited",
                stat.pgrp
            ));
        }
        for &p in &members {
            let _ = signal(p, libc::SIGKILL);
        }
        Ok((stat.pgrp, members))
    }
}

fn note_failure(
    failed: &mut HashMap<String, String>,
    container: &str,
    path: &Path,
    error: &dyn std::fmt::Display,
) {
    let message = error.to_string();
    if failed.get(container) != Some(&message) {
        eprintln!(
            "guardlab-sensor: not watching {} (container {container}): {message}",
            path.display()
        );
        failed.insert(container.to_string(), message);
    }
}

fn info_of(w: &WatchedContainer, machine: &str) -> ContainerInfo {
    ContainerInfo {
        cgroup_id: 0,
        container_id: w.container_id.clone(),
        container_name: w.container_name.clone(),
        image: w.image.clone(),
        image_id: w.image_id.clone(),
        namespace: w.namespace.clone(),
        namespace_labels: w.namespace_labels.clone(),
        pod_name: w.pod_name.clone(),
        pod_labels: w.pod_labels.clone(),
        machine: machine.to_string(),
    }
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn signal(pid: u32, sig: i32) -> std::io::Result<()> {
    // SAFETY: kill(2) has no memory preconditions; the pid was just checked to be the
    // watched process (a reuse in between would need the pid space to wrap in microseconds).
    if unsafe { libc::kill(pid as i32, sig) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// What the kills need from `/proc/PID/stat`, in the numbering of that /proc's pid namespace
/// (0 for a parent or group leader that has no pid there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stat {
    ppid: u32,
    pgrp: u32,
    /// In clock ticks since boot.
    start: u64,
}

/// Parses `/proc/PID/stat` (the comm may hold spaces and parentheses: the fields start after
/// the last `)`).
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the comm: state (3), ppid (4), pgrp (5), ..., starttime (22).
    Some(Stat {
        ppid: fields.get(1)?.parse().ok()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

fn read_stat(proc: &Path, pid: u32) -> Option<Stat> {
    std::fs::read_to_string(proc.join(pid.to_string()).join("stat"))
        .ok()
        .and_then(|t| parse_stat(&t))
}

/// The innermost pid of `NSpid:` in `/proc/PID/status`: the pid inside the process's own
/// pid namespace (the events' `ns_pid`).
fn parse_innermost_ns_pid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

/// The pid, in the pid namespace of `proc`, of the process in the cgroup at `cgroup_path` that
/// started at `start_ns` (CLOCK_BOOTTIME) and is `ns_pid` in its own namespace.
fn local_pid(cgroup_path: &Path, start_ns: u64, ns_pid: u32, proc: &Path) -> Result<u32, String> {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let want = start_ns / (1_000_000_000 / ticks);
    let mut matches = Vec::new();
    for candidate in cgroup::read_pids(cgroup_path) {
        let dir = proc.join(candidate.to_string());
        let Some(Stat { start: started, .. }) = read_stat(proc, candidate) else {
            continue;
        };
        let inner = std::fs::read_to_string(dir.join("status"))
            .ok()
            .and_then(|t| parse_innermost_ns_pid(&t));
        // The kernel rounds start_boottime down to ticks: equal, give or take one tick.
        if inner == Some(ns_pid) && started.abs_diff(want) <= 1 {
            matches.push(candidate);
        }
    }
    match matches.as_slice() {
        [one] => Ok(*one),
        [] => Err(format!(
            "no process in {} has container pid {ns_pid} and the start time the events recorded: it has exited (or left that cgroup)",
            cgroup_path.display()
        )),
        many => Err(format!(
            "several processes in {} match container pid {ns_pid} and its start time ({many:?}): not guessing",
            cgroup_path.display()
        )),
    }
}

/// Stops `root` and its descendants in the same cgroup (so none forks away or is reparented
/// while they are collected) and returns them all, `root` first.
fn stop_tree(root: u32, cgroup_path: &Path) -> Vec<u32> {
    let mut tree = vec![root];
    let _ = signal(root, libc::SIGSTOP);
    // A child forked before its parent stopped shows up in the next round; a few rounds with
    // nothing new and the set is closed.
    for _ in 0..10 {
        let mut parents: HashMap<u32, u32> = HashMap::new();
        for pid in cgroup::read_pids(cgroup_path) {
            if let Some(stat) = read_stat(Path::new("/proc"), pid) {
                parents.insert(pid, stat.ppid);
            }
        }
        let before = tree.len();
        loop {
            let new: Vec<u32> = parents
                .iter()
                .filter(|(pid, ppid)| tree.contains(ppid) && !tree.contains(pid))
                .map(|(&pid, _)| pid)
                .collect();
            if new.is_empty() {
                break;
            }
            for pid in new {
                let _ = signal(pid, libc::SIGSTOP);
                tree.push(pid);
            }
        }
        if tree.len() == before {
            break;
        }
    }
    tree
}

/// Stops the members of process group `pgid` that are in one of `cgroups` (so none forks a
/// new member while they are collected) and returns them. Only pids listed in those cgroups'
/// `cgroup.procs` are looked at: a member elsewhere is never touched.
fn stop_group(pgid: u32, cgroups: &[&Path], proc: &Path) -> Vec<u32> {
    let mut group = Vec::new();
    // A member forked before its parent stopped shows up in the next round.
    for _ in 0..10 {
        let before = group.len();
        for cgroup_path in cgroups {
            for pid in cgroup::read_pids(cgroup_path) {
                if pid != 0
                    && !group.contains(&pid)
                    && read_stat(proc, pid).is_some_and(|s| s.pgrp == pgid)
                {
                    let _ = signal(pid, libc::SIGSTOP);
                    group.push(pid);
                }
            }
        }
        if group.len() == before {
            break;
        }
    }
    group
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_and_status_fields_are_read_past_odd_comms() {
        let stat =
            "4242 (a) b (c)) S 17 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 50";
        assert_eq!(
            parse_stat(stat),
            Some(Stat {
                ppid: 17,
                pgrp: 4242,
                start: 987654
            })
        );
        assert_eq!(parse_stat("garbage"), None);
        let status = "Name:\tsh\nTgid:\t900\nNSpid:\t900\t12\t1\nPPid:\t1\n";
        assert_eq!(parse_innermost_ns_pid(status), Some(1));
        assert_eq!(parse_innermost_ns_pid("NSpid:\t77\n"), Some(77));
        assert_eq!(parse_innermost_ns_pid("Name: x\n"), None);
    }

    /// A fake /proc and cgroup: the process with ns pid 1 started at tick 500 is local pid 31,
    /// whatever the init-namespace pid was.
    #[test]
    fn a_pid_is_translated_by_start_time_and_container_pid() {
        let dir = tempfile::tempdir().unwrap();
        let cg = dir.path().join("cg");
        std::fs::create_dir(&cg).unwrap();
        std::fs::write(cg.join("cgroup.procs"), "30\n31\n32\n").unwrap();
        let proc = dir.path().join("proc");
        for (pid, start, nspid) in [(30, 500, 2), (31, 500, 1), (32, 900, 1)] {
            let d = proc.join(pid.to_string());
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(
                d.join("stat"),
                format!("{pid} (sh) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 {start} 0 0"),
            )
            .unwrap();
            std::fs::write(d.join("status"), format!("NSpid:\t{pid}\t{nspid}\n")).unwrap();
        }
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        let ns = 500 * (1_000_000_000 / ticks) + 3;
        assert_eq!(local_pid(&cg, ns, 1, &proc), Ok(31));
        let err = local_pid(&cg, ns, 5, &proc).unwrap_err();
        assert!(err.contains("has exited"), "{err}");
    }
}
