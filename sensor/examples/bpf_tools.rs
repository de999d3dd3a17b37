//! Gets what `sensor/bpf/build.sh` needs (clang, llvm-strip, libbpf's headers; bpftool too with
//! `--regen-vmlinux`) through guardlab-host: installed with apt-get after saying so and recorded
//! for `guardlab clean`, or refused naming the apt-get command (not root, `--no-install`,
//! GUARDLAB_NO_INSTALL=1). `just bpf` runs it before build.sh.

use std::process::ExitCode;

use guardlab_host::{Host, Requirement, StderrProgress, catalog};

const HELP: &str = "\
Installs what sensor/bpf/build.sh needs (clang, llvm, libbpf-dev; bpftool with --regen-vmlinux)
through guardlab-host, saying so first. Nothing happens when all of it is there.

Usage: bpf-tools [--regen-vmlinux] [--out DIR] [--no-install]

build.sh's own arguments are accepted and only --regen-vmlinux changes what is needed.
--no-install refuses to install and names what is missing instead.

Example:
  cargo run -p guardlab-sensor --example bpf-tools -- --regen-vmlinux && sensor/bpf/build.sh --regen-vmlinux";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{HELP}");
        return ExitCode::SUCCESS;
    }
    let mut needed: Vec<&Requirement> = catalog::BPF_BUILD.to_vec();
    if args.iter().any(|a| a == "--regen-vmlinux") {
        needed.push(&catalog::BPFTOOL);
    }
    let no_install = args.iter().any(|a| a == "--no-install");
    match Host::new(no_install).ensure(&needed, &StderrProgress) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bpf-tools: {e}");
            ExitCode::FAILURE
        }
    }
}
