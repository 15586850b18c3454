//! Supervising a running sandbox from the launcher: signal forwarding,
//! `--timeout`, pty copying, and collecting the final status.
//!
//! Single-threaded: one `poll` loop over the control channel, a signalfd,
//! the init's pidfd and (with a terminal) stdin and the pty master. The
//! loop ends when init has exited, which for a PID-namespace init means
//! every process of the sandbox is gone.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use sandbox_proto::{ExitStatus, HostMsg, InitMsg};

use crate::container::Running;
use crate::lifecycle::supervisor::Action;
use crate::lifecycle::{record::Phase as State, Live};
use crate::sys;
use crate::tty;

/// Signals the launcher catches and forwards to the command.
pub use sandbox_proto::unix::FORWARDED_SIGNALS as FORWARDED;

/// How the run ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The command's status, or why none was reported.
    pub status: Result<ExitStatus, String>,
    pub timed_out: bool,
    /// The sandbox exceeded its memory limit and was killed.
    pub oom: bool,
}

enum Phase {
    Running,
    Terminating { kill_at: Instant },
    Killed,
}

/// Run the loop until init exits. `live` (lifecycle: control socket,
/// readiness, state record) is polled alongside when given.
pub fn supervise(
    run: &mut Running,
    sigfd: &OwnedFd,
    timeout: Option<Duration>,
    kill_after: Duration,
    cgroup: Option<&crate::cgroup::Cgroup>,
    mut live: Option<&mut Live>,
) -> Outcome {
    let oom_poll = cgroup.and_then(|c| c.oom_poll());
    let mut oom = false;
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut phase = Phase::Running;
    let mut timed_out = false;
    // `sandbox stop` or `sandbox kill NAME KILL`: a SIGKILL of init is the
    // requested end, reported as death by SIGKILL (137).
    let mut killed_on_request = false;
    let mut exited: Option<ExitStatus> = None;
    let mut bad_msg: Option<String> = None;
    let mut chan_open = true;
    let mut stdin_open = run.master.is_some();
    if let Some(m) = &run.master {
        let _ = sys::set_nonblocking(m.as_raw_fd(), true);
    }
    let master = run.master.as_ref().map(AsRawFd::as_raw_fd);
    let mut master_open = master.is_some();
    // Last byte copied from stdin to the pty (for end of file).
    let mut stdin_last: Option<u8> = None;

    loop {
        let mut fds = vec![
            libc::pollfd {
                fd: run.pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: sigfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: if chan_open { run.chan.raw_fd() } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: if master_open {
                    master.unwrap_or(-1)
                } else {
                    -1
                },
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: if stdin_open { 0 } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: if oom {
                    -1
                } else {
                    oom_poll.map_or(-1, |o| o.0)
                },
                events: oom_poll.map_or(0, |o| o.1),
                revents: 0,
            },
        ];
        let ctl_at = fds.len();
        if let Some(l) = live.as_deref() {
            fds.extend(l.control.as_ref().map(|c| c.pollfds()).unwrap_or_default());
        }
        let notify_at = fds.len();
        if let Some(r) = live.as_deref().and_then(|l| l.notify.as_ref()) {
            fds.push(libc::pollfd {
                fd: r.fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let now = Instant::now();
        let next = match phase {
            Phase::Running => deadline,
            Phase::Terminating { kill_at } => Some(kill_at),
            Phase::Killed => None,
        };
        let next = match (next, live.as_deref().and_then(Live::next_wakeup)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let wait_ms = next.map_or(-1, |d| {
            d.saturating_duration_since(now)
                .as_millis()
                .min(i32::MAX as u128) as i32
        });
        // SAFETY: `fds` is a valid array of pollfd of the given length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait_ms) };
        if n < 0 {
            continue;
        }
        // Timeout handling.
        let now = Instant::now();
        match phase {
            Phase::Running if deadline.is_some_and(|d| now >= d) => {
                timed_out = true;
                let _ = run.chan.send(&HostMsg::Signal(libc::SIGTERM));
                phase = Phase::Terminating {
                    kill_at: now + kill_after,
                };
            }
            Phase::Terminating { kill_at } if now >= kill_at => {
                // Killing init tears down the whole PID namespace.
                let _ = sys::pidfd_send_signal(&run.pidfd, libc::SIGKILL);
                phase = Phase::Killed;
            }
            _ => {}
        }
        if let Some(l) = live.as_deref_mut() {
            if let Some(port) = l.probe_due(now) {
                let _ = run.chan.send(&HostMsg::ProbeTcp { port });
            }
            if fds.get(notify_at).is_some_and(|p| p.revents != 0)
                && l.notify.as_ref().is_some_and(|r| r.pump())
            {
                l.now_ready();
            }
            let ended = exited.is_some() || !chan_open;
            let actions = match l.control.as_mut() {
                Some(c) => c.handle(&fds[ctl_at..notify_at], ended),
                None => Vec::new(),
            };
            for a in actions {
                match a {
                    Action::Signal(libc::SIGKILL) => {
                        let _ = sys::pidfd_send_signal(&run.pidfd, libc::SIGKILL);
                        phase = Phase::Killed;
                        killed_on_request = true;
                    }
                    Action::Signal(sig) => {
                        let _ = run.chan.send(&HostMsg::Signal(sig));
                    }
                    Action::Stop(grace) => {
                        if let Phase::Running = phase {
                            killed_on_request = true;
                            l.set(State::Stopping);
                            let _ = run.chan.send(&HostMsg::Signal(libc::SIGTERM));
                            phase = Phase::Terminating {
                                kill_at: now + grace,
                            };
                        }
                    }
                    Action::Exec { id, spec, fds } => {
                        let raw: Vec<i32> = fds.iter().map(AsRawFd::as_raw_fd).collect();
                        let _ = run.chan.send_with_fds(&HostMsg::Exec { id, spec }, &raw);
                    }
                    Action::ExecSignal { id, sig } => {
                        let _ = run.chan.send(&HostMsg::ExecSignal { id, sig });
                    }
                    Action::ExecResize { .. } | Action::None => {}
                }
            }
        }
        if fds[1].revents & libc::POLLIN != 0 {
            while let Some(sig) = sys::read_signal(sigfd) {
                match (sig, master) {
                    (libc::SIGWINCH, Some(m)) => tty::copy_window_size(0, m),
                    _ => {
                        if sig == libc::SIGTERM {
                            if let Some(l) = live.as_deref_mut() {
                                l.set(State::Stopping);
                            }
                        }
                        let _ = run.chan.send(&HostMsg::Signal(sig));
                    }
                }
            }
        }
        if fds[2].revents != 0 {
            match run.chan.fill() {
                Ok(true) => {}
                Ok(false) | Err(_) => chan_open = false,
            }
            loop {
                match run.chan.next_msg() {
                    Ok(Some(InitMsg::Exited(st))) => exited = Some(st),
                    Ok(Some(InitMsg::Probe { open, .. })) => {
                        if let Some(l) = live.as_deref_mut() {
                            l.probed(open);
                        }
                    }
                    Ok(Some(
                        m @ (InitMsg::ExecStarted { .. }
                        | InitMsg::ExecNotStarted { .. }
                        | InitMsg::ExecExited { .. }),
                    )) => {
                        let fd = match m {
                            InitMsg::ExecStarted { pty: true, .. } => run.chan.take_fd(),
                            _ => None,
                        };
                        if let Some(c) = live.as_deref_mut().and_then(|l| l.control.as_mut()) {
                            c.on_init(&m, fd);
                        }
                    }
                    Ok(Some(other)) => bad_msg = Some(format!("unexpected message {other:?}")),
                    Ok(None) => break,
                    Err(e) => {
                        bad_msg = Some(e.to_string());
                        chan_open = false;
                        break;
                    }
                }
            }
        }
        if let Some(m) = master {
            if fds[3].revents != 0 && !pump(m, 1) {
                master_open = false;
            }
            if fds[4].revents != 0 && !copy_stdin(m, &mut stdin_last) {
                stdin_open = false;
                // Our stdin ended: tell the pty, as a terminal would.
                send_eof(m, stdin_last);
            }
        }
        if fds[5].revents != 0 && cgroup.is_some_and(|c| c.oom_fired()) {
            // One process was OOM-killed: the whole sandbox goes with it.
            oom = true;
            let _ = sys::pidfd_send_signal(&run.pidfd, libc::SIGKILL);
        }
        if fds[0].revents != 0 {
            break;
        }
    }
    if let Some(m) = master {
        // Everything in the sandbox is gone: drain what is left.
        let _ = sys::set_nonblocking(m, false);
        while copy_once(m, 1) {}
    }
    let init_status = sys::wait_pidfd(&run.pidfd).unwrap_or(0);
    // An OOM kill that ended the command before the event was seen.
    oom = oom || cgroup.is_some_and(|c| c.usage().oom_kills > 0);
    let status = match exited {
        Some(st) => Ok(st),
        None if killed_on_request && !timed_out && bad_msg.is_none() => {
            Ok(ExitStatus::Signal(libc::SIGKILL))
        }
        None => Err(match bad_msg {
            Some(m) => format!("sandbox-init failed: {m}"),
            None if timed_out => "the command did not stop in time and was killed".into(),
            None => describe_init_death(init_status),
        }),
    };
    Outcome {
        status,
        timed_out,
        oom,
    }
}

fn describe_init_death(status: libc::c_int) -> String {
    if libc::WIFSIGNALED(status) {
        format!(
            "sandbox-init died unexpectedly (signal {})",
            libc::WTERMSIG(status)
        )
    } else {
        format!(
            "sandbox-init exited unexpectedly (status {})",
            libc::WEXITSTATUS(status)
        )
    }
}

/// Copy what is readable from a non-blocking `from` to `to`. False once
/// `from` reached its end (EOF, or EIO: every slave of a pty closed).
fn pump(from: RawFd, to: RawFd) -> bool {
    let mut buf = [0u8; 16384];
    loop {
        match sys::read(from, &mut buf) {
            Ok(0) => return false,
            Err(e) => return e.kind() == std::io::ErrorKind::WouldBlock,
            Ok(n) => {
                if sys::write_all(to, &buf[..n]).is_err() {
                    return true;
                }
            }
        }
    }
}

/// Write the pty's end-of-file character (normally ^D), so that a reader
/// in canonical mode sees end of file. After an unfinished last line the
/// first one only completes that line, so a second one follows.
fn send_eof(master: RawFd, last: Option<u8>) {
    // SAFETY: zeroed termios is a valid out-parameter.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: tcgetattr writes into `t`.
    let eof = if unsafe { libc::tcgetattr(master, &mut t) } == 0 {
        t.c_cc[libc::VEOF]
    } else {
        4
    };
    let unfinished = last.is_some_and(|b| b != b'\n');
    let both = [eof, eof];
    let _ = sys::write_all(master, if unfinished { &both[..] } else { &both[..1] });
}

/// Copy one read of stdin to the pty, remembering the last byte; false at
/// end of file or error.
fn copy_stdin(master: RawFd, last: &mut Option<u8>) -> bool {
    let mut buf = [0u8; 16384];
    match sys::read(0, &mut buf) {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            *last = Some(buf[n - 1]);
            sys::write_all(master, &buf[..n]).is_ok()
        }
    }
}

/// One read and write; false at end of file or error.
fn copy_once(from: RawFd, to: RawFd) -> bool {
    let mut buf = [0u8; 16384];
    match sys::read(from, &mut buf) {
        Ok(0) | Err(_) => false,
        Ok(n) => sys::write_all(to, &buf[..n]).is_ok(),
    }
}
