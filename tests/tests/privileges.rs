//! Privilege rules: no capability at all by default, exactly the ones
//! `--cap-add` keeps (and only those that can act inside), no_new_privs
//! always, a clean set of supplementary groups as root.

use sandbox_e2e::*;

const READ_000: &str =
    "umask 077; echo x > /tmp/f; chmod 000 /tmp/f; cat /tmp/f >/dev/null 2>&1 && echo READ || echo DENIED";

/// A field of /proc/self/status ("Key:\tvalue").
fn status_field(out: &Output, key: &str) -> String {
    out.stdout_str()
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{key}:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no {key} in {out:?}"))
}

fn cap_line(out: &Output, key: &str) -> u64 {
    u64::from_str_radix(&status_field(out, key), 16).expect("hex capability mask")
}

both! {
    /// Without --cap-add, even the file owner cannot read a mode-000 file.
    fn no_capabilities_by_default(who) {
        Sandbox::run(who).sh(READ_000).output().assert_ok().assert_stdout_contains("DENIED");
    }
}

both! {
    /// --cap-add DAC_OVERRIDE keeps exactly that capability, and it works.
    fn cap_add_keeps_exactly_that_capability(who) {
        Sandbox::run(who)
            .args(["--cap-add", "DAC_OVERRIDE"])
            .sh(READ_000)
            .output()
            .assert_ok()
            .assert_stdout_contains("READ");
        let out = Sandbox::run(who)
            .args(["--cap-add", "dac_override"])
            .cmd(["grep", "-E", "^(Cap|NoNewPrivs)", "/proc/self/status"])
            .output();
        out.assert_ok();
        for key in ["CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb"] {
            assert_eq!(cap_line(&out, key), 1 << 1, "{key}: {out:?}");
        }
        assert_eq!(status_field(&out, "NoNewPrivs"), "1");
    }
}

both! {
    /// Capabilities that could not act inside are refused, not ignored.
    fn ineffective_or_unknown_capabilities_are_refused(who) {
        for cap in ["NET_RAW", "SYS_ADMIN", "CAP_SYS_MODULE", "BOGUS", ""] {
            let out = Sandbox::run(who).args(["--cap-add", cap]).cmd(["true"]).output();
            out.assert_code(125).assert_one_line_error();
        }
    }
}

#[test]
fn root_runs_have_no_supplementary_groups() {
    let Some(who) = Who::Root.ready() else {
        skip!("needs root (rootless keeps the caller's groups, documented)")
    };
    let out = Sandbox::run(who)
        .args(["-u", "1000:1000"])
        .cmd(["id", "-G"])
        .output();
    out.assert_ok();
    assert_eq!(out.stdout_str().trim(), "1000", "{out:?}");
}
