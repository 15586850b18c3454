//! `--vm` host checks: a host whose /dev/kvm cannot boot our standard
//! guest (no KVM, no permission, a PVM host) is told exactly that, with
//! exit status 125, before anything is created.

use std::path::Path;

use sandbox_e2e::*;

both! {
    /// The reason names the actual obstacle on this host.
    fn vm_preflight_names_the_obstacle(who) {
        let out = Sandbox::run(who).args(["--vm"]).cmd(["true"]).output();
        out.assert_code(125).assert_one_line_error();
        let err = out.stderr_str();
        if !Path::new("/dev/kvm").exists() {
            assert!(err.contains("/dev/kvm does not exist"), "{err}");
        } else if Path::new("/sys/module/kvm_pvm").exists() && who.is_root() {
            assert!(err.contains("PVM"), "{err}");
            assert!(err.contains("tests/lab/lab.sh"), "{err}");
        } else if !who.is_root() && err.contains("permission") {
            assert!(err.contains("kvm"), "{err}");
        } else {
            // A real KVM host: the kernel or the backend itself is what is
            // missing, and the message says which.
            assert!(
                err.contains("guest kernel") || err.contains("not implemented") || err.contains("PVM"),
                "{err}"
            );
        }
    }
}

#[test]
fn kernel_option_requires_vm() {
    let Some(who) = Who::Root.ready().or(Who::Rootless.ready()) else {
        skip!("no account can run the launcher")
    };
    Sandbox::run(who)
        .args(["--kernel", "/nonexistent"])
        .cmd(["true"])
        .output()
        .assert_code(125);
}
