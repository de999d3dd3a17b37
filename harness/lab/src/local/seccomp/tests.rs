//! Tests of the seccomp module: the profile copy, compilation, errors, and the compiled filter
//! run by the kernel in a forked child.

use super::*;
use crate::local::manifest::default_manifests_dir;

fn runtime_default() -> Profile {
    Profile::load(&default_manifests_dir().join(RUNTIME_DEFAULT_FILE)).unwrap()
}

fn caps(names: &'static [&'static str]) -> impl Fn(&str) -> bool {
    move |c: &str| names.contains(&c)
}

#[test]
fn the_runtime_default_profile_is_the_copy_the_readme_names() {
    let file = default_manifests_dir().join(RUNTIME_DEFAULT_FILE);
    assert_eq!(file_sha256(&file).unwrap(), RUNTIME_DEFAULT_SHA256);
    let readme = std::fs::read_to_string(file.with_file_name("README.md")).unwrap();
    assert!(readme.contains(RUNTIME_DEFAULT_SHA256), "{readme}");
    assert!(file.with_file_name("LICENSE").is_file());
}

#[test]
fn the_runtime_default_profile_compiles_to_an_allow_filter_and_an_eperm_filter() {
    let profile = runtime_default();
    assert_eq!(profile.default_errno_ret, Some(libc::ENOSYS as u32));
    let has = caps(&["CAP_AUDIT_WRITE", "CAP_CHOWN"]);
    let compiled = compile(
        &profile,
        &Container {
            has_capability: &has,
            kernel: (6, 1),
        },
    )
    .unwrap();
    // With CAP_AUDIT_WRITE, no EINVAL rule for audit sockets applies.
    assert_eq!(compiled.programs.len(), 2, "{:?}", compiled.skipped);
    assert!(compiled.allowed > 300, "{}", compiled.allowed);
    // 32-bit and other architectures' names are skipped, the native ones are not.
    assert!(compiled.skipped.iter().any(|n| n == "_llseek"));
    assert!(
        !compiled
            .skipped
            .iter()
            .any(|n| n == "execve" || n == "clone3")
    );

    let none = caps(&[]);
    let without = compile(
        &profile,
        &Container {
            has_capability: &none,
            kernel: (6, 1),
        },
    )
    .unwrap();
    assert_eq!(without.programs.len(), 3, "EINVAL for audit sockets too");
}

#[test]
fn rules_apply_by_capability_architecture_and_kernel() {
    let rule = |includes: Applies, excludes: Applies| SyscallRule {
        names: vec!["getpid".into()],
        action: Action::Allow,
        errno_ret: None,
        errno: None,
        args: None,
        comment: None,
        includes,
        excludes,
    };
    let admin = caps(&["CAP_SYS_ADMIN"]);
    let container = Container {
        has_capability: &admin,
        kernel: (5, 10),
    };
    let needs = |caps: &[&str]| Applies {
        caps: caps.iter().map(|c| c.to_string()).collect(),
        ..Default::default()
    };
    assert!(applies(
        &rule(needs(&["CAP_SYS_ADMIN"]), Applies::default()),
        "amd64",
        &container
    ));
    assert!(!applies(
        &rule(needs(&["CAP_SYS_ADMIN", "CAP_BPF"]), Applies::default()),
        "amd64",
        &container
    ));
    assert!(!applies(
        &rule(Applies::default(), needs(&["CAP_SYS_ADMIN"])),
        "amd64",
        &container
    ));
    let arches = Applies {
        arches: vec!["arm64".into()],
        ..Default::default()
    };
    assert!(!applies(
        &rule(arches.clone(), Applies::default()),
        "amd64",
        &container
    ));
    assert!(applies(
        &rule(arches, Applies::default()),
        "arm64",
        &container
    ));
    let kernel = |v: &str| Applies {
        min_kernel: Some(v.into()),
        ..Default::default()
    };
    assert!(applies(
        &rule(kernel("5.10"), Applies::default()),
        "amd64",
        &container
    ));
    assert!(!applies(
        &rule(kernel("5.11"), Applies::default()),
        "amd64",
        &container
    ));
    assert!(!applies(
        &rule(Applies::default(), kernel("4.8")),
        "amd64",
        &container
    ));
}

#[test]
fn one_index_given_twice_makes_separate_rules_as_runc_does() {
    let arg = |index, value| ArgCondition {
        index,
        value,
        value_two: 0,
        op: Operator::Equal,
    };
    let rule = |args| SyscallRule {
        names: vec!["personality".into()],
        action: Action::Allow,
        errno_ret: None,
        errno: None,
        args: Some(args),
        comment: None,
        includes: Applies::default(),
        excludes: Applies::default(),
    };
    assert_eq!(
        rule_conditions(&rule(vec![arg(0, 1), arg(2, 3)]))
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        rule_conditions(&rule(vec![arg(0, 1), arg(0, 3)]))
            .unwrap()
            .len(),
        2
    );
    assert!(rule_conditions(&rule(vec![])).unwrap().is_empty());
}

#[test]
fn errors_name_the_file_line_and_field() {
    let text = "{\n  \"defaultAction\": \"SCMP_ACT_ERRNO\",\n  \"syscalls\": [\n    {\"names\": [\"read\"], \"action\": \"SCMP_ACT_FLY\"}\n  ]\n}\n";
    let err = Profile::parse(Path::new("p.json"), text)
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("p.json: line 4"), "{err}");
    assert!(err.contains("syscalls[0].action"), "{err}");
    assert!(err.contains("SCMP_ACT_FLY"), "{err}");

    let text =
        "{\"defaultAction\": \"SCMP_ACT_ERRNO\", \"syscalls\": [], \"listenerPath\": \"/x\"}";
    let err = Profile::parse(Path::new("p.json"), text)
        .unwrap_err()
        .to_string();
    assert!(err.contains("listenerPath"), "{err}");

    let text = "{\"defaultAction\": \"SCMP_ACT_ERRNO\", \"syscalls\": [{\"names\": [\"read\"], \"action\": \"SCMP_ACT_TRAP\"}]}";
    let profile = Profile::parse(Path::new("p.json"), text).unwrap();
    let err = profile.check().unwrap_err().to_string();
    assert!(err.starts_with("syscalls[0].action: Trap"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.json");
    std::fs::write(&file, text).unwrap();
    let err = Profile::load(&file).unwrap_err().to_string();
    assert!(
        err.contains("p.json") && err.contains("syscalls[0].action"),
        "{err}"
    );

    let text = "{\"defaultAction\": \"SCMP_ACT_ALLOW\", \"syscalls\": []}";
    let err = Profile::parse(Path::new("p.json"), text)
        .unwrap()
        .check()
        .unwrap_err();
    assert!(err.to_string().starts_with("defaultAction"), "{err}");
}

#[test]
fn kernel_versions_read_as_major_and_minor() {
    assert_eq!(parse_kernel_version("6.18.44-fc-v1300"), Some((6, 18)));
    assert_eq!(parse_kernel_version("4.8"), Some((4, 8)));
    assert_eq!(parse_kernel_version("5"), None);
    assert_eq!(parse_kernel_version("x.y"), None);
}

/// The compiled filter in a forked child of this test: what the kernel answers to calls
/// the profile allows, denies with EPERM, does not name (the default, ENOSYS), allows
/// only with some arguments (personality), and denies by capability (audit sockets).
#[test]
fn the_kernel_answers_as_the_profile_says() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "loading a seccomp filter without no_new_privs needs CAP_SYS_ADMIN: run as root"
    );
    let profile = runtime_default();
    let none = caps(&[]);
    let compiled = compile(
        &profile,
        &Container {
            has_capability: &none,
            kernel: running_kernel(),
        },
    )
    .unwrap();
    let results = probe::run_under(&compiled);
    // (what, got, expected): the result of each call, as -errno or "ok" (0).
    let expected = [
        ("getpid", 0),
        ("userfaultfd (EPERM in the profile)", -libc::EPERM),
        (
            "futex_waitv (not in the profile: the default)",
            -libc::ENOSYS,
        ),
        ("personality(0xffffffff) (allowed value)", 0),
        (
            "personality(ADDR_NO_RANDOMIZE) (value not allowed)",
            -libc::ENOSYS,
        ),
        (
            "socket(AF_NETLINK, NETLINK_AUDIT) without CAP_AUDIT_WRITE",
            -libc::EINVAL,
        ),
        ("socket(AF_UNIX)", 0),
        ("no_new_privs stays off", 0),
    ];
    assert_eq!(results.len(), expected.len());
    for ((what, want), got) in expected.iter().zip(&results) {
        assert_eq!(got, want, "{what}: all results {results:?}");
    }
}

#[allow(unsafe_code)] // the test forks a child that loads the filter and makes raw system calls
mod probe {
    use super::super::CompiledFilter;

    /// Fork, load `compiled` in the child (as root, without no_new_privs, as the pod's first
    /// process does) and make the calls of the test; the child writes their results to a pipe.
    pub(super) fn run_under(compiled: &CompiledFilter) -> Vec<i32> {
        let programs: Vec<libc::sock_fprog> = compiled
            .programs
            .iter()
            .map(|p| libc::sock_fprog {
                len: p.len() as u16,
                filter: p.as_ptr() as *mut libc::sock_filter,
            })
            .collect();
        let mut fds = [0; 2];
        // SAFETY: pipe writes two descriptors into the array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: the child makes system calls only (on memory prepared before the fork) and
        // leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            // SAFETY: as above.
            unsafe { child(&programs, fds[1]) }
        }
        // SAFETY: closing our copy of the write end; reading into a local buffer.
        let bytes = unsafe {
            libc::close(fds[1]);
            let mut buffer = [0u8; 64];
            let mut got = 0usize;
            loop {
                let n = libc::read(
                    fds[0],
                    buffer[got..].as_mut_ptr().cast(),
                    buffer.len() - got,
                );
                if n <= 0 {
                    break;
                }
                got += n as usize;
            }
            libc::close(fds[0]);
            let mut status = 0;
            libc::waitpid(pid, &mut status, 0);
            assert!(
                libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                "the probe child ended with status {status:#x}"
            );
            buffer[..got].to_vec()
        };
        bytes
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    /// -errno of a raw system call's result, or 0 when it succeeded.
    fn outcome(result: libc::c_long) -> i32 {
        if result < 0 {
            -std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
        } else {
            0
        }
    }

    unsafe fn child(programs: &[libc::sock_fprog], out: libc::c_int) -> ! {
        // SAFETY: raw system calls on prepared memory; _exit at the end.
        unsafe {
            for program in programs {
                if libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, program) != 0
                {
                    libc::_exit(10);
                }
            }
            const UFFD_USER_MODE_ONLY: libc::c_long = 1;
            const ADDR_NO_RANDOMIZE: libc::c_long = 0x0040000;
            const NETLINK_AUDIT: libc::c_long = 9;
            let results = [
                outcome(libc::syscall(libc::SYS_getpid)),
                outcome(libc::syscall(libc::SYS_userfaultfd, UFFD_USER_MODE_ONLY)),
                outcome(libc::syscall(libc::SYS_futex_waitv, 0, 0, 0, 0, 0)),
                outcome(libc::syscall(
                    libc::SYS_personality,
                    0xffff_ffff_u32 as libc::c_long,
                )),
                outcome(libc::syscall(libc::SYS_personality, ADDR_NO_RANDOMIZE)),
                outcome(libc::syscall(
                    libc::SYS_socket,
                    libc::AF_NETLINK as libc::c_long,
                    libc::SOCK_RAW as libc::c_long,
                    NETLINK_AUDIT,
                )),
                outcome(libc::syscall(
                    libc::SYS_socket,
                    libc::AF_UNIX as libc::c_long,
                    libc::SOCK_STREAM as libc::c_long,
                    0,
                )),
                libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0),
            ];
            let mut bytes = [0u8; 32];
            for (i, r) in results.iter().enumerate() {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&r.to_le_bytes());
            }
            libc::write(out, bytes.as_ptr().cast(), bytes.len());
            libc::_exit(0)
        }
    }
}
