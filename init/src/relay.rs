//! Relayed stdio: init copies between the caller's stdio and the
//! command's, in two cases.
//!
//! - Labelled runs (namespace backend): a command with its own MCS
//!   categories may not use the caller's pipes when they carry a category
//!   range, so it gets sockets made at level s0 (see
//!   `command::relay_sockets`) and init copies between them and the
//!   caller's stdio ([`Relay::new`]).
//! - A terminal in the micro-VM backend: the pty master stays in the guest
//!   (no descriptor crosses vsock), so init copies between it and its own
//!   stdin/stdout, the host's vsock streams ([`Relay::for_pty`]). The end of
//!   the host's stdin becomes the pty's end-of-file character, as in the
//!   launcher's own pty loop, and `Resize` is applied to the master. A
//!   `sandbox exec -t` in a VM gets a relay of its own between its pty and
//!   its vsock streams ([`Relay::for_pty_streams`]).
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
    /// init's ends of the command's stdin, stdout, stderr sockets; with a
    /// pty: a duplicate of the master, the master, nothing.
    ends: [Option<OwnedFd>; 3],
    /// Bytes read from the caller's stdin, not yet written.
    pending: Vec<u8>,
    /// The ends are one pty master (non-blocking, not a socket).
    pty: bool,
    /// Last byte read from the caller's stdin (decides how many
    /// end-of-file characters the pty gets).
    last_in: Option<u8>,
}

fn dup_cloexec(fd: RawFd) -> Option<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC returns a new fd or -1.
    let n = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10) };
    // SAFETY: a fresh descriptor owned by nobody else.
    (n >= 0).then(|| unsafe { OwnedFd::from_raw_fd(n) })
}

fn set_nonblocking(fd: RawFd) {
    // SAFETY: plain fcntl calls on a descriptor we own.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl >= 0 {
            libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
    }
}

impl Relay {
    pub fn new(ends: [OwnedFd; 3]) -> Self {
        let [i, o, e] = ends;
        set_nonblocking(i.as_raw_fd());
        Relay {
            caller: [dup_cloexec(0), dup_cloexec(1), dup_cloexec(2)],
            ends: [Some(i), Some(o), Some(e)],
            pending: Vec::new(),
            pty: false,
            last_in: None,
        }
    }

    /// Relay between init's stdin/stdout and the pty `master` (VM
    /// backend). init's stderr is not used: a terminal has one output.
    pub fn for_pty(master: OwnedFd) -> Self {
        // O_NONBLOCK belongs to the open file: the duplicate shares it.
        set_nonblocking(master.as_raw_fd());
        let input = dup_cloexec(master.as_raw_fd());
        Relay {
            caller: [dup_cloexec(0), dup_cloexec(1), None],
            ends: [input, Some(master), None],
            pending: Vec::new(),
            pty: true,
            last_in: None,
        }
    }

    /// Relay between `input`/`output` (a VM exec's vsock streams) and the
    /// exec'd process's pty `master`.
    pub fn for_pty_streams(master: OwnedFd, input: OwnedFd, output: OwnedFd) -> Self {
        set_nonblocking(master.as_raw_fd());
        let dup = dup_cloexec(master.as_raw_fd());
        Relay {
            caller: [Some(input), Some(output), None],
            ends: [dup, Some(master), None],
            pending: Vec::new(),
            pty: true,
            last_in: None,
        }
    }

    /// Apply the caller's window size to the pty (no-op without one).
    pub fn resize(&self, rows: u16, cols: u16) {
        if let (true, Some(m)) = (self.pty, &self.ends[1]) {
            crate::command::set_winsize(m.as_raw_fd(), rows, cols);
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
        if fds.len() < 4 {
            return;
        }
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
                self.last_in = buf[..n].last().copied();
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
        let n = if self.pty {
            // SAFETY: writing our buffer to the non-blocking pty master.
            unsafe {
                libc::write(
                    dst.as_raw_fd(),
                    self.pending.as_ptr().cast(),
                    self.pending.len(),
                )
            }
        } else {
            // SAFETY: writing our buffer to our non-blocking socket.
            unsafe {
                libc::send(
                    dst.as_raw_fd(),
                    self.pending.as_ptr().cast(),
                    self.pending.len(),
                    libc::MSG_NOSIGNAL,
                )
            }
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
        if self.pty {
            // As a terminal would: the end-of-file character.
            if let Some(m) = self.ends[0].take() {
                send_eof(m.as_raw_fd(), self.last_in);
            }
        } else if let Some(s) = &self.ends[0] {
            if self.pending.is_empty() {
                // SAFETY: half-closing our socket: the command sees EOF.
                unsafe { libc::shutdown(s.as_raw_fd(), libc::SHUT_WR) };
            }
        }
        self.caller[0] = None;
    }

    /// Copy what is readable from the command's stdout (1) or stderr (2);
    /// false when nothing was copied (closed, or nothing to read now).
    fn copy_out(&mut self, i: usize) -> bool {
        let (Some(src), Some(dst)) = (&self.ends[i], &self.caller[i]) else {
            self.ends[i] = None;
            return false;
        };
        let mut buf = [0u8; 16384];
        match sys::read(src.as_raw_fd(), &mut buf) {
            // The pty master is non-blocking: nothing more for now.
            Err(libc::EAGAIN) => false,
            // End of file; EIO from a pty master: every slave is closed.
            Ok(0) | Err(_) => {
                self.ends[i] = None;
                false
            }
            Ok(n) => {
                if sys::write_all(dst.as_raw_fd(), &buf[..n]).is_err() {
                    self.ends[i] = None;
                    return false;
                }
                true
            }
        }
    }

    /// After every process of the sandbox is gone: copy the rest of the
    /// command's output.
    pub fn drain(&mut self) {
        for i in 1..3 {
            while self.copy_out(i) {}
        }
    }
}

/// Write the pty's end-of-file character (normally ^D) so that a reader in
/// canonical mode sees end of file; after an unfinished last line the first
/// one only completes that line, so a second one follows.
fn send_eof(master: RawFd, last: Option<u8>) {
    // SAFETY: zeroed termios is a valid out-parameter.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: tcgetattr writes into `t`.
    let eof = if unsafe { libc::tcgetattr(master, &mut t) } == 0 {
        t.c_cc[libc::VEOF]
    } else {
        4
    };
    let unfinished = last.is_some_and(|b| b != b'\n');
    let both = [eof, eof];
    let _ = sys::write_all(master, if unfinished { &both[..] } else { &both[..1] });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pty_pair() -> (OwnedFd, OwnedFd) {
        // SAFETY: posix_openpt returns a new fd or -1.
        let m = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
        assert!(m >= 0, "posix_openpt failed");
        // SAFETY: fresh fd owned by nobody else.
        let master = unsafe { OwnedFd::from_raw_fd(m) };
        // SAFETY: plain calls on the master we own; the slave's name is
        // copied before the next call.
        let slave = unsafe {
            assert_eq!(libc::grantpt(m), 0);
            assert_eq!(libc::unlockpt(m), 0);
            let name = std::ffi::CStr::from_ptr(libc::ptsname(m)).to_owned();
            libc::open(
                name.as_ptr(),
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            )
        };
        assert!(slave >= 0, "cannot open the pty slave");
        // SAFETY: fresh fd owned by nobody else.
        (master, unsafe { OwnedFd::from_raw_fd(slave) })
    }

    fn socketpair() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for two descriptors.
        let r = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(r, 0);
        // SAFETY: two fresh fds owned by nobody else.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    fn poll_once(r: &mut Relay) {
        let mut fds = r.pollfds();
        // SAFETY: `fds` is a valid array of four pollfd.
        unsafe { libc::poll(fds.as_mut_ptr(), 4, 500) };
        r.handle(&fds);
    }

    /// One read of the slave; panics when nothing arrives within a second.
    fn read_slave(slave: &OwnedFd) -> Vec<u8> {
        let mut p = [libc::pollfd {
            fd: slave.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: `p` is a valid array of one pollfd.
        let ready = unsafe { libc::poll(p.as_mut_ptr(), 1, 1000) };
        assert_eq!(ready, 1, "slave not readable");
        let mut buf = [0u8; 64];
        let n = sys::read(slave.as_raw_fd(), &mut buf).unwrap_or(0);
        buf[..n].to_vec()
    }

    /// The VM pty relay with hand-made caller fds: input and output pass
    /// through the pty, the end of input becomes end of file (after an
    /// unfinished line too), Resize reaches the pty, and what the command
    /// wrote before its end is drained.
    #[test]
    fn pty_relay_copies_both_ways() {
        let (master, slave) = pty_pair();
        let (cin_host, cin) = socketpair();
        let (cout_host, cout) = socketpair();
        let mut r = Relay::for_pty(master);
        r.caller = [Some(cin), Some(cout), None];
        // SAFETY: termios calls on our slave fd with a local struct.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            assert_eq!(libc::tcgetattr(slave.as_raw_fd(), &mut t), 0);
            t.c_lflag &= !libc::ECHO;
            assert_eq!(libc::tcsetattr(slave.as_raw_fd(), libc::TCSANOW, &t), 0);
        }
        sys::write_all(cin_host.as_raw_fd(), b"hello\n").unwrap();
        poll_once(&mut r);
        assert_eq!(read_slave(&slave), b"hello\n");

        sys::write_all(slave.as_raw_fd(), b"out").unwrap();
        poll_once(&mut r);
        let mut buf = [0u8; 64];
        let n = sys::read(cout_host.as_raw_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..n], b"out");

        r.resize(33, 101);
        // SAFETY: zeroed winsize is a valid out-parameter.
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: TIOCGWINSZ writes a winsize.
        let ret = unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
        assert_eq!(ret, 0);
        assert_eq!((ws.ws_row, ws.ws_col), (33, 101));

        sys::write_all(cin_host.as_raw_fd(), b"part").unwrap();
        poll_once(&mut r);
        drop(cin_host);
        poll_once(&mut r);
        assert_eq!(read_slave(&slave), b"part");
        assert_eq!(read_slave(&slave), b"", "no end of file after the line");

        sys::write_all(slave.as_raw_fd(), b"tail").unwrap();
        drop(slave);
        r.drain();
        drop(r);
        let mut all = Vec::new();
        loop {
            match sys::read(cout_host.as_raw_fd(), &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
        assert_eq!(all, b"tail");
    }
}
