//! Acting inside the sandbox's network namespace from outside it.
//!
//! The sandbox's network namespace is owned by init's user namespace (U1).
//! The launcher (the owner of U1, or root) is privileged over U1, so a
//! process of the launcher that joins U1 and then the network namespace
//! can change the namespace's firewall and bind its low ports. The command
//! runs in a nested user namespace (U2) and has no capability over U1, so
//! it cannot undo what is done here.
//!
//! Joining a user namespace is refused to a multi-threaded process, so
//! everything here happens in a forked child: `command` (a program run
//! with `setns` in `pre_exec`, e.g. `nft`) and `fetch_socket` (a socket
//! made inside the namespace and passed back with `SCM_RIGHTS`). Both
//! children only make async-signal-safe system calls before `execve` or
//! `_exit`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Descriptors of init's user and network namespaces.
#[derive(Debug)]
pub struct NsFds {
    user: OwnedFd,
    net: OwnedFd,
}

fn open_ro(path: &str) -> io::Result<OwnedFd> {
    let c = std::ffi::CString::new(path).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: valid C string; the result is checked.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl NsFds {
    /// The namespaces of process `pid` (init, before it runs anything).
    pub fn of(pid: libc::pid_t) -> io::Result<Self> {
        Ok(NsFds {
            user: open_ro(&format!("/proc/{pid}/ns/user"))?,
            net: open_ro(&format!("/proc/{pid}/ns/net"))?,
        })
    }

    /// `program` run inside the namespaces (as root of U1).
    pub fn command(&self, program: &std::path::Path) -> Command {
        let (u, n) = (self.user.as_raw_fd(), self.net.as_raw_fd());
        let mut cmd = Command::new(program);
        // SAFETY: the closure runs in the forked child and only calls
        // setns(2), which is async-signal-safe, on descriptors that stay
        // open for the life of `self` (the caller waits for the child).
        unsafe {
            cmd.pre_exec(move || enter(u, n));
        }
        cmd
    }

    /// A socket made by `make` inside the namespaces, passed back.
    /// `make` runs in a forked child of a possibly multi-threaded process:
    /// it must only make system calls (no allocation, no locks) and return
    /// the new descriptor or `-errno`.
    pub fn fetch_socket(&self, make: fn() -> RawFd) -> io::Result<OwnedFd> {
        let (parent, child) = crate::sys::socketpair()?;
        let (u, n, c) = (
            self.user.as_raw_fd(),
            self.net.as_raw_fd(),
            child.as_raw_fd(),
        );
        // Everything the child needs is prepared before the fork.
        let mut byte = 0u8;
        let mut iov = libc::iovec {
            iov_base: (&mut byte as *mut u8).cast(),
            iov_len: 1,
        };
        let mut cbuf = [0u64; 4];
        // SAFETY: zeroed msghdr is valid; fields are set below.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE is arithmetic.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(4) } as _;
        // SAFETY: fork; the child below only makes system calls on
        // descriptors and stack buffers prepared above, then `_exit`s.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            // SAFETY: (whole block) raw system calls and CMSG arithmetic
            // within `cbuf`, which has room for one descriptor.
            unsafe {
                let code = match enter(u, n) {
                    Err(e) => e.raw_os_error().unwrap_or(libc::EIO),
                    Ok(()) => {
                        let fd = make();
                        if fd < 0 {
                            -fd
                        } else {
                            let cmsg = libc::CMSG_FIRSTHDR(&msg);
                            (*cmsg).cmsg_level = libc::SOL_SOCKET;
                            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
                            (*cmsg).cmsg_len = libc::CMSG_LEN(4) as _;
                            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
                            if libc::sendmsg(c, &msg, libc::MSG_NOSIGNAL) == 1 {
                                0
                            } else {
                                *libc::__errno_location()
                            }
                        }
                    }
                };
                libc::_exit(code);
            }
        }
        drop(child);
        let mut buf = [0u8; 1];
        let mut fds = Vec::new();
        let got = crate::sys::recv_with_fds(parent.as_raw_fd(), &mut buf, &mut fds);
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) != 0 {
            return Err(io::Error::from_raw_os_error(libc::WEXITSTATUS(status)));
        }
        got?;
        fds.pop()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EPROTO))
    }
}

/// Join the user namespace, then the network namespace.
fn enter(user: RawFd, net: RawFd) -> io::Result<()> {
    // SAFETY: setns on descriptors of namespaces; checked.
    if unsafe { libc::setns(user, libc::CLONE_NEWUSER) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::setns(net, libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The loopback interface up (the resolver binds 127.0.0.1 before init
/// brings it up itself) and a UDP socket bound to 127.0.0.1:53.
/// Async-signal-safe: system calls only. Returns the fd or `-errno`.
pub fn dns_socket() -> RawFd {
    // SAFETY: (whole block) plain system calls on stack buffers.
    unsafe {
        let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if s < 0 {
            return -*libc::__errno_location();
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        ifr.ifr_name[0] = b'l' as libc::c_char;
        ifr.ifr_name[1] = b'o' as libc::c_char;
        if libc::ioctl(s, libc::SIOCGIFFLAGS as _, &mut ifr) == 0 {
            ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            libc::ioctl(s, libc::SIOCSIFFLAGS as _, &ifr);
        }
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_port = 53u16.to_be();
        sa.sin_addr.s_addr = u32::from_be_bytes([127, 0, 0, 1]).to_be();
        if libc::bind(
            s,
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        ) != 0
        {
            let e = *libc::__errno_location();
            libc::close(s);
            return -e;
        }
        s
    }
}

/// An NFLOG socket bound to group [`super::nft::LOG_GROUP`] in the
/// namespace, copying the first 128 bytes of each logged packet.
/// Async-signal-safe: system calls on stack buffers. The fd or `-errno`.
pub fn nflog_socket() -> RawFd {
    const NFNL_SUBSYS_ULOG: u16 = 4;
    const NFULNL_MSG_CONFIG: u16 = 1;
    let group = super::nft::LOG_GROUP.to_be_bytes();
    let ty = ((NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG).to_ne_bytes();
    let flags = ((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes();
    // nlmsghdr (16) + nfgenmsg (4) + one attribute (8 or 12).
    let mut bind = [0u8; 28];
    bind[0..4].copy_from_slice(&28u32.to_ne_bytes());
    bind[4..6].copy_from_slice(&ty);
    bind[6..8].copy_from_slice(&flags);
    bind[18..20].copy_from_slice(&group);
    bind[20..22].copy_from_slice(&5u16.to_ne_bytes()); // nla_len
    bind[22..24].copy_from_slice(&1u16.to_ne_bytes()); // NFULA_CFG_CMD
    bind[24] = 1; // NFULNL_CFG_CMD_BIND
    let mut mode = [0u8; 40];
    mode[0..4].copy_from_slice(&40u32.to_ne_bytes());
    mode[4..6].copy_from_slice(&ty);
    mode[6..8].copy_from_slice(&flags);
    mode[8..12].copy_from_slice(&1u32.to_ne_bytes()); // seq
    mode[18..20].copy_from_slice(&group);
    mode[20..22].copy_from_slice(&10u16.to_ne_bytes());
    mode[22..24].copy_from_slice(&2u16.to_ne_bytes()); // NFULA_CFG_MODE
    mode[24..28].copy_from_slice(&128u32.to_be_bytes()); // copy range
    mode[28] = 2; // NFULNL_COPY_PACKET
                  // Flush after 10 ms (the default batches packets for a second).
    mode[32..34].copy_from_slice(&8u16.to_ne_bytes());
    mode[34..36].copy_from_slice(&4u16.to_ne_bytes()); // NFULA_CFG_TIMEOUT, 1/100 s
    mode[36..40].copy_from_slice(&1u32.to_be_bytes());
    // SAFETY: (whole block) plain system calls on stack buffers.
    unsafe {
        let s = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_NETFILTER,
        );
        if s < 0 {
            return -*libc::__errno_location();
        }
        let mut sa: libc::sockaddr_nl = std::mem::zeroed();
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        let fail = |s: RawFd| -> RawFd {
            let e = *libc::__errno_location();
            libc::close(s);
            -e
        };
        if libc::bind(
            s,
            (&sa as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        ) != 0
        {
            return fail(s);
        }
        for msg in [&bind[..], &mode[..]] {
            if libc::send(s, msg.as_ptr().cast(), msg.len(), 0) != msg.len() as isize {
                return fail(s);
            }
            // The kernel's ack: an nlmsgerr whose error field is 0.
            let mut ack = [0u8; 256];
            let n = libc::recv(s, ack.as_mut_ptr().cast(), ack.len(), 0);
            if n < 20 {
                return fail(s);
            }
            let err = i32::from_ne_bytes([ack[16], ack[17], ack[18], ack[19]]);
            if err != 0 {
                libc::close(s);
                return err;
            }
        }
        s
    }
}
