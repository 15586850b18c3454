//! One check per seccomp rule: every call the compiled policy denies
//! (`sandbox::security::seccomp::Level::denied`, generated from
//! `launcher/policy/seccomp.toml`) is made inside a sandbox of that level,
//! and must fail with exactly the errno the rule names.

use sandbox::security::seccomp::Level;
use sandbox_e2e::*;

const PROBE: &str = r#"
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
for line in sys.argv[1:]:
    name, nr, arg, value, want = line.split(" ")
    args = [0] * 6
    args[int(arg)] = int(value)
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(int(nr)), *[ctypes.c_long(a) for a in args])
    got = 0 if r >= 0 else ctypes.get_errno()
    print(f"RULE {name} " + ("ok" if got == int(want) else f"FAIL errno {got}, want {want}"))
"#;

fn check_level(who: Who, level: Level) {
    let rules: Vec<String> = level
        .denied()
        .iter()
        .map(|d| format!("{} {} {} {} {}", d.name, d.nr, d.arg, d.value, d.errno))
        .collect();
    assert!(
        rules.len() > 40,
        "suspiciously few rules at {level:?}: {}",
        rules.len()
    );
    let out = Sandbox::run(who)
        .args(["--seccomp", level.as_str()])
        .py(PROBE, &rules)
        .output();
    out.assert_ok();
    let stdout = out.stdout_str();
    let lines: Vec<&str> = stdout.lines().filter(|l| l.starts_with("RULE ")).collect();
    let failed: Vec<&&str> = lines.iter().filter(|l| !l.ends_with(" ok")).collect();
    eprintln!(
        "seccomp {} [{who:?}]: {}/{} rules enforced",
        level.as_str(),
        lines.len() - failed.len(),
        rules.len()
    );
    assert_eq!(
        lines.len(),
        rules.len(),
        "not every rule was checked:\n{stdout}"
    );
    assert!(failed.is_empty(), "{failed:#?}");
}

both! {
    /// Every rule of the default level.
    fn default_level_denies_every_listed_call(who) {
        check_level(who, Level::Default);
    }
}

both! {
    /// Every rule of the strict level (a superset of the default one).
    fn strict_level_denies_every_listed_call(who) {
        check_level(who, Level::Strict);
    }
}
