//! The committed eBPF object must be what its sources build into.
//!
//! - `bpf/build.sh` records the sha256 of every input (and of the object) in
//!   `bpf/SOURCES.sha256`, with the toolchain it used: the files must match (no tools needed).
//! - A fresh build (`build.sh --out`, with clang, llvm-strip and libbpf's headers installed
//!   through guardlab-host when missing) must match the committed object: byte for byte when
//!   this host's toolchain is the recorded one (the build is reproducible), and otherwise in
//!   everything that depends on the sources but not on the compiler's code generation
//!   (`bpf_shape`): programs, maps, license and the layouts of the records shared with user
//!   space. Which comparison it made, and why, is in its output and in every failure.

mod bpf_shape;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use bpf_shape::{ObjectShape, ProgramShape, defined_structs, differences, shape_of};
use guardlab_host::{Host, StderrProgress, catalog};
use sha2::{Digest, Sha256};

fn bpf_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("bpf")
}

/// The `# <tool>: <version>` lines of a SOURCES.sha256 or a `guardlab.bpf.toolchain` file.
fn toolchain_lines(file: &str, text: &str) -> BTreeMap<String, String> {
    let mut toolchain = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if let Some(comment) = line.strip_prefix("# ") {
            let (name, value) = comment.split_once(": ").unwrap_or_else(|| {
                panic!(
                    "{file} line {}: expected `# <tool>: <version>`, got {line:?}",
                    i + 1
                )
            });
            toolchain.insert(name.to_string(), value.to_string());
        }
    }
    toolchain
}

/// (file -> sha256, tool -> version) from SOURCES.sha256.
fn recorded() -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let listing = std::fs::read_to_string(bpf_dir().join("SOURCES.sha256"))
        .expect("bpf/SOURCES.sha256 (written by bpf/build.sh)");
    let mut hashes = BTreeMap::new();
    for (i, line) in listing.lines().enumerate() {
        if line.starts_with("# ") {
            continue;
        }
        let (hash, file) = line.split_once("  ").unwrap_or_else(|| {
            panic!(
                "bpf/SOURCES.sha256 line {}: expected `<sha256>  <file>`, got {line:?}",
                i + 1
            )
        });
        hashes.insert(file.to_string(), hash.to_string());
    }
    (hashes, toolchain_lines("bpf/SOURCES.sha256", &listing))
}

/// clang, llvm-strip and libbpf's headers: installed through guardlab-host when missing (CI is
/// root on a fresh machine); otherwise the failure names the packages and the command.
fn ensure_build_tools() {
    if let Err(e) = Host::new(false).ensure(&catalog::BPF_BUILD, &StderrProgress) {
        panic!("this test rebuilds bpf/guardlab.bpf.o: {e}");
    }
}

/// Runs `build.sh --out` of the sources in `src` (the script builds the directory it is in):
/// the object and the toolchain it was built with.
fn build(src: &Path, out: &Path) -> (Vec<u8>, BTreeMap<String, String>) {
    let run = Command::new(src.join("build.sh"))
        .arg("--out")
        .arg(out)
        .output()
        .expect("running bpf/build.sh");
    assert!(
        run.status.success(),
        "{}/build.sh --out failed: {}",
        src.display(),
        String::from_utf8_lossy(&run.stderr)
    );
    let object = std::fs::read(out.join("guardlab.bpf.o")).unwrap();
    let toolchain_file = out.join("guardlab.bpf.toolchain");
    let text = std::fs::read_to_string(&toolchain_file)
        .unwrap_or_else(|e| panic!("{}: {e}", toolchain_file.display()));
    (object, toolchain_lines("guardlab.bpf.toolchain", &text))
}

/// The structs guardlab.h defines: the records and map keys and values user space shares.
fn shared_structs() -> Vec<String> {
    let header = std::fs::read_to_string(bpf_dir().join("guardlab.h")).unwrap();
    let structs = defined_structs(&header);
    assert!(
        structs.len() >= 10,
        "bpf/guardlab.h: expected its structs (`struct NAME {{` lines), found {structs:?}"
    );
    structs
}

fn shape(bytes: &[u8], what: &str) -> ObjectShape {
    shape_of(bytes, &shared_structs()).unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn committed_object() -> Vec<u8> {
    std::fs::read(bpf_dir().join("guardlab.bpf.o")).unwrap()
}

#[test]
fn the_committed_object_was_built_from_the_current_sources() {
    let dir = bpf_dir();
    let (hashes, toolchain) = recorded();
    assert!(
        toolchain.contains_key("clang") && toolchain.contains_key("libbpf-dev"),
        "bpf/SOURCES.sha256 does not record the toolchain: run sensor/bpf/build.sh (just bpf)"
    );
    // Every source in the directory must be covered, so a new header cannot slip by.
    let mut expected: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.ends_with(".c") || n.ends_with(".h") || n == "build.sh" || n == "guardlab.bpf.o"
        })
        .collect();
    expected.sort();
    let listed: Vec<String> = hashes.keys().cloned().collect();
    assert_eq!(
        listed, expected,
        "bpf/SOURCES.sha256 does not list exactly the sources: run sensor/bpf/build.sh (just bpf)"
    );
    for (file, hash) in &hashes {
        let bytes = std::fs::read(dir.join(file)).unwrap();
        let actual = hex::encode(Sha256::digest(&bytes));
        assert_eq!(
            &actual, hash,
            "sensor/bpf/{file} changed since guardlab.bpf.o was built: run sensor/bpf/build.sh (just bpf) and commit the object"
        );
    }
}

/// The programs (`SEC("...")` then the function) and maps (`} NAME SEC(".maps");`) the C
/// source declares.
fn declared_in_c() -> (BTreeSet<ProgramShape>, BTreeSet<String>) {
    let source = std::fs::read_to_string(bpf_dir().join("guardlab.bpf.c")).unwrap();
    let lines: Vec<&str> = source.lines().collect();
    let mut programs = BTreeSet::new();
    let mut maps = BTreeSet::new();
    for (i, line) in lines.iter().enumerate() {
        if let Some(section) = line
            .strip_prefix("SEC(\"")
            .and_then(|rest| rest.strip_suffix("\")"))
        {
            let next = lines.get(i + 1).copied().unwrap_or_default();
            let signature = next.strip_prefix("int ").unwrap_or_else(|| {
                panic!(
                    "bpf/guardlab.bpf.c line {}: expected `int NAME(` or `int BPF_PROG(NAME,` after a SEC line, got {next:?}",
                    i + 2
                )
            });
            let function = match signature.strip_prefix("BPF_PROG(") {
                Some(args) => args.split(',').next(),
                None => signature.split('(').next(),
            }
            .unwrap_or_default()
            .trim();
            programs.insert(ProgramShape {
                section: section.to_string(),
                function: function.to_string(),
            });
        }
        if let Some(name) = line
            .strip_prefix("} ")
            .and_then(|rest| rest.strip_suffix(" SEC(\".maps\");"))
        {
            maps.insert(name.to_string());
        }
    }
    (programs, maps)
}

/// The reader of object shapes sees everything the C declares: what the structural comparison
/// below compares is the whole of the object's programs, maps and shared records.
#[test]
fn the_committed_objects_shape_has_every_program_map_and_record_of_the_sources() {
    let shape = shape(&committed_object(), "bpf/guardlab.bpf.o");
    let (programs, maps) = declared_in_c();
    assert_eq!(shape.programs, programs, "programs");
    assert!(programs.len() >= 10, "{programs:?}");
    assert_eq!(
        shape.maps.keys().cloned().collect::<BTreeSet<_>>(),
        maps,
        "maps"
    );
    assert_eq!(shape.license, "GPL");
    assert_eq!(
        shape.structs.keys().cloned().collect::<BTreeSet<_>>(),
        shared_structs().into_iter().collect(),
        "every struct of guardlab.h has its layout in the object's BTF"
    );
    // Spot checks against guardlab.h and guardlab.bpf.c's SIZE/LAYOUT lines.
    let sock = &shape.structs["sock_ev"];
    assert_eq!(sock.size, 80);
    let lport = sock.members.iter().find(|m| m.name == "lport").unwrap();
    assert_eq!((lport.bit_offset, lport.size), (42 * 8, 2));
    let watched = shape.maps["watched"];
    assert_eq!(
        (watched.key_size, watched.value_size, watched.max_entries),
        (8, 4, 4096)
    );
}

#[test]
fn a_fresh_build_matches_the_committed_object() {
    ensure_build_tools();
    let (_, recorded_toolchain) = recorded();
    let out = tempfile::tempdir().unwrap();
    let (fresh, toolchain) = build(&bpf_dir(), out.path());
    let committed = committed_object();
    let shown = |t: &BTreeMap<String, String>| {
        t.iter()
            .map(|(tool, version)| format!("{tool} {version}"))
            .collect::<Vec<_>>()
            .join(", ")
    };

    if toolchain == recorded_toolchain {
        eprintln!(
            "bpf_object: comparing bytes: this host builds with the recorded toolchain ({}), \
             and the build is reproducible",
            shown(&toolchain)
        );
        assert!(
            fresh == committed,
            "a fresh build of bpf/guardlab.bpf.c with the recorded toolchain ({}) gives {} bytes \
             that differ from the committed object's {}: rebuild with sensor/bpf/build.sh (just \
             bpf) and commit the object",
            shown(&toolchain),
            fresh.len(),
            committed.len()
        );
    } else {
        let committed_shape = shape(&committed, "the committed bpf/guardlab.bpf.o");
        let fresh_shape = shape(&fresh, "the fresh build");
        eprintln!(
            "bpf_object: comparing programs, maps, license and record layouts, not bytes: this \
             host's toolchain ({}) is not the recorded one ({}), and another compiler generates \
             other code ({} programs, {} maps, {} structs compared)",
            shown(&toolchain),
            shown(&recorded_toolchain),
            committed_shape.programs.len(),
            committed_shape.maps.len(),
            committed_shape.structs.len()
        );
        let diffs = differences(&committed_shape, &fresh_shape);
        assert!(
            diffs.is_empty(),
            "a fresh build with {} (the object was built with {}; bytes not comparable) differs \
             from the committed object in what the sources decide:\n  {}\nrebuild with \
             sensor/bpf/build.sh (just bpf) and commit the object",
            shown(&toolchain),
            shown(&recorded_toolchain),
            diffs.join("\n  ")
        );
    }
    // Nothing of this checkout's location is in the object.
    let here = env!("CARGO_MANIFEST_DIR").as_bytes();
    assert!(
        !committed.windows(here.len()).any(|w| w == here),
        "the object embeds the checkout's path"
    );
}

/// The structural comparison can fail: sources with one map's max_entries changed build into
/// an object that is reported as different, naming that map and nothing else.
#[test]
fn a_build_with_one_maps_max_entries_changed_is_reported_naming_that_map() {
    ensure_build_tools();
    let src = tempfile::tempdir().unwrap();
    for file in ["build.sh", "guardlab.bpf.c", "guardlab.h", "vmlinux.h"] {
        std::fs::copy(bpf_dir().join(file), src.path().join(file)).unwrap();
    }
    let c_path = src.path().join("guardlab.bpf.c");
    let c = std::fs::read_to_string(&c_path).unwrap();
    let watched = c
        .find("} watched SEC(\".maps\");")
        .expect("the watched map in guardlab.bpf.c");
    let definition = c[..watched]
        .rfind("struct {")
        .expect("the watched map's definition");
    let old = "__uint(max_entries, 4096);";
    let at = definition
        + c[definition..watched]
            .find(old)
            .expect("the watched map has max_entries 4096");
    let mutated = format!(
        "{}__uint(max_entries, 8192);{}",
        &c[..at],
        &c[at + old.len()..]
    );
    std::fs::write(&c_path, mutated).unwrap();

    let out = tempfile::tempdir().unwrap();
    let (fresh, _) = build(src.path(), out.path());
    let diffs = differences(
        &shape(&committed_object(), "the committed bpf/guardlab.bpf.o"),
        &shape(&fresh, "the mutated build"),
    );
    assert_eq!(
        diffs,
        ["map watched: max_entries 4096 in the committed object, 8192 in the fresh build"]
    );
}

/// Each kind of difference is reported, naming what differs.
#[test]
fn differences_name_each_program_map_license_and_struct_that_differs() {
    let base = shape(&committed_object(), "bpf/guardlab.bpf.o");
    assert_eq!(differences(&base, &base), Vec::<String>::new());

    let mut other = base.clone();
    let moved = other.programs.pop_first().unwrap();
    other.programs.insert(ProgramShape {
        section: "tracepoint/sched/sched_process_exec".into(),
        function: moved.function.clone(),
    });
    other.maps.get_mut("net_allow").unwrap().flags = 0;
    other.maps.remove("udp_seen");
    other.license = "Dual MIT/GPL".into();
    other.structs.get_mut("proc_key").unwrap().members[2].bit_offset = 32;
    other.structs.get_mut("dns_ev").unwrap().size = 4096;

    let diffs = differences(&base, &other);
    let expect = [
        format!("program {moved}: in the committed object only"),
        format!(
            "program {} in section tracepoint/sched/sched_process_exec: in the fresh build only",
            moved.function
        ),
        "map net_allow: flags 1 in the committed object, 0 in the fresh build".to_string(),
        "map udp_seen: in the committed object only".to_string(),
        "license: \"GPL\" in the committed object, \"Dual MIT/GPL\" in the fresh build".to_string(),
    ];
    assert_eq!(diffs[..expect.len()], expect, "{diffs:#?}");
    let structs = &diffs[expect.len()..];
    assert_eq!(structs.len(), 2, "{diffs:#?}");
    assert!(
        structs[0].starts_with("struct dns_ev: 4144 bytes {")
            && structs[0].contains("in the fresh build")
            && structs[0].contains("4096 bytes {"),
        "{}",
        structs[0]
    );
    assert!(
        structs[1].starts_with("struct proc_key: 16 bytes {pid@0 (4 bytes), _pad@4 (4 bytes), start@8 (8 bytes)} in the committed object, 16 bytes {pid@0 (4 bytes), _pad@4 (4 bytes), start@4 (8 bytes)}"),
        "{}",
        structs[1]
    );
}
