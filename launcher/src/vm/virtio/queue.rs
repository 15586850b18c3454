//! Shared helpers for the devices' descriptor chains, and the worker loop
//! of a device with one queue.
//!
//! - [`split_chain`] walks one chain once: it gathers the device-readable
//!   buffers into a caller-owned byte buffer (bounded) and records the
//!   device-writable buffers; [`scatter`] then writes a response across
//!   the writable buffers and returns the number of bytes written (the
//!   used length). The caller's `Vec`s are reused between chains.
//! - [`serve_queue`] drains a queue the standard way (notifications off,
//!   pop every chain, add it to the used ring, notifications back on and
//!   check again) and interrupts the guest when the ring's rules
//!   (`VIRTIO_RING_F_EVENT_IDX` or not) say so.
//! - [`spawn_worker`] runs [`serve_queue`] on a thread of its own, in an
//!   `event_manager` loop woken by the queue's kick eventfd, until the VM
//!   stop event or the device's reset event is readable; the thread
//!   returns the server and the queue to whoever joins it.
//!
//! Hostile input: everything read here comes from guest memory. Chains
//! are walked by `virtio_queue::DescriptorChain`, which stops at a
//! descriptor index out of the table, at a loop (at most queue-size
//! descriptors per chain) and at a total length overflowing `u32`; every
//! buffer access goes through `vm_memory`'s checked `read_slice`/
//! `write_slice`. Nothing here panics on a malformed ring: a bad chain is
//! returned to the guest with 0 bytes written, a broken ring (an avail
//! index further ahead than the queue size) is left alone until the next
//! kick.

use std::ops::Deref;
use std::sync::Arc;
use std::thread::JoinHandle;

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::{ActivateError, Activation, Interrupt, Mem};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueueError {
    #[error("the descriptor buffer {addr:#x}+{len:#x} is not in guest memory")]
    BadBuffer { addr: u64, len: u32 },
    #[error(
        "the response of {len} bytes does not fit in the {room} device-writable bytes of the chain"
    )]
    WritableTooShort { len: usize, room: u64 },
}

/// One device-writable buffer of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WritableBuf {
    pub addr: GuestAddress,
    pub len: u32,
}

/// What [`split_chain`] found in a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainParts {
    /// Total bytes of the device-readable part, as the chain claims it.
    pub readable: u64,
    /// Bytes of it gathered into the buffer (at most the limit).
    pub gathered: usize,
    /// Total bytes of the device-writable part.
    pub writable: u64,
}

impl ChainParts {
    /// The readable part was longer than the limit: only its first
    /// `gathered` bytes are in the buffer.
    pub fn is_truncated(&self) -> bool {
        self.readable > self.gathered as u64
    }
}

/// Walk `chain` once: copy the device-readable buffers' bytes into
/// `readable` (cleared first), at most `limit` bytes (the rest is counted,
/// not read: see [`ChainParts::is_truncated`]), and list the
/// device-writable buffers in `writable` (cleared first), in chain order.
/// Readable and writable buffers are told apart by their flag alone (a
/// driver places the writable ones last; one that interleaves them gets
/// the same reading).
///
/// Error: a readable buffer (within the limit) is outside guest memory;
/// `writable` is then incomplete. Writable buffers are only checked when
/// written ([`scatter`]).
pub fn split_chain<M>(
    chain: DescriptorChain<M>,
    limit: usize,
    readable: &mut Vec<u8>,
    writable: &mut Vec<WritableBuf>,
) -> Result<ChainParts, QueueError>
where
    M: Deref + Clone,
    M::Target: GuestMemory,
{
    readable.clear();
    writable.clear();
    let mut room: u64 = 0;
    let mut claimed: u64 = 0;
    // The chain borrows the memory; keep a handle to read through.
    let mem_chain = chain.clone();
    let mem = mem_chain.memory();
    for desc in chain {
        let len = desc.len();
        if desc.is_write_only() {
            room += u64::from(len);
            writable.push(WritableBuf {
                addr: desc.addr(),
                len,
            });
            continue;
        }
        claimed += u64::from(len);
        let start = readable.len();
        let take = (limit - start).min(len as usize);
        if take == 0 {
            continue;
        }
        readable.resize(start + take, 0);
        mem.read_slice(&mut readable[start..], desc.addr())
            .map_err(|_| QueueError::BadBuffer {
                addr: desc.addr().0,
                len,
            })?;
    }
    Ok(ChainParts {
        readable: claimed,
        gathered: readable.len(),
        writable: room,
    })
}

/// List the device-writable buffers of `chain` in `writable` (cleared
/// first), ignoring (and not reading) the readable ones; returns their
/// total length.
pub fn writable_part<M>(chain: DescriptorChain<M>, writable: &mut Vec<WritableBuf>) -> u64
where
    M: Deref,
    M::Target: GuestMemory,
{
    writable.clear();
    let mut room = 0u64;
    for desc in chain.writable() {
        room += u64::from(desc.len());
        writable.push(WritableBuf {
            addr: desc.addr(),
            len: desc.len(),
        });
    }
    room
}

/// Write `data` across `bufs` in order and return the number of bytes
/// written. `data` must fit: when it is longer than the buffers together,
/// nothing is written and the error says so. A buffer outside guest
/// memory stops the write with an error (the bytes before it stay
/// written).
pub fn scatter<M: GuestMemory + ?Sized>(
    mem: &M,
    bufs: &[WritableBuf],
    data: &[u8],
) -> Result<u32, QueueError> {
    let room: u64 = bufs.iter().map(|b| u64::from(b.len)).sum();
    if data.len() as u64 > room {
        return Err(QueueError::WritableTooShort {
            len: data.len(),
            room,
        });
    }
    let mut done = 0usize;
    for b in bufs {
        if done == data.len() {
            break;
        }
        let n = (data.len() - done).min(b.len as usize);
        mem.write_slice(&data[done..done + n], b.addr)
            .map_err(|_| QueueError::BadBuffer {
                addr: b.addr.0,
                len: b.len,
            })?;
        done += n;
    }
    // `done <= room`, and a chain's total length fits in a u32 (the chain
    // walker stops before an overflow), but stay defensive.
    Ok(u32::try_from(done).unwrap_or(u32::MAX))
}

/// The device-specific part of a one-queue device: serve one chain.
pub trait ChainServer: Send + 'static {
    /// Serve one chain popped from the queue; return the number of bytes
    /// written into its device-writable part (the used length).
    fn serve(&mut self, mem: &Mem, chain: DescriptorChain<&Mem>) -> u32;
}

/// Serve every available chain of `queue`, then interrupt the guest if
/// the ring asks for it. Returns the number of chains served.
pub fn serve_queue<S: ChainServer + ?Sized>(
    mem: &Mem,
    queue: &mut Queue,
    server: &mut S,
    interrupt: &Interrupt,
) -> usize {
    let mut served = 0;
    // Rounds in a row that found the ring non-empty but popped nothing:
    // once is a race with the driver, twice a broken avail index.
    let mut empty_rounds = 0;
    loop {
        if queue.disable_notification(mem).is_err() {
            break;
        }
        let mut n = 0;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let len = server.serve(mem, chain);
            // Fails only for a head index outside the queue, which the
            // driver made up: there is nothing to give back then.
            let _ = queue.add_used(mem, head, len);
            n += 1;
        }
        served += n;
        empty_rounds = if n == 0 { empty_rounds + 1 } else { 0 };
        match queue.enable_notification(mem) {
            Ok(true) if empty_rounds < 2 => continue,
            _ => break,
        }
    }
    if served > 0 && queue.needs_notification(mem).unwrap_or(true) {
        interrupt.signal_used_queue();
    }
    served
}

const EV_KICK: u32 = 0;
const EV_STOP: u32 = 1;
const EV_RESET: u32 = 2;

struct Subscriber<S> {
    mem: Mem,
    interrupt: Arc<Interrupt>,
    queue: Queue,
    kick: EventFd,
    stop: EventFd,
    reset: EventFd,
    server: S,
    done: bool,
}

impl<S: ChainServer> MutEventSubscriber for Subscriber<S> {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        match events.data() {
            EV_KICK => {
                // Non-blocking: a spurious wake-up reads EAGAIN.
                let _ = self.kick.read();
                serve_queue(
                    &self.mem,
                    &mut self.queue,
                    &mut self.server,
                    &self.interrupt,
                );
            }
            // The stop event is shared by every device: never read it.
            EV_STOP => self.done = true,
            EV_RESET => {
                let _ = self.reset.read();
                self.done = true;
            }
            _ => {}
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for (fd, data) in [
            (&self.kick, EV_KICK),
            (&self.stop, EV_STOP),
            (&self.reset, EV_RESET),
        ] {
            if ops.add(Events::with_data(fd, data, EventSet::IN)).is_err() {
                // Without its events the loop would never wake: give up.
                self.done = true;
            }
        }
    }
}

/// A running one-queue worker thread. Dropping it stops and joins the
/// thread (as [`Worker::stop`] does).
#[derive(Debug)]
pub struct Worker<S> {
    reset: EventFd,
    handle: Option<JoinHandle<Option<(S, Queue)>>>,
}

impl<S> Worker<S> {
    /// Stop the thread (the device is being reset) and take back the
    /// server and the queue. `None` when the thread panicked. Waits for
    /// the request being served, if any.
    pub fn stop(mut self) -> Option<(S, Queue)> {
        self.join()
    }

    fn join(&mut self) -> Option<(S, Queue)> {
        let handle = self.handle.take()?;
        let _ = self.reset.write(1);
        handle.join().ok().flatten()
    }
}

impl<S> Drop for Worker<S> {
    fn drop(&mut self) {
        let _ = self.join();
    }
}

/// Start a worker thread named `name` serving the one queue of
/// `activation` with `server`. The server comes back on error so the
/// device can be activated again later.
pub fn spawn_worker<S: ChainServer>(
    name: &str,
    activation: Activation,
    server: S,
) -> Result<Worker<S>, (ActivateError, S)> {
    let Activation {
        mem,
        interrupt,
        mut queues,
        stop,
        ..
    } = activation;
    let Some(pos) = queues.iter().position(|q| q.index == 0) else {
        return Err((ActivateError::MissingQueue(0), server));
    };
    let active = queues.swap_remove(pos);
    if !active.queue.is_valid(&mem) {
        return Err((ActivateError::BadQueue(0), server));
    }
    let reset = match EventFd::new(libc::EFD_NONBLOCK) {
        Ok(fd) => fd,
        Err(e) => return Err((ActivateError::Worker(format!("eventfd: {e}")), server)),
    };
    let reset_for_thread = match reset.try_clone() {
        Ok(fd) => fd,
        Err(e) => return Err((ActivateError::Worker(format!("eventfd: {e}")), server)),
    };
    let mut em: EventManager<Subscriber<S>> = match EventManager::new() {
        Ok(em) => em,
        Err(e) => return Err((ActivateError::Worker(format!("epoll: {e}")), server)),
    };
    let sub = Subscriber {
        mem,
        interrupt,
        queue: active.queue,
        kick: active.kick,
        stop,
        reset: reset_for_thread,
        server,
        done: false,
    };
    let (tx, rx) = std::sync::mpsc::channel::<Subscriber<S>>();
    let spawned = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            // The subscriber arrives by channel so that a failed spawn
            // leaves it with the caller.
            let sub = rx.recv().ok()?;
            let id = em.add_subscriber(sub);
            loop {
                match em.subscriber_mut(id) {
                    Ok(s) if !s.done => {}
                    _ => break,
                }
                match em.run() {
                    Ok(_) => {}
                    Err(event_manager::Error::Epoll(e)) if e.errno() == libc::EINTR => {}
                    Err(_) => break,
                }
            }
            em.remove_subscriber(id).ok().map(|s| (s.server, s.queue))
        });
    match spawned {
        Ok(handle) => match tx.send(sub) {
            Ok(()) => Ok(Worker {
                reset,
                handle: Some(handle),
            }),
            Err(std::sync::mpsc::SendError(sub)) => Err((
                ActivateError::Worker("the worker thread died at start".into()),
                sub.server,
            )),
        },
        Err(e) => Err((
            ActivateError::Worker(format!("cannot spawn {name}: {e}")),
            sub.server,
        )),
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    //! A hand-built split virtqueue in real guest memory, laid out the way
    //! the Linux driver does it, for the device tests.

    use super::*;
    use vm_memory::GuestMemoryMmap;

    pub const F_NEXT: u16 = 1;
    pub const F_WRITE: u16 = 2;

    pub const DESC: u64 = 0x1000;
    pub const AVAIL: u64 = 0x2000;
    pub const USED: u64 = 0x3000;
    /// Buffers go from here on.
    pub const DATA: u64 = 0x10000;

    pub fn mem() -> Mem {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    pub fn write_desc(mem: &Mem, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = GuestAddress(DESC + 16 * u64::from(i));
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        mem.write_slice(&raw, at).unwrap();
    }

    /// Put `head` in the avail ring (size `size`) and bump its index.
    pub fn push_avail(mem: &Mem, size: u16, head: u16) {
        let idx: u16 = mem.read_obj(GuestAddress(AVAIL + 2)).unwrap();
        let slot = AVAIL + 4 + 2 * u64::from(idx % size);
        mem.write_obj(head, GuestAddress(slot)).unwrap();
        mem.write_obj(idx.wrapping_add(1), GuestAddress(AVAIL + 2))
            .unwrap();
    }

    pub fn used_idx(mem: &Mem) -> u16 {
        mem.read_obj(GuestAddress(USED + 2)).unwrap()
    }

    /// The used element `i`: (head, len).
    pub fn used_elem(mem: &Mem, size: u16, i: u16) -> (u32, u32) {
        let at = USED + 4 + 8 * u64::from(i % size);
        (
            mem.read_obj(GuestAddress(at)).unwrap(),
            mem.read_obj(GuestAddress(at + 4)).unwrap(),
        )
    }

    pub fn queue(size: u16) -> Queue {
        let mut q = Queue::new(size).unwrap();
        q.try_set_size(size).unwrap();
        q.try_set_desc_table_address(GuestAddress(DESC)).unwrap();
        q.try_set_avail_ring_address(GuestAddress(AVAIL)).unwrap();
        q.try_set_used_ring_address(GuestAddress(USED)).unwrap();
        q.set_ready(true);
        q
    }

    /// Build a chain of `bufs` (addr, len, writable) at descriptors
    /// `first..` and make it available.
    pub fn add_chain(mem: &Mem, size: u16, first: u16, bufs: &[(u64, u32, bool)]) {
        for (k, &(addr, len, w)) in bufs.iter().enumerate() {
            let i = first + k as u16;
            let last = k + 1 == bufs.len();
            let flags = if w { F_WRITE } else { 0 } | if last { 0 } else { F_NEXT };
            write_desc(mem, i, addr, len, flags, if last { 0 } else { i + 1 });
        }
        push_avail(mem, size, first);
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;

    fn pop<'a>(mem: &'a Mem, q: &mut Queue) -> DescriptorChain<&'a Mem> {
        q.pop_descriptor_chain(mem).unwrap()
    }

    #[test]
    fn gathers_readable_and_lists_writable() {
        let m = mem();
        let mut q = queue(16);
        m.write_slice(b"hello ", GuestAddress(DATA)).unwrap();
        m.write_slice(b"world", GuestAddress(DATA + 0x100)).unwrap();
        add_chain(
            &m,
            16,
            0,
            &[
                (DATA, 6, false),
                (DATA + 0x100, 5, false),
                (DATA + 0x200, 3, true),
                (DATA + 0x300, 4, true),
            ],
        );
        let (mut r, mut w) = (Vec::new(), Vec::new());
        let parts = split_chain(pop(&m, &mut q), 64, &mut r, &mut w).unwrap();
        assert_eq!(r, b"hello world");
        assert_eq!(
            parts,
            ChainParts {
                readable: 11,
                gathered: 11,
                writable: 7
            }
        );
        assert!(!parts.is_truncated());
        assert_eq!(scatter(&m, &w, b"abcdefg").unwrap(), 7);
        let mut got = [0u8; 4];
        m.read_slice(&mut got[..3], GuestAddress(DATA + 0x200))
            .unwrap();
        assert_eq!(&got[..3], b"abc");
        m.read_slice(&mut got, GuestAddress(DATA + 0x300)).unwrap();
        assert_eq!(&got, b"defg");
        assert_eq!(
            scatter(&m, &w, b"12345678"),
            Err(QueueError::WritableTooShort { len: 8, room: 7 })
        );
        // A short response fills only the first buffers.
        assert_eq!(scatter(&m, &w, b"xy").unwrap(), 2);
    }

    #[test]
    fn readable_limit_and_bad_addresses() {
        let m = mem();
        let mut q = queue(16);
        m.write_slice(&[7u8; 100], GuestAddress(DATA)).unwrap();
        add_chain(
            &m,
            16,
            0,
            &[(DATA, 60, false), (DATA + 60, 40, false), (DATA, 5, true)],
        );
        let (mut r, mut w) = (Vec::new(), Vec::new());
        let parts = split_chain(pop(&m, &mut q), 70, &mut r, &mut w).unwrap();
        assert_eq!(
            parts,
            ChainParts {
                readable: 100,
                gathered: 70,
                writable: 5
            }
        );
        assert!(parts.is_truncated());
        assert_eq!(r, [7u8; 70]);
        assert_eq!(w.len(), 1);
        // A buffer past the end of guest memory.
        add_chain(&m, 16, 1, &[(0x10_0000 - 4, 8, false)]);
        assert!(matches!(
            split_chain(pop(&m, &mut q), 1 << 20, &mut r, &mut w),
            Err(QueueError::BadBuffer { .. })
        ));
        // A writable buffer outside memory fails at the write.
        add_chain(&m, 16, 2, &[(u64::MAX - 2, 8, true)]);
        split_chain(pop(&m, &mut q), 64, &mut r, &mut w).unwrap();
        assert!(matches!(
            scatter(&m, &w, b"abc"),
            Err(QueueError::BadBuffer { .. })
        ));
    }

    #[test]
    fn looped_and_out_of_table_chains_end() {
        let m = mem();
        let mut q = queue(4);
        // 0 -> 1 -> 0 -> ...: the walker stops after 4 descriptors.
        write_desc(&m, 0, DATA, 1, F_NEXT, 1);
        write_desc(&m, 1, DATA, 1, F_NEXT, 0);
        push_avail(&m, 4, 0);
        let (mut r, mut w) = (Vec::new(), Vec::new());
        let parts = split_chain(pop(&m, &mut q), 64, &mut r, &mut w).unwrap();
        assert!(parts.readable <= 4 && parts.gathered <= 4);
        // next index out of the table.
        write_desc(&m, 2, DATA, 1, F_NEXT, 999);
        push_avail(&m, 4, 2);
        assert_eq!(
            split_chain(pop(&m, &mut q), 64, &mut r, &mut w)
                .unwrap()
                .gathered,
            1
        );
        // A head index out of the table yields an empty chain.
        push_avail(&m, 4, 77);
        assert_eq!(
            split_chain(pop(&m, &mut q), 64, &mut r, &mut w).unwrap(),
            ChainParts {
                readable: 0,
                gathered: 0,
                writable: 0
            }
        );
        // Lengths overflowing u32 together: the walker stops.
        write_desc(&m, 0, DATA, u32::MAX, F_WRITE | F_NEXT, 1);
        write_desc(&m, 1, DATA, u32::MAX, F_WRITE, 0);
        push_avail(&m, 4, 0);
        let parts = split_chain(pop(&m, &mut q), 64, &mut r, &mut w).unwrap();
        assert_eq!(parts.writable, u64::from(u32::MAX));
    }

    struct Count(u32);
    impl ChainServer for Count {
        fn serve(&mut self, _mem: &Mem, chain: DescriptorChain<&Mem>) -> u32 {
            self.0 += 1;
            chain.count() as u32
        }
    }

    #[test]
    fn serve_queue_fills_used_ring_and_survives_a_broken_avail_index() {
        let m = mem();
        let mut q = queue(8);
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let int = Interrupt::new(irq.try_clone().unwrap());
        add_chain(&m, 8, 0, &[(DATA, 1, false), (DATA, 1, true)]);
        add_chain(&m, 8, 2, &[(DATA, 1, true)]);
        let mut s = Count(0);
        assert_eq!(serve_queue(&m, &mut q, &mut s, &int), 2);
        assert_eq!(used_idx(&m), 2);
        assert_eq!(used_elem(&m, 8, 0), (0, 2));
        assert_eq!(used_elem(&m, 8, 1), (2, 1));
        assert_eq!(irq.read().unwrap(), 1);
        // The driver claims 100 new chains in a ring of 8.
        m.write_obj(102u16, GuestAddress(AVAIL + 2)).unwrap();
        assert_eq!(serve_queue(&m, &mut q, &mut s, &int), 0);
        assert!(irq.read().is_err(), "no interrupt without used buffers");
    }
}
