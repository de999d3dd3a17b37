//! The benchmark's two programs, as tiny static x86_64 ELF files made here (the pod has no
//! compiler): `ok` exits 0 at once; the probe's first system call creates the file its first
//! argument names (its mark), then it waits for a signal. A probe killed at exec, before its
//! first instruction, leaves no mark.

use std::path::Path;
use std::time::{Duration, Instant};

/// Where the one loadable segment goes.
const BASE: u64 = 0x40_0000;
/// The ELF header (64 bytes) and one program header (56).
const HEADERS: u64 = 64 + 56;

/// A static executable of `code`, which starts at its first byte.
fn elf(code: &[u8]) -> Vec<u8> {
    let size = HEADERS + code.len() as u64;
    let mut f = Vec::with_capacity(size as usize);
    f.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&0x3eu16.to_le_bytes()); // x86_64
    f.extend_from_slice(&1u32.to_le_bytes()); // version
    f.extend_from_slice(&(BASE + HEADERS).to_le_bytes()); // entry
    f.extend_from_slice(&64u64.to_le_bytes()); // program headers' offset
    f.extend_from_slice(&0u64.to_le_bytes()); // no section headers
    f.extend_from_slice(&0u32.to_le_bytes()); // flags
    f.extend_from_slice(&64u16.to_le_bytes()); // header size
    f.extend_from_slice(&56u16.to_le_bytes()); // program header size
    f.extend_from_slice(&1u16.to_le_bytes()); // one program header
    f.extend_from_slice(&[0; 6]); // no sections
    f.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    f.extend_from_slice(&5u32.to_le_bytes()); // read, execute
    f.extend_from_slice(&0u64.to_le_bytes()); // from the file's start
    f.extend_from_slice(&BASE.to_le_bytes());
    f.extend_from_slice(&BASE.to_le_bytes());
    f.extend_from_slice(&size.to_le_bytes());
    f.extend_from_slice(&size.to_le_bytes());
    f.extend_from_slice(&0x1000u64.to_le_bytes());
    f.extend_from_slice(code);
    f
}

/// exit(0).
pub fn ok() -> Vec<u8> {
    elf(&[
        0xb8, 0x3c, 0, 0, 0, // mov eax, 60 (exit)
        0x31, 0xff, // xor edi, edi
        0x0f, 0x05, // syscall
    ])
}

/// creat(argv[1], 0644), then pause() forever.
pub fn probe() -> Vec<u8> {
    elf(&[
        0x48, 0x8b, 0x7c, 0x24, 0x10, // mov rdi, [rsp + 16]: argv[1]
        0xbe, 0xa4, 0x01, 0, 0, // mov esi, 0644
        0xb8, 0x55, 0, 0, 0, // mov eax, 85 (creat)
        0x0f, 0x05, // syscall
        0xb8, 0x22, 0, 0, 0, // mov eax, 34 (pause)
        0x0f, 0x05, // syscall
        0xeb, 0xf7, // jmp back to the pause
    ])
}

/// Both programs do what they say on this host, before the pod relies on them: `ok` exits
/// 0, the probe leaves its mark and then runs until killed.
pub fn check_on_host(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let write = |name: &str, bytes: Vec<u8>| -> Result<std::path::PathBuf, String> {
        let path = dir.join(name);
        std::fs::write(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(path)
    };
    let ok = write("ok", ok())?;
    let status = std::process::Command::new(&ok)
        .status()
        .map_err(|e| format!("running {}: {e}", ok.display()))?;
    if !status.success() {
        return Err(format!("{} ended {status}, not 0", ok.display()));
    }
    let probe = write("probe", probe())?;
    let mark = dir.join("mark");
    let mut child = std::process::Command::new(&probe)
        .arg(&mark)
        .spawn()
        .map_err(|e| format!("running {}: {e}", probe.display()))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !mark.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let still_running = child.try_wait().map_err(|e| e.to_string())?.is_none();
    let _ = child.kill();
    let _ = child.wait();
    match (mark.exists(), still_running) {
        (true, true) => Ok(()),
        (marked, running) => Err(format!(
            "the probe does not work on this host: mark left {marked}, still running {running}"
        )),
    }
}
