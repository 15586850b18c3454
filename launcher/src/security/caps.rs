//! Capability names. The command starts with no capability at all
//! (bounding, ambient, effective, permitted, inheritable all empty) unless
//! `--cap-add` names one; added capabilities hold only inside the
//! command's own user namespace, never on the host.

/// Capability names, indexed by number (linux/capability.h).
pub const NAMES: [&str; 41] = [
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

/// Capabilities that take effect inside the command's own user namespace
/// (they act on files and processes whose ids are mapped there). Every
/// other capability governs a namespace the command does not own (the
/// sandbox's network, mount, IPC and UTS namespaces belong to the outer
/// user namespace) or the host itself, so it would be a silent no-op:
/// `--cap-add` refuses those.
pub const EFFECTIVE: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "SETFCAP",
    "SYS_CHROOT",
    "SYS_PTRACE",
];

/// Parse `CHOWN`, `cap_chown`, `CAP_CHOWN` into a capability that can
/// take effect in the sandbox.
pub fn parse(name: &str) -> Result<u8, String> {
    let up = name.to_ascii_uppercase();
    let bare = up.strip_prefix("CAP_").unwrap_or(&up);
    if NAMES.contains(&bare) && !EFFECTIVE.contains(&bare) {
        return Err(format!(
            "CAP_{bare} would have no effect: it governs the sandbox's network, mount, IPC or \
             UTS namespace (which the command does not own) or the host itself; capabilities \
             that work inside are {}",
            EFFECTIVE.join(", ")
        ));
    }
    NAMES
        .iter()
        .position(|n| *n == bare)
        .map(|i| i as u8)
        .ok_or_else(|| {
            format!(
                "unknown capability; accepted names are {} (with or without CAP_)",
                EFFECTIVE.join(", ")
            )
        })
}

pub fn name(cap: u8) -> String {
    NAMES
        .get(usize::from(cap))
        .map_or_else(|| format!("CAP_{cap}"), |n| format!("CAP_{n}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(parse("chown").unwrap(), 0);
        assert_eq!(parse("CAP_SYS_PTRACE").unwrap(), 19);
        let err = parse("net_raw").unwrap_err();
        assert!(err.contains("no effect"), "{err}");
        assert!(parse("CAP_SYS_ADMIN").is_err());
        assert_eq!(name(40), "CAP_CHECKPOINT_RESTORE");
        assert!(parse("CAP_BOGUS").is_err());
        assert!(parse("").is_err());
    }
}
