//! The micro-VM backend end to end, in the nested lab (tests/lab) where
//! KVM is real (nested SVM under QEMU TCG): this host's own KVM is PVM and
//! cannot boot a standard guest. One lab boot runs `lab/vm-e2e.sh`, whose
//! every `sandbox run --vm` boots our VMM with our kernel and the static
//! `sandbox-init` as PID 1: exit statuses, stdio, env, identity, the
//! read-only host share, volumes, timeouts, signals, the terminal, the
//! receipt and the refusals.
//!
//! Skipped, with the reason, where the lab cannot run (not root, no QEMU,
//! no Debian kernel) or where no guest kernel is installed
//! (scripts/build-kernel.sh).

use sandbox_e2e::*;

/// Run `lab/vm-e2e.sh` in one lab boot, its runs resuming snapshots
/// (`resume`) or booting cold (`cold`).
fn vm_e2e(mode: &str) {
    if let Some(why) = lab_unavailable() {
        skip!("{why}");
    }
    if let Some(why) = guest_kernel_unavailable() {
        skip!("{why}");
    }
    let uid = match unprivileged() {
        Ok(a) => a.uid,
        Err(e) => skip!("{e}"),
    };
    let sandbox = bins_for_others().sandbox.display().to_string();
    // About fifty nested VM runs, cold boots a few seconds each under TCG.
    run_lab_checks(
        &["--kvm", "--timeout", "2400"],
        "",
        "vm-e2e.sh",
        &[sandbox, uid.to_string(), mode.into()],
    );
}

/// Every run resumes its VM shape's snapshot, as `sandbox run --vm` does
/// by default (the first of each shape makes it).
#[test]
fn vm_backend_end_to_end_in_the_lab() {
    vm_e2e("resume");
}

/// The same suite with every run booting cold (`--cold`): the results
/// must be those of the resumed runs (docs/snapshots.md).
#[test]
fn vm_backend_end_to_end_cold_boot_in_the_lab() {
    vm_e2e("cold");
}
