//! Shared helpers for the end-to-end tests (see `tests/README.md`).
//!
//! Everything here starts *real* sandboxes: the `sandbox` launcher from the
//! workspace target directory with the static `sandbox-init`, as root and as
//! an unprivileged user (through `setpriv`). Nothing is mocked.
//!
//! The main entry points:
//! - [`Who`]: the identity a case runs as; [`Who::ready`] prints `SKIP: ...`
//!   and returns `None` when that identity cannot run here.
//! - [`both!`]: one case, generated as a `root` and a `rootless` test.
//! - [`Sandbox`]: a builder for one launcher invocation, with a hang guard,
//!   controlled environment, extra inherited fds and an optional pty.
//! - [`Output`] / [`Spawned`] / [`PtyChild`]: results and live runs.
//! - Host-side probes: [`mountinfo`], [`pids_with_marker`],
//!   [`orphaned_children`], [`Fixture`] (a temp dir under `/var/tmp`).

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Upper bound for any single launcher run. A hang guard only, never a
/// timing assertion: a run that takes longer is killed and the test fails.
pub const HANG_GUARD: Duration = Duration::from_secs(60);

/// `PATH` given to the launcher (and therefore to the command).
pub const TEST_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The system Python. `python3` on `PATH` may be a pyenv shim under /root
/// that neither the sandbox nor an unprivileged user can execute.
pub const PY: &str = "/usr/bin/python3";

/// Print a skip reason on stderr and return from the current test.
#[macro_export]
macro_rules! skip {
    ($($arg:tt)*) => {{
        eprintln!("SKIP: {}", format!($($arg)*));
        return;
    }};
}

/// One case, run both as root and rootless: generates a module named after
/// the case with the tests `root` and `rootless`.
///
/// ```ignore
/// both! {
///     /// Doc of the case.
///     fn exit_status_passes_through(who) {
///         Sandbox::run(who).sh("exit 7").output().assert_code(7);
///     }
/// }
/// ```
#[macro_export]
macro_rules! both {
    ($(#[$meta:meta])* fn $name:ident($who:ident) $body:block) => {
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[allow(unused_variables)]
            fn case($who: $crate::Who) $body

            #[test]
            fn root() {
                if let Some(w) = $crate::Who::Root.ready() {
                    case(w)
                }
            }

            #[test]
            fn rootless() {
                if let Some(w) = $crate::Who::Rootless.ready() {
                    case(w)
                }
            }
        }
    };
}

// ---------------------------------------------------------------------------
// Locating (and if needed building) the binaries
// ---------------------------------------------------------------------------

/// The workspace root (the directory holding the root `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in manifest.ancestors() {
        let toml = dir.join("Cargo.toml");
        if let Ok(text) = std::fs::read_to_string(&toml) {
            if text.contains("[workspace]") {
                return dir.to_path_buf();
            }
        }
    }
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The cargo target directory: `$CARGO_TARGET_DIR` or `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").filter(|v| !v.is_empty()) {
        Some(d) => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                workspace_root().join(d)
            }
        }
        None => workspace_root().join("target"),
    }
}

/// The two binaries under test.
#[derive(Debug, Clone)]
pub struct Bins {
    /// `sandbox` (glibc, from `target/debug`).
    pub sandbox: PathBuf,
    /// `sandbox-init` (static musl, from `target/x86_64-unknown-linux-musl/debug`).
    pub init: PathBuf,
}

/// An exclusive `flock` on a file, released on drop.
#[derive(Debug)]
pub struct FileLock {
    _file: std::fs::File,
}

impl FileLock {
    /// Block until the lock on `path` is ours (the file is created).
    pub fn acquire(path: &Path) -> io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        loop {
            // SAFETY: flock on an fd we own; no memory is involved.
            let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if r == 0 {
                return Ok(Self { _file: file });
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

fn cargo_build(root: &Path, args: &[&str]) -> Result<(), String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(&cargo)
        .args(args)
        .current_dir(root)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", Path::new(&cargo).display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`cargo {}` failed ({}):\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Locate the binaries, building them once per test run.
///
/// Overrides: `SANDBOX_BIN` (launcher) and `SANDBOX_INIT` (init) skip the
/// lookup and the build. `SANDBOX_E2E_NO_BUILD=1` uses whatever is in the
/// target directory. Otherwise `cargo build` runs once per nextest run
/// (`NEXTEST_RUN_ID`, recorded in a stamp file) or once per test process,
/// under an `flock` so that parallel test processes do not race.
pub fn bins() -> &'static Bins {
    static BINS: OnceLock<Bins> = OnceLock::new();
    BINS.get_or_init(|| {
        let target = target_dir();
        let mut sandbox = target.join("debug/sandbox");
        let mut init = target.join("x86_64-unknown-linux-musl/debug/sandbox-init");
        let env_bin = std::env::var_os("SANDBOX_BIN").filter(|v| !v.is_empty());
        let env_init = std::env::var_os("SANDBOX_INIT").filter(|v| !v.is_empty());
        if let Some(b) = &env_bin {
            sandbox = PathBuf::from(b);
        }
        if let Some(i) = &env_init {
            init = PathBuf::from(i);
        }
        let no_build = std::env::var_os("SANDBOX_E2E_NO_BUILD").is_some_and(|v| v == "1");
        let present = sandbox.is_file() && init.is_file();
        // A target dir we cannot write (e.g. tests run by another user):
        // no build, test what is there.
        let lock = std::fs::create_dir_all(&target)
            .and_then(|()| FileLock::acquire(&target.join("sandbox-e2e-build.lock")));
        if let (Err(e), true) = (&lock, present) {
            eprintln!("note: not building ({e}); testing the existing binaries");
        }
        if (env_bin.is_none() || env_init.is_none()) && !(no_build && present) && lock.is_ok() {
            let stamp = target.join("sandbox-e2e-build.stamp");
            let run_id = std::env::var("NEXTEST_RUN_ID").ok();
            // The stamp holds the run id, then the build error if any.
            let stamp_text = std::fs::read_to_string(&stamp).unwrap_or_default();
            let built_this_run = match &run_id {
                Some(id) => stamp_text.lines().next() == Some(id.as_str()),
                None => false,
            };
            let missing = !sandbox.is_file() || !init.is_file();
            if missing || (!no_build && !built_this_run) {
                let root = workspace_root();
                let r = cargo_build(&root, &["build", "-p", "sandbox"]).and_then(|()| {
                    cargo_build(
                        &root,
                        &[
                            "build",
                            "-p",
                            "sandbox-init",
                            "--target",
                            "x86_64-unknown-linux-musl",
                        ],
                    )
                });
                if let Some(id) = &run_id {
                    let text = match &r {
                        Ok(()) => format!("{id}\n"),
                        Err(e) => format!("{id}\n{e}"),
                    };
                    let _ = std::fs::write(&stamp, text);
                }
                match r {
                    Ok(()) => {}
                    Err(e) if sandbox.is_file() && init.is_file() => {
                        eprintln!("WARNING: build failed, testing the existing binaries: {e}");
                    }
                    Err(e) => panic!("cannot build the binaries under test: {e}"),
                }
            } else if stamp_text.lines().count() > 1 {
                eprintln!(
                    "WARNING: the build failed earlier in this run; testing the existing binaries"
                );
            }
        }
        assert!(
            sandbox.is_file(),
            "launcher not found: {}",
            sandbox.display()
        );
        assert!(init.is_file(), "sandbox-init not found: {}", init.display());
        Bins { sandbox, init }
    })
}

/// True when every directory above `p` is searchable by others and `p`
/// itself is readable and executable by others.
fn usable_by_others(p: &Path) -> bool {
    let Ok(meta) = std::fs::metadata(p) else {
        return false;
    };
    if meta.permissions().mode() & 0o005 != 0o005 {
        return false;
    }
    p.ancestors()
        .skip(1)
        .all(|d| std::fs::metadata(d).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
}

/// The binaries as an unprivileged user can execute them: the originals
/// when they are world-executable, else copies in a 0755 dir in /var/tmp.
pub fn bins_for_others() -> &'static Bins {
    static OTHERS: OnceLock<Bins> = OnceLock::new();
    OTHERS.get_or_init(|| {
        let b = bins();
        if usable_by_others(&b.sandbox) && usable_by_others(&b.init) {
            return b.clone();
        }
        let dir = PathBuf::from(format!("/var/tmp/sandbox-e2e-bins-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the binary copy dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            .expect("chmod the binary copy dir");
        let copy = |src: &Path, name: &str| {
            let dst = dir.join(name);
            std::fs::copy(src, &dst).expect("copy a binary for the unprivileged user");
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755))
                .expect("chmod a copied binary");
            dst
        };
        Bins {
            sandbox: copy(&b.sandbox, "sandbox"),
            init: copy(&b.init, "sandbox-init"),
        }
    })
}

// ---------------------------------------------------------------------------
// Identities
// ---------------------------------------------------------------------------

/// An account from the passwd database.
#[derive(Debug, Clone)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

fn passwd_entries() -> Vec<Account> {
    let text = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 7 {
                return None;
            }
            Some(Account {
                name: f[0].into(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: PathBuf::from(f[5]),
            })
        })
        .collect()
}

/// The effective uid of the test process.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The effective gid of the test process.
pub fn egid() -> u32 {
    // SAFETY: getegid has no preconditions and cannot fail.
    unsafe { libc::getegid() }
}

fn find_setpriv() -> Option<PathBuf> {
    ["/usr/bin/setpriv", "/bin/setpriv", "/usr/sbin/setpriv"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// The unprivileged account rootless cases run as.
///
/// As root: the first passwd entry with uid >= 1000 (not `nobody`); if
/// there is none, the account `sbtest` is created (`useradd -M -s
/// /usr/sbin/nologin sbtest`). As a normal user: that user itself.
pub fn unprivileged() -> Result<&'static Account, String> {
    static ACCT: OnceLock<Result<Account, String>> = OnceLock::new();
    ACCT.get_or_init(|| {
        if euid() != 0 {
            let uid = euid();
            return Ok(passwd_entries()
                .into_iter()
                .find(|a| a.uid == uid)
                .unwrap_or(Account {
                    name: format!("uid{uid}"),
                    uid,
                    gid: egid(),
                    home: PathBuf::from("/"),
                }));
        }
        let pick = || {
            passwd_entries()
                .into_iter()
                .find(|a| a.uid >= 1000 && a.uid < 60000 && a.name != "nobody")
        };
        if let Some(a) = pick() {
            return Ok(a);
        }
        let _lock = FileLock::acquire(Path::new("/var/tmp/sandbox-e2e-useradd.lock"))
            .map_err(|e| format!("cannot lock for useradd: {e}"))?;
        if let Some(a) = pick() {
            return Ok(a);
        }
        let out = Command::new("useradd")
            .args(["-M", "-s", "/usr/sbin/nologin", "sbtest"])
            .output()
            .map_err(|e| format!("no unprivileged account and useradd cannot run: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "no unprivileged account and `useradd sbtest` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        pick().ok_or_else(|| "useradd succeeded but sbtest is not in /etc/passwd".into())
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// Who runs the launcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    /// uid 0 on the host.
    Root,
    /// An unprivileged account (user namespaces only).
    Rootless,
}

impl Who {
    /// Host uid of the launcher.
    pub fn uid(self) -> u32 {
        match self {
            Who::Root => 0,
            Who::Rootless => unprivileged().map(|a| a.uid).unwrap_or(u32::MAX),
        }
    }

    /// Host gid of the launcher.
    pub fn gid(self) -> u32 {
        match self {
            Who::Root => 0,
            Who::Rootless => unprivileged().map(|a| a.gid).unwrap_or(u32::MAX),
        }
    }

    /// `HOME` of the launcher.
    pub fn home(self) -> PathBuf {
        match self {
            Who::Root => PathBuf::from("/root"),
            Who::Rootless => unprivileged()
                .map(|a| a.home.clone())
                .ok()
                .filter(|h| h.is_dir())
                .unwrap_or_else(|| PathBuf::from("/")),
        }
    }

    /// Why this identity cannot run here, if it cannot.
    pub fn unavailable(self) -> Option<String> {
        static ROOTLESS: OnceLock<Option<String>> = OnceLock::new();
        match self {
            Who::Root => (euid() != 0).then(|| "the tests do not run as root".to_string()),
            Who::Rootless => ROOTLESS
                .get_or_init(|| {
                    if let Err(e) = unprivileged() {
                        return Some(e);
                    }
                    if euid() == 0 && find_setpriv().is_none() {
                        return Some("setpriv (util-linux) is not installed".into());
                    }
                    // Probe: can this user create the namespaces at all?
                    let out = Sandbox::run(Who::Rootless).arg("--").arg("true").output();
                    let err = out.stderr_str();
                    if out.status.code() == Some(125)
                        && (err.contains("user namespaces") || err.contains("clone3"))
                    {
                        return Some(format!(
                            "unprivileged user namespaces are unavailable: {}",
                            err.trim()
                        ));
                    }
                    None
                })
                .clone(),
        }
    }

    /// `Some(self)` when this identity can run here; otherwise prints
    /// `SKIP: <reason>` on stderr and returns `None`.
    pub fn ready(self) -> Option<Self> {
        match self.unavailable() {
            None => Some(self),
            Some(why) => {
                eprintln!("SKIP: {self:?} case: {why}");
                None
            }
        }
    }

    pub fn is_root(self) -> bool {
        self == Who::Root
    }
}

// ---------------------------------------------------------------------------
// Running the launcher
// ---------------------------------------------------------------------------

/// What the launcher's stdin is.
#[derive(Debug, Clone)]
enum Input {
    Null,
    Bytes(Vec<u8>),
    /// A pipe the test keeps open (see [`Spawned::close_stdin`]).
    Pipe,
}

/// Pids of the launchers this process started and has not reaped yet, so
/// that [`orphaned_children`] can tell them from orphans (several tests may
/// share one process under `cargo test`).
static LIVE_CHILDREN: Mutex<Vec<i32>> = Mutex::new(Vec::new());

/// Spawn with the registry locked, so no other thread sees the new child
/// unregistered.
fn spawn_registered(cmd: &mut Command) -> io::Result<Child> {
    let mut live = LIVE_CHILDREN.lock().expect("child registry");
    let child = cmd.spawn()?;
    live.push(child.id() as i32);
    Ok(child)
}

fn unregister_child(pid: u32) {
    LIVE_CHILDREN
        .lock()
        .expect("child registry")
        .retain(|p| *p != pid as i32);
}

/// One invocation of the `sandbox` binary.
#[derive(Debug)]
pub struct Sandbox {
    who: Who,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    input: Input,
    cwd: PathBuf,
    wrap: Vec<OsString>,
    guard: Duration,
    /// (source, target fd number in the launcher), non-close-on-exec.
    fds: Vec<(OwnedFd, RawFd)>,
    close_stdin: bool,
}

impl Sandbox {
    /// `sandbox ARGS...` (no subcommand).
    pub fn cli(who: Who) -> Self {
        Sandbox {
            who,
            args: Vec::new(),
            env: Vec::new(),
            input: Input::Null,
            cwd: PathBuf::from("/"),
            wrap: Vec::new(),
            guard: HANG_GUARD,
            fds: Vec::new(),
            close_stdin: false,
        }
    }

    /// `sandbox run ...`.
    pub fn run(who: Who) -> Self {
        Self::cli(who).arg("run")
    }

    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.args.push(a.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// `-- COMMAND...`
    pub fn cmd<I, S>(self, argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.arg("--").args(argv)
    }

    /// `-- /bin/sh -c SCRIPT`
    pub fn sh(self, script: &str) -> Self {
        self.cmd(["/bin/sh", "-c", script])
    }

    /// `-- /usr/bin/python3 -c SCRIPT ARGS...`
    pub fn py<I, S>(self, script: &str, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cmd([PY, "-c", script]).args(args)
    }

    /// Add a variable to the launcher's (controlled) environment.
    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Self {
        let k = k.as_ref().to_owned();
        self.env.retain(|(ek, _)| *ek != k);
        self.env.push((k, v.as_ref().to_owned()));
        self
    }

    /// Feed these bytes to the launcher's stdin, then close it.
    pub fn stdin(mut self, data: impl Into<Vec<u8>>) -> Self {
        self.input = Input::Bytes(data.into());
        self
    }

    /// Give the launcher a stdin pipe that the test controls.
    pub fn stdin_pipe(mut self) -> Self {
        self.input = Input::Pipe;
        self
    }

    /// Start the launcher with fd 0 closed.
    pub fn no_stdin(mut self) -> Self {
        self.close_stdin = true;
        self
    }

    /// Working directory of the launcher (default `/`).
    pub fn cwd(mut self, dir: impl AsRef<Path>) -> Self {
        self.cwd = dir.as_ref().to_path_buf();
        self
    }

    /// Run the launcher invocation through a wrapper command
    /// (`WRAPPER... <launcher invocation>`), e.g. `unshare -m ...`.
    pub fn wrap<I, S>(mut self, prefix: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.wrap = prefix.into_iter().map(|a| a.as_ref().to_owned()).collect();
        self
    }

    /// Replace the hang guard.
    pub fn guard(mut self, d: Duration) -> Self {
        self.guard = d;
        self
    }

    /// Let the launcher inherit `fd` as descriptor number `target`
    /// (without close-on-exec). `target` must be below 100.
    pub fn inherit_fd(mut self, fd: OwnedFd, target: RawFd) -> Self {
        assert!(
            (0..100).contains(&target),
            "inherit_fd target must be < 100"
        );
        // Move the source above 100 so that no dup2 target clobbers it.
        // SAFETY: F_DUPFD_CLOEXEC on a valid fd returns a new fd or -1.
        let high = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 100) };
        assert!(high >= 0, "F_DUPFD_CLOEXEC: {}", io::Error::last_os_error());
        // SAFETY: `high` is a fresh fd that nobody else owns.
        let high = unsafe { OwnedFd::from_raw_fd(high) };
        self.fds.push((high, target));
        self
    }

    /// The argv that will be executed (wrapper, setpriv, launcher, args).
    pub fn argv(&self) -> Vec<OsString> {
        let mut v: Vec<OsString> = self.wrap.clone();
        match self.who {
            Who::Root => v.push(bins().sandbox.clone().into()),
            Who::Rootless => {
                let acct = unprivileged().expect("rootless case without an account");
                if euid() == 0 {
                    let setpriv = find_setpriv().expect("setpriv is installed");
                    v.push(setpriv.into());
                    v.push(format!("--reuid={}", acct.uid).into());
                    v.push(format!("--regid={}", acct.gid).into());
                    v.push("--clear-groups".into());
                    v.push("--".into());
                }
                v.push(bins_for_others().sandbox.clone().into());
            }
        }
        v.extend(self.args.iter().cloned());
        v
    }

    /// A printable description of the invocation (for failure messages).
    pub fn describe(&self) -> String {
        let argv: Vec<String> = self
            .argv()
            .iter()
            .map(|a| {
                let s = a.to_string_lossy();
                if s.is_empty() || s.contains(|c: char| c.is_whitespace() || c == '\'') {
                    format!("{s:?}")
                } else {
                    s.into_owned()
                }
            })
            .collect();
        format!("[{:?}] {}", self.who, argv.join(" "))
    }

    fn command(&self) -> Command {
        let argv = self.argv();
        let mut c = Command::new(&argv[0]);
        c.args(&argv[1..]);
        c.env_clear();
        let init = match self.who {
            Who::Root => bins().init.clone(),
            Who::Rootless => bins_for_others().init.clone(),
        };
        c.env("PATH", TEST_PATH)
            .env("HOME", self.who.home())
            .env("LANG", "C.UTF-8")
            .env("SANDBOX_INIT", init);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c.current_dir(&self.cwd);
        let fds: Vec<(RawFd, RawFd)> = self.fds.iter().map(|(f, t)| (f.as_raw_fd(), *t)).collect();
        let close_stdin = self.close_stdin;
        if !fds.is_empty() || close_stdin {
            // SAFETY: the closure runs between fork and exec and only makes
            // async-signal-safe calls (dup2, fcntl, close) on plain integers.
            unsafe {
                c.pre_exec(move || {
                    for (src, target) in &fds {
                        if libc::dup2(*src, *target) < 0 {
                            return Err(io::Error::last_os_error());
                        }
                        // dup2 clears FD_CLOEXEC on the new descriptor.
                    }
                    if close_stdin {
                        libc::close(0);
                    }
                    Ok(())
                });
            }
        }
        c
    }

    /// Run to completion (killed after the hang guard) and collect output.
    pub fn output(self) -> Output {
        self.spawn().wait()
    }

    /// Start the launcher; stdout and stderr are collected in background.
    pub fn spawn(mut self) -> Spawned {
        let desc = self.describe();
        let mut cmd = self.command();
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let input = std::mem::replace(&mut self.input, Input::Null);
        match (&input, self.close_stdin) {
            (_, true) => cmd.stdin(Stdio::inherit()),
            (Input::Null, _) => cmd.stdin(Stdio::null()),
            (Input::Bytes(_) | Input::Pipe, _) => cmd.stdin(Stdio::piped()),
        };
        let start = Instant::now();
        let mut child =
            spawn_registered(&mut cmd).unwrap_or_else(|e| panic!("cannot spawn {desc}: {e}"));
        drop(self.fds.drain(..));
        let stdin = child.stdin.take();
        let stdin = match (input, stdin) {
            (Input::Bytes(data), Some(mut w)) => {
                std::thread::spawn(move || {
                    let _ = w.write_all(&data);
                });
                None
            }
            (_, s) => s,
        };
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let out_buf = Arc::new(Mutex::new(Vec::new()));
        let err_buf = Arc::new(Mutex::new(Vec::new()));
        let (line_tx, line_rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel();
        {
            let buf = Arc::clone(&out_buf);
            let done = done_tx.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::with_capacity(1 << 16, stdout);
                loop {
                    let mut line = Vec::new();
                    match r.read_until(b'\n', &mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            buf.lock().expect("stdout buffer").extend_from_slice(&line);
                            // Only short lines are interesting as signals.
                            if line.len() < 4096 {
                                let _ = line_tx.send(String::from_utf8_lossy(&line).into_owned());
                            }
                        }
                    }
                }
                let _ = done.send(());
            });
        }
        {
            let buf = Arc::clone(&err_buf);
            std::thread::spawn(move || {
                let mut r = stderr;
                let mut chunk = [0u8; 8192];
                loop {
                    match r.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf
                            .lock()
                            .expect("stderr buffer")
                            .extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = done_tx.send(());
            });
        }
        Spawned {
            child,
            desc,
            start,
            guard: self.guard,
            stdin,
            out_buf,
            err_buf,
            lines: line_rx,
            done: done_rx,
            seen: String::new(),
        }
    }

    /// Start the launcher with a pty as its stdin, stdout and stderr (and
    /// controlling terminal, in a new session), like an interactive shell.
    pub fn spawn_pty(self, pty: &Pty) -> PtyChild {
        let desc = self.describe();
        let mut cmd = self.command();
        let slave = |what| {
            Stdio::from(
                pty.slave
                    .try_clone()
                    .unwrap_or_else(|e| panic!("dup the pty slave for {what}: {e}")),
            )
        };
        cmd.stdin(slave("stdin"))
            .stdout(slave("stdout"))
            .stderr(slave("stderr"));
        // SAFETY: between fork and exec only async-signal-safe calls:
        // setsid and ioctl(TIOCSCTTY) on fd 0, which is the pty slave.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let start = Instant::now();
        let child =
            spawn_registered(&mut cmd).unwrap_or_else(|e| panic!("cannot spawn {desc}: {e}"));
        PtyChild {
            child,
            master: pty.master.as_raw_fd(),
            out: Vec::new(),
            start,
            guard: self.guard,
            desc,
        }
    }
}

/// The result of a finished launcher run.
pub struct Output {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub elapsed: Duration,
    pub desc: String,
}

impl fmt::Debug for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let clip = |b: &[u8]| {
            let s = String::from_utf8_lossy(&b[..b.len().min(4000)]).into_owned();
            if b.len() > 4000 {
                format!("{s}... ({} bytes)", b.len())
            } else {
                s
            }
        };
        write!(
            f,
            "\n  run:     {}\n  status:  {:?}\n  elapsed: {:?}\n  stdout:  {:?}\n  stderr:  {:?}\n",
            self.desc,
            self.status,
            self.elapsed,
            clip(&self.stdout),
            clip(&self.stderr)
        )
    }
}

impl Output {
    /// The exit code; panics when the launcher itself died of a signal.
    pub fn code(&self) -> i32 {
        match self.status.code() {
            Some(c) => c,
            None => panic!("the launcher was killed by a signal: {self:?}"),
        }
    }

    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// stdout without the trailing newline.
    pub fn line(&self) -> String {
        self.stdout_str().trim_end_matches('\n').to_string()
    }

    /// Assert the exit code, with the whole run in the failure message.
    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.status.code(),
            Some(code),
            "unexpected exit status:{self:?}"
        );
        self
    }

    #[track_caller]
    pub fn assert_ok(&self) -> &Self {
        self.assert_code(0)
    }

    #[track_caller]
    pub fn assert_stdout_contains(&self, needle: &str) -> &Self {
        assert!(
            self.stdout_str().contains(needle),
            "stdout lacks {needle:?}:{self:?}"
        );
        self
    }

    #[track_caller]
    pub fn assert_stderr_contains(&self, needle: &str) -> &Self {
        assert!(
            self.stderr_str().contains(needle),
            "stderr lacks {needle:?}:{self:?}"
        );
        self
    }

    /// The launcher's own error: exactly one line on stderr, `sandbox: ...`.
    #[track_caller]
    pub fn assert_one_line_error(&self) -> &Self {
        let err = self.stderr_str();
        assert!(
            err.ends_with('\n') && err.matches('\n').count() == 1 && err.starts_with("sandbox: "),
            "expected exactly one 'sandbox: ...' line on stderr:{self:?}"
        );
        self
    }

    /// `KEY: VALUE` lines of stdout as a map (later keys win).
    pub fn kv(&self) -> BTreeMap<String, String> {
        self.stdout_str()
            .lines()
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect()
    }
}

/// A running launcher.
pub struct Spawned {
    pub child: Child,
    pub desc: String,
    start: Instant,
    guard: Duration,
    stdin: Option<std::process::ChildStdin>,
    out_buf: Arc<Mutex<Vec<u8>>>,
    err_buf: Arc<Mutex<Vec<u8>>>,
    lines: mpsc::Receiver<String>,
    done: mpsc::Receiver<()>,
    seen: String,
}

impl fmt::Debug for Spawned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spawned")
            .field("desc", &self.desc)
            .field("pid", &self.child.id())
            .finish()
    }
}

impl Spawned {
    /// The launcher's pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn snapshot(&self) -> String {
        format!(
            "\n  run:    {}\n  stdout: {:?}\n  stderr: {:?}",
            self.desc,
            String::from_utf8_lossy(&self.out_buf.lock().expect("stdout buffer")),
            String::from_utf8_lossy(&self.err_buf.lock().expect("stderr buffer"))
        )
    }

    /// Wait until a stdout line contains `needle` (panics after `timeout`,
    /// a hang guard, or when stdout ends first).
    #[track_caller]
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push_str(&line);
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    panic!(
                        "no line with {needle:?} within {timeout:?}:{}",
                        self.snapshot()
                    );
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let _ = self.child.kill();
                    panic!(
                        "stdout ended before a line with {needle:?}:{}",
                        self.snapshot()
                    );
                }
            }
        }
    }

    /// Send a signal to the launcher process.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own, not yet reaped child.
        let r = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(r, 0, "kill: {}", io::Error::last_os_error());
    }

    /// SIGKILL the launcher and reap it; returns its wait status.
    pub fn kill_and_reap(&mut self) -> ExitStatus {
        self.signal(libc::SIGKILL);
        let st = self.child.wait().expect("reap the launcher");
        unregister_child(self.child.id());
        st
    }

    /// Write to the stdin pipe (see [`Sandbox::stdin_pipe`]).
    pub fn write_stdin(&mut self, data: &[u8]) {
        self.stdin
            .as_mut()
            .expect("the launcher has a stdin pipe")
            .write_all(data)
            .expect("write to the launcher's stdin");
    }

    /// Close the stdin pipe.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Whether the launcher has exited (without reaping it).
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Wait for the launcher to exit (killed after the hang guard).
    pub fn wait(mut self) -> Output {
        self.stdin = None;
        let deadline = self.start + self.guard;
        let mut nap = Duration::from_millis(1);
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(st)) => break st,
                Ok(None) => {}
                Err(e) => panic!("wait for {}: {e}", self.desc),
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                unregister_child(self.child.id());
                panic!(
                    "HANG GUARD: the launcher ran longer than {:?} and was killed:{}",
                    self.guard,
                    self.snapshot()
                );
            }
            std::thread::sleep(nap);
            nap = (nap * 2).min(Duration::from_millis(20));
        };
        unregister_child(self.child.id());
        let elapsed = self.start.elapsed();
        // Both readers finish at end of file; something in the sandbox that
        // outlived the launcher could hold the pipes: do not wait forever.
        let limit = Instant::now() + Duration::from_secs(10);
        let mut open_pipes = 2;
        while open_pipes > 0 {
            let left = limit.saturating_duration_since(Instant::now());
            match self.done.recv_timeout(left) {
                Ok(()) => open_pipes -= 1,
                Err(_) => panic!(
                    "the launcher exited ({status:?}) but its stdout/stderr stayed open for 10 s \
                     (a sandbox process survived?):{}",
                    self.snapshot()
                ),
            }
        }
        let stdout = std::mem::take(&mut *self.out_buf.lock().expect("stdout buffer"));
        let stderr = std::mem::take(&mut *self.err_buf.lock().expect("stderr buffer"));
        Output {
            status,
            stdout,
            stderr,
            elapsed,
            desc: self.desc.clone(),
        }
    }
}

// ---------------------------------------------------------------------------
// Pseudo-terminals
// ---------------------------------------------------------------------------

/// A pty pair; the test plays the terminal (master) and hands the slave to
/// the launcher as its controlling terminal.
#[derive(Debug)]
pub struct Pty {
    pub master: OwnedFd,
    pub slave: OwnedFd,
}

impl Pty {
    /// A new pty with the given window size.
    pub fn new(rows: u16, cols: u16) -> io::Result<Self> {
        // SAFETY: posix_openpt returns a new fd or -1.
        let m = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
        if m < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `m` is a fresh fd we own.
        let master = unsafe { OwnedFd::from_raw_fd(m) };
        // SAFETY: grantpt/unlockpt on a valid pty master fd.
        if unsafe { libc::grantpt(m) } != 0 || unsafe { libc::unlockpt(m) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut name = [0 as libc::c_char; 128];
        // SAFETY: the buffer is writable and its length is passed.
        if unsafe { libc::ptsname_r(m, name.as_mut_ptr(), name.len()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: open on the NUL-terminated name ptsname_r wrote.
        let s = unsafe {
            libc::open(
                name.as_ptr(),
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            )
        };
        if s < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `s` is a fresh fd we own.
        let slave = unsafe { OwnedFd::from_raw_fd(s) };
        let pty = Pty { master, slave };
        pty.set_size(rows, cols)?;
        Ok(pty)
    }

    /// Set the window size (on the master; the kernel then signals the
    /// slave's foreground process group with SIGWINCH).
    pub fn set_size(&self, rows: u16, cols: u16) -> io::Result<()> {
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize struct that lives on our stack.
        if unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The terminal settings of the slave side (what `stty -g` shows).
    pub fn termios(&self) -> Termios {
        // SAFETY: a zeroed termios is a valid out-parameter.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: tcgetattr writes into `t`.
        let r = unsafe { libc::tcgetattr(self.slave.as_raw_fd(), &mut t) };
        assert_eq!(r, 0, "tcgetattr: {}", io::Error::last_os_error());
        Termios {
            iflag: t.c_iflag,
            oflag: t.c_oflag,
            cflag: t.c_cflag,
            lflag: t.c_lflag,
            cc: t.c_cc.to_vec(),
        }
    }

    /// Bytes waiting in the slave's input queue (typed, not yet read).
    pub fn pending_input(&self) -> usize {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes an int.
        let r = unsafe { libc::ioctl(self.slave.as_raw_fd(), libc::FIONREAD, &mut n) };
        assert_eq!(r, 0, "FIONREAD: {}", io::Error::last_os_error());
        n as usize
    }
}

/// The comparable part of a `termios`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Termios {
    pub iflag: libc::tcflag_t,
    pub oflag: libc::tcflag_t,
    pub cflag: libc::tcflag_t,
    pub lflag: libc::tcflag_t,
    pub cc: Vec<libc::cc_t>,
}

impl Termios {
    /// Canonical mode with echo (a normal shell terminal).
    pub fn is_cooked(&self) -> bool {
        self.lflag & libc::ICANON != 0 && self.lflag & libc::ECHO != 0
    }
}

/// A launcher running on a pty.
#[derive(Debug)]
pub struct PtyChild {
    pub child: Child,
    master: RawFd,
    /// Everything read from the master so far.
    pub out: Vec<u8>,
    start: Instant,
    guard: Duration,
    pub desc: String,
}

impl PtyChild {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Read what the master has within `wait`; returns the bytes read.
    fn pump(&mut self, wait: Duration) -> usize {
        let mut pfd = libc::pollfd {
            fd: self.master,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = wait.as_millis().min(1000) as i32;
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n <= 0 || pfd.revents & libc::POLLIN == 0 {
            return 0;
        }
        let mut buf = [0u8; 8192];
        // SAFETY: reading into a stack buffer of the given length.
        let r = unsafe { libc::read(self.master, buf.as_mut_ptr().cast(), buf.len()) };
        if r <= 0 {
            return 0;
        }
        self.out.extend_from_slice(&buf[..r as usize]);
        r as usize
    }

    /// Read until the output contains `needle` (hang guard `timeout`).
    #[track_caller]
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !String::from_utf8_lossy(&self.out).contains(needle) {
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!(
                    "no {needle:?} on the terminal within {timeout:?}\n  run: {}\n  output: {:?}",
                    self.desc,
                    String::from_utf8_lossy(&self.out)
                );
            }
            self.pump(Duration::from_millis(50));
        }
    }

    /// Type bytes on the terminal.
    pub fn write(&self, data: &[u8]) {
        // SAFETY: writing from a valid slice to the master fd.
        let r = unsafe { libc::write(self.master, data.as_ptr().cast(), data.len()) };
        assert_eq!(r, data.len() as isize, "write to pty master");
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own, not yet reaped child.
        let r = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(r, 0, "kill: {}", io::Error::last_os_error());
    }

    /// Wait for exit (hang guard), reading the terminal meanwhile; returns
    /// the status and everything the terminal showed.
    pub fn wait(mut self) -> (ExitStatus, String) {
        let deadline = self.start + self.guard;
        let status = loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                break st;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "HANG GUARD: {} ran longer than {:?}; terminal: {:?}",
                    self.desc,
                    self.guard,
                    String::from_utf8_lossy(&self.out)
                );
            }
            self.pump(Duration::from_millis(20));
        };
        unregister_child(self.child.id());
        while self.pump(Duration::from_millis(50)) > 0 {}
        (status, String::from_utf8_lossy(&self.out).into_owned())
    }
}

// ---------------------------------------------------------------------------
// Host-side probes and fixtures
// ---------------------------------------------------------------------------

/// A unique token for this test process (markers, names, file names).
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}{}x{n}x{t}", std::process::id())
}

/// A unique `sleep` duration that works as a marker in a command line:
/// `sleep <marker>` sleeps for about 1000 s.
pub fn sleep_marker() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("1000.{:07}{:03}{:09}", std::process::id(), n % 1000, t)
}

/// The host's mount table as seen by the test process.
pub fn mountinfo() -> String {
    std::fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo")
}

/// One entry of a mountinfo file.
#[derive(Debug, Clone)]
pub struct MountEntry {
    pub mount_point: String,
    /// Per-mount options (`ro,nosuid,...`).
    pub options: Vec<String>,
    pub fs_type: String,
    pub source: String,
}

/// Parse mountinfo text.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let f: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            Some(MountEntry {
                mount_point: unescape_mount(f.get(4)?),
                options: f.get(5)?.split(',').map(String::from).collect(),
                fs_type: r.first()?.to_string(),
                source: r.get(1).unwrap_or(&"").to_string(),
            })
        })
        .collect()
}

fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = u8::from_str_radix(&s[i + 1..i + 4], 8).unwrap_or(b'?');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// (pid, argv) of every process on the host.
pub fn host_processes() -> Vec<(i32, Vec<Vec<u8>>)> {
    let mut v = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return v;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            let argv = cmd
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(<[u8]>::to_vec)
                .collect();
            v.push((pid, argv));
        }
    }
    v
}

/// Host pids (other than ours) whose command line contains `marker`.
pub fn pids_with_marker(marker: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    host_processes()
        .into_iter()
        .filter(|(pid, argv)| {
            *pid != me
                && argv
                    .iter()
                    .any(|a| a.windows(marker.len()).any(|w| w == marker.as_bytes()))
        })
        .map(|(pid, _)| pid)
        .collect()
}

/// Poll `cond` every 20 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `(ppid, state, comm)` of a process, from `/proc/PID/stat`.
pub fn proc_stat(pid: i32) -> Option<(i32, char, String)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s[open + 1..close].to_string();
    let mut rest = s[close + 2..].split(' ');
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some((ppid, state, comm))
}

/// Direct children of `parent` on the host: (pid, state, comm).
pub fn children_of(parent: i32) -> Vec<(i32, char, String)> {
    let mut v = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return v;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if let Some((ppid, state, comm)) = proc_stat(pid) {
            if ppid == parent {
                v.push((pid, state, comm));
            }
        }
    }
    v
}

/// Make the test process a child subreaper: orphans of the launchers it
/// starts are reparented to it, so leaks are visible as its children.
pub fn become_subreaper() {
    // SAFETY: plain prctl with integer arguments.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(
        r,
        0,
        "PR_SET_CHILD_SUBREAPER: {}",
        io::Error::last_os_error()
    );
}

/// Live children of this (subreaper) process that are not launchers it
/// started: orphans reparented to it. Zombies among them are reaped and not
/// reported.
pub fn orphaned_children() -> Vec<(i32, char, String)> {
    let me = std::process::id() as i32;
    let live = LIVE_CHILDREN.lock().expect("child registry").clone();
    children_of(me)
        .into_iter()
        .filter(|(pid, _, _)| !live.contains(pid))
        .filter(|(pid, state, _)| {
            if *state == 'Z' {
                // SAFETY: reaping a specific zombie child of ours that no
                // other code waits for (it is not a registered launcher).
                unsafe { libc::waitpid(*pid, std::ptr::null_mut(), libc::WNOHANG) };
                false
            } else {
                true
            }
        })
        .collect()
}

/// A temporary directory under `/var/tmp` (not `/tmp`, which is a private
/// tmpfs inside the sandbox), owned by the given identity, removed on drop.
#[derive(Debug)]
pub struct Fixture {
    pub path: PathBuf,
}

impl Fixture {
    /// A fresh 0755 directory owned by `who`'s uid/gid.
    pub fn new(who: Who) -> Self {
        let path = PathBuf::from(format!("/var/tmp/{}", unique("sandbox-e2e-")));
        std::fs::create_dir(&path).expect("create a fixture dir under /var/tmp");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .expect("chmod the fixture dir");
        let f = Fixture { path };
        f.chown(&f.path, who);
        f
    }

    /// Path of an entry in the fixture.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }

    /// Give `p` to `who` (no-op when not running as root).
    pub fn chown(&self, p: &Path, who: Who) {
        if euid() == 0 {
            std::os::unix::fs::lchown(p, Some(who.uid()), Some(who.gid()))
                .expect("chown a fixture path");
        }
    }

    /// Write a file (mode 0644) owned by `who`.
    pub fn file(&self, name: &str, data: &[u8], who: Who) -> PathBuf {
        let p = self.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("create fixture subdirs");
        }
        std::fs::write(&p, data).expect("write a fixture file");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644))
            .expect("chmod a fixture file");
        self.chown(&p, who);
        p
    }

    /// Create a directory (mode 0755) owned by `who`.
    pub fn dir(&self, name: &str, who: Who) -> PathBuf {
        let p = self.join(name);
        std::fs::create_dir_all(&p).expect("create a fixture dir");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))
            .expect("chmod a fixture dir");
        self.chown(&p, who);
        p
    }

    /// Sorted names in the fixture root.
    pub fn listing(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.path)
            .expect("list the fixture")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// What a file looked like: content, mode, owner and mtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileState {
    pub content: Vec<u8>,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

/// Snapshot of a host file.
pub fn file_state(p: &Path) -> FileState {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(p).expect("stat a fixture file");
    FileState {
        content: std::fs::read(p).unwrap_or_default(),
        mode: m.mode(),
        uid: m.uid(),
        gid: m.gid(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
    }
}

/// A path as a C string (for libc calls in tests).
pub fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

/// Whether an executable exists on the host.
pub fn have(path: &str) -> bool {
    Path::new(path).is_file()
}

/// Parse the `KEY=VALUE` lines of `env` output.
pub fn parse_env(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

// ---------------------------------------------------------------------------
// The nested lab (tests/lab/lab.sh)
// ---------------------------------------------------------------------------

/// Why the nested lab cannot run here, if it cannot.
pub fn lab_unavailable() -> Option<String> {
    if euid() != 0 {
        return Some("the lab needs root".into());
    }
    if Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_err()
    {
        return Some(
            "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)".into(),
        );
    }
    let has_kernel = std::fs::read_dir("/boot").is_ok_and(|d| {
        d.flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("vmlinuz-"))
    });
    if !has_kernel {
        return Some("no Debian kernel in /boot (apt-get install linux-image-amd64)".into());
    }
    None
}

/// Why the micro-VM guest kernel is missing, if it is (scripts/test.sh
/// builds and installs it with scripts/build-kernel.sh before the tests).
pub fn guest_kernel_unavailable() -> Option<String> {
    let dirs = sandbox::vm::kernel::search_dirs();
    let found = dirs
        .iter()
        .any(|d| d.join("vmlinux").is_file() || d.join("bzImage").is_file());
    (!found).then(|| {
        format!("no guest kernel installed (looked in {dirs:?}); run scripts/build-kernel.sh")
    })
}

/// Run a script of `tests/tests/lab/` inside the lab with `lab_args`, the
/// given extra kernel parameters, and `args` after the script; returns the
/// `CHECK` lines' verdicts after asserting the lab itself worked.
///
/// A lab whose guest froze as a whole (lab.sh stops it when its heartbeat
/// stops: "the lab VM stopped responding") is run once more, with a note:
/// that freeze of the nested TCG machine is an open problem of the test
/// environment (docs/snapshots.md, "Known limitations"), and every check
/// still has to pass in the second run.
#[track_caller]
pub fn run_lab_checks(lab_args: &[&str], append: &str, script: &str, args: &[String]) {
    let root = workspace_root();
    let run = || {
        Command::new(root.join("tests/lab/lab.sh"))
            .args(lab_args)
            .args(if lab_args.contains(&"--timeout") {
                &[][..]
            } else {
                &["--timeout", "600"][..]
            })
            .args(["--", "/bin/sh"])
            .arg(root.join("tests/tests/lab").join(script))
            .args(args)
            .env("LAB_APPEND", append)
            .current_dir("/")
            .output()
            .expect("run the lab")
    };
    let mut out = run();
    if out.status.code() == Some(97)
        && String::from_utf8_lossy(&out.stderr).contains("the lab VM stopped responding")
    {
        eprintln!(
            "note: lab {script}: the nested lab VM froze (no heartbeat); running it once more. \
             First run's output:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        out = run();
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() != Some(97),
        "the lab itself failed:\n{stderr}\n{stdout}"
    );
    let checks: Vec<&str> = stdout.lines().filter(|l| l.starts_with("CHECK ")).collect();
    let failed: Vec<&&str> = checks.iter().filter(|l| !l.ends_with(" ok")).collect();
    eprintln!(
        "lab {script}: {}/{} checks passed",
        checks.len() - failed.len(),
        checks.len()
    );
    assert!(
        stdout.contains("DONE"),
        "the script did not finish:\n{stdout}\n{stderr}"
    );
    assert!(!checks.is_empty(), "no checks ran:\n{stdout}");
    assert!(failed.is_empty(), "{failed:#?}\nstderr: {stderr}");
}
