//! The policy in the kernel: after each step (a step, or the console, may have changed the
//! policy), the latest policy is compiled for the kernel when it asks for kernel enforcement
//! (enabled, enforce mode, a kill response) and handed to the backend for every pod; when it
//! stops asking (disabled, audit, no kill), the kernel's enforcement is lifted.

use guardlab_kernel_policy::{KernelPolicy, compile, enforces_in_kernel};

use super::super::backend::{CheckFailure, ScenarioBackend, StepError};
use super::Runner;

/// What the kernel enforces now, and what was compiled last.
#[derive(Default)]
pub(super) struct KernelSync {
    /// The policy (its name) the kernel enforces now, as compiled.
    applied: Option<(String, KernelPolicy)>,
    /// The last compiled policy, also after a lift: node numbers stay with their process
    /// nodes, so the processes the kernel placed keep their place when it comes back.
    last: Option<KernelPolicy>,
    /// A policy the kernel cannot enforce, said once: (name, error).
    refused: Option<(String, String)>,
    /// Whether a policy was ever enforced in the kernel in this run.
    pub(super) ever: bool,
    /// What the kernel stopped, and whether the engine found each.
    pub(super) agreement: guardlab_kernel_policy::agreement::Agreement,
}

impl<B: ScenarioBackend> Runner<'_, B> {
    /// Brings the kernel in line with the latest policy (see the module documentation).
    pub(super) async fn sync_kernel_policy(&mut self) -> Result<(), StepError> {
        let latest = self.engine.store.read(|s| s.latest_policy().cloned());
        let wanted = latest.filter(|p| enforces_in_kernel(&p.spec));
        let Some(policy) = wanted else {
            if let Some((name, _)) = self.kernel.applied.take() {
                self.backend.apply_kernel_policy(None).await?;
                self.kernel.agreement.enforcing(None);
                self.out.detail(format!(
                    "the kernel no longer enforces policy {name}: lifted"
                ));
            }
            return Ok(());
        };
        let name = policy.metadata.name.clone();
        let compiled = match compile(&policy.spec, self.kernel.last.as_ref()) {
            Ok(compiled) => compiled,
            Err(source) => {
                let said = (name.clone(), source.to_string());
                if self.kernel.refused.as_ref() == Some(&said) {
                    return Ok(());
                }
                self.kernel.refused = Some(said);
                return Err(CheckFailure::KernelPolicy {
                    policy: name,
                    source,
                }
                .into());
            }
        };
        if self
            .kernel
            .applied
            .as_ref()
            .is_some_and(|(n, c)| *n == name && *c == compiled)
        {
            return Ok(());
        }
        self.backend.apply_kernel_policy(Some(&compiled)).await?;
        // From here on, a kill the engine decides that the kernel let run is a difference.
        self.kernel.agreement.enforcing(Some(&compiled));
        self.out.detail(summary(&name, &compiled));
        for widened in &compiled.widened {
            self.out.detail(format!("  wider in the kernel: {widened}"));
        }
        self.kernel.refused = None;
        self.kernel.ever = true;
        self.kernel.last = Some(compiled.clone());
        self.kernel.applied = Some((name, compiled));
        Ok(())
    }
}

/// `the kernel now enforces policy NAME: N program rules, M destinations, K DNS names`.
pub(super) fn summary(name: &str, compiled: &KernelPolicy) -> String {
    format!(
        "the kernel now enforces policy {name}: {} program rules, {} destinations, {} DNS names",
        compiled.nodes.len(),
        compiled.destinations.len(),
        compiled.dns_names.len()
    )
}
