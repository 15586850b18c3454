//! Finding the guest kernel: `--kernel PATH`, else the installed one
//! (`scripts/build-kernel.sh` installs it).

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("--kernel {0}: no such file")]
    Missing(PathBuf),
    #[error(
        "no guest kernel installed (looked in {0}); build and install one with \
         scripts/build-kernel.sh, or pass --kernel PATH (a vmlinux ELF or a bzImage)"
    )]
    NotInstalled(String),
    #[error("{path} is neither an ELF vmlinux nor a bzImage")]
    Format { path: PathBuf },
}

/// Kernel image formats the VMM loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Elf,
    BzImage,
}

#[derive(Debug, Clone)]
pub struct GuestKernel {
    pub path: PathBuf,
    pub format: Format,
}

/// Where an installed kernel is looked for, in order.
pub fn search_dirs() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        v.push(PathBuf::from(d).join("sandbox/kernel"));
    } else if let Some(h) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        v.push(PathBuf::from(h).join(".local/share/sandbox/kernel"));
    }
    if let Ok(exe) = std::fs::read_link("/proc/self/exe") {
        if let Some(prefix) = exe.parent().and_then(Path::parent) {
            v.push(prefix.join("share/sandbox/kernel"));
        }
    }
    v.push(PathBuf::from("/usr/local/share/sandbox/kernel"));
    v.push(PathBuf::from("/usr/share/sandbox/kernel"));
    v
}

/// Recognise a kernel image by its first bytes.
pub fn format_of(path: &Path) -> Result<Format, KernelError> {
    use std::io::Read;
    let mut head = [0u8; 0x208];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .map_err(|_| KernelError::Missing(path.into()))?;
    if n >= 4 && head[..4] == *b"\x7fELF" {
        return Ok(Format::Elf);
    }
    // The x86 boot protocol's "HdrS" magic at offset 0x202.
    if n >= 0x206 && head[0x202..0x206] == *b"HdrS" {
        return Ok(Format::BzImage);
    }
    Err(KernelError::Format { path: path.into() })
}

/// The kernel to boot.
pub fn find(explicit: Option<&Path>) -> Result<GuestKernel, KernelError> {
    if let Some(p) = explicit {
        if !p.is_file() {
            return Err(KernelError::Missing(p.into()));
        }
        return Ok(GuestKernel {
            path: p.into(),
            format: format_of(p)?,
        });
    }
    let dirs = search_dirs();
    for d in &dirs {
        for name in ["vmlinux", "bzImage"] {
            let p = d.join(name);
            if p.is_file() {
                return Ok(GuestKernel {
                    format: format_of(&p)?,
                    path: p,
                });
            }
        }
    }
    Err(KernelError::NotInstalled(
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        let dir = std::env::temp_dir().join(format!("sbk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let elf = dir.join("vmlinux");
        std::fs::write(&elf, b"\x7fELF\x02\x01\x01").unwrap();
        assert_eq!(format_of(&elf).unwrap(), Format::Elf);
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        let bzp = dir.join("bzImage");
        std::fs::write(&bzp, &bz).unwrap();
        assert_eq!(format_of(&bzp).unwrap(), Format::BzImage);
        let junk = dir.join("junk");
        std::fs::write(&junk, b"hello").unwrap();
        assert!(matches!(format_of(&junk), Err(KernelError::Format { .. })));
        assert!(matches!(
            find(Some(&dir.join("nope"))),
            Err(KernelError::Missing(_))
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
