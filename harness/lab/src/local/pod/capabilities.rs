//! Capabilities as a container runtime gives them: the bounding set of a container is the
//! runtime's default set, changed by the Deployment's `securityContext.capabilities`.

/// The capabilities containerd and Docker leave in a container's bounding set by default.
pub const RUNTIME_DEFAULT_CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "NET_RAW",
    "SYS_CHROOT",
    "MKNOD",
    "AUDIT_WRITE",
    "SETFCAP",
];

/// Linux capability names (without `CAP_`), by number.
const CAPABILITY_NAMES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// The number of a capability named as Kubernetes does (`NET_RAW`; `CAP_NET_RAW` is accepted).
pub fn capability_number(name: &str) -> Option<u32> {
    let name = name.trim().to_ascii_uppercase();
    let name = name.strip_prefix("CAP_").unwrap_or(&name);
    CAPABILITY_NAMES
        .iter()
        .position(|n| *n == name)
        .map(|i| i as u32)
}

/// A capability name that Linux does not have.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown capability {name:?}")]
pub struct UnknownCapability {
    pub name: String,
}

/// The bounding set (a bit mask) of a container: the runtime's default set, minus `drop`, plus
/// `add` (`ALL` in either means every capability). Unknown names are an error naming them.
pub fn bounding_set(add: &[String], drop: &[String]) -> Result<u64, UnknownCapability> {
    let all = (1u64 << CAPABILITY_NAMES.len()) - 1;
    let mask_of = |names: &[String]| -> Result<u64, UnknownCapability> {
        let mut mask = 0;
        for name in names {
            if name.trim().eq_ignore_ascii_case("ALL") {
                mask = all;
            } else {
                mask |= 1
                    << capability_number(name)
                        .ok_or_else(|| UnknownCapability { name: name.clone() })?;
            }
        }
        Ok(mask)
    };
    let default = RUNTIME_DEFAULT_CAPABILITIES
        .iter()
        .filter_map(|n| capability_number(n))
        .fold(0u64, |m, c| m | (1 << c));
    Ok((default & !mask_of(drop)?) | mask_of(add)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bounding_set_is_the_runtimes_default_changed_by_the_deployment() {
        // Docker's and containerd's well-known default: CapBnd 00000000a80425fb.
        assert_eq!(bounding_set(&[], &[]).unwrap(), 0xa80425fb);
        assert_eq!(bounding_set(&[], &["ALL".into()]).unwrap(), 0);
        assert_eq!(
            bounding_set(&["NET_ADMIN".into()], &["ALL".into()]).unwrap(),
            1 << 12
        );
        assert_eq!(
            bounding_set(&[], &["CAP_NET_RAW".into()]).unwrap(),
            0xa80405fb
        );
        assert!(
            bounding_set(&["NET_FLY".into()], &[])
                .unwrap_err()
                .to_string()
                .contains("NET_FLY")
        );
    }
}
