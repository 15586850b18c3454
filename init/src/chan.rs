//! The control channel to the launcher (fd 3): framed `proto` messages,
//! optionally carrying one file descriptor (`SCM_RIGHTS`).

use std::os::fd::RawFd;

use sandbox_proto::{encode, FrameBuf, HostMsg, InitMsg};

use crate::sys::{self, Errno};

/// The fd the launcher hands the control socket on.
pub const CTRL_FD: RawFd = 3;

/// Send one message; `fd`, when given, rides along with its first byte.
pub fn send(msg: &InitMsg, fd: Option<RawFd>) -> Result<(), Errno> {
    let frame = encode(msg).map_err(|_| libc::EINVAL)?;
    let Some(fd) = fd else {
        return sys::write_all(CTRL_FD, &frame);
    };
    let mut iov = libc::iovec {
        iov_base: frame.as_ptr() as *mut libc::c_void,
        iov_len: frame.len(),
    };
    // Room for one fd of control data, aligned like cmsghdr.
    let mut cbuf = [0u64; 4];
    // SAFETY: zeroed msghdr is valid; fields are filled in below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE is a pure computation.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as _;
    // SAFETY: msg_control points at `cbuf`, which is large enough for one
    // cmsghdr carrying one fd; CMSG_FIRSTHDR/CMSG_DATA stay inside it.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
    }
    // SAFETY: `msg` describes valid buffers for the duration of the call.
    let n = unsafe { libc::sendmsg(CTRL_FD, &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(sys::errno());
    }
    // The fd went with the first chunk; the rest is plain bytes.
    sys::write_all(CTRL_FD, &frame[n as usize..])
}

/// Incoming half of the channel.
#[derive(Debug, Default)]
pub struct Receiver {
    buf: FrameBuf,
    /// Descriptors received so far (attached to `Start`).
    fds: Vec<std::os::fd::OwnedFd>,
}

/// What reading the channel produced.
#[derive(Debug)]
pub enum Recv {
    Msg(HostMsg),
    /// The launcher closed the channel (or died).
    Closed,
    /// The launcher sent something that is not a valid message.
    Bad,
}

impl Receiver {
    /// Read once from the channel (blocking) and return the next message if
    /// one is complete; `Ok(None)` when more bytes are needed.
    pub fn read_once(&mut self) -> Recv {
        loop {
            match self.buf.next_msg::<HostMsg>() {
                Ok(Some(m)) => return Recv::Msg(m),
                Ok(None) => {}
                Err(_) => return Recv::Bad,
            }
            let mut chunk = [0u8; 16 * 1024];
            match recv_with_fds(&mut chunk, &mut self.fds) {
                Ok(0) | Err(_) => return Recv::Closed,
                Ok(n) => {
                    if self.buf.push(&chunk[..n]).is_err() {
                        return Recv::Bad;
                    }
                }
            }
        }
    }

    /// Take the descriptors received with the messages so far.
    pub fn take_fds(&mut self) -> Vec<std::os::fd::OwnedFd> {
        std::mem::take(&mut self.fds)
    }

    /// Messages already buffered, without reading.
    pub fn buffered(&mut self) -> Option<HostMsg> {
        self.buf.next_msg::<HostMsg>().ok().flatten()
    }
}

/// Most descriptors accepted with one message.
const MAX_FDS: usize = 64;

/// recvmsg(2) on the channel, collecting any `SCM_RIGHTS` descriptors.
fn recv_with_fds(buf: &mut [u8], fds: &mut Vec<std::os::fd::OwnedFd>) -> Result<usize, Errno> {
    use std::os::fd::FromRawFd;
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut cbuf = [0u64; 40];
    // SAFETY: zeroed msghdr is valid; fields set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf) as _;
    let n = loop {
        // SAFETY: `msg` points at live buffers.
        let n = unsafe { libc::recvmsg(CTRL_FD, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let e = sys::errno();
        if e != libc::EINTR {
            return Err(e);
        }
    };
    // SAFETY: walking the control messages the kernel wrote into `cbuf`.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                let len = ((*cmsg).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
                for i in 0..len / std::mem::size_of::<RawFd>() {
                    let fd =
                        std::os::fd::OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i)));
                    if fds.len() < MAX_FDS {
                        fds.push(fd);
                    }
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(n)
}
