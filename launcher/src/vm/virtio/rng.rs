//! virtio-entropy (device id 4): the guest's `/dev/hwrng` and an early
//! seed for its random pool.
//!
//! One queue. Every chain's device-writable buffers are filled with bytes
//! from the host's `getrandom(2)`, at most [`MAX_PER_CHAIN`] bytes per
//! chain; the used length is the number of bytes written. Readable
//! buffers are ignored (a chain with only readable buffers comes back
//! with 0 bytes). If `getrandom` fails, the chain comes back with what
//! was obtained before the failure, never with made-up bytes.
//!
//! Thread: one worker ([`super::queue::spawn_worker`]) from `DRIVER_OK`
//! until the VM stop event or a device reset. Hostile input: the chains
//! (see `queue.rs`); buffer addresses outside guest memory end the write.

use virtio_queue::DescriptorChain;

use super::queue::{self, ChainServer, Worker, WritableBuf};
use super::{device_type, ActivateError, Activation, Mem, VirtioDevice, F_VERSION_1};

/// At most this many random bytes per chain.
pub const MAX_PER_CHAIN: usize = 64 * 1024;
/// `VIRTIO_RING_F_EVENT_IDX`.
const F_EVENT_IDX: u64 = 1 << 29;
const QUEUE_SIZES: [u16; 1] = [256];

/// Fills chains with random bytes; reused buffers.
#[derive(Debug, Default)]
pub struct RngServer {
    bytes: Vec<u8>,
    writable: Vec<WritableBuf>,
}

impl RngServer {
    pub fn new() -> Self {
        Self::default()
    }
}

/// Fill `buf` from getrandom(2); returns how many bytes were filled.
fn fill_random(buf: &mut [u8]) -> usize {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: the pointer and length describe `rest`, a live, writable
        // slice; getrandom writes at most that many bytes.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            break;
        }
        if n == 0 {
            break;
        }
        done += n as usize;
    }
    done
}

impl ChainServer for RngServer {
    fn serve(&mut self, mem: &Mem, chain: DescriptorChain<&Mem>) -> u32 {
        // The readable part is not used: it is not even read.
        let room = queue::writable_part(chain, &mut self.writable);
        let want = room.min(MAX_PER_CHAIN as u64) as usize;
        self.bytes.resize(want, 0);
        let got = fill_random(&mut self.bytes);
        // Write buffer by buffer so that a bad buffer keeps what came
        // before it.
        let mut written = 0u32;
        let mut off = 0usize;
        for b in &self.writable {
            if off == got {
                break;
            }
            let n = (got - off).min(b.len as usize);
            match queue::scatter(mem, std::slice::from_ref(b), &self.bytes[off..off + n]) {
                Ok(w) => written = written.saturating_add(w),
                Err(_) => break,
            }
            off += n;
        }
        written
    }
}

/// The virtio-rng device.
#[derive(Debug)]
pub struct Rng {
    server: Option<RngServer>,
    worker: Option<Worker<RngServer>>,
}

impl Default for Rng {
    fn default() -> Self {
        Self::new()
    }
}

impl Rng {
    pub fn new() -> Self {
        Self {
            server: Some(RngServer::new()),
            worker: None,
        }
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        device_type::RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        F_VERSION_1 | F_EVENT_IDX
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // No configuration space.
        data.fill(0);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        if self.worker.is_some() {
            return Err(ActivateError::Other("virtio-rng is already active".into()));
        }
        let server = self.server.take().unwrap_or_default();
        match queue::spawn_worker("virtio-rng", activation, server) {
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
            Some((server, queue)) => {
                self.server = Some(server);
                Ok(vec![super::QueuePos::of(0, &queue)])
            }
            None => Err("the virtio-rng worker panicked".into()),
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
            None => {
                self.server = Some(RngServer::new());
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::virtio::queue::testutil::*;
    use crate::vm::virtio::queue::ChainServer;
    use virtio_queue::QueueT;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn fills_writable_buffers_and_reports_the_length() {
        let m = mem();
        let mut q = queue(16);
        add_chain(
            &m,
            16,
            0,
            &[
                (DATA, 16, false),
                (DATA + 0x1000, 100, true),
                (DATA + 0x2000, 28, true),
            ],
        );
        let mut s = RngServer::new();
        let c = q.pop_descriptor_chain(&m).unwrap();
        assert_eq!(s.serve(&m, c), 128);
        let mut a = [0u8; 100];
        m.read_slice(&mut a, GuestAddress(DATA + 0x1000)).unwrap();
        // 100 zero bytes from getrandom has probability 2^-800.
        assert!(a.iter().any(|&b| b != 0));
        let mut b = [0u8; 28];
        m.read_slice(&mut b, GuestAddress(DATA + 0x2000)).unwrap();
        assert!(b.iter().any(|&x| x != 0));
        // The readable buffer was not touched.
        let mut r = [0u8; 16];
        m.read_slice(&mut r, GuestAddress(DATA)).unwrap();
        assert_eq!(r, [0; 16]);
    }

    #[test]
    fn caps_at_64k_and_handles_readable_only_and_bad_chains() {
        let m = mem();
        let mut q = queue(16);
        let mut s = RngServer::new();
        add_chain(&m, 16, 0, &[(DATA, 0x20000, true)]);
        let c = q.pop_descriptor_chain(&m).unwrap();
        assert_eq!(s.serve(&m, c), MAX_PER_CHAIN as u32);
        add_chain(&m, 16, 1, &[(DATA, 64, false)]);
        let c = q.pop_descriptor_chain(&m).unwrap();
        assert_eq!(s.serve(&m, c), 0);
        // First buffer fine, second outside memory: only the first counts.
        add_chain(&m, 16, 2, &[(DATA, 10, true), (0xffff_0000_0000, 10, true)]);
        let c = q.pop_descriptor_chain(&m).unwrap();
        assert_eq!(s.serve(&m, c), 10);
        // A readable buffer outside memory is not even read.
        add_chain(&m, 16, 4, &[(0xffff_0000_0000, 10, false), (DATA, 4, true)]);
        let c = q.pop_descriptor_chain(&m).unwrap();
        assert_eq!(s.serve(&m, c), 4);
    }
}
