//! VM mode: `sandbox-init` as PID 1 of the micro-VM guest.
//!
//! The kernel starts `/init` from the initramfs the launcher built (only
//! `/init` and the directories of `sandbox_proto::vm::INITRAMFS_DIRS`, plus the kernel's own
//! `/dev/console` and `/root`), with the arguments that follow `--` on the
//! kernel command line. The launcher ends the command line with
//! `-- --vm`, so argv is `["/init", "--vm"]`; VM mode is chosen when any
//! argument after argv\[0\] is exactly [`sandbox_proto::vm::INIT_VM_ARG`]
//! (the kernel may put unknown boot options without `=` before it), see
//! [`requested`]. The namespace backend starts init with argv\[0\] alone.
//!
//! Before the common flow of `main.rs` (Hello, Start, setup, spawn,
//! supervise, Exited), [`boot`] does the VM-only steps, in this order:
//!
//! 1. `vm-mount`: a tmpfs becomes the root (the initramfs' rootfs cannot be
//!    `pivot_root`ed): mounted on `/newroot`, `chdir` into it,
//!    `mount(".", "/", MS_MOVE)`, `chroot(".")`. In it: devtmpfs on `/dev`
//!    (the host-view device nodes setup binds into the sandbox's `/dev`),
//!    procfs on `/proc` (setup addresses mount points as
//!    `/proc/self/fd/N`), and `/tmp` as the staging directory of the new
//!    root. Then `/dev/kmsg` is opened for the console log.
//! 2. `vm-vsock`: the control channel, vsock CID 2 port 1024, on fd 3 (so
//!    `chan.rs` works unchanged; nothing is ever attached to its frames),
//!    then the command's stdio: port 1025 on fd 0 (`SHUT_WR`), 1026 on
//!    fd 1 and 1027 on fd 2 (`SHUT_RD`). The command inherits them
//!    directly; with a tty init relays them to the pty (`relay.rs`).
//!
//! A failure of step 1 or of the stdio connections is reported as a
//! `SetupFailed` right after `Hello`. Without a control channel there is
//! nobody to tell: one line goes to the kernel log (`/dev/kmsg`, at error
//! level so that it passes `quiet`; the console if devtmpfs is missing)
//! and the guest reboots.
//!
//! The end ([`shutdown`]), on every path once [`boot`] was called:
//! init's copies of the stdio streams are closed (the host sees end of
//! file), init waits up to [`CLOSE_WAIT`] for the host to close the control
//! channel (a sign that it has read everything), `sync()`s and calls
//! `reboot(RB_AUTOBOOT)`: with `reboot=t` a triple fault, which the VMM sees
//! as `KVM_EXIT_SHUTDOWN`. Never `RB_POWER_OFF` (it halts without an exit,
//! see kernel-config/README.md). A panic is caught, reported when possible
//! and ends the same way: PID 1 must never exit (the kernel would panic).
//!
//! Hostile input: none beyond the common flow; what the host sends on the
//! control channel is decoded by `sandbox_proto` (never panics).

use std::ffi::{CStr, OsString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use sandbox_proto::vm::{
    CONTROL_PORT, HOST_CID, INIT_VM_ARG, STDERR_PORT, STDIN_PORT, STDOUT_PORT,
};

use crate::chan;
use crate::setup::StepError;
use crate::sys::{self, Errno};

/// How long init waits for the host to close the control channel after
/// the last message, before it reboots anyway.
pub const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// How long init waits for the host to accept a vsock connection (the
/// socket's connect timeout, and the deadline of retries for a host that
/// starts listening late). A loaded host under nested virtualization can
/// take seconds; the launcher's `--timeout` bounds the whole run anyway.
const CONNECT_FOR: Duration = Duration::from_secs(30);

/// The fd of the kernel log (or the console) for [`log`], -1 when none.
static LOG_FD: AtomicI32 = AtomicI32::new(-1);

/// Whether argv asks for VM mode (see the module docs).
pub fn requested(args: &[OsString]) -> bool {
    args.iter()
        .skip(1)
        .any(|a| a.as_bytes() == INIT_VM_ARG.as_bytes())
}

/// One line in the kernel log (error level, so that it reaches the serial
/// console under `quiet`).
pub fn log(msg: &str) {
    let fd = LOG_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let line = format!("<3>sandbox-init: {msg}\n");
        let _ = sys::write_all(fd, line.as_bytes());
    }
}

/// A milestone in the kernel log at debug level (kept out of the console
/// by `quiet`, readable with `dmesg`), when the kernel command line set
/// `SANDBOX_INIT_TRACE=1` (the kernel passes it to init's environment;
/// `SANDBOX_VM_CMDLINE` adds it, docs/vm.md). For boot-time profiling.
pub fn trace(what: &str) {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *ON.get_or_init(|| std::env::var_os("SANDBOX_INIT_TRACE").is_some_and(|v| v == "1")) {
        let fd = LOG_FD.load(Ordering::Relaxed);
        if fd >= 0 {
            let line = format!("<7>sandbox-init: trace {what}\n");
            let _ = sys::write_all(fd, line.as_bytes());
        }
    }
}

fn set_log_fd(fd: OwnedFd) {
    let old = LOG_FD.swap(std::os::fd::IntoRawFd::into_raw_fd(fd), Ordering::Relaxed);
    if old >= 0 {
        // SAFETY: `old` came from an OwnedFd we leaked into LOG_FD.
        drop(unsafe { OwnedFd::from_raw_fd(old) });
    }
}

/// The VM-only steps before `Hello`. Returns the failure to report after
/// `Hello`, if any; does not return when the control channel cannot be
/// connected (the guest reboots).
pub fn boot() -> Option<StepError> {
    // Until /dev/kmsg exists, log lines go to the console the kernel opened
    // as fds 0-2 (they are replaced by the vsock streams below).
    // SAFETY: F_DUPFD_CLOEXEC returns a new fd or -1.
    let console = unsafe { libc::fcntl(2, libc::F_DUPFD_CLOEXEC, 10) };
    if console >= 0 {
        // SAFETY: a fresh descriptor owned by nobody else.
        set_log_fd(unsafe { OwnedFd::from_raw_fd(console) });
    }
    std::panic::set_hook(Box::new(|info| log(&format!("panic: {info}"))));
    trace("init started");

    let mounted = switch_root();
    trace("root switched");
    if mounted.is_ok() {
        if let Ok(kmsg) = sys::open(c"/dev/kmsg", libc::O_WRONLY) {
            // Moved above the standard numbers: fd 3 is the control
            // channel's place, and open(2) may just have returned 3.
            // SAFETY: F_DUPFD_CLOEXEC returns a new fd or -1.
            let high = unsafe { libc::fcntl(kmsg.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
            if high >= 0 {
                // SAFETY: a fresh descriptor owned by nobody else.
                set_log_fd(unsafe { OwnedFd::from_raw_fd(high) });
            }
        }
    }
    trace("kmsg open");
    if let Err(e) = connect_onto(CONTROL_PORT, chan::CTRL_FD, None) {
        log(&format!(
            "cannot connect the control channel (vsock CID {HOST_CID} port {CONTROL_PORT}): \
             errno {e}; rebooting"
        ));
        reboot();
    }
    let stdio = [
        (STDIN_PORT, 0, libc::SHUT_WR),
        (STDOUT_PORT, 1, libc::SHUT_RD),
        (STDERR_PORT, 2, libc::SHUT_RD),
    ]
    .into_iter()
    .try_for_each(|(port, fd, how)| {
        connect_onto(port, fd, Some(how)).map_err(|e| {
            StepError::new("vm-vsock", format!("vsock:{HOST_CID}:{port}"), e)
                .detail("cannot connect the command's stdio stream to the host")
        })
    });
    trace("vsock connected");
    mounted.err().or(stdio.err())
}

/// How often init connects again after its connections were reset
/// before `Start` (one resume needs one).
pub const MAX_RECONNECTS: u32 = 3;

/// Connect the control channel and the stdio streams again, onto the
/// same descriptor numbers: the guest was resumed from a snapshot and
/// the host's vsock transport reset dropped every connection. Errors are
/// errnos.
pub fn reconnect() -> Result<(), Errno> {
    connect_onto(CONTROL_PORT, chan::CTRL_FD, None)?;
    for (port, fd, how) in [
        (STDIN_PORT, 0, libc::SHUT_WR),
        (STDOUT_PORT, 1, libc::SHUT_RD),
        (STDERR_PORT, 2, libc::SHUT_RD),
    ] {
        connect_onto(port, fd, Some(how))?;
    }
    Ok(())
}

/// `RNDADDENTROPY`: `_IOW('R', 0x03, int[2])`.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `RNDRESEEDCRNG`: `_IO('R', 0x07)`.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// Clone safety of a guest that may have been resumed from a snapshot
/// other guests share (docs/snapshots.md): the host's fresh entropy is
/// added to the random pool (credited) and the CRNG reseeded from it, so
/// that no two guests produce the same random numbers; the wall clock is
/// set from the host's. Failures are logged, not fatal: the guest is still
/// isolated, and the kernel log says what went wrong.
pub fn make_unique(v: &sandbox_proto::VmStart) {
    let entropy = &v.entropy[..v.entropy.len().min(512)];
    if !entropy.is_empty() {
        match sys::open(c"/dev/urandom", libc::O_WRONLY) {
            Ok(fd) => {
                // struct rand_pool_info { int entropy_count; int buf_size; u32 buf[]; }
                let mut info = Vec::with_capacity(8 + entropy.len());
                info.extend_from_slice(&((entropy.len() * 8) as i32).to_ne_bytes());
                info.extend_from_slice(&(entropy.len() as i32).to_ne_bytes());
                info.extend_from_slice(entropy);
                // SAFETY: the ioctl reads the header and buf_size bytes
                // after it, all inside `info`.
                let r = unsafe { libc::ioctl(fd.as_raw_fd(), RNDADDENTROPY as _, info.as_ptr()) };
                if r != 0 {
                    log(&format!("RNDADDENTROPY failed: errno {}", sys::errno()));
                }
                // SAFETY: an ioctl without argument.
                let r = unsafe { libc::ioctl(fd.as_raw_fd(), RNDRESEEDCRNG as _, 0) };
                if r != 0 {
                    log(&format!("RNDRESEEDCRNG failed: errno {}", sys::errno()));
                }
            }
            Err(e) => log(&format!("cannot open /dev/urandom: errno {e}")),
        }
    }
    let (sec, nsec) = v.realtime;
    if sec > 0 && nsec < 1_000_000_000 {
        let ts = libc::timespec {
            tv_sec: sec as _,
            tv_nsec: nsec as _,
        };
        // SAFETY: a valid timespec.
        if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
            log(&format!("clock_settime failed: errno {}", sys::errno()));
        }
    }
}

fn step(step: &'static str, path: &'static str) -> impl Fn(Errno) -> StepError {
    move |e| StepError::new(step, path, e)
}

fn mkdir(path: &CStr, mode: libc::mode_t) -> Result<(), Errno> {
    // SAFETY: valid C string.
    if unsafe { libc::mkdir(path.as_ptr(), mode) } == 0 || sys::errno() == libc::EEXIST {
        Ok(())
    } else {
        Err(sys::errno())
    }
}

/// Step `vm-mount` (see the module docs).
fn switch_root() -> Result<(), StepError> {
    mkdir(c"/newroot", 0o755).map_err(step("vm-mount", "/newroot"))?;
    sys::mount(
        Some(c"tmpfs"),
        c"/newroot",
        Some(c"tmpfs"),
        libc::MS_NOSUID,
        Some(c"mode=755"),
    )
    .map_err(step("vm-mount", "/newroot"))?;
    // SAFETY: valid C string.
    sys::check(unsafe { libc::chdir(c"/newroot".as_ptr()) }.into())
        .map_err(step("vm-mount", "/newroot"))?;
    sys::mount(Some(c"."), c"/", None, libc::MS_MOVE, None).map_err(step("vm-mount", "/"))?;
    // SAFETY: valid C strings.
    sys::check(unsafe { libc::chroot(c".".as_ptr()) }.into()).map_err(step("vm-mount", "/"))?;
    // SAFETY: valid C string.
    sys::check(unsafe { libc::chdir(c"/".as_ptr()) }.into()).map_err(step("vm-mount", "/"))?;
    for (dir, mode) in [(c"/dev", 0o755), (c"/proc", 0o555), (c"/tmp", 0o755)] {
        mkdir(dir, mode).map_err(|e| StepError::new("vm-mount", dir.to_bytes(), e))?;
    }
    sys::mount(
        Some(c"devtmpfs"),
        c"/dev",
        Some(c"devtmpfs"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some(c"mode=755"),
    )
    .map_err(|e| {
        StepError::new("vm-mount", "/dev", e).detail(if e == libc::ENODEV {
            "the guest kernel has no devtmpfs (CONFIG_DEVTMPFS)"
        } else {
            ""
        })
    })?;
    sys::mount(
        Some(c"proc"),
        c"/proc",
        Some(c"proc"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        None,
    )
    .map_err(step("vm-mount", "/proc"))
}

/// Connect a vsock stream to the host's `port` and put it on `target`
/// (then half-closed with `how`).
fn connect_onto(port: u32, target: RawFd, how: Option<libc::c_int>) -> Result<(), Errno> {
    let sock = connect(port)?;
    if sock.as_raw_fd() == target {
        // The socket got the wanted number itself (it was free): keep it,
        // without close-on-exec, as dup2 would have left it.
        let fd = std::os::fd::IntoRawFd::into_raw_fd(sock);
        // SAFETY: clearing the fd flags of the descriptor we just kept.
        sys::check(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }.into())?;
    } else {
        // SAFETY: dup2 onto a standard fd number; clears close-on-exec
        // there. `sock` itself is closed when dropped.
        sys::check(unsafe { libc::dup2(sock.as_raw_fd(), target) }.into())?;
    }
    if let Some(how) = how {
        // SAFETY: shutdown of a connected socket we own.
        sys::check(unsafe { libc::shutdown(target, how) }.into())?;
    }
    Ok(())
}

/// One stream of a `sandbox exec` (ports `sandbox_proto::vm::exec_ports`,
/// which the host opened before it sent the request), half-closed by
/// `how` as the command's own stdio is.
pub fn connect_exec_stream(port: u32, how: libc::c_int) -> Result<OwnedFd, Errno> {
    let sock = connect(port)?;
    // SAFETY: shutdown of a connected socket we own.
    sys::check(unsafe { libc::shutdown(sock.as_raw_fd(), how) }.into())?;
    Ok(sock)
}

fn connect(port: u32) -> Result<OwnedFd, Errno> {
    let deadline = Instant::now() + CONNECT_FOR;
    loop {
        match connect_once(port) {
            Ok(fd) => return Ok(fd),
            Err(e)
                if matches!(
                    e,
                    libc::ECONNRESET | libc::ECONNREFUSED | libc::ETIMEDOUT | libc::EINTR
                ) && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e),
        }
    }
}

/// `SO_VM_SOCKETS_CONNECT_TIMEOUT` (the `struct timeval` form; on 64-bit
/// the old and new layouts are the same).
const SO_VM_SOCKETS_CONNECT_TIMEOUT: libc::c_int = 6;

fn connect_once(port: u32) -> Result<OwnedFd, Errno> {
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    let fd = sys::check(fd.into())? as RawFd;
    // SAFETY: a fresh descriptor owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // A busy host (or nested virtualization) may answer later than the
    // kernel's default of 2 s; a retried connect would be refused, since
    // the launcher takes one connection per port.
    let timeout = libc::timeval {
        tv_sec: CONNECT_FOR.as_secs() as _,
        tv_usec: 0,
    };
    // SAFETY: setsockopt with a valid timeval of the given size.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::AF_VSOCK,
            SO_VM_SOCKETS_CONNECT_TIMEOUT,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    // SAFETY: zeroed sockaddr_vm is valid; fields set below.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = HOST_CID;
    addr.svm_port = port;
    // SAFETY: `addr` is a valid sockaddr_vm of the given size.
    let r = unsafe {
        libc::connect(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_vm).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    sys::check(r.into())?;
    Ok(sock)
}

/// The end of every run in VM mode (see the module docs). `code` is init's
/// own status (0 after `Exited`), logged when it is not 0.
pub fn shutdown(code: i32) -> ! {
    for fd in 0..3 {
        // SAFETY: closing init's own copies of the stdio streams (or
        // /dev/null); nothing else uses these numbers any more.
        unsafe { libc::close(fd) };
    }
    if code != 0 {
        log(&format!("init ends with status {code}; rebooting"));
    }
    trace("shutting down");
    wait_closed(chan::CTRL_FD, CLOSE_WAIT);
    trace("channel closed; rebooting");
    reboot()
}

/// Wait until the peer closed `fd` (end of file, hang-up or an error), or
/// `limit` passed. Whatever still arrives is read and dropped.
fn wait_closed(fd: RawFd, limit: Duration) {
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        let mut p = [libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        }];
        // Rounded up, so that the deadline has passed when poll times out.
        let ms = (left.as_millis() + 1).min(i32::MAX as u128) as i32;
        // SAFETY: `p` is a valid array of one pollfd.
        let n = unsafe { libc::poll(p.as_mut_ptr(), 1, ms) };
        if n == 0 || (n < 0 && sys::errno() == libc::EINTR) {
            continue;
        }
        if n < 0 || p[0].revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
            return;
        }
        match sys::read(fd, &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// `sync()` and `reboot(RB_AUTOBOOT)`. Should reboot fail, init exits,
/// which panics the guest kernel: with `panic=-1` that is a reset too.
pub fn reboot() -> ! {
    // SAFETY: plain system calls.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
    }
    log(&format!(
        "reboot(RB_AUTOBOOT) failed: errno {}",
        sys::errno()
    ));
    // SAFETY: _exit is always safe.
    unsafe { libc::_exit(1) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn vm_mode_only_with_the_flag() {
        assert!(requested(&args(&["/init", "--vm"])));
        // Unknown boot options the kernel passes on come first.
        assert!(requested(&args(&["/init", "splash", "--vm"])));
        // The namespace backend: argv[0] only.
        assert!(!requested(&args(&["sandbox-init"])));
        assert!(!requested(&args(&[])));
        // argv[0] never counts, and near misses are not the flag.
        assert!(!requested(&args(&["--vm"])));
        assert!(!requested(&args(&["/init", "--vm=1", "-vm", "--VM", "vm"])));
    }

    #[test]
    fn the_initramfs_has_the_tmpfs_mount_point() {
        assert!(sandbox_proto::vm::INITRAMFS_DIRS.contains(&"newroot"));
    }

    #[test]
    fn wait_closed_sees_the_peer_close_and_times_out() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        use std::io::Write;
        (&b).write_all(b"late message").unwrap();
        drop(b);
        let t = Instant::now();
        wait_closed(a.as_raw_fd(), Duration::from_secs(5));
        assert!(t.elapsed() < Duration::from_secs(2));

        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let t = Instant::now();
        wait_closed(a.as_raw_fd(), Duration::from_millis(200));
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(200) && took < Duration::from_secs(2));
    }
}
