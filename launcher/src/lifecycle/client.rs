//! The client commands: `sandbox ps`, `inspect`, `stop`, `kill`, `exec`,
//! `logs` and `gc`. Each returns the process exit status: 0, the exec'd
//! command's own status for `exec`, or 125 with a one-line message that
//! names the sandbox and what would be accepted.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use serde_json::{json, Value};

use super::dir::{DirError, Root, SandboxDir};
use super::record::{LogTarget, Phase, Record};
use super::supervisor::{now, sockaddr};
use super::wire::{self, ExecRequest, Reader, Reply, Request};
use crate::errors::EXIT_SANDBOX;
use crate::state::name_is_live;
use crate::sys;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Dir(#[from] DirError),
    #[error("invalid sandbox name '{0}': expected 1-63 of A-Z a-z 0-9 _ . - starting with a letter or digit")]
    BadName(String),
    #[error("no sandbox named '{0}' (see `sandbox ps`)")]
    NotFound(String),
    #[error("sandbox '{name}' is not running: it exited{}", .code.map(|c| format!(" with status {c}")).unwrap_or_default())]
    Exited { name: String, code: Option<i32> },
    #[error(
        "sandbox '{0}' is not running: its launcher died (run `sandbox gc` to remove what it left)"
    )]
    Dead(String),
    #[error("cannot reach sandbox '{name}': {reason}")]
    Connect { name: String, reason: String },
    #[error("invalid signal '{0}': expected a number 1-64 or a name such as TERM, SIGHUP, KILL")]
    BadSignal(String),
    #[error("invalid --user '{0}': expected UID[:GID] (numbers) or root")]
    BadUser(String),
    #[error("invalid --time '{0}': expected a duration such as 10s, 500ms or 2m")]
    BadTime(String),
    #[error("-e {0}: the variable is not set here; use KEY=VALUE")]
    EnvUnset(String),
    #[error("sandbox '{name}': {reason}")]
    Protocol { name: String, reason: String },
    #[error("cannot run {0}: {1}")]
    Tool(&'static str, String),
}

type Result<T> = std::result::Result<T, ClientError>;

/// Print a client error and return its exit status.
fn report(r: Result<i32>) -> i32 {
    r.unwrap_or_else(|e| {
        eprintln!("sandbox: {e}");
        EXIT_SANDBOX
    })
}

/// One sandbox as found in the state directory.
#[derive(Debug)]
struct Found {
    dir: SandboxDir,
    rec: Record,
    live: bool,
}

impl Found {
    fn state(&self) -> &'static str {
        match (self.rec.state, self.live) {
            (Phase::Exited, _) => "exited",
            (s, true) => s.as_str(),
            (_, false) => "dead",
        }
    }
}

fn read_record(dir: &SandboxDir) -> Result<Option<Record>> {
    Ok(dir
        .read("state.json")?
        .and_then(|b| serde_json::from_slice(&b).ok()))
}

fn find(name: &str) -> Result<Found> {
    if crate::spec::check_name(name).is_err() {
        return Err(ClientError::BadName(name.into()));
    }
    let root = Root::open(false)?.ok_or_else(|| ClientError::NotFound(name.into()))?;
    if !root.exists(name) {
        return Err(ClientError::NotFound(name.into()));
    }
    let dir = root.open_sandbox(name)?;
    let rec = read_record(&dir)?.ok_or_else(|| ClientError::NotFound(name.into()))?;
    let live = rec.state != Phase::Exited && name_is_live(name);
    Ok(Found { dir, rec, live })
}

/// A sandbox that must be running (for `exec`, `stop`, `kill`).
fn find_running(name: &str) -> Result<Found> {
    let f = find(name)?;
    if f.rec.state == Phase::Exited {
        return Err(ClientError::Exited {
            name: name.into(),
            code: f.rec.exit_code,
        });
    }
    if !f.live {
        return Err(ClientError::Dead(name.into()));
    }
    Ok(f)
}

fn connect(f: &Found) -> Result<OwnedFd> {
    let err = |reason: String| ClientError::Connect {
        name: f.rec.name.clone(),
        reason,
    };
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(err(std::io::Error::last_os_error().to_string()));
    }
    // SAFETY: fresh fd.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let (addr, len) = sockaddr(&f.dir.fd_path("control")).map_err(|e| err(e.to_string()))?;
    // SAFETY: valid sockaddr_un of `len` bytes.
    if unsafe { libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len) } != 0 {
        return Err(err(crate::errors::io_reason(
            &std::io::Error::last_os_error(),
        )));
    }
    Ok(sock)
}

fn uptime(rec: &Record) -> String {
    let end = rec.exited_at.unwrap_or_else(now);
    let s = (end - rec.started_at).max(0.0) as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        3600..=86399 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

fn limits_text(v: &Value) -> String {
    let Some(m) = v.as_object() else {
        return "-".into();
    };
    let parts: Vec<String> = m
        .iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| format!("{k}={}", v.as_str().map_or(v.to_string(), str::to_string)))
        .collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(",")
    }
}

fn ps_json(f: &Found) -> Value {
    json!({
        "name": f.rec.name,
        "backend": f.rec.backend,
        "state": f.state(),
        "pid": f.rec.pid,
        "init_pid": f.rec.init_pid,
        "started_at": f.rec.started_at,
        "uptime_s": ((f.rec.exited_at.unwrap_or_else(now) - f.rec.started_at).max(0.0) * 1000.0).round() / 1000.0,
        "command": f.rec.command,
        "limits": f.rec.limits,
        "detached": f.rec.detached,
        "exit_code": f.rec.exit_code,
    })
}

/// `sandbox ps [--json]`.
pub fn ps(as_json: bool) -> i32 {
    report((|| {
        let mut found = Vec::new();
        if let Some(root) = Root::open(false)? {
            for n in root.names()? {
                if let Ok(f) = find(&n) {
                    found.push(f);
                }
            }
        }
        if as_json {
            let v: Vec<Value> = found.iter().map(ps_json).collect();
            println!("{}", Value::Array(v));
            return Ok(0);
        }
        println!(
            "{:<24} {:<9} {:<8} {:>7} {:>7}  {:<28} LIMITS",
            "NAME", "BACKEND", "STATE", "PID", "UPTIME", "COMMAND"
        );
        for f in &found {
            let mut cmd = f.rec.command.join(" ");
            if cmd.chars().count() > 28 {
                cmd = cmd.chars().take(27).collect::<String>() + "…";
            }
            println!(
                "{:<24} {:<9} {:<8} {:>7} {:>7}  {:<28} {}",
                f.rec.name,
                f.rec.backend,
                f.state(),
                f.rec.pid,
                uptime(&f.rec),
                cmd,
                limits_text(&f.rec.limits)
            );
        }
        Ok(0)
    })())
}

/// `sandbox inspect NAME`: the receipt of a live (or exited detached)
/// sandbox.
pub fn inspect(name: &str) -> i32 {
    report((|| {
        let f = find(name)?;
        let mut v = ps_json(&f);
        v["id"] = json!(f.rec.name);
        v["isolation"] = f.rec.isolation.clone();
        v["log"] = serde_json::to_value(&f.rec.log).unwrap_or(Value::Null);
        v["state_dir"] = json!(f.dir.path());
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        Ok(0)
    })())
}

/// Parse a signal name or number.
pub fn parse_signal(s: &str) -> Result<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return if (1..=64).contains(&n) {
            Ok(n)
        } else {
            Err(ClientError::BadSignal(s.into()))
        };
    }
    let up = s.to_ascii_uppercase();
    let bare = up.strip_prefix("SIG").unwrap_or(&up);
    let n = match bare {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "CONT" => libc::SIGCONT,
        "STOP" => libc::SIGSTOP,
        "WINCH" => libc::SIGWINCH,
        "ALRM" => libc::SIGALRM,
        _ => return Err(ClientError::BadSignal(s.into())),
    };
    Ok(n)
}

/// `sandbox kill NAME [SIGNAL]`.
pub fn kill(name: &str, signal: Option<&str>) -> i32 {
    report((|| {
        let signal = signal.map_or(Ok(libc::SIGKILL), parse_signal)?;
        let f = find_running(name)?;
        let sock = connect(&f)?;
        request(&f, sock.as_raw_fd(), &Request::Kill { signal })?;
        Ok(0)
    })())
}

fn request(f: &Found, sock: RawFd, req: &Request) -> Result<Reply> {
    let proto = |reason: String| ClientError::Protocol {
        name: f.rec.name.clone(),
        reason,
    };
    wire::send(sock, req, &[]).map_err(|e| proto(e.to_string()))?;
    match Reader::default().recv::<Reply>(sock).map_err(proto)? {
        Some(Reply::Error { message, .. }) => Err(proto(message)),
        Some(r) => Ok(r),
        None => Err(proto("the launcher closed the connection".into())),
    }
}

/// `sandbox stop NAME [--time T]`: SIGTERM, and SIGKILL after T (10s);
/// returns once the sandbox has ended.
pub fn stop(name: &str, time: Option<&str>) -> i32 {
    report((|| {
        let grace = match time {
            Some(t) => {
                crate::spec::parse_duration(t).map_err(|_| ClientError::BadTime(t.into()))?
            }
            None => Duration::from_secs(10),
        };
        let f = match find_running(name) {
            Err(ClientError::Exited { .. }) => {
                eprintln!("sandbox: '{name}' has already exited");
                return Ok(0);
            }
            r => r?,
        };
        let sock = connect(&f)?;
        let grace_ms = grace.as_millis().min(u64::MAX as u128) as u64;
        match request(&f, sock.as_raw_fd(), &Request::Stop { grace_ms }) {
            Ok(_) => Ok(0),
            // The supervisor exits right after the sandbox: an end of
            // stream without reply means it is gone as well.
            Err(ClientError::Protocol { .. }) if !name_is_live(name) => Ok(0),
            Err(e) => Err(e),
        }
    })())
}

/// Options of `sandbox exec`.
#[derive(Debug, Default)]
pub struct ExecOpts {
    pub interactive: bool,
    pub tty: bool,
    pub env: Vec<OsString>,
    pub workdir: Option<OsString>,
    pub user: Option<String>,
    pub command: Vec<OsString>,
}

fn parse_user(u: &str) -> Result<(u32, Option<u32>)> {
    if u == "root" {
        return Ok((0, Some(0)));
    }
    let bad = || ClientError::BadUser(u.into());
    let (a, b) = match u.split_once(':') {
        Some((a, b)) => (a, Some(b)),
        None => (u, None),
    };
    let uid = a.parse().map_err(|_| bad())?;
    let gid = b.map(|b| b.parse().map_err(|_| bad())).transpose()?;
    Ok((uid, gid))
}

/// `sandbox exec NAME [-i] [-t] [-e ...] [-w DIR] [-u UID[:GID]] -- CMD`.
pub fn exec(name: &str, o: &ExecOpts) -> i32 {
    report(exec_inner(name, o))
}

fn exec_inner(name: &str, o: &ExecOpts) -> Result<i32> {
    let user = o.user.as_deref().map(parse_user).transpose()?;
    let mut env = Vec::new();
    for e in &o.env {
        let b = e.as_bytes();
        if b.contains(&b'=') {
            env.push(b.to_vec());
        } else {
            let v = std::env::var_os(e)
                .ok_or_else(|| ClientError::EnvUnset(e.to_string_lossy().into()))?;
            let mut kv = b.to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            env.push(kv);
        }
    }
    let f = find_running(name)?;
    let tty = o
        .tty
        .then(|| crate::tty::window_size(0).unwrap_or((24, 80)));
    let req = ExecRequest {
        argv: o.command.iter().map(|a| a.as_bytes().to_vec()).collect(),
        env,
        cwd: o.workdir.as_ref().map(|w| w.as_bytes().to_vec()),
        uid: user.map(|u| u.0),
        gid: user.and_then(|u| u.1),
        tty,
    };
    let proto = |reason: String| ClientError::Protocol {
        name: name.into(),
        reason,
    };
    // Signals for the exec'd process (the ones a run forwards), blocked
    // before it exists.
    let sigfd = sys::signalfd_for(&sandbox_proto::unix::FORWARDED_SIGNALS)
        .map_err(|e| proto(e.to_string()))?;
    let sock = connect(&f)?;
    let null: Option<OwnedFd> = if o.interactive {
        None
    } else {
        std::fs::File::open("/dev/null").ok().map(Into::into)
    };
    let stdin = null.as_ref().map_or(0, AsRawFd::as_raw_fd);
    // In a VM the pty stays in the guest (init relays it over vsock): the
    // client's own stdio is attached even with a terminal, and the VMM
    // copies it; here only raw mode and the window size are ours.
    let vm = f.rec.backend == "vm";
    let fds: Vec<RawFd> = if tty.is_some() && !vm {
        Vec::new()
    } else {
        vec![stdin, 1, 2]
    };
    wire::send(sock.as_raw_fd(), &Request::Exec(req), &fds).map_err(|e| proto(e.to_string()))?;
    drop(null);
    let mut rd = Reader::default();
    let mut master: Option<OwnedFd> = None;
    let mut raw = None;
    let mut stdin_open = o.interactive;
    loop {
        let m = master.as_ref().map_or(-1, AsRawFd::as_raw_fd);
        let mut p = [
            pfd(sock.as_raw_fd()),
            pfd(sigfd.as_raw_fd()),
            pfd(m),
            pfd(if m >= 0 && stdin_open { 0 } else { -1 }),
        ];
        // SAFETY: valid pollfd array.
        if unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, -1) } < 0 {
            continue;
        }
        if p[1].revents != 0 {
            while let Some(sig) = sys::read_signal(&sigfd) {
                if sig == libc::SIGWINCH && m >= 0 {
                    crate::tty::copy_window_size(0, m);
                } else if sig == libc::SIGWINCH {
                    if let (true, Some((rows, cols))) = (vm, crate::tty::window_size(0)) {
                        let r = Request::Resize { rows, cols };
                        let _ = wire::send(sock.as_raw_fd(), &r, &[]);
                    }
                } else {
                    let _ = wire::send(sock.as_raw_fd(), &Request::Signal { signal: sig }, &[]);
                }
            }
        }
        if p[2].revents != 0 && !copy(m, 1) {
            master = None;
        }
        if p[3].revents != 0 && !copy(0, m) {
            stdin_open = false;
        }
        if p[0].revents != 0 {
            let open = rd.fill(sock.as_raw_fd());
            while let Some(r) = rd.next_msg::<Reply>().map_err(proto)? {
                match r {
                    Reply::Started { .. } => {
                        if tty.is_some() {
                            master = if vm { None } else { rd.fds.pop() };
                            if crate::tty::is_tty(0) {
                                raw = crate::tty::RawMode::enable(0);
                            }
                        }
                    }
                    Reply::Exited { code } => {
                        if let Some(m) = master.as_ref() {
                            while copy(m.as_raw_fd(), 1) {}
                        }
                        drop(raw);
                        return Ok(code);
                    }
                    Reply::Error { message, code } => {
                        drop(raw);
                        eprintln!("sandbox: {message}");
                        return Ok(code);
                    }
                    Reply::Ok => {}
                }
            }
            if !open {
                drop(raw);
                return Err(proto("the sandbox ended during exec".into()));
            }
        }
    }
}

fn pfd(fd: RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

/// One read and write; false at end of file or error.
fn copy(from: RawFd, to: RawFd) -> bool {
    let mut buf = [0u8; 16384];
    match sys::read(from, &mut buf) {
        Ok(0) | Err(_) => false,
        Ok(n) => sys::write_all(to, &buf[..n]).is_ok(),
    }
}

/// `sandbox logs NAME [-f]`.
pub fn logs(name: &str, follow: bool) -> i32 {
    report((|| {
        let f = find(name)?;
        match &f.rec.log {
            LogTarget::Inherited => {
                eprintln!(
                    "sandbox: '{name}' was not detached: its output goes to its caller (as a \
                     service: journalctl -u sandbox-{name})"
                );
                Ok(EXIT_SANDBOX)
            }
            LogTarget::Journald { identifier } => {
                let mut cmd = std::process::Command::new("journalctl");
                cmd.args(["--no-pager", "-o", "cat", "-t", identifier]);
                if follow {
                    cmd.arg("-f");
                }
                let st = cmd
                    .status()
                    .map_err(|e| ClientError::Tool("journalctl", e.to_string()))?;
                Ok(st.code().unwrap_or(EXIT_SANDBOX))
            }
            LogTarget::File { .. } => {
                let Some(file) = f.dir.open_file("log", libc::O_RDONLY)? else {
                    return Ok(0);
                };
                loop {
                    while copy(file.as_raw_fd(), 1) {}
                    if !follow || !name_is_live(name) {
                        while copy(file.as_raw_fd(), 1) {}
                        return Ok(0);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    })())
}

/// `sandbox gc`: remove what dead launchers left, reporting each item.
pub fn gc() -> i32 {
    report((|| {
        let mut n = 0;
        if let Some(root) = Root::open(false)? {
            for name in root.names()? {
                // Holding the name keeps a new run from taking it while its
                // leftovers are removed; a live name is skipped.
                let Ok(_lock) = crate::state::NameLock::acquire(&name) else {
                    continue;
                };
                let what = match root
                    .open_sandbox(&name)
                    .ok()
                    .and_then(|d| read_record(&d).ok().flatten())
                {
                    Some(r) if r.state == Phase::Exited => format!(
                        "record of exited sandbox '{name}' (status {})",
                        r.exit_code.map_or("?".into(), |c| c.to_string())
                    ),
                    Some(r) => format!(
                        "state of crashed sandbox '{name}' (was {}, launcher pid {})",
                        r.state.as_str(),
                        r.pid
                    ),
                    None => format!("unreadable state entry '{name}'"),
                };
                match root.remove(&name) {
                    Ok(()) => {
                        println!("removed {what}: {}", root.path().join(&name).display());
                        n += 1;
                    }
                    Err(e) => eprintln!("sandbox: cannot remove {what}: {e}"),
                }
            }
        }
        for path in crate::cgroup::collect_stale() {
            println!("removed cgroup of a crashed sandbox: {}", path.display());
            n += 1;
        }
        if n == 0 {
            println!("nothing to collect");
        }
        Ok(0)
    })())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_and_users() {
        assert_eq!(parse_signal("TERM").unwrap(), libc::SIGTERM);
        assert_eq!(parse_signal("sighup").unwrap(), libc::SIGHUP);
        assert_eq!(parse_signal("9").unwrap(), 9);
        for bad in ["0", "65", "FOO", ""] {
            assert!(parse_signal(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_user("root").unwrap(), (0, Some(0)));
        assert_eq!(parse_user("5:6").unwrap(), (5, Some(6)));
        assert_eq!(parse_user("7").unwrap(), (7, None));
        assert!(parse_user("x").is_err());
    }
}
