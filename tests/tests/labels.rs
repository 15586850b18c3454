//! `--security-label` on a host without SELinux: the label cannot be
//! enforced, so the run says so on stderr and in the receipt; malformed
//! labels are refused with exit status 125.

use sandbox_e2e::*;

both! {
    /// On a host without SELinux a requested label is reported, not faked.
    fn label_without_selinux_is_reported(who) {
        if std::path::Path::new("/sys/fs/selinux/enforce").exists() {
            skip!("SELinux is enabled on this host; see lab_selinux.rs");
        }
        let out = Sandbox::run(who)
            .args(["--security-label", "dynamic", "--json-status-fd", "1"])
            .cmd(["true"])
            .output();
        out.assert_ok();
        out.assert_stderr_contains("not enforced");
        let v: serde_json::Value = serde_json::from_str(&out.stdout_str()).expect("receipt");
        let ne = v["isolation"]["not_enforced"].as_array().expect("list").clone();
        assert!(ne.iter().any(|x| x == "selinux-label"), "{v:#}");
        assert_eq!(v["isolation"]["enforced"]["security_label"]["context"], serde_json::Value::Null);
    }
}

both! {
    /// Malformed labels never start a sandbox.
    fn malformed_labels_are_refused(who) {
        for bad in ["static:", "static:a:b", "dyn", ""] {
            let out = Sandbox::run(who).args(["--security-label", bad]).cmd(["true"]).output();
            out.assert_code(125).assert_one_line_error();
        }
    }
}
