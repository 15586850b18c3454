//! A hostile virtio driver: arbitrary guest memory contents and an
//! arbitrary sequence of register accesses on the virtio-mmio transport,
//! interleaved with serving the activated queue synchronously with the
//! real 9p (echo handler) and rng chain servers. Nothing may panic, the
//! status register must stay coherent, and the used ring must never move
//! by more than the chains the avail ring offered.
#![no_main]

use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;
use sandbox::vm::bus::BusDevice;
use sandbox::vm::virtio::mmio::{status, MmioTransport, MMIO_SIZE};
use sandbox::vm::virtio::p9::{P9Handler, P9Server};
use sandbox::vm::virtio::queue::{serve_queue, ChainServer};
use sandbox::vm::virtio::rng::RngServer;
use sandbox::vm::virtio::{ActivateError, Activation, Interrupt, Mem, VirtioDevice, F_VERSION_1};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

const MEM_SIZE: usize = 0x10000;

/// Hands its activation to the fuzz loop instead of starting a thread.
struct Capture {
    sizes: [u16; 2],
    slot: Arc<Mutex<Option<Activation>>>,
}

impl VirtioDevice for Capture {
    fn device_type(&self) -> u32 {
        9
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }
    fn avail_features(&self) -> u64 {
        F_VERSION_1 | (1 << 29) | 1
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(offset as u8);
    }
    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        if a.queues.is_empty() {
            return Err(ActivateError::MissingQueue(0));
        }
        *self.slot.lock().unwrap() = Some(a);
        Ok(())
    }
    fn reset(&mut self) -> bool {
        *self.slot.lock().unwrap() = None;
        true
    }
}

struct Echo;
impl P9Handler for Echo {
    fn handle(&mut self, req: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(&req[..req.len().min(64)]);
    }
    fn max_msize(&self) -> u32 {
        512
    }
}

fuzz_target!(|data: &[u8]| {
    // Input: image length (1 byte, x16), the memory image, the ops.
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let (image, ops) = rest.split_at(rest.len().min(usize::from(n) * 16));
    let mem: Mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    // The image is repeated over memory, so that whatever addresses the
    // rings and descriptors get, they see fuzzer bytes.
    if !image.is_empty() {
        for at in (0..MEM_SIZE).step_by(image.len()) {
            let _ = mem.write_slice(image, GuestAddress(at as u64));
        }
    }
    let slot = Arc::new(Mutex::new(None));
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let int = Arc::new(Interrupt::new(irq));
    let t = MmioTransport::new(
        Box::new(Capture {
            sizes: [16, 4],
            slot: slot.clone(),
        }),
        mem.clone(),
        int.clone(),
    )
    .unwrap();
    t.set_stop_event(EventFd::new(libc::EFD_NONBLOCK).unwrap());
    let mut p9 = P9Server::new(Box::new(Echo));
    let mut rng = RngServer::new();

    let mut ops = ops;
    while let Some((&op, rest)) = ops.split_first() {
        if rest.len() < 6 {
            break;
        }
        let off = u64::from(u16::from_le_bytes([rest[0], rest[1]])) % (MMIO_SIZE + 8);
        let val = u32::from_le_bytes([rest[2], rest[3], rest[4], rest[5]]);
        ops = &rest[6..];
        match op % 9 {
            // Register writes (mostly 4-byte, aligned to the register map).
            0 | 1 | 2 => t.write(off & !3 & 0xff, &val.to_le_bytes()),
            3 => {
                let width = [1usize, 2, 4, 8][(val & 3) as usize];
                t.write(off, &val.to_le_bytes().repeat(2)[..width]);
            }
            4 => {
                let width = [1usize, 2, 4, 8][(val & 3) as usize];
                let mut buf = [0u8; 8];
                t.read(off, &mut buf[..width]);
            }
            // Poke guest memory.
            5 => {
                let _ = mem.write_obj(val, GuestAddress(off * 16 % MEM_SIZE as u64));
            }
            // Serve the activated queue with a real chain server.
            6 | 7 => {
                let mut guard = slot.lock().unwrap();
                if let Some(a) = guard.as_mut() {
                    let q = &mut a.queues[0].queue;
                    let before = q.next_used();
                    let avail_before = q.next_avail();
                    let server: &mut dyn ChainServer = if op % 9 == 6 { &mut p9 } else { &mut rng };
                    let n = serve_queue(&a.mem, q, server, &int);
                    // Every served chain was popped once, and added to the
                    // used ring at most once (not when its head was bogus).
                    assert_eq!(
                        q.next_avail().wrapping_sub(avail_before) as usize,
                        n % 65536
                    );
                    assert!(q.next_used().wrapping_sub(before) as usize <= n);
                }
            }
            // What the Linux driver does up to DRIVER_OK, with the rings
            // of queue 0 where `val` says (often in memory, sometimes
            // overlapping or misaligned).
            8 => {
                let w = |o: u64, v: u32| t.write(o, &v.to_le_bytes());
                w(0x70, 0);
                w(0x70, 1);
                w(0x70, 3);
                w(0x24, 1);
                w(0x20, 1);
                w(0x24, 0);
                w(0x20, val >> 28 << 29);
                w(0x70, 11);
                w(0x30, 0);
                w(0x38, 1 << (val & 7));
                w(0x80, (val >> 3 & 0xff) << 8);
                w(0x90, (val >> 11 & 0xff) << 8);
                w(0xa0, (val >> 19 & 0xff) << 8);
                w(0x44, 1);
                w(0x70, 15);
            }
            _ => {}
        }
        let st = t.status();
        if st & status::DRIVER_OK != 0 && st & status::FAILED == 0 {
            assert_ne!(
                st & status::FEATURES_OK,
                0,
                "DRIVER_OK without FEATURES_OK: {st:#x}"
            );
        }
        let mut magic = [0u8; 4];
        t.read(0, &mut magic);
        assert_eq!(u32::from_le_bytes(magic), 0x7472_6976);
    }
});
