//! The guest's initramfs, built in memory: a newc ("070701") cpio archive
//! holding the directories of [`sandbox_proto::vm::INITRAMFS_DIRS`] and
//! `/init`, the static `sandbox-init` (see `init/src/vm.rs` for what it
//! does there). The kernel adds `/dev`, `/dev/console` and `/root` from its
//! built-in initramfs before it unpacks this one. Uncompressed: the archive
//! is a few MiB and the kernel copies it once; gzip would cost more time
//! to decompress under nested virtualization than it saves.
//!
//! [`init_binary`] finds a *static* `sandbox-init`: the guest has no
//! libraries before the host share is mounted, so a dynamically linked
//! build (an ELF with a `PT_INTERP` program header) is skipped, and refused
//! when it is the only one found. Search order, first static hit wins:
//! `$SANDBOX_INIT` (must exist when set), next to the `sandbox` binary,
//! `<bindir>/../libexec/sandbox/sandbox-init`, the workspace's musl build
//! (`target/x86_64-unknown-linux-musl/<profile>/sandbox-init`),
//! `/usr/local/libexec/sandbox/sandbox-init`,
//! `/usr/libexec/sandbox/sandbox-init` (the same list as the namespace
//! backend, `initbin.rs`).
//!
//! No threads. Input: only local files chosen by the user or the install;
//! the ELF check is bounds-checked all the same and never panics.

use std::path::{Path, PathBuf};

use crate::initbin;

/// Errors of building the initramfs.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    #[error("SANDBOX_INIT={0} does not exist or is not a file")]
    BadEnv(PathBuf),
    #[error(
        "cannot find a static sandbox-init for the micro-VM guest (looked in: {looked}); build \
         it with `cargo build -p sandbox-init --target x86_64-unknown-linux-musl`, or install \
         it with `make install`"
    )]
    NotFound { looked: String },
    #[error(
        "{path} is dynamically linked (it names an ELF interpreter), but the micro-VM guest \
         has no libraries before the host share is mounted; build the static one with \
         `cargo build -p sandbox-init --target x86_64-unknown-linux-musl`{hint}"
    )]
    Dynamic { path: PathBuf, hint: String },
    #[error("{path} is not an x86_64 ELF executable ({reason}); the guest needs sandbox-init")]
    NotElf { path: PathBuf, reason: &'static str },
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error(
        "initramfs entry {name} is {len} bytes; newc archives hold at most 4 GiB - 1 per file"
    )]
    TooLarge { name: String, len: usize },
}

const MODE_DIR: u32 = 0o040_000;
const MODE_FILE: u32 = 0o100_000;
const NEWC_MAGIC: &[u8; 6] = b"070701";
const TRAILER: &str = "TRAILER!!!";

/// One entry of the archive. Names are relative (`init`, `newroot`), as
/// `cpio` writes them; the kernel places them under `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry<'a> {
    Dir {
        name: &'a str,
        mode: u32,
    },
    File {
        name: &'a str,
        mode: u32,
        data: &'a [u8],
    },
}

/// The guest's initramfs: [`sandbox_proto::vm::INITRAMFS_DIRS`] (0755) and
/// `init` (0755) holding `init`.
pub fn build(init: &[u8]) -> Result<Vec<u8>, InitramfsError> {
    let mut entries: Vec<Entry> = sandbox_proto::vm::INITRAMFS_DIRS
        .iter()
        .map(|name| Entry::Dir { name, mode: 0o755 })
        .collect();
    entries.push(Entry::File {
        name: "init",
        mode: 0o755,
        data: init,
    });
    build_entries(&entries)
}

/// A newc archive of `entries`, in order, ending with the trailer. Every
/// entry is owned by root, with mtime 0 (the archive is reproducible).
pub fn build_entries(entries: &[Entry]) -> Result<Vec<u8>, InitramfsError> {
    let size: usize = entries
        .iter()
        .map(|e| match e {
            Entry::Dir { name, .. } => 120 + name.len(),
            Entry::File { name, data, .. } => 124 + name.len() + data.len(),
        })
        .sum();
    let mut out = Vec::with_capacity(size + 128);
    for (i, e) in entries.iter().enumerate() {
        // Inode numbers only need to be distinct (hard links share them).
        let ino = i as u32 + 1;
        match e {
            Entry::Dir { name, mode } => {
                push_header(&mut out, ino, MODE_DIR | (mode & 0o7777), 2, 0, name)
            }
            Entry::File { name, mode, data } => {
                let len = u32::try_from(data.len()).map_err(|_| InitramfsError::TooLarge {
                    name: (*name).to_string(),
                    len: data.len(),
                })?;
                push_header(&mut out, ino, MODE_FILE | (mode & 0o7777), 1, len, name);
                out.extend_from_slice(data);
                pad4(&mut out);
            }
        }
    }
    push_header(&mut out, 0, 0, 1, 0, TRAILER);
    Ok(out)
}

fn push_header(out: &mut Vec<u8>, ino: u32, mode: u32, nlink: u32, filesize: u32, name: &str) {
    out.extend_from_slice(NEWC_MAGIC);
    // namesize counts the terminating NUL.
    let namesize = name.len() as u32 + 1;
    // ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor
    // rdevminor namesize check
    for field in [ino, mode, 0, 0, nlink, 0, filesize, 0, 0, 0, 0, namesize, 0] {
        out.extend_from_slice(format!("{field:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    while out.len() % 4 != 0 {
        out.push(0);
    }
}

/// Whether `elf` is an x86_64 ELF without a `PT_INTERP` program header
/// (statically linked, static-pie included). `Err` says why it is no ELF
/// executable at all.
pub fn is_static_elf(elf: &[u8]) -> Result<bool, &'static str> {
    const PT_INTERP: u32 = 3;
    const EM_X86_64: u16 = 62;
    let u16_at = |o: usize| -> Option<u16> {
        Some(u16::from_le_bytes(
            elf.get(o..o.checked_add(2)?)?.try_into().ok()?,
        ))
    };
    let u32_at = |o: usize| -> Option<u32> {
        Some(u32::from_le_bytes(
            elf.get(o..o.checked_add(4)?)?.try_into().ok()?,
        ))
    };
    let u64_at = |o: usize| -> Option<u64> {
        Some(u64::from_le_bytes(
            elf.get(o..o.checked_add(8)?)?.try_into().ok()?,
        ))
    };
    if elf.get(..4) != Some(b"\x7fELF") {
        return Err("no ELF magic");
    }
    if elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return Err("not a 64-bit little-endian ELF");
    }
    if u16_at(0x12) != Some(EM_X86_64) {
        return Err("not built for x86_64");
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return Err("truncated ELF header");
    };
    if phnum == 0 {
        return Err("no program headers");
    }
    // An ELF64 program header is 56 bytes.
    if (phentsize as usize) < 56 {
        return Err("bad program header size");
    }
    let phoff = usize::try_from(phoff).map_err(|_| "bad program header offset")?;
    for i in 0..phnum as usize {
        let at = (phentsize as usize)
            .checked_mul(i)
            .and_then(|o| o.checked_add(phoff))
            .ok_or("bad program header offset")?;
        let whole = at
            .checked_add(phentsize as usize)
            .is_some_and(|end| end <= elf.len());
        match u32_at(at) {
            _ if !whole => return Err("truncated program headers"),
            Some(PT_INTERP) => return Ok(false),
            Some(_) => {}
            None => return Err("truncated program headers"),
        }
    }
    Ok(true)
}

/// The static `sandbox-init` for the guest (see the module docs).
pub fn init_binary() -> Result<Vec<u8>, InitramfsError> {
    find_init().map(|(_, data)| data)
}

/// [`init_binary`], with the path it was read from.
pub fn find_init() -> Result<(PathBuf, Vec<u8>), InitramfsError> {
    if let Some(p) = std::env::var_os("SANDBOX_INIT").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            return Err(InitramfsError::BadEnv(p));
        }
        return pick(std::slice::from_ref(&p));
    }
    pick(&initbin::candidates())
}

/// The first static init among `candidates` that exist.
fn pick(candidates: &[PathBuf]) -> Result<(PathBuf, Vec<u8>), InitramfsError> {
    let mut dynamic: Vec<&Path> = Vec::new();
    for c in candidates {
        if !c.is_file() {
            continue;
        }
        let data = std::fs::read(c).map_err(|e| InitramfsError::Read {
            path: c.clone(),
            reason: crate::errors::io_reason(&e),
        })?;
        match is_static_elf(&data) {
            Ok(true) => return Ok((c.clone(), data)),
            Ok(false) => dynamic.push(c),
            Err(reason) => {
                return Err(InitramfsError::NotElf {
                    path: c.clone(),
                    reason,
                })
            }
        }
    }
    match dynamic.split_first() {
        Some((first, rest)) => Err(InitramfsError::Dynamic {
            path: first.to_path_buf(),
            hint: if rest.is_empty() {
                String::new()
            } else {
                format!(
                    " (also dynamic: {})",
                    rest.iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            },
        }),
        None => Err(InitramfsError::NotFound {
            looked: candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One parsed newc entry.
    #[derive(Debug)]
    struct Parsed {
        name: String,
        mode: u32,
        nlink: u32,
        data: Vec<u8>,
    }

    /// A strict newc reader: magic, hex fields, NUL-terminated names,
    /// 4-byte alignment of names and data, the trailer last, nothing after.
    fn parse(mut a: &[u8]) -> Vec<Parsed> {
        let total = a.len();
        let mut out = Vec::new();
        loop {
            let off = total - a.len();
            assert_eq!(off % 4, 0, "entry at {off} is not aligned");
            assert_eq!(&a[..6], NEWC_MAGIC, "bad magic at {off}");
            let field = |i: usize| {
                let s = std::str::from_utf8(&a[6 + 8 * i..14 + 8 * i]).unwrap();
                u32::from_str_radix(s, 16).unwrap()
            };
            let (mode, nlink, filesize, namesize) = (field(1), field(4), field(6), field(11));
            assert_eq!(field(12), 0, "check field");
            let name_end = 110 + namesize as usize;
            assert_eq!(a[name_end - 1], 0, "name not NUL-terminated");
            let name = std::str::from_utf8(&a[110..name_end - 1])
                .unwrap()
                .to_string();
            let data_start = name_end.div_ceil(4) * 4;
            assert!(a[name_end..data_start].iter().all(|b| *b == 0));
            let data_end = data_start + filesize as usize;
            let data = a[data_start..data_end].to_vec();
            let next = data_end.div_ceil(4) * 4;
            assert!(a[data_end..next].iter().all(|b| *b == 0));
            a = &a[next..];
            if name == TRAILER {
                assert!(a.is_empty(), "{} bytes after the trailer", a.len());
                return out;
            }
            out.push(Parsed {
                name,
                mode,
                nlink,
                data,
            });
        }
    }

    #[test]
    fn archive_parses_back() {
        // Odd sizes exercise the padding.
        for len in [0usize, 1, 2, 3, 4, 5, 4099] {
            let init: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let a = build(&init).unwrap();
            let entries = parse(&a);
            assert_eq!(entries.len(), 2);
            assert_eq!(entries[0].name, "newroot");
            assert_eq!(entries[0].mode, 0o040_755);
            assert_eq!(entries[0].nlink, 2);
            assert!(entries[0].data.is_empty());
            assert_eq!(entries[1].name, "init");
            assert_eq!(entries[1].mode, 0o100_755);
            assert_eq!(entries[1].data, init);
        }
    }

    #[test]
    fn entries_keep_their_order_and_modes() {
        let a = build_entries(&[
            Entry::Dir {
                name: "a",
                mode: 0o1777,
            },
            Entry::File {
                name: "a/bc",
                mode: 0o644,
                data: b"xyz",
            },
        ])
        .unwrap();
        let e = parse(&a);
        assert_eq!(
            e.iter().map(|p| (&p.name[..], p.mode)).collect::<Vec<_>>(),
            [("a", 0o041_777), ("a/bc", 0o100_644)]
        );
        assert_eq!(e[1].data, b"xyz");
    }

    /// The system's `cpio` agrees: it lists the entries and extracts /init
    /// byte-exact with mode 0755. Skipped (with a note) without `cpio`.
    #[test]
    fn system_cpio_reads_the_archive() {
        use std::io::Write;
        use std::os::unix::fs::PermissionsExt;
        use std::process::{Command, Stdio};
        let init = b"#!/bin/false\nnot really an init\n".to_vec();
        let archive = build(&init).unwrap();
        let run = |args: &[&str], dir: &Path| {
            let mut child = match Command::new("cpio")
                .args(args)
                .current_dir(dir)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
            {
                Ok(c) => c,
                Err(_) => return None,
            };
            child.stdin.take().unwrap().write_all(&archive).unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "cpio {args:?}: {out:?}");
            Some(String::from_utf8(out.stdout).unwrap())
        };
        let dir = std::env::temp_dir().join(format!("sandbox-initramfs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let Some(list) = run(&["-t"], &dir) else {
            eprintln!("cpio is not installed: skipped");
            return;
        };
        assert_eq!(list.lines().collect::<Vec<_>>(), ["newroot", "init"]);
        run(&["-id", "--no-absolute-filenames"], &dir).unwrap();
        assert_eq!(std::fs::read(dir.join("init")).unwrap(), init);
        let mode = std::fs::metadata(dir.join("init"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o755);
        assert!(dir.join("newroot").is_dir());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A minimal ELF64 header and program headers of the given types.
    fn elf(machine: u16, phdrs: &[u32]) -> Vec<u8> {
        let mut e = vec![0u8; 64];
        e[..4].copy_from_slice(b"\x7fELF");
        e[4] = 2;
        e[5] = 1;
        e[6] = 1;
        e[0x12..0x14].copy_from_slice(&machine.to_le_bytes());
        e[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        e[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        e[0x38..0x3a].copy_from_slice(&(phdrs.len() as u16).to_le_bytes());
        for t in phdrs {
            let mut ph = vec![0u8; 56];
            ph[..4].copy_from_slice(&t.to_le_bytes());
            e.extend_from_slice(&ph);
        }
        e
    }

    #[test]
    fn static_and_dynamic_elf_are_told_apart() {
        // PT_LOAD, PT_DYNAMIC, PT_GNU_STACK: static-pie has no PT_INTERP.
        assert_eq!(is_static_elf(&elf(62, &[1, 2, 0x6474_e551])), Ok(true));
        assert_eq!(is_static_elf(&elf(62, &[6, 3, 1])), Ok(false));
        assert!(is_static_elf(&elf(183, &[1])).is_err());
        assert!(is_static_elf(b"#!/bin/sh\n").is_err());
        assert!(is_static_elf(&[]).is_err());
        // Truncated anywhere: an error, never a panic.
        let full = elf(62, &[1, 3]);
        for cut in 0..full.len() {
            assert!(is_static_elf(&full[..cut]).is_err(), "cut at {cut}");
        }
        // Absurd offsets and sizes.
        let mut bad = elf(62, &[1]);
        bad[0x20..0x28].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(is_static_elf(&bad).is_err());
        let mut bad = elf(62, &[1]);
        bad[0x38..0x3a].copy_from_slice(&u16::MAX.to_le_bytes());
        assert!(is_static_elf(&bad).is_err());
    }

    /// This test binary is a dynamically linked ELF (gnu target): it is
    /// skipped in favour of a static one, and refused when alone.
    #[test]
    fn pick_skips_dynamic_builds() {
        let me = std::env::current_exe().unwrap();
        assert_eq!(is_static_elf(&std::fs::read(&me).unwrap()), Ok(false));
        let dir = std::env::temp_dir().join(format!("sandbox-initpick-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let stat = dir.join("static-init");
        std::fs::write(&stat, elf(62, &[1])).unwrap();
        let missing = dir.join("missing");

        let (path, data) = pick(&[missing.clone(), me.clone(), stat.clone()]).unwrap();
        assert_eq!(path, stat);
        assert_eq!(data, elf(62, &[1]));

        let err = pick(&[missing.clone(), me.clone()]).unwrap_err();
        assert!(matches!(err, InitramfsError::Dynamic { .. }));
        let msg = err.to_string();
        assert!(msg.contains("x86_64-unknown-linux-musl"), "{msg}");
        assert!(msg.contains(&me.display().to_string()), "{msg}");

        let err = pick(std::slice::from_ref(&missing)).unwrap_err();
        assert!(matches!(err, InitramfsError::NotFound { .. }));
        assert!(err.to_string().contains("missing"));

        let script = dir.join("script");
        std::fs::write(&script, b"#!/bin/sh\n").unwrap();
        assert!(matches!(
            pick(&[script]).unwrap_err(),
            InitramfsError::NotElf { .. }
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
