//! The sandbox's resolver: a thread of the launcher that answers DNS
//! queries on a UDP socket bound to 127.0.0.1:53 *inside* the sandbox's
//! network namespace (made by [`super::ns::dns_socket`]); the sandbox's
//! `/etc/resolv.conf` names it.
//!
//! With `--allow` rules, only names that a DNS-name rule covers are
//! forwarded; any other query is answered `REFUSED`. The addresses of an
//! answer (A and AAAA records) are added to the rule's nftables sets
//! before the answer is passed on, so the sandbox can reach exactly the
//! addresses its allowed names resolved to. Without `--allow` every query
//! is forwarded. The upstream server is `SANDBOX_DNS_UPSTREAM`
//! (`ADDR[:PORT]`) or the first `nameserver` of the host's
//! `/etc/resolv.conf`; the launcher talks to it from the host's network
//! namespace, outside the sandbox's firewall.
//!
//! Queries are hostile input: every read is bounds-checked and a malformed
//! packet is dropped.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use super::ns::NsFds;
use super::rule::Rule;

/// The environment variable naming the upstream resolver.
pub const UPSTREAM_ENV: &str = "SANDBOX_DNS_UPSTREAM";

/// The upstream resolver: `SANDBOX_DNS_UPSTREAM` or the host's first
/// nameserver.
pub fn upstream() -> Result<SocketAddr, String> {
    let parse = |s: &str| -> Option<SocketAddr> {
        s.parse::<SocketAddr>()
            .ok()
            .or_else(|| s.parse::<IpAddr>().ok().map(|a| SocketAddr::new(a, 53)))
    };
    if let Ok(v) = std::env::var(UPSTREAM_ENV) {
        return parse(v.trim()).ok_or_else(|| {
            format!("{UPSTREAM_ENV}='{v}': expected ADDR or ADDR:PORT ([ADDR]:PORT for IPv6)")
        });
    }
    let conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    conf.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .find_map(|a| parse(a.trim()))
        .ok_or_else(|| format!("no nameserver in /etc/resolv.conf; set {UPSTREAM_ENV}=ADDR[:PORT]"))
}

/// The question of a query: the name (lower case, no trailing dot) and
/// the offset just past the question section.
pub fn question(pkt: &[u8]) -> Option<(String, usize)> {
    if pkt.len() < 12 || u16::from_be_bytes([pkt[4], pkt[5]]) != 1 {
        return None;
    }
    let mut i = 12;
    let mut name = String::new();
    loop {
        let len = *pkt.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        if len > 63 || name.len() + len > 253 {
            return None;
        }
        let label = pkt.get(i..i + len)?;
        if !name.is_empty() {
            name.push('.');
        }
        for b in label {
            if !(b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_') {
                return None;
            }
            name.push(b.to_ascii_lowercase() as char);
        }
        i += len;
    }
    // QTYPE and QCLASS.
    pkt.get(i..i + 4)?;
    Some((name, i + 4))
}

/// Skip a (possibly compressed) name at `i`; the offset after it.
fn skip_name(pkt: &[u8], mut i: usize) -> Option<usize> {
    loop {
        let b = *pkt.get(i)?;
        match b {
            0 => return Some(i + 1),
            b if b & 0xc0 == 0xc0 => {
                pkt.get(i + 1)?;
                return Some(i + 2);
            }
            b if b & 0xc0 == 0 => i += 1 + b as usize,
            _ => return None,
        }
    }
}

/// The A and AAAA addresses in the answer section of `pkt`.
pub fn answer_addrs(pkt: &[u8]) -> Option<Vec<IpAddr>> {
    let ancount = u16::from_be_bytes([*pkt.get(6)?, *pkt.get(7)?]);
    let (_, mut i) = question(pkt)?;
    let mut out = Vec::new();
    for _ in 0..ancount {
        i = skip_name(pkt, i)?;
        let h = pkt.get(i..i + 10)?;
        let ty = u16::from_be_bytes([h[0], h[1]]);
        let len = u16::from_be_bytes([h[8], h[9]]) as usize;
        let data = pkt.get(i + 10..i + 10 + len)?;
        match (ty, len) {
            (1, 4) => out.push(IpAddr::from(<[u8; 4]>::try_from(data).ok()?)),
            (28, 16) => out.push(IpAddr::from(<[u8; 16]>::try_from(data).ok()?)),
            _ => {}
        }
        i += 10 + len;
    }
    Some(out)
}

/// A `REFUSED` answer to `query` (its header and question).
pub fn refused(query: &[u8], qend: usize) -> Vec<u8> {
    let mut r = query[..qend].to_vec();
    r[2] = 0x80 | (query[2] & 0x01); // QR, keep RD
    r[3] = 0x80 | 5; // RA, RCODE = REFUSED
    r[6..12].fill(0);
    r[4] = 0;
    r[5] = 1;
    r
}

/// What the resolver thread needs.
#[derive(Debug)]
pub struct Resolver {
    pub sock: OwnedFd,
    pub upstream: SocketAddr,
    /// Every rule, by index (the nft set names use the index).
    pub rules: Vec<Rule>,
    /// Whether names are filtered (`--allow` given).
    pub filtered: bool,
    pub ns: Arc<NsFds>,
    pub log_denied: bool,
}

impl Resolver {
    /// Serve until the socket fails (the launcher exits with the run).
    pub fn spawn(self) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("sandbox-dns".into())
            .spawn(move || self.serve())
    }

    fn serve(self) {
        let Resolver {
            sock,
            upstream,
            rules,
            filtered,
            ns,
            log_denied,
        } = self;
        let sock = UdpSocket::from(sock);
        // (rule, address) pairs already in the firewall's sets.
        let mut added: std::collections::HashSet<(usize, IpAddr)> = Default::default();
        let mut buf = [0u8; 1500];
        while let Ok((n, peer)) = sock.recv_from(&mut buf) {
            let q = &buf[..n];
            let Some((name, qend)) = question(q) else {
                continue;
            };
            let matching: Vec<usize> = rules
                .iter()
                .enumerate()
                .filter(|(_, r)| r.matches_name(&name))
                .map(|(i, _)| i)
                .collect();
            if filtered && matching.is_empty() {
                if log_denied {
                    eprintln!("sandbox: denied: DNS name {name} (no --allow rule names it)");
                }
                let _ = sock.send_to(&refused(q, qend), peer);
                continue;
            }
            let Some(answer) = forward(upstream, q) else {
                continue;
            };
            if !matching.is_empty() {
                let addrs = answer_addrs(&answer).unwrap_or_default();
                let script: String = matching
                    .iter()
                    .map(|i| {
                        let new: Vec<IpAddr> = addrs
                            .iter()
                            .copied()
                            .filter(|a| !added.contains(&(*i, *a)))
                            .collect();
                        super::nft::add_elements(*i, &new)
                    })
                    .collect();
                if !script.is_empty() && super::nft::apply(&ns, &script).is_err() {
                    // Without the addresses in the sets, the answer would
                    // lead nowhere: refuse rather than half-work.
                    let _ = sock.send_to(&refused(q, qend), peer);
                    continue;
                }
                for i in &matching {
                    added.extend(addrs.iter().map(|a| (*i, *a)));
                }
            }
            let _ = sock.send_to(&answer, peer);
        }
    }
}

/// Send `q` to `upstream` and wait for the answer with the same id.
fn forward(upstream: SocketAddr, q: &[u8]) -> Option<Vec<u8>> {
    let bind: SocketAddr = if upstream.is_ipv4() {
        "0.0.0.0:0".parse().ok()?
    } else {
        "[::]:0".parse().ok()?
    };
    let up = UdpSocket::bind(bind).ok()?;
    up.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    up.connect(upstream).ok()?;
    up.send(q).ok()?;
    let mut buf = vec![0u8; 4096];
    loop {
        let n = up.recv(&mut buf).ok()?;
        if n >= 12 && buf[..2] == q[..2] {
            buf.truncate(n);
            return Some(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for l in name.split('.') {
            q.push(l.len() as u8);
            q.extend_from_slice(l.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        q
    }

    #[test]
    fn parses_the_question_and_answers() {
        let q = query("Pkg.Test");
        let (name, end) = question(&q).unwrap();
        assert_eq!((name.as_str(), end), ("pkg.test", q.len()));
        let mut a = q.clone();
        a[2] = 0x81;
        a[7] = 2; // two answers
        a.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 0, 0, 9]);
        a.extend_from_slice(&[0xc0, 12, 0, 28, 0, 1, 0, 0, 0, 60, 0, 16]);
        a.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9]);
        let addrs = answer_addrs(&a).unwrap();
        assert_eq!(
            addrs,
            [
                "10.0.0.9".parse::<IpAddr>().unwrap(),
                "fd00::9".parse().unwrap()
            ]
        );
        let r = refused(&q, end);
        assert_eq!(r[3] & 0x0f, 5);
        assert_eq!(&r[..2], &q[..2]);
    }

    #[test]
    fn hostile_packets_are_dropped() {
        assert!(question(&[0; 5]).is_none());
        let mut q = query("a.test");
        q.truncate(q.len() - 2);
        assert!(question(&q).is_none());
        let mut bad = query("a.test");
        bad[13] = b'/';
        assert!(question(&bad).is_none());
        let mut a = query("a.test");
        a[7] = 1;
        a.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 40, 1]);
        assert!(answer_addrs(&a).is_none());
        for n in 0..64 {
            let junk: Vec<u8> = (0..n).map(|i| (i * 37 % 256) as u8).collect();
            let _ = question(&junk);
            let _ = answer_addrs(&junk);
        }
    }
}
