//! The rule language of `--allow` and the syntax of `--publish`: parsing
//! and validation only (no system state). See `docs/network.md`, "Rule
//! grammar".
//!
//! ```text
//! RULE   = TARGET [":" PORTS] ["/" PROTO]     (IPv6 with a port: "[ADDR]:PORTS")
//!        | PORTS ["/" PROTO]
//! TARGET = IPV4 | IPV4 "/" LEN | IPV6 | IPV6 "/" LEN | NAME | "*." NAME
//! PORTS  = PORT | PORT "-" PORT               (1-65535)
//! PROTO  = "tcp" | "udp"
//! ```

use std::fmt;
use std::net::IpAddr;

/// Transport protocol of a rule or a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// An address block: an address is a block of full length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    pub fn host(addr: IpAddr) -> Self {
        let len = if addr.is_ipv4() { 32 } else { 128 };
        Cidr { addr, len }
    }
    pub fn is_v4(&self) -> bool {
        self.addr.is_ipv4()
    }
    /// The block with its host bits cleared (nft refuses others).
    pub fn network(&self) -> Cidr {
        let addr = match self.addr {
            IpAddr::V4(a) => {
                let m = match self.len {
                    0 => 0,
                    l => u32::MAX << (32 - l.min(32)),
                };
                IpAddr::V4((u32::from(a) & m).into())
            }
            IpAddr::V6(a) => {
                let m = match self.len {
                    0 => 0,
                    l => u128::MAX << (128 - l.min(128)),
                };
                IpAddr::V6((u128::from(a) & m).into())
            }
        };
        Cidr {
            addr,
            len: self.len,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let full = if self.is_v4() { 32 } else { 128 };
        if self.len == full {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.len)
        }
    }
}

/// What a rule's destination is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Any destination (a rule that names only ports).
    Any,
    Net(Cidr),
    /// A DNS name, lower case, without the trailing dot; `wildcard`:
    /// `*.NAME` (any name below NAME, not NAME itself).
    Name {
        name: String,
        wildcard: bool,
    },
}

/// One `--allow` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub target: Target,
    /// Inclusive port range; `None`: every port (and protocol).
    pub ports: Option<(u16, u16)>,
    /// `None`: TCP and UDP (and, without ports, every protocol).
    pub proto: Option<Proto>,
}

impl Rule {
    /// Whether this DNS-name rule covers `qname` (lower case, no dot).
    pub fn matches_name(&self, qname: &str) -> bool {
        match &self.target {
            Target::Name {
                name,
                wildcard: false,
            } => qname == name,
            Target::Name {
                name,
                wildcard: true,
            } => qname.len() > name.len() + 1 && qname.ends_with(&format!(".{name}")),
            _ => false,
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ports = |f: &mut fmt::Formatter<'_>| match self.ports {
            Some((a, b)) if a == b => write!(f, "{a}"),
            Some((a, b)) => write!(f, "{a}-{b}"),
            None => Ok(()),
        };
        match &self.target {
            Target::Any => ports(f)?,
            Target::Net(c) => {
                let v6_port = !c.is_v4() && self.ports.is_some();
                if v6_port {
                    write!(f, "[{c}]")?
                } else {
                    write!(f, "{c}")?
                }
                if self.ports.is_some() {
                    write!(f, ":")?;
                    ports(f)?;
                }
            }
            Target::Name { name, wildcard } => {
                write!(f, "{}{name}", if *wildcard { "*." } else { "" })?;
                if self.ports.is_some() {
                    write!(f, ":")?;
                    ports(f)?;
                }
            }
        }
        if let Some(p) = self.proto {
            write!(f, "/{}", p.as_str())?;
        }
        Ok(())
    }
}

/// What `--allow` accepts, for error messages.
pub const RULE_ACCEPTED: &str = "expected a CIDR (10.0.0.0/8), an address (192.0.2.7, ::1), \
     HOST:PORT[-PORT] ([ADDR]:PORT for IPv6), a port or port range (443, 8000-8100), or a DNS \
     name (example.org, *.example.org), optionally followed by /tcp or /udp";

fn parse_port(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u16>().ok().filter(|p| *p != 0)
}

/// `PORT` or `PORT-PORT` (low <= high).
pub fn parse_ports(s: &str) -> Option<(u16, u16)> {
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (parse_port(a)?, parse_port(b)?);
            (a <= b).then_some((a, b))
        }
        None => parse_port(s).map(|p| (p, p)),
    }
}

fn parse_cidr(s: &str) -> Option<Cidr> {
    let (a, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let addr: IpAddr = a.parse().ok()?;
    let full = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => full,
        Some(l) if !l.is_empty() && l.len() <= 3 && l.bytes().all(|b| b.is_ascii_digit()) => {
            l.parse::<u8>().ok().filter(|l| *l <= full)?
        }
        Some(_) => return None,
    };
    Some(Cidr { addr, len })
}

/// A DNS name: labels of letters, digits, '-' and '_' (1-63 bytes, not
/// starting or ending with '-'), at least two labels, 253 bytes at most,
/// not all digits (so that a mistyped address is not taken for a name).
fn parse_name(s: &str) -> Option<Target> {
    let (wildcard, rest) = match s.strip_prefix("*.") {
        Some(r) => (true, r),
        None => (false, s),
    };
    let rest = rest.strip_suffix('.').unwrap_or(rest).to_ascii_lowercase();
    let labels: Vec<&str> = rest.split('.').collect();
    let ok = rest.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        && !labels
            .last()
            .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
    ok.then_some(Target::Name {
        name: rest,
        wildcard,
    })
}

/// Parse one `--allow` rule.
pub fn parse_rule(s: &str) -> Result<Rule, String> {
    let bad = || RULE_ACCEPTED.to_string();
    let s = s.trim();
    if s.is_empty() {
        return Err(bad());
    }
    // A trailing /tcp or /udp (a CIDR's "/LEN" is digits).
    let (body, proto) = match s.rsplit_once('/') {
        Some((b, "tcp")) => (b, Some(Proto::Tcp)),
        Some((b, "udp")) => (b, Some(Proto::Udp)),
        _ => (s, None),
    };
    // Port-only rules.
    if let Some(ports) = parse_ports(body) {
        return Ok(Rule {
            target: Target::Any,
            ports: Some(ports),
            proto,
        });
    }
    // [IPv6]:PORTS, or [IPv6] / [IPv6/LEN].
    if let Some(inner) = body.strip_prefix('[') {
        let (inside, after) = inner.split_once(']').ok_or_else(bad)?;
        let cidr = parse_cidr(inside).filter(|c| !c.is_v4()).ok_or_else(bad)?;
        let ports = match after {
            "" => None,
            p => Some(p.strip_prefix(':').and_then(parse_ports).ok_or_else(bad)?),
        };
        return Ok(rule(Target::Net(cidr), ports, proto));
    }
    // A bare IPv6 address or block (more than one ':').
    if body.matches(':').count() > 1 {
        let cidr = parse_cidr(body).ok_or_else(bad)?;
        return Ok(rule(Target::Net(cidr), None, proto));
    }
    let (host, ports) = match body.split_once(':') {
        Some((h, p)) => (h, Some(parse_ports(p).ok_or_else(bad)?)),
        None => (body, None),
    };
    let target = match parse_cidr(host) {
        Some(c) => Target::Net(c),
        None if host
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'.' || b == b'/') =>
        {
            return Err(bad())
        }
        None => parse_name(host).ok_or_else(bad)?,
    };
    Ok(rule(target, ports, proto))
}

fn rule(target: Target, ports: Option<(u16, u16)>, proto: Option<Proto>) -> Rule {
    Rule {
        target,
        ports,
        proto,
    }
}

/// One `--publish [HOSTADDR:]HOSTPORT:PORT[/tcp|/udp]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// `None`: every host address.
    pub host_addr: Option<IpAddr>,
    pub host_port: u16,
    pub port: u16,
    pub proto: Proto,
}

impl fmt::Display for Publish {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host_addr {
            Some(IpAddr::V6(a)) => write!(f, "[{a}]:")?,
            Some(a) => write!(f, "{a}:")?,
            None => {}
        }
        write!(
            f,
            "{}:{}/{}",
            self.host_port,
            self.port,
            self.proto.as_str()
        )
    }
}

pub const PUBLISH_ACCEPTED: &str =
    "expected [HOSTADDR:]HOSTPORT:PORT[/tcp|/udp], such as 8080:80, 127.0.0.1:8080:80/tcp \
     or [::1]:5353:53/udp (ports 1-65535)";

/// Parse one `--publish` value.
pub fn parse_publish(s: &str) -> Result<Publish, String> {
    let bad = || PUBLISH_ACCEPTED.to_string();
    let (body, proto) = match s.rsplit_once('/') {
        Some((b, "tcp")) => (b, Proto::Tcp),
        Some((b, "udp")) => (b, Proto::Udp),
        Some(_) => return Err(bad()),
        None => (s, Proto::Tcp),
    };
    let (addr, rest) = if let Some(inner) = body.strip_prefix('[') {
        let (a, r) = inner.split_once("]:").ok_or_else(bad)?;
        let a: std::net::Ipv6Addr = a.parse().map_err(|_| bad())?;
        (Some(IpAddr::V6(a)), r)
    } else {
        match body.matches(':').count() {
            1 => (None, body),
            2 => {
                let (a, r) = body.split_once(':').ok_or_else(bad)?;
                let a: std::net::Ipv4Addr = a.parse().map_err(|_| bad())?;
                (Some(IpAddr::V4(a)), r)
            }
            _ => return Err(bad()),
        }
    };
    let (hp, p) = rest.split_once(':').ok_or_else(bad)?;
    Ok(Publish {
        host_addr: addr,
        host_port: parse_port(hp).ok_or_else(bad)?,
        port: parse_port(p).ok_or_else(bad)?,
        proto,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_round_trip() {
        for (input, shown) in [
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("192.0.2.7", "192.0.2.7"),
            ("192.0.2.7:80", "192.0.2.7:80"),
            ("192.0.2.7:8000-8100/tcp", "192.0.2.7:8000-8100/tcp"),
            ("443", "443"),
            ("53/udp", "53/udp"),
            ("8000-8100", "8000-8100"),
            ("::1", "::1"),
            ("fd00::/8", "fd00::/8"),
            ("[fd00::1]:443", "[fd00::1]:443"),
            ("Example.ORG.", "example.org"),
            ("*.example.org:443/tcp", "*.example.org:443/tcp"),
            ("pkg.test:80", "pkg.test:80"),
        ] {
            let r = parse_rule(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.to_string(), shown, "{input}");
        }
    }

    #[test]
    fn bad_rules_are_refused() {
        for bad in [
            "",
            "0",
            "65536",
            "10.0.0.0/33",
            "10.0.0.256",
            "1.2.3",
            "host",
            "-a.org",
            "a..org",
            "10.0.0.1:0",
            "10.0.0.1:90-80",
            "[10.0.0.1]:80",
            "[::1]80",
            "a.org/icmp",
            "a.org:80:90",
            "*.org.",
            "exa mple.org",
        ] {
            assert!(parse_rule(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn names_match_exactly_or_below_a_wildcard() {
        let r = parse_rule("a.test").unwrap();
        assert!(r.matches_name("a.test") && !r.matches_name("b.a.test"));
        let w = parse_rule("*.a.test").unwrap();
        assert!(w.matches_name("b.a.test") && !w.matches_name("a.test"));
        assert!(!w.matches_name("xa.test"));
    }

    #[test]
    fn cidr_network_clears_host_bits() {
        let c = parse_cidr("10.1.2.3/8").unwrap();
        assert_eq!(c.network().to_string(), "10.0.0.0/8");
        let c = parse_cidr("fd00::1/8").unwrap();
        assert_eq!(c.network().to_string(), "fd00::/8");
    }

    #[test]
    fn publish_syntax() {
        let p = parse_publish("8080:80").unwrap();
        assert_eq!(p.to_string(), "8080:80/tcp");
        let p = parse_publish("127.0.0.1:8080:80/udp").unwrap();
        assert_eq!(p.to_string(), "127.0.0.1:8080:80/udp");
        let p = parse_publish("[::1]:5353:53/udp").unwrap();
        assert_eq!(p.to_string(), "[::1]:5353:53/udp");
        for bad in ["80", "0:80", "8080:80/sctp", "x:1:2", "1:2:3:4", "[::1]:80"] {
            assert!(parse_publish(bad).is_err(), "{bad}");
        }
    }
}
