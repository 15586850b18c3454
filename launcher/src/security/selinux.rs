//! SELinux labels (`--security-label`), libvirt sVirt style.
//!
//! - `none` (the default for now): nothing is asked of SELinux.
//! - `inherit`: the command keeps the launcher's context (recorded).
//! - `static:CONTEXT`: the command is executed in CONTEXT, which must be
//!   valid in the loaded policy (checked before anything is created).
//! - `dynamic`: a unique MCS category pair `c1 < c2` per live sandbox (held
//!   by an abstract-socket lock, released at exit however it happens) and
//!   the context `system_u:system_r:sandbox_t:s0:c1,c2`; writable volumes
//!   are relabelled `sandbox_file_t` at the same pair while the sandbox
//!   runs and get their old labels back afterwards. Needs the sandbox
//!   policy module (`launcher/policy/selinux/sandbox.cil`, installed with
//!   `semodule -i`): on a host whose policy lacks it the run fails closed
//!   and says so.
//!
//! On a host where SELinux is disabled, a requested label cannot be
//! enforced: the run goes on and reports it on stderr and in the receipt's
//! `not_enforced` list (there is nothing to enforce it with).

use std::io;

use crate::errors::io_reason;
use crate::state::{IdLock, StateError};

/// The domain of dynamic labels (from the sandbox policy module).
pub const DYNAMIC_DOMAIN: &str = "system_u:system_r:sandbox_t";
/// MCS categories handed out to dynamic labels (c0..c1023).
pub const CATEGORIES: u16 = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelMode {
    None,
    Inherit,
    Static(String),
    Dynamic,
}

impl LabelMode {
    pub fn parse(s: &str) -> Result<Self, String> {
        const ACCEPTED: &str = "expected dynamic, static:CONTEXT, inherit or none";
        match s {
            "none" => Ok(LabelMode::None),
            "inherit" => Ok(LabelMode::Inherit),
            "dynamic" => Ok(LabelMode::Dynamic),
            _ => match s.strip_prefix("static:") {
                Some(ctx) if valid_syntax(ctx) => Ok(LabelMode::Static(ctx.to_string())),
                Some(_) => Err(format!(
                    "the context must look like user:role:type:level; {ACCEPTED}"
                )),
                None => Err(ACCEPTED.into()),
            },
        }
    }

    pub fn as_str(&self) -> String {
        match self {
            LabelMode::None => "none".into(),
            LabelMode::Inherit => "inherit".into(),
            LabelMode::Dynamic => "dynamic".into(),
            LabelMode::Static(c) => format!("static:{c}"),
        }
    }
}

/// `user:role:type:level[...]`, printable, no spaces.
fn valid_syntax(ctx: &str) -> bool {
    ctx.split(':').count() >= 4
        && ctx.len() < 256
        && ctx.bytes().all(|b| b.is_ascii_graphic())
        && ctx.split(':').take(3).all(|p| !p.is_empty())
}

#[derive(Debug, thiserror::Error)]
pub enum LabelError {
    #[error("SELinux context '{ctx}' is not valid in the loaded policy{hint}")]
    Invalid { ctx: String, hint: &'static str },
    #[error("cannot check SELinux context '{ctx}': {reason}")]
    Check { ctx: String, reason: String },
    #[error("no free MCS category pair: every pair is held by a live sandbox")]
    Exhausted,
    #[error(transparent)]
    Lock(#[from] StateError),
}

/// Whether SELinux is enabled on this host (selinuxfs mounted).
pub fn enabled() -> bool {
    std::path::Path::new("/sys/fs/selinux/enforce").exists()
}

/// Whether SELinux is enforcing (not permissive).
pub fn enforcing() -> bool {
    std::fs::read_to_string("/sys/fs/selinux/enforce").is_ok_and(|s| s.trim() == "1")
}

/// Ask the kernel whether `ctx` is valid in the loaded policy.
pub fn check_context(ctx: &str) -> Result<(), LabelError> {
    let r = std::fs::OpenOptions::new()
        .write(true)
        .open("/sys/fs/selinux/context")
        .and_then(|mut f| io::Write::write_all(&mut f, ctx.as_bytes()));
    match r {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Err(LabelError::Invalid {
            ctx: ctx.into(),
            hint: if ctx.starts_with(DYNAMIC_DOMAIN) {
                " (dynamic labels need the sandbox policy module: semodule -i \
                 <prefix>/share/sandbox/selinux/sandbox.cil)"
            } else {
                ""
            },
        }),
        Err(e) => Err(LabelError::Check {
            ctx: ctx.into(),
            reason: io_reason(&e),
        }),
    }
}

/// A dynamic label: its context and the lock on its category pair.
#[derive(Debug)]
pub struct Dynamic {
    pub context: String,
    pub categories: (u16, u16),
    _lock: IdLock,
}

/// Allocate a category pair `c1 < c2` not held by any live sandbox.
pub fn allocate() -> Result<Dynamic, LabelError> {
    let mut seed = [0u8; 8];
    // SAFETY: getrandom writes at most 8 bytes into `seed`.
    unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
    let mut x = u64::from_le_bytes(seed) | 1;
    for _ in 0..4096 {
        // xorshift: a cheap spread over the pairs.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let a = (x % u64::from(CATEGORIES)) as u16;
        let b = ((x >> 16) % u64::from(CATEGORIES)) as u16;
        if a == b {
            continue;
        }
        let (c1, c2) = (a.min(b), a.max(b));
        match IdLock::acquire("mcs", u32::from(c1) * u32::from(CATEGORIES) + u32::from(c2)) {
            Ok(lock) => {
                return Ok(Dynamic {
                    context: format!("{DYNAMIC_DOMAIN}:s0:c{c1},c{c2}"),
                    categories: (c1, c2),
                    _lock: lock,
                })
            }
            Err(StateError::NameInUse(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(LabelError::Exhausted)
}

/// The file label of a dynamic label's writable volumes.
pub fn volume_context(categories: (u16, u16)) -> String {
    format!(
        "system_u:object_r:sandbox_file_t:s0:c{},c{}",
        categories.0, categories.1
    )
}

/// Most entries relabelled in one volume (a guard against a volume that is
/// really the whole host).
const MAX_RELABEL: usize = 1_000_000;

/// Labels changed on a volume; restored when dropped.
#[derive(Debug)]
pub struct Relabeled {
    saved: Vec<(std::ffi::CString, Option<Vec<u8>>)>,
}

const XATTR: &std::ffi::CStr = c"security.selinux";

fn get_label(path: &std::ffi::CStr) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    // SAFETY: valid path and name; `buf` has the length passed.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            XATTR.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return None;
    }
    buf.truncate(n as usize);
    Some(buf)
}

fn set_label(path: &std::ffi::CStr, label: &[u8]) -> io::Result<()> {
    // SAFETY: valid path, name and value buffer.
    let r = unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            XATTR.as_ptr(),
            label.as_ptr().cast(),
            label.len(),
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Label every entry under `root` (symlinks themselves, never followed;
/// other filesystems below it are not entered) with `context`.
pub fn relabel(root: &std::path::Path, context: &str) -> Result<Relabeled, LabelError> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let err = |p: &std::path::Path, e: io::Error| LabelError::Check {
        ctx: format!("{context} on {}", p.display()),
        reason: io_reason(&e),
    };
    let dev = std::fs::symlink_metadata(root)
        .map_err(|e| err(root, e))?
        .dev();
    let mut out = Relabeled { saved: Vec::new() };
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        if out.saved.len() >= MAX_RELABEL {
            return Err(err(root, io::Error::other("too many files to relabel")));
        }
        let meta = std::fs::symlink_metadata(&p).map_err(|e| err(&p, e))?;
        if meta.dev() != dev {
            continue;
        }
        let c = std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| err(&p, io::Error::from_raw_os_error(libc::EINVAL)))?;
        let old = get_label(&c);
        set_label(&c, context.as_bytes()).map_err(|e| err(&p, e))?;
        out.saved.push((c, old));
        if meta.is_dir() {
            for e in std::fs::read_dir(&p).map_err(|e| err(&p, e))? {
                stack.push(e.map_err(|e| err(&p, e))?.path());
            }
        }
    }
    Ok(out)
}

impl Drop for Relabeled {
    fn drop(&mut self) {
        for (path, old) in self.saved.drain(..).rev() {
            match old {
                Some(label) => {
                    let _ = set_label(&path, &label);
                }
                // SAFETY: valid path and name.
                None => unsafe {
                    libc::lremovexattr(path.as_ptr(), XATTR.as_ptr());
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        assert_eq!(LabelMode::parse("none").unwrap(), LabelMode::None);
        assert_eq!(LabelMode::parse("dynamic").unwrap(), LabelMode::Dynamic);
        assert_eq!(
            LabelMode::parse("static:u:r:t:s0:c1,c2").unwrap(),
            LabelMode::Static("u:r:t:s0:c1,c2".into())
        );
        for bad in ["", "static:", "static:a:b", "static:a b:c:d:e", "dyn"] {
            assert!(LabelMode::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn live_pairs_are_unique_and_ordered() {
        let a = allocate().unwrap();
        let b = allocate().unwrap();
        assert_ne!(a.categories, b.categories);
        for d in [&a, &b] {
            assert!(d.categories.0 < d.categories.1);
            assert!(d.context.starts_with("system_u:system_r:sandbox_t:s0:c"));
        }
    }
}
