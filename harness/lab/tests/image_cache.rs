//! Pruning the pod image cache, on real directories in a temporary cache: what goes (other
//! recipes' images but the most recently used one, unfinished images, what crashed builds and
//! prunes left) and what stays (the new image, images labs record, images a build is busy
//! with, the downloads). No image is built: the entries are made by hand.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use guardlab_lab::Progress;
use guardlab_lab::image::{ImageCache, PrunedKind, images_used_by_labs, prune_images};
use guardlab_lab::local::state::{LabState, STATE_VERSION, StateFile};

#[derive(Default)]
struct Lines(Mutex<Vec<String>>);

impl Progress for Lines {
    fn phase(&self, what: &str) {
        self.0.lock().unwrap().push(format!("phase: {what}"));
    }
    fn detail(&self, line: &str) {
        self.0.lock().unwrap().push(line.to_string());
    }
}

impl Lines {
    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

fn hash(c: char) -> String {
    c.to_string().repeat(64)
}

const KIB: usize = 1024;

/// A finished image of recipe `c` (its record and a root filesystem of `kib` KiB), last used
/// `days_ago` days ago (`None`: no mark, as images built before marks existed).
fn image(cache: &Path, c: char, kib: usize, days_ago: Option<u64>) -> PathBuf {
    let dir = cache.join(hash(c));
    fs::create_dir_all(dir.join("rootfs/usr/bin")).unwrap();
    fs::write(dir.join("rootfs/usr/bin/python3"), vec![7u8; kib * KIB]).unwrap();
    fs::write(
        dir.join("image.yaml"),
        format!("recipe_hash: {}\n", hash(c)),
    )
    .unwrap();
    let at = |days: u64| SystemTime::now() - Duration::from_secs(days * 86_400 + 60);
    // Built a month ago; used since as said.
    fs::File::options()
        .write(true)
        .open(dir.join("image.yaml"))
        .unwrap()
        .set_modified(at(30))
        .unwrap();
    if let Some(days) = days_ago {
        fs::write(dir.join("last-used"), "").unwrap();
        fs::File::options()
            .write(true)
            .open(dir.join("last-used"))
            .unwrap()
            .set_modified(at(days))
            .unwrap();
    }
    dir
}

fn lab_state(labs: &Path, lab: &str, state: serde_json::Value) {
    fs::create_dir_all(labs.join(lab)).unwrap();
    fs::write(labs.join(lab).join("state.json"), state.to_string()).unwrap();
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_prune_keeps_the_new_the_previous_and_the_used_images_and_removes_the_rest() {
    let root = tempfile::tempdir().unwrap();
    let cache = ImageCache {
        dir: root.path().join("images"),
        downloads: root.path().join("images/downloads"),
        labs_dir: root.path().join("labs"),
    };
    let dir = &cache.dir;
    let new = image(dir, 'a', 4, Some(0));
    let old = image(dir, 'b', 100, Some(3));
    let previous = image(dir, 'c', 8, Some(1));
    let used_by_lab = image(dir, 'd', 8, Some(20));
    let unmarked = image(dir, 'e', 200, None);
    let used_by_old_lab = image(dir, 'f', 8, Some(25));
    let unfinished = image(dir, '1', 50, Some(2));
    fs::remove_file(unfinished.join("image.yaml")).unwrap();
    let being_built = image(dir, '2', 8, Some(10));

    // Locks: recipe 2's build runs (its lock is held), so does recipe 4's (an interrupted build
    // of it must stay); recipe b's lock file is free and goes with its image.
    for c in ['b', 'c', '2', '3', '4'] {
        fs::write(dir.join(format!(".{}.lock", hash(c))), "").unwrap();
    }
    let running_2 = fs::File::open(dir.join(format!(".{}.lock", hash('2')))).unwrap();
    running_2.lock().unwrap();
    let running_4 = fs::File::open(dir.join(format!(".{}.lock", hash('4')))).unwrap();
    running_4.lock().unwrap();
    let crashed_build = dir.join(format!(".build-{}-4242", hash('3')));
    fs::create_dir_all(crashed_build.join("rootfs/etc")).unwrap();
    fs::write(
        crashed_build.join("rootfs/etc/passwd"),
        vec![b'x'; 30 * KIB],
    )
    .unwrap();
    let running_build = dir.join(format!(".build-{}-4343", hash('4')));
    fs::create_dir_all(running_build.join("rootfs")).unwrap();
    let crashed_prune = dir.join(format!(".prune-{}-77", hash('9')));
    fs::create_dir_all(crashed_prune.join("rootfs")).unwrap();
    fs::create_dir_all(cache.downloads.join("debs")).unwrap();
    fs::write(cache.downloads.join("debs/bash.deb"), "deb").unwrap();

    // A lab records its image; a lab of an older build only says it in its config; a lab of
    // another cache; a lab dir without state (torn down).
    let labs = &cache.labs_dir;
    // (Written as `lab up` writes it.)
    fs::create_dir_all(labs.join("workshop")).unwrap();
    StateFile::in_dir(&labs.join("workshop"))
        .save(&LabState {
            version: STATE_VERSION,
            lab: "workshop".into(),
            image_rootfs: Some(used_by_lab.join("rootfs")),
            phase: "ready".into(),
            ..Default::default()
        })
        .unwrap();
    lab_state(
        labs,
        "older",
        serde_json::json!({"version": 1, "lab": "older", "phase": "ready"}),
    );
    fs::write(
        labs.join("older/config.json"),
        serde_json::json!({"runtime": {"rootfs": used_by_old_lab.join("rootfs")}}).to_string(),
    )
    .unwrap();
    lab_state(
        labs,
        "elsewhere",
        serde_json::json!({"version": 1, "image_rootfs": "/var/tmp/other-cache/x/rootfs"}),
    );
    fs::create_dir_all(labs.join("gone")).unwrap();
    assert_eq!(
        images_used_by_labs(labs).unwrap(),
        vec![
            (
                "elsewhere".to_string(),
                PathBuf::from("/var/tmp/other-cache/x/rootfs")
            ),
            ("older".to_string(), used_by_old_lab.join("rootfs")),
            ("workshop".to_string(), used_by_lab.join("rootfs")),
        ]
    );

    let lines = Lines::default();
    let removed = prune_images(&cache, &hash('a'), &lines).unwrap();
    let lines = lines.all();
    eprintln!("{}", lines.join("\n"));

    let mut removed_paths: Vec<(PathBuf, PrunedKind)> =
        removed.iter().map(|e| (e.path.clone(), e.kind)).collect();
    removed_paths.sort();
    let mut expected = vec![
        (old.clone(), PrunedKind::Image),
        (unmarked.clone(), PrunedKind::Image),
        (unfinished.clone(), PrunedKind::UnfinishedImage),
        (crashed_build.clone(), PrunedKind::InterruptedBuild),
        (crashed_prune.clone(), PrunedKind::InterruptedPrune),
    ];
    expected.sort();
    assert_eq!(removed_paths, expected);
    for path in [&old, &unmarked, &unfinished, &crashed_build, &crashed_prune] {
        assert!(!path.exists(), "{} is still there", path.display());
    }
    for path in [
        &new,
        &previous,
        &used_by_lab,
        &used_by_old_lab,
        &being_built,
        &running_build,
    ] {
        assert!(path.exists(), "{} was removed", path.display());
    }
    assert!(new.join("rootfs/usr/bin/python3").is_file());
    assert!(cache.downloads.join("debs/bash.deb").is_file());
    assert!(!dir.join(format!(".{}.lock", hash('b'))).exists());
    for c in ['c', '2', '4'] {
        assert!(dir.join(format!(".{}.lock", hash(c))).exists(), "lock {c}");
    }
    assert!(
        names(dir).iter().all(|n| !n.starts_with(".prune-")),
        "{:?}",
        names(dir)
    );

    // One line per removed entry, with its size.
    let sizes: Vec<u64> = removed.iter().map(|e| e.bytes).collect();
    let old_bytes = removed.iter().find(|e| e.path == old).unwrap().bytes;
    assert!(
        (100 * KIB as u64..=140 * KIB as u64).contains(&old_bytes),
        "{sizes:?}"
    );
    let removed_lines: Vec<&String> = lines.iter().filter(|l| l.starts_with("removed ")).collect();
    assert_eq!(removed_lines.len(), 5, "{lines:?}");
    let line_of = |path: &Path| {
        removed_lines
            .iter()
            .find(|l| l.ends_with(&format!(": {}", path.display())))
            .unwrap_or_else(|| panic!("no line for {}: {lines:?}", path.display()))
            .to_string()
    };
    assert_eq!(
        line_of(&old),
        format!(
            "removed the old pod image bbbbbbbbbbbb ({} KiB, last used 3 days ago): {}",
            old_bytes / 1024,
            old.display()
        )
    );
    assert!(
        line_of(&unmarked).starts_with("removed the old pod image eeeeeeeeeeee (2"),
        "{lines:?}"
    );
    assert!(
        line_of(&unmarked).contains("KiB, last used 30 days ago)"),
        "an image without a mark was last used when it was built: {lines:?}"
    );
    assert!(line_of(&unfinished).starts_with("removed the unfinished pod image 111111111111 ("));
    assert!(line_of(&crashed_build).starts_with("removed what an interrupted build left ("));
    assert!(line_of(&crashed_prune).starts_with("removed what an interrupted prune left ("));
    assert!(
        lines.iter().any(|l| l
            == &format!(
                "keeping the pod image dddddddddddd (lab workshop uses it): {}",
                used_by_lab.display()
            )),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l
            == &format!(
                "keeping the previous pod image cccccccccccc (last used 24 h ago): {}",
                previous.display()
            )),
        "{lines:?}"
    );

    // Once the build of recipe 2 is over, its image is one more old one: c (used a day ago)
    // stays the previous image, 2 (ten days ago) goes.
    drop(running_2);
    let lines = Lines::default();
    let removed = prune_images(&cache, &hash('a'), &lines).unwrap();
    assert_eq!(
        removed.iter().map(|e| &e.path).collect::<Vec<_>>(),
        vec![&being_built],
        "{:?}",
        lines.all()
    );
    assert!(previous.exists() && used_by_lab.exists() && used_by_old_lab.exists());

    // Nothing more to do: nothing removed, nothing said but what is kept.
    let lines = Lines::default();
    let removed = prune_images(&cache, &hash('a'), &lines).unwrap();
    assert!(removed.is_empty(), "{removed:?}");
    assert!(
        !lines
            .all()
            .iter()
            .any(|l| l.starts_with("removed") || l.starts_with("phase")),
        "{:?}",
        lines.all()
    );
    assert!(running_build.exists(), "recipe 4's build still runs");
    drop(running_4);
}

#[test]
fn a_lab_state_that_cannot_be_read_stops_the_prune() {
    let root = tempfile::tempdir().unwrap();
    let cache = ImageCache {
        dir: root.path().join("images"),
        downloads: root.path().join("images/downloads"),
        labs_dir: root.path().join("labs"),
    };
    image(&cache.dir, 'a', 4, Some(0));
    let old = image(&cache.dir, 'b', 4, Some(5));
    let older = image(&cache.dir, 'c', 4, Some(9));
    fs::create_dir_all(cache.labs_dir.join("broken")).unwrap();
    fs::write(
        cache.labs_dir.join("broken/state.json"),
        "{\"version\": 1, ",
    )
    .unwrap();
    let err = prune_images(&cache, &hash('a'), &Lines::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("broken/state.json") && err.contains("cannot tell which pod image"),
        "{err}"
    );
    assert!(old.exists() && older.exists(), "nothing is removed");
}

#[test]
fn a_cache_with_only_the_new_image_is_left_alone() {
    let root = tempfile::tempdir().unwrap();
    let cache = ImageCache {
        dir: root.path().join("images"),
        downloads: root.path().join("images/downloads"),
        labs_dir: root.path().join("no-labs-yet"),
    };
    let new = image(&cache.dir, 'a', 4, Some(0));
    let lines = Lines::default();
    assert!(prune_images(&cache, &hash('a'), &lines).unwrap().is_empty());
    assert!(lines.all().is_empty(), "{:?}", lines.all());
    assert!(new.join("image.yaml").is_file());
}
