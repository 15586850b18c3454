//! Exit statuses of the `sandbox` binary and helpers for error messages.
//!
//! | status | meaning |
//! |--------|---------|
//! | 0-255  | the command's own exit status |
//! | 128+N  | the command was killed by signal N |
//! | 122    | `--vm`: the guest itself failed (kernel panic, unexpected reset, triple fault) |
//! | 123    | the sandbox exceeded its memory limit and was killed |
//! | 124    | `--timeout` expired; the command was stopped |
//! | 125    | the sandbox itself failed (one-line reason on stderr) |
//! | 126    | the command exists but could not be executed |
//! | 127    | the command was not found |
//!
//! The same table is in the README, `sandbox --help` and the man page.

/// `--vm`: the guest failed (kernel panic, reset, triple fault).
pub const EXIT_GUEST: i32 = 122;
/// The sandbox ran out of memory (its `--memory` limit) and was killed.
pub const EXIT_OOM: i32 = 123;
/// `--timeout` expired.
pub const EXIT_TIMEOUT: i32 = 124;
/// The sandbox failed (bad input, setup failure, init died).
pub const EXIT_SANDBOX: i32 = 125;
/// The command could not be executed.
pub const EXIT_CANNOT_EXEC: i32 = 126;
/// The command was not found.
pub const EXIT_NOT_FOUND: i32 = 127;

/// The status for "killed by signal `sig`".
pub fn signal_status(sig: i32) -> i32 {
    128 + sig
}

/// `strerror` text of an errno, without Rust's "(os error N)" suffix.
pub fn errno_text(errno: i32) -> String {
    let s = std::io::Error::from_raw_os_error(errno).to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// Human reason of an I/O error, without the "(os error N)" suffix.
pub fn io_reason(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => errno_text(n),
        None => e.to_string(),
    }
}

/// Symbolic name of common errnos, for structured messages.
pub fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EACCES => "EACCES",
        libc::EEXIST => "EEXIST",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::EROFS => "EROFS",
        libc::ENOSPC => "ENOSPC",
        libc::ENOSYS => "ENOSYS",
        libc::EBUSY => "EBUSY",
        libc::ENOEXEC => "ENOEXEC",
        libc::ELOOP => "ELOOP",
        libc::EXDEV => "EXDEV",
        libc::ENOMEM => "ENOMEM",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EAGAIN => "EAGAIN",
        libc::EBADF => "EBADF",
        libc::EFAULT => "EFAULT",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::E2BIG => "E2BIG",
        _ => "errno",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_text_has_no_suffix() {
        assert_eq!(errno_text(libc::ENOENT), "No such file or directory");
    }
}
