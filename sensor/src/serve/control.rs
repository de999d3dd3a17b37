//! The main loop's state for the control protocol: which connection wants which containers,
//! the cgroups watched for them (shared, counted), the processes seen in them, and the kills
//! (carried out by `kill`).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use guardlab_host::{Pidfd, ProcStat};
use guardlab_sensor::cgroup::{self, find_container_cgroups};
use guardlab_sensor::events::Lost;
use guardlab_sensor::events::control::{SensorReply, WatchedContainer};
use guardlab_sensor::{ContainerInfo, Event, EventBody, Sensor};
use tokio::sync::mpsc;

use super::Command;
use super::kill::{self, KillError, LocalProcess};

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
                        SensorReply::error(e.to_string())
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
                        SensorReply::error(e.to_string())
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
        let ts = guardlab_host::unix_time_ns();
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

    /// The process in this sensor's /proc that `pid` (an init-namespace pid from the events)
    /// is, and the cgroup it is in.
    fn translate(&self, pid: u32) -> Result<(LocalProcess, &Path), KillError> {
        let seen = self.processes.get(&pid).ok_or(KillError::NotSeen { pid })?;
        let path = &self
            .cgroups
            .get(&seen.cgroup_id)
            .ok_or(KillError::NotWatched { pid })?
            .path;
        let local = kill::local_pid(path, seen.start_ns, seen.ns_pid, Path::new("/proc"))?;
        Ok((local, path))
    }

    /// Kills `pid` (an init-namespace pid from the events), and its descendants when `tree`.
    /// Returns the pids signalled, as this sensor's /proc numbers them.
    fn kill(&self, pid: u32, tree: bool) -> Result<Vec<u32>, KillError> {
        let (local, path) = self.translate(pid)?;
        let root = local.open()?;
        let targets = if tree {
            kill::stop_tree(root, path)
        } else {
            vec![root]
        };
        // The process asked for answers the request; its descendants follow it.
        targets[0]
            .send_signal(libc::SIGKILL)
            .map_err(|source| KillError::Signal {
                pid: local.pid,
                source,
            })?;
        for descendant in &targets[1..] {
            let _ = descendant.send_signal(libc::SIGKILL);
        }
        Ok(targets.iter().map(Pidfd::pid).collect())
    }

    /// Kills the process group of `pid` (an init-namespace pid from the events): its members
    /// in the watched containers' cgroups, never a process outside them. Returns the group's
    /// id and the pids signalled, as this sensor's /proc numbers them.
    fn kill_group(&self, pid: u32) -> Result<(u32, Vec<u32>), KillError> {
        let (local, _) = self.translate(pid)?;
        let exited = KillError::Exited {
            pid,
            local: local.pid,
        };
        let stat = ProcStat::read(local.pid)
            .filter(|s| s.start_ticks == local.start_ticks)
            .ok_or(exited)?;
        if stat.pgrp == 0 {
            return Err(KillError::GroupNotVisible { pid });
        }
        let cgroups: Vec<&Path> = self.cgroups.values().map(|w| w.path.as_path()).collect();
        let members = kill::stop_group(stat.pgrp, &cgroups);
        if members.is_empty() {
            return Err(KillError::GroupExited {
                pid,
                local: local.pid,
                pgrp: stat.pgrp,
            });
        }
        for member in &members {
            let _ = member.send_signal(libc::SIGKILL);
        }
        Ok((stat.pgrp, members.iter().map(Pidfd::pid).collect()))
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
