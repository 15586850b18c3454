//! virtio devices of the micro-VM, and the virtio-mmio transport.
//!
//! The transport (`mmio`) is kept apart from the devices: it owns the
//! registers, feature negotiation and queue configuration, and hands a
//! device everything it needs to run in one [`Activation`] when the
//! driver sets `DRIVER_OK`. A device is inactive until then. Each active
//! device serves its queues on a worker thread of its own (an
//! `event_manager` loop), woken by the queue's kick eventfd, which KVM
//! signals directly on the guest's `QueueNotify` write (ioeventfd); it
//! interrupts the guest through [`Interrupt`] (an irqfd). So a vCPU thread
//! never runs device code except for register accesses.
//!
//! Everything that comes out of guest memory (descriptors, buffers,
//! lengths, indices) is hostile input: devices bound-check it, never
//! panic on it, and answer a malformed request with an error status or by
//! dropping it.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

/// Guest memory as every device sees it.
pub type Mem = vm_memory::GuestMemoryMmap<()>;

/// virtio device ids (virtio 1.2, section 5).
pub mod device_type {
    pub const NET: u32 = 1;
    pub const RNG: u32 = 4;
    pub const P9: u32 = 9;
    pub const VSOCK: u32 = 19;
}

/// `VIRTIO_F_VERSION_1`: every device offers it (virtio-mmio version 2).
pub const F_VERSION_1: u64 = 1 << 32;

/// Interrupt status bits (the transport's `InterruptStatus` register).
pub const INT_USED_RING: u32 = 1;
pub const INT_CONFIG: u32 = 2;

/// A device's interrupt line: the interrupt status register the driver
/// reads and acknowledges, and the irqfd that raises the guest IRQ.
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    irqfd: EventFd,
}

impl Interrupt {
    pub fn new(irqfd: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            irqfd,
        }
    }

    /// The device put buffers in a used ring.
    pub fn signal_used_queue(&self) {
        self.raise(INT_USED_RING);
    }

    /// The device's configuration space changed.
    pub fn signal_config_change(&self) {
        self.raise(INT_CONFIG);
    }

    /// Set status bits without raising the line (restoring a snapshot).
    pub fn set_pending(&self, bits: u32) {
        self.status.fetch_or(bits, Ordering::SeqCst);
    }

    /// Raise `bits` again (a resumed machine's pending interrupt).
    pub fn raise_bits(&self, bits: u32) {
        self.raise(bits);
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        // An eventfd write only fails when the counter would overflow,
        // which means the interrupt is pending anyway.
        let _ = self.irqfd.write(1);
    }

    /// `InterruptStatus`.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// `InterruptACK`.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// The irqfd itself (to register with KVM).
    pub fn irqfd(&self) -> &EventFd {
        &self.irqfd
    }
}

/// One queue the driver made ready, as handed to the device.
#[derive(Debug)]
pub struct ActiveQueue {
    /// Index of the queue on its device.
    pub index: u16,
    pub queue: virtio_queue::Queue,
    /// Signalled when the driver writes this queue's index to
    /// `QueueNotify` (registered with KVM as an ioeventfd).
    pub kick: EventFd,
}

/// Everything a device needs to start serving, given at `DRIVER_OK`.
#[derive(Debug)]
pub struct Activation {
    pub mem: Mem,
    pub interrupt: Arc<Interrupt>,
    /// The queues in index order. Queues the driver did not make ready are
    /// absent; a device that needs them refuses to activate.
    pub queues: Vec<ActiveQueue>,
    /// The features the driver accepted (a subset of the offered ones).
    pub acked_features: u64,
    /// Readable when the VM is being torn down: the worker thread exits.
    pub stop: EventFd,
}

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("the driver did not make queue {0} ready")]
    MissingQueue(u16),
    #[error("queue {0} is not valid in guest memory")]
    BadQueue(u16),
    #[error("cannot start the device's worker thread: {0}")]
    Worker(String),
    #[error("{0}")]
    Other(String),
}

/// A virtio device behind a transport.
pub trait VirtioDevice: Send {
    /// virtio device id ([`device_type`]).
    fn device_type(&self) -> u32;
    /// Largest size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Features offered to the driver (must include [`F_VERSION_1`]).
    fn avail_features(&self) -> u64;
    /// Read the device-specific configuration space. Offsets and lengths
    /// come from the guest: out-of-range bytes read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Write the configuration space (most devices ignore it).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Start serving (the driver set `DRIVER_OK`).
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;
    /// The driver reset the device: stop serving and give the queues back.
    /// Returns `false` when the device cannot be reset (the transport then
    /// marks it as needing a reset, `DEVICE_NEEDS_RESET`).
    fn reset(&mut self) -> bool {
        false
    }
    /// Stop serving for a snapshot (the VM's stop event has been written
    /// and the vCPUs are paused) and say where each active queue stands.
    /// An error says why this device's state cannot be saved (the
    /// default: it has host state a snapshot cannot hold).
    fn pause(&mut self) -> Result<Vec<QueuePos>, String> {
        Err("this device cannot be saved in a snapshot".into())
    }
}

/// Where one queue stood when its device was paused: the next available
/// ring entry the device would read and the next used ring entry it would
/// write. Devices complete chains in order and hold none across a pause,
/// so the two are equal for a quiet device (checked on restore).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueuePos {
    pub index: u16,
    pub next_avail: u16,
    pub next_used: u16,
}

impl QueuePos {
    pub fn of(index: u16, q: &virtio_queue::Queue) -> Self {
        use virtio_queue::QueueT;
        Self {
            index,
            next_avail: q.next_avail(),
            next_used: q.next_used(),
        }
    }
}

pub mod mmio;
pub mod p9;
pub mod queue;
pub mod rng;
pub mod vsock;
