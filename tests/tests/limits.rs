//! Resource limits (cgroups): each limit positive and negative, OOM ends
//! the whole sandbox with status 123, a fork bomb stays contained, nothing
//! is left in the cgroup tree, and an unprivileged user without a delegated
//! cgroup v2 subtree gets a clear refusal (or a reported degradation when
//! the profile allows it).
//!
//! Which layout is exercised depends on the host: cgroup v1 here, cgroup
//! v2 in the nested lab (tests/lab) and on most users' machines.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sandbox_e2e::*;

fn root() -> Option<Who> {
    Who::Root.ready()
}

fn unique(tag: &str) -> String {
    format!("lim-{tag}-{}", std::process::id())
}

/// Every directory named like a sandbox cgroup of `name`, anywhere in the
/// cgroup mounts (v1 hierarchies or the v2 tree).
fn cgroup_dirs(name: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, name: &str, depth: usize, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let n = e.file_name().to_string_lossy().into_owned();
            if n == name || n == format!("sandbox-{name}") {
                out.push(e.path());
            } else if depth < 6 {
                walk(&e.path(), name, depth + 1, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(Path::new("/sys/fs/cgroup"), name, 0, &mut out);
    out
}

fn receipt(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("receipt written"))
        .expect("receipt is JSON")
}

#[test]
fn memory_under_the_limit_runs_and_is_reported() {
    let Some(who) = root() else {
        skip!("cgroup limits need root on this host")
    };
    let name = unique("memok");
    let r = std::env::temp_dir().join(format!("{name}.json"));
    Sandbox::run(who)
        .args(["--name", &name, "--memory", "128m", "--receipt"])
        .arg(&r)
        .py("x = bytearray(16 << 20); print('ok')", [] as [&str; 0])
        .output()
        .assert_ok()
        .assert_stdout_contains("ok");
    let v = receipt(&r);
    let cg = &v["resources"]["cgroup"];
    assert_eq!(cg["limits"]["memory"], "134217728", "{v:#}");
    assert_eq!(cg["oom_kills"], 0);
    let peak = cg["peak_memory_bytes"]
        .as_u64()
        .expect("peak memory reported");
    assert!(peak >= 16 << 20, "peak {peak} below what was allocated");
    assert!(
        cgroup_dirs(&name).is_empty(),
        "cgroup left behind: {:?}",
        cgroup_dirs(&name)
    );
    let _ = std::fs::remove_file(r);
}

#[test]
fn exceeding_memory_kills_the_whole_sandbox() {
    let Some(who) = root() else {
        skip!("cgroup limits need root on this host")
    };
    let name = unique("oom");
    // The allocating child dies; the shell after it must never print.
    let out = Sandbox::run(who)
        .args(["--name", &name, "--memory", "32m"])
        .sh("/usr/bin/python3 -c 'x = bytearray(256 << 20)'; echo survived")
        .output();
    out.assert_code(123);
    assert!(
        !out.stdout_str().contains("survived"),
        "a process outlived the OOM: {out:?}"
    );
    out.assert_stderr_contains("out of memory");
    assert!(
        !out.stderr_str().contains("died unexpectedly"),
        "{}",
        out.stderr_str()
    );
    assert!(cgroup_dirs(&name).is_empty(), "cgroup left behind");
}

#[test]
fn pids_limit_contains_a_fork_bomb() {
    let Some(who) = root() else {
        skip!("cgroup limits need root on this host")
    };
    let name = unique("bomb");
    let t0 = Instant::now();
    let out = Sandbox::run(who)
        .args(["--name", &name, "--pids", "40", "--timeout", "20s"])
        .sh("b() { b | b & }; b 2>/dev/null; sleep 1; echo still-here")
        .guard(Duration::from_secs(60))
        .output();
    // Contained: the command itself finishes and the launcher returns.
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "took {:?}",
        t0.elapsed()
    );
    assert!(
        out.stdout_str().contains("still-here") || out.code() == 124,
        "{out:?}"
    );
    assert!(cgroup_dirs(&name).is_empty(), "cgroup left behind");
}

#[test]
fn pids_limit_refuses_forks_beyond_it() {
    let Some(who) = root() else {
        skip!("cgroup limits need root on this host")
    };
    // 30 children under a limit of 10 (init and the shell count too).
    let script = "import os\nn=0\nfor i in range(30):\n try:\n  pid=os.fork()\n  if pid==0:\n   import time; time.sleep(2); os._exit(0)\n  n+=1\n except OSError:\n  pass\nprint('forked', n)";
    let out = Sandbox::run(who)
        .args(["--pids", "10"])
        .py(script, [] as [&str; 0])
        .output();
    out.assert_ok();
    let n: u32 = out
        .stdout_str()
        .trim()
        .trim_start_matches("forked ")
        .parse()
        .expect("count");
    assert!(n < 10, "forked {n} children under --pids 10");
    // And without the limit, all 30 succeed (the check can fail).
    let out = Sandbox::run(who).py(script, [] as [&str; 0]).output();
    assert_eq!(out.stdout_str().trim(), "forked 30", "{out:?}");
}

#[test]
fn cpu_quota_is_written_while_running() {
    let Some(who) = root() else {
        skip!("cgroup limits need root on this host")
    };
    let name = unique("cpu");
    let mut s = Sandbox::run(who)
        .args(["--name", &name, "--cpus", "0.25"])
        .sh("echo READY; sleep 30")
        .spawn();
    s.wait_for_line("READY", Duration::from_secs(20));
    let dirs = cgroup_dirs(&name);
    let quota: Vec<String> = dirs
        .iter()
        .filter_map(|d| {
            std::fs::read_to_string(d.join("cpu.cfs_quota_us"))
                .or_else(|_| std::fs::read_to_string(d.join("cpu.max")))
                .ok()
        })
        .collect();
    s.kill_and_reap();
    assert!(
        quota
            .iter()
            .any(|q| q.trim() == "25000" || q.trim() == "25000 100000"),
        "quota files: {quota:?} in {dirs:?}"
    );
}

#[test]
fn bad_limit_values_are_refused() {
    let Some(who) = Who::Root.ready().or(Who::Rootless.ready()) else {
        skip!("no account can run the launcher")
    };
    for (opt, val) in [
        ("--memory", "0"),
        ("--memory", "-1"),
        ("--memory", "512"),
        ("--memory", "18446744073709551616"),
        ("--cpus", "0"),
        ("--cpus", "abc"),
        ("--cpus", "1e9"),
        ("--pids", "0"),
        ("--pids", "-5"),
        ("--io-weight", "0"),
        ("--io-weight", "10001"),
    ] {
        let out = Sandbox::run(who).args([opt, val]).cmd(["true"]).output();
        out.assert_code(125).assert_one_line_error();
        out.assert_stderr_contains(val);
    }
}

#[test]
fn unenforceable_limits_fail_closed_or_are_reported() {
    let Some(who) = Who::Rootless.ready() else {
        skip!("no unprivileged account")
    };
    let layout = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let pure_v2 = layout
        .lines()
        .any(|l| l.contains(" /sys/fs/cgroup ") && l.contains("cgroup2"));
    if pure_v2 {
        skip!("cgroup v2 host: delegation decides; covered by the lab");
    }
    // Default: refuse, with the reason.
    let out = Sandbox::run(who)
        .args(["--memory", "64m"])
        .cmd(["true"])
        .output();
    out.assert_code(125).assert_one_line_error();
    out.assert_stderr_contains("delegated cgroup v2");
    // A profile that allows best effort: runs, says so, and records it.
    let dir = std::env::temp_dir().join(unique("be"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let prof = dir.join("be.toml");
    std::fs::write(
        &prof,
        "[limits]\nmemory = \"64m\"\nenforce = \"best-effort\"\n",
    )
    .expect("profile");
    let r = dir.join("r.json");
    chown_for(&dir, who);
    let out = Sandbox::run(who)
        .args(["-p"])
        .arg(&prof)
        .arg("--receipt")
        .arg(&r)
        .cmd(["true"])
        .output();
    out.assert_ok();
    out.assert_stderr_contains("not enforced");
    let v = receipt(&r);
    let ne = v["isolation"]["not_enforced"]
        .as_array()
        .expect("list")
        .clone();
    assert!(ne.iter().any(|x| x == "limit:memory"), "{v:#}");
    let _ = std::fs::remove_dir_all(dir);
}

fn chown_for(dir: &Path, who: Who) {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: chown on a path we just created, with plain integers.
    unsafe { libc::chown(c.as_ptr(), who.uid(), who.gid()) };
    let _ = std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755));
}

#[test]
fn a_killed_launcher_leaves_a_cgroup_the_next_run_removes() {
    let Some(who) = root() else {
        skip!("cgroup limits need root on this host")
    };
    let name = unique("stale");
    let mut s = Sandbox::run(who)
        .args(["--name", &name, "--memory", "64m"])
        .sh("echo READY; sleep 30")
        .spawn();
    s.wait_for_line("READY", Duration::from_secs(20));
    assert!(!cgroup_dirs(&name).is_empty(), "no cgroup while running");
    s.signal(libc::SIGKILL);
    s.kill_and_reap();
    // Everything inside died with init; the empty cgroup stays until the
    // next run that makes a cgroup removes it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && !cgroup_dirs(&name).is_empty() {
        Sandbox::run(who)
            .args(["--memory", "64m"])
            .cmd(["true"])
            .output()
            .assert_ok();
        if cgroup_dirs(&name).is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        cgroup_dirs(&name).is_empty(),
        "stale cgroup kept: {:?}",
        cgroup_dirs(&name)
    );
}
