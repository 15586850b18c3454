//! Loading the kernel and writing what the 64-bit Linux boot protocol
//! reads: the zero page (`boot_params`, with the e820 map, the command
//! line pointer, the initramfs location and the `setup_data` list), the
//! command line, the initramfs, the MP table, and a `SETUP_RNG_SEED`
//! entry of 32 bytes from the host's `getrandom` (our kernel credits it,
//! so the guest's RNG is ready from the start).
//!
//! A vmlinux ELF is loaded at its physical addresses (mapped from the
//! file where it can be, see `elf`) and entered at its ELF entry
//! (`startup_64`, the 64-bit boot protocol; no decompressor, so no
//! KASLR). A bzImage's protected-mode part is loaded at
//! `code32_start` and entered at its 64-bit entry (`+0x200`), which the
//! image must announce (`XLF_KERNEL_64`).

use std::fs::File;
use std::path::Path;

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::{bzimage::BzImage, KernelLoader};
use vm_memory::{Bytes, GuestAddress};

use super::elf::{self, ElfError};
use super::layout::*;
use super::mptable;
use crate::vm::kernel::Format;
use crate::vm::virtio::Mem;

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
/// `boot_flag` and `header` magics of the boot protocol.
const BOOT_FLAG: u16 = 0xaa55;
const HDRS: u32 = 0x5372_6448;
/// "Undefined" boot loader id.
const LOADER_UNDEFINED: u8 = 0xff;
/// `xloadflags`: the image has a 64-bit entry at +0x200.
const XLF_KERNEL_64: u16 = 1;
const BZIMAGE_64BIT_ENTRY: u64 = 0x200;
/// `setup_data` type of a seed for the guest's RNG.
const SETUP_RNG_SEED: u32 = 9;
/// Bytes of seed.
pub const RNG_SEED_LEN: usize = 32;
/// Default `initrd_addr_max` for an image that does not give one.
const INITRD_ADDR_MAX_DEFAULT: u64 = 0x37ff_ffff;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot open the kernel {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("cannot load the kernel {path}: {reason}")]
    Load { path: String, reason: String },
    #[error("cannot load the kernel {path}: {err}")]
    Elf { path: String, err: ElfError },
    #[error("the bzImage {0} has no 64-bit entry point (xloadflags lacks XLF_KERNEL_64); use a 64-bit kernel")]
    Not64Bit(String),
    #[error(
        "the kernel command line is {len} bytes, more than the {CMDLINE_MAX} bytes (with its NUL) the kernel accepts"
    )]
    CmdlineTooLong { len: usize },
    #[error("the kernel command line contains a NUL byte")]
    CmdlineNul,
    #[error(
        "the initramfs ({size} bytes) does not fit in guest memory between the kernel's end \
         ({kernel_end:#x}) and {limit:#x}: give the VM more memory"
    )]
    InitrdTooLarge {
        size: u64,
        kernel_end: u64,
        limit: u64,
    },
    #[error("cannot get {RNG_SEED_LEN} random bytes for the guest's RNG seed: {0}")]
    Random(String),
    #[error(transparent)]
    MpTable(#[from] mptable::MpTableError),
    #[error("cannot write {what} to guest memory at {addr:#x}: {reason}")]
    Write {
        what: &'static str,
        addr: u64,
        reason: String,
    },
}

/// Where the loaded kernel starts running and what it occupies.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    pub entry: u64,
    pub kernel_end: u64,
    /// The bzImage's setup header (none for vmlinux).
    pub setup_header: Option<setup_header>,
    /// Bytes of the image mapped from the file rather than copied.
    pub mapped: u64,
}

fn write(mem: &Mem, what: &'static str, addr: u64, bytes: &[u8]) -> Result<(), BootError> {
    mem.write_slice(bytes, GuestAddress(addr))
        .map_err(|e| BootError::Write {
            what,
            addr,
            reason: e.to_string(),
        })
}

/// Load the kernel image into guest memory, which must be fresh (a
/// vmlinux's `.bss` is not cleared, it is still zero).
pub fn load_kernel(mem: &Mem, path: &Path, format: Format) -> Result<LoadedKernel, BootError> {
    let shown = || path.display().to_string();
    let mut file = File::open(path).map_err(|e| BootError::Open {
        path: shown(),
        reason: crate::errors::io_reason(&e),
    })?;
    let load_err = |e: linux_loader::loader::Error| BootError::Load {
        path: shown(),
        reason: e.to_string(),
    };
    match format {
        Format::Elf => {
            let elf_err = |err| BootError::Elf { path: shown(), err };
            let meta = file
                .metadata()
                .map_err(|e| elf_err(ElfError::Read(e.to_string())))?;
            let image = elf::parse(&file, meta.len(), mem, HIMEM_START).map_err(elf_err)?;
            // SANDBOX_VM_KERNEL_LOAD=copy: copy every segment instead of
            // mapping it (to compare both; docs/vm.md).
            let copy = std::env::var_os("SANDBOX_VM_KERNEL_LOAD").is_some_and(|v| v == "copy");
            let l =
                elf::load(mem, &mut file, &image, elf::may_map(&meta) && !copy).map_err(elf_err)?;
            Ok(LoadedKernel {
                entry: l.entry,
                kernel_end: l.end,
                setup_header: None,
                mapped: l.mapped,
            })
        }
        Format::BzImage => {
            let r = BzImage::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
                .map_err(load_err)?;
            let hdr = r.setup_header.ok_or_else(|| BootError::Load {
                path: shown(),
                reason: "no setup header".into(),
            })?;
            let xloadflags = hdr.xloadflags;
            if xloadflags & XLF_KERNEL_64 == 0 {
                return Err(BootError::Not64Bit(shown()));
            }
            Ok(LoadedKernel {
                entry: r.kernel_load.0 + BZIMAGE_64BIT_ENTRY,
                kernel_end: r.kernel_end,
                setup_header: Some(hdr),
                mapped: 0,
            })
        }
    }
}

/// The e820 map for `mem_size` bytes of RAM: (start, length, type).
pub fn e820_map(mem_size: u64) -> Vec<(u64, u64, u32)> {
    let mut v = vec![
        (0, MPTABLE_START, E820_RAM),
        (MPTABLE_START, HIMEM_START - MPTABLE_START, E820_RESERVED),
    ];
    let low_end = mem_size.min(MMIO_START);
    if low_end > HIMEM_START {
        v.push((HIMEM_START, low_end - HIMEM_START, E820_RAM));
    }
    v.push((MMIO_START, MMIO_END - MMIO_START, E820_RESERVED));
    if mem_size > MMIO_START {
        v.push((MMIO_END, mem_size - MMIO_START, E820_RAM));
    }
    v
}

/// Where an initramfs of `size` bytes goes: as high as possible below
/// the end of low RAM and the kernel's `initrd_addr_max`, page-aligned,
/// above the kernel.
pub fn initrd_addr(
    mem_size: u64,
    size: u64,
    addr_max: u64,
    kernel_end: u64,
) -> Result<u64, BootError> {
    let limit = mem_size.min(MMIO_START).min(addr_max.saturating_add(1));
    let err = BootError::InitrdTooLarge {
        size,
        kernel_end,
        limit,
    };
    let addr = limit.checked_sub(size).ok_or(err)? & !0xfff;
    if addr < kernel_end {
        return Err(BootError::InitrdTooLarge {
            size,
            kernel_end,
            limit,
        });
    }
    Ok(addr)
}

/// `RNG_SEED_LEN` bytes from the host's `getrandom`.
pub fn rng_seed() -> Result<[u8; RNG_SEED_LEN], BootError> {
    let mut seed = [0u8; RNG_SEED_LEN];
    let mut got = 0;
    while got < seed.len() {
        let rest = &mut seed[got..];
        // SAFETY: the kernel writes at most `rest.len()` bytes into `rest`.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(BootError::Random(e.to_string()));
        }
        got += n as usize;
    }
    Ok(seed)
}

/// A `setup_data` entry (`next`, `type`, `len`, data), last of its list.
pub fn setup_data(kind: u32, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + data.len());
    v.extend_from_slice(&0u64.to_le_bytes());
    v.extend_from_slice(&kind.to_le_bytes());
    v.extend_from_slice(&(data.len() as u32).to_le_bytes());
    v.extend_from_slice(data);
    v
}

/// The zero page; `setup_data` is the guest address of the list's first
/// entry (0: none).
pub fn boot_params(
    kernel: &LoadedKernel,
    mem_size: u64,
    cmdline_len: usize,
    initrd: Option<(u64, u64)>,
    setup_data: u64,
) -> boot_params {
    let mut p = boot_params::default();
    if let Some(h) = kernel.setup_header {
        p.hdr = h;
    } else {
        p.hdr.boot_flag = BOOT_FLAG;
        p.hdr.header = HDRS;
        p.hdr.kernel_alignment = 0x0100_0000;
    }
    p.hdr.type_of_loader = LOADER_UNDEFINED;
    p.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    p.hdr.cmdline_size = cmdline_len as u32;
    p.hdr.setup_data = setup_data;
    if let Some((addr, size)) = initrd {
        p.hdr.ramdisk_image = addr as u32;
        p.hdr.ramdisk_size = size as u32;
        p.ext_ramdisk_image = (addr >> 32) as u32;
        p.ext_ramdisk_size = (size >> 32) as u32;
    }
    let map = e820_map(mem_size);
    for (slot, (addr, size, kind)) in p.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: *kind,
        };
    }
    p.e820_entries = map.len().min(p.e820_table.len()) as u8;
    p
}

/// Write the initramfs high in memory; its (address, size), none when empty.
pub fn write_initramfs(
    mem: &Mem,
    kernel: &LoadedKernel,
    mem_size: u64,
    initramfs: &[u8],
) -> Result<Option<(u64, u64)>, BootError> {
    if initramfs.is_empty() {
        return Ok(None);
    }
    let max = kernel
        .setup_header
        .map(|h| u64::from(h.initrd_addr_max))
        .filter(|m| *m != 0)
        .unwrap_or(INITRD_ADDR_MAX_DEFAULT);
    let size = initramfs.len() as u64;
    let addr = initrd_addr(mem_size, size, max, kernel.kernel_end)?;
    write(mem, "the initramfs", addr, initramfs)?;
    Ok(Some((addr, size)))
}

/// Write the MP table for `cpus` vCPUs.
pub fn write_mptable(mem: &Mem, cpus: u8) -> Result<(), BootError> {
    let mp = mptable::build(cpus, MPTABLE_START)?;
    write(mem, "the MP table", MPTABLE_START, &mp)
}

/// Write the command line, a fresh RNG seed, and the zero page pointing
/// at them and at the initramfs.
pub fn write_cmdline_and_zero_page(
    mem: &Mem,
    kernel: &LoadedKernel,
    mem_size: u64,
    cmdline: &str,
    initrd: Option<(u64, u64)>,
) -> Result<(), BootError> {
    if cmdline.as_bytes().contains(&0) {
        return Err(BootError::CmdlineNul);
    }
    if cmdline.len() + 1 > CMDLINE_MAX {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len() + 1,
        });
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    write(mem, "the command line", CMDLINE_ADDR, &bytes)?;
    let seed = setup_data(SETUP_RNG_SEED, &rng_seed()?);
    write(mem, "the RNG seed", SETUP_DATA_ADDR, &seed)?;
    let params = boot_params(kernel, mem_size, cmdline.len(), initrd, SETUP_DATA_ADDR);
    mem.write_obj(params, GuestAddress(ZERO_PAGE))
        .map_err(|e| BootError::Write {
            what: "the zero page",
            addr: ZERO_PAGE,
            reason: e.to_string(),
        })
}

/// Everything the kernel reads at entry besides itself: command line,
/// initramfs, MP table and zero page.
pub fn write_boot_data(
    mem: &Mem,
    kernel: &LoadedKernel,
    mem_size: u64,
    cmdline: &str,
    initramfs: &[u8],
    cpus: u8,
) -> Result<(), BootError> {
    let initrd = write_initramfs(mem, kernel, mem_size, initramfs)?;
    write_mptable(mem, cpus)?;
    write_cmdline_and_zero_page(mem, kernel, mem_size, cmdline, initrd)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn e820_reserves_the_mp_table_and_the_mmio_hole() {
        let m = e820_map(256 * MIB);
        assert_eq!(
            m,
            vec![
                (0, 0x9fc00, E820_RAM),
                (0x9fc00, 0x100000 - 0x9fc00, E820_RESERVED),
                (0x100000, 256 * MIB - 0x100000, E820_RAM),
                (0xd000_0000, 0x3000_0000, E820_RESERVED),
            ]
        );
        let big = 4096 * MIB;
        let m = e820_map(big);
        assert_eq!(m[2], (0x100000, 0xd000_0000 - 0x100000, E820_RAM));
        assert_eq!(m[4], (0x1_0000_0000, big - 0xd000_0000, E820_RAM));
        // RAM ranges in e820 are exactly the memory ranges, minus the
        // reserved low area.
        let ram: u64 = m.iter().filter(|e| e.2 == E820_RAM).map(|e| e.1).sum();
        assert_eq!(ram, big - (0x100000 - 0x9fc00));
    }

    #[test]
    fn zero_page_fields() {
        let k = LoadedKernel {
            entry: 0x100_0000,
            kernel_end: 0x300_0000,
            setup_header: None,
            mapped: 0,
        };
        let p = boot_params(&k, 256 * MIB, 42, Some((0x0ff0_0000, 0x1234)), 0x20800);
        let h = p.hdr;
        assert_eq!({ h.boot_flag }, 0xaa55);
        assert_eq!({ h.header }, 0x5372_6448);
        assert_eq!({ h.type_of_loader }, 0xff);
        assert_eq!({ h.cmd_line_ptr }, 0x20000);
        assert_eq!({ h.cmdline_size }, 42);
        assert_eq!({ h.ramdisk_image }, 0x0ff0_0000);
        assert_eq!({ h.ramdisk_size }, 0x1234);
        assert_eq!({ h.setup_data }, 0x20800);
        assert_eq!(p.e820_entries, 4);
        let e = p.e820_table[2];
        assert_eq!(
            ({ e.addr }, { e.size }, { e.r#type }),
            (0x100000, 255 * MIB, 1)
        );
    }

    #[test]
    fn initrd_goes_high_and_aligned() {
        let a = initrd_addr(256 * MIB, 5000, INITRD_ADDR_MAX_DEFAULT, 0x200_0000).unwrap();
        assert_eq!(a, (256 * MIB - 5000) & !0xfff);
        assert!(a + 5000 <= 256 * MIB);
        // Bounded by initrd_addr_max.
        let a = initrd_addr(2048 * MIB, 4096, 0x37ff_ffff, 0).unwrap();
        assert_eq!(a, 0x3800_0000 - 4096);
        assert!(matches!(
            initrd_addr(64 * MIB, 60 * MIB, INITRD_ADDR_MAX_DEFAULT, 16 * MIB),
            Err(BootError::InitrdTooLarge { .. })
        ));
        assert!(initrd_addr(MIB, 2 * MIB, u64::MAX, 0).is_err());
    }

    #[test]
    fn boot_data_is_written_and_checked() {
        let mem = Mem::from_ranges(&[(GuestAddress(0), (64 * MIB) as usize)]).unwrap();
        let k = LoadedKernel {
            entry: 0x100_0000,
            kernel_end: 0x200_0000,
            setup_header: None,
            mapped: 0,
        };
        write_boot_data(&mem, &k, 64 * MIB, "console=ttyS0", b"cpio!", 2).unwrap();
        let mut buf = [0u8; 14];
        mem.read_slice(&mut buf, GuestAddress(CMDLINE_ADDR))
            .unwrap();
        assert_eq!(&buf, b"console=ttyS0\0");
        let p: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE)).unwrap();
        let (addr, size) = ({ p.hdr.ramdisk_image }, { p.hdr.ramdisk_size });
        assert_eq!(size, 5);
        let mut initrd = [0u8; 5];
        mem.read_slice(&mut initrd, GuestAddress(u64::from(addr)))
            .unwrap();
        assert_eq!(&initrd, b"cpio!");
        let mut mp = vec![0u8; 1024];
        mem.read_slice(&mut mp, GuestAddress(MPTABLE_START))
            .unwrap();
        assert_eq!(
            mptable::parse(&mp, MPTABLE_START).unwrap().cpu_apic_ids,
            vec![0, 1]
        );
        // The RNG seed: linked from the zero page, type 9, 32 bytes, fresh
        // for each boot.
        let seed_of = |mem: &Mem| {
            let p: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE)).unwrap();
            let at = { p.hdr.setup_data };
            assert_eq!(at, SETUP_DATA_ADDR);
            assert!(at >= CMDLINE_ADDR + CMDLINE_MAX as u64 && at + 48 <= MPTABLE_START);
            let mut e = [0u8; 48];
            mem.read_slice(&mut e, GuestAddress(at)).unwrap();
            assert_eq!(u64::from_le_bytes(e[..8].try_into().unwrap()), 0, "next");
            assert_eq!(u32::from_le_bytes(e[8..12].try_into().unwrap()), 9, "type");
            assert_eq!(u32::from_le_bytes(e[12..16].try_into().unwrap()), 32, "len");
            e[16..].to_vec()
        };
        let first = seed_of(&mem);
        assert_ne!(first, vec![0u8; 32]);
        write_boot_data(&mem, &k, 64 * MIB, "console=ttyS0", b"cpio!", 2).unwrap();
        assert_ne!(seed_of(&mem), first);
        let long = "x".repeat(CMDLINE_MAX);
        assert!(matches!(
            write_boot_data(&mem, &k, 64 * MIB, &long, b"", 1),
            Err(BootError::CmdlineTooLong { .. })
        ));
    }
}
