//! The namespace backend: start `sandbox-init` as PID 1 of fresh
//! namespaces and hand it the [`InitSpec`].
//!
//! Launcher side of the setup (init's side is in `init/src/setup.rs`):
//! 1. open `sandbox-init` (`O_PATH`) and a control `socketpair`;
//! 2. `clone3(CLONE_NEWUSER | NEWNS | NEWPID | NEWIPC | NEWUTS [| NEWNET],
//!    CLONE_PIDFD)`; the child sets `PR_SET_PDEATHSIG` and waits for a go
//!    byte;
//! 3. the launcher writes the child's `setgroups`, `gid_map`, `uid_map`
//!    (rootless: its own uid/gid as root of the namespace; as root: the
//!    identity map), calls the `place` hook (cgroup v1: the launcher opens
//!    the `tasks` file of every hierarchy used; init creates the cgroup
//!    namespace itself, once inside), with `--network nat` sets up the
//!    network (`crate::net::attach`: pasta, the firewall, the resolver),
//!    then sends the go byte with those descriptors attached
//!    (`SCM_RIGHTS`);
//! 4. the child (which has already moved the channel to fd 3 and closed
//!    every other fd except stdio and init) writes `0` to each `tasks`
//!    descriptor, which moves it into the sandbox cgroup, closes them and
//!    `execveat`s init with an empty environment;
//! 5. init says `Hello`; the launcher sends `Start(InitSpec)`; init answers
//!    `Started` (with the pty master) or a structured failure.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use sandbox_proto::{
    Confine, Enforced, FsSpec, HostMsg, InitMsg, InitSpec, LandlockSpec, Mount, RootSource,
    SetupError, SysMode, TtySpec, UserSpec, PROTOCOL_VERSION,
};

use crate::chan::{ChanError, Channel};
use crate::errors::{errno_name, errno_text};
use crate::initbin::{self, InitBinError};
use crate::spec::{MountSpec, Network, Spec};
use crate::sys;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    InitBin(#[from] InitBinError),
    #[error("{what}: {reason}")]
    Sys { what: &'static str, reason: String },
    #[error("cannot start sandbox-init ({path}): {reason}")]
    InitExec { path: PathBuf, reason: String },
    #[error(
        "sandbox-init speaks protocol {got}, this launcher {PROTOCOL_VERSION}: reinstall both"
    )]
    Version { got: u32 },
    #[error("unexpected message from sandbox-init during setup: {0}")]
    Protocol(String),
    #[error(transparent)]
    Chan(#[from] ChanError),
    #[error(transparent)]
    Net(#[from] crate::net::NetError),
    #[error("{}", setup_message(.0))]
    Setup(SetupError),
    #[error("{}: {}", String::from_utf8_lossy(.program), exec_reason(*.errno, *.not_found))]
    Exec {
        program: Vec<u8>,
        errno: i32,
        not_found: bool,
    },
}

fn exec_reason(errno: i32, not_found: bool) -> String {
    if not_found {
        "command not found".into()
    } else {
        format!("cannot execute: {}", errno_text(errno))
    }
}

/// One line describing a structured setup failure.
pub fn setup_message(e: &SetupError) -> String {
    let mut s = format!("setup step '{}' failed", e.step);
    if let Some(p) = &e.path {
        if !p.is_empty() {
            s.push_str(&format!(" on {}", String::from_utf8_lossy(p)));
        }
    }
    if e.errno != 0 {
        s.push_str(&format!(
            ": {} ({})",
            errno_text(e.errno),
            errno_name(e.errno)
        ));
    }
    if !e.detail.is_empty() {
        s.push_str(&format!(": {}", e.detail));
    }
    s
}

fn sys_err(what: &'static str) -> impl Fn(io::Error) -> StartError {
    move |e| StartError::Sys {
        what,
        reason: crate::errors::io_reason(&e),
    }
}

/// A running sandbox.
#[derive(Debug)]
pub struct Running {
    pub pidfd: OwnedFd,
    pub init_pid: libc::pid_t,
    pub chan: Channel,
    /// The pty master when the command has a terminal.
    pub master: Option<OwnedFd>,
    /// The command's pid inside the sandbox.
    pub command_pid: i32,
    /// What init reported as enforced.
    pub enforced: Enforced,
    /// The network of `--network nat` (stopped when dropped).
    pub net: Option<crate::net::Active>,
}

/// Kills and reaps init if setup does not complete.
struct InitGuard {
    pidfd: Option<OwnedFd>,
}

impl Drop for InitGuard {
    fn drop(&mut self) {
        if let Some(fd) = self.pidfd.take() {
            let _ = sys::pidfd_send_signal(&fd, libc::SIGKILL);
            let _ = sys::wait_pidfd(&fd);
        }
    }
}

/// The namespaces every sandbox gets (the network one unless `host`).
pub fn namespaces(spec: &Spec) -> Vec<&'static str> {
    let mut v = vec!["user", "mount", "pid", "ipc", "uts", "cgroup"];
    if spec.network.own_netns() {
        v.push("net");
    }
    v
}

fn bytes(p: &std::path::Path) -> Vec<u8> {
    p.as_os_str().as_bytes().to_vec()
}

/// Translate the backend-neutral spec into init's instructions.
///
/// `prepared` lists the mounts (by index in `spec.mounts`) that the
/// launcher made itself; they become `Mount::Prepared`, numbered in order.
/// The 9p variants (`RootSource::Share`, `Mount::Share`) belong to the
/// micro-VM backend and are never produced here; init in namespace mode
/// answers them with a `SetupFailed`.
pub fn init_spec(spec: &Spec, caller_uid: u32, prepared: &[usize]) -> InitSpec {
    let rootless = caller_uid != 0;
    let (u, g) = (spec.user.uid, spec.user.gid);
    let user = if rootless {
        // Outer namespace: root = the caller. Command namespace: the
        // requested ids = outer root = the caller on the host.
        UserSpec {
            uid: u,
            gid: g,
            groups: Vec::new(),
            uid_map: format!("{u} 0 1\n"),
            gid_map: format!("{g} 0 1\n"),
            allow_setgroups: false,
            init_ns_uid: 0,
            init_ns_gid: 0,
        }
    } else {
        UserSpec {
            uid: u,
            gid: g,
            groups: Vec::new(),
            uid_map: "0 0 4294967295\n".into(),
            gid_map: "0 0 4294967295\n".into(),
            allow_setgroups: true,
            init_ns_uid: u,
            init_ns_gid: g,
        }
    };
    let mounts = spec
        .mounts
        .iter()
        .enumerate()
        .map(|(i, m)| match m {
            MountSpec::Bind { dst, readonly, .. } if prepared.contains(&i) => Mount::Prepared {
                dst: bytes(dst),
                readonly: *readonly,
                fd: prepared.iter().position(|p| *p == i).unwrap_or(0) as u32,
            },
            MountSpec::Bind { src, dst, readonly } => Mount::Bind {
                src: bytes(src),
                dst: bytes(dst),
                readonly: *readonly,
            },
            MountSpec::Tmpfs { dst, size, mode } => Mount::Tmpfs {
                dst: bytes(dst),
                size: *size,
                mode: *mode,
            },
        })
        .collect();
    let tty = spec.tty.then(|| {
        let (rows, cols) = crate::tty::window_size(0).unwrap_or((24, 80));
        TtySpec { rows, cols }
    });
    InitSpec {
        argv: spec.argv.iter().map(|a| a.as_bytes().to_vec()).collect(),
        env: spec
            .env
            .iter()
            .map(|(k, v)| {
                let mut e = k.as_bytes().to_vec();
                e.push(b'=');
                e.extend_from_slice(v.as_bytes());
                e
            })
            .collect(),
        cwd: bytes(&spec.workdir),
        create_cwd: true,
        user,
        hostname: spec.hostname.as_bytes().to_vec(),
        fs: FsSpec {
            root: RootSource::HostBind,
            sys: if spec.network.own_netns() {
                SysMode::Fresh
            } else {
                SysMode::HostReadOnly
            },
            mounts,
            masked: spec.masked.iter().map(|p| bytes(p)).collect(),
            readonly: spec.readonly.iter().map(|p| bytes(p)).collect(),
            scratch_size: spec.scratch_size,
            cgroup2: spec.network.own_netns() && host_is_cgroup2(),
        },
        loopback_up: spec.network.own_netns(),
        tty,
        confine: Confine {
            caps: spec.cap_add.clone(),
            seccomp: crate::security::seccomp::encode(spec.seccomp.program()),
            landlock: landlock_spec(spec),
            exec_label: spec.exec_label.clone(),
        },
        vm: None,
    }
}

/// The Landlock rules matching the mount layout: everything readable,
/// writable only where a writable mount is.
fn landlock_spec(spec: &Spec) -> Option<LandlockSpec> {
    if spec.landlock == crate::spec::Landlock::Off {
        return None;
    }
    let mut write: Vec<Vec<u8>> = ["/tmp", "/run", "/dev/shm"]
        .iter()
        .map(|p| p.as_bytes().to_vec())
        .collect();
    for m in &spec.mounts {
        match m {
            MountSpec::Bind {
                dst,
                readonly: false,
                ..
            }
            | MountSpec::Tmpfs { dst, .. } => write.push(bytes(dst)),
            MountSpec::Bind { .. } => {}
        }
    }
    Some(LandlockSpec {
        required: spec.landlock == crate::spec::Landlock::Require,
        read: vec![b"/".to_vec()],
        write,
        devices: vec![b"/dev".to_vec(), b"/proc".to_vec()],
    })
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Whether the host's `/sys/fs/cgroup` is a pure cgroup v2 mount.
pub fn host_is_cgroup2() -> bool {
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    // SAFETY: zeroed statfs is a valid out-parameter.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and writable buffer.
    let r = unsafe { libc::statfs(c"/sys/fs/cgroup".as_ptr(), &mut st) };
    r == 0 && st.f_type as i64 == CGROUP2_SUPER_MAGIC
}

#[repr(C)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Start a sandbox for `spec` and its command. On any failure nothing is
/// left running.
///
/// `place` runs after the id maps are written and before init may run: it
/// puts init into the sandbox's cgroup, or returns the cgroup v1 `tasks`
/// files (opened for writing) into which the child moves itself before it
/// executes init (at most [`GO_MAX_FDS`]), or does nothing.
///
/// `prepared` are mounts the launcher made itself (idmapped volumes), as
/// (index in `spec.mounts`, detached mount fd).
///
/// `into_cgroup`, a cgroup v2 directory fd, makes init start inside that
/// cgroup (`CLONE_INTO_CGROUP`), which avoids the cost of migrating it.
pub fn start(
    spec: &Spec,
    prepared: Vec<(usize, OwnedFd)>,
    into_cgroup: Option<RawFd>,
    place: impl FnOnce(libc::pid_t) -> Result<Vec<OwnedFd>, StartError>,
) -> Result<Running, StartError> {
    // SAFETY: no preconditions.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let (init_fd, init_path) = initbin::open()?;
    let (parent_end, child_end) = sys::socketpair().map_err(sys_err("socketpair"))?;

    let mut flags = libc::CLONE_NEWUSER
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS
        | libc::CLONE_PIDFD;
    if spec.network.own_netns() {
        flags |= libc::CLONE_NEWNET;
    }
    let argv0 = c"sandbox-init";
    let argv: [*const libc::c_char; 2] = [argv0.as_ptr(), std::ptr::null()];
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];

    let mut pidfd: RawFd = -1;
    let args = CloneArgs {
        flags: flags as u64,
        pidfd: &mut pidfd as *mut RawFd as u64,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: libc::SIGCHLD as u64,
        stack: 0,
        stack_size: 0,
        tls: 0,
        set_tid: 0,
        set_tid_size: 0,
        cgroup: into_cgroup.map_or(0, |fd| fd as u64),
    };
    let flags_in = if into_cgroup.is_some() {
        CLONE_INTO_CGROUP
    } else {
        0
    };
    let args = CloneArgs {
        flags: args.flags | flags_in,
        ..args
    };
    // SAFETY: fork-like clone3 (no new stack). Only this thread is copied
    // (a cgroup helper thread may be running); the child only runs
    // `child_exec`, which makes async-signal-safe system calls, allocates
    // nothing and never returns.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if pid == 0 {
        child_exec(child_end.as_raw_fd(), init_fd.as_raw_fd(), &argv, &envp);
    }
    if pid < 0 {
        let e = io::Error::last_os_error();
        let hint = match e.raw_os_error() {
            Some(libc::EPERM) | Some(libc::ENOSPC) | Some(libc::EUSERS) => {
                ": user namespaces may be disabled (check kernel.unprivileged_userns_clone, \
                 user.max_user_namespaces, or an AppArmor/SELinux userns restriction)"
            }
            Some(libc::ENOSYS) => ": clone3(2) is missing: Linux 5.3 or newer is required",
            _ => "",
        };
        return Err(StartError::Sys {
            what: "cannot create namespaces (clone3)",
            reason: format!("{}{hint}", crate::errors::io_reason(&e)),
        });
    }
    // SAFETY: CLONE_PIDFD stored a fresh pidfd that we now own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    let init_pid = pid as libc::pid_t;
    drop(child_end);
    drop(init_fd);
    let mut guard = InitGuard { pidfd: Some(pidfd) };

    write_outer_maps(init_pid, uid, gid).map_err(|e| StartError::Sys {
        what: "cannot write the user namespace id maps",
        reason: crate::errors::io_reason(&e),
    })?;
    let tasks = place(init_pid)?;
    if tasks.len() > GO_MAX_FDS {
        return Err(StartError::Sys {
            what: PLACE_FAILED,
            reason: format!("{} cgroup hierarchies, at most {GO_MAX_FDS}", tasks.len()),
        });
    }
    // The network is in place before init may run anything.
    let mut net = match spec.network {
        Network::Nat => Some(crate::net::attach(&spec.net, &spec.name, init_pid)?),
        Network::None | Network::Host => None,
    };
    let raw: Vec<RawFd> = tasks.iter().map(AsRawFd::as_raw_fd).collect();
    send_go(parent_end.as_raw_fd(), &raw).map_err(sys_err("control channel"))?;
    drop(tasks);
    let mut chan = Channel::new(parent_end);

    match chan.recv() {
        Ok(InitMsg::Hello { version }) if version == PROTOCOL_VERSION => {}
        Ok(InitMsg::Hello { version }) => return Err(StartError::Version { got: version }),
        Ok(other) => return Err(StartError::Protocol(format!("{other:?}"))),
        Err(ChanError::Closed) => {
            // The child exits with the errno of a failed execveat.
            let fd = guard
                .pidfd
                .take()
                .ok_or(StartError::Protocol("no pidfd".into()))?;
            let status = sys::wait_pidfd(&fd).unwrap_or(0);
            if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == EXIT_PLACE_FAILED {
                return Err(StartError::Sys {
                    what: PLACE_FAILED,
                    reason: "the sandbox's first process could not write to the `tasks` file \
                             of a cgroup v1 hierarchy"
                        .into(),
                });
            }
            let reason = if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) != 0 {
                errno_text(libc::WEXITSTATUS(status))
            } else {
                "it exited before the handshake".into()
            };
            return Err(StartError::InitExec {
                path: init_path,
                reason,
            });
        }
        Err(e) => return Err(e.into()),
    }

    let indices: Vec<usize> = prepared.iter().map(|(i, _)| *i).collect();
    let fds: Vec<RawFd> = prepared.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
    let mut ispec = init_spec(spec, uid, &indices);
    if let Some(resolv) = net.as_ref().and_then(|n| n.resolv_conf.as_ref()) {
        ispec.fs.mounts.push(Mount::Bind {
            src: bytes(resolv),
            dst: b"/etc/resolv.conf".to_vec(),
            readonly: true,
        });
    }
    chan.send_with_fds(&HostMsg::Start(Box::new(ispec)), &fds)?;
    drop(prepared);
    match chan.recv()? {
        InitMsg::Started { pid, pty, enforced } => {
            let master = if pty {
                Some(chan.take_fd().ok_or_else(|| {
                    StartError::Protocol("init reported a pty but sent no fd".into())
                })?)
            } else {
                None
            };
            let pidfd = guard
                .pidfd
                .take()
                .ok_or(StartError::Protocol("no pidfd".into()))?;
            if let Some(n) = net.as_mut() {
                n.started();
            }
            Ok(Running {
                pidfd,
                init_pid,
                chan,
                master,
                command_pid: pid,
                enforced,
                net,
            })
        }
        InitMsg::SetupFailed(e) => Err(StartError::Setup(e)),
        InitMsg::ExecFailed {
            program,
            errno,
            not_found,
        } => Err(StartError::Exec {
            program,
            errno,
            not_found,
        }),
        other => Err(StartError::Protocol(format!("{other:?}"))),
    }
}

fn write_outer_maps(pid: libc::pid_t, uid: u32, gid: u32) -> io::Result<()> {
    let (uid_map, gid_map) = if uid == 0 {
        (
            "0 0 4294967295\n".to_string(),
            "0 0 4294967295\n".to_string(),
        )
    } else {
        std::fs::write(format!("/proc/{pid}/setgroups"), "deny")?;
        (format!("0 {uid} 1\n"), format!("0 {gid} 1\n"))
    };
    std::fs::write(format!("/proc/{pid}/gid_map"), gid_map)?;
    std::fs::write(format!("/proc/{pid}/uid_map"), uid_map)
}

/// The error of a sandbox that could not be placed in its cgroup.
pub const PLACE_FAILED: &str = "cannot move the sandbox into its cgroup";

/// The clone child's exit status when it cannot move itself into its
/// cgroup (any other status is the errno of a failed step; errnos are
/// below 134).
const EXIT_PLACE_FAILED: i32 = 250;

/// Most `tasks` descriptors the go byte may carry (the child's control
/// buffer has room for them).
pub const GO_MAX_FDS: usize = 16;

/// Send the go byte, with `fds` attached when there are any.
fn send_go(sock: RawFd, fds: &[RawFd]) -> io::Result<()> {
    if fds.is_empty() {
        return sys::write_all(sock, b"g");
    }
    let sent = sys::send_with_fds(sock, b"g", fds)?;
    sys::write_all(sock, &b"g"[sent..])
}

/// The clone child: wait for the maps (and, on cgroup v1, move itself into
/// its cgroup), then become `sandbox-init`.
fn child_exec(
    ctrl: RawFd,
    init_fd: RawFd,
    argv: &[*const libc::c_char; 2],
    envp: &[*const libc::c_char; 1],
) -> ! {
    // SAFETY: (whole block) only async-signal-safe system calls on fds
    // and pointers that are valid in this copy of the parent's memory
    // (`msg` points at `b` and `cbuf` on this stack); the CMSG macros are
    // arithmetic that stays within the control data the kernel wrote into
    // `cbuf`, and every descriptor received is closed here.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        // First keep only stdio, the channel (fd 3) and init (fd 4): the
        // launcher's end of the channel and its name lock must not live on
        // here, or a launcher killed right now would leave this process
        // waiting forever on a channel that never reaches end of file.
        let c = libc::fcntl(ctrl, libc::F_DUPFD_CLOEXEC, 10);
        let i = libc::fcntl(init_fd, libc::F_DUPFD_CLOEXEC, 10);
        if c < 0 || i < 0 || libc::dup2(c, 3) < 0 || libc::dup3(i, 4, libc::O_CLOEXEC) < 0 {
            libc::_exit(*libc::__errno_location());
        }
        if libc::syscall(libc::SYS_close_range, 5u32, u32::MAX, 0u32) != 0 {
            for fd in 5..65536 {
                libc::close(fd);
            }
        }
        // Leave the caller's process group: terminal signals (^C, window
        // changes) reach the launcher alone, which forwards them once.
        libc::setpgid(0, 0);
        // The go byte, with the `tasks` files of a v1 cgroup attached.
        let mut b = 0u8;
        let mut iov = libc::iovec {
            iov_base: (&mut b as *mut u8).cast(),
            iov_len: 1,
        };
        // Room for GO_MAX_FDS descriptors (16-byte header + 4 bytes each).
        let mut cbuf = [0u64; 16];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cbuf) as _;
        let mut n = libc::recvmsg(3, &mut msg, libc::MSG_CMSG_CLOEXEC);
        while n < 0 && *libc::__errno_location() == libc::EINTR {
            n = libc::recvmsg(3, &mut msg, libc::MSG_CMSG_CLOEXEC);
        }
        if n != 1 {
            libc::_exit(libc::EPIPE);
        }
        // Writing "0" to a v1 `tasks` file moves the writing thread, this
        // whole single-threaded process, without the kernel's threadgroup
        // lock (see `Cgroup::v1_task_files`).
        let mut failed = msg.msg_flags & libc::MSG_CTRUNC != 0;
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<libc::c_int>();
                let len = ((*cmsg).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
                for k in 0..len / std::mem::size_of::<libc::c_int>() {
                    let fd = std::ptr::read_unaligned(data.add(k));
                    let mut w = libc::write(fd, b"0".as_ptr().cast(), 1);
                    while w < 0 && *libc::__errno_location() == libc::EINTR {
                        w = libc::write(fd, b"0".as_ptr().cast(), 1);
                    }
                    failed |= w != 1;
                    libc::close(fd);
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        if failed {
            libc::_exit(EXIT_PLACE_FAILED);
        }
        libc::syscall(
            libc::SYS_execveat,
            4,
            c"".as_ptr(),
            argv.as_ptr(),
            envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        );
        libc::_exit(*libc::__errno_location());
    }
}
