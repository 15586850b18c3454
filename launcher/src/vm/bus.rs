//! The buses the vCPU threads dispatch guest accesses to: port I/O and
//! MMIO. A bus is built once, before the first vCPU runs, and is read-only
//! afterwards; devices take `&self` and keep their mutable state behind
//! their own locks, so any vCPU can reach any device without a bus lock.

use std::sync::Arc;

/// A device on a bus. `offset` is relative to the device's base address;
/// `data.len()` is the access width (1, 2, 4 or 8 bytes). Accesses come
/// straight from the guest: a device must accept any offset and width
/// and never panic (unknown reads return zeros, unknown writes are
/// ignored).
pub trait BusDevice: Send + Sync {
    fn read(&self, offset: u64, data: &mut [u8]);
    fn write(&self, offset: u64, data: &[u8]);
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("bus range {base:#x}+{len:#x} overlaps another device or is empty")]
    Overlap { base: u64, len: u64 },
}

struct Entry {
    base: u64,
    len: u64,
    dev: Arc<dyn BusDevice>,
}

/// A set of non-overlapping address ranges, each owned by one device.
#[derive(Default)]
pub struct Bus {
    /// Sorted by `base`.
    entries: Vec<Entry>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ranges: Vec<_> = self.entries.iter().map(|e| (e.base, e.len)).collect();
        f.debug_struct("Bus").field("ranges", &ranges).finish()
    }
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Give `[base, base + len)` to `dev`.
    pub fn insert(&mut self, base: u64, len: u64, dev: Arc<dyn BusDevice>) -> Result<(), BusError> {
        let end = base.checked_add(len).filter(|_| len > 0);
        let Some(end) = end else {
            return Err(BusError::Overlap { base, len });
        };
        if self
            .entries
            .iter()
            .any(|e| base < e.base + e.len && e.base < end)
        {
            return Err(BusError::Overlap { base, len });
        }
        let at = self.entries.partition_point(|e| e.base < base);
        self.entries.insert(at, Entry { base, len, dev });
        Ok(())
    }

    fn find(&self, addr: u64, width: usize) -> Option<(&Entry, u64)> {
        let i = self.entries.partition_point(|e| e.base <= addr);
        let e = self.entries.get(i.checked_sub(1)?)?;
        let off = addr - e.base;
        // The whole access must fall inside the device's range.
        (off.checked_add(width as u64)? <= e.len).then_some((e, off))
    }

    /// Dispatch a read; `false` when no device owns `addr` (`data` is then
    /// left as it was, normally zeros).
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((e, off)) => {
                e.dev.read(off, data);
                true
            }
            None => false,
        }
    }

    /// Dispatch a write; `false` when no device owns `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((e, off)) => {
                e.dev.write(off, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Rec(Mutex<Vec<(u64, Vec<u8>)>>);
    impl BusDevice for Rec {
        fn read(&self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&self, offset: u64, data: &[u8]) {
            self.0.lock().unwrap().push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_range_and_refuses_overlaps() {
        let a = Arc::new(Rec::default());
        let mut bus = Bus::new();
        bus.insert(0x1000, 0x100, a.clone()).unwrap();
        bus.insert(0x1100, 0x100, Arc::new(Rec::default())).unwrap();
        assert!(bus.insert(0x10ff, 2, Arc::new(Rec::default())).is_err());
        assert!(bus.insert(0x2000, 0, Arc::new(Rec::default())).is_err());
        assert!(bus.insert(u64::MAX, 2, Arc::new(Rec::default())).is_err());
        let mut d = [0u8; 4];
        assert!(bus.read(0x1010, &mut d));
        assert_eq!(d, [0x10; 4]);
        assert!(bus.write(0x10fc, &[1, 2, 3, 4]));
        // Straddling the end of a device is not dispatched.
        assert!(!bus.write(0x10fe, &[1, 2, 3, 4]));
        assert!(!bus.read(0x0fff, &mut d));
        assert_eq!(a.0.lock().unwrap().as_slice(), &[(0xfc, vec![1, 2, 3, 4])]);
    }
}
