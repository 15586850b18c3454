//! virtio-vsock (device id 19, virtio 1.2 section 5.10), entirely in
//! userspace: it carries the launcher <-> init control channel and the
//! command's stdio between the guest (CID `guest_cid`, normally 3) and the
//! host (CID 2).
//!
//! # What it accepts
//! Only stream connections the guest opens to the host CID on one of the
//! configured ports. Each port takes one connection in the device's life:
//! a second REQUEST while one is live, or after it closed, gets an RST, as
//! does a REQUEST to an unknown port, any packet to another CID, of another
//! type (no SEQPACKET), with an unknown operation, or for no connection.
//! Packets from a CID other than the guest's, or too short to hold a
//! header, are dropped. Nothing the guest writes can make the device
//! panic: headers are parsed from bounds-checked reads of the descriptor
//! chains ([`packet`]), payloads are refused when they claim more than the
//! chain holds or more than 64 KiB, and data beyond the credit we gave
//! resets the connection ([`conn`]).
//!
//! # Flow control
//! Each connection advertises `conn::BUF_ALLOC` (256 KiB); `fwd_cnt` is the
//! number of bytes actually delivered to the host endpoint, so a guest
//! flooding a slow stdout stops when its credit runs out and the device
//! holds at most 256 KiB per connection. A CREDIT_UPDATE goes to the guest
//! when half the buffer was freed, when it is near starved and anything was
//! freed, or when it asks (CREDIT_REQUEST). Towards the guest we send at
//! most the guest's credit, never more than one rx buffer holds, and ask
//! for its credit once when it runs out.
//!
//! # Closing
//! Guest SHUTDOWN "send" flushes what was received to the host endpoint and
//! closes the host's receiving side (an Output fd is dropped, a Stream gets
//! `shutdown(SHUT_WR)`); "receive" stops reading the host. Once the guest
//! has shut down both directions (a Linux guest's `close()`), or sends RST,
//! the device answers RST and the connection is gone. Host EOF (stdin, or
//! the launcher closing the control stream) sends the guest SHUTDOWN
//! "send" after the last data; a failed host write resets the connection.
//!
//! # Threads and ownership
//! - The caller's thread builds the [`Vsock`] (owning the endpoints) and
//!   keeps [`VsockHandle`]s (the shared per-port status, a mutex and a
//!   condvar) to wait for the connections to close.
//! - At `activate` the endpoints, queues and memory move to the worker
//!   thread `vsock-worker`, an `event_manager` loop over the three queue
//!   kick eventfds (rx kick: new buffers, retry pending host -> guest data;
//!   tx kick: packets from the guest; event kick: nothing to do, the device
//!   never posts events), `Activation::stop`, the Stream sockets
//!   (edge-triggered) and a wake eventfd the helper threads signal. After
//!   every event it runs the whole pump (host I/O, tx queue, rx queue) and
//!   raises one interrupt if it used any buffer. On `stop` it ends the
//!   helpers and exits.
//! - Input and Output endpoints get one helper thread each when the guest
//!   connects (see [`endpoint`]); they own their fd and share a bounded
//!   buffer with the worker.
//! - Ports added while the device runs (`sandbox exec`'s streams,
//!   [`VsockHandle::add_ports`]) wait in the shared status until the worker
//!   adopts them on its wake eventfd; [`VsockHandle::forget_ports`] has the
//!   worker drop them again. They take Input and Output endpoints only and
//!   follow the same rules as the fixed ones (one connection each).

pub mod conn;
pub mod endpoint;
pub mod packet;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, VecDeque};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::{device_type, ActivateError, Activation, Interrupt, Mem, VirtioDevice, F_VERSION_1};
use conn::Conn;
pub use endpoint::Endpoint;
use endpoint::Host;
use packet::*;

/// Size of each of the three queues.
pub const QUEUE_SIZE: u16 = 256;
const RXQ: u16 = 0;
const TXQ: u16 = 1;
const EVQ: u16 = 2;
/// Replies (RESPONSE, RST) waiting for rx buffers; past this many the tx
/// queue is not read until the guest gives rx buffers back.
const MAX_CTRL: usize = 256;

/// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET` (virtio 1.2, 5.10.6.5).
const EVENT_TRANSPORT_RESET: u32 = 0;

const TAG_RX: u32 = 0;
const TAG_TX: u32 = 1;
const TAG_EVT: u32 = 2;
const TAG_STOP: u32 = 3;
const TAG_WAKE: u32 = 4;
const TAG_STREAM: u32 = 100;

#[derive(Debug)]
pub struct VsockConfig {
    pub guest_cid: u64,
    pub ports: Vec<(u32, Endpoint)>,
}

#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("guest CID {0} is reserved or too large; use 3 to 4294967294")]
    BadCid(u64),
    #[error("vsock port {0} is configured twice; each port takes one endpoint")]
    DuplicatePort(u32),
    #[error("cannot prepare the endpoint of vsock port {port}: {err}")]
    Endpoint { port: u32, err: std::io::Error },
    #[error("vsock port {0}: only stdin and output endpoints can be added to a running device")]
    StreamAdded(u32),
}

#[derive(Debug, Default, Clone, Copy)]
struct PortStatus {
    connected: bool,
    had: bool,
    closed: bool,
    flushed: bool,
}

#[derive(Debug)]
struct Status {
    ports: Mutex<BTreeMap<u32, PortStatus>>,
    cond: Condvar,
    /// Ports added at run time, for the worker to adopt.
    added: Mutex<Vec<(u32, Host)>>,
    /// Ports the worker is to drop.
    forgotten: Mutex<Vec<u32>>,
    /// The worker's wake eventfd (also signalled by the helper threads).
    wake: Arc<EventFd>,
}

impl Status {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<u32, PortStatus>> {
        self.ports.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, port: u32, f: impl FnOnce(&mut PortStatus)) {
        f(self.lock().entry(port).or_default());
        self.cond.notify_all();
    }

    /// Update `port` only if it is still known (a forgotten port's late
    /// events are dropped).
    fn update_known(&self, port: u32, f: impl FnOnce(&mut PortStatus)) {
        if let Some(st) = self.lock().get_mut(&port) {
            f(st);
        }
        self.cond.notify_all();
    }
}

fn plock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Watches the device's connections from another thread.
#[derive(Debug, Clone)]
pub struct VsockHandle {
    status: Arc<Status>,
}

impl VsockHandle {
    /// Wait until every one of `ports` has had a connection that is now
    /// closed, with all the data the guest sent on it written to the host
    /// endpoint (or `timeout` passed: false).
    pub fn wait_closed(&self, ports: &[u32], timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.status.lock();
        loop {
            let done = ports.iter().all(|p| {
                st.get(p)
                    .is_some_and(|s| s.had && s.closed && s.flushed && !s.connected)
            });
            if done {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st = match self.status.cond.wait_timeout(st, deadline - now) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
    }

    /// Whether the guest has a live connection on `port`.
    pub fn is_connected(&self, port: u32) -> bool {
        self.status.lock().get(&port).is_some_and(|s| s.connected)
    }

    /// Without waiting: whether every one of `ports` had its connection,
    /// which is closed and flushed (see [`VsockHandle::wait_closed`]).
    pub fn ports_done(&self, ports: &[u32]) -> bool {
        let st = self.status.lock();
        ports.iter().all(|p| {
            st.get(p)
                .is_some_and(|s| s.had && s.closed && s.flushed && !s.connected)
        })
    }

    /// Open more ports on the running device (or before it starts). A port
    /// already known is refused, as is a Stream endpoint; nothing is added
    /// then.
    pub fn add_ports(&self, ports: Vec<(u32, Endpoint)>) -> Result<(), VsockError> {
        let mut hosts = Vec::with_capacity(ports.len());
        {
            let known = self.status.lock();
            for (port, ep) in ports {
                if known.contains_key(&port) || hosts.iter().any(|(p, _)| *p == port) {
                    return Err(VsockError::DuplicatePort(port));
                }
                if matches!(ep, Endpoint::Stream(_)) {
                    return Err(VsockError::StreamAdded(port));
                }
                let host = Host::new(ep).map_err(|err| VsockError::Endpoint { port, err })?;
                hosts.push((port, host));
            }
        }
        for (port, _) in &hosts {
            self.status.update(*port, |_| {});
        }
        plock(&self.status.added).extend(hosts);
        let _ = self.status.wake.write(1);
        Ok(())
    }

    /// Drop `ports` (added ones): a live connection is reset, an endpoint
    /// that never connected is closed, and their status is gone.
    pub fn forget_ports(&self, ports: &[u32]) {
        {
            let mut st = self.status.lock();
            for p in ports {
                st.remove(p);
            }
        }
        plock(&self.status.forgotten).extend_from_slice(ports);
        let _ = self.status.wake.write(1);
    }
}

/// The virtio-vsock device.
#[derive(Debug)]
pub struct Vsock {
    guest_cid: u64,
    ports: Option<Vec<(u32, Host)>>,
    status: Arc<Status>,
    worker: Option<std::thread::JoinHandle<Option<Vec<super::QueuePos>>>>,
    /// Post a `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET` when activated (a
    /// machine resumed from a snapshot: the guest drops the connections
    /// it had, which this device never knew).
    resumed: bool,
}

impl Vsock {
    pub fn new(cfg: VsockConfig) -> Result<Self, VsockError> {
        if !(3..=0xffff_fffe).contains(&cfg.guest_cid) {
            return Err(VsockError::BadCid(cfg.guest_cid));
        }
        let wake = EventFd::new(libc::EFD_NONBLOCK)
            .map_err(|err| VsockError::Endpoint { port: 0, err })?;
        let status = Arc::new(Status {
            ports: Mutex::default(),
            cond: Condvar::new(),
            added: Mutex::default(),
            forgotten: Mutex::default(),
            wake: Arc::new(wake),
        });
        let mut ports = Vec::with_capacity(cfg.ports.len());
        for (port, ep) in cfg.ports {
            if ports.iter().any(|(p, _)| *p == port) {
                return Err(VsockError::DuplicatePort(port));
            }
            let host = Host::new(ep).map_err(|err| VsockError::Endpoint { port, err })?;
            status.update(port, |_| {});
            ports.push((port, host));
        }
        Ok(Vsock {
            guest_cid: cfg.guest_cid,
            ports: Some(ports),
            status,
            worker: None,
            resumed: false,
        })
    }

    /// This device continues a guest resumed from a snapshot: at
    /// activation it tells the guest that every connection is gone.
    pub fn set_resumed(&mut self) {
        self.resumed = true;
    }

    pub fn handle(&self) -> VsockHandle {
        VsockHandle {
            status: self.status.clone(),
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        device_type::VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }

    fn avail_features(&self) -> u64 {
        F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let cfg = self.guest_cid.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|o| usize::try_from(o).ok())
                .and_then(|o| cfg.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        let Some(ports) = self.ports.take() else {
            return Err(ActivateError::Other(
                "the vsock device was already activated; its endpoints are used up".into(),
            ));
        };
        let mut queues: [Option<(Queue, EventFd)>; 3] = [None, None, None];
        for q in a.queues {
            if let Some(slot) = queues.get_mut(usize::from(q.index)) {
                if !q.queue.is_valid(&a.mem) {
                    return Err(ActivateError::BadQueue(q.index));
                }
                *slot = Some((q.queue, q.kick));
            }
        }
        let [rx, tx, ev] = queues;
        let (rxq, rx_kick) = rx.ok_or(ActivateError::MissingQueue(RXQ))?;
        let (txq, tx_kick) = tx.ok_or(ActivateError::MissingQueue(TXQ))?;
        let (evq, ev_kick) = ev.ok_or(ActivateError::MissingQueue(EVQ))?;
        let stopped = Arc::new(AtomicBool::new(false));
        let worker = Worker {
            mem: a.mem,
            interrupt: a.interrupt,
            rxq,
            txq,
            evq,
            kicks: [rx_kick, tx_kick, ev_kick],
            stop: a.stop,
            wake: self.status.wake.clone(),
            guest_cid: self.guest_cid,
            ports: ports
                .into_iter()
                .map(|(port, host)| Slot::new(port, host, false))
                .collect(),
            ctrl: VecDeque::new(),
            rr: 0,
            status: self.status.clone(),
            stopped: stopped.clone(),
            scratch: Vec::new(),
            rx_used: false,
            tx_used: false,
            init_error: None,
        };
        let mut em = EventManager::<Worker>::new()
            .map_err(|e| ActivateError::Worker(format!("cannot create the event loop: {e}")))?;
        let id = em.add_subscriber(worker);
        if let Ok(w) = em.subscriber_mut(id) {
            if let Some(e) = w.init_error.take() {
                return Err(ActivateError::Worker(e));
            }
        }
        let resumed = self.resumed;
        let handle = std::thread::Builder::new()
            .name("vsock-worker".into())
            .spawn(move || {
                if resumed {
                    if let Ok(w) = em.subscriber_mut(id) {
                        w.post_transport_reset();
                    }
                }
                while !stopped.load(Ordering::SeqCst) {
                    if em.run().is_err() {
                        break;
                    }
                }
                let w = em.subscriber_mut(id).ok()?;
                Some(vec![
                    super::QueuePos::of(RXQ, &w.rxq),
                    super::QueuePos::of(TXQ, &w.txq),
                    super::QueuePos::of(EVQ, &w.evq),
                ])
            })
            .map_err(|e| ActivateError::Worker(e.to_string()))?;
        self.worker = Some(handle);
        Ok(())
    }

    fn pause(&mut self) -> Result<Vec<super::QueuePos>, String> {
        // The VM's stop event has been written: the worker ends its loop.
        let Some(w) = self.worker.take() else {
            return Ok(Vec::new());
        };
        match w.join() {
            Ok(Some(pos)) => Ok(pos),
            _ => Err("the vsock worker ended without its queues".into()),
        }
    }
}

#[derive(Debug)]
struct Slot {
    port: u32,
    host: Host,
    conn: Option<Conn>,
    /// The port had its connection (it takes no other).
    used: bool,
    /// Bytes handed to the host since the last delivery count.
    accepted: u32,
    /// The Stream socket is in the epoll set.
    registered: bool,
    /// The closed connection's flush was reported.
    flush_seen: bool,
    /// Added at run time ([`VsockHandle::add_ports`]): may be forgotten.
    added: bool,
}

impl Slot {
    fn new(port: u32, host: Host, added: bool) -> Self {
        Slot {
            port,
            host,
            conn: None,
            used: false,
            accepted: 0,
            registered: false,
            flush_seen: false,
            added,
        }
    }

    /// Whether the connection has something for the guest.
    fn wants_rx(&self) -> bool {
        let Some(c) = &self.conn else {
            return false;
        };
        let rcv_ok = c.guest_shutdown & SHUTDOWN_RCV == 0;
        let avail = self.host.available();
        (rcv_ok && avail > 0 && c.peer_credit() > 0)
            || (rcv_ok && !c.host_shutdown_sent && self.host.host_eof())
            || c.wants_credit_update()
            || (rcv_ok && c.wants_credit_request(avail > 0))
    }
}

#[derive(Debug)]
struct Worker {
    mem: Mem,
    interrupt: Arc<Interrupt>,
    rxq: Queue,
    txq: Queue,
    /// The event queue: its buffers are kept, never used (no transport
    /// reset events are sent).
    evq: Queue,
    kicks: [EventFd; 3],
    stop: EventFd,
    wake: Arc<EventFd>,
    guest_cid: u64,
    ports: Vec<Slot>,
    ctrl: VecDeque<Header>,
    rr: usize,
    status: Arc<Status>,
    stopped: Arc<AtomicBool>,
    scratch: Vec<u8>,
    rx_used: bool,
    tx_used: bool,
    init_error: Option<String>,
}

impl MutEventSubscriber for Worker {
    fn init(&mut self, ops: &mut EventOps) {
        let mut add = |ev: Events, what: &str| {
            if let Err(e) = ops.add(ev) {
                self.init_error
                    .get_or_insert(format!("cannot watch the {what}: {e}"));
            }
        };
        for (i, k) in self.kicks.iter().enumerate() {
            add(
                Events::with_data(k, i as u32, EventSet::IN),
                "queue kick eventfd",
            );
        }
        add(
            Events::with_data(&self.stop, TAG_STOP, EventSet::IN),
            "stop eventfd",
        );
        add(
            Events::with_data(&*self.wake, TAG_WAKE, EventSet::IN),
            "wake eventfd",
        );
        for (i, s) in self.ports.iter_mut().enumerate() {
            if let Some(fd) = s.host.epoll_fd() {
                let set = EventSet::IN
                    | EventSet::OUT
                    | EventSet::READ_HANG_UP
                    | EventSet::EDGE_TRIGGERED;
                add(
                    Events::with_data_raw(fd, TAG_STREAM + i as u32, set),
                    "control stream",
                );
                s.registered = true;
            }
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            TAG_RX | TAG_TX | TAG_EVT => {
                // Level-triggered and readable: the read does not block.
                if let Some(k) = self.kicks.get(events.data() as usize) {
                    let _ = k.read();
                }
            }
            TAG_STOP => {
                let _ = self.stop.read();
                self.shutdown();
                self.release_streams(ops, true);
                self.stopped.store(true, Ordering::SeqCst);
                return;
            }
            TAG_WAKE => {
                let _ = self.wake.read();
                self.adopt();
            }
            _ => {}
        }
        self.run();
        self.release_streams(ops, false);
    }
}

impl Worker {
    /// Make all the progress there is to make, then interrupt the guest
    /// once if any buffer was used.
    /// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET` in the first event buffer.
    fn post_transport_reset(&mut self) {
        let mem = self.mem.clone();
        let Some(chain) = self.evq.pop_descriptor_chain(&mem) else {
            return;
        };
        let head = chain.head_index();
        let ok = chain
            .writer(&mem)
            .is_ok_and(|mut w| w.write_all(&EVENT_TRANSPORT_RESET.to_le_bytes()).is_ok());
        let used = if ok { 4 } else { 0 };
        let _ = self.evq.add_used(&mem, head, used);
        self.interrupt.signal_used_queue();
    }

    /// Take the ports added and drop the ones forgotten since last time.
    fn adopt(&mut self) {
        let added = std::mem::take(&mut *plock(&self.status.added));
        for (port, host) in added {
            self.ports.push(Slot::new(port, host, true));
        }
        let gone = std::mem::take(&mut *plock(&self.status.forgotten));
        for port in gone {
            let Some(i) = self.ports.iter().position(|s| s.added && s.port == port) else {
                continue;
            };
            self.close(i, true);
            let mut s = self.ports.remove(i);
            s.host.shutdown();
        }
        if self.rr >= self.ports.len() {
            self.rr = 0;
        }
    }

    fn run(&mut self) {
        loop {
            self.poll_hosts();
            let tx = self.process_tx();
            let rx = self.pump_rx();
            if !tx && !rx {
                break;
            }
        }
        self.notify();
    }

    fn notify(&mut self) {
        let mut need = false;
        if std::mem::take(&mut self.rx_used) {
            need |= self.rxq.needs_notification(&self.mem).unwrap_or(true);
        }
        if std::mem::take(&mut self.tx_used) {
            need |= self.txq.needs_notification(&self.mem).unwrap_or(true);
        }
        if need {
            self.interrupt.signal_used_queue();
        }
    }

    /// Host I/O, delivery counts, failed endpoints, finished flushes.
    fn poll_hosts(&mut self) {
        for i in 0..self.ports.len() {
            let s = &mut self.ports[i];
            s.host.io();
            if let Some(c) = s.conn.as_mut() {
                let d = s.host.take_delivered(std::mem::take(&mut s.accepted));
                c.delivered(d);
                if s.host.failed() {
                    self.close(i, true);
                }
            } else if s.used && !s.flush_seen && s.host.flushed() {
                s.flush_seen = true;
                let port = s.port;
                self.status.update_known(port, |st| st.flushed = true);
            }
        }
    }

    /// End connection `i` (sending RST when `rst`), letting its host side
    /// flush what it holds.
    fn close(&mut self, i: usize, rst: bool) {
        let Some(s) = self.ports.get_mut(i) else {
            return;
        };
        let Some(mut c) = s.conn.take() else {
            return;
        };
        if rst {
            self.ctrl.push_back(c.header(OP_RST, 0, 0));
        }
        s.host.close();
        let flushed = s.host.flushed();
        self.status.update_known(s.port, |st| {
            st.connected = false;
            st.closed = true;
            st.flushed |= flushed;
        });
    }

    fn shutdown(&mut self) {
        for i in 0..self.ports.len() {
            self.close(i, false);
            if let Some(s) = self.ports.get_mut(i) {
                s.host.shutdown();
            }
        }
    }

    /// Drop the Stream sockets that are done with (all of them when the
    /// worker stops), after taking them out of the epoll set.
    fn release_streams(&mut self, ops: &mut EventOps, all: bool) {
        for s in &mut self.ports {
            if s.registered && (all || (s.conn.is_none() && s.host.stream_releasable())) {
                if let Some(fd) = s.host.epoll_fd() {
                    let _ = ops.remove(Events::empty_raw(fd));
                }
                s.registered = false;
                let flushed = s.host.flushed();
                s.host.release_stream();
                if s.used {
                    self.status.update_known(s.port, |st| st.flushed |= flushed);
                }
            }
        }
    }

    fn queue_rst(&mut self, hdr: &Header) {
        if hdr.op != OP_RST {
            self.ctrl.push_back(hdr.rst_reply(self.guest_cid));
        }
    }

    fn find_conn(&self, hdr: &Header) -> Option<usize> {
        self.ports.iter().position(|s| {
            s.port == hdr.dst_port
                && s.conn
                    .as_ref()
                    .is_some_and(|c| c.guest_port == hdr.src_port)
        })
    }

    /// Read and answer every packet in the tx queue (unless too many
    /// replies wait for rx buffers). `true` if any was used.
    fn process_tx(&mut self) -> bool {
        let mem = self.mem.clone();
        let mut progress = false;
        while self.ctrl.len() < MAX_CTRL {
            let Some(chain) = self.txq.pop_descriptor_chain(&mem) else {
                break;
            };
            let head = chain.head_index();
            if let Ok(mut reader) = chain.reader(&mem) {
                self.handle_tx(&mut reader);
            }
            let _ = self.txq.add_used(&mem, head, 0);
            self.tx_used = true;
            progress = true;
        }
        progress
    }

    fn handle_tx(&mut self, reader: &mut virtio_queue::Reader<'_>) {
        let mut hb = [0u8; HDR_LEN];
        if reader.read_exact(&mut hb).is_err() {
            return;
        }
        let Ok(hdr) = Header::parse(&hb) else {
            return;
        };
        if let Err(e) = hdr.check(self.guest_cid, reader.available_bytes()) {
            if !e.answer_with_rst() {
                return;
            }
            let addressed_to_us = !matches!(e, PacketError::BadDstCid(_));
            match self.find_conn(&hdr) {
                Some(i) if addressed_to_us => self.close(i, hdr.op != OP_RST),
                _ => self.queue_rst(&hdr),
            }
            return;
        }
        if hdr.op == OP_REQUEST {
            self.on_request(&hdr);
            return;
        }
        let Some(i) = self.find_conn(&hdr) else {
            self.queue_rst(&hdr);
            return;
        };
        let s = &mut self.ports[i];
        let Some(c) = s.conn.as_mut() else {
            return;
        };
        c.update_peer(&hdr);
        match hdr.op {
            OP_RST => self.close(i, false),
            OP_SHUTDOWN => {
                let flags = hdr.flags & SHUTDOWN_BOTH;
                c.guest_shutdown |= flags;
                let all = c.guest_shutdown == SHUTDOWN_BOTH;
                if flags & SHUTDOWN_SEND != 0 {
                    s.host.guest_shut_send();
                }
                if flags & SHUTDOWN_RCV != 0 {
                    s.host.guest_shut_rcv();
                }
                if all {
                    self.close(i, true);
                }
            }
            OP_RW => {
                if c.guest_shutdown & SHUTDOWN_SEND != 0 || !c.accept_rx(hdr.len) {
                    // Data after "no more data", or beyond the credit.
                    self.close(i, true);
                    return;
                }
                let mut data = vec![0u8; hdr.len as usize];
                if reader.read_exact(&mut data).is_err() {
                    self.close(i, true);
                    return;
                }
                if !data.is_empty() {
                    s.accepted = s.accepted.wrapping_add(hdr.len);
                    s.host.deliver(data);
                }
            }
            OP_CREDIT_UPDATE => {}
            OP_CREDIT_REQUEST => c.request_credit_update(),
            // RESPONSE: we never connect to the guest.
            _ => self.close(i, true),
        }
    }

    fn on_request(&mut self, hdr: &Header) {
        if !self.ports.iter().any(|s| s.port == hdr.dst_port) {
            // A port added just now, its wake not handled yet.
            self.adopt();
        }
        let Some(i) = self.ports.iter().position(|s| s.port == hdr.dst_port) else {
            self.queue_rst(hdr);
            return;
        };
        let s = &mut self.ports[i];
        if s.conn.is_some() || s.used {
            self.queue_rst(hdr);
            return;
        }
        let status = self.status.clone();
        let port = s.port;
        let on_flushed = Box::new(move || status.update_known(port, |st| st.flushed = true));
        if s.host.start(&self.wake, on_flushed).is_err() {
            self.queue_rst(hdr);
            return;
        }
        let mut c = Conn::new(hdr);
        self.ctrl.push_back(c.header(OP_RESPONSE, 0, 0));
        s.conn = Some(c);
        s.used = true;
        self.status.update_known(port, |st| {
            st.connected = true;
            st.had = true;
        });
    }

    fn next_rx_conn(&mut self) -> Option<usize> {
        let n = self.ports.len();
        (0..n)
            .map(|k| (self.rr + k) % n)
            .find(|&i| self.ports[i].wants_rx())
            .inspect(|&i| self.rr = (i + 1) % n)
    }

    /// Fill rx buffers with pending replies, then connection data.
    /// `true` if any buffer was used.
    fn pump_rx(&mut self) -> bool {
        let mem = self.mem.clone();
        let mut progress = false;
        loop {
            let conn = if !self.ctrl.is_empty() {
                None
            } else if let Some(i) = self.next_rx_conn() {
                Some(i)
            } else {
                break;
            };
            let Some(chain) = self.rxq.pop_descriptor_chain(&mem) else {
                break;
            };
            let head = chain.head_index();
            progress = true;
            self.rx_used = true;
            let mut w = match chain.writer(&mem) {
                Ok(w) if w.available_bytes() >= HDR_LEN => w,
                _ => {
                    // A buffer that cannot hold a header is given back
                    // unused.
                    let _ = self.rxq.add_used(&mem, head, 0);
                    continue;
                }
            };
            let cap = w.available_bytes() - HDR_LEN;
            let (hdr, n) = match conn {
                None => match self.ctrl.pop_front() {
                    Some(h) => (h, 0),
                    None => break,
                },
                Some(i) => self.conn_packet(i, cap),
            };
            let ok =
                w.write_all(&hdr.to_bytes()).is_ok() && w.write_all(&self.scratch[..n]).is_ok();
            let used = if ok { (HDR_LEN + n) as u32 } else { 0 };
            let _ = self.rxq.add_used(&mem, head, used);
        }
        progress
    }

    /// The next packet of connection `i` for an rx buffer whose payload
    /// room is `cap`; its payload is left in `self.scratch`.
    fn conn_packet(&mut self, i: usize, cap: usize) -> (Header, usize) {
        let s = &mut self.ports[i];
        let Some(c) = s.conn.as_mut() else {
            // Not reached (the slot was chosen for its connection); an
            // empty credit update from nobody is harmless.
            return (Header::default(), 0);
        };
        let rcv_ok = c.guest_shutdown & SHUTDOWN_RCV == 0;
        let avail = s.host.available();
        let credit = c.peer_credit() as usize;
        if rcv_ok && avail > 0 && credit > 0 && cap > 0 {
            let n = avail.min(credit).min(cap).min(MAX_PAYLOAD as usize);
            self.scratch.resize(n, 0);
            let got = s.host.take(&mut self.scratch[..n]);
            c.sent(got as u32);
            return (c.header(OP_RW, got as u32, 0), got);
        }
        if rcv_ok && !c.host_shutdown_sent && s.host.host_eof() {
            c.host_shutdown_sent = true;
            return (c.header(OP_SHUTDOWN, 0, SHUTDOWN_SEND), 0);
        }
        if rcv_ok && c.wants_credit_request(avail > 0) && !c.wants_credit_update() {
            return (c.header(OP_CREDIT_REQUEST, 0, 0), 0);
        }
        (c.header(OP_CREDIT_UPDATE, 0, 0), 0)
    }
}
