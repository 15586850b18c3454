//! The state directory: `$XDG_RUNTIME_DIR/sandbox` (rootless; without
//! `XDG_RUNTIME_DIR`, `/run/user/UID/sandbox` when that exists, else
//! `/tmp/sandbox-UID`), `/run/sandbox` as root, or `$SANDBOX_STATE_DIR`.
//! One subdirectory per sandbox, named after it, holds `state.json`, the
//! control socket `control` and, for detached runs without journald, `log`.
//!
//! Everything is reached by descriptor from the opened root: the root and
//! each sandbox directory are opened with `O_NOFOLLOW | O_DIRECTORY` and
//! must be directories owned by the caller with no group or other access
//! (a pre-planted symlink, a directory of another user or one opened up to
//! others is refused, never "fixed"); files are created with `O_EXCL |
//! O_NOFOLLOW` and replaced by `renameat`, and read with `O_NOFOLLOW` after
//! an `fstat` that they are regular and small.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::errors::io_reason;

#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error("state directory {path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error(
        "state directory {path} is not safe to use: {why}; expected a directory owned by uid \
         {uid} with mode 0700 (remove it, or set SANDBOX_STATE_DIR)"
    )]
    Unsafe {
        path: PathBuf,
        why: String,
        uid: u32,
    },
    #[error("state file {path} is too large or not a regular file")]
    BadFile { path: PathBuf },
}

/// Largest state file read back.
const MAX_FILE: i64 = 1 << 20;

fn euid() -> u32 {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() }
}

/// Where the state root is for this caller.
pub fn root_path() -> PathBuf {
    if let Some(d) = std::env::var_os("SANDBOX_STATE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let uid = euid();
    if uid == 0 {
        return PathBuf::from("/run/sandbox");
    }
    if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR").filter(|x| Path::new(x).is_absolute()) {
        return Path::new(&x).join("sandbox");
    }
    let run_user = PathBuf::from(format!("/run/user/{uid}"));
    if run_user.is_dir() {
        return run_user.join("sandbox");
    }
    PathBuf::from(format!("/tmp/sandbox-{uid}"))
}

fn cpath(p: &OsStr) -> Result<CString, io::Error> {
    CString::new(p.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Open `name` under `at` as a directory without following a symlink and
/// check owner and mode.
fn open_dir_at(at: RawFd, name: &OsStr, shown: &Path) -> Result<OwnedFd, DirError> {
    let c = cpath(name).map_err(|e| io_err(shown, &e))?;
    // SAFETY: openat with a valid C string; the fd is owned below.
    let fd = unsafe {
        libc::openat(
            at,
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        if matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR)) {
            return Err(DirError::Unsafe {
                path: shown.into(),
                why: "it is a symbolic link or not a directory".into(),
                uid: euid(),
            });
        }
        return Err(io_err(shown, &e));
    }
    // SAFETY: fresh fd owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    check_owner(&fd, shown)?;
    Ok(fd)
}

fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    // SAFETY: zeroed stat is a valid out-parameter.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes into `st`.
    cvt(unsafe { libc::fstat(fd, &mut st) })?;
    Ok(st)
}

fn check_owner(fd: &OwnedFd, shown: &Path) -> Result<(), DirError> {
    let st = fstat(fd.as_raw_fd()).map_err(|e| io_err(shown, &e))?;
    let uid = euid();
    let why = if st.st_uid != uid {
        Some(format!("it is owned by uid {}", st.st_uid))
    } else if st.st_mode & 0o077 != 0 {
        Some(format!("its mode is {:04o}", st.st_mode & 0o7777))
    } else {
        None
    };
    match why {
        Some(why) => Err(DirError::Unsafe {
            path: shown.into(),
            why,
            uid,
        }),
        None => Ok(()),
    }
}

fn io_err(p: &Path, e: &io::Error) -> DirError {
    DirError::Io {
        path: p.into(),
        reason: io_reason(e),
    }
}

fn mkdir_at(at: RawFd, name: &OsStr) -> io::Result<bool> {
    let c = cpath(name)?;
    // SAFETY: mkdirat with a valid C string.
    match cvt(unsafe { libc::mkdirat(at, c.as_ptr(), 0o700) }) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The opened state root.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

impl Root {
    /// Open the root, creating it (mode 0700) when `create` is set. Without
    /// `create`, a missing root is `Ok(None)`: there are no sandboxes.
    pub fn open(create: bool) -> Result<Option<Self>, DirError> {
        Self::open_at(&root_path(), create)
    }

    pub fn open_at(path: &Path, create: bool) -> Result<Option<Self>, DirError> {
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("/"));
        let leaf = path.file_name().ok_or_else(|| DirError::Unsafe {
            path: path.into(),
            why: "it has no final component".into(),
            uid: euid(),
        })?;
        let pc = cpath(parent.as_os_str()).map_err(|e| io_err(path, &e))?;
        // SAFETY: open with a valid C string; the fd is owned below.
        let pfd = unsafe {
            libc::open(
                pc.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if pfd < 0 {
            return Err(io_err(parent, &io::Error::last_os_error()));
        }
        // SAFETY: fresh fd.
        let pfd = unsafe { OwnedFd::from_raw_fd(pfd) };
        if create {
            mkdir_at(pfd.as_raw_fd(), leaf).map_err(|e| io_err(path, &e))?;
        }
        match open_dir_at(pfd.as_raw_fd(), leaf, path) {
            Ok(fd) => Ok(Some(Root {
                fd,
                path: path.into(),
            })),
            Err(DirError::Io { .. }) if !create && !path.exists() => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The names of the subdirectories (candidate sandboxes), sorted.
    pub fn names(&self) -> Result<Vec<String>, DirError> {
        let proc_path = format!("/proc/self/fd/{}", self.fd.as_raw_fd());
        let rd = std::fs::read_dir(&proc_path).map_err(|e| io_err(&self.path, &e))?;
        let mut v: Vec<String> = rd
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| !n.starts_with('.'))
            .collect();
        v.sort();
        Ok(v)
    }

    /// Create the directory of sandbox `name` (which must not exist).
    pub fn create(&self, name: &str) -> Result<SandboxDir, DirError> {
        let shown = self.path.join(name);
        match mkdir_at(self.fd.as_raw_fd(), OsStr::new(name)) {
            Ok(true) => {}
            Ok(false) => {
                return Err(DirError::Io {
                    path: shown,
                    reason: "already exists".into(),
                })
            }
            Err(e) => return Err(io_err(&shown, &e)),
        }
        self.open_sandbox(name)
    }

    /// Open the directory of sandbox `name`, if it exists.
    pub fn open_sandbox(&self, name: &str) -> Result<SandboxDir, DirError> {
        let path = self.path.join(name);
        let fd = open_dir_at(self.fd.as_raw_fd(), OsStr::new(name), &path)?;
        Ok(SandboxDir { fd, path })
    }

    /// Whether an entry `name` exists (whatever it is).
    pub fn exists(&self, name: &str) -> bool {
        let Ok(c) = CString::new(name) else {
            return false;
        };
        // SAFETY: zeroed stat is a valid out-parameter.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstatat with a valid C string, not following symlinks.
        unsafe {
            libc::fstatat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            ) == 0
        }
    }

    /// Remove sandbox `name`'s directory and what is in it (files and
    /// sockets only; nothing is followed). A symlink or file planted in
    /// its place is removed as well, without following it.
    pub fn remove(&self, name: &str) -> Result<(), DirError> {
        let shown = self.path.join(name);
        let c = cpath(OsStr::new(name)).map_err(|e| io_err(&shown, &e))?;
        // SAFETY: openat with a valid C string.
        let fd = unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            // Not a directory (a planted symlink or file): unlink the entry.
            // SAFETY: unlinkat with a valid C string.
            return cvt(unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) })
                .map(drop)
                .map_err(|e| io_err(&shown, &e));
        }
        // SAFETY: fresh fd.
        let dfd = unsafe { OwnedFd::from_raw_fd(fd) };
        let entries = std::fs::read_dir(format!("/proc/self/fd/{}", dfd.as_raw_fd()))
            .map_err(|e| io_err(&shown, &e))?;
        for e in entries.flatten() {
            let Ok(ec) = cpath(&e.file_name()) else {
                continue;
            };
            // SAFETY: unlinkat relative to the opened directory.
            if unsafe { libc::unlinkat(dfd.as_raw_fd(), ec.as_ptr(), 0) } != 0 {
                // SAFETY: as above, for a (planted) subdirectory.
                unsafe { libc::unlinkat(dfd.as_raw_fd(), ec.as_ptr(), libc::AT_REMOVEDIR) };
            }
        }
        // SAFETY: unlinkat with a valid C string.
        cvt(unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), libc::AT_REMOVEDIR) })
            .map(drop)
            .map_err(|e| io_err(&shown, &e))
    }
}

/// The opened directory of one sandbox.
#[derive(Debug)]
pub struct SandboxDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl SandboxDir {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A short path to `file` in this directory that works for `bind` and
    /// `connect` whatever the length of the real one (through the open
    /// descriptor).
    pub fn fd_path(&self, file: &str) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}/{file}", self.fd.as_raw_fd()))
    }

    /// Replace `file` atomically with `data` (mode 0600).
    pub fn write(&self, file: &str, data: &[u8]) -> Result<(), DirError> {
        let shown = self.path.join(file);
        let tmp = format!(".{file}.{}", std::process::id());
        let tc = cpath(OsStr::new(&tmp)).map_err(|e| io_err(&shown, &e))?;
        let fc = cpath(OsStr::new(file)).map_err(|e| io_err(&shown, &e))?;
        let d = self.fd.as_raw_fd();
        // SAFETY: unlinkat of our own temp name (a leftover of a crash).
        unsafe { libc::unlinkat(d, tc.as_ptr(), 0) };
        // SAFETY: openat with a valid C string; the fd is owned below.
        let fd = unsafe {
            libc::openat(
                d,
                tc.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o600,
            )
        };
        if fd < 0 {
            return Err(io_err(&shown, &io::Error::last_os_error()));
        }
        // SAFETY: fresh fd.
        let f = unsafe { OwnedFd::from_raw_fd(fd) };
        let r = crate::sys::write_all(f.as_raw_fd(), data).and_then(|()| {
            // SAFETY: renameat of names relative to our directory.
            cvt(unsafe { libc::renameat(d, tc.as_ptr(), d, fc.as_ptr()) }).map(drop)
        });
        if let Err(e) = r {
            // SAFETY: as above.
            unsafe { libc::unlinkat(d, tc.as_ptr(), 0) };
            return Err(io_err(&shown, &e));
        }
        Ok(())
    }

    /// Read `file` (regular, at most 1 MiB), not following a symlink.
    pub fn read(&self, file: &str) -> Result<Option<Vec<u8>>, DirError> {
        let shown = self.path.join(file);
        let Some(f) = self.open_file(file, libc::O_RDONLY)? else {
            return Ok(None);
        };
        let st = fstat(f.as_raw_fd()).map_err(|e| io_err(&shown, &e))?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_size > MAX_FILE {
            return Err(DirError::BadFile { path: shown });
        }
        let mut out = Vec::with_capacity(st.st_size as usize);
        let mut buf = [0u8; 8192];
        loop {
            match crate::sys::read(f.as_raw_fd(), &mut buf) {
                Ok(0) => break,
                Ok(n) if out.len() + n <= MAX_FILE as usize => out.extend_from_slice(&buf[..n]),
                Ok(_) => return Err(DirError::BadFile { path: shown }),
                Err(e) => return Err(io_err(&shown, &e)),
            }
        }
        Ok(Some(out))
    }

    /// Open `file` with `flags` (plus `O_NOFOLLOW | O_CLOEXEC`), creating it
    /// with mode 0600 when `flags` has `O_CREAT`; `None` when it is missing.
    pub fn open_file(&self, file: &str, flags: libc::c_int) -> Result<Option<OwnedFd>, DirError> {
        let shown = self.path.join(file);
        let fc = cpath(OsStr::new(file)).map_err(|e| io_err(&shown, &e))?;
        // SAFETY: openat with a valid C string.
        let fd = unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                fc.as_ptr(),
                flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o600,
            )
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOENT) {
                return Ok(None);
            }
            return Err(io_err(&shown, &e));
        }
        // SAFETY: fresh fd.
        Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Remove `file` (not following it); a missing one is fine.
    pub fn unlink(&self, file: &str) {
        if let Ok(c) = CString::new(file) {
            // SAFETY: unlinkat relative to our directory.
            unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("sbx-dir-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        let _ = std::fs::remove_file(&p);
        p
    }

    #[test]
    fn creates_private_root_and_round_trips_files() {
        let p = tmp("ok");
        let root = Root::open_at(&p, true).unwrap().unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let d = root.create("web").unwrap();
        d.write("state.json", b"{}").unwrap();
        assert_eq!(d.read("state.json").unwrap().unwrap(), b"{}");
        assert!(
            root.create("web").is_err(),
            "create refuses an existing dir"
        );
        assert_eq!(root.names().unwrap(), ["web"]);
        root.remove("web").unwrap();
        assert!(root.names().unwrap().is_empty());
        std::fs::remove_dir(&p).unwrap();
    }

    #[test]
    fn refuses_a_planted_symlink_and_an_open_mode() {
        let p = tmp("link");
        std::os::unix::fs::symlink("/tmp", &p).unwrap();
        let e = Root::open_at(&p, true).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        std::fs::remove_file(&p).unwrap();

        let p = tmp("mode");
        std::fs::create_dir(&p).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = Root::open_at(&p, true).unwrap_err();
        assert!(e.to_string().contains("mode is 0777"), "{e}");
        std::fs::remove_dir(&p).unwrap();
    }

    #[test]
    fn a_symlinked_state_file_is_not_followed() {
        let p = tmp("file");
        let root = Root::open_at(&p, true).unwrap().unwrap();
        let d = root.create("a").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("state.json")).unwrap();
        assert!(d.read("state.json").is_err());
        // Writing replaces the link itself (rename), never its target.
        d.write("state.json", b"x").unwrap();
        assert_eq!(std::fs::read(d.path().join("state.json")).unwrap(), b"x");
        root.remove("a").unwrap();
        std::fs::remove_dir(&p).unwrap();
    }
}
