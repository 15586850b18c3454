//! The host-filesystem share of the micro-VM: a 9P2000.L file server that
//! runs inside the launcher process (see docs/design.md for why 9P2000.L
//! and why in-process). Transport-agnostic: `virtio::p9` feeds it one
//! request message at a time ([`Server::handle`]) and sends back the one
//! response it appends.
//!
//! Modules: `wire` (the message format, a bounds-checked reader),
//! `host` (the system calls, all relative to a descriptor), `node` (walked
//! files: O_PATH descriptors and their parent chain), `fid` (the guest's
//! handles), `ops` (one function per request type).
//!
//! Threads: none of its own. A [`Server`] is owned by the virtio-9p
//! device's worker thread and used through `&mut self`; it is `Send`.
//!
//! Hostile-input rules: the guest is the attacker. Every message is
//! decoded by a reader that checks each field against the bytes left; a
//! size field that is not the buffer's length, a message larger than the
//! negotiated msize, or anything malformed is answered with an Rlerror,
//! never a panic. Every path is resolved one component at a time beneath
//! the export, by descriptor, never following a symlink (symlinks are
//! served as symlinks, Treadlink reads them); `..` never leaves the export
//! root; kernel pseudo-file systems mounted below the export are not
//! entered; special files are visible but never opened or created;
//! setuid/setgid bits are stripped; a read-only export answers EROFS to
//! every mutating request. Response sizes are bounded by the msize, fids
//! by [`Limits::max_fids`], O_PATH descriptors of walked nodes by twice
//! that (at least 64).
//!
//! Credentials: the server never changes its credentials. Files it
//! creates belong to the launcher's user; the uid/gid of Tlcreate,
//! Tmkdir, Tsymlink and Tmknod are ignored, and Tsetattr changes
//! ownership only to the server's own effective uid/gid (EPERM
//! otherwise).
//!
//! Qids: the type comes from the file type, the version is 0, and the
//! path is the inode number with the device folded into the top 16 bits:
//! each st_dev seen gets a small index in first-seen order, and the path
//! is `index << 48 | (st_ino & (2^48 - 1))`. This assumes inode numbers
//! below 2^48 (true of ext4, xfs, tmpfs, overlayfs in practice) and fewer
//! than 65536 file systems below one export; beyond that, qids may
//! collide, which only confuses the guest's cache, never the server.

mod fid;
mod host;
mod node;
mod ops;
mod wire;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use fid::FidTable;
use host::SysResult;
use node::{Kind, Node};
use wire::{msg, rlerror, Qid, Reader, WireError, NOTAG, QTDIR, QTFILE, QTSYMLINK};

/// The smallest msize accepted (from the client and in [`Limits`]).
pub const MIN_MSIZE: u32 = 4096;
/// The largest msize [`Limits`] may ask for.
pub const MAX_MSIZE: u32 = 64 << 20;

/// Resource bounds of one export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest message, request or response (Tversion negotiates
    /// down to the client's). Default 512 KiB.
    pub msize: u32,
    /// The most fids live at once. Default 65536.
    pub max_fids: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            msize: 512 << 10,
            max_fids: 65536,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("cannot open the share root {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot export {}: it is on the kernel pseudo-file system {fs}", path.display())]
    PseudoFs { path: PathBuf, fs: &'static str },
    #[error("9P msize {msize} is out of range (accepted: {MIN_MSIZE}..={MAX_MSIZE})")]
    Msize { msize: u32 },
    #[error("max_fids 0 is not accepted (at least 1)")]
    MaxFids,
}

/// A 9P2000.L server exporting one directory.
#[derive(Debug)]
pub struct Server {
    root: Arc<Node>,
    read_only: bool,
    limits: Limits,
    /// The negotiated msize; 0 until a Tversion succeeded.
    msize: u32,
    fids: FidTable,
    /// Nodes alive (each holds an O_PATH descriptor).
    live: Arc<AtomicUsize>,
    node_limit: usize,
    /// st_dev -> index folded into qid paths.
    devs: HashMap<u64, u64>,
    /// getdents64 scratch buffer.
    dirbuf: Vec<u8>,
    uid: u32,
    gid: u32,
}

impl Server {
    /// Export the directory at `root` (opened O_PATH|O_DIRECTORY here,
    /// once). read_only: every mutating request gets EROFS, whatever the
    /// guest's mount flags.
    pub fn open(root: &Path, read_only: bool, limits: Limits) -> Result<Server, ShareError> {
        if !(MIN_MSIZE..=MAX_MSIZE).contains(&limits.msize) {
            return Err(ShareError::Msize {
                msize: limits.msize,
            });
        }
        if limits.max_fids == 0 {
            return Err(ShareError::MaxFids);
        }
        let open_err = |source| ShareError::Open {
            path: root.to_path_buf(),
            source,
        };
        let fd = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(root)
            .map_err(open_err)?;
        let fd = std::os::fd::OwnedFd::from(fd);
        let errno = |e: i32| open_err(std::io::Error::from_raw_os_error(e));
        let st = host::fstat(fd.as_fd()).map_err(errno)?;
        if Kind::of(st.st_mode) != Kind::Dir {
            return Err(errno(libc::ENOTDIR));
        }
        if let Some(fs) = node::pseudo_fs(fd.as_fd()).map_err(errno)? {
            return Err(ShareError::PseudoFs {
                path: root.to_path_buf(),
                fs,
            });
        }
        let live = Arc::new(AtomicUsize::new(0));
        let root = Arc::new(Node::new(fd, &st, None, &live));
        Ok(Server {
            root,
            read_only,
            limits,
            msize: 0,
            fids: FidTable::new(limits.max_fids),
            live,
            node_limit: limits.max_fids.saturating_mul(2).max(64),
            devs: HashMap::new(),
            dirbuf: Vec::new(),
            uid: host::geteuid(),
            gid: host::getegid(),
        })
    }

    /// The largest message size this server accepts (what Tversion
    /// negotiates down to).
    pub fn max_msize(&self) -> u32 {
        self.limits.msize
    }

    /// Handle one complete request message (size[4] type[1] tag[2] body)
    /// and append exactly one response message to `out` (an Rlerror with
    /// an errno for anything wrong). Never panics, never allocates more
    /// than the negotiated msize for one response.
    pub fn handle(&mut self, req: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        let tag = match req.get(5..7) {
            Some(t) => u16::from_le_bytes([t[0], t[1]]),
            None => NOTAG,
        };
        let res = self.dispatch(req, tag, out);
        let limit = self.cur_msize() as usize;
        let res = match res {
            Ok(()) if out.len() - start > limit => Err(libc::EMSGSIZE),
            r => r,
        };
        if let Err(e) = res {
            out.truncate(start);
            rlerror(out, tag, e);
        }
    }

    /// The msize in force: the negotiated one, or the server's before a
    /// Tversion.
    fn cur_msize(&self) -> u32 {
        if self.msize == 0 {
            self.limits.msize
        } else {
            self.msize
        }
    }

    fn dispatch(&mut self, req: &[u8], tag: u16, out: &mut Vec<u8>) -> SysResult<()> {
        if req.len() > self.cur_msize() as usize {
            return Err(libc::EMSGSIZE);
        }
        let mut r = Reader::new(req);
        let size = r.u32("size")?;
        let ty = r.u8("type")?;
        r.u16("tag")?;
        if size as usize != req.len() {
            return Err(libc::EPROTO);
        }
        if self.msize == 0 && ty != msg::TVERSION {
            return Err(libc::EPROTO);
        }
        let r = &mut r;
        match ty {
            msg::TVERSION => self.version(r, tag, out),
            msg::TAUTH => Err(libc::EOPNOTSUPP),
            msg::TATTACH => self.attach(r, tag, out),
            msg::TFLUSH => self.flush(r, tag, out),
            msg::TWALK => self.walk(r, tag, out),
            msg::TGETATTR => self.getattr(r, tag, out),
            msg::TSETATTR => self.setattr(r, tag, out),
            msg::TLOPEN => self.lopen(r, tag, out),
            msg::TLCREATE => self.lcreate(r, tag, out),
            msg::TREAD => self.read(r, tag, out),
            msg::TWRITE => self.write(r, tag, out),
            msg::TREADDIR => self.readdir(r, tag, out),
            msg::TCLUNK => self.clunk(r, tag, out),
            msg::TREMOVE => self.remove(r, tag, out),
            msg::TSTATFS => self.statfs(r, tag, out),
            msg::TREADLINK => self.readlink(r, tag, out),
            msg::TSYMLINK => self.symlink(r, tag, out),
            msg::TMKDIR => self.mkdir(r, tag, out),
            msg::TMKNOD => Err(libc::EPERM),
            msg::TRENAME => self.rename(r, tag, out),
            msg::TRENAMEAT => self.renameat(r, tag, out),
            msg::TUNLINKAT => self.unlinkat(r, tag, out),
            msg::TLINK => self.link(r, tag, out),
            msg::TFSYNC => self.fsync(r, tag, out),
            msg::TXATTRWALK => self.xattrwalk(r, tag, out),
            msg::TXATTRCREATE => Err(libc::EOPNOTSUPP),
            msg::TLOCK => self.lock(r, tag, out),
            msg::TGETLOCK => self.getlock(r, tag, out),
            _ => Err(libc::EOPNOTSUPP),
        }
    }

    /// EMFILE when no further node may be created.
    fn check_node_room(&self) -> SysResult<()> {
        if self.live.load(Ordering::Relaxed) >= self.node_limit {
            return Err(libc::EMFILE);
        }
        Ok(())
    }

    fn qid(&mut self, dev: u64, ino: u64, kind: Kind) -> Qid {
        Qid {
            ty: match kind {
                Kind::Dir => QTDIR,
                Kind::Symlink => QTSYMLINK,
                Kind::File | Kind::Special => QTFILE,
            },
            version: 0,
            path: qid_path(&mut self.devs, dev, ino),
        }
    }

    fn node_qid(&mut self, n: &Node) -> Qid {
        self.qid(n.dev, n.ino, n.kind)
    }

    fn stat_qid(&mut self, st: &libc::stat) -> Qid {
        self.qid(st.st_dev, st.st_ino, Kind::of(st.st_mode))
    }
}

/// See the module doc, "Qids".
fn qid_path(devs: &mut HashMap<u64, u64>, dev: u64, ino: u64) -> u64 {
    const INO_BITS: u32 = 48;
    let next = devs.len() as u64;
    let idx = *devs.entry(dev).or_insert(next);
    ((idx & 0xffff) << INO_BITS) | (ino & ((1u64 << INO_BITS) - 1))
}

impl From<WireError> for i32 {
    fn from(_: WireError) -> i32 {
        libc::EPROTO
    }
}

/// The virtio-9p device serves its queue with this server.
impl crate::vm::virtio::p9::P9Handler for Server {
    fn handle(&mut self, req: &[u8], out: &mut Vec<u8>) {
        // The device hands over the chain's whole readable part, which may
        // carry padding after the message: cut it at the declared size
        // (a size larger than what arrived is left for `handle` to refuse).
        let declared = req
            .get(..4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
        let req = match declared {
            Some(n) if n >= 7 && n <= req.len() => &req[..n],
            _ => req,
        };
        Server::handle(self, req, out);
    }

    fn max_msize(&self) -> u32 {
        Server::max_msize(self)
    }
}
