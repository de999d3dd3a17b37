//! `guardlab lab up | down | status`: keep a lab running for a workshop. The verbs say the same
//! words whichever the backend ([`drive`]); the kind backend's `up` holds its port-forward
//! ([`kind`]). On the local backend `status` says what kind of lab it is (one a scenario run
//! owns, or one kept until `lab down`) and what a killed lab left behind ([`local_status`]),
//! and an `up` stopped by SIGINT or SIGTERM removes what it made ([`local_up`]).

mod kind;

use anyhow::anyhow;
use guardlab_lab::local::{DaemonStatus, LabCondition, OwnerRecord};
use guardlab_lab::{Lab, LabInfo, LocalLab, LocalLabOptions, NoProgress};

use guardlab_lab_api::Backend;

use crate::cli::LabArgs;
use crate::console::ConsoleProgress;
use crate::privilege;
use crate::report::{CommandResult, Failure, Outcome, Stopped};
use crate::signals::StopSignals;

/// The lab `lab up` makes when no namespace is given: the scenario's namespace, so that
/// `guardlab scenario cryptominer` and `lab down` find the same lab.
pub const DEFAULT_LAB: &str = "cryptominer";

#[derive(Debug, Clone, Copy)]
pub enum LabVerb {
    Up,
    Down,
    Status,
}

/// `no_install`: refuse to install, mount or load what the host lacks (`--no-install`).
pub fn run(verb: LabVerb, args: &LabArgs, no_install: bool) -> CommandResult {
    match args.backend {
        Backend::Local => {
            if args.dry_run {
                return Err(Failure(anyhow!(
                    "--dry-run is for the kind backend; the local lab has no plan to print"
                )));
            }
            privilege::ensure_root("the local lab")?;
            let name = args.namespace.as_deref().unwrap_or(DEFAULT_LAB);
            let mut options = LocalLabOptions::new(name);
            options.host = guardlab_host::Host::new(no_install);
            if let Some(address) = crate::scenario::live::notebook_address_from_env()? {
                options.forward = Some(address);
            }
            let lab = LocalLab::new(options)?;
            block_on(async move {
                match verb {
                    LabVerb::Up => local_up(lab).await,
                    LabVerb::Down => local_down(lab).await,
                    LabVerb::Status => local_status(&lab).await,
                }
            })
        }
        Backend::Kind => kind::run(verb, args),
        Backend::Replay => Err(Failure(anyhow!(
            "the replay backend has no lab to bring up; use `guardlab scenario NAME --backend replay`"
        ))),
    }
}

fn block_on<F: std::future::Future<Output = CommandResult>>(future: F) -> CommandResult {
    let runtime = guardlab_host::runtime(2)
        .map_err(|e| Failure(anyhow!("cannot start the async runtime: {e}")))?;
    runtime.block_on(future)
}

/// One verb on any backend: the same words for the learner whichever it is.
async fn drive(mut lab: impl Lab, verb: LabVerb) -> CommandResult {
    // Each progress is done with before the result is printed: its live line stays as it is.
    match verb {
        LabVerb::Up => {
            let info = lab.up(&ConsoleProgress { quiet: false }).await?;
            print_info(&info);
            println!("The lab stays up until `guardlab lab down`.");
        }
        LabVerb::Down => {
            lab.down(&ConsoleProgress { quiet: false }).await?;
            println!(
                "The {} lab is down; nothing it made remains.",
                lab.backend()
            );
        }
        LabVerb::Status => match lab.status().await? {
            Some(info) => print_info(&info),
            None => println!(
                "No {} lab is running. Start one with `guardlab lab up`.",
                lab.backend()
            ),
        },
    }
    Ok(Outcome::Clean)
}

fn print_info(info: &LabInfo) {
    for line in info_lines(info) {
        println!("{line}");
    }
}

/// `lab up` on the local backend: a lab with no owner, which stays until `lab down`. Stopped by
/// SIGINT or SIGTERM before it is up, it removes what it made (a second signal stops that).
async fn local_up(mut lab: LocalLab) -> CommandResult {
    let mut signals =
        StopSignals::listen().map_err(|e| Failure(anyhow!("handling SIGINT and SIGTERM: {e}")))?;
    let up = {
        // Done with before anything else is printed: its live line stays as it is.
        let progress = ConsoleProgress { quiet: false };
        tokio::select! {
            info = lab.up(&progress) => Ok(info?),
            signal = signals.next() => Err(signal),
        }
    };
    match up {
        Ok(info) => {
            print_info(&info);
            println!("The lab stays up until `guardlab lab down`.");
            Ok(Outcome::Clean)
        }
        Err(signal) => {
            let left = tokio::select! {
                removed = lab.take_down(&NoProgress) => match removed {
                    Ok(removed) => removed.to_string(),
                    Err(e) => format!(
                        "removing what it made failed: {e}; `guardlab lab down` removes what is left"
                    ),
                },
                again = signals.next() => format!(
                    "{} stopped removing what it made: `guardlab lab status` shows what is left, \
                     `guardlab lab down` removes it",
                    again.name()
                ),
            };
            Ok(Outcome::Stopped(Stopped {
                signal,
                said: format!("stopped by {} before the lab was up: {left}", signal.name()),
            }))
        }
    }
}

/// `lab down` on the local backend: what it removed.
async fn local_down(mut lab: LocalLab) -> CommandResult {
    let removed = {
        let progress = ConsoleProgress { quiet: false };
        lab.take_down(&progress).await?
    };
    if !removed.nothing() {
        println!("{}.", capitalised(&removed.to_string()));
    }
    println!("The local lab is down; nothing it made remains.");
    Ok(Outcome::Clean)
}

/// A sentence's first letter in upper case.
fn capitalised(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// `lab status` on the local backend: up (and whose), coming up, failed, being removed, or
/// left behind by a killed lab. Exit 1 when the lab needs `lab down` (failed, left behind).
async fn local_status(lab: &LocalLab) -> CommandResult {
    let name = &lab.options().lab;
    let lines = match lab.inspect().await? {
        LabCondition::Down => {
            println!("No local lab is running. Start one with `guardlab lab up`.");
            return Ok(Outcome::Clean);
        }
        LabCondition::Running(status) => running_status(name, &status),
        LabCondition::LeftBehind {
            state,
            processes,
            mounts,
        } => StatusLines {
            lines: left_behind(
                name,
                &state.owner,
                state.daemon.map(|d| d.pid),
                processes,
                mounts,
                &lab.lab_dir().display().to_string(),
            ),
            needs_down: true,
        },
    };
    for line in &lines.lines {
        println!("{line}");
    }
    Ok(if lines.needs_down {
        Outcome::Findings
    } else {
        Outcome::Clean
    })
}

/// What `lab status` prints, and whether the lab needs `lab down`.
struct StatusLines {
    lines: Vec<String>,
    needs_down: bool,
}

/// Whose the lab is, in a sentence.
fn ownership(owner: &Option<OwnerRecord>) -> String {
    match owner {
        Some(owner) if !owner.process.is_alive() => {
            format!("It belongs to {owner}, which has ended: its daemon is about to remove it.")
        }
        Some(owner) => format!(
            "It belongs to {owner}: it is removed when that run ends (`guardlab lab down` removes it now)."
        ),
        None => "It has no owner (`guardlab lab up`, or a scenario run with --keep-lab): it stays \
                 until `guardlab lab down`."
            .to_string(),
    }
}

/// A lab whose daemon answers.
fn running_status(name: &str, status: &DaemonStatus) -> StatusLines {
    let mut lines = Vec::new();
    let mut needs_down = false;
    let phase = status.phase.as_str();
    if phase == "ready" {
        lines.extend(info_lines(&status.info));
        lines.push(ownership(&status.owner));
    } else if let Some(why) = phase.strip_prefix("removing: ") {
        lines.push(format!(
            "Lab {name} (local backend) is being removed by its daemon (pid {}): {why}.",
            status.daemon_pid
        ));
    } else if let Some(why) = phase.strip_prefix("failed: ") {
        lines.push(format!(
            "Lab {name} (local backend) failed (its daemon, pid {}, still runs): {why}",
            status.daemon_pid
        ));
        lines.push("`guardlab lab down` removes it.".into());
        needs_down = true;
    } else {
        lines.push(format!(
            "Lab {name} (local backend) is coming up (phase {phase}, daemon pid {}).",
            status.daemon_pid
        ));
        lines.push(ownership(&status.owner));
    }
    if status.sensor {
        lines.push(format!("Sensor: {}", status.counters.describe()));
    }
    if let Some(exit) = &status.pod_exit {
        lines.push(format!(
            "The pod's first process ended ({exit}) and was replaced."
        ));
    }
    StatusLines { lines, needs_down }
}

/// A lab whose daemon is gone: what is left, who left it, and what removes it.
fn left_behind(
    name: &str,
    owner: &Option<OwnerRecord>,
    daemon: Option<u32>,
    processes: usize,
    mounts: usize,
    lab_dir: &str,
) -> Vec<String> {
    let daemon = match daemon {
        Some(pid) => format!("its daemon (pid {pid}) is gone"),
        None => "its daemon never started".to_string(),
    };
    let by = match owner {
        Some(owner) if owner.process.is_alive() => {
            format!(" It belongs to {owner}, still running.")
        }
        Some(owner) => format!(" It was left by {owner}, which ended."),
        None => String::new(),
    };
    let count =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    vec![
        format!(
            "Lab {name} (local backend) is not running but left things behind: {daemon}; {} \
             still running, {} left, and its state in {lab_dir}.{by}",
            count(processes, "lab process", "lab processes"),
            count(mounts, "mount", "mounts"),
        ),
        "`guardlab lab down` removes it (so does the next `guardlab lab up` or scenario run)."
            .into(),
    ]
}

/// What `up` and `status` print about a lab that is up.
fn info_lines(info: &LabInfo) -> Vec<String> {
    let mut lines = vec![
        format!("Lab ({} backend) is up.", info.backend),
        format!("Open the notebook at {}", info.notebook_url),
    ];
    for pod in &info.pods {
        lines.push(format!(
            "  pod {}/{}  container {}  image {}{}",
            pod.namespace,
            pod.name,
            pod.container_name,
            pod.image,
            pod.root_pid
                .map(|p| format!("  root pid {p}"))
                .unwrap_or_default()
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use guardlab_lab::local::LabCounters;
    use guardlab_lab::local::state::ProcessRecord;

    fn status(phase: &str, owner: Option<OwnerRecord>) -> DaemonStatus {
        DaemonStatus {
            phase: phase.into(),
            info: LabInfo {
                backend: Backend::Local,
                notebook_url: "http://127.0.0.1:1234/".into(),
                pods: Vec::new(),
            },
            daemon_pid: 77,
            services: Vec::new(),
            pod_exit: None,
            pod_log: None,
            sensor: true,
            owner,
            counters: LabCounters {
                sensor_delivered: 40,
                sensor_dropped: 2,
                ..Default::default()
            },
        }
    }

    fn run_owner() -> OwnerRecord {
        OwnerRecord {
            process: ProcessRecord::this_process().unwrap(),
            command: "guardlab scenario cryptominer".into(),
        }
    }

    #[test]
    fn status_says_whose_a_lab_is_and_what_it_lost() {
        let kept = running_status("cryptominer", &status("ready", None));
        assert!(!kept.needs_down);
        assert_eq!(kept.lines[0], "Lab (local backend) is up.");
        assert!(
            kept.lines
                .iter()
                .any(|l| l.contains("stays until `guardlab lab down`")),
            "{:?}",
            kept.lines
        );
        assert!(
            kept.lines
                .iter()
                .any(|l| l == "Sensor: 40 events, 2 LOST (2 with the ring buffer full, 0 unreadable); 0 failed kills; DNS answers: 0 cut short, 0 unreadable"),
            "{:?}",
            kept.lines
        );
        let owned = running_status("cryptominer", &status("ready", Some(run_owner())));
        let me = std::process::id();
        assert!(
            owned.lines.contains(&format!(
                "It belongs to `guardlab scenario cryptominer` (pid {me}): it is removed when that \
                 run ends (`guardlab lab down` removes it now)."
            )),
            "{:?}",
            owned.lines
        );
        let coming = running_status("cryptominer", &status("starting", Some(run_owner())));
        assert_eq!(
            coming.lines[0],
            "Lab cryptominer (local backend) is coming up (phase starting, daemon pid 77)."
        );
        let ended = OwnerRecord {
            process: ProcessRecord {
                start_time: run_owner().process.start_time + 1,
                ..run_owner().process
            },
            ..run_owner()
        };
        let orphaned = running_status("cryptominer", &status("starting", Some(ended.clone())));
        assert_eq!(
            orphaned.lines[1],
            format!("It belongs to {ended}, which has ended: its daemon is about to remove it.")
        );
        let removing = running_status(
            "cryptominer",
            &status("removing: its owner `x` (pid 1) ended", None),
        );
        assert_eq!(
            removing.lines[0],
            "Lab cryptominer (local backend) is being removed by its daemon (pid 77): its owner `x` (pid 1) ended."
        );
        let failed = running_status(
            "cryptominer",
            &status("failed: the pod keeps exiting", None),
        );
        assert!(failed.needs_down);
    }

    #[test]
    fn status_says_what_a_killed_lab_left_and_who_left_it() {
        let gone = OwnerRecord {
            process: ProcessRecord {
                start_time: ProcessRecord::this_process().unwrap().start_time + 1,
                ..ProcessRecord::this_process().unwrap()
            },
            command: "guardlab scenario cryptominer".into(),
        };
        let lines = left_behind(
            "cryptominer",
            &Some(gone.clone()),
            Some(4242),
            3,
            1,
            "/run/guardlab/cryptominer",
        );
        assert_eq!(
            lines[0],
            format!(
                "Lab cryptominer (local backend) is not running but left things behind: its \
                 daemon (pid 4242) is gone; 3 lab processes still running, 1 mount left, and its \
                 state in /run/guardlab/cryptominer. It was left by {gone}, which ended."
            )
        );
        assert!(lines[1].starts_with("`guardlab lab down` removes it"));
        let never = left_behind("x", &None, None, 0, 0, "/run/guardlab/x");
        assert!(never[0].contains("its daemon never started"), "{never:?}");
    }
}
