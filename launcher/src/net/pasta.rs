//! The user-mode network stack: passt's `pasta`, attached to the sandbox's
//! network namespace, as root and rootless alike (why: `docs/network.md`).
//!
//! `pasta` makes a tap device in the namespace, configures it
//! (`--config-net`: the host's address and routes) and carries the
//! namespace's traffic through ordinary sockets of the host, so the host
//! needs no forwarding, NAT table or bridge. Port forwarding is off in
//! both directions except for `--publish`; `--no-map-gw` keeps the
//! gateway address from leading to the host.
//!
//! Lifetime: `pasta` holds the namespace open, and it does not notice
//! when the sandbox ends, so it must be stopped: [`Pasta`]'s `Drop` kills
//! it, and a *keeper*, a forked child that waits on the launcher's pidfd,
//! kills it when the launcher dies in any way (SIGKILL included).

use std::io::Read as _;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};

use super::rule::Proto;
use super::{NetError, Policy};

/// A running `pasta` and its keeper.
#[derive(Debug)]
pub struct Pasta {
    pidfd: OwnedFd,
    pub pid: libc::pid_t,
    keeper: libc::pid_t,
}

/// The arguments of `pasta` for `policy`, attached to process `pid`.
pub fn args(policy: &Policy, pid: libc::pid_t, pid_file: &Path) -> Vec<String> {
    let mut a: Vec<String> = [
        "--quiet",
        "--config-net",
        "--no-map-gw",
        "-T",
        "none",
        "-U",
        "none",
        "--pid",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.push(pid_file.display().to_string());
    // As root, pasta would switch to `nobody` before it opens init's
    // namespaces (which only root may); it keeps root's identity, in the
    // user namespace of its own that it makes to isolate itself.
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        a.extend(["--runas".to_string(), "0:0".to_string()]);
    }
    for (flag, proto) in [("-t", Proto::Tcp), ("-u", Proto::Udp)] {
        let specs: Vec<String> = policy
            .publish
            .iter()
            .filter(|p| p.proto == proto)
            .map(|p| match p.host_addr {
                Some(addr) => format!("{addr}/{}:{}", p.host_port, p.port),
                None => format!("{}:{}", p.host_port, p.port),
            })
            .collect();
        a.push(flag.into());
        a.push(if specs.is_empty() {
            "none".into()
        } else {
            specs.join(",")
        });
    }
    a.push(pid.to_string());
    a
}

fn pidfd_open(pid: libc::pid_t) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open(2) with no flags; the result is checked.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Start `pasta` for init `pid`; returns once the namespace's interface
/// is configured (`pasta` forks into the background only then).
pub fn start(policy: &Policy, pid: libc::pid_t, pid_file: &Path) -> Result<Pasta, NetError> {
    let pasta = super::find_program("pasta").ok_or(NetError::Missing {
        program: "pasta",
        package: "passt",
    })?;
    let _ = std::fs::remove_file(pid_file);
    let spawn_err = |e: std::io::Error| NetError::Spawn {
        program: "pasta",
        reason: crate::errors::io_reason(&e),
    };
    let mut child = Command::new(&pasta)
        .args(args(policy, pid, pid_file))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let status = child.wait().map_err(spawn_err)?;
    let daemon: Option<libc::pid_t> = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|s| s.trim().parse().ok());
    let _ = std::fs::remove_file(pid_file);
    let (true, Some(daemon)) = (status.success(), daemon) else {
        // A pasta that failed after writing its pid file is stopped too.
        if let Some(d) = daemon {
            if let Ok(fd) = pidfd_open(d) {
                let _ = crate::sys::pidfd_send_signal(&fd, libc::SIGKILL);
            }
        }
        let reason = err
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .unwrap_or("it exited before configuring the network")
            .trim()
            .to_string();
        return Err(NetError::Stack(reason));
    };
    let pidfd = pidfd_open(daemon).map_err(spawn_err)?;
    let keeper = match spawn_keeper(&pidfd) {
        Ok(k) => k,
        Err(e) => {
            let _ = crate::sys::pidfd_send_signal(&pidfd, libc::SIGKILL);
            return Err(spawn_err(e));
        }
    };
    Ok(Pasta {
        pidfd,
        pid: daemon,
        keeper,
    })
}

/// Fork the keeper: it waits until the launcher exits, then kills `pasta`.
fn spawn_keeper(pasta: &OwnedFd) -> std::io::Result<libc::pid_t> {
    // SAFETY: getpid has no preconditions.
    let me = pidfd_open(unsafe { libc::getpid() })?;
    let (me_fd, pasta_fd) = (me.as_raw_fd(), pasta.as_raw_fd());
    // SAFETY: fork; the child only makes system calls (no allocation, no
    // locks) and ends with `_exit`.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: (whole block) system calls on descriptors inherited from
        // the parent; the keeper keeps only the two pidfds (as 0 and 1).
        unsafe {
            libc::prctl(libc::PR_SET_NAME, c"sandbox-netkeep".as_ptr());
            if libc::dup2(me_fd, 0) < 0 || libc::dup2(pasta_fd, 1) < 0 {
                libc::syscall(libc::SYS_pidfd_send_signal, pasta_fd, libc::SIGKILL, 0, 0);
                libc::_exit(1);
            }
            libc::syscall(libc::SYS_close_range, 2u32, u32::MAX, 0u32);
            let mut p = libc::pollfd {
                fd: 0,
                events: libc::POLLIN,
                revents: 0,
            };
            // Readable when the launcher has exited.
            while libc::poll(&mut p, 1, -1) < 0 {}
            libc::syscall(libc::SYS_pidfd_send_signal, 1, libc::SIGKILL, 0, 0);
            libc::_exit(0);
        }
    }
    Ok(pid)
}

impl Drop for Pasta {
    fn drop(&mut self) {
        let _ = crate::sys::pidfd_send_signal(&self.pidfd, libc::SIGKILL);
        // SAFETY: the keeper is our child; kill and reap it.
        unsafe {
            libc::kill(self.keeper, libc::SIGKILL);
            libc::waitpid(self.keeper, std::ptr::null_mut(), 0);
        }
    }
}
