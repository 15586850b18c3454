//! Hostile snapshot state files: the decoder and the field checks must
//! never panic, and whatever they accept must encode back to a file that
//! decodes to the same state (no field the checks let through is lost).
//!
//! Two shapes of input, chosen by the first byte: the raw file as the
//! fuzzer wrote it (header included), or the rest as a payload wrapped in
//! a valid header with the right length and checksum, so the fuzzer gets
//! past the checksum to the postcard decoder and the field checks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sandbox::vm::snapshot::format::{self, crc32, FORMAT_VERSION, MAGIC};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let file = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        let mut f = MAGIC.to_vec();
        f.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        f.extend_from_slice(&(rest.len() as u64).to_le_bytes());
        f.extend_from_slice(&crc32(rest).to_le_bytes());
        f.extend_from_slice(rest);
        f
    };
    let Ok(snap) = format::decode(&file) else {
        return;
    };
    let again = format::encode(&snap).expect("a decoded state encodes");
    assert_eq!(format::decode(&again).expect("re-decodes"), snap);
    let _ = format::check(snap, Some(&[0x10, 0x174, 0xc000_0080]));
});
