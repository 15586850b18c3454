//! Exit statuses (the command's own, 128+N for signals, 124-127) and
//! signal forwarding from the launcher to the command.

use std::time::Duration;

use sandbox_e2e::{both, Sandbox, Who, PY};

both! {
    /// `exit N` passes through unchanged.
    fn exit_status_passes_through(who) {
        for n in [0, 1, 7, 42, 255] {
            Sandbox::run(who).sh(&format!("exit {n}")).output().assert_code(n);
        }
    }
}

both! {
    /// Death by signal N is reported as 128+N (like a shell).
    fn death_by_signal_is_128_plus_n(who) {
        for (sig, code) in [("KILL", 137), ("TERM", 143), ("SEGV", 139), ("ABRT", 134)] {
            let out = Sandbox::run(who).sh(&format!("kill -{sig} $$")).output();
            out.assert_code(code);
        }
        // A real fault, not only a sent signal.
        let out = Sandbox::run(who)
            .py("import ctypes; ctypes.string_at(0)", [] as [&str; 0])
            .output();
        out.assert_code(139);
    }
}

both! {
    /// A missing command: 127 and the name on stderr.
    fn command_not_found_is_127(who) {
        let out = Sandbox::run(who).cmd(["no-such-command-e2e"]).output();
        out.assert_code(127)
            .assert_stderr_contains("no-such-command-e2e")
            .assert_one_line_error();
        let out = Sandbox::run(who).cmd(["/usr/bin/no-such-command-e2e", "arg"]).output();
        out.assert_code(127).assert_stderr_contains("/usr/bin/no-such-command-e2e");
        // A missing directory component is "not found" too.
        let out = Sandbox::run(who).cmd(["/etc/passwd/x"]).output();
        out.assert_code(127);
        // Nothing was written on stdout.
        assert!(out.stdout.is_empty(), "{out:?}");
    }
}

both! {
    /// A file that exists but cannot be executed: 126.
    fn not_executable_is_126(who) {
        for path in ["/etc/passwd", "/etc", "/dev/null"] {
            let out = Sandbox::run(who).cmd([path]).output();
            out.assert_code(126)
                .assert_stderr_contains(path)
                .assert_one_line_error();
        }
    }
}

both! {
    /// A command that exits 126/127 itself is not confused with exec errors
    /// (no launcher message on stderr).
    fn own_126_127_are_not_launcher_errors(who) {
        for n in [124, 125, 126, 127] {
            let out = Sandbox::run(who).sh(&format!("exit {n}")).output();
            out.assert_code(n);
            assert!(out.stderr.is_empty(), "the launcher added a message:{out:?}");
        }
    }
}

both! {
    /// `--timeout 1s -- sleep 30`: 124, long before 30 s.
    fn timeout_gives_124(who) {
        let out = Sandbox::run(who)
            .args(["--timeout", "1s", "--", "sleep", "30"])
            .output();
        out.assert_code(124).assert_stderr_contains("timed out");
        assert!(out.elapsed < Duration::from_secs(20), "did not stop early:{out:?}");
    }
}

both! {
    /// A command that ignores SIGTERM is killed after --kill-after.
    fn timeout_kill_after_for_term_ignoring_command(who) {
        let out = Sandbox::run(who)
            .args(["--timeout", "1s", "--kill-after", "1s"])
            .sh("trap '' TERM; sleep 30; echo survived")
            .output();
        out.assert_code(124);
        assert!(!out.stdout_str().contains("survived"), "{out:?}");
        assert!(out.elapsed < Duration::from_secs(20), "did not stop early:{out:?}");
    }
}

both! {
    /// On timeout the command gets SIGTERM first and may clean up; the
    /// status is still 124.
    fn timeout_sends_term_first(who) {
        let out = Sandbox::run(who)
            .args(["--timeout", "1s", "--kill-after", "30s"])
            .sh("trap 'echo cleanup; exit 3' TERM; echo READY; while :; do sleep 0.1; done")
            .output();
        out.assert_code(124).assert_stdout_contains("cleanup");
        assert!(out.elapsed < Duration::from_secs(20), "{out:?}");
    }
}

both! {
    /// A command that finishes before the timeout keeps its own status.
    fn timeout_not_reached_keeps_status(who) {
        Sandbox::run(who)
            .args(["--timeout", "1h"])
            .sh("exit 5")
            .output()
            .assert_code(5);
    }
}

/// Start a trap script, wait for READY, send `sig` to the launcher, and
/// check that the trap ran and its exit code came back.
fn forward_case(who: Who, sig: i32, name: &str, code: i32) {
    let script = format!(
        "trap 'echo got-{name}; exit {code}' {name}; echo READY; \
         while :; do sleep 0.05; done"
    );
    let mut run = Sandbox::run(who).sh(&script).spawn();
    run.wait_for_line("READY", Duration::from_secs(30));
    run.signal(sig);
    let out = run.wait();
    out.assert_code(code)
        .assert_stdout_contains(&format!("got-{name}"));
}

both! {
    /// SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 sent to the
    /// launcher reach the command.
    fn signals_are_forwarded(who) {
        forward_case(who, libc::SIGTERM, "TERM", 41);
        forward_case(who, libc::SIGINT, "INT", 42);
        forward_case(who, libc::SIGHUP, "HUP", 43);
        forward_case(who, libc::SIGQUIT, "QUIT", 44);
        forward_case(who, libc::SIGUSR1, "USR1", 45);
        forward_case(who, libc::SIGUSR2, "USR2", 46);
    }
}

both! {
    /// A forwarded signal the command does not handle kills it: 128+N.
    fn forwarded_signal_without_handler_is_128_plus_n(who) {
        for (sig, code) in [(libc::SIGTERM, 143), (libc::SIGINT, 130), (libc::SIGHUP, 129)] {
            let mut run = Sandbox::run(who).sh("echo READY; exec sleep 1000").spawn();
            run.wait_for_line("READY", Duration::from_secs(30));
            run.signal(sig);
            run.wait().assert_code(code);
        }
    }
}

both! {
    /// Signals delivered to a python handler: the handler sees the right
    /// signal number each time, several in a row.
    fn several_signals_in_a_row(who) {
        let script = r#"
import os, signal, sys, time
got = []
def h(n, f):
    got.append(n)
    os.write(1, b"sig %d\n" % n)
    if len(got) == 3:
        os._exit(9)
for s in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP):
    signal.signal(s, h)
os.write(1, b"READY\n")
while True:
    time.sleep(0.05)
"#;
        let mut run = Sandbox::run(who).cmd([PY, "-c", script]).spawn();
        run.wait_for_line("READY", Duration::from_secs(30));
        for (sig, n) in [(libc::SIGUSR1, 10), (libc::SIGUSR2, 12), (libc::SIGHUP, 1)] {
            run.signal(sig);
            run.wait_for_line(&format!("sig {n}"), Duration::from_secs(30));
        }
        let out = run.wait();
        out.assert_code(9);
    }
}
