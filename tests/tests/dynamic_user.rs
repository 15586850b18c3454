//! DAC labels: `--user dynamic` (root only) gives each live sandbox its own
//! host uid/gid from the configured range; writable volumes stay owned by
//! the caller through idmapped mounts; ids are released at exit.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;

use sandbox_e2e::*;

const FIRST: u32 = 3_000_000_000;
const LAST: u32 = 3_000_099_999;

#[test]
fn each_live_sandbox_gets_its_own_id_from_the_range() {
    let Some(who) = Who::Root.ready() else {
        skip!("--user dynamic needs root")
    };
    let mut running = Vec::new();
    for _ in 0..8 {
        let mut s = Sandbox::run(who)
            .args(["--user", "dynamic"])
            .sh("id -u; id -g; sleep 30")
            .spawn();
        let uid: u32 = s
            .wait_for_line("", std::time::Duration::from_secs(20))
            .trim()
            .parse()
            .expect("uid");
        running.push((s, uid));
    }
    let ids: BTreeSet<u32> = running.iter().map(|(_, u)| *u).collect();
    assert_eq!(
        ids.len(),
        running.len(),
        "two live sandboxes share a uid: {ids:?}"
    );
    assert!(
        ids.iter().all(|u| (FIRST..=LAST).contains(u)),
        "{ids:?} outside the range"
    );
    for (mut s, _) in running {
        s.kill_and_reap();
    }
}

#[test]
fn writable_volumes_stay_owned_by_the_caller() {
    let Some(who) = Who::Root.ready() else {
        skip!("--user dynamic needs root")
    };
    let dir = std::path::PathBuf::from(format!("/var/tmp/sandbox-e2e-dyn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("volume dir");
    std::fs::write(dir.join("secret"), "only-root\n").expect("file");
    std::fs::set_permissions(
        dir.join("secret"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .expect("chmod");
    let vol = format!("{}:/tmp/vol:rw", dir.display());
    let out = Sandbox::run(who)
        .args(["--user", "dynamic", "-v", &vol])
        .sh("id -u; stat -c %u /tmp/vol/secret; cat /tmp/vol/secret; echo new > /tmp/vol/new; stat -c %u /tmp/vol/new")
        .output();
    out.assert_ok();
    let lines: Vec<String> = out.stdout_str().lines().map(str::to_string).collect();
    let uid: u32 = lines[0].parse().expect("uid");
    assert!((FIRST..=LAST).contains(&uid));
    // Inside, the caller's files look like the dynamic user's own...
    assert_eq!(lines[1], lines[0], "{lines:?}");
    assert_eq!(lines[2], "only-root");
    assert_eq!(lines[3], lines[0], "{lines:?}");
    // ...and on the host everything is still the caller's.
    assert_eq!(
        std::fs::metadata(dir.join("new")).expect("created").uid(),
        0
    );
    assert_eq!(
        std::fs::metadata(dir.join("secret")).expect("kept").uid(),
        0
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn dynamic_user_cannot_read_other_host_secrets() {
    let Some(who) = Who::Root.ready() else {
        skip!("--user dynamic needs root")
    };
    // /etc/shadow belongs to root: the dynamic user is not root.
    let out = Sandbox::run(who)
        .args(["--user", "dynamic"])
        .sh("cat /etc/shadow")
        .output();
    assert_ne!(out.code(), 0, "the dynamic user read /etc/shadow");
}

#[test]
fn unprivileged_callers_are_refused() {
    let Some(who) = Who::Rootless.ready() else {
        skip!("no unprivileged account")
    };
    let out = Sandbox::run(who)
        .args(["--user", "dynamic"])
        .cmd(["true"])
        .output();
    out.assert_code(125).assert_one_line_error();
    out.assert_stderr_contains("needs root");
}
