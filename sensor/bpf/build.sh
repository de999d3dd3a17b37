#!/usr/bin/env bash
# Rebuilds the committed eBPF object from its C sources and records what it was built from.
#
#   sensor/bpf/build.sh                  compile guardlab.bpf.c -> guardlab.bpf.o, write SOURCES.sha256
#   sensor/bpf/build.sh --regen-vmlinux  first regenerate vmlinux.h from this machine's kernel BTF
#   sensor/bpf/build.sh --out DIR        compile into DIR/guardlab.bpf.o only (the reproducibility
#                                        test uses it to compare a fresh build with the committed one)
#
# Needs clang and llvm-strip (Debian: clang, llvm), libbpf's headers (Debian: libbpf-dev), and
# bpftool only for --regen-vmlinux. `cargo build` needs none of them: it embeds the committed
# object. The object is reproducible: the same clang and libbpf headers give the same bytes
# wherever the checkout is (-ffile-prefix-map drops its path; the DWARF is stripped). Their
# versions are recorded as `#` lines at the top of SOURCES.sha256.
# sensor/tests/bpf_object.rs fails when SOURCES.sha256 does not match the sources (someone
# changed the C without running this script), and when a fresh build differs from the object.
set -euo pipefail
DIR=$(cd "$(dirname "$0")" && pwd)
cd "$DIR"

OUT=
case "${1:-}" in
    --regen-vmlinux)
        btf=/sys/kernel/btf/vmlinux
        [[ -r $btf ]] || { echo "build.sh: $btf is missing: this kernel has no BTF" >&2; exit 1; }
        bpftool btf dump file "$btf" format c > vmlinux.h.new
        mv vmlinux.h.new vmlinux.h
        echo "build.sh: regenerated vmlinux.h from $btf"
        ;;
    --out)
        [[ -n "${2:-}" && -d "$2" ]] || { echo "usage: $0 --out EXISTING_DIR" >&2; exit 2; }
        OUT=$(cd "$2" && pwd)
        ;;
    "") ;;
    *)
        echo "usage: $0 [--regen-vmlinux | --out DIR]" >&2
        exit 2
        ;;
esac

CLANG=${CLANG:-}
if [[ -z $CLANG ]]; then
    for c in clang clang-14 clang-15 clang-16 clang-17 clang-18 clang-19; do
        if command -v "$c" >/dev/null; then CLANG=$c; break; fi
    done
fi
[[ -n $CLANG ]] || { echo "build.sh: no clang found (apt-get install clang llvm libbpf-dev)" >&2; exit 1; }
STRIP=${STRIP:-$(command -v llvm-strip || command -v llvm-strip-14 || true)}
[[ -n $STRIP ]] || { echo "build.sh: no llvm-strip found (apt-get install llvm)" >&2; exit 1; }
[[ -r /usr/include/bpf/bpf_helpers.h ]] || { echo "build.sh: libbpf headers missing (apt-get install libbpf-dev)" >&2; exit 1; }

# What the bytes depend on besides the sources (recorded, and compared by the test).
clang_version=$("$CLANG" --version | head -1)
libbpf_version=$(dpkg-query -W -f='${Version}' libbpf-dev 2>/dev/null || echo unknown)

obj=${OUT:-$DIR}/guardlab.bpf.o
"$CLANG" -O2 -g -target bpf -D__TARGET_ARCH_x86 -Wall -Werror \
    -ffile-prefix-map="$DIR"=. \
    -I. -c guardlab.bpf.c -o "$obj.new"
# DWARF is only for humans; BTF and CO-RE relocations stay.
"$STRIP" -g "$obj.new"
mv "$obj.new" "$obj"
if [[ -n $OUT ]]; then
    echo "build.sh: built $obj with $clang_version"
    exit 0
fi

# Toolchain first (comments), then the inputs, then the object they produced.
{
    echo "# clang: $clang_version"
    echo "# libbpf-dev: $libbpf_version"
    sha256sum build.sh guardlab.bpf.c guardlab.h vmlinux.h guardlab.bpf.o
} > SOURCES.sha256
echo "build.sh: built guardlab.bpf.o ($(stat -c %s guardlab.bpf.o) bytes) with $clang_version"
