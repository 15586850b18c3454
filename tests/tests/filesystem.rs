//! The filesystem view: read-only host, volumes, tmpfs, masked and private
//! paths, /dev, mount isolation, plus the loopback-only network and UTS.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use sandbox_e2e::{
    both, euid, file_state, mountinfo, parse_mountinfo, unique, Fixture, Sandbox, Who, PY,
};

/// Tries every kind of write on a path and prints `op: ERRNO` lines.
const WRITE_ATTEMPTS: &str = r#"
import ctypes, errno, mmap, os, sys
d = sys.argv[1]
f = os.path.join(d, 'file')
def t(name, fn):
    try:
        r = fn()
        if isinstance(r, int) and name.startswith('open'):
            os.close(r)
        print('%s: OK' % name)
    except OSError as e:
        print('%s: %s' % (name, errno.errorcode.get(e.errno, str(e.errno))))
def mm():
    fd = os.open(f, os.O_RDONLY)
    try:
        m = mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        m[0:1] = b'X'
        m.close()
    finally:
        os.close(fd)
def mm_rdwr():
    fd = os.open(f, os.O_RDWR)
    m = mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    m[0:1] = b'X'
t('open_wronly', lambda: os.open(f, os.O_WRONLY))
t('open_rdwr', lambda: os.open(f, os.O_RDWR))
t('open_append', lambda: os.open(f, os.O_WRONLY | os.O_APPEND))
t('open_trunc', lambda: os.open(f, os.O_RDONLY | os.O_TRUNC))
t('creat', lambda: os.open(os.path.join(d, 'new'), os.O_WRONLY | os.O_CREAT, 0o644))
t('creat_excl', lambda: os.open(os.path.join(d, 'new2'), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
t('tmpfile', lambda: os.open(d, os.O_TMPFILE | os.O_WRONLY, 0o600))
t('unlink', lambda: os.unlink(f))
t('rename', lambda: os.rename(f, f + '.renamed'))
t('link', lambda: os.link(f, f + '.link'))
t('chmod', lambda: os.chmod(f, 0o777))
t('chown', lambda: os.chown(f, os.getuid(), os.getgid()))
t('truncate', lambda: os.truncate(f, 0))
t('utime', lambda: os.utime(f, (0, 0)))
t('setxattr', lambda: os.setxattr(f, 'user.e2e', b'x'))
t('removexattr', lambda: os.removexattr(f, 'user.e2e'))
t('mkdir', lambda: os.mkdir(os.path.join(d, 'sub')))
t('rmdir', lambda: os.rmdir(os.path.join(d, 'dir')))
t('symlink', lambda: os.symlink('/etc/passwd', os.path.join(d, 'ln')))
t('mkfifo', lambda: os.mkfifo(os.path.join(d, 'fifo')))
t('mmap_shared_write', mm)
t('mmap_rdwr', mm_rdwr)
libc = ctypes.CDLL(None, use_errno=True)
def sysc(fn, *a):
    def g():
        if fn(*a) != 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
    return g
MS_REMOUNT, MS_BIND, MS_RDONLY = 32, 4096, 1
t('remount_root_rw', sysc(libc.mount, None, b'/', None, MS_REMOUNT, None))
t('remount_bind_rw', sysc(libc.mount, None, d.encode(), None, MS_REMOUNT | MS_BIND, None))
t('mount_tmpfs', sysc(libc.mount, b'tmpfs', d.encode(), b'tmpfs', 0, None))
t('umount_tmp', sysc(libc.umount2, b'/tmp', 2))
"#;

/// The errno every write attempt on a read-only path must give.
fn expected_ro(op: &str) -> &'static [&'static str] {
    match op {
        // A read-only fd cannot be mapped shared-writable.
        "mmap_shared_write" => &["EACCES"],
        // Mount operations need CAP_SYS_ADMIN, which the command lacks.
        "remount_root_rw" | "remount_bind_rw" | "mount_tmpfs" | "umount_tmp" => &["EPERM"],
        _ => &["EROFS"],
    }
}

fn check_read_only(who: Who, dir: &Path, inside: &str, extra: &[&str]) {
    let file = dir.join("file");
    let before = file_state(&file);
    let listing_before = std::fs::read_dir(dir).expect("ls").count();
    let out = Sandbox::run(who)
        .args(extra)
        .cmd([PY, "-c", WRITE_ATTEMPTS, inside])
        .output();
    out.assert_ok();
    let results = out.kv();
    assert_eq!(results.len(), 26, "not every operation ran:{out:?}");
    for (op, got) in &results {
        assert!(
            expected_ro(op).contains(&got.as_str()),
            "{op} on a read-only path gave {got}, expected {:?}:{out:?}",
            expected_ro(op)
        );
    }
    assert_eq!(file_state(&file), before, "the host file changed");
    assert_eq!(
        std::fs::read_dir(dir).expect("ls").count(),
        listing_before,
        "entries appeared in the host dir"
    );
}

fn ro_fixture(who: Who) -> Fixture {
    let fx = Fixture::new(who);
    fx.file("file", b"original content\n", who);
    fx.dir("dir", who);
    fx
}

both! {
    /// Every kind of write on a host path (owned by the caller, so that
    /// only the read-only mount can refuse) fails with EROFS; mmap of a
    /// read-only fd with MAP_SHARED|PROT_WRITE gives EACCES; mounting and
    /// remounting gives EPERM. The host file is byte-identical afterwards,
    /// with the same mode, owner and mtime.
    fn host_is_read_only(who) {
        let fx = ro_fixture(who);
        let p = fx.path.display().to_string();
        check_read_only(who, &fx.path, &p, &[]);
    }
}

both! {
    /// `mount -o remount,rw /` from inside fails and `/` stays read-only.
    fn remount_rw_fails(who) {
        let fx = ro_fixture(who);
        let out = Sandbox::run(who)
            .sh(&format!(
                "mount -o remount,rw / ; echo mount=$?; \
                 mount -o remount,bind,rw / ; echo bind=$?; \
                 echo x > {}/file; echo write=$?",
                fx.path.display()
            ))
            .output();
        let kv: std::collections::BTreeMap<String, String> = out
            .stdout_str()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        for k in ["mount", "bind", "write"] {
            assert_ne!(kv.get(k).map(String::as_str), Some("0"), "{k} succeeded:{out:?}");
            assert!(kv.contains_key(k), "{k} did not run:{out:?}");
        }
        assert_eq!(std::fs::read(fx.join("file")).expect("read"), b"original content\n");
    }
}

both! {
    /// `/` is mounted ro,nosuid,nodev, and so is every other mount that
    /// comes from the host (submounts of the recursive bind included).
    fn every_host_mount_is_read_only(who) {
        let out = Sandbox::run(who).cmd(["cat", "/proc/self/mountinfo"]).output();
        out.assert_ok();
        let mounts = parse_mountinfo(&out.stdout_str());
        let root = mounts
            .iter()
            .rfind(|m| m.mount_point == "/")
            .expect("a root mount");
        for opt in ["ro", "nosuid", "nodev"] {
            assert!(root.options.iter().any(|o| o == opt), "/ lacks {opt}: {root:?}");
        }
        let private = ["/proc", "/dev", "/tmp", "/run"];
        for m in &mounts {
            let under = |p: &str| m.mount_point == p || m.mount_point.starts_with(&format!("{p}/"));
            if private.iter().any(|p| under(p)) {
                continue;
            }
            assert!(
                m.options.iter().any(|o| o == "ro"),
                "{} is writable inside: {m:?}",
                m.mount_point
            );
            assert!(
                m.options.iter().any(|o| o == "nosuid"),
                "{} lacks nosuid inside: {m:?}",
                m.mount_point
            );
        }
        // Every host mount point outside the private trees is present and ro.
        let host = parse_mountinfo(&mountinfo());
        for h in host.iter().filter(|h| !private.iter().any(|p| h.mount_point.starts_with(p))) {
            if h.mount_point.starts_with("/sys") {
                continue; // a fresh sysfs covers the host's /sys tree
            }
            assert!(
                mounts.iter().any(|m| m.mount_point == h.mount_point),
                "host mount {} is missing inside",
                h.mount_point
            );
        }
    }
}

both! {
    /// A mount below a read-only volume is read-only too (the submount is
    /// created on the "host" side in a private mount namespace, so the real
    /// host mount table is not touched).
    fn submounts_of_read_only_volumes_are_read_only(who) {
        if euid() != 0 {
            sandbox_e2e::skip!("creating the host-side submount needs root (unshare -m)");
        }
        if !Path::new("/usr/bin/unshare").is_file() {
            sandbox_e2e::skip!("unshare (util-linux) is not installed");
        }
        let fx = Fixture::new(who);
        let sub = fx.dir("sub", who);
        let script = "mount -t tmpfs -o mode=777 e2e-sub \"$1\" && shift && exec \"$@\"";
        let out = Sandbox::run(who)
            .wrap(
                ["/usr/bin/unshare", "-m", "--propagation", "private", "--", "/bin/sh", "-c"]
                    .iter()
                    .map(std::ffi::OsString::from)
                    .chain([script.into(), "sh".into(), sub.into_os_string()]),
            )
            .args(["-v", &format!("{}:/tmp/vol", fx.path.display())])
            .sh("grep -q ' /tmp/vol/sub ' /proc/self/mountinfo && echo submount-present; \
                 touch /tmp/vol/sub/x; echo touch=$?; \
                 touch /tmp/vol/x; echo top=$?; \
                 grep ' /tmp/vol/sub ' /proc/self/mountinfo")
            .output();
        out.assert_ok().assert_stdout_contains("submount-present");
        let s = out.stdout_str();
        assert!(!s.contains("touch=0"), "the submount is writable:{out:?}");
        assert!(!s.contains("top=0"), "the volume is writable:{out:?}");
        let line = s.lines().find(|l| l.contains(" /tmp/vol/sub ")).unwrap_or("");
        assert!(line.split(' ').nth(5).is_some_and(|o| o.split(',').any(|x| x == "ro")), "{out:?}");
    }
}

/// Other users' private files stay private (DAC still applies).
#[test]
fn other_users_private_files_stay_unreadable() {
    let Some(who) = Who::Rootless.ready() else {
        return;
    };
    let out = Sandbox::run(who).sh("cat /etc/shadow; echo rc=$?").output();
    out.assert_ok().assert_stdout_contains("rc=1");
    assert!(!out.stdout_str().contains("root:"), "{out:?}");
    out.assert_stderr_contains("Permission denied");
}

both! {
    /// `-v HOST:DEST:rw` is writable and changes reach the host; new files
    /// belong to the caller on the host (even as `-u 0` inside).
    fn rw_volume_writes_reach_the_host(who) {
        let fx = Fixture::new(who);
        fx.file("old", b"old\n", who);
        let out = Sandbox::run(who)
            .args(["-u", "0", "-v", &format!("{}:/tmp/vol:rw", fx.path.display())])
            .sh("echo hello > /tmp/vol/new && mkdir /tmp/vol/sub && rm /tmp/vol/old && \
                 mv /tmp/vol/new /tmp/vol/sub/moved && echo done")
            .output();
        out.assert_ok().assert_stdout_contains("done");
        assert_eq!(fx.listing(), ["sub"], "{out:?}");
        let moved = fx.join("sub/moved");
        assert_eq!(std::fs::read(&moved).expect("read moved"), b"hello\n");
        let st = file_state(&moved);
        assert_eq!((st.uid, st.gid), (who.uid(), who.gid()), "owner on the host");
    }
}

both! {
    /// `-v HOST:DEST` and `-v HOST:DEST:ro` are read-only (EROFS for every
    /// kind of write), the host stays byte-identical.
    fn default_volume_is_read_only(who) {
        let fx = ro_fixture(who);
        let p = fx.path.display().to_string();
        check_read_only(who, &fx.path, "/tmp/vol", &["-v", &format!("{p}:/tmp/vol")]);
        check_read_only(who, &fx.path, "/tmp/vol", &["-v", &format!("{p}:/tmp/vol:ro")]);
        check_read_only(who, &fx.path, "/tmp/vol", &["--ro-bind", &p, "/tmp/vol"]);
        // HOST alone appears read-only at the same path.
        check_read_only(who, &fx.path, &p, &["-v", &p]);
    }
}

both! {
    /// `--bind` is read-write; `-v HOST:rw` appears at the same path.
    fn bind_and_same_path_volumes(who) {
        let fx = Fixture::new(who);
        let p = fx.path.display().to_string();
        Sandbox::run(who)
            .args(["--bind", &p, "/tmp/b"])
            .sh("echo one > /tmp/b/one")
            .output()
            .assert_ok();
        Sandbox::run(who)
            .args(["-v", &format!("{p}:rw")])
            .sh(&format!("echo two > {p}/two"))
            .output()
            .assert_ok();
        assert_eq!(std::fs::read(fx.join("one")).expect("one"), b"one\n");
        assert_eq!(std::fs::read(fx.join("two")).expect("two"), b"two\n");
    }
}

both! {
    /// Volumes onto destinations under /tmp are created on the fly (nested
    /// dirs; a single file too); they do not appear on the host's /tmp.
    fn volume_destinations_under_tmp_are_created(who) {
        let fx = Fixture::new(who);
        let f = fx.file("data.txt", b"payload\n", who);
        let nested = format!("/tmp/{}/a/b/c", unique("e2e-"));
        let out = Sandbox::run(who)
            .args(["-v", &format!("{}:{nested}", fx.path.display())])
            .args(["-v", &format!("{}:/tmp/single.txt", f.display())])
            .sh(&format!("cat {nested}/data.txt /tmp/single.txt; echo x > /tmp/single.txt; echo rc=$?"))
            .output();
        out.assert_ok();
        assert!(out.stdout_str().starts_with("payload\npayload\nrc="), "{out:?}");
        assert!(!out.stdout_str().contains("rc=0"), "a read-only file volume was writable:{out:?}");
        assert!(!Path::new(&nested).exists(), "the destination leaked to the host /tmp");
        assert_eq!(std::fs::read(&f).expect("read"), b"payload\n");
    }
}

both! {
    /// `--tmpfs DEST:size=1m`: writable, ENOSPC when full, nothing on the
    /// host; also on an existing host dir (mounted over it inside only).
    fn tmpfs_size_limit(who) {
        let dest = format!("/tmp/{}", unique("scratch-"));
        let out = Sandbox::run(who)
            .args(["--tmpfs", &format!("{dest}:size=1m")])
            .cmd([
                PY,
                "-c",
                "import errno, sys\n\
                 f = open(sys.argv[1] + '/fill', 'wb', buffering=0)\n\
                 n = 0\n\
                 try:\n    \
                     while n < 8 << 20:\n        \
                         n += f.write(b'x' * 65536)\n    \
                     print('no-limit', n)\n\
                 except OSError as e:\n    \
                     print(errno.errorcode[e.errno], n)\n",
                &dest,
            ])
            .output();
        out.assert_ok();
        let line = out.line();
        let (err, n) = line.split_once(' ').expect("two words");
        assert_eq!(err, "ENOSPC", "{out:?}");
        let n: u64 = n.parse().expect("a number");
        assert!(n <= 1 << 20, "wrote {n} bytes into a 1 MiB tmpfs");
        assert!(!Path::new(&dest).exists(), "the tmpfs destination appeared on the host");

        // The same with dd, as a user would.
        let out = Sandbox::run(who)
            .args(["--tmpfs", &format!("{dest}:size=1m")])
            .sh(&format!("dd if=/dev/zero of={dest}/f bs=64k count=100"))
            .output();
        assert_ne!(out.code(), 0, "{out:?}");
        out.assert_stderr_contains("No space left on device");

        // Over an existing host directory: the host directory is untouched.
        let existing = ["/srv", "/opt", "/media"].into_iter().find(|d| Path::new(d).is_dir());
        if let Some(d) = existing {
            let before: BTreeSet<_> = std::fs::read_dir(d)
                .expect("ls")
                .flatten()
                .map(|e| e.file_name())
                .collect();
            let out = Sandbox::run(who)
                .args(["--tmpfs", &format!("{d}:size=1m,mode=1777")])
                .sh(&format!("ls -A {d} | wc -l; echo x > {d}/e2e-new && echo wrote; stat -c %a {d}"))
                .output();
            out.assert_ok();
            assert_eq!(out.stdout_str(), "0\nwrote\n1777\n", "{out:?}");
            let after: BTreeSet<_> = std::fs::read_dir(d)
                .expect("ls")
                .flatten()
                .map(|e| e.file_name())
                .collect();
            assert_eq!(before, after, "{d} changed on the host");
        } else {
            eprintln!("note: no /srv, /opt or /media on this host; tmpfs-over-existing-dir part not run");
        }
    }
}

both! {
    /// A destination missing on the read-only root: 125 with a one-line
    /// reason naming it; a missing source: 125 naming the source.
    fn volume_errors(who) {
        let fx = Fixture::new(who);
        let missing_dst = format!("/{}", unique("e2e-nonexistent-"));
        let out = Sandbox::run(who)
            .args(["-v", &format!("{}:{missing_dst}", fx.path.display())])
            .cmd(["true"])
            .output();
        out.assert_code(125)
            .assert_one_line_error()
            .assert_stderr_contains(&missing_dst)
            .assert_stderr_contains("read-only");
        assert!(!Path::new(&missing_dst).exists());

        let out = Sandbox::run(who)
            .args(["--tmpfs", &format!("{missing_dst}:size=1m")])
            .cmd(["true"])
            .output();
        out.assert_code(125).assert_one_line_error().assert_stderr_contains(&missing_dst);

        let missing_src = format!("/var/tmp/{}", unique("e2e-missing-src-"));
        for args in [
            vec!["-v".to_string(), format!("{missing_src}:/tmp/x")],
            vec!["--bind".to_string(), missing_src.clone(), "/tmp/x".to_string()],
            vec!["--ro-bind".to_string(), missing_src.clone(), "/tmp/x".to_string()],
        ] {
            let out = Sandbox::run(who).args(&args).cmd(["true"]).output();
            out.assert_code(125)
                .assert_one_line_error()
                .assert_stderr_contains(&missing_src)
                .assert_stderr_contains("No such file or directory");
        }
    }
}

both! {
    /// Masked /proc and /sys paths: empty or unreadable; masked dirs empty.
    fn masked_paths(who) {
        let files = [
            "/proc/kcore",
            "/proc/keys",
            "/proc/key-users",
            "/proc/timer_list",
            "/proc/sysrq-trigger",
            "/proc/kallsyms",
            "/proc/kmsg",
            "/proc/sched_debug",
        ];
        let dirs = ["/proc/acpi", "/sys/firmware", "/sys/kernel/debug", "/sys/kernel/security"];
        let script = r#"
import os, sys
for p in sys.argv[1:]:
    try:
        if os.path.isdir(p):
            print('%s: dir %d' % (p, len(os.listdir(p))))
        else:
            with open(p, 'rb') as f:
                print('%s: read %d' % (p, len(f.read(4096))))
    except FileNotFoundError:
        print('%s: absent' % p)
    except OSError as e:
        print('%s: error %d' % (p, e.errno))
"#;
        let out = Sandbox::run(who)
            .cmd([PY, "-c", script])
            .args(files)
            .args(dirs)
            .output();
        out.assert_ok();
        let r = out.kv();
        let mut checked = 0;
        for p in files.iter().chain(dirs.iter()) {
            let got = r.get(*p).unwrap_or_else(|| panic!("{p} not probed:{out:?}"));
            let host_has = Path::new(p).exists();
            if !host_has {
                assert!(got == "absent" || got.ends_with(" 0") || got.starts_with("error"), "{p}: {got}");
                continue;
            }
            checked += 1;
            assert!(
                got == "read 0" || got == "dir 0" || got.starts_with("error"),
                "{p} is readable inside: {got}:{out:?}"
            );
        }
        assert!(checked >= 3, "too few masked paths exist on this host to mean anything");
    }
}

both! {
    /// /proc/sys and /sys are read-only; the hostnames stay as they were.
    fn proc_sys_and_sys_are_read_only(who) {
        let host_hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
        let out = Sandbox::run(who)
            .args(["--hostname", "e2e-box"])
            .sh("echo evil > /proc/sys/kernel/hostname; echo rc=$?; hostname; \
                 echo 1 > /proc/sys/kernel/domainname; echo rc2=$?; \
                 echo x > /sys/kernel/uevent_helper; echo rc3=$?; \
                 grep -E ' /(proc/sys|sys) ' /proc/self/mountinfo")
            .output();
        out.assert_ok();
        let s = out.stdout_str();
        for k in ["rc=", "rc2=", "rc3="] {
            assert!(s.contains(k) && !s.contains(&format!("{k}0")), "{k}:{out:?}");
        }
        assert!(s.contains("e2e-box\n"), "{out:?}");
        for l in s.lines().filter(|l| l.contains(" /proc/sys ") || l.contains(" /sys ")) {
            let opts = l.split(' ').nth(5).unwrap_or("");
            assert!(opts.split(',').any(|o| o == "ro"), "writable: {l}");
        }
        out.assert_stderr_contains("Read-only file system");
        assert_eq!(std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname"), host_hostname);
    }
}

both! {
    /// /dev holds exactly the minimal set; mknod fails.
    fn dev_is_minimal(who) {
        let out = Sandbox::run(who).cmd(["ls", "-A", "/dev"]).output();
        out.assert_ok();
        let got: BTreeSet<String> = out.stdout_str().lines().map(String::from).collect();
        let want: BTreeSet<String> = [
            "null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "shm", "fd",
            "stdin", "stdout", "stderr",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(got, want, "/dev content:{out:?}");

        let script = r#"
import errno, os, stat
for path in ('/tmp/e2e-null', '/dev/e2e-null', '/dev/shm/e2e-null'):
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        print(path + ': OK')
    except OSError as e:
        print(path + ': ' + errno.errorcode[e.errno])
try:
    os.mknod('/tmp/e2e-blk', stat.S_IFBLK | 0o666, os.makedev(8, 0))
    print('blk: OK')
except OSError as e:
    print('blk: ' + errno.errorcode[e.errno])
with open('/dev/null', 'wb') as f: f.write(b'x')
print('zero: %d' % len(open('/dev/zero', 'rb').read(10)))
print('urandom: %d' % len(open('/dev/urandom', 'rb').read(10)))
try:
    open('/dev/full', 'wb', buffering=0).write(b'x')
except OSError as e:
    print('full: ' + errno.errorcode[e.errno])
"#;
        let out = Sandbox::run(who).cmd([PY, "-c", script]).output();
        out.assert_ok();
        let r = out.kv();
        assert_eq!(r.get("/tmp/e2e-null").map(String::as_str), Some("EPERM"), "{out:?}");
        assert!(matches!(r.get("/dev/e2e-null").map(String::as_str), Some("EPERM" | "EROFS")), "{out:?}");
        assert_eq!(r.get("/dev/shm/e2e-null").map(String::as_str), Some("EPERM"), "{out:?}");
        assert_eq!(r.get("blk").map(String::as_str), Some("EPERM"), "{out:?}");
        assert_eq!(r.get("zero").map(String::as_str), Some("10"), "{out:?}");
        assert_eq!(r.get("urandom").map(String::as_str), Some("10"), "{out:?}");
        assert_eq!(r.get("full").map(String::as_str), Some("ENOSPC"), "{out:?}");
    }
}

both! {
    /// /tmp, /run and /dev/shm are empty and private: host files are not
    /// visible inside, files written inside do not appear on the host.
    fn tmp_is_private(who) {
        let host_file = format!("/tmp/{}", unique("e2e-host-"));
        std::fs::write(&host_file, b"host").expect("write a host /tmp file");
        let inside = unique("e2e-inside-");
        let out = Sandbox::run(who)
            .sh(&format!(
                "ls -A /tmp | wc -l; ls -A /dev/shm | wc -l; ls -A /run | wc -l; \
                 test -e {host_file} && echo visible; \
                 echo in > /tmp/{inside} && echo in > /dev/shm/{inside} && echo in > /run/{inside} && echo wrote"
            ))
            .output();
        let _ = std::fs::remove_file(&host_file);
        out.assert_ok();
        assert_eq!(out.stdout_str(), "0\n0\n0\nwrote\n", "{out:?}");
        for d in ["/tmp", "/dev/shm", "/run"] {
            assert!(!Path::new(&format!("{d}/{inside}")).exists(), "{d}/{inside} leaked to the host");
        }
    }
}

both! {
    /// The host mount table is identical before, during and after a run.
    fn mounts_do_not_leak(who) {
        let before = mountinfo();
        let mut run = Sandbox::run(who)
            .args(["--tmpfs", "/tmp/t:size=1m", "-v", "/var/tmp:/tmp/v"])
            .sh("echo READY; read x; exit 0")
            .stdin_pipe()
            .spawn();
        run.wait_for_line("READY", Duration::from_secs(30));
        let during = mountinfo();
        run.close_stdin();
        run.wait().assert_ok();
        let after = mountinfo();
        assert_eq!(before, during, "the host saw the sandbox's mounts");
        assert_eq!(before, after, "mounts remained after the run");
    }
}

both! {
    /// Default network: loopback only. `lo` is up and usable inside; the
    /// host's loopback services are unreachable (another namespace).
    fn network_is_loopback_only(who) {
        let host = TcpListener::bind("127.0.0.1:0").expect("bind a host loopback port");
        let port = host.local_addr().expect("addr").port();
        let script = r#"
import errno, os, socket, sys
print('ifaces: ' + ','.join(sorted(os.listdir('/sys/class/net'))))
srv = socket.socket()
srv.bind(('127.0.0.1', 0))
srv.listen(1)
c = socket.create_connection(srv.getsockname(), timeout=5)
a, _ = srv.accept()
c.sendall(b'ping')
print('inner: ' + a.recv(4).decode())
s = socket.socket()
s.settimeout(5)
try:
    s.connect(('127.0.0.1', int(sys.argv[1])))
    print('host: connected')
except OSError as e:
    print('host: ' + errno.errorcode.get(e.errno, str(e)))
"#;
        let out = Sandbox::run(who)
            .cmd([PY, "-c", script, &port.to_string()])
            .output();
        out.assert_ok();
        let r = out.kv();
        assert_eq!(r.get("ifaces").map(String::as_str), Some("lo"), "{out:?}");
        assert_eq!(r.get("inner").map(String::as_str), Some("ping"), "{out:?}");
        assert_eq!(r.get("host").map(String::as_str), Some("ECONNREFUSED"), "{out:?}");

        // --network host shares the host's loopback.
        let out = Sandbox::run(who)
            .args(["--network", "host"])
            .cmd([PY, "-c", script, &port.to_string()])
            .output();
        out.assert_ok();
        assert_eq!(out.kv().get("host").map(String::as_str), Some("connected"), "{out:?}");
        drop(host);
    }
}

both! {
    /// The working directory: the caller's by default; `-w` under /tmp is
    /// created; `-w` missing on the read-only root fails with 125.
    fn working_directory(who) {
        let fx = Fixture::new(who);
        let out = Sandbox::run(who).cwd(&fx.path).cmd(["pwd"]).output();
        out.assert_ok();
        assert_eq!(out.line(), fx.path.display().to_string(), "{out:?}");

        let out = Sandbox::run(who).args(["-w", "/tmp/a/b"]).cmd(["pwd"]).output();
        out.assert_ok();
        assert_eq!(out.line(), "/tmp/a/b", "{out:?}");

        let missing = format!("/{}", unique("e2e-wd-"));
        let out = Sandbox::run(who).args(["-w", &missing]).cmd(["pwd"]).output();
        out.assert_code(125).assert_one_line_error().assert_stderr_contains(&missing);

        let out = Sandbox::run(who).args(["-w", "relative/dir"]).cmd(["pwd"]).output();
        out.assert_code(125).assert_one_line_error().assert_stderr_contains("relative/dir");
    }
}
