//! Constants of the micro-VM backend shared by the launcher (VMM side) and
//! `sandbox-init` (guest side).
//!
//! Transport: AF_VSOCK stream sockets, always connected by the guest to the
//! host (CID [`HOST_CID`]). The guest connects, in this order:
//! [`CONTROL_PORT`] (the framed messages of this crate, no descriptor
//! passing), then [`STDIN_PORT`], [`STDOUT_PORT`], [`STDERR_PORT`]; only
//! then does it send `Hello`. The guest half-closes what it never uses:
//! `SHUT_WR` on stdin, `SHUT_RD` on stdout and stderr.
//!
//! Filesystems: virtio-9p shares (9P2000.L), the host root under
//! [`ROOT_TAG`] (read-only), volume `i` under [`volume_tag`]`(i)`.
//!
//! Guest command line: the launcher ends the kernel command line with
//! `-- `[`INIT_VM_ARG`]; the kernel passes what follows `--` to `/init`, so
//! init's argv is `["/init", "--vm"]`.

/// The host's vsock CID (`VMADDR_CID_HOST`).
pub const HOST_CID: u32 = 2;
/// The guest's vsock CID.
pub const GUEST_CID: u32 = 3;
/// The control channel (framed [`crate::HostMsg`]/[`crate::InitMsg`]).
pub const CONTROL_PORT: u32 = 1024;
/// The command's stdin (host -> guest).
pub const STDIN_PORT: u32 = 1025;
/// The command's stdout (guest -> host); with a tty, the terminal output.
pub const STDOUT_PORT: u32 = 1026;
/// The command's stderr (guest -> host); unused (closed) with a tty.
pub const STDERR_PORT: u32 = 1027;
/// The first vsock port of `sandbox exec` streams (above the fixed ones).
pub const EXEC_PORT_BASE: u32 = 0x1_0000;
/// Exec ids map onto this many port triples, then wrap (the launcher
/// never has two live execs with the same triple).
pub const EXEC_PORT_SLOTS: u32 = 0x1000_0000;

/// The stdin, stdout and stderr ports of exec `id` (guest connects, as
/// for the command's stdio; with a pty, stdout carries the terminal and
/// stderr is connected and closed at once).
pub fn exec_ports(id: u32) -> [u32; 3] {
    let first = EXEC_PORT_BASE + (id % EXEC_PORT_SLOTS) * 3;
    [first, first + 1, first + 2]
}

/// The 9p tag of the host root share.
pub const ROOT_TAG: &str = "sandbox-root";
/// Longest 9p mount tag the backend uses. The virtio-9p config space has a
/// 16-bit length; 31 bytes keeps the tags usable with QEMU's
/// `mount_tag` too (the lab tests the guest side with QEMU).
pub const MAX_TAG_LEN: usize = 31;
/// Directories the launcher's initramfs holds besides `/init` (relative,
/// mode 0755). `newroot` is where init mounts the tmpfs that becomes its
/// root (init creates it when missing).
pub const INITRAMFS_DIRS: [&str; 1] = ["newroot"];
/// The argument that puts `sandbox-init` in VM mode (after `--` on the
/// kernel command line). Without it init behaves as the namespace
/// backend's init (control socket on fd 3).
pub const INIT_VM_ARG: &str = "--vm";

/// The 9p tag of volume number `i` (0-based, in `Spec` order): `vol0`,
/// `vol1`, ...
pub fn volume_tag(i: usize) -> String {
    format!("vol{i}")
}
