//! `sandbox run -d`: the launcher forks before it creates anything of the
//! sandbox. The child starts a new session, points its stdio at the log
//! (journald's stream socket when journald runs, else the file `log` in
//! the state directory) and goes on as the supervisor; the parent waits on
//! a pipe until the child reports "started" (then prints the name and
//! exits 0) or a start failure (then prints its message and exits with
//! its status), and exits 125 if the child dies without a word.

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::dir::SandboxDir;
use super::record::LogTarget;
use crate::errors::EXIT_SANDBOX;
use crate::sys;

/// journald's native stream socket (what systemd connects services to).
const JOURNAL_STREAM: &str = "/run/systemd/journal/stdout";

/// The child's end of the report pipe.
#[derive(Debug)]
pub struct Detached {
    report: OwnedFd,
}

impl Detached {
    /// The sandbox runs (and is ready): the caller may go.
    pub fn started(self) {
        let _ = sys::write_all(self.report.as_raw_fd(), b"0\n");
    }

    /// The start failed with this status and message.
    pub fn failed(self, code: i32, message: &str) {
        let line = format!("{code}\n{message}");
        let _ = sys::write_all(self.report.as_raw_fd(), line.as_bytes());
    }
}

/// Fork. In the parent this never returns (it exits with the child's
/// report); in the child it returns the report end.
pub fn fork(name: &str) -> Result<Detached, String> {
    let (r, w) = pipe().map_err(|e| format!("cannot detach: {e}"))?;
    // SAFETY: the launcher is single-threaded at this point (no helper
    // thread exists before the sandbox is started), so the child may
    // continue normally after fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!(
            "cannot detach: fork: {}",
            crate::errors::io_reason(&std::io::Error::last_os_error())
        ));
    }
    if pid > 0 {
        drop(w);
        parent(r, name)
    }
    drop(r);
    // SAFETY: plain setsid in the fresh child: no terminal, no caller's
    // process group (a ^C there must not reach the sandbox).
    unsafe { libc::setsid() };
    Ok(Detached { report: w })
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: two fresh descriptors.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn parent(r: OwnedFd, name: &str) -> ! {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = sys::read(r.as_raw_fd(), &mut buf) {
        if n == 0 || out.len() > 65536 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&out);
    let (code, message) = text.split_once('\n').unwrap_or((&text, ""));
    let code: i32 = match code.trim().parse() {
        Ok(c) => c,
        Err(_) => {
            eprintln!("sandbox: the detached launcher of '{name}' died before it started");
            std::process::exit(EXIT_SANDBOX)
        }
    };
    if code == 0 {
        println!("{name}");
        let _ = std::io::stdout().flush();
    } else if !message.is_empty() {
        eprintln!("sandbox: {message}");
    }
    std::process::exit(code)
}

/// Point stdin at /dev/null and stdout/stderr at the log; returns where
/// the output goes.
pub fn redirect_output(name: &str, dir: &SandboxDir) -> Result<LogTarget, String> {
    let null: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| format!("/dev/null: {e}"))?
        .into();
    dup_onto(null.as_raw_fd(), 0);
    let identifier = format!("sandbox-{name}");
    if let (Some(out), Some(err)) = (
        journal_stream(&identifier, 6),
        journal_stream(&identifier, 3),
    ) {
        dup_onto(out.as_raw_fd(), 1);
        dup_onto(err.as_raw_fd(), 2);
        return Ok(LogTarget::Journald { identifier });
    }
    let log = dir
        .open_file("log", libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND)
        .map_err(|e| e.to_string())?
        .ok_or("cannot create the log file")?;
    dup_onto(log.as_raw_fd(), 1);
    dup_onto(log.as_raw_fd(), 2);
    Ok(LogTarget::File {
        path: dir.path().join("log").to_string_lossy().into_owned(),
    })
}

fn dup_onto(fd: RawFd, target: RawFd) {
    // SAFETY: dup2 onto a standard descriptor.
    unsafe { libc::dup2(fd, target) };
}

/// A stream to journald with `identifier` and syslog `priority`, using
/// journald's stdout-stream protocol (a seven-line header, then lines).
fn journal_stream(identifier: &str, priority: u8) -> Option<OwnedFd> {
    if std::env::var_os("SANDBOX_LOG_FILE").is_some() {
        return None;
    }
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: fresh fd.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let (addr, len) = super::supervisor::sockaddr(std::path::Path::new(JOURNAL_STREAM)).ok()?;
    // SAFETY: valid sockaddr_un of `len` bytes.
    let r = unsafe { libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len) };
    if r != 0 {
        return None;
    }
    // identifier, unit id (empty), priority, level prefix, forward to
    // syslog, kmsg, console.
    let header = format!("{identifier}\n\n{priority}\n0\n0\n0\n0\n");
    sys::write_all(sock.as_raw_fd(), header.as_bytes()).ok()?;
    // SAFETY: shutdown of the read side of our socket.
    unsafe { libc::shutdown(fd, libc::SHUT_RD) };
    Some(sock)
}
