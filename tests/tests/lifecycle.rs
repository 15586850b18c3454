//! Long-lived sandboxes: `run -d`, `ps`, `inspect`, `exec`, `stop`, `kill`,
//! `logs`, `gc`, readiness, and the state directory under attack. Each
//! case uses its own state directory (`SANDBOX_STATE_DIR`), so cases run in
//! parallel, and stops what it started.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sandbox_e2e::{both, Output, Pty, Sandbox, Who, PY};
use serde_json::Value;

/// A private state directory and the sandboxes started in it (killed at
/// the end, even when the case fails).
struct Env {
    who: Who,
    dir: PathBuf,
    names: Vec<String>,
}

impl Env {
    fn new(who: Who, tag: &str) -> Self {
        // The parent is world-writable and sticky: the rootless launcher
        // creates the state root itself, 0700.
        let dir = PathBuf::from(format!(
            "/tmp/sbx-e2e-life-{tag}-{who:?}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_file(&dir);
        Env {
            who,
            dir,
            names: Vec::new(),
        }
    }

    /// `sandbox ARGS` with this state directory.
    fn cli(&self) -> Sandbox {
        Sandbox::cli(self.who)
            .env("SANDBOX_STATE_DIR", &self.dir)
            .env("SANDBOX_LOG_FILE", "1")
    }

    /// `sandbox run -d --name NAME ARGS -- sh -c SCRIPT`, which must start.
    fn detach(&mut self, name: &str, args: &[&str], script: &str) -> Output {
        self.names.push(name.into());
        let out = self
            .cli()
            .args(["run", "-d", "--name", name])
            .args(args)
            .sh(script)
            .output();
        out.assert_ok();
        assert_eq!(out.line(), name, "run -d prints the name:{out:?}");
        out
    }

    fn ps(&self) -> Vec<Value> {
        let out = self.cli().args(["ps", "--json"]).output();
        out.assert_ok();
        serde_json::from_slice::<Value>(&out.stdout)
            .unwrap_or_else(|e| panic!("ps --json: {e}{out:?}"))
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn entry(&self, name: &str) -> Option<Value> {
        self.ps().into_iter().find(|v| v["name"] == name)
    }

    fn state(&self, name: &str) -> String {
        self.entry(name)
            .map(|v| v["state"].as_str().unwrap_or("").to_string())
            .unwrap_or_else(|| "missing".into())
    }

    /// Wait until `name` is in `state` (or fail after 10 s).
    fn wait_state(&self, name: &str, state: &str) {
        let t0 = Instant::now();
        while self.state(name) != state {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{name} never became {state}: {:?}",
                self.ps()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn exec(&self, name: &str, argv: &[&str]) -> Output {
        self.cli().args(["exec", name, "--"]).args(argv).output()
    }

    fn logs(&self, name: &str) -> String {
        self.cli().args(["logs", name]).output().stdout_str()
    }

    fn entries(&self) -> Vec<String> {
        std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = self.cli().args(["kill", n]).output();
        }
        let _ = self.cli().arg("gc").output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

both! {
    /// run -d returns the name at once; ps, inspect and logs show the live
    /// sandbox; stop ends it (SIGTERM) and the exited record stays until gc.
    fn detach_ps_inspect_logs_stop(who) {
        let mut env = Env::new(who, "detach");
        // Rootless limits need a delegated cgroup v2 subtree (not here).
        let limits: &[&str] = if who == Who::Root { &["--pids", "64"] } else { &[] };
        let out = env.detach("web", limits, "echo hello-from-web; echo to-stderr >&2; exec sleep 1000");
        assert!(out.elapsed < Duration::from_secs(5), "{out:?}");
        let e = env.entry("web").expect("ps lists web");
        assert_eq!(e["state"], "running", "{e}");
        assert_eq!(e["backend"], "namespace");
        assert_eq!(e["detached"], true);
        if who == Who::Root {
            assert_eq!(e["limits"]["pids"], "64", "{e}");
        }
        assert!(e["command"].to_string().contains("hello-from-web"), "{e}");
        // The table has the same row.
        let table = env.cli().arg("ps").output();
        table.assert_ok().assert_stdout_contains("web").assert_stdout_contains("running");

        let inspect = env.cli().args(["inspect", "web"]).output();
        inspect.assert_ok();
        let v: Value = serde_json::from_slice(&inspect.stdout).expect("inspect is JSON");
        assert_eq!(v["id"], "web");
        assert_eq!(v["isolation"]["enforced"]["seccomp"]["level"], "default", "{v}");
        assert!(v["isolation"]["enforced"]["namespaces"].to_string().contains("pid"), "{v}");

        let t0 = Instant::now();
        while !env.logs("web").contains("to-stderr") {
            assert!(t0.elapsed() < Duration::from_secs(5), "no output in logs");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(env.logs("web").contains("hello-from-web"));

        env.cli().args(["stop", "web"]).output().assert_ok();
        let e = env.entry("web").expect("the exited record stays");
        assert_eq!(e["state"], "exited", "{e}");
        // exec sleep: the command itself died of SIGTERM.
        assert_eq!(e["exit_code"], 143, "{e}");
        // Its output is still readable after the end.
        assert!(env.logs("web").contains("hello-from-web"));

        let gc = env.cli().arg("gc").output();
        gc.assert_ok().assert_stdout_contains("exited sandbox 'web'");
        assert!(env.entries().is_empty(), "gc left {:?}", env.entries());
        env.cli().arg("gc").output().assert_ok().assert_stdout_contains("nothing to collect");
    }
}

/// The namespace links of a process (from inside the sandbox).
const NS_SCRIPT: &str = "for n in user mnt pid net ipc uts cgroup; do printf '%s ' $(readlink /proc/$1/ns/$n); done; \
     grep -E '^(Seccomp|NoNewPrivs|CapEff|CapBnd):' /proc/$1/status | tr -s '\\t' ' ' | tr '\\n' ' '";

both! {
    /// An exec'd process has exactly the command's namespaces (the same
    /// user namespace included), seccomp, no_new_privs and capabilities,
    /// and Landlock; status, -e, -w and -i work.
    fn exec_joins_the_confinement(who) {
        let mut env = Env::new(who, "exec");
        env.detach(
            "box",
            &[],
            &format!("sh -c \"{}\" x self > /tmp/cmd-ns; echo ready; exec sleep 1000", NS_SCRIPT.replace('"', "\\\"").replace('$', "\\$")),
        );
        let t0 = Instant::now();
        while !env.logs("box").contains("ready") {
            assert!(t0.elapsed() < Duration::from_secs(5));
            std::thread::sleep(Duration::from_millis(20));
        }
        let cmd = env.exec("box", &["cat", "/tmp/cmd-ns"]);
        cmd.assert_ok();
        let mine = env.exec("box", &["/bin/sh", "-c", NS_SCRIPT, "x", "self"]);
        mine.assert_ok();
        assert_eq!(mine.stdout_str(), cmd.stdout_str(), "exec differs from the command");
        assert!(cmd.stdout_str().contains("NoNewPrivs: 1"), "{cmd:?}");
        assert!(cmd.stdout_str().contains("Seccomp: 2"), "{cmd:?}");
        assert!(cmd.stdout_str().contains("CapEff: 0000000000000000"), "{cmd:?}");
        // The seccomp filter really acts: keyctl is denied (EPERM or ENOSYS).
        let k = env.exec("box", &[PY, "-c", "import ctypes,sys; sys.exit(0 if ctypes.CDLL(None, use_errno=True).syscall(250, 0) == -1 else 9)"]);
        k.assert_ok();
        // Landlock: the host's /etc is read-only, /tmp is the sandbox's own.
        let w = env.exec("box", &["/bin/sh", "-c", "touch /etc/sbx-e2e 2>/dev/null && echo wrote; echo x > /tmp/ok && echo tmp-ok"]);
        w.assert_ok();
        assert_eq!(w.line(), "tmp-ok", "{w:?}");
        assert!(!Path::new("/etc/sbx-e2e").exists());
        // The exec'd process sees the command's PID namespace.
        env.exec("box", &["/bin/sh", "-c", "ps -e -o comm= 2>/dev/null | grep -q sleep || ls /proc | grep -qx 2"]).assert_ok();

        env.exec("box", &["/bin/sh", "-c", "exit 7"]).assert_code(7);
        env.exec("box", &["/bin/sh", "-c", "kill -TERM $$"]).assert_code(143);
        env.exec("box", &["no-such-command-e2e"])
            .assert_code(127)
            .assert_stderr_contains("no-such-command-e2e");
        env.exec("box", &["/etc/passwd"]).assert_code(126);
        let o = env
            .cli()
            .args(["exec", "-e", "FOO=bar", "-w", "/tmp", "box", "--", "/bin/sh", "-c", "echo $FOO $(pwd)"])
            .output();
        o.assert_ok();
        assert_eq!(o.line(), "bar /tmp");
        let o = env.cli().args(["exec", "-i", "box", "--", "cat"]).stdin("piped-in\n").output();
        o.assert_ok();
        assert_eq!(o.line(), "piped-in");
        // Without -i, stdin is /dev/null.
        let o = env.cli().args(["exec", "box", "--", "cat"]).stdin("not-read\n").output();
        o.assert_ok();
        assert_eq!(o.line(), "");
        // A workdir that does not exist: a setup error, 125.
        env.cli()
            .args(["exec", "-w", "/no/such/dir", "box", "--", "true"])
            .output()
            .assert_code(125)
            .assert_stderr_contains("/no/such/dir");
    }
}

both! {
    /// exec -it: a pty of the caller's size inside the sandbox, typed input
    /// reaches the command, its status comes back; -u with an id the
    /// sandbox does not map fails with the reason.
    fn exec_with_a_terminal_and_ids(who) {
        let mut env = Env::new(who, "tty");
        env.detach("term", &[], "exec sleep 1000");
        let p = Pty::new(33, 97).expect("pty");
        let mut run = env
            .cli()
            .args(["exec", "-it", "term", "--", "/bin/sh", "-c", "tty; stty size; read x; echo got-$x; exit 5"])
            .spawn_pty(&p);
        run.wait_for("33 97", Duration::from_secs(10));
        run.write(b"typed\n");
        let (st, out) = run.wait();
        assert_eq!(st.code(), Some(5), "{out:?}");
        assert!(out.contains("/dev/pts/"), "{out:?}");
        assert!(out.contains("got-typed"), "{out:?}");
        // The command's own ids by default; another uid where it is mapped.
        let own = env.exec("term", &["id", "-u"]);
        own.assert_ok();
        let other = env.cli().args(["exec", "-u", "4242:4343", "term", "--", "id", "-u"]).output();
        if who == Who::Root {
            // As root every host id is mapped into the sandbox.
            other.assert_ok();
            assert_eq!(other.line(), "4242");
        } else {
            // Rootless, only the caller's own id is.
            other.assert_code(125).assert_stderr_contains("set-ids");
        }
        env.cli()
            .args(["exec", "-u", "nobody", "term", "--", "true"])
            .output()
            .assert_code(125)
            .assert_stderr_contains("'nobody'")
            .assert_one_line_error();
    }
}

both! {
    /// Sixteen execs at once all run and report their own status.
    fn concurrent_execs(who) {
        let mut env = Env::new(who, "conc");
        env.detach("many", &[], "exec sleep 1000");
        let env = std::sync::Arc::new(env);
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let env = env.clone();
                std::thread::spawn(move || {
                    let o = env.exec("many", &["/bin/sh", "-c", &format!("echo out-{i}; exit {i}")]);
                    (i, o)
                })
            })
            .collect();
        for h in handles {
            let (i, o) = h.join().expect("exec thread");
            o.assert_code(i);
            assert_eq!(o.line(), format!("out-{i}"), "{o:?}");
        }
        assert_eq!(env.state("many"), "running");
    }
}

both! {
    /// stop of a command that ignores SIGTERM: SIGKILL after the grace
    /// period, reported as 137; stop of an exited sandbox succeeds.
    fn stop_of_a_sandbox_that_ignores_sigterm(who) {
        let mut env = Env::new(who, "stop");
        env.detach("stubborn", &[], "trap '' TERM; echo trapped; while :; do sleep 0.1; done");
        let t0 = Instant::now();
        while !env.logs("stubborn").contains("trapped") {
            assert!(t0.elapsed() < Duration::from_secs(5));
            std::thread::sleep(Duration::from_millis(20));
        }
        let o = env.cli().args(["stop", "--time", "700ms", "stubborn"]).output();
        o.assert_ok();
        assert!(o.elapsed >= Duration::from_millis(700), "stopped before the grace period: {o:?}");
        assert!(o.elapsed < Duration::from_secs(5), "{o:?}");
        let e = env.entry("stubborn").expect("record");
        assert_eq!(e["state"], "exited");
        assert_eq!(e["exit_code"], 137, "{e}");
        env.cli().args(["stop", "stubborn"]).output().assert_ok().assert_stderr_contains("already exited");
        env.cli()
            .args(["stop", "--time", "soon", "stubborn"])
            .output()
            .assert_code(125)
            .assert_stderr_contains("'soon'");
    }
}

both! {
    /// kill delivers a signal (TERM ends the command, 143); KILL is the
    /// default; a bad signal is refused.
    fn kill_delivers_signals(who) {
        let mut env = Env::new(who, "kill");
        env.detach("k1", &[], "trap 'echo got-usr1' USR1; while :; do sleep 0.1; done");
        std::thread::sleep(Duration::from_millis(300));
        env.cli().args(["kill", "k1", "USR1"]).output().assert_ok();
        let t0 = Instant::now();
        while !env.logs("k1").contains("got-usr1") {
            assert!(t0.elapsed() < Duration::from_secs(5), "USR1 not delivered");
            std::thread::sleep(Duration::from_millis(50));
        }
        env.cli()
            .args(["kill", "k1", "SIGNOPE"])
            .output()
            .assert_code(125)
            .assert_stderr_contains("'SIGNOPE'")
            .assert_one_line_error();
        env.cli().args(["kill", "k1"]).output().assert_ok();
        env.wait_state("k1", "exited");
        assert_eq!(env.entry("k1").expect("record")["exit_code"], 137);

        env.detach("k2", &[], "exec sleep 1000");
        env.cli().args(["kill", "k2", "TERM"]).output().assert_ok();
        env.wait_state("k2", "exited");
        assert_eq!(env.entry("k2").expect("record")["exit_code"], 143);
    }
}

both! {
    /// Bad names, unknown names and names of exited sandboxes: one line,
    /// status 125, for every command that takes a name.
    fn bad_unknown_and_exited_names(who) {
        let mut env = Env::new(who, "names");
        let cmds: [&[&str]; 5] = [
            &["exec", "NAME", "--", "true"],
            &["kill", "NAME"],
            &["inspect", "NAME"],
            &["logs", "NAME"],
            &["stop", "NAME"],
        ];
        for name in ["bad/name", "-x", "", "a".repeat(64).as_str()] {
            for c in cmds {
                let argv: Vec<&str> = c.iter().map(|a| if *a == "NAME" { name } else { a }).collect();
                let mut s = env.cli();
                // A name that looks like an option is passed after `--`
                // where the command allows it; clap's error is 125 too.
                s = s.args(&argv);
                let o = s.output();
                o.assert_code(125);
            }
        }
        for c in cmds {
            let argv: Vec<&str> = c.iter().map(|a| if *a == "NAME" { "nosuch" } else { a }).collect();
            env.cli()
                .args(&argv)
                .output()
                .assert_code(125)
                .assert_stderr_contains("no sandbox named 'nosuch'")
                .assert_one_line_error();
        }
        env.detach("gone", &[], "exit 3");
        env.wait_state("gone", "exited");
        assert_eq!(env.entry("gone").expect("record")["exit_code"], 3);
        for c in [&["exec", "gone", "--", "true"][..], &["kill", "gone"]] {
            env.cli()
                .args(c)
                .output()
                .assert_code(125)
                .assert_stderr_contains("'gone' is not running: it exited with status 3")
                .assert_one_line_error();
        }
        // The exited record can be inspected; a new run may take the name.
        env.cli().args(["inspect", "gone"]).output().assert_ok().assert_stdout_contains("\"exit_code\": 3");
        env.detach("gone", &[], "exec sleep 1000");
        assert_eq!(env.state("gone"), "running");
        // A live name cannot be taken twice.
        env.cli()
            .args(["run", "-d", "--name", "gone", "--", "true"])
            .output()
            .assert_code(125)
            .assert_stderr_contains("already in use");
    }
}

both! {
    /// A failed start reaches the caller of run -d with its status and
    /// message, and leaves no live record.
    fn detached_start_failure_reaches_the_caller(who) {
        let env = Env::new(who, "fail");
        let o = env.cli().args(["run", "-d", "--name", "nf", "--", "no-such-command-e2e"]).output();
        o.assert_code(127).assert_stderr_contains("no-such-command-e2e");
        assert_ne!(env.state("nf"), "running");
        let o = env.cli().args(["run", "-d", "--ready", "tcp:0", "--", "true"]).output();
        o.assert_code(125).assert_stderr_contains("'tcp:0'").assert_one_line_error();
        let o = env.cli().args(["run", "-d", "-t", "--", "true"]).output();
        o.assert_code(125);
        // A command that ends before it is ready.
        let o = env
            .cli()
            .args(["run", "-d", "--name", "early", "--ready", "tcp:9", "--", "/bin/sh", "-c", "exit 4"])
            .output();
        o.assert_code(4).assert_stderr_contains("ended before it was ready");
    }
}

both! {
    /// A foreground run is visible while it runs (ps, exec) and leaves
    /// nothing in the state directory.
    fn foreground_runs_leave_nothing(who) {
        let env = Env::new(who, "fg");
        let spawned = env.cli().args(["run", "--name", "fg1"]).sh("echo started; sleep 1000").spawn();
        let mut spawned = spawned;
        spawned.wait_for_line("started", Duration::from_secs(10));
        assert_eq!(env.state("fg1"), "running");
        env.exec("fg1", &["/bin/echo", "joined"]).assert_ok().assert_stdout_contains("joined");
        env.cli().args(["logs", "fg1"]).output().assert_code(125).assert_stderr_contains("not detached");
        env.cli().args(["stop", "fg1"]).output().assert_ok();
        let out = spawned.wait();
        out.assert_code(143);
        assert!(env.entries().is_empty(), "left {:?}", env.entries());
        env.cli().args(["run", "--name", "fg2", "--", "true"]).output().assert_ok();
        assert!(env.entries().is_empty(), "left {:?}", env.entries());
    }
}

both! {
    /// A launcher killed with SIGKILL: its sandbox dies with it, ps shows
    /// it dead, gc removes what it left and reports each item.
    fn gc_collects_what_a_crash_left(who) {
        let mut env = Env::new(who, "gc");
        let limits: &[&str] = if who == Who::Root { &["--memory", "64m"] } else { &[] };
        env.detach("crash", limits, "exec sleep 1000");
        let pid = env.entry("crash").expect("record")["pid"].as_i64().expect("pid") as i32;
        // SAFETY: signalling the detached launcher we started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        env.wait_state("crash", "dead");
        env.cli()
            .args(["exec", "crash", "--", "true"])
            .output()
            .assert_code(125)
            .assert_stderr_contains("launcher died");
        let gc = env.cli().arg("gc").output();
        gc.assert_ok().assert_stdout_contains("crashed sandbox 'crash'");
        if who == Who::Root && gc.stdout_str().contains("cgroup") {
            eprintln!("gc removed the cgroup too: {}", gc.stdout_str());
        }
        assert!(env.entries().is_empty(), "left {:?}", env.entries());
        // Nothing of the sandbox survived (its init had PDEATHSIG).
        let ps = std::process::Command::new("pgrep").args(["-f", "exec sleep 1000"]).output().expect("pgrep");
        let _ = ps; // other cases' sandboxes may match; the state check above is the contract
    }
}

both! {
    /// --ready tcp:PORT: run -d returns only once the port accepts inside
    /// the sandbox's own network namespace.
    fn ready_tcp(who) {
        let mut env = Env::new(who, "tcp");
        let server = "import socket,time; time.sleep(0.8); s=socket.socket(); \
                      s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); \
                      s.bind(('127.0.0.1', 8087)); s.listen(); print('listening', flush=True); \
                      [c.close() for c in iter(lambda: s.accept()[0], None)]";
        let t0 = Instant::now();
        env.detach("srv", &["--ready", "tcp:8087"], &format!("exec {PY} -c \"{server}\""));
        assert!(t0.elapsed() >= Duration::from_millis(800), "returned before the port was open");
        // The port accepts right now, inside.
        env.exec("srv", &[PY, "-c", "import socket; socket.create_connection(('127.0.0.1', 8087), 1)"])
            .assert_ok();
    }
}

both! {
    /// --ready notify: the command gets $NOTIFY_SOCKET, and run -d returns
    /// when it says READY=1.
    fn ready_notify(who) {
        let mut env = Env::new(who, "notify");
        let prog = "import os,socket,time; time.sleep(0.6); open('/tmp/before-ready','w').close(); \
                    s=socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); \
                    s.sendto(b'STATUS=warming\\nREADY=1', os.environ['NOTIFY_SOCKET']); time.sleep(1000)";
        let t0 = Instant::now();
        env.detach("n1", &["--ready", "notify"], &format!("exec {PY} -c \"{prog}\""));
        assert!(t0.elapsed() >= Duration::from_millis(600), "returned before READY=1");
        env.exec("n1", &["test", "-e", "/tmp/before-ready"]).assert_ok();
        env.exec("n1", &["/bin/sh", "-c", "test \"$NOTIFY_SOCKET\" = /run/sandbox-notify"]).assert_ok();
    }
}

both! {
    /// Hostile state directories: a planted symlink, a directory open to
    /// others, one owned by someone else, and a symlink in place of a
    /// sandbox's directory. Detached runs refuse (125, one line) without
    /// touching the target; foreground runs warn and still run.
    fn hostile_state_dirs(who) {
        let base = PathBuf::from(format!("/tmp/sbx-e2e-life-hostile-{who:?}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).expect("base");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
        let victim = base.join("victim");
        std::fs::create_dir(&victim).expect("victim");
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let run = |dir: &Path| {
            Sandbox::cli(who)
                .env("SANDBOX_STATE_DIR", dir)
                .env("SANDBOX_LOG_FILE", "1")
                .args(["run", "-d", "--name", "h", "--", "sleep", "1000"])
                .output()
        };
        // 1. The state root is a symlink to a directory the attacker reads.
        let link = base.join("link");
        std::os::unix::fs::symlink(&victim, &link).expect("symlink");
        run(&link).assert_code(125).assert_stderr_contains("symbolic link").assert_one_line_error();
        assert_eq!(std::fs::read_dir(&victim).expect("victim").count(), 0, "wrote through the link");
        // 2. A state root others can write to.
        let open = base.join("open");
        std::fs::create_dir(&open).expect("open");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        if who == Who::Rootless {
            // Owned by root here: refused for its owner first.
            run(&open).assert_code(125).assert_stderr_contains("owned by uid 0");
        } else {
            run(&open).assert_code(125).assert_stderr_contains("mode is 0777");
        }
        // 3. Owned by someone else (0700 to them).
        let theirs = base.join("theirs");
        std::fs::create_dir(&theirs).expect("theirs");
        std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        if who == Who::Root {
            let other = sandbox_e2e::unprivileged().map(|a| a.uid).unwrap_or(65534);
            std::os::unix::fs::chown(&theirs, Some(other), None).expect("chown");
        }
        run(&theirs).assert_code(125).assert_stderr_contains("owned by uid");
        // A foreground run with an unusable state directory still runs.
        let fg = Sandbox::cli(who)
            .env("SANDBOX_STATE_DIR", &link)
            .args(["run", "--", "echo", "ran"])
            .output();
        fg.assert_ok().assert_stdout_contains("ran").assert_stderr_contains("warning");
        // 4. A good root where a symlink was planted in place of the
        //    sandbox's directory: it is replaced, never followed.
        let good = base.join("good");
        let mut env = Env::new(who, "hostile-good");
        env.dir = good.clone();
        env.cli().arg("ps").output().assert_ok();
        // (the root is created by the first run; make it now as that user)
        env.detach("first", &[], "exit 0");
        env.wait_state("first", "exited");
        if who == Who::Root {
            std::os::unix::fs::symlink(&victim, good.join("h")).expect("plant");
            env.detach("h", &[], "exec sleep 1000");
            assert_eq!(std::fs::read_dir(&victim).expect("victim").count(), 0, "followed the planted link");
            assert!(good.join("h").is_dir() && !good.join("h").is_symlink());
        }
        // A state file replaced by a symlink is not read through.
        if who == Who::Root {
            let st = good.join("first/state.json");
            std::fs::remove_file(&st).expect("rm");
            std::os::unix::fs::symlink("/etc/passwd", &st).expect("plant");
            let o = env.cli().args(["inspect", "first"]).output();
            o.assert_code(125);
            assert!(!o.stdout_str().contains("root:"), "{o:?}");
        }
        drop(env);
        let _ = std::fs::remove_dir_all(&base);
    }
}

#[test]
fn vm_records_are_handled_like_any_other() {
    // A live micro-VM sandbox as ps sees one: its record, and its name held
    // (here by this test, as the VM launcher would hold it), but no control
    // socket. The VM lifecycle itself is driven for real in lab_vm.rs.
    let env = Env::new(Who::Root, "vm");
    let name = format!("vmbox-{}", std::process::id());
    std::fs::create_dir_all(env.dir.join(&name)).expect("dir");
    use std::os::unix::fs::PermissionsExt;
    for d in [env.dir.clone(), env.dir.join(&name)] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    }
    let rec = serde_json::json!({
        "name": name, "backend": "vm", "state": "running", "pid": std::process::id(),
        "init_pid": null, "started_at": 0.0, "command": ["true"], "limits": null,
        "detached": false, "log": "inherited", "isolation": null,
        "exit_code": null, "exited_at": null,
    });
    std::fs::write(env.dir.join(&name).join("state.json"), rec.to_string()).expect("record");
    // SAFETY: a plain socket; closed when `lock` drops.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0) };
    assert!(fd >= 0);
    // SAFETY: fresh fd.
    let _lock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: zeroed sockaddr_un is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let key = format!("sandbox/0/name/{name}");
    for (i, b) in key.bytes().enumerate() {
        addr.sun_path[i + 1] = b as libc::c_char;
    }
    let len = (std::mem::size_of::<libc::sa_family_t>() + 1 + key.len()) as libc::socklen_t;
    // SAFETY: valid address of `len` bytes.
    let bound = unsafe { libc::bind(fd, (&addr as *const libc::sockaddr_un).cast(), len) };
    assert_eq!(bound, 0);
    assert_eq!(env.state(&name), "running");
    for cmd in [
        vec!["exec", &name, "--", "true"],
        vec!["stop", &name],
        vec!["kill", &name],
    ] {
        env.cli()
            .args(&cmd)
            .output()
            .assert_code(125)
            .assert_stderr_contains(&format!("cannot reach sandbox '{name}'"))
            .assert_one_line_error();
    }
    env.cli()
        .args(["inspect", &name])
        .output()
        .assert_ok()
        .assert_stdout_contains("\"vm\"");
    // The one readiness a guest cannot give: refused before anything is
    // started, whatever the host's KVM, and nothing is left behind.
    Sandbox::cli(Who::Root)
        .args([
            "run",
            "--vm",
            "--name",
            "vm-notify",
            "--ready",
            "notify",
            "--",
            "true",
        ])
        .output()
        .assert_code(125)
        .assert_stderr_contains("--ready notify is not supported with --vm")
        .assert_one_line_error();
    assert!(!std::path::Path::new("/run/sandbox/vm-notify").exists());
}

both! {
    /// service install validates everything before it writes a unit, and
    /// writes one whose ExecStart is the run it was given (quoted for
    /// systemd); the unit itself is driven for real in lab_systemd.rs.
    fn service_install_validates_and_writes(who) {
        let env = Env::new(who, "svc");
        let dir = env.dir.with_extension("units");
        let _ = std::fs::remove_dir_all(&dir);
        let bad: [(&[&str], &str); 6] = [
            (&["bad/name", "--", "true"], "invalid service name 'bad/name'"),
            (&["web", "--", "-d", "--", "true"], "--detach cannot be used"),
            (&["web", "--", "--memory", "lots", "--", "true"], "lots"),
            (&["web", "--", "--ready", "udp:1", "--", "true"], "'udp:1'"),
            (&["web", "--", "--name", "x", "--", "true"], "--name cannot be used"),
            (&["web", "--restart", "sometimes", "--", "true"], "'sometimes'"),
        ];
        for (args, msg) in bad {
            let argv: Vec<&str> = match args.iter().position(|a| *a == "--") {
                Some(i) => args[..i].iter().chain(&args[i + 1..]).copied().collect(),
                None => args.to_vec(),
            };
            let o = Sandbox::cli(who)
                .args(["service", "install", "--unit-dir"])
                .arg(&dir)
                .args(&argv)
                .output();
            o.assert_code(125).assert_stderr_contains(msg);
            assert!(
                std::fs::read_dir(&dir).map_or(true, |d| d.count() == 0),
                "a refused install wrote a unit"
            );
        }
        let o = Sandbox::cli(who)
            .args(["service", "install", "--unit-dir"])
            .arg(&dir)
            .args(["web", "--ready", "tcp:8080", "--", "/bin/echo", "100% $HOME \"q\""])
            .output();
        o.assert_ok();
        let unit = std::fs::read_to_string(dir.join("sandbox-web.service")).expect("unit written");
        for line in ["Type=notify", "Delegate=yes", "KillMode=mixed", "Restart=on-failure"] {
            assert!(unit.lines().any(|l| l == line), "{line} missing:\n{unit}");
        }
        let exec = unit.lines().find(|l| l.starts_with("ExecStart=")).expect("ExecStart");
        assert!(
            exec.ends_with(r#""run" "--name" "web" "--ready" "tcp:8080" "--" "/bin/echo" "100%% $$HOME \"q\"""#),
            "{exec}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// The control socket answers only its owner's uid (or root): even with the
/// directory and socket opened up to everyone by mistake, another user's
/// exec, stop and kill get nothing (SO_PEERCRED), and the sandbox runs on.
#[test]
fn control_socket_refuses_other_users() {
    let Some(_) = Who::Root.ready() else { return };
    let Some(_) = Who::Rootless.ready() else {
        return;
    };
    let mut env = Env::new(Who::Root, "peer");
    env.detach("guarded", &[], "exec sleep 1000");
    use std::os::unix::fs::PermissionsExt;
    let paths = [
        env.dir.clone(),
        env.dir.join("guarded"),
        env.dir.join("guarded/control"),
    ];
    let chmod = |mode| {
        for p in &paths {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        }
    };
    chmod(0o777);
    let other = Sandbox::cli(Who::Rootless).env("SANDBOX_STATE_DIR", &env.dir);
    // The open state root itself is refused first, by the client.
    let o = other.args(["exec", "guarded", "--", "true"]).output();
    o.assert_code(125);
    // A client that skips that check: connect straight to the socket.
    let sock = env.dir.join("guarded/control");
    let acct = sandbox_e2e::unprivileged().expect("account");
    let script = format!(
        "import socket,struct,sys\ns=socket.socket(socket.AF_UNIX); s.connect('{}')\n\
         m=b'{{\"Kill\":{{\"signal\":9}}}}'\n\
         try:\n s.sendall(struct.pack('<I',len(m))+m); r=s.recv(100)\n\
         except (BrokenPipeError, ConnectionResetError): r=b''\nsys.exit(0 if r==b'' else 3)",
        sock.display()
    );
    let st = std::process::Command::new("setpriv")
        .args([
            format!("--reuid={}", acct.uid),
            format!("--regid={}", acct.gid),
            "--clear-groups".into(),
            "--".into(),
            PY.into(),
            "-c".into(),
            script,
        ])
        .output()
        .expect("setpriv");
    // Private again, so that the cleanup's own client accepts the root.
    chmod(0o700);
    assert_eq!(
        st.status.code(),
        Some(0),
        "another user's request was answered: {st:?}"
    );
    std::thread::sleep(Duration::from_millis(200));
    let e = env.entry("guarded").expect("record");
    assert_eq!(e["state"], "running", "another user's kill acted: {e}");
}

both! {
    /// Without SANDBOX_STATE_DIR: /run/sandbox as root; rootless
    /// $XDG_RUNTIME_DIR/sandbox, and without it /run/user/UID/sandbox or
    /// /tmp/sandbox-UID. ps and exec find the sandbox there.
    fn default_state_dir(who) {
        let name = format!("dflt-{}", std::process::id());
        let cli = || Sandbox::cli(who).env("SANDBOX_LOG_FILE", "1");
        let o = cli().args(["run", "-d", "--name", &name, "--", "sleep", "1000"]).output();
        o.assert_ok();
        let dir = if who == Who::Root {
            PathBuf::from("/run/sandbox")
        } else {
            let uid = sandbox_e2e::unprivileged().expect("account").uid;
            let run_user = PathBuf::from(format!("/run/user/{uid}"));
            if run_user.is_dir() {
                run_user.join("sandbox")
            } else {
                PathBuf::from(format!("/tmp/sandbox-{uid}"))
            }
        };
        let found = dir.join(&name).join("state.json").exists();
        cli().args(["exec", &name, "--", "true"]).output().assert_ok();
        cli().args(["ps"]).output().assert_ok().assert_stdout_contains(&name);
        cli().args(["kill", &name]).output().assert_ok();
        let t0 = Instant::now();
        while !cli().args(["inspect", &name]).output().stdout_str().contains("\"exited\"") {
            assert!(t0.elapsed() < Duration::from_secs(5));
            std::thread::sleep(Duration::from_millis(20));
        }
        let gc = cli().arg("gc").output();
        gc.assert_ok();
        assert!(found, "no state under {}", dir.display());
        assert!(!dir.join(&name).exists(), "gc left {}", dir.display());
    }
}
