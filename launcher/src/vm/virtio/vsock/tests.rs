//! The device driven as the Linux guest driver would: split queues in
//! real guest memory, descriptor tables written by hand, kicks through the
//! queue eventfds, replies read back from the used rings.

use super::conn::BUF_ALLOC;
use super::*;
use crate::vm::virtio::ActiveQueue;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::fence;
use vm_memory::{Bytes, GuestAddress};

const MEM_SIZE: usize = 48 << 20;
const SLOT: u64 = 0x12000;
const SLOTS_AT: u64 = 0x10_0000;
const NSLOTS: u64 = 600;
const GUEST: u64 = 3;
const F_WRITE: u16 = 2;
const F_NEXT: u16 = 1;

/// The driver's side of one split queue.
struct DrvQ {
    desc: u64,
    avail: u64,
    used: u64,
    size: u16,
    free: Vec<u16>,
    avail_idx: u16,
    used_idx: u16,
    /// head -> (descriptors, buffer slot)
    chains: HashMap<u16, (Vec<u16>, u64)>,
}

impl DrvQ {
    fn new(base: u64, size: u16) -> DrvQ {
        DrvQ {
            desc: base,
            avail: base + 0x1000,
            used: base + 0x2000,
            size,
            free: (0..size).rev().collect(),
            avail_idx: 0,
            used_idx: 0,
            chains: HashMap::new(),
        }
    }

    fn queue(&self) -> Queue {
        let mut q = Queue::new(self.size).unwrap();
        q.set_size(self.size);
        q.set_desc_table_address(Some(self.desc as u32), Some((self.desc >> 32) as u32));
        q.set_avail_ring_address(Some(self.avail as u32), Some((self.avail >> 32) as u32));
        q.set_used_ring_address(Some(self.used as u32), Some((self.used >> 32) as u32));
        q.set_ready(true);
        q
    }

    /// Make a chain of `(addr, len, writable)` available.
    fn add(&mut self, mem: &Mem, bufs: &[(u64, u32, bool)], slot: u64) -> u16 {
        let idx: Vec<u16> = (0..bufs.len()).map(|_| self.free.pop().unwrap()).collect();
        for (k, &(addr, len, w)) in bufs.iter().enumerate() {
            let mut flags = if w { F_WRITE } else { 0 };
            let next = if k + 1 < bufs.len() {
                flags |= F_NEXT;
                idx[k + 1]
            } else {
                0
            };
            let mut d = [0u8; 16];
            d[0..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..16].copy_from_slice(&next.to_le_bytes());
            mem.write_slice(&d, GuestAddress(self.desc + 16 * u64::from(idx[k])))
                .unwrap();
        }
        let head = idx[0];
        let ring = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
        mem.write_obj(head.to_le(), GuestAddress(ring)).unwrap();
        fence(Ordering::SeqCst);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx.to_le(), GuestAddress(self.avail + 2))
            .unwrap();
        fence(Ordering::SeqCst);
        self.chains.insert(head, (idx, slot));
        head
    }

    /// The next used element: (head, len, slot).
    fn take_used(&mut self, mem: &Mem) -> Option<(u16, u32, u64)> {
        let idx: u16 = mem.read_obj(GuestAddress(self.used + 2)).unwrap();
        if idx == self.used_idx {
            return None;
        }
        fence(Ordering::SeqCst);
        let e = self.used + 4 + 8 * u64::from(self.used_idx % self.size);
        let id: u32 = mem.read_obj(GuestAddress(e)).unwrap();
        let len: u32 = mem.read_obj(GuestAddress(e + 4)).unwrap();
        self.used_idx = self.used_idx.wrapping_add(1);
        let (descs, slot) = self
            .chains
            .remove(&(id as u16))
            .expect("used an unknown chain");
        self.free.extend(descs);
        Some((id as u16, len, slot))
    }
}

struct Guest {
    mem: Mem,
    q: [DrvQ; 3],
    kicks: [EventFd; 3],
    irq: EventFd,
    stop: EventFd,
    slots: Vec<u64>,
    /// Post rx buffers as two descriptors (header, data), as Linux 6.1 does.
    split_rx: bool,
    rx_len: u32,
}

fn ev() -> EventFd {
    EventFd::new(libc::EFD_NONBLOCK).unwrap()
}

impl Guest {
    fn start(dev: &mut Vsock) -> Guest {
        Self::start_with(dev, 4096, false)
    }

    fn start_with(dev: &mut Vsock, rx_len: u32, split_rx: bool) -> Guest {
        let mem = Mem::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let q = [
            DrvQ::new(0x1_0000, QUEUE_SIZE),
            DrvQ::new(0x2_0000, QUEUE_SIZE),
            DrvQ::new(0x3_0000, QUEUE_SIZE),
        ];
        let kicks = [ev(), ev(), ev()];
        let irq = ev();
        let stop = ev();
        let queues = (0..3)
            .map(|i| ActiveQueue {
                index: i as u16,
                queue: q[i].queue(),
                kick: kicks[i].try_clone().unwrap(),
            })
            .collect();
        dev.activate(Activation {
            mem: mem.clone(),
            interrupt: Arc::new(Interrupt::new(irq.try_clone().unwrap())),
            queues,
            acked_features: F_VERSION_1,
            stop: stop.try_clone().unwrap(),
        })
        .unwrap();
        let mut g = Guest {
            mem,
            q,
            kicks,
            irq,
            stop,
            slots: (0..NSLOTS).map(|i| SLOTS_AT + i * SLOT).collect(),
            split_rx,
            rx_len,
        };
        for _ in 0..64 {
            g.post_rx();
        }
        g.kick(RXQ);
        g
    }

    fn kick(&self, q: u16) {
        self.kicks[q as usize].write(1).unwrap();
    }

    fn post_rx(&mut self) {
        let slot = self.slots.pop().unwrap();
        let bufs: Vec<(u64, u32, bool)> = if self.split_rx {
            vec![
                (slot, HDR_LEN as u32, true),
                (slot + 0x100, self.rx_len, true),
            ]
        } else {
            vec![(slot, HDR_LEN as u32 + self.rx_len, true)]
        };
        self.q[0].add(&self.mem, &bufs, slot);
    }

    /// Put a chain of raw readable buffers on the tx queue and kick.
    fn send_raw(&mut self, parts: &[&[u8]]) {
        // A loaded host's worker may lag behind: wait (bounded) for used
        // tx buffers rather than run out of descriptors or slots.
        let mut waited = 0;
        while (self.q[1].free.len() < parts.len() || self.slots.is_empty()) && waited < 500 {
            self.reap_tx();
            if self.q[1].free.len() >= parts.len() && !self.slots.is_empty() {
                break;
            }
            self.wait_irq(10);
            waited += 1;
        }
        let slot = self.slots.pop().unwrap();
        let mut at = slot;
        let mut bufs = Vec::new();
        for p in parts {
            self.mem.write_slice(p, GuestAddress(at)).unwrap();
            bufs.push((at, p.len() as u32, false));
            at += p.len() as u64;
        }
        self.q[1].add(&self.mem, &bufs, slot);
        self.kick(TXQ);
    }

    fn send(&mut self, hdr: Header, payload: &[u8]) {
        let mut h = hdr;
        h.len = payload.len() as u32;
        if payload.is_empty() {
            self.send_raw(&[&h.to_bytes()]);
        } else {
            self.send_raw(&[&h.to_bytes(), payload]);
        }
    }

    /// Return used tx buffers to the pool.
    fn reap_tx(&mut self) {
        while let Some((_, _, slot)) = self.q[1].take_used(&self.mem) {
            self.slots.push(slot);
        }
    }

    /// Wait for an interrupt (or `ms`).
    fn wait_irq(&self, ms: i32) {
        let mut p = libc::pollfd {
            fd: self.irq.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `p` is a valid pollfd that lives across the call.
        unsafe { libc::poll(&mut p, 1, ms) };
        let _ = self.irq.read();
    }

    /// The next packet the device put in an rx buffer (the buffer is
    /// posted again), or None after `timeout`.
    fn recv_timeout(&mut self, timeout: Duration) -> Option<(Header, Vec<u8>)> {
        let deadline = Instant::now() + timeout;
        loop {
            self.reap_tx();
            if let Some((_, len, slot)) = self.q[0].take_used(&self.mem) {
                if len == 0 {
                    // A buffer given back unused (too small for a header).
                    self.slots.push(slot);
                    continue;
                }
                let mut hb = [0u8; HDR_LEN];
                self.mem.read_slice(&mut hb, GuestAddress(slot)).unwrap();
                let h = Header::parse(&hb).unwrap();
                assert!(len as usize >= HDR_LEN, "used length {len}");
                let n = len as usize - HDR_LEN;
                assert_eq!(n, h.len as usize, "used length and header disagree");
                let mut data = vec![0u8; n];
                let at = if self.split_rx {
                    slot + 0x100
                } else {
                    slot + HDR_LEN as u64
                };
                self.mem.read_slice(&mut data, GuestAddress(at)).unwrap();
                self.slots.push(slot);
                self.post_rx();
                self.kick(RXQ);
                return Some((h, data));
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            self.wait_irq(((deadline - now).as_millis() as i32).clamp(1, 20));
        }
    }

    fn recv(&mut self) -> (Header, Vec<u8>) {
        self.recv_timeout(Duration::from_secs(5))
            .expect("no packet from the device")
    }

    /// Nothing arrives for a while.
    fn expect_silence(&mut self) {
        if let Some((h, d)) = self.recv_timeout(Duration::from_millis(200)) {
            panic!("unexpected packet {h:?} with {} bytes", d.len());
        }
    }
}

fn hdr(src_port: u32, dst_port: u32, op: u16) -> Header {
    Header {
        src_cid: GUEST,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        type_: TYPE_STREAM,
        op,
        buf_alloc: 256 * 1024,
        ..Header::default()
    }
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: pipe2 succeeded: both are fresh descriptors we own.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fn device(ports: Vec<(u32, Endpoint)>) -> Vsock {
    Vsock::new(VsockConfig {
        guest_cid: GUEST,
        ports,
    })
    .unwrap()
}

/// Guest connects from `gport` to `port`; checks the RESPONSE.
fn connect(g: &mut Guest, gport: u32, port: u32) {
    g.send(hdr(gport, port, OP_REQUEST), &[]);
    let (r, _) = g.recv();
    assert_eq!(
        (r.op, r.src_cid, r.dst_cid, r.src_port, r.dst_port, r.type_),
        (OP_RESPONSE, HOST_CID, GUEST, port, gport, TYPE_STREAM),
        "{r:?}"
    );
    assert_eq!(r.buf_alloc, BUF_ALLOC);
}

/// Receive RW payloads on `gport` until `n` bytes came (other packets,
/// such as credit updates, are skipped).
fn recv_data(g: &mut Guest, gport: u32, n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while out.len() < n {
        let (h, d) = g.recv();
        assert_eq!(h.dst_port, gport);
        if h.op == OP_RW {
            out.extend(d);
        } else {
            assert!(
                matches!(h.op, OP_CREDIT_UPDATE | OP_CREDIT_REQUEST),
                "{h:?}"
            );
        }
    }
    out
}

/// The next packet that is not a credit update or request.
fn recv_ctl(g: &mut Guest) -> Header {
    loop {
        let (h, _) = g.recv();
        if !matches!(h.op, OP_CREDIT_UPDATE | OP_CREDIT_REQUEST) {
            return h;
        }
    }
}

#[test]
fn config_space_and_features() {
    let d = device(vec![]);
    assert_eq!(d.device_type(), 19);
    assert_eq!(d.avail_features(), F_VERSION_1);
    assert_eq!(d.queue_max_sizes(), &[QUEUE_SIZE; 3]);
    let mut b = [0xffu8; 12];
    d.read_config(0, &mut b);
    assert_eq!(b, [3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let mut b = [0xffu8; 4];
    d.read_config(u64::MAX - 1, &mut b);
    assert_eq!(b, [0; 4]);
    assert!(matches!(
        Vsock::new(VsockConfig {
            guest_cid: 2,
            ports: vec![]
        }),
        Err(VsockError::BadCid(2))
    ));
    let (a, b) = UnixStream::pair().unwrap();
    let r = Vsock::new(VsockConfig {
        guest_cid: 3,
        ports: vec![
            (1, Endpoint::Stream(a.into())),
            (1, Endpoint::Stream(b.into())),
        ],
    });
    assert!(matches!(r, Err(VsockError::DuplicatePort(1))));
}

#[test]
fn control_stream_both_directions_and_close() {
    let (host, dev_end) = UnixStream::pair().unwrap();
    let mut d = device(vec![(1024, Endpoint::Stream(dev_end.into()))]);
    let h = d.handle();
    let mut g = Guest::start(&mut d);
    assert!(!h.is_connected(1024));
    connect(&mut g, 5000, 1024);
    assert!(h.is_connected(1024));

    g.send(hdr(5000, 1024, OP_RW), b"hello");
    let mut host = host;
    let mut b = [0u8; 5];
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    host.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"hello");

    host.write_all(b"world").unwrap();
    assert_eq!(recv_data(&mut g, 5000, 5), b"world");

    // The launcher closes its end: the guest hears "no more data".
    drop(host);
    let s = recv_ctl(&mut g);
    assert_eq!((s.op, s.flags), (OP_SHUTDOWN, SHUTDOWN_SEND));
    assert!(!h.wait_closed(&[1024], Duration::from_millis(50)));

    // Guest close(): SHUTDOWN both, then our RST.
    let mut sd = hdr(5000, 1024, OP_SHUTDOWN);
    sd.flags = SHUTDOWN_BOTH;
    g.send(sd, &[]);
    let r = recv_ctl(&mut g);
    assert_eq!((r.op, r.dst_port, r.src_port), (OP_RST, 5000, 1024));
    assert!(h.wait_closed(&[1024], Duration::from_secs(5)));
    assert!(!h.is_connected(1024));

    // The port took its one connection.
    g.send(hdr(5001, 1024, OP_REQUEST), &[]);
    assert_eq!(recv_ctl(&mut g).op, OP_RST);
}

#[test]
fn stdout_output_in_order_then_eof() {
    let (r, w) = pipe();
    let mut d = device(vec![(1026, Endpoint::Output(w))]);
    let h = d.handle();
    let reader = std::thread::spawn(move || {
        let mut f = std::fs::File::from(r);
        let mut all = Vec::new();
        f.read_to_end(&mut all).unwrap();
        all
    });
    // Linux 6.1-style rx buffers (header and data in two descriptors).
    let mut g = Guest::start_with(&mut d, 4096, true);
    connect(&mut g, 6000, 1026);
    let mut expect: Vec<u8> = Vec::new();
    for i in 0..200u32 {
        let p: Vec<u8> = (0..(i * 37 % 3000 + 1)).map(|k| (k + i) as u8).collect();
        expect.extend(&p);
        g.send(hdr(6000, 1026, OP_RW), &p);
        g.reap_tx();
    }
    assert!(!h.wait_closed(&[1026], Duration::from_millis(20)));
    let mut sd = hdr(6000, 1026, OP_SHUTDOWN);
    sd.flags = SHUTDOWN_BOTH;
    g.send(sd, &[]);
    assert_eq!(recv_ctl(&mut g).op, OP_RST);
    // EOF: the device dropped its fd.
    let got = reader.join().unwrap();
    assert_eq!(got.len(), expect.len());
    assert!(got == expect, "bytes out of order");
    assert!(h.wait_closed(&[1026], Duration::from_secs(5)));
}

#[test]
fn stdin_input_eof_sends_shutdown() {
    let (r, w) = pipe();
    let mut d = device(vec![(1025, Endpoint::Input(r))]);
    let h = d.handle();
    let mut g = Guest::start(&mut d);
    let mut w = std::fs::File::from(w);
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
    let writer = std::thread::spawn(move || {
        w.write_all(&data).unwrap();
        data
    });
    connect(&mut g, 7000, 1025);
    let mut got = Vec::new();
    let mut credit_sent = 0;
    loop {
        let (p, d) = g.recv();
        match p.op {
            OP_RW => {
                assert!(d.len() <= 4096, "more than one rx buffer holds");
                got.extend(d);
                // Tell the device we consumed it (as the guest does when
                // its buffer frees up).
                if got.len() - credit_sent >= 64 * 1024 {
                    let mut u = hdr(7000, 1025, OP_CREDIT_UPDATE);
                    u.fwd_cnt = got.len() as u32;
                    g.send(u, &[]);
                    credit_sent = got.len();
                }
            }
            OP_SHUTDOWN => {
                assert_eq!(p.flags, SHUTDOWN_SEND);
                break;
            }
            OP_CREDIT_UPDATE | OP_CREDIT_REQUEST => {}
            op => panic!("unexpected op {op}"),
        }
    }
    let data = writer.join().unwrap();
    assert!(
        got == data,
        "stdin bytes differ ({} vs {})",
        got.len(),
        data.len()
    );
    let mut sd = hdr(7000, 1025, OP_SHUTDOWN);
    sd.flags = SHUTDOWN_BOTH;
    sd.fwd_cnt = got.len() as u32;
    g.send(sd, &[]);
    assert_eq!(recv_ctl(&mut g).op, OP_RST);
    assert!(h.wait_closed(&[1025], Duration::from_secs(5)));
}

#[test]
fn refusals_get_rst_or_are_dropped() {
    let (_host, dev_end) = UnixStream::pair().unwrap();
    let mut d = device(vec![(1024, Endpoint::Stream(dev_end.into()))]);
    let mut g = Guest::start(&mut d);
    // Unknown port.
    g.send(hdr(1, 9999, OP_REQUEST), &[]);
    let r = g.recv().0;
    assert_eq!(
        (r.op, r.src_port, r.dst_port, r.dst_cid),
        (OP_RST, 9999, 1, GUEST)
    );
    // Wrong destination CID.
    let mut h = hdr(2, 1024, OP_REQUEST);
    h.dst_cid = 7;
    g.send(h, &[]);
    assert_eq!(g.recv().0.op, OP_RST);
    // SEQPACKET.
    let mut h = hdr(3, 1024, OP_REQUEST);
    h.type_ = 2;
    g.send(h, &[]);
    assert_eq!(g.recv().0.op, OP_RST);
    // Unknown operation.
    g.send(hdr(4, 1024, 42), &[]);
    assert_eq!(g.recv().0.op, OP_RST);
    // Data for no connection.
    g.send(hdr(5, 1024, OP_RW), b"x");
    assert_eq!(g.recv().0.op, OP_RST);
    // An RST for no connection is not answered; a spoofed source CID is
    // dropped.
    g.send(hdr(6, 1024, OP_RST), &[]);
    let mut h = hdr(7, 1024, OP_REQUEST);
    h.src_cid = 4;
    g.send(h, &[]);
    g.expect_silence();
    // None of that used up the port.
    connect(&mut g, 8, 1024);
}

#[test]
fn second_connection_to_busy_port_is_reset() {
    let (_host, dev_end) = UnixStream::pair().unwrap();
    let mut d = device(vec![(1024, Endpoint::Stream(dev_end.into()))]);
    let h = d.handle();
    let mut g = Guest::start(&mut d);
    connect(&mut g, 100, 1024);
    g.send(hdr(101, 1024, OP_REQUEST), &[]);
    let r = recv_ctl(&mut g);
    assert_eq!((r.op, r.dst_port), (OP_RST, 101));
    // A repeated REQUEST from the live connection's own port too.
    g.send(hdr(100, 1024, OP_REQUEST), &[]);
    assert_eq!(recv_ctl(&mut g).op, OP_RST);
    assert!(h.is_connected(1024));
}

#[test]
fn ports_added_at_run_time_carry_data_then_are_forgotten() {
    let (_host, dev_end) = UnixStream::pair().unwrap();
    let mut d = device(vec![(1024, Endpoint::Stream(dev_end.into()))]);
    let h = d.handle();
    let mut g = Guest::start(&mut d);
    // Not there yet: refused.
    g.send(hdr(200, 70_000, OP_REQUEST), &[]);
    assert_eq!(recv_ctl(&mut g).op, OP_RST);
    // A fixed port cannot be added again, nor can a Stream; nothing of a
    // refused batch is added.
    let (_r0, w0) = pipe();
    let (s1, _s2) = UnixStream::pair().unwrap();
    assert!(matches!(
        h.add_ports(vec![
            (70_001, Endpoint::Output(w0)),
            (1024, Endpoint::Output(pipe().1))
        ]),
        Err(VsockError::DuplicatePort(1024))
    ));
    assert!(matches!(
        h.add_ports(vec![(70_002, Endpoint::Stream(s1.into()))]),
        Err(VsockError::StreamAdded(70_002))
    ));
    let (r, w) = pipe();
    h.add_ports(vec![(70_000, Endpoint::Output(w))]).unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        std::fs::File::from(r).read_to_end(&mut all).unwrap();
        all
    });
    connect(&mut g, 201, 70_000);
    assert!(h.is_connected(70_000));
    g.send(hdr(201, 70_000, OP_RW), b"exec output");
    g.reap_tx();
    let mut sd = hdr(201, 70_000, OP_SHUTDOWN);
    sd.flags = SHUTDOWN_BOTH;
    g.send(sd, &[]);
    assert_eq!(recv_ctl(&mut g).op, OP_RST);
    assert_eq!(reader.join().unwrap(), b"exec output");
    assert!(h.wait_closed(&[70_000], Duration::from_secs(5)));
    assert!(h.ports_done(&[70_000]));
    // Forgotten: its status is gone and a new connection is refused.
    h.forget_ports(&[70_000]);
    assert!(!h.ports_done(&[70_000]));
    g.send(hdr(202, 70_000, OP_REQUEST), &[]);
    assert_eq!(recv_ctl(&mut g).op, OP_RST);
    // An added port never connected is closed when forgotten: its reader
    // sees end of file.
    let (r2, w2) = pipe();
    h.add_ports(vec![(70_003, Endpoint::Output(w2))]).unwrap();
    h.forget_ports(&[70_003]);
    let mut rest = Vec::new();
    std::fs::File::from(r2).read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}

#[test]
fn host_to_guest_respects_guest_credit_and_resumes_on_update() {
    let (mut host, dev_end) = UnixStream::pair().unwrap();
    let mut d = device(vec![(1024, Endpoint::Stream(dev_end.into()))]);
    let mut g = Guest::start(&mut d);
    let mut req = hdr(300, 1024, OP_REQUEST);
    req.buf_alloc = 1000;
    g.send(req, &[]);
    assert_eq!(g.recv().0.op, OP_RESPONSE);
    let data: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
    host.write_all(&data).unwrap();
    let mut got = Vec::new();
    let mut requested = false;
    while let Some((p, d)) = g.recv_timeout(Duration::from_millis(300)) {
        match p.op {
            OP_RW => got.extend(d),
            OP_CREDIT_REQUEST => requested = true,
            op => panic!("unexpected op {op}"),
        }
    }
    assert_eq!(got.len(), 1000, "the device sent past the guest's credit");
    assert!(requested, "no CREDIT_REQUEST when out of credit");
    // The guest read it all: credit for 1000 more.
    let mut u = hdr(300, 1024, OP_CREDIT_UPDATE);
    u.buf_alloc = 1000;
    u.fwd_cnt = 1000;
    g.send(u, &[]);
    got.extend(recv_data(&mut g, 300, 1000));
    assert_eq!(got.len(), 2000);
    assert!(got[..] == data[..2000]);
    // Out of credit again. A CREDIT_REQUEST that gives no credit is
    // answered with our credit, and no data.
    let mut q = hdr(300, 1024, OP_CREDIT_REQUEST);
    q.buf_alloc = 1000;
    q.fwd_cnt = 1000;
    g.send(q, &[]);
    let mut saw_update = false;
    while let Some((p, _)) = g.recv_timeout(Duration::from_millis(300)) {
        match p.op {
            OP_CREDIT_UPDATE => {
                assert_eq!(p.buf_alloc, BUF_ALLOC);
                saw_update = true;
            }
            OP_CREDIT_REQUEST => {}
            op => panic!("unexpected op {op}"),
        }
    }
    assert!(saw_update);
    let mut u = hdr(300, 1024, OP_CREDIT_UPDATE);
    u.buf_alloc = 1000;
    u.fwd_cnt = 2000;
    g.send(u, &[]);
    got.extend(recv_data(&mut g, 300, 1000));
    assert!(got[..] == data[..3000]);
}

#[test]
fn guest_flood_stops_at_credit_on_a_slow_stdout() {
    let (r, w) = pipe();
    // The test counts on a pipe that takes exactly one 64 KiB chunk.
    // SAFETY: F_SETPIPE_SZ on a pipe fd we own; no memory is passed.
    let sz = unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, 64 * 1024) };
    assert_eq!(sz, 64 * 1024);
    let mut d = device(vec![(1026, Endpoint::Output(w))]);
    let h = d.handle();
    let mut g = Guest::start(&mut d);
    connect(&mut g, 400, 1026);
    let chunk = vec![0x5au8; 64 * 1024];
    // Fill the whole credit; nobody reads the pipe, which takes 64 KiB.
    for _ in 0..4 {
        g.send(hdr(400, 1026, OP_RW), &chunk);
    }
    // The helper writes one chunk into the pipe, then blocks: the device
    // tells the near-starved guest about the 64 KiB it freed.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut fwd = 0;
    while fwd < 64 * 1024 && Instant::now() < deadline {
        if let Some((p, _)) = g.recv_timeout(Duration::from_millis(100)) {
            assert_eq!(p.op, OP_CREDIT_UPDATE);
            fwd = p.fwd_cnt;
        }
    }
    assert_eq!(fwd, 64 * 1024);
    g.expect_silence();
    // Use exactly the freed credit, then one byte more: refused.
    g.send(hdr(400, 1026, OP_RW), &chunk);
    g.expect_silence();
    assert!(h.is_connected(1026));
    g.send(hdr(400, 1026, OP_RW), b"!");
    let rst = recv_ctl(&mut g);
    assert_eq!(rst.op, OP_RST);
    // What was accepted is still delivered, then EOF.
    let mut all = Vec::new();
    std::fs::File::from(r).read_to_end(&mut all).unwrap();
    assert_eq!(all.len(), 5 * 64 * 1024);
    assert!(h.wait_closed(&[1026], Duration::from_secs(5)));
}

#[test]
fn malformed_packets_do_not_panic() {
    let (mut host, dev_end) = UnixStream::pair().unwrap();
    let mut d = device(vec![(1024, Endpoint::Stream(dev_end.into()))]);
    let mut g = Guest::start(&mut d);
    // Too short for a header: dropped.
    g.send_raw(&[&[1u8; 10]]);
    g.send_raw(&[&[]]);
    // Header split over descriptors is fine (it is a REQUEST to nowhere).
    let b = hdr(1, 4, OP_REQUEST).to_bytes();
    g.send_raw(&[&b[..7], &b[7..30], &b[30..]]);
    assert_eq!(g.recv().0.op, OP_RST);
    // Claims a huge payload / more than the chain holds.
    let mut h = hdr(1, 1024, OP_RW);
    h.len = u32::MAX;
    g.send_raw(&[&h.to_bytes(), &[0u8; 16]]);
    assert_eq!(g.recv().0.op, OP_RST);
    let mut h = hdr(1, 1024, OP_RW);
    h.len = 100;
    g.send_raw(&[&h.to_bytes(), &[0u8; 99]]);
    assert_eq!(g.recv().0.op, OP_RST);
    // A descriptor outside guest memory, and a write-only tx chain.
    let slot = g.slots.pop().unwrap();
    g.q[1].add(&g.mem, &[(MEM_SIZE as u64 - 8, 64, false)], slot);
    let slot = g.slots.pop().unwrap();
    g.q[1].add(&g.mem, &[(slot, 64, true)], slot);
    g.kick(TXQ);
    // Random bytes as headers.
    let mut s: u64 = 0x2545_f491_4f6c_dd1d;
    for _ in 0..200 {
        let mut b = [0u8; 60];
        for x in b.iter_mut() {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            *x = s as u8;
        }
        g.send_raw(&[&b]);
        g.reap_tx();
        while g.recv_timeout(Duration::ZERO).is_some() {}
    }
    while g.recv_timeout(Duration::from_millis(100)).is_some() {}
    // An rx buffer too small for a header is given back unused.
    let slot = g.slots.pop().unwrap();
    g.q[0].add(&g.mem, &[(slot, 8, true)], slot);
    // The device still serves: a malformed packet on a live connection
    // resets it; the port is then used up.
    connect(&mut g, 77, 1024);
    host.write_all(b"ok").unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        let (p, d) = g.recv();
        assert!(p.op == OP_RW || p.len == 0);
        got.extend(d);
    }
    assert_eq!(got, b"ok");
    let mut h = hdr(77, 1024, OP_RW);
    h.len = 70_000;
    g.send_raw(&[&h.to_bytes()]);
    assert_eq!(recv_ctl(&mut g).op, OP_RST);
}

#[test]
fn stop_ends_the_worker() {
    let (r, w) = pipe();
    let mut d = device(vec![(1026, Endpoint::Output(w))]);
    let h = d.handle();
    let mut g = Guest::start(&mut d);
    connect(&mut g, 1, 1026);
    g.send(hdr(1, 1026, OP_RW), b"last words");
    let mut f = std::fs::File::from(r);
    let mut b = [0u8; 10];
    f.read_exact(&mut b).unwrap();
    g.stop.write(1).unwrap();
    let worker = d.worker.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !worker.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(worker.is_finished());
    worker.join().unwrap();
    // The Output was flushed and its fd dropped.
    let mut rest = Vec::new();
    f.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    assert!(h.wait_closed(&[1026], Duration::from_secs(5)));
    // A second activation is refused.
    let mem = Mem::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
    let e = d.activate(Activation {
        mem,
        interrupt: Arc::new(Interrupt::new(ev())),
        queues: vec![],
        acked_features: 0,
        stop: ev(),
    });
    assert!(e.is_err());
}

#[test]
fn missing_or_invalid_queues_are_refused() {
    let mut d = device(vec![]);
    let mem = Mem::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let q = DrvQ::new(0x1_0000, 16);
    let e = d.activate(Activation {
        mem: mem.clone(),
        interrupt: Arc::new(Interrupt::new(ev())),
        queues: vec![ActiveQueue {
            index: 0,
            queue: q.queue(),
            kick: ev(),
        }],
        acked_features: F_VERSION_1,
        stop: ev(),
    });
    assert!(matches!(e, Err(ActivateError::MissingQueue(1))), "{e:?}");
    let mut d = device(vec![]);
    let bad = DrvQ::new(0x1000_0000, 16);
    let e = d.activate(Activation {
        mem,
        interrupt: Arc::new(Interrupt::new(ev())),
        queues: vec![ActiveQueue {
            index: 0,
            queue: bad.queue(),
            kick: ev(),
        }],
        acked_features: F_VERSION_1,
        stop: ev(),
    });
    assert!(matches!(e, Err(ActivateError::BadQueue(0))), "{e:?}");
}

/// Guest -> host throughput into a pipe, 64 KiB packets:
/// `cargo test -p sandbox --release --lib vsock::tests::throughput -- --ignored --nocapture`
#[test]
#[ignore]
fn throughput_guest_to_pipe() {
    let (r, w) = pipe();
    let mut d = device(vec![(1026, Endpoint::Output(w))]);
    let total: usize = 1 << 30;
    let reader = std::thread::spawn(move || {
        let mut f = std::fs::File::from(r);
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0usize;
        loop {
            match f.read(&mut buf).unwrap() {
                0 => return n,
                k => n += k,
            }
        }
    });
    let mut g = Guest::start(&mut d);
    connect(&mut g, 9, 1026);
    let chunk = vec![0xa5u8; 64 * 1024];
    let mut sent = 0usize;
    let mut fwd = 0u32;
    let t0 = Instant::now();
    while sent < total {
        // Respect the device's credit as the guest driver does.
        let in_flight = (sent as u32).wrapping_sub(fwd);
        if in_flight as usize + chunk.len() <= BUF_ALLOC as usize && g.slots.len() > 8 {
            g.send(hdr(9, 1026, OP_RW), &chunk);
            sent += chunk.len();
            continue;
        }
        g.reap_tx();
        if let Some((p, _)) = g.recv_timeout(Duration::from_millis(1)) {
            fwd = p.fwd_cnt;
        }
    }
    let mut sd = hdr(9, 1026, OP_SHUTDOWN);
    sd.flags = SHUTDOWN_BOTH;
    g.send(sd, &[]);
    let got = reader.join().unwrap();
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(got, total);
    println!(
        "vsock guest->host into a pipe: {} MiB in {secs:.2} s = {:.0} MiB/s (64 KiB packets)",
        total >> 20,
        (total >> 20) as f64 / secs
    );
}
