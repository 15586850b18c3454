//! The seccomp filters, compiled from `policy/seccomp.toml` at build time
//! (see `launcher/build.rs`). The launcher ships the chosen program to
//! init, which installs it in the command's process as the very last step
//! before `execve`.

/// A classic BPF instruction (`struct sock_filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct SockFilter {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

/// One denied call, for the receipt, the docs and the tests.
#[derive(Debug, Clone, Copy)]
pub struct Denied {
    /// Syscall name, ioctl request name, or `syscall(FLAGS)`.
    pub name: &'static str,
    /// `syscall`, `ioctl` or `flag`.
    pub kind: &'static str,
    pub errno: i32,
    /// The system call number (`ioctl` for ioctl rules).
    pub nr: i64,
    /// Which argument carries `value` (ioctl request, refused flags).
    pub arg: u32,
    pub value: i64,
}

const BPF_LD: u32 = 0x00;
const BPF_W: u32 = 0x00;
const BPF_ABS: u32 = 0x20;
const BPF_JMP: u32 = 0x05;
const BPF_JEQ: u32 = 0x10;
const BPF_JGE: u32 = 0x30;
const BPF_JSET: u32 = 0x40;
const BPF_K: u32 = 0x00;
const BPF_RET: u32 = 0x06;

const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const SECCOMP_RET_DATA: u32 = 0x0000_ffff;

/// Offsets in `struct seccomp_data`.
const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;
const OFFSET_ARGS: u32 = 16;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH_NATIVE: u32 = 0xc000_003e;
/// x32 ABI syscalls carry this bit in their number.
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH_NATIVE: u32 = 0xc000_00b7;
#[cfg(target_arch = "aarch64")]
const X32_SYSCALL_BIT: u32 = u32::MAX;

// Generated code: arithmetic is spelled out as the policy compiler emits it.
#[allow(clippy::identity_op, clippy::unnecessary_cast)]
mod generated {
    use super::*;
    include!(concat!(env!("OUT_DIR"), "/seccomp_policy.rs"));
}
use generated::{DEFAULT, DEFAULT_DENIED, STRICT, STRICT_DENIED};

/// `--seccomp` levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Off,
    Default,
    Strict,
}

impl Level {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "off" => Some(Level::Off),
            "default" => Some(Level::Default),
            "strict" => Some(Level::Strict),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Off => "off",
            Level::Default => "default",
            Level::Strict => "strict",
        }
    }

    pub fn program(self) -> &'static [SockFilter] {
        match self {
            Level::Off => &[],
            Level::Default => DEFAULT,
            Level::Strict => STRICT,
        }
    }

    pub fn denied(self) -> &'static [Denied] {
        match self {
            Level::Off => &[],
            Level::Default => DEFAULT_DENIED,
            Level::Strict => STRICT_DENIED,
        }
    }
}

/// Pack a program for `InitSpec::seccomp` (code | jt << 16 | jf << 24 | k << 32).
pub fn encode(prog: &[SockFilter]) -> Vec<u64> {
    prog.iter()
        .map(|i| {
            u64::from(i.code)
                | (u64::from(i.jt) << 16)
                | (u64::from(i.jf) << 24)
                | (u64::from(i.k) << 32)
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unnecessary_cast)] // ioctl numbers are c_ulong on glibc, c_int on musl
mod tests {
    use super::*;

    /// A tiny classic-BPF interpreter for the instructions we emit, so the
    /// programs can be checked without installing them.
    fn run(prog: &[SockFilter], nr: u32, arch: u32, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_ne_bytes());
        data[4..8].copy_from_slice(&arch.to_ne_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_ne_bytes());
        }
        let mut acc = 0u32;
        let mut pc = 0usize;
        loop {
            let i = prog[pc];
            let code = u32::from(i.code);
            match code {
                c if c == BPF_LD | BPF_W | BPF_ABS => {
                    let o = i.k as usize;
                    acc = u32::from_ne_bytes(data[o..o + 4].try_into().unwrap());
                }
                c if c == BPF_RET | BPF_K => return i.k,
                c if c & 0x07 == BPF_JMP => {
                    let taken = match c & 0xf0 {
                        x if x == BPF_JEQ => acc == i.k,
                        x if x == BPF_JGE => acc >= i.k,
                        x if x == BPF_JSET => acc & i.k != 0,
                        _ => panic!("unexpected jump {c:#x}"),
                    };
                    pc += usize::from(if taken { i.jt } else { i.jf });
                }
                _ => panic!("unexpected instruction {code:#x}"),
            }
            pc += 1;
        }
    }

    const EPERM: u32 = SECCOMP_RET_ERRNO | libc::EPERM as u32;
    const ENOSYS: u32 = SECCOMP_RET_ERRNO | libc::ENOSYS as u32;

    fn nr(n: libc::c_long) -> u32 {
        n as u32
    }

    #[test]
    fn denies_listed_syscalls_and_allows_others() {
        let p = Level::Default.program();
        let a = AUDIT_ARCH_NATIVE;
        assert_eq!(run(p, nr(libc::SYS_keyctl), a, [0; 6]), EPERM);
        assert_eq!(run(p, nr(libc::SYS_bpf), a, [0; 6]), EPERM);
        assert_eq!(run(p, nr(libc::SYS_fsopen), a, [0; 6]), EPERM);
        assert_eq!(run(p, nr(libc::SYS_clone3), a, [0; 6]), ENOSYS);
        assert_eq!(run(p, nr(libc::SYS_read), a, [0; 6]), SECCOMP_RET_ALLOW);
        assert_eq!(run(p, nr(libc::SYS_ptrace), a, [0; 6]), SECCOMP_RET_ALLOW);
        assert_eq!(
            run(Level::Strict.program(), nr(libc::SYS_ptrace), a, [0; 6]),
            EPERM
        );
    }

    #[test]
    fn other_abis_are_refused() {
        let p = Level::Default.program();
        assert_eq!(run(p, nr(libc::SYS_read), 0x4000_0003, [0; 6]), ENOSYS);
        assert_eq!(
            run(
                p,
                nr(libc::SYS_read) | X32_SYSCALL_BIT,
                AUDIT_ARCH_NATIVE,
                [0; 6]
            ),
            ENOSYS
        );
    }

    #[test]
    fn ioctl_matched_on_low_32_bits() {
        let p = Level::Default.program();
        let a = AUDIT_ARCH_NATIVE;
        let io = nr(libc::SYS_ioctl);
        let sti = libc::TIOCSTI as u64;
        assert_eq!(run(p, io, a, [0, sti, 0, 0, 0, 0]), EPERM);
        assert_eq!(
            run(p, io, a, [0, sti | 0xdead_0000_0000_0000, 0, 0, 0, 0]),
            EPERM
        );
        assert_eq!(
            run(p, io, a, [0, libc::TIOCLINUX as u64, 0, 0, 0, 0]),
            EPERM
        );
        assert_eq!(
            run(p, io, a, [0, libc::TIOCGWINSZ as u64, 0, 0, 0, 0]),
            SECCOMP_RET_ALLOW
        );
    }

    #[test]
    fn new_user_namespaces_are_refused() {
        let p = Level::Default.program();
        let a = AUDIT_ARCH_NATIVE;
        let newuser = libc::CLONE_NEWUSER as u64;
        assert_eq!(
            run(p, nr(libc::SYS_unshare), a, [newuser, 0, 0, 0, 0, 0]),
            EPERM
        );
        assert_eq!(
            run(
                p,
                nr(libc::SYS_unshare),
                a,
                [libc::CLONE_NEWNS as u64, 0, 0, 0, 0, 0]
            ),
            SECCOMP_RET_ALLOW
        );
        assert_eq!(
            run(
                p,
                nr(libc::SYS_clone),
                a,
                [newuser | libc::SIGCHLD as u64, 0, 0, 0, 0, 0]
            ),
            EPERM
        );
        assert_eq!(
            run(
                p,
                nr(libc::SYS_clone),
                a,
                [libc::SIGCHLD as u64, 0, 0, 0, 0, 0]
            ),
            SECCOMP_RET_ALLOW
        );
    }

    #[test]
    fn off_is_empty_and_every_denial_is_listed() {
        assert!(Level::Off.program().is_empty());
        assert!(Level::Default.denied().iter().any(|d| d.name == "keyctl"));
        assert!(Level::Strict.denied().len() > Level::Default.denied().len());
        assert_eq!(
            encode(&[SockFilter {
                code: 6,
                jt: 1,
                jf: 2,
                k: 3
            }]),
            [0x3_0201_0006]
        );
    }
}
