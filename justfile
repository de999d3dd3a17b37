# guardlab's recipes. `just` lists them. Install just with `cargo install --locked just`; every
# recipe is a plain command, so you can also run it without just.

# List the recipes.
default:
    @just --list

# The whole test suite (root: the sensor and lab tests need it).
test:
    cargo test

# The test suite exactly as CI runs it: no tracefs/debugfs/bpffs, an empty cache; then lints.
ci:
    .ci/run

# The README's path on a debootstrapped Debian root with only the README's prerequisites (root,
# ~30 min). `just fresh-check --suite trixie` tries another Debian release.
fresh-check *args="":
    .ci/fresh-check {{args}}

# Fast tier: the pure engine, the event format and the file commands; no root needed.
test-engine:
    cargo test -p guardlab-engine -p guardlab-events
    cargo test -p guardlab --test cli_files

# Run the cryptominer scenario end to end on the local lab.
scenario name="cryptominer" *args="":
    cargo run -- scenario {{name}} {{args}}

# Rewrite the scenario's snapshot files after an intended change.
update-snapshots name="cryptominer":
    cargo run -- scenario {{name}} --update-snapshots

# Bring the local lab up / down / show it.
lab-up:
    cargo run -- lab up
lab-down:
    cargo run -- lab down
lab-status:
    cargo run -- lab status

# A newcomer's first run (empty target/ and cache) phase by phase, then a warm run (root).
bench-cold:
    .ci/bench-cold

# New pins for the pod image's Python packages (manifests/image/*.lock; root). Review the diff.
lock-image:
    cargo run -- image lock

# What guardlab needs from this host, and whether it has it.
doctor:
    cargo run -- doctor

# The engine benchmark: 1,000,000 generated events through fingerprinting and deviation matching.
bench:
    cargo bench -p guardlab-engine --bench replay

# The engine under attack: time and peak memory of deep shell chains, exec storms, floods.
bench-attacks:
    cargo bench -p guardlab-engine --bench attacks

# The sensor benchmark (root): exec and connect storms with no sensor, guardlab's, auditd and bpftrace.
bench-sensor:
    cargo bench -p guardlab-sensor --bench overhead

# Latency under load (root, the local lab): an exec storm with a trickle of deviant execs in the
# pod; p50/p99/max of exec->flag and exec->kill, user-space kill beside in-kernel, the rate reached.
bench-latency *args="":
    cargo build -p guardlab -p guardlab-minerd --bins
    cargo run -p guardlab --example bench_latency -- {{args}}

# Rebuild the eBPF object from its C sources; commit the result. Installs clang, llvm and
# libbpf-dev first when missing (through guardlab-host, saying so); `just bpf --regen-vmlinux`
# also regenerates vmlinux.h from this kernel's BTF (bpftool).
bpf *args="":
    cargo run -q -p guardlab-sensor --example bpf-tools -- {{args}}
    sensor/bpf/build.sh {{args}}

# The reliability suite (root; the full form takes about 10 minutes): the attacks on the guard
# from inside the pod during a live scenario, hostile files, runs stopped by signals at random
# points, the pod's containment; prints the figures. `just soak --short` is the form CI runs.
soak *args="":
    cargo build -p guardlab -p guardlab-minerd --bins
    cargo run -p guardlab --example soak -- {{args}}

# Formatting and lints, as CI checks them.
check:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# Fuzz the parsers (spyctl YAML, NDJSON events, scenario files, the sensor's control protocol)
# with AFL++ on stable Rust, SECONDS each (default 10 minutes); `just fuzz 60 document` runs one.
# Installs cargo-afl and AFL++ under the guardlab cache first (make, clang, llvm through apt).
fuzz seconds="600" *targets="":
    cargo run -q -p guardlab-fuzz --bin fuzz-run -- --seconds {{seconds}} {{targets}}
