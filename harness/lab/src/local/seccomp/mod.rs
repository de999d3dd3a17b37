//! The pod's seccomp filter, as a container runtime gives it: the Deployment's
//! `securityContext.seccompProfile.type: RuntimeDefault` means the runtime's default profile,
//! here Podman's (`manifests/seccomp/runtime-default.json`, copied from Debian's
//! `golang-github-containers-common`, derived from Docker's; see the README beside it), compiled
//! into seccomp BPF by [seccompiler] (pure Rust, no libseccomp).
//!
//! The profile is the OCI/Docker JSON format: a default action, and rules that give a list of
//! system calls an action, optionally under conditions on their arguments, and only for some
//! capabilities (`includes.caps`: every one of them is in the container's bounding set;
//! `excludes.caps`: none of them is), architectures (`includes.arches`, Go's names) or kernels
//! (`includes.minKernel`), as Docker, Podman and runc read it.
//!
//! How it becomes BPF: a seccompiler filter has ONE action for the calls its rules match and
//! one for the rest, so the profile becomes a short stack of filters, loaded in this order:
//! 1. every `SCMP_ACT_ALLOW` rule, matching → allow, the rest → the profile's default action
//!    (`SCMP_ACT_ERRNO` with `defaultErrnoRet`, ENOSYS in Podman's profile);
//! 2. one filter per errno of the `SCMP_ACT_ERRNO` rules (EPERM, EINVAL), matching → that
//!    errno, the rest → allow.
//!
//! The kernel runs every filter of the stack and takes the action of highest precedence
//! (errno over allow), and of two errnos the one of the filter loaded last
//! (Documentation/userspace-api/seccomp_filter.rst): so a call an errno rule matches gets that
//! errno (as with libseccomp), one only an allow rule matches is allowed, and the rest get the
//! default errno. Other actions (kill, trap, trace, log, notify) are refused with the rule
//! that has them: the runtime default profile uses none.
//!
//! Differences from a runtime's filter, said here because they are deliberate: only the native
//! ABI is compiled (x86_64), so a 32-bit x86 program in the pod is killed at its first system
//! call, and x32 calls get the default errno (Docker allows their listed calls too); names the
//! native ABI does not have (`_llseek`, `chown32`...) are skipped, as libseccomp skips them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{IoContext, LabError};

/// The runtime default profile, relative to the manifests directory.
pub const RUNTIME_DEFAULT_FILE: &str = "seccomp/runtime-default.json";
/// Its sha256, as copied from Debian's `golang-github-containers-common` 0.50.1+ds1-4: a test
/// checks the file is that copy, byte for byte.
pub const RUNTIME_DEFAULT_SHA256: &str =
    "cc374cf23846ce1f62f4dc807a8e2b8673c783c6f56cb475467621035d281e6c";

const EPERM: u32 = libc::EPERM as u32;

/// A seccomp action as the profile format names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    #[serde(rename = "SCMP_ACT_KILL")]
    Kill,
    #[serde(rename = "SCMP_ACT_KILL_PROCESS")]
    KillProcess,
    #[serde(rename = "SCMP_ACT_KILL_THREAD")]
    KillThread,
    #[serde(rename = "SCMP_ACT_TRAP")]
    Trap,
    #[serde(rename = "SCMP_ACT_ERRNO")]
    Errno,
    #[serde(rename = "SCMP_ACT_TRACE")]
    Trace,
    #[serde(rename = "SCMP_ACT_ALLOW")]
    Allow,
    #[serde(rename = "SCMP_ACT_LOG")]
    Log,
    #[serde(rename = "SCMP_ACT_NOTIFY")]
    Notify,
}

/// A comparison of a system call's argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operator {
    #[serde(rename = "SCMP_CMP_NE")]
    NotEqual,
    #[serde(rename = "SCMP_CMP_LT")]
    LessThan,
    #[serde(rename = "SCMP_CMP_LE")]
    LessOrEqual,
    #[serde(rename = "SCMP_CMP_EQ")]
    Equal,
    #[serde(rename = "SCMP_CMP_GE")]
    GreaterOrEqual,
    #[serde(rename = "SCMP_CMP_GT")]
    GreaterThan,
    /// `(argument & value) == valueTwo`.
    #[serde(rename = "SCMP_CMP_MASKED_EQ")]
    MaskedEqual,
}

/// A seccomp profile (the OCI/Docker JSON format). Unknown fields are refused: a profile that
/// asks for something guardlab would not do is an error, not a weaker filter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Profile {
    pub default_action: Action,
    /// The errno of the default action (EPERM when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_errno_ret: Option<u32>,
    /// Its name, for people; `defaultErrnoRet` is what counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_errno: Option<String>,
    /// Which ABIs the runtime would add to the filter; guardlab compiles the native one only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub arch_map: Vec<ArchMap>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub architectures: Vec<String>,
    pub syscalls: Vec<SyscallRule>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ArchMap {
    pub architecture: String,
    #[serde(default)]
    pub sub_architectures: Vec<String>,
}

/// One rule: these system calls get this action (under these conditions).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SyscallRule {
    pub names: Vec<String>,
    pub action: Action,
    /// The errno of `SCMP_ACT_ERRNO` (EPERM when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno_ret: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno: Option<String>,
    /// All must hold (but see [`rule_conditions`] for one index given twice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<ArgCondition>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "Applies::is_empty")]
    pub includes: Applies,
    #[serde(default, skip_serializing_if = "Applies::is_empty")]
    pub excludes: Applies,
}

/// When a rule applies (`includes`) or does not (`excludes`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Applies {
    /// Capability names (`CAP_SYS_ADMIN`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub caps: Vec<String>,
    /// Go's architecture names (`amd64`, `arm64`, `x86`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub arches: Vec<String>,
    /// `major.minor`: only on this kernel or newer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_kernel: Option<String>,
}

impl Applies {
    fn is_empty(&self) -> bool {
        self.caps.is_empty() && self.arches.is_empty() && self.min_kernel.is_none()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ArgCondition {
    pub index: u8,
    pub value: u64,
    #[serde(default)]
    pub value_two: u64,
    pub op: Operator,
}

/// Why a profile cannot be read or compiled.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// Not a profile: the JSON or a field is wrong.
    #[error("{}: line {line} column {column}: {field}: {message}", file.display())]
    Parse {
        file: PathBuf,
        line: usize,
        column: usize,
        field: String,
        message: String,
    },
    /// A profile guardlab does not compile (see the module's overview).
    #[error("{field}: {message}")]
    Unsupported { field: String, message: String },
    /// The host's architecture has no seccompiler target.
    #[error("seccomp filters for {arch} are not supported (x86_64, aarch64, riscv64 are)")]
    Architecture { arch: String },
    /// seccompiler refused the filter (too large, an argument index out of range...).
    #[error("compiling the filter: {0}")]
    Compile(#[from] seccompiler::BackendError),
}

impl From<SeccompError> for LabError {
    fn from(error: SeccompError) -> LabError {
        match error {
            SeccompError::Parse {
                file,
                line,
                column,
                field,
                message,
            } => LabError::input(
                file,
                Some(line),
                Some(&field),
                format!("column {column}: {message}"),
            ),
            other => LabError::backend("the pod's seccomp profile", other),
        }
    }
}

impl Profile {
    /// Read and check a profile file; errors name the file, line, column and field.
    pub fn load(file: &Path) -> Result<Profile, LabError> {
        let text =
            std::fs::read_to_string(file).context(|| format!("reading {}", file.display()))?;
        let profile = Profile::parse(file, &text)?;
        profile.check().map_err(|e| match e {
            SeccompError::Unsupported { field, message } => {
                LabError::input(file, None, Some(&field), message)
            }
            other => other.into(),
        })?;
        Ok(profile)
    }

    /// Parse profile JSON; `file` only names it in errors.
    pub fn parse(file: &Path, text: &str) -> Result<Profile, SeccompError> {
        let mut deserializer = serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
            let field = e.path().to_string();
            let inner = e.into_inner();
            SeccompError::Parse {
                file: file.to_path_buf(),
                line: inner.line(),
                column: inner.column(),
                field,
                message: inner.to_string(),
            }
        })
    }

    /// What this module can compile: an `SCMP_ACT_ERRNO` default, `SCMP_ACT_ALLOW` and
    /// `SCMP_ACT_ERRNO` rules, argument indexes 0 to 5, `minKernel` as `major.minor`.
    pub fn check(&self) -> Result<(), SeccompError> {
        let unsupported =
            |field: String, message: String| SeccompError::Unsupported { field, message };
        if self.default_action != Action::Errno {
            return Err(unsupported(
                "defaultAction".into(),
                format!(
                    "{:?}: guardlab compiles profiles whose default action is SCMP_ACT_ERRNO \
                     (as the runtime default profile's is)",
                    self.default_action
                ),
            ));
        }
        for (i, rule) in self.syscalls.iter().enumerate() {
            if !matches!(rule.action, Action::Allow | Action::Errno) {
                return Err(unsupported(
                    format!("syscalls[{i}].action"),
                    format!(
                        "{:?}: guardlab compiles SCMP_ACT_ALLOW and SCMP_ACT_ERRNO rules only",
                        rule.action
                    ),
                ));
            }
            for (j, arg) in rule.args.iter().flatten().enumerate() {
                if arg.index > 5 {
                    return Err(unsupported(
                        format!("syscalls[{i}].args[{j}].index"),
                        format!("{}: a system call has arguments 0 to 5", arg.index),
                    ));
                }
            }
            for (which, applies) in [("includes", &rule.includes), ("excludes", &rule.excludes)] {
                if let Some(min) = &applies.min_kernel
                    && parse_kernel_version(min).is_none()
                {
                    return Err(unsupported(
                        format!("syscalls[{i}].{which}.minKernel"),
                        format!("{min:?} is not a kernel version (major.minor)"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A `major.minor[.patch][-suffix]` kernel version as `(major, minor)`.
pub fn parse_kernel_version(text: &str) -> Option<(u32, u32)> {
    let mut parts = text.trim().split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The running kernel's version (`uname -r`), `(0, 0)` when unreadable (a `minKernel` rule
/// then does not apply: the stricter choice).
pub fn running_kernel() -> (u32, u32) {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .and_then(|r| parse_kernel_version(&r))
        .unwrap_or((0, 0))
}

/// The filter a profile compiles to for one container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledFilter {
    /// BPF programs, in the order they are loaded (see the module's overview).
    pub programs: Vec<Vec<libc::sock_filter>>,
    /// System calls the profile names that the native ABI does not have (skipped).
    pub skipped: Vec<String>,
    /// How many system calls a rule allows (under conditions or not).
    pub allowed: usize,
}

/// Which rules apply to the container: capabilities of its bounding set, the architecture and
/// the kernel it runs on.
pub struct Container<'a> {
    /// Whether the bounding set has the capability named (`CAP_SYS_ADMIN`).
    pub has_capability: &'a dyn Fn(&str) -> bool,
    /// `(major, minor)`.
    pub kernel: (u32, u32),
}

/// What a rule does, for the calls of a name: always, or under any of several rules.
enum Match {
    Always,
    AnyOf(Vec<SeccompRule>),
}

impl Match {
    fn add(&mut self, rules: Vec<SeccompRule>) {
        match (&mut *self, rules.is_empty()) {
            (Match::Always, _) => {}
            (_, true) => *self = Match::Always,
            (Match::AnyOf(existing), false) => existing.extend(rules),
        }
    }
    fn into_rules(self) -> Vec<SeccompRule> {
        match self {
            Match::Always => Vec::new(),
            Match::AnyOf(rules) => rules,
        }
    }
}

/// Go's name of the native architecture, as `includes.arches` names it.
fn go_arch(arch: TargetArch) -> &'static str {
    match arch {
        TargetArch::x86_64 => "amd64",
        TargetArch::aarch64 => "arm64",
        TargetArch::riscv64 => "riscv64",
    }
}

fn applies(rule: &SyscallRule, arch: &str, container: &Container) -> bool {
    let (inc, exc) = (&rule.includes, &rule.excludes);
    let kernel_at_least =
        |min: &str| parse_kernel_version(min).is_some_and(|v| container.kernel >= v);
    inc.caps.iter().all(|c| (container.has_capability)(c))
        && !exc.caps.iter().any(|c| (container.has_capability)(c))
        && (inc.arches.is_empty() || inc.arches.iter().any(|a| a == arch))
        && !exc.arches.iter().any(|a| a == arch)
        && inc.min_kernel.as_deref().is_none_or(kernel_at_least)
        && !exc.min_kernel.as_deref().is_some_and(kernel_at_least)
}

/// The seccompiler rules of one profile rule: its conditions all together (AND); but when an
/// argument index is given more than once, each condition is a rule of its own (OR), as runc
/// does. No conditions: no rules (the call always matches).
fn rule_conditions(rule: &SyscallRule) -> Result<Vec<SeccompRule>, SeccompError> {
    let args = rule.args.as_deref().unwrap_or_default();
    let conditions = args
        .iter()
        .map(|arg| {
            let op = match arg.op {
                Operator::NotEqual => SeccompCmpOp::Ne,
                Operator::LessThan => SeccompCmpOp::Lt,
                Operator::LessOrEqual => SeccompCmpOp::Le,
                Operator::Equal => SeccompCmpOp::Eq,
                Operator::GreaterOrEqual => SeccompCmpOp::Ge,
                Operator::GreaterThan => SeccompCmpOp::Gt,
                Operator::MaskedEqual => SeccompCmpOp::MaskedEq(arg.value),
            };
            let value = if arg.op == Operator::MaskedEqual {
                arg.value_two
            } else {
                arg.value
            };
            // 64-bit comparisons, as libseccomp's SCMP_CMP makes them.
            Ok(SeccompCondition::new(
                arg.index,
                SeccompCmpArgLen::Qword,
                op,
                value,
            )?)
        })
        .collect::<Result<Vec<_>, SeccompError>>()?;
    if conditions.is_empty() {
        return Ok(Vec::new());
    }
    let mut indexes: Vec<u8> = args.iter().map(|a| a.index).collect();
    indexes.sort_unstable();
    let repeated = indexes.windows(2).any(|w| w[0] == w[1]);
    if repeated {
        conditions
            .into_iter()
            .map(|c| Ok(SeccompRule::new(vec![c])?))
            .collect()
    } else {
        Ok(vec![SeccompRule::new(conditions)?])
    }
}

/// Compile `profile` for a container on this host's architecture.
pub fn compile(profile: &Profile, container: &Container) -> Result<CompiledFilter, SeccompError> {
    let arch =
        TargetArch::try_from(std::env::consts::ARCH).map_err(|_| SeccompError::Architecture {
            arch: std::env::consts::ARCH.into(),
        })?;
    profile.check()?;
    let go_arch = go_arch(arch);
    let mut allow: BTreeMap<i64, Match> = BTreeMap::new();
    let mut errnos: BTreeMap<u32, BTreeMap<i64, Match>> = BTreeMap::new();
    let mut skipped: Vec<String> = Vec::new();
    for rule in &profile.syscalls {
        if !applies(rule, go_arch, container) {
            continue;
        }
        let target = match rule.action {
            Action::Allow => &mut allow,
            // `check` let through nothing else.
            _ => errnos.entry(rule.errno_ret.unwrap_or(EPERM)).or_default(),
        };
        for name in &rule.names {
            let Ok(number) = syscalls::Sysno::from_str(name) else {
                if !skipped.contains(name) {
                    skipped.push(name.clone());
                }
                continue;
            };
            let rules = rule_conditions(rule)?;
            let entry = target
                .entry(i64::from(number.id()))
                .or_insert_with(|| Match::AnyOf(Vec::new()));
            entry.add(rules);
        }
    }
    skipped.sort();
    let default_errno = profile.default_errno_ret.unwrap_or(EPERM);
    let allowed = allow.len();
    let mut filters = vec![SeccompFilter::new(
        allow
            .into_iter()
            .map(|(n, m)| (n, m.into_rules()))
            .collect(),
        SeccompAction::Errno(default_errno),
        SeccompAction::Allow,
        arch,
    )?];
    for (errno, calls) in errnos {
        filters.push(SeccompFilter::new(
            calls
                .into_iter()
                .map(|(n, m)| (n, m.into_rules()))
                .collect(),
            SeccompAction::Allow,
            SeccompAction::Errno(errno),
            arch,
        )?);
    }
    let programs = filters
        .into_iter()
        .map(|filter| {
            let program: BpfProgram = filter.try_into()?;
            Ok(program
                .into_iter()
                .map(|i| libc::sock_filter {
                    code: i.code,
                    jt: i.jt,
                    jf: i.jf,
                    k: i.k,
                })
                .collect())
        })
        .collect::<Result<Vec<_>, SeccompError>>()?;
    Ok(CompiledFilter {
        programs,
        skipped,
        allowed,
    })
}

/// The sha256 of a file's bytes, hex.
pub fn file_sha256(file: &Path) -> Result<String, LabError> {
    let bytes = std::fs::read(file).context(|| format!("reading {}", file.display()))?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

#[cfg(test)]
mod tests;
