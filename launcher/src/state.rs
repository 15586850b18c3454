//! Per-sandbox runtime state shared by all commands of the launcher.
//!
//! For now this is the name registry: a live sandbox holds an abstract
//! unix socket named after its owner's uid and its name. The kernel frees
//! the name the instant the launcher exits, however it exits (even
//! SIGKILL), so a crashed run leaves nothing to clean up and two live
//! sandboxes of one user can never share a name.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "the sandbox name '{0}' is already in use by a running sandbox; choose another --name"
    )]
    NameInUse(String),
    #[error("cannot register the sandbox name '{name}': {reason}")]
    Register { name: String, reason: String },
}

/// Holds a sandbox name for as long as it lives.
#[derive(Debug)]
pub struct NameLock {
    _sock: OwnedFd,
}

impl NameLock {
    pub fn acquire(name: &str) -> Result<Self, StateError> {
        bind_abstract(&name_key(name), name).map(|sock| Self { _sock: sock })
    }
}

fn name_key(name: &str) -> String {
    // SAFETY: no preconditions.
    let uid = unsafe { libc::geteuid() };
    format!("sandbox/{uid}/name/{name}")
}

/// Whether a live launcher holds `name`, read from `/proc/net/unix`
/// without binding (so that asking never blocks a run taking the name).
pub fn name_is_live(name: &str) -> bool {
    let want = format!("@{}", name_key(name));
    std::fs::read_to_string("/proc/net/unix")
        .map(|t| {
            t.lines()
                .any(|l| l.split_whitespace().nth(7) == Some(want.as_str()))
        })
        .unwrap_or(false)
}

/// Bind an abstract unix socket named `key`; `EADDRINUSE` means a live
/// process holds it (reported as [`StateError::NameInUse`] of `what`).
fn bind_abstract(key: &str, what: &str) -> Result<OwnedFd, StateError> {
    let err = |e: io::Error| StateError::Register {
        name: what.into(),
        reason: crate::errors::io_reason(&e),
    };
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(err(io::Error::last_os_error()));
    }
    // SAFETY: fresh fd owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: zeroed sockaddr_un is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    // Abstract namespace: leading NUL byte, then the key.
    if key.len() + 1 > addr.sun_path.len() {
        return Err(StateError::Register {
            name: what.into(),
            reason: "name too long".into(),
        });
    }
    for (i, b) in key.bytes().enumerate() {
        addr.sun_path[i + 1] = b as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + 1 + key.len();
    // SAFETY: `addr` is a valid sockaddr_un and `len` is within it.
    let r = unsafe {
        libc::bind(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            (&addr as *const libc::sockaddr_un).cast(),
            len as libc::socklen_t,
        )
    };
    if r != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EADDRINUSE) {
            return Err(StateError::NameInUse(what.into()));
        }
        return Err(err(e));
    }
    Ok(sock)
}

/// Holds a host id (e.g. a dynamic uid) for as long as it lives. Keys are
/// global, not per user: only root allocates ids.
#[derive(Debug)]
pub struct IdLock {
    _sock: OwnedFd,
}

impl IdLock {
    pub fn acquire(kind: &str, id: u32) -> Result<Self, StateError> {
        let key = format!("sandbox/{kind}/{id}");
        bind_abstract(&key, &id.to_string()).map(|sock| Self { _sock: sock })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_name_cannot_be_taken_twice() {
        let n = crate::spec::generate_name();
        let a = NameLock::acquire(&n).unwrap();
        assert!(matches!(
            NameLock::acquire(&n),
            Err(StateError::NameInUse(_))
        ));
        assert!(name_is_live(&n));
        drop(a);
        assert!(!name_is_live(&n));
        NameLock::acquire(&n).unwrap();
    }
}
