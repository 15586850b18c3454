//! `sandbox-init`: PID 1 of every sandbox.
//!
//! Namespace backend: started by the launcher with the control socket on
//! fd 3 and argv\[0\] alone. Micro-VM backend: started by the guest kernel
//! as `/init --vm`; `vm.rs` first builds a pivotable root and connects the
//! control channel (onto fd 3) and the stdio streams over vsock, and every
//! way out ends in a reboot of the guest (see `vm.rs`). Then both run the
//! same flow (see `sandbox_proto` for the message sequence). init builds the filesystem
//! view (`setup`), starts the command (`command`), then supervises it:
//! forwards signals, reaps every zombie, and when the command exits ends
//! every process left in the sandbox and reports the status.
//!
//! init never writes to stdout/stderr: those belong to the command. All
//! failures travel to the launcher as structured messages.

mod chan;
mod command;
mod landlock;
mod relay;
mod setup;
mod sys;
mod vm;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use setup::{Backend, StepError};

use sandbox_proto::{ExitStatus, HostMsg, InitMsg, PROTOCOL_VERSION};

use chan::{Receiver, Recv};

/// Exit codes of init itself (the command's status travels in `Exited`).
const EXIT_SETUP_FAILED: i32 = 1;
const EXIT_PROTOCOL: i32 = 2;
const EXIT_LAUNCHER_GONE: i32 = 3;
const EXIT_PANIC: i32 = 4;

/// Signals the launcher may forward; also the ones init catches itself.
use sandbox_proto::unix::FORWARDED_SIGNALS as FORWARDED;

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if vm::requested(&args) {
        let early = vm::boot();
        let code =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(Backend::Vm, early)))
                .unwrap_or_else(|_| {
                    // Best effort: the launcher may be past the point where it
                    // expects a SetupFailed, but the guest ends either way.
                    let err = StepError::new("vm-init", "", 0)
                        .detail("sandbox-init panicked (the guest kernel log has the message)");
                    let _ = chan::send(&InitMsg::SetupFailed(err.into_proto()), None);
                    EXIT_PANIC
                });
        vm::shutdown(code)
    }
    std::process::exit(run(Backend::Namespace, None));
}

/// The common flow of both backends; returns init's exit code. `early` is
/// a failure of the VM-only steps, reported right after `Hello`.
fn run(backend: Backend, mut early: Option<StepError>) -> i32 {
    // If the launcher dies, so do we (and with us the whole PID namespace).
    // SAFETY: plain prctl.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    let sigfd = match block_signals() {
        Ok(fd) => fd,
        Err(e) => {
            let err = setup::StepError::new("signals", "", e);
            let _ = chan::send(&InitMsg::SetupFailed(err.into_proto()), None);
            return EXIT_SETUP_FAILED;
        }
    };
    // In a VM, a guest resumed from a snapshot finds its connections
    // reset (the host posts a vsock transport reset): it connects again
    // and says Hello to the new host (docs/snapshots.md).
    let mut reconnects = 0;
    let (spec, mut rx) = loop {
        if chan::send(
            &InitMsg::Hello {
                version: PROTOCOL_VERSION,
            },
            None,
        )
        .is_err()
        {
            return EXIT_LAUNCHER_GONE;
        }
        if let Some(e) = early.take() {
            let _ = chan::send(&InitMsg::SetupFailed(e.into_proto()), None);
            return EXIT_SETUP_FAILED;
        }
        let mut rx = Receiver::default();
        match rx.read_once() {
            Recv::Msg(HostMsg::Start(spec)) => break (spec, rx),
            Recv::Closed if backend == Backend::Vm && reconnects < vm::MAX_RECONNECTS => {
                reconnects += 1;
                if let Err(e) = vm::reconnect() {
                    vm::log(&format!("cannot reconnect after a transport reset: {e}"));
                    return EXIT_LAUNCHER_GONE;
                }
            }
            Recv::Closed => return EXIT_LAUNCHER_GONE,
            Recv::Msg(_) | Recv::Bad => return EXIT_PROTOCOL,
        }
    };
    if let Some(v) = spec.vm.as_ref() {
        if backend == Backend::Vm {
            vm::make_unique(v);
        }
    }

    vm::trace("start received");
    let prepared = rx.take_fds().into_iter().map(Some).collect();
    if let Err(e) = setup::build_root(&spec, prepared, backend) {
        let _ = chan::send(&InitMsg::SetupFailed(e.into_proto()), None);
        return EXIT_SETUP_FAILED;
    }
    vm::trace("root built");
    let mut child = match command::spawn(&spec) {
        Ok(c) => c,
        Err(command::SpawnError::Setup(e)) => {
            let _ = chan::send(&InitMsg::SetupFailed(e.into_proto()), None);
            return EXIT_SETUP_FAILED;
        }
        Err(command::SpawnError::Exec {
            program,
            errno,
            not_found,
        }) => {
            let _ = chan::send(
                &InitMsg::ExecFailed {
                    program,
                    errno,
                    not_found,
                },
                None,
            );
            return EXIT_SETUP_FAILED;
        }
    };
    vm::trace("command spawned");
    let mut master = child.master.take();
    let pty = master.is_some();
    // Labelled runs, and a terminal in a VM (the master cannot cross
    // vsock), relay stdio (see relay.rs): keep the caller's 0-2 for that.
    let relay = match backend {
        Backend::Vm => master.take().map(relay::Relay::for_pty),
        Backend::Namespace => None,
    }
    .or_else(|| child.relay.take().map(relay::Relay::new));
    detach_stdio();
    let started = InitMsg::Started {
        pid: child.pid,
        pty,
        enforced: sandbox_proto::Enforced {
            landlock_abi: child.landlock_abi,
        },
    };
    if chan::send(&started, master.as_ref().map(AsRawFd::as_raw_fd)).is_err() {
        kill_all();
        return EXIT_LAUNCHER_GONE;
    }
    // The launcher now owns the pty master; ours would keep it alive.
    drop(master);
    // `sandbox exec` joins the command's user namespace: keep it open.
    let path = format!("/proc/{}/ns/user\0", child.pid);
    let userns = std::ffi::CStr::from_bytes_with_nul(path.as_bytes())
        .ok()
        .and_then(|p| sys::open(p, libc::O_RDONLY).ok());
    let mut sup = Supervisor {
        pid: child.pid,
        spec: &spec,
        userns,
        execs: Vec::new(),
        backend,
        relays: Vec::new(),
    };
    sup.run(&sigfd, rx, relay)
}

/// Block the signals init handles and return a signalfd for them.
fn block_signals() -> Result<OwnedFd, sys::Errno> {
    // SAFETY: sigset manipulation on a local, zero-initialised set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        for s in FORWARDED {
            libc::sigaddset(&mut set, s);
        }
        sys::check(libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()).into())?;
        let fd = sys::check(libc::signalfd(-1, &set, libc::SFD_CLOEXEC).into())?;
        Ok(OwnedFd::from_raw_fd(fd as RawFd))
    }
}

/// Point init's own stdio at /dev/null so that init never holds the
/// caller's pipes or terminal open on its own.
fn detach_stdio() {
    if let Ok(null) = sys::open(c"/dev/null", libc::O_RDWR) {
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard fds.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}

/// End every other process of the sandbox and reap them all.
fn kill_all() {
    loop {
        // As PID 1 of the namespace, kill(-1) reaches every other process
        // in it. Repeated before each wait so that nothing forked while
        // the previous round was delivered (a fork bomb) survives.
        // SAFETY: plain kill.
        unsafe { libc::kill(-1, libc::SIGKILL) };
        // SAFETY: waitpid with a null status pointer.
        let r = unsafe { libc::waitpid(-1, std::ptr::null_mut(), 0) };
        if r < 0 && sys::errno() == libc::ECHILD {
            break;
        }
    }
}

fn decode_status(status: libc::c_int) -> ExitStatus {
    if libc::WIFSIGNALED(status) {
        ExitStatus::Signal(libc::WTERMSIG(status))
    } else {
        ExitStatus::Code(libc::WEXITSTATUS(status))
    }
}

fn forward(pid: libc::pid_t, sig: i32) {
    if (1..=64).contains(&sig) {
        // SAFETY: plain kill of our child.
        unsafe { libc::kill(pid, sig) };
    }
}

/// The command and the processes `sandbox exec` added, while they run.
struct Supervisor<'a> {
    pid: libc::pid_t,
    /// The command's spec: every exec'd process gets its confinement.
    spec: &'a sandbox_proto::InitSpec,
    /// The command's user namespace (`None` if it could not be opened:
    /// exec is then refused).
    userns: Option<OwnedFd>,
    /// (pid, exec id) of the exec'd processes still running.
    execs: Vec<(libc::pid_t, u32)>,
    backend: Backend,
    /// The pty relays of `sandbox exec -t` in a VM, by exec id.
    relays: Vec<(u32, relay::Relay)>,
}

impl Supervisor<'_> {
    /// Supervise until the command exits; returns init's exit code.
    fn run(&mut self, sigfd: &OwnedFd, mut rx: Receiver, mut relay: Option<relay::Relay>) -> i32 {
        // Messages that arrived with the start request.
        while let Some(m) = rx.buffered() {
            self.handle(m, &mut rx);
        }
        loop {
            let rfds = relay.as_ref().map(relay::Relay::pollfds);
            let exec_rfds: Vec<libc::pollfd> =
                self.relays.iter().flat_map(|(_, r)| r.pollfds()).collect();
            let mut fds = vec![
                libc::pollfd {
                    fd: sigfd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: chan::CTRL_FD,
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            fds.extend(rfds.iter().flatten());
            let exec_at = fds.len();
            fds.extend(exec_rfds);
            // SAFETY: `fds` is a valid array of pollfd of the given length.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
            if n < 0 {
                continue;
            }
            if let Some(r) = relay.as_mut() {
                r.handle(&fds[2..exec_at]);
            }
            for (k, (_, r)) in self.relays.iter_mut().enumerate() {
                if let Some(p) = fds.get(exec_at + 4 * k..exec_at + 4 * k + 4) {
                    r.handle(p);
                }
            }
            if fds[0].revents & libc::POLLIN != 0 {
                if let Some(sig) = read_signal(sigfd) {
                    if sig == libc::SIGCHLD {
                        if let Some(status) = self.reap() {
                            vm::trace("command reaped");
                            kill_all();
                            if let Some(r) = relay.as_mut() {
                                r.drain();
                            }
                            let _ = chan::send(&InitMsg::Exited(status), None);
                            return 0;
                        }
                    } else {
                        forward(self.pid, sig);
                    }
                }
            }
            if fds[1].revents != 0 {
                match rx.read_once() {
                    Recv::Msg(m) => {
                        if let HostMsg::Resize { rows, cols } = m {
                            // Only where init owns the pty (VM backend).
                            if let Some(r) = relay.as_ref() {
                                r.resize(rows, cols);
                            }
                        }
                        self.handle(m, &mut rx);
                        while let Some(m) = rx.buffered() {
                            self.handle(m, &mut rx);
                        }
                    }
                    Recv::Closed => {
                        kill_all();
                        return EXIT_LAUNCHER_GONE;
                    }
                    Recv::Bad => {
                        kill_all();
                        return EXIT_PROTOCOL;
                    }
                }
            }
        }
    }

    /// Act on one message of the launcher (`Resize` is the caller's).
    fn handle(&mut self, m: HostMsg, rx: &mut Receiver) {
        match m {
            HostMsg::Signal(s) => forward(self.pid, s),
            HostMsg::Exec { id, spec } => {
                if self.backend == Backend::Vm {
                    self.exec_in_vm(id, &spec);
                    return;
                }
                let fds = if spec.tty.is_none() {
                    rx.take_first(3)
                } else {
                    Vec::new()
                };
                self.exec(id, &spec, fds);
            }
            HostMsg::ExecResize { id, rows, cols } => {
                if let Some((_, r)) = self.relays.iter().find(|(i, _)| *i == id) {
                    r.resize(rows, cols);
                }
            }
            HostMsg::ExecSignal { id, sig } => {
                if let Some((pid, _)) = self.execs.iter().find(|(_, i)| *i == id) {
                    forward(*pid, sig);
                }
            }
            HostMsg::ProbeTcp { port } => {
                let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                let open = std::net::TcpStream::connect_timeout(
                    &addr,
                    std::time::Duration::from_millis(500),
                )
                .is_ok();
                let _ = chan::send(&InitMsg::Probe { port, open }, None);
            }
            HostMsg::Resize { .. } | HostMsg::Start(_) => {}
        }
    }

    /// `sandbox exec` in a VM: connect the exec's three vsock streams
    /// (nothing can be attached to a vsock frame), then start it as
    /// [`Supervisor::exec`] does; with a pty, relay between the pty and
    /// the streams.
    fn exec_in_vm(&mut self, id: u32, e: &sandbox_proto::ExecSpec) {
        let ports = sandbox_proto::vm::exec_ports(id);
        let hows = [libc::SHUT_WR, libc::SHUT_RD, libc::SHUT_RD];
        let mut streams = Vec::with_capacity(3);
        for (port, how) in ports.into_iter().zip(hows) {
            match vm::connect_exec_stream(port, how) {
                Ok(s) => streams.push(s),
                Err(errno) => {
                    let err = StepError::new(
                        "exec-vsock",
                        format!("vsock:{}:{port}", sandbox_proto::vm::HOST_CID),
                        errno,
                    )
                    .detail("cannot connect the exec's stdio stream to the host");
                    let failure = sandbox_proto::ExecFailure::Setup(err.into_proto());
                    let _ = chan::send(&InitMsg::ExecNotStarted { id, failure }, None);
                    return;
                }
            }
        }
        if e.tty.is_none() {
            self.exec(id, e, streams);
            return;
        }
        // With a pty, stderr is not used: dropping it closes it.
        let Ok([input, output, _stderr]) = <[OwnedFd; 3]>::try_from(streams) else {
            return;
        };
        if let Some(master) = self.exec(id, e, Vec::new()) {
            self.relays
                .push((id, relay::Relay::for_pty_streams(master, input, output)));
        }
    }

    /// Start an exec'd process with the command's confinement. Returns the
    /// pty master when init is to keep it (a VM); otherwise it goes to the
    /// launcher with `ExecStarted`.
    fn exec(&mut self, id: u32, e: &sandbox_proto::ExecSpec, fds: Vec<OwnedFd>) -> Option<OwnedFd> {
        let fail = |failure| {
            let _ = chan::send(&InitMsg::ExecNotStarted { id, failure }, None);
            None
        };
        let Some(userns) = self.userns.as_ref() else {
            let err = StepError::new("exec-join", "/proc/COMMAND/ns/user", libc::ENOENT);
            return fail(sandbox_proto::ExecFailure::Setup(err.into_proto()));
        };
        let stdio = match fds.as_slice() {
            [a, b, c] => Some([a.as_raw_fd(), b.as_raw_fd(), c.as_raw_fd()]),
            _ if e.tty.is_some() => None,
            _ => {
                let err = StepError::new("exec-stdio", "", libc::EBADF)
                    .detail("the request did not carry three descriptors");
                return fail(sandbox_proto::ExecFailure::Setup(err.into_proto()));
            }
        };
        let mut spec = self.spec.clone();
        spec.argv = e.argv.clone();
        spec.env = e.env.clone();
        spec.cwd = e.cwd.clone();
        spec.create_cwd = false;
        spec.tty = e.tty;
        if let Some(uid) = e.uid {
            spec.user.uid = uid;
        }
        if let Some(gid) = e.gid {
            spec.user.gid = gid;
        }
        let join = command::Join {
            userns: userns.as_raw_fd(),
            stdio,
        };
        match command::spawn_joined(&spec, join) {
            Ok(mut child) => {
                self.execs.push((child.pid, id));
                if self.backend == Backend::Vm {
                    let started = InitMsg::ExecStarted {
                        id,
                        pid: child.pid,
                        pty: false,
                    };
                    let _ = chan::send(&started, None);
                    return child.master.take();
                }
                let master = child.master.as_ref().map(AsRawFd::as_raw_fd);
                let started = InitMsg::ExecStarted {
                    id,
                    pid: child.pid,
                    pty: master.is_some(),
                };
                let _ = chan::send(&started, master);
                None
            }
            Err(command::SpawnError::Setup(e)) => {
                fail(sandbox_proto::ExecFailure::Setup(e.into_proto()))
            }
            Err(command::SpawnError::Exec {
                program,
                errno,
                not_found,
            }) => fail(sandbox_proto::ExecFailure::Exec {
                program,
                errno,
                not_found,
            }),
        }
    }

    /// Reap every exited child, reporting exec'd ones; returns the
    /// command's status once it exited.
    fn reap(&mut self) -> Option<ExitStatus> {
        let mut result = None;
        loop {
            let mut status = 0;
            // SAFETY: waitpid with a valid status pointer.
            let r = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if r <= 0 {
                return result;
            }
            if r == self.pid {
                result = Some(decode_status(status));
            } else if let Some(i) = self.execs.iter().position(|(p, _)| *p == r) {
                let (_, id) = self.execs.swap_remove(i);
                if let Some(k) = self.relays.iter().position(|(i, _)| *i == id) {
                    // Its output first; dropping the relay closes the
                    // streams (the host sees end of file).
                    let (_, mut r) = self.relays.swap_remove(k);
                    r.drain();
                }
                let status = decode_status(status);
                let _ = chan::send(&InitMsg::ExecExited { id, status }, None);
            }
        }
    }
}

/// Read one record from the signalfd.
fn read_signal(sigfd: &OwnedFd) -> Option<i32> {
    // SAFETY: zeroed siginfo is a valid buffer.
    let mut si: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let sz = std::mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: reading one siginfo record into `si`.
    let r = unsafe {
        libc::read(
            sigfd.as_raw_fd(),
            (&mut si as *mut libc::signalfd_siginfo).cast(),
            sz,
        )
    };
    (r as usize == sz).then_some(si.ssi_signo as i32)
}
