//! SELinux labels under an enforcing policy (the nested lab, --selinux):
//! a static label is what the command runs with, an invalid context is
//! refused before anything starts, and dynamic labels fail closed while
//! the sandbox policy module is not installed.

use sandbox_e2e::*;

#[test]
fn labels_under_enforcing_selinux() {
    if let Some(why) = lab_unavailable() {
        skip!("{why}");
    }
    let sandbox = bins_for_others().sandbox.display().to_string();
    run_lab_checks(&["--selinux"], "", "selinux.sh", &[sandbox]);
}
