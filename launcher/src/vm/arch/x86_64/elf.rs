//! Loading a vmlinux ELF: its program headers are read with
//! linux-loader's ELF types and bound-checked here (the image is input:
//! `--kernel PATH` is the user's), then each `PT_LOAD` segment goes to its
//! physical address.
//!
//! A segment whose file offset and physical address share their offset in
//! a page is *mapped* from the file ([`memory::map_file`], private and
//! copy-on-write: pages come from the page cache when the guest first
//! touches them) for its whole pages, and its partial first and last pages
//! are copied. Anything else is copied, as is everything when the file may
//! change under us (see [`may_map`]). The part of a segment beyond its
//! file size (`.bss`) is left as it is: fresh guest memory reads as zero,
//! so the kernel must be loaded into memory nothing has written yet.

use std::fs::{File, Metadata};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};

use linux_loader::elf::{
    Elf64_Ehdr, Elf64_Phdr, EI_CLASS, EI_DATA, ELFCLASS64, ELFDATA2LSB, ELFMAG, EM_X86_64, PT_LOAD,
};
use vm_memory::{ByteValued, Bytes, GuestAddress};

use crate::vm::memory::{self, MemoryError};
use crate::vm::virtio::Mem;

/// More program headers than any kernel has.
pub const MAX_PHDRS: u16 = 64;

#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("cannot read it: {0}")]
    Read(String),
    #[error("the file is {len} bytes, too short for an ELF header")]
    Short { len: u64 },
    #[error("not a little-endian 64-bit x86_64 ELF (class {class}, data {data}, machine {machine}); a vmlinux is")]
    NotX86_64 { class: u8, data: u8, machine: u16 },
    #[error(
        "bad program header table: {phnum} entries of {phentsize} bytes at {phoff:#x} in a \
         {file_len}-byte file (entries must be 56 bytes, at most {MAX_PHDRS}, within the file)"
    )]
    Phdrs {
        phoff: u64,
        phentsize: u16,
        phnum: u16,
        file_len: u64,
    },
    #[error(
        "segment {index} ({offset:#x}+{filesz:#x} in the file, {paddr:#x}+{memsz:#x} in memory) \
         {why}"
    )]
    Segment {
        index: usize,
        offset: u64,
        filesz: u64,
        paddr: u64,
        memsz: u64,
        why: &'static str,
    },
    #[error("the entry point {0:#x} is not inside a loaded segment")]
    Entry(u64),
    #[error("no loadable segment")]
    Empty,
    #[error("cannot copy {len:#x} bytes to guest memory at {gpa:#x}: {reason}")]
    Copy { gpa: u64, len: u64, reason: String },
    #[error(transparent)]
    Map(MemoryError),
}

/// One `PT_LOAD` segment, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub offset: u64,
    pub paddr: u64,
    pub filesz: u64,
    pub memsz: u64,
}

/// A checked vmlinux: where it starts, what it loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub entry: u64,
    pub segments: Vec<Segment>,
    /// The end of the highest segment in memory.
    pub end: u64,
}

/// How a load went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Loaded {
    pub entry: u64,
    pub end: u64,
    /// Bytes mapped from the file.
    pub mapped: u64,
    /// Bytes copied.
    pub copied: u64,
}

/// Read and check the ELF and program headers. Every `PT_LOAD` segment
/// with a memory size must lie in the file, at or above `min_paddr`, and
/// inside one region of `mem`; the entry must be inside one of them.
pub fn parse(file: &File, file_len: u64, mem: &Mem, min_paddr: u64) -> Result<Image, ElfError> {
    let read = |buf: &mut [u8], at: u64| {
        file.read_exact_at(buf, at)
            .map_err(|e| ElfError::Read(e.to_string()))
    };
    let mut ehdr = Elf64_Ehdr::default();
    if file_len < ehdr.as_slice().len() as u64 {
        return Err(ElfError::Short { len: file_len });
    }
    read(ehdr.as_mut_slice(), 0)?;
    let (class, data, machine) = (
        ehdr.e_ident[EI_CLASS],
        ehdr.e_ident[EI_DATA],
        ehdr.e_machine,
    );
    if ehdr.e_ident[..4] != ELFMAG[..]
        || class != ELFCLASS64
        || data != ELFDATA2LSB
        || machine != EM_X86_64
    {
        return Err(ElfError::NotX86_64 {
            class,
            data,
            machine,
        });
    }
    let entsize = std::mem::size_of::<Elf64_Phdr>() as u64;
    let table_end = ehdr
        .e_phoff
        .checked_add(u64::from(ehdr.e_phnum) * entsize)
        .filter(|end| *end <= file_len);
    if u64::from(ehdr.e_phentsize) != entsize
        || ehdr.e_phnum > MAX_PHDRS
        || ehdr.e_phoff < ehdr.as_slice().len() as u64
        || table_end.is_none()
    {
        return Err(ElfError::Phdrs {
            phoff: ehdr.e_phoff,
            phentsize: ehdr.e_phentsize,
            phnum: ehdr.e_phnum,
            file_len,
        });
    }
    let mut segments = Vec::new();
    let mut end = 0u64;
    for index in 0..u64::from(ehdr.e_phnum) {
        let mut ph = Elf64_Phdr::default();
        read(ph.as_mut_slice(), ehdr.e_phoff + index * entsize)?;
        if ph.p_type != PT_LOAD || ph.p_memsz == 0 {
            continue;
        }
        let seg = Segment {
            offset: ph.p_offset,
            paddr: ph.p_paddr,
            filesz: ph.p_filesz,
            memsz: ph.p_memsz,
        };
        let bad = |why| ElfError::Segment {
            index: index as usize,
            offset: seg.offset,
            filesz: seg.filesz,
            paddr: seg.paddr,
            memsz: seg.memsz,
            why,
        };
        if seg.filesz > seg.memsz {
            return Err(bad("is larger in the file than in memory"));
        }
        if seg
            .offset
            .checked_add(seg.filesz)
            .map_or(true, |e| e > file_len)
        {
            return Err(bad("passes the end of the file"));
        }
        if seg.paddr < min_paddr {
            return Err(bad("starts below 1 MiB, in the legacy area"));
        }
        if memory::host_range(mem, seg.paddr, seg.memsz).is_none() {
            return Err(bad("is not inside guest RAM (give the VM more memory?)"));
        }
        end = end.max(seg.paddr + seg.memsz);
        segments.push(seg);
    }
    if segments.is_empty() {
        return Err(ElfError::Empty);
    }
    let entry = ehdr.e_entry;
    if !segments
        .iter()
        .any(|s| entry >= s.paddr && entry - s.paddr < s.memsz)
    {
        return Err(ElfError::Entry(entry));
    }
    Ok(Image {
        entry,
        segments,
        end,
    })
}

/// Whether the file's pages may stay shared with the guest for the VM's
/// life: a regular file that only root or we can write (a file another
/// user could truncate or rewrite would change, or fault, guest memory
/// under the running VM).
pub fn may_map(meta: &Metadata) -> bool {
    // SAFETY: geteuid has no memory effects.
    let me = unsafe { libc::geteuid() };
    meta.file_type().is_file() && (meta.uid() == 0 || meta.uid() == me) && meta.mode() & 0o022 == 0
}

fn copy(mem: &Mem, file: &mut File, gpa: u64, offset: u64, len: u64) -> Result<(), ElfError> {
    if len == 0 {
        return Ok(());
    }
    let err = |reason: String| ElfError::Copy { gpa, len, reason };
    file.seek(SeekFrom::Start(offset))
        .map_err(|e| err(e.to_string()))?;
    let n = usize::try_from(len).map_err(|e| err(e.to_string()))?;
    mem.read_exact_volatile_from(GuestAddress(gpa), file, n)
        .map_err(|e| err(e.to_string()))
}

/// Load the checked `image` from `file`: map what can be mapped (when
/// `map` allows), copy the rest.
pub fn load(mem: &Mem, file: &mut File, image: &Image, map: bool) -> Result<Loaded, ElfError> {
    let page = memory::page_size();
    let mut out = Loaded {
        entry: image.entry,
        end: image.end,
        ..Default::default()
    };
    for s in &image.segments {
        let file_end = s.paddr + s.filesz;
        // Whole pages of the segment: [body, body_end).
        let body = s.paddr.next_multiple_of(page);
        let body_end = file_end - file_end % page;
        if !map || s.paddr % page != s.offset % page || body_end <= body {
            copy(mem, file, s.paddr, s.offset, s.filesz)?;
            out.copied += s.filesz;
            continue;
        }
        let delta = body - s.paddr;
        copy(mem, file, s.paddr, s.offset, delta)?;
        match memory::map_file(mem, body, body_end - body, file, s.offset + delta) {
            Ok(()) => out.mapped += body_end - body,
            Err(MemoryError::FileMap { restored: true, .. }) => {
                copy(mem, file, body, s.offset + delta, body_end - body)?;
                out.copied += body_end - body;
            }
            Err(e) => return Err(ElfError::Map(e)),
        }
        let tail = body_end - s.paddr;
        copy(mem, file, body_end, s.offset + tail, s.filesz - tail)?;
        out.copied += s.filesz - (body_end - body);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    struct Seg {
        offset: u64,
        paddr: u64,
        data: Vec<u8>,
        memsz: u64,
    }

    /// An x86_64 ELF with these segments; bytes of the file not in a
    /// segment are 0xee (so a loader that maps too much shows it).
    fn elf(entry: u64, segs: &[Seg]) -> Vec<u8> {
        let mut eh = Elf64_Ehdr::default();
        eh.e_ident[..4].copy_from_slice(ELFMAG);
        eh.e_ident[EI_CLASS] = ELFCLASS64;
        eh.e_ident[EI_DATA] = ELFDATA2LSB;
        eh.e_machine = EM_X86_64;
        eh.e_entry = entry;
        eh.e_phoff = 64;
        eh.e_phentsize = 56;
        eh.e_phnum = segs.len() as u16;
        let len = segs
            .iter()
            .map(|s| s.offset + s.data.len() as u64)
            .max()
            .unwrap_or(0)
            .max(64 + 56 * segs.len() as u64);
        let mut f = vec![0xeeu8; len as usize];
        f[..64].copy_from_slice(eh.as_slice());
        for (i, s) in segs.iter().enumerate() {
            let ph = Elf64_Phdr {
                p_type: PT_LOAD,
                p_offset: s.offset,
                p_paddr: s.paddr,
                p_vaddr: s.paddr,
                p_filesz: s.data.len() as u64,
                p_memsz: s.memsz,
                ..Default::default()
            };
            f[64 + 56 * i..64 + 56 * (i + 1)].copy_from_slice(ph.as_slice());
            f[s.offset as usize..][..s.data.len()].copy_from_slice(&s.data);
        }
        f
    }

    fn file(name: &str, bytes: &[u8]) -> (std::path::PathBuf, File) {
        use std::os::unix::fs::PermissionsExt;
        let p = std::env::temp_dir().join(format!("sb-elf-{name}-{}", std::process::id()));
        std::fs::write(&p, bytes).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let f = File::open(&p).unwrap();
        (p, f)
    }

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect()
    }

    fn read(mem: &Mem, gpa: u64, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        mem.read_slice(&mut v, GuestAddress(gpa)).unwrap();
        v
    }

    #[test]
    fn aligned_segments_are_mapped_partial_pages_copied_bss_zero() {
        let page = memory::page_size();
        let text = pattern(3 * page as usize + 100, 1);
        let data = pattern(2 * page as usize, 2);
        let bytes = elf(
            0x100_0000,
            &[
                Seg {
                    offset: page,
                    paddr: 0x100_0000,
                    data: text.clone(),
                    memsz: text.len() as u64,
                },
                Seg {
                    offset: 8 * page + 40,
                    paddr: 0x140_0000 + 40,
                    data: data.clone(),
                    memsz: data.len() as u64 + 3 * page,
                },
            ],
        );
        let (p, mut f) = file("aligned", &bytes);
        let mem = memory::create(64).unwrap();
        let img = parse(&f, bytes.len() as u64, &mem, MIB).unwrap();
        assert_eq!(img.end, 0x140_0000 + 40 + data.len() as u64 + 3 * page);
        assert!(may_map(&f.metadata().unwrap()));
        let l = load(&mem, &mut f, &img, true).unwrap();
        // Segment 0: 3 whole pages mapped; segment 1: 1 whole page.
        assert_eq!(l.mapped, 4 * page);
        assert_eq!(l.mapped + l.copied, (text.len() + data.len()) as u64);
        assert_eq!(read(&mem, 0x100_0000, text.len()), text);
        assert_eq!(read(&mem, 0x140_0000 + 40, data.len()), data);
        // The 0xee file bytes after each segment's end did not come along.
        assert_eq!(read(&mem, 0x100_0000 + text.len() as u64, 64), vec![0; 64]);
        let bss = 0x140_0000 + 40 + data.len() as u64;
        assert_eq!(
            read(&mem, bss, 3 * page as usize),
            vec![0; 3 * page as usize]
        );
        assert_eq!(read(&mem, 0x140_0000, 40), vec![0; 40]);
        // Guest writes never reach the file.
        mem.write_slice(b"scribble", GuestAddress(0x100_0000 + page))
            .unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), bytes);

        // The same image copied gives the same memory.
        let mem2 = memory::create(64).unwrap();
        let l2 = load(&mem2, &mut f, &img, false).unwrap();
        assert_eq!(l2.mapped, 0);
        assert_eq!(
            read(&mem2, 0x140_0000, 4 * page as usize),
            read(&mem, 0x140_0000, 4 * page as usize)
        );
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn misaligned_segments_are_copied() {
        let page = memory::page_size();
        let text = pattern(4 * page as usize, 3);
        let bytes = elf(
            0x100_0010,
            &[Seg {
                offset: page + 16,
                paddr: 0x100_0000,
                data: text.clone(),
                memsz: text.len() as u64,
            }],
        );
        let (p, mut f) = file("misaligned", &bytes);
        let mem = memory::create(64).unwrap();
        let img = parse(&f, bytes.len() as u64, &mem, MIB).unwrap();
        let l = load(&mem, &mut f, &img, true).unwrap();
        assert_eq!((l.mapped, l.copied), (0, text.len() as u64));
        assert_eq!(read(&mem, 0x100_0000, text.len()), text);
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn bad_headers_are_refused() {
        let mem = memory::create(32).unwrap();
        let seg = |offset, paddr, n: usize, memsz| Seg {
            offset,
            paddr,
            data: vec![1; n],
            memsz,
        };
        let check = |name: &str, bytes: Vec<u8>, what: &str| {
            let (p, f) = file(name, &bytes);
            let e = parse(&f, bytes.len() as u64, &mem, MIB).unwrap_err();
            assert!(e.to_string().contains(what), "{name}: {e}");
            std::fs::remove_file(p).unwrap();
        };
        check("short", b"\x7fELF".to_vec(), "too short");
        let mut b = elf(MIB, &[seg(4096, MIB, 10, 10)]);
        b[EI_CLASS] = 1;
        check("class", b, "64-bit");
        let mut b = elf(MIB, &[seg(4096, MIB, 10, 10)]);
        b[18] = 3; // EM_386
        check("machine", b, "machine 3");
        let mut b = elf(MIB, &[seg(4096, MIB, 10, 10)]);
        b[56..58].copy_from_slice(&200u16.to_le_bytes()); // e_phnum
        check("phnum", b, "program header table");
        let mut b = elf(MIB, &[seg(4096, MIB, 10, 10)]);
        b[32..40].copy_from_slice(&u64::MAX.to_le_bytes()); // e_phoff
        check("phoff", b, "program header table");
        // filesz beyond the file's end.
        let mut b = elf(MIB, &[seg(4096, MIB, 10, 1 << 20)]);
        b[64 + 32..64 + 40].copy_from_slice(&(1u64 << 19).to_le_bytes());
        check("filesz", b, "end of the file");
        let mut b = elf(MIB, &[seg(4096, MIB, 10, 10)]);
        b[64 + 8..64 + 16].copy_from_slice(&u64::MAX.to_le_bytes()); // p_offset
        check("offset", b, "end of the file");
        check(
            "memsz",
            elf(MIB, &[seg(4096, MIB, 10, 5)]),
            "larger in the file",
        );
        check(
            "low",
            elf(0x1000, &[seg(4096, 0x1000, 10, 10)]),
            "below 1 MiB",
        );
        check(
            "beyond",
            elf(MIB, &[seg(4096, MIB, 10, 32 * MIB)]),
            "not inside guest RAM",
        );
        check(
            "wrap",
            elf(MIB, &[seg(4096, u64::MAX - 4, 10, 10)]),
            "not inside guest RAM",
        );
        check(
            "entry",
            elf(2 * MIB, &[seg(4096, MIB, 10, 10)]),
            "entry point",
        );
        check("empty", elf(MIB, &[]), "no loadable segment");
    }

    /// The installed kernel, mapped, gives the same guest memory as
    /// linux-loader's copying loader. Skipped (passes) without it.
    #[test]
    fn installed_vmlinux_maps_like_linux_loader_copies() {
        use linux_loader::loader::{elf::Elf, KernelLoader};
        let path = std::path::Path::new("/usr/local/share/sandbox/kernel/vmlinux");
        let Ok(mut f) = File::open(path) else { return };
        let len = f.metadata().unwrap().len();
        let mem = memory::create(256).unwrap();
        let img = parse(&f, len, &mem, MIB).unwrap();
        let l = load(&mem, &mut f, &img, true).unwrap();
        assert!(l.mapped > l.copied, "{l:?}");
        let reference = memory::create(256).unwrap();
        let r = Elf::load(&reference, None, &mut f, Some(GuestAddress(MIB))).unwrap();
        assert_eq!(r.kernel_load.0, l.entry);
        assert!(r.kernel_end <= l.end);
        let start = img.segments.iter().map(|s| s.paddr).min().unwrap();
        let n = (l.end - start) as usize;
        assert!(read(&mem, start, n) == read(&reference, start, n));
    }
}
