//! Guest RAM: anonymous private mappings (vm-memory's `GuestMemoryMmap`,
//! `MAP_NORESERVE`, so untouched guest pages cost nothing), laid out by
//! the architecture (below the 32-bit MMIO hole when small), and
//! registered with KVM as memory slots 0, 1, ...
//!
//! The guest writes all of this memory: nothing in the VMM may trust what
//! it reads from it (devices bound-check every access through
//! vm-memory's checked accessors).

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::arch::current as arch;
use super::virtio::Mem;

/// Smallest and largest guest memory accepted, in MiB.
pub const MIN_MIB: u32 = 32;
pub const MAX_MIB: u32 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("guest memory of {0} MiB is not accepted ({MIN_MIB} to {MAX_MIB} MiB are)")]
    Size(u32),
    #[error("cannot map {mib} MiB of guest memory: {reason}")]
    Map { mib: u32, reason: String },
    #[error("KVM refused guest memory slot {slot} ({start:#x}+{len:#x}): {err}")]
    Slot {
        slot: u32,
        start: u64,
        len: u64,
        err: kvm_ioctls::Error,
    },
}

/// Map `mib` MiB of guest RAM.
pub fn create(mib: u32) -> Result<Mem, MemoryError> {
    if !(MIN_MIB..=MAX_MIB).contains(&mib) {
        return Err(MemoryError::Size(mib));
    }
    let ranges: Vec<(GuestAddress, usize)> = arch::ram_ranges(u64::from(mib) << 20)
        .into_iter()
        .map(|(start, len)| (GuestAddress(start), len as usize))
        .collect();
    let mem = Mem::from_ranges(&ranges).map_err(|e| MemoryError::Map {
        mib,
        reason: e.to_string(),
    })?;
    for region in mem.iter() {
        if let Ok(host) = region.get_host_address(vm_memory::MemoryRegionAddress(0)) {
            // Transparent huge pages where the host allows them (fewer
            // faults while loading the kernel, fewer EPT entries). Only
            // advice: refused (THP off) is fine.
            // SAFETY: the range is exactly one of our live mappings.
            unsafe { libc::madvise(host.cast(), region.len() as usize, libc::MADV_HUGEPAGE) };
        }
    }
    Ok(mem)
}

/// Register every region of `mem` with the VM.
pub fn register(vm: &VmFd, mem: &Mem) -> Result<(), MemoryError> {
    for (slot, region) in mem.iter().enumerate() {
        let slot = slot as u32;
        let start = region.start_addr().0;
        let len = region.len();
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|e| MemoryError::Map {
                mib: (len >> 20) as u32,
                reason: e.to_string(),
            })?;
        let r = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: start,
            memory_size: len,
            userspace_addr: host as u64,
        };
        // SAFETY: the region is a live mapping of `len` bytes owned by
        // `mem`, which the machine keeps alive as long as the VM (the
        // vCPU threads and devices hold clones of it), and slots do not
        // overlap (the ranges are disjoint).
        unsafe { vm.set_user_memory_region(r) }.map_err(|err| MemoryError::Slot {
            slot,
            start,
            len,
            err,
        })?;
    }
    Ok(())
}

/// Bytes of guest RAM.
pub fn size(mem: &Mem) -> u64 {
    mem.iter().map(|r| r.len()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert!(matches!(create(1), Err(MemoryError::Size(1))));
        let m = create(64).unwrap();
        assert_eq!(size(&m), 64 << 20);
        assert_eq!(m.num_regions(), 1);
    }

    #[test]
    fn large_memory_skips_the_hole() {
        let r = arch::ram_ranges(4096 << 20);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0], (0, arch::layout::MMIO_START));
        assert_eq!(r[1].0, arch::layout::MMIO_END);
        assert_eq!(r[0].1 + r[1].1, 4096 << 20);
    }
}
