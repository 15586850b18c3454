//! Terminals: the command gets its own pty when the caller has one; window
//! size and resizes pass through; the caller's terminal settings are
//! restored; nothing can be injected into the caller's terminal.

use std::time::Duration;

use sandbox_e2e::{both, Pty, Sandbox, Who, PY};

fn pty(rows: u16, cols: u16) -> Pty {
    Pty::new(rows, cols).expect("allocate a pty")
}

both! {
    /// On a terminal the command gets a pty of its own (`tty` names a
    /// /dev/pts device of the sandbox's devpts) of the caller's size.
    fn command_gets_its_own_pty(who) {
        let p = pty(37, 101);
        let run = Sandbox::run(who)
            .sh("tty; stty size; readlink /proc/self/fd/0")
            .spawn_pty(&p);
        let (st, out) = run.wait();
        assert_eq!(st.code(), Some(0), "terminal output: {out:?}");
        let lines: Vec<&str> = out.lines().map(|l| l.trim_end_matches('\r')).collect();
        assert!(lines.first().is_some_and(|l| l.starts_with("/dev/pts/")), "{out:?}");
        assert!(lines.contains(&"37 101"), "window size not passed: {out:?}");
        assert!(!out.contains('\0'), "NUL bytes on the terminal: {out:?}");
    }
}

both! {
    /// A resize of the caller's terminal reaches the command (SIGWINCH and
    /// the new size). (A SIGWINCH that still shows the old size is
    /// tolerated here; see `ctrl_c_is_delivered_once` for the cause.)
    fn window_resize_is_forwarded(who) {
        let p = pty(24, 80);
        let script = r#"
import fcntl, os, signal, struct, termios, time
def h(n, f):
    rows, cols = struct.unpack('hh', fcntl.ioctl(0, termios.TIOCGWINSZ, b'\0' * 4))
    os.write(1, b'size %d %d\n' % (rows, cols))
    if (rows, cols) == (50, 132):
        os._exit(7)
signal.signal(signal.SIGWINCH, h)
os.write(1, b'READY\n')
while True:
    time.sleep(0.05)
"#;
        let mut run = Sandbox::run(who).cmd([PY, "-c", script]).spawn_pty(&p);
        run.wait_for("READY", Duration::from_secs(30));
        p.set_size(50, 132).expect("resize");
        let (st, out) = run.wait();
        assert_eq!(st.code(), Some(7), "{out:?}");
        assert!(out.contains("size 50 132"), "{out:?}");
    }
}

both! {
    /// With `-T` the command shares the caller's terminal in a session of
    /// its own. One ^C typed there must reach it exactly once: the launcher
    /// forwards it, and nothing else of the sandbox may take it from the
    /// terminal and forward it a second time. The launcher is stopped while
    /// ^C is typed, so a second forwarder shows up deterministically.
    fn ctrl_c_is_delivered_once(who) {
        let p = pty(24, 80);
        assert!(p.termios().is_cooked());
        let script = r#"
import os, signal, time
n = [0]
def on_int(s, f):
    n[0] += 1
    os.write(1, b'INT\n')
def on_usr1(s, f):
    os.write(1, b'total %d\n' % n[0])
    os._exit(0)
signal.signal(signal.SIGINT, on_int)
signal.signal(signal.SIGUSR1, on_usr1)
os.write(1, b'READY\n')
while True:
    time.sleep(0.05)
"#;
        let mut run = Sandbox::run(who).arg("-T").cmd([PY, "-c", script]).spawn_pty(&p);
        run.wait_for("READY", Duration::from_secs(30));
        run.signal(libc::SIGSTOP);
        run.write(b"\x03");
        std::thread::sleep(Duration::from_millis(300));
        run.signal(libc::SIGCONT);
        run.wait_for("INT", Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(300));
        run.signal(libc::SIGUSR1);
        let (st, out) = run.wait();
        assert_eq!(st.code(), Some(0), "{out:?}");
        assert!(
            out.contains("total 1"),
            "one ^C was delivered more than once (sandbox-init is in the caller's foreground \
             process group and forwards terminal signals too): {out:?}"
        );
    }
}

/// How the run in [`terminal_settings_are_restored`] ends.
#[derive(Debug, Clone, Copy)]
enum Ending {
    Normal,
    ExitCode,
    ForwardedSignal,
    Timeout,
}

both! {
    /// The launcher switches the caller's terminal to raw mode while the
    /// sandbox runs and restores the exact settings afterwards, however
    /// the run ends; typed input reaches the command.
    fn terminal_settings_are_restored(who) {
        for ending in [Ending::Normal, Ending::ExitCode, Ending::ForwardedSignal, Ending::Timeout] {
            let p = pty(24, 80);
            let before = p.termios();
            assert!(before.is_cooked(), "a fresh pty should be in canonical mode");
            let mut sb = Sandbox::run(who);
            if let Ending::Timeout = ending {
                sb = sb.args(["--timeout", "5s", "--kill-after", "1s"]);
            }
            let script = match ending {
                Ending::Normal => "echo READY; read line; echo \"got:$line\"",
                Ending::ExitCode => "echo READY; read line; echo \"got:$line\"; exit 3",
                Ending::ForwardedSignal => {
                    "echo READY; read line; echo \"got:$line\"; exec sleep 1000"
                }
                Ending::Timeout => "echo READY; exec sleep 1000",
            };
            let mut run = sb.sh(script).spawn_pty(&p);
            run.wait_for("READY", Duration::from_secs(30));
            let during = p.termios();
            assert!(!during.is_cooked(), "{ending:?}: the caller's terminal is not raw while the sandbox runs");
            if !matches!(ending, Ending::Timeout) {
                run.write(b"hello\r");
                run.wait_for("got:hello", Duration::from_secs(30));
            }
            if let Ending::ForwardedSignal = ending {
                run.signal(libc::SIGTERM);
            }
            let (st, out) = run.wait();
            let want = match ending {
                Ending::Normal => 0,
                Ending::ExitCode => 3,
                Ending::ForwardedSignal => 143,
                Ending::Timeout => 124,
            };
            assert_eq!(st.code(), Some(want), "{ending:?}: {out:?}");
            assert_eq!(p.termios(), before, "{ending:?}: terminal settings not restored");
        }
    }
}

const TIOCSTI_SCRIPT: &str = r#"
import ctypes, errno, os, termios
libc = ctypes.CDLL(None, use_errno=True)
for name, req in (('plain', termios.TIOCSTI), ('highbits', termios.TIOCSTI | (1 << 32))):
    os.write(1, b'trying ' + name.encode() + b'\n')
    c = ctypes.c_char(b'~')
    r = libc.ioctl(0, ctypes.c_ulong(req), ctypes.byref(c))
    e = ctypes.get_errno()
    res = 'OK' if r == 0 else errno.errorcode.get(e, str(e))
    os.write(1, ('%s=%s\n' % (name, res)).encode())
"#;

fn check_tiocsti(who: Who, extra: &[&str]) {
    let p = pty(24, 80);
    let run = Sandbox::run(who)
        .args(extra)
        .cmd([PY, "-c", TIOCSTI_SCRIPT])
        .spawn_pty(&p);
    let (st, out) = run.wait();
    let pending = p.pending_input();
    assert_eq!(
        pending, 0,
        "{extra:?}: {pending} bytes were injected into the caller's terminal: {out:?}"
    );
    // Refused with an error, or the command killed by the seccomp filter.
    let killed = st.code() == Some(128 + libc::SIGSYS);
    for name in ["plain", "highbits"] {
        let ok = ["EPERM", "EIO", "EACCES"]
            .iter()
            .any(|e| out.contains(&format!("{name}={e}")));
        assert!(
            ok || (killed && !out.contains(&format!("{name}=OK"))),
            "{extra:?}: TIOCSTI ({name}) was not refused (status {st:?}): {out:?}"
        );
    }
    assert!(
        !out.contains('~'),
        "{extra:?}: an injected character was echoed: {out:?}"
    );
}

both! {
    /// TIOCSTI (also with high bits set in the request number) is refused
    /// on the sandbox's own pty, and nothing reaches the caller's terminal
    /// (CVE-2017-5226, CVE-2019-10063).
    fn tiocsti_is_refused_with_own_pty(who) {
        check_tiocsti(who, &[]);
    }
}

both! {
    /// With `-T` the command shares the caller's terminal but runs in a new
    /// session: TIOCSTI must still be refused and nothing injected.
    fn tiocsti_is_refused_without_own_pty(who) {
        check_tiocsti(who, &["-T"]);
    }
}

both! {
    /// Without a terminal on stdin there is no pty: `tty` says so.
    fn no_terminal_without_a_tty(who) {
        let out = Sandbox::run(who).cmd(["tty"]).output();
        out.assert_code(1);
        assert_eq!(out.line(), "not a tty", "{out:?}");
        let out = Sandbox::run(who).cmd(["tty"]).stdin("x\n").output();
        out.assert_code(1);
        assert_eq!(out.line(), "not a tty", "{out:?}");
    }
}

both! {
    /// `-t` forces a pty even when stdin is a pipe; piped input reaches the
    /// command and its end of file ends the command instead of hanging.
    fn forced_tty_with_piped_stdin_terminates(who) {
        let out = Sandbox::run(who)
            .arg("-t")
            .guard(Duration::from_secs(20))
            .sh("tty; cat")
            .stdin("hi\n")
            .output();
        out.assert_ok().assert_stdout_contains("/dev/pts/").assert_stdout_contains("hi");
    }
}
