//! cgroup v2, proven in the nested lab (tests/lab): this host has cgroup
//! v1, most users have pure v2. One VM boot runs `lab/cgroup2.sh`, which
//! drives the real launcher inside: limits visible in the sandbox's own
//! read-only cgroup view, OOM of the whole sandbox (123), pids, CPU quota,
//! no write to its own limits, cleanup, and the unprivileged cases with
//! and without a delegated subtree.
//!
//! Skipped, with the reason, where the lab cannot run (not root, no
//! qemu-system-x86_64 or no Debian kernel installed).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use sandbox_e2e::*;

fn lab_unavailable() -> Option<String> {
    if euid() != 0 {
        return Some("the lab needs root".into());
    }
    if Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_err()
    {
        return Some(
            "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)".into(),
        );
    }
    let has_kernel = std::fs::read_dir("/boot").is_ok_and(|d| {
        d.flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("vmlinuz-"))
    });
    if !has_kernel {
        return Some("no Debian kernel in /boot (apt-get install linux-image-amd64)".into());
    }
    None
}

#[test]
fn cgroup_v2_limits_in_the_lab() {
    if let Some(why) = lab_unavailable() {
        skip!("{why}");
    }
    let uid = match unprivileged() {
        Ok(a) => a.uid,
        Err(e) => skip!("{e}"),
    };
    let root = workspace_root();
    let lab = root.join("tests/lab/lab.sh");
    let script = root.join("tests/tests/lab/cgroup2.sh");
    let bins = bins_for_others();
    let out = Command::new(&lab)
        .args(["--cgroup2", "--timeout", "600", "--"])
        .arg("/bin/sh")
        .arg(&script)
        .arg(&bins.sandbox)
        .arg(uid.to_string())
        .current_dir(Path::new("/"))
        .output()
        .expect("run the lab");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() != Some(97),
        "the lab itself failed:\n{stderr}\n{stdout}"
    );
    let checks: Vec<&str> = stdout.lines().filter(|l| l.starts_with("CHECK ")).collect();
    let failed: Vec<&&str> = checks.iter().filter(|l| !l.ends_with(" ok")).collect();
    eprintln!(
        "cgroup v2 lab: {}/{} checks passed",
        checks.len() - failed.len(),
        checks.len()
    );
    assert!(
        stdout.contains("DONE"),
        "the script did not finish:\n{stdout}\n{stderr}"
    );
    assert!(checks.len() >= 11, "too few checks:\n{stdout}");
    assert!(failed.is_empty(), "{failed:#?}\nstderr: {stderr}");
    let _ = Duration::ZERO;
}
