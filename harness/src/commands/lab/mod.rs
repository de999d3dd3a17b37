//! `guardlab lab up | down | status`: keep a lab running for a workshop. The verbs say the same
//! words whichever the backend ([`drive`]); the kind backend's `up` holds its port-forward
//! ([`kind`]).

mod kind;

use anyhow::anyhow;
use guardlab_lab::{Lab, LabInfo, LocalLab, LocalLabOptions};

use guardlab_lab_api::Backend;

use crate::cli::LabArgs;
use crate::console::ConsoleProgress;
use crate::privilege;
use crate::report::{CommandResult, Failure, Outcome};

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
            let lab = LocalLab::new(options)?;
            block_on(drive(lab, verb))
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
    println!("Lab ({} backend) is up.", info.backend);
    println!("Open the notebook at {}", info.notebook_url);
    for pod in &info.pods {
        println!(
            "  pod {}/{}  container {}  image {}{}",
            pod.namespace,
            pod.name,
            pod.container_name,
            pod.image,
            pod.root_pid
                .map(|p| format!("  root pid {p}"))
                .unwrap_or_default()
        );
    }
}
