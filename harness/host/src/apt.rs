//! Installing what is missing with apt-get, after saying so, and recording it in the ledger.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;

use crate::{Host, HostError, Installs, LedgerKind, NotInstalledBecause, Progress, Requirement};

/// How many of a failed installer's last lines an error carries.
const TAIL_LINES: usize = 20;

impl Host {
    /// Makes sure every requirement is met: nothing happens when all are; otherwise the missing
    /// packages are installed with apt-get (said first, as one phase line) or, when installs are
    /// refused, this process is not root or the host has no apt-get, an error names each
    /// missing thing, its package and the command that installs it.
    ///
    /// Concurrent callers (tests run in parallel) install one at a time: the second one finds
    /// the requirement met once it gets the lock.
    pub fn ensure(
        &self,
        requirements: &[&Requirement],
        progress: &dyn Progress,
    ) -> Result<(), HostError> {
        if self.missing(requirements).is_empty() {
            return Ok(());
        }
        let refuse = |missing: &[&Requirement], because| HostError::Missing {
            missing: missing.iter().map(|r| r.as_missing()).collect(),
            because,
        };
        let missing = self.missing(requirements);
        if self.installs == Installs::Refused {
            return Err(refuse(&missing, NotInstalledBecause::Refused));
        }
        if !self.is_root {
            return Err(refuse(&missing, NotInstalledBecause::NotRoot));
        }
        let Some(apt_get) = self.apt_get.clone() else {
            return Err(refuse(&missing, NotInstalledBecause::NoApt));
        };
        let _lock = self.install_lock()?;
        // Someone may have installed it while we waited for the lock.
        let missing = self.missing(requirements);
        if missing.is_empty() {
            return Ok(());
        }
        let mut packages: Vec<&str> = missing.iter().map(|r| r.package).collect();
        packages.sort_unstable();
        packages.dedup();
        let purposes: Vec<String> = missing
            .iter()
            .map(|r| format!("{} {}", r.name, r.purpose))
            .collect();
        progress.phase(&format!(
            "installing {} with apt-get ({}); --no-install refuses instead, `guardlab clean` lists \
             what guardlab installed",
            packages.join(" "),
            purposes.join("; ")
        ));
        let before: Vec<bool> = packages.iter().map(|p| self.dpkg_installed(p)).collect();
        let install = |progress: &dyn Progress| {
            let mut c = Command::new(&apt_get);
            c.args([
                "-y",
                "-q",
                "--no-install-recommends",
                "-o",
                "DPkg::Lock::Timeout=600",
                "install",
            ])
            .args(&packages);
            run_logged(c, progress)
        };
        if let Err(first) = install(progress) {
            // The usual cause on a fresh machine: package lists older than the mirror.
            progress.detail("apt-get install failed: updating the package lists and retrying");
            let mut update = Command::new(&apt_get);
            update.args(["-q", "-o", "DPkg::Lock::Timeout=600", "update"]);
            run_logged(update, progress).map_err(|e| {
                let (command, status, output) = e;
                HostError::InstallFailed {
                    command: format!("{} {command}", apt_get.display()),
                    status,
                    output,
                }
            })?;
            install(progress).map_err(|(_, status, output)| HostError::InstallFailed {
                command: format!(
                    "{} install {} (first attempt: {})",
                    apt_get.display(),
                    packages.join(" "),
                    first.1
                ),
                status,
                output,
            })?;
        }
        for (package, was_installed) in packages.iter().zip(before) {
            if !was_installed && self.dpkg_installed(package) {
                let purpose = missing
                    .iter()
                    .filter(|r| r.package == *package)
                    .map(|r| format!("{}: {}", r.name, r.purpose))
                    .collect::<Vec<_>>()
                    .join("; ");
                self.ledger.record(LedgerKind::Package, package, &purpose)?;
            }
        }
        let still = self.missing(requirements);
        if !still.is_empty() {
            return Err(refuse(&still, NotInstalledBecause::StillMissing));
        }
        Ok(())
    }

    /// An exclusive lock next to the ledger, held while installing or mounting.
    pub(crate) fn install_lock(&self) -> Result<File, HostError> {
        let dir = self.ledger.path().parent().unwrap_or(Path::new("/"));
        let io = |context: String| move |source| HostError::Io { context, source };
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        let path = dir.join(".install.lock");
        let file = File::create(&path).map_err(io(format!("creating {}", path.display())))?;
        file.lock()
            .map_err(io(format!("locking {}", path.display())))?;
        Ok(file)
    }
}

impl Host {
    /// Whether dpkg has `package` installed.
    fn dpkg_installed(&self, package: &str) -> bool {
        Command::new(&self.dpkg_query)
            .args(["-W", "-f=${db:Status-Abbrev}", package])
            .stderr(Stdio::null())
            .output()
            .is_ok_and(|o| o.status.success() && o.stdout.starts_with(b"ii"))
    }
}

/// Runs `command` with its output lines (stdout and stderr) as progress details; on failure
/// returns (the command's arguments, its status, its last lines).
pub(crate) fn run_logged(
    mut command: Command,
    progress: &dyn Progress,
) -> Result<(), (String, String, Vec<String>)> {
    let described = command
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    command
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => return Err((described, format!("could not start: {e}"), Vec::new())),
    };
    let (tx, rx) = mpsc::channel::<String>();
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        }));
    }
    if let Some(err) = child.stderr.take() {
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        }));
    }
    drop(tx);
    let mut tail = VecDeque::with_capacity(TAIL_LINES);
    for line in rx {
        progress.detail(&line);
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    for r in readers {
        let _ = r.join();
    }
    match child.wait() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err((described, s.to_string(), tail.into())),
        Err(e) => Err((described, format!("could not wait: {e}"), tail.into())),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;
    use std::sync::Mutex;

    use super::*;
    use crate::{Ledger, NoProgress, Probe};

    const TOOL: Requirement = Requirement {
        name: "gl-fake-tool",
        package: "gl-fake-pkg",
        purpose: "is what this test needs",
        needed_by: "tests",
        probe: Probe::Program("gl-fake-tool"),
    };

    /// A host whose search path is only `bin`, whose apt-get and dpkg-query are scripts.
    /// `apt-get install` logs its arguments, fails `fail_first` times, then "installs" by
    /// creating `bin/<tool>` when `creates` is set and marking the package as installed.
    struct Fake {
        dir: tempfile::TempDir,
        host: Host,
    }

    impl Fake {
        fn new(fail_first: u32, creates: bool) -> Fake {
            let dir = tempfile::tempdir().unwrap();
            let bin = dir.path().join("bin");
            std::fs::create_dir(&bin).unwrap();
            let d = dir.path().display();
            let create = if creates {
                format!(
                    "printf '#!/bin/sh\\n' > {d}/bin/gl-fake-tool; chmod +x {d}/bin/gl-fake-tool"
                )
            } else {
                String::new()
            };
            let apt = format!(
                "#!/bin/sh\necho \"$*\" >> {d}/apt.log\n\
                 case \"$*\" in *update*) echo updated; exit 0;; esac\n\
                 n=$(cat {d}/fails 2>/dev/null || echo 0)\n\
                 if [ \"$n\" -lt {fail_first} ]; then echo $((n+1)) > {d}/fails; echo 'E: Unable to fetch' >&2; exit 100; fi\n\
                 {create}\n\
                 for a in \"$@\"; do case \"$a\" in gl-*) touch {d}/installed-$a;; esac; done\n\
                 echo 'Setting up gl-fake-pkg'\n"
            );
            let dpkg = format!(
                "#!/bin/sh\nfor a in \"$@\"; do p=$a; done\n\
                 if [ -e {d}/installed-$p ]; then printf 'ii '; exit 0; fi\nexit 1\n"
            );
            for (name, text) in [("apt-get", apt), ("dpkg-query", dpkg)] {
                let p = dir.path().join(name);
                std::fs::write(&p, text).unwrap();
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
            let host = Host {
                installs: Installs::Allowed,
                search_path: vec![bin],
                ledger: Ledger::in_dir(&dir.path().join("state")),
                apt_get: Some(dir.path().join("apt-get")),
                dpkg_query: dir.path().join("dpkg-query"),
                is_root: true,
            };
            Fake { dir, host }
        }

        fn apt_log(&self) -> String {
            std::fs::read_to_string(self.dir.path().join("apt.log")).unwrap_or_default()
        }
    }

    /// Records phases, and whether apt-get had already run when each phase was said.
    struct Recorder {
        apt_log: PathBuf,
        phases: Mutex<Vec<(String, bool)>>,
        details: Mutex<Vec<String>>,
    }

    impl Progress for Recorder {
        fn phase(&self, what: &str) {
            let ran = self.apt_log.exists();
            self.phases.lock().unwrap().push((what.to_string(), ran));
        }
        fn detail(&self, line: &str) {
            self.details.lock().unwrap().push(line.to_string());
        }
    }

    fn recorder(fake: &Fake) -> Recorder {
        Recorder {
            apt_log: fake.dir.path().join("apt.log"),
            phases: Mutex::new(Vec::new()),
            details: Mutex::new(Vec::new()),
        }
    }

    #[test]
    fn a_missing_tool_is_installed_after_saying_so_and_recorded() {
        let fake = Fake::new(0, true);
        let progress = recorder(&fake);
        fake.host.ensure(&[&TOOL], &progress).unwrap();
        let phases = progress.phases.lock().unwrap().clone();
        assert_eq!(phases.len(), 1, "{phases:?}");
        let (said, apt_had_run) = &phases[0];
        assert!(!apt_had_run, "said before installing");
        assert!(
            said.contains("installing gl-fake-pkg with apt-get")
                && said.contains("gl-fake-tool is what this test needs")
                && said.contains("--no-install"),
            "{said}"
        );
        assert!(
            progress
                .details
                .lock()
                .unwrap()
                .iter()
                .any(|l| l == "Setting up gl-fake-pkg"),
            "the installer's output is shown as detail"
        );
        assert!(fake.apt_log().contains("--no-install-recommends"));
        let recorded = fake.host.ledger.entries_of(LedgerKind::Package).unwrap();
        assert_eq!(recorded.len(), 1);
        assert_eq!(recorded[0].what, "gl-fake-pkg");
        assert!(recorded[0].purpose.contains("is what this test needs"));

        // A second call finds it and does nothing.
        std::fs::remove_file(fake.dir.path().join("apt.log")).unwrap();
        fake.host.ensure(&[&TOOL], &progress).unwrap();
        assert_eq!(fake.apt_log(), "", "nothing run when the tool is there");
    }

    #[test]
    fn a_failed_install_updates_the_lists_and_retries_once() {
        let fake = Fake::new(1, true);
        fake.host.ensure(&[&TOOL], &NoProgress).unwrap();
        let log = fake.apt_log();
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 3, "install, update, install: {log}");
        assert!(
            lines[0].contains("install") && lines[1].contains("update"),
            "{log}"
        );
        assert_eq!(fake.host.ledger.entries().unwrap().len(), 1);
    }

    #[test]
    fn an_install_that_keeps_failing_says_what_the_installer_said() {
        let fake = Fake::new(5, true);
        let err = fake.host.ensure(&[&TOOL], &NoProgress).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, HostError::InstallFailed { .. })
                && text.contains("install gl-fake-pkg")
                && text.contains("E: Unable to fetch"),
            "{text}"
        );
        assert_eq!(
            fake.host.ledger.entries().unwrap(),
            vec![],
            "nothing recorded"
        );
    }

    #[test]
    fn a_package_that_does_not_bring_the_tool_is_an_error() {
        let fake = Fake::new(0, false);
        let err = fake.host.ensure(&[&TOOL], &NoProgress).unwrap_err();
        assert!(
            matches!(
                err,
                HostError::Missing {
                    because: NotInstalledBecause::StillMissing,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("still missing"), "{err}");
    }

    #[test]
    fn refusals_name_the_tool_the_package_and_the_command_and_run_nothing() {
        let cases = [
            (Installs::Refused, true, true, "--no-install"),
            (Installs::Allowed, false, true, "needs root"),
            (Installs::Allowed, true, false, "no apt-get"),
        ];
        for (installs, is_root, has_apt, expected) in cases {
            let mut fake = Fake::new(0, true);
            fake.host.installs = installs;
            fake.host.is_root = is_root;
            if !has_apt {
                fake.host.apt_get = None;
            }
            let err = fake.host.ensure(&[&TOOL], &NoProgress).unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains("gl-fake-tool")
                    && text.contains("`gl-fake-pkg`")
                    && text.contains("apt-get install gl-fake-pkg")
                    && text.contains(expected),
                "{installs:?} root={is_root} apt={has_apt}: {text}"
            );
            assert_eq!(fake.apt_log(), "", "nothing run");
        }
    }

    #[test]
    fn a_package_that_was_already_installed_is_not_recorded_as_guardlabs() {
        let fake = Fake::new(0, true);
        std::fs::write(fake.dir.path().join("installed-gl-fake-pkg"), "").unwrap();
        fake.host.ensure(&[&TOOL], &NoProgress).unwrap();
        assert_eq!(fake.host.ledger.entries().unwrap(), vec![]);
    }
}
