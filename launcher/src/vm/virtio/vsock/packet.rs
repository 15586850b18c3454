//! The virtio-vsock packet header (virtio 1.2, section 5.10.6) and its
//! bounds-checked parsing.
//!
//! Every header the guest puts in the tx queue is hostile input: it is
//! parsed from a byte slice of any length, and [`Header::check`] sorts it
//! into the operation the device will carry out or the reason it refuses
//! it. Nothing here panics on any input (the fuzz target
//! `vsock_packets` and the random-bytes test drive it).

/// Size of the header on the wire (the structure is packed).
pub const HDR_LEN: usize = 44;

/// Largest payload one packet may carry (the Linux driver's
/// `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`); a guest claiming more is refused.
pub const MAX_PAYLOAD: u32 = 64 * 1024;

/// The host's CID (`VMADDR_CID_HOST`).
pub const HOST_CID: u64 = 2;

/// `VIRTIO_VSOCK_TYPE_STREAM`, the only socket type offered.
pub const TYPE_STREAM: u16 = 1;

pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;

/// SHUTDOWN flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;
pub const SHUTDOWN_BOTH: u32 = SHUTDOWN_RCV | SHUTDOWN_SEND;

/// One packet header, in host byte order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PacketError {
    #[error("vsock packet of {0} bytes is shorter than the {HDR_LEN}-byte header")]
    Short(usize),
    #[error("vsock packet claims a {0}-byte payload; at most {MAX_PAYLOAD} bytes are accepted")]
    TooLong(u32),
    #[error("vsock packet claims a {claimed}-byte payload but its buffers hold {held} bytes")]
    Truncated { claimed: u32, held: usize },
    #[error("vsock packet from CID {0}, not from the guest's CID {1}")]
    BadSrcCid(u64, u64),
    #[error("vsock packet for CID {0}; only the host, CID {HOST_CID}, is reachable")]
    BadDstCid(u64),
    #[error(
        "vsock socket type {0} is not supported; only stream sockets (type {TYPE_STREAM}) are"
    )]
    BadType(u16),
    #[error("vsock operation {0} is unknown (1 to 7 are)")]
    BadOp(u16),
}

impl PacketError {
    /// Whether the guest should get an RST for this packet. A packet whose
    /// header could not be read, or that claims to come from another CID,
    /// has no one to answer: it is dropped.
    pub fn answer_with_rst(&self) -> bool {
        !matches!(self, PacketError::Short(_) | PacketError::BadSrcCid(..))
    }
}

fn le16(b: &[u8], at: usize) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[at..at + 2]);
    u16::from_le_bytes(a)
}
fn le32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}
fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

impl Header {
    /// Parse the first [`HDR_LEN`] bytes of `b`.
    pub fn parse(b: &[u8]) -> Result<Header, PacketError> {
        let Some(b) = b.get(..HDR_LEN) else {
            return Err(PacketError::Short(b.len()));
        };
        Ok(Header {
            src_cid: le64(b, 0),
            dst_cid: le64(b, 8),
            src_port: le32(b, 16),
            dst_port: le32(b, 20),
            len: le32(b, 24),
            type_: le16(b, 28),
            op: le16(b, 30),
            flags: le32(b, 32),
            buf_alloc: le32(b, 36),
            fwd_cnt: le32(b, 40),
        })
    }

    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// Validate a header the guest sent, whose buffers hold `payload_held`
    /// bytes after the header. Only the addressing, type, operation and
    /// length are checked here; the connection state is the device's.
    pub fn check(&self, guest_cid: u64, payload_held: usize) -> Result<(), PacketError> {
        if self.src_cid != guest_cid {
            return Err(PacketError::BadSrcCid(self.src_cid, guest_cid));
        }
        if self.dst_cid != HOST_CID {
            return Err(PacketError::BadDstCid(self.dst_cid));
        }
        if self.type_ != TYPE_STREAM {
            return Err(PacketError::BadType(self.type_));
        }
        if !(OP_REQUEST..=OP_CREDIT_REQUEST).contains(&self.op) {
            return Err(PacketError::BadOp(self.op));
        }
        if self.len > MAX_PAYLOAD {
            return Err(PacketError::TooLong(self.len));
        }
        if self.len as usize > payload_held {
            return Err(PacketError::Truncated {
                claimed: self.len,
                held: payload_held,
            });
        }
        Ok(())
    }

    /// The RST answering `self` (addresses swapped), for a packet that
    /// belongs to no connection or that the device refuses.
    pub fn rst_reply(&self, guest_cid: u64) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: self.dst_port,
            dst_port: self.src_port,
            type_: TYPE_STREAM,
            op: OP_RST,
            ..Header::default()
        }
    }
}

/// Parse a flat packet (header then payload) as the tx queue would carry
/// it: the header, checked against `guest_cid`, and the payload it claims.
/// Used by the fuzz target and the tests; the device reads descriptor
/// chains with the same [`Header::parse`] and [`Header::check`].
pub fn parse_packet(buf: &[u8], guest_cid: u64) -> Result<(Header, &[u8]), PacketError> {
    let hdr = Header::parse(buf)?;
    let rest = &buf[HDR_LEN..];
    hdr.check(guest_cid, rest.len())?;
    Ok((hdr, &rest[..hdr.len as usize]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr() -> Header {
        Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 5000,
            dst_port: 1024,
            len: 3,
            type_: TYPE_STREAM,
            op: OP_RW,
            flags: 0,
            buf_alloc: 1 << 18,
            fwd_cnt: 7,
        }
    }

    #[test]
    fn round_trip_and_layout() {
        let h = hdr();
        let b = h.to_bytes();
        assert_eq!(Header::parse(&b).unwrap(), h);
        // Spot-check the packed little-endian layout.
        assert_eq!(&b[0..8], &3u64.to_le_bytes());
        assert_eq!(&b[20..24], &1024u32.to_le_bytes());
        assert_eq!(&b[30..32], &OP_RW.to_le_bytes());
        assert_eq!(&b[40..44], &7u32.to_le_bytes());
    }

    #[test]
    fn refusals() {
        let g = 3;
        let mut buf = hdr().to_bytes().to_vec();
        assert_eq!(
            parse_packet(&buf, g),
            Err(PacketError::Truncated {
                claimed: 3,
                held: 0
            })
        );
        buf.extend_from_slice(b"abcd");
        let (h, p) = parse_packet(&buf, g).unwrap();
        assert_eq!((h.len, p), (3, &b"abc"[..]));
        assert_eq!(parse_packet(&buf[..43], g), Err(PacketError::Short(43)));
        let mut h = hdr();
        h.len = MAX_PAYLOAD + 1;
        assert_eq!(
            h.check(g, usize::MAX),
            Err(PacketError::TooLong(MAX_PAYLOAD + 1))
        );
        let mut h = hdr();
        h.type_ = 2;
        assert_eq!(h.check(g, 3), Err(PacketError::BadType(2)));
        let mut h = hdr();
        h.op = 8;
        assert_eq!(h.check(g, 3), Err(PacketError::BadOp(8)));
        h.op = 0;
        assert_eq!(h.check(g, 3), Err(PacketError::BadOp(0)));
        let mut h = hdr();
        h.src_cid = 4;
        let e = h.check(g, 3).unwrap_err();
        assert!(!e.answer_with_rst());
        let mut h = hdr();
        h.dst_cid = 1;
        let e = h.check(g, 3).unwrap_err();
        assert!(e.answer_with_rst());
        let r = hdr().rst_reply(g);
        assert_eq!(
            (r.src_cid, r.dst_cid, r.src_port, r.dst_port, r.op),
            (2, 3, 1024, 5000, OP_RST)
        );
    }

    /// Random bytes (a xorshift generator, fixed seed) never panic the
    /// parser, and whatever it accepts is self-consistent.
    #[test]
    fn random_bytes_never_panic() {
        let mut s: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let mut buf = Vec::new();
        let mut accepted = 0;
        for i in 0..20_000 {
            let n = (next() % 200) as usize;
            buf.clear();
            buf.extend((0..n).map(|_| next() as u8));
            // Make a good share of the packets nearly valid so that the
            // deeper checks are reached.
            if i % 2 == 0 && n >= HDR_LEN {
                buf[0..8].copy_from_slice(&3u64.to_le_bytes());
                buf[8..16].copy_from_slice(&2u64.to_le_bytes());
                buf[28..30].copy_from_slice(&1u16.to_le_bytes());
                let op = (next() % 9) as u16;
                buf[30..32].copy_from_slice(&op.to_le_bytes());
                let len = (next() % 300) as u32;
                buf[24..28].copy_from_slice(&len.to_le_bytes());
            }
            if let Ok((h, p)) = parse_packet(&buf, 3) {
                accepted += 1;
                assert_eq!(p.len(), h.len as usize);
                assert!(h.len <= MAX_PAYLOAD && (1..=7).contains(&h.op));
                assert_eq!(Header::parse(&h.to_bytes()).unwrap(), h);
            }
        }
        assert!(accepted > 100, "only {accepted} packets accepted");
    }
}
