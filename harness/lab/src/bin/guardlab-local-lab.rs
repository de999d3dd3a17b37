//! The local backend on its own: `up`, `down`, `status` and the daemon, for guardlab-lab's
//! tests and for trying the lab by hand. The product wires the same calls as `guardlab lab ...`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use guardlab_lab::local::{ImageSource, LocalLab, LocalLabOptions};
use guardlab_lab::{Lab, Progress};

#[derive(Parser)]
#[command(
    about = "Runs guardlab's local lab (a Jupyter pod in namespaces on this host)",
    after_help = "Examples:\n  sudo guardlab-local-lab up --lab demo\n  sudo guardlab-local-lab status --lab demo\n  sudo guardlab-local-lab down --lab demo"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct LabArgs {
    /// The lab's name.
    #[arg(long, default_value = "cryptominer")]
    lab: String,
    /// Where labs keep their state.
    #[arg(long, default_value = "/run/guardlab")]
    state_dir: PathBuf,
    /// The image cache (default: the XDG cache dir).
    #[arg(long)]
    image_cache: Option<PathBuf>,
    /// Host loopback address forwarded to the notebook.
    #[arg(long, default_value = "127.0.0.1:1234")]
    forward: SocketAddr,
    /// Use this image root filesystem instead of building the recipe's.
    #[arg(long)]
    rootfs: Option<PathBuf>,
    /// The miner tarball served as the scenario's download.
    #[arg(long)]
    miner_tarball: Option<PathBuf>,
    /// Run without the eBPF sensor.
    #[arg(long)]
    no_sensor: bool,
    /// Refuse to install, mount or load what the host lacks; name it and its package instead.
    #[arg(long)]
    no_install: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Bring the lab up (harmless when it is up).
    #[command(after_help = "Example:\n  sudo guardlab-local-lab up --lab demo")]
    Up(LabArgs),
    /// Remove everything the lab made.
    #[command(after_help = "Example:\n  sudo guardlab-local-lab down --lab demo")]
    Down(LabArgs),
    /// Say what runs and where to open the notebook.
    #[command(after_help = "Example:\n  sudo guardlab-local-lab status --lab demo")]
    Status(LabArgs),
    /// The lab daemon (started by `up`).
    #[command(hide = true)]
    Daemon(guardlab_lab::DaemonArgs),
}

struct StderrProgress(Instant);

impl Progress for StderrProgress {
    fn phase(&self, what: &str) {
        eprintln!("[{:6.1}s] {what}", self.0.elapsed().as_secs_f64());
    }
    fn detail(&self, line: &str) {
        eprintln!("          {line}");
    }
}

fn lab(args: &LabArgs) -> Result<LocalLab, guardlab_lab::LabError> {
    let mut options = LocalLabOptions::new(&args.lab);
    options.state_dir = args.state_dir.clone();
    options.forward = Some(args.forward);
    options.sensor = !args.no_sensor;
    options.miner_tarball = args.miner_tarball.clone();
    options.host = guardlab_host::Host::new(args.no_install);
    if let (Some(cache), ImageSource::Recipe { recipe_dir, .. }) =
        (&args.image_cache, &options.image)
    {
        options.image = ImageSource::Recipe {
            recipe_dir: recipe_dir.clone(),
            cache_dir: cache.clone(),
            downloads_dir: None,
        };
    }
    if let Some(rootfs) = &args.rootfs {
        let recipe_dir = options.manifests_dir.join("image");
        options.image = ImageSource::Prebuilt(guardlab_lab::local::PodRuntime::prebuilt(
            rootfs,
            &recipe_dir,
        )?);
    }
    let exe = std::env::current_exe().map_err(|source| guardlab_lab::LabError::Io {
        context: "finding this program".into(),
        source,
    })?;
    options.daemon_command = vec![exe.into_os_string(), "daemon".into()];
    LocalLab::new(options)
}

async fn run(command: Command) -> Result<(), guardlab_lab::LabError> {
    let progress = StderrProgress(Instant::now());
    match command {
        Command::Up(args) => {
            let info = lab(&args)?.up(&progress).await?;
            println!(
                "{}",
                serde_json::to_string_pretty(&info).unwrap_or_default()
            );
            eprintln!("open {}", info.notebook_url);
        }
        Command::Down(args) => lab(&args)?.down(&progress).await?,
        Command::Status(args) => {
            let lab = lab(&args)?;
            match lab.daemon_status().await? {
                Some(status) => println!(
                    "{}",
                    serde_json::to_string_pretty(&status).unwrap_or_default()
                ),
                None if lab.state()?.is_some() => println!(
                    "lab {} is not running but left state behind: run `down`",
                    args.lab
                ),
                None => println!("lab {} is down", args.lab),
            }
        }
        Command::Daemon(_) => unreachable!("handled before the runtime starts"),
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        // The daemon builds its own runtime.
        Command::Daemon(args) => guardlab_lab::daemon_main(args),
        command => match guardlab_host::runtime(
            std::thread::available_parallelism().map_or(1, |n| n.get()),
        ) {
            Ok(runtime) => runtime.block_on(run(command)),
            Err(source) => Err(guardlab_lab::LabError::Io {
                context: "starting the runtime".into(),
                source,
            }),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
