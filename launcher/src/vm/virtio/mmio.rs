//! The virtio-mmio transport, version 2 ("modern") only (virtio 1.2,
//! section 4.2.2), as a [`BusDevice`] of [`MMIO_SIZE`] bytes.
//!
//! It owns the registers (`0x000..0x100`), the device status state
//! machine, feature negotiation and the queues' configuration; the
//! configuration space (`0x100..`) is delegated to the device. When the
//! driver sets `DRIVER_OK`, the transport builds a `virtio_queue::Queue`
//! for each queue made ready, checks it against guest memory, and hands
//! everything to the device in one [`Activation`], once. A failed
//! activation sets `DEVICE_NEEDS_RESET` and raises a configuration
//! interrupt; writing 0 to `Status` resets the device (stopping its
//! worker) and the queues.
//!
//! Threads: the vCPU threads call `read`/`write`; the state is behind one
//! mutex. Queue kicks normally bypass the transport: each queue has an
//! eventfd ([`MmioTransport::queue_kicks`]) the VMM registers with KVM as
//! an ioeventfd on `QueueNotify`; a `QueueNotify` write that still
//! reaches [`BusDevice::write`] signals the same eventfd.
//!
//! The VM's stop event is given with [`MmioTransport::set_stop_event`]
//! before the guest runs; an activation without one fails (the device
//! would have no way to stop its worker).
//!
//! Hostile input: every register access. Only aligned 4-byte accesses
//! reach the registers (others read zero and are ignored); configuration
//! accesses of any width are bounds-checked; a write that the state
//! machine does not allow is ignored. Nothing the guest writes panics.

use std::sync::{Arc, Mutex, MutexGuard};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use super::{
    Activation, ActiveQueue, Interrupt, Mem, QueuePos, VirtioDevice, F_VERSION_1, INT_CONFIG,
    INT_USED_RING,
};
use crate::vm::bus::BusDevice;

pub const MMIO_SIZE: u64 = 0x1000;
pub const NOTIFY_OFFSET: u64 = 0x50;

/// "virt", little-endian.
const MAGIC: u32 = 0x7472_6976;
const VERSION: u32 = 2;
/// Our vendor id ("SBX\0"); the Linux driver does not care.
const VENDOR_ID: u32 = 0x0058_4253;
const CONFIG_OFFSET: u64 = 0x100;
/// Largest split queue (virtio 1.2, 2.7).
const MAX_QUEUE_SIZE: u16 = 32768;

/// Device status bits.
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    pub const FAILED: u32 = 0x80;
}
use status::*;

/// `VIRTIO_RING_F_EVENT_IDX`.
const F_EVENT_IDX: u64 = 1 << 29;

mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const SHM_SEL: u64 = 0x0ac;
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    pub const SHM_BASE_LOW: u64 = 0x0b8;
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
}

#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    #[error("a virtio device with no queue is not supported")]
    NoQueues,
    #[error(
        "queue {index} has a maximum size of {size}; a power of two from 1 to 32768 is accepted"
    )]
    BadQueueMax { index: usize, size: u16 },
    #[error("the device has {0} queues; at most 65535 are accepted")]
    TooManyQueues(usize),
    #[error("the device does not offer VIRTIO_F_VERSION_1 (features {0:#x})")]
    NoVersion1(u64),
    #[error("cannot create a queue kick eventfd: {0}")]
    EventFd(std::io::Error),
}

/// The configuration of one queue as the driver wrote it.
#[derive(Debug, Clone, Copy)]
struct QueueConfig {
    max: u16,
    /// 0 when the driver wrote an invalid size (activation then fails).
    size: u16,
    ready: bool,
    desc: u64,
    driver: u64,
    device: u64,
}

impl QueueConfig {
    fn new(max: u16) -> Self {
        Self {
            max,
            size: max,
            ready: false,
            desc: 0,
            driver: 0,
            device: 0,
        }
    }
}

/// One queue's configuration in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueSnap {
    pub size: u16,
    pub ready: bool,
    pub desc: u64,
    pub driver: u64,
    pub device: u64,
}

/// The transport's registers and its queues in a snapshot
/// ([`MmioTransport::save`], [`MmioTransport::restore`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TransportState {
    pub device_type: u32,
    pub status: u32,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub driver_features: u64,
    pub queue_sel: u32,
    pub config_generation: u32,
    pub interrupt_status: u32,
    pub queues: Vec<QueueSnap>,
    /// Where each ready queue stood (only when the device was active).
    pub positions: Vec<QueuePos>,
}

const ACTIVE: u32 = ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK;

impl TransportState {
    /// The checks that need no device: a status a healthy device can be
    /// saved in, known interrupt bits, queue sizes, one position per
    /// ready queue of an active device and none in flight.
    pub fn check(&self) -> Result<(), String> {
        let legal = [
            0,
            ACKNOWLEDGE,
            ACKNOWLEDGE | DRIVER,
            ACKNOWLEDGE | DRIVER | FEATURES_OK,
            ACTIVE,
        ];
        if !legal.contains(&self.status) {
            return Err(format!(
                "status {:#x} is not one a healthy device can be saved in",
                self.status
            ));
        }
        if self.status & FEATURES_OK != 0 && self.driver_features & F_VERSION_1 == 0 {
            return Err("the driver features lack VIRTIO_F_VERSION_1".into());
        }
        if self.interrupt_status & !(INT_USED_RING | INT_CONFIG) != 0 {
            return Err(format!(
                "interrupt status {:#x} has unknown bits",
                self.interrupt_status
            ));
        }
        let active = self.status == ACTIVE;
        for (i, q) in self.queues.iter().enumerate() {
            if q.size == 0 || q.size > MAX_QUEUE_SIZE || !q.size.is_power_of_two() {
                return Err(format!(
                    "queue {i} has size {}; a power of two up to {MAX_QUEUE_SIZE} is accepted",
                    q.size
                ));
            }
            let n = self
                .positions
                .iter()
                .filter(|p| usize::from(p.index) == i)
                .count();
            let want = usize::from(active && q.ready);
            if n != want {
                return Err(format!(
                    "queue {i} has {n} saved positions, {want} expected"
                ));
            }
        }
        if self.positions.len() != self.queues.iter().filter(|q| active && q.ready).count() {
            return Err("saved positions for queues that do not exist".into());
        }
        if let Some(p) = self.positions.iter().find(|p| p.next_avail != p.next_used) {
            return Err(format!(
                "queue {} was saved with a chain in flight (avail {}, used {})",
                p.index, p.next_avail, p.next_used
            ));
        }
        Ok(())
    }
}

struct State {
    device: Box<dyn VirtioDevice>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    queues: Vec<QueueConfig>,
    config_generation: u32,
    /// The device got an [`Activation`] and was not reset since.
    activated: bool,
    /// Why the last activation or reset failed, for diagnostics.
    last_error: Option<String>,
    stop: Option<EventFd>,
}

/// A virtio-mmio device slot.
pub struct MmioTransport {
    mem: Mem,
    interrupt: Arc<Interrupt>,
    kicks: Vec<EventFd>,
    state: Mutex<State>,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.lock();
        f.debug_struct("MmioTransport")
            .field("device_type", &st.device.device_type())
            .field("status", &st.status)
            .field("activated", &st.activated)
            .finish_non_exhaustive()
    }
}

fn set_low(v: &mut u64, low: u32) {
    *v = (*v & !0xffff_ffff) | u64::from(low);
}

fn set_high(v: &mut u64, high: u32) {
    *v = (*v & 0xffff_ffff) | (u64::from(high) << 32);
}

impl MmioTransport {
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: Mem,
        interrupt: Arc<Interrupt>,
    ) -> Result<Self, MmioError> {
        let maxes = device.queue_max_sizes().to_vec();
        if maxes.is_empty() {
            return Err(MmioError::NoQueues);
        }
        if maxes.len() > usize::from(u16::MAX) {
            return Err(MmioError::TooManyQueues(maxes.len()));
        }
        for (index, &size) in maxes.iter().enumerate() {
            if size == 0 || size > MAX_QUEUE_SIZE || !size.is_power_of_two() {
                return Err(MmioError::BadQueueMax { index, size });
            }
        }
        let features = device.avail_features();
        if features & F_VERSION_1 == 0 {
            return Err(MmioError::NoVersion1(features));
        }
        let kicks = maxes
            .iter()
            .map(|_| EventFd::new(libc::EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()
            .map_err(MmioError::EventFd)?;
        Ok(Self {
            mem,
            interrupt,
            kicks,
            state: Mutex::new(State {
                device,
                status: 0,
                device_features_sel: 0,
                driver_features_sel: 0,
                driver_features: 0,
                queue_sel: 0,
                queues: maxes.into_iter().map(QueueConfig::new).collect(),
                config_generation: 0,
                activated: false,
                last_error: None,
                stop: None,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the registers in a
        // state worse than what a guest can write: keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One eventfd per queue, `(queue index, eventfd)`; the VMM registers
    /// each with KVM as an ioeventfd on `base + NOTIFY_OFFSET`, 4 bytes,
    /// datamatch = the queue index as u32. These are clones: the
    /// transport keeps its own.
    pub fn queue_kicks(&self) -> std::io::Result<Vec<(u16, EventFd)>> {
        self.kicks
            .iter()
            .enumerate()
            .map(|(i, fd)| Ok((i as u16, fd.try_clone()?)))
            .collect()
    }

    /// The VM's stop event (readable once the VM is being torn down),
    /// cloned into each activation. Set it before the guest runs.
    pub fn set_stop_event(&self, stop: EventFd) {
        self.lock().stop = Some(stop);
    }

    /// The current device status (as the driver reads it).
    pub fn status(&self) -> u32 {
        self.lock().status
    }

    /// Why the last activation (or reset) failed, if it did.
    pub fn last_error(&self) -> Option<String> {
        self.lock().last_error.clone()
    }

    /// Pause the device (the VM's stop event was written, the vCPUs are
    /// paused) and read everything a resumed machine needs. The device
    /// does not serve again afterwards.
    pub fn save(&self) -> Result<TransportState, String> {
        let mut st = self.lock();
        if st.status & (FAILED | DEVICE_NEEDS_RESET) != 0 {
            return Err(format!(
                "device type {} is in a failed state (status {:#x})",
                st.device.device_type(),
                st.status
            ));
        }
        let positions = if st.activated {
            st.activated = false;
            st.device.pause()?
        } else {
            Vec::new()
        };
        Ok(TransportState {
            device_type: st.device.device_type(),
            status: st.status,
            device_features_sel: st.device_features_sel,
            driver_features_sel: st.driver_features_sel,
            driver_features: st.driver_features,
            queue_sel: st.queue_sel,
            config_generation: st.config_generation,
            interrupt_status: self.interrupt.status(),
            queues: st
                .queues
                .iter()
                .map(|q| QueueSnap {
                    size: q.size,
                    ready: q.ready,
                    desc: q.desc,
                    driver: q.driver,
                    device: q.device,
                })
                .collect(),
            positions,
        })
    }

    /// Check `s` against this device and guest memory, then take it over:
    /// the registers, the queues, and (when the driver had set
    /// `DRIVER_OK`) an activation with every queue where it stood. Then
    /// every queue is kicked once (a kick may have been pending when the
    /// snapshot was taken); a pending interrupt is raised again by
    /// [`MmioTransport::resumed`]. Before the vCPUs exist; nothing is
    /// applied when a check fails.
    pub fn restore(&self, s: &TransportState) -> Result<(), String> {
        let mut st = self.lock();
        let ty = st.device.device_type();
        if s.device_type != ty {
            return Err(format!(
                "the snapshot has device type {} where this machine has {ty}",
                s.device_type
            ));
        }
        if s.queues.len() != st.queues.len() {
            return Err(format!(
                "device type {ty}: the snapshot has {} queues, the device {}",
                s.queues.len(),
                st.queues.len()
            ));
        }
        s.check().map_err(|e| format!("device type {ty}: {e}"))?;
        let offered = st.device.avail_features();
        if s.driver_features & !offered != 0 {
            return Err(format!(
                "device type {ty}: driver features {:#x} are not a valid choice from the offered {offered:#x}",
                s.driver_features
            ));
        }
        let mut queues = Vec::with_capacity(st.queues.len());
        for (i, (q, mine)) in s.queues.iter().zip(&st.queues).enumerate() {
            if q.size == 0 || q.size > mine.max || !q.size.is_power_of_two() {
                return Err(format!(
                    "device type {ty}: queue {i} has size {}; a power of two up to {} is accepted",
                    q.size, mine.max
                ));
            }
            queues.push(QueueConfig {
                max: mine.max,
                size: q.size,
                ready: q.ready,
                desc: q.desc,
                driver: q.driver,
                device: q.device,
            });
        }
        let active = s.status == ACTIVE;
        let mut candidate = State {
            device: std::mem::replace(&mut st.device, Box::new(Placeholder)),
            status: s.status,
            device_features_sel: s.device_features_sel,
            driver_features_sel: s.driver_features_sel,
            driver_features: s.driver_features,
            queue_sel: s.queue_sel,
            queues,
            config_generation: s.config_generation,
            activated: false,
            last_error: None,
            stop: st.stop.take(),
        };
        if active {
            let result = (|| {
                let stop = candidate
                    .stop
                    .as_ref()
                    .ok_or("the VMM set no stop event".to_string())?
                    .try_clone()
                    .map_err(|e| format!("cannot clone the stop event: {e}"))?;
                let mut aq = self.build_queues(&candidate)?;
                for q in &mut aq {
                    if let Some(p) = s.positions.iter().find(|p| p.index == q.index) {
                        q.queue.set_next_avail(p.next_avail);
                        q.queue.set_next_used(p.next_used);
                    }
                }
                candidate
                    .device
                    .activate(Activation {
                        mem: self.mem.clone(),
                        interrupt: self.interrupt.clone(),
                        queues: aq,
                        acked_features: candidate.driver_features,
                        stop,
                    })
                    .map_err(|e| format!("activation: {e}"))
            })();
            if let Err(e) = result {
                st.device = candidate.device;
                st.stop = candidate.stop;
                return Err(format!("device type {ty}: {e}"));
            }
            candidate.activated = true;
        }
        *st = candidate;
        self.interrupt.ack(u32::MAX);
        self.interrupt.set_pending(s.interrupt_status);
        for fd in &self.kicks {
            let _ = fd.write(1);
        }
        Ok(())
    }

    /// After the vCPUs of a resumed machine exist (an interrupt raised
    /// before is lost: the I/O APIC has nowhere to deliver it): raise the
    /// device's interrupt again when its status is not clear (saved
    /// pending, or set by the device since [`MmioTransport::restore`]).
    pub fn resumed(&self) {
        let pending = self.interrupt.status();
        if pending != 0 {
            self.interrupt.raise_bits(pending);
        }
    }

    fn read_reg(&self, st: &mut State, offset: u64) -> u32 {
        let q = st.queues.get(st.queue_sel as usize);
        match offset {
            reg::MAGIC => MAGIC,
            reg::VERSION => VERSION,
            reg::DEVICE_ID => st.device.device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => {
                let f = st.device.avail_features();
                match st.device_features_sel {
                    0 => f as u32,
                    1 => (f >> 32) as u32,
                    _ => 0,
                }
            }
            reg::QUEUE_NUM_MAX => q.map_or(0, |q| u32::from(q.max)),
            reg::QUEUE_READY => q.map_or(0, |q| u32::from(q.ready)),
            reg::INTERRUPT_STATUS => self.interrupt.status(),
            reg::STATUS => st.status,
            // No shared memory regions: length all ones (Linux reads
            // ~0 as "no such region").
            reg::SHM_LEN_LOW | reg::SHM_LEN_HIGH | reg::SHM_BASE_LOW | reg::SHM_BASE_HIGH => {
                u32::MAX
            }
            reg::CONFIG_GENERATION => st.config_generation,
            _ => 0,
        }
    }

    /// The driver may configure queues between FEATURES_OK and DRIVER_OK.
    fn queue_config_allowed(st: &State) -> bool {
        st.status & (FEATURES_OK | DRIVER_OK | FAILED | DEVICE_NEEDS_RESET) == FEATURES_OK
    }

    fn write_reg(&self, st: &mut State, offset: u64, v: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => st.device_features_sel = v,
            reg::DRIVER_FEATURES_SEL => st.driver_features_sel = v,
            reg::DRIVER_FEATURES => {
                // Only while negotiating.
                if st.status & (DRIVER | FEATURES_OK | FAILED) != DRIVER {
                    return;
                }
                match st.driver_features_sel {
                    0 => set_low(&mut st.driver_features, v),
                    1 => set_high(&mut st.driver_features, v),
                    _ => {}
                }
            }
            reg::QUEUE_SEL => st.queue_sel = v,
            reg::QUEUE_NOTIFY => {
                if let Some(fd) = self.kicks.get(v as usize) {
                    let _ = fd.write(1);
                }
            }
            reg::INTERRUPT_ACK => self.interrupt.ack(v),
            reg::STATUS => self.write_status(st, v),
            reg::SHM_SEL => {}
            reg::QUEUE_NUM
            | reg::QUEUE_READY
            | reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_DRIVER_LOW
            | reg::QUEUE_DRIVER_HIGH
            | reg::QUEUE_DEVICE_LOW
            | reg::QUEUE_DEVICE_HIGH => {
                if !Self::queue_config_allowed(st) {
                    return;
                }
                let sel = st.queue_sel as usize;
                let Some(q) = st.queues.get_mut(sel) else {
                    return;
                };
                if offset == reg::QUEUE_READY {
                    q.ready = v == 1;
                    return;
                }
                // A ready queue's layout is frozen.
                if q.ready {
                    return;
                }
                match offset {
                    reg::QUEUE_NUM => {
                        let ok = v != 0 && v <= u32::from(q.max) && v.is_power_of_two();
                        q.size = if ok { v as u16 } else { 0 };
                    }
                    reg::QUEUE_DESC_LOW => set_low(&mut q.desc, v),
                    reg::QUEUE_DESC_HIGH => set_high(&mut q.desc, v),
                    reg::QUEUE_DRIVER_LOW => set_low(&mut q.driver, v),
                    reg::QUEUE_DRIVER_HIGH => set_high(&mut q.driver, v),
                    reg::QUEUE_DEVICE_LOW => set_low(&mut q.device, v),
                    reg::QUEUE_DEVICE_HIGH => set_high(&mut q.device, v),
                    _ => {}
                }
            }
            _ => {}
        }
    }

    fn write_status(&self, st: &mut State, v: u32) {
        if v == 0 {
            self.reset(st);
            return;
        }
        // DEVICE_NEEDS_RESET is the device's bit: the driver echoes it
        // back (it writes `status | new_bit`), it never sets it.
        let old = st.status;
        let new = (v & !DEVICE_NEEDS_RESET) | (old & DEVICE_NEEDS_RESET);
        const KNOWN: u32 = ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK | FAILED;
        if new & !(KNOWN | DEVICE_NEEDS_RESET) != 0 || new & old != old {
            // Unknown bits, or bits cleared without a reset.
            return;
        }
        if old & FAILED != 0 {
            // Only a reset leaves FAILED.
            return;
        }
        if new & FAILED != 0 {
            st.status = new;
            return;
        }
        let progress = new & !DEVICE_NEEDS_RESET;
        let legal = [
            ACKNOWLEDGE,
            ACKNOWLEDGE | DRIVER,
            ACKNOWLEDGE | DRIVER | FEATURES_OK,
            ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
        ];
        if !legal.contains(&progress) {
            return;
        }
        let added = new & !old;
        if added & FEATURES_OK != 0 && !self.features_acceptable(st) {
            // Refused: the driver reads FEATURES_OK back as clear.
            return;
        }
        if added & DRIVER_OK != 0 {
            st.status = new;
            self.activate(st);
            return;
        }
        st.status = new;
    }

    fn features_acceptable(&self, st: &State) -> bool {
        let offered = st.device.avail_features();
        st.driver_features & !offered == 0 && st.driver_features & F_VERSION_1 != 0
    }

    fn build_queues(&self, st: &State) -> Result<Vec<ActiveQueue>, String> {
        let mut out = Vec::new();
        for (i, qc) in st.queues.iter().enumerate() {
            if !qc.ready {
                continue;
            }
            let bad = |what: &str| format!("queue {i}: {what}");
            let mut q = Queue::new(qc.max).map_err(|e| bad(&e.to_string()))?;
            if qc.size == 0 {
                return Err(bad(&format!(
                    "the driver wrote an invalid size; a power of two up to {} is accepted",
                    qc.max
                )));
            }
            q.try_set_size(qc.size)
                .map_err(|e| bad(&format!("size {}: {e}", qc.size)))?;
            q.try_set_desc_table_address(GuestAddress(qc.desc))
                .map_err(|e| bad(&format!("descriptor table {:#x}: {e}", qc.desc)))?;
            q.try_set_avail_ring_address(GuestAddress(qc.driver))
                .map_err(|e| bad(&format!("driver area {:#x}: {e}", qc.driver)))?;
            q.try_set_used_ring_address(GuestAddress(qc.device))
                .map_err(|e| bad(&format!("device area {:#x}: {e}", qc.device)))?;
            q.set_event_idx(st.driver_features & F_EVENT_IDX != 0);
            q.set_ready(true);
            if !q.is_valid(&self.mem) {
                return Err(bad(&format!(
                    "the rings (descriptors {:#x}, driver {:#x}, device {:#x}, size {}) are not \
                     all in guest memory",
                    qc.desc, qc.driver, qc.device, qc.size
                )));
            }
            let kick = self.kicks[i]
                .try_clone()
                .map_err(|e| bad(&format!("cannot clone the kick eventfd: {e}")))?;
            out.push(ActiveQueue {
                index: i as u16,
                queue: q,
                kick,
            });
        }
        Ok(out)
    }

    fn activate(&self, st: &mut State) {
        if st.activated {
            return;
        }
        let result = (|| {
            let stop = st
                .stop
                .as_ref()
                .ok_or("the VMM set no stop event".to_string())?
                .try_clone()
                .map_err(|e| format!("cannot clone the stop event: {e}"))?;
            let queues = self.build_queues(st)?;
            let activation = Activation {
                mem: self.mem.clone(),
                interrupt: self.interrupt.clone(),
                queues,
                acked_features: st.driver_features,
                stop,
            };
            st.device
                .activate(activation)
                .map_err(|e| format!("activation: {e}"))
        })();
        match result {
            Ok(()) => {
                st.activated = true;
                st.last_error = None;
            }
            Err(e) => {
                st.last_error = Some(e);
                self.needs_reset(st);
            }
        }
    }

    fn needs_reset(&self, st: &mut State) {
        st.status |= DEVICE_NEEDS_RESET;
        st.config_generation = st.config_generation.wrapping_add(1);
        self.interrupt.signal_config_change();
    }

    fn reset(&self, st: &mut State) {
        if st.activated {
            st.activated = false;
            if !st.device.reset() {
                // The device is stuck active: it cannot serve a new
                // driver. Status stays non-zero so the driver sees it.
                st.activated = true;
                st.last_error = Some("the device could not be reset".into());
                st.status = DEVICE_NEEDS_RESET;
                self.interrupt.signal_config_change();
                return;
            }
        }
        st.status = 0;
        st.device_features_sel = 0;
        st.driver_features_sel = 0;
        st.driver_features = 0;
        st.queue_sel = 0;
        for q in &mut st.queues {
            *q = QueueConfig::new(q.max);
        }
        self.interrupt.ack(u32::MAX);
        // Stale kicks would wake the next activation for nothing.
        for fd in &self.kicks {
            let _ = fd.read();
        }
    }
}

/// Holds the device's place in [`MmioTransport::restore`] while the
/// candidate state is checked; never seen by the guest.
struct Placeholder;

impl VirtioDevice for Placeholder {
    fn device_type(&self) -> u32 {
        0
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[]
    }
    fn avail_features(&self) -> u64 {
        0
    }
    fn read_config(&self, _: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn activate(&mut self, _: Activation) -> Result<(), super::ActivateError> {
        Err(super::ActivateError::Other("placeholder".into()))
    }
}

impl BusDevice for MmioTransport {
    fn read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let mut st = self.lock();
        if offset >= CONFIG_OFFSET {
            let off = offset - CONFIG_OFFSET;
            if off
                .checked_add(data.len() as u64)
                .is_some_and(|end| end <= MMIO_SIZE - CONFIG_OFFSET)
            {
                st.device.read_config(off, data);
            }
            return;
        }
        if data.len() != 4 || offset % 4 != 0 {
            return;
        }
        let v = self.read_reg(&mut st, offset);
        data.copy_from_slice(&v.to_le_bytes());
    }

    fn write(&self, offset: u64, data: &[u8]) {
        let mut st = self.lock();
        if offset >= CONFIG_OFFSET {
            let off = offset - CONFIG_OFFSET;
            if off
                .checked_add(data.len() as u64)
                .is_some_and(|end| end <= MMIO_SIZE - CONFIG_OFFSET)
            {
                st.device.write_config(off, data);
                st.config_generation = st.config_generation.wrapping_add(1);
            }
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return;
        };
        if offset % 4 != 0 {
            return;
        }
        self.write_reg(&mut st, offset, u32::from_le_bytes(bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::virtio::queue::testutil::{self, *};
    use crate::vm::virtio::{ActivateError, INT_CONFIG, INT_USED_RING};
    use std::os::fd::AsRawFd;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use vm_memory::Bytes;

    /// Records its activations.
    struct Fake {
        sizes: Vec<u16>,
        features: u64,
        got: Arc<Mutex<Vec<Activation>>>,
        resets: Arc<AtomicUsize>,
        fail: bool,
    }

    impl VirtioDevice for Fake {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &self.sizes
        }
        fn avail_features(&self) -> u64 {
            self.features
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = (offset as u8).wrapping_add(i as u8);
            }
        }
        fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
            if self.fail {
                return Err(ActivateError::Other("refused".into()));
            }
            self.got.lock().unwrap().push(a);
            Ok(())
        }
        fn reset(&mut self) -> bool {
            self.resets.fetch_add(1, Ordering::SeqCst);
            true
        }
    }

    struct Rig {
        t: MmioTransport,
        irq: EventFd,
        got: Arc<Mutex<Vec<Activation>>>,
        resets: Arc<AtomicUsize>,
        stop: EventFd,
    }

    fn rig_with(dev: impl FnOnce(Fake) -> Box<dyn VirtioDevice>, fail: bool) -> Rig {
        let got = Arc::new(Mutex::new(Vec::new()));
        let resets = Arc::new(AtomicUsize::new(0));
        let fake = Fake {
            sizes: vec![16, 8],
            features: F_VERSION_1 | F_EVENT_IDX | 0b101,
            got: got.clone(),
            resets: resets.clone(),
            fail,
        };
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let int = Arc::new(Interrupt::new(irq.try_clone().unwrap()));
        let t = MmioTransport::new(dev(fake), testutil::mem(), int).unwrap();
        let stop = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        t.set_stop_event(stop.try_clone().unwrap());
        Rig {
            t,
            irq,
            got,
            resets,
            stop,
        }
    }

    fn rig() -> Rig {
        rig_with(|f| Box::new(f), false)
    }

    fn r(t: &MmioTransport, off: u64) -> u32 {
        let mut d = [0u8; 4];
        t.read(off, &mut d);
        u32::from_le_bytes(d)
    }

    fn w(t: &MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    fn add_status(t: &MmioTransport, bit: u32) {
        w(t, reg::STATUS, r(t, reg::STATUS) | bit);
    }

    /// Linux's virtio_mmio probe + virtio core up to FEATURES_OK; returns
    /// whether FEATURES_OK stuck.
    fn negotiate(t: &MmioTransport, ack: u64) -> bool {
        assert_eq!(r(t, reg::MAGIC), 0x7472_6976);
        assert_eq!(r(t, reg::VERSION), 2);
        w(t, reg::STATUS, 0);
        add_status(t, ACKNOWLEDGE);
        add_status(t, DRIVER);
        w(t, reg::DEVICE_FEATURES_SEL, 1);
        let hi = u64::from(r(t, reg::DEVICE_FEATURES));
        w(t, reg::DEVICE_FEATURES_SEL, 0);
        let lo = u64::from(r(t, reg::DEVICE_FEATURES));
        let offered = (hi << 32) | lo;
        assert_ne!(offered & F_VERSION_1, 0);
        w(t, reg::DRIVER_FEATURES_SEL, 1);
        w(t, reg::DRIVER_FEATURES, (ack >> 32) as u32);
        w(t, reg::DRIVER_FEATURES_SEL, 0);
        w(t, reg::DRIVER_FEATURES, ack as u32);
        add_status(t, FEATURES_OK);
        r(t, reg::STATUS) & FEATURES_OK != 0
    }

    /// Linux's vm_setup_vq with our test ring layout.
    fn setup_queue(t: &MmioTransport, sel: u32, size: u32) {
        w(t, reg::QUEUE_SEL, sel);
        assert_eq!(r(t, reg::QUEUE_READY), 0);
        assert!(r(t, reg::QUEUE_NUM_MAX) >= size);
        w(t, reg::QUEUE_NUM, size);
        w(t, reg::QUEUE_DESC_LOW, DESC as u32);
        w(t, reg::QUEUE_DESC_HIGH, 0);
        w(t, reg::QUEUE_DRIVER_LOW, AVAIL as u32);
        w(t, reg::QUEUE_DRIVER_HIGH, 0);
        w(t, reg::QUEUE_DEVICE_LOW, USED as u32);
        w(t, reg::QUEUE_DEVICE_HIGH, 0);
        w(t, reg::QUEUE_READY, 1);
        assert_eq!(r(t, reg::QUEUE_READY), 1);
    }

    #[test]
    fn identity_and_access_rules() {
        let g = rig();
        let t = &g.t;
        assert_eq!(r(t, reg::DEVICE_ID), 42);
        assert_eq!(r(t, reg::VENDOR_ID), VENDOR_ID);
        w(t, reg::QUEUE_SEL, 1);
        assert_eq!(r(t, reg::QUEUE_NUM_MAX), 8);
        w(t, reg::QUEUE_SEL, 2);
        assert_eq!(r(t, reg::QUEUE_NUM_MAX), 0);
        w(t, reg::SHM_SEL, 0);
        assert_eq!(r(t, reg::SHM_LEN_LOW), u32::MAX);
        assert_eq!(r(t, reg::SHM_LEN_HIGH), u32::MAX);
        // Narrow and unaligned register accesses read zero.
        let mut b = [0xffu8; 2];
        t.read(reg::MAGIC, &mut b);
        assert_eq!(b, [0, 0]);
        let mut b = [0xffu8; 4];
        t.read(reg::MAGIC + 1, &mut b);
        assert_eq!(b, [0; 4]);
        let mut b = [0xffu8; 8];
        t.read(reg::MAGIC, &mut b);
        assert_eq!(b, [0; 8]);
        // ... and a narrow Status write is ignored.
        t.write(reg::STATUS, &[1]);
        assert_eq!(r(t, reg::STATUS), 0);
        // Config space: any width, bounds-checked.
        let mut c = [0u8; 2];
        t.read(0x104, &mut c);
        assert_eq!(c, [4, 5]);
        let mut c = [0xffu8; 8];
        t.read(MMIO_SIZE - 4, &mut c);
        assert_eq!(c, [0; 8]);
        t.read(u64::MAX - 2, &mut c);
        assert_eq!(c, [0; 8]);
        w(t, u64::MAX - 3, 1);
        // Unknown registers.
        assert_eq!(r(t, 0x0c8), 0);
        w(t, 0x0c8, 1);
    }

    #[test]
    fn linux_init_sequence_activates_with_the_ready_queues() {
        let g = rig();
        let t = &g.t;
        assert!(negotiate(t, F_VERSION_1 | F_EVENT_IDX | 1));
        setup_queue(t, 0, 16);
        // Queue 1 is left unused, as a driver may.
        add_status(t, DRIVER_OK);
        assert_eq!(
            r(t, reg::STATUS),
            ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK
        );
        let got = g.got.lock().unwrap();
        assert_eq!(got.len(), 1);
        let a = &got[0];
        assert_eq!(a.acked_features, F_VERSION_1 | F_EVENT_IDX | 1);
        assert_eq!(a.queues.len(), 1);
        let q = &a.queues[0];
        assert_eq!(q.index, 0);
        assert_eq!(q.queue.size(), 16);
        assert_eq!(q.queue.desc_table(), DESC);
        assert_eq!(q.queue.avail_ring(), AVAIL);
        assert_eq!(q.queue.used_ring(), USED);
        assert!(q.queue.event_idx_enabled());
        // The activation's kick is the transport's: a QueueNotify write
        // that reaches the transport signals it.
        w(t, reg::QUEUE_NOTIFY, 0);
        assert_eq!(q.kick.read().unwrap(), 1);
        // ... and so does the VMM's clone (what KVM would signal).
        let kicks = t.queue_kicks().unwrap();
        assert_eq!(kicks.len(), 2);
        kicks[0].1.write(1).unwrap();
        assert_eq!(q.kick.read().unwrap(), 1);
        // Queue notifies for queues that do not exist are ignored.
        w(t, reg::QUEUE_NOTIFY, 7);
        // The stop event is the VMM's.
        g.stop.write(1).unwrap();
        assert_eq!(a.stop.read().unwrap(), 1);
        drop(got);
        // DRIVER_OK again does not activate twice.
        add_status(t, DRIVER_OK);
        assert_eq!(g.got.lock().unwrap().len(), 1);
        // Queue configuration is frozen after DRIVER_OK.
        w(t, reg::QUEUE_SEL, 1);
        w(t, reg::QUEUE_READY, 1);
        assert_eq!(r(t, reg::QUEUE_READY), 0);
    }

    #[test]
    fn feature_negotiation_refusals() {
        let g = rig();
        let t = &g.t;
        // No VERSION_1: FEATURES_OK refused.
        assert!(!negotiate(t, 1));
        assert_eq!(r(t, reg::STATUS), ACKNOWLEDGE | DRIVER);
        // A bit that was not offered (bit 40): refused.
        assert!(!negotiate(t, F_VERSION_1 | (1 << 40)));
        // Offered bits only: accepted.
        assert!(negotiate(t, F_VERSION_1 | 4));
        // Feature writes after FEATURES_OK are ignored.
        w(t, reg::DRIVER_FEATURES_SEL, 0);
        w(t, reg::DRIVER_FEATURES, 0);
        setup_queue(t, 0, 16);
        add_status(t, DRIVER_OK);
        assert_eq!(g.got.lock().unwrap()[0].acked_features, F_VERSION_1 | 4);
    }

    #[test]
    fn illegal_status_transitions_are_ignored() {
        let g = rig();
        let t = &g.t;
        // Skipping ACKNOWLEDGE / DRIVER.
        w(t, reg::STATUS, DRIVER);
        assert_eq!(r(t, reg::STATUS), 0);
        w(
            t,
            reg::STATUS,
            ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
        );
        assert_eq!(r(t, reg::STATUS), 0);
        add_status(t, ACKNOWLEDGE);
        // DRIVER_OK before FEATURES_OK.
        add_status(t, DRIVER);
        add_status(t, DRIVER_OK);
        assert_eq!(r(t, reg::STATUS), ACKNOWLEDGE | DRIVER);
        // Clearing a bit without a reset.
        w(t, reg::STATUS, ACKNOWLEDGE);
        assert_eq!(r(t, reg::STATUS), ACKNOWLEDGE | DRIVER);
        // Unknown bits.
        w(t, reg::STATUS, ACKNOWLEDGE | DRIVER | 0x10);
        assert_eq!(r(t, reg::STATUS), ACKNOWLEDGE | DRIVER);
        // Queue setup before FEATURES_OK is ignored.
        w(t, reg::QUEUE_SEL, 0);
        w(t, reg::QUEUE_READY, 1);
        assert_eq!(r(t, reg::QUEUE_READY), 0);
        // FAILED sticks until reset.
        add_status(t, FAILED);
        assert_ne!(r(t, reg::STATUS) & FAILED, 0);
        w(t, reg::STATUS, ACKNOWLEDGE | DRIVER | FAILED | FEATURES_OK);
        assert_eq!(r(t, reg::STATUS), ACKNOWLEDGE | DRIVER | FAILED);
        w(t, reg::STATUS, 0);
        assert_eq!(r(t, reg::STATUS), 0);
        assert!(g.got.lock().unwrap().is_empty());
    }

    fn expect_needs_reset(g: &Rig, why: &str) {
        let t = &g.t;
        assert_ne!(r(t, reg::STATUS) & DEVICE_NEEDS_RESET, 0, "{why}");
        assert_ne!(r(t, reg::INTERRUPT_STATUS) & INT_CONFIG, 0);
        assert_eq!(g.irq.read().unwrap(), 1);
        assert!(g.t.last_error().is_some());
        assert!(g.got.lock().unwrap().is_empty());
        w(t, reg::INTERRUPT_ACK, INT_CONFIG);
        assert_eq!(r(t, reg::INTERRUPT_STATUS), 0);
    }

    #[test]
    fn bad_queues_fail_activation_with_needs_reset() {
        // Size not a power of two.
        let g = rig();
        assert!(negotiate(&g.t, F_VERSION_1));
        setup_queue(&g.t, 0, 12);
        add_status(&g.t, DRIVER_OK);
        expect_needs_reset(&g, "size 12");
        // Larger than the maximum.
        let g = rig();
        assert!(negotiate(&g.t, F_VERSION_1));
        setup_queue(&g.t, 1, 8);
        w(&g.t, reg::QUEUE_READY, 0);
        w(&g.t, reg::QUEUE_NUM, 16);
        w(&g.t, reg::QUEUE_READY, 1);
        add_status(&g.t, DRIVER_OK);
        expect_needs_reset(&g, "size 16 > 8");
        // Rings outside guest memory.
        let g = rig();
        assert!(negotiate(&g.t, F_VERSION_1));
        setup_queue(&g.t, 0, 16);
        w(&g.t, reg::QUEUE_READY, 0);
        w(&g.t, reg::QUEUE_DESC_HIGH, 0x10);
        w(&g.t, reg::QUEUE_READY, 1);
        add_status(&g.t, DRIVER_OK);
        expect_needs_reset(&g, "desc outside memory");
        // Misaligned used ring.
        let g = rig();
        assert!(negotiate(&g.t, F_VERSION_1));
        setup_queue(&g.t, 0, 16);
        w(&g.t, reg::QUEUE_READY, 0);
        w(&g.t, reg::QUEUE_DEVICE_LOW, USED as u32 + 2);
        w(&g.t, reg::QUEUE_READY, 1);
        add_status(&g.t, DRIVER_OK);
        expect_needs_reset(&g, "misaligned used ring");
        // The device refuses.
        let g = rig_with(|f| Box::new(f), true);
        assert!(negotiate(&g.t, F_VERSION_1));
        setup_queue(&g.t, 0, 16);
        add_status(&g.t, DRIVER_OK);
        expect_needs_reset(&g, "device refused");
        // After a reset the device can come up again.
        w(&g.t, reg::STATUS, 0);
        assert_eq!(r(&g.t, reg::STATUS), 0);
    }

    #[test]
    fn no_stop_event_fails_activation() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let fake = Fake {
            sizes: vec![4],
            features: F_VERSION_1,
            got: got.clone(),
            resets: Arc::new(AtomicUsize::new(0)),
            fail: false,
        };
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let t = MmioTransport::new(
            Box::new(fake),
            testutil::mem(),
            Arc::new(Interrupt::new(irq)),
        )
        .unwrap();
        assert!(negotiate(&t, F_VERSION_1));
        setup_queue(&t, 0, 4);
        add_status(&t, DRIVER_OK);
        assert_ne!(r(&t, reg::STATUS) & DEVICE_NEEDS_RESET, 0);
        assert!(t.last_error().unwrap().contains("stop event"));
        assert!(got.lock().unwrap().is_empty());
    }

    #[test]
    fn reset_resets_the_device_and_the_queues() {
        let g = rig();
        let t = &g.t;
        assert!(negotiate(t, F_VERSION_1));
        setup_queue(t, 0, 16);
        add_status(t, DRIVER_OK);
        assert_eq!(g.got.lock().unwrap().len(), 1);
        w(t, reg::QUEUE_NOTIFY, 0);
        w(t, reg::STATUS, 0);
        assert_eq!(r(t, reg::STATUS), 0);
        assert_eq!(g.resets.load(Ordering::SeqCst), 1);
        w(t, reg::QUEUE_SEL, 0);
        assert_eq!(r(t, reg::QUEUE_READY), 0);
        // The stale kick was drained.
        assert!(g.got.lock().unwrap()[0].queues[0].kick.read().is_err());
        // A second round activates again, with a smaller queue.
        assert!(negotiate(t, F_VERSION_1));
        setup_queue(t, 0, 4);
        add_status(t, DRIVER_OK);
        let got = g.got.lock().unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].queues[0].queue.size(), 4);
        // A reset of a never-activated device does not call reset().
        drop(got);
        let g2 = rig();
        w(&g2.t, reg::STATUS, 0);
        assert_eq!(g2.resets.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn constructor_refusals() {
        let mk = |sizes: Vec<u16>, features: u64| {
            let fake = Fake {
                sizes,
                features,
                got: Arc::default(),
                resets: Arc::default(),
                fail: false,
            };
            let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
            MmioTransport::new(
                Box::new(fake),
                testutil::mem(),
                Arc::new(Interrupt::new(irq)),
            )
        };
        assert!(matches!(mk(vec![], F_VERSION_1), Err(MmioError::NoQueues)));
        assert!(matches!(
            mk(vec![12], F_VERSION_1),
            Err(MmioError::BadQueueMax { size: 12, .. })
        ));
        assert!(matches!(mk(vec![8], 1), Err(MmioError::NoVersion1(1))));
    }

    fn wait_readable(fd: &EventFd, ms: i32) -> bool {
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, for the duration of the call.
        unsafe { libc::poll(&mut p, 1, ms) == 1 }
    }

    /// The whole path: registers, activation, a chain in the avail ring,
    /// the kick, the worker, the used ring and the irqfd.
    #[test]
    fn rng_and_p9_through_the_transport() {
        use crate::vm::virtio::p9::{tests::Echo, P9};
        use crate::vm::virtio::rng::Rng;
        for dev in 0..2 {
            let g = rig_with(
                |_| -> Box<dyn VirtioDevice> {
                    if dev == 0 {
                        Box::new(Rng::new())
                    } else {
                        Box::new(
                            P9::new(
                                "t",
                                Box::new(Echo {
                                    msize: 8192,
                                    extra: 0,
                                }),
                            )
                            .unwrap(),
                        )
                    }
                },
                false,
            );
            let t = &g.t;
            let m = &t.mem;
            assert!(negotiate(t, F_VERSION_1 | F_EVENT_IDX));
            setup_queue(t, 0, 16);
            add_status(t, DRIVER_OK);
            assert_eq!(t.last_error(), None);
            // used_event = 0: interrupt after the first used buffer.
            m.write_obj(0u16, GuestAddress(AVAIL + 4 + 2 * 16)).unwrap();
            m.write_slice(b"\x07\0\0\0\x64\x01\x00", GuestAddress(DATA))
                .unwrap();
            add_chain(m, 16, 0, &[(DATA, 7, false), (DATA + 0x100, 32, true)]);
            let kick = t.queue_kicks().unwrap().remove(0).1;
            kick.write(1).unwrap();
            assert!(wait_readable(&g.irq, 5000), "no interrupt (device {dev})");
            assert_eq!(g.irq.read().unwrap(), 1);
            assert_ne!(r(t, reg::INTERRUPT_STATUS) & INT_USED_RING, 0);
            w(t, reg::INTERRUPT_ACK, INT_USED_RING);
            assert_eq!(used_idx(m), 1);
            let (head, len) = used_elem(m, 16, 0);
            assert_eq!(head, 0);
            assert_eq!(len, if dev == 0 { 32 } else { 8 });
            if dev == 1 {
                let mut resp = [0u8; 8];
                m.read_slice(&mut resp, GuestAddress(DATA + 0x100)).unwrap();
                assert_eq!(&resp, b"R\x00\x01\x64\0\0\0\x07");
            }
            // A second request through a QueueNotify that reached the
            // transport (no ioeventfd).
            add_chain(m, 16, 2, &[(DATA, 7, false), (DATA + 0x200, 16, true)]);
            // Interrupt again after the second one.
            m.write_obj(1u16, GuestAddress(AVAIL + 4 + 2 * 16)).unwrap();
            w(t, reg::QUEUE_NOTIFY, 0);
            assert!(wait_readable(&g.irq, 5000));
            assert_eq!(used_idx(m), 2);
            // Reset stops the worker and gives the device back; it comes
            // up again.
            w(t, reg::STATUS, 0);
            assert_eq!(r(t, reg::STATUS), 0);
            m.write_slice(&[0u8; 0x3000], GuestAddress(DESC)).unwrap();
            assert!(negotiate(t, F_VERSION_1));
            setup_queue(t, 0, 16);
            add_status(t, DRIVER_OK);
            assert_eq!(t.last_error(), None);
            add_chain(m, 16, 0, &[(DATA, 7, false), (DATA + 0x100, 32, true)]);
            let _ = g.irq.read();
            kick.write(1).unwrap();
            assert!(wait_readable(&g.irq, 5000));
            assert_eq!(used_idx(m), 1);
            // The stop event ends the worker (the transport's reset then
            // joins it without waiting).
            g.stop.write(1).unwrap();
            w(t, reg::STATUS, 0);
            assert_eq!(r(t, reg::STATUS), 0);
        }
    }

    /// The time of one 9P request round trip through the transport, the
    /// device's worker and a trivial handler: chain in the avail ring,
    /// kick eventfd, worker, used ring, irqfd. Median of many.
    /// `cargo test --release -p sandbox --lib p9_round_trip -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn p9_round_trip_latency() {
        use crate::vm::virtio::p9::{tests::Echo, P9};
        let g = rig_with(
            |_| {
                Box::new(
                    P9::new(
                        "t",
                        Box::new(Echo {
                            msize: 8192,
                            extra: 0,
                        }),
                    )
                    .unwrap(),
                )
            },
            false,
        );
        let t = &g.t;
        let m = &t.mem;
        assert!(negotiate(t, F_VERSION_1));
        setup_queue(t, 0, 16);
        add_status(t, DRIVER_OK);
        assert_eq!(t.last_error(), None);
        let kick = t.queue_kicks().unwrap().remove(0).1;
        // Tversion-sized request, 8 KiB response buffer like Linux's.
        m.write_slice(
            b"\x13\0\0\0\x64\xff\xff\0\x20\0\0\x08\09P2000.L",
            GuestAddress(DATA),
        )
        .unwrap();
        let n = 20_000u16;
        let mut times = Vec::with_capacity(n as usize);
        for i in 0..n {
            let start = std::time::Instant::now();
            add_chain(m, 16, 0, &[(DATA, 19, false), (DATA + 0x1000, 8192, true)]);
            kick.write(1).unwrap();
            assert!(wait_readable(&g.irq, 5000));
            let _ = g.irq.read();
            w(t, reg::INTERRUPT_ACK, INT_USED_RING);
            assert_eq!(used_idx(m), i.wrapping_add(1));
            times.push(start.elapsed());
        }
        times.sort();
        let pct = |p: usize| times[times.len() * p / 100];
        println!(
            "p9 round trip over {n} requests: median {:?}, p10 {:?}, p90 {:?}, p99 {:?}",
            pct(50),
            pct(10),
            pct(90),
            pct(99)
        );
        g.stop.write(1).unwrap();
    }
}
