//! Landlock degradation, proven in the nested lab booted without Landlock:
//! `--landlock require` fails closed before the command runs; the default
//! (`auto`) runs, says so on stderr, and lists it in the receipt's
//! `not_enforced`; `off` is silent (and listed as disabled on request).

use sandbox_e2e::*;

#[test]
fn landlock_missing_fails_closed_or_is_reported() {
    if let Some(why) = lab_unavailable() {
        skip!("{why}");
    }
    let sandbox = bins_for_others().sandbox.display().to_string();
    run_lab_checks(
        &[],
        "lsm=lockdown,capability,yama",
        "landlock.sh",
        &[sandbox],
    );
}
