//! Tests driving `Server::handle` with hand-encoded 9P2000.L messages
//! against temporary directories.

use std::collections::BTreeSet;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::wire::{msg, NOFID, NOTAG, QTDIR, QTFILE, QTSYMLINK};
use super::{Limits, Server, ShareError};

// ---- a temporary directory -------------------------------------------------

struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "sandbox-p9-{}-{}-{}",
            std::process::id(),
            what,
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(p.join("export")).unwrap();
        TempDir(p)
    }
    /// The exported directory.
    fn export(&self) -> PathBuf {
        self.0.join("export")
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.export().join(rel)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Undo modes that would stop the removal.
        let _ = std::process::Command::new("chmod")
            .arg("-R")
            .arg("u+rwx")
            .arg(&self.0)
            .status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---- encoding --------------------------------------------------------------

#[derive(Default)]
struct B(Vec<u8>);

impl B {
    fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn s(mut self, v: &[u8]) -> Self {
        self = self.u16(v.len() as u16);
        self.0.extend_from_slice(v);
        self
    }
    fn raw(mut self, v: &[u8]) -> Self {
        self.0.extend_from_slice(v);
        self
    }
}

fn frame(ty: u8, tag: u16, body: &[u8]) -> Vec<u8> {
    let mut m = ((7 + body.len()) as u32).to_le_bytes().to_vec();
    m.push(ty);
    m.extend_from_slice(&tag.to_le_bytes());
    m.extend_from_slice(body);
    m
}

/// A decoded response: type and body.
#[derive(Debug)]
struct Resp {
    ty: u8,
    body: Vec<u8>,
}

impl Resp {
    fn errno(&self) -> Option<i32> {
        (self.ty == msg::RLERROR).then(|| i32::from_le_bytes(self.body[..4].try_into().unwrap()))
    }
    fn ok(self, ty: u8) -> Resp {
        assert_eq!(
            self.ty,
            ty + 1,
            "expected R{} got {:?} (errno {:?})",
            ty + 1,
            self.ty,
            self.errno()
        );
        self
    }
    fn u32_at(&self, at: usize) -> u32 {
        u32::from_le_bytes(self.body[at..at + 4].try_into().unwrap())
    }
    fn u64_at(&self, at: usize) -> u64 {
        u64::from_le_bytes(self.body[at..at + 8].try_into().unwrap())
    }
}

/// Check that `out` holds exactly one well-formed message and decode it.
fn parse_one(out: &[u8], tag: u16, msize: usize) -> Resp {
    assert!(out.len() >= 7, "response too short: {out:?}");
    let size = u32::from_le_bytes(out[..4].try_into().unwrap()) as usize;
    assert_eq!(
        size,
        out.len(),
        "size field must be the length of the one response"
    );
    assert!(
        size <= msize,
        "response of {size} bytes exceeds msize {msize}"
    );
    assert_eq!(u16::from_le_bytes([out[5], out[6]]), tag);
    let ty = out[4];
    assert!(ty % 2 == 1, "a response type is odd: {ty}");
    if ty == msg::RLERROR {
        assert_eq!(size, 11);
    }
    Resp {
        ty,
        body: out[7..].to_vec(),
    }
}

#[derive(Debug, PartialEq)]
struct Qid {
    ty: u8,
    path: u64,
}

fn qid_at(b: &[u8], at: usize) -> Qid {
    Qid {
        ty: b[at],
        path: u64::from_le_bytes(b[at + 5..at + 13].try_into().unwrap()),
    }
}

// ---- a client --------------------------------------------------------------

const O_RDONLY: u32 = 0;
const O_WRONLY: u32 = 1;
const O_RDWR: u32 = 2;
const O_CREAT: u32 = 0o100;
const O_TRUNC: u32 = 0o1000;
const O_APPEND: u32 = 0o2000;

struct Client {
    srv: Server,
    tag: u16,
    msize: usize,
}

impl Client {
    fn new(root: &Path, ro: bool) -> Client {
        Self::with_limits(root, ro, Limits::default())
    }

    /// A client that has done Tversion and attached fid 0 to the root.
    fn with_limits(root: &Path, ro: bool, limits: Limits) -> Client {
        let srv = Server::open(root, ro, limits).unwrap();
        let mut c = Client {
            srv,
            tag: 0,
            msize: limits.msize as usize,
        };
        let r = c
            .call(msg::TVERSION, B::default().u32(limits.msize).s(b"9P2000.L"))
            .ok(msg::TVERSION);
        assert_eq!(r.u32_at(0), limits.msize);
        c.call(
            msg::TATTACH,
            B::default().u32(0).u32(NOFID).s(b"user").s(b"").u32(0),
        )
        .ok(msg::TATTACH);
        c
    }

    fn raw(&mut self, req: &[u8], tag: u16) -> Resp {
        let mut out = Vec::new();
        self.srv.handle(req, &mut out);
        parse_one(&out, tag, self.msize)
    }

    fn call(&mut self, ty: u8, body: B) -> Resp {
        self.tag = self.tag.wrapping_add(1) % 0xfff0;
        let tag = self.tag;
        self.raw(&frame(ty, tag, &body.0), tag)
    }

    fn walk(&mut self, fid: u32, newfid: u32, names: &[&str]) -> Result<Vec<Qid>, i32> {
        let mut b = B::default().u32(fid).u32(newfid).u16(names.len() as u16);
        for n in names {
            b = b.s(n.as_bytes());
        }
        let r = self.call(msg::TWALK, b);
        if let Some(e) = r.errno() {
            return Err(e);
        }
        let r = r.ok(msg::TWALK);
        let n = u16::from_le_bytes([r.body[0], r.body[1]]) as usize;
        assert_eq!(r.body.len(), 2 + 13 * n);
        Ok((0..n).map(|i| qid_at(&r.body, 2 + 13 * i)).collect())
    }

    fn errno(&mut self, ty: u8, body: B) -> i32 {
        let r = self.call(ty, body);
        r.errno()
            .unwrap_or_else(|| panic!("expected an Rlerror for T{ty}, got R{}", r.ty))
    }

    fn lopen(&mut self, fid: u32, flags: u32) -> Result<Qid, i32> {
        let r = self.call(msg::TLOPEN, B::default().u32(fid).u32(flags));
        match r.errno() {
            Some(e) => Err(e),
            None => Ok(qid_at(&r.ok(msg::TLOPEN).body, 0)),
        }
    }

    fn read(&mut self, fid: u32, off: u64, count: u32) -> Vec<u8> {
        let r = self
            .call(msg::TREAD, B::default().u32(fid).u64(off).u32(count))
            .ok(msg::TREAD);
        let n = r.u32_at(0) as usize;
        assert_eq!(r.body.len(), 4 + n);
        r.body[4..].to_vec()
    }

    fn write(&mut self, fid: u32, off: u64, data: &[u8]) -> Result<u32, i32> {
        let r = self.call(
            msg::TWRITE,
            B::default()
                .u32(fid)
                .u64(off)
                .u32(data.len() as u32)
                .raw(data),
        );
        match r.errno() {
            Some(e) => Err(e),
            None => Ok(r.ok(msg::TWRITE).u32_at(0)),
        }
    }

    /// (name, next offset, type) of one Treaddir.
    fn readdir(&mut self, fid: u32, off: u64, count: u32) -> Vec<(String, u64, u8)> {
        let r = self
            .call(msg::TREADDIR, B::default().u32(fid).u64(off).u32(count))
            .ok(msg::TREADDIR);
        let n = r.u32_at(0) as usize;
        assert!(
            n <= count as usize,
            "Rreaddir of {n} bytes for count {count}"
        );
        let d = &r.body[4..];
        assert_eq!(d.len(), n);
        let mut p = 0;
        let mut v = Vec::new();
        while p < d.len() {
            let off = u64::from_le_bytes(d[p + 13..p + 21].try_into().unwrap());
            let ty = d[p + 21];
            let len = u16::from_le_bytes([d[p + 22], d[p + 23]]) as usize;
            let name = String::from_utf8(d[p + 24..p + 24 + len].to_vec()).unwrap();
            v.push((name, off, ty));
            p += 24 + len;
        }
        v
    }

    fn clunk(&mut self, fid: u32) -> Option<i32> {
        self.call(msg::TCLUNK, B::default().u32(fid)).errno()
    }

    /// (mode, size) from Tgetattr.
    fn getattr(&mut self, fid: u32) -> Result<(u32, u64), i32> {
        let r = self.call(msg::TGETATTR, B::default().u32(fid).u64(0x7ff));
        if let Some(e) = r.errno() {
            return Err(e);
        }
        let r = r.ok(msg::TGETATTR);
        assert_eq!(r.body.len(), 8 + 13 + 4 * 3 + 8 * 15);
        Ok((r.u32_at(21), r.u64_at(8 + 13 + 12 + 16)))
    }

    fn lcreate(&mut self, dfid: u32, name: &str, flags: u32, mode: u32) -> Result<Qid, i32> {
        let r = self.call(
            msg::TLCREATE,
            B::default()
                .u32(dfid)
                .s(name.as_bytes())
                .u32(flags)
                .u32(mode)
                .u32(0),
        );
        match r.errno() {
            Some(e) => Err(e),
            None => Ok(qid_at(&r.ok(msg::TLCREATE).body, 0)),
        }
    }

    fn mkdir(&mut self, dfid: u32, name: &str, mode: u32) -> Option<i32> {
        self.call(
            msg::TMKDIR,
            B::default().u32(dfid).s(name.as_bytes()).u32(mode).u32(0),
        )
        .errno()
    }

    fn setattr_mode(&mut self, fid: u32, mode: u32) -> Option<i32> {
        self.call(msg::TSETATTR, setattr(fid, 0x1, mode, 0)).errno()
    }
}

fn setattr(fid: u32, valid: u32, mode: u32, size: u64) -> B {
    B::default()
        .u32(fid)
        .u32(valid)
        .u32(mode)
        .u32(0)
        .u32(0)
        .u64(size)
        .u64(0)
        .u64(0)
        .u64(0)
        .u64(0)
}

fn mode_of(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

// ---- tests -----------------------------------------------------------------

#[test]
fn open_refuses_bad_limits_and_pseudo_fs_roots() {
    let t = TempDir::new("open");
    assert!(matches!(
        Server::open(
            &t.export(),
            false,
            Limits {
                msize: 100,
                max_fids: 4
            }
        ),
        Err(ShareError::Msize { msize: 100 })
    ));
    assert!(matches!(
        Server::open(
            &t.export(),
            false,
            Limits {
                msize: 8192,
                max_fids: 0
            }
        ),
        Err(ShareError::MaxFids)
    ));
    assert!(matches!(
        Server::open(&t.path("missing"), false, Limits::default()),
        Err(ShareError::Open { .. })
    ));
    if is_procfs("/proc") {
        let e = Server::open(Path::new("/proc"), true, Limits::default()).unwrap_err();
        assert!(matches!(e, ShareError::PseudoFs { fs: "proc", .. }), "{e}");
    }
}

fn is_procfs(p: &str) -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .map(|m| {
            m.lines()
                .any(|l| l.split(' ').nth(1) == Some(p) && l.split(' ').nth(2) == Some("proc"))
        })
        .unwrap_or(false)
}

#[test]
fn full_session_walk_read_readdir() {
    let t = TempDir::new("session");
    let content: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(t.path("data"), &content).unwrap();
    std::fs::create_dir(t.path("sub")).unwrap();
    let mut names = BTreeSet::new();
    for i in 0..60 {
        let n = format!("entry-with-a-longish-name-{i:03}");
        std::fs::write(t.path(&format!("sub/{n}")), b"x").unwrap();
        names.insert(n);
    }
    let mut c = Client::new(&t.export(), true);

    // Version negotiates down to the server's msize, and rejects others.
    let r = c
        .call(msg::TVERSION, B::default().u32(1 << 30).s(b"9P2000.u"))
        .ok(msg::TVERSION);
    assert_eq!(&r.body[6..], b"unknown");
    let r = c
        .call(msg::TVERSION, B::default().u32(1 << 30).s(b"9P2000.L"))
        .ok(msg::TVERSION);
    assert_eq!(r.u32_at(0), c.srv.max_msize());
    // Tversion clunked fid 0: attach again.
    assert_eq!(c.walk(0, 1, &[]).unwrap_err(), libc::EBADF);
    let r = c
        .call(
            msg::TATTACH,
            B::default().u32(0).u32(NOFID).s(b"").s(b"").u32(0),
        )
        .ok(msg::TATTACH);
    assert_eq!(qid_at(&r.body, 0).ty, QTDIR);
    assert_eq!(
        c.errno(msg::TAUTH, B::default().u32(5).s(b"u").s(b"").u32(0)),
        libc::EOPNOTSUPP
    );

    // Walk, getattr, open, read in chunks.
    let q = c.walk(0, 1, &["data"]).unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].ty, QTFILE);
    let (mode, size) = c.getattr(1).unwrap();
    assert_eq!(mode & libc::S_IFMT, libc::S_IFREG);
    assert_eq!(size, content.len() as u64);
    c.lopen(1, O_RDONLY).unwrap();
    let mut got = Vec::new();
    loop {
        let chunk = c.read(1, got.len() as u64, 30_000);
        if chunk.is_empty() {
            break;
        }
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got, content);
    // A count beyond the msize is clamped to it.
    let big = c.read(1, 0, u32::MAX);
    assert_eq!(big.len(), content.len().min(c.msize - 11));
    // Opening twice is refused; a walked-but-closed fid cannot be read.
    assert_eq!(c.lopen(1, O_RDONLY).unwrap_err(), libc::EBADF);
    c.walk(0, 2, &["data"]).unwrap();
    assert_eq!(
        c.errno(msg::TREAD, B::default().u32(2).u64(0).u32(10)),
        libc::EBADF
    );

    // Readdir across several small calls lists every entry once.
    c.walk(0, 3, &["sub"]).unwrap();
    c.lopen(3, O_RDONLY).unwrap();
    let mut seen = BTreeSet::new();
    let mut off = 0;
    let mut calls = 0;
    loop {
        let ents = c.readdir(3, off, 300);
        if ents.is_empty() {
            break;
        }
        calls += 1;
        for (name, next, _) in ents {
            assert!(seen.insert(name.clone()), "{name} listed twice");
            off = next;
        }
    }
    assert!(
        calls > 5,
        "300-byte calls must have needed several rounds, took {calls}"
    );
    names.insert(".".into());
    names.insert("..".into());
    assert_eq!(seen, names);
    // Restarting at 0 gives the first entries again; a tiny count is EINVAL.
    assert!(!c.readdir(3, 0, 4096).is_empty());
    assert_eq!(
        c.errno(msg::TREADDIR, B::default().u32(3).u64(0).u32(10)),
        libc::EINVAL
    );
    // Readdir of a file fid, read of a directory.
    assert_eq!(
        c.errno(msg::TREADDIR, B::default().u32(1).u64(0).u32(4096)),
        libc::ENOTDIR
    );
    assert_eq!(
        c.errno(msg::TREAD, B::default().u32(3).u64(0).u32(10)),
        libc::EISDIR
    );

    // Statfs, xattrs, locks, flush.
    c.call(msg::TSTATFS, B::default().u32(0)).ok(msg::TSTATFS);
    let r = c
        .call(msg::TXATTRWALK, B::default().u32(1).u32(9).s(b""))
        .ok(msg::TXATTRWALK);
    assert_eq!(r.u64_at(0), 0);
    assert!(c.read(9, 0, 100).is_empty());
    assert_eq!(c.clunk(9), None);
    assert_eq!(
        c.errno(
            msg::TXATTRWALK,
            B::default().u32(1).u32(9).s(b"security.selinux")
        ),
        libc::ENODATA
    );
    assert_eq!(
        c.errno(
            msg::TXATTRCREATE,
            B::default().u32(1).s(b"user.x").u64(1).u32(0)
        ),
        libc::EOPNOTSUPP
    );
    let r = c
        .call(
            msg::TLOCK,
            B::default()
                .u32(1)
                .u8(1)
                .u32(0)
                .u64(0)
                .u64(10)
                .u32(42)
                .s(b"guest"),
        )
        .ok(msg::TLOCK);
    assert_eq!(r.body, [0]);
    let r = c
        .call(
            msg::TGETLOCK,
            B::default().u32(1).u8(1).u64(5).u64(10).u32(42).s(b"guest"),
        )
        .ok(msg::TGETLOCK);
    assert_eq!(r.body[0], 2); // F_UNLCK
    c.call(msg::TFLUSH, B::default().u16(3)).ok(msg::TFLUSH);
    c.call(msg::TFSYNC, B::default().u32(1).u32(0))
        .ok(msg::TFSYNC);

    for fid in [1, 2, 3] {
        assert_eq!(c.clunk(fid), None);
    }
    assert_eq!(c.clunk(1), Some(libc::EBADF));
}

#[test]
fn rw_export_creates_writes_renames_unlinks() {
    let t = TempDir::new("rw");
    let mut c = Client::new(&t.export(), false);

    // Create + write + read back through the same fid.
    c.walk(0, 1, &[]).unwrap();
    let q = c.lcreate(1, "new", O_RDWR, 0o640).unwrap();
    assert_eq!(q.ty, QTFILE);
    assert_eq!(c.write(1, 0, b"hello world").unwrap(), 11);
    assert_eq!(c.read(1, 6, 100), b"world");
    assert_eq!(std::fs::read(t.path("new")).unwrap(), b"hello world");
    assert_eq!(
        mode_of(&t.path("new")),
        0o640,
        "the umask must not change the mode"
    );
    assert_eq!(
        std::fs::metadata(t.path("new")).unwrap().uid(),
        super::host::geteuid()
    );
    // Create never opens an existing file.
    c.walk(0, 2, &[]).unwrap();
    assert_eq!(
        c.lcreate(2, "new", O_RDWR, 0o644).unwrap_err(),
        libc::EEXIST
    );
    // Setattr size truncates, times can be set.
    c.call(msg::TSETATTR, setattr(1, 0x8, 0, 5))
        .ok(msg::TSETATTR);
    assert_eq!(std::fs::read(t.path("new")).unwrap(), b"hello");
    let times = setattr(1, 0x10 | 0x20 | 0x80 | 0x100, 0, 0);
    let mut times = times.0;
    times[28..36].copy_from_slice(&1_000_000u64.to_le_bytes()); // atime_sec
    times[44..52].copy_from_slice(&2_000_000u64.to_le_bytes()); // mtime_sec
    c.call(msg::TSETATTR, B(times)).ok(msg::TSETATTR);
    let md = std::fs::metadata(t.path("new")).unwrap();
    assert_eq!((md.atime(), md.mtime()), (1_000_000, 2_000_000));
    // Chown only to our own ids.
    let me = (super::host::geteuid(), super::host::getegid());
    let own = B::default()
        .u32(1)
        .u32(0x6)
        .u32(0)
        .u32(me.0)
        .u32(me.1)
        .raw(&[0; 40]);
    c.call(msg::TSETATTR, own).ok(msg::TSETATTR);
    let other = B::default()
        .u32(1)
        .u32(0x2)
        .u32(0)
        .u32(me.0 ^ 1)
        .u32(0)
        .raw(&[0; 40]);
    assert_eq!(c.errno(msg::TSETATTR, other), libc::EPERM);
    // Opening with O_TRUNC / O_APPEND.
    c.walk(0, 3, &["new"]).unwrap();
    c.lopen(3, O_WRONLY | O_APPEND).unwrap();
    c.write(3, 0, b"!").unwrap();
    assert_eq!(std::fs::read(t.path("new")).unwrap(), b"hello!");

    // mkdir, symlink, readlink, link.
    assert_eq!(c.mkdir(0, "d", 0o750), None);
    assert_eq!(mode_of(&t.path("d")), 0o750);
    let r = c
        .call(msg::TSYMLINK, B::default().u32(0).s(b"ln").s(b"new").u32(0))
        .ok(msg::TSYMLINK);
    assert_eq!(qid_at(&r.body, 0).ty, QTSYMLINK);
    c.walk(0, 4, &["ln"]).unwrap();
    let r = c
        .call(msg::TREADLINK, B::default().u32(4))
        .ok(msg::TREADLINK);
    assert_eq!(&r.body[2..], b"new");
    c.walk(0, 5, &["d"]).unwrap();
    c.call(msg::TLINK, B::default().u32(5).u32(3).s(b"hard"))
        .ok(msg::TLINK);
    assert_eq!(std::fs::read(t.path("d/hard")).unwrap(), b"hello!");
    assert_eq!(
        c.errno(msg::TLINK, B::default().u32(0).u32(5).s(b"dirlink")),
        libc::EPERM
    );

    // Rename a walked (not opened) file; the fid follows it.
    std::fs::write(t.path("f"), b"f-data").unwrap();
    c.walk(0, 6, &["f"]).unwrap();
    c.call(msg::TRENAMEAT, B::default().u32(0).s(b"f").u32(5).s(b"g"))
        .ok(msg::TRENAMEAT);
    assert!(!t.path("f").exists());
    c.lopen(6, O_RDONLY).unwrap();
    assert_eq!(c.read(6, 0, 100), b"f-data");
    // Trename of the fid itself, then open a clone of it.
    c.walk(5, 7, &["g"]).unwrap();
    c.call(msg::TRENAME, B::default().u32(7).u32(0).s(b"h"))
        .ok(msg::TRENAME);
    assert_eq!(std::fs::read(t.path("h")).unwrap(), b"f-data");
    c.walk(7, 8, &[]).unwrap();
    c.lopen(8, O_RDONLY).unwrap();
    // ".." of a renamed directory is its new parent.
    c.mkdir(5, "inner", 0o755);
    c.walk(5, 9, &["inner"]).unwrap();
    c.call(
        msg::TRENAMEAT,
        B::default().u32(5).s(b"inner").u32(0).s(b"moved"),
    )
    .ok(msg::TRENAMEAT);
    let up = c.walk(9, 10, &["..", "h"]).unwrap();
    assert_eq!(up.len(), 2, "moved/.. is the root, which holds h");

    // Unlink a file and a directory, remove a fid.
    c.call(msg::TUNLINKAT, B::default().u32(5).s(b"hard").u32(0))
        .ok(msg::TUNLINKAT);
    assert!(!t.path("d/hard").exists());
    assert_eq!(
        c.errno(msg::TUNLINKAT, B::default().u32(0).s(b"moved").u32(0)),
        libc::EISDIR
    );
    c.call(msg::TUNLINKAT, B::default().u32(0).s(b"moved").u32(0x200))
        .ok(msg::TUNLINKAT);
    assert!(!t.path("moved").exists());
    c.call(msg::TREMOVE, B::default().u32(8)).ok(msg::TREMOVE);
    assert!(!t.path("h").exists());
    assert_eq!(c.clunk(8), Some(libc::EBADF), "Tremove clunks the fid");
    // The root cannot be removed or renamed.
    c.walk(0, 11, &[]).unwrap();
    assert_eq!(c.errno(msg::TREMOVE, B::default().u32(11)), libc::EBUSY);
    assert_eq!(
        c.errno(msg::TRENAME, B::default().u32(0).u32(5).s(b"x")),
        libc::EBUSY
    );
    // mknod is refused.
    assert_eq!(
        c.errno(
            msg::TMKNOD,
            B::default()
                .u32(0)
                .s(b"dev")
                .u32(0o20666)
                .u32(1)
                .u32(3)
                .u32(0)
        ),
        libc::EPERM
    );
    assert!(!t.path("dev").exists());
}

#[test]
fn ro_export_answers_erofs_to_every_mutating_op() {
    let t = TempDir::new("ro");
    std::fs::write(t.path("f"), b"keep").unwrap();
    std::fs::create_dir(t.path("d")).unwrap();
    let mut c = Client::new(&t.export(), true);
    c.walk(0, 1, &["f"]).unwrap();
    c.walk(0, 2, &["d"]).unwrap();
    for flags in [
        O_WRONLY,
        O_RDWR,
        O_RDONLY | O_TRUNC,
        O_RDONLY | O_APPEND,
        O_RDONLY | O_CREAT,
    ] {
        assert_eq!(
            c.lopen(1, flags).unwrap_err(),
            libc::EROFS,
            "lopen flags {flags:#o}"
        );
    }
    c.walk(0, 3, &[]).unwrap();
    assert_eq!(c.lcreate(3, "new", O_RDWR, 0o644).unwrap_err(), libc::EROFS);
    c.lopen(1, O_RDONLY).unwrap();
    assert_eq!(c.write(1, 0, b"x").unwrap_err(), libc::EROFS);
    for valid in [0x1, 0x2, 0x8, 0x10 | 0x20, 0] {
        assert_eq!(
            c.errno(msg::TSETATTR, setattr(1, valid, 0o777, 0)),
            libc::EROFS
        );
    }
    let ops: Vec<(u8, B)> = vec![
        (msg::TMKDIR, B::default().u32(0).s(b"nd").u32(0o755).u32(0)),
        (msg::TSYMLINK, B::default().u32(0).s(b"ln").s(b"f").u32(0)),
        (msg::TLINK, B::default().u32(2).u32(1).s(b"hard")),
        (msg::TRENAME, B::default().u32(1).u32(2).s(b"moved")),
        (
            msg::TRENAMEAT,
            B::default().u32(0).s(b"f").u32(2).s(b"moved"),
        ),
        (msg::TUNLINKAT, B::default().u32(0).s(b"f").u32(0)),
        (msg::TUNLINKAT, B::default().u32(0).s(b"d").u32(0x200)),
        (msg::TREMOVE, B::default().u32(1)),
    ];
    for (ty, body) in ops {
        assert_eq!(c.errno(ty, body), libc::EROFS, "T{ty}");
    }
    assert_eq!(std::fs::read(t.path("f")).unwrap(), b"keep");
    assert!(t.path("d").is_dir());
    let names: Vec<_> = std::fs::read_dir(t.export()).unwrap().collect();
    assert_eq!(names.len(), 2);
    // Reading still works.
    c.walk(0, 4, &["f"]).unwrap();
    c.lopen(4, O_RDONLY).unwrap();
    assert_eq!(c.read(4, 0, 10), b"keep");
}

#[test]
fn symlinks_are_served_as_symlinks_never_followed() {
    let t = TempDir::new("symlink");
    std::fs::create_dir(t.path("sub")).unwrap();
    std::fs::write(t.path("sub/file"), b"inside").unwrap();
    symlink("/etc", t.path("etc")).unwrap();
    symlink("..", t.path("sub/up")).unwrap();
    symlink("/etc/passwd", t.path("passwd")).unwrap();
    symlink("sub", t.path("rel")).unwrap();
    let mut c = Client::new(&t.export(), false);

    let q = c.walk(0, 1, &["etc"]).unwrap();
    assert_eq!(q[0].ty, QTSYMLINK);
    let r = c
        .call(msg::TREADLINK, B::default().u32(1))
        .ok(msg::TREADLINK);
    assert_eq!(&r.body[2..], b"/etc");
    // Through the link: the walk stops at the link, newfid not created.
    let q = c.walk(0, 2, &["etc", "passwd"]).unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(c.clunk(2), Some(libc::EBADF));
    assert_eq!(c.walk(1, 2, &["passwd"]).unwrap_err(), libc::ENOTDIR);
    assert_eq!(c.walk(0, 2, &["sub", "up", "sub"]).unwrap().len(), 2);
    assert_eq!(c.walk(0, 2, &["rel", "file"]).unwrap().len(), 1);
    // A symlink is never opened (not even read-only) nor chmod-ed.
    c.walk(0, 3, &["passwd"]).unwrap();
    assert_eq!(c.lopen(3, O_RDONLY).unwrap_err(), libc::ELOOP);
    assert_eq!(c.setattr_mode(3, 0o777), Some(libc::EOPNOTSUPP));
    // Getattr reports the link itself.
    let (mode, _) = c.getattr(3).unwrap();
    assert_eq!(mode & libc::S_IFMT, libc::S_IFLNK);
    // Creating through a symlinked name does not follow it.
    assert_eq!(
        c.lcreate(0, "passwd", O_RDWR, 0o644).unwrap_err(),
        libc::EEXIST
    );
    c.walk(0, 4, &[]).unwrap();
    assert_eq!(c.mkdir(4, "etc", 0o755), Some(libc::EEXIST));
}

#[test]
fn dotdot_at_root_stays_and_bad_names_are_refused() {
    let t = TempDir::new("dotdot");
    std::fs::write(t.0.join("secret"), b"outside the export").unwrap();
    std::fs::create_dir(t.path("sub")).unwrap();
    let mut c = Client::new(&t.export(), false);
    let root = c.walk(0, 1, &[]).unwrap();
    assert!(root.is_empty());
    let r = c
        .call(
            msg::TATTACH,
            B::default().u32(50).u32(NOFID).s(b"").s(b"").u32(0),
        )
        .ok(msg::TATTACH);
    let root_path = qid_at(&r.body, 0).path;
    let q = c.walk(0, 2, &["..", "..", ".."]).unwrap();
    assert!(q.iter().all(|q| q.path == root_path && q.ty == QTDIR));
    assert_eq!(
        c.walk(0, 3, &["..", "secret"]).unwrap().len(),
        1,
        "partial walk: secret not found"
    );
    assert_eq!(
        c.walk(0, 3, &["sub", "..", "..", "..", "secret"])
            .unwrap()
            .len(),
        4
    );
    assert_eq!(c.walk(2, 3, &["secret"]).unwrap_err(), libc::ENOENT);
    let q = c.walk(0, 3, &["sub", ".."]).unwrap();
    assert_eq!(q[1].path, root_path);
    for bad in ["", ".", "a/b", "sub/..", "../secret", "x\0y"] {
        assert_eq!(
            c.walk(0, 4, &[bad]).unwrap_err(),
            libc::EINVAL,
            "name {bad:?}"
        );
    }
    assert_eq!(
        c.lcreate(1, "../escape", O_RDWR, 0o644).unwrap_err(),
        libc::EINVAL
    );
    assert_eq!(c.mkdir(1, "..", 0o755), Some(libc::EINVAL));
    assert_eq!(
        c.errno(
            msg::TRENAMEAT,
            B::default().u32(0).s(b"sub").u32(0).s(b"../sub")
        ),
        libc::EINVAL
    );
    assert!(!t.0.join("escape").exists());
    // Readdir of the root gives ".." the root's own qid.
    c.lopen(1, O_RDONLY).unwrap();
    let r = c
        .call(msg::TREADDIR, B::default().u32(1).u64(0).u32(8192))
        .ok(msg::TREADDIR);
    let d = &r.body[4..];
    let mut p = 0;
    let mut found = false;
    while p < d.len() {
        let len = u16::from_le_bytes([d[p + 22], d[p + 23]]) as usize;
        if &d[p + 24..p + 24 + len] == b".." {
            assert_eq!(qid_at(d, p).path, root_path);
            found = true;
        }
        p += 24 + len;
    }
    assert!(found);
    // More than 16 names is refused.
    let names = vec!["sub"; 17];
    assert_eq!(c.walk(0, 5, &names).unwrap_err(), libc::EINVAL);
}

#[test]
fn special_files_are_visible_never_opened() {
    let t = TempDir::new("special");
    let fifo =
        std::ffi::CString::new(t.path("fifo").into_os_string().into_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o666) }, 0);
    let _sock = std::os::unix::net::UnixListener::bind(t.path("sock")).unwrap();
    let dev = std::ffi::CString::new(t.path("null").into_os_string().into_encoded_bytes()).unwrap();
    // SAFETY: a valid path; succeeds only with CAP_MKNOD.
    let have_dev =
        unsafe { libc::mknod(dev.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) } == 0;
    let mut c = Client::new(&t.export(), false);
    let mut names = vec!["fifo", "sock"];
    if have_dev {
        names.push("null");
    }
    for (i, name) in names.iter().enumerate() {
        let fid = 10 + i as u32;
        c.walk(0, fid, &[name]).unwrap();
        let (mode, _) = c.getattr(fid).unwrap();
        assert_ne!(mode & libc::S_IFMT, libc::S_IFREG);
        for flags in [O_RDONLY, O_WRONLY, O_RDWR] {
            assert_eq!(
                c.lopen(fid, flags).unwrap_err(),
                libc::EPERM,
                "{name} {flags}"
            );
        }
        assert_eq!(c.setattr_mode(fid, 0o777), Some(libc::EPERM));
        assert_eq!(
            c.errno(msg::TLINK, B::default().u32(0).u32(fid).s(b"alias")),
            libc::EPERM
        );
        // Tlcreate over it neither opens nor replaces it.
        c.walk(0, 30, &[]).unwrap();
        assert_eq!(
            c.lcreate(30, name, O_RDWR, 0o644).unwrap_err(),
            libc::EEXIST
        );
        c.clunk(30);
    }
    c.walk(0, 1, &[]).unwrap();
    c.lopen(1, O_RDONLY).unwrap();
    let listed: BTreeSet<String> = c.readdir(1, 0, 8192).into_iter().map(|e| e.0).collect();
    for n in &names {
        assert!(listed.contains(*n), "{n} is listed");
    }
}

#[test]
fn swapped_inode_is_never_opened() {
    let t = TempDir::new("swap");
    std::fs::write(t.path("f"), b"walked").unwrap();
    std::fs::write(t.path("other"), b"swapped in").unwrap();
    let mut c = Client::new(&t.export(), false);
    c.walk(0, 1, &["f"]).unwrap();
    // Replace the walked file under its name (a host-side race).
    std::fs::rename(t.path("other"), t.path("f")).unwrap();
    assert_eq!(c.lopen(1, O_RDONLY).unwrap_err(), libc::ESTALE);
    assert_eq!(c.errno(msg::TREMOVE, B::default().u32(1)), libc::ESTALE);
    assert!(t.path("f").exists());
    // Replaced by a symlink to a host file: never followed.
    c.walk(0, 2, &["f"]).unwrap();
    std::fs::remove_file(t.path("f")).unwrap();
    symlink("/etc/hostname", t.path("f")).unwrap();
    assert_eq!(c.lopen(2, O_RDONLY).unwrap_err(), libc::ELOOP);
}

#[test]
fn pseudo_filesystems_below_the_export_are_not_entered() {
    if !is_procfs("/proc") {
        eprintln!("skipped: /proc is not procfs here");
        return;
    }
    let mut c = Client::new(Path::new("/"), true);
    // The mount point itself is served (the guest mounts its own proc
    // there) as an empty directory; nothing below it is reachable.
    assert_eq!(c.walk(0, 1, &["proc"]).unwrap().len(), 1);
    c.lopen(1, O_RDONLY).unwrap();
    assert!(c.readdir(1, 0, 8192).is_empty());
    c.clunk(1);
    let below = c.walk(0, 1, &["proc", "self"]);
    assert!(
        matches!(below, Ok(ref v) if v.len() < 2) || below.as_ref().err() == Some(&libc::ENOENT),
        "/proc/self must not be reached: {below:?}"
    );
    c.clunk(1);
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    for (mnt, fs) in [
        ("/sys", "sysfs"),
        ("/dev/pts", "devpts"),
        ("/sys/fs/cgroup", "cgroup2"),
    ] {
        if mounts
            .lines()
            .any(|l| l.split(' ').nth(1) == Some(mnt) && l.split(' ').nth(2) == Some(fs))
        {
            let names: Vec<&str> = mnt[1..].split('/').collect();
            let mut below = names.clone();
            below.push("x");
            let q = c.walk(0, 1, &below);
            assert!(
                matches!(q, Ok(ref v) if v.len() < below.len())
                    || matches!(q.as_ref().err(), Some(&libc::EACCES) | Some(&libc::ENOENT)),
                "{mnt} ({fs}) must not be entered"
            );
            c.clunk(1);
        }
    }
    // The rest of the root is served.
    assert_eq!(c.walk(0, 1, &["etc"]).unwrap().len(), 1);
}

#[test]
fn setuid_and_setgid_are_stripped() {
    let t = TempDir::new("suid");
    let mut c = Client::new(&t.export(), false);
    c.walk(0, 1, &[]).unwrap();
    c.lcreate(1, "s", O_RDWR, 0o6755).unwrap();
    assert_eq!(mode_of(&t.path("s")), 0o755);
    assert_eq!(c.setattr_mode(1, 0o6777), None);
    assert_eq!(mode_of(&t.path("s")), 0o777);
    // mkdir never sets setuid (nor setgid: Linux's mkdir takes only the
    // permission and sticky bits, setgid comes from the parent).
    assert_eq!(c.mkdir(0, "d", 0o6755), None);
    assert_eq!(mode_of(&t.path("d")), 0o755);
    c.walk(0, 2, &["d"]).unwrap();
    assert_eq!(c.setattr_mode(2, 0o6750), None);
    assert_eq!(
        mode_of(&t.path("d")),
        0o2750,
        "setgid stays on directories, setuid never"
    );
    assert_eq!(c.setattr_mode(2, 0o4750), None);
    assert_eq!(mode_of(&t.path("d")), 0o750);
    // A write clears setuid/setgid set on the host.
    std::fs::set_permissions(t.path("s"), std::fs::Permissions::from_mode(0o6755)).unwrap();
    assert_eq!(mode_of(&t.path("s")), 0o6755);
    c.write(1, 0, b"x").unwrap();
    assert_eq!(mode_of(&t.path("s")), 0o755);
}

#[test]
fn fid_limit_gives_emfile() {
    let t = TempDir::new("fids");
    for i in 0..40 {
        std::fs::write(t.path(&format!("f{i}")), b"").unwrap();
    }
    let limits = Limits {
        msize: 8192,
        max_fids: 4,
    };
    let mut c = Client::with_limits(&t.export(), false, limits);
    for fid in 1..4 {
        c.walk(0, fid, &["f1"]).unwrap();
    }
    assert_eq!(c.walk(0, 4, &["f1"]).unwrap_err(), libc::EMFILE);
    assert_eq!(
        c.errno(
            msg::TATTACH,
            B::default().u32(4).u32(NOFID).s(b"").s(b"").u32(0)
        ),
        libc::EMFILE
    );
    assert_eq!(
        c.errno(msg::TXATTRWALK, B::default().u32(0).u32(4).s(b"")),
        libc::EMFILE
    );
    assert_eq!(c.clunk(3), None);
    c.walk(0, 3, &["f2"]).unwrap();
    // Reusing a live fid number is refused, NOFID is never a fid.
    assert_eq!(c.clunk(3), None);
    c.walk(0, 3, &["f2"]).unwrap();
    assert_eq!(c.clunk(2), None);
    assert_eq!(c.walk(0, 3, &["f3"]).unwrap_err(), libc::EEXIST);
    assert_eq!(c.walk(0, NOFID, &["f3"]).unwrap_err(), libc::EBADF);
    // Walked nodes are bounded too: in-place walks of one fid deeper and deeper.
    let mut p = t.export();
    for _ in 0..70 {
        p.push("d");
    }
    std::fs::create_dir_all(&p).unwrap();
    c.walk(0, 2, &[]).unwrap();
    let mut err = None;
    for _ in 0..70 {
        if let Err(e) = c.walk(2, 2, &["d"]) {
            err = Some(e);
            break;
        }
    }
    assert_eq!(err, Some(libc::EMFILE), "node limit (64 here) reached");
}

#[test]
fn malformed_messages_get_rlerror() {
    let t = TempDir::new("malformed");
    std::fs::write(t.path("f"), b"x").unwrap();
    // Before Tversion nothing but Tversion is served.
    let mut srv = Server::open(&t.export(), false, Limits::default()).unwrap();
    let mut out = Vec::new();
    srv.handle(
        &frame(
            msg::TATTACH,
            1,
            &B::default().u32(0).u32(NOFID).s(b"").s(b"").u32(0).0,
        ),
        &mut out,
    );
    assert_eq!(parse_one(&out, 1, 1 << 20).errno(), Some(libc::EPROTO));
    // Tversion with a tiny msize.
    out.clear();
    srv.handle(
        &frame(
            msg::TVERSION,
            NOTAG,
            &B::default().u32(512).s(b"9P2000.L").0,
        ),
        &mut out,
    );
    assert_eq!(parse_one(&out, NOTAG, 1 << 20).errno(), Some(libc::EINVAL));

    let limits = Limits {
        msize: 8192,
        max_fids: 16,
    };
    let mut c = Client::with_limits(&t.export(), false, limits);
    // Shorter than a header.
    for n in 0..7 {
        let r = c.raw(
            &[7, 0, 0, 0, msg::TCLUNK, 1, 0][..n],
            if n == 7 { 1 } else { NOTAG },
        );
        assert_eq!(r.errno(), Some(libc::EPROTO));
    }
    // Size field disagreeing with the buffer.
    let mut m = frame(msg::TCLUNK, 9, &B::default().u32(0).0);
    m[0] += 1;
    assert_eq!(c.raw(&m, 9).errno(), Some(libc::EPROTO));
    m[0] -= 2;
    assert_eq!(c.raw(&m, 9).errno(), Some(libc::EPROTO));
    // Larger than msize.
    let big = frame(msg::TWRITE, 9, &vec![0u8; 9000]);
    assert_eq!(c.raw(&big, 9).errno(), Some(libc::EMSGSIZE));
    // Truncated bodies of every request type.
    let full = [
        (
            msg::TWALK,
            B::default().u32(0).u32(1).u16(2).s(b"f").s(b"g").0,
        ),
        (
            msg::TLCREATE,
            B::default().u32(0).s(b"n").u32(0).u32(0).u32(0).0,
        ),
        (msg::TSETATTR, setattr(0, 1, 0o755, 0).0),
        (
            msg::TWRITE,
            B::default().u32(0).u64(0).u32(4).raw(b"abcd").0,
        ),
        (
            msg::TGETLOCK,
            B::default().u32(0).u8(0).u64(0).u64(0).u32(0).s(b"id").0,
        ),
    ];
    for (ty, body) in &full {
        for cut in 0..body.len() {
            let r = c.call(*ty, B(body[..cut].to_vec()));
            assert_eq!(r.errno(), Some(libc::EPROTO), "T{ty} cut at {cut}");
        }
    }
    // A string length beyond the message, a count beyond the data.
    let r = c.call(
        msg::TWALK,
        B::default().u32(0).u32(1).u16(1).u16(500).raw(b"f"),
    );
    assert_eq!(r.errno(), Some(libc::EPROTO));
    c.walk(0, 1, &["f"]).unwrap();
    c.lopen(1, O_RDWR).unwrap();
    let r = c.call(msg::TWRITE, B::default().u32(1).u64(0).u32(100).raw(b"abc"));
    assert_eq!(r.errno(), Some(libc::EPROTO));
    // Unknown and response types.
    for ty in [0, 1, msg::RLERROR, 99, 101, 200, 255] {
        assert_eq!(
            c.call(ty, B::default().u32(0)).errno(),
            Some(libc::EOPNOTSUPP),
            "type {ty}"
        );
    }
    // A huge offset.
    let r = c.call(msg::TREAD, B::default().u32(1).u64(u64::MAX).u32(10));
    assert_eq!(r.errno(), Some(libc::EINVAL));
    let r = c.call(msg::TREADDIR, B::default().u32(0).u64(0).u32(100));
    assert_eq!(r.errno(), Some(libc::EBADF), "readdir of an unopened fid");
    // Bad open flags, afid.
    c.walk(0, 2, &["f"]).unwrap();
    assert_eq!(c.lopen(2, 3).unwrap_err(), libc::EINVAL);
    assert_eq!(
        c.errno(
            msg::TATTACH,
            B::default().u32(7).u32(3).s(b"").s(b"").u32(0)
        ),
        libc::EBADF
    );
}

/// xorshift64*: a small deterministic PRNG for the property loop.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn random_messages_never_panic_and_always_get_one_response() {
    let t = TempDir::new("random");
    std::fs::create_dir(t.path("d")).unwrap();
    std::fs::write(t.path("d/f"), b"some data").unwrap();
    symlink("/etc", t.path("d/l")).unwrap();
    let limits = Limits {
        msize: 8192,
        max_fids: 64,
    };
    let mut c = Client::with_limits(&t.export(), false, limits);
    c.walk(0, 1, &["d"]).unwrap();
    c.walk(0, 2, &["d", "f"]).unwrap();
    c.lopen(2, O_RDWR).unwrap();
    c.walk(0, 3, &["d"]).unwrap();
    c.lopen(3, O_RDONLY).unwrap();
    let types = [
        8, 12, 14, 16, 18, 20, 22, 24, 26, 30, 32, 40, 50, 52, 54, 70, 72, 74, 76, 100, 102, 104,
        108, 110, 116, 118, 120, 122,
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let names: [&[u8]; 6] = [b"d", b"f", b"l", b"..", b"x", b""];
    for i in 0..30_000u32 {
        let mut body = Vec::new();
        let ty;
        match i % 3 {
            // Raw random bytes.
            0 => {
                let n = rng.below(64) as usize;
                let mut m: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                if n >= 4 && rng.below(2) == 0 {
                    m[..4].copy_from_slice(&(n as u32).to_le_bytes());
                }
                let mut out = vec![0xaa; 3];
                c.srv.handle(&m, &mut out);
                let tag = m
                    .get(5..7)
                    .map_or(NOTAG, |t| u16::from_le_bytes([t[0], t[1]]));
                parse_one(&out[3..], tag, 8192);
                assert_eq!(&out[..3], &[0xaa; 3], "existing output is kept");
                continue;
            }
            // A known type with a body of plausible fields: small fids,
            // known names, random integers.
            _ => {
                ty = types[rng.below(types.len() as u64) as usize];
                for _ in 0..rng.below(8) {
                    match rng.below(5) {
                        0 => body.extend_from_slice(&(rng.below(6) as u32).to_le_bytes()),
                        1 => {
                            let s = names[rng.below(names.len() as u64) as usize];
                            body.extend_from_slice(&(s.len() as u16).to_le_bytes());
                            body.extend_from_slice(s);
                        }
                        2 => body.extend_from_slice(&rng.next().to_le_bytes()),
                        3 => body.extend_from_slice(&(rng.below(1 << 16) as u32).to_le_bytes()),
                        _ => body.push(rng.next() as u8),
                    }
                }
            }
        }
        if ty == msg::TVERSION {
            // Keep the session (a Tversion would clunk every fid).
            continue;
        }
        let r = c.call(ty, B(body));
        assert!(r.ty == ty + 1 || r.ty == msg::RLERROR);
    }
    // Nothing escaped the export, and the server still works.
    assert!(!t.0.join("x").exists());
    for fid in 0..64 {
        c.clunk(fid);
    }
    c.call(
        msg::TATTACH,
        B::default().u32(60).u32(NOFID).s(b"").s(b"").u32(0),
    )
    .ok(msg::TATTACH);
    assert!(c.walk(60, 61, &["..", ".."]).is_ok());
    assert!(c.getattr(61).is_ok());
}

/// Sequential read throughput through `handle()` vs a plain read loop.
/// Run: cargo test -p sandbox --release --lib fs_share::tests::read_throughput -- --ignored --nocapture
#[test]
#[ignore]
fn read_throughput() {
    use std::io::{Read, Write};
    use std::time::Instant;
    const SIZE: usize = 256 << 20;
    const CHUNK: usize = 512 << 10;
    let t = TempDir::new("bench");
    {
        let mut f = std::fs::File::create(t.path("big")).unwrap();
        let block: Vec<u8> = (0..CHUNK).map(|i| i as u8).collect();
        for _ in 0..SIZE / CHUNK {
            f.write_all(&block).unwrap();
        }
    }
    let mut buf = vec![0u8; CHUNK];
    let plain = |buf: &mut Vec<u8>| {
        let mut f = std::fs::File::open(t.path("big")).unwrap();
        let start = Instant::now();
        let mut total = 0;
        loop {
            let n = f.read(buf).unwrap();
            if n == 0 {
                break;
            }
            total += n;
        }
        assert_eq!(total, SIZE);
        start.elapsed()
    };
    plain(&mut buf); // warm the page cache
    let limits = Limits {
        msize: (CHUNK + 11) as u32,
        max_fids: 16,
    };
    let mut c = Client::with_limits(&t.export(), true, limits);
    c.walk(0, 1, &["big"]).unwrap();
    c.lopen(1, O_RDONLY).unwrap();
    let mut out = Vec::with_capacity(CHUNK + 64);
    let mut best_p9 = f64::MAX;
    let mut best_plain = f64::MAX;
    for _ in 0..5 {
        best_plain = best_plain.min(plain(&mut buf).as_secs_f64());
        let start = Instant::now();
        let mut off = 0u64;
        loop {
            out.clear();
            let req = frame(
                msg::TREAD,
                1,
                &B::default().u32(1).u64(off).u32(CHUNK as u32).0,
            );
            c.srv.handle(&req, &mut out);
            let n = u32::from_le_bytes(out[7..11].try_into().unwrap()) as u64;
            if n == 0 {
                break;
            }
            off += n;
        }
        assert_eq!(off as usize, SIZE);
        best_p9 = best_p9.min(start.elapsed().as_secs_f64());
    }
    let mib = (SIZE >> 20) as f64;
    println!(
        "sequential read, 512 KiB chunks of a 256 MiB cached file: handle() {:.0} MiB/s, plain read {:.0} MiB/s ({:.0}%)",
        mib / best_p9,
        mib / best_plain,
        100.0 * best_plain / best_p9
    );
}
