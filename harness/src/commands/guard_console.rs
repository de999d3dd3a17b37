//! `guardlab console`: the guard console over a running lab. This process runs the engine on
//! the lab's event stream (the lab replays what it kept from its start, so the fingerprints
//! see the baseline), keeps the one policy store, carries out what an enforcing policy decides
//! (kills), and serves the pages until Ctrl-C.

use anyhow::anyhow;
use guardlab_guard_console::{ConsoleServer, SharedStore};
use guardlab_lab::{Lab, LocalLab, LocalLabOptions};
use guardlab_lab_api::Backend;
use guardlab_policy_store::PolicyStore;

use crate::cli::ConsoleArgs;
use crate::report::{CommandResult, Failure, Outcome, Stopped};
use crate::signals::StopSignals;

pub fn run(args: &ConsoleArgs, no_install: bool) -> CommandResult {
    if args.backend != Backend::Local {
        return Err(Failure(anyhow!(
            "`guardlab console` reads a running local lab; on the {} backend, run `guardlab scenario NAME --backend {} --console`",
            args.backend.name(),
            args.backend.name()
        )));
    }
    crate::privilege::ensure_root("reading the local lab's events")?;
    let mut options = LocalLabOptions::new(&args.namespace);
    options.host = guardlab_host::Host::new(no_install);
    let lab = LocalLab::new(options)?;
    let runtime = guardlab_host::runtime(2)
        .map_err(|e| Failure(anyhow!("cannot start the async runtime: {e}")))?;
    runtime.block_on(serve(lab, args))
}

async fn serve(mut lab: LocalLab, args: &ConsoleArgs) -> CommandResult {
    if lab.status().await?.is_none() {
        return Err(Failure(anyhow!(
            "no lab is up: start one with `guardlab lab up` (or run `guardlab scenario cryptominer --console`)"
        )));
    }
    let mut signals =
        StopSignals::listen().map_err(|e| Failure(anyhow!("handling SIGINT and SIGTERM: {e}")))?;
    let mut events = lab.events().await?;
    let store = SharedStore::new(PolicyStore::new(args.limits.limits()));
    let server = ConsoleServer::start(
        store.clone(),
        args.listen
            .options(format!("guardlab — lab {}", args.namespace)),
    )
    .await
    .map_err(|e| Failure(anyhow!(e)))?;
    println!(
        "guard console: {} (Ctrl-C stops it; the lab stays up)",
        server.url()
    );
    loop {
        tokio::select! {
            event = events.recv() => {
                let Some(event) = event else {
                    return Err(Failure(anyhow!("the lab's event stream ended: is the lab still up? (`guardlab lab status`)")));
                };
                let findings = store.update(|s| s.observe(&event));
                for decision in findings.iter().flat_map(|f| &f.decisions).filter(|d| d.initiated) {
                    let action = crate::scenario::live::lab_action(decision);
                    match lab.carry_out(&action).await {
                        Ok(()) => println!("{} -> carried out", decision.message),
                        Err(e) => crate::console::warning(&format!("{}: {e}", decision.message)),
                    }
                }
            }
            signal = signals.next() => {
                server.stop();
                return Ok(Outcome::Stopped(Stopped { signal, said: "guard console stopped; the lab stays up".into() }));
            }
        }
    }
}
