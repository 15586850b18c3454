//! Resource limits: one cgroup per sandbox, created before init runs any
//! command and removed after the last process is gone.
//!
//! Layouts:
//! - **cgroup v2** (first-class): as root, `<mount>/sandbox/<name>`; as an
//!   unprivileged user, `<delegated>/sandbox/<name>` where `<delegated>` is
//!   the highest ancestor of the launcher's own cgroup that the user owns
//!   (systemd's user delegation). Controllers are enabled in the parents'
//!   `cgroup.subtree_control`.
//! - **cgroup v1** (hosts like the development machine): as root, a
//!   directory `sandbox-<name>` below the launcher's own cgroup in each
//!   hierarchy used (memory always, for the peak-memory figure; cpu, pids,
//!   blkio when limited), so limits that apply to the launcher keep
//!   applying. Unprivileged users cannot use v1 (no delegation). CPU time
//!   comes from the launcher's rusage, not from a cgroup.
//!
//! Memory: the limit covers swap too (v2 `memory.swap.max = 0`, v1
//! `memory.memsw.limit_in_bytes`), and an OOM kill ends the whole sandbox
//! (v2 `memory.oom.group`, and on both the launcher kills init when the
//! OOM notification fires).
//!
//! A launcher killed with SIGKILL cannot remove its cgroup; the next run
//! that creates one removes every empty sandbox cgroup whose name is no
//! longer held by a live launcher (see `state::NameLock`).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::errors::io_reason;

/// Requested limits (all optional).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Limits {
    /// Bytes of memory (swap included).
    pub memory: Option<u64>,
    /// CPU bandwidth in CPUs (1.5 = one and a half CPUs).
    pub cpus: Option<f64>,
    /// Maximum number of processes and threads.
    pub pids: Option<u64>,
    /// Relative I/O weight, 1..=10000 (cgroup v2 scale; default 100).
    pub io_weight: Option<u16>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        self.memory.is_none()
            && self.cpus.is_none()
            && self.pids.is_none()
            && self.io_weight.is_none()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "cannot enforce {what}: this host has no cgroup hierarchy with the needed controller \
         ({detail})"
    )]
    NoController { what: &'static str, detail: String },
    #[error(
        "cannot enforce {what}: cgroup limits for an unprivileged user need a delegated cgroup v2 \
         subtree (a systemd user session); {detail}"
    )]
    NotDelegated { what: &'static str, detail: String },
    #[error("cannot enforce {what}: {reason}")]
    NotEffective {
        what: &'static str,
        reason: &'static str,
    },
    #[error("cannot set up the sandbox cgroup at {path}: {reason}")]
    Io { path: PathBuf, reason: String },
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> CgroupError + '_ {
    move |e| CgroupError::Io {
        path: path.to_path_buf(),
        reason: io_reason(&e),
    }
}

/// The host's cgroup layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// Pure cgroup v2 with controllers, mounted here.
    V2 {
        mount: PathBuf,
    },
    /// cgroup v1 hierarchies: controller -> (mount point, own path).
    V1 {
        hierarchies: BTreeMap<String, (PathBuf, String)>,
    },
    None,
}

impl Layout {
    pub fn version(&self) -> &'static str {
        match self {
            Layout::V2 { .. } => "v2",
            Layout::V1 { .. } => "v1",
            Layout::None => "none",
        }
    }
}

/// Detect the layout from `/proc/self/mountinfo` and `/proc/self/cgroup`.
pub fn detect() -> Layout {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    parse_layout(&mountinfo, &own, |p| {
        fs::read_to_string(p.join("cgroup.controllers"))
            .map(|s| !s.trim().is_empty())
            .unwrap_or(false)
    })
}

/// Pure parsing part of [`detect`] (unit-tested).
pub fn parse_layout(mountinfo: &str, own: &str, has_controllers: impl Fn(&Path) -> bool) -> Layout {
    let mut v2: Option<PathBuf> = None;
    let mut v1_mounts: Vec<(Vec<String>, PathBuf)> = Vec::new();
    for line in mountinfo.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let fields: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        let (Some(mnt), Some(fstype), Some(opts)) = (fields.get(4), post.first(), post.get(2))
        else {
            continue;
        };
        let mnt = PathBuf::from(unescape(mnt));
        match *fstype {
            "cgroup2" if has_controllers(&mnt) => v2 = Some(mnt),
            "cgroup" => {
                let ctrls = opts
                    .split(',')
                    .filter(|o| ["memory", "cpu", "cpuacct", "pids", "blkio"].contains(o))
                    .map(String::from)
                    .collect::<Vec<_>>();
                if !ctrls.is_empty() {
                    v1_mounts.push((ctrls, mnt));
                }
            }
            _ => {}
        }
    }
    if v1_mounts.is_empty() {
        return v2.map_or(Layout::None, |mount| Layout::V2 { mount });
    }
    // Own path per v1 hierarchy: "N:ctrl1,ctrl2:/path".
    let mut own_paths: BTreeMap<String, String> = BTreeMap::new();
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        for c in ctrls.split(',') {
            own_paths.insert(c.to_string(), path.to_string());
        }
    }
    let mut hierarchies = BTreeMap::new();
    for (ctrls, mnt) in v1_mounts {
        for c in ctrls {
            let own = own_paths.get(&c).cloned().unwrap_or_else(|| "/".into());
            hierarchies.insert(c, (mnt.clone(), own));
        }
    }
    Layout::V1 { hierarchies }
}

fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Resource usage read from the cgroup at the end of a run.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Usage {
    pub peak_memory_bytes: Option<u64>,
    pub cpu_time_ms: Option<f64>,
    pub oom_kills: u64,
    /// Times the cgroup hit its limit with nothing left to reclaim (v2
    /// `oom`, v1 `under_oom`).
    pub ooms: u64,
}

/// A live sandbox cgroup; removed on drop.
#[derive(Debug)]
pub struct Cgroup {
    layout: &'static str,
    /// Every directory we created (one per v1 hierarchy, or one for v2).
    dirs: Vec<PathBuf>,
    memory_dir: Option<PathBuf>,
    cpuacct_dir: Option<PathBuf>,
    /// Fires when the OOM killer acted in the cgroup.
    oom_fd: Option<OwnedFd>,
    /// Whether `oom_fd` is a v2 `memory.events` (POLLPRI) or a v1 eventfd.
    oom_is_events_file: bool,
    /// What was enforced, for the receipt.
    pub enforced: BTreeMap<&'static str, String>,
    /// Limits that could not be applied (best-effort mode only).
    pub not_enforced: Vec<&'static str>,
}

fn write(dir: &Path, file: &str, value: &str) -> Result<(), CgroupError> {
    let p = dir.join(file);
    fs::write(&p, value).map_err(io_err(&p))
}

impl Cgroup {
    /// Create the cgroup for sandbox `name` and apply `limits`. With
    /// `best_effort`, a limit that cannot be applied is recorded in
    /// `not_enforced` instead of failing the run.
    pub fn create(name: &str, limits: &Limits, best_effort: bool) -> Result<Self, CgroupError> {
        let layout = detect();
        // SAFETY: no preconditions.
        let euid = unsafe { libc::geteuid() };
        let what = first_limit(limits);
        let mut cg = Cgroup {
            layout: layout.version(),
            dirs: Vec::new(),
            memory_dir: None,
            cpuacct_dir: None,
            oom_fd: None,
            oom_is_events_file: false,
            enforced: BTreeMap::new(),
            not_enforced: Vec::new(),
        };
        match &layout {
            Layout::None => {
                return Err(CgroupError::NoController {
                    what,
                    detail: "no cgroup filesystem is mounted".into(),
                })
            }
            Layout::V2 { mount } => cg.create_v2(mount, name, limits, euid, best_effort)?,
            Layout::V1 { hierarchies } => {
                if euid != 0 {
                    return Err(CgroupError::NotDelegated {
                        what,
                        detail: "this host only has cgroup v1, which cannot be delegated".into(),
                    });
                }
                cg.create_v1(hierarchies, name, limits, best_effort)?
            }
        }
        Ok(cg)
    }

    fn create_v2(
        &mut self,
        mount: &Path,
        name: &str,
        limits: &Limits,
        euid: u32,
        best_effort: bool,
    ) -> Result<(), CgroupError> {
        let what = first_limit(limits);
        let base = if let Some(unit) = delegated_unit(mount) {
            unit
        } else if euid == 0 {
            mount.to_path_buf()
        } else {
            delegated_root(mount, euid).ok_or_else(|| CgroupError::NotDelegated {
                what,
                detail: "no ancestor of this process's cgroup is owned by you".into(),
            })?
        };
        let parent = base.join("sandbox");
        let wanted = ["memory", "cpu", "pids", "io"];
        enable_controllers(&base, &wanted);
        match fs::create_dir(&parent) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(&parent)(e)),
        }
        enable_controllers(&parent, &wanted);
        for n in stale_names(&parent, "") {
            let _ = fs::remove_dir(parent.join(n));
        }
        let dir = parent.join(name);
        fs::create_dir(&dir).map_err(io_err(&dir))?;
        self.dirs.push(dir.clone());
        let available = fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
        let has = |c: &str| available.split_whitespace().any(|x| x == c);
        self.memory_dir = Some(dir.clone());
        self.cpuacct_dir = Some(dir.clone());
        if let Some(m) = limits.memory {
            if has("memory") {
                write(&dir, "memory.max", &m.to_string())?;
                // Swap must not silently extend the limit.
                if write(&dir, "memory.swap.max", "0").is_err() && swap_configured() {
                    self.missing("memory-swap", best_effort)?;
                }
                write(&dir, "memory.oom.group", "1")?;
                self.enforced.insert("memory", m.to_string());
                let events = dir.join("memory.events");
                if let Ok(f) = fs::File::open(&events) {
                    self.oom_fd = Some(OwnedFd::from(f));
                    self.oom_is_events_file = true;
                }
            } else {
                self.missing("memory", best_effort)?;
            }
        }
        if let Some(c) = limits.cpus {
            if has("cpu") {
                let quota = ((c * 100_000.0).round() as u64).max(1000);
                write(&dir, "cpu.max", &format!("{quota} 100000"))?;
                self.enforced.insert("cpus", format!("{c}"));
            } else {
                self.missing("cpus", best_effort)?;
            }
        }
        if let Some(p) = limits.pids {
            if has("pids") {
                write(&dir, "pids.max", &p.to_string())?;
                self.enforced.insert("pids", p.to_string());
            } else {
                self.missing("pids", best_effort)?;
            }
        }
        if let Some(w) = limits.io_weight {
            let ok = has("io")
                && weight_scheduler_active(mount)
                && (write(&dir, "io.weight", &format!("default {w}")).is_ok()
                    || write(&dir, "io.bfq.weight", &w.clamp(1, 1000).to_string()).is_ok());
            if ok {
                self.enforced.insert("io_weight", w.to_string());
            } else {
                self.missing("io_weight", best_effort)?;
            }
        }
        Ok(())
    }

    fn create_v1(
        &mut self,
        h: &BTreeMap<String, (PathBuf, String)>,
        name: &str,
        limits: &Limits,
        best_effort: bool,
    ) -> Result<(), CgroupError> {
        // One directory per hierarchy (a hierarchy may carry several
        // controllers, e.g. "cpu,cpuacct").
        let mut made: BTreeMap<PathBuf, PathBuf> = BTreeMap::new();
        let mut dir_for = |this: &mut Self, ctrl: &str| -> Result<Option<PathBuf>, CgroupError> {
            let Some((mnt, own)) = h.get(ctrl) else {
                return Ok(None);
            };
            let parent = mnt.join(own.trim_start_matches('/'));
            if let Some(d) = made.get(&parent) {
                return Ok(Some(d.clone()));
            }
            let dir = parent.join(format!("sandbox-{name}"));
            fs::create_dir(&dir).map_err(io_err(&dir))?;
            this.dirs.push(dir.clone());
            made.insert(parent, dir.clone());
            Ok(Some(dir))
        };
        // Accounting hierarchies, always (peak memory and CPU time).
        // Stale sandbox cgroups (of killed launchers) may be in any
        // hierarchy a past run used: scan each distinct parent once, and
        // remove every stale name from all of them.
        let mut parents: Vec<PathBuf> = h
            .values()
            .map(|(mnt, own)| mnt.join(own.trim_start_matches('/')))
            .collect();
        parents.sort();
        parents.dedup();
        let mut stale: Vec<String> = parents
            .iter()
            .flat_map(|p| stale_names(p, "sandbox-"))
            .collect();
        stale.sort();
        stale.dedup();
        for parent in &parents {
            for n in &stale {
                let _ = fs::remove_dir(parent.join(format!("sandbox-{n}")));
            }
        }
        // Only the hierarchies a limit needs: on v1 every hierarchy costs a
        // task migration when init is placed, and each migration waits for
        // an RCU grace period (about half a millisecond here). CPU time
        // comes from the launcher's rusage, not from cpuacct.
        if let Some(m) = limits.memory {
            self.memory_dir = dir_for(self, "memory")?;
            match self.memory_dir.clone() {
                Some(dir) => {
                    write(&dir, "memory.limit_in_bytes", &m.to_string())?;
                    if dir.join("memory.memsw.limit_in_bytes").exists() {
                        write(&dir, "memory.memsw.limit_in_bytes", &m.to_string())?;
                        self.enforced.insert("memory", m.to_string());
                    } else if swap_configured() {
                        // No swap accounting: swap could extend the limit.
                        self.missing("memory-swap", best_effort)?;
                        self.enforced.insert("memory", m.to_string());
                    } else {
                        self.enforced.insert("memory", m.to_string());
                    }
                    // v1 has no "OOM-kill the group": the kernel's OOM
                    // killer is disabled for the cgroup instead, so on OOM
                    // every task waits while the launcher, woken by the
                    // eventfd, kills the whole sandbox at once.
                    write(&dir, "memory.oom_control", "1")?;
                    self.oom_fd = Some(oom_eventfd(&dir)?);
                }
                None => self.missing("memory", best_effort)?,
            }
        }
        if let Some(c) = limits.cpus {
            match dir_for(self, "cpu")? {
                Some(dir) => {
                    let quota = ((c * 100_000.0).round() as u64).max(1000);
                    write(&dir, "cpu.cfs_period_us", "100000")?;
                    write(&dir, "cpu.cfs_quota_us", &quota.to_string())?;
                    self.enforced.insert("cpus", format!("{c}"));
                }
                None => self.missing("cpus", best_effort)?,
            }
        }
        if let Some(p) = limits.pids {
            match dir_for(self, "pids")? {
                Some(dir) => {
                    write(&dir, "pids.max", &p.to_string())?;
                    self.enforced.insert("pids", p.to_string());
                }
                None => self.missing("pids", best_effort)?,
            }
        }
        if let Some(w) = limits.io_weight {
            let dir = dir_for(self, "blkio")?;
            let v1w = (u32::from(w) / 10).clamp(1, 1000).to_string();
            let ok = weight_scheduler_active(Path::new("/"))
                && dir.is_some_and(|d| {
                    write(&d, "blkio.bfq.weight", &v1w).is_ok()
                        || write(&d, "blkio.weight", &v1w).is_ok()
                });
            if ok {
                self.enforced.insert("io_weight", w.to_string());
            } else {
                self.missing("io_weight", best_effort)?;
            }
        }
        Ok(())
    }

    fn missing(&mut self, what: &'static str, best_effort: bool) -> Result<(), CgroupError> {
        if best_effort {
            self.not_enforced.push(what);
            return Ok(());
        }
        Err(match what {
            "memory-swap" => CgroupError::NotEffective {
                what: "--memory on swap",
                reason: "swap is configured but the kernel does not account it per cgroup \
                         (boot with swapaccount=1, or turn swap off)",
            },
            "io_weight" => CgroupError::NotEffective {
                what: "--io-weight",
                reason: "no block device uses an I/O scheduler that honours weights (BFQ) \
                         and the iocost controller is off",
            },
            _ => CgroupError::NoController {
                what,
                detail: format!("the {what} controller is not available for the sandbox cgroup"),
            },
        })
    }

    pub fn layout(&self) -> &'static str {
        self.layout
    }

    pub fn path(&self) -> Option<&Path> {
        self.dirs.first().map(PathBuf::as_path)
    }

    /// An fd of the (single) v2 cgroup directory, for `CLONE_INTO_CGROUP`.
    pub fn v2_dir_fd(&self) -> Option<OwnedFd> {
        if self.layout != "v2" {
            return None;
        }
        let dir = self.dirs.first()?;
        fs::File::open(dir).ok().map(OwnedFd::from)
    }

    /// cgroup v1: the `tasks` file of every directory, opened for writing
    /// (close-on-exec), for the clone child to move itself with `0`
    /// (see `container::start`). `None` on v2, which has no such file.
    ///
    /// A task that writes `0` to `tasks` migrates itself as a single
    /// thread, and the kernel then skips the threadgroup lock that a
    /// `cgroup.procs` write of another task's pid takes for writing (an
    /// RCU grace period per hierarchy). The write is checked against the
    /// opener's credentials (Linux 5.16 and later), so the launcher's
    /// root descriptor works in the child's user namespace.
    pub fn v1_task_files(&self) -> Result<Option<Vec<OwnedFd>>, CgroupError> {
        if self.layout != "v1" {
            return Ok(None);
        }
        let mut fds = Vec::with_capacity(self.dirs.len());
        for d in &self.dirs {
            let p = d.join("tasks");
            // std opens with O_CLOEXEC.
            let f = fs::OpenOptions::new()
                .write(true)
                .open(&p)
                .map_err(io_err(&p))?;
            fds.push(OwnedFd::from(f));
        }
        Ok(Some(fds))
    }

    /// Move `pid` (and so everything it will start) into the cgroup.
    pub fn add(&self, pid: libc::pid_t) -> Result<(), CgroupError> {
        for d in &self.dirs {
            write(d, "cgroup.procs", &pid.to_string())?;
        }
        Ok(())
    }

    /// The fd to poll for OOM events and the poll events to wait for.
    pub fn oom_poll(&self) -> Option<(RawFd, libc::c_short)> {
        self.oom_fd.as_ref().map(|f| {
            (
                f.as_raw_fd(),
                if self.oom_is_events_file {
                    libc::POLLPRI
                } else {
                    libc::POLLIN
                },
            )
        })
    }

    /// Acknowledge an OOM event; true when the sandbox ran out of memory
    /// (v1: the eventfd only fires on OOM; v2: `memory.events` changed and
    /// counts an OOM).
    pub fn oom_fired(&self) -> bool {
        match (&self.oom_fd, self.oom_is_events_file) {
            (Some(fd), false) => {
                let mut v = 0u64;
                // SAFETY: reading the 8-byte eventfd counter into `v`.
                let n = unsafe { libc::read(fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
                n == 8 && v > 0
            }
            _ => {
                let u = self.usage();
                u.oom_kills > 0 || u.ooms > 0
            }
        }
    }

    pub fn usage(&self) -> Usage {
        let read = |d: &Option<PathBuf>, f: &str| -> Option<String> {
            d.as_ref().and_then(|d| fs::read_to_string(d.join(f)).ok())
        };
        let kv = |text: &str, key: &str| -> Option<u64> {
            text.lines().find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                (k == key).then(|| v.trim().parse().ok()).flatten()
            })
        };
        if self.layout == "v2" {
            let peak = read(&self.memory_dir, "memory.peak").and_then(|s| s.trim().parse().ok());
            let cpu = read(&self.cpuacct_dir, "cpu.stat")
                .and_then(|s| kv(&s, "usage_usec"))
                .map(|us| us as f64 / 1000.0);
            let events = read(&self.memory_dir, "memory.events").unwrap_or_default();
            let oom = kv(&events, "oom_kill").unwrap_or(0);
            let ooms = kv(&events, "oom").unwrap_or(0);
            Usage {
                peak_memory_bytes: peak,
                cpu_time_ms: cpu,
                oom_kills: oom,
                ooms,
            }
        } else {
            let peak = read(&self.memory_dir, "memory.max_usage_in_bytes")
                .and_then(|s| s.trim().parse().ok());
            let cpu = None;
            let ctl = read(&self.memory_dir, "memory.oom_control").unwrap_or_default();
            let oom = kv(&ctl, "oom_kill").unwrap_or(0);
            let ooms = kv(&ctl, "under_oom").unwrap_or(0);
            Usage {
                peak_memory_bytes: peak,
                cpu_time_ms: cpu,
                oom_kills: oom,
                ooms,
            }
        }
    }

    /// Remove the cgroup directories (the sandbox's processes are gone).
    ///
    /// A cgroup stays busy (EBUSY) for a moment after its last task was
    /// reaped, typically well under a millisecond, so the retries start at
    /// 50 µs and double up to 2 ms (about 100 ms in all before giving up):
    /// a fixed 2 ms sleep made every run with limits 2-6 ms slower.
    pub fn remove(&mut self) {
        for d in self.dirs.drain(..).rev() {
            let mut wait = Duration::from_micros(50);
            let mut waited = Duration::ZERO;
            loop {
                match fs::remove_dir(&d) {
                    Err(e)
                        if e.raw_os_error() == Some(libc::EBUSY)
                            && waited < Duration::from_millis(100) =>
                    {
                        std::thread::sleep(wait);
                        waited += wait;
                        wait = (wait * 2).min(Duration::from_millis(2));
                    }
                    _ => break,
                }
            }
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Whether the host has any swap device or file.
fn swap_configured() -> bool {
    fs::read_to_string("/proc/swaps").is_ok_and(|s| s.lines().count() > 1)
}

/// I/O weights only act through a scheduler that honours them: BFQ on some
/// block device, or (v2) the iocost controller enabled on one.
pub fn weight_scheduler_active(cgroup_mount: &Path) -> bool {
    let bfq = fs::read_dir("/sys/block").is_ok_and(|d| {
        d.flatten().any(|e| {
            fs::read_to_string(e.path().join("queue/scheduler")).is_ok_and(|s| s.contains("[bfq]"))
        })
    });
    let iocost = fs::read_to_string(cgroup_mount.join("io.cost.qos"))
        .is_ok_and(|s| s.lines().any(|l| l.contains("enable=1")));
    bfq || iocost
}

fn first_limit(l: &Limits) -> &'static str {
    if l.memory.is_some() {
        "--memory"
    } else if l.cpus.is_some() {
        "--cpus"
    } else if l.pids.is_some() {
        "--pids"
    } else {
        "--io-weight"
    }
}

/// Best effort: a controller the parent cannot give is reported later,
/// when the limit that needs it is applied.
fn enable_controllers(dir: &Path, wanted: &[&str]) {
    let available = fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    for c in wanted {
        if available.split_whitespace().any(|a| a == *c) {
            let _ = fs::write(dir.join("cgroup.subtree_control"), format!("+{c}"));
        }
    }
}

/// Under a unit written by `sandbox service install` (`Delegate=yes`, and
/// `SANDBOX_CGROUP=delegated` in its environment), the sandbox's cgroup
/// goes inside the unit's own subtree: the launcher first moves itself
/// into the leaf `supervisor` (a cgroup with children may hold no
/// processes), and the unit's cgroup becomes the base. `None` elsewhere.
fn delegated_unit(mount: &Path) -> Option<PathBuf> {
    if std::env::var_os("SANDBOX_CGROUP").map_or(true, |v| v != "delegated") {
        return None;
    }
    let own = fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = own.lines().find_map(|l| l.strip_prefix("0::"))?;
    let mut cur = mount.join(path.trim_start_matches('/'));
    if cur.file_name().is_some_and(|n| n == "supervisor") {
        cur.pop();
        return Some(cur);
    }
    let leaf = cur.join("supervisor");
    match fs::create_dir(&leaf) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(_) => return None,
    }
    // "0" moves the writing process (the launcher is single-threaded here).
    fs::write(leaf.join("cgroup.procs"), "0").ok()?;
    Some(cur)
}

/// The highest ancestor of our own v2 cgroup that `uid` owns.
fn delegated_root(mount: &Path, uid: u32) -> Option<PathBuf> {
    let own = fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = own.lines().find_map(|l| l.strip_prefix("0::"))?;
    let mut cur = mount.join(path.trim_start_matches('/'));
    let mut best = None;
    while cur.starts_with(mount) && cur != mount {
        match fs::metadata(&cur) {
            Ok(m) if m.uid() == uid => best = Some(cur.clone()),
            _ => break,
        }
        if !cur.pop() {
            break;
        }
    }
    // Our own leaf holds processes, so limits go in a sibling subtree of
    // the delegated root.
    best
}

/// v1 OOM notification: an eventfd registered on `memory.oom_control`.
fn oom_eventfd(dir: &Path) -> Result<OwnedFd, CgroupError> {
    // SAFETY: plain eventfd(2).
    let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if efd < 0 {
        return Err(io_err(dir)(io::Error::last_os_error()));
    }
    // SAFETY: fresh fd owned by nobody else.
    let efd = unsafe { OwnedFd::from_raw_fd(efd) };
    let ctl = dir.join("memory.oom_control");
    let ctl_file = fs::File::open(&ctl).map_err(io_err(&ctl))?;
    write(
        dir,
        "cgroup.event_control",
        &format!("{} {}", efd.as_raw_fd(), ctl_file.as_raw_fd()),
    )?;
    Ok(efd)
}

/// `sandbox gc`: remove the empty cgroups that killed launchers left, in
/// every place `Cgroup::create` makes them; returns the removed paths.
pub fn collect_stale() -> Vec<PathBuf> {
    // SAFETY: no preconditions.
    let euid = unsafe { libc::geteuid() };
    let parents: Vec<(PathBuf, &str)> = match detect() {
        Layout::V2 { mount } => {
            let base = if euid == 0 {
                Some(mount.clone())
            } else {
                delegated_root(&mount, euid)
            };
            base.map(|b| (b.join("sandbox"), "")).into_iter().collect()
        }
        Layout::V1 { hierarchies } => hierarchies
            .values()
            .map(|(mnt, own)| (mnt.join(own.trim_start_matches('/')), "sandbox-"))
            .collect(),
        Layout::None => Vec::new(),
    };
    let mut removed = Vec::new();
    for (parent, prefix) in parents {
        for n in stale_names(&parent, prefix) {
            let dir = parent.join(format!("{prefix}{n}"));
            if fs::remove_dir(&dir).is_ok() {
                removed.push(dir);
            }
        }
    }
    removed.sort();
    removed.dedup();
    removed
}

/// Names of empty sandbox cgroups left by launchers that were killed.
fn stale_names(parent: &Path, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(parent) else {
        return out;
    };
    for e in entries.flatten() {
        let fname = e.file_name();
        let Some(fname) = fname.to_str() else {
            continue;
        };
        let Some(name) = fname.strip_prefix(prefix) else {
            continue;
        };
        if !e.file_type().is_ok_and(|t| t.is_dir()) || crate::spec::check_name(name).is_err() {
            continue;
        }
        // A name we can lock belongs to no live launcher.
        let Ok(_probe) = crate::state::NameLock::acquire(name) else {
            continue;
        };
        let procs = fs::read_to_string(e.path().join("cgroup.procs")).unwrap_or_default();
        if procs.trim().is_empty() {
            out.push(name.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_MOUNTS: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const V1_OWN: &str = "8:pids:/\n4:memory:/job/42\n2:cpuacct:/\n1:cpu:/\n0::/\n";

    #[test]
    fn hybrid_host_uses_v1() {
        let l = parse_layout(V1_MOUNTS, V1_OWN, |_| false);
        let Layout::V1 { hierarchies } = l else {
            panic!("{l:?}")
        };
        assert_eq!(
            hierarchies["memory"],
            (
                PathBuf::from("/sys/fs/cgroup/memory"),
                "/job/42".to_string()
            )
        );
        assert!(hierarchies.contains_key("pids"));
        assert!(!hierarchies.contains_key("blkio"));
    }

    #[test]
    fn pure_v2() {
        let m = "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            parse_layout(m, "0::/user.slice\n", |_| true),
            Layout::V2 {
                mount: "/sys/fs/cgroup".into()
            }
        );
        assert_eq!(parse_layout(m, "", |_| false), Layout::None);
    }

    #[test]
    fn combined_v1_hierarchy() {
        let m = "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n";
        let Layout::V1 { hierarchies } = parse_layout(m, "3:cpu,cpuacct:/x\n", |_| false) else {
            panic!()
        };
        assert_eq!(hierarchies["cpu"].0, hierarchies["cpuacct"].0);
        assert_eq!(hierarchies["cpuacct"].1, "/x");
    }
}
