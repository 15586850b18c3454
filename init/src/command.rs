//! Starting the command: a child in its own nested user namespace.
//!
//! The command never runs in the user namespace that owns the sandbox's
//! mounts. init clones it into a nested user namespace (the maps come from
//! the launcher, see `UserSpec`), so even a command that somehow regained
//! every capability of its namespace could not alter the mount table.
//!
//! Child steps, after init has written its id maps:
//! `setsid` (+ controlling pty) -> keep-caps on, bounding set reduced to the
//! kept capabilities -> groups/gid/uid -> `chdir(workdir)` as the command's
//! user -> `no_new_privs` -> effective/permitted/inheritable/ambient set to
//! exactly the kept capabilities (none by default) -> default signal
//! dispositions and an empty mask -> every fd >= 3 close-on-exec -> seccomp
//! filter -> `execve`, trying each `PATH` entry like `execvp`.
//!
//! Failures before `execve` travel back on a close-on-exec pipe as
//! `[kind, errno(4 bytes LE)]`; end of file on that pipe means `execve`
//! succeeded.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use sandbox_proto::InitSpec;

use crate::setup::StepError;
use crate::sys::{self, cstring, Errno};

/// A running command.
#[derive(Debug)]
pub struct Child {
    pub pid: libc::pid_t,
    /// The pty master when the command has a terminal.
    pub master: Option<OwnedFd>,
    /// Landlock ABI applied to the command (0: none).
    pub landlock_abi: u32,
    /// Relayed stdio (labelled runs): init's ends of the command's stdin,
    /// stdout and stderr sockets.
    pub relay: Option<[OwnedFd; 3]>,
}

/// Why the command did not start.
#[derive(Debug)]
pub enum SpawnError {
    Setup(StepError),
    Exec {
        program: Vec<u8>,
        errno: Errno,
        not_found: bool,
    },
}

// Kinds of failure reported by the child on the error pipe.
const K_SETSID: u8 = 1;
const K_TTY: u8 = 2;
const K_IDS: u8 = 3;
const K_WORKDIR: u8 = 4;
const K_PRIVS: u8 = 5;
const K_EXEC: u8 = 6;
const K_SYNC: u8 = 7;
const K_SECCOMP: u8 = 8;
const K_LANDLOCK: u8 = 9;
const K_LABEL: u8 = 10;

fn kind_step(kind: u8) -> &'static str {
    match kind {
        K_SETSID => "setsid",
        K_TTY => "tty",
        K_IDS => "set-ids",
        K_WORKDIR => "workdir",
        K_PRIVS => "drop-privileges",
        K_SYNC => "sync",
        K_SECCOMP => "seccomp",
        K_LANDLOCK => "landlock",
        K_LABEL => "security-label",
        _ => "exec",
    }
}

/// Everything the child needs, prepared before `clone` so that the child
/// allocates nothing.
struct Prepared {
    candidates: Vec<CString>,
    /// Owners of the strings `argv_ptrs`/`envp_ptrs` point into.
    _argv: Vec<CString>,
    _envp: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    envp_ptrs: Vec<*const libc::c_char>,
    cwd: CString,
    uid: u32,
    gid: u32,
    groups: Vec<libc::gid_t>,
    allow_setgroups: bool,
    /// Capabilities kept, as a bit mask.
    keep_caps: u64,
    seccomp: Vec<libc::sock_filter>,
    landlock: Option<crate::landlock::Ruleset>,
    /// SELinux context for `execve`.
    exec_label: Option<CString>,
}

fn prepare(spec: &InitSpec) -> Result<Prepared, SpawnError> {
    let bad = |what: &[u8]| {
        SpawnError::Setup(StepError::new("exec", what, libc::EINVAL).detail("contains a NUL byte"))
    };
    let argv: Vec<CString> = spec
        .argv
        .iter()
        .map(|a| cstring(a).map_err(|_| bad(a)))
        .collect::<Result<_, _>>()?;
    let envp: Vec<CString> = spec
        .env
        .iter()
        .map(|e| cstring(e).map_err(|_| bad(e)))
        .collect::<Result<_, _>>()?;
    let Some(prog) = spec.argv.first() else {
        return Err(SpawnError::Setup(
            StepError::new("exec", "", libc::EINVAL).detail("empty command"),
        ));
    };
    let mut candidates = Vec::new();
    if prog.contains(&b'/') {
        candidates.push(cstring(prog).map_err(|_| bad(prog))?);
    } else if !prog.is_empty() {
        let path = spec
            .env
            .iter()
            .find_map(|e| e.strip_prefix(b"PATH="))
            .unwrap_or(b"/usr/local/bin:/usr/bin:/bin");
        for dir in path.split(|b| *b == b':') {
            let mut full = if dir.is_empty() {
                b".".to_vec()
            } else {
                dir.to_vec()
            };
            full.push(b'/');
            full.extend_from_slice(prog);
            if let Ok(c) = cstring(&full) {
                candidates.push(c);
            }
        }
    }
    let ptrs = |v: &[CString]| -> Vec<*const libc::c_char> {
        v.iter()
            .map(|a| a.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect()
    };
    Ok(Prepared {
        candidates,
        argv_ptrs: ptrs(&argv),
        envp_ptrs: ptrs(&envp),
        _argv: argv,
        _envp: envp,
        cwd: cstring(&spec.cwd).map_err(|_| bad(&spec.cwd))?,
        uid: spec.user.uid,
        gid: spec.user.gid,
        groups: spec.user.groups.clone(),
        allow_setgroups: spec.user.allow_setgroups,
        keep_caps: spec
            .confine
            .caps
            .iter()
            .filter(|c| **c < 64)
            .fold(0, |m, c| m | 1 << c),
        seccomp: decode_seccomp(&spec.confine.seccomp)?,
        landlock: match &spec.confine.landlock {
            Some(l) => crate::landlock::prepare(l).map_err(SpawnError::Setup)?,
            None => None,
        },
        exec_label: match &spec.confine.exec_label {
            Some(l) => Some(cstring(l.as_bytes()).map_err(|_| bad(l.as_bytes()))?),
            None => None,
        },
    })
}

/// Unpack the launcher's seccomp program (see `sandbox_proto::Confine`).
fn decode_seccomp(packed: &[u64]) -> Result<Vec<libc::sock_filter>, SpawnError> {
    // BPF_MAXINSNS: the kernel refuses longer programs anyway.
    if packed.len() > 4096 {
        return Err(SpawnError::Setup(
            StepError::new("seccomp", "", libc::EINVAL)
                .detail("filter longer than 4096 instructions"),
        ));
    }
    Ok(packed
        .iter()
        .map(|w| libc::sock_filter {
            code: *w as u16,
            jt: (*w >> 16) as u8,
            jf: (*w >> 24) as u8,
            k: (*w >> 32) as u32,
        })
        .collect())
}

fn open_pty(spec: &InitSpec, rows: u16, cols: u16) -> Result<(OwnedFd, OwnedFd), StepError> {
    let master = sys::open(c"/dev/ptmx", libc::O_RDWR | libc::O_NOCTTY)
        .map_err(|e| StepError::new("tty", "/dev/ptmx", e))?;
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK takes a pointer to an int.
    let ret = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) };
    sys::check(ret.into()).map_err(|e| StepError::new("tty", "/dev/ptmx", e))?;
    // TIOCGPTPEER opens the slave through the master, with no path lookup.
    // SAFETY: the ioctl returns a new fd or -1.
    let slave = unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY,
        )
    };
    let slave = sys::check(slave.into()).map_err(|e| StepError::new("tty", "/dev/pts", e))?;
    // SAFETY: fresh fd from the kernel.
    let slave = unsafe { OwnedFd::from_raw_fd(slave as RawFd) };
    // SAFETY: valid fd, owner ids are plain integers.
    let ret = unsafe {
        libc::fchown(
            slave.as_raw_fd(),
            spec.user.init_ns_uid,
            spec.user.init_ns_gid,
        )
    };
    sys::check(ret.into()).map_err(|e| StepError::new("tty", "/dev/pts", e))?;
    set_winsize(master.as_raw_fd(), rows, cols);
    Ok((master, slave))
}

/// Best effort: a pty without a size still works.
pub fn set_winsize(fd: RawFd, rows: u16, cols: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize struct.
    unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) };
}

/// How a process added to the running sandbox (`sandbox exec`) differs
/// from the command: it joins the command's user namespace instead of
/// getting a new one (so its maps, and what its capabilities reach, are
/// the command's), and it may bring its own stdio.
#[derive(Debug, Clone, Copy)]
pub struct Join {
    /// `/proc/<command>/ns/user`, opened by init when the command started.
    pub userns: RawFd,
    /// stdin, stdout, stderr (ignored with a pty).
    pub stdio: Option<[RawFd; 3]>,
}

/// Start the command. Returns once `execve` has succeeded or failed.
pub fn spawn(spec: &InitSpec) -> Result<Child, SpawnError> {
    spawn_inner(spec, None)
}

/// Start one more process with the command's confinement (everything
/// `spec` says, in the command's user namespace). Returns once `execve`
/// has succeeded or failed.
pub fn spawn_joined(spec: &InitSpec, join: Join) -> Result<Child, SpawnError> {
    spawn_inner(spec, Some(join))
}

fn spawn_inner(spec: &InitSpec, join: Option<Join>) -> Result<Child, SpawnError> {
    let prep = prepare(spec)?;
    let pty = match spec.tty {
        Some(t) => Some(open_pty(spec, t.rows, t.cols).map_err(SpawnError::Setup)?),
        None => None,
    };
    // A labelled command cannot use the caller's stdio when it carries a
    // category range (MCS): give it sockets made at level s0 and relay.
    let relay = match (&spec.confine.exec_label, &pty, join) {
        (Some(_), None, None) => Some(relay_sockets().map_err(SpawnError::Setup)?),
        _ => None,
    };
    let pipe_err = |e| SpawnError::Setup(StepError::new("exec", "pipe", e));
    let (sync_r, sync_w) = sys::pipe().map_err(pipe_err)?;
    let (err_r, err_w) = sys::pipe().map_err(pipe_err)?;

    // A joining process enters the command's namespace in the child.
    let newuser = if join.is_some() {
        0
    } else {
        libc::CLONE_NEWUSER
    };
    // SAFETY: init is single-threaded, so the child may continue like
    // after fork(2). CLONE_NEWUSER puts the child in a fresh user
    // namespace whose maps we write below.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (newuser | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid < 0 {
        return Err(SpawnError::Setup(StepError::new(
            "exec",
            "clone",
            sys::errno(),
        )));
    }
    if pid == 0 {
        drop(sync_w);
        drop(err_r);
        let slave = pty.as_ref().map(|(_, s)| s.as_raw_fd());
        let stdio = relay
            .as_ref()
            .map(|r| [r[0].1.as_raw_fd(), r[1].1.as_raw_fd(), r[2].1.as_raw_fd()])
            .or(join.and_then(|j| j.stdio).filter(|_| slave.is_none()));
        let ends = ChildFds {
            sync: sync_r.as_raw_fd(),
            err: err_w.as_raw_fd(),
            userns: join.map(|j| j.userns),
        };
        child_main(&prep, ends, slave, stdio);
    }
    let pid = pid as libc::pid_t;
    drop(sync_r);
    drop(err_w);
    let master = pty.map(|(m, _slave)| m);

    let maps = if join.is_some() {
        Ok(())
    } else {
        write_maps(pid, spec)
    };
    if let Err(e) = maps {
        // SAFETY: killing and reaping our own child.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        return Err(SpawnError::Setup(e));
    }
    // Release the child.
    let _ = sys::write_all(sync_w.as_raw_fd(), b"g");
    drop(sync_w);

    let mut report = [0u8; 5];
    let mut got = 0;
    while got < report.len() {
        match sys::read(err_r.as_raw_fd(), &mut report[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    if got == 0 {
        let landlock_abi = prep.landlock.as_ref().map_or(0, |r| r.abi);
        let relay = relay.map(|[(a, _), (b, _), (c, _)]| [a, b, c]);
        return Ok(Child {
            pid,
            master,
            landlock_abi,
            relay,
        });
    }
    // SAFETY: reaping our own child, which exits right after reporting.
    unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    let errno = i32::from_le_bytes([report[1], report[2], report[3], report[4]]);
    let kind = report[0];
    if kind == K_EXEC {
        let not_found = errno == libc::ENOENT || errno == libc::ENOTDIR;
        Err(SpawnError::Exec {
            program: spec.argv[0].clone(),
            errno,
            not_found,
        })
    } else {
        let path: &[u8] = if kind == K_WORKDIR { &spec.cwd } else { b"" };
        Err(SpawnError::Setup(StepError::new(
            kind_step(kind),
            path,
            errno,
        )))
    }
}

fn write_maps(pid: libc::pid_t, spec: &InitSpec) -> Result<(), StepError> {
    let u = &spec.user;
    let file = |name: &str, data: &[u8]| {
        let path = format!("/proc/{pid}/{name}");
        let cpath = cstring(path.as_bytes()).map_err(|e| StepError::new("id-maps", &path, e))?;
        sys::write_file(&cpath, data).map_err(|e| StepError::new("id-maps", &path, e))
    };
    if !u.allow_setgroups {
        file("setgroups", b"deny")?;
    }
    file("gid_map", u.gid_map.as_bytes())?;
    file("uid_map", u.uid_map.as_bytes())
}

/// Report a failure to init and exit. Never returns.
fn fail(err_fd: RawFd, kind: u8, errno: Errno) -> ! {
    let e = errno.to_le_bytes();
    let _ = sys::write_all(err_fd, &[kind, e[0], e[1], e[2], e[3]]);
    // SAFETY: _exit is always safe; no destructors must run in the child.
    unsafe { libc::_exit(127) }
}

fn ok_or_fail(ret: libc::c_long, err_fd: RawFd, kind: u8) {
    if ret == -1 {
        fail(err_fd, kind, sys::errno());
    }
}

/// The child's ends: the go pipe, the error pipe, and the user namespace
/// to join (`sandbox exec`).
struct ChildFds {
    sync: RawFd,
    err: RawFd,
    userns: Option<RawFd>,
}

/// The child between `clone` and `execve`. Allocates nothing.
fn child_main(p: &Prepared, fds: ChildFds, slave: Option<RawFd>, stdio: Option<[RawFd; 3]>) -> ! {
    let (sync_fd, err_fd) = (fds.sync, fds.err);
    let mut b = [0u8; 1];
    match sys::read(sync_fd, &mut b) {
        Ok(1) => {}
        Ok(_) => fail(err_fd, K_SYNC, libc::EPIPE),
        Err(e) => fail(err_fd, K_SYNC, e),
    }
    if let Some(ns) = fds.userns {
        // SAFETY: setns on an fd init opened; the child is single-threaded
        // and shares no fs state (no CLONE_FS), as setns(CLONE_NEWUSER)
        // requires. It then holds every capability of that namespace and
        // drops them below exactly as the command did.
        let r = unsafe { libc::setns(ns, libc::CLONE_NEWUSER) };
        ok_or_fail(r.into(), err_fd, K_IDS);
    }
    // SAFETY: (whole block) plain system calls on integers and fds we own;
    // every pointer passed points to live, initialised memory in `p`.
    unsafe {
        ok_or_fail(libc::setsid().into(), err_fd, K_SETSID);
        if let Some(s) = slave {
            ok_or_fail(libc::ioctl(s, libc::TIOCSCTTY, 0).into(), err_fd, K_TTY);
            for target in 0..3 {
                ok_or_fail(libc::dup2(s, target).into(), err_fd, K_TTY);
            }
        }
        if let Some(fds) = stdio {
            for (target, fd) in fds.iter().enumerate() {
                ok_or_fail(libc::dup2(*fd, target as RawFd).into(), err_fd, K_LABEL);
            }
        }
        // Keep the permitted set across the uid change below so that the
        // capabilities asked for can be kept; all others go now.
        ok_or_fail(
            libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0).into(),
            err_fd,
            K_PRIVS,
        );
        drop_bounding(p.keep_caps, err_fd);
        if p.allow_setgroups {
            ok_or_fail(
                libc::setgroups(p.groups.len(), p.groups.as_ptr()).into(),
                err_fd,
                K_IDS,
            );
        }
        ok_or_fail(libc::setresgid(p.gid, p.gid, p.gid).into(), err_fd, K_IDS);
        ok_or_fail(libc::setresuid(p.uid, p.uid, p.uid).into(), err_fd, K_IDS);
        ok_or_fail(libc::chdir(p.cwd.as_ptr()).into(), err_fd, K_WORKDIR);
        ok_or_fail(
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0).into(),
            err_fd,
            K_PRIVS,
        );
        set_capabilities(p.keep_caps, err_fd);
        ok_or_fail(
            libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0).into(),
            err_fd,
            K_PRIVS,
        );
        for sig in 1..libc::SIGRTMAX() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        close_range_cloexec(3);
        if let Some(label) = &p.exec_label {
            set_exec_label(label, err_fd);
        }
        if let Some(ruleset) = &p.landlock {
            if let Err(e) = ruleset.restrict() {
                fail(err_fd, K_LANDLOCK, e);
            }
        }
        // Last: from here on the filter judges every call, execve included.
        if !p.seccomp.is_empty() {
            let prog = libc::sock_fprog {
                len: p.seccomp.len() as u16,
                filter: p.seccomp.as_ptr() as *mut libc::sock_filter,
            };
            let ret = libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const libc::sock_fprog,
                0,
                0,
            );
            ok_or_fail(ret.into(), err_fd, K_SECCOMP);
        }
    }
    exec_candidates(p, err_fd)
}

/// Drop every capability not in `keep` from the bounding set.
fn drop_bounding(keep: u64, err_fd: RawFd) {
    for cap in 0..64u64 {
        if keep & (1 << cap) != 0 {
            continue;
        }
        // SAFETY: PR_CAPBSET_DROP with an integer; EINVAL past the last
        // capability the kernel knows is expected and ignored.
        let ret = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        if ret == -1 && sys::errno() != libc::EINVAL {
            fail(err_fd, K_PRIVS, sys::errno());
        }
    }
}

/// Set effective, permitted and inheritable to exactly `keep`, and the
/// ambient set too, so that the kept capabilities survive `execve` of an
/// ordinary binary by a non-root user.
fn set_capabilities(keep: u64, err_fd: RawFd) {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let lo = keep as u32;
    let hi = (keep >> 32) as u32;
    let header = Header {
        version: 0x2008_0522,
        pid: 0,
    };
    let data = [
        Data {
            effective: lo,
            permitted: lo,
            inheritable: lo,
        },
        Data {
            effective: hi,
            permitted: hi,
            inheritable: hi,
        },
    ];
    // SAFETY: capset with a v3 header and two data elements, as required.
    let ret = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
    ok_or_fail(ret, err_fd, K_PRIVS);
    // SAFETY: plain prctl.
    let ret = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    if ret == -1 && sys::errno() != libc::EINVAL {
        fail(err_fd, K_PRIVS, sys::errno());
    }
    for cap in 0..64u64 {
        if keep & (1 << cap) != 0 {
            // SAFETY: plain prctl; the capability is permitted and
            // inheritable, as PR_CAP_AMBIENT_RAISE requires.
            let ret =
                unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_RAISE, cap, 0, 0) };
            ok_or_fail(ret.into(), err_fd, K_PRIVS);
        }
    }
}

/// Three socketpairs for relayed stdio, created at init's own context
/// lowered to level `s0` (`attr/sockcreate`), so that a command with any
/// category pair may use them. Returns (init's end, command's end).
fn relay_sockets() -> Result<[(OwnedFd, OwnedFd); 3], StepError> {
    let current = std::fs::read_to_string("/proc/thread-self/attr/current").map_err(|e| {
        StepError::new(
            "security-label",
            "attr/current",
            e.raw_os_error().unwrap_or(libc::EIO),
        )
    })?;
    let current = current.trim_end_matches(['\0', '\n']);
    let base: Vec<&str> = current.splitn(4, ':').take(3).collect();
    let low = format!("{}:s0", base.join(":"));
    let set = |ctx: &[u8]| {
        std::fs::write("/proc/thread-self/attr/sockcreate", ctx).map_err(|e| {
            StepError::new(
                "security-label",
                "attr/sockcreate",
                e.raw_os_error().unwrap_or(libc::EIO),
            )
        })
    };
    set(low.as_bytes())?;
    let mut pairs = Vec::with_capacity(3);
    for _ in 0..3 {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for two descriptors.
        let r = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        if r != 0 {
            let e = sys::errno();
            let _ = set(b"");
            return Err(StepError::new("security-label", "socketpair", e));
        }
        // SAFETY: two fresh descriptors owned by nobody else.
        pairs.push(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) });
    }
    set(b"")?;
    let mut it = pairs.into_iter();
    match (it.next(), it.next(), it.next()) {
        (Some(a), Some(b), Some(c)) => Ok([a, b, c]),
        _ => Err(StepError::new("security-label", "socketpair", libc::EIO)),
    }
}

/// Ask SELinux to run the next `execve` in `label`.
fn set_exec_label(label: &CString, err_fd: RawFd) {
    // SAFETY: opening a procfs file; the fd is closed below.
    let fd = unsafe {
        libc::open(
            c"/proc/thread-self/attr/exec".as_ptr(),
            libc::O_WRONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        fail(err_fd, K_LABEL, sys::errno());
    }
    let bytes = label.as_bytes();
    // SAFETY: writing the label bytes to our own fd.
    let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
    let e = sys::errno();
    // SAFETY: closing the fd we opened.
    unsafe { libc::close(fd) };
    if n != bytes.len() as isize {
        fail(err_fd, K_LABEL, if n < 0 { e } else { libc::EIO });
    }
}

/// Mark every fd >= `from` close-on-exec.
fn close_range_cloexec(from: u32) {
    const CLOSE_RANGE_CLOEXEC: u32 = 1 << 2;
    // SAFETY: close_range only changes fd flags.
    let ret = unsafe { libc::syscall(libc::SYS_close_range, from, u32::MAX, CLOSE_RANGE_CLOEXEC) };
    if ret == -1 {
        // Old kernel (< 5.11): fall back to a bounded loop.
        for fd in from..4096 {
            // SAFETY: fcntl on a possibly closed fd just fails with EBADF.
            unsafe { libc::fcntl(fd as RawFd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
}

fn exec_candidates(p: &Prepared, err_fd: RawFd) -> ! {
    let mut last = libc::ENOENT;
    let mut saw_eacces = false;
    for cand in &p.candidates {
        // SAFETY: NULL-terminated arrays of valid C strings.
        unsafe { libc::execve(cand.as_ptr(), p.argv_ptrs.as_ptr(), p.envp_ptrs.as_ptr()) };
        last = sys::errno();
        match last {
            libc::ENOENT | libc::ENOTDIR => continue,
            libc::EACCES => {
                saw_eacces = true;
                continue;
            }
            _ => break,
        }
    }
    if saw_eacces && (last == libc::ENOENT || last == libc::ENOTDIR) {
        last = libc::EACCES;
    }
    fail(err_fd, K_EXEC, last)
}
