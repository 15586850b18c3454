//! The one policy model: CLI options + profile resolved into a validated
//! [`Spec`] that every backend consumes.
//!
//! Precedence: command line > profile > built-in defaults. Every value is
//! validated here, before anything is created, with a message naming the
//! bad value and what is accepted.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cli::{LandlockArg, MountOpt, NetworkArg, RunArgs, SeccompArg};
use crate::profile::{self, Loaded, ProfileError};
use crate::security::{caps, seccomp};

/// Paths hidden from every sandbox (kept in sync with `docs/security.md`).
/// Files get `/dev/null` bound over them, directories an empty tmpfs.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/kcore",
    "/proc/keys",
    "/proc/key-users",
    "/proc/sysrq-trigger",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/latency_stats",
    "/proc/kallsyms",
    "/proc/kmsg",
    "/proc/kpagecount",
    "/proc/kpageflags",
    "/proc/kpagecgroup",
    "/proc/config.gz",
    "/proc/acpi",
    "/proc/scsi",
    "/proc/asound",
    "/proc/driver",
    "/sys/firmware",
    "/sys/kernel/debug",
    "/sys/kernel/security",
    "/sys/fs/selinux",
    "/sys/devices/virtual/powercap",
];

/// `/proc` paths made read-only (writable ones would reach the host kernel
/// or the sandbox's own namespaces).
pub const READONLY_PATHS: &[&str] = &[
    "/proc/sys",
    "/proc/irq",
    "/proc/bus",
    "/proc/fs",
    "/proc/sysrq-trigger",
];

/// Variables passed when no profile says otherwise.
pub const DEFAULT_ENV_PASS: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "TERM",
    "COLORTERM",
    "LANG",
    "LANGUAGE",
    "LC_*",
    "TZ",
];

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
pub const DEFAULT_KILL_AFTER: Duration = Duration::from_secs(5);
pub const DEFAULT_SCRATCH: u64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error("invalid {what} '{value}': {why}")]
    Invalid {
        what: &'static str,
        value: String,
        why: String,
    },
}

fn invalid(what: &'static str, value: impl AsRef<OsStr>, why: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        what,
        value: value.as_ref().to_string_lossy().into_owned(),
        why: why.into(),
    }
}

/// Landlock modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Landlock {
    Off,
    /// Enforce when available; report when not.
    Auto,
    /// Fail closed without it.
    Require,
}

impl Landlock {
    pub fn as_str(self) -> &'static str {
        match self {
            Landlock::Off => "off",
            Landlock::Auto => "auto",
            Landlock::Require => "require",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    None,
    Host,
    /// Own network namespace, outbound through a user-mode NAT
    /// (`crate::net`), with the egress rules of `Spec::net`.
    Nat,
}

impl Network {
    pub fn as_str(self) -> &'static str {
        match self {
            Network::None => "none",
            Network::Host => "host",
            Network::Nat => "nat",
        }
    }

    /// Whether the sandbox gets its own network namespace.
    pub fn own_netns(self) -> bool {
        self != Network::Host
    }
}

/// A user-requested mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountSpec {
    Bind {
        src: PathBuf,
        dst: PathBuf,
        readonly: bool,
    },
    Tmpfs {
        dst: PathBuf,
        size: Option<u64>,
        mode: u32,
    },
}

/// The command's identity inside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
}

/// How a micro-VM starts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum VmBoot {
    /// Resume this shape's automatic snapshot, creating it on first use
    /// (`--warm`).
    Auto,
    /// Boot the kernel (the default, or `--cold`).
    #[default]
    Cold,
    /// Resume the named snapshot (`--from NAME`).
    From(String),
}

/// The validated, backend-neutral description of one sandbox.
#[derive(Debug, Clone)]
pub struct Spec {
    pub name: String,
    pub profile: String,
    pub argv: Vec<OsString>,
    /// Final environment, in a stable order.
    pub env: Vec<(OsString, OsString)>,
    pub workdir: PathBuf,
    pub user: User,
    pub hostname: String,
    pub network: Network,
    /// Egress rules, published ports, `--log-denied` (only with `Nat`).
    pub net: crate::net::Policy,
    pub mounts: Vec<MountSpec>,
    pub masked: Vec<PathBuf>,
    pub readonly: Vec<PathBuf>,
    pub scratch_size: u64,
    pub tty: bool,
    pub timeout: Option<Duration>,
    pub kill_after: Duration,
    pub seccomp: seccomp::Level,
    pub landlock: Landlock,
    /// Capabilities kept (numbers), sorted and unique.
    pub cap_add: Vec<u8>,
    pub limits: crate::cgroup::Limits,
    pub security_label: crate::security::selinux::LabelMode,
    /// The SELinux context the command is executed in, filled in by the
    /// launcher from `security_label` (`None`: inherited).
    pub exec_label: Option<String>,
    /// Run in a micro-VM (`--vm`), with this guest kernel if given.
    pub vm: bool,
    pub vm_kernel: Option<PathBuf>,
    /// How the micro-VM starts (`--cold`, `--warm`, `--from NAME`; docs/snapshots.md).
    pub vm_boot: VmBoot,
    /// `--user dynamic`: `user` is filled in by the launcher from the
    /// configured range once the id is locked.
    pub dynamic_user: bool,
    /// Run even when a limit cannot be enforced (reported).
    pub limits_best_effort: bool,
}

/// Parse `--cpus`: a positive number of CPUs, fractions allowed.
pub fn parse_cpus(s: &str) -> Result<f64, String> {
    const ACCEPTED: &str = "expected a number of CPUs between 0.01 and 1024, such as 0.5 or 2";
    let v: f64 = s.trim().parse().map_err(|_| ACCEPTED.to_string())?;
    if !(0.01..=1024.0).contains(&v) || !v.is_finite() {
        return Err(ACCEPTED.into());
    }
    Ok(v)
}

fn parse_bounded(s: &str, lo: u64, hi: u64, what: &str) -> Result<u64, String> {
    let accepted = format!("expected {what} between {lo} and {hi}");
    match s.trim().parse::<u64>() {
        Ok(v) if (lo..=hi).contains(&v) => Ok(v),
        _ => Err(accepted),
    }
}

/// Parse `--pids`.
pub fn parse_pids(s: &str) -> Result<u64, String> {
    parse_bounded(s, 1, 4_194_304, "a number of processes")
}

/// Parse `--io-weight`.
pub fn parse_io_weight(s: &str) -> Result<u16, String> {
    parse_bounded(s, 1, 10_000, "a weight").map(|v| v as u16)
}

/// Parse `--memory`: a size of at least 1 MiB.
pub fn parse_memory(s: &str) -> Result<u64, String> {
    let v = parse_size(s)?;
    if v < 1 << 20 {
        return Err("must be at least 1m (1 MiB)".into());
    }
    Ok(v)
}

/// Facts about the caller that resolution depends on (injected so that
/// resolution is unit-testable).
#[derive(Debug, Clone)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub cwd: PathBuf,
    pub env: Vec<(OsString, OsString)>,
    pub stdin_is_tty: bool,
}

impl Caller {
    pub fn current() -> Self {
        // SAFETY: these calls cannot fail and have no preconditions.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        // SAFETY: isatty on fd 0 only inspects it.
        let stdin_is_tty = unsafe { libc::isatty(0) } == 1;
        Caller {
            uid,
            gid,
            cwd,
            env: std::env::vars_os().collect(),
            stdin_is_tty,
        }
    }
}

/// Parse `30`, `30s`, `500ms`, `5m`, `1h30m`, `2d`. Zero is refused.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const ACCEPTED: &str = "expected a positive duration such as 30s, 500ms, 5m or 1h30m";
    let s = s.trim();
    if s.is_empty() {
        return Err(ACCEPTED.into());
    }
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(ACCEPTED.into());
        }
        let n: u128 = rest[..digits].parse().map_err(|_| ACCEPTED.to_string())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let ms: u128 = match unit {
            "ms" => 1,
            "" | "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(format!("unknown unit '{unit}': {ACCEPTED}")),
        };
        // A bare number (seconds) must be the whole input.
        if unit.is_empty() && (total != 0 || !rest.is_empty()) {
            return Err(ACCEPTED.into());
        }
        total = total
            .checked_add(n.checked_mul(ms).ok_or(ACCEPTED)?)
            .ok_or(ACCEPTED)?;
    }
    // Cap at ~100 years; anything larger is certainly a typo.
    if total == 0 {
        return Err("must be greater than zero".into());
    }
    if total > 100 * 365 * 86_400_000 {
        return Err("is larger than 100 years".into());
    }
    Ok(Duration::from_millis(total as u64))
}

/// Parse `1048576`, `64k`, `64m`, `1g`, `2t`, `512MiB`... (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    const ACCEPTED: &str = "expected a positive size such as 65536, 64k, 256m or 1g";
    let t = s.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(ACCEPTED.into());
    }
    let n: u64 = t[..digits]
        .parse()
        .map_err(|_| format!("is too large: {ACCEPTED}"))?;
    let unit = t[digits..].to_ascii_lowercase();
    let mult: u64 = match unit.as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(format!("unknown unit '{}': {ACCEPTED}", &t[digits..])),
    };
    let v = n
        .checked_mul(mult)
        .ok_or_else(|| format!("is too large: {ACCEPTED}"))?;
    if v == 0 {
        return Err("must be greater than zero".into());
    }
    if v > 1 << 50 {
        return Err("is larger than 1 PiB".into());
    }
    Ok(v)
}

/// Parse `root`, `UID` or `UID:GID` (GID defaults to the caller's when
/// the uid is the caller's, else to the uid).
pub fn parse_user(s: &str, caller: &Caller) -> Result<User, String> {
    const ACCEPTED: &str = "expected 'root', 'dynamic', UID or UID:GID (numbers below 4294967295)";
    if s == "root" {
        return Ok(User { uid: 0, gid: 0 });
    }
    if s == "dynamic" {
        if caller.uid != 0 {
            return Err("'dynamic' allocates host uids and needs root; use UID[:GID]".into());
        }
        // Placeholder until the launcher allocates the id.
        return Ok(User { uid: 0, gid: 0 });
    }
    let num = |p: &str| -> Result<u32, String> {
        match p.parse::<u32>() {
            Ok(v) if v != u32::MAX && !p.starts_with('+') => Ok(v),
            _ => Err(ACCEPTED.to_string()),
        }
    };
    match s.split_once(':') {
        Some((u, g)) => Ok(User {
            uid: num(u)?,
            gid: num(g)?,
        }),
        None => {
            let uid = num(s)?;
            let gid = if uid == caller.uid { caller.gid } else { uid };
            Ok(User { uid, gid })
        }
    }
}

fn check_abs_dest(what: &'static str, p: &Path) -> Result<PathBuf, SpecError> {
    if !p.is_absolute() {
        return Err(invalid(what, p, "the destination must be an absolute path"));
    }
    if p.components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(invalid(what, p, "the destination must not contain '..'"));
    }
    if p == Path::new("/") {
        return Err(invalid(what, p, "cannot mount over the sandbox root"));
    }
    Ok(p.to_path_buf())
}

fn resolve_source(what: &'static str, p: &Path, cwd: &Path) -> Result<PathBuf, SpecError> {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        cwd.join(p)
    };
    std::fs::canonicalize(&abs).map_err(|e| {
        invalid(
            what,
            p,
            format!(
                "the host path cannot be used: {}",
                crate::errors::io_reason(&e)
            ),
        )
    })
}

/// Parse `-v HOST[:DEST][:ro|:rw]`. Without a mode the volume is read-only.
pub fn parse_volume(v: &OsStr, cwd: &Path) -> Result<MountSpec, SpecError> {
    let bytes = v.as_bytes();
    if bytes.is_empty() {
        return Err(invalid("volume", v, "expected HOST[:DEST][:ro|:rw]"));
    }
    let mut parts: Vec<&[u8]> = bytes.split(|b| *b == b':').collect();
    let mut readonly = true;
    if parts.len() > 1 {
        match *parts.last().unwrap_or(&&b""[..]) {
            b"ro" => {
                parts.pop();
            }
            b"rw" => {
                readonly = false;
                parts.pop();
            }
            _ => {}
        }
    }
    let (src, dst) = match parts.as_slice() {
        [src] => (*src, *src),
        [src, dst] => (*src, *dst),
        _ => {
            return Err(invalid(
                "volume",
                v,
                "expected HOST[:DEST][:ro|:rw] (for paths containing ':' use --bind/--ro-bind)",
            ))
        }
    };
    if src.is_empty() || dst.is_empty() {
        return Err(invalid(
            "volume",
            v,
            "expected HOST[:DEST][:ro|:rw] with non-empty paths",
        ));
    }
    let src_path = Path::new(OsStr::from_bytes(src));
    let src = resolve_source("volume", src_path, cwd)?;
    // A volume given only as HOST appears at the same (canonical) place.
    let dst = if parts.len() == 1 {
        src.clone()
    } else {
        PathBuf::from(OsStr::from_bytes(dst))
    };
    Ok(MountSpec::Bind {
        src,
        dst: check_abs_dest("volume", &dst)?,
        readonly,
    })
}

/// Parse `--tmpfs DEST[:size=N][,mode=OCTAL]`.
pub fn parse_tmpfs(v: &OsStr) -> Result<MountSpec, SpecError> {
    let bytes = v.as_bytes();
    let (dst, opts) = match bytes.iter().position(|b| *b == b':') {
        Some(i) => (&bytes[..i], Some(&bytes[i + 1..])),
        None => (bytes, None),
    };
    let dst = check_abs_dest("tmpfs", Path::new(OsStr::from_bytes(dst)))?;
    let mut size = None;
    let mut mode = 0o755;
    if let Some(opts) = opts {
        let opts = std::str::from_utf8(opts)
            .map_err(|_| invalid("tmpfs", v, "options must be ASCII: size=N,mode=OCTAL"))?;
        for opt in opts.split(',') {
            match opt.split_once('=') {
                Some(("size", s)) => {
                    size = Some(parse_size(s).map_err(|why| invalid("tmpfs size", s, why))?)
                }
                Some(("mode", m)) => {
                    mode = u32::from_str_radix(m, 8)
                        .ok()
                        .filter(|m| *m <= 0o7777)
                        .ok_or_else(|| invalid("tmpfs mode", m, "expected an octal mode <= 7777"))?
                }
                _ => {
                    return Err(invalid(
                        "tmpfs option",
                        opt,
                        "accepted options are size=N and mode=OCTAL",
                    ))
                }
            }
        }
    }
    Ok(MountSpec::Tmpfs { dst, size, mode })
}

/// Sandbox names: 1-63 of `[A-Za-z0-9_.-]`, starting alphanumeric.
pub fn check_name(n: &str) -> Result<(), SpecError> {
    let ok = !n.is_empty()
        && n.len() <= 63
        && n.as_bytes()[0].is_ascii_alphanumeric()
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "name",
            n,
            "expected 1-63 characters of letters, digits, '_', '.', '-', starting with a \
             letter or digit",
        ))
    }
}

fn check_hostname(h: &str) -> Result<(), SpecError> {
    let ok = !h.is_empty()
        && h.len() <= 64
        && h.split('.').all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "hostname",
            h,
            "expected up to 64 characters of dot-separated labels of letters, digits and '-'",
        ))
    }
}

/// A generated unique name: `sb-` and 12 random hex digits.
pub fn generate_name() -> String {
    let mut b = [0u8; 6];
    // SAFETY: getrandom writes at most `b.len()` bytes into `b`.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        // Fall back to time and pid: still unique among concurrent runs
        // because the name lock refuses duplicates.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let mix = (t as u64) ^ ((std::process::id() as u64) << 32);
        b.copy_from_slice(&mix.to_le_bytes()[..6]);
    }
    let mut s = String::from("sb-");
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

fn pass_matches(pattern: &str, key: &OsStr) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => key.as_bytes().starts_with(prefix.as_bytes()),
        None => key.as_bytes() == pattern.as_bytes(),
    }
}

/// Resolve CLI + profile into a [`Spec`].
pub fn resolve(args: &RunArgs, caller: &Caller) -> Result<Spec, SpecError> {
    let loaded = profile::load(args.profile.as_deref())?;
    resolve_with(args, &loaded, caller)
}

/// Resolution against an already loaded profile.
pub fn resolve_with(args: &RunArgs, loaded: &Loaded, caller: &Caller) -> Result<Spec, SpecError> {
    let p = &loaded.profile;
    let at = |s: &toml::Spanned<String>, why: String| -> SpecError {
        loaded
            .error_at(s.span(), format!("invalid value '{}': {why}", s.get_ref()))
            .into()
    };

    let name = match &args.name {
        Some(n) => {
            check_name(n)?;
            n.clone()
        }
        None => generate_name(),
    };

    let network = match (args.network, &p.network) {
        (Some(NetworkArg::None), _) => Network::None,
        (Some(NetworkArg::Host), _) => Network::Host,
        (Some(NetworkArg::Nat), _) => Network::Nat,
        (None, Some(n)) => match n.get_ref().as_str() {
            "none" => Network::None,
            "host" => Network::Host,
            "nat" => Network::Nat,
            _ => return Err(at(n, "expected \"none\", \"nat\" or \"host\"".into())),
        },
        (None, None) => Network::None,
    };
    let net = resolve_net(args, loaded, network)?;

    let hostname = match (&args.hostname, &p.hostname) {
        (Some(h), _) => {
            check_hostname(h)?;
            h.clone()
        }
        (None, Some(h)) => {
            check_hostname(h.get_ref()).map_err(|e| at(h, strip_why(e)))?;
            h.get_ref().clone()
        }
        (None, None) => name.clone(),
    };

    let user = match (&args.user, &p.user) {
        (Some(u), _) => parse_user(u, caller).map_err(|why| invalid("user", u, why))?,
        (None, Some(u)) => parse_user(u.get_ref(), caller).map_err(|why| at(u, why))?,
        (None, None) => User {
            uid: caller.uid,
            gid: caller.gid,
        },
    };
    let dynamic_user = match (&args.user, &p.user) {
        (Some(u), _) => u == "dynamic",
        (None, Some(u)) => u.get_ref() == "dynamic",
        (None, None) => false,
    };

    let workdir = match (&args.workdir, &p.workdir) {
        (Some(w), _) => PathBuf::from(w),
        (None, Some(w)) => PathBuf::from(w.get_ref()),
        (None, None) => caller.cwd.clone(),
    };
    if !workdir.is_absolute() {
        return Err(invalid("workdir", &workdir, "expected an absolute path"));
    }

    let timeout = match (&args.timeout, &p.timeout) {
        (Some(t), _) => Some(parse_duration(t).map_err(|why| invalid("timeout", t, why))?),
        (None, Some(t)) => Some(parse_duration(t.get_ref()).map_err(|why| at(t, why))?),
        (None, None) => None,
    };
    let kill_after = match (&args.kill_after, &p.kill_after) {
        (Some(t), _) => parse_duration(t).map_err(|why| invalid("kill-after", t, why))?,
        (None, Some(t)) => parse_duration(t.get_ref()).map_err(|why| at(t, why))?,
        (None, None) => DEFAULT_KILL_AFTER,
    };

    let scratch_size = match &p.filesystem.scratch_size {
        Some(s) => parse_size(s.get_ref()).map_err(|why| at(s, why))?,
        None => DEFAULT_SCRATCH,
    };

    // Mounts: profile first, then the command line, in the order given.
    let mut mounts = Vec::new();
    for v in &p.volumes {
        mounts.push(
            parse_volume(OsStr::new(v.get_ref()), &caller.cwd).map_err(|e| at(v, strip_why(e)))?,
        );
    }
    for t in &p.tmpfs {
        mounts.push(parse_tmpfs(OsStr::new(t.get_ref())).map_err(|e| at(t, strip_why(e)))?);
    }
    // Command-line mounts in the order they were typed.
    let bind = |pairs: &[OsString], i: usize, readonly: bool| -> Result<MountSpec, SpecError> {
        let (Some(src), Some(dst)) = (pairs.get(2 * i), pairs.get(2 * i + 1)) else {
            return Err(invalid("bind", "", "expected SRC DEST"));
        };
        let src = resolve_source("bind", Path::new(src), &caller.cwd)?;
        let dst = check_abs_dest("bind", Path::new(dst))?;
        Ok(MountSpec::Bind { src, dst, readonly })
    };
    for opt in args.ordered_mounts() {
        mounts.push(match opt {
            MountOpt::Volume(i) => parse_volume(&args.volume[i], &caller.cwd)?,
            MountOpt::Bind(i) => bind(&args.bind, i, false)?,
            MountOpt::RoBind(i) => bind(&args.ro_bind, i, true)?,
            MountOpt::Tmpfs(i) => parse_tmpfs(&args.tmpfs[i])?,
        });
    }

    let mut masked: Vec<PathBuf> = MASKED_PATHS.iter().map(PathBuf::from).collect();
    for m in &p.filesystem.mask {
        let path = PathBuf::from(m.get_ref());
        if !path.is_absolute() {
            return Err(at(m, "expected an absolute path".into()));
        }
        masked.push(path);
    }

    let env = resolve_env(args, loaded, caller)?;

    let seccomp = match (args.seccomp, &p.seccomp) {
        (Some(SeccompArg::Off), _) => seccomp::Level::Off,
        (Some(SeccompArg::Default), _) => seccomp::Level::Default,
        (Some(SeccompArg::Strict), _) => seccomp::Level::Strict,
        (None, Some(s)) => seccomp::Level::parse(s.get_ref())
            .ok_or_else(|| at(s, "expected \"default\", \"strict\" or \"off\"".into()))?,
        (None, None) => seccomp::Level::Default,
    };
    let security_label = match (&args.security_label, &p.security_label) {
        (Some(l), _) => crate::security::selinux::LabelMode::parse(l)
            .map_err(|why| invalid("security label", l, why))?,
        (None, Some(l)) => {
            crate::security::selinux::LabelMode::parse(l.get_ref()).map_err(|why| at(l, why))?
        }
        (None, None) => crate::security::selinux::LabelMode::None,
    };
    let landlock = match (args.landlock, &p.landlock) {
        (Some(LandlockArg::Off), _) => Landlock::Off,
        (Some(LandlockArg::Auto), _) => Landlock::Auto,
        (Some(LandlockArg::Require), _) => Landlock::Require,
        (None, Some(s)) => match s.get_ref().as_str() {
            "off" => Landlock::Off,
            "auto" => Landlock::Auto,
            "require" => Landlock::Require,
            _ => return Err(at(s, "expected \"auto\", \"require\" or \"off\"".into())),
        },
        (None, None) => Landlock::Auto,
    };
    let limits = resolve_limits(args, loaded)?;
    let limits_best_effort = match &p.limits.enforce {
        None => false,
        Some(e) => match e.get_ref().as_str() {
            "require" => false,
            "best-effort" => true,
            _ => return Err(at(e, "expected \"require\" or \"best-effort\"".into())),
        },
    };
    let mut cap_add = Vec::new();
    for c in &p.cap_add {
        cap_add.push(caps::parse(c.get_ref()).map_err(|why| at(c, why))?);
    }
    for c in &args.cap_add {
        cap_add.push(caps::parse(c).map_err(|why| invalid("capability", c, why))?);
    }
    cap_add.sort_unstable();
    cap_add.dedup();

    let tty = if args.tty {
        true
    } else if args.no_tty {
        false
    } else {
        p.tty.unwrap_or(caller.stdin_is_tty)
    };

    Ok(Spec {
        name,
        profile: loaded.name.clone(),
        argv: args.command.clone(),
        env,
        workdir,
        user,
        hostname,
        network,
        net,
        mounts,
        masked,
        readonly: READONLY_PATHS.iter().map(PathBuf::from).collect(),
        scratch_size,
        tty,
        timeout,
        kill_after,
        seccomp,
        landlock,
        cap_add,
        limits,
        limits_best_effort,
        dynamic_user,
        vm: args.vm,
        vm_kernel: args.kernel.clone(),
        vm_boot: match (&args.from, args.warm) {
            (Some(name), _) => VmBoot::From(name.clone()),
            (None, true) => VmBoot::Auto,
            // --cold, or nothing: cold boots are the default (D12).
            (None, false) => VmBoot::Cold,
        },
        security_label,
        exec_label: None,
    })
}

/// `--allow` (profile rules first), `--publish`, `--log-denied`: only with
/// `--network nat`.
fn resolve_net(
    args: &RunArgs,
    loaded: &Loaded,
    network: Network,
) -> Result<crate::net::Policy, SpecError> {
    use crate::net::rule;
    let mut policy = crate::net::Policy {
        log_denied: args.log_denied,
        ..Default::default()
    };
    for r in &loaded.profile.allow {
        policy
            .allow
            .push(rule::parse_rule(r.get_ref()).map_err(|why| {
                SpecError::from(
                    loaded.error_at(r.span(), format!("invalid value '{}': {why}", r.get_ref())),
                )
            })?);
    }
    for r in &args.allow {
        policy
            .allow
            .push(rule::parse_rule(r).map_err(|why| invalid("--allow rule", r, why))?);
    }
    for p in &args.publish {
        let parsed = rule::parse_publish(p).map_err(|why| invalid("--publish", p, why))?;
        if policy
            .publish
            .iter()
            .any(|q| q.host_port == parsed.host_port && q.proto == parsed.proto)
        {
            return Err(invalid(
                "--publish",
                p,
                "this host port is already published",
            ));
        }
        policy.publish.push(parsed);
    }
    if network != Network::Nat {
        let used = [
            (!policy.allow.is_empty(), "--allow (or a profile's allow)"),
            (!policy.publish.is_empty(), "--publish"),
            (policy.log_denied, "--log-denied"),
        ];
        if let Some((_, what)) = used.iter().find(|(u, _)| *u) {
            return Err(invalid(
                "network",
                network.as_str(),
                format!("{what} needs --network nat"),
            ));
        }
    }
    Ok(policy)
}

fn resolve_limits(args: &RunArgs, loaded: &Loaded) -> Result<crate::cgroup::Limits, SpecError> {
    let l = &loaded.profile.limits;
    let at = |span: std::ops::Range<usize>, v: String, why: String| -> SpecError {
        loaded
            .error_at(span, format!("invalid value '{v}': {why}"))
            .into()
    };
    let memory = match (&args.memory, &l.memory) {
        (Some(m), _) => Some(parse_memory(m).map_err(|why| invalid("memory", m, why))?),
        (None, Some(m)) => {
            Some(parse_memory(m.get_ref()).map_err(|why| at(m.span(), m.get_ref().clone(), why))?)
        }
        (None, None) => None,
    };
    let cpus = match (&args.cpus, &l.cpus) {
        (Some(c), _) => Some(parse_cpus(c).map_err(|why| invalid("cpus", c, why))?),
        (None, Some(c)) => {
            let text = match c.get_ref() {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                other => other.to_string(),
            };
            Some(parse_cpus(&text).map_err(|why| at(c.span(), text.clone(), why))?)
        }
        (None, None) => None,
    };
    let pids = match (&args.pids, &l.pids) {
        (Some(p), _) => Some(parse_pids(p).map_err(|why| invalid("pids", p, why))?),
        (None, Some(p)) => {
            let t = p.get_ref().to_string();
            Some(parse_pids(&t).map_err(|why| at(p.span(), t.clone(), why))?)
        }
        (None, None) => None,
    };
    let io_weight = match (&args.io_weight, &l.io_weight) {
        (Some(w), _) => Some(parse_io_weight(w).map_err(|why| invalid("io-weight", w, why))?),
        (None, Some(w)) => {
            let t = w.get_ref().to_string();
            Some(parse_io_weight(&t).map_err(|why| at(w.span(), t.clone(), why))?)
        }
        (None, None) => None,
    };
    Ok(crate::cgroup::Limits {
        memory,
        cpus,
        pids,
        io_weight,
    })
}

fn strip_why(e: SpecError) -> String {
    match e {
        SpecError::Invalid { why, .. } => why,
        other => other.to_string(),
    }
}

fn resolve_env(
    args: &RunArgs,
    loaded: &Loaded,
    caller: &Caller,
) -> Result<Vec<(OsString, OsString)>, SpecError> {
    let p = &loaded.profile;
    let pass: Vec<String> = match &p.env.pass {
        Some(list) => {
            for s in list {
                let k = s.get_ref();
                let stem = k.strip_suffix('*').unwrap_or(k);
                if (stem.is_empty() && k != "*") || k.contains('=') || stem.contains('*') {
                    return Err(loaded
                        .error_at(
                            s.span(),
                            format!(
                                "invalid variable pattern '{k}': expected a name, optionally \
                                 ending in '*'"
                            ),
                        )
                        .into());
                }
            }
            list.iter().map(|s| s.get_ref().clone()).collect()
        }
        None => DEFAULT_ENV_PASS.iter().map(|s| s.to_string()).collect(),
    };
    let mut env: Vec<(OsString, OsString)> = caller
        .env
        .iter()
        .filter(|(k, _)| pass.iter().any(|p| pass_matches(p, k)))
        .cloned()
        .collect();
    let mut set = |k: OsString, v: OsString| {
        env.retain(|(ek, _)| *ek != k);
        env.push((k, v));
    };
    for (k, v) in &p.env.set {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.get_ref().contains('\0') {
            return Err(loaded
                .error_at(v.span(), format!("invalid variable '{k}'"))
                .into());
        }
        set(k.into(), v.get_ref().into());
    }
    for e in &args.env {
        let b = e.as_bytes();
        if b.contains(&0) {
            return Err(invalid(
                "environment variable",
                e,
                "must not contain a NUL byte",
            ));
        }
        match b.iter().position(|c| *c == b'=') {
            Some(0) => {
                return Err(invalid(
                    "environment variable",
                    e,
                    "expected KEY=VALUE or KEY",
                ))
            }
            Some(i) => set(
                OsString::from_vec(b[..i].to_vec()),
                OsString::from_vec(b[i + 1..].to_vec()),
            ),
            None if b.is_empty() => {
                return Err(invalid(
                    "environment variable",
                    e,
                    "expected KEY=VALUE or KEY",
                ))
            }
            None => {
                // -e KEY passes the caller's value; unset stays unset.
                if let Some((_, v)) = caller.env.iter().find(|(k, _)| k == e) {
                    set(e.clone(), v.clone());
                }
            }
        }
    }
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    env.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller() -> Caller {
        Caller {
            uid: 1000,
            gid: 1000,
            cwd: PathBuf::from("/"),
            env: vec![
                ("PATH".into(), "/usr/bin".into()),
                ("SECRET".into(), "x".into()),
                ("LC_ALL".into(), "C".into()),
                ("LD_PRELOAD".into(), "/evil.so".into()),
            ],
            stdin_is_tty: false,
        }
    }

    fn args(cmd: &[&str]) -> RunArgs {
        RunArgs {
            command: cmd.iter().map(OsString::from).collect(),
            ..RunArgs::default()
        }
    }

    fn default_profile() -> Loaded {
        profile::load(Some("default")).unwrap()
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        for bad in [
            "",
            "0",
            "-1",
            "5x",
            "m",
            "1.5s",
            "99999999999999999999999999999999s",
            "5s3",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64k").unwrap(), 65536);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        for bad in [
            "0",
            "-1",
            "",
            "18446744073709551616",
            "16777216t",
            "1x",
            "k",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn users() {
        let c = caller();
        assert_eq!(parse_user("root", &c).unwrap(), User { uid: 0, gid: 0 });
        assert_eq!(
            parse_user("1000", &c).unwrap(),
            User {
                uid: 1000,
                gid: 1000
            }
        );
        assert_eq!(parse_user("5:6", &c).unwrap(), User { uid: 5, gid: 6 });
        for bad in ["", "-1", "4294967295", "bob", "1:", ":1", "+5"] {
            assert!(parse_user(bad, &c).is_err(), "{bad}");
        }
    }

    #[test]
    fn volumes_default_to_read_only() {
        let m = parse_volume(OsStr::new("/usr"), Path::new("/")).unwrap();
        assert_eq!(
            m,
            MountSpec::Bind {
                src: "/usr".into(),
                dst: "/usr".into(),
                readonly: true
            }
        );
        let m = parse_volume(OsStr::new("/usr:/mnt/u:rw"), Path::new("/")).unwrap();
        assert_eq!(
            m,
            MountSpec::Bind {
                src: "/usr".into(),
                dst: "/mnt/u".into(),
                readonly: false
            }
        );
        assert!(parse_volume(OsStr::new("/does-not-exist-xyz"), Path::new("/")).is_err());
        assert!(parse_volume(OsStr::new("/usr:rel"), Path::new("/")).is_err());
        assert!(parse_volume(OsStr::new("/usr:/a/../b"), Path::new("/")).is_err());
        assert!(parse_volume(OsStr::new("/usr:/"), Path::new("/")).is_err());
        assert!(parse_volume(OsStr::new(""), Path::new("/")).is_err());
        assert!(parse_volume(OsStr::new("/a:/b:/c:ro"), Path::new("/")).is_err());
    }

    #[test]
    fn tmpfs_options() {
        assert_eq!(
            parse_tmpfs(OsStr::new("/scratch:size=64m,mode=1777")).unwrap(),
            MountSpec::Tmpfs {
                dst: "/scratch".into(),
                size: Some(64 << 20),
                mode: 0o1777
            }
        );
        assert!(parse_tmpfs(OsStr::new("/s:size=0")).is_err());
        assert!(parse_tmpfs(OsStr::new("/s:bogus=1")).is_err());
        assert!(parse_tmpfs(OsStr::new("rel")).is_err());
    }

    #[test]
    fn env_allow_list_and_overrides() {
        let mut a = args(&["true"]);
        a.env = vec!["FOO=bar".into(), "SECRET".into(), "MISSING".into()];
        let s = resolve_with(&a, &default_profile(), &caller()).unwrap();
        let keys: Vec<_> = s.env.iter().map(|(k, _)| k.to_str().unwrap()).collect();
        assert_eq!(keys, ["FOO", "LC_ALL", "PATH", "SECRET"]);
        assert!(!keys.contains(&"LD_PRELOAD"));
    }

    #[test]
    fn env_rejects_bad_keys() {
        for bad in ["=x", ""] {
            let mut a = args(&["true"]);
            a.env = vec![bad.into()];
            assert!(
                resolve_with(&a, &default_profile(), &caller()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn profile_value_errors_point_to_the_line() {
        let l = profile::parse("t", "t.toml", "\ntimeout = \"0\"\n".into()).unwrap();
        let err = resolve_with(&args(&["true"]), &l, &caller())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("t.toml:2:11: invalid value '0'"), "{err}");
        let l =
            profile::parse("t", "t.toml", "[filesystem]\nscratch_size = \"-1\"".into()).unwrap();
        let err = resolve_with(&args(&["true"]), &l, &caller())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("t.toml:2:16: "), "{err}");
        let l = profile::parse("t", "t.toml", "network = \"nat\"".into()).unwrap();
        let s = resolve_with(&args(&["true"]), &l, &caller()).unwrap();
        assert_eq!(s.network, Network::Nat);
        let l = profile::parse("t", "t.toml", "network = \"bridge\"".into()).unwrap();
        let err = resolve_with(&args(&["true"]), &l, &caller())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("expected \"none\", \"nat\" or \"host\""),
            "{err}"
        );
    }

    #[test]
    fn network_rules_need_nat() {
        let mut a = args(&["true"]);
        a.allow = vec!["10.0.0.0/8".into()];
        let err = resolve_with(&a, &default_profile(), &caller())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--allow") && err.contains("--network nat"),
            "{err}"
        );
        a.network = Some(NetworkArg::Nat);
        a.publish = vec!["8080:80".into(), "127.0.0.1:8080:81".into()];
        assert!(resolve_with(&a, &default_profile(), &caller()).is_err());
        a.publish.pop();
        let s = resolve_with(&a, &default_profile(), &caller()).unwrap();
        assert_eq!(s.net.allow.len(), 1);
        assert_eq!(s.net.publish[0].port, 80);
        a.allow = vec!["bogus".into()];
        let err = resolve_with(&a, &default_profile(), &caller())
            .unwrap_err()
            .to_string();
        assert!(err.contains("'bogus'") && err.contains("CIDR"), "{err}");
        let l = profile::parse("t", "t.toml", "network = \"nat\"\nallow = [\"x\"]".into()).unwrap();
        let err = resolve_with(&args(&["true"]), &l, &caller())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("t.toml:2:"), "{err}");
    }

    #[test]
    fn cli_overrides_profile() {
        let l = profile::load(Some("strict")).unwrap();
        let mut a = args(&["true"]);
        a.hostname = Some("cli-host".into());
        let s = resolve_with(&a, &l, &caller()).unwrap();
        assert_eq!(s.hostname, "cli-host");
        assert_eq!(s.timeout, Some(Duration::from_secs(3600)));
    }

    #[test]
    fn names() {
        assert!(check_name("web-1.prod_a").is_ok());
        for bad in ["", "-x", "a/b", "a b", &"x".repeat(64)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        let a = generate_name();
        assert_ne!(a, generate_name());
        assert!(check_name(&a).is_ok());
    }
}
