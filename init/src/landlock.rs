//! Landlock: the filesystem view enforced a second time, by the kernel's
//! own access control, at the best ABI the kernel offers.
//!
//! [`prepare`] runs in init (after the root switch): it asks the kernel for
//! its ABI, opens every rule path and builds the ruleset. [`restrict`] runs
//! in the command's process just before the seccomp filter and `execve`.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use sandbox_proto::LandlockSpec;

use crate::setup::StepError;
use crate::sys;

const EXECUTE: u64 = 1 << 0;
const WRITE_FILE: u64 = 1 << 1;
const READ_FILE: u64 = 1 << 2;
const READ_DIR: u64 = 1 << 3;
const REMOVE_DIR: u64 = 1 << 4;
const REMOVE_FILE: u64 = 1 << 5;
const MAKE_CHAR: u64 = 1 << 6;
const MAKE_DIR: u64 = 1 << 7;
const MAKE_REG: u64 = 1 << 8;
const MAKE_SOCK: u64 = 1 << 9;
const MAKE_FIFO: u64 = 1 << 10;
const MAKE_BLOCK: u64 = 1 << 11;
const MAKE_SYM: u64 = 1 << 12;
const REFER: u64 = 1 << 13;
const TRUNCATE: u64 = 1 << 14;
const IOCTL_DEV: u64 = 1 << 15;

const SCOPE_ABSTRACT_UNIX_SOCKET: u64 = 1 << 0;
const SCOPE_SIGNAL: u64 = 1 << 1;

const CREATE_RULESET_VERSION: u32 = 1 << 0;
const RULE_PATH_BENEATH: u32 = 1;

/// Filesystem rights the kernel of a given ABI understands.
fn fs_rights(abi: u32) -> u64 {
    let mut r = (1 << 13) - 1; // ABI 1: EXECUTE..=MAKE_SYM
    if abi >= 2 {
        r |= REFER;
    }
    if abi >= 3 {
        r |= TRUNCATE;
    }
    if abi >= 5 {
        r |= IOCTL_DEV;
    }
    r
}

#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
    handled_access_net: u64,
    scoped: u64,
}

#[repr(C, packed)]
struct PathBeneath {
    allowed_access: u64,
    parent_fd: i32,
}

/// The kernel's Landlock ABI, 0 when Landlock is unavailable.
pub fn abi() -> u32 {
    // SAFETY: the version query takes a null attribute and size 0.
    let r = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<RulesetAttr>(),
            0usize,
            CREATE_RULESET_VERSION,
        )
    };
    if r < 0 {
        0
    } else {
        r as u32
    }
}

/// A ruleset ready to be enforced on the command.
#[derive(Debug)]
pub struct Ruleset {
    fd: OwnedFd,
    pub abi: u32,
}

/// Build the ruleset, or `Ok(None)` when Landlock is unavailable and not
/// required.
pub fn prepare(spec: &LandlockSpec) -> Result<Option<Ruleset>, StepError> {
    let abi = abi();
    if abi == 0 {
        if spec.required {
            return Err(StepError::new("landlock", "", libc::EOPNOTSUPP).detail(
                "Landlock is not available in this kernel (needs Linux 5.13 with \
                 CONFIG_SECURITY_LANDLOCK and 'landlock' in the lsm= list)",
            ));
        }
        return Ok(None);
    }
    let handled = fs_rights(abi);
    let attr = RulesetAttr {
        handled_access_fs: handled,
        handled_access_net: 0,
        scoped: if abi >= 6 {
            SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
        } else {
            0
        },
    };
    // The attribute size tells the kernel which fields we fill in.
    let size = match abi {
        1..=3 => 8,
        4 | 5 => 16,
        _ => std::mem::size_of::<RulesetAttr>(),
    };
    // SAFETY: `attr` is valid for `size` bytes.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            &attr as *const RulesetAttr,
            size,
            0u32,
        )
    };
    let fd = sys::check(fd).map_err(|e| StepError::new("landlock", "", e))?;
    // SAFETY: fresh fd from the kernel.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };

    let read = EXECUTE | READ_FILE | READ_DIR;
    let write = handled;
    let device = READ_FILE | READ_DIR | WRITE_FILE | (IOCTL_DEV & handled);
    for (paths, access) in [
        (&spec.read, read),
        (&spec.write, write),
        (&spec.devices, device),
    ] {
        for path in paths {
            add_rule(&fd, path, access & handled)?;
        }
    }
    allow_stdio(&fd, handled)?;
    Ok(Some(Ruleset { fd, abi }))
}

/// The caller's stdin/stdout/stderr may be files that live outside the
/// sandbox's view (`sandbox run ... > log`). Reopening them through
/// `/dev/stdout` is still legitimate, so each one that is a file or a
/// device gets a rule for exactly that file, with the access its open mode
/// already grants. Pipes and sockets need no rule.
fn allow_stdio(ruleset: &OwnedFd, handled: u64) -> Result<(), StepError> {
    for fd in 0..3 {
        let Ok(st) = sys::fstat(fd) else { continue };
        let kind = st.st_mode & libc::S_IFMT;
        if kind != libc::S_IFREG && kind != libc::S_IFCHR {
            continue;
        }
        // SAFETY: F_GETFL only reads the fd's status flags.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags < 0 {
            continue;
        }
        let mut access = 0;
        match flags & libc::O_ACCMODE {
            libc::O_RDONLY => access |= READ_FILE,
            libc::O_WRONLY => access |= WRITE_FILE | TRUNCATE,
            _ => access |= READ_FILE | WRITE_FILE | TRUNCATE,
        }
        if kind == libc::S_IFCHR {
            access |= IOCTL_DEV;
        }
        add_beneath(ruleset, fd, access & handled)
            .map_err(|e| StepError::new("landlock", format!("stdio fd {fd}"), e))?;
    }
    Ok(())
}

fn add_rule(ruleset: &OwnedFd, path: &[u8], access: u64) -> Result<(), StepError> {
    let c = sys::cstring(path).map_err(|e| StepError::new("landlock", path, e))?;
    let target = match sys::open(&c, libc::O_PATH) {
        Ok(fd) => fd,
        // A path that does not exist grants nothing.
        Err(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(StepError::new("landlock", path, e)),
    };
    // Directory-only rights are invalid on files.
    let st = sys::fstat(target.as_raw_fd()).map_err(|e| StepError::new("landlock", path, e))?;
    let access = if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
        access
    } else {
        access & (EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV)
    };
    add_beneath(ruleset, target.as_raw_fd(), access)
        .map_err(|e| StepError::new("landlock", path, e))
}

/// `landlock_add_rule(PATH_BENEATH)` granting `access` under `fd`.
fn add_beneath(ruleset: &OwnedFd, fd: i32, access: u64) -> Result<(), sys::Errno> {
    let attr = PathBeneath {
        allowed_access: access,
        parent_fd: fd,
    };
    // SAFETY: `attr` is a valid packed path-beneath attribute.
    let r = unsafe {
        libc::syscall(
            libc::SYS_landlock_add_rule,
            ruleset.as_raw_fd(),
            RULE_PATH_BENEATH,
            &attr as *const PathBeneath,
            0u32,
        )
    };
    sys::check(r).map(drop)
}

impl Ruleset {
    /// Enforce on the calling process (needs `no_new_privs`). Returns the
    /// errno on failure. Allocates nothing.
    pub fn restrict(&self) -> Result<(), i32> {
        // SAFETY: plain system call on our ruleset fd.
        let r =
            unsafe { libc::syscall(libc::SYS_landlock_restrict_self, self.fd.as_raw_fd(), 0u32) };
        sys::check(r).map(drop)
    }
}

// Silence "unused" for rights only used through `fs_rights`.
const _: u64 = REMOVE_DIR
    | REMOVE_FILE
    | MAKE_CHAR
    | MAKE_DIR
    | MAKE_REG
    | MAKE_SOCK
    | MAKE_FIFO
    | MAKE_BLOCK
    | MAKE_SYM;
