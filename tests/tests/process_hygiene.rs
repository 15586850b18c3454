//! Process hygiene: PID 1, zombie reaping, nothing survives the sandbox,
//! no leaked file descriptors, launcher crashes, concurrency, stdio.

use std::collections::BTreeSet;
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

use sandbox_e2e::{
    become_subreaper, both, children_of, mountinfo, orphaned_children, pids_with_marker,
    sleep_marker, unique, wait_until, Fixture, Sandbox, Who, PY,
};

both! {
    /// PID 1 is sandbox-init; the command is not PID 1; `ps` shows only
    /// the sandbox's own processes.
    fn pid1_is_sandbox_init(who) {
        let out = Sandbox::run(who).cmd(["cat", "/proc/1/cmdline"]).output();
        out.assert_ok();
        assert_eq!(out.stdout, b"sandbox-init\0", "{out:?}");

        let out = Sandbox::run(who).sh("echo $$").output();
        out.assert_ok();
        assert_ne!(out.line(), "1", "the command is PID 1:{out:?}");

        let out = Sandbox::run(who).sh("ps -e -o pid=,comm=").output();
        out.assert_ok();
        let comms: Vec<(i32, String)> = out
            .stdout_str()
            .lines()
            .filter_map(|l| {
                let l = l.trim();
                let (pid, comm) = l.split_once(' ')?;
                Some((pid.parse().ok()?, comm.trim().to_string()))
            })
            .collect();
        let names: BTreeSet<&str> = comms.iter().map(|(_, c)| c.as_str()).collect();
        assert_eq!(
            names,
            BTreeSet::from(["sandbox-init", "sh", "ps"]),
            "unexpected processes visible:{out:?}"
        );
        assert_eq!(comms.len(), 3, "{out:?}");
        assert!(comms.contains(&(1, "sandbox-init".into())), "{out:?}");
    }
}

both! {
    /// Orphaned grandchildren are reaped by init: no zombie accumulates.
    fn orphans_are_reaped(who) {
        // 20 children each leave an orphan that exits shortly after. Then
        // poll until no process but init and ourselves is left; a zombie
        // that nobody reaps would stay forever and the poll would time out.
        let script = r#"
import os, time
for i in range(20):
    pid = os.fork()
    if pid == 0:
        if os.fork() == 0:
            time.sleep(0.05)
            os._exit(0)
        os._exit(0)
    os.waitpid(pid, 0)
def others():
    me = os.getpid()
    out = []
    for p in os.listdir('/proc'):
        if p.isdigit() and int(p) not in (1, me):
            try:
                st = open('/proc/%s/stat' % p).read()
            except OSError:
                continue
            out.append((int(p), st.rsplit(')', 1)[1].split()[0]))
    return out
deadline = time.time() + 20
while time.time() < deadline:
    o = others()
    if not o:
        print("CLEAN")
        break
    time.sleep(0.02)
else:
    print("LEFT", others())
"#;
        let out = Sandbox::run(who).cmd([PY, "-c", script]).output();
        out.assert_ok().assert_stdout_contains("CLEAN");
    }
}

both! {
    /// The shell variant: `(sleep 0.1 &)` leaves an orphan; once it is
    /// gone, `ps` shows no zombie.
    fn no_zombies_after_orphan_exit(who) {
        let script = "(sleep 0.1 &); i=0; \
            while ps -e -o comm= | grep -qx sleep && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done; \
            ps -e -o stat= | grep -c Z";
        let out = Sandbox::run(who).sh(script).output();
        assert_eq!(out.line(), "0", "zombies left:{out:?}");
    }
}

both! {
    /// Background processes left behind when the command exits are killed:
    /// none survives on the host, and the launcher does not wait for them.
    fn leftover_processes_are_killed(who) {
        let m1 = sleep_marker();
        let m2 = sleep_marker();
        let m3 = sleep_marker();
        // A plain background job, a setsid'd double-forked daemon, and one
        // that ignores SIGTERM and SIGHUP.
        let script = format!(
            "sleep {m1} & \
             setsid sh -c 'sleep {m2} & ' & \
             sh -c 'trap \"\" TERM HUP; exec sleep {m3}' & \
             i=0; while [ $(ps -e -o args= | grep -c '^sleep 1000[.]') -lt 3 ] && [ $i -lt 400 ]; do \
               sleep 0.05; i=$((i+1)); done; \
             echo started $(ps -e -o args= | grep -c '^sleep 1000[.]')"
        );
        let out = Sandbox::run(who).sh(&script).output();
        out.assert_ok();
        assert_eq!(out.line(), "started 3", "the background processes did not all start:{out:?}");
        for m in [&m1, &m2, &m3] {
            let gone = wait_until(Duration::from_secs(5), || pids_with_marker(m).is_empty());
            assert!(gone, "process with marker {m} survived: {:?}", pids_with_marker(m));
        }
    }
}

both! {
    /// The init holds no inherited state: its environment is empty and,
    /// once the command runs, its fds are only stdio (on /dev/null), the
    /// control channel and its own signalfd/pidfds (checked from the host).
    fn init_has_empty_environment(who) {
        let mut run = Sandbox::run(who)
            .env("SECRET_E2E", "should-not-reach-init")
            .sh("echo READY; read x; exit 0")
            .stdin_pipe()
            .spawn();
        run.wait_for_line("READY", Duration::from_secs(30));
        let inits: Vec<i32> = children_of(run.pid())
            .into_iter()
            .filter(|(_, _, comm)| comm == "sandbox-init")
            .map(|(pid, _, _)| pid)
            .collect();
        assert_eq!(inits.len(), 1, "expected one sandbox-init child of the launcher");
        let environ = std::fs::read(format!("/proc/{}/environ", inits[0])).expect("read environ");
        assert!(environ.is_empty(), "init has an environment: {:?}", String::from_utf8_lossy(&environ));
        let init_fds = || {
            let mut targets = Vec::new();
            if let Ok(rd) = std::fs::read_dir(format!("/proc/{}/fd", inits[0])) {
                for e in rd.flatten() {
                    let t = std::fs::read_link(e.path())
                        .map(|p| p.display().to_string())
                        .unwrap_or_default();
                    targets.push((e.file_name().to_string_lossy().into_owned(), t));
                }
            }
            targets
        };
        // The command may print READY before init has finished starting it;
        // once running, init points its own stdio at /dev/null.
        let settled = wait_until(Duration::from_secs(5), || {
            let t = init_fds();
            ["0", "1", "2"]
                .iter()
                .all(|fd| t.iter().any(|(f, p)| f == fd && p == "/dev/null"))
        });
        let targets = init_fds();
        assert!(settled, "init still holds the caller's stdio: {targets:?}");
        for (fd, t) in &targets {
            let ok = t == "/dev/null"
                || t.starts_with("socket:")
                || t.starts_with("anon_inode:[signalfd]")
                || t.starts_with("anon_inode:[pidfd]")
                // The command's user namespace, kept for `sandbox exec`.
                || t.starts_with("user:[");
            assert!(ok, "init holds an unexpected fd {fd} -> {t}: {targets:?}");
        }
        assert!(targets.len() <= 6, "init holds many fds: {targets:?}");
        run.close_stdin();
        run.wait().assert_ok();
    }
}

/// Open the leak candidates: a file, a directory fd on `/`, a socket and an
/// eventfd, to be inherited (non-close-on-exec) by the launcher.
fn leak_candidates(fx: &Fixture, who: Who) -> Vec<(OwnedFd, i32, String)> {
    let file = fx.file("leaked-file", b"secret", who);
    let f = std::fs::File::open(&file).expect("open the leak file");
    let d = std::fs::File::open("/").expect("open /");
    let (a, _b) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    let sock = std::fs::read_link(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&a)
    ))
    .expect("readlink the socket")
    .display()
    .to_string();
    // SAFETY: eventfd returns a new fd or -1.
    let ev = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    assert!(ev >= 0, "eventfd");
    // SAFETY: `ev` is a fresh fd we own.
    let ev = unsafe { OwnedFd::from_raw_fd(ev) };
    vec![
        (f.into(), 7, file.display().to_string()),
        (d.into(), 9, "/".to_string()),
        (OwnedFd::from(a), 42, sock),
        (ev, 63, "anon_inode:[eventfd]".to_string()),
    ]
}

both! {
    /// Extra fds inherited by the launcher (a file, a dir fd on /, a
    /// socket, an eventfd) never reach the command (runc CVE-2024-21626).
    fn no_fd_leaks_into_the_sandbox(who) {
        let fx = Fixture::new(who);
        let script = r#"
import os
fds = {}
for f in os.listdir('/proc/self/fd'):
    try:
        fds[int(f)] = os.readlink('/proc/self/fd/' + f)
    except OSError:
        pass  # the directory fd listdir used, closed by now
for k in sorted(fds):
    print("%d: %s" % (k, fds[k]))
"#;
        let mut sb = Sandbox::run(who);
        for (fd, target, _) in leak_candidates(&fx, who) {
            sb = sb.inherit_fd(fd, target);
        }
        let out = sb.cmd([PY, "-c", script]).output();
        out.assert_ok();
        let fds: BTreeSet<i32> = out.kv().keys().filter_map(|k| k.parse().ok()).collect();
        assert_eq!(fds, BTreeSet::from([0, 1, 2]), "fds other than stdio inside:{out:?}");
        assert!(!out.stdout_str().contains("leaked-file"), "{out:?}");
    }
}

both! {
    /// The same from the host side: while the sandbox runs, neither init
    /// nor the command holds any of the launcher's extra fds.
    fn no_fd_leaks_into_init(who) {
        let fx = Fixture::new(who);
        let cands = leak_candidates(&fx, who);
        let leaked_file = cands[0].2.clone();
        let leaked: Vec<String> = cands.iter().map(|c| c.2.clone()).collect();
        let mut sb = Sandbox::run(who).sh("echo READY; read x; exit 0").stdin_pipe();
        for (fd, target, _) in cands {
            sb = sb.inherit_fd(fd, target);
        }
        let mut run = sb.spawn();
        run.wait_for_line("READY", Duration::from_secs(30));
        // The launcher itself still has them (sanity: the test set them up).
        let l7 = std::fs::read_link(format!("/proc/{}/fd/7", run.pid()));
        assert_eq!(l7.map(|p| p.display().to_string()).ok(), Some(leaked_file.clone()));
        let fds_of = |pid: i32| -> Vec<(String, String)> {
            std::fs::read_dir(format!("/proc/{pid}/fd"))
                .map(|rd| {
                    rd.flatten()
                        .map(|e| {
                            let t = std::fs::read_link(e.path())
                                .map(|p| p.display().to_string())
                                .unwrap_or_default();
                            (e.file_name().to_string_lossy().into_owned(), t)
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        // Let init finish starting the command (it then points its own
        // stdio at /dev/null); during setup it briefly holds other fds.
        let init = children_of(run.pid())
            .into_iter()
            .find(|(_, _, comm)| comm == "sandbox-init")
            .map(|(pid, _, _)| pid)
            .expect("sandbox-init is a child of the launcher");
        wait_until(Duration::from_secs(5), || {
            fds_of(init).iter().filter(|(_, t)| t == "/dev/null").count() >= 3
        });
        let mut sandbox_pids = Vec::new();
        let mut frontier = vec![run.pid()];
        while let Some(p) = frontier.pop() {
            for (c, _, _) in children_of(p) {
                sandbox_pids.push(c);
                frontier.push(c);
            }
        }
        assert!(sandbox_pids.len() >= 2, "expected init and the command: {sandbox_pids:?}");
        for pid in &sandbox_pids {
            for (fd, t) in fds_of(*pid) {
                assert!(!leaked.contains(&t), "pid {pid} holds fd {fd} -> {t} (leaked from the launcher)");
            }
        }
        run.close_stdin();
        run.wait().assert_ok();
    }
}

/// Kill what a failed crash test left behind, so one product bug does not
/// leave processes (and held sandbox names) on the test machine.
fn kill_leftovers(orphans: &[(i32, char, String)], marked: &[i32]) -> String {
    let pids: BTreeSet<i32> = orphans
        .iter()
        .map(|o| o.0)
        .chain(marked.iter().copied())
        .collect();
    let mut desc = Vec::new();
    for &pid in &pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().replace('\t', " "))
                .unwrap_or_default()
        };
        let wchan = std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
        desc.push(format!(
            "pid {pid} ({}, state {}, NSpid {}, blocked in {wchan})",
            field("Name:"),
            field("State:"),
            field("NSpid:")
        ));
    }
    for &pid in &pids {
        // SAFETY: kill(2) with plain integers; these are our orphans.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    wait_until(Duration::from_secs(5), || orphaned_children().is_empty());
    desc.join("; ")
}

both! {
    /// SIGKILL of the launcher while the command runs: within a few seconds
    /// no sandbox process remains, and the host mount table is unchanged.
    fn launcher_sigkill_leaves_nothing(who) {
        become_subreaper();
        let before = mountinfo();
        let marker = sleep_marker();
        let mut run = Sandbox::run(who)
            .sh(&format!("sleep {marker} & echo READY; wait"))
            .spawn();
        run.wait_for_line("READY", Duration::from_secs(30));
        let launcher = run.pid();
        assert!(
            wait_until(Duration::from_secs(10), || pids_with_marker(&marker)
                .iter()
                .any(|p| *p != launcher)),
            "the marker process never appeared on the host"
        );
        let st = run.kill_and_reap();
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&st), Some(libc::SIGKILL));
        let gone = wait_until(Duration::from_secs(5), || {
            pids_with_marker(&marker).is_empty() && orphaned_children().is_empty()
        });
        if !gone {
            let orphans = orphaned_children();
            let marked = pids_with_marker(&marker);
            let what = kill_leftovers(&orphans, &marked);
            panic!(
                "after SIGKILL of the launcher, still alive after 5 s (now killed by the \
                 test): {what}"
            );
        }
        assert_eq!(before, mountinfo(), "the host mount table changed");
    }
}

both! {
    /// SIGKILL of the launcher at many points of the setup: nothing is left
    /// (no orphaned init, no command), the name is free again right away.
    fn launcher_sigkill_during_setup(who) {
        become_subreaper();
        let before = mountinfo();
        let name = unique("e2e-kill-");
        // A spread of kill times over the launcher's start-up (a few ms), many
        // times: the windows between setup steps are short.
        let delays = (0..60u64).map(|i| (i * 7919) % 9000).chain([12000, 20000, 40000]);
        for delay_us in delays {
            let marker = sleep_marker();
            let mut run = Sandbox::run(who)
                .args(["--name", &name])
                .cmd(["sleep", &marker])
                .spawn();
            std::thread::sleep(Duration::from_micros(delay_us));
            run.kill_and_reap();
            let clean = wait_until(Duration::from_secs(5), || {
                orphaned_children().is_empty() && pids_with_marker(&marker).is_empty()
            });
            if !clean {
                let orphans = orphaned_children();
                let marked = pids_with_marker(&marker);
                let what = kill_leftovers(&orphans, &marked);
                panic!(
                    "killed after {delay_us} us: still alive after 5 s (now killed by the \
                     test): {what}"
                );
            }
        }
        // The name lock died with the launcher.
        Sandbox::run(who).args(["--name", &name]).cmd(["true"]).output().assert_ok();
        assert_eq!(before, mountinfo(), "the host mount table changed");
    }
}

both! {
    /// 50 sandboxes at once: all succeed, all names/hostnames differ.
    fn fifty_concurrent_runs(who) {
        let runs: Vec<_> = (0..50)
            .map(|_| {
                Sandbox::run(who)
                    .guard(Duration::from_secs(120))
                    .sh("hostname; echo ok")
                    .spawn()
            })
            .collect();
        let mut names = BTreeSet::new();
        for run in runs {
            let out = run.wait();
            out.assert_ok();
            let lines: Vec<String> = out.stdout_str().lines().map(String::from).collect();
            assert_eq!(lines.len(), 2, "{out:?}");
            assert_eq!(lines[1], "ok", "{out:?}");
            let h = lines[0].clone();
            assert!(
                h.starts_with("sb-") && h.len() == 15
                    && h[3..].bytes().all(|b| b.is_ascii_hexdigit()),
                "unexpected generated name {h:?}"
            );
            assert!(names.insert(h.clone()), "duplicate name {h}");
        }
        assert_eq!(names.len(), 50);
    }
}

both! {
    /// Two live sandboxes cannot share a name; the name is free once the
    /// first one ends.
    fn duplicate_name_is_refused(who) {
        let name = unique("e2e-dup-");
        let mut first = Sandbox::run(who)
            .args(["--name", &name])
            .sh("echo READY; read x; exit 0")
            .stdin_pipe()
            .spawn();
        first.wait_for_line("READY", Duration::from_secs(30));
        let second = Sandbox::run(who).args(["--name", &name]).cmd(["true"]).output();
        second
            .assert_code(125)
            .assert_stderr_contains("already in use")
            .assert_stderr_contains(&name)
            .assert_one_line_error();
        first.close_stdin();
        first.wait().assert_ok();
        Sandbox::run(who)
            .args(["--name", &name])
            .sh("hostname")
            .output()
            .assert_ok()
            .assert_stdout_contains(&name);
    }
}

/// Names belong to the user: root and the unprivileged user may both use
/// the same name at the same time.
#[test]
fn names_are_per_user() {
    let (Some(root), Some(user)) = (Who::Root.ready(), Who::Rootless.ready()) else {
        return;
    };
    let name = unique("e2e-peruser-");
    let mut first = Sandbox::run(root)
        .args(["--name", &name])
        .sh("echo READY; read x; exit 0")
        .stdin_pipe()
        .spawn();
    first.wait_for_line("READY", Duration::from_secs(30));
    Sandbox::run(user)
        .args(["--name", &name])
        .cmd(["true"])
        .output()
        .assert_ok();
    first.close_stdin();
    first.wait().assert_ok();
}

both! {
    /// 50 MB through stdout arrive intact.
    fn large_stdout_is_intact(who) {
        let out = Sandbox::run(who).sh("head -c 50000000 /dev/zero").output();
        out.assert_ok();
        assert_eq!(out.stdout.len(), 50_000_000, "byte count differs");
        assert!(out.stdout.iter().all(|b| *b == 0), "corrupted data");
    }
}

both! {
    /// stdin arrives byte-exact (binary data, 8 MB), stdout and stderr stay
    /// separate.
    fn stdin_and_stderr(who) {
        Sandbox::run(who)
            .cmd(["cat"])
            .stdin("hi\n")
            .output()
            .assert_ok();
        let out = Sandbox::run(who).cmd(["cat"]).stdin("hi\n").output();
        assert_eq!(out.stdout, b"hi\n", "{out:?}");

        let mut data = Vec::with_capacity(8 << 20);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        while data.len() < 8 << 20 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            data.extend_from_slice(&x.to_le_bytes());
        }
        let out = Sandbox::run(who).cmd(["cat"]).stdin(data.clone()).output();
        out.assert_ok();
        assert!(out.stdout == data, "stdin data changed on the way ({} bytes back)", out.stdout.len());

        let out = Sandbox::run(who).sh("echo out; echo err >&2; exit 3").output();
        out.assert_code(3);
        assert_eq!(out.stdout, b"out\n", "{out:?}");
        assert_eq!(out.stderr, b"err\n", "{out:?}");
    }
}

both! {
    /// A launcher started with fd 0 closed still works; the command sees
    /// end of file, not some other file the launcher opened.
    fn closed_stdin(who) {
        let out = Sandbox::run(who).cmd(["cat"]).no_stdin().output();
        out.assert_ok();
        assert!(out.stdout.is_empty(), "{out:?}");
    }
}
