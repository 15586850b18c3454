//! The supervising launcher's side of the lifecycle: the persisted record
//! ([`Tracker`]) and the control socket ([`Control`]).
//!
//! The control socket is `control` in the sandbox's state directory (mode
//! 0600 in a 0700 directory), a non-blocking listening `SOCK_STREAM`
//! socket that `session::supervise` polls next to init's channel. A peer
//! must be the same uid as the launcher or root (`SO_PEERCRED`); others
//! are closed without an answer. Requests become [`Action`]s for the
//! session loop (which owns init's channel), and init's exec messages come
//! back through [`Control::on_init`]. The backend-specific part is only
//! "start one more process with the command's confinement": here
//! `HostMsg::Exec` to our init.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sandbox_proto::{ExecFailure, ExecSpec, ExitStatus, InitMsg, TtySpec};

use super::dir::{DirError, Root, SandboxDir};
use super::record::{Phase, Record};
use super::wire::{ExecRequest, Reader, Reply, Request};
use crate::errors::{signal_status, EXIT_CANNOT_EXEC, EXIT_NOT_FOUND, EXIT_SANDBOX};

pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The record of a live sandbox and its directory. Dropped without
/// `keep`, it removes the directory: a foreground run leaves nothing.
#[derive(Debug)]
pub struct Tracker {
    root: Root,
    pub dir: SandboxDir,
    pub rec: Record,
    /// Keep the directory (and the exited record) at the end: detached runs.
    pub keep: bool,
}

impl Tracker {
    /// Create the directory of `rec.name` and write the record. The caller
    /// holds the name lock, so an existing directory is a leftover (a
    /// crash, or the record of an exited detached run) and is replaced.
    pub fn begin(rec: Record) -> Result<Self, DirError> {
        // With `create`, a missing root is created (or an error), never
        // reported as missing; say so if it ever were.
        let root = Root::open(true)?.ok_or_else(|| DirError::Io {
            path: super::dir::root_path(),
            reason: "vanished while it was created".into(),
        })?;
        if root.exists(&rec.name) {
            root.remove(&rec.name)?;
        }
        let dir = root.create(&rec.name)?;
        let keep = rec.detached;
        let t = Tracker {
            root,
            dir,
            rec,
            keep,
        };
        t.save()?;
        Ok(t)
    }

    pub fn save(&self) -> Result<(), DirError> {
        let data = serde_json::to_vec_pretty(&self.rec).unwrap_or_default();
        self.dir.write("state.json", &data)
    }

    /// Move to `to` and persist; a refused transition or a write error is
    /// reported on stderr (the run itself goes on).
    pub fn set(&mut self, to: Phase) {
        if self.rec.state == to {
            return;
        }
        if let Err(e) = self.rec.transition(to) {
            eprintln!("sandbox: internal error: {e}");
            return;
        }
        if let Err(e) = self.save() {
            eprintln!("sandbox: warning: {e}");
        }
    }

    /// The run ended with `code`. A foreground run's directory is removed
    /// on drop, so only a detached one records the end.
    pub fn finish(&mut self, code: i32) {
        if !self.keep {
            return;
        }
        self.dir.unlink("control");
        self.rec.exit_code = Some(code);
        self.rec.exited_at = Some(now());
        self.set(Phase::Exited);
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        if !self.keep {
            let _ = self.root.remove(&self.rec.name);
        }
    }
}

/// What the session loop must do for a client.
#[derive(Debug)]
pub enum Action {
    /// Send this signal to the command (SIGKILL: kill init, ending all).
    Signal(i32),
    /// SIGTERM now, SIGKILL after the grace period.
    Stop(Duration),
    /// Start a process (`HostMsg::Exec`), these descriptors attached.
    Exec {
        id: u32,
        spec: Box<ExecSpec>,
        fds: Vec<OwnedFd>,
    },
    /// `HostMsg::ExecSignal`.
    ExecSignal { id: u32, sig: i32 },
    /// An exec'd pty's new size: `HostMsg::ExecResize` in a VM, where init
    /// keeps the master (in the namespace backend the client holds the
    /// master and sets the size itself).
    ExecResize { id: u32, rows: u16, cols: u16 },
    /// Nothing to do.
    None,
}

#[derive(Debug)]
struct Client {
    fd: OwnedFd,
    rd: Reader,
    /// The exec id this connection waits for.
    exec: Option<u32>,
    /// Waits for the end of the sandbox (`Stop`).
    waits_end: bool,
    done: bool,
}

/// What the command runs with, the base of every exec.
#[derive(Debug, Clone, Default)]
pub struct ExecBase {
    pub env: Vec<Vec<u8>>,
    pub cwd: Vec<u8>,
}

/// The listening control socket and its connections.
#[derive(Debug)]
pub struct Control {
    listener: OwnedFd,
    clients: Vec<Client>,
    next_id: u32,
    base: ExecBase,
    uid: u32,
}

impl Control {
    /// Bind `control` in the sandbox's directory.
    pub fn bind(dir: &SandboxDir, base: ExecBase) -> std::io::Result<Self> {
        // SAFETY: plain socket(2).
        let fd = unsafe {
            libc::socket(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                0,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fresh fd.
        let listener = unsafe { OwnedFd::from_raw_fd(fd) };
        dir.unlink("control");
        let path = dir.fd_path("control");
        let (addr, len) = sockaddr(&path)?;
        // SAFETY: umask is process-wide but we are single-threaded here;
        // the socket file is created 0600 (the directory is 0700 anyway).
        let old = unsafe { libc::umask(0o177) };
        // SAFETY: valid sockaddr_un of `len` bytes.
        let r = unsafe { libc::bind(fd, (&addr as *const libc::sockaddr_un).cast(), len) };
        // SAFETY: restoring the mask.
        unsafe { libc::umask(old) };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: listen on our socket.
        if unsafe { libc::listen(fd, 64) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Control {
            listener,
            clients: Vec::new(),
            next_id: 1,
            base,
            // SAFETY: no preconditions.
            uid: unsafe { libc::geteuid() },
        })
    }

    /// The descriptors to poll: the listener, then each client.
    pub fn pollfds(&self) -> Vec<libc::pollfd> {
        std::iter::once(self.listener.as_raw_fd())
            .chain(self.clients.iter().map(|c| c.fd.as_raw_fd()))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect()
    }

    /// Handle what `poll` reported for [`Control::pollfds`].
    pub fn handle(&mut self, polled: &[libc::pollfd], ended: bool) -> Vec<Action> {
        let mut actions = Vec::new();
        for (i, p) in polled.iter().enumerate().skip(1) {
            if p.revents == 0 {
                continue;
            }
            let Some(c) = self.clients.get_mut(i - 1) else {
                continue;
            };
            let open = c.rd.fill(c.fd.as_raw_fd());
            while let Some(c) = self.clients.get_mut(i - 1) {
                match c.rd.next_msg::<Request>() {
                    Ok(Some(req)) => {
                        let a = self.request(i - 1, req, ended);
                        actions.extend(a);
                    }
                    Ok(None) => break,
                    Err(message) => {
                        reply(
                            c,
                            &Reply::Error {
                                message,
                                code: EXIT_SANDBOX,
                            },
                        );
                        c.done = true;
                        break;
                    }
                }
            }
            if !open {
                if let Some(c) = self.clients.get_mut(i - 1) {
                    // An exec'd process outlives a client that went away.
                    c.done = true;
                }
            }
        }
        if polled.first().is_some_and(|p| p.revents != 0) {
            self.accept();
        }
        self.clients.retain(|c| !c.done);
        actions
    }

    fn accept(&mut self) {
        loop {
            // SAFETY: accept4 on our listener; null address is allowed.
            let fd = unsafe {
                libc::accept4(
                    self.listener.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC,
                )
            };
            if fd < 0 {
                return;
            }
            // SAFETY: fresh fd.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            match peer_uid(fd.as_raw_fd()) {
                Some(u) if u == self.uid || u == 0 => {}
                _ => continue,
            }
            // Replies are written blocking (small), requests read when
            // poll says so. A client that stops reading cannot stall the
            // supervisor for more than a second per reply.
            let _ = crate::sys::set_nonblocking(fd.as_raw_fd(), false);
            let tv = libc::timeval {
                tv_sec: 1,
                tv_usec: 0,
            };
            // SAFETY: setsockopt with a timeval of the stated size.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_SNDTIMEO,
                    (&tv as *const libc::timeval).cast(),
                    std::mem::size_of::<libc::timeval>() as libc::socklen_t,
                )
            };
            self.clients.push(Client {
                fd,
                rd: Reader::default(),
                exec: None,
                waits_end: false,
                done: false,
            });
        }
    }

    fn request(&mut self, i: usize, req: Request, ended: bool) -> Option<Action> {
        let c = self.clients.get_mut(i)?;
        if ended {
            reply(
                c,
                &Reply::Error {
                    message: "the sandbox is ending".into(),
                    code: EXIT_SANDBOX,
                },
            );
            c.done = true;
            return None;
        }
        if !matches!(req, Request::Exec(_)) {
            // Only an exec request carries descriptors; others are closed.
            c.rd.fds.clear();
        }
        match req {
            Request::Stop { grace_ms } => {
                c.waits_end = true;
                Some(Action::Stop(Duration::from_millis(grace_ms)))
            }
            Request::Kill { signal } => {
                reply(c, &Reply::Ok);
                c.done = true;
                Some(Action::Signal(signal))
            }
            Request::Signal { signal } => c.exec.map(|id| Action::ExecSignal { id, sig: signal }),
            Request::Resize { rows, cols } => c
                .exec
                .map(|id| Action::ExecResize { id, rows, cols })
                .or(Some(Action::None)),
            Request::Exec(e) => {
                if c.exec.is_some() {
                    reply(
                        c,
                        &Reply::Error {
                            message: "one exec per connection".into(),
                            code: EXIT_SANDBOX,
                        },
                    );
                    c.done = true;
                    return None;
                }
                let fds = std::mem::take(&mut c.rd.fds);
                if e.tty.is_none() && fds.len() != 3 {
                    reply(
                        c,
                        &Reply::Error {
                            message: "exec without a terminal needs stdin, stdout and stderr"
                                .into(),
                            code: EXIT_SANDBOX,
                        },
                    );
                    c.done = true;
                    return None;
                }
                let id = self.next_id;
                self.next_id = self.next_id.wrapping_add(1).max(1);
                let spec = exec_spec(&self.base, e);
                let c = self.clients.get_mut(i)?;
                c.exec = Some(id);
                Some(Action::Exec {
                    id,
                    spec: Box::new(spec),
                    fds,
                })
            }
        }
    }

    /// An exec message from init; `fd` is the pty master of `ExecStarted`.
    pub fn on_init(&mut self, msg: &InitMsg, fd: Option<OwnedFd>) {
        let (id, r, end) = match msg {
            InitMsg::ExecStarted { id, pid, .. } => (*id, Reply::Started { pid: *pid }, false),
            InitMsg::ExecNotStarted { id, failure } => (*id, failure_reply(failure), true),
            InitMsg::ExecExited { id, status } => (
                *id,
                Reply::Exited {
                    code: status_code(*status),
                },
                true,
            ),
            _ => return,
        };
        if let Some(c) = self.clients.iter_mut().find(|c| c.exec == Some(id)) {
            let fds: Vec<RawFd> = fd.as_ref().map(AsRawFd::as_raw_fd).into_iter().collect();
            if super::wire::send(c.fd.as_raw_fd(), &r, &fds).is_err() {
                c.done = !end || c.done;
            }
            if end {
                c.done = true;
            }
        }
        self.clients.retain(|c| !c.done);
    }

    /// The sandbox ended with launcher status `code`: answer whoever waits.
    pub fn finish(&mut self, code: i32) {
        for c in &mut self.clients {
            let r = if c.waits_end {
                Reply::Exited { code }
            } else if c.exec.is_some() {
                // Its process was killed with the sandbox.
                Reply::Exited {
                    code: signal_status(libc::SIGKILL),
                }
            } else {
                continue;
            };
            reply(c, &r);
        }
        self.clients.clear();
    }
}

fn reply(c: &Client, r: &Reply) {
    let _ = super::wire::send(c.fd.as_raw_fd(), r, &[]);
}

fn status_code(s: ExitStatus) -> i32 {
    match s {
        ExitStatus::Code(c) => c,
        ExitStatus::Signal(n) => signal_status(n),
    }
}

fn failure_reply(f: &ExecFailure) -> Reply {
    match f {
        ExecFailure::Setup(e) => Reply::Error {
            message: crate::container::setup_message(e),
            code: EXIT_SANDBOX,
        },
        ExecFailure::Exec {
            program,
            errno,
            not_found,
        } => Reply::Error {
            message: if *not_found {
                format!("{}: command not found", String::from_utf8_lossy(program))
            } else {
                format!(
                    "{}: cannot execute: {}",
                    String::from_utf8_lossy(program),
                    crate::errors::errno_text(*errno)
                )
            },
            code: if *not_found {
                EXIT_NOT_FOUND
            } else {
                EXIT_CANNOT_EXEC
            },
        },
    }
}

/// The command's environment with the request's entries added or replaced.
fn exec_spec(base: &ExecBase, e: ExecRequest) -> ExecSpec {
    let key = |kv: &[u8]| -> Vec<u8> { kv.split(|b| *b == b'=').next().unwrap_or(kv).to_vec() };
    let mut env: Vec<Vec<u8>> = base
        .env
        .iter()
        .filter(|kv| !e.env.iter().any(|n| key(n) == key(kv)))
        .cloned()
        .collect();
    env.extend(e.env);
    ExecSpec {
        argv: e.argv,
        env,
        cwd: e.cwd.unwrap_or_else(|| base.cwd.clone()),
        uid: e.uid,
        gid: e.gid,
        tty: e.tty.map(|(rows, cols)| TtySpec { rows, cols }),
    }
}

/// The uid of the peer of a connected unix socket.
pub fn peer_uid(fd: RawFd) -> Option<u32> {
    // SAFETY: zeroed ucred is a valid out-parameter.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (r == 0).then_some(cred.uid)
}

/// A `sockaddr_un` for a filesystem path.
pub fn sockaddr(path: &std::path::Path) -> std::io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: zeroed sockaddr_un is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let b = path.as_os_str().as_bytes();
    if b.len() >= addr.sun_path.len() {
        return Err(std::io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    for (i, c) in b.iter().enumerate() {
        addr.sun_path[i] = *c as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + b.len() + 1;
    Ok((addr, len as libc::socklen_t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_env_overrides_the_command_env() {
        let base = ExecBase {
            env: vec![b"A=1".to_vec(), b"PATH=/bin".to_vec()],
            cwd: b"/w".to_vec(),
        };
        let s = exec_spec(
            &base,
            ExecRequest {
                argv: vec![b"x".to_vec()],
                env: vec![b"A=2".to_vec(), b"B=3".to_vec()],
                ..Default::default()
            },
        );
        assert_eq!(
            s.env,
            [b"PATH=/bin".to_vec(), b"A=2".to_vec(), b"B=3".to_vec()]
        );
        assert_eq!(s.cwd, b"/w");
    }
}
