//! `guardlab console`: the guard console over a running lab. This process runs the engine on
//! the lab's event stream (the lab replays what it kept from its start, so the fingerprints
//! see the baseline), keeps the one policy store, carries out what an enforcing policy decides
//! (kills), puts a policy that asks for it in the kernel as soon as it changes (and lifts it
//! when it stops asking, and when the console stops), and serves the pages until Ctrl-C.

use anyhow::anyhow;
use guardlab_guard_console::{ConsoleServer, SharedStore};
use guardlab_kernel_policy::{compile, enforces_in_kernel};
use guardlab_lab::{Lab, LocalLab, LocalLabOptions};
use guardlab_lab_api::{Backend, Enforcement, KernelPolicy};
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
    let mut changes = store.watch();
    let mut kernel = KernelState::default();
    loop {
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_ok() {
                    kernel.sync(&mut lab, &store).await;
                }
            }
            event = events.recv() => {
                let Some(event) = event else {
                    return Err(Failure(anyhow!("the lab's event stream ended: is the lab still up? (`guardlab lab status`)")));
                };
                let findings = store.update(|s| s.observe(&event));
                // What the kernel already killed needs no kill from here.
                for decision in findings
                    .iter()
                    .filter(|f| !f.prevented)
                    .flat_map(|f| &f.decisions)
                    .filter(|d| d.initiated)
                {
                    let action = crate::scenario::live::lab_action(decision);
                    match lab.carry_out(&action).await {
                        Ok(()) => println!("{} -> carried out", decision.message),
                        Err(e) => crate::console::warning(&format!("{}: {e}", decision.message)),
                    }
                }
            }
            signal = signals.next() => {
                server.stop();
                // The console's policies end with it: the kernel keeps none of them.
                kernel.lift(&mut lab).await;
                return Ok(Outcome::Stopped(Stopped { signal, said: "guard console stopped; the lab stays up".into() }));
            }
        }
    }
}

/// What the kernel enforces for this console's policies.
#[derive(Default)]
struct KernelState {
    /// The policy in the kernel now (name, compiled).
    applied: Option<(String, KernelPolicy)>,
    /// The last compiled, so node numbers stay across edits and lifts.
    last: Option<KernelPolicy>,
}

impl KernelState {
    /// The newest policy in the kernel when it asks for it (enabled, enforce, a process kill),
    /// lifted when it no longer does.
    async fn sync(&mut self, lab: &mut LocalLab, store: &SharedStore) {
        let wanted = store.read(|s| {
            s.latest_policy()
                .filter(|p| enforces_in_kernel(&p.spec))
                .cloned()
        });
        let Some(policy) = wanted else {
            self.lift(lab).await;
            return;
        };
        let compiled = match compile(&policy.spec, self.last.as_ref()) {
            Ok(compiled) => compiled,
            Err(e) => {
                crate::console::warning(&format!(
                    "policy {} cannot be enforced in the kernel: {e}",
                    policy.metadata.name
                ));
                return;
            }
        };
        let name = policy.metadata.name.clone();
        if self.applied.as_ref() == Some(&(name.clone(), compiled.clone())) {
            return;
        }
        if self.enforce(lab, Some(compiled.clone())).await {
            println!(
                "the kernel now enforces policy {name}: {} program rules",
                compiled.nodes.len()
            );
            self.last = Some(compiled.clone());
            self.applied = Some((name, compiled));
        }
    }

    async fn lift(&mut self, lab: &mut LocalLab) {
        if let Some((name, _)) = self.applied.take()
            && self.enforce(lab, None).await
        {
            println!("the kernel no longer enforces policy {name}: lifted");
        }
    }

    /// Every pod of the lab gets `policy` (`None`: lifted); a failure is said.
    async fn enforce(&mut self, lab: &mut LocalLab, policy: Option<KernelPolicy>) -> bool {
        let pods = match lab.status().await {
            Ok(Some(info)) => info.pods,
            Ok(None) => return false,
            Err(e) => {
                crate::console::warning(&format!("the lab's pods: {e}"));
                return false;
            }
        };
        let enforcement = Enforcement {
            policy,
            ..Enforcement::default()
        };
        for pod in &pods {
            if let Err(e) = lab.enforce(pod, &enforcement).await {
                crate::console::warning(&format!("enforcing in pod {}: {e}", pod.name));
                return false;
            }
        }
        true
    }
}
