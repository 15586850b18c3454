//! SELinux labels under an enforcing policy (the nested lab, --selinux):
//! a static label is what the command runs with, an invalid context is
//! refused before anything starts, dynamic labels fail closed while the
//! sandbox policy module is not loaded, and with it loaded they keep
//! sandboxes apart (MCS).

use sandbox_e2e::*;

#[test]
fn labels_under_enforcing_selinux() {
    if let Some(why) = lab_unavailable() {
        skip!("{why}");
    }
    let sandbox = bins_for_others().sandbox.display().to_string();
    run_lab_checks(&["--selinux"], "", "selinux.sh", &[sandbox]);
}

/// Build a policy with the sandbox module into an alternate root under the
/// target directory (visible inside the lab), without touching the host's
/// policy store. Returns the policy directory.
fn build_policy() -> Result<std::path::PathBuf, String> {
    use std::process::Command;
    if Command::new("semodule").arg("-h").output().is_err() {
        return Err("semodule is not installed (apt-get install policycoreutils)".into());
    }
    if !std::path::Path::new("/var/lib/selinux/default").is_dir() {
        return Err("Debian's SELinux policy is not installed (selinux-policy-default)".into());
    }
    let root = target_dir().join(format!("selinux-root-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("var/lib/selinux")).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(root.join("etc")).map_err(|e| e.to_string())?;
    for (src, dst) in [
        ("/var/lib/selinux/default", "var/lib/selinux/"),
        ("/etc/selinux", "etc/"),
    ] {
        let ok = Command::new("cp")
            .args(["-a", src])
            .arg(root.join(dst))
            .status();
        if !ok.is_ok_and(|s| s.success()) {
            return Err(format!("cannot copy {src}"));
        }
    }
    let cil = workspace_root().join("launcher/policy/selinux/sandbox.cil");
    let out = Command::new("semodule")
        .arg("-p")
        .arg(&root)
        .args(["-s", "default", "-n", "-i"])
        .arg(&cil)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "semodule failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(root.join("etc/selinux/default/policy"))
}

/// With the sandbox policy module loaded: each sandbox runs as sandbox_t
/// at its own category pair, its writable volume carries that label while
/// it runs and gets its old label back after, and another sandbox can read
/// the host but neither read nor write the first one's volume.
#[test]
fn dynamic_labels_separate_sandboxes() {
    if let Some(why) = lab_unavailable() {
        skip!("{why}");
    }
    let policy = match build_policy() {
        Ok(p) => p,
        Err(e) => panic!("cannot build the sandbox SELinux policy: {e}"),
    };
    let sandbox = bins_for_others().sandbox.display().to_string();
    run_lab_checks(
        &["--selinux"],
        "",
        "selinux-dynamic.sh",
        &[sandbox, policy.display().to_string()],
    );
    if let Some(root) = policy.ancestors().nth(4) {
        let _ = std::fs::remove_dir_all(root);
    }
}
