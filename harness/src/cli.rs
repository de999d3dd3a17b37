//! The command line: clap definitions only. What each command does lives in `commands/`.

use std::path::PathBuf;

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand, ValueEnum};
use guardlab_engine::limits::{LimitSetting, Limits};
use guardlab_engine::window::TimeBound;
use guardlab_lab_api::Backend;

#[derive(Debug, Parser)]
#[command(
    name = "guardlab",
    version,
    about = "A lab and scenario harness for container runtime security",
    long_about = "guardlab stands up a lab with an unguarded Jupyter notebook pod and an eBPF sensor, \
learns a fingerprint of what the pod does, turns it into a guard policy, runs an attack, and \
checks the deviations, red flags and process traces against snapshot files.\n\n\
The file commands (validate, fingerprint, policy, merge, deviations, investigate) need no lab \
and no privileges.",
    after_help = "Examples:\n  guardlab doctor\n  guardlab scenario cryptominer\n  guardlab validate policy.yaml\n  guardlab fingerprint --events run.ndjson > fingerprints.yaml\n  guardlab fingerprint --events run.ndjson --since +30s --until +2m > fingerprints.yaml\n\nExit codes: 0 ok, 1 deviations found or check failed, 2 bad input or the lab could not run (or a scenario run lost events), 130/143 stopped by SIGINT/SIGTERM (after taking down the lab it brought up)."
)]
pub struct Cli {
    /// Refuse to install Debian packages, mount filesystems or load kernel modules: say what is
    /// missing and the package that brings it instead. GUARDLAB_NO_INSTALL=1 does the same.
    #[arg(long, global = true)]
    pub no_install: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check spyctl YAML files (policies, fingerprints, groups, deviations).
    #[command(
        after_help = "Examples:\n  guardlab validate policy.yaml fingerprints.yaml\n  guardlab validate --strict policy.yaml   # what `spyctl validate -f policy.yaml` would say\n\nA file holds one document, several separated by `---`, or spyctl's list form (`apiVersion: spyderbat/v1` and `items:`). Plain validate reads what guardlab reads, which is more than spyctl 0.24.2 does in a few places (policies without `spec.mode`, several documents in one stream...; README lists them); --strict says what spyctl would.\n\nFiles are read up to 16 MiB (GUARDLAB_MAX_INPUT_BYTES raises it), YAML nested up to 128 levels, with up to 1000 aliases standing for up to 100000 nodes.\n\nExit codes: 0 all valid, 1 a file has problems, 2 a file could not be read or goes beyond a limit."
    )]
    Validate {
        /// Files to check; each may hold several documents separated by `---`.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Say what spyctl 0.24.2 would say of each file (`spyctl validate -f FILE`): one
        /// document per file, a `spec.mode` on every policy, spyctl's own types and ranges.
        #[arg(long)]
        strict: bool,
    },

    /// Learn fingerprints (one per container, grouped per image) from a sensor event stream.
    #[command(
        after_help = "Examples:\n  guardlab fingerprint --events baseline.ndjson > fingerprints.yaml\n  guardlab fingerprint --events run.ndjson --since +30s --until +2m > fingerprints.yaml\n  guardlab fingerprint --events run.ndjson --since 2024-11-28T08:00:30Z\n\nTIME is an RFC 3339 time with its UTC offset (2024-11-28T08:00:30Z, 2024-11-28T09:00:30.5+01:00) or a duration after the first event of the file, once sorted by time (+30s, +1m30s, +1.5s, +250ms). The window is half-open: an event at --since is in it, one at --until is not. Events outside it are not fingerprinted, but all of them build the process tree: a process started before the window is still the parent of what it starts in it.\n\nExit codes: 0 ok, 2 bad input (a bad TIME, an empty window, nothing in it)."
    )]
    Fingerprint {
        /// The event stream, and the part of it to learn from.
        #[command(flatten)]
        events: WindowedEvents,
        /// Print one SpyderbatFingerprint per container instead of FingerprintGroups.
        #[arg(long)]
        ungrouped: bool,
        #[command(flatten)]
        limits: EngineLimits,
    },

    /// The guard console in a browser: fingerprints, policies, investigation and flags of a
    /// running lab (`lab up`), live; every action the same as the scenario's steps.
    #[command(
        after_help = "Examples:\n  guardlab lab up && guardlab console        # then open http://127.0.0.1:1235/\n  guardlab scenario cryptominer --step --console --keep-lab   # a workshop\n  guardlab scenario cryptominer --backend replay --console --step   # the same on a recording, no root\n\nThe console reads the lab's events from its start (the lab keeps them), learns the fingerprints, and keeps the lab's policies while it runs; what an enforcing policy decides (kills) it carries out. It listens on loopback only; --listen-any allows another address, and then every request needs the token it prints. The page loads nothing from anywhere but the console.\n\nExit codes: 130/143 stopped by Ctrl-C or SIGTERM (the lab stays up), 2 it could not listen or no lab is up."
    )]
    Console(ConsoleArgs),

    /// Policies: create one from fingerprints.
    #[command(
        subcommand,
        after_help = "Example:\n  guardlab policy create --from fingerprints.yaml --name jupyter-policy > policy.yaml"
    )]
    Policy(PolicyCommand),

    /// Merge fingerprints or deviations into a policy (asymmetric: the policy only grows).
    #[command(
        after_help = "Example:\n  guardlab merge --policy policy.yaml --with deviations.yaml > policy.new.yaml"
    )]
    Merge {
        #[arg(long, value_name = "FILE")]
        policy: PathBuf,
        /// Fingerprints, fingerprint groups or deviations to merge in.
        #[arg(long = "with", required = true, num_args = 1.., value_name = "FILE")]
        with: Vec<PathBuf>,
    },

    /// Match an event stream against a policy and print the deviations.
    #[command(
        after_help = "Examples:\n  guardlab deviations --policy policy.yaml --events attack.ndjson\n  guardlab deviations --policy policy.yaml --events attack.ndjson --limit process-depth=40\n\nExit codes: 0 no deviation, 1 deviations found, 2 bad input."
    )]
    Deviations {
        #[arg(long, value_name = "FILE")]
        policy: PathBuf,
        #[arg(long, value_name = "FILE")]
        events: PathBuf,
        /// Print JSON instead of YAML.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        limits: EngineLimits,
    },

    /// Rebuild the causal trace of every deviation: root process to deviant process.
    #[command(
        after_help = "Example:\n  guardlab investigate --policy policy.yaml --events attack.ndjson\n\nExit codes: 0 no deviation, 1 deviations found, 2 bad input."
    )]
    Investigate {
        #[arg(long, value_name = "FILE")]
        policy: PathBuf,
        #[arg(long, value_name = "FILE")]
        events: PathBuf,
        /// Print JSON instead of a text tree.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        limits: EngineLimits,
    },

    /// Bring the lab up, tear it down, or say what runs. Needs root.
    #[command(subcommand)]
    Lab(LabCommand),

    /// Check this host for what guardlab needs: kernel facts, programs and their packages.
    #[command(
        after_help = "Examples:\n  guardlab doctor\n  guardlab doctor --no-install   # what `guardlab lab up --no-install` would refuse\n\nNeeds no root; nothing is installed or changed. \"installed by guardlab\" comes from guardlab's record of host changes (/var/lib/guardlab/host-changes, or $GUARDLAB_HOST_STATE_DIR).\n\nExit codes: 0 the local lab can run here (what it needs is met, or guardlab installs or mounts it when it runs), 1 something the lab needs cannot be had, 2 doctor could not run."
    )]
    Doctor,

    /// Remove everything guardlab put on this host and list the packages it installed.
    #[command(
        after_help = "Examples:\n  guardlab clean --dry-run\n  guardlab clean\n  guardlab clean --remove-packages\n\nRemoves, saying each: every local lab left up or behind (as `guardlab lab down` does), guardlab's caches under $XDG_CACHE_HOME/guardlab (else ~/.cache/guardlab: pod images and their downloads, the lab CA, the package index's wheels, test environments), and the cgroup v2 mount guardlab made when no lab uses it. Then lists the Debian packages guardlab installed, with the apt-get command that removes them. Nothing outside guardlab's own directories is touched.\n\nExit codes: 0 done (or, with --dry-run, listed), 2 something could not be removed."
    )]
    Clean(CleanArgs),

    /// Run a scenario end to end and check it against its snapshots. Needs root for the local backend.
    #[command(
        after_help = "Examples:\n  guardlab scenario cryptominer\n  guardlab scenario --list\n  guardlab scenario cryptominer --backend replay\n  guardlab scenario cryptominer --step --keep-lab   # a workshop: one step per Enter\n  guardlab scenario cryptominer --backend replay --out run-docs/   # the run's spyctl files\n\nThe lab a run brings up belongs to the run: Ctrl-C or SIGTERM takes it down before guardlab exits, and if the run is killed its lab's daemon removes it. With --keep-lab it stays until `guardlab lab down`.\n\nExit codes: 0 pass, 1 a snapshot or check failed, 2 the lab could not run, or events were lost (the run is incomplete: neither a pass nor a fail), 130/143 stopped by SIGINT/SIGTERM."
    )]
    Scenario(ScenarioArgs),

    /// The local lab's pod image: make new pins for its Python packages.
    #[command(subcommand)]
    Image(ImageCommand),
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Resolve the recipe's Python requirements anew with the image's own pip and rewrite the
    /// lock files (manifests/image/venv.lock and index-wheels.lock) with exact versions and
    /// hashes. A maintainer's command: the new pins are a reviewed change (the next scenario run
    /// may need `--update-snapshots`). Needs root (debootstrap, chroot).
    #[command(
        after_help = "Example:\n  guardlab image lock\n  git diff manifests/image/   # review the new pins\n  guardlab scenario cryptominer   # builds the new image, checks the snapshots\n\nExit codes: 0 lock files written, 2 the image could not be built or pip failed."
    )]
    Lock {
        /// The recipe directory.
        #[arg(long, value_name = "DIR", default_value = "manifests/image")]
        recipe: PathBuf,
    },
}

/// `--limit NAME=VALUE`: the limits of the engine that runs the command.
#[derive(Debug, Clone, Default, Args)]
pub struct EngineLimits {
    /// Change one of the engine's limits, e.g. `--limit process-depth=40` (repeatable).
    #[arg(long = "limit", value_name = "NAME=VALUE", long_help = limit_help())]
    pub settings: Vec<LimitSetting>,
}

impl EngineLimits {
    pub fn limits(&self) -> Limits {
        Limits::with(&self.settings)
    }
}

fn limit_help() -> String {
    format!(
        "Change one of the engine's limits (repeatable), e.g. `--limit process-depth=40`. \
         Everything the engine keeps that grows with what a pod does has one; past it the \
         engine warns once per limit and pod and keeps guarding. The limits, with their \
         defaults:\n{}",
        Limits::help()
    )
}

/// An event stream and a time window over it.
#[derive(Debug, Args)]
pub struct WindowedEvents {
    /// NDJSON events written by the sensor, or a `scenario --record` recording (its step
    /// markers are skipped). Read up to 256 MiB (GUARDLAB_MAX_INPUT_BYTES raises it).
    #[arg(long = "events", value_name = "FILE")]
    pub path: PathBuf,
    /// Learn only from events at or after TIME (see below), e.g. `+30s` or
    /// `2024-11-28T08:00:30Z`.
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    pub since: Option<TimeBound>,
    /// Learn only from events before TIME (see below), e.g. `+2m`.
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    pub until: Option<TimeBound>,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Create a policy from fingerprints or fingerprint groups (symmetric merge, mode audit).
    #[command(
        after_help = "Example:\n  guardlab policy create --from fingerprints.yaml --name jupyter-policy > policy.yaml"
    )]
    Create {
        #[arg(long = "from", required = true, num_args = 1.., value_name = "FILE")]
        from: Vec<PathBuf>,
        /// metadata.name of the policy (default: from the fingerprints).
        #[arg(long)]
        name: Option<String>,
        #[arg(long, value_enum, default_value_t = ModeArg::Audit)]
        mode: ModeArg,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    Audit,
    Enforce,
}

/// `--backend`: one of [`Backend::ALL`] by its name, each listed with a line of help.
fn backend_parser() -> impl TypedValueParser<Value = Backend> {
    PossibleValuesParser::new(
        Backend::ALL.map(|backend| PossibleValue::new(backend.name()).help(backend_help(backend))),
    )
    .try_map(|name| name.parse::<Backend>())
}

/// What `--help` says of a backend.
fn backend_help(backend: Backend) -> &'static str {
    match backend {
        Backend::Local => "Namespaces and a cgroup on this host (default)",
        Backend::Kind => "A kind (Kubernetes in Docker) cluster, or an existing one with --context",
        Backend::Replay => "The engine side only, from a recorded event stream (no privileges)",
    }
}

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Bring the lab up (harmless when it is already up).
    #[command(
        after_help = "Examples:\n  guardlab lab up\n  guardlab lab up --backend kind --dry-run\n\nThe local lab has no owner: it stays until `guardlab lab down`. Ctrl-C (or SIGTERM) before it is up removes what it made (exit 130/143)."
    )]
    Up(LabArgs),
    /// Remove everything the lab made, also after a crash.
    #[command(after_help = "Example:\n  guardlab lab down")]
    Down(LabArgs),
    /// Say what runs and where to open the notebook, whose lab it is, and what it lost.
    #[command(
        after_help = "Example:\n  guardlab lab status\n\nA local lab either belongs to a scenario run (it goes when that run ends, however it ends) or has no owner (`lab up`, `scenario --keep-lab`: it stays until `lab down`). The sensor's line says how many events it delivered and lost.\n\nExit codes: 0 up, coming up or down, 1 a lab failed or was left behind by a killed one (`guardlab lab down` removes it), 2 status could not be read."
    )]
    Status(LabArgs),
    /// The local lab's daemon (started by `lab up`; not for direct use).
    #[command(hide = true)]
    Daemon(DaemonArgs),
}

/// `guardlab lab daemon`: what `lab up` starts; guardlab-lab takes them as `DaemonOptions`.
#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// The lab's directory, with the `config.json` that `lab up` wrote.
    #[arg(long, value_name = "DIR")]
    pub lab_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct LabArgs {
    #[arg(long, value_parser = backend_parser(), default_value_t = Backend::Local)]
    pub backend: Backend,
    /// kind backend: use this kubeconfig context instead of creating a kind cluster.
    #[arg(long)]
    pub context: Option<String>,
    /// kind backend: the namespace to use (one per workshop participant).
    #[arg(long)]
    pub namespace: Option<String>,
    /// Print every step and manifest, change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct CleanArgs {
    /// List what would be removed, remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also remove the Debian packages guardlab installed (apt-get remove), and forget them.
    #[arg(long)]
    pub remove_packages: bool,
    /// Where local labs keep their state.
    #[arg(long, value_name = "DIR", default_value = guardlab_lab::image::DEFAULT_LABS_DIR)]
    pub labs_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct ScenarioArgs {
    /// Scenario name (a file in scenarios/) or a path to a scenario file.
    #[arg(required_unless_present = "list")]
    pub name: Option<String>,
    /// List the scenarios with their descriptions.
    #[arg(long)]
    pub list: bool,
    #[arg(long, value_parser = backend_parser(), default_value_t = Backend::Local)]
    pub backend: Backend,
    /// Rewrite the snapshot files instead of comparing.
    #[arg(long)]
    pub update_snapshots: bool,
    /// Write the sensor's event stream of the run to FILE (NDJSON).
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// Write a JSON report to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write the run's documents into DIR (new or empty), unredacted and one per file, for use
    /// with spyctl: fingerprints/, policy/ (as made and after each change), deviations/, and the
    /// trace (trace.yaml, trace.txt).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Write a JUnit XML report to FILE.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Leave the lab up at the end (also when stopped by Ctrl-C): it then has no owner and
    /// stays until `guardlab lab down`.
    #[arg(long)]
    pub keep_lab: bool,
    /// Workshop pace: show each step's explanation and wait for Enter before running it (q and
    /// Enter stop there). Learners can look at the notebook in between. With --console, a step
    /// the console can do (create the policy, set its mode, look at deviations, investigate,
    /// disable) waits until the learner does it there, or Enter.
    #[arg(long)]
    pub step: bool,
    /// Serve the guard console (Fingerprints, Policies, Investigation, Flags; live) over the
    /// run, at http://127.0.0.1:1235/ unless --console-listen says otherwise.
    #[arg(long)]
    pub console: bool,
    #[command(flatten)]
    pub listen: ConsoleListen,
    /// Write the run as one self-contained HTML page: its steps, the fingerprint and policy
    /// YAML, the policy graph with the deviations, the investigation graph, the flags.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    #[command(flatten)]
    pub limits: EngineLimits,
}

/// Where the guard console listens, and who may ask it.
#[derive(Debug, Clone, Args)]
pub struct ConsoleListen {
    /// The console's address (loopback unless --listen-any).
    #[arg(
        long = "console-listen",
        value_name = "ADDR",
        default_value = "127.0.0.1:1235"
    )]
    pub listen: std::net::SocketAddr,
    /// Allow a console address that is not loopback; every request then needs the token
    /// (printed, or --console-token).
    #[arg(long)]
    pub listen_any: bool,
    /// The token a console on a non-loopback address requires (default: a random one).
    #[arg(long, value_name = "TOKEN", requires = "listen_any")]
    pub console_token: Option<String>,
}

impl ConsoleListen {
    pub fn options(&self, title: String) -> guardlab_guard_console::ConsoleOptions {
        guardlab_guard_console::ConsoleOptions {
            listen: self.listen,
            allow_remote: self.listen_any,
            token: self.console_token.clone(),
            title,
        }
    }
}

/// `guardlab console`: the guard console over a running lab, or over a recorded stream.
#[derive(Debug, Args)]
pub struct ConsoleArgs {
    /// The lab's backend, when reading a running lab.
    #[arg(long, value_parser = backend_parser(), default_value_t = Backend::Local)]
    pub backend: Backend,
    /// The lab to read (as `lab up --namespace` named it).
    #[arg(long, env = "GUARDLAB_LAB", default_value = "cryptominer")]
    pub namespace: String,
    #[command(flatten)]
    pub listen: ConsoleListen,
    #[command(flatten)]
    pub limits: EngineLimits,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn backend_takes_every_backend_by_its_name_and_defaults_to_local() {
        let backend = |args: &[&str]| -> Result<Backend, clap::Error> {
            let cli =
                Cli::try_parse_from(["guardlab", "scenario", "cryptominer"].iter().chain(args))?;
            match cli.command {
                Command::Scenario(s) => Ok(s.backend),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(backend(&[]).unwrap(), Backend::Local);
        for b in Backend::ALL {
            assert_eq!(backend(&["--backend", b.name()]).unwrap(), b);
        }
        let err = backend(&["--backend", "docker"]).unwrap_err().to_string();
        assert!(
            err.contains("invalid value 'docker'") && err.contains("local, kind, replay"),
            "{err}"
        );
    }

    #[test]
    fn limits_are_taken_by_name_and_a_bad_one_is_refused_naming_it() {
        let cli = Cli::try_parse_from([
            "guardlab",
            "deviations",
            "--policy",
            "p.yaml",
            "--events",
            "e.ndjson",
            "--limit",
            "process-depth=40",
            "--limit",
            "deviations=100",
        ])
        .unwrap();
        let Command::Deviations { limits, .. } = cli.command else {
            panic!("deviations");
        };
        let limits = limits.limits();
        assert_eq!((limits.process_depth, limits.deviations), (40, 100));
        let err =
            Cli::try_parse_from(["guardlab", "scenario", "cryptominer", "--limit", "depth=3"])
                .unwrap_err()
                .to_string();
        assert!(err.contains("unknown limit \"depth\""), "{err}");
    }

    #[test]
    fn every_visible_command_has_an_example() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
                let here = format!("{path} {}", sub.get_name());
                let has_children = sub.get_subcommands().next().is_some();
                let help = sub
                    .get_after_help()
                    .map(|h| h.to_string())
                    .unwrap_or_default();
                if !has_children && !help.contains("Example") {
                    missing.push(here.clone());
                }
                walk(sub, &here, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "guardlab", &mut missing);
        assert!(
            missing.is_empty(),
            "commands without an example in --help: {missing:?}"
        );
    }
}
