//! systemd readiness, without a library: `sd_notify` is one datagram of
//! `KEY=VALUE` lines to the socket named by `$NOTIFY_SOCKET` (a path, or
//! `@name` for the abstract namespace).
//!
//! Readiness modes (`--ready`): `started` (default: READY=1 once the
//! command runs), `tcp:PORT` (once 127.0.0.1:PORT accepts inside the
//! sandbox; init probes it, so it works in the sandbox's own network
//! namespace), `notify` (the command gets its own notify socket, bound
//! into the sandbox at [`INNER_SOCKET`] with `NOTIFY_SOCKET` set, and the
//! launcher relays what systemd understands from a service: `READY=1`,
//! `RELOADING=1`, `STOPPING=1`, `STATUS=...`, `ERRNO=...`; `MAINPID` and
//! the rest stay inside, since the launcher is the unit's main process).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Where the command finds its notify socket (`--ready notify`).
pub const INNER_SOCKET: &str = "/run/sandbox-notify";

/// Why `--ready notify` is refused with `--vm`: the program in the guest
/// has no path to the host's notify socket (a unix socket cannot cross
/// 9p or vsock).
pub const VM_NOTIFY_REFUSED: &str = "--ready notify is not supported with --vm (the guest \
     cannot reach the host's notify socket); use --ready started or --ready tcp:PORT \
     (docs/services.md)";

/// How the sandbox becomes ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    Started,
    Tcp(u16),
    Notify,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid --ready '{0}': expected started, tcp:PORT (1-65535) or notify")]
pub struct ReadyError(pub String);

impl Ready {
    pub fn parse(s: &str) -> Result<Self, ReadyError> {
        match s {
            "started" => Ok(Ready::Started),
            "notify" => Ok(Ready::Notify),
            _ => s
                .strip_prefix("tcp:")
                .and_then(|p| p.parse::<u16>().ok())
                .filter(|p| *p > 0)
                .map(Ready::Tcp)
                .ok_or_else(|| ReadyError(s.into())),
        }
    }
}

/// Send `state` to `$NOTIFY_SOCKET`; false when there is none (not run by
/// systemd) or sending failed.
pub fn sd_notify(state: &str) -> bool {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return false;
    };
    use std::os::unix::ffi::OsStrExt;
    let b = target.as_bytes();
    // SAFETY: zeroed sockaddr_un is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    if b.is_empty() || b.len() >= addr.sun_path.len() {
        return false;
    }
    for (i, c) in b.iter().enumerate() {
        addr.sun_path[i] = *c as libc::c_char;
    }
    let mut len = std::mem::size_of::<libc::sa_family_t>() + b.len();
    if b[0] == b'@' {
        addr.sun_path[0] = 0;
    } else {
        len += 1;
    }
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return false;
    }
    // SAFETY: fresh fd.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sendto with a valid buffer and address.
    let n = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            state.as_ptr().cast(),
            state.len(),
            libc::MSG_NOSIGNAL,
            (&addr as *const libc::sockaddr_un).cast(),
            len as libc::socklen_t,
        )
    };
    n == state.len() as isize
}

/// The launcher's end of the command's notify socket (`--ready notify`).
#[derive(Debug)]
pub struct Relay {
    sock: OwnedFd,
}

impl Relay {
    /// Bind a datagram socket at `path` (in the state directory), writable
    /// by every user: only processes of the sandbox can reach it (the
    /// directory is 0700; inside, it is bind-mounted).
    pub fn bind(path: &std::path::Path) -> std::io::Result<Self> {
        // SAFETY: plain socket(2).
        let fd = unsafe {
            libc::socket(
                libc::AF_UNIX,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                0,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fresh fd.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        let (addr, len) = super::supervisor::sockaddr(path)?;
        // SAFETY: valid sockaddr_un of `len` bytes.
        if unsafe { libc::bind(fd, (&addr as *const libc::sockaddr_un).cast(), len) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
        Ok(Relay { sock })
    }

    pub fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// Read what the command sent and relay what systemd should see.
    /// Returns true when one of them said READY=1.
    pub fn pump(&self) -> bool {
        let mut ready = false;
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: recv into our buffer.
            let n = unsafe {
                libc::recv(
                    self.sock.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n <= 0 {
                return ready;
            }
            let text = String::from_utf8_lossy(&buf[..n as usize]);
            let kept: Vec<&str> = text
                .lines()
                .filter(|l| {
                    ["READY=1", "RELOADING=1", "STOPPING=1"].contains(l)
                        || l.starts_with("STATUS=")
                        || l.starts_with("ERRNO=")
                })
                .collect();
            ready |= kept.contains(&"READY=1");
            if !kept.is_empty() {
                sd_notify(&kept.join("\n"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_ready() {
        assert_eq!(Ready::parse("started").unwrap(), Ready::Started);
        assert_eq!(Ready::parse("tcp:8080").unwrap(), Ready::Tcp(8080));
        assert_eq!(Ready::parse("notify").unwrap(), Ready::Notify);
        for bad in ["tcp:0", "tcp:70000", "tcp:", "http:80", ""] {
            let e = Ready::parse(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("'{bad}'")), "{e}");
        }
    }
}
