//! Supervising a micro-VM sandbox from the launcher's main thread.
//!
//! One `poll` loop over the control channel (the host end of the vsock
//! control port), the signalfd and the machine's exit eventfd, with the
//! `--timeout` deadline, through three phases: boot (until init's
//! `Hello`), start (until `Started`), run (until `Exited`). The guest is
//! untrusted: every message is checked (an exit code outside 0-255, a
//! signal outside 1-64, a message out of order is a protocol error), and
//! a guest that stops talking is bounded by `--timeout` and by the VM's
//! own exit.
//!
//! The command's stdio does not pass through this thread: the vsock
//! device copies it between the guest and the caller's descriptors. After
//! `Exited`, the loop waits (at most `launch::DRAIN_TIMEOUT`) until the
//! guest has closed its stdout and stderr connections and the device has
//! written everything they carried.

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use sandbox_proto::{ExitStatus, HostMsg, InitMsg, InitSpec, PROTOCOL_VERSION};

use super::launch::{VmReport, DRAIN_TIMEOUT};
use super::machine::{RunningMachine, VmExit};
use super::virtio::vsock::Endpoint;
use super::virtio::vsock::VsockHandle;
use crate::chan::Channel;
use crate::container::StartError;
use crate::lifecycle::record::Phase as State;
use crate::lifecycle::supervisor::Action;
use crate::lifecycle::Live;
use crate::session::Outcome;
use crate::spec::Spec;
use crate::sys;

/// Everything the loop needs.
pub struct Session<'a> {
    pub spec: &'a Spec,
    pub init_spec: InitSpec,
    pub chan: Channel,
    pub vm: &'a RunningMachine,
    pub vsock: &'a VsockHandle,
    pub sigfd: &'a OwnedFd,
    /// When the VM setup started (boot time is measured from here).
    pub t0: Instant,
    pub report: &'a mut VmReport,
    /// The lifecycle (state record, control socket, readiness).
    pub live: Option<&'a mut Live>,
    /// `sandbox exec`s in flight.
    pub execs: Vec<ExecTrack>,
}

/// One `sandbox exec` in the guest: its vsock ports, and its end once init
/// reported it (answered when its output has drained).
#[derive(Debug)]
pub struct ExecTrack {
    id: u32,
    ports: [u32; 3],
    exited: Option<(InitMsg, Instant)>,
}

/// While an exec's end waits for its output, the loop looks this often.
const EXEC_DRAIN_POLL: Duration = Duration::from_millis(5);

impl std::fmt::Debug for Session<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Boot,
    Starting,
    Running,
    /// SIGTERM sent (on timeout, or `sandbox stop`); the VM is stopped at
    /// this instant.
    Terminating(Instant),
    Done,
}

/// Why a run ended without an `Exited`.
#[derive(Debug)]
pub enum Failure {
    /// Setup inside the guest failed (125/126/127, like the namespace
    /// backend).
    Start(StartError),
    /// The guest itself failed: kernel panic, reset, triple fault (122).
    Guest(String),
    /// The VMM failed (125).
    Vmm(String),
}

fn valid_status(st: ExitStatus) -> bool {
    match st {
        ExitStatus::Code(c) => (0..=255).contains(&c),
        ExitStatus::Signal(s) => (1..=64).contains(&s),
    }
}

fn describe_exit(e: Option<VmExit>) -> Failure {
    match e {
        Some(VmExit::Panic(line)) => Failure::Guest(format!("the guest kernel panicked: {line}")),
        Some(VmExit::Reset) => Failure::Guest(
            "the guest reset before the command finished (see SANDBOX_VM_CONSOLE in docs/vm.md \
             to read its kernel log)"
                .into(),
        ),
        Some(VmExit::Halted) => Failure::Guest("a vCPU halted with interrupts off".into()),
        Some(VmExit::Fatal(why)) => Failure::Vmm(format!("the VMM stopped the guest: {why}")),
        Some(VmExit::Stopped) | None => Failure::Vmm("the VM stopped unexpectedly".into()),
    }
}

/// Run the loop; `Err` carries the failure for the caller to report.
pub fn run(mut s: Session<'_>) -> Outcome {
    match run_loop(&mut s) {
        Ok(o) => o,
        Err(f) => {
            let (status, guest) = match f {
                Failure::Start(e) => {
                    s.report.start_error = Some(e);
                    (Err(String::new()), false)
                }
                Failure::Guest(why) => (Err(why), true),
                Failure::Vmm(why) => (Err(why), false),
            };
            s.report.guest_failed = guest;
            Outcome {
                status,
                timed_out: false,
                oom: false,
            }
        }
    }
}

fn run_loop(s: &mut Session<'_>) -> Result<Outcome, Failure> {
    let deadline = s.spec.timeout.map(|t| s.t0 + t);
    let mut phase = Phase::Boot;
    let mut pending_signals: Vec<i32> = Vec::new();
    let mut timed_out = false;
    let mut exited: Option<ExitStatus> = None;
    let tty = s.init_spec.tty.is_some();
    // `sandbox stop` or `sandbox kill NAME KILL`: stopping the VM is the
    // requested end, reported as death by SIGKILL (137).
    let mut killed_on_request = false;
    let proto = |m: String| Failure::Start(StartError::Protocol(m));

    while phase != Phase::Done {
        let mut fds = vec![
            libc::pollfd {
                fd: s.chan.raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: s.sigfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: s.vm.exit_event().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let ctl_at = fds.len();
        if let Some(c) = s.live.as_deref().and_then(|l| l.control.as_ref()) {
            fds.extend(c.pollfds());
        }
        let next = match phase {
            Phase::Terminating(at) => Some(at),
            _ => deadline,
        };
        let next = earliest(next, s.live.as_deref().and_then(Live::next_wakeup));
        let draining = s.execs.iter().any(|e| e.exited.is_some());
        let next = earliest(next, draining.then(|| Instant::now() + EXEC_DRAIN_POLL));
        let wait_ms = next.map_or(-1, |d| {
            d.saturating_duration_since(Instant::now())
                .as_millis()
                .min(i32::MAX as u128) as i32
        });
        // SAFETY: `fds` is a valid array of pollfd of the given length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait_ms) };
        if n < 0 {
            continue;
        }
        let now = Instant::now();
        match phase {
            Phase::Terminating(at) if now >= at => {
                // The command ignored SIGTERM: the VM goes, and with it
                // everything in the sandbox.
                s.vm.stop();
                return Ok(killed(killed_on_request && !timed_out));
            }
            Phase::Boot | Phase::Starting | Phase::Running
                if deadline.is_some_and(|d| now >= d) && !timed_out =>
            {
                timed_out = true;
                if phase == Phase::Running {
                    let _ = s.chan.send(&HostMsg::Signal(libc::SIGTERM));
                    phase = Phase::Terminating(now + s.spec.kill_after);
                } else {
                    // Not started yet: nothing to ask politely.
                    s.vm.stop();
                    return Ok(Outcome {
                        status: Err("timed out before the command started".into()),
                        timed_out: true,
                        oom: false,
                    });
                }
            }
            _ => {}
        }
        if let Some(kill) = lifecycle(s, &fds[ctl_at..], now, exited.is_some(), &mut phase) {
            killed_on_request = true;
            if kill {
                s.vm.stop();
                return Ok(killed(true));
            }
        }
        finish_execs(s, now);
        if fds[1].revents & libc::POLLIN != 0 {
            while let Some(sig) = sys::read_signal(s.sigfd) {
                if sig == libc::SIGWINCH {
                    if tty {
                        if let Some((rows, cols)) = crate::tty::window_size(0) {
                            let _ = s.chan.send(&HostMsg::Resize { rows, cols });
                        }
                    }
                } else if matches!(phase, Phase::Running | Phase::Terminating(_)) {
                    if sig == libc::SIGTERM {
                        if let Some(l) = s.live.as_deref_mut() {
                            l.set(State::Stopping);
                        }
                    }
                    let _ = s.chan.send(&HostMsg::Signal(sig));
                } else {
                    pending_signals.push(sig);
                }
            }
        }
        if fds[0].revents != 0 {
            let open = s.chan.fill().unwrap_or(false);
            loop {
                let msg = match s.chan.next_msg() {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(e) => return Err(proto(e.to_string())),
                };
                match (phase, msg) {
                    (Phase::Boot, InitMsg::Hello { version }) => {
                        if version != PROTOCOL_VERSION {
                            return Err(Failure::Start(StartError::Version { got: version }));
                        }
                        s.report.boot_ms = Some(s.t0.elapsed().as_secs_f64() * 1000.0);
                        let mut spec = s.init_spec.clone();
                        if let Some(v) = spec.vm.as_mut() {
                            fresh_identity(v);
                        }
                        let start = HostMsg::Start(Box::new(spec));
                        s.chan
                            .send(&start)
                            .map_err(|e| Failure::Vmm(format!("control channel: {e}")))?;
                        phase = Phase::Starting;
                    }
                    (Phase::Starting, InitMsg::Started { enforced, .. }) => {
                        s.report.started_ms = Some(s.t0.elapsed().as_secs_f64() * 1000.0);
                        s.report.enforced = Some(enforced);
                        for sig in pending_signals.drain(..) {
                            let _ = s.chan.send(&HostMsg::Signal(sig));
                        }
                        if let Some(l) = s.live.as_deref_mut() {
                            crate::run::sandbox_started(
                                l,
                                s.spec,
                                None,
                                &enforced,
                                &s.report.not_enforced,
                            );
                        }
                        phase = Phase::Running;
                    }
                    (Phase::Running | Phase::Terminating(_), InitMsg::Probe { open, .. }) => {
                        if let Some(l) = s.live.as_deref_mut() {
                            l.probed(open);
                        }
                    }
                    (
                        Phase::Running | Phase::Terminating(_),
                        m @ (InitMsg::ExecStarted { .. }
                        | InitMsg::ExecNotStarted { .. }
                        | InitMsg::ExecExited { .. }),
                    ) => exec_message(s, m, now),
                    (Phase::Starting, InitMsg::SetupFailed(e)) => {
                        return Err(Failure::Start(StartError::Setup(e)))
                    }
                    (
                        Phase::Starting,
                        InitMsg::ExecFailed {
                            program,
                            errno,
                            not_found,
                        },
                    ) => {
                        return Err(Failure::Start(StartError::Exec {
                            program,
                            errno,
                            not_found,
                        }))
                    }
                    (Phase::Running | Phase::Terminating(_), InitMsg::Exited(st)) => {
                        if !valid_status(st) {
                            return Err(proto(format!("impossible exit status {st:?}")));
                        }
                        exited = Some(st);
                        phase = Phase::Done;
                        s.report.exited_ms = Some(s.t0.elapsed().as_secs_f64() * 1000.0);
                    }
                    (_, other) => return Err(proto(format!("unexpected message {other:?}"))),
                }
            }
            if !open && phase != Phase::Done {
                // init closed the channel without a result: the VM is
                // probably going down; its exit says why.
                let _ = wait_exit(s.vm, Duration::from_secs(2));
                return Err(match s.vm.exit() {
                    None => proto("sandbox-init closed the control channel".into()),
                    e => describe_exit(e),
                });
            }
        }
        if fds[2].revents != 0 && phase != Phase::Done {
            let e = s.vm.exit();
            if timed_out || killed_on_request {
                return Ok(killed(killed_on_request && !timed_out));
            }
            return Err(describe_exit(e));
        }
    }
    // The command's output may still be on its way through the device.
    let _ = s.vsock.wait_closed(
        &[
            sandbox_proto::vm::STDOUT_PORT,
            sandbox_proto::vm::STDERR_PORT,
        ],
        DRAIN_TIMEOUT,
    );
    s.report.drained_ms = Some(s.t0.elapsed().as_secs_f64() * 1000.0);
    // Done with the guest: closing the channel lets init reboot at once.
    // SAFETY: shutdown of the channel's socket, which stays open (and owned
    // by the channel) until the session is dropped.
    unsafe { libc::shutdown(s.chan.raw_fd(), libc::SHUT_RDWR) };
    Ok(Outcome {
        status: exited.ok_or_else(|| "no status".to_string()),
        timed_out,
        oom: false,
    })
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The VM was stopped before the command exited: on request (`sandbox
/// stop` past its grace, `sandbox kill NAME KILL`) that is death by
/// SIGKILL; otherwise the timeout's kill.
fn killed(on_request: bool) -> Outcome {
    Outcome {
        status: if on_request {
            Ok(ExitStatus::Signal(libc::SIGKILL))
        } else {
            Err("the command did not stop in time and was killed".into())
        },
        timed_out: !on_request,
        oom: false,
    }
}

/// Readiness probes and the control socket's requests. Returns
/// `Some(true)` when the VM must be stopped now (SIGKILL requested),
/// `Some(false)` when a `stop` began (SIGTERM sent, `phase` set).
fn lifecycle(
    s: &mut Session<'_>,
    polled: &[libc::pollfd],
    now: Instant,
    ended: bool,
    phase: &mut Phase,
) -> Option<bool> {
    let l = s.live.as_deref_mut()?;
    // Taken when due in any phase (a due probe left pending would make the
    // loop's wait zero); sent only while the command runs.
    if let Some(port) = l.probe_due(now) {
        if matches!(*phase, Phase::Running) {
            let _ = s.chan.send(&HostMsg::ProbeTcp { port });
        }
    }
    let actions = match l.control.as_mut() {
        Some(c) => c.handle(polled, ended),
        None => return None,
    };
    let mut result = None;
    for a in actions {
        match a {
            Action::Signal(libc::SIGKILL) => return Some(true),
            Action::Signal(sig) => {
                let _ = s.chan.send(&HostMsg::Signal(sig));
            }
            Action::Stop(grace) => {
                if let Phase::Running = *phase {
                    if let Some(l) = s.live.as_deref_mut() {
                        l.set(State::Stopping);
                    }
                    let _ = s.chan.send(&HostMsg::Signal(libc::SIGTERM));
                    *phase = Phase::Terminating(now + grace);
                    result = Some(false);
                }
            }
            Action::Exec { id, spec, fds } => start_exec(s, id, spec, fds),
            Action::ExecSignal { id, sig } => {
                let _ = s.chan.send(&HostMsg::ExecSignal { id, sig });
            }
            Action::ExecResize { id, rows, cols } => {
                let _ = s.chan.send(&HostMsg::ExecResize { id, rows, cols });
            }
            Action::None => {}
        }
    }
    result
}

/// Answer a client's exec as init would have, from here.
fn exec_refused(s: &mut Session<'_>, id: u32, step: &str, errno: i32, detail: String) {
    let failure = sandbox_proto::ExecFailure::Setup(sandbox_proto::SetupError {
        step: step.into(),
        path: None,
        errno,
        detail,
    });
    if let Some(c) = s.live.as_deref_mut().and_then(|l| l.control.as_mut()) {
        c.on_init(&InitMsg::ExecNotStarted { id, failure }, None);
    }
}

/// `sandbox exec` in the guest: the client's stdin, stdout and stderr
/// become the vsock ports of `exec_ports(id)`, which init connects before
/// it spawns the process (docs/vm.md, "sandbox exec").
fn start_exec(s: &mut Session<'_>, id: u32, spec: Box<sandbox_proto::ExecSpec>, fds: Vec<OwnedFd>) {
    let ports = sandbox_proto::vm::exec_ports(id);
    let Ok([i, o, e]) = <[OwnedFd; 3]>::try_from(fds) else {
        return exec_refused(
            s,
            id,
            "exec-stdio",
            libc::EBADF,
            "an exec in a VM needs the client's stdin, stdout and stderr".into(),
        );
    };
    let eps = vec![
        (ports[0], Endpoint::Input(i)),
        (ports[1], Endpoint::Output(o)),
        (ports[2], Endpoint::Output(e)),
    ];
    if let Err(err) = s.vsock.add_ports(eps) {
        return exec_refused(s, id, "exec-vsock", libc::EBUSY, err.to_string());
    }
    if s.chan.send(&HostMsg::Exec { id, spec }).is_err() {
        s.vsock.forget_ports(&ports);
        return exec_refused(
            s,
            id,
            "exec-send",
            libc::EPIPE,
            "the control channel to the guest is closed".into(),
        );
    }
    s.execs.push(ExecTrack {
        id,
        ports,
        exited: None,
    });
}

/// init's answer about an exec. Its end is held back until the guest has
/// closed the exec's output streams and the device has written all they
/// carried ([`finish_execs`]): the client must see all the output before
/// its status.
fn exec_message(s: &mut Session<'_>, m: InitMsg, now: Instant) {
    let id = match &m {
        InitMsg::ExecStarted { id, .. }
        | InitMsg::ExecNotStarted { id, .. }
        | InitMsg::ExecExited { id, .. } => *id,
        _ => return,
    };
    let Some(i) = s.execs.iter().position(|e| e.id == id) else {
        return;
    };
    match m {
        InitMsg::ExecExited { .. } => {
            s.execs[i].exited = Some((m, now + DRAIN_TIMEOUT));
        }
        InitMsg::ExecNotStarted { .. } => {
            let e = s.execs.swap_remove(i);
            s.vsock.forget_ports(&e.ports);
            if let Some(c) = s.live.as_deref_mut().and_then(|l| l.control.as_mut()) {
                c.on_init(&m, None);
            }
        }
        _ => {
            if let Some(c) = s.live.as_deref_mut().and_then(|l| l.control.as_mut()) {
                c.on_init(&m, None);
            }
        }
    }
}

/// Answer the execs whose output has drained (or whose drain timed out).
fn finish_execs(s: &mut Session<'_>, now: Instant) {
    let mut i = 0;
    while i < s.execs.len() {
        let e = &s.execs[i];
        let ready = match &e.exited {
            Some((_, deadline)) => now >= *deadline || s.vsock.ports_done(&e.ports[1..]),
            None => false,
        };
        if !ready {
            i += 1;
            continue;
        }
        let e = s.execs.swap_remove(i);
        s.vsock.forget_ports(&e.ports);
        if let (Some((m, _)), Some(c)) = (
            e.exited,
            s.live.as_deref_mut().and_then(|l| l.control.as_mut()),
        ) {
            c.on_init(&m, None);
        }
    }
}

/// Fill in what makes this guest unique (docs/snapshots.md): fresh
/// entropy and the wall clock, taken as `Start` is sent.
fn fresh_identity(v: &mut sandbox_proto::VmStart) {
    let mut seed = vec![0u8; 64];
    let mut got = 0;
    while got < seed.len() {
        // SAFETY: getrandom writes at most the given length into the buffer.
        let n = unsafe { libc::getrandom(seed[got..].as_mut_ptr().cast(), seed.len() - got, 0) };
        if n <= 0 {
            break;
        }
        got += n as usize;
    }
    seed.truncate(got);
    v.entropy = seed;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    v.realtime = (now.as_secs() as i64, now.subsec_nanos());
}

/// Wait for init's `Hello` (of this protocol version) and nothing else:
/// the point where a snapshot is taken. Errors say what happened instead.
pub fn wait_hello(chan: &mut Channel, vm: &RunningMachine, limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(e) = vm.exit() {
            return Err(format!("the guest ended before init was ready: {e}"));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("init was not ready within {} s", limit.as_secs()));
        }
        let mut fds = [
            libc::pollfd {
                fd: chan.raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: vm.exit_event().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let ms = left.as_millis().clamp(1, 1000) as i32;
        // SAFETY: two valid pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
        if n <= 0 || fds[0].revents == 0 {
            continue;
        }
        let open = chan.fill().unwrap_or(false);
        match chan.next_msg() {
            Ok(Some(InitMsg::Hello { version })) if version == PROTOCOL_VERSION => return Ok(()),
            Ok(Some(InitMsg::Hello { version })) => {
                return Err(format!(
                    "sandbox-init speaks protocol {version}, this launcher {PROTOCOL_VERSION}"
                ))
            }
            Ok(Some(InitMsg::SetupFailed(e))) => {
                return Err(format!("init failed before it was ready: {e:?}"))
            }
            Ok(Some(other)) => return Err(format!("unexpected message {other:?}")),
            Ok(None) if open => {}
            Ok(None) => return Err("sandbox-init closed the control channel".into()),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Wait until the machine has stopped or `limit` passed.
fn wait_exit(vm: &RunningMachine, limit: Duration) -> bool {
    let mut fd = libc::pollfd {
        fd: vm.exit_event().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut fd, 1, limit.as_millis().min(i32::MAX as u128) as i32) > 0 }
}
