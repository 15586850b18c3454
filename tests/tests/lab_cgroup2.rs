//! cgroup v2, proven in the nested lab (tests/lab): this host has cgroup
//! v1, most users have pure v2. One VM boot runs `lab/cgroup2.sh`, which
//! drives the real launcher inside: limits visible in the sandbox's own
//! read-only cgroup view, OOM of the whole sandbox (123), pids, CPU quota,
//! no write to its own limits, cleanup, and the unprivileged cases with
//! and without a delegated subtree.
//!
//! Skipped, with the reason, where the lab cannot run (not root, no
//! qemu-system-x86_64 or no Debian kernel installed).

use sandbox_e2e::*;

#[test]
fn cgroup_v2_limits_in_the_lab() {
    if let Some(why) = lab_unavailable() {
        skip!("{why}");
    }
    let uid = match unprivileged() {
        Ok(a) => a.uid,
        Err(e) => skip!("{e}"),
    };
    let sandbox = bins_for_others().sandbox.display().to_string();
    run_lab_checks(
        &["--cgroup2"],
        "",
        "cgroup2.sh",
        &[sandbox, uid.to_string()],
    );
}
