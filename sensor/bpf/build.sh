#!/usr/bin/env bash
# Rebuilds the committed eBPF object from its C sources and records what it was built from.
#
#   sensor/bpf/build.sh                  compile guardlab.bpf.c -> guardlab.bpf.o, write SOURCES.sha256
#   sensor/bpf/build.sh --regen-vmlinux  first regenerate vmlinux.h from this machine's kernel BTF
#
# Needs clang (Debian's clang-14 works), bpftool only for --regen-vmlinux, and libbpf's headers
# (Debian: libbpf-dev). `cargo build` does not need any of them: it embeds the committed object.
# The test sensor/tests/bpf_object.rs fails when SOURCES.sha256 does not match the sources,
# i.e. when someone changed the C without running this script.
set -euo pipefail
cd "$(dirname "$0")"

if [[ "${1:-}" == "--regen-vmlinux" ]]; then
    btf=/sys/kernel/btf/vmlinux
    [[ -r $btf ]] || { echo "build.sh: $btf is missing: this kernel has no BTF" >&2; exit 1; }
    bpftool btf dump file "$btf" format c > vmlinux.h.new
    mv vmlinux.h.new vmlinux.h
    echo "build.sh: regenerated vmlinux.h from $btf"
elif [[ $# -gt 0 ]]; then
    echo "usage: $0 [--regen-vmlinux]" >&2
    exit 2
fi

CLANG=${CLANG:-}
if [[ -z $CLANG ]]; then
    for c in clang clang-14 clang-15 clang-16 clang-17 clang-18 clang-19; do
        if command -v "$c" >/dev/null; then CLANG=$c; break; fi
    done
fi
[[ -n $CLANG ]] || { echo "build.sh: no clang found (apt-get install clang libbpf-dev)" >&2; exit 1; }
[[ -r /usr/include/bpf/bpf_helpers.h ]] || { echo "build.sh: libbpf headers missing (apt-get install libbpf-dev)" >&2; exit 1; }

"$CLANG" -O2 -g -target bpf -D__TARGET_ARCH_x86 -Wall -Werror \
    -I. -c guardlab.bpf.c -o guardlab.bpf.o.new
# DWARF is only for humans (and embeds this checkout's path); BTF and CO-RE relocations stay.
STRIP=${STRIP:-$(command -v llvm-strip || command -v llvm-strip-14 || true)}
if [[ -n $STRIP ]]; then "$STRIP" -g guardlab.bpf.o.new; fi
mv guardlab.bpf.o.new guardlab.bpf.o

# Inputs first, then the object they produced (checked by the test as well).
sha256sum build.sh guardlab.bpf.c guardlab.h vmlinux.h guardlab.bpf.o > SOURCES.sha256
echo "build.sh: built guardlab.bpf.o ($(stat -c %s guardlab.bpf.o) bytes) with $("$CLANG" --version | head -1)"
