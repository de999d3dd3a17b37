//! Pruning the pod image cache, on real directories in a temporary cache: what goes (other
//! recipes' images but the most recently used one, unfinished images, what crashed builds and
//! prunes left, stale registrations) and what stays (the new image, images labs use, whatever
//! directory they keep their state in, images a build is busy with, the downloads). No image
//! is built: the entries are made by hand; labs register through the real lookup.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use guardlab_lab::image::{
    ImageCache, ImageUser, PrunedKind, ensure_cached_image, image_recipe_hash, image_registrations,
    images_used_by_labs, prune_images,
};
use guardlab_lab::local::state::{LabState, ProcessRecord, STATE_FILE, STATE_VERSION, StateFile};
use guardlab_lab::local::teardown::teardown;
use guardlab_lab::{NoProgress, Progress};

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
    image_of(cache, &hash(c), kib, days_ago)
}

/// [`image`] of the recipe whose hash is `recipe_hash`.
fn image_of(cache: &Path, recipe_hash: &str, kib: usize, days_ago: Option<u64>) -> PathBuf {
    let dir = cache.join(recipe_hash);
    fs::create_dir_all(dir.join("rootfs/usr/bin")).unwrap();
    fs::write(dir.join("rootfs/usr/bin/python3"), vec![7u8; kib * KIB]).unwrap();
    fs::write(
        dir.join("image.yaml"),
        format!("recipe_hash: {recipe_hash}\n"),
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
        labs_dirs: vec![root.path().join("labs")],
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
    let labs = &cache.labs_dirs[0];
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
        labs_dirs: vec![root.path().join("labs")],
    };
    image(&cache.dir, 'a', 4, Some(0));
    let old = image(&cache.dir, 'b', 4, Some(5));
    let older = image(&cache.dir, 'c', 4, Some(9));
    fs::create_dir_all(cache.labs_dirs[0].join("broken")).unwrap();
    fs::write(
        cache.labs_dirs[0].join("broken/state.json"),
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

/// The cache reads the files a local lab writes by their names: the names must be the same.
#[test]
fn the_cache_reads_the_lab_files_the_local_lab_writes() {
    assert_eq!(guardlab_lab::image::LAB_STATE_FILE, STATE_FILE);
    assert_eq!(
        guardlab_lab::image::LAB_CONFIG_FILE,
        guardlab_lab::local::state::CONFIG_FILE
    );
}

#[test]
fn a_cache_with_only_the_new_image_is_left_alone() {
    let root = tempfile::tempdir().unwrap();
    let cache = ImageCache {
        dir: root.path().join("images"),
        downloads: root.path().join("images/downloads"),
        labs_dirs: vec![root.path().join("no-labs-yet")],
    };
    let new = image(&cache.dir, 'a', 4, Some(0));
    let lines = Lines::default();
    assert!(prune_images(&cache, &hash('a'), &lines).unwrap().is_empty());
    assert!(lines.all().is_empty(), "{:?}", lines.all());
    assert!(new.join("image.yaml").is_file());
}

/// Set when the image in `dir` was last used.
fn last_used(dir: &Path, ago: Duration) {
    fs::write(dir.join("last-used"), "").unwrap();
    fs::File::options()
        .write(true)
        .open(dir.join("last-used"))
        .unwrap()
        .set_modified(SystemTime::now() - ago)
        .unwrap();
}

/// A copy of the project's image recipe that hashes as a recipe of its own (a comment added):
/// its directory and its hash.
fn recipe(root: &Path, variant: &str) -> (PathBuf, String) {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../manifests/image");
    let dir = root.join("recipes").join(variant);
    fs::create_dir_all(&dir).unwrap();
    for entry in fs::read_dir(&source).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
        }
    }
    let mut text = fs::read_to_string(dir.join("recipe.yaml")).unwrap();
    text.push_str(&format!("# variant {variant}\n"));
    fs::write(dir.join("recipe.yaml"), text).unwrap();
    let hash = image_recipe_hash(&dir).unwrap();
    (dir, hash)
}

/// A lab named `lab` in `state_dir` comes up on the image of `recipe_dir` the way `lab up`
/// does: its state file first (the image and the registration it will make), then the
/// lookup, which registers it in the image. Its registration.
fn lab_up(state_dir: &Path, lab: &str, recipe_dir: &Path, cache: &ImageCache) -> PathBuf {
    let lab_dir = state_dir.join(lab);
    fs::create_dir_all(&lab_dir).unwrap();
    let user = ImageUser::new(lab, &lab_dir).unwrap();
    let image_dir = cache.dir.join(image_recipe_hash(recipe_dir).unwrap());
    let registration = user.registration_in(&image_dir);
    StateFile::in_dir(&lab_dir)
        .save(&LabState {
            version: STATE_VERSION,
            lab: lab.into(),
            image_rootfs: Some(image_dir.join("rootfs")),
            image_registration: Some(registration.clone()),
            phase: "ready".into(),
            ..Default::default()
        })
        .unwrap();
    let built = ensure_cached_image(recipe_dir, cache, Some(&user), &NoProgress).unwrap();
    assert_eq!(built.rootfs, image_dir.join("rootfs"));
    assert!(
        registration.is_file(),
        "{} is missing",
        registration.display()
    );
    let text = fs::read_to_string(&registration).unwrap();
    assert!(
        text.contains(&user.state_file.display().to_string()),
        "the registration names the lab's state file for humans: {text}"
    );
    registration
}

/// The reviewer's case: lab A keeps its state in another directory than the labs that build
/// (`--state-dir /run/a`) and runs on image X; the recipe changes twice and the labs in the
/// default state directory build Y, then Z. The prune after Z keeps Y (most recently used) and
/// must keep X too: lab A's pod runs on it.
#[test]
fn a_lab_in_another_state_dir_keeps_its_image_through_two_recipe_changes() {
    let root = tempfile::tempdir().unwrap();
    let default_state = root.path().join("run-guardlab");
    let other_state = root.path().join("run-a");
    let cache = ImageCache {
        dir: root.path().join("images"),
        downloads: root.path().join("images/downloads"),
        labs_dirs: vec![default_state.clone()],
    };
    let (recipe_x, x) = recipe(root.path(), "x");
    let (recipe_y, y) = recipe(root.path(), "y");
    let (recipe_z, z) = recipe(root.path(), "z");

    // Lab A comes up on X (in the cache already), two hours ago.
    let image_x = image_of(&cache.dir, &x, 8, Some(5));
    let registration_a = lab_up(&other_state, "a", &recipe_x, &cache);
    last_used(&image_x, Duration::from_secs(7200));

    // The recipe changes: Y is built (the build prunes, then the lab here takes Y), an hour ago.
    let image_y = image_of(&cache.dir, &y, 8, None);
    assert!(prune_images(&cache, &y, &NoProgress).unwrap().is_empty());
    let registration_here = lab_up(&default_state, "cryptominer", &recipe_y, &cache);
    last_used(&image_y, Duration::from_secs(3600));
    teardown(&default_state.join("cryptominer"), &NoProgress).unwrap();
    assert!(!registration_here.exists(), "down removes the registration");

    // It changes again: Z is built; the lab here records Z, not Y; Y is the most recently used
    // other image.
    let image_z = image_of(&cache.dir, &z, 8, None);
    lab_up(&default_state, "cryptominer", &recipe_z, &cache);
    let lines = Lines::default();
    let removed = prune_images(&cache, &z, &lines).unwrap();
    let lines = lines.all();
    assert!(removed.is_empty(), "{removed:?} {lines:?}");
    assert!(
        image_x.join("rootfs/usr/bin/python3").is_file(),
        "lab A's image was pruned from under it: {lines:?}"
    );
    assert!(image_y.exists() && image_z.exists());
    let state_a = other_state.join("a/state.json").canonicalize().unwrap();
    assert!(
        lines.contains(&format!(
            "keeping the pod image {} (lab a uses it, its state is {}): {}",
            &x[..12],
            state_a.display(),
            image_x.display()
        )),
        "{lines:?}"
    );

    // Once lab A is down, X is one more old image.
    teardown(&other_state.join("a"), &NoProgress).unwrap();
    assert!(!registration_a.exists() && image_x.exists());
    let removed = prune_images(&cache, &z, &NoProgress).unwrap();
    assert_eq!(
        removed.iter().map(|e| &e.path).collect::<Vec<_>>(),
        vec![&image_x]
    );
    assert!(image_y.exists() && image_z.exists());
}

/// A registration counts while its lab's state file exists; one whose state file is gone
/// (the lab was removed by an older harness, or `/run` was emptied by a reboot) is stale: the
/// prune removes it, and its image is one more old image. One that cannot be read counts.
#[test]
fn a_registration_whose_state_file_is_gone_is_stale() {
    let root = tempfile::tempdir().unwrap();
    let cache = ImageCache {
        dir: root.path().join("images"),
        downloads: root.path().join("images/downloads"),
        labs_dirs: vec![root.path().join("run-guardlab")],
    };
    let (recipe_new, new) = recipe(root.path(), "new");
    let (recipe_previous, previous) = recipe(root.path(), "previous");
    let (recipe_stale, stale) = recipe(root.path(), "stale");
    let (recipe_live, live) = recipe(root.path(), "live");
    let (_, unreadable) = recipe(root.path(), "unreadable");
    let image_new = image_of(&cache.dir, &new, 4, None);
    let image_previous = image_of(&cache.dir, &previous, 4, None);
    let image_stale = image_of(&cache.dir, &stale, 4, None);
    let image_live = image_of(&cache.dir, &live, 4, None);
    let image_unreadable = image_of(&cache.dir, &unreadable, 4, Some(9));

    let gone_state = root.path().join("rebooted-run");
    let live_state = root.path().join("run-b");
    let reg_gone = lab_up(&gone_state, "gone", &recipe_stale, &cache);
    let reg_gone_previous = lab_up(&gone_state, "gone-too", &recipe_previous, &cache);
    let reg_live = lab_up(&live_state, "b", &recipe_live, &cache);
    lab_up(&live_state, "c", &recipe_new, &cache);
    last_used(&image_previous, Duration::from_secs(86_400));
    last_used(&image_stale, Duration::from_secs(3 * 86_400));
    last_used(&image_live, Duration::from_secs(7 * 86_400));
    fs::create_dir_all(image_unreadable.join("users")).unwrap();
    fs::write(image_unreadable.join("users/half-written"), "{\"lab\": ").unwrap();
    // What a registration that died half-way leaves: not a registration.
    fs::write(image_stale.join("users/.gone-0123.tmp77"), "{").unwrap();

    fs::remove_dir_all(&gone_state).unwrap();
    let found = image_registrations(&image_stale);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].path, reg_gone);
    assert!(found[0].stale, "{found:?}");
    assert_eq!(found[0].user.as_ref().unwrap().lab, "gone");
    let found = image_registrations(&image_live);
    assert!(found.len() == 1 && !found[0].stale, "{found:?}");
    let found = image_registrations(&image_unreadable);
    assert!(
        found.len() == 1 && found[0].user.is_none() && !found[0].stale,
        "{found:?}"
    );

    let lines = Lines::default();
    let removed = prune_images(&cache, &new, &lines).unwrap();
    let lines = lines.all();
    assert_eq!(
        removed.iter().map(|e| &e.path).collect::<Vec<_>>(),
        vec![&image_stale],
        "{lines:?}"
    );
    for kept in [&image_new, &image_previous, &image_live, &image_unreadable] {
        assert!(kept.join("image.yaml").is_file(), "{}", kept.display());
    }
    // The stale registrations went, also from an image that stays.
    assert!(!reg_gone_previous.exists(), "{lines:?}");
    assert!(reg_live.is_file());
    assert!(
        lines.iter().any(|l| l.starts_with(&format!(
            "removed the stale registration of lab gone-too in the pod image {} (its state ",
            &previous[..12]
        ))),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with(&format!(
            "keeping the pod image {} (a lab registered in {} that cannot be read may use it)",
            &unreadable[..12],
            image_unreadable.join("users/half-written").display()
        ))),
        "{lines:?}"
    );
}

/// `down` removes the lab's registration, also when the daemon was killed (the crash path
/// runs the same teardown), and leaves the image; it removes nothing but a registration.
#[test]
fn down_removes_the_registration_also_after_the_daemon_was_killed() {
    let root = tempfile::tempdir().unwrap();
    let cache = ImageCache {
        dir: root.path().join("images"),
        downloads: root.path().join("images/downloads"),
        labs_dirs: vec![root.path().join("run-guardlab")],
    };
    let (recipe_x, x) = recipe(root.path(), "x");
    let image_x = image_of(&cache.dir, &x, 4, None);
    let state_dir = root.path().join("run-a");
    let registration = lab_up(&state_dir, "a", &recipe_x, &cache);
    // An earlier `up` of it was killed while it registered.
    let half_written = registration.with_file_name(format!(
        ".{}.tmp4242",
        registration.file_name().unwrap().to_string_lossy()
    ));
    fs::write(&half_written, "{").unwrap();
    // Its daemon was killed with SIGKILL: the state records a process that is gone.
    let state_file = StateFile::in_dir(&state_dir.join("a"));
    let mut state = state_file.load().unwrap().unwrap();
    let me = ProcessRecord::of(std::process::id()).unwrap();
    state.daemon = Some(ProcessRecord {
        start_time: me.start_time + 1,
        ..me
    });
    state_file.save(&state).unwrap();

    teardown(&state_dir.join("a"), &NoProgress).unwrap();
    assert!(!registration.exists(), "the registration is left");
    assert!(
        !half_written.exists(),
        "the half-written registration is left"
    );
    assert!(!state_dir.join("a").exists());
    assert!(image_x.join("rootfs/usr/bin/python3").is_file());
    assert!(image_registrations(&image_x).is_empty());

    // A state file that names something else than a registration: nothing is removed.
    let victim = root.path().join("precious");
    fs::write(&victim, "keep me").unwrap();
    fs::create_dir_all(state_dir.join("b")).unwrap();
    StateFile::in_dir(&state_dir.join("b"))
        .save(&LabState {
            version: STATE_VERSION,
            lab: "b".into(),
            image_registration: Some(victim.clone()),
            ..Default::default()
        })
        .unwrap();
    let err = teardown(&state_dir.join("b"), &NoProgress)
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not a pod image registration"), "{err}");
    assert!(victim.is_file());
}
