//! The JSON record of a run (`--receipt FILE`, `--json-status-fd FD`).
//!
//! Fields (stable; documented in `docs/receipt.md`): `id`, `backend`,
//! `profile`, `command`, `exit_code` (the launcher's own status),
//! `status` (`{"exited": N}`, `{"signaled": N}` or `{"error": "..."}`),
//! `timed_out`, `wall_time_ms`, `started_at` (unix seconds) and
//! `isolation` (`enforced` features with their settings, and the
//! `not_enforced` list, empty when everything asked for holds).

use std::io::Write;
use std::os::fd::{FromRawFd, RawFd};
use std::path::Path;

use serde_json::{json, Value};

use crate::container::namespaces;
use crate::security::{caps, seccomp};
use crate::spec::{Landlock, Spec};
use sandbox_proto::Enforced;

/// Isolation features asked for that this run could not enforce.
pub fn not_enforced(
    spec: &Spec,
    enforced: Option<&Enforced>,
    limits: &[&'static str],
) -> Vec<&'static str> {
    let mut v: Vec<&'static str> = limits.iter().map(|l| limit_feature(l)).collect();
    if let Some(e) = enforced {
        if spec.landlock != Landlock::Off && e.landlock_abi == 0 {
            v.push("landlock");
        }
    }
    v
}

pub fn limit_feature(limit: &str) -> &'static str {
    match limit {
        "memory" => "limit:memory",
        "memory-swap" => "limit:memory-swap",
        "cpus" => "limit:cpus",
        "pids" => "limit:pids",
        "io_weight" => "limit:io_weight",
        _ => "limit",
    }
}

/// What the backend enforced for this run (`enforced` is `None` when the
/// sandbox never started).
pub fn isolation(spec: &Spec, enforced: Option<&Enforced>, limits: &[&'static str]) -> Value {
    let mut disabled = Vec::new();
    if spec.seccomp == seccomp::Level::Off {
        disabled.push("seccomp");
    }
    if spec.landlock == Landlock::Off {
        disabled.push("landlock");
    }
    let landlock = match enforced {
        Some(e) if e.landlock_abi > 0 => {
            json!({ "abi": e.landlock_abi, "mode": spec.landlock.as_str() })
        }
        _ => Value::Null,
    };
    json!({
        "enforced": {
            "namespaces": namespaces(spec),
            "root_filesystem": "host, read-only, nosuid, nodev",
            "scratch": ["/tmp", "/run", "/dev/shm"],
            "proc": "private, masked",
            "sys": if spec.network.own_netns() { "private, read-only" } else { "host, read-only" },
            "dev": "minimal (null, zero, full, random, urandom, tty, pts, shm)",
            "masked_paths": spec.masked,
            "network": spec.network.as_str(),
            "network_rules": crate::net::receipt(spec.network.as_str(), &spec.net, None),
            "user": { "uid": spec.user.uid, "gid": spec.user.gid, "dynamic": spec.dynamic_user },
            "capabilities": spec.cap_add.iter().map(|c| caps::name(*c)).collect::<Vec<_>>(),
            "landlock": landlock,
            "security_label": {
                "mode": spec.security_label.as_str(),
                "context": spec.exec_label,
            },
            "seccomp": {
                "level": spec.seccomp.as_str(),
                "denied": spec.seccomp.denied().iter().map(|d| d.name).collect::<Vec<_>>(),
            },
            "no_new_privs": true,
            "new_session": true,
            "pid1": "sandbox-init",
        },
        "not_enforced": not_enforced(spec, enforced, limits),
        "disabled_by_request": disabled,
    })
}

#[derive(Debug)]
pub struct Record<'a> {
    pub spec: Option<&'a Spec>,
    pub enforced: Option<Enforced>,
    /// Limits skipped in best-effort mode.
    pub limits_not_enforced: &'a [&'static str],
    /// A security label was asked for on a host without SELinux.
    pub label_not_enforced: bool,
    /// Limits in force and resource usage (`None`: no cgroup was used).
    pub cgroup: Option<Value>,
    /// The micro-VM's shape and boot times (`None`: namespace backend).
    pub vm: Option<Value>,
    pub name: Option<&'a str>,
    pub argv: &'a [std::ffi::OsString],
    pub exit_code: i32,
    pub status: Value,
    pub timed_out: bool,
    pub wall_time_ms: f64,
    pub started_at: f64,
}

impl Record<'_> {
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.name,
            "backend": if self.spec.is_some_and(|s| s.vm) { "vm" } else { "namespace" },
            "profile": self.spec.map(|s| s.profile.clone()),
            "command": self.argv.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>(),
            "exit_code": self.exit_code,
            "status": self.status,
            "timed_out": self.timed_out,
            "wall_time_ms": (self.wall_time_ms * 1000.0).round() / 1000.0,
            "started_at": self.started_at,
            "isolation": self
                .spec
                .map(|s| {
                    let mut v = isolation(s, self.enforced.as_ref(), self.limits_not_enforced);
                    if self.label_not_enforced {
                        if let Some(list) = v["not_enforced"].as_array_mut() {
                            list.push("selinux-label".into());
                        }
                    }
                    v
                }),
            "resources": self.cgroup,
            "vm": self.vm,
        })
    }
}

/// Write the record to a file atomically (temp file, fsync, rename).
pub fn write_file(path: &Path, v: &Value) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        serde_json::to_writer_pretty(&mut f, v)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Write the record as one line to an inherited fd.
pub fn write_fd(fd: RawFd, v: &Value) -> std::io::Result<()> {
    // SAFETY: the fd was checked open at start-up; ManuallyDrop keeps us
    // from closing a descriptor the caller owns.
    let f = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
    let mut line = serde_json::to_vec(v)?;
    line.push(b'\n');
    (&*f).write_all(&line)
}
