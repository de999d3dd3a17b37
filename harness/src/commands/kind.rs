//! `guardlab lab ... --backend kind`: the same verbs on a Kubernetes cluster.

use guardlab_kind::{KindLab, KindOptions, Target};

use crate::cli::LabArgs;
use crate::commands::lab::{LabVerb, block_on, drive};
use crate::report::{CommandResult, Outcome};

fn options(args: &LabArgs) -> KindOptions {
    let mut options = KindOptions::default();
    if let Some(context) = &args.context {
        options.target = Target::Context {
            context: context.clone(),
        };
    }
    if let Some(namespace) = &args.namespace {
        options.namespace = namespace.clone();
    }
    options
}

pub fn run(verb: LabVerb, args: &LabArgs) -> CommandResult {
    let options = options(args);
    if args.dry_run {
        // The plan touches nothing: no Docker, no cluster, no root.
        print!("{}", guardlab_kind::plan(&options)?);
        return Ok(Outcome::Clean);
    }
    block_on(async move { drive(KindLab::new(options), verb).await })
}
