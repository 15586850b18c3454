//! Building the sandbox's filesystem view: the numbered setup steps.
//!
//! Runs in init, as root of the sandbox's outer user namespace, inside a
//! fresh mount namespace. The steps below are the ones listed in
//! `docs/design.md` ("Namespace backend: setup steps"); each failure names
//! its step, the path and the errno.
//!
//! 0. `cgroupns`: a new cgroup namespace, rooted at the sandbox's cgroup
//!    (the launcher placed init there before letting it run).
//! 1. `make-private`: `/` recursively private, nothing propagates out.
//! 2. `bind-root`: the host `/` bound recursively onto the staging dir
//!    (micro-VM backend: the root share mounted there, step `vm-share`).
//! 3. `root-readonly`: that whole tree read-only, nosuid, nodev
//!    (`mount_setattr(AT_RECURSIVE)`, one atomic call).
//! 4. `proc`: a fresh procfs for the sandbox's PID namespace.
//! 5. `sys`: a fresh read-only sysfs (own network namespace) or the
//!    host's, read-only from step 3; on cgroup v2 hosts the sandbox's own
//!    cgroup subtree, read-only, on `/sys/fs/cgroup`.
//! 6. `dev`: a tmpfs `/dev` with null, zero, full, random, urandom, tty
//!    bound from the host, a private devpts, `/dev/shm`, the usual symlinks.
//! 7. `scratch`: private tmpfs on `/tmp` and `/run`.
//! 8. `volumes`: user volumes and tmpfs mounts, in order; each destination
//!    resolved inside the new root by fd (micro-VM backend: volumes are 9p
//!    shares, mounted in step `vm-share`).
//! 9. `mask`: sensitive paths hidden, `/proc` paths read-only.
//! 10. `hostname`, `loopback`.
//! 11. `pivot-root`: `pivot_root(".", ".")`, old root detached.
//! 12. `dev-readonly`: `/dev` remounted read-only.
//! 13. `workdir`: created when it is missing and may be created.
//!
//! The micro-VM backend runs the same steps as root of the guest's initial
//! namespaces, after `vm.rs` made a tmpfs the root (with devtmpfs on `/dev`
//! and procfs on `/proc`, the "host view" the steps bind from). The
//! differences are only where the filesystems come from: the root is
//! [`RootSource::Share`] and volumes are [`Mount::Share`], 9p over virtio
//! ([`share_options`]); host bind mounts and prepared mounts do not exist
//! there and are refused, and so are shares in the namespace backend.
//! `/sys` is always a fresh sysfs in a VM (the guest kernel's own; the
//! host's sysfs must not come through the share).

use std::ffi::CStr;
use std::os::fd::{AsRawFd, OwnedFd};

use sandbox_proto::{FsSpec, InitSpec, Mount, RootSource, SetupError, SysMode};

use crate::sys::{self, cstring, Errno};

/// A failed step: converted to [`SetupError`] for the launcher.
#[derive(Debug)]
pub struct StepError {
    pub step: &'static str,
    pub path: Option<Vec<u8>>,
    pub errno: Errno,
    pub detail: String,
}

impl StepError {
    pub fn new(step: &'static str, path: impl AsRef<[u8]>, errno: Errno) -> Self {
        Self {
            step,
            path: Some(path.as_ref().to_vec()),
            errno,
            detail: String::new(),
        }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }

    pub fn into_proto(self) -> SetupError {
        SetupError {
            step: self.step.into(),
            path: self.path,
            errno: self.errno,
            detail: self.detail,
        }
    }
}

type StepResult<T = ()> = Result<T, StepError>;

/// Where the new root is assembled before `pivot_root`. Any existing
/// directory works as a mount point; the first one present is used.
const STAGING: [&[u8]; 4] = [b"/tmp", b"/mnt", b"/var/tmp", b"/run"];

const MS_PRIVATE_REC: libc::c_ulong = libc::MS_PRIVATE | libc::MS_REC;

/// Which backend init serves; decides where filesystems come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Namespace,
    Vm,
}

/// The 9p `msize` asked for: the largest the Linux virtio transport
/// carries (`PAGE_SIZE * (VIRTQUEUE_NUM - 3)` = 4096 * 125 in 6.1; a larger
/// value is silently lowered to it). The server may negotiate it down.
pub const SHARE_MSIZE: u32 = 512_000;

/// What a 9p share holds, which decides its cache mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShareKind {
    /// The host root, read-only: `cache=loose` (page cache, cached
    /// dentries and attributes). Much faster for exec, the dynamic loader
    /// and path walks; the price is that changes the host makes to its own
    /// files during the run may be seen late, which is acceptable for a
    /// read-only view of system files.
    Root,
    /// A volume: `cache=mmap`. No attribute or dentry caching, so the host
    /// and the command see each other's changes at once, and shared
    /// writable `mmap` works (plain `cache=none` refuses it).
    Volume,
}

/// Mount options of a 9p share. `access=client`: one attach, and the
/// guest kernel checks permissions itself from the uid, gid and mode the
/// server reports, like a local filesystem (the server still opens files
/// with the launcher's own rights).
pub fn share_options(kind: ShareKind) -> String {
    let cache = match kind {
        ShareKind::Root => "loose",
        ShareKind::Volume => "mmap",
    };
    format!("trans=virtio,version=9p2000.L,msize={SHARE_MSIZE},access=client,cache={cache}")
}

/// Mount the 9p share `tag` on `target` (step `vm-share`; `dst` names the
/// destination inside the sandbox in the error).
fn mount_share(
    tag: &str,
    target: &CStr,
    dst: &[u8],
    kind: ShareKind,
    readonly: bool,
) -> StepResult {
    let bad_tag = |e| {
        StepError::new("vm-share", dst, e).detail(format!("share tag {tag:?} contains a NUL byte"))
    };
    let tag_c = cstring(tag.as_bytes()).map_err(bad_tag)?;
    let opts = c("vm-share", share_options(kind).as_bytes())?;
    let mut flags = libc::MS_NOSUID | libc::MS_NODEV;
    if readonly {
        flags |= libc::MS_RDONLY;
    }
    sys::mount(Some(&tag_c), target, Some(c"9p"), flags, Some(&opts)).map_err(|e| {
        let why = match e {
            libc::ENOENT => format!("no virtio-9p device has the tag {tag:?}"),
            libc::ENODEV => "the guest kernel has no 9p filesystem (CONFIG_9P_FS)".into(),
            _ => format!("mounting the 9p share {tag:?}"),
        };
        StepError::new("vm-share", dst, e).detail(why)
    })
}

fn step_mount(
    step: &'static str,
    src: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> StepResult {
    sys::mount(src, target, fstype, flags, data)
        .map_err(|e| StepError::new(step, target.to_bytes(), e))
}

fn c(step: &'static str, bytes: &[u8]) -> StepResult<std::ffi::CString> {
    cstring(bytes).map_err(|e| StepError::new(step, bytes, e).detail("path contains a NUL byte"))
}

/// Build the whole filesystem view and switch into it (steps 1-13).
/// `prepared` are the descriptors that came with the `Start` message
/// (referenced by `Mount::Prepared`).
pub fn build_root(
    spec: &InitSpec,
    mut prepared: Vec<Option<OwnedFd>>,
    backend: Backend,
) -> StepResult {
    let fs = &spec.fs;
    check_backend(fs, backend)?;
    // 0. cgroupns
    // SAFETY: plain unshare(2).
    sys::check(unsafe { libc::unshare(libc::CLONE_NEWCGROUP) }.into())
        .map_err(|e| StepError::new("cgroupns", "", e))?;
    // 1. make-private
    step_mount("make-private", None, c"/", None, MS_PRIVATE_REC, None)?;
    // Volume sources are host paths: open them now, before step 2 covers
    // the staging directory (e.g. /tmp) with the new root.
    let sources: Vec<Option<OwnedFd>> = fs
        .mounts
        .iter()
        .map(|m| match (m, backend) {
            // Refused by check_backend.
            (Mount::Bind { dst, .. } | Mount::Prepared { dst, .. }, Backend::Vm)
            | (Mount::Share { dst, .. }, Backend::Namespace) => {
                Err(StepError::new("volumes", dst, libc::EINVAL))
            }
            (Mount::Bind { src, .. }, Backend::Namespace) => open_source(src).map(Some),
            (Mount::Tmpfs { .. } | Mount::Share { .. }, _) => Ok(None),
            (Mount::Prepared { dst, fd, .. }, Backend::Namespace) => prepared
                .get_mut(*fd as usize)
                .and_then(Option::take)
                .map(Some)
                .ok_or_else(|| {
                    StepError::new("volumes", dst, libc::EBADF)
                        .detail("the launcher did not pass the prepared mount")
                }),
        })
        .collect::<StepResult<_>>()?;

    // 2. bind-root
    let stage = pick_staging()?;
    let stage_c = c("bind-root", stage)?;
    match (&fs.root, backend) {
        (RootSource::HostBind, Backend::Namespace) => step_mount(
            "bind-root",
            Some(c"/"),
            &stage_c,
            None,
            libc::MS_BIND | libc::MS_REC,
            None,
        )?,
        (RootSource::Share { tag }, Backend::Vm) => {
            mount_share(tag, &stage_c, b"/", ShareKind::Root, true)?
        }
        // Refused by check_backend.
        (RootSource::HostBind, Backend::Vm) | (RootSource::Share { .. }, Backend::Namespace) => {
            return Err(StepError::new("bind-root", "/", libc::EINVAL))
        }
    }
    let root = sys::open(&stage_c, libc::O_PATH | libc::O_DIRECTORY)
        .map_err(|e| StepError::new("bind-root", stage, e))?;

    // 3. root-readonly
    let ro = sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV;
    sys::mount_setattr_fd(root.as_raw_fd(), ro, 0).map_err(|e| {
        StepError::new("root-readonly", stage, e).detail(if e == libc::ENOSYS {
            "mount_setattr(2) is missing: Linux 5.12 or newer is required"
        } else {
            ""
        })
    })?;

    // 4. proc
    let proc_dir = resolve_dir(&root, b"/proc", "proc")?;
    step_mount(
        "proc",
        Some(c"proc"),
        &sys::fd_path(&proc_dir),
        Some(c"proc"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        None,
    )?;
    drop(proc_dir);

    // 5. sys
    let fresh_sys = fs.sys == SysMode::Fresh || backend == Backend::Vm;
    if fresh_sys {
        let sys_dir = resolve_dir(&root, b"/sys", "sys")?;
        step_mount(
            "sys",
            Some(c"sysfs"),
            &sys::fd_path(&sys_dir),
            Some(c"sysfs"),
            libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            None,
        )?;
    }

    if fresh_sys && fs.cgroup2 {
        let cg = resolve_dir(&root, b"/sys/fs/cgroup", "sys")?;
        step_mount(
            "sys",
            Some(c"cgroup2"),
            &sys::fd_path(&cg),
            Some(c"cgroup2"),
            libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            None,
        )?;
    }

    // 6. dev
    build_dev(&root, fs)?;

    // 7. scratch
    for (dst, mode) in [(&b"/tmp"[..], 0o1777), (&b"/run"[..], 0o755)] {
        mount_tmpfs(&root, "scratch", dst, Some(fs.scratch_size), mode)?;
    }

    // 8. volumes
    for (m, src_fd) in fs.mounts.iter().zip(&sources) {
        match (m, src_fd) {
            (Mount::Bind { dst, readonly, .. }, Some(src_fd)) => {
                bind_volume(&root, src_fd, dst, *readonly)?
            }
            (Mount::Prepared { dst, readonly, .. }, Some(tree)) => {
                attach_tree(&root, tree, dst, *readonly)?
            }
            (Mount::Bind { src: path, .. }, None) | (Mount::Prepared { dst: path, .. }, None) => {
                return Err(StepError::new("volumes", path, libc::EBADF))
            }
            (Mount::Share { tag, dst, readonly }, _) => {
                let dir = resolve_or_create(&root, dst, true, "volumes")?;
                mount_share(tag, &sys::fd_path(&dir), dst, ShareKind::Volume, *readonly)?;
            }
            (Mount::Tmpfs { dst, size, mode }, _) => {
                let dir = resolve_or_create(&root, dst, true, "volumes")?;
                mount_tmpfs_at(&dir, "volumes", dst, *size, *mode)?;
            }
        }
    }

    // 9. mask
    for path in &fs.masked {
        mask_path(&root, path)?;
    }
    for path in &fs.readonly {
        readonly_path(&root, path)?;
    }

    // 10. hostname, loopback
    if !spec.hostname.is_empty() {
        // SAFETY: pointer and length describe the hostname bytes.
        let ret = unsafe { libc::sethostname(spec.hostname.as_ptr().cast(), spec.hostname.len()) };
        sys::check(ret.into()).map_err(|e| StepError::new("hostname", &spec.hostname, e))?;
    }
    if spec.loopback_up {
        loopback_up().map_err(|e| StepError::new("loopback", "lo", e))?;
    }

    // 11. pivot-root
    pivot_into(&root)?;
    drop(root);

    // 12. dev-readonly
    step_mount(
        "dev-readonly",
        None,
        c"/dev",
        None,
        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NOEXEC,
        None,
    )?;

    // 13. workdir (only created here; entered by the command itself so
    // that permission checks apply to the command's identity)
    if spec.create_cwd {
        create_workdir(&spec.cwd, spec.user.init_ns_uid, spec.user.init_ns_gid)?;
    }
    Ok(())
}

/// Refuse, before anything changes, filesystems the backend cannot
/// provide: shares outside a VM, host binds and prepared mounts inside one.
pub fn check_backend(fs: &FsSpec, backend: Backend) -> StepResult {
    match (&fs.root, backend) {
        (RootSource::HostBind, Backend::Vm) => {
            return Err(StepError::new("bind-root", "/", libc::EINVAL)
                .detail("the micro-VM backend needs the root as a 9p share"))
        }
        (RootSource::Share { .. }, Backend::Namespace) => {
            return Err(StepError::new("bind-root", "/", libc::EINVAL)
                .detail("a 9p share root exists only in the micro-VM backend"))
        }
        _ => {}
    }
    for m in &fs.mounts {
        match (m, backend) {
            (Mount::Bind { dst, .. } | Mount::Prepared { dst, .. }, Backend::Vm) => {
                return Err(StepError::new("volumes", dst, libc::EINVAL).detail(
                    "host bind mounts do not exist in the micro-VM backend (volumes are \
                     9p shares there)",
                ))
            }
            (Mount::Share { dst, .. }, Backend::Namespace) => {
                return Err(StepError::new("volumes", dst, libc::EINVAL)
                    .detail("9p shares exist only in the micro-VM backend"))
            }
            _ => {}
        }
    }
    Ok(())
}

fn pick_staging() -> StepResult<&'static [u8]> {
    for cand in STAGING {
        let Ok(cs) = cstring(cand) else { continue };
        // SAFETY: zeroed stat is a valid out-parameter.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid path and writable stat buffer.
        let ret = unsafe { libc::lstat(cs.as_ptr(), &mut st) };
        if ret == 0 && st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            return Ok(cand);
        }
    }
    Err(StepError::new("bind-root", "/tmp", libc::ENOENT)
        .detail("no staging directory (/tmp, /mnt, /var/tmp, /run) exists on the host"))
}

/// Resolve an existing directory inside the new root.
fn resolve_dir(root: &OwnedFd, path: &[u8], step: &'static str) -> StepResult<OwnedFd> {
    sys::open_in_root(root.as_raw_fd(), path, libc::O_PATH | libc::O_DIRECTORY)
        .map_err(|e| StepError::new(step, path, e))
}

/// Resolve `path` inside the new root, creating it (and missing parents)
/// when it does not exist. Creation only succeeds on writable mounts (the
/// scratch tmpfs mounts); on the read-only root it fails with `EROFS`.
fn resolve_or_create(
    root: &OwnedFd,
    path: &[u8],
    dir: bool,
    step: &'static str,
) -> StepResult<OwnedFd> {
    let flags = libc::O_PATH | if dir { libc::O_DIRECTORY } else { 0 };
    match sys::open_in_root(root.as_raw_fd(), path, flags) {
        Ok(fd) => return Ok(fd),
        Err(libc::ENOENT) => {}
        Err(e) => return Err(StepError::new(step, path, e)),
    }
    // Walk component by component, creating what is missing. Each
    // component is created relative to its parent's fd, so a symlink cannot
    // redirect creation outside the root.
    let comps: Vec<&[u8]> = path
        .split(|b| *b == b'/')
        .filter(|c| !c.is_empty())
        .collect();
    let mut cur = sys::open_in_root(root.as_raw_fd(), b"/", libc::O_PATH | libc::O_DIRECTORY)
        .map_err(|e| StepError::new(step, path, e))?;
    for (i, comp) in comps.iter().enumerate() {
        let last = i + 1 == comps.len();
        if *comp == b".." || *comp == b"." {
            return Err(StepError::new(step, path, libc::EINVAL)
                .detail("destination must not contain '.' or '..'"));
        }
        let name = c(step, comp)?;
        // SAFETY: valid dirfd and name.
        let ret = unsafe {
            if last && !dir {
                libc::mknodat(cur.as_raw_fd(), name.as_ptr(), libc::S_IFREG | 0o644, 0)
            } else {
                libc::mkdirat(cur.as_raw_fd(), name.as_ptr(), 0o755)
            }
        };
        if ret != 0 {
            let e = sys::errno();
            if e != libc::EEXIST {
                let hint = if e == libc::EROFS {
                    "the destination does not exist and the host root is read-only here; \
                     create it on the host, or mount it below /tmp, /run or a --tmpfs"
                } else {
                    ""
                };
                return Err(StepError::new(step, path, e).detail(hint));
            }
        }
        let sub = &comps[..=i].join(&b'/');
        let mut full = vec![b'/'];
        full.extend_from_slice(sub);
        let f = if last {
            flags
        } else {
            libc::O_PATH | libc::O_DIRECTORY
        };
        cur = sys::open_in_root(root.as_raw_fd(), &full, f)
            .map_err(|e| StepError::new(step, path, e))?;
    }
    Ok(cur)
}

fn mount_tmpfs(
    root: &OwnedFd,
    step: &'static str,
    dst: &[u8],
    size: Option<u64>,
    mode: u32,
) -> StepResult {
    let dir = resolve_dir(root, dst, step)?;
    mount_tmpfs_at(&dir, step, dst, size, mode)
}

fn mount_tmpfs_at(
    dir: &OwnedFd,
    step: &'static str,
    dst: &[u8],
    size: Option<u64>,
    mode: u32,
) -> StepResult {
    let mut opts = format!("mode={mode:o}");
    if let Some(s) = size {
        opts.push_str(&format!(",size={s}"));
    }
    let opts = c(step, opts.as_bytes())?;
    sys::mount(
        Some(c"tmpfs"),
        &sys::fd_path(dir),
        Some(c"tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some(&opts),
    )
    .map_err(|e| StepError::new(step, dst, e))
}

/// Open a volume source in the host view (`O_PATH`).
fn open_source(src: &[u8]) -> StepResult<OwnedFd> {
    let src_c = c("volumes", src)?;
    sys::open(&src_c, libc::O_PATH)
        .map_err(|e| StepError::new("volumes", src, e).detail("volume source"))
}

fn bind_volume(root: &OwnedFd, src_fd: &OwnedFd, dst: &[u8], readonly: bool) -> StepResult {
    // The source's type decides whether the destination is a directory.
    let st = sys::fstat(src_fd.as_raw_fd()).map_err(|e| StepError::new("volumes", dst, e))?;
    let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
    let dst_fd = resolve_or_create(root, dst, is_dir, "volumes")?;
    sys::mount(
        Some(&sys::fd_path(src_fd)),
        &sys::fd_path(&dst_fd),
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    )
    .map_err(|e| StepError::new("volumes", dst, e))?;
    // Re-open: the fd we held points below the new mount.
    let mounted = sys::open_in_root(root.as_raw_fd(), dst, libc::O_PATH)
        .map_err(|e| StepError::new("volumes", dst, e))?;
    let mut set = sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV;
    if readonly {
        set |= sys::MOUNT_ATTR_RDONLY;
    }
    sys::mount_setattr_fd(mounted.as_raw_fd(), set, 0)
        .map_err(|e| StepError::new("volumes", dst, e))
}

/// Attach a detached mount tree made by the launcher at `dst`.
fn attach_tree(root: &OwnedFd, tree: &OwnedFd, dst: &[u8], readonly: bool) -> StepResult {
    let st = sys::fstat(tree.as_raw_fd()).map_err(|e| StepError::new("volumes", dst, e))?;
    let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
    let dst_fd = resolve_or_create(root, dst, is_dir, "volumes")?;
    const MOVE_MOUNT_F_EMPTY_PATH: u32 = 0x4;
    const MOVE_MOUNT_T_EMPTY_PATH: u32 = 0x40;
    // SAFETY: both fds are valid; empty paths with the *_EMPTY_PATH flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            dst_fd.as_raw_fd(),
            c"".as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    sys::check(r).map_err(|e| StepError::new("volumes", dst, e))?;
    let mounted = sys::open_in_root(root.as_raw_fd(), dst, libc::O_PATH)
        .map_err(|e| StepError::new("volumes", dst, e))?;
    let mut set = sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV;
    if readonly {
        set |= sys::MOUNT_ATTR_RDONLY;
    }
    sys::mount_setattr_fd(mounted.as_raw_fd(), set, 0)
        .map_err(|e| StepError::new("volumes", dst, e))
}

fn build_dev(root: &OwnedFd, fs: &FsSpec) -> StepResult {
    let dev = resolve_dir(root, b"/dev", "dev")?;
    sys::mount(
        Some(c"tmpfs"),
        &sys::fd_path(&dev),
        Some(c"tmpfs"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some(c"mode=755,size=65536"),
    )
    .map_err(|e| StepError::new("dev", "/dev", e))?;
    let dev = resolve_dir(root, b"/dev", "dev")?;
    let dfd = dev.as_raw_fd();
    for node in ["null", "zero", "full", "random", "urandom", "tty"] {
        let name = c("dev", node.as_bytes())?;
        // SAFETY: valid dirfd and name.
        let ret = unsafe { libc::mknodat(dfd, name.as_ptr(), libc::S_IFREG | 0o666, 0) };
        let path = format!("/dev/{node}");
        sys::check(ret.into()).map_err(|e| StepError::new("dev", &path, e))?;
        let target = sys::open_in_root(root.as_raw_fd(), path.as_bytes(), libc::O_PATH)
            .map_err(|e| StepError::new("dev", &path, e))?;
        let host = c("dev", path.as_bytes())?;
        sys::mount(
            Some(&host),
            &sys::fd_path(&target),
            None,
            libc::MS_BIND,
            None,
        )
        .map_err(|e| StepError::new("dev", &path, e))?;
    }
    for d in ["pts", "shm"] {
        let name = c("dev", d.as_bytes())?;
        // SAFETY: valid dirfd and name.
        let ret = unsafe { libc::mkdirat(dfd, name.as_ptr(), 0o755) };
        sys::check(ret.into()).map_err(|e| StepError::new("dev", format!("/dev/{d}"), e))?;
    }
    let pts = resolve_dir(root, b"/dev/pts", "dev")?;
    sys::mount(
        Some(c"devpts"),
        &sys::fd_path(&pts),
        Some(c"devpts"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some(c"newinstance,ptmxmode=0666,mode=0620"),
    )
    .map_err(|e| StepError::new("dev", "/dev/pts", e))?;
    mount_tmpfs(root, "dev", b"/dev/shm", Some(fs.scratch_size), 0o1777)?;
    for (target, link) in [
        ("pts/ptmx", "ptmx"),
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
    ] {
        let t = c("dev", target.as_bytes())?;
        let l = c("dev", link.as_bytes())?;
        // SAFETY: valid strings and dirfd.
        let ret = unsafe { libc::symlinkat(t.as_ptr(), dfd, l.as_ptr()) };
        sys::check(ret.into()).map_err(|e| StepError::new("dev", format!("/dev/{link}"), e))?;
    }
    Ok(())
}

fn mask_path(root: &OwnedFd, path: &[u8]) -> StepResult {
    let fd = match sys::open_in_root(root.as_raw_fd(), path, libc::O_PATH | libc::O_NOFOLLOW) {
        Ok(fd) => fd,
        // Nothing to hide.
        Err(libc::ENOENT) | Err(libc::ENOTDIR) => return Ok(()),
        Err(e) => return Err(StepError::new("mask", path, e)),
    };
    let st = sys::fstat(fd.as_raw_fd()).map_err(|e| StepError::new("mask", path, e))?;
    if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
        sys::mount(
            Some(c"tmpfs"),
            &sys::fd_path(&fd),
            Some(c"tmpfs"),
            libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            Some(c"size=0,mode=000"),
        )
        .map_err(|e| StepError::new("mask", path, e))
    } else {
        sys::mount(
            Some(c"/dev/null"),
            &sys::fd_path(&fd),
            None,
            libc::MS_BIND,
            None,
        )
        .map_err(|e| StepError::new("mask", path, e))
    }
}

fn readonly_path(root: &OwnedFd, path: &[u8]) -> StepResult {
    let fd = match sys::open_in_root(root.as_raw_fd(), path, libc::O_PATH | libc::O_NOFOLLOW) {
        Ok(fd) => fd,
        Err(libc::ENOENT) | Err(libc::ENOTDIR) => return Ok(()),
        Err(e) => return Err(StepError::new("mask", path, e)),
    };
    let p = sys::fd_path(&fd);
    sys::mount(Some(&p), &p, None, libc::MS_BIND | libc::MS_REC, None)
        .map_err(|e| StepError::new("mask", path, e))?;
    let mounted = sys::open_in_root(root.as_raw_fd(), path, libc::O_PATH | libc::O_NOFOLLOW)
        .map_err(|e| StepError::new("mask", path, e))?;
    let set = sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV;
    sys::mount_setattr_fd(mounted.as_raw_fd(), set, 0).map_err(|e| StepError::new("mask", path, e))
}

fn pivot_into(root: &OwnedFd) -> StepResult {
    // Enter the new root through a real directory fd (O_PATH cannot fchdir
    // in every kernel).
    let dir = sys::open_in_root(root.as_raw_fd(), b"/", libc::O_RDONLY | libc::O_DIRECTORY)
        .map_err(|e| StepError::new("pivot-root", "/", e))?;
    // SAFETY: fchdir on a valid directory fd.
    sys::check(unsafe { libc::fchdir(dir.as_raw_fd()) }.into())
        .map_err(|e| StepError::new("pivot-root", "/", e))?;
    // pivot_root(".", "."): the old root ends up stacked on top of the new
    // one and is detached right away; no put_old directory is needed.
    // SAFETY: both arguments are valid C strings.
    let ret = unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) };
    sys::check(ret).map_err(|e| StepError::new("pivot-root", "/", e))?;
    // SAFETY: valid C string.
    let ret = unsafe { libc::umount2(c".".as_ptr(), libc::MNT_DETACH) };
    sys::check(ret.into()).map_err(|e| StepError::new("pivot-root", "old root", e))?;
    // SAFETY: valid C string.
    sys::check(unsafe { libc::chdir(c"/".as_ptr()) }.into())
        .map_err(|e| StepError::new("pivot-root", "/", e))?;
    Ok(())
}

fn create_workdir(cwd: &[u8], uid: u32, gid: u32) -> StepResult {
    let mut cur = Vec::new();
    for comp in cwd.split(|b| *b == b'/').filter(|c| !c.is_empty()) {
        cur.push(b'/');
        cur.extend_from_slice(comp);
        let p = c("workdir", &cur)?;
        // SAFETY: valid path.
        if unsafe { libc::mkdir(p.as_ptr(), 0o755) } == 0 {
            // SAFETY: valid path; we just created it.
            unsafe { libc::chown(p.as_ptr(), uid, gid) };
        } else {
            let e = sys::errno();
            if e != libc::EEXIST {
                return Err(StepError::new("workdir", cwd, e).detail(
                    "the working directory does not exist in the sandbox and cannot be \
                     created there (the host root is read-only)",
                ));
            }
        }
    }
    Ok(())
}

/// Bring the loopback interface up (`SIOCSIFFLAGS`, no netlink needed).
fn loopback_up() -> Result<(), Errno> {
    // SAFETY: plain socket(2) call.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    let s = sys::check(s.into())? as i32;
    // SAFETY: `s` is the fresh socket we own.
    let sock = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(s) };
    // SAFETY: zeroed ifreq is valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in b"lo".iter().enumerate() {
        ifr.ifr_name[i] = *b as libc::c_char;
    }
    // SAFETY: valid socket and ifreq.
    sys::check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut ifr) }.into())?;
    // SAFETY: the union field written by SIOCGIFFLAGS.
    unsafe { ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    // SAFETY: valid socket and ifreq.
    sys::check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &ifr) }.into())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_mount_options() {
        assert_eq!(
            share_options(ShareKind::Root),
            "trans=virtio,version=9p2000.L,msize=512000,access=client,cache=loose"
        );
        assert_eq!(
            share_options(ShareKind::Volume),
            "trans=virtio,version=9p2000.L,msize=512000,access=client,cache=mmap"
        );
        // A mount(2) data string: no NUL inside, no spaces.
        for k in [ShareKind::Root, ShareKind::Volume] {
            let o = share_options(k);
            assert!(!o.contains('\0') && !o.contains(' '));
        }
    }

    fn fs_with(root: RootSource, mounts: Vec<Mount>) -> FsSpec {
        FsSpec {
            root,
            mounts,
            ..FsSpec::default()
        }
    }

    #[test]
    fn each_backend_refuses_the_other_ones_sources() {
        let share = Mount::Share {
            tag: "vol0".into(),
            dst: b"/srv".to_vec(),
            readonly: false,
        };
        let bind = Mount::Bind {
            src: b"/etc".to_vec(),
            dst: b"/srv".to_vec(),
            readonly: true,
        };
        let prepared = Mount::Prepared {
            dst: b"/srv".to_vec(),
            readonly: true,
            fd: 0,
        };
        let tmpfs = Mount::Tmpfs {
            dst: b"/scratch".to_vec(),
            size: None,
            mode: 0o700,
        };
        let vm_root = || RootSource::Share {
            tag: sandbox_proto::vm::ROOT_TAG.into(),
        };
        let ok = |fs: FsSpec, b| check_backend(&fs, b).is_ok();
        let refused = |fs: FsSpec, b, step: &str| {
            let e = check_backend(&fs, b).unwrap_err();
            e.step == step && e.errno == libc::EINVAL && !e.detail.is_empty()
        };
        use Backend::{Namespace, Vm};
        assert!(ok(
            fs_with(
                RootSource::HostBind,
                vec![bind.clone(), prepared.clone(), tmpfs.clone()]
            ),
            Namespace
        ));
        assert!(ok(
            fs_with(vm_root(), vec![share.clone(), tmpfs.clone()]),
            Vm
        ));
        assert!(refused(fs_with(vm_root(), vec![]), Namespace, "bind-root"));
        assert!(refused(
            fs_with(RootSource::HostBind, vec![]),
            Vm,
            "bind-root"
        ));
        assert!(refused(
            fs_with(RootSource::HostBind, vec![tmpfs.clone(), share]),
            Namespace,
            "volumes"
        ));
        assert!(refused(fs_with(vm_root(), vec![bind]), Vm, "volumes"));
        assert!(refused(
            fs_with(vm_root(), vec![tmpfs, prepared]),
            Vm,
            "volumes"
        ));
    }
}
