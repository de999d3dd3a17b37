//! The engine under attack: for each input of `guardlab_test_support::attack` (deep chains of
//! shells, a process exec'ing 10,000 times, an exec storm, 100,000 connects, 10,000 DNS names,
//! 50 MB of one repeated event), the time and the peak heap of fingerprinting, matching against
//! the notebook's policy, and investigating, with the size of what each writes.
//!
//! `cargo bench -p guardlab-engine --bench attacks` (release build). Set
//! `GUARDLAB_BENCH_ATTACK` to a part of an input's name to run only the inputs whose names hold
//! it (`GUARDLAB_BENCH_ATTACK=chain`), and `GUARDLAB_BENCH_PHASE` to `fingerprint`,
//! `deviations` or `investigate` to run only that phase. With `GUARDLAB_BENCH_WRITE=DIR` it
//! measures nothing and writes the inputs as NDJSON into DIR instead (`baseline.ndjson` and one
//! file per attack), to run the CLI on them (`guardlab deviations --events DIR/...`).
//!
//! The peak heap is measured by this program's own allocator (a counter around the system
//! allocator): the most bytes in use at once while the phase ran, less those in use when it
//! started (the events themselves). It is the engine's memory, not the process's.
#![allow(unsafe_code)] // a global allocator that counts the heap (GlobalAlloc is an unsafe trait)

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use guardlab_engine::deviation::DeviationMatcher;
use guardlab_engine::document::{Document, to_yaml_documents};
use guardlab_engine::fingerprint::FingerprintBuilder;
use guardlab_engine::limits::StateSize;
use guardlab_engine::model::{Mode, Policy};
use guardlab_engine::policy::create_policy;
use guardlab_engine::trace::Investigator;
use guardlab_events::Event;
use guardlab_test_support::attack::{self, Attack};

/// The system allocator, counting the bytes in use and the most ever in use.
struct Counting;

static IN_USE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call goes to the system allocator with the caller's layout; the counters only
// add and subtract the sizes it was given.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is the system allocator's.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            let now = IN_USE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) };
        IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract for `realloc` is the system allocator's.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            if new_size >= layout.size() {
                let grown = new_size - layout.size();
                let now = IN_USE.fetch_add(grown, Ordering::Relaxed) + grown;
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                IN_USE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Time, peak heap above the start, bytes written, and the engine's own count of its state
/// at the end, of one phase.
struct Phase {
    seconds: f64,
    peak: usize,
    output: usize,
    state: StateSize,
}

fn measure(f: impl FnOnce() -> (usize, StateSize)) -> Phase {
    let start_bytes = IN_USE.load(Ordering::Relaxed);
    PEAK.store(start_bytes, Ordering::Relaxed);
    let start = Instant::now();
    let (output, state) = f();
    let seconds = start.elapsed().as_secs_f64();
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(start_bytes);
    Phase {
        seconds,
        peak,
        output,
        state,
    }
}

fn mb(bytes: usize) -> f64 {
    bytes as f64 / 1_000_000.0
}

fn print(label: &str, events: usize, p: &Phase) {
    println!(
        "  {label:<12} {:>8.3} s  peak {:>8.1} MB  state {:>7.1} MB ({:>7} entries)  output {:>8.2} MB ({:>7.1} bytes/event)",
        p.seconds,
        mb(p.peak),
        mb(p.state.bytes as usize),
        p.state.entries,
        mb(p.output),
        p.output as f64 / events.max(1) as f64
    );
}

fn fingerprint(events: &[Event]) -> (usize, StateSize) {
    let mut b = FingerprintBuilder::new();
    b.observe_all(black_box(events));
    let docs: Vec<Document> = b
        .finish_grouped()
        .into_iter()
        .map(Document::FingerprintGroup)
        .collect();
    (to_yaml_documents(&docs).len(), b.state_size())
}

fn deviations(policy: &Policy, events: &[Event]) -> (usize, StateSize) {
    let mut m = DeviationMatcher::new(std::slice::from_ref(policy)).expect("the policy");
    for e in black_box(events) {
        black_box(m.observe(e));
    }
    let report = m.report();
    let docs: Vec<Document> = report
        .deviations()
        .cloned()
        .map(Document::Deviation)
        .collect();
    (to_yaml_documents(&docs).len(), m.state_size())
}

fn investigate(policy: &Policy, events: &[Event]) -> (usize, StateSize) {
    let mut inv = Investigator::new(std::slice::from_ref(policy)).expect("the policy");
    for e in black_box(events) {
        black_box(inv.observe(e));
    }
    (inv.finish().render_text().len(), inv.state_size())
}

fn run(policy: &Policy, a: &Attack, phase: Option<&str>) {
    let n = a.events.len();
    println!("{} ({n} events)", a.name);
    // The limits met, as the matcher says them.
    let mut m = DeviationMatcher::new(std::slice::from_ref(policy)).expect("the policy");
    m.observe_all(&a.events);
    for flag in &m.stats().limits {
        println!("  limit: {} (met {} times)", flag.message, flag.count);
    }
    let wanted = |name: &str| phase.is_none_or(|p| p == name);
    if wanted("fingerprint") {
        print("fingerprint", n, &measure(|| fingerprint(&a.events)));
    }
    if wanted("deviations") {
        print("deviations", n, &measure(|| deviations(policy, &a.events)));
    }
    if wanted("investigate") {
        print(
            "investigate",
            n,
            &measure(|| investigate(policy, &a.events)),
        );
    }
}

/// An attack's name as a file name: `deep-fork-chain-1000`.
fn slug(name: &str) -> String {
    let words: Vec<String> = name
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    words.join("-")
}

fn write_events(path: &std::path::Path, events: &[Event]) {
    let file = std::fs::File::create(path)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    let mut out = std::io::BufWriter::new(file);
    for e in events {
        guardlab_events::write_ndjson(&mut out, e)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }
    std::io::Write::flush(&mut out)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

fn write_inputs(dir: &std::path::Path, only: Option<&str>) {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    write_events(&dir.join("baseline.ndjson"), &attack::baseline());
    for recipe in attack::all() {
        if only.is_some_and(|o| !recipe.name.contains(o)) {
            continue;
        }
        let path = dir.join(format!("{}.ndjson", slug(recipe.name)));
        write_events(&path, &(recipe.make)().events);
        println!("{}", path.display());
    }
}

fn main() {
    let only = std::env::var("GUARDLAB_BENCH_ATTACK").ok();
    let phase = std::env::var("GUARDLAB_BENCH_PHASE").ok();
    if let Some(dir) = std::env::var_os("GUARDLAB_BENCH_WRITE") {
        write_inputs(std::path::Path::new(&dir), only.as_deref());
        return;
    }
    let mut learn = FingerprintBuilder::new();
    learn.observe_all(&attack::baseline());
    let policy = create_policy(&learn.finish(), Some("notebook-policy"), Mode::Enforce)
        .expect("a policy from the baseline");
    for recipe in attack::all() {
        if only.as_deref().is_some_and(|o| !recipe.name.contains(o)) {
            continue;
        }
        run(&policy, &(recipe.make)(), phase.as_deref());
    }
}
