//! Per-connection state of the vsock device: the guest's port, the
//! shutdown flags, and the credit accounting of both directions
//! (virtio 1.2, section 5.10.6.3).
//!
//! Guest -> host: we advertise [`BUF_ALLOC`] bytes; `rx_cnt` counts what
//! the guest sent, `fwd_cnt` what reached the host endpoint. The guest may
//! have at most `BUF_ALLOC` bytes in flight (`rx_cnt - fwd_cnt`); a packet
//! beyond that is refused, so the device never holds more than
//! `BUF_ALLOC` bytes per connection whatever the guest does.
//!
//! Host -> guest: the guest advertises `peer_buf_alloc` and `peer_fwd_cnt`
//! in every header it sends; we send at most
//! `peer_buf_alloc - (tx_cnt - peer_fwd_cnt)` bytes ahead. All counters are
//! `u32` and wrap, as on the wire.

use super::packet::{Header, HOST_CID, MAX_PAYLOAD, TYPE_STREAM};

/// Receive buffer advertised to the guest for each connection.
pub const BUF_ALLOC: u32 = 256 * 1024;

#[derive(Debug, Clone)]
pub struct Conn {
    pub guest_cid: u64,
    pub guest_port: u32,
    pub host_port: u32,
    /// Bytes received from the guest (wrapping).
    rx_cnt: u32,
    /// Bytes delivered to the host endpoint (wrapping).
    fwd_cnt: u32,
    /// The `fwd_cnt` the guest last heard from us.
    fwd_cnt_sent: u32,
    /// Bytes sent to the guest (wrapping).
    tx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// `SHUTDOWN_*` flags the guest sent so far.
    pub guest_shutdown: u32,
    /// We told the guest we send no more (SHUTDOWN with `SHUTDOWN_SEND`).
    pub host_shutdown_sent: bool,
    /// The guest asked for our credit (CREDIT_REQUEST).
    credit_requested: bool,
    /// We asked for the guest's credit since it last changed.
    credit_request_sent: bool,
}

impl Conn {
    /// A connection the guest asked for with `req` (an OP_REQUEST).
    pub fn new(req: &Header) -> Conn {
        Conn {
            guest_cid: req.src_cid,
            guest_port: req.src_port,
            host_port: req.dst_port,
            rx_cnt: 0,
            fwd_cnt: 0,
            fwd_cnt_sent: 0,
            tx_cnt: 0,
            peer_buf_alloc: req.buf_alloc,
            peer_fwd_cnt: req.fwd_cnt,
            guest_shutdown: 0,
            host_shutdown_sent: false,
            credit_requested: false,
            credit_request_sent: false,
        }
    }

    /// Take the guest's credit from any header it sent on this connection.
    pub fn update_peer(&mut self, hdr: &Header) {
        if hdr.buf_alloc != self.peer_buf_alloc || hdr.fwd_cnt != self.peer_fwd_cnt {
            self.credit_request_sent = false;
        }
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = hdr.fwd_cnt;
    }

    /// How many bytes we may still send the guest.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        // A guest reporting more forwarded than we sent (or a shrunken
        // buffer) leaves no credit rather than a huge one.
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Bytes received from the guest and not yet delivered to the host.
    pub fn in_flight_rx(&self) -> u32 {
        self.rx_cnt.wrapping_sub(self.fwd_cnt)
    }

    /// Account for `len` bytes the guest sent: `false` (and nothing
    /// counted) when they exceed the credit we gave it.
    pub fn accept_rx(&mut self, len: u32) -> bool {
        let Some(total) = self.in_flight_rx().checked_add(len) else {
            return false;
        };
        if total > BUF_ALLOC {
            return false;
        }
        self.rx_cnt = self.rx_cnt.wrapping_add(len);
        true
    }

    /// `n` bytes reached the host endpoint.
    pub fn delivered(&mut self, n: u32) {
        // Never more than was received: the endpoints only report what
        // they were given.
        let n = n.min(self.in_flight_rx());
        self.fwd_cnt = self.fwd_cnt.wrapping_add(n);
    }

    /// `n` bytes of payload went to the guest.
    pub fn sent(&mut self, n: u32) {
        self.tx_cnt = self.tx_cnt.wrapping_add(n);
    }

    pub fn request_credit_update(&mut self) {
        self.credit_requested = true;
    }

    /// Whether a CREDIT_UPDATE should go to the guest now: it asked, or we
    /// freed half the buffer since it last heard from us, or it is near
    /// starved (less than one full packet of credit as far as it knows)
    /// and we freed anything.
    pub fn wants_credit_update(&self) -> bool {
        let unannounced = self.fwd_cnt.wrapping_sub(self.fwd_cnt_sent);
        if self.credit_requested || unannounced >= BUF_ALLOC / 2 {
            return true;
        }
        let known_free = BUF_ALLOC.saturating_sub(self.rx_cnt.wrapping_sub(self.fwd_cnt_sent));
        unannounced > 0 && known_free < MAX_PAYLOAD
    }

    /// Whether to ask the guest for its credit: we have data for it and no
    /// credit left, and have not asked since the credit last changed.
    pub fn wants_credit_request(&self, have_data: bool) -> bool {
        have_data && self.peer_credit() == 0 && !self.credit_request_sent
    }

    /// A header from us on this connection, carrying our current credit.
    pub fn header(&mut self, op: u16, len: u32, flags: u32) -> Header {
        self.fwd_cnt_sent = self.fwd_cnt;
        self.credit_requested = false;
        if op == super::packet::OP_CREDIT_REQUEST {
            self.credit_request_sent = true;
        }
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.host_port,
            dst_port: self.guest_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: self.fwd_cnt,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::packet::*;
    use super::*;

    fn req(buf_alloc: u32) -> Header {
        Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 7000,
            dst_port: 1026,
            type_: TYPE_STREAM,
            op: OP_REQUEST,
            buf_alloc,
            ..Header::default()
        }
    }

    #[test]
    fn guest_to_host_credit_bounds_in_flight_bytes() {
        let mut c = Conn::new(&req(4096));
        assert!(c.accept_rx(BUF_ALLOC - 10));
        assert!(!c.accept_rx(11));
        assert!(c.accept_rx(10));
        assert!(!c.accept_rx(1));
        assert!(!c.accept_rx(u32::MAX));
        // Nothing freed: no update wanted.
        assert!(!c.wants_credit_update());
        c.delivered(100);
        // The guest believes it has no credit left: tell it at once.
        assert!(c.wants_credit_update());
        let h = c.header(OP_CREDIT_UPDATE, 0, 0);
        assert_eq!((h.fwd_cnt, h.buf_alloc), (100, BUF_ALLOC));
        assert!(!c.wants_credit_update());
        assert!(c.accept_rx(100));
        assert!(!c.accept_rx(1));
        // Delivered counts never pass received ones.
        c.delivered(u32::MAX);
        assert_eq!(c.in_flight_rx(), 0);
    }

    #[test]
    fn host_to_guest_respects_peer_credit_and_wraps() {
        let mut c = Conn::new(&req(1000));
        assert_eq!(c.peer_credit(), 1000);
        c.sent(600);
        assert_eq!(c.peer_credit(), 400);
        c.sent(400);
        assert_eq!(c.peer_credit(), 0);
        assert!(c.wants_credit_request(true));
        assert!(!c.wants_credit_request(false));
        c.header(OP_CREDIT_REQUEST, 0, 0);
        assert!(!c.wants_credit_request(true));
        let mut upd = req(1000);
        upd.op = OP_CREDIT_UPDATE;
        upd.fwd_cnt = 500;
        c.update_peer(&upd);
        assert_eq!(c.peer_credit(), 500);
        // A lying guest (forwarded more than sent) gets no credit.
        upd.fwd_cnt = 5000;
        upd.buf_alloc = 10;
        c.update_peer(&upd);
        assert_eq!(c.peer_credit(), 0);
        // Counters wrap as on the wire.
        let mut c = Conn::new(&req(1000));
        c.tx_cnt = u32::MAX - 10;
        c.peer_fwd_cnt = u32::MAX - 10;
        c.sent(100);
        assert_eq!(c.peer_credit(), 900);
    }
}
