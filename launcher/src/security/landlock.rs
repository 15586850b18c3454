//! The host kernel's Landlock ABI, probed from the launcher. init applies
//! the rules (it probes again, inside the sandbox); the launcher asks only
//! so that `doctor` can report it and a run can warn before the command
//! starts, not after its first output.

/// The Landlock ABI version this kernel offers, 0 when it has none (not
/// built in, or not in the `lsm=` list).
pub fn abi() -> u32 {
    // SAFETY: the version query (flag 1, LANDLOCK_CREATE_RULESET_VERSION)
    // takes a null attribute and size 0 and creates no descriptor.
    let r = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32,
        )
    };
    u32::try_from(r).unwrap_or(0)
}
