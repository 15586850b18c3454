//! Who the command is (uid/gid mapping, capabilities, no_new_privs, no
//! privilege from setuid or file-capability binaries) and what environment
//! it sees.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use sandbox_e2e::{both, parse_env, Fixture, Sandbox, Who, PY};

both! {
    /// Only allow-listed variables reach the command; values are exact.
    fn environment_is_filtered(who) {
        let out = Sandbox::run(who)
            .env("SECRET", "x")
            .env("LD_PRELOAD", "/nonexistent-e2e.so")
            .env("LD_LIBRARY_PATH", "/nonexistent-e2e")
            .env("SSH_AUTH_SOCK", "/run/user/1000/ssh-agent.e2e")
            .env("AWS_SECRET_ACCESS_KEY", "e2e")
            .env("PYTHONPATH", "/nonexistent-e2e")
            .env("TERM", "xterm-e2e")
            .env("LANG", "C.UTF-8")
            .env("LC_ALL", "C")
            .env("LC_E2E_CUSTOM", "lc-value")
            .env("TZ", "UTC")
            .cmd(["/usr/bin/env"])
            .output();
        out.assert_ok();
        let env = parse_env(&out.stdout_str());
        for k in [
            "SECRET",
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "SSH_AUTH_SOCK",
            "AWS_SECRET_ACCESS_KEY",
            "PYTHONPATH",
            "SANDBOX_INIT",
        ] {
            assert!(!env.contains_key(k), "{k} leaked into the sandbox:{out:?}");
        }
        let home = who.home().display().to_string();
        for (k, v) in [
            ("PATH", sandbox_e2e::TEST_PATH),
            ("HOME", home.as_str()),
            ("TERM", "xterm-e2e"),
            ("LANG", "C.UTF-8"),
            ("LC_ALL", "C"),
            ("LC_E2E_CUSTOM", "lc-value"),
            ("TZ", "UTC"),
        ] {
            assert_eq!(env.get(k).map(String::as_str), Some(v), "{k}:{out:?}");
        }
        assert!(!out.stdout_str().contains("nonexistent-e2e"), "{out:?}");
    }
}

both! {
    /// `-e FOO=bar` sets, `-e SECRET` passes the caller's value, `-e UNSET`
    /// stays unset, `-e` overrides an allow-listed value.
    fn env_options(who) {
        let out = Sandbox::run(who)
            .env("SECRET", "host-secret")
            .env("TERM", "host-term")
            .args(["-e", "FOO=bar", "-e", "SECRET", "-e", "UNSET_E2E", "-e", "TERM=forced"])
            .args(["-e", "EMPTY=", "-e", "EQ=a=b"])
            .cmd(["/usr/bin/env"])
            .output();
        out.assert_ok();
        let env = parse_env(&out.stdout_str());
        assert_eq!(env.get("FOO").map(String::as_str), Some("bar"), "{out:?}");
        assert_eq!(env.get("SECRET").map(String::as_str), Some("host-secret"), "{out:?}");
        assert_eq!(env.get("TERM").map(String::as_str), Some("forced"), "{out:?}");
        assert_eq!(env.get("EMPTY").map(String::as_str), Some(""), "{out:?}");
        assert_eq!(env.get("EQ").map(String::as_str), Some("a=b"), "{out:?}");
        assert!(!env.contains_key("UNSET_E2E"), "{out:?}");
    }
}

both! {
    /// Non-UTF-8 bytes pass byte-exact: in `-e` values, in argv and in
    /// volume paths.
    fn non_utf8_passes_byte_exact(who) {
        let value: &[u8] = b"\xff\xfe raw \x80bytes\x01";
        let mut arg = b"BIN=".to_vec();
        arg.extend_from_slice(value);
        let out = Sandbox::run(who)
            .arg("-e")
            .arg(OsString::from_vec(arg))
            .cmd([PY, "-c", "import os, sys; sys.stdout.buffer.write(os.environb[b'BIN'])"])
            .output();
        out.assert_ok();
        assert_eq!(out.stdout, value, "{out:?}");

        let out = Sandbox::run(who)
            .cmd(["printf", "%s"])
            .arg(OsString::from_vec(value.to_vec()))
            .output();
        out.assert_ok();
        assert_eq!(out.stdout, value, "argv changed:{out:?}");

        let fx = Fixture::new(who);
        let name = OsString::from_vec(b"dir-\xff\xfe".to_vec());
        let dir = fx.path.join(&name);
        std::fs::create_dir(&dir).expect("mkdir non-UTF-8");
        fx.chown(&dir, who);
        std::fs::write(dir.join("f"), b"inside\n").expect("write");
        let mut spec = dir.as_os_str().as_bytes().to_vec();
        spec.extend_from_slice(b":/tmp/v");
        let out = Sandbox::run(who)
            .arg("-v")
            .arg(OsString::from_vec(spec))
            .cmd(["cat", "/tmp/v/f"])
            .output();
        out.assert_ok();
        assert_eq!(out.stdout, b"inside\n", "{out:?}");
    }
}

both! {
    /// A profile's [env] section: `pass` replaces the allow-list, `set`
    /// sets; the built-in strict profile keeps almost nothing.
    fn profile_environment(who) {
        let fx = Fixture::new(who);
        let prof = fx.file(
            "envtest.toml",
            b"[env]\npass = [\"KEEP_*\", \"PATH\"]\nset = { FIXED = \"yes\", HOME = \"/tmp\" }\n",
            who,
        );
        let out = Sandbox::run(who)
            .env("KEEP_ONE", "1")
            .env("KEEP_TWO", "2")
            .env("TERM", "xterm")
            .args(["-p", &prof.display().to_string()])
            .cmd(["/usr/bin/env"])
            .output();
        out.assert_ok();
        let env = parse_env(&out.stdout_str());
        let keys: Vec<&str> = env.keys().map(String::as_str).collect();
        assert_eq!(keys, ["FIXED", "HOME", "KEEP_ONE", "KEEP_TWO", "PATH"], "{out:?}");
        assert_eq!(env["HOME"], "/tmp");

        let out = Sandbox::run(who)
            .env("USER", "someone")
            .env("TERM", "xterm")
            .args(["-p", "strict"])
            .sh("/usr/bin/env; echo cwd=$(pwd); echo host=$(hostname); ls -A /home /root 2>/dev/null | grep -v '^/' | grep -c .; exit 0")
            .output();
        out.assert_ok();
        let env = parse_env(&out.stdout_str());
        assert!(!env.contains_key("USER"), "{out:?}");
        assert_eq!(env.get("HOME").map(String::as_str), Some("/tmp"), "{out:?}");
        assert_eq!(env.get("cwd").map(String::as_str), Some("/tmp"), "{out:?}");
        assert_eq!(env.get("host").map(String::as_str), Some("sandbox"), "{out:?}");
        // /home and /root are masked by the strict profile (an empty,
        // inaccessible tmpfs).
        assert!(out.stdout_str().ends_with("\n0\n"), "/home or /root not empty:{out:?}");
        let host_home_entries = std::fs::read_dir("/home").map(|d| d.count()).unwrap_or(0);
        if host_home_entries == 0 {
            eprintln!("note: /home is empty on the host; the strict mask check proves little");
        }
    }
}

both! {
    /// Default identity inside is the caller's own uid/gid; only that one
    /// uid is mapped when rootless.
    fn default_identity_is_the_caller(who) {
        let out = Sandbox::run(who)
            .sh("id -u; id -g; id -G; cat /proc/self/uid_map /proc/self/gid_map")
            .output();
        out.assert_ok();
        let s = out.stdout_str();
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines[0], who.uid().to_string(), "{out:?}");
        assert_eq!(lines[1], who.gid().to_string(), "{out:?}");
        assert_eq!(lines[2], who.gid().to_string(), "supplementary groups:{out:?}");
        let maps: Vec<Vec<u64>> = lines[3..]
            .iter()
            .map(|l| l.split_whitespace().filter_map(|n| n.parse().ok()).collect())
            .collect();
        assert_eq!(maps.len(), 2, "{out:?}");
        if who.is_root() {
            assert_eq!(maps[0], [0, 0, 4294967295], "{out:?}");
        } else {
            assert_eq!(maps[0], [u64::from(who.uid()), 0, 1], "one uid only:{out:?}");
            assert_eq!(maps[1], [u64::from(who.gid()), 0, 1], "one gid only:{out:?}");
        }
    }
}

both! {
    /// `-u 0`, `-u root`, `-u 1234:1234`, `-u 4321` show those ids.
    fn user_option(who) {
        for (arg, want) in [
            ("0", "0 0"),
            ("root", "0 0"),
            ("1234:1234", "1234 1234"),
            ("1234:77", "1234 77"),
            ("4321", "4321 4321"),
        ] {
            let out = Sandbox::run(who).args(["-u", arg]).sh("echo $(id -u) $(id -g)").output();
            out.assert_ok();
            assert_eq!(out.line(), want, "-u {arg}:{out:?}");
        }
    }
}

both! {
    /// No capabilities at all, no_new_privs set, also for `-u 0`.
    fn no_capabilities_and_no_new_privs(who) {
        for user in ["", "0"] {
            let mut sb = Sandbox::run(who);
            if !user.is_empty() {
                sb = sb.args(["-u", user]);
            }
            let out = sb.cmd(["cat", "/proc/self/status"]).output();
            out.assert_ok();
            let st: std::collections::BTreeMap<String, String> = out
                .stdout_str()
                .lines()
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.to_string(), v.trim().to_string()))
                .collect();
            for k in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
                assert_eq!(st.get(k).map(String::as_str), Some("0000000000000000"), "{k}:{out:?}");
            }
            assert_eq!(st.get("NoNewPrivs").map(String::as_str), Some("1"), "{out:?}");
        }
    }
}

/// A setuid-root copy of `id` run by the unprivileged user gives euid 0 on
/// the host, but never inside the sandbox (nosuid + no_new_privs); `su`
/// fails too.
#[test]
fn setuid_binaries_give_no_privilege() {
    let Some(who) = Who::Rootless.ready() else {
        return;
    };
    if sandbox_e2e::euid() != 0 {
        sandbox_e2e::skip!("creating a setuid-root test binary needs root");
    }
    let fx = Fixture::new(Who::Root);
    let suid = fx.join("suid-id");
    std::fs::copy("/usr/bin/id", &suid).expect("copy id");
    std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).expect("chmod 4755");
    let acct = sandbox_e2e::unprivileged().expect("account");
    let host = Command::new("/usr/bin/setpriv")
        .args([
            format!("--reuid={}", acct.uid),
            format!("--regid={}", acct.gid),
            "--clear-groups".into(),
            "--".into(),
        ])
        .arg(&suid)
        .arg("-u")
        .current_dir("/")
        .output()
        .expect("run the setuid copy on the host");
    let host_euid = String::from_utf8_lossy(&host.stdout).trim().to_string();
    if host_euid != "0" {
        sandbox_e2e::skip!(
            "the setuid copy does not elevate on the host either (euid {host_euid:?}; /var/tmp nosuid?)"
        );
    }
    let out = Sandbox::run(who)
        .sh(&format!(
            "{} -u; echo id=$(id -u); /usr/bin/su -c id root </dev/null; echo su=$?; id -u",
            suid.display()
        ))
        .output();
    out.assert_ok();
    let lines: Vec<String> = out.stdout_str().lines().map(String::from).collect();
    assert_eq!(
        lines.first().map(String::as_str),
        Some(acct.uid.to_string().as_str()),
        "setuid elevated inside:{out:?}"
    );
    assert!(
        lines.iter().any(|l| l == &format!("id={}", acct.uid)),
        "{out:?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("su=") && l != "su=0"),
        "su succeeded:{out:?}"
    );
    assert_eq!(
        lines.last().map(String::as_str),
        Some(acct.uid.to_string().as_str()),
        "{out:?}"
    );
    assert!(!out.stdout_str().contains("uid=0"), "{out:?}");
}

/// A file-capability binary (a python copy with cap_setuid+ep) can setuid(0)
/// on the host but not inside.
#[test]
fn file_capabilities_give_no_privilege() {
    let Some(who) = Who::Rootless.ready() else {
        return;
    };
    if sandbox_e2e::euid() != 0 {
        sandbox_e2e::skip!("setting file capabilities needs root");
    }
    let Some(setcap) = ["/usr/sbin/setcap", "/sbin/setcap", "/usr/bin/setcap"]
        .into_iter()
        .find(|p| std::path::Path::new(p).is_file())
    else {
        sandbox_e2e::skip!("setcap (libcap2-bin) is not installed");
    };
    let fx = Fixture::new(Who::Root);
    let py = fx.join("python3");
    let real = std::fs::canonicalize(PY).expect("resolve python");
    std::fs::copy(&real, &py).expect("copy python");
    std::fs::set_permissions(&py, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let st = Command::new(setcap)
        .arg("cap_setuid+ep")
        .arg(&py)
        .status()
        .expect("run setcap");
    if !st.success() {
        sandbox_e2e::skip!("setcap failed here (filesystem without xattrs?)");
    }
    // The permitted/effective sets after exec: cap_setuid is bit 7.
    let script = "for l in open('/proc/self/status'):\n    \
                  if l.startswith(('CapPrm', 'CapEff')): print(l.strip())";
    let acct = sandbox_e2e::unprivileged().expect("account");
    let host = Command::new("/usr/bin/setpriv")
        .args([
            format!("--reuid={}", acct.uid),
            format!("--regid={}", acct.gid),
            "--clear-groups".into(),
            "--".into(),
        ])
        .arg(&py)
        .args(["-c", script])
        .current_dir("/")
        .output()
        .expect("run the capability copy on the host");
    let host_caps = String::from_utf8_lossy(&host.stdout).into_owned();
    if !host_caps.contains("CapPrm:\t0000000000000080") {
        sandbox_e2e::skip!(
            "the file capability does not work on the host either: {:?} {:?}",
            String::from_utf8_lossy(&host.stdout),
            String::from_utf8_lossy(&host.stderr)
        );
    }
    let out = Sandbox::run(who)
        .cmd([py.as_os_str(), "-c".as_ref(), script.as_ref()])
        .output();
    out.assert_ok();
    assert_eq!(
        out.stdout_str(),
        "CapPrm:\t0000000000000000\nCapEff:\t0000000000000000\n",
        "the file capability took effect inside (host: {host_caps:?}):{out:?}"
    );
}

/// Calls harmless if they were allowed; each must fail with EPERM or ENOSYS.
const DENIED_SYSCALLS: &str = r#"
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
def sc(name, nr, *args):
    os.write(1, ('trying %s\n' % name).encode())
    r = libc.syscall(nr, *args)
    e = ctypes.get_errno()
    print('%s: %s' % (name, 'OK' if r >= 0 else errno.errorcode.get(e, str(e))), flush=True)
sc('keyctl', 250, 0, -3, 1)
sc('add_key', 248, b'user', b'e2e', b'x', 1, -3)
sc('request_key', 249, b'user', b'e2e', None, 0)
sc('bpf', 321, 0, 0, 0)
sc('perf_event_open', 298, 0, 0, -1, -1, 0)
sc('userfaultfd', 323, 0)
sc('io_uring_setup', 425, 1, 0)
sc('unshare_newuser', 272, 0x10000000)
sc('unshare_newns', 272, 0x00020000)
sc('syslog', 103, 3, 0, 0)
sc('kexec_load', 246, 0, 0, 0, 0)
sc('init_module', 175, 0, 0, b'')
sc('mount', 165, b'none', b'/tmp', b'tmpfs', 0, None)
sc('setns', 308, 0, 0)
sc('open_by_handle_at', 304, -100, 0, 0)
"#;

both! {
    /// Kernel attack surface: keyrings, bpf, perf, userfaultfd, io_uring,
    /// new user namespaces, syslog, module and kexec loading, mount, setns
    /// and open_by_handle_at are denied (EPERM or ENOSYS), never OK.
    fn dangerous_syscalls_are_denied(who) {
        let out = Sandbox::run(who).cmd([PY, "-c", DENIED_SYSCALLS]).output();
        out.assert_ok();
        let r = out.kv();
        let mut bad = Vec::new();
        for name in [
            "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd",
            "io_uring_setup", "unshare_newuser", "unshare_newns", "syslog", "kexec_load",
            "init_module", "mount", "setns", "open_by_handle_at",
        ] {
            match r.get(name).map(String::as_str) {
                Some("EPERM" | "ENOSYS") => {}
                other => bad.push(format!("{name}: {other:?}")),
            }
        }
        assert!(bad.is_empty(), "not denied: {bad:?}{out:?}");
    }
}

both! {
    /// The filter does not break ordinary programs: threads (glibc tries
    /// clone3 first and must get ENOSYS to fall back), fork+exec, pipes.
    fn threads_and_subprocesses_work(who) {
        let script = "import subprocess, threading\n\
                      r = []\n\
                      ts = [threading.Thread(target=lambda: r.append(1)) for _ in range(8)]\n\
                      [t.start() for t in ts]; [t.join() for t in ts]\n\
                      p = subprocess.run(['sh', '-c', 'echo sub'], capture_output=True)\n\
                      print(len(r), p.stdout.decode().strip())";
        let out = Sandbox::run(who).cmd([PY, "-c", script]).output();
        out.assert_ok();
        assert_eq!(out.line(), "8 sub", "{out:?}");
    }
}
