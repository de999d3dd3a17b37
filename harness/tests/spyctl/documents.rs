//! The documents guardlab writes, made through the real `guardlab` binary's file commands from
//! two event streams: the committed recording of a live run (`scenarios/cryptominer.ndjson`)
//! and the notebook story every test tier replays (guardlab-test-support).

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use guardlab_test_support::notebook::{FIRST, Notebook, REPLAY};

pub fn guardlab() -> Command {
    Command::cargo_bin("guardlab").expect("the guardlab binary is built")
}

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs guardlab; its standard output, which must be there. Exit 1 is an answer for
/// `deviations` (there are some), so only 0 and 1 are accepted.
pub fn stdout_of(cmd: &mut Command) -> String {
    let output = cmd.output().expect("running guardlab");
    assert!(
        matches!(output.status.code(), Some(0 | 1)),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("guardlab writes UTF-8")
}

fn write_events(path: &Path, events: &[guardlab_events::Event]) {
    let mut out = Vec::new();
    for event in events {
        guardlab_events::write_ndjson(&mut out, event).unwrap();
    }
    std::fs::write(path, out).unwrap();
}

/// One source of events: a baseline to learn from, and a whole run to match.
pub struct Story {
    pub name: &'static str,
    pub baseline: PathBuf,
    pub run: PathBuf,
}

/// The stories, written under `dir`.
pub fn stories(dir: &Path) -> Vec<Story> {
    std::fs::create_dir_all(dir).unwrap();
    // The live run: the baseline is what the scenario fingerprints (the steps before `fingerprint`).
    let recording =
        guardlab::scenario::recording::read_recording(&root().join("scenarios/cryptominer.ndjson"))
            .expect("the committed recording reads");
    let at = recording
        .steps
        .iter()
        .position(|s| s.name == "fingerprint")
        .expect("the recording has a fingerprint step");
    let baseline: Vec<_> = recording.steps[..at]
        .iter()
        .flat_map(|s| s.events.clone())
        .collect();
    let all: Vec<_> = recording
        .steps
        .iter()
        .flat_map(|s| s.events.clone())
        .collect();
    let live = Story {
        name: "live",
        baseline: dir.join("live-baseline.ndjson"),
        run: dir.join("live-run.ndjson"),
    };
    write_events(&live.baseline, &baseline);
    write_events(&live.run, &all);

    // The notebook story: one run's baseline, another run with a terminal and an attack.
    let mut first = Notebook::start(&FIRST);
    first.baseline_cells(&FIRST);
    let mut replay = Notebook::start(&REPLAY);
    replay.baseline_cells(&REPLAY);
    let bash = replay.terminal();
    replay.attack(bash);
    let story = Story {
        name: "notebook",
        baseline: dir.join("notebook-baseline.ndjson"),
        run: dir.join("notebook-run.ndjson"),
    };
    write_events(&story.baseline, &first.s.events);
    write_events(&story.run, &replay.s.events);
    vec![live, story]
}

/// What the file commands wrote for one story, one document per file.
pub struct Written {
    pub story: &'static str,
    pub groups: Vec<PathBuf>,
    pub fingerprints: Vec<PathBuf>,
    /// `policy create` from the (ungrouped) fingerprints.
    pub policy: PathBuf,
    pub deviations: Vec<PathBuf>,
    /// The deviations as guardlab printed them (one YAML stream).
    pub deviations_stream: PathBuf,
    /// `merge --policy POLICY --with <the deviations>`.
    pub merged_deviations: PathBuf,
    /// `merge --policy POLICY --with <the run's fingerprints>`.
    pub merged_fingerprints: PathBuf,
    pub run_fingerprints: PathBuf,
}

impl Written {
    pub fn all(&self) -> Vec<PathBuf> {
        let mut all = Vec::new();
        all.extend(self.groups.iter().cloned());
        all.extend(self.fingerprints.iter().cloned());
        all.push(self.policy.clone());
        all.extend(self.deviations.iter().cloned());
        all.push(self.merged_deviations.clone());
        all.push(self.merged_fingerprints.clone());
        all
    }
}

/// The policy's name in every story.
pub const POLICY_NAME: &str = "jupyter-notebook-policy";

/// Every file command that writes spyctl YAML, on every story.
pub fn write_all(dir: &Path) -> Vec<Written> {
    let mut written = Vec::new();
    for story in stories(dir) {
        let out = dir.join(story.name);
        std::fs::create_dir_all(&out).unwrap();
        let groups_text = stdout_of(
            guardlab()
                .arg("fingerprint")
                .arg("--events")
                .arg(&story.baseline),
        );
        let groups = super::split_documents(&groups_text, &out, "group");
        let ungrouped = stdout_of(
            guardlab()
                .args(["fingerprint", "--ungrouped", "--events"])
                .arg(&story.baseline),
        );
        let fingerprints = super::split_documents(&ungrouped, &out, "fingerprint");
        let policy = out.join("policy.yaml");
        let mut create = guardlab();
        create.args(["policy", "create", "--name", POLICY_NAME, "--from"]);
        create.args(&fingerprints);
        std::fs::write(&policy, stdout_of(&mut create)).unwrap();
        let deviations_text = stdout_of(
            guardlab()
                .args(["deviations", "--policy"])
                .arg(&policy)
                .arg("--events")
                .arg(&story.run),
        );
        let deviations_stream = out.join("deviations.yaml");
        std::fs::write(&deviations_stream, &deviations_text).unwrap();
        let deviations = super::split_documents(&deviations_text, &out, "deviation");
        assert!(
            !deviations.is_empty(),
            "the {} story's run deviates from its baseline",
            story.name
        );
        let merged_deviations = out.join("merged-deviations.yaml");
        std::fs::write(
            &merged_deviations,
            stdout_of(
                guardlab()
                    .args(["merge", "--policy"])
                    .arg(&policy)
                    .arg("--with")
                    .arg(&deviations_stream),
            ),
        )
        .unwrap();
        let run_fingerprints = out.join("run-fingerprints.yaml");
        let run_ungrouped = stdout_of(
            guardlab()
                .args(["fingerprint", "--ungrouped", "--events"])
                .arg(&story.run),
        );
        assert_eq!(
            super::split_documents(&run_ungrouped, &out, "run-fingerprint").len(),
            1,
            "one container, one fingerprint"
        );
        std::fs::write(&run_fingerprints, &run_ungrouped).unwrap();
        let merged_fingerprints = out.join("merged-fingerprints.yaml");
        std::fs::write(
            &merged_fingerprints,
            stdout_of(
                guardlab()
                    .args(["merge", "--policy"])
                    .arg(&policy)
                    .arg("--with")
                    .arg(&run_fingerprints),
            ),
        )
        .unwrap();
        written.push(Written {
            story: story.name,
            groups,
            fingerprints,
            policy,
            deviations,
            deviations_stream,
            merged_deviations,
            merged_fingerprints,
            run_fingerprints,
        });
    }
    written
}
