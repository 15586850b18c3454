//! `sandbox doctor`: which isolation features this host can enforce for
//! the calling user, and why not when it cannot.

use std::fs;

use serde::Serialize;
use serde_json::json;

use crate::cgroup::{self, Layout};

/// One line of the report.
#[derive(Debug, Serialize)]
pub struct Check {
    pub feature: &'static str,
    /// `ok`, `missing` or `degraded`.
    pub status: &'static str,
    pub detail: String,
    /// Whether a default `sandbox run` needs this feature.
    pub required: bool,
}

fn check(feature: &'static str, ok: bool, required: bool, detail: String) -> Check {
    Check {
        feature,
        status: if ok { "ok" } else { "missing" },
        detail,
        required,
    }
}

fn probe_syscall(nr: libc::c_long) -> bool {
    // Every probe passes invalid arguments: ENOSYS means "not implemented",
    // anything else means the call exists.
    // SAFETY: the arguments are invalid on purpose; the kernel only
    // validates them and returns an error.
    let r = unsafe { libc::syscall(nr, -1, 0usize, 0usize, 0usize, 0usize) };
    !(r == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS))
}

fn userns_works() -> Result<(), String> {
    // SAFETY: fork; the child only calls unshare and _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err("fork failed".into());
    }
    if pid == 0 {
        // SAFETY: async-signal-safe calls only.
        unsafe {
            let r = libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS | libc::CLONE_NEWNET);
            libc::_exit(if r == 0 {
                0
            } else {
                *libc::__errno_location() & 0xff
            });
        }
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        Ok(())
    } else {
        Err(crate::errors::errno_text(libc::WEXITSTATUS(status)))
    }
}

fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Run every check.
pub fn checks() -> Vec<Check> {
    // SAFETY: no preconditions.
    let euid = unsafe { libc::geteuid() };
    let mut out = Vec::new();
    out.push(check("kernel", true, true, kernel_release()));
    let userns = userns_works();
    out.push(check(
        "user namespaces",
        userns.is_ok(),
        true,
        match &userns {
            Ok(()) => "user, mount and network namespaces can be created".into(),
            Err(e) => format!(
                "unshare(CLONE_NEWUSER) failed: {e}; check user.max_user_namespaces, \
                 kernel.unprivileged_userns_clone and AppArmor's userns restriction"
            ),
        },
    ));
    for (name, nr, need) in [
        ("clone3", libc::SYS_clone3, "Linux 5.3"),
        ("openat2", libc::SYS_openat2, "Linux 5.6"),
        ("mount_setattr", libc::SYS_mount_setattr, "Linux 5.12"),
    ] {
        let ok = probe_syscall(nr);
        out.push(check(
            name,
            ok,
            true,
            if ok {
                "available".into()
            } else {
                format!("missing: {need} or newer is required")
            },
        ));
    }
    let seccomp = fs::read_to_string("/proc/self/status")
        .map(|s| s.lines().any(|l| l.starts_with("Seccomp:")))
        .unwrap_or(false);
    out.push(check(
        "seccomp",
        seccomp,
        true,
        if seccomp {
            "filters can be installed".into()
        } else {
            "kernel without CONFIG_SECCOMP_FILTER".into()
        },
    ));
    let abi = crate::security::landlock::abi();
    out.push(Check {
        feature: "landlock",
        status: if abi > 0 { "ok" } else { "degraded" },
        detail: if abi > 0 {
            format!("ABI {abi}")
        } else {
            "not available (needs Linux 5.13 with landlock in the lsm= list); runs report it as \
             not enforced, --landlock require refuses to run"
                .into()
        },
        required: false,
    });
    let layout = cgroup::detect();
    let (ok, detail) = match (&layout, euid) {
        (Layout::None, _) => (false, "no cgroup filesystem mounted".to_string()),
        (Layout::V1 { .. }, 0) => (
            true,
            "cgroup v1 (memory, cpu, pids, blkio hierarchies)".into(),
        ),
        (Layout::V1 { .. }, _) => (
            false,
            "cgroup v1 only: limits need root (v1 cannot be delegated to users)".into(),
        ),
        (Layout::V2 { mount }, 0) => (true, format!("cgroup v2 at {}", mount.display())),
        (Layout::V2 { mount }, _) => {
            let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
            let delegated = own
                .lines()
                .find_map(|l| l.strip_prefix("0::"))
                .is_some_and(|p| {
                    use std::os::unix::fs::MetadataExt;
                    fs::metadata(mount.join(p.trim_start_matches('/')))
                        .is_ok_and(|m| m.uid() == euid)
                });
            (
                delegated,
                if delegated {
                    "cgroup v2, delegated subtree available".into()
                } else {
                    "cgroup v2 without a delegated subtree for this user (no systemd user \
                     session?)"
                        .into()
                },
            )
        }
    };
    let detail = match &layout {
        Layout::V2 { mount } if !cgroup::weight_scheduler_active(mount) => {
            format!("{detail}; --io-weight is not enforceable (no BFQ scheduler, iocost off)")
        }
        Layout::V1 { .. } if !cgroup::weight_scheduler_active(std::path::Path::new("/")) => {
            format!("{detail}; --io-weight is not enforceable (no BFQ scheduler)")
        }
        _ => detail,
    };
    out.push(Check {
        feature: "cgroup limits",
        status: if ok { "ok" } else { "missing" },
        detail,
        required: false,
    });
    let selinux = fs::read_to_string("/sys/fs/selinux/enforce").ok();
    let module = selinux.is_some()
        && crate::security::selinux::check_context(&format!(
            "{}:s0",
            crate::security::selinux::DYNAMIC_DOMAIN
        ))
        .is_ok();
    out.push(Check {
        feature: "selinux labels",
        status: match (&selinux, module) {
            (Some(_), true) => "ok",
            (Some(_), false) => "degraded",
            (None, _) => "missing",
        },
        detail: match (selinux.as_deref().map(str::trim), module) {
            (Some(mode), true) => format!(
                "SELinux {}; the sandbox policy module is loaded",
                if mode == "1" {
                    "enforcing"
                } else {
                    "permissive (labels not enforced)"
                }
            ),
            (Some(_), false) => "SELinux enabled: static:CONTEXT labels work; dynamic labels need \
                                 the sandbox policy module (semodule -i \
                                 <prefix>/share/sandbox/selinux/sandbox.cil)"
                .into(),
            (None, _) => "SELinux is not enabled on this host: labels cannot be enforced".into(),
        },
        required: false,
    });
    let kvm = crate::vm::host::check();
    out.push(Check {
        feature: "kvm (--vm)",
        status: if kvm.is_ok() { "ok" } else { "missing" },
        detail: match &kvm {
            Ok(k) => format!("/dev/kvm usable (API {})", k.api_version),
            Err(e) => e.to_string(),
        },
        required: false,
    });
    let guest_kernel = crate::vm::kernel::find(None);
    out.push(Check {
        feature: "guest kernel (--vm)",
        status: if guest_kernel.is_ok() {
            "ok"
        } else {
            "missing"
        },
        detail: match &guest_kernel {
            Ok(k) => k.path.display().to_string(),
            Err(e) => e.to_string(),
        },
        required: false,
    });
    let guest_init = crate::vm::initramfs::find_init();
    out.push(Check {
        feature: "static sandbox-init (--vm)",
        status: if guest_init.is_ok() { "ok" } else { "missing" },
        detail: match &guest_init {
            Ok((p, _)) => p.display().to_string(),
            Err(e) => e.to_string(),
        },
        required: false,
    });
    let tools: Vec<String> = [("pasta", "passt"), ("nft", "nftables")]
        .iter()
        .filter(|(p, _)| crate::net::find_program(p).is_none())
        .map(|(p, pkg)| format!("{p} (Debian package {pkg})"))
        .collect();
    out.push(check(
        "network nat (--network nat)",
        tools.is_empty(),
        false,
        if tools.is_empty() {
            "pasta and nft found".into()
        } else {
            format!("missing: {}", tools.join(", "))
        },
    ));
    let init = crate::initbin::open();
    out.push(check(
        "sandbox-init",
        init.is_ok(),
        true,
        match init {
            Ok((_, p)) => p.display().to_string(),
            Err(e) => e.to_string(),
        },
    ));
    out
}

/// Print the report; returns the exit status (0: a default run works).
pub fn run(as_json: bool) -> i32 {
    let checks = checks();
    let ready = checks.iter().all(|c| !c.required || c.status == "ok");
    if as_json {
        println!("{}", json!({ "ready": ready, "checks": checks }));
    } else {
        for c in &checks {
            println!("{:<26} {:<9} {}", c.feature, c.status, c.detail);
        }
        println!(
            "\n{}",
            if ready {
                "ready: `sandbox run` works on this host for this user"
            } else {
                "not ready: a required feature is missing (see above)"
            }
        );
    }
    if ready {
        0
    } else {
        1
    }
}
