//! systemd integration, proven in the nested lab booted with systemd 252 as
//! PID 1 and pure cgroup v2 (this host has no systemd PID 1). One VM boot
//! runs `lab/systemd.sh`, which drives real units written by `sandbox
//! service install`: the unit's settings, start waiting for readiness
//! (`--ready tcp:PORT` and `--ready notify`), the launcher as MainPID, the
//! sandbox's cgroup and memory limit inside the unit's delegated subtree,
//! journald getting stdout and stderr, reload as SIGHUP, stop as SIGTERM
//! with nothing left, 100 restarts with never two sandboxes, kill -9 of the
//! main process (restarted, nothing leaked), remove, and gc finding nothing.
//!
//! `systemd_vm_units_in_the_lab` drives a `--vm` unit the same way.
//!
//! Skipped, with the reason, where the lab cannot run.

use sandbox_e2e::*;

#[test]
fn systemd_units_in_the_lab() {
    if let Some(why) = lab_unavailable() {
        skip!("{why}");
    }
    let b = bins_for_others();
    run_lab_checks(
        &["--systemd", "--cgroup2", "--timeout", "900"],
        "",
        "systemd.sh",
        &[
            b.sandbox.display().to_string(),
            b.init.display().to_string(),
        ],
    );
}

/// The same for the micro-VM backend (`lab/systemd-vm.sh`): a unit written
/// by `service install --vm`, where the VM is the service. Needs nested
/// KVM in the lab (`--kvm`) and our guest kernel.
#[test]
fn systemd_vm_units_in_the_lab() {
    if let Some(why) = lab_unavailable() {
        skip!("{why}");
    }
    if let Some(why) = guest_kernel_unavailable() {
        skip!("{why}");
    }
    let b = bins_for_others();
    run_lab_checks(
        &["--systemd", "--cgroup2", "--kvm", "--timeout", "900"],
        "",
        "systemd-vm.sh",
        &[
            b.sandbox.display().to_string(),
            b.init.display().to_string(),
        ],
    );
}
