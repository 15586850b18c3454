//! DAC labels: dynamic users (`--user dynamic`, root only).
//!
//! Each sandbox gets its own host uid/gid pair from a configured range,
//! unique among live sandboxes: the id is held by an abstract unix socket
//! named after it, which the kernel releases when the launcher exits
//! however it exits, so nothing has to be cleaned up after a crash.
//!
//! Writable volumes stay owned by the caller on the host: each one is
//! mounted through an *idmapped* mount (made here, in the host's mount
//! namespace, where only real root can make one) that shows the caller's
//! files as owned by the dynamic uid, and stores the dynamic uid's writes
//! as the caller's. A filesystem that cannot be idmapped fails the run:
//! files owned by a recycled uid would be readable by a later sandbox.
//!
//! Range: `/etc/sandbox/sandbox.toml`, `[dynamic_users] range = "A-B"`;
//! default 3000000000-3000099999 (above the usual subuid allocations).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::errors::io_reason;
use crate::state::{IdLock, StateError};

pub const DEFAULT_RANGE: (u32, u32) = (3_000_000_000, 3_000_099_999);
pub const CONFIG_PATH: &str = "/etc/sandbox/sandbox.toml";

#[derive(Debug, thiserror::Error)]
pub enum DacError {
    #[error("--user dynamic needs root: it allocates host uids (use -u UID[:GID] instead)")]
    NotRoot,
    #[error("{CONFIG_PATH}: invalid [dynamic_users] range '{0}': expected \"FIRST-LAST\" with 1 <= FIRST <= LAST < 4294967295")]
    BadRange(String),
    #[error("{CONFIG_PATH}: {0}")]
    Config(String),
    #[error("no free dynamic uid in {first}-{last}: every id is held by a live sandbox")]
    Exhausted { first: u32, last: u32 },
    #[error(transparent)]
    Lock(#[from] StateError),
    #[error("cannot create the idmapping for dynamic uid {uid}: {reason}")]
    Userns { uid: u32, reason: String },
    #[error(
        "cannot idmap the writable volume {path}: {reason} (its filesystem may not support \
         idmapped mounts); use -u UID instead of --user dynamic for this volume"
    )]
    Idmap { path: String, reason: String },
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    dynamic_users: DynSection,
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DynSection {
    range: Option<String>,
}

/// The configured range of dynamic ids.
pub fn configured_range() -> Result<(u32, u32), DacError> {
    let text = match std::fs::read_to_string(CONFIG_PATH) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(DEFAULT_RANGE),
        Err(e) => return Err(DacError::Config(io_reason(&e))),
    };
    let cfg: Config = toml::from_str(&text).map_err(|e| DacError::Config(e.message().into()))?;
    match cfg.dynamic_users.range {
        None => Ok(DEFAULT_RANGE),
        Some(r) => parse_range(&r).ok_or(DacError::BadRange(r)),
    }
}

pub fn parse_range(r: &str) -> Option<(u32, u32)> {
    let (a, b) = r.split_once('-')?;
    let (a, b): (u32, u32) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (a >= 1 && a <= b && b < u32::MAX).then_some((a, b))
}

/// A dynamic uid (= gid) held for the life of the sandbox.
#[derive(Debug)]
pub struct DynamicId {
    pub id: u32,
    _lock: IdLock,
}

/// Allocate a free id from `range`, starting at a random offset so that
/// concurrent launchers rarely contend for the same one.
pub fn allocate(range: (u32, u32)) -> Result<DynamicId, DacError> {
    let (first, last) = range;
    let span = u64::from(last - first) + 1;
    let mut seed = [0u8; 8];
    // SAFETY: getrandom writes at most 8 bytes into `seed`.
    unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
    let start = u64::from_le_bytes(seed) % span;
    // Bounded probing: a full scan of a huge range is pointless.
    for i in 0..span.min(65_536) {
        let id = first + ((start + i) % span) as u32;
        match IdLock::acquire("uid", id) {
            Ok(lock) => return Ok(DynamicId { id, _lock: lock }),
            Err(StateError::NameInUse(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(DacError::Exhausted { first, last })
}

/// A user namespace whose map turns the caller's ids into `id`: used as
/// the idmapping of writable volumes (on-disk caller ids appear as `id`,
/// and `id`'s writes are stored as the caller's).
pub fn idmap_userns(caller_uid: u32, caller_gid: u32, id: u32) -> Result<OwnedFd, DacError> {
    let err = |e: io::Error| DacError::Userns {
        uid: id,
        reason: io_reason(&e),
    };
    let (r, w) = pipe().map_err(err)?;
    // SAFETY: fork; the child only calls async-signal-safe functions.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(err(io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: async-signal-safe calls; the child blocks until killed.
        unsafe {
            if libc::unshare(libc::CLONE_NEWUSER) != 0 {
                libc::_exit(1);
            }
            let b = 1u8;
            libc::write(w.as_raw_fd(), (&b as *const u8).cast(), 1);
            libc::pause();
            libc::_exit(0);
        }
    }
    drop(w);
    let result = (|| {
        let mut b = 0u8;
        // SAFETY: reading one byte into `b`.
        if unsafe { libc::read(r.as_raw_fd(), (&mut b as *mut u8).cast(), 1) } != 1 {
            return Err(io::Error::other(
                "the helper process could not create a user namespace",
            ));
        }
        std::fs::write(
            format!("/proc/{pid}/uid_map"),
            format!("{caller_uid} {id} 1\n"),
        )?;
        std::fs::write(
            format!("/proc/{pid}/gid_map"),
            format!("{caller_gid} {id} 1\n"),
        )?;
        let f = std::fs::File::open(format!("/proc/{pid}/ns/user"))?;
        Ok(OwnedFd::from(f))
    })();
    // SAFETY: killing and reaping our own helper.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
    result.map_err(err)
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: two fresh fds owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

const OPEN_TREE_CLONE: u32 = 1;
const OPEN_TREE_CLOEXEC: u32 = libc::O_CLOEXEC as u32;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// A detached copy of the mount at `src`, idmapped through `userns`.
pub fn idmapped_tree(src: &Path, userns: &OwnedFd) -> Result<OwnedFd, DacError> {
    let err = |e: io::Error| DacError::Idmap {
        path: src.display().to_string(),
        reason: io_reason(&e),
    };
    let c = CString::new(src.as_os_str().as_bytes())
        .map_err(|_| err(io::Error::from_raw_os_error(libc::EINVAL)))?;
    // SAFETY: valid path; the flags ask for a detached clone of one mount.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c.as_ptr(),
            OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(err(io::Error::last_os_error()));
    }
    // SAFETY: fresh fd from the kernel.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: `attr` is valid for its size; the path is empty with
    // AT_EMPTY_PATH so the call applies to `tree` itself.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(err(io::Error::last_os_error()));
    }
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("10-20"), Some((10, 20)));
        assert_eq!(parse_range(" 5 - 5 "), Some((5, 5)));
        for bad in ["", "0-5", "20-10", "1-4294967295", "x-y", "5"] {
            assert_eq!(parse_range(bad), None, "{bad}");
        }
    }

    #[test]
    fn two_allocations_differ_while_held() {
        let a = allocate((4_000_000_000, 4_000_000_001)).unwrap();
        let b = allocate((4_000_000_000, 4_000_000_001)).unwrap();
        assert_ne!(a.id, b.id);
        assert!(matches!(
            allocate((4_000_000_000, 4_000_000_001)),
            Err(DacError::Exhausted { .. })
        ));
        drop(a);
        allocate((4_000_000_000, 4_000_000_001)).unwrap();
    }
}
