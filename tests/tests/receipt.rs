//! The JSON record of a run: `--receipt FILE` and `--json-status-fd FD`.

use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};

use serde_json::Value;

use sandbox_e2e::{both, Fixture, Output, Sandbox, Who, PY};

/// A pipe: (read end as a File, write end).
fn pipe() -> (std::fs::File, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(r, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: both fds are fresh and owned by nobody else.
    unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            OwnedFd::from_raw_fd(fds[1]),
        )
    }
}

fn read_receipt(path: &std::path::Path, out: &Output) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("receipt {} not written ({e}):{out:?}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("receipt is not JSON ({e}): {text}"))
}

/// The fields every receipt of a started sandbox has.
#[track_caller]
fn check_common(v: &Value, out: &Output) {
    assert_eq!(v["backend"], "namespace", "{v:#}");
    assert_eq!(
        v["exit_code"].as_i64(),
        out.status.code().map(i64::from),
        "{v:#}"
    );
    let wall = v["wall_time_ms"].as_f64().unwrap_or(-1.0);
    assert!(wall > 0.0 && wall < 600_000.0, "wall_time_ms {wall}: {v:#}");
    assert!(v["id"].as_str().is_some_and(|s| !s.is_empty()), "id: {v:#}");
    let iso = &v["isolation"];
    assert!(iso["enforced"].is_object(), "isolation.enforced: {v:#}");
    assert!(
        iso["not_enforced"].is_array(),
        "isolation.not_enforced: {v:#}"
    );
    let ns: Vec<&str> = iso["enforced"]["namespaces"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for n in ["user", "mount", "pid", "net"] {
        assert!(ns.contains(&n), "namespace {n} not reported: {v:#}");
    }
}

both! {
    /// `--receipt FILE` after a normal exit, a signal, a timeout.
    fn receipt_file(who) {
        let fx = Fixture::new(who);
        let name = sandbox_e2e::unique("e2e-receipt-");
        let r = fx.join("exit.json");
        let out = Sandbox::run(who)
            .args(["--name", &name, "--receipt"])
            .arg(&r)
            .sh("exit 3")
            .output();
        out.assert_code(3);
        let v = read_receipt(&r, &out);
        check_common(&v, &out);
        assert_eq!(v["id"], name.as_str(), "{v:#}");
        assert_eq!(v["status"]["exited"], 3, "{v:#}");
        assert_eq!(v["timed_out"], false, "{v:#}");
        assert_eq!(v["isolation"]["not_enforced"].as_array().map(Vec::len), Some(0), "{v:#}");
        let cmd: Vec<&str> = v["command"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        assert_eq!(cmd, ["/bin/sh", "-c", "exit 3"], "{v:#}");
        let user = &v["isolation"]["enforced"]["user"];
        assert_eq!(user["uid"].as_u64(), Some(u64::from(who.uid())), "{v:#}");

        let r = fx.join("signal.json");
        let out = Sandbox::run(who).arg("--receipt").arg(&r).sh("kill -KILL $$").output();
        out.assert_code(137);
        let v = read_receipt(&r, &out);
        check_common(&v, &out);
        assert_eq!(v["status"]["signaled"], 9, "{v:#}");

        let r = fx.join("timeout.json");
        let out = Sandbox::run(who)
            .args(["--timeout", "1s", "--receipt"])
            .arg(&r)
            .cmd(["sleep", "30"])
            .output();
        out.assert_code(124);
        let v = read_receipt(&r, &out);
        check_common(&v, &out);
        assert_eq!(v["timed_out"], true, "{v:#}");
        assert!(v["wall_time_ms"].as_f64().unwrap_or(0.0) >= 900.0, "{v:#}");
        // No temporary files are left next to the receipts.
        let mut names = fx.listing();
        names.sort();
        assert_eq!(names, ["exit.json", "signal.json", "timeout.json"]);
    }
}

both! {
    /// A run that fails before starting still writes a receipt with the
    /// error and exit code 125.
    fn receipt_on_failure(who) {
        let fx = Fixture::new(who);
        let r = fx.join("fail.json");
        let out = Sandbox::run(who)
            .args(["-v", "/nonexistent-e2e-src:/tmp/x", "--receipt"])
            .arg(&r)
            .cmd(["true"])
            .output();
        out.assert_code(125);
        let v = read_receipt(&r, &out);
        assert_eq!(v["exit_code"], 125, "{v:#}");
        assert_eq!(v["backend"], "namespace", "{v:#}");
        assert!(
            v["status"]["error"].as_str().is_some_and(|e| e.contains("/nonexistent-e2e-src")),
            "{v:#}"
        );
        let r = fx.join("notfound.json");
        let out = Sandbox::run(who).arg("--receipt").arg(&r).cmd(["no-such-cmd-e2e"]).output();
        out.assert_code(127);
        let v = read_receipt(&r, &out);
        assert_eq!(v["exit_code"], 127, "{v:#}");
    }
}

both! {
    /// An unwritable receipt path: 125 with a message (the command's own
    /// status must not be reported as success).
    fn receipt_unwritable(who) {
        let out = Sandbox::run(who)
            .args(["--receipt", "/nonexistent-e2e-dir/r.json"])
            .cmd(["true"])
            .output();
        out.assert_code(125).assert_stderr_contains("/nonexistent-e2e-dir/r.json");
    }
}

both! {
    /// `--json-status-fd 3` with fd 3 inherited: exactly one JSON line on
    /// it; the command itself does not see fd 3.
    fn json_status_fd(who) {
        let (mut rd, wr) = pipe();
        let out = Sandbox::run(who)
            .inherit_fd(wr, 3)
            .args(["--json-status-fd", "3"])
            .cmd([
                PY,
                "-c",
                "import os; print(sorted(int(f) for f in os.listdir('/proc/self/fd') \
                 if os.path.exists('/proc/self/fd/' + f)))",
            ])
            .output();
        out.assert_ok();
        assert_eq!(out.line(), "[0, 1, 2]", "the status fd leaked into the sandbox:{out:?}");
        let mut text = String::new();
        rd.read_to_string(&mut text).expect("read the status pipe");
        assert_eq!(text.matches('\n').count(), 1, "not one line: {text:?}");
        assert!(text.ends_with('\n'), "{text:?}");
        let v: Value = serde_json::from_str(text.trim_end()).expect("status line is JSON");
        check_common(&v, &out);
        assert_eq!(v["status"]["exited"], 0, "{v:#}");
    }
}

both! {
    /// `--json-status-fd 99` when fd 99 is not open: 125 before anything
    /// runs.
    fn json_status_fd_not_open(who) {
        let out = Sandbox::run(who)
            .args(["--json-status-fd", "99"])
            .sh("echo RAN")
            .output();
        out.assert_code(125).assert_one_line_error().assert_stderr_contains("99");
        assert!(!out.stdout_str().contains("RAN"), "{out:?}");
    }
}

/// The receipt names the uid from `-u` (rootless: the id inside).
#[test]
fn receipt_reports_requested_user() {
    let Some(who) = Who::Rootless.ready().or_else(|| Who::Root.ready()) else {
        return;
    };
    let fx = Fixture::new(who);
    let r = fx.join("u.json");
    let out = Sandbox::run(who)
        .args(["-u", "1234:4321", "--receipt"])
        .arg(&r)
        .cmd(["true"])
        .output();
    out.assert_ok();
    let v = read_receipt(&r, &out);
    assert_eq!(v["isolation"]["enforced"]["user"]["uid"], 1234, "{v:#}");
    assert_eq!(v["isolation"]["enforced"]["user"]["gid"], 4321, "{v:#}");
}
