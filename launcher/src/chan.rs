//! The launcher's end of the control channel to `sandbox-init`.
//!
//! Everything read here may come from a hostile guest (micro-VM backend),
//! so decoding goes through `sandbox_proto::FrameBuf` with its size limits
//! and any unexpected message is an error, never a panic.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use sandbox_proto::{encode, FrameBuf, HostMsg, InitMsg, ProtoError};

use crate::sys;

#[derive(Debug, thiserror::Error)]
pub enum ChanError {
    #[error("control channel: {0}")]
    Io(#[from] io::Error),
    #[error("control channel: {0}")]
    Proto(#[from] ProtoError),
    #[error("sandbox-init closed the control channel")]
    Closed,
}

#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
    buf: FrameBuf,
    fds: VecDeque<OwnedFd>,
    closed: bool,
}

impl Channel {
    pub fn new(fd: OwnedFd) -> Self {
        Self {
            fd,
            buf: FrameBuf::new(),
            fds: VecDeque::new(),
            closed: false,
        }
    }

    pub fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    pub fn send(&self, msg: &HostMsg) -> Result<(), ChanError> {
        let frame = encode(msg)?;
        sys::write_all(self.fd.as_raw_fd(), &frame)?;
        Ok(())
    }

    /// Send a message with descriptors attached to its first byte.
    pub fn send_with_fds(&self, msg: &HostMsg, fds: &[i32]) -> Result<(), ChanError> {
        if fds.is_empty() {
            return self.send(msg);
        }
        let frame = encode(msg)?;
        let sent = sys::send_with_fds(self.fd.as_raw_fd(), &frame, fds)?;
        sys::write_all(self.fd.as_raw_fd(), &frame[sent..])?;
        Ok(())
    }

    /// Read what is available once (blocking if nothing is). Returns false
    /// at end of stream.
    pub fn fill(&mut self) -> Result<bool, ChanError> {
        if self.closed {
            return Ok(false);
        }
        let mut chunk = [0u8; 8192];
        let mut got = Vec::new();
        let n = sys::recv_with_fds(self.fd.as_raw_fd(), &mut chunk, &mut got)?;
        self.fds.extend(got);
        if n == 0 {
            self.closed = true;
            return Ok(false);
        }
        self.buf.push(&chunk[..n])?;
        Ok(true)
    }

    /// The next buffered message, without reading.
    pub fn next_msg(&mut self) -> Result<Option<InitMsg>, ChanError> {
        Ok(self.buf.next_msg::<InitMsg>()?)
    }

    /// Block until a whole message arrives.
    pub fn recv(&mut self) -> Result<InitMsg, ChanError> {
        loop {
            if let Some(m) = self.next_msg()? {
                return Ok(m);
            }
            if !self.fill()? {
                return Err(ChanError::Closed);
            }
        }
    }

    /// A file descriptor that arrived with the messages, oldest first.
    pub fn take_fd(&mut self) -> Option<OwnedFd> {
        self.fds.pop_front()
    }
}
