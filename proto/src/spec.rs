//! What init needs to build the sandbox and start the command.
//!
//! This is *declarative*: the launcher resolves policy (profile + CLI) into
//! an [`InitSpec`]; init owns the ordered setup steps that realise it (see
//! `docs/design.md`). Paths, argv and environment are raw bytes so that
//! non-UTF-8 values pass through byte-exact.

use serde::{Deserialize, Serialize};

/// Everything init needs for one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct InitSpec {
    /// argv\[0\] is looked up in `PATH` of `env` when it has no `/`.
    pub argv: Vec<Vec<u8>>,
    /// `KEY=VALUE` entries, exactly as the command will see them.
    pub env: Vec<Vec<u8>>,
    /// Working directory inside the sandbox.
    pub cwd: Vec<u8>,
    /// Create `cwd` if it is missing and lies on a scratch tmpfs.
    pub create_cwd: bool,
    /// The command's identity inside the sandbox.
    pub user: UserSpec,
    pub hostname: Vec<u8>,
    /// The root filesystem and everything mounted into it.
    pub fs: FsSpec,
    /// Bring up `lo` (the sandbox has its own network namespace).
    pub loopback_up: bool,
    /// Give the command a pty; `None` means it inherits init's stdio.
    pub tty: Option<TtySpec>,
    /// Confinement applied to the command just before `execve`.
    pub confine: Confine,
    /// Micro-VM only: what makes this guest its own machine even when it
    /// was resumed from a snapshot shared with others.
    pub vm: Option<VmStart>,
}

/// Given to a micro-VM's init with `Start` (docs/snapshots.md, clone
/// safety): init mixes `entropy` into the guest's random pool and
/// reseeds it, and sets `CLOCK_REALTIME`, before anything else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct VmStart {
    /// Fresh random bytes from the host (`getrandom`), 32 or more.
    pub entropy: Vec<u8>,
    /// The host's wall clock when `Start` was sent: seconds and
    /// nanoseconds since the Unix epoch.
    pub realtime: (i64, u32),
}

/// Privileges of the command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Confine {
    /// Capabilities kept (numbers); every other one is dropped from all
    /// sets. Empty: none at all.
    pub caps: Vec<u8>,
    /// A classic BPF seccomp program, one instruction per element packed
    /// as `code | jt << 16 | jf << 24 | k << 32`. Empty: no filter.
    pub seccomp: Vec<u64>,
    /// Landlock rules; `None`: Landlock off.
    pub landlock: Option<LandlockSpec>,
    /// SELinux context the command is executed in (written to
    /// `/proc/thread-self/attr/exec` just before `execve`); `None`: keep
    /// the inherited one.
    pub exec_label: Option<String>,
}

/// The filesystem view enforced a second time with Landlock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct LandlockSpec {
    /// Fail the run when the kernel has no usable Landlock (else it is
    /// reported as not enforced).
    pub required: bool,
    /// Paths (inside the sandbox) that may be read and executed.
    pub read: Vec<Vec<u8>>,
    /// Paths where files may also be written, created and removed.
    pub write: Vec<Vec<u8>>,
    /// Device paths: read, write and device ioctls, no creation.
    pub devices: Vec<Vec<u8>>,
}

/// The command's ids and the user namespace it runs in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct UserSpec {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (ids inside the command's namespace). Only
    /// applied when `setgroups` is allowed (not in rootless mode).
    pub groups: Vec<u32>,
    /// `/proc/<pid>/uid_map` of the command's own (nested) user namespace,
    /// written by init. Lines of `inside outside count`, where *outside*
    /// is an id of init's namespace.
    pub uid_map: String,
    pub gid_map: String,
    /// Whether `setgroups(2)` may be used in the command's namespace.
    pub allow_setgroups: bool,
    /// The command's uid/gid as seen from init's namespace (owner of
    /// anything init creates on the command's behalf, e.g. the pty).
    pub init_ns_uid: u32,
    pub init_ns_gid: u32,
}

/// Pty parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TtySpec {
    pub rows: u16,
    pub cols: u16,
}

/// Where the root filesystem comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum RootSource {
    /// Recursive bind of the host's `/` (namespace backend).
    #[default]
    HostBind,
    /// A virtio-9p share of the host, mounted by its tag (micro-VM
    /// backend: [`crate::vm::ROOT_TAG`]). The namespace backend refuses it.
    Share { tag: String },
}

/// How `/sys` is provided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum SysMode {
    /// A fresh sysfs for the sandbox's own network namespace, read-only.
    #[default]
    Fresh,
    /// Keep the host's `/sys` from the root bind, read-only.
    HostReadOnly,
}

/// The filesystem view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct FsSpec {
    pub root: RootSource,
    pub sys: SysMode,
    /// Volumes and scratch mounts, applied in order after the fixed mounts.
    pub mounts: Vec<Mount>,
    /// Paths hidden from the command: files get `/dev/null` bound over
    /// them, directories an empty read-only tmpfs. Missing paths are
    /// skipped (nothing to hide).
    pub masked: Vec<Vec<u8>>,
    /// Paths made read-only inside `/proc` (e.g. `/proc/sys`).
    pub readonly: Vec<Vec<u8>>,
    /// Size limit of the private `/tmp`, `/run` and `/dev/shm` (bytes).
    pub scratch_size: u64,
    /// Mount the sandbox's own cgroup v2 subtree (its cgroup namespace
    /// root) read-only on `/sys/fs/cgroup` (pure cgroup v2 hosts, fresh
    /// sysfs only).
    pub cgroup2: bool,
}

/// One user-requested mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mount {
    /// Bind `src` (a host path, resolved before the root switch) to `dst`.
    Bind {
        src: Vec<u8>,
        dst: Vec<u8>,
        readonly: bool,
    },
    /// A fresh tmpfs at `dst`.
    Tmpfs {
        dst: Vec<u8>,
        size: Option<u64>,
        mode: u32,
    },
    /// A detached mount the launcher prepared (an idmapped volume), passed
    /// as descriptor number `fd` (0-based) of those attached to the
    /// `Start` message.
    Prepared {
        dst: Vec<u8>,
        readonly: bool,
        fd: u32,
    },
    /// A virtio-9p share of the host (micro-VM backend: a volume, tag
    /// [`crate::vm::volume_tag`]) mounted at `dst`. The namespace backend
    /// refuses it.
    Share {
        tag: String,
        dst: Vec<u8>,
        readonly: bool,
    },
}
