//! virtio-9p (device id 9): the transport half of a 9P share. The file
//! server itself (9P2000.L, `crate::fs_share`) sits behind [`P9Handler`].
//!
//! Feature `VIRTIO_9P_MOUNT_TAG`; configuration space: le16 tag length,
//! then the tag bytes (the guest mounts `-t 9p -o trans=virtio TAG`).
//! One request queue. Each chain carries one request and its response:
//!
//! - the device-readable part is the 9P request; it is gathered (across
//!   any number of descriptors) into one buffer and handed to the handler
//!   as is, `size[4] type[1] tag[2] ...` (the handler parses and checks
//!   `size`);
//! - the handler's response is scattered across the device-writable
//!   part, and the used length is its size.
//!
//! Malformed chains (decided here, hostile input):
//! - a readable part longer than the handler's `max_msize()` (capped at
//!   [`MSIZE_CAP`]) is not handed to the handler: the device answers
//!   `Rlerror(EMSGSIZE)` with the request's tag;
//! - a response longer than the writable part is replaced by
//!   `Rlerror(EMSGSIZE)` (the request was served: its effects stay);
//! - when even the 11-byte `Rlerror` does not fit, when the request is
//!   shorter than the 7-byte header, or when a buffer is outside guest
//!   memory, the chain comes back with 0 bytes written. (The Linux client
//!   leaves such a request waiting: only a broken driver sends them.)
//!
//! Thread: one worker ([`super::queue::spawn_worker`]) serving the
//! requests in ring order, one at a time, so a request blocking on host
//! I/O blocks only this device. The request, response and descriptor
//! buffers are reused from one request to the next.

use virtio_queue::DescriptorChain;

use super::queue::{self, ChainServer, Worker, WritableBuf};
use super::{device_type, ActivateError, Activation, Mem, VirtioDevice, F_VERSION_1};

/// `VIRTIO_9P_MOUNT_TAG`.
pub const F_MOUNT_TAG: u64 = 1;
/// `VIRTIO_RING_F_EVENT_IDX`.
const F_EVENT_IDX: u64 = 1 << 29;
/// Longest tag (the Linux driver reads at most this much, too).
pub const MAX_TAG_LEN: usize = 64;
/// Upper bound on the request size whatever the handler says.
pub const MSIZE_CAP: u32 = 16 << 20;
const QUEUE_SIZES: [u16; 1] = [128];
/// `Rlerror` message type.
const RLERROR: u8 = 7;
const RLERROR_LEN: usize = 11;
const HEADER_LEN: usize = 7;

/// The file server behind a virtio-9p device.
pub trait P9Handler: Send {
    /// Serve one request. `req` is the chain's whole device-readable part:
    /// a 9P message (`size[4] type[1] tag[2] ...`) from the guest, hostile,
    /// possibly followed by padding or shorter than its `size` says.
    /// `out` is empty on entry; the handler appends exactly one response
    /// message (an `Rlerror` when the request is bad). Leaving `out`
    /// empty returns the chain with 0 bytes, which the guest's client
    /// never sees answered: don't.
    fn handle(&mut self, req: &[u8], out: &mut Vec<u8>);
    /// Largest message the server accepts (its `Tversion` msize bound).
    fn max_msize(&self) -> u32;
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum P9Error {
    #[error("a 9p mount tag cannot be empty")]
    EmptyTag,
    #[error("the 9p mount tag {tag:?} is {len} bytes long; at most {MAX_TAG_LEN} are accepted")]
    TagTooLong { tag: String, len: usize },
    #[error("the 9p mount tag {0:?} contains a NUL byte")]
    NulInTag(String),
}

/// Serves the request queue: one request at a time, reused buffers.
pub struct P9Server {
    handler: Box<dyn P9Handler>,
    req: Vec<u8>,
    out: Vec<u8>,
    writable: Vec<WritableBuf>,
    /// Requests served so far (a share that served none has no state).
    pub served: u64,
    /// Requests per message type, kept when `SANDBOX_VM_EXIT_STATS=1`
    /// and printed on stderr when the server is dropped (boot profiling,
    /// docs/vm.md).
    counts: Option<Box<[u32; 256]>>,
}

impl Drop for P9Server {
    fn drop(&mut self) {
        let Some(counts) = self.counts.as_ref() else {
            return;
        };
        let total: u32 = counts.iter().sum();
        let list: Vec<String> = counts
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(ty, n)| format!("T{ty}={n}"))
            .collect();
        eprintln!("sandbox: 9p: {total} requests by type: {}", list.join(" "));
    }
}

impl std::fmt::Debug for P9Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("P9Server")
            .field("max_msize", &self.handler.max_msize())
            .finish_non_exhaustive()
    }
}

impl P9Server {
    pub fn new(handler: Box<dyn P9Handler>) -> Self {
        Self {
            handler,
            req: Vec::new(),
            out: Vec::new(),
            writable: Vec::new(),
            counts: std::env::var_os("SANDBOX_VM_EXIT_STATS")
                .is_some_and(|v| v == "1")
                .then(|| Box::new([0; 256])),
            served: 0,
        }
    }

    /// Answer the request in `self.req` with `Rlerror(ecode)`.
    fn error_reply(&mut self, mem: &Mem, ecode: u32) -> u32 {
        if self.req.len() < HEADER_LEN {
            return 0;
        }
        let mut msg = [0u8; RLERROR_LEN];
        msg[0..4].copy_from_slice(&(RLERROR_LEN as u32).to_le_bytes());
        msg[4] = RLERROR;
        msg[5..7].copy_from_slice(&self.req[5..7]);
        msg[7..11].copy_from_slice(&ecode.to_le_bytes());
        queue::scatter(mem, &self.writable, &msg).unwrap_or(0)
    }
}

impl ChainServer for P9Server {
    fn serve(&mut self, mem: &Mem, chain: DescriptorChain<&Mem>) -> u32 {
        self.served += 1;
        let limit = self.handler.max_msize().min(MSIZE_CAP) as usize;
        let Ok(parts) = queue::split_chain(chain, limit, &mut self.req, &mut self.writable) else {
            return 0;
        };
        if parts.is_truncated() {
            return self.error_reply(mem, libc::EMSGSIZE as u32);
        }
        self.out.clear();
        if let (Some(c), Some(ty)) = (self.counts.as_mut(), self.req.get(4)) {
            c[usize::from(*ty)] += 1;
        }
        self.handler.handle(&self.req, &mut self.out);
        if self.out.len() as u64 > parts.writable {
            return self.error_reply(mem, libc::EMSGSIZE as u32);
        }
        queue::scatter(mem, &self.writable, &self.out).unwrap_or(0)
    }
}

/// The virtio-9p device.
#[derive(Debug)]
pub struct P9 {
    /// le16 length + tag.
    config: Vec<u8>,
    server: Option<P9Server>,
    worker: Option<Worker<P9Server>>,
}

impl P9 {
    /// A device exporting `handler`'s tree under `tag` (1 to 64 bytes, no
    /// NUL).
    pub fn new(tag: &str, handler: Box<dyn P9Handler>) -> Result<Self, P9Error> {
        if tag.is_empty() {
            return Err(P9Error::EmptyTag);
        }
        if tag.len() > MAX_TAG_LEN {
            return Err(P9Error::TagTooLong {
                tag: tag.to_string(),
                len: tag.len(),
            });
        }
        if tag.contains('\0') {
            return Err(P9Error::NulInTag(tag.to_string()));
        }
        let mut config = (tag.len() as u16).to_le_bytes().to_vec();
        config.extend_from_slice(tag.as_bytes());
        Ok(Self {
            config,
            server: Some(P9Server::new(handler)),
            worker: None,
        })
    }
}

impl VirtioDevice for P9 {
    fn device_type(&self) -> u32 {
        device_type::P9
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        F_VERSION_1 | F_EVENT_IDX | F_MOUNT_TAG
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        if let Some(src) = self.config.get(start..) {
            let n = src.len().min(data.len());
            data[..n].copy_from_slice(&src[..n]);
        }
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        if self.worker.is_some() {
            return Err(ActivateError::Other("virtio-9p is already active".into()));
        }
        let Some(server) = self.server.take() else {
            return Err(ActivateError::Other(
                "virtio-9p lost its file server in an earlier failed reset".into(),
            ));
        };
        match queue::spawn_worker("virtio-9p", activation, server) {
            Ok(w) => {
                self.worker = Some(w);
                Ok(())
            }
            Err((e, server)) => {
                self.server = Some(server);
                Err(e)
            }
        }
    }

    fn pause(&mut self) -> Result<Vec<super::QueuePos>, String> {
        let Some(w) = self.worker.take() else {
            return Ok(Vec::new());
        };
        match w.stop() {
            // The share's state is its fids: a snapshot is only taken
            // before the guest sent its first request (docs/snapshots.md).
            Some((server, _)) if server.served > 0 => Err(format!(
                "the 9p share has served {} requests: its open files cannot be saved",
                server.served
            )),
            Some((server, queue)) => {
                self.server = Some(server);
                Ok(vec![super::QueuePos::of(0, &queue)])
            }
            None => Err("the virtio-9p worker panicked".into()),
        }
    }

    fn reset(&mut self) -> bool {
        let Some(w) = self.worker.take() else {
            return true;
        };
        match w.stop() {
            Some((server, _queue)) => {
                self.server = Some(server);
                true
            }
            // The handler went down with a panicking worker: this device
            // cannot serve again.
            None => false,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::vm::virtio::queue::testutil::*;
    use virtio_queue::{Queue, QueueT};
    use vm_memory::{Bytes, GuestAddress};

    /// Answers every request with `R` + the request reversed, with the
    /// request's tag; `extra` pads the response.
    pub(crate) struct Echo {
        pub msize: u32,
        pub extra: usize,
    }

    impl P9Handler for Echo {
        fn handle(&mut self, req: &[u8], out: &mut Vec<u8>) {
            out.extend_from_slice(b"R");
            out.extend(req.iter().rev());
            out.resize(out.len() + self.extra, b'.');
        }
        fn max_msize(&self) -> u32 {
            self.msize
        }
    }

    fn server(msize: u32, extra: usize) -> P9Server {
        P9Server::new(Box::new(Echo { msize, extra }))
    }

    fn serve(m: &Mem, q: &mut Queue, s: &mut P9Server) -> u32 {
        let c = q.pop_descriptor_chain(m).unwrap();
        s.serve(m, c)
    }

    fn read(m: &Mem, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        m.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    #[test]
    fn tag_rules_and_config_space() {
        let echo = || {
            Box::new(Echo {
                msize: 8192,
                extra: 0,
            })
        };
        assert_eq!(P9::new("", echo()).unwrap_err(), P9Error::EmptyTag);
        assert!(matches!(
            P9::new(&"x".repeat(65), echo()),
            Err(P9Error::TagTooLong { len: 65, .. })
        ));
        assert!(matches!(P9::new("a\0b", echo()), Err(P9Error::NulInTag(_))));
        P9::new(&"x".repeat(64), echo()).unwrap();
        let d = P9::new("sandbox-root", echo()).unwrap();
        assert_eq!(d.device_type(), 9);
        assert_ne!(d.avail_features() & F_MOUNT_TAG, 0);
        let mut b = [0xffu8; 2];
        d.read_config(0, &mut b);
        assert_eq!(u16::from_le_bytes(b), 12);
        let mut t = [0xffu8; 16];
        d.read_config(2, &mut t);
        assert_eq!(&t[..12], b"sandbox-root");
        assert_eq!(&t[12..], &[0; 4]);
        let mut far = [0xffu8; 4];
        d.read_config(u64::MAX, &mut far);
        assert_eq!(far, [0; 4]);
    }

    #[test]
    fn request_gathered_and_response_scattered() {
        let m = mem();
        let mut q = queue(16);
        m.write_slice(b"\x0b\0\0\0", GuestAddress(DATA)).unwrap();
        m.write_slice(b"\x64\x2a\0", GuestAddress(DATA + 0x100))
            .unwrap();
        m.write_slice(b"WXYZ", GuestAddress(DATA + 0x200)).unwrap();
        add_chain(
            &m,
            16,
            0,
            &[
                (DATA, 4, false),
                (DATA + 0x100, 3, false),
                (DATA + 0x200, 4, false),
                (DATA + 0x1000, 5, true),
                (DATA + 0x2000, 3, true),
                (DATA + 0x3000, 100, true),
            ],
        );
        let mut s = server(8192, 0);
        assert_eq!(serve(&m, &mut q, &mut s), 12);
        let want = b"RZYXW\0\x2a\x64\0\0\0\x0b";
        assert_eq!(read(&m, DATA + 0x1000, 5), &want[..5]);
        assert_eq!(read(&m, DATA + 0x2000, 3), &want[5..8]);
        assert_eq!(read(&m, DATA + 0x3000, 4), &want[8..]);
        // The buffers are reused: a second, shorter request.
        add_chain(
            &m,
            16,
            6,
            &[(DATA + 0x100, 3, false), (DATA + 0x4000, 8, true)],
        );
        assert_eq!(serve(&m, &mut q, &mut s), 4);
        assert_eq!(read(&m, DATA + 0x4000, 4), b"R\0\x2a\x64");
    }

    fn rlerror_tag(m: &Mem, addr: u64) -> (u32, u8, u16, u32) {
        let v = read(m, addr, 11);
        (
            u32::from_le_bytes(v[0..4].try_into().unwrap()),
            v[4],
            u16::from_le_bytes(v[5..7].try_into().unwrap()),
            u32::from_le_bytes(v[7..11].try_into().unwrap()),
        )
    }

    #[test]
    fn oversized_requests_and_short_writable_parts() {
        let m = mem();
        let mut q = queue(16);
        // size, Twalk(110), tag 0x1234, payload.
        let mut req = vec![0u8; 300];
        req[0..4].copy_from_slice(&300u32.to_le_bytes());
        req[4] = 110;
        req[5..7].copy_from_slice(&0x1234u16.to_le_bytes());
        m.write_slice(&req, GuestAddress(DATA)).unwrap();
        // Longer than msize 256: Rlerror(EMSGSIZE) without reaching the handler.
        add_chain(&m, 16, 0, &[(DATA, 300, false), (DATA + 0x1000, 64, true)]);
        let mut s = server(256, 0);
        assert_eq!(serve(&m, &mut q, &mut s), 11);
        assert_eq!(
            rlerror_tag(&m, DATA + 0x1000),
            (11, RLERROR, 0x1234, libc::EMSGSIZE as u32)
        );
        // The response (301 bytes) does not fit in 20 writable bytes.
        add_chain(&m, 16, 2, &[(DATA, 300, false), (DATA + 0x2000, 20, true)]);
        let mut s = server(8192, 0);
        assert_eq!(serve(&m, &mut q, &mut s), 11);
        assert_eq!(
            rlerror_tag(&m, DATA + 0x2000),
            (11, RLERROR, 0x1234, libc::EMSGSIZE as u32)
        );
        // Not even room for the Rlerror: 0 bytes.
        add_chain(&m, 16, 4, &[(DATA, 300, false), (DATA + 0x3000, 10, true)]);
        assert_eq!(serve(&m, &mut q, &mut s), 0);
        // No writable part at all.
        add_chain(&m, 16, 6, &[(DATA, 300, false)]);
        assert_eq!(serve(&m, &mut q, &mut s), 0);
        // A request shorter than a header, too big a response: 0 bytes.
        add_chain(&m, 16, 7, &[(DATA, 3, false), (DATA + 0x3000, 2, true)]);
        assert_eq!(serve(&m, &mut q, &mut s), 0);
        // A readable buffer outside guest memory.
        add_chain(
            &m,
            16,
            9,
            &[(0xdead_0000_0000, 8, false), (DATA + 0x3000, 64, true)],
        );
        assert_eq!(serve(&m, &mut q, &mut s), 0);
        // A writable buffer outside guest memory.
        add_chain(
            &m,
            16,
            11,
            &[(DATA, 7, false), (0xdead_0000_0000, 64, true)],
        );
        assert_eq!(serve(&m, &mut q, &mut s), 0);
    }
}
