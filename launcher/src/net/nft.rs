//! The egress firewall: one nftables table, `inet sandbox`, in the
//! sandbox's own network namespace, written by `nft` run inside that
//! namespace (see [`super::ns`]). It lives and dies with the namespace.
//!
//! The `output` chain, in order (first match wins):
//! 1. loopback traffic (the sandbox's own `lo`, where the resolver is);
//! 2. packets of connections already accepted (`ct state established`);
//! 3. IPv6 neighbour discovery (the link itself needs it);
//! 4. rules that name a destination (an address, a block or a DNS name,
//!    whose addresses are in the sets `name<N>_4` / `name<N>_6`, filled by
//!    the resolver before it answers);
//! 5. the default blocks: the host's own addresses, loopback and
//!    link-local blocks (`blocked4`, `blocked6`);
//! 6. rules that name only ports;
//! 7. the policy: everything else is accepted without `--allow`, refused
//!    with it.
//!
//! Refused packets go to the `deny` chain: logged to NFLOG group
//! [`LOG_GROUP`] with `--log-denied`, TCP answered with a reset, the rest
//! with an ICMP "administratively prohibited".

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::Stdio;

use super::rule::{Cidr, Proto, Rule, Target};
use super::{NetError, Policy};

/// The NFLOG group refused packets are logged to (`--log-denied`).
pub const LOG_GROUP: u16 = 7;

/// Where `nft` is (rootless callers often lack `/usr/sbin` in `PATH`).
pub fn nft_path() -> Option<PathBuf> {
    super::find_program("nft")
}

fn ports_expr(r: &Rule) -> String {
    let range = match r.ports {
        Some((a, b)) if a == b => a.to_string(),
        Some((a, b)) => format!("{a}-{b}"),
        None => String::new(),
    };
    match (r.proto, r.ports) {
        (Some(p), Some(_)) => format!(" {} dport {range}", p.as_str()),
        (Some(Proto::Tcp), None) => " meta l4proto tcp".into(),
        (Some(Proto::Udp), None) => " meta l4proto udp".into(),
        (None, Some(_)) => format!(" meta l4proto {{ tcp, udp }} th dport {range}"),
        (None, None) => String::new(),
    }
}

fn family(c: &Cidr) -> &'static str {
    if c.is_v4() {
        "ip"
    } else {
        "ip6"
    }
}

fn elements(cidrs: &[Cidr]) -> String {
    cidrs
        .iter()
        .map(|c| c.network().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The whole table, as an `nft -f` script. `blocked` are the default
/// blocks (host addresses, loopback, link-local).
pub fn ruleset(policy: &Policy, blocked: &[Cidr]) -> String {
    let mut s = String::from("table inet sandbox {\n");
    for (v, ty, pred) in [("4", "ipv4_addr", true), ("6", "ipv6_addr", false)] {
        let list: Vec<Cidr> = blocked
            .iter()
            .copied()
            .filter(|c| c.is_v4() == pred)
            .collect();
        let _ = writeln!(
            s,
            "  set blocked{v} {{ type {ty}; flags interval; auto-merge;{} }}",
            if list.is_empty() {
                String::new()
            } else {
                format!(" elements = {{ {} }};", elements(&list))
            }
        );
    }
    for (i, _) in policy.name_rules() {
        let _ = writeln!(s, "  set name{i}_4 {{ type ipv4_addr; }}");
        let _ = writeln!(s, "  set name{i}_6 {{ type ipv6_addr; }}");
    }
    s.push_str("  chain deny {\n");
    if policy.log_denied {
        let _ = writeln!(s, "    log group {LOG_GROUP}");
    }
    s.push_str("    meta l4proto tcp reject with tcp reset\n");
    s.push_str("    reject with icmpx type admin-prohibited\n  }\n");
    s.push_str("  chain output {\n    type filter hook output priority 0; policy accept;\n");
    s.push_str("    oif \"lo\" accept\n    ct state established,related accept\n");
    s.push_str(
        "    icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, \
         mld-listener-report, mld2-listener-report } accept\n",
    );
    for (i, r) in policy.allow.iter().enumerate() {
        match &r.target {
            Target::Net(c) => {
                let _ = writeln!(
                    s,
                    "    {} daddr {}{} accept",
                    family(c),
                    c.network(),
                    ports_expr(r)
                );
            }
            Target::Name { .. } => {
                let _ = writeln!(s, "    ip daddr @name{i}_4{} accept", ports_expr(r));
                let _ = writeln!(s, "    ip6 daddr @name{i}_6{} accept", ports_expr(r));
            }
            Target::Any => {}
        }
    }
    s.push_str("    ip daddr @blocked4 goto deny\n    ip6 daddr @blocked6 goto deny\n");
    for r in policy.allow.iter().filter(|r| r.target == Target::Any) {
        let _ = writeln!(s, "   {} accept", ports_expr(r));
    }
    if !policy.allow.is_empty() {
        s.push_str("    goto deny\n");
    }
    s.push_str("  }\n}\n");
    s
}

/// Run `nft -f -` with `script` inside the namespaces.
pub fn apply(ns: &super::ns::NsFds, script: &str) -> Result<(), NetError> {
    let nft = nft_path().ok_or(NetError::Missing {
        program: "nft",
        package: "nftables",
    })?;
    let mut child = ns
        .command(&nft)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NetError::Spawn {
            program: "nft",
            reason: crate::errors::io_reason(&e),
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(script.as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| NetError::Spawn {
        program: "nft",
        reason: crate::errors::io_reason(&e),
    })?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr);
        return Err(NetError::Firewall(
            msg.lines()
                .find(|l| l.contains("Error"))
                .unwrap_or(msg.trim())
                .to_string(),
        ));
    }
    Ok(())
}

/// The script that adds resolved addresses to the sets of rule `i`.
pub fn add_elements(i: usize, addrs: &[std::net::IpAddr]) -> String {
    let mut s = String::new();
    for (v, pred) in [("4", true), ("6", false)] {
        let list: Vec<String> = addrs
            .iter()
            .filter(|a| a.is_ipv4() == pred)
            .map(|a| a.to_string())
            .collect();
        if !list.is_empty() {
            let _ = writeln!(
                s,
                "add element inet sandbox name{i}_{v} {{ {} }}",
                list.join(", ")
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::rule::parse_rule;

    fn policy(rules: &[&str]) -> Policy {
        Policy {
            allow: rules.iter().map(|r| parse_rule(r).unwrap()).collect(),
            ..Policy::default()
        }
    }

    #[test]
    fn open_egress_still_blocks_the_defaults() {
        let blocked = [Cidr::host("127.0.0.1".parse().unwrap())];
        let s = ruleset(&policy(&[]), &blocked);
        assert!(s.contains("elements = { 127.0.0.1 }"), "{s}");
        assert!(s.contains("ip daddr @blocked4 goto deny"));
        assert!(!s.contains("    goto deny\n  }"), "{s}");
    }

    #[test]
    fn allow_rules_in_order() {
        let s = ruleset(&policy(&["10.1.2.3/8:80/tcp", "a.test:443", "53/udp"]), &[]);
        let addr = s.find("ip daddr 10.0.0.0/8 tcp dport 80 accept").unwrap();
        let name = s
            .find("ip daddr @name1_4 meta l4proto { tcp, udp } th dport 443 accept")
            .unwrap();
        let blocks = s.find("@blocked4 goto deny").unwrap();
        let port = s.find("udp dport 53 accept").unwrap();
        let deny = s.rfind("goto deny").unwrap();
        assert!(
            addr < name && name < blocks && blocks < port && port < deny,
            "{s}"
        );
        assert!(s.contains("set name1_4 { type ipv4_addr; }"));
    }

    #[test]
    fn element_script() {
        let s = add_elements(2, &["192.0.2.1".parse().unwrap(), "::1".parse().unwrap()]);
        assert_eq!(
            s,
            "add element inet sandbox name2_4 { 192.0.2.1 }\n\
             add element inet sandbox name2_6 { ::1 }\n"
        );
    }
}
