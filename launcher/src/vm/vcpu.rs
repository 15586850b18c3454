//! The vCPU threads: one per vCPU, each looping on `KVM_RUN` and
//! dispatching its exits (port I/O to the port bus, MMIO to the MMIO
//! bus), until the guest resets, something fatal happens, or the machine
//! is stopped.
//!
//! Stopping: the supervisor (or the vCPU that saw the end) sets the
//! shared stop flag and sends every vCPU thread [`kick_signal`]. Its
//! handler sets `immediate_exit` in that thread's `kvm_run`, so a thread
//! that is in `KVM_RUN`, or about to enter it, comes back with `EINTR`
//! and sees the flag (no lost wake-up: the flag is checked after the
//! handler's target is published, and before each entry).
//!
//! Hostile input: every exit's address, width and data come from the
//! guest; the buses bound-check them, unknown ports read as 0xff and
//! unknown MMIO as zeros, and nothing the guest does panics the thread.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once, OnceLock};
use std::thread::JoinHandle;
use std::time::Instant;

use kvm_bindings::{
    kvm_run, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::eventfd::EventFd;

use super::bus::Bus;
use super::machine::VmExit;
use super::serial::SerialDevice;

/// The signal that kicks a vCPU out of `KVM_RUN`.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

thread_local! {
    /// This thread's `kvm_run`, for the kick handler.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let p = KVM_RUN.with(|c| c.get());
    if !p.is_null() {
        // SAFETY: `p` is this thread's live kvm_run mapping: it is set
        // before the loop and cleared before the VcpuFd (and so the
        // mapping) is dropped, and the handler runs on this thread.
        unsafe { std::ptr::addr_of_mut!((*p).immediate_exit).write_volatile(1) };
    }
}

static HANDLER: Once = Once::new();
static HANDLER_ERR: OnceLock<String> = OnceLock::new();

/// Install the kick handler (once per process).
pub fn install_kick_handler() -> Result<(), String> {
    HANDLER.call_once(|| {
        if let Err(e) = vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick) {
            let _ = HANDLER_ERR.set(format!("cannot install the vCPU kick signal handler: {e}"));
        }
    });
    match HANDLER_ERR.get() {
        Some(e) => Err(e.clone()),
        None => Ok(()),
    }
}

/// State shared by the vCPU threads and the supervisor.
#[derive(Debug)]
pub struct Shared {
    pub stop: AtomicBool,
    /// The stop is a pause for a snapshot: each thread completes the
    /// exit it was handling (a `KVM_RUN` with `immediate_exit` set, so
    /// that an MMIO or port read's data reaches the registers) and hands
    /// its vCPU back.
    pub pausing: AtomicBool,
    pub exit: Mutex<Option<VmExit>>,
    pub exit_evt: EventFd,
    /// The vCPU threads' pthread ids, as integers (`pthread_t` is a
    /// pointer on musl, which is not `Send`).
    pub threads: Mutex<Vec<usize>>,
    /// When vCPU 0 first entered `KVM_RUN`.
    pub first_run: OnceLock<Instant>,
    /// When the first reason to end was recorded.
    pub exited_at: OnceLock<Instant>,
    pub serial: Arc<SerialDevice>,
    pub pio: Bus,
    pub mmio: Bus,
}

impl Shared {
    /// Ask every vCPU to leave `KVM_RUN` and its loop.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() } as usize;
        let threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        for t in threads.iter().filter(|t| **t != me) {
            // SAFETY: the threads are joined only after this lock is
            // released for the last time by `RunningMachine::stop`, so each
            // id still names a thread (possibly finished, not yet joined).
            unsafe { libc::pthread_kill(*t as libc::pthread_t, kick_signal()) };
        }
    }

    /// Record why the VM ended (the first reason wins) and stop it.
    pub fn finish(&self, why: VmExit) {
        {
            let mut exit = self.exit.lock().unwrap_or_else(|e| e.into_inner());
            if exit.is_none() {
                *exit = Some(why);
                self.exited_at.get_or_init(Instant::now);
            }
        }
        self.serial.finish();
        self.request_stop();
        let _ = self.exit_evt.write(1);
    }
}

enum Next {
    Continue,
    End(VmExit),
    /// Fatal; the registers are read for the message.
    Fatal(String),
}

fn unblock_kick() {
    // SAFETY: plain signal-set manipulation on a zeroed local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, kick_signal());
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
}

fn shutdown_reason(shared: &Shared) -> VmExit {
    match shared.serial.panic_message() {
        Some(p) => VmExit::Panic(p),
        None => VmExit::Reset,
    }
}

fn handle(shared: &Shared, exit: VcpuExit<'_>) -> Next {
    match exit {
        VcpuExit::IoIn(port, data) => {
            if !shared.pio.read(u64::from(port), data) {
                data.fill(0xff);
            }
            Next::Continue
        }
        VcpuExit::IoOut(port, data) => {
            shared.pio.write(u64::from(port), data);
            Next::Continue
        }
        VcpuExit::MmioRead(addr, data) => {
            data.fill(0);
            shared.mmio.read(addr, data);
            Next::Continue
        }
        VcpuExit::MmioWrite(addr, data) => {
            shared.mmio.write(addr, data);
            Next::Continue
        }
        VcpuExit::Shutdown => Next::End(shutdown_reason(shared)),
        VcpuExit::SystemEvent(kind, _) => match kind {
            KVM_SYSTEM_EVENT_SHUTDOWN | KVM_SYSTEM_EVENT_RESET => {
                Next::End(shutdown_reason(shared))
            }
            KVM_SYSTEM_EVENT_CRASH => Next::End(VmExit::Panic(
                shared
                    .serial
                    .panic_message()
                    .unwrap_or_else(|| "the guest reported a crash".into()),
            )),
            k => Next::Fatal(format!("unexpected system event {k}")),
        },
        VcpuExit::Hlt => Next::End(VmExit::Halted),
        VcpuExit::Intr | VcpuExit::IrqWindowOpen => Next::Continue,
        VcpuExit::FailEntry(reason, cpu) => Next::Fatal(format!(
            "KVM_EXIT_FAIL_ENTRY (hardware entry failure reason {reason:#x}, host CPU {cpu})"
        )),
        VcpuExit::InternalError => Next::Fatal("KVM_EXIT_INTERNAL_ERROR".into()),
        other => Next::Fatal(format!("unexpected exit {other:?}")),
    }
}

/// Counts of the exits that reached this process, per kind and port or
/// page, printed on stderr when the loop ends if `SANDBOX_VM_EXIT_STATS=1`
/// (a debugging aid for boot time: every exit is costly under nested
/// virtualization; docs/vm.md).
#[derive(Default)]
struct ExitStats {
    enabled: bool,
    counts: std::collections::BTreeMap<(&'static str, u64), u64>,
}

impl ExitStats {
    fn new() -> Self {
        Self {
            enabled: std::env::var_os("SANDBOX_VM_EXIT_STATS").is_some_and(|v| v == "1"),
            ..Self::default()
        }
    }

    fn note(&mut self, exit: &VcpuExit<'_>) {
        if !self.enabled {
            return;
        }
        let key = match exit {
            VcpuExit::IoIn(port, _) => ("pio-in", u64::from(*port)),
            VcpuExit::IoOut(port, _) => ("pio-out", u64::from(*port)),
            VcpuExit::MmioRead(addr, _) => ("mmio-read", *addr & !0xfff),
            VcpuExit::MmioWrite(addr, _) => ("mmio-write", *addr & !0xfff),
            _ => ("other", 0),
        };
        *self.counts.entry(key).or_default() += 1;
    }

    fn print(&self, id: u8) {
        if !self.enabled {
            return;
        }
        let total: u64 = self.counts.values().sum();
        let mut rows: Vec<_> = self.counts.iter().collect();
        rows.sort_by(|a, b| b.1.cmp(a.1));
        let list: Vec<String> = rows
            .iter()
            .take(12)
            .map(|((kind, at), n)| format!("{kind}@{at:#x}={n}"))
            .collect();
        eprintln!(
            "sandbox: vCPU {id}: {total} exits to the VMM: {}",
            list.join(" ")
        );
    }
}

fn run_loop(id: u8, vcpu: &mut VcpuFd, shared: &Shared) {
    let mut stats = ExitStats::new();
    run_loop_inner(id, vcpu, shared, &mut stats);
    stats.print(id);
}

fn run_loop_inner(id: u8, vcpu: &mut VcpuFd, shared: &Shared, stats: &mut ExitStats) {
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        if id == 0 {
            shared.first_run.get_or_init(Instant::now);
        }
        let next = match vcpu.run() {
            Ok(exit) => {
                stats.note(&exit);
                handle(shared, exit)
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                vcpu.set_kvm_immediate_exit(0);
                Next::Continue
            }
            Err(e) => Next::Fatal(format!("KVM_RUN failed: {e}")),
        };
        match next {
            Next::Continue => {}
            Next::End(why) => return shared.finish(why),
            Next::Fatal(what) => {
                let rip = vcpu
                    .get_regs()
                    .map(|r| format!("{:#x}", r.rip))
                    .unwrap_or_else(|_| "unknown".into());
                return shared.finish(VmExit::Fatal(format!("vCPU {id}: {what} at rip {rip}")));
            }
        }
    }
}

/// Start vCPU `id`'s thread. The thread returns its vCPU when the stop
/// was a pause ([`Shared::pausing`]).
pub fn spawn(
    id: u8,
    mut vcpu: VcpuFd,
    shared: Arc<Shared>,
) -> std::io::Result<JoinHandle<Option<VcpuFd>>> {
    use std::os::unix::thread::JoinHandleExt;
    let s = shared.clone();
    let handle = std::thread::Builder::new()
        .name(format!("vcpu{id}"))
        .spawn(move || {
            unblock_kick();
            KVM_RUN.with(|c| c.set(vcpu.get_kvm_run() as *mut kvm_run));
            run_loop(id, &mut vcpu, &s);
            let pausing = s.pausing.load(Ordering::SeqCst);
            if pausing {
                // Complete the last exit inside KVM without running the
                // guest (KVM's documented way before saving state).
                vcpu.set_kvm_immediate_exit(1);
                let _ = vcpu.run();
                vcpu.set_kvm_immediate_exit(0);
            }
            KVM_RUN.with(|c| c.set(std::ptr::null_mut()));
            pausing.then_some(vcpu)
        })?;
    shared
        .threads
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(raw_pthread(handle.as_pthread_t()));
    Ok(handle)
}

/// std's raw pthread handle as an integer.
#[allow(clippy::unnecessary_cast)]
fn raw_pthread(raw: std::os::unix::thread::RawPthread) -> usize {
    raw as usize
}
