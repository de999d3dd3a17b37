//! The local backend on its own: `up`, `down`, `status` and the daemon, for guardlab-lab's
//! tests and for trying the lab by hand. The product wires the same calls as `guardlab lab ...`.
//!
//! Its few arguments are read by hand ([`parse`]): guardlab-lab is a library and does not
//! depend on clap, and a tool with three commands and eight options does not need it.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use guardlab_lab::local::{ImageSource, LabCondition, LocalLab, LocalLabOptions, PodRuntime};
use guardlab_lab::{DaemonOptions, IoContext, Lab, LabError, Progress};

const HELP: &str = "\
Runs guardlab's local lab (a Jupyter pod in namespaces on this host)

Usage: guardlab-local-lab <COMMAND> [OPTIONS]

Commands:
  up      Bring the lab up (harmless when it is up)
  down    Remove everything the lab made
  status  Say what runs and where to open the notebook

Options (of every command):
  --lab NAME            The lab's name [default: cryptominer]
  --state-dir DIR       Where labs keep their state [default: /run/guardlab]
  --image-cache DIR     The image cache (default: the XDG cache dir)
  --forward ADDRESS     Host loopback address forwarded to the notebook [default: 127.0.0.1:1234]
  --rootfs DIR          Use this image root filesystem instead of building the recipe's
  --miner-tarball FILE  The miner tarball served as the scenario's download
  --no-sensor           Run without the eBPF sensor
  --no-install          Refuse to install, mount or load what the host lacks; name it and its package instead
  --hold                up: stay in the foreground; the lab belongs to this process and is removed
                        when it ends (Ctrl-C, SIGTERM, or killed: then the lab's daemon removes it)
  -h, --help            Print help

Examples:
  sudo guardlab-local-lab up --lab demo
  sudo guardlab-local-lab status --lab demo
  sudo guardlab-local-lab down --lab demo
";

/// What a command does, for its `--help`.
fn command_help(command: &str) -> Option<String> {
    let about = match command {
        "up" => "Bring the lab up (harmless when it is up).",
        "down" => "Remove everything the lab made.",
        "status" => "Say what runs and where to open the notebook.",
        _ => return None,
    };
    let options = HELP
        .split("Options (of every command):\n")
        .nth(1)?
        .split("\nExamples:")
        .next()?;
    Some(format!(
        "{about}\n\nUsage: guardlab-local-lab {command} [OPTIONS]\n\nOptions:\n{options}\n\
         Example:\n  sudo guardlab-local-lab {command} --lab demo\n"
    ))
}

/// The options of `up`, `down` and `status`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct LabArgs {
    lab: String,
    state_dir: PathBuf,
    image_cache: Option<PathBuf>,
    forward: SocketAddr,
    rootfs: Option<PathBuf>,
    miner_tarball: Option<PathBuf>,
    no_sensor: bool,
    no_install: bool,
    /// `up --hold`: the lab belongs to this process.
    hold: bool,
}

impl Default for LabArgs {
    fn default() -> LabArgs {
        LabArgs {
            lab: "cryptominer".into(),
            state_dir: PathBuf::from(guardlab_lab::image::DEFAULT_LABS_DIR),
            image_cache: None,
            forward: SocketAddr::from(([127, 0, 0, 1], guardlab_lab::local::DEFAULT_NOTEBOOK_PORT)),
            rootfs: None,
            miner_tarball: None,
            no_sensor: false,
            no_install: false,
            hold: false,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Command {
    Up(LabArgs),
    Down(LabArgs),
    Status(LabArgs),
    /// The lab daemon (started by `up`, hidden from the help).
    Daemon(DaemonOptions),
    /// `--help`: print this and succeed.
    Help(String),
}

/// A command line this program does not take; the message says what to write instead.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
enum ArgsError {
    #[error("no command: use up, down or status (see --help)")]
    NoCommand,
    #[error("unknown command `{0}`: use up, down or status (see --help)")]
    UnknownCommand(String),
    #[error("`{command}` has no option `{option}` (see `guardlab-local-lab {command} --help`)")]
    UnknownOption { command: String, option: String },
    #[error("`{0}` needs a value")]
    MissingValue(String),
    #[error("`{option} {value}`: {value} is not {expected}")]
    BadValue {
        option: String,
        value: String,
        expected: &'static str,
    },
    #[error("`daemon` needs `--lab-dir DIR` (it is started by `up`)")]
    NoLabDir,
    #[error("an argument is not UTF-8: {0:?}")]
    NotUtf8(OsString),
}

/// Reads the command line (without the program's name).
fn parse(words: impl IntoIterator<Item = OsString>) -> Result<Command, ArgsError> {
    let words = words
        .into_iter()
        .map(|w| w.into_string().map_err(ArgsError::NotUtf8))
        .collect::<Result<Vec<String>, ArgsError>>()?;
    let Some((command, rest)) = words.split_first() else {
        return Err(ArgsError::NoCommand);
    };
    let mut rest = rest.iter();
    let unknown = |option: &str| ArgsError::UnknownOption {
        command: command.clone(),
        option: option.to_string(),
    };
    match command.as_str() {
        "-h" | "--help" | "help" => Ok(Command::Help(HELP.to_string())),
        "daemon" => {
            let mut lab_dir = None;
            while let Some(option) = rest.next() {
                match option.as_str() {
                    "--lab-dir" => lab_dir = Some(PathBuf::from(value_of(option, &mut rest)?)),
                    _ => return Err(unknown(option)),
                }
            }
            Ok(Command::Daemon(DaemonOptions {
                lab_dir: lab_dir.ok_or(ArgsError::NoLabDir)?,
            }))
        }
        "up" | "down" | "status" => {
            let mut args = LabArgs::default();
            while let Some(option) = rest.next() {
                match option.as_str() {
                    "-h" | "--help" => {
                        return Ok(Command::Help(command_help(command).unwrap_or_default()));
                    }
                    "--lab" => args.lab = value_of(option, &mut rest)?,
                    "--state-dir" => args.state_dir = value_of(option, &mut rest)?.into(),
                    "--image-cache" => args.image_cache = Some(value_of(option, &mut rest)?.into()),
                    "--rootfs" => args.rootfs = Some(value_of(option, &mut rest)?.into()),
                    "--miner-tarball" => {
                        args.miner_tarball = Some(value_of(option, &mut rest)?.into());
                    }
                    "--forward" => {
                        let text = value_of(option, &mut rest)?;
                        args.forward = text.parse().map_err(|_| ArgsError::BadValue {
                            option: option.clone(),
                            value: text,
                            expected: "an address and port such as 127.0.0.1:1234",
                        })?;
                    }
                    "--no-sensor" => args.no_sensor = true,
                    "--no-install" => args.no_install = true,
                    "--hold" if command == "up" => args.hold = true,
                    _ => return Err(unknown(option)),
                }
            }
            Ok(match command.as_str() {
                "up" => Command::Up(args),
                "down" => Command::Down(args),
                _ => Command::Status(args),
            })
        }
        other => Err(ArgsError::UnknownCommand(other.to_string())),
    }
}

/// The word after `option`.
fn value_of<'a>(
    option: &str,
    rest: &mut impl Iterator<Item = &'a String>,
) -> Result<String, ArgsError> {
    rest.next()
        .cloned()
        .ok_or_else(|| ArgsError::MissingValue(option.to_string()))
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

fn lab(args: &LabArgs) -> Result<LocalLab, LabError> {
    let mut options = LocalLabOptions::new(&args.lab);
    options.state_dir = args.state_dir.clone();
    options.forward = Some(args.forward);
    options.sensor = !args.no_sensor;
    options.miner_tarball = args.miner_tarball.clone();
    options.host = guardlab_host::Host::new(args.no_install);
    if args.hold {
        options.owned_by = Some(format!("guardlab-local-lab up --hold --lab {}", args.lab));
    }
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
        options.image = ImageSource::Prebuilt(PodRuntime::prebuilt(rootfs, &recipe_dir)?);
    }
    let exe = std::env::current_exe().context(|| "finding this program")?;
    options.daemon_command = vec![exe.into_os_string(), "daemon".into()];
    LocalLab::new(options)
}

async fn run(command: Command) -> Result<(), LabError> {
    let progress = StderrProgress(Instant::now());
    match command {
        Command::Up(args) => {
            let mut lab = lab(&args)?;
            let info = lab.up(&progress).await?;
            println!(
                "{}",
                serde_json::to_string_pretty(&info).unwrap_or_default()
            );
            eprintln!("open {}", info.notebook_url);
            if args.hold {
                // Until SIGINT or SIGTERM; killed otherwise, the daemon removes the lab.
                use tokio::signal::unix::{SignalKind, signal};
                let mut terminate =
                    signal(SignalKind::terminate()).context(|| "handling SIGTERM")?;
                let mut interrupt =
                    signal(SignalKind::interrupt()).context(|| "handling SIGINT")?;
                eprintln!("holding the lab until Ctrl-C");
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = interrupt.recv() => {}
                }
                let removed = lab.take_down(&progress).await?;
                eprintln!("{removed}");
            }
        }
        Command::Down(args) => lab(&args)?.down(&progress).await?,
        Command::Status(args) => {
            let lab = lab(&args)?;
            match lab.inspect().await? {
                LabCondition::Running(status) => println!(
                    "{}",
                    serde_json::to_string_pretty(&status).unwrap_or_default()
                ),
                LabCondition::LeftBehind {
                    processes, mounts, ..
                } => println!(
                    "lab {} is not running but left things behind ({processes} processes, \
                     {mounts} mounts, its state): run `down`",
                    args.lab
                ),
                LabCondition::Down => println!("lab {} is down", args.lab),
            }
        }
        Command::Daemon(_) | Command::Help(_) => {
            unreachable!("handled before the runtime starts")
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let command = match parse(std::env::args_os().skip(1)) {
        Ok(command) => command,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match command {
        Command::Help(text) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        // The daemon builds its own runtime.
        Command::Daemon(options) => guardlab_lab::daemon_main(options),
        command => {
            guardlab_host::runtime(std::thread::available_parallelism().map_or(1, |n| n.get()))
                .context(|| "starting the runtime")
                .and_then(|runtime| runtime.block_on(run(command)))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<OsString> {
        line.split_whitespace().map(OsString::from).collect()
    }

    #[test]
    fn daemon_arguments_parse_from_trailing_words() {
        assert_eq!(
            parse(words("daemon --lab-dir /run/guardlab/cryptominer")).unwrap(),
            Command::Daemon(DaemonOptions {
                lab_dir: PathBuf::from("/run/guardlab/cryptominer")
            })
        );
        let err = parse(words("daemon --bogus")).unwrap_err().to_string();
        assert!(err.contains("--bogus"), "{err}");
        assert_eq!(parse(words("daemon")).unwrap_err(), ArgsError::NoLabDir);
    }

    #[test]
    fn lab_commands_take_their_options_and_refuse_others_by_name() {
        let Command::Up(args) = parse(words(
            "up --lab demo --state-dir /tmp/labs --forward 127.0.0.1:0 --no-sensor --no-install",
        ))
        .unwrap() else {
            panic!("not up")
        };
        assert_eq!(
            args,
            LabArgs {
                lab: "demo".into(),
                state_dir: "/tmp/labs".into(),
                forward: "127.0.0.1:0".parse().unwrap(),
                no_sensor: true,
                no_install: true,
                ..LabArgs::default()
            }
        );
        assert_eq!(
            parse(words("status")).unwrap(),
            Command::Status(LabArgs::default())
        );
        let Command::Up(held) = parse(words("up --hold")).unwrap() else {
            panic!("not up")
        };
        assert!(held.hold);
        let err = parse(words("down --hold")).unwrap_err().to_string();
        assert!(err.contains("`down` has no option `--hold`"), "{err}");
        assert_eq!(
            parse(words("down --lab")).unwrap_err(),
            ArgsError::MissingValue("--lab".into())
        );
        let err = parse(words("up --forward here")).unwrap_err().to_string();
        assert!(err.contains("`--forward here`"), "{err}");
        let err = parse(words("down --colour")).unwrap_err().to_string();
        assert!(err.contains("`down` has no option `--colour`"), "{err}");
        assert_eq!(
            parse(words("restart")).unwrap_err(),
            ArgsError::UnknownCommand("restart".into())
        );
        assert_eq!(parse(Vec::new()).unwrap_err(), ArgsError::NoCommand);
    }

    #[test]
    fn every_command_has_help_with_an_example() {
        let Command::Help(top) = parse(words("--help")).unwrap() else {
            panic!("no help")
        };
        assert!(top.contains("Examples:\n  sudo guardlab-local-lab up --lab demo"));
        for command in ["up", "down", "status"] {
            let Command::Help(text) = parse(words(&format!("{command} --help"))).unwrap() else {
                panic!("no help for {command}")
            };
            assert!(text.contains("--no-install"), "{text}");
            assert!(
                text.contains(&format!(
                    "Example:\n  sudo guardlab-local-lab {command} --lab demo"
                )),
                "{text}"
            );
        }
    }
}
