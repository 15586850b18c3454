//! Guest RAM: anonymous private mappings (vm-memory's `GuestMemoryMmap`,
//! `MAP_NORESERVE`, so untouched guest pages cost nothing), laid out by
//! the architecture (below the 32-bit MMIO hole when small), and
//! registered with KVM as memory slots 0, 1, ...
//!
//! Nothing here touches guest pages: a page costs host memory only once
//! the guest or the loader writes it. [`map_file`] replaces a range of
//! guest RAM by a private copy-on-write mapping of a file (the kernel
//! image), so those pages come from the page cache when first used.
//!
//! The guest writes all of this memory: nothing in the VMM may trust what
//! it reads from it (devices bound-check every access through
//! vm-memory's checked accessors).

use std::fs::File;
use std::os::fd::AsRawFd;

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
    #[error(
        "cannot map {len:#x} bytes of the file at offset {offset:#x} over guest memory at \
         {gpa:#x}: {reason}"
    )]
    FileMap {
        gpa: u64,
        len: u64,
        offset: u64,
        reason: String,
        /// The range is anonymous guest memory again (zero pages): the
        /// caller may copy instead.
        restored: bool,
    },
}

/// The host page size.
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}

/// Where guest range `[gpa, gpa+len)` lives in this process, when it is
/// non-empty and lies in one region.
pub fn host_range(mem: &Mem, gpa: u64, len: u64) -> Option<*mut u8> {
    let last = gpa.checked_add(len.checked_sub(1)?)?;
    let region = mem.find_region(GuestAddress(gpa))?;
    if last > region.last_addr().0 {
        return None;
    }
    mem.get_host_address(GuestAddress(gpa)).ok()
}

/// Replace guest RAM `[gpa, gpa+len)` by a private, copy-on-write
/// mapping of `file` from `offset`: the pages come from the page cache
/// when first read, and a write (by the guest or the VMM) copies the page,
/// never reaching the file.
///
/// `gpa`, `len` and `offset` must be page-aligned, the range must lie in
/// one region, and `offset + len` must not pass the file's end (a page
/// beyond it would fault with SIGBUS): all checked here. The file must
/// not shrink while the VM lives, for the same reason: the caller maps
/// only files no one else may write.
pub fn map_file(
    mem: &Mem,
    gpa: u64,
    len: u64,
    file: &File,
    offset: u64,
) -> Result<(), MemoryError> {
    let page = page_size();
    let fail = |reason: String, restored| MemoryError::FileMap {
        gpa,
        len,
        offset,
        reason,
        restored,
    };
    if len == 0 || (gpa | len | offset) % page != 0 {
        return Err(fail(
            format!("the range is empty or not aligned to {page:#x}-byte pages"),
            true,
        ));
    }
    let file_len = file
        .metadata()
        .map_err(|e| fail(e.to_string(), true))?
        .len();
    if offset.checked_add(len).map_or(true, |end| end > file_len) {
        return Err(fail(
            format!("the file is only {file_len:#x} bytes long"),
            true,
        ));
    }
    let host = host_range(mem, gpa, len).ok_or_else(|| {
        fail(
            "the range is not inside one guest memory region".into(),
            true,
        )
    })?;
    let (Ok(off), Ok(size)) = (libc::off_t::try_from(offset), usize::try_from(len)) else {
        return Err(fail("the offset or length is too large".into(), true));
    };
    // SAFETY: `host..host+len` is inside one live mapping owned by `mem`
    // (checked above); MAP_FIXED replaces exactly those pages, which
    // nothing references as Rust memory (vm-memory accesses guest memory
    // only through raw volatile pointers, and nothing reads these pages
    // while the kernel loads). The file range lies within the file.
    let p = unsafe {
        libc::mmap(
            host.cast(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_NORESERVE,
            file.as_raw_fd(),
            off,
        )
    };
    if p == libc::MAP_FAILED {
        let reason = std::io::Error::last_os_error().to_string();
        // A failed MAP_FIXED may leave a hole: put anonymous memory back,
        // as `create` mapped it.
        // SAFETY: the same range of our own mapping as above.
        let back = unsafe {
            libc::mmap(
                host.cast(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_NORESERVE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        return Err(fail(reason, back != libc::MAP_FAILED));
    }
    Ok(())
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
    fn host_ranges_stay_in_one_region() {
        let m = create(64).unwrap();
        assert!(host_range(&m, 0, 64 << 20).is_some());
        assert!(host_range(&m, 4096, (64 << 20) - 4096).is_some());
        assert!(host_range(&m, 4096, 64 << 20).is_none());
        assert!(host_range(&m, 0, 0).is_none());
        assert!(host_range(&m, u64::MAX, 2).is_none());
    }

    #[test]
    fn file_pages_are_private_and_checked() {
        use std::io::Write;
        use vm_memory::Bytes;
        let page = page_size();
        let path = std::env::temp_dir().join(format!("sb-mapfile-{}", std::process::id()));
        let mut f = File::create(&path).unwrap();
        let mut data = vec![0u8; 3 * page as usize];
        for (i, b) in data.iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        f.write_all(&data).unwrap();
        drop(f);
        let f = File::open(&path).unwrap();
        let m = create(32).unwrap();
        map_file(&m, 0x10_0000, 2 * page, &f, page).unwrap();
        let mut got = vec![0u8; 2 * page as usize];
        m.read_slice(&mut got, GuestAddress(0x10_0000)).unwrap();
        assert_eq!(got, data[page as usize..]);
        // Writes stay private.
        m.write_slice(b"guest", GuestAddress(0x10_0000)).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), data);
        // Memory around is untouched anonymous memory.
        let mut z = [1u8; 8];
        m.read_slice(&mut z, GuestAddress(0x10_0000 - 8)).unwrap();
        assert_eq!(z, [0; 8]);
        // Beyond the file's end, unaligned, outside memory: refused.
        for (gpa, len, off) in [
            (0x20_0000, 2 * page, 2 * page),
            (0x20_0000 + 1, page, 0),
            (0x20_0000, page, 1),
            ((32 << 20) - page, 2 * page, 0),
        ] {
            let e = map_file(&m, gpa, len, &f, off).unwrap_err();
            assert!(
                matches!(e, MemoryError::FileMap { restored: true, .. }),
                "{e}"
            );
        }
        std::fs::remove_file(&path).unwrap();
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

/// How long `KVM_SET_USER_MEMORY_REGION` takes here, by slot size and
/// by whether the irqchip and PIT exist yet (setup 1: both, 2: the
/// irqchip; on the PVM host the slot then costs ~7 ms instead of ~0.2 ms,
/// which is why the machine registers memory first). A diagnostic, not a
/// check:
/// `cargo test -p sandbox --lib --release vm::memory::registration_cost
/// -- --ignored --nocapture`).
#[cfg(test)]
#[test]
#[ignore]
fn registration_cost() {
    use std::time::Instant;
    let Ok(kvm) = kvm_ioctls::Kvm::new() else {
        return;
    };
    let med = |mut v: Vec<u128>| {
        v.sort_unstable();
        format!("median {} us, all {v:?}", v[v.len() / 2])
    };
    for (mib, setup) in [(32u32, 0), (256, 0), (1024, 0), (256, 1), (256, 2)] {
        let (mut reg, mut set) = (Vec::new(), Vec::new());
        for _ in 0..7 {
            let vm = kvm.create_vm().unwrap();
            let m = create(mib).unwrap();
            let t = Instant::now();
            match setup {
                1 => arch::setup_vm(&vm).unwrap(),
                2 => vm.create_irq_chip().unwrap(),
                _ => {}
            }
            let t1 = Instant::now();
            register(&vm, &m).unwrap();
            let t2 = Instant::now();
            if setup == 0 && mib == 256 {
                arch::setup_vm(&vm).unwrap();
            }
            reg.push((t2 - t1).as_micros());
            set.push((t1 - t).as_micros() + t2.elapsed().as_micros());
        }
        println!(
            "{mib} MiB, setup {setup} first: register {}; setup {}",
            med(reg),
            med(set)
        );
    }
}
