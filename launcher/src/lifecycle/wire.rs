//! The messages on a sandbox's control socket, between a client command
//! (`sandbox stop`, `kill`, `exec`) and the supervising launcher. Both ends
//! are this binary, but the supervisor still treats requests as input to
//! check: a frame is a little-endian `u32` length and a JSON payload, at
//! most [`MAX_REQUEST`] bytes, and descriptors ride with its first byte.

use std::io;
use std::os::fd::{OwnedFd, RawFd};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Largest request or reply (argv and environment of an exec included).
pub const MAX_REQUEST: usize = 4 << 20;

/// Client -> supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// SIGTERM to the command; SIGKILL to the whole sandbox after
    /// `grace_ms`. The reply (`Exited`) comes when the sandbox has ended.
    Stop { grace_ms: u64 },
    /// Deliver a signal (SIGKILL ends the whole sandbox at once).
    Kill { signal: i32 },
    /// Start a process in the sandbox. Without `tty`, its stdin, stdout and
    /// stderr are attached (three descriptors).
    Exec(ExecRequest),
    /// Forward a signal to this connection's exec'd process.
    Signal { signal: i32 },
    /// A pty's new size (exec with a terminal).
    Resize { rows: u16, cols: u16 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ExecRequest {
    pub argv: Vec<Vec<u8>>,
    /// `KEY=VALUE` entries added to (or replacing those of) the command's
    /// environment.
    pub env: Vec<Vec<u8>>,
    pub cwd: Option<Vec<u8>>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Rows and columns of a pty; its master comes back with `Started`.
    pub tty: Option<(u16, u16)>,
}

/// Supervisor -> client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    Ok,
    /// The exec'd process runs (with a pty: the master is attached).
    Started {
        pid: i32,
    },
    /// The exec'd process, or (for `Stop`) the sandbox, ended with this
    /// exit status (128+N for signal N).
    Exited {
        code: i32,
    },
    /// The request failed; `code` is the exit status the client uses.
    Error {
        message: String,
        code: i32,
    },
}

pub fn encode<T: Serialize>(msg: &T) -> io::Result<Vec<u8>> {
    let body =
        serde_json::to_vec(msg).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    if body.len() > MAX_REQUEST {
        return Err(io::Error::from_raw_os_error(libc::E2BIG));
    }
    let mut out = (body.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(&body);
    Ok(out)
}

/// Send one message on a (blocking) socket, `fds` attached.
pub fn send<T: Serialize>(sock: RawFd, msg: &T, fds: &[RawFd]) -> io::Result<()> {
    let frame = encode(msg)?;
    let sent = if fds.is_empty() {
        0
    } else {
        crate::sys::send_with_fds(sock, &frame, fds)?
    };
    crate::sys::write_all(sock, &frame[sent..])
}

/// Reassembles frames from a stream and keeps the descriptors received.
#[derive(Debug, Default)]
pub struct Reader {
    buf: Vec<u8>,
    pub fds: Vec<OwnedFd>,
    pub closed: bool,
}

impl Reader {
    /// Read once (the socket may be non-blocking). Returns false at end of
    /// stream or on an error.
    pub fn fill(&mut self, sock: RawFd) -> bool {
        let mut chunk = [0u8; 16384];
        match crate::sys::recv_with_fds(sock, &mut chunk, &mut self.fds) {
            Ok(0) => {
                self.closed = true;
                false
            }
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => true,
            Err(_) => {
                self.closed = true;
                false
            }
        }
    }

    /// The next complete message; `Err` for an oversized or malformed one.
    pub fn next_msg<T: DeserializeOwned>(&mut self) -> Result<Option<T>, String> {
        let Some(h) = self.buf.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        if len > MAX_REQUEST {
            return Err(format!("message of {len} bytes is over the limit"));
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let msg = serde_json::from_slice(&self.buf[4..4 + len]).map_err(|e| e.to_string());
        self.buf.drain(..4 + len);
        msg.map(Some)
    }

    /// Block until one message arrives (blocking socket).
    pub fn recv<T: DeserializeOwned>(&mut self, sock: RawFd) -> Result<Option<T>, String> {
        loop {
            if let Some(m) = self.next_msg()? {
                return Ok(Some(m));
            }
            if self.closed || !self.fill(sock) {
                return Ok(None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_garbage_is_refused() {
        let req = Request::Exec(ExecRequest {
            argv: vec![b"ls".to_vec(), vec![0xff]],
            tty: Some((24, 80)),
            ..Default::default()
        });
        let mut r = Reader {
            buf: encode(&req).unwrap(),
            ..Default::default()
        };
        r.buf.extend(encode(&Request::Kill { signal: 9 }).unwrap());
        assert_eq!(r.next_msg::<Request>().unwrap(), Some(req));
        assert_eq!(
            r.next_msg::<Request>().unwrap(),
            Some(Request::Kill { signal: 9 })
        );
        assert_eq!(r.next_msg::<Request>().unwrap(), None);
        r.buf = u32::MAX.to_le_bytes().to_vec();
        assert!(r.next_msg::<Request>().is_err());
        r.buf = vec![2, 0, 0, 0, b'{', b'x'];
        assert!(r.next_msg::<Request>().is_err());
    }
}
