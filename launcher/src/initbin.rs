//! Finding the `sandbox-init` binary.
//!
//! Search order (first hit wins):
//! 1. `$SANDBOX_INIT` (must exist when set),
//! 2. next to the `sandbox` binary,
//! 3. `<bindir>/../libexec/sandbox/sandbox-init` (the installed layout),
//! 4. the cargo musl build next to a development build
//!    (`target/x86_64-unknown-linux-musl/<profile>/sandbox-init`),
//! 5. `/usr/local/libexec/sandbox/sandbox-init`, `/usr/libexec/sandbox/sandbox-init`.

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum InitBinError {
    #[error("SANDBOX_INIT={0} does not exist or is not a file")]
    BadEnv(PathBuf),
    #[error(
        "cannot find sandbox-init (looked in: {0}); install it with `make install`, or set \
         SANDBOX_INIT to its path"
    )]
    NotFound(String),
    #[error("cannot open sandbox-init at {path}: {reason}")]
    Open { path: PathBuf, reason: String },
}

pub const INIT_NAME: &str = "sandbox-init";

pub fn candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(exe) = std::fs::read_link("/proc/self/exe") {
        if let Some(dir) = exe.parent() {
            out.push(dir.join(INIT_NAME));
            out.push(dir.join("../libexec/sandbox").join(INIT_NAME));
            if let (Some(profile), Some(target)) = (dir.file_name(), dir.parent()) {
                out.push(
                    target
                        .join("x86_64-unknown-linux-musl")
                        .join(profile)
                        .join(INIT_NAME),
                );
            }
        }
    }
    out.push(PathBuf::from("/usr/local/libexec/sandbox").join(INIT_NAME));
    out.push(PathBuf::from("/usr/libexec/sandbox").join(INIT_NAME));
    out
}

fn open_path(p: &Path) -> Result<OwnedFd, InitBinError> {
    let c = CString::new(p.as_os_str().as_bytes()).map_err(|_| InitBinError::Open {
        path: p.into(),
        reason: "path contains a NUL byte".into(),
    })?;
    // SAFETY: valid C string; O_PATH opens without reading.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(InitBinError::Open {
            path: p.into(),
            reason: crate::errors::io_reason(&std::io::Error::last_os_error()),
        });
    }
    // SAFETY: fresh fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Locate and open (`O_PATH`) the init binary; returns the fd and path.
pub fn open() -> Result<(OwnedFd, PathBuf), InitBinError> {
    if let Some(p) = std::env::var_os("SANDBOX_INIT").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            return Err(InitBinError::BadEnv(p));
        }
        return Ok((open_path(&p)?, p));
    }
    let cands = candidates();
    for c in &cands {
        if c.is_file() {
            return Ok((open_path(c)?, c.clone()));
        }
    }
    Err(InitBinError::NotFound(
        cands
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    ))
}
