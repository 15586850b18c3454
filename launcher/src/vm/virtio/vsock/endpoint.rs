//! The host side of each vsock port: where the bytes of a connection come
//! from and go to.
//!
//! - [`Endpoint::Stream`] (the control channel) is owned by the device,
//!   made non-blocking and served on the worker thread itself: it is in
//!   the worker's epoll set (edge-triggered), guest data waiting for it is
//!   kept in `out`, host data read ahead (at most [`STAGE`] bytes) in
//!   `stage`.
//! - [`Endpoint::Input`] and [`Endpoint::Output`] share their file
//!   description with the caller (its stdin/stdout/stderr): they stay
//!   blocking and each gets a helper thread once the guest connects. The
//!   Input helper reads into a buffer of at most [`STAGE`] bytes (waiting
//!   on `poll()` for the fd or its cancel eventfd, so it can be stopped);
//!   the Output helper writes the chunks the worker queues. Each signals
//!   the worker's wake eventfd when it made progress. The Output queue is
//!   bounded by the connection's credit (`conn::BUF_ALLOC`), since the
//!   device refuses guest data beyond it.
//!
//! A helper blocked in `write()` on a pipe nobody reads (or in `read()`
//! after another reader of the shared description took the data `poll()`
//! announced) cannot be interrupted: it is detached and ends with the
//! write or read, holding only its fd and its shared state.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use vmm_sys_util::eventfd::EventFd;

/// Host data read ahead for the guest, per connection.
pub const STAGE: usize = 64 * 1024;

/// The host end of one port.
#[derive(Debug)]
pub enum Endpoint {
    /// Bidirectional, owned by the device (one end of a UnixStream
    /// socketpair): the control channel. The device makes it non-blocking.
    Stream(OwnedFd),
    /// Host -> guest only (the caller's stdin, a dup). Never made
    /// non-blocking; read on a helper thread after `poll()`. At EOF the
    /// guest gets a SHUTDOWN with the "no more data" flag.
    Input(OwnedFd),
    /// Guest -> host only (the caller's stdout/stderr, a dup). Never made
    /// non-blocking; written on a helper thread. When the guest shuts down
    /// or resets the connection, what was received is flushed, then the fd
    /// is dropped (so the caller sees EOF).
    Output(OwnedFd),
}

/// Called once by whoever finishes delivering a closed connection's data.
pub type OnFlushed = Box<dyn FnOnce() + Send>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock means a helper panicked; its state is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug)]
pub(crate) struct StreamHost {
    sock: Option<UnixStream>,
    out: VecDeque<u8>,
    stage: VecDeque<u8>,
    delivered: u32,
    read_eof: bool,
    read_stopped: bool,
    write_shut: bool,
    closed: bool,
    failed: bool,
}

impl StreamHost {
    fn io(&mut self) {
        let Some(sock) = self.sock.as_mut() else {
            return;
        };
        while !self.out.is_empty() && !self.failed {
            let (a, _) = self.out.as_slices();
            match sock.write(a) {
                Ok(0) => self.failed = true,
                Ok(n) => {
                    self.out.drain(..n);
                    self.delivered = self.delivered.wrapping_add(n as u32);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => self.failed = true,
            }
        }
        if self.failed {
            self.out.clear();
        }
        if self.write_shut && self.out.is_empty() {
            let _ = sock.shutdown(std::net::Shutdown::Write);
        }
        let mut buf = [0u8; 16 * 1024];
        while !self.read_eof && !self.read_stopped && self.stage.len() < STAGE {
            let room = (STAGE - self.stage.len()).min(buf.len());
            match sock.read(&mut buf[..room]) {
                Ok(0) => self.read_eof = true,
                Ok(n) => self.stage.extend(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => self.read_eof = true,
            }
        }
    }
}

#[derive(Debug, Default)]
struct InputState {
    buf: VecDeque<u8>,
    eof: bool,
    stop: bool,
}

#[derive(Debug, Default)]
struct InputShared {
    st: Mutex<InputState>,
    cond: Condvar,
}

#[derive(Debug)]
pub(crate) struct InputHost {
    fd: Option<OwnedFd>,
    shared: Arc<InputShared>,
    cancel: Option<Arc<EventFd>>,
}

impl InputHost {
    fn stop(&mut self) {
        lock(&self.shared.st).stop = true;
        self.shared.cond.notify_all();
        if let Some(c) = &self.cancel {
            let _ = c.write(1);
        }
        self.fd = None;
    }
}

/// Wait until `fd` or `cancel` is readable; `false` when cancelled.
fn poll_in(fd: RawFd, cancel: RawFd) -> bool {
    loop {
        let mut fds = [
            libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: cancel,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfd structures that
        // lives across the call.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if r < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return false;
        }
        if fds[1].revents != 0 {
            return false;
        }
        if fds[0].revents != 0 {
            return true;
        }
    }
}

fn input_thread(fd: OwnedFd, shared: Arc<InputShared>, cancel: Arc<EventFd>, wake: Arc<EventFd>) {
    let mut file = std::fs::File::from(fd);
    let mut tmp = vec![0u8; STAGE];
    loop {
        let room = {
            let mut st = lock(&shared.st);
            while st.buf.len() >= STAGE && !st.stop {
                st = shared.cond.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            if st.stop {
                return;
            }
            STAGE - st.buf.len()
        };
        if !poll_in(file.as_raw_fd(), cancel.as_raw_fd()) {
            return;
        }
        match file.read(&mut tmp[..room]) {
            Ok(n) => {
                let mut st = lock(&shared.st);
                if n == 0 {
                    st.eof = true;
                } else {
                    st.buf.extend(&tmp[..n]);
                }
                drop(st);
                let _ = wake.write(1);
                if n == 0 {
                    return;
                }
            }
            Err(e)
                if e.kind() == io::ErrorKind::Interrupted
                    || e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => {
                // A broken stdin ends the stream like EOF does.
                lock(&shared.st).eof = true;
                let _ = wake.write(1);
                return;
            }
        }
    }
}

#[derive(Debug, Default)]
struct OutputState {
    queue: VecDeque<Vec<u8>>,
    written: u64,
    closing: bool,
    done: bool,
    failed: bool,
}

#[derive(Debug, Default)]
struct OutputShared {
    st: Mutex<OutputState>,
    cond: Condvar,
}

#[derive(Debug)]
pub(crate) struct OutputHost {
    fd: Option<OwnedFd>,
    shared: Arc<OutputShared>,
    reported: u64,
    started: bool,
}

/// Write all of `data` to a blocking fd (waiting with `poll()` should
/// someone have made the shared description non-blocking).
fn write_all(file: &mut std::fs::File, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match file.write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let mut p = libc::pollfd {
                    fd: file.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: `p` is a valid pollfd that lives across the call.
                unsafe { libc::poll(&mut p, 1, 1000) };
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn output_thread(
    fd: OwnedFd,
    shared: Arc<OutputShared>,
    wake: Arc<EventFd>,
    on_flushed: OnFlushed,
) {
    let mut file = std::fs::File::from(fd);
    loop {
        let chunk = {
            let mut st = lock(&shared.st);
            while st.queue.is_empty() && !st.closing {
                st = shared.cond.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            match st.queue.pop_front() {
                Some(c) => c,
                None => break,
            }
        };
        let res = write_all(&mut file, &chunk);
        let mut st = lock(&shared.st);
        st.written += chunk.len() as u64;
        if res.is_err() {
            st.failed = true;
            st.queue.clear();
            drop(st);
            break;
        }
        drop(st);
        let _ = wake.write(1);
    }
    drop(file);
    lock(&shared.st).done = true;
    let _ = wake.write(1);
    on_flushed();
}

/// The host side of a port (see the module doc).
#[derive(Debug)]
pub(crate) enum Host {
    Stream(StreamHost),
    Input(InputHost),
    Output(OutputHost),
}

impl Host {
    pub fn new(ep: Endpoint) -> io::Result<Host> {
        Ok(match ep {
            Endpoint::Stream(fd) => {
                let sock = UnixStream::from(fd);
                sock.set_nonblocking(true)?;
                Host::Stream(StreamHost {
                    sock: Some(sock),
                    out: VecDeque::new(),
                    stage: VecDeque::new(),
                    delivered: 0,
                    read_eof: false,
                    read_stopped: false,
                    write_shut: false,
                    closed: false,
                    failed: false,
                })
            }
            Endpoint::Input(fd) => Host::Input(InputHost {
                fd: Some(fd),
                shared: Arc::default(),
                cancel: None,
            }),
            Endpoint::Output(fd) => Host::Output(OutputHost {
                fd: Some(fd),
                shared: Arc::default(),
                reported: 0,
                started: false,
            }),
        })
    }

    /// The fd the worker polls (the Stream socket).
    pub fn epoll_fd(&self) -> Option<RawFd> {
        match self {
            Host::Stream(s) => s.sock.as_ref().map(|s| s.as_raw_fd()),
            _ => None,
        }
    }

    /// The guest connected: start the helper thread, if any.
    pub fn start(&mut self, wake: &Arc<EventFd>, on_flushed: OnFlushed) -> io::Result<()> {
        match self {
            Host::Stream(_) => {
                drop(on_flushed);
                Ok(())
            }
            Host::Input(h) => {
                drop(on_flushed);
                let Some(fd) = h.fd.take() else {
                    return Ok(());
                };
                let cancel = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
                h.cancel = Some(cancel.clone());
                let (shared, wake) = (h.shared.clone(), wake.clone());
                std::thread::Builder::new()
                    .name("vsock-stdin".into())
                    .spawn(move || input_thread(fd, shared, cancel, wake))?;
                Ok(())
            }
            Host::Output(h) => {
                let Some(fd) = h.fd.take() else {
                    return Ok(());
                };
                h.started = true;
                let (shared, wake) = (h.shared.clone(), wake.clone());
                std::thread::Builder::new()
                    .name("vsock-output".into())
                    .spawn(move || output_thread(fd, shared, wake, on_flushed))?;
                Ok(())
            }
        }
    }

    /// Bytes from the guest for the host.
    pub fn deliver(&mut self, data: Vec<u8>) {
        match self {
            Host::Stream(s) => {
                if s.failed || s.closed {
                    return;
                }
                s.out.extend(&data);
                s.io();
            }
            // Stdin carries nothing towards the host: the bytes are
            // dropped (and count as delivered, so the guest is not stalled).
            Host::Input(_) => {}
            Host::Output(h) => {
                let mut st = lock(&h.shared.st);
                if st.failed || st.closing {
                    return;
                }
                st.queue.push_back(data);
                drop(st);
                h.shared.cond.notify_one();
            }
        }
    }

    /// Make what progress the Stream socket allows (a no-op for the
    /// others, whose helpers do it).
    pub fn io(&mut self) {
        if let Host::Stream(s) = self {
            s.io();
        }
    }

    /// Bytes delivered to the host since the last call. `accepted` is the
    /// number handed to [`Host::deliver`] since the last call (what the
    /// Input endpoint discards counts as delivered).
    pub fn take_delivered(&mut self, accepted: u32) -> u32 {
        match self {
            Host::Stream(s) => std::mem::take(&mut s.delivered),
            Host::Input(_) => accepted,
            Host::Output(h) => {
                let w = lock(&h.shared.st).written;
                let d = w - h.reported;
                h.reported = w;
                d as u32
            }
        }
    }

    /// Host bytes ready for the guest.
    pub fn available(&self) -> usize {
        match self {
            Host::Stream(s) => s.stage.len(),
            Host::Input(h) => lock(&h.shared.st).buf.len(),
            Host::Output(_) => 0,
        }
    }

    /// Take up to `dst.len()` host bytes for the guest.
    pub fn take(&mut self, dst: &mut [u8]) -> usize {
        let take_from = |q: &mut VecDeque<u8>, dst: &mut [u8]| {
            let n = dst.len().min(q.len());
            for (d, s) in dst.iter_mut().zip(q.drain(..n)) {
                *d = s;
            }
            n
        };
        match self {
            Host::Stream(s) => {
                let n = take_from(&mut s.stage, dst);
                s.io();
                n
            }
            Host::Input(h) => {
                let n = take_from(&mut lock(&h.shared.st).buf, dst);
                h.shared.cond.notify_all();
                n
            }
            Host::Output(_) => 0,
        }
    }

    /// The host will send nothing more and everything it sent was taken.
    pub fn host_eof(&self) -> bool {
        match self {
            Host::Stream(s) => s.read_eof && s.stage.is_empty(),
            Host::Input(h) => {
                let st = lock(&h.shared.st);
                st.eof && st.buf.is_empty()
            }
            Host::Output(_) => false,
        }
    }

    /// The host end broke (a write failed): the connection must be reset.
    pub fn failed(&self) -> bool {
        match self {
            Host::Stream(s) => s.failed,
            Host::Input(_) => false,
            Host::Output(h) => lock(&h.shared.st).failed,
        }
    }

    /// The guest will send no more: deliver what is pending, then close
    /// the host's receiving side.
    pub fn guest_shut_send(&mut self) {
        match self {
            Host::Stream(s) => {
                s.write_shut = true;
                s.io();
            }
            Host::Input(_) => {}
            Host::Output(h) => {
                lock(&h.shared.st).closing = true;
                h.shared.cond.notify_all();
                // Never connected, or already done: nothing to flush.
                if !h.started {
                    h.fd = None;
                    lock(&h.shared.st).done = true;
                }
            }
        }
    }

    /// The guest will receive no more: stop reading the host.
    pub fn guest_shut_rcv(&mut self) {
        match self {
            Host::Stream(s) => {
                s.read_stopped = true;
                s.stage.clear();
            }
            Host::Input(h) => h.stop(),
            Host::Output(_) => {}
        }
    }

    /// The connection ended: flush what was received, then let the fd go.
    pub fn close(&mut self) {
        self.guest_shut_send();
        self.guest_shut_rcv();
        if let Host::Stream(s) = self {
            s.closed = true;
        }
    }

    /// After [`Host::close`]: all the guest's data reached the host (or
    /// can never reach it).
    pub fn flushed(&self) -> bool {
        match self {
            Host::Stream(s) => s.closed && (s.out.is_empty() || s.failed),
            Host::Input(_) => true,
            Host::Output(h) => lock(&h.shared.st).done,
        }
    }

    /// A closed, flushed Stream whose socket can be released (after the
    /// worker removed it from its epoll set).
    pub fn stream_releasable(&self) -> bool {
        matches!(self, Host::Stream(s) if s.sock.is_some()) && self.flushed()
    }

    pub fn release_stream(&mut self) {
        if let Host::Stream(s) = self {
            if let Some(sock) = s.sock.take() {
                let _ = sock.shutdown(std::net::Shutdown::Both);
            }
        }
    }

    /// The device is stopping: end the helpers (an Output helper still
    /// flushes what it was given).
    pub fn shutdown(&mut self) {
        self.guest_shut_send();
        self.guest_shut_rcv();
    }
}
