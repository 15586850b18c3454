//! Thin wrappers of the host system calls the file server makes, all
//! relative to a directory descriptor and never on a path string. Each
//! returns the raw errno on failure (what 9P2000.L's Rlerror carries) and
//! none panics.

use std::ffi::CStr;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// An errno.
pub type SysResult<T> = Result<T, i32>;

/// The calling thread's errno (EIO if there is none).
pub fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

fn cvt(ret: libc::c_long) -> SysResult<libc::c_long> {
    if ret < 0 {
        Err(errno())
    } else {
        Ok(ret)
    }
}

fn owned(fd: libc::c_long) -> SysResult<OwnedFd> {
    let fd = cvt(fd)?;
    // SAFETY: a fresh descriptor just returned by the kernel, owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Set once openat2 answered ENOSYS (kernel older than 5.6).
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// Open one name below `dir` as an `O_PATH` descriptor, never following a
/// symlink (a symlink itself is returned) and never leaving `dir`:
/// openat2 with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
/// RESOLVE_NO_MAGICLINKS`, or, where the kernel has no openat2, openat
/// with `O_NOFOLLOW`. The caller has refused names with '/', "." and "..".
pub fn open_path(dir: BorrowedFd<'_>, name: &CStr) -> SysResult<OwnedFd> {
    let flags = libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        // SAFETY: open_how is plain old data; all-zero is its default.
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = flags as u64;
        how.resolve =
            libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
        // SAFETY: valid dirfd, NUL-terminated name, `how` lives across the
        // call and its size is passed.
        let r = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                name.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        match owned(r) {
            Err(libc::ENOSYS) => NO_OPENAT2.store(true, Ordering::Relaxed),
            other => return other,
        }
    }
    openat(dir, name, flags, 0)
}

/// `openat(dir, name, flags, mode)`; callers include `O_NOFOLLOW`.
pub fn openat(dir: BorrowedFd<'_>, name: &CStr, flags: i32, mode: u32) -> SysResult<OwnedFd> {
    // SAFETY: valid dirfd and NUL-terminated name.
    let r = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    };
    owned(r.into())
}

pub fn fstat(fd: BorrowedFd<'_>) -> SysResult<libc::stat> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` has room for a stat; fstat works on O_PATH fds.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) }.into())?;
    // SAFETY: fstat succeeded, so it filled `st`.
    Ok(unsafe { st.assume_init() })
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`.
pub fn stat_at(dir: BorrowedFd<'_>, name: &CStr) -> SysResult<libc::stat> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: valid dirfd, NUL-terminated name, room for a stat.
    cvt(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    }
    .into())?;
    // SAFETY: fstatat succeeded.
    Ok(unsafe { st.assume_init() })
}

pub fn fstatfs(fd: BorrowedFd<'_>) -> SysResult<libc::statfs> {
    let mut st = MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: room for a statfs; fstatfs works on O_PATH fds.
    cvt(unsafe { libc::fstatfs(fd.as_raw_fd(), st.as_mut_ptr()) }.into())?;
    // SAFETY: fstatfs succeeded.
    Ok(unsafe { st.assume_init() })
}

/// pread into the spare capacity of `buf` (at most `count` bytes), growing
/// its length by what was read. No zero-filling: the kernel writes the
/// bytes straight into the response.
pub fn pread_append(
    fd: BorrowedFd<'_>,
    buf: &mut Vec<u8>,
    count: usize,
    off: u64,
) -> SysResult<usize> {
    let off = i64::try_from(off).map_err(|_| libc::EINVAL)?;
    buf.reserve(count);
    let spare = buf.spare_capacity_mut();
    let count = count.min(spare.len());
    // SAFETY: `spare` has room for `count` bytes; the kernel writes at
    // most `count` bytes there.
    let n = cvt(
        unsafe { libc::pread(fd.as_raw_fd(), spare.as_mut_ptr().cast(), count, off) }
            as libc::c_long,
    )? as usize;
    let n = n.min(count);
    // SAFETY: the kernel initialised the first `n` bytes of the spare capacity.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

pub fn pwrite(fd: BorrowedFd<'_>, data: &[u8], off: u64) -> SysResult<usize> {
    let off = i64::try_from(off).map_err(|_| libc::EINVAL)?;
    // SAFETY: valid buffer and length.
    let n = unsafe { libc::pwrite(fd.as_raw_fd(), data.as_ptr().cast(), data.len(), off) };
    Ok(cvt(n as libc::c_long)? as usize)
}

pub fn lseek_set(fd: BorrowedFd<'_>, off: u64) -> SysResult<()> {
    let off = i64::try_from(off).map_err(|_| libc::EINVAL)?;
    // SAFETY: plain integer arguments.
    cvt(unsafe { libc::lseek(fd.as_raw_fd(), off, libc::SEEK_SET) })?;
    Ok(())
}

/// getdents64 into `buf` (cleared first); returns the bytes filled.
pub fn getdents64(fd: BorrowedFd<'_>, buf: &mut Vec<u8>) -> SysResult<usize> {
    buf.clear();
    let cap = buf.capacity();
    // SAFETY: the buffer has `cap` bytes of capacity, the kernel writes at
    // most that many.
    let n =
        cvt(unsafe { libc::syscall(libc::SYS_getdents64, fd.as_raw_fd(), buf.as_mut_ptr(), cap) })?
            as usize;
    let n = n.min(cap);
    // SAFETY: the kernel initialised the first `n` bytes.
    unsafe { buf.set_len(n) };
    Ok(n)
}

/// The target of the symlink `fd` (an O_PATH descriptor of it).
pub fn readlink(fd: BorrowedFd<'_>) -> SysResult<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: empty path on an O_PATH symlink fd reads that link; the
    // buffer has the length passed.
    let n = cvt(unsafe {
        libc::readlinkat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    } as libc::c_long)? as usize;
    if n >= buf.len() {
        return Err(libc::ENAMETOOLONG);
    }
    buf.truncate(n);
    Ok(buf)
}

pub fn mkdirat(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> SysResult<()> {
    // SAFETY: valid dirfd and name.
    cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode as libc::mode_t) }.into())?;
    Ok(())
}

pub fn symlinkat(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> SysResult<()> {
    // SAFETY: valid strings and dirfd.
    cvt(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) }.into())?;
    Ok(())
}

pub fn unlinkat(dir: BorrowedFd<'_>, name: &CStr, flags: i32) -> SysResult<()> {
    // SAFETY: valid dirfd and name.
    cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) }.into())?;
    Ok(())
}

pub fn renameat(od: BorrowedFd<'_>, on: &CStr, nd: BorrowedFd<'_>, nn: &CStr) -> SysResult<()> {
    // SAFETY: valid dirfds and names.
    let r = unsafe { libc::renameat(od.as_raw_fd(), on.as_ptr(), nd.as_raw_fd(), nn.as_ptr()) };
    cvt(r.into())?;
    Ok(())
}

/// `linkat(od, on, nd, nn, 0)`: never follows a symlink.
pub fn linkat(od: BorrowedFd<'_>, on: &CStr, nd: BorrowedFd<'_>, nn: &CStr) -> SysResult<()> {
    // SAFETY: valid dirfds and names.
    let r = unsafe { libc::linkat(od.as_raw_fd(), on.as_ptr(), nd.as_raw_fd(), nn.as_ptr(), 0) };
    cvt(r.into())?;
    Ok(())
}

pub fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> SysResult<()> {
    // SAFETY: integer arguments.
    cvt(unsafe { libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) }.into())?;
    Ok(())
}

/// chown the inode of `fd` itself (works on O_PATH fds, symlinks included).
pub fn fchown_empty(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> SysResult<()> {
    // SAFETY: empty path with AT_EMPTY_PATH acts on `fd` itself.
    cvt(unsafe {
        libc::fchownat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            uid,
            gid,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    }
    .into())?;
    Ok(())
}

pub fn ftruncate(fd: BorrowedFd<'_>, size: u64) -> SysResult<()> {
    let size = i64::try_from(size).map_err(|_| libc::EINVAL)?;
    // SAFETY: integer arguments.
    cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), size) }.into())?;
    Ok(())
}

/// `utimensat(dir, name, times, AT_SYMLINK_NOFOLLOW)`.
pub fn utimens_at(dir: BorrowedFd<'_>, name: &CStr, times: &[libc::timespec; 2]) -> SysResult<()> {
    // SAFETY: valid dirfd, name, two timespecs.
    cvt(unsafe {
        libc::utimensat(
            dir.as_raw_fd(),
            name.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    }
    .into())?;
    Ok(())
}

pub fn fsync(fd: BorrowedFd<'_>, datasync: bool) -> SysResult<()> {
    // SAFETY: integer argument.
    let r = unsafe {
        if datasync {
            libc::fdatasync(fd.as_raw_fd())
        } else {
            libc::fsync(fd.as_raw_fd())
        }
    };
    cvt(r.into())?;
    Ok(())
}

/// Clear O_NONBLOCK (set while opening so a swapped-in FIFO cannot block).
pub fn clear_nonblock(fd: BorrowedFd<'_>) -> SysResult<()> {
    // SAFETY: fcntl with integer arguments.
    let fl = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) }.into())? as i32;
    if fl & libc::O_NONBLOCK != 0 {
        // SAFETY: as above.
        cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl & !libc::O_NONBLOCK) }.into())?;
    }
    Ok(())
}

pub fn geteuid() -> u32 {
    // SAFETY: no arguments, cannot fail.
    unsafe { libc::geteuid() }
}

pub fn getegid() -> u32 {
    // SAFETY: no arguments, cannot fail.
    unsafe { libc::getegid() }
}

/// chmod the inode of an `O_PATH` descriptor itself: fchmodat2 with
/// `AT_EMPTY_PATH` (Linux 6.6). ENOSYS where the kernel lacks it; the
/// caller then reopens the inode and uses fchmod.
pub fn fchmod_path(fd: BorrowedFd<'_>, mode: u32) -> SysResult<()> {
    // SAFETY: empty path with AT_EMPTY_PATH acts on `fd` itself.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fchmodat2,
            fd.as_raw_fd(),
            c"".as_ptr(),
            mode as libc::mode_t,
            libc::AT_EMPTY_PATH,
        )
    };
    cvt(r)?;
    Ok(())
}
