//! Hostile bytes on the control channel: the launcher must never panic,
//! never buffer without bound, and re-encoding a decoded message must give
//! back a frame that decodes to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sandbox_proto::{decode, encode, FrameBuf, HostMsg, InitMsg, HEADER_LEN, MAX_FRAME};

fuzz_target!(|data: &[u8]| {
    // Whole-payload decoding of both directions.
    if let Ok(m) = decode::<InitMsg>(data) {
        let frame = encode(&m).expect("a decoded message re-encodes");
        assert_eq!(decode::<InitMsg>(&frame[HEADER_LEN..]).ok(), Some(m));
    }
    // HostMsg includes the lifecycle variants (Exec with its ExecSpec,
    // ExecSignal, ProbeTcp) that init decodes while the command runs.
    if let Ok(m) = decode::<HostMsg>(data) {
        let frame = encode(&m).expect("a decoded message re-encodes");
        assert_eq!(decode::<HostMsg>(&frame[HEADER_LEN..]).ok(), Some(m));
    }

    // Stream reassembly with the input split at a data-dependent point.
    let split = data.first().map_or(0, |b| *b as usize % (data.len() + 1));
    let mut fb = FrameBuf::new();
    for chunk in [&data[..split], &data[split..]] {
        if fb.push(chunk).is_err() {
            return;
        }
        while let Ok(Some(_)) = fb.next_msg::<InitMsg>() {}
        assert!(fb.pending() <= 2 * (MAX_FRAME + HEADER_LEN));
    }
});
