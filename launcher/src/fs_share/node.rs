//! Nodes: the files the guest has walked to. A node holds an `O_PATH`
//! descriptor of its inode (taken when it was walked, so later lookups
//! never re-resolve a path string), the inode's identity (st_dev, st_ino,
//! file type), and its location: the node it was walked from and its
//! name there. The export root has no location. `..` goes to the parent
//! node, never to the host's `..`, so a walk can never climb out.
//!
//! Hostile-input rules: names come from the guest; [`check_name`] refuses
//! empty names, ".", "..", and names with '/' or NUL before any system
//! call sees them. One name is resolved per call, beneath the parent's
//! descriptor, without following symlinks (see `host::open_path`); a
//! mount crossing into a kernel pseudo-file system is refused. Opening a
//! node for I/O re-checks dev/ino, so an inode swapped in under the same
//! name since the walk is never used (ESTALE).

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::host::{self, SysResult};

/// The file type of a node, from its st_mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    /// Character or block device, FIFO, socket: visible, never opened.
    Special,
}

impl Kind {
    pub fn of(mode: u32) -> Kind {
        match mode & libc::S_IFMT {
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFREG => Kind::File,
            libc::S_IFLNK => Kind::Symlink,
            _ => Kind::Special,
        }
    }
}

/// Where a node was walked from.
#[derive(Debug)]
pub struct Loc {
    pub parent: Arc<Node>,
    pub name: CString,
}

/// One walked-to file.
#[derive(Debug)]
pub struct Node {
    /// `O_PATH | O_NOFOLLOW` descriptor of the inode.
    pub fd: OwnedFd,
    pub kind: Kind,
    pub dev: u64,
    pub ino: u64,
    /// The root of a kernel pseudo-file system mounted below the export
    /// (`/proc`, `/sys`, ...): served as an empty directory, so the guest
    /// can mount its own file system there, but nothing below it is ever
    /// looked up or listed.
    pub sealed: bool,
    /// None for the export root.
    loc: Mutex<Option<Loc>>,
    live: Arc<AtomicUsize>,
}

/// Kernel pseudo-file systems a walk never enters (statfs f_type).
pub const PSEUDO_FS: &[(u32, &str)] = &[
    (0x0000_9fa0, "proc"),
    (0x6265_6572, "sysfs"),
    (0x0000_1cd1, "devpts"),
    (0x6462_6720, "debugfs"),
    (0x7472_6163, "tracefs"),
    (0x7363_6673, "securityfs"),
    (0x0027_e0eb, "cgroup"),
    (0x6367_7270, "cgroup2"),
    (0xcafe_4a11, "bpf"),
    (0x6265_6570, "configfs"),
    (0xde5e_81e4, "efivarfs"),
];

/// The name of the pseudo-file system `fd` is on, if it is one.
pub fn pseudo_fs(fd: BorrowedFd<'_>) -> SysResult<Option<&'static str>> {
    let st = host::fstatfs(fd)?;
    let ty = st.f_type as u64 as u32;
    Ok(PSEUDO_FS.iter().find(|(m, _)| *m == ty).map(|(_, n)| *n))
}

/// A guest-supplied name, checked to be one plain component.
pub fn check_name(name: &[u8]) -> SysResult<CString> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
        return Err(libc::EINVAL);
    }
    if name.len() > 255 {
        return Err(libc::ENAMETOOLONG);
    }
    CString::new(name).map_err(|_| libc::EINVAL)
}

impl Node {
    /// A node for `fd`, counted in `live`.
    pub fn new(fd: OwnedFd, st: &libc::stat, loc: Option<Loc>, live: &Arc<AtomicUsize>) -> Node {
        live.fetch_add(1, Ordering::Relaxed);
        Node {
            fd,
            kind: Kind::of(st.st_mode),
            dev: st.st_dev,
            ino: st.st_ino,
            sealed: false,
            loc: Mutex::new(loc),
            live: live.clone(),
        }
    }

    pub fn loc(&self) -> MutexGuard<'_, Option<Loc>> {
        self.loc.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_root(&self) -> bool {
        self.loc().is_none()
    }

    /// The parent node (the root for the root).
    pub fn parent(self: &Arc<Self>) -> Arc<Node> {
        match &*self.loc() {
            Some(l) => l.parent.clone(),
            None => self.clone(),
        }
    }

    /// The node's parent and name, for operations by name (rename,
    /// remove, link, reopening a file). EBUSY for the root.
    pub fn location(&self) -> SysResult<(Arc<Node>, CString)> {
        match &*self.loc() {
            Some(l) => Ok((l.parent.clone(), l.name.clone())),
            None => Err(libc::EBUSY),
        }
    }

    pub fn same_inode(&self, st: &libc::stat) -> bool {
        st.st_dev == self.dev && st.st_ino == self.ino
    }

    /// Check that the node's name in its parent still is this inode.
    pub fn check_location(&self) -> SysResult<(Arc<Node>, CString)> {
        let (parent, name) = self.location()?;
        let st = host::stat_at(parent.fd.as_fd(), &name)?;
        if !self.same_inode(&st) {
            return Err(libc::ESTALE);
        }
        Ok((parent, name))
    }

    /// Move the node (after a rename done by the server).
    pub fn relocate(&self, parent: Arc<Node>, name: CString) {
        let mut l = self.loc();
        if l.is_some() {
            *l = Some(Loc { parent, name });
        }
    }

    /// Open the node's inode for I/O with `flags` (which include
    /// `O_NOFOLLOW | O_NONBLOCK | O_NOCTTY`). A directory is opened through
    /// its own descriptor ("."), so it is exactly the walked inode; a
    /// regular file by its name in the parent, checked against the walked
    /// dev/ino. Symlinks (ELOOP) and special files (EPERM) are never opened.
    pub fn reopen(&self, flags: i32) -> SysResult<OwnedFd> {
        let fd = match self.kind {
            Kind::Dir => host::openat(self.fd.as_fd(), c".", flags | libc::O_DIRECTORY, 0)?,
            Kind::File => {
                let (parent, name) = self.location()?;
                host::openat(parent.fd.as_fd(), &name, flags, 0)?
            }
            Kind::Symlink => return Err(libc::ELOOP),
            Kind::Special => return Err(libc::EPERM),
        };
        let st = host::fstat(fd.as_fd())?;
        if !self.same_inode(&st) || Kind::of(st.st_mode) != self.kind {
            return Err(libc::ESTALE);
        }
        host::clear_nonblock(fd.as_fd())?;
        Ok(fd)
    }
}

/// Open `name` below the directory `dir` as a new node: one component,
/// beneath `dir`, no symlink followed, no entry into a pseudo-file system.
pub fn lookup(
    dir: &Arc<Node>,
    name: &CStr,
    live: &Arc<AtomicUsize>,
) -> SysResult<(Node, libc::stat)> {
    if dir.kind != Kind::Dir {
        return Err(libc::ENOTDIR);
    }
    if dir.sealed {
        return Err(libc::ENOENT);
    }
    let fd = host::open_path(dir.fd.as_fd(), name)?;
    let st = host::fstat(fd.as_fd())?;
    // A pseudo-file system can only be reached by crossing a mount, which
    // changes st_dev (the export root itself was checked when opened).
    let sealed = st.st_dev != dir.dev && pseudo_fs(fd.as_fd())?.is_some();
    if sealed && Kind::of(st.st_mode) != Kind::Dir {
        return Err(libc::EACCES);
    }
    let loc = Loc {
        parent: dir.clone(),
        name: name.to_owned(),
    };
    let mut node = Node::new(fd, &st, Some(loc), live);
    node.sealed = sealed;
    Ok((node, st))
}

impl Drop for Node {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::Relaxed);
        // Drop the parent chain iteratively: a chain can be as deep as the
        // node limit, and recursive drops would overflow the stack.
        let mut next = self.loc.get_mut().unwrap_or_else(|e| e.into_inner()).take();
        while let Some(loc) = next {
            next = match Arc::try_unwrap(loc.parent) {
                Ok(mut parent) => parent
                    .loc
                    .get_mut()
                    .unwrap_or_else(|e| e.into_inner())
                    .take(),
                Err(_) => None,
            };
        }
    }
}
