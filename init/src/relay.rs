//! Relayed stdio for labelled runs: a command with its own MCS categories
//! may not use the caller's pipes when they carry a category range, so it
//! gets sockets made at level s0 (see `command::relay_sockets`) and init
//! copies between them and the caller's stdio.
//!
//! Single-threaded and never blocked by the command: stdin is read only
//! when what was read before has been written, with non-blocking writes;
//! output is copied when it is readable.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::sys;

#[derive(Debug)]
pub struct Relay {
    /// The caller's stdin, stdout, stderr (duplicates taken before init
    /// points its own 0-2 at /dev/null).
    caller: [Option<OwnedFd>; 3],
    /// init's ends of the command's stdin, stdout, stderr sockets.
    ends: [Option<OwnedFd>; 3],
    /// Bytes read from the caller's stdin, not yet written.
    pending: Vec<u8>,
}

fn dup_cloexec(fd: RawFd) -> Option<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC returns a new fd or -1.
    let n = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10) };
    // SAFETY: a fresh descriptor owned by nobody else.
    (n >= 0).then(|| unsafe { OwnedFd::from_raw_fd(n) })
}

impl Relay {
    pub fn new(ends: [OwnedFd; 3]) -> Self {
        let [i, o, e] = ends;
        // SAFETY: making init's end of the stdin socket non-blocking.
        unsafe {
            let fl = libc::fcntl(i.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(i.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
        Relay {
            caller: [dup_cloexec(0), dup_cloexec(1), dup_cloexec(2)],
            ends: [Some(i), Some(o), Some(e)],
            pending: Vec::new(),
        }
    }

    /// The pollfds to wait on, in a fixed order of four slots (unused ones
    /// are -1): caller stdin, stdin socket (writable), stdout, stderr.
    pub fn pollfds(&self) -> [libc::pollfd; 4] {
        let fd = |o: &Option<OwnedFd>| o.as_ref().map_or(-1, AsRawFd::as_raw_fd);
        let stdin_open = self.ends[0].is_some();
        [
            libc::pollfd {
                fd: if stdin_open && self.pending.is_empty() {
                    fd(&self.caller[0])
                } else {
                    -1
                },
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: if self.pending.is_empty() {
                    -1
                } else {
                    fd(&self.ends[0])
                },
                events: libc::POLLOUT,
                revents: 0,
            },
            libc::pollfd {
                fd: fd(&self.ends[1]),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: fd(&self.ends[2]),
                events: libc::POLLIN,
                revents: 0,
            },
        ]
    }

    /// Act on the poll results of [`Relay::pollfds`].
    pub fn handle(&mut self, fds: &[libc::pollfd]) {
        if fds[0].revents != 0 {
            self.read_stdin();
        }
        if fds[1].revents != 0 {
            self.write_stdin();
        }
        for i in 1..3 {
            if fds[1 + i].revents != 0 {
                self.copy_out(i);
            }
        }
    }

    fn read_stdin(&mut self) {
        let Some(src) = &self.caller[0] else { return };
        let mut buf = [0u8; 16384];
        match sys::read(src.as_raw_fd(), &mut buf) {
            Ok(0) | Err(_) => self.close_stdin(),
            Ok(n) => {
                self.pending.extend_from_slice(&buf[..n]);
                self.write_stdin();
            }
        }
    }

    fn write_stdin(&mut self) {
        let Some(dst) = &self.ends[0] else {
            self.pending.clear();
            return;
        };
        // SAFETY: writing our buffer to our non-blocking socket.
        let n = unsafe {
            libc::send(
                dst.as_raw_fd(),
                self.pending.as_ptr().cast(),
                self.pending.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if n > 0 {
            self.pending.drain(..n as usize);
        } else if n < 0 && sys::errno() != libc::EAGAIN && sys::errno() != libc::EINTR {
            // The command closed its stdin: drop what the caller sends.
            self.ends[0] = None;
            self.pending.clear();
        }
    }

    fn close_stdin(&mut self) {
        if let Some(s) = &self.ends[0] {
            if self.pending.is_empty() {
                // SAFETY: half-closing our socket: the command sees EOF.
                unsafe { libc::shutdown(s.as_raw_fd(), libc::SHUT_WR) };
            }
        }
        self.caller[0] = None;
    }

    /// Copy what is readable from the command's stdout (1) or stderr (2).
    fn copy_out(&mut self, i: usize) {
        let (Some(src), Some(dst)) = (&self.ends[i], &self.caller[i]) else {
            self.ends[i] = None;
            return;
        };
        let mut buf = [0u8; 16384];
        match sys::read(src.as_raw_fd(), &mut buf) {
            Ok(0) | Err(_) => self.ends[i] = None,
            Ok(n) => {
                if sys::write_all(dst.as_raw_fd(), &buf[..n]).is_err() {
                    self.ends[i] = None;
                }
            }
        }
    }

    /// After every process of the sandbox is gone: copy the rest of the
    /// command's output.
    pub fn drain(&mut self) {
        for i in 1..3 {
            while self.ends[i].is_some() {
                self.copy_out(i);
            }
        }
    }
}
