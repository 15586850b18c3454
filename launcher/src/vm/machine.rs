//! The machine: a KVM VM with its guest memory, in-kernel irqchip and
//! PIT, the serial port, the virtio-mmio devices the caller adds, the
//! kernel and its boot data, and one thread per vCPU.
//!
//! Life cycle: [`Machine::new`] (VM, memory, irqchip, serial), then
//! [`Machine::add_virtio_mmio`] per device, then [`Machine::start`]
//! (kernel, boot data, vCPUs, threads) gives a [`RunningMachine`], whose
//! [`RunningMachine::exit_event`] becomes readable when the VM has ended
//! and whose [`RunningMachine::stop`] ends it. Threads: the vCPU threads
//! (see `vcpu`); device workers belong to the devices.
//!
//! Hostile input: the guest reaches this code only through the buses
//! (bounds-checked) and through the way it ends (a reset, a panic line on
//! the serial, or a fatal exit, all reported, none trusted further).

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::CpuId;
use kvm_ioctls::{IoEventAddress, Kvm, VmFd};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::arch::current as arch;
use super::bus::{Bus, BusDevice, BusError};
use super::kernel;
use super::memory::{self, MemoryError};
pub use super::serial::Console;
use super::serial::{SerialDevice, SerialSnap};
use super::vcpu::{self, Shared};
use super::virtio::{Interrupt, Mem};
use arch::state::{self, CheckedVcpu, CheckedVm, VcpuState, VmState};

/// The parameters every boot gets (kernel-config/README.md).
pub const BASE_CMDLINE: &str = "console=ttyS0 quiet panic=-1 reboot=t";
/// Size of one virtio-mmio slot.
pub const MMIO_SLOT: u64 = 0x1000;
/// Offset of `QueueNotify` in a virtio-mmio register block.
const QUEUE_NOTIFY: u64 = 0x50;
/// How long `stop` waits for the vCPU threads to leave `KVM_RUN`.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// Slots end well below the I/O APIC.
const MMIO_SLOTS_END: u64 = 0xe000_0000;

/// What to boot and how.
#[derive(Debug)]
pub struct MachineConfig {
    pub kernel: PathBuf,
    pub kernel_format: kernel::Format,
    pub cpus: u8,
    pub memory_mib: u32,
    /// Extra kernel arguments, after the machine's own.
    pub cmdline: String,
    /// Arguments for init, after ` -- `.
    pub init_args: Vec<String>,
    /// A newc cpio image, loaded high in memory.
    pub initramfs: Vec<u8>,
    pub console: Console,
}

#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error("{cpus} vCPUs requested: 1 to {max} are accepted here")]
    Cpus { cpus: u8, max: usize },
    #[error("{what} failed: {err}")]
    Kvm {
        what: &'static str,
        err: kvm_ioctls::Error,
    },
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Boot(#[from] arch::boot::BootError),
    #[error(transparent)]
    Cpu(#[from] arch::cpu::CpuError),
    #[error(transparent)]
    Cpuid(#[from] arch::cpuid::CpuidError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("no IRQ left for another virtio device (IRQs {first} to {last} are all taken)")]
    NoIrq { first: u32, last: u32 },
    #[error("no MMIO slot left for another virtio device")]
    NoSlot,
    #[error("cannot create the virtio device at {addr:#x}: {reason}")]
    Device { addr: u64, reason: String },
    #[error(
        "init argument {0:?} cannot be passed on the kernel command line (it must be non-empty, \
         without whitespace, quotes or NUL)"
    )]
    InitArg(String),
    #[error("the extra kernel arguments {0:?} contain \"--\", which would start init's arguments")]
    Cmdline(String),
    #[error("cannot create an eventfd: {0}")]
    EventFd(String),
    #[error("cannot start a vCPU thread: {0}")]
    Thread(String),
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error("cannot pause the machine: {0}")]
    Pause(String),
    #[error("the snapshot's memory file: {0}")]
    MemoryFile(String),
    #[error("{0}")]
    Serial(String),
}

/// What a machine resumed from a snapshot starts from (everything
/// checked by the snapshot module before anything is created).
#[derive(Debug)]
pub struct ResumeConfig<'a> {
    pub cpus: u8,
    pub memory_mib: u32,
    /// Guest RAM, its regions one after the other; mapped private and
    /// copy-on-write, so machines resumed from one file share its clean
    /// pages. The file must not change while the machine lives.
    pub memory_file: &'a std::fs::File,
    pub vm: &'a CheckedVm,
    pub vcpus: Vec<CheckedVcpu>,
    pub serial: &'a SerialSnap,
    pub console: Console,
}

/// A paused machine's state (without memory and devices).
#[derive(Debug)]
pub struct MachineState {
    pub vcpus: Vec<VcpuState>,
    pub vm: VmState,
    pub serial: SerialSnap,
}

/// How the vCPUs start.
enum Boot {
    /// At the kernel's entry point, with boot data to write.
    Cold {
        loaded: arch::boot::LoadedKernel,
        initrd: Option<(u64, u64)>,
    },
    /// Where a snapshot left them.
    Resume(Vec<CheckedVcpu>),
}

/// How the VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest reset (triple fault with `reboot=t`): its normal end.
    Reset,
    /// The guest reset after "Kernel panic" went by on the serial (the text).
    Panic(String),
    /// A vCPU left `KVM_RUN` on HLT (not expected with the in-kernel LAPIC).
    Halted,
    /// An internal error, a failed VM entry, an unexpected exit.
    Fatal(String),
    /// [`RunningMachine::stop`] was called first.
    Stopped,
}

impl fmt::Display for VmExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmExit::Reset => write!(f, "the guest reset"),
            VmExit::Panic(p) => write!(f, "the guest kernel panicked: {p}"),
            VmExit::Halted => write!(f, "a vCPU halted"),
            VmExit::Fatal(why) => write!(f, "the VM failed: {why}"),
            VmExit::Stopped => write!(f, "the VM was stopped"),
        }
    }
}

/// Time spent per phase, from [`Machine::new`] to the first `KVM_RUN`.
#[derive(Debug, Clone, Copy, Default)]
pub struct BootTimings {
    /// `KVM_CREATE_VM`.
    pub create_vm: Duration,
    /// Mapping guest memory.
    pub memory: Duration,
    /// Registering it with KVM (on a helper thread, while the kernel loads).
    pub memory_register: Duration,
    /// Then the irqchip, PIT, TSS (on the same helper thread).
    pub irqchip: Duration,
    /// Loading the kernel, the initramfs, the page tables, GDT and MP table
    /// (while the memory is registered).
    pub load_kernel: Duration,
    /// Wall time of the helper thread's and this thread's work together.
    pub load_phase: Duration,
    /// `KVM_GET_SUPPORTED_CPUID` (after the load, on the same thread).
    pub cpuid: Duration,
    /// The serial port.
    pub serial: Duration,
    /// Between `new` and `start`: the caller adding devices.
    pub devices: Duration,
    /// The command line and the zero page.
    pub boot_data: Duration,
    /// Creating and configuring the vCPUs.
    pub vcpus: Duration,
    /// Starting the threads until vCPU 0 enters `KVM_RUN`.
    pub first_run: Option<Duration>,
    /// From `new` to vCPU 0's first `KVM_RUN`.
    pub total: Option<Duration>,
}

impl fmt::Display for BootTimings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let opt = |d: Option<Duration>| d.map_or("-".to_string(), |d| format!("{:.0}", us(d)));
        write!(
            f,
            "create_vm={:.0}us memory={:.0}us [memory_register={:.0}us+irqchip={:.0}us || \
             load_kernel={:.0}us+cpuid={:.0}us] \
             load_phase={:.0}us serial={:.0}us devices={:.0}us boot_data={:.0}us \
             vcpus={:.0}us first_run={}us total={}us",
            us(self.create_vm),
            us(self.memory),
            us(self.memory_register),
            us(self.irqchip),
            us(self.load_kernel),
            us(self.cpuid),
            us(self.load_phase),
            us(self.serial),
            us(self.devices),
            us(self.boot_data),
            us(self.vcpus),
            opt(self.first_run),
            opt(self.total)
        )
    }
}

/// Where a virtio device was put.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioSlot {
    pub base: u64,
    pub irq: u32,
}

/// A VM being put together.
pub struct Machine {
    vm: VmFd,
    mem: Mem,
    cpuid: CpuId,
    serial: Arc<SerialDevice>,
    pio: Bus,
    mmio: Bus,
    devices: Vec<String>,
    next_slot: u64,
    next_irq: u32,
    boot: Boot,
    cpus: u8,
    cmdline: String,
    init_args: Vec<String>,
    t0: Instant,
    new_done: Instant,
    timings: BootTimings,
}

impl fmt::Debug for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Machine")
            .field("cpus", &self.cpus)
            .field("memory", &memory::size(&self.mem))
            .field("devices", &self.devices)
            .finish_non_exhaustive()
    }
}

fn eventfd() -> Result<EventFd, MachineError> {
    EventFd::new(EFD_NONBLOCK).map_err(|e| MachineError::EventFd(e.to_string()))
}

/// The kernel command line: ours, the devices, the caller's, init's.
pub fn kernel_cmdline(
    devices: &[String],
    extra: &str,
    init_args: &[String],
) -> Result<String, MachineError> {
    let mut s = String::from(BASE_CMDLINE);
    for d in devices {
        s.push(' ');
        s.push_str(d);
    }
    let extra = extra.trim();
    if extra.split_whitespace().any(|w| w == "--") {
        return Err(MachineError::Cmdline(extra.into()));
    }
    if !extra.is_empty() {
        s.push(' ');
        s.push_str(extra);
    }
    if !init_args.is_empty() {
        s.push_str(" --");
        for a in init_args {
            if a.is_empty()
                || a.chars()
                    .any(|c| c.is_whitespace() || c == '"' || c == '\0')
            {
                return Err(MachineError::InitArg(a.clone()));
            }
            s.push(' ');
            s.push_str(a);
        }
    }
    Ok(s)
}

/// Kernel, initramfs, page tables, GDT, MP table: everything in guest
/// memory that does not depend on the devices.
fn load_images(
    mem: &Mem,
    kernel: &std::path::Path,
    format: kernel::Format,
    initramfs: &[u8],
    cpus: u8,
) -> Result<(arch::boot::LoadedKernel, Option<(u64, u64)>), MachineError> {
    let loaded = arch::boot::load_kernel(mem, kernel, format)?;
    arch::cpu::write_tables(mem)?;
    arch::boot::write_mptable(mem, cpus)?;
    let initrd = arch::boot::write_initramfs(mem, &loaded, memory::size(mem), initramfs)?;
    Ok((loaded, initrd))
}

impl Machine {
    /// Create the VM, its memory, irqchip, PIT and serial port, and load
    /// the kernel and the initramfs.
    pub fn new(kvm: &Kvm, cfg: MachineConfig) -> Result<Machine, MachineError> {
        let t0 = Instant::now();
        let max = kvm
            .get_max_vcpus()
            .min(usize::from(arch::mptable::MAX_CPUS));
        if cfg.cpus == 0 || usize::from(cfg.cpus) > max {
            return Err(MachineError::Cpus {
                cpus: cfg.cpus,
                max,
            });
        }
        let kvm_err = |what| move |err| MachineError::Kvm { what, err };
        let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        let t_vm = Instant::now();

        let mem = memory::create(cfg.memory_mib)?;
        let t_map = Instant::now();
        // KVM work and the kernel load overlap: neither needs the other.
        // The memory slot goes in before the irqchip: on the PVM host a
        // slot added to a VM that has an irqchip costs ~7 ms instead of
        // ~0.2 ms (see memory::registration_cost).
        let cpus = cfg.cpus;
        let (kvm_side, loaded, cpuid) = std::thread::scope(|s| {
            let reg = s.spawn(|| {
                let t = Instant::now();
                memory::register(&vm, &mem)?;
                let t_reg = Instant::now();
                arch::setup_vm(&vm).map_err(kvm_err("the VM setup (irqchip, PIT, TSS)"))?;
                Ok::<_, MachineError>((t_reg - t, t_reg.elapsed()))
            });
            let t = Instant::now();
            let loaded = load_images(&mem, &cfg.kernel, cfg.kernel_format, &cfg.initramfs, cpus)
                .map(|l| (l, t.elapsed()));
            let t = Instant::now();
            let cpuid = arch::cpuid::supported(kvm).map(|c| (c, t.elapsed()));
            (reg.join(), loaded, cpuid)
        });
        let (memory_register, irqchip) = match kvm_side {
            Ok(r) => r?,
            Err(_) => {
                return Err(MachineError::Thread(
                    "the memory registration thread panicked".into(),
                ))
            }
        };
        let ((loaded, initrd), load_kernel) = loaded?;
        let (cpuid, cpuid_time) = cpuid?;
        drop(cfg.initramfs);
        let t_mem = Instant::now();

        let irq = eventfd()?;
        vm.register_irqfd(&irq, arch::SERIAL_IRQ)
            .map_err(kvm_err("KVM_IRQFD (serial)"))?;
        let serial = Arc::new(SerialDevice::new(irq, cfg.console));
        let mut pio = Bus::new();
        pio.insert(
            u64::from(arch::SERIAL_PORT),
            arch::SERIAL_PORT_LEN,
            serial.clone(),
        )?;
        let now = Instant::now();
        Ok(Machine {
            vm,
            mem,
            cpuid,
            serial,
            pio,
            mmio: Bus::new(),
            devices: Vec::new(),
            next_slot: arch::layout::MMIO_START,
            next_irq: arch::FIRST_DEVICE_IRQ,
            boot: Boot::Cold { loaded, initrd },
            cpus: cfg.cpus,
            cmdline: cfg.cmdline,
            init_args: cfg.init_args,
            t0,
            new_done: now,
            timings: BootTimings {
                create_vm: t_vm - t0,
                memory: t_map - t_vm,
                memory_register,
                irqchip,
                load_kernel,
                cpuid: cpuid_time,
                load_phase: t_mem - t_map,
                serial: now - t_mem,
                ..BootTimings::default()
            },
        })
    }

    /// Create a VM from a snapshot: memory mapped from the snapshot's file
    /// (private, copy-on-write), the irqchip, PIT and clock as saved, the
    /// serial port's registers. The devices are added as for a cold boot
    /// (same order, so the same slots and IRQs) and then restored by the
    /// caller; [`Machine::start`] puts the saved vCPU states in.
    pub fn resume(kvm: &Kvm, cfg: ResumeConfig<'_>) -> Result<Machine, MachineError> {
        let t0 = Instant::now();
        let max = kvm
            .get_max_vcpus()
            .min(usize::from(arch::mptable::MAX_CPUS));
        if cfg.cpus == 0 || usize::from(cfg.cpus) > max || cfg.vcpus.len() != usize::from(cfg.cpus)
        {
            return Err(MachineError::Cpus {
                cpus: cfg.cpus,
                max,
            });
        }
        let kvm_err = |what| move |err| MachineError::Kvm { what, err };
        let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        let t_vm = Instant::now();
        let mem = memory::create(cfg.memory_mib)?;
        let want = memory::size(&mem);
        let have = cfg
            .memory_file
            .metadata()
            .map_err(|e| MachineError::MemoryFile(e.to_string()))?
            .len();
        if have != want {
            return Err(MachineError::MemoryFile(format!(
                "it is {have} bytes long, the guest has {want} bytes of memory"
            )));
        }
        let mut offset = 0u64;
        let regions: Vec<(u64, u64)> = {
            use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
            mem.iter().map(|r| (r.start_addr().0, r.len())).collect()
        };
        for (start, len) in regions {
            memory::map_file(&mem, start, len, cfg.memory_file, offset)?;
            offset += len;
        }
        let t_map = Instant::now();
        memory::register(&vm, &mem)?;
        let t_reg = Instant::now();
        arch::setup_vm(&vm).map_err(kvm_err("the VM setup (irqchip, PIT, TSS)"))?;
        state::restore_vm(&vm, cfg.vm)?;
        let t_chip = Instant::now();

        let irq = eventfd()?;
        vm.register_irqfd(&irq, arch::SERIAL_IRQ)
            .map_err(kvm_err("KVM_IRQFD (serial)"))?;
        let serial = Arc::new(
            SerialDevice::from_state(irq, cfg.console, cfg.serial).map_err(MachineError::Serial)?,
        );
        let mut pio = Bus::new();
        pio.insert(
            u64::from(arch::SERIAL_PORT),
            arch::SERIAL_PORT_LEN,
            serial.clone(),
        )?;
        let cpuid = cfg
            .vcpus
            .first()
            .map(|v| v.cpuid().clone())
            .ok_or(MachineError::Cpus { cpus: 0, max })?;
        let now = Instant::now();
        Ok(Machine {
            vm,
            mem,
            cpuid,
            serial,
            pio,
            mmio: Bus::new(),
            devices: Vec::new(),
            next_slot: arch::layout::MMIO_START,
            next_irq: arch::FIRST_DEVICE_IRQ,
            boot: Boot::Resume(cfg.vcpus),
            cpus: cfg.cpus,
            cmdline: String::new(),
            init_args: Vec::new(),
            t0,
            new_done: now,
            timings: BootTimings {
                create_vm: t_vm - t0,
                memory: t_map - t_vm,
                memory_register: t_reg - t_map,
                irqchip: t_chip - t_reg,
                load_phase: t_chip - t_map,
                serial: now - t_chip,
                ..BootTimings::default()
            },
        })
    }

    /// Put a virtio device on the MMIO bus: allocate its 4 KiB slot and
    /// IRQ, register its irqfd and its queue kick eventfds (as KVM
    /// ioeventfds on `QueueNotify`, matching the queue index), and
    /// announce it on the command line. `make` builds the transport from
    /// the guest memory and the device's interrupt, and returns it with
    /// the kick eventfds (queue index, eventfd; KVM keeps its own
    /// reference, so these may be clones).
    pub fn add_virtio_mmio<F, E>(&mut self, make: F) -> Result<MmioSlot, MachineError>
    where
        F: FnOnce(Mem, Arc<Interrupt>) -> Result<(Arc<dyn BusDevice>, Vec<(u16, EventFd)>), E>,
        E: fmt::Display,
    {
        if self.next_irq > arch::LAST_DEVICE_IRQ {
            return Err(MachineError::NoIrq {
                first: arch::FIRST_DEVICE_IRQ,
                last: arch::LAST_DEVICE_IRQ,
            });
        }
        if self.next_slot + MMIO_SLOT > MMIO_SLOTS_END {
            return Err(MachineError::NoSlot);
        }
        let (base, irq) = (self.next_slot, self.next_irq);
        let irqfd = eventfd()?;
        self.vm
            .register_irqfd(&irqfd, irq)
            .map_err(|err| MachineError::Kvm {
                what: "KVM_IRQFD",
                err,
            })?;
        let interrupt = Arc::new(Interrupt::new(irqfd));
        let made = make(self.mem.clone(), interrupt.clone());
        let (dev, kicks) = match made {
            Ok(d) => d,
            Err(e) => {
                // The slot and IRQ stay free for the next device.
                let _ = self.vm.unregister_irqfd(interrupt.irqfd(), irq);
                return Err(MachineError::Device {
                    addr: base,
                    reason: e.to_string(),
                });
            }
        };
        for (queue, kick) in &kicks {
            self.vm
                .register_ioevent(
                    kick,
                    &IoEventAddress::Mmio(base + QUEUE_NOTIFY),
                    u32::from(*queue),
                )
                .map_err(|err| MachineError::Kvm {
                    what: "KVM_IOEVENTFD",
                    err,
                })?;
        }
        self.mmio.insert(base, MMIO_SLOT, dev)?;
        self.devices
            .push(format!("virtio_mmio.device=4K@{base:#x}:{irq}"));
        self.next_slot += MMIO_SLOT;
        self.next_irq += 1;
        Ok(MmioSlot { base, irq })
    }

    /// Note when a serial line containing `marker` goes by
    /// ([`RunningMachine::marker_seen`]); for boot benchmarks.
    pub fn watch_serial(&self, marker: &str) {
        self.serial.watch(marker);
    }

    /// The guest memory (for devices).
    pub fn memory(&self) -> Mem {
        self.mem.clone()
    }

    /// The kernel command line as it will be passed.
    pub fn cmdline(&self) -> Result<String, MachineError> {
        kernel_cmdline(&self.devices, &self.cmdline, &self.init_args)
    }

    /// Load kernel, initramfs and boot data, set up the vCPUs, start one
    /// thread each.
    pub fn start(self) -> Result<RunningMachine, MachineError> {
        let t_start = Instant::now();
        let mut timings = self.timings;
        timings.devices = t_start - self.new_done;
        let mut restored = None;
        let mut entry = 0;
        match self.boot {
            Boot::Cold { loaded, initrd } => {
                let cmdline = self.cmdline()?;
                let mem_size = memory::size(&self.mem);
                arch::boot::write_cmdline_and_zero_page(
                    &self.mem, &loaded, mem_size, &cmdline, initrd,
                )?;
                entry = loaded.entry;
            }
            Boot::Resume(v) => restored = Some(v),
        }
        let t_loaded = Instant::now();
        timings.boot_data = t_loaded - t_start;

        let mut vcpus = Vec::with_capacity(usize::from(self.cpus));
        let mut cpuids = Vec::with_capacity(usize::from(self.cpus));
        for id in 0..self.cpus {
            let vcpu = self
                .vm
                .create_vcpu(u64::from(id))
                .map_err(|err| MachineError::Kvm {
                    what: "KVM_CREATE_VCPU",
                    err,
                })?;
            if let Some(saved) = restored.as_ref().and_then(|r| r.get(usize::from(id))) {
                state::restore_vcpu(&vcpu, saved)?;
                cpuids.push(saved.cpuid().clone());
                vcpus.push(vcpu);
                continue;
            }
            let mut cpuid = self.cpuid.clone();
            arch::cpuid::patch(cpuid.as_mut_slice(), id, self.cpus);
            vcpu.set_cpuid2(&cpuid).map_err(|err| MachineError::Kvm {
                what: "KVM_SET_CPUID2",
                err,
            })?;
            arch::cpu::configure(&vcpu, id, (id == 0).then_some(entry))?;
            cpuids.push(cpuid);
            vcpus.push(vcpu);
        }
        let t_vcpus = Instant::now();
        timings.vcpus = t_vcpus - t_loaded;

        vcpu::install_kick_handler().map_err(MachineError::Thread)?;
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            pausing: AtomicBool::new(false),
            exit: Mutex::new(None),
            exit_evt: eventfd()?,
            threads: Mutex::new(Vec::new()),
            first_run: OnceLock::new(),
            exited_at: OnceLock::new(),
            serial: self.serial.clone(),
            pio: self.pio,
            mmio: self.mmio,
        });
        let running = RunningMachine {
            shared: shared.clone(),
            handles: Mutex::new(Vec::new()),
            vm: self.vm,
            cpuids,
            mem: self.mem,
            t0: self.t0,
            t_spawn: t_vcpus,
            timings,
        };
        for (id, v) in vcpus.into_iter().enumerate() {
            match vcpu::spawn(id as u8, v, shared.clone()) {
                Ok(h) => running
                    .handles
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(h),
                Err(e) => {
                    running.stop();
                    return Err(MachineError::Thread(e.to_string()));
                }
            }
        }
        Ok(running)
    }
}

/// A VM whose vCPUs run.
pub struct RunningMachine {
    shared: Arc<Shared>,
    handles: Mutex<Vec<JoinHandle<Option<kvm_ioctls::VcpuFd>>>>,
    /// Kept open as long as the vCPUs run.
    vm: VmFd,
    /// The CPUID each vCPU was given (for a snapshot).
    cpuids: Vec<CpuId>,
    mem: Mem,
    t0: Instant,
    t_spawn: Instant,
    timings: BootTimings,
}

impl fmt::Debug for RunningMachine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunningMachine")
            .field("exit", &self.exit())
            .finish_non_exhaustive()
    }
}

impl RunningMachine {
    /// Readable once the VM has stopped.
    pub fn exit_event(&self) -> &EventFd {
        &self.shared.exit_evt
    }

    /// Why the VM stopped, once it has.
    pub fn exit(&self) -> Option<VmExit> {
        self.shared
            .exit
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The boot phases; `first_run` and `total` once vCPU 0 entered KVM_RUN.
    pub fn timings(&self) -> BootTimings {
        let mut t = self.timings;
        if let Some(first) = self.shared.first_run.get() {
            t.first_run = Some(first.saturating_duration_since(self.t_spawn));
            t.total = Some(first.saturating_duration_since(self.t0));
        }
        t
    }

    /// The guest memory.
    pub fn memory(&self) -> Mem {
        self.mem.clone()
    }

    /// When [`Machine::new`] was called.
    pub fn created_at(&self) -> Instant {
        self.t0
    }

    /// When the VM ended (the first vCPU that saw the end, or `stop`).
    pub fn exited_at(&self) -> Option<Instant> {
        self.shared.exited_at.get().copied()
    }

    /// When the marker given to [`Machine::watch_serial`] went by.
    pub fn marker_seen(&self) -> Option<Instant> {
        self.shared.serial.marker_seen()
    }

    /// Block until the VM has stopped (`exit_event` readable), then join.
    pub fn wait(&self) -> VmExit {
        let mut pfd = libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(&self.shared.exit_evt),
            events: libc::POLLIN,
            revents: 0,
        };
        while self.exit().is_none() {
            // SAFETY: one valid pollfd on the stack.
            unsafe { libc::poll(&mut pfd, 1, 1000) };
        }
        self.stop();
        self.exit().unwrap_or(VmExit::Stopped)
    }

    /// Stop the vCPUs for a snapshot: each completes the exit it was in
    /// and leaves `KVM_RUN`; their threads end and hand the vCPUs back (in
    /// id order). The machine does not run again. Device workers are not
    /// touched (the caller pauses them next).
    pub fn pause(&self) -> Result<Vec<kvm_ioctls::VcpuFd>, MachineError> {
        let handles: Vec<_> =
            std::mem::take(&mut *self.handles.lock().unwrap_or_else(|e| e.into_inner()));
        if handles.is_empty() {
            return Err(MachineError::Pause("the vCPUs are not running".into()));
        }
        self.shared
            .pausing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.shared.request_stop();
        let deadline = Instant::now() + STOP_GRACE;
        while !handles.iter().all(|h| h.is_finished()) {
            if Instant::now() >= deadline {
                return Err(MachineError::Pause(
                    "a vCPU did not leave KVM_RUN in time".into(),
                ));
            }
            self.shared.request_stop();
            std::thread::sleep(Duration::from_micros(200));
        }
        let mut vcpus = Vec::with_capacity(handles.len());
        for h in handles {
            match h.join() {
                Ok(Some(v)) => vcpus.push(v),
                _ => {
                    return Err(MachineError::Pause(
                        "a vCPU thread ended without its vCPU".into(),
                    ))
                }
            }
        }
        if let Some(e) = self.exit() {
            return Err(MachineError::Pause(format!("the guest already ended: {e}")));
        }
        {
            let mut exit = self.shared.exit.lock().unwrap_or_else(|e| e.into_inner());
            *exit = Some(VmExit::Stopped);
            self.shared.exited_at.get_or_init(Instant::now);
        }
        Ok(vcpus)
    }

    /// Read the state of the paused vCPUs (from [`RunningMachine::pause`]),
    /// the irqchip, PIT, clock and serial port.
    pub fn save(
        &self,
        kvm: &Kvm,
        vcpus: &[kvm_ioctls::VcpuFd],
    ) -> Result<MachineState, MachineError> {
        let mut out = Vec::with_capacity(vcpus.len());
        for (v, cpuid) in vcpus.iter().zip(&self.cpuids) {
            out.push(state::save_vcpu(kvm, v, cpuid)?);
        }
        Ok(MachineState {
            vcpus: out,
            vm: state::save_vm(&self.vm)?,
            serial: self.shared.serial.state(),
        })
    }

    /// Kick every vCPU out of `KVM_RUN` and join their threads.
    pub fn stop(&self) {
        let handles: Vec<_> =
            std::mem::take(&mut *self.handles.lock().unwrap_or_else(|e| e.into_inner()));
        if handles.is_empty() {
            return;
        }
        self.shared.request_stop();
        // Join what has stopped within a bounded time. A vCPU thread that
        // does not come back (stuck in a device access) is left behind
        // rather than hanging the launcher: it holds only shared references
        // and ends with the process.
        let deadline = Instant::now() + STOP_GRACE;
        let mut pending = handles;
        while !pending.is_empty() && Instant::now() < deadline {
            let (done, rest): (Vec<_>, Vec<_>) = pending.into_iter().partition(|h| h.is_finished());
            for h in done {
                // A vCPU thread that panicked has nothing more to report.
                let _ = h.join();
            }
            pending = rest;
            if !pending.is_empty() {
                self.shared.request_stop();
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        {
            let mut exit = self.shared.exit.lock().unwrap_or_else(|e| e.into_inner());
            if exit.is_none() {
                *exit = Some(VmExit::Stopped);
                self.shared.exited_at.get_or_init(Instant::now);
            }
        }
        self.shared.serial.finish();
        let _ = self.shared.exit_evt.write(1);
    }
}

impl Drop for RunningMachine {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_assembly() {
        let devs = vec![
            "virtio_mmio.device=4K@0xd0000000:5".to_string(),
            "virtio_mmio.device=4K@0xd0001000:6".to_string(),
        ];
        let s = kernel_cmdline(&devs, " loglevel=8 ", &["--vm".into(), "x=1".into()]).unwrap();
        assert_eq!(
            s,
            "console=ttyS0 quiet panic=-1 reboot=t virtio_mmio.device=4K@0xd0000000:5 \
             virtio_mmio.device=4K@0xd0001000:6 loglevel=8 -- --vm x=1"
        );
        assert_eq!(kernel_cmdline(&[], "", &[]).unwrap(), BASE_CMDLINE);
        assert!(matches!(
            kernel_cmdline(&[], "", &["a b".into()]),
            Err(MachineError::InitArg(_))
        ));
        assert!(matches!(
            kernel_cmdline(&[], "", &["".into()]),
            Err(MachineError::InitArg(_))
        ));
        assert!(matches!(
            kernel_cmdline(&[], "a -- b", &[]),
            Err(MachineError::Cmdline(_))
        ));
    }

    struct Nothing;
    impl BusDevice for Nothing {
        fn read(&self, _: u64, data: &mut [u8]) {
            data.fill(0);
        }
        fn write(&self, _: u64, _: &[u8]) {}
    }

    /// Needs /dev/kvm and the installed kernel; skipped (passes) without.
    #[test]
    fn devices_get_slots_irqs_and_command_line_entries() {
        let kernel = std::path::Path::new("/usr/local/share/sandbox/kernel/vmlinux");
        let Ok(kvm) = Kvm::new() else { return };
        if !kernel.is_file() {
            return;
        }
        let cfg = MachineConfig {
            kernel: kernel.into(),
            kernel_format: kernel::Format::Elf,
            cpus: 1,
            memory_mib: 64,
            cmdline: String::new(),
            init_args: vec!["--vm".into()],
            initramfs: b"07070100".to_vec(),
            console: Console::Discard,
        };
        let mut m = Machine::new(&kvm, cfg).unwrap();
        for (i, expect) in [(0u64, 5u32), (1, 6)] {
            let slot = m
                .add_virtio_mmio(|_mem, _irq| {
                    let kick = EventFd::new(EFD_NONBLOCK).map_err(|e| e.to_string())?;
                    let dev: Arc<dyn BusDevice> = Arc::new(Nothing);
                    Ok::<_, String>((dev, vec![(0, kick)]))
                })
                .unwrap();
            assert_eq!(
                slot,
                MmioSlot {
                    base: 0xd000_0000 + i * 0x1000,
                    irq: expect
                }
            );
        }
        let err = m
            .add_virtio_mmio(|_, _| Err::<(Arc<dyn BusDevice>, Vec<(u16, EventFd)>), _>("no"))
            .unwrap_err();
        assert!(err.to_string().contains("0xd0002000: no"), "{err}");
        assert_eq!(
            m.cmdline().unwrap(),
            "console=ttyS0 quiet panic=-1 reboot=t virtio_mmio.device=4K@0xd0000000:5 \
             virtio_mmio.device=4K@0xd0001000:6 -- --vm"
        );
    }

    #[test]
    fn exits_display() {
        assert!(VmExit::Panic("Kernel panic - x".into())
            .to_string()
            .contains("Kernel panic - x"));
    }
}
