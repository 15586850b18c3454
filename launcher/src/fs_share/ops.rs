//! The 9P2000.L operations, one method of [`Server`] per request type.
//! Each decodes its body with the bounds-checked [`Reader`], does the work
//! by descriptor, and appends its response; an `Err(errno)` becomes the
//! Rlerror (the dispatcher discards anything half-written).
//!
//! Hostile-input rules (beyond those of `node` and `wire`): counts are
//! clamped to the msize, read-only exports answer EROFS before touching
//! anything, created modes and chmods lose setuid (and setgid on files),
//! a write clears setuid/setgid left on a file, ownership changes only to
//! the server's own ids, special files are never created (Tmknod EPERM,
//! Tlcreate always O_EXCL so it never opens an existing node) or opened.

use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;

use super::fid::{Fid, State};
use super::host::{self, SysResult};
use super::node::{self, check_name, Kind, Node};
use super::wire::{msg, Msg, Reader, IO_HEADER_LEN, MAX_WALK, NOFID, P9_IOHDRSZ, VERSION_9P2000_L};
use super::{qid_path, Server, MIN_MSIZE};

// Tsetattr valid bits.
const SETATTR_MODE: u32 = 0x1;
const SETATTR_UID: u32 = 0x2;
const SETATTR_GID: u32 = 0x4;
const SETATTR_SIZE: u32 = 0x8;
const SETATTR_ATIME: u32 = 0x10;
const SETATTR_MTIME: u32 = 0x20;
const SETATTR_ATIME_SET: u32 = 0x80;
const SETATTR_MTIME_SET: u32 = 0x100;

/// Tgetattr: the basic fields are valid.
const GETATTR_BASIC: u64 = 0x7ff;

// 9P2000.L open flags (Linux's, as the protocol defines them).
const L_ACCMODE: u32 = 0o3;
const L_CREATE: u32 = 0o100;
const L_TRUNC: u32 = 0o1000;
const L_APPEND: u32 = 0o2000;
const L_DSYNC: u32 = 0o10000;
const L_DIRECTORY: u32 = 0o200000;
const L_SYNC: u32 = 0o4000000;

/// Tunlinkat's flag.
const AT_REMOVEDIR: u32 = 0x200;
/// Rgetlock: unlocked.
const LOCK_TYPE_UNLCK: u8 = 2;
/// Rlock: granted.
const LOCK_SUCCESS: u8 = 0;

/// Permission bits a file may be given (no setuid, no setgid).
const FILE_MODE_MASK: u32 = 0o1777;
/// Permission bits a directory may be given (setgid and sticky, no setuid).
const DIR_MODE_MASK: u32 = 0o3777;

/// getdents64 scratch buffer bounds.
const DIRBUF_MIN: usize = 512;
const DIRBUF_MAX: usize = 64 << 10;

fn is_mutating_open(flags: u32) -> bool {
    flags & L_ACCMODE != 0 || flags & (L_TRUNC | L_APPEND | L_CREATE) != 0
}

/// Host open flags for a 9P2000.L open: the access mode, truncate,
/// append, sync and directory; never following a symlink, never becoming
/// a controlling terminal, never blocking on a FIFO swapped in. Other
/// flags (O_DIRECT, O_NOATIME, O_ASYNC, ...) are dropped.
fn open_flags(flags: u32) -> SysResult<i32> {
    let mut f = match flags & L_ACCMODE {
        0 => libc::O_RDONLY,
        1 => libc::O_WRONLY,
        2 => libc::O_RDWR,
        _ => return Err(libc::EINVAL),
    };
    if flags & L_TRUNC != 0 {
        f |= libc::O_TRUNC;
    }
    if flags & L_APPEND != 0 {
        f |= libc::O_APPEND;
    }
    if flags & L_DSYNC != 0 {
        f |= libc::O_DSYNC;
    }
    if flags & L_SYNC != 0 {
        f |= libc::O_SYNC;
    }
    if flags & L_DIRECTORY != 0 {
        f |= libc::O_DIRECTORY;
    }
    Ok(f | libc::O_NOFOLLOW | libc::O_NOCTTY | libc::O_NONBLOCK)
}

fn timespec(valid: u32, bit: u32, set_bit: u32, sec: u64, nsec: u64) -> SysResult<libc::timespec> {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: libc::UTIME_OMIT,
    };
    if valid & bit != 0 {
        if valid & set_bit != 0 {
            if nsec >= 1_000_000_000 {
                return Err(libc::EINVAL);
            }
            t.tv_sec = i64::try_from(sec).map_err(|_| libc::EINVAL)?;
            t.tv_nsec = nsec as i64;
        } else {
            t.tv_nsec = libc::UTIME_NOW;
        }
    }
    Ok(t)
}

/// chmod a node's inode exactly: fchmodat2 on its O_PATH descriptor, or
/// (older kernels) fchmod on a reopened descriptor.
fn chmod_node(
    fd: BorrowedFd<'_>,
    kind: Kind,
    reopen: impl FnOnce() -> SysResult<std::os::fd::OwnedFd>,
    mode: u32,
) -> SysResult<()> {
    match kind {
        Kind::Symlink => return Err(libc::EOPNOTSUPP),
        Kind::Special => return Err(libc::EPERM),
        Kind::Dir | Kind::File => {}
    }
    match host::fchmod_path(fd, mode) {
        Err(libc::ENOSYS) => host::fchmod(reopen()?.as_fd(), mode),
        r => r,
    }
}

fn mode_mask(kind: Kind) -> u32 {
    match kind {
        Kind::Dir => DIR_MODE_MASK,
        _ => FILE_MODE_MASK,
    }
}

impl Server {
    fn iounit(&self) -> u32 {
        self.msize.saturating_sub(P9_IOHDRSZ)
    }

    fn check_rw(&self) -> SysResult<()> {
        if self.read_only {
            Err(libc::EROFS)
        } else {
            Ok(())
        }
    }

    fn node(&self, fid: u32) -> SysResult<Arc<Node>> {
        Ok(self.fids.get(fid)?.node.clone())
    }

    fn dir_node(&self, fid: u32) -> SysResult<Arc<Node>> {
        let n = self.node(fid)?;
        if n.kind != Kind::Dir {
            return Err(libc::ENOTDIR);
        }
        Ok(n)
    }

    /// After a rename done here: every fid's node that was `old_name` in
    /// the directory `old_dir` is now `new_name` in `new_dir`.
    fn relocate(
        &self,
        old_dir: &Node,
        old_name: &CString,
        new_dir: &Arc<Node>,
        new_name: &CString,
    ) {
        for n in self.fids.nodes() {
            let moved = n.loc().as_ref().is_some_and(|l| {
                l.parent.dev == old_dir.dev && l.parent.ino == old_dir.ino && &l.name == old_name
            });
            if moved {
                n.relocate(new_dir.clone(), new_name.clone());
            }
        }
    }

    pub(super) fn version(
        &mut self,
        r: &mut Reader<'_>,
        tag: u16,
        out: &mut Vec<u8>,
    ) -> SysResult<()> {
        let msize = r.u32("msize")?;
        let version = r.str("version")?;
        // A Tversion starts a new session: every fid is clunked.
        self.fids.clear();
        self.msize = 0;
        if msize < MIN_MSIZE {
            return Err(libc::EINVAL);
        }
        let msize = msize.min(self.limits.msize);
        let mut m = Msg::begin(out, msg::TVERSION + 1, tag);
        m.u32(msize);
        if version == VERSION_9P2000_L {
            self.msize = msize;
            m.str(VERSION_9P2000_L);
        } else {
            m.str(b"unknown");
        }
        m.finish();
        Ok(())
    }

    pub(super) fn attach(
        &mut self,
        r: &mut Reader<'_>,
        tag: u16,
        out: &mut Vec<u8>,
    ) -> SysResult<()> {
        let fid = r.u32("fid")?;
        let afid = r.u32("afid")?;
        r.str("uname")?;
        r.str("aname")?;
        r.u32("n_uname")?;
        if afid != NOFID {
            return Err(libc::EBADF);
        }
        self.fids.insert(fid, Fid::walked(self.root.clone()))?;
        let root = self.root.clone();
        let q = self.node_qid(&root);
        let mut m = Msg::begin(out, msg::TATTACH + 1, tag);
        m.qid(&q);
        m.finish();
        Ok(())
    }

    pub(super) fn flush(
        &mut self,
        r: &mut Reader<'_>,
        tag: u16,
        out: &mut Vec<u8>,
    ) -> SysResult<()> {
        // Requests are answered in order, so nothing is ever pending.
        r.u16("oldtag")?;
        Msg::begin(out, msg::TFLUSH + 1, tag).finish();
        Ok(())
    }

    pub(super) fn walk(
        &mut self,
        r: &mut Reader<'_>,
        tag: u16,
        out: &mut Vec<u8>,
    ) -> SysResult<()> {
        let fid = r.u32("fid")?;
        let newfid = r.u32("newfid")?;
        let n = r.u16("nwname")? as usize;
        if n > MAX_WALK {
            return Err(libc::EINVAL);
        }
        let mut names: [&[u8]; MAX_WALK] = [&[]; MAX_WALK];
        for name in names.iter_mut().take(n) {
            *name = r.str("wname")?;
        }
        let start = self.fids.get(fid)?;
        if newfid != fid {
            self.fids.check_free(newfid)?;
        } else if !matches!(start.state, State::Walked) {
            return Err(libc::EBUSY);
        }
        let mut cur = start.node.clone();
        let mut qids = Vec::with_capacity(n);
        for (i, name) in names.iter().take(n).enumerate() {
            match self.walk_one(&cur, name) {
                Ok(next) => {
                    qids.push(self.node_qid(&next));
                    cur = next;
                }
                Err(e) if i == 0 => return Err(e),
                Err(_) => break,
            }
        }
        if qids.len() == n {
            if newfid == fid {
                self.fids.get_mut(fid)?.node = cur;
            } else {
                self.fids.insert(newfid, Fid::walked(cur))?;
            }
        }
        let mut m = Msg::begin(out, msg::TWALK + 1, tag);
        m.u16(qids.len() as u16);
        for q in &qids {
            m.qid(q);
        }
        m.finish();
        Ok(())
    }

    fn walk_one(&mut self, cur: &Arc<Node>, name: &[u8]) -> SysResult<Arc<Node>> {
        if cur.kind != Kind::Dir {
            return Err(libc::ENOTDIR);
        }
        if name == b".." {
            // The parent the node was walked from; the root's is itself.
            return Ok(cur.parent());
        }
        let name = check_name(name)?;
        self.check_node_room()?;
        let (n, _) = node::lookup(cur, &name, &self.live)?;
        Ok(Arc::new(n))
    }

    pub(super) fn getattr(
        &mut self,
        r: &mut Reader<'_>,
        tag: u16,
        out: &mut Vec<u8>,
    ) -> SysResult<()> {
        let fid = r.u32("fid")?;
        r.u64("request_mask")?;
        let n = self.node(fid)?;
        let st = host::fstat(n.fd.as_fd())?;
        let q = self.stat_qid(&st);
        let mut m = Msg::begin(out, msg::TGETATTR + 1, tag);
        m.u64(GETATTR_BASIC)
            .qid(&q)
            .u32(st.st_mode)
            .u32(st.st_uid)
            .u32(st.st_gid)
            .u64(st.st_nlink)
            .u64(st.st_rdev)
            .u64(st.st_size as u64)
            .u64(st.st_blksize as u64)
            .u64(st.st_blocks as u64)
            .u64(st.st_atime as u64)
            .u64(st.st_atime_nsec as u64)
            .u64(st.st_mtime as u64)
            .u64(st.st_mtime_nsec as u64)
            .u64(st.st_ctime as u64)
            .u64(st.st_ctime_nsec as u64)
            .u64(0) // btime
            .u64(0)
            .u64(0) // gen
            .u64(0); // data_version
        m.finish();
        Ok(())
    }

    pub(super) fn setattr(
        &mut self,
        r: &mut Reader<'_>,
        tag: u16,
        out: &mut Vec<u8>,
    ) -> SysResult<()> {
        let fid = r.u32("fid")?;
        let valid = r.u32("valid")?;
        let mode = r.u32("mode")?;
        let uid = r.u32("uid")?;
        let gid = r.u32("gid")?;
        let size = r.u64("size")?;
        let atime_sec = r.u64("atime_sec")?;
        let atime_nsec = r.u64("atime_nsec")?;
        let mtime_sec = r.u64("mtime_sec")?;
        let mtime_nsec = r.u64("mtime_nsec")?;
        let n = self.node(fid)?;
        self.check_rw()?;
        let ro_flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NOCTTY | libc::O_NONBLOCK;
        if valid & SETATTR_MODE != 0 {
            let mode = mode & mode_mask(n.kind);
            chmod_node(n.fd.as_fd(), n.kind, || n.reopen(ro_flags), mode)?;
        }
        if valid & (SETATTR_UID | SETATTR_GID) != 0 {
            let uid = if valid & SETATTR_UID != 0 {
                uid
            } else {
                u32::MAX
            };
            let gid = if valid & SETATTR_GID != 0 {
                gid
            } else {
                u32::MAX
            };
            if (uid != u32::MAX && uid != self.uid) || (gid != u32::MAX && gid != self.gid) {
                return Err(libc::EPERM);
            }
            host::fchown_empty(n.fd.as_fd(), uid, gid)?;
        }
        if valid & SETATTR_SIZE != 0 {
            match n.kind {
                Kind::File => {}
                Kind::Dir => return Err(libc::EISDIR),
                _ => return Err(libc::EINVAL),
            }
            // The fid's own descriptor where it is open for writing (a
            // file created 0444 and opened O_RDWR may still be truncated),
            // else a new one, which needs write permission like truncate(2).
            let own = match &self.fids.get(fid)?.state {
                State::Open { fd } => host::ftruncate(fd.as_fd(), size).ok(),
                _ => None,
            };
            if own.is_none() {
                let flags = libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_NOCTTY | libc::O_NONBLOCK;
                host::ftruncate(n.reopen(flags)?.as_fd(), size)?;
            }
        }
        if valid & (SETATTR_ATIME | SETATTR_MTIME) != 0 {
            let times = [
                timespec(
                    valid,
                    SETATTR_ATIME,
                    SETATTR_ATIME_SET,
                    atime_sec,
                    atime_nsec,
                )?,
                timespec(
                    valid,
                    SETATTR_MTIME,
                    SETATTR_MTIME_SET,
                    mtime_sec,
                    mtime_nsec,
                )?,
            ];
            if n.kind == Kind::Dir {
                // "." of the node's own descriptor: exactly this inode.
                host::utimens_at(n.fd.as_fd(), c".", &times)?;
            } else {
                // By name, without following a symlink, after checking the
                // name still is this inode.
                let (parent, name) = n.check_location()?;
                host::utimens_at(parent.fd.as_fd(), &name, &times)?;
            }
        }
        Msg::begin(out, msg::TSETATTR + 1, tag).finish();
        Ok(())
    }

    pub(super) fn lopen(
        &mut self,
        r: &mut Reader<'_>,
        tag: u16,
        out: &mut Vec<u8>,
    ) -> SysResult<()> {
        let fid = r.u32("fid")?;
        let flags = r.u32("flags")?;
        if self.read_only && is_mutating_open(flags) {
            return Err(libc::EROFS);
        }
        let oflags = open_flags(flags)?;
        let f = self.fids.get(fid)?;
        if !matches!(f.state, State::Walked) {
            return Err(libc::EBADF);
        }
        let n = f.node.clone();
        let fd = n.reopen(oflags)?;
        self.fids.get_mut(fid)?.state = State::Open { fd };
        let q = self.node_qid(&n);
        let iounit = self.iounit();
        let mut m = Msg::begin(out, msg::TLOPEN + 1, tag);
        m.qid(&q).u32(iounit);
        m.finish();
        Ok(())
    }

    pub(super) fn lcreate(
        &mut self,
        r: &mut Reader<'_>,
        tag: u16,
        out: &mut Vec<u8>,
    ) -> SysResult<()> {
        let fid = r.u32("fid")?;
        let name = r.str("name")?;
        let flags = r.u32("flags")?;
        let mode = r.u32("mode")?;
        r.u32("gid")?; // ignored: files belong to the server's user
        self.check_rw()?;
        let dir = self.dir_node(fid)?;
        if !matches!(self.fids.get(fid)?.state, State::Walked) {
            return Err(libc::EBADF);
        }
        let name = check_name(name)?;
        self.check_node_room()?;
        let want = mode & 0o777;
        // Always O_EXCL: a create never opens an existing inode (which
        // could be a device or a FIFO).
        let oflags = open_flags(flags)? | libc::O_CREAT | libc::O_EXCL;
        let fd = host::openat(dir.fd.as_fd(), &name, oflags, want)?;
        let st = host::fstat(fd.as_fd())?;
        if st.st_mode & 0o7777 != want {
            // The launcher's umask took bits away.
            host::fchmod(fd.as_fd(), want)?;
        }
        host::clear_nonblock(fd.as_fd())?;
        let path_fd = host::open_path(dir.fd.as_fd(), &name)?;
        let pst = host::fstat(path_fd.as_fd())?;
        if pst.st_dev != st.st_dev || pst.st_ino != st.st_ino {
            return Err(libc::ESTALE);
        }
        let loc = node::Loc { parent: dir, name };
        let new = Arc::new(Node::new(path_fd, &pst, Some(loc), &self.live));
        let q = self.node_qid(&new);
        let f = self.fids.get_mut(fid)?;
        f.node = new;
        f.state = State::Open { fd };
        let iounit = self.iounit();
        let mut m = Msg::begin(out, msg::TLCREATE + 1, tag);
        m.qid(&q).u32(iounit);
        m.finish();
        Ok(())
    }

    pub(super) fn read(
        &mut self,
        r: &mut Reader<'_>,
        tag: u16,
        out: &mut Vec<u8>,
    ) -> SysResult<()> {
        let fid = r.u32("fid")?;
        let offset = r.u64("offset")?;
        let count = r.u32("count")? as usize;
        let count = count.min((self.msize as usize).saturating_sub(IO_HEADER_LEN));
        let f = self.fids.get(fid)?;
        let mut m = Msg::begin(out, msg::TREAD + 1, tag);
        let at = m.len() + m.start();
        m.u32(0);
        let n = match &f.state {
            State::Xattr => 0,
            State::Open { fd } => {
                if f.node.kind == Kind::Dir {
                    return Err(libc::EISDIR);
                }
                host::pread_append(fd.as_fd(), m.buf(), count, offset)?
            }
            State::Walked => return Err(libc::EBADF),
        };
        m.buf()[at..at + 4].copy_from_slice(&(n as u32).to_le_bytes());
        m.finish();
        Ok(())
    }

    pub(super) fn write(
        &mut self,
        r: &mut Reader<'_>,
        tag: u16,
        out: &mut Vec<u8>,
    ) -> SysResult<()> {
        let fid = r.u32("fid")?;
        let offset = r.u64("offset")?;
        let count = r.u32("count")? as usize;
        let data = r.bytes(count, "data")?;
        self.check_rw()?;
        let f = self.fids.get(fid)?;
        let fd = f.open_fd()?;
        let n = host::pwrite(fd.as_fd(), data, offset)?;
        // Clear setuid/setgid a write leaves behind (the kernel keeps them
        // when the writer has CAP_FSETID).
        let st = host::fstat(fd.as_fd())?;
        if st.st_mode & (libc::S_ISUID | libc::S_ISGID) != 0 && Kind::of(st.st_mode) == Kind::File {
            host::fchmod(fd.as_fd(), st.st_mode & FILE_MODE_MASK)?;
        }
        let mut m = Msg::begin(out, msg::TWRITE + 1, tag);
        m.u32(n as u32);
        m.finish();
        Ok(())
    }

    pub(super) fn readdir(
        &mut self,
        r: &mut Reader<'_>,
        tag: u16,
        out: &mut Vec<u8>,
    ) -> SysResult<()> {
        let fid = r.u32("fid")?;
        let offset = r.u64("offset")?;
        let count = r.u32("count")? as usize;
        let count = count.min((self.msize as usize).saturating_sub(IO_HEADER_LEN));
        let Server {
            fids, dirbuf, devs, ..
        } = self;
        let f = fids.get(fid)?;
        if f.node.kind != Kind::Dir {
            return Err(libc::ENOTDIR);
        }
        if f.node.sealed {
            // A pseudo-file system's mount point reads as empty.
            let mut m = Msg::begin(out, msg::TREADDIR + 1, tag);
            m.u32(0);
            m.finish();
            return Ok(());
        }
        let fd = f.open_fd()?.as_fd();
        let at_root = f.node.is_root();
        let dir_dev = f.node.dev;
        let root_qid_path = qid_path(devs, f.node.dev, f.node.ino);
        // Offsets are the d_off cookies of getdents64 (0 = the start).
        host::lseek_set(fd, offset)?;
        let mut m = Msg::begin(out, msg::TREADDIR + 1, tag);
        let at = m.len() + m.start();
        m.u32(0);
        let mut used = 0usize;
        let want = count.clamp(DIRBUF_MIN, DIRBUF_MAX);
        if dirbuf.capacity() < want {
            dirbuf.reserve(want);
        }
        'fill: loop {
            let got = match host::getdents64(fd, dirbuf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(_) if used > 0 => break,
                Err(e) => return Err(e),
            };
            let mut p = 0usize;
            while let Some(hdr) = dirbuf.get(p..p + 19) {
                let ino = u64::from_le_bytes(hdr[0..8].try_into().unwrap_or_default());
                let off = u64::from_le_bytes(hdr[8..16].try_into().unwrap_or_default());
                let reclen = u16::from_le_bytes([hdr[16], hdr[17]]) as usize;
                let dtype = hdr[18];
                let Some(rec) = dirbuf
                    .get(p..p + reclen)
                    .filter(|_| reclen >= 19 && p + reclen <= got)
                else {
                    break 'fill;
                };
                let raw = &rec[19..];
                let name = &raw[..raw.iter().position(|&b| b == 0).unwrap_or(raw.len())];
                let need = 24 + name.len();
                if used + need > count {
                    if used == 0 {
                        return Err(libc::EINVAL);
                    }
                    break 'fill;
                }
                let (ty, path) = if at_root && name == b".." {
                    (super::wire::QTDIR, root_qid_path)
                } else {
                    let ty = match dtype {
                        libc::DT_DIR => super::wire::QTDIR,
                        libc::DT_LNK => super::wire::QTSYMLINK,
                        _ => super::wire::QTFILE,
                    };
                    (ty, qid_path(devs, dir_dev, ino))
                };
                m.u8(ty).u32(0).u64(path).u64(off).u8(dtype).str(name);
                used += need;
                p += reclen;
            }
        }
        m.buf()[at..at + 4].copy_from_slice(&(used as u32).to_le_bytes());
        m.finish();
        Ok(())
    }

    pub(super) fn clunk(
        &mut self,
        r: &mut Reader<'_>,
        tag: u16,
        out: &mut Vec<u8>,
    ) -> SysResult<()> {
        let fid = r.u32("fid")?;
        self.fids.remove(fid)?;
        Msg::begin(out, msg::TCLUNK + 1, tag).finish();
        Ok(())
    }

    pub(super) fn remove(
        &mut self,
        r: &mut Reader<'_>,
        tag: u16,
        out: &mut Vec<u8>,
    ) -> SysResult<()> {
        let fid = r.u32("fid")?;
        // The fid is clunked whatever happens.
        let f = self.fids.remove(fid)?;
        self.check_rw()?;
        let (parent, name) = f.node.check_location()?;
        let flags = if f.node.kind == Kind::Dir {
            libc::AT_REMOVEDIR
        } else {
            0
        };
        host::unlinkat(parent.fd.as_fd(), &name, flags)?;
        Msg::begin(out, msg::TREMOVE + 1, tag).finish();
        Ok(())
    }

    pub(super) fn statfs(
        &mut self,
        r: &mut Reader<'_>,
        tag: u16,
        out: &mut Vec<u8>,
    ) -> SysResult<()> {
        let fid = r.u32("fid")?;
        let n = self.node(fid)?;
        let st = host::fstatfs(n.fd.as_fd())?;
        let mut m = Msg::begin(out, msg::TSTATFS + 1, tag);
        m.u32(st.f_type as u64 as u32)
            .u32(st.f_bsize as u64 as u32)
            .u64(st.f_blocks)
            .u64(st.f_bfree)
            .u64(st.f_bavail)
            .u64(st.f_files)
            .u64(st.f_ffree)
            .u64(n.dev)
            .u32(st.f_namelen as u64 as u32);
        m.finish();
        Ok(())
    }

    pub(super) fn readlink(
        &mut self,
        r: &mut Reader<'_>,
        tag: u16,
        out: &mut Vec<u8>,
    ) -> SysResult<()> {
        let fid = r.u32("fid")?;
        let n = self.node(fid)?;
        if n.kind != Kind::Symlink {
            return Err(libc::EINVAL);
        }
        let target = host::readlink(n.fd.as_fd())?;
        let mut m = Msg::begin(out, msg::TREADLINK + 1, tag);
        m.str(&target);
        m.finish();
        Ok(())
    }

    pub(super) fn symlink(
        &mut self,
        r: &mut Reader<'_>,
        tag: u16,
        out: &mut Vec<u8>,
    ) -> SysResult<()> {
        let fid = r.u32("fid")?;
        let name = r.str("name")?;
        let target = r.str("symtgt")?;
        r.u32("gid")?; // ignored
        self.check_rw()?;
        let dir = self.dir_node(fid)?;
        let name = check_name(name)?;
        // The target is the guest's business: it is stored, never followed.
        let target = CString::new(target).map_err(|_| libc::EINVAL)?;
        host::symlinkat(&target, dir.fd.as_fd(), &name)?;
        let st = host::stat_at(dir.fd.as_fd(), &name)?;
        let q = self.stat_qid(&st);
        let mut m = Msg::begin(out, msg::TSYMLINK + 1, tag);
        m.qid(&q);
        m.finish();
        Ok(())
    }

    pub(super) fn mkdir(
        &mut self,
        r: &mut Reader<'_>,
        tag: u16,
        out: &mut Vec<u8>,
    ) -> SysResult<()> {
        let fid = r.u32("dfid")?;
        let name = r.str("name")?;
        let mode = r.u32("mode")?;
        r.u32("gid")?; // ignored
        self.check_rw()?;
        let dir = self.dir_node(fid)?;
        let name = check_name(name)?;
        let want = mode & DIR_MODE_MASK;
        host::mkdirat(dir.fd.as_fd(), &name, want)?;
        let fd = host::open_path(dir.fd.as_fd(), &name)?;
        let st = host::fstat(fd.as_fd())?;
        if Kind::of(st.st_mode) != Kind::Dir {
            return Err(libc::ESTALE);
        }
        if st.st_mode & 0o777 != want & 0o777 {
            // The launcher's umask took bits away; keep a setgid the
            // parent directory passed on.
            let mode = want | (st.st_mode & libc::S_ISGID);
            let reopen = || {
                host::openat(
                    fd.as_fd(),
                    c".",
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                    0,
                )
            };
            chmod_node(fd.as_fd(), Kind::Dir, reopen, mode)?;
        }
        let q = self.stat_qid(&st);
        let mut m = Msg::begin(out, msg::TMKDIR + 1, tag);
        m.qid(&q);
        m.finish();
        Ok(())
    }

    pub(super) fn rename(
        &mut self,
        r: &mut Reader<'_>,
        tag: u16,
        out: &mut Vec<u8>,
    ) -> SysResult<()> {
        let fid = r.u32("fid")?;
        let dfid = r.u32("dfid")?;
        let name = r.str("name")?;
        self.check_rw()?;
        let n = self.node(fid)?;
        let dir = self.dir_node(dfid)?;
        let new_name = check_name(name)?;
        let (parent, old_name) = n.check_location()?;
        host::renameat(parent.fd.as_fd(), &old_name, dir.fd.as_fd(), &new_name)?;
        self.relocate(&parent, &old_name, &dir, &new_name);
        Msg::begin(out, msg::TRENAME + 1, tag).finish();
        Ok(())
    }

    pub(super) fn renameat(
        &mut self,
        r: &mut Reader<'_>,
        tag: u16,
        out: &mut Vec<u8>,
    ) -> SysResult<()> {
        let olddir = r.u32("olddirfid")?;
        let oldname = r.str("oldname")?;
        let newdir = r.u32("newdirfid")?;
        let newname = r.str("newname")?;
        self.check_rw()?;
        let od = self.dir_node(olddir)?;
        let nd = self.dir_node(newdir)?;
        let oldname = check_name(oldname)?;
        let newname = check_name(newname)?;
        host::renameat(od.fd.as_fd(), &oldname, nd.fd.as_fd(), &newname)?;
        self.relocate(&od, &oldname, &nd, &newname);
        Msg::begin(out, msg::TRENAMEAT + 1, tag).finish();
        Ok(())
    }

    pub(super) fn unlinkat(
        &mut self,
        r: &mut Reader<'_>,
        tag: u16,
        out: &mut Vec<u8>,
    ) -> SysResult<()> {
        let fid = r.u32("dirfd")?;
        let name = r.str("name")?;
        let flags = r.u32("flags")?;
        self.check_rw()?;
        let dir = self.dir_node(fid)?;
        let name = check_name(name)?;
        let flags = if flags & AT_REMOVEDIR != 0 {
            libc::AT_REMOVEDIR
        } else {
            0
        };
        host::unlinkat(dir.fd.as_fd(), &name, flags)?;
        Msg::begin(out, msg::TUNLINKAT + 1, tag).finish();
        Ok(())
    }

    pub(super) fn link(
        &mut self,
        r: &mut Reader<'_>,
        tag: u16,
        out: &mut Vec<u8>,
    ) -> SysResult<()> {
        let dfid = r.u32("dfid")?;
        let fid = r.u32("fid")?;
        let name = r.str("name")?;
        self.check_rw()?;
        let dir = self.dir_node(dfid)?;
        let src = self.node(fid)?;
        // No new names for devices, FIFOs, sockets; none for directories.
        if matches!(src.kind, Kind::Special | Kind::Dir) {
            return Err(libc::EPERM);
        }
        let name = check_name(name)?;
        let (parent, old_name) = src.check_location()?;
        host::linkat(parent.fd.as_fd(), &old_name, dir.fd.as_fd(), &name)?;
        Msg::begin(out, msg::TLINK + 1, tag).finish();
        Ok(())
    }

    pub(super) fn fsync(
        &mut self,
        r: &mut Reader<'_>,
        tag: u16,
        out: &mut Vec<u8>,
    ) -> SysResult<()> {
        let fid = r.u32("fid")?;
        let datasync = r.u32("datasync")?;
        let f = self.fids.get(fid)?;
        host::fsync(f.open_fd()?.as_fd(), datasync != 0)?;
        Msg::begin(out, msg::TFSYNC + 1, tag).finish();
        Ok(())
    }

    pub(super) fn xattrwalk(
        &mut self,
        r: &mut Reader<'_>,
        tag: u16,
        out: &mut Vec<u8>,
    ) -> SysResult<()> {
        let fid = r.u32("fid")?;
        let newfid = r.u32("newfid")?;
        let name = r.str("name")?;
        let n = self.node(fid)?;
        if !name.is_empty() {
            // No extended attribute is ever served.
            return Err(libc::ENODATA);
        }
        // Listing: an empty list, read through `newfid`.
        let f = Fid {
            node: n,
            state: State::Xattr,
        };
        if newfid == fid {
            *self.fids.get_mut(fid)? = f;
        } else {
            self.fids.insert(newfid, f)?;
        }
        let mut m = Msg::begin(out, msg::TXATTRWALK + 1, tag);
        m.u64(0);
        m.finish();
        Ok(())
    }

    pub(super) fn lock(
        &mut self,
        r: &mut Reader<'_>,
        tag: u16,
        out: &mut Vec<u8>,
    ) -> SysResult<()> {
        let fid = r.u32("fid")?;
        r.u8("type")?;
        r.u32("flags")?;
        r.u64("start")?;
        r.u64("length")?;
        r.u32("proc_id")?;
        r.str("client_id")?;
        self.fids.get(fid)?;
        // Locks are the guest's own business: always granted.
        let mut m = Msg::begin(out, msg::TLOCK + 1, tag);
        m.u8(LOCK_SUCCESS);
        m.finish();
        Ok(())
    }

    pub(super) fn getlock(
        &mut self,
        r: &mut Reader<'_>,
        tag: u16,
        out: &mut Vec<u8>,
    ) -> SysResult<()> {
        let fid = r.u32("fid")?;
        r.u8("type")?;
        let start = r.u64("start")?;
        let length = r.u64("length")?;
        let proc_id = r.u32("proc_id")?;
        let client_id = r.str("client_id")?;
        self.fids.get(fid)?;
        let mut m = Msg::begin(out, msg::TGETLOCK + 1, tag);
        m.u8(LOCK_TYPE_UNLCK)
            .u64(start)
            .u64(length)
            .u32(proc_id)
            .str(client_id);
        m.finish();
        Ok(())
    }
}
