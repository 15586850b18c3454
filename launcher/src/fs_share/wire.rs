//! The 9P2000.L wire format: message type numbers, a bounds-checked
//! little-endian reader over a request, and the encoder of responses.
//!
//! Hostile-input rules: every request byte comes from the guest. The
//! [`Reader`] checks each field against the bytes that are left and
//! returns [`WireError`] instead of panicking or reading past the end; a
//! string's length prefix is checked before anything is sliced. Responses
//! are appended to the caller's buffer with [`Msg`], which patches the
//! size field when the message is finished.

/// Header of every message: size[4] type[1] tag[2].
pub const HEADER_LEN: usize = 7;
/// Header of Rread / Rreaddir: the message header and count[4].
pub const IO_HEADER_LEN: usize = HEADER_LEN + 4;
/// The client's I/O header allowance (`P9_IOHDRSZ`): what iounit leaves
/// for the header of a Twrite (size type tag fid offset count = 23, +1).
pub const P9_IOHDRSZ: u32 = 24;
/// The tag of Tversion, and the tag used when a request is too short to
/// carry one.
pub const NOTAG: u16 = 0xffff;
/// "No fid" (the afid of an unauthenticated Tattach).
pub const NOFID: u32 = 0xffff_ffff;
/// The only protocol version spoken.
pub const VERSION_9P2000_L: &[u8] = b"9P2000.L";
/// Most names in one Twalk (`P9_MAXWELEM`).
pub const MAX_WALK: usize = 16;

/// Message type numbers (the T-message; its response is `T + 1`).
pub mod msg {
    pub const RLERROR: u8 = 7;
    pub const TSTATFS: u8 = 8;
    pub const TLOPEN: u8 = 12;
    pub const TLCREATE: u8 = 14;
    pub const TSYMLINK: u8 = 16;
    pub const TMKNOD: u8 = 18;
    pub const TRENAME: u8 = 20;
    pub const TREADLINK: u8 = 22;
    pub const TGETATTR: u8 = 24;
    pub const TSETATTR: u8 = 26;
    pub const TXATTRWALK: u8 = 30;
    pub const TXATTRCREATE: u8 = 32;
    pub const TREADDIR: u8 = 40;
    pub const TFSYNC: u8 = 50;
    pub const TLOCK: u8 = 52;
    pub const TGETLOCK: u8 = 54;
    pub const TLINK: u8 = 70;
    pub const TMKDIR: u8 = 72;
    pub const TRENAMEAT: u8 = 74;
    pub const TUNLINKAT: u8 = 76;
    pub const TVERSION: u8 = 100;
    pub const TAUTH: u8 = 102;
    pub const TATTACH: u8 = 104;
    pub const TFLUSH: u8 = 108;
    pub const TWALK: u8 = 110;
    pub const TREAD: u8 = 116;
    pub const TWRITE: u8 = 118;
    pub const TCLUNK: u8 = 120;
    pub const TREMOVE: u8 = 122;
}

/// Qid types.
pub const QTDIR: u8 = 0x80;
pub const QTSYMLINK: u8 = 0x02;
pub const QTFILE: u8 = 0x00;

/// A malformed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("9P message truncated: field {field} needs {need} bytes at offset {at}, {left} left")]
    Truncated {
        field: &'static str,
        need: usize,
        at: usize,
        left: usize,
    },
}

/// The server's identity of a file (type, version, path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Qid {
    pub ty: u8,
    pub version: u32,
    pub path: u64,
}

/// A bounds-checked cursor over one request's bytes.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn bytes(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], WireError> {
        let left = self.remaining();
        if n > left {
            return Err(WireError::Truncated {
                field,
                need: n,
                at: self.pos,
                left,
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], WireError> {
        let s = self.bytes(N, field)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    pub fn u8(&mut self, field: &'static str) -> Result<u8, WireError> {
        Ok(self.array::<1>(field)?[0])
    }

    pub fn u16(&mut self, field: &'static str) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }

    pub fn u32(&mut self, field: &'static str) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    pub fn u64(&mut self, field: &'static str) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    /// A string: len[2] then that many bytes (not checked for UTF-8:
    /// names are bytes on Linux).
    pub fn str(&mut self, field: &'static str) -> Result<&'a [u8], WireError> {
        let n = self.u16(field)? as usize;
        self.bytes(n, field)
    }
}

/// One response being appended to an output buffer. The size field is
/// written by [`Msg::finish`].
#[derive(Debug)]
pub struct Msg<'o> {
    out: &'o mut Vec<u8>,
    start: usize,
}

impl<'o> Msg<'o> {
    pub fn begin(out: &'o mut Vec<u8>, ty: u8, tag: u16) -> Self {
        let start = out.len();
        out.extend_from_slice(&[0, 0, 0, 0, ty]);
        out.extend_from_slice(&tag.to_le_bytes());
        Self { out, start }
    }

    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.out.push(v);
        self
    }
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.out.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.out.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.out.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// A string; callers keep it under 64 KiB (names, link targets and
    /// version strings are far shorter), longer input is cut.
    pub fn str(&mut self, s: &[u8]) -> &mut Self {
        let s = &s[..s.len().min(u16::MAX as usize)];
        self.u16(s.len() as u16);
        self.out.extend_from_slice(s);
        self
    }
    pub fn qid(&mut self, q: &Qid) -> &mut Self {
        self.u8(q.ty).u32(q.version).u64(q.path)
    }

    /// The buffer, to append a payload in place (Rread, Rreaddir).
    pub fn buf(&mut self) -> &mut Vec<u8> {
        self.out
    }

    /// Length of this message so far.
    pub fn len(&self) -> usize {
        self.out.len() - self.start
    }

    /// Where this message starts in the output buffer.
    pub fn start(&self) -> usize {
        self.start
    }

    /// Patch the size field.
    pub fn finish(self) {
        let len = (self.out.len() - self.start) as u32;
        self.out[self.start..self.start + 4].copy_from_slice(&len.to_le_bytes());
    }
}

/// Append an Rlerror.
pub fn rlerror(out: &mut Vec<u8>, tag: u16, errno: i32) {
    let mut m = Msg::begin(out, msg::RLERROR, tag);
    m.u32(errno as u32);
    m.finish();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_refuses_reads_past_the_end() {
        let mut r = Reader::new(&[1, 0, 0]);
        assert_eq!(r.u16("a"), Ok(1));
        assert!(matches!(
            r.u32("b"),
            Err(WireError::Truncated {
                need: 4,
                left: 1,
                ..
            })
        ));
        // A string whose length prefix exceeds what is left.
        let mut r = Reader::new(&[5, 0, b'a', b'b']);
        assert!(r.str("name").is_err());
        let mut r = Reader::new(&[2, 0, b'a', b'b']);
        assert_eq!(r.str("name"), Ok(&b"ab"[..]));
        assert_eq!(r.remaining(), 0);
    }

    #[test]
    fn msg_patches_size() {
        let mut out = vec![9u8];
        let mut m = Msg::begin(&mut out, 101, 3);
        m.u32(8192).str(b"9P2000.L");
        m.finish();
        assert_eq!(&out[1..5], &(out.len() as u32 - 1).to_le_bytes());
        assert_eq!(out[5], 101);
        assert_eq!(&out[6..8], &3u16.to_le_bytes());
    }
}
