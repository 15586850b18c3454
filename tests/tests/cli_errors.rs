//! The command line: help, version, completions, man page; bad options and
//! bad profiles are refused with status 125 and a precise message.

use sandbox_e2e::{both, Fixture, Sandbox, Who};

both! {
    /// `--version`, `help`, `--help`, `run --help`.
    fn version_and_help(who) {
        let out = Sandbox::cli(who).arg("--version").output();
        out.assert_ok();
        let v = out.line();
        let ver = v.strip_prefix("sandbox ").unwrap_or_else(|| panic!("{out:?}"));
        let parts: Vec<&str> = ver.split('.').collect();
        assert!(
            parts.len() >= 3 && parts[..3].iter().all(|p| p.chars().take_while(char::is_ascii_digit).count() > 0),
            "not a semantic version: {v:?}"
        );

        for args in [&["help"][..], &["--help"], &["-h"]] {
            let out = Sandbox::cli(who).args(args).output();
            out.assert_ok().assert_stdout_contains("run").assert_stdout_contains("EXIT STATUS");
        }
        let out = Sandbox::cli(who).args(["run", "--help"]).output();
        out.assert_ok()
            .assert_stdout_contains("--volume")
            .assert_stdout_contains("--timeout")
            .assert_stdout_contains("125");
        let out = Sandbox::cli(who).args(["help", "run"]).output();
        out.assert_ok().assert_stdout_contains("--volume");
    }
}

/// Shell completions for every supported shell, non-empty and naming `run`.
#[test]
fn completions() {
    let Some(who) = Who::Root.ready().or_else(|| Who::Rootless.ready()) else {
        return;
    };
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = Sandbox::cli(who).args(["completions", shell]).output();
        out.assert_ok().assert_stdout_contains("run");
        assert!(out.stdout.len() > 200, "{shell} completion is tiny:{out:?}");
    }
    let out = Sandbox::cli(who).args(["completions", "bash"]).output();
    out.assert_stdout_contains("--volume");
    let out = Sandbox::cli(who).args(["completions", "tcsh"]).output();
    out.assert_code(125);
}

/// `sandbox man` prints roff with an EXIT STATUS section; `--out-dir`
/// writes one page per subcommand.
#[test]
fn man_page() {
    let Some(who) = Who::Root.ready().or_else(|| Who::Rootless.ready()) else {
        return;
    };
    let out = Sandbox::cli(who).arg("man").output();
    out.assert_ok()
        .assert_stdout_contains(".TH")
        .assert_stdout_contains(".SH")
        .assert_stdout_contains("EXIT STATUS")
        .assert_stdout_contains("125");
    let fx = Fixture::new(who);
    let dir = fx.join("man");
    let out = Sandbox::cli(who)
        .args(["man", "--out-dir"])
        .arg(&dir)
        .output();
    out.assert_ok();
    let page = std::fs::read_to_string(dir.join("sandbox.1")).expect("sandbox.1 written");
    assert!(page.contains("EXIT STATUS"));
    let run = std::fs::read_to_string(dir.join("sandbox-run.1")).expect("sandbox-run.1 written");
    assert!(
        run.contains("volume") && run.contains("EXIT STATUS"),
        "{run}"
    );
}

/// (arguments before `--`, substrings the one-line message must contain)
fn bad_run_options(fx: &Fixture, who: Who) -> Vec<(Vec<String>, Vec<&'static str>)> {
    let rel = fx.dir("relsrc", who);
    let _ = rel;
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    vec![
        (
            s(&["--timeout", "0"]),
            vec!["timeout", "'0'", "greater than zero"],
        ),
        (s(&["--timeout=-1"]), vec!["timeout", "'-1'"]),
        (s(&["--timeout", "5x"]), vec!["timeout", "'5x'", "unit"]),
        (s(&["--timeout", ""]), vec!["timeout"]),
        (s(&["--timeout", "1.5s"]), vec!["timeout", "'1.5s'"]),
        (
            s(&["--timeout", "99999999999999999999999s"]),
            vec!["timeout"],
        ),
        (s(&["--kill-after", "0"]), vec!["kill-after", "'0'"]),
        (s(&["-u", "bob"]), vec!["user", "'bob'", "UID"]),
        (s(&["-u=-1"]), vec!["user", "'-1'"]),
        (s(&["-u", "4294967295"]), vec!["user", "'4294967295'"]),
        (s(&["-u", "1:"]), vec!["user", "'1:'"]),
        (
            s(&["-v", "relative-e2e-missing:dest"]),
            vec!["volume", "relative-e2e-missing"],
        ),
        (
            s(&["-v", "relsrc:dest"]),
            vec!["volume", "dest", "absolute"],
        ),
        (s(&["-v", "/usr:/a/../b"]), vec!["volume", ".."]),
        (s(&["-v", "/usr:/"]), vec!["volume", "root"]),
        (s(&["-v", ""]), vec!["volume"]),
        (s(&["-v", "/a:/b:/c:ro"]), vec!["volume", "/a:/b:/c:ro"]),
        (
            s(&["--tmpfs", "/x:size=0"]),
            vec!["tmpfs", "'0'", "greater than zero"],
        ),
        (s(&["--tmpfs", "/x:size=-1"]), vec!["tmpfs", "'-1'"]),
        (
            s(&["--tmpfs", "/x:size=18446744073709551616"]),
            vec!["tmpfs", "too large"],
        ),
        (s(&["--tmpfs", "/x:bogus=1"]), vec!["tmpfs", "bogus=1"]),
        (
            s(&["--tmpfs", "/x:mode=99"]),
            vec!["tmpfs", "'99'", "octal"],
        ),
        (s(&["--tmpfs", "rel"]), vec!["tmpfs", "'rel'", "absolute"]),
        (s(&["--name", "a b"]), vec!["name", "'a b'"]),
        (s(&["--name=-x"]), vec!["name", "'-x'"]),
        (s(&["--name", "a/b"]), vec!["name", "'a/b'"]),
        (s(&["--name", &"x".repeat(64)]), vec!["name"]),
        (
            s(&["--hostname", "bad_host!"]),
            vec!["hostname", "'bad_host!'"],
        ),
        (s(&["-e", "=x"]), vec!["environment", "'=x'"]),
        (s(&["-e", ""]), vec!["environment"]),
        (
            s(&["-w", "relative/dir"]),
            vec!["workdir", "relative/dir", "absolute"],
        ),
        (
            s(&["-p", "no-such-profile-e2e"]),
            vec!["no-such-profile-e2e", "not found", "default", "strict"],
        ),
        (
            s(&["-p", "/nonexistent-e2e/p.toml"]),
            vec!["/nonexistent-e2e/p.toml", "No such file"],
        ),
        (
            s(&["--json-status-fd", "99"]),
            vec!["99", "not an open file descriptor"],
        ),
        (s(&["--json-status-fd=-5"]), vec!["-5"]),
    ]
}

both! {
    /// Bad values: 125, one line on stderr naming the value and what is
    /// accepted; the command never runs.
    fn bad_options_are_refused(who) {
        let fx = Fixture::new(who);
        let mut failures = Vec::new();
        for (args, needles) in bad_run_options(&fx, who) {
            let out = Sandbox::run(who)
                .cwd(&fx.path)
                .args(&args)
                .sh("echo RAN")
                .output();
            let err = out.stderr_str();
            let mut problems = Vec::new();
            if out.status.code() != Some(125) {
                problems.push(format!("status {:?}", out.status.code()));
            }
            if out.stdout_str().contains("RAN") {
                problems.push("the command ran".to_string());
            }
            if !err.starts_with("sandbox: ") || err.matches('\n').count() != 1 || !err.ends_with('\n') {
                problems.push("not exactly one 'sandbox: ...' line".to_string());
            }
            for n in needles {
                if !err.contains(n) {
                    problems.push(format!("lacks {n:?}"));
                }
            }
            if !problems.is_empty() {
                failures.push(format!("{args:?}: {}; stderr: {err:?}", problems.join(", ")));
            }
        }
        assert!(failures.is_empty(), "bad options not refused properly:\n{}", failures.join("\n"));
    }
}

both! {
    /// Usage errors from the parser: 125 and a message naming the problem
    /// (clap's output may span several lines).
    fn usage_errors_are_125(who) {
        let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
            (vec!["run", "--bogus", "--", "true"], vec!["--bogus"]),
            (vec!["run", "--network", "bridge", "--", "true"], vec!["bridge", "none", "nat", "host"]),
            (vec!["run", "--allow", "10.0.0.1", "--", "true"], vec!["--allow", "--network nat"]),
            (vec!["run", "--network", "nat", "--allow", "10.0.0.999", "--", "true"], vec!["'10.0.0.999'", "CIDR"]),
            (vec!["run", "--network", "nat", "--publish", "80", "--", "true"], vec!["'80'", "HOSTPORT:PORT"]),
            (vec!["run", "--timeout", "-1", "--", "true"], vec!["-1"]),
            (vec!["run"], vec!["COMMAND"]),
            (vec!["run", "--"], vec!["COMMAND"]),
            (vec!["run", "-t", "-T", "--", "true"], vec!["--tty"]),
            (vec!["run", "--bind", "/usr"], vec!["--bind"]),
            (vec!["bogus-subcommand"], vec!["bogus-subcommand"]),
            (vec![], vec!["Usage"]),
        ];
        for (args, needles) in cases {
            let out = Sandbox::cli(who).args(&args).output();
            out.assert_code(125);
            assert!(out.stdout.is_empty(), "usage error on stdout:{out:?}");
            for n in needles {
                out.assert_stderr_contains(n);
            }
        }
    }
}

/// (profile text, 1-based line of the error, substrings of the message)
fn bad_profiles() -> Vec<(&'static str, &'static str, usize, Vec<&'static str>)> {
    vec![
        (
            "unknown-key",
            "hostname = \"a\"\nnetwrok = \"none\"\n",
            2,
            vec!["netwrok", "network"],
        ),
        (
            "unknown-section-key",
            "[filesystem]\nscratch = \"1m\"\n",
            2,
            vec!["scratch"],
        ),
        ("wrong-type", "\ntty = \"yes\"\n", 2, vec!["boolean"]),
        (
            "wrong-type-list",
            "[env]\npass = \"PATH\"\n",
            2,
            vec!["sequence"],
        ),
        ("syntax", "hostname = \"a\"\nvolumes = [\n", 3, vec![]),
        ("syntax-quote", "hostname = \"unterminated\n", 1, vec![]),
        (
            "size-zero",
            "[filesystem]\nscratch_size = \"0\"\n",
            2,
            vec!["'0'", "greater than zero"],
        ),
        (
            "size-negative",
            "[filesystem]\nscratch_size = \"-1\"\n",
            2,
            vec!["'-1'"],
        ),
        (
            "size-2-64",
            "[filesystem]\nscratch_size = \"18446744073709551616\"\n",
            2,
            vec!["18446744073709551616", "too large"],
        ),
        (
            "size-empty",
            "[filesystem]\nscratch_size = \"\"\n",
            2,
            vec!["''"],
        ),
        (
            "size-int",
            "[filesystem]\nscratch_size = 0\n",
            2,
            vec!["string"],
        ),
        (
            "network",
            "\n\nnetwork = \"bridge\"\n",
            3,
            vec!["'bridge'", "none", "nat", "host"],
        ),
        (
            "timeout",
            "timeout = \"0\"\n",
            1,
            vec!["'0'", "greater than zero"],
        ),
        ("user", "user = \"bob\"\n", 1, vec!["'bob'"]),
        (
            "volume",
            "volumes = [\"/nonexistent-e2e-src:/tmp/x\"]\n",
            1,
            vec!["/nonexistent-e2e-src"],
        ),
        (
            "mask",
            "[filesystem]\nmask = [\"relative\"]\n",
            2,
            vec!["relative", "absolute"],
        ),
        ("env-pattern", "[env]\npass = [\"A*B\"]\n", 2, vec!["A*B"]),
        ("hostname", "hostname = \"bad host\"\n", 1, vec!["bad host"]),
    ]
}

both! {
    /// Bad profiles: 125, one line `FILE:LINE:COL: message`; never a run
    /// with weaker settings.
    fn bad_profiles_are_refused(who) {
        let fx = Fixture::new(who);
        let mut failures = Vec::new();
        for (name, text, line, needles) in bad_profiles() {
            let path = fx.file(&format!("{name}.toml"), text.as_bytes(), who);
            let out = Sandbox::run(who)
                .arg("-p")
                .arg(&path)
                .sh("echo RAN")
                .output();
            let err = out.stderr_str();
            let prefix = format!("sandbox: {}:{line}:", path.display());
            let mut problems = Vec::new();
            if out.status.code() != Some(125) {
                problems.push(format!("status {:?}", out.status.code()));
            }
            if out.stdout_str().contains("RAN") {
                problems.push("the command ran".to_string());
            }
            if !err.starts_with(&prefix) {
                problems.push(format!("does not start with {prefix:?}"));
            }
            for n in needles {
                if !err.contains(n) {
                    problems.push(format!("lacks {n:?}"));
                }
            }
            if err.matches('\n').count() != 1 || !err.ends_with('\n') {
                problems.push("not exactly one line".to_string());
            }
            if !problems.is_empty() {
                failures.push(format!("profile {name}: {}; stderr: {err:?}", problems.join(", ")));
            }
        }
        assert!(failures.is_empty(), "bad profiles not refused properly:\n{}", failures.join("\n"));
    }
}

both! {
    /// Profiles found by name in $XDG_CONFIG_HOME/sandbox; the command line
    /// overrides the profile; an error in a named profile names its file.
    fn profile_lookup_by_name(who) {
        let fx = Fixture::new(who);
        fx.dir("sandbox", who);
        fx.file("sandbox/e2e-prof.toml", b"hostname = \"from-profile\"\n", who);
        let bad = fx.file("sandbox/e2e-bad.toml", b"netwrok = \"none\"\n", who);
        let xdg = fx.path.display().to_string();
        let out = Sandbox::run(who)
            .env("XDG_CONFIG_HOME", &xdg)
            .args(["-p", "e2e-prof"])
            .cmd(["hostname"])
            .output();
        out.assert_ok();
        assert_eq!(out.line(), "from-profile", "{out:?}");
        let out = Sandbox::run(who)
            .env("XDG_CONFIG_HOME", &xdg)
            .args(["-p", "e2e-prof", "--hostname", "from-cli"])
            .cmd(["hostname"])
            .output();
        assert_eq!(out.line(), "from-cli", "{out:?}");
        let out = Sandbox::run(who)
            .env("XDG_CONFIG_HOME", &xdg)
            .args(["-p", "e2e-bad"])
            .cmd(["true"])
            .output();
        out.assert_code(125)
            .assert_one_line_error()
            .assert_stderr_contains(&format!("{}:1:", bad.display()))
            .assert_stderr_contains("netwrok");
        // A user profile of the same name as a built-in one takes precedence.
        fx.file("sandbox/strict.toml", b"hostname = \"shadowed-strict\"\n", who);
        let out = Sandbox::run(who)
            .env("XDG_CONFIG_HOME", &xdg)
            .args(["-p", "strict"])
            .cmd(["hostname"])
            .output();
        assert_eq!(out.line(), "shadowed-strict", "{out:?}");
    }
}

both! {
    /// Built-in profiles work with no files on disk.
    fn builtin_profiles_work(who) {
        let fx = Fixture::new(who);
        for p in ["default", "strict"] {
            Sandbox::run(who)
                .env("XDG_CONFIG_HOME", &fx.path)
                .args(["-p", p])
                .cmd(["true"])
                .output()
                .assert_ok();
        }
    }
}
