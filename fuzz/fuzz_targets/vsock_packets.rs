//! Hostile vsock packets from the guest: the header parser and checks
//! must never panic, whatever they accept must be self-consistent (the
//! payload is exactly what the header claims, at most 64 KiB, a known
//! operation on a stream socket from the guest to the host), and a parsed
//! header must re-encode to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sandbox::vm::virtio::vsock::packet::{
    parse_packet, Header, HDR_LEN, HOST_CID, MAX_PAYLOAD, TYPE_STREAM,
};

fuzz_target!(|data: &[u8]| {
    let guest_cid = 3;
    if let Ok(h) = Header::parse(data) {
        assert_eq!(&h.to_bytes()[..], &data[..HDR_LEN]);
        // Checking against any claimed room never panics.
        let _ = h.check(guest_cid, data.len() - HDR_LEN);
        let _ = h.check(guest_cid, usize::MAX);
        let r = h.rst_reply(guest_cid);
        assert_eq!((r.src_port, r.dst_port), (h.dst_port, h.src_port));
    }
    match parse_packet(data, guest_cid) {
        Ok((h, payload)) => {
            assert_eq!(payload.len(), h.len as usize);
            assert!(h.len <= MAX_PAYLOAD);
            assert!((1..=7).contains(&h.op));
            assert_eq!((h.src_cid, h.dst_cid, h.type_), (guest_cid, HOST_CID, TYPE_STREAM));
        }
        Err(e) => {
            // Every refusal names itself.
            assert!(!e.to_string().is_empty());
        }
    }
});
