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
    let n = sandbox_proto::unix::send_with_fds(CTRL_FD, &frame, &[fd])
        .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
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

    /// Take the `n` oldest descriptors received (those attached to the
    /// message just returned); fewer when fewer arrived.
    pub fn take_first(&mut self, n: usize) -> Vec<std::os::fd::OwnedFd> {
        let n = n.min(self.fds.len());
        self.fds.drain(..n).collect()
    }

    /// Messages already buffered, without reading.
    pub fn buffered(&mut self) -> Option<HostMsg> {
        self.buf.next_msg::<HostMsg>().ok().flatten()
    }
}

/// recvmsg(2) on the channel, collecting any `SCM_RIGHTS` descriptors.
fn recv_with_fds(buf: &mut [u8], fds: &mut Vec<std::os::fd::OwnedFd>) -> Result<usize, Errno> {
    sandbox_proto::unix::recv_with_fds(CTRL_FD, buf, fds)
        .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
}
