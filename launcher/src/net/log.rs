//! `--log-denied`: the refused packets that the firewall's `deny` chain
//! logs to NFLOG (group [`super::nft::LOG_GROUP`]) are read by a thread of
//! the launcher from a netlink socket bound inside the sandbox's network
//! namespace, and reported on stderr as
//! `sandbox: denied: PROTO ADDR:PORT`. The packets come from the sandbox:
//! they are parsed with bounds checks and reports are capped at
//! [`MAX_REPORTS`] per run.

use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};

/// Reports printed at most per run (the sandbox controls how many packets
/// are refused).
pub const MAX_REPORTS: usize = 100;

/// `PROTO ADDR:PORT` (or `PROTO ADDR`) of an IP packet.
pub fn describe(pkt: &[u8]) -> Option<String> {
    let version = pkt.first()? >> 4;
    let (proto, dst, l4): (u8, IpAddr, usize) = match version {
        4 => {
            let ihl = (pkt[0] & 0x0f) as usize * 4;
            let d: [u8; 4] = pkt.get(16..20)?.try_into().ok()?;
            (*pkt.get(9)?, IpAddr::from(d), ihl)
        }
        6 => {
            let d: [u8; 16] = pkt.get(24..40)?.try_into().ok()?;
            (*pkt.get(6)?, IpAddr::from(d), 40)
        }
        _ => return None,
    };
    let port = || {
        pkt.get(l4 + 2..l4 + 4)
            .map(|p| u16::from_be_bytes([p[0], p[1]]))
    };
    let host = match dst {
        IpAddr::V6(a) => format!("[{a}]"),
        IpAddr::V4(a) => a.to_string(),
    };
    Some(match (proto, port()) {
        (6, Some(p)) => format!("tcp {host}:{p}"),
        (17, Some(p)) => format!("udp {host}:{p}"),
        (1 | 58, _) => format!("icmp {dst}"),
        (n, _) => format!("protocol {n} {dst}"),
    })
}

/// The payloads (`NFULA_PAYLOAD`) of the NFLOG packet messages in `buf`.
pub fn payloads(buf: &[u8]) -> Vec<&[u8]> {
    const NFULNL_MSG_PACKET: u16 = 4 << 8;
    const NFULA_PAYLOAD: u16 = 9;
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(h) = buf.get(i..i + 16) {
        let len = u32::from_ne_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let ty = u16::from_ne_bytes([h[4], h[5]]);
        if len < 16 || i + len > buf.len() {
            break;
        }
        if ty == NFULNL_MSG_PACKET {
            // Attributes after the nfgenmsg.
            let mut a = i + 20;
            while let Some(ah) = buf.get(a..a + 4) {
                let alen = u16::from_ne_bytes([ah[0], ah[1]]) as usize;
                let aty = u16::from_ne_bytes([ah[2], ah[3]]) & 0x3fff;
                if alen < 4 || a + alen > i + len {
                    break;
                }
                if aty == NFULA_PAYLOAD {
                    out.push(&buf[a + 4..a + alen]);
                }
                a += (alen + 3) & !3;
            }
        }
        i += (len + 3) & !3;
    }
    out
}

/// Report refused packets read from `sock` until it fails.
pub fn spawn(sock: OwnedFd) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("sandbox-denied".into())
        .spawn(move || {
            let mut buf = vec![0u8; 65536];
            let mut reported = 0;
            loop {
                // SAFETY: recv into our buffer.
                let n =
                    unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n <= 0 {
                    if n < 0
                        && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
                    {
                        continue;
                    }
                    return;
                }
                for p in payloads(&buf[..n as usize]) {
                    if reported == MAX_REPORTS {
                        eprintln!("sandbox: denied: further refused packets are not reported");
                    }
                    if reported < MAX_REPORTS {
                        if let Some(d) = describe(p) {
                            eprintln!("sandbox: denied: {d}");
                        }
                    }
                    reported += 1;
                }
            }
        })
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_packets_and_survives_junk() {
        let mut v4 = vec![
            0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 3,
        ];
        v4.extend_from_slice(&[0x9c, 0x40, 0x23, 0x28]);
        assert_eq!(describe(&v4).as_deref(), Some("tcp 10.0.0.3:9000"));
        let mut msg = vec![0u8; 20];
        let total = 20 + 4 + v4.len();
        msg[0..4].copy_from_slice(&(total as u32).to_ne_bytes());
        msg[4..6].copy_from_slice(&(4u16 << 8).to_ne_bytes());
        msg.extend_from_slice(&((4 + v4.len()) as u16).to_ne_bytes());
        msg.extend_from_slice(&9u16.to_ne_bytes());
        msg.extend_from_slice(&v4);
        assert_eq!(payloads(&msg), vec![&v4[..]]);
        for n in 0..80 {
            let junk: Vec<u8> = (0..n).map(|i| (i * 53 % 256) as u8).collect();
            let _ = describe(&junk);
            let _ = payloads(&junk);
        }
    }
}
