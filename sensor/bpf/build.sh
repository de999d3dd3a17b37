#!/usr/bin/env bash
# Rebuilds the committed eBPF object from its C sources and records what it was built from.
#
#   sensor/bpf/build.sh                  compile guardlab.bpf.c -> guardlab.bpf.o, write SOURCES.sha256
#   sensor/bpf/build.sh --regen-vmlinux  first regenerate vmlinux.h from this machine's kernel BTF
#   sensor/bpf/build.sh --out DIR        compile into DIR/guardlab.bpf.o only, and write the
#                                        toolchain it used to DIR/guardlab.bpf.toolchain (the
#                                        test compares such a fresh build with the committed one)
#
# Needs clang and llvm-strip (Debian: clang, llvm), libbpf's headers (Debian: libbpf-dev), and
# bpftool (Debian: bpftool) only for --regen-vmlinux. `just bpf` installs what is missing first,
# through guardlab-host (saying so, and recording it for `guardlab clean`), and so does the test
# that runs this script; run by hand, it names what is missing and the apt-get command.
# `cargo build` needs none of them: it embeds the committed object.
#
# The object is reproducible: the same clang and libbpf headers give the same bytes wherever the
# checkout is (-ffile-prefix-map drops its path; the DWARF is stripped). Their versions are
# recorded as `#` lines at the top of SOURCES.sha256. sensor/tests/bpf_object.rs fails when
# SOURCES.sha256 does not match the sources (someone changed the C without running this script),
# when a fresh build with the recorded toolchain differs from the object, and when a fresh build
# with another clang differs from it in what does not depend on the compiler (programs, maps,
# license, the layouts of the records).
set -euo pipefail
DIR=$(cd "$(dirname "$0")" && pwd)
cd "$DIR"

OUT=
REGEN=
case "${1:-}" in
    --regen-vmlinux) REGEN=1 ;;
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

# Every tool first, so that one message names all that is missing. The package names are
# guardlab-host's (harness/host/src/requirement.rs, catalog::BPF_BUILD and catalog::BPFTOOL).
missing=
packages=()
need() { missing+="${missing:+, }$1 (Debian package $2)"; packages+=("$2"); }

CLANG=${CLANG:-}
if [[ -z $CLANG ]]; then
    for c in clang clang-14 clang-15 clang-16 clang-17 clang-18 clang-19; do
        if command -v "$c" >/dev/null; then CLANG=$c; break; fi
    done
fi
[[ -n $CLANG ]] && command -v "$CLANG" >/dev/null || need clang clang
STRIP=${STRIP:-}
if [[ -z $STRIP ]]; then
    for s in llvm-strip llvm-strip-14 llvm-strip-15 llvm-strip-16 llvm-strip-17 llvm-strip-18 llvm-strip-19; do
        if command -v "$s" >/dev/null; then STRIP=$s; break; fi
    done
fi
[[ -n $STRIP ]] && command -v "$STRIP" >/dev/null || need llvm-strip llvm
[[ -r /usr/include/bpf/bpf_helpers.h ]] || need /usr/include/bpf/bpf_helpers.h libbpf-dev
if [[ -n $REGEN ]]; then
    command -v bpftool >/dev/null || need bpftool bpftool
fi
if [[ -n $missing ]]; then
    {
        echo "build.sh: missing: $missing."
        echo "build.sh: install with \`apt-get install ${packages[*]}\`, or run \`just bpf\`, which installs them through guardlab-host."
    } >&2
    exit 1
fi

if [[ -n $REGEN ]]; then
    btf=/sys/kernel/btf/vmlinux
    [[ -r $btf ]] || { echo "build.sh: $btf is missing: this kernel has no BTF" >&2; exit 1; }
    bpftool btf dump file "$btf" format c > vmlinux.h.new
    mv vmlinux.h.new vmlinux.h
    echo "build.sh: regenerated vmlinux.h from $btf"
fi

# What the bytes depend on besides the sources (recorded, and compared by the test).
clang_version=$("$CLANG" --version | head -1)
libbpf_version=$(dpkg-query -W -f='${Version}' libbpf-dev 2>/dev/null || echo unknown)
toolchain() {
    echo "# clang: $clang_version"
    echo "# libbpf-dev: $libbpf_version"
}

obj=${OUT:-$DIR}/guardlab.bpf.o
"$CLANG" -O2 -g -target bpf -D__TARGET_ARCH_x86 -Wall -Werror \
    -ffile-prefix-map="$DIR"=. \
    -I. -c guardlab.bpf.c -o "$obj.new"
# DWARF is only for humans; BTF and CO-RE relocations stay.
"$STRIP" -g "$obj.new"
mv "$obj.new" "$obj"
if [[ -n $OUT ]]; then
    toolchain > "$OUT/guardlab.bpf.toolchain"
    echo "build.sh: built $obj with $clang_version"
    exit 0
fi

# Toolchain first (comments), then the inputs, then the object they produced.
{
    toolchain
    sha256sum build.sh guardlab.bpf.c guardlab.h vmlinux.h guardlab.bpf.o
} > SOURCES.sha256
echo "build.sh: built guardlab.bpf.o ($(stat -c %s guardlab.bpf.o) bytes) with $clang_version"
