//! Hostile 9P2000.L requests from the guest: the file server must never
//! panic, must answer every request with exactly one well-formed message
//! no larger than the msize, and must keep working afterwards.
//!
//! The input is a sequence of requests, each a little-endian u16 length
//! then that many bytes (a request's own size field is left as the fuzzer
//! wrote it). Each run starts a session (Tversion, Tattach of fid 0) on a
//! fresh server over a small read-write export in the temp directory, so
//! walks, creates and renames have something to act on.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sandbox::fs_share::{Limits, Server};

const MSIZE: u32 = 16 << 10;

fn export() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("sandbox-fuzz-p9-{}", std::process::id()));
        std::fs::create_dir_all(d.join("d")).expect("temp export");
        std::fs::write(d.join("d/f"), b"data").expect("temp file");
        let _ = std::os::unix::fs::symlink("/etc", d.join("d/l"));
        d
    })
}

fn msg(ty: u8, tag: u16, body: &[u8]) -> Vec<u8> {
    let mut m = ((7 + body.len()) as u32).to_le_bytes().to_vec();
    m.push(ty);
    m.extend_from_slice(&tag.to_le_bytes());
    m.extend_from_slice(body);
    m
}

fn check(out: &[u8]) {
    assert!(out.len() >= 7, "a response has a header");
    let size = u32::from_le_bytes([out[0], out[1], out[2], out[3]]) as usize;
    assert_eq!(size, out.len(), "exactly one response, its size field right");
    assert!(size <= MSIZE as usize, "response larger than msize");
    assert_eq!(out[4] % 2, 1, "response types are odd");
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        msize: MSIZE,
        max_fids: 32,
    };
    let mut srv = Server::open(export(), false, limits).expect("open the export");
    let mut out = Vec::new();
    let mut version = MSIZE.to_le_bytes().to_vec();
    version.extend_from_slice(&8u16.to_le_bytes());
    version.extend_from_slice(b"9P2000.L");
    srv.handle(&msg(100, 0xffff, &version), &mut out);
    check(&out);
    let mut attach = 0u32.to_le_bytes().to_vec();
    attach.extend_from_slice(&u32::MAX.to_le_bytes());
    attach.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
    out.clear();
    srv.handle(&msg(104, 1, &attach), &mut out);
    check(&out);

    let mut rest = data;
    while rest.len() >= 2 {
        let n = (u16::from_le_bytes([rest[0], rest[1]]) as usize).min(rest.len() - 2);
        let req = &rest[2..2 + n];
        rest = &rest[2 + n..];
        out.clear();
        srv.handle(req, &mut out);
        check(&out);
    }
});
