//! Networking of a sandbox: the model (`--network`, `--allow`,
//! `--publish`, `--log-denied`, resolved into [`Policy`] by `spec.rs`) and
//! the plumbing of `--network nat` (docs/network.md).
//!
//! `none` costs nothing here: the sandbox's own network namespace (made by
//! the `clone3` of `container.rs`) with only loopback. `host` shares the
//! host's namespace. `nat` is [`attach`], run by the launcher after the
//! namespaces exist and before init may run anything:
//! 1. open init's user and network namespaces ([`ns::NsFds`]);
//! 2. start `pasta` on them ([`pasta`]: the tap device, addresses, routes,
//!    the published ports; a keeper stops it if the launcher dies);
//! 3. load the egress firewall into the namespace ([`nft`]), while `pasta`
//!    starts;
//! 4. bind the resolver's socket inside the namespace and start its thread
//!    ([`dns`]), and write the `resolv.conf` init binds over
//!    `/etc/resolv.conf`.
//!
//! Everything that enforces the rules lives in the sandbox's network
//! namespace, owned by init's user namespace, which the command (in a
//! nested user namespace) has no capability over; it disappears with the
//! namespace. What lives outside (`pasta`, the keeper, the resolver thread)
//! is stopped by [`Active`]'s `Drop` or, when the launcher is killed, by
//! the keeper. A failure half-way undoes the steps already done.
//!
//! The VM backend is meant to consume the same [`Policy`]: the rules are
//! written for a network namespace on the host side of the guest's link
//! (see docs/network.md, "The VM backend").

pub mod dns;
pub mod log;
pub mod nft;
pub mod ns;
pub mod pasta;
pub mod rule;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{json, Value};

use rule::{Cidr, Publish, Rule, Target};

/// Egress rules and published ports of one sandbox (`--network nat`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// `--allow` rules (profile first, then the command line). Empty: egress
    /// is open except for the default blocks.
    pub allow: Vec<Rule>,
    pub publish: Vec<Publish>,
    /// Report refused connections on stderr.
    pub log_denied: bool,
}

impl Policy {
    /// The DNS-name rules with their index in `allow`.
    pub fn name_rules(&self) -> impl Iterator<Item = (usize, &Rule)> {
        self.allow
            .iter()
            .enumerate()
            .filter(|(_, r)| matches!(r.target, Target::Name { .. }))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("--network nat needs {program}, which is not installed (Debian package {package})")]
    Missing {
        program: &'static str,
        package: &'static str,
    },
    #[error("cannot run {program}: {reason}")]
    Spawn {
        program: &'static str,
        reason: String,
    },
    #[error("cannot open the sandbox's network namespace: {0}")]
    Namespace(String),
    #[error("the user-mode network stack (pasta) failed: {0}")]
    Stack(String),
    #[error("cannot load the egress rules (nft): {0}")]
    Firewall(String),
    #[error("cannot start the sandbox's resolver: {0}")]
    Resolver(String),
}

/// A program from `PATH`, then `/usr/sbin`, `/sbin`, `/usr/bin`.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| {
            use std::os::unix::fs::PermissionsExt;
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The blocks that stay refused unless a rule names them: loopback,
/// link-local (cloud metadata at 169.254.169.254 included), and every
/// address of the host's own interfaces.
pub fn default_blocks() -> Vec<Cidr> {
    let mut v: Vec<Cidr> = [
        ("127.0.0.0", 8),
        ("169.254.0.0", 16),
        ("::1", 128),
        ("fe80::", 10),
    ]
    .iter()
    .filter_map(|(a, l)| a.parse::<IpAddr>().ok().map(|addr| Cidr { addr, len: *l }))
    .collect();
    for a in host_addresses() {
        let c = Cidr::host(a);
        if !v.iter().any(|b| contains(b, &a)) {
            v.push(c);
        }
    }
    v
}

fn contains(block: &Cidr, a: &IpAddr) -> bool {
    block.is_v4() == a.is_ipv4()
        && Cidr {
            addr: *a,
            len: block.len,
        }
        .network()
            == block.network()
}

/// The addresses of the host's interfaces (`getifaddrs`).
pub fn host_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates the list; it is freed below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return out;
    }
    let mut cur = list;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned; its
        // address, when not null, is a sockaddr of the family it names.
        unsafe {
            let sa = (*cur).ifa_addr;
            if !sa.is_null() {
                match (*sa).sa_family as i32 {
                    libc::AF_INET => {
                        let s = &*(sa as *const libc::sockaddr_in);
                        out.push(IpAddr::from(u32::from_be(s.sin_addr.s_addr).to_be_bytes()));
                    }
                    libc::AF_INET6 => {
                        let s = &*(sa as *const libc::sockaddr_in6);
                        out.push(IpAddr::from(s.sin6_addr.s6_addr));
                    }
                    _ => {}
                }
            }
            cur = (*cur).ifa_next;
        }
    }
    // SAFETY: the list from getifaddrs, freed once.
    unsafe { libc::freeifaddrs(list) };
    out
}

/// The per-user directory of the launcher's short-lived network files
/// (`resolv.conf` until init has bound it, `pasta`'s pid file).
fn run_dir() -> Result<PathBuf, NetError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    // SAFETY: no preconditions.
    let uid = unsafe { libc::geteuid() };
    let dir = std::env::temp_dir().join(format!("sandbox-net-{uid}"));
    let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
    let m = std::fs::symlink_metadata(&dir)
        .map_err(|e| NetError::Resolver(format!("{}: {}", dir.display(), e)))?;
    if !m.is_dir() || m.uid() != uid || m.mode() & 0o077 != 0 {
        return Err(NetError::Resolver(format!(
            "{} is not a private directory of uid {uid}",
            dir.display()
        )));
    }
    Ok(dir)
}

/// The network of a running `nat` sandbox. Dropping it stops `pasta`; the
/// resolver thread ends when its socket's namespace is gone.
#[derive(Debug)]
pub struct Active {
    _pasta: pasta::Pasta,
    /// The file init binds over `/etc/resolv.conf`; removed by
    /// [`Active::started`] (or on drop).
    pub resolv_conf: Option<PathBuf>,
    pub blocked: Vec<Cidr>,
}

impl Active {
    /// init has made its mounts: the `resolv.conf` file is not needed.
    pub fn started(&mut self) {
        if let Some(p) = self.resolv_conf.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.started();
    }
}

/// Set up `--network nat` for init `pid` (steps in the module doc).
pub fn attach(policy: &Policy, name: &str, pid: libc::pid_t) -> Result<Active, NetError> {
    let upstream = dns::upstream().map_err(NetError::Resolver)?;
    let dir = run_dir()?;
    let ns = Arc::new(ns::NsFds::of(pid).map_err(|e| NetError::Namespace(e.to_string()))?);
    let blocked = default_blocks();
    // 2 and 3 overlap: pasta configures the link while nft loads.
    let script = nft::ruleset(policy, &blocked);
    let pid_file = dir.join(format!("{name}.pasta.pid"));
    let (pasta, fw) = std::thread::scope(|s| {
        let fw = s.spawn(|| nft::apply(&ns, &script));
        let pasta = pasta::start(policy, pid, &pid_file);
        let fw = fw
            .join()
            .unwrap_or_else(|_| Err(NetError::Firewall("the nft thread panicked".into())));
        (pasta, fw)
    });
    let pasta = pasta?;
    fw?;
    if policy.log_denied {
        let sock = ns
            .fetch_socket(ns::nflog_socket)
            .map_err(|e| NetError::Firewall(format!("the NFLOG socket for --log-denied: {e}")))?;
        log::spawn(sock).map_err(|e| NetError::Firewall(e.to_string()))?;
    }
    // 4. the resolver.
    let sock = ns
        .fetch_socket(ns::dns_socket)
        .map_err(|e| NetError::Resolver(format!("127.0.0.1:53 in the sandbox: {e}")))?;
    let resolv = dir.join(format!("{name}.resolv.conf"));
    std::fs::write(
        &resolv,
        "nameserver 127.0.0.1\noptions attempts:2 timeout:3\n",
    )
    .map_err(|e| NetError::Resolver(format!("{}: {e}", resolv.display())))?;
    let active = Active {
        _pasta: pasta,
        resolv_conf: Some(resolv),
        blocked,
    };
    dns::Resolver {
        sock,
        upstream,
        rules: policy.allow.clone(),
        filtered: !policy.allow.is_empty(),
        ns,
        log_denied: policy.log_denied,
    }
    .spawn()
    .map_err(|e| NetError::Resolver(e.to_string()))?;
    Ok(active)
}

/// The `network_rules` value of the receipt.
pub fn receipt(mode: &str, policy: &Policy, blocked: Option<&[Cidr]>) -> Value {
    if mode != "nat" {
        return json!({ "mode": mode });
    }
    let blocked: Vec<String> = match blocked {
        Some(b) => b.iter().map(|c| c.network().to_string()).collect(),
        None => default_blocks()
            .iter()
            .map(|c| c.network().to_string())
            .collect(),
    };
    json!({
        "mode": mode,
        "stack": "pasta",
        "egress": if policy.allow.is_empty() { "open" } else { "default-deny" },
        "allow": policy.allow.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
        "blocked_unless_allowed": blocked,
        "publish": policy.publish.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        "resolver": {
            "listen": "127.0.0.1:53",
            "upstream": dns::upstream().ok().map(|u| u.to_string()),
            "names": if policy.allow.is_empty() { "all" } else { "allowed only" },
        },
        "log_denied": policy.log_denied,
    })
}
