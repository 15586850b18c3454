//! `sandbox run --vm`, from the validated spec to the command's status.
//!
//! Steps, in order (docs/vm.md repeats them):
//! 1. Check the host (`host::check`) and find the guest kernel.
//! 2. Refuse what this backend cannot enforce (`check_supported`): a
//!    feature asked for explicitly fails the run; limits under
//!    `enforce = "best-effort"` are reported as not enforced.
//! 3. Build the in-memory initramfs holding the static `sandbox-init`.
//! 4. Create the machine (memory, irqchip, vCPUs later) and its devices:
//!    virtio-rng, virtio-vsock (control channel and stdio), and one
//!    virtio-9p share per export: the host root read-only, then each
//!    volume.
//! 5. Start the vCPUs; supervise (`supervise::run`): wait for init's
//!    `Hello`, send `Start`, wait for `Started`, forward signals and
//!    window sizes, enforce `--timeout`, until init reports `Exited` and
//!    the command's output has drained, or the guest stops.
//! 6. Stop the vCPUs. Everything the VM had lives in this process, so
//!    nothing is left on the host once it exits.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use sandbox_proto::{vm as ports, InitSpec, Mount, RootSource, SysMode};

use super::machine::{Console, Machine, MachineConfig, ResumeConfig};
use super::snapshot::format::{Shape, Snapshot};
use super::snapshot::store;
use super::virtio::mmio::MmioTransport;
use super::virtio::p9::P9;
use super::virtio::rng::Rng;
use super::virtio::vsock::{Endpoint, Vsock, VsockConfig};
use super::virtio::VirtioDevice;
use super::{host, initramfs, kernel, supervise, VmError};
use crate::fs_share;
use crate::session::Outcome;
use crate::spec::{MountSpec, Network, Spec, VmBoot};

/// Guest memory when `--memory` is not given.
pub const DEFAULT_MEMORY_MIB: u32 = 512;
/// The smallest guest that boots our kernel and init with room to spare.
pub const MIN_MEMORY_MIB: u32 = 64;
/// vCPUs when `--cpus` is not given.
pub const DEFAULT_CPUS: u8 = 1;
/// The most vCPUs the MP table and IRQ layout are sized for.
pub const MAX_CPUS: u8 = 32;

/// What the VM run reports beside the outcome (for the receipt).
#[derive(Debug, Default)]
pub struct VmReport {
    pub vcpus: u8,
    pub memory_mib: u32,
    pub kernel: String,
    /// Limits skipped under best effort.
    pub not_enforced: Vec<&'static str>,
    pub enforced: Option<sandbox_proto::Enforced>,
    /// Milliseconds from the start of the launcher's VM setup to init's
    /// `Hello`, and to `Started`.
    pub boot_ms: Option<f64>,
    pub started_ms: Option<f64>,
    /// From the same start to init's `Exited`, to the end of the output's
    /// drain, and to the vCPUs' stop.
    pub exited_ms: Option<f64>,
    pub drained_ms: Option<f64>,
    pub stopped_ms: Option<f64>,
    /// The guest itself failed (kernel panic, unexpected reset, triple
    /// fault): exit status 122.
    pub guest_failed: bool,
    /// When `sandbox run` started (set by the caller), and from there to
    /// vCPU 0's first `KVM_RUN`, with the machine's own phases.
    pub launcher_t0: Option<Instant>,
    pub first_kvm_run_ms: Option<f64>,
    pub timings: Option<super::machine::BootTimings>,
    /// Setup in the guest failed (reported like the namespace backend's).
    pub start_error: Option<crate::container::StartError>,
    /// How the VM started: "cold", "resumed" (from `snapshot`), or
    /// "snapshot-created" (this shape's automatic snapshot was made
    /// first, in `snapshot_created_ms`, then resumed).
    pub boot: &'static str,
    pub snapshot: Option<String>,
    pub snapshot_created_ms: Option<f64>,
}

/// How the guest is sized.
pub fn shape(spec: &Spec) -> Result<(u8, u32), VmError> {
    let cpus = match spec.limits.cpus {
        None => DEFAULT_CPUS,
        Some(c) => {
            let n = c.ceil();
            if n > MAX_CPUS as f64 {
                return Err(VmError::Unsupported(format!(
                    "--cpus {c}: the micro-VM has at most {MAX_CPUS} vCPUs"
                )));
            }
            n.max(1.0) as u8
        }
    };
    let mib = match spec.limits.memory {
        None => DEFAULT_MEMORY_MIB,
        Some(bytes) => {
            let mib = bytes / (1 << 20);
            if mib < MIN_MEMORY_MIB as u64 {
                return Err(VmError::Unsupported(format!(
                    "--memory {bytes}: a micro-VM needs at least {MIN_MEMORY_MIB} MiB"
                )));
            }
            // The guest lives below the 32-bit MMIO window for now.
            if mib > super::memory::MAX_MIB as u64 {
                return Err(VmError::Unsupported(format!(
                    "--memory {bytes}: the micro-VM supports at most {} MiB in this version",
                    super::memory::MAX_MIB
                )));
            }
            mib as u32
        }
    };
    Ok((cpus, mib))
}

/// Options this backend does not provide, refused before anything exists.
fn check_supported(spec: &Spec) -> Result<Vec<&'static str>, VmError> {
    if spec.network == Network::Host {
        return Err(VmError::Unsupported(
            "--network host is not available with --vm (the guest has its own kernel and only \
             loopback); use the namespace backend for host networking"
                .into(),
        ));
    }
    if spec.network == Network::Nat {
        return Err(VmError::Unsupported(
            "--network nat is not available with --vm yet (the guest has no network device; \
             docs/network.md, \"The VM backend\"); use the namespace backend"
                .into(),
        ));
    }
    if spec.dynamic_user {
        return Err(VmError::Unsupported(
            "--user dynamic is not available with --vm yet; the guest is already its own \
             machine, run with the default user"
                .into(),
        ));
    }
    if spec.security_label != crate::security::selinux::LabelMode::None {
        return Err(VmError::Unsupported(format!(
            "--security-label {} is not available with --vm: the guest kernel has no SELinux \
             (its boundary is the hypervisor); use --security-label none",
            spec.security_label.as_str()
        )));
    }
    let mut skipped = Vec::new();
    for (name, asked) in [
        ("pids", spec.limits.pids.is_some()),
        ("io_weight", spec.limits.io_weight.is_some()),
    ] {
        if !asked {
            continue;
        }
        if spec.limits_best_effort {
            skipped.push(crate::receipt::limit_feature(name));
        } else {
            return Err(VmError::Unsupported(format!(
                "--{} is not enforced by the micro-VM backend in this version (--memory and \
                 --cpus size the guest); drop it, or allow best effort in the profile \
                 ([limits] enforce = \"best-effort\")",
                name.replace('_', "-")
            )));
        }
    }
    Ok(skipped)
}

/// What init is told to do in the guest.
fn guest_init_spec(spec: &Spec, shares: &[(String, usize)]) -> InitSpec {
    // The spec as the namespace backend would have it for root (init is
    // root of the guest: identity id maps, setgroups allowed), then the VM
    // differences.
    let mut s = crate::container::init_spec(spec, 0, &[]);
    s.fs.root = RootSource::Share {
        tag: ports::ROOT_TAG.into(),
    };
    s.fs.sys = SysMode::Fresh;
    s.fs.cgroup2 = false;
    s.loopback_up = true;
    for (tag, index) in shares {
        if let Some(Mount::Bind { dst, readonly, .. }) = s.fs.mounts.get(*index).cloned() {
            s.fs.mounts[*index] = Mount::Share {
                tag: tag.clone(),
                dst,
                readonly,
            };
        }
    }
    s
}

fn dup(fd: i32) -> Result<OwnedFd, VmError> {
    // SAFETY: F_DUPFD_CLOEXEC on one of our standard fds.
    let r = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if r < 0 {
        return Err(VmError::Setup(format!(
            "cannot duplicate fd {fd}: {}",
            crate::errors::io_reason(&std::io::Error::last_os_error())
        )));
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(r) })
}

/// Put one device on the machine behind a virtio-mmio transport.
/// `stop` becomes readable when the VM is torn down; each device's worker
/// then exits. The transport is returned for snapshots.
fn attach(
    machine: &mut Machine,
    dev: Box<dyn VirtioDevice>,
    stop: &EventFd,
) -> Result<Arc<MmioTransport>, VmError> {
    let stop = stop
        .try_clone()
        .map_err(|e| VmError::Setup(format!("eventfd: {}", crate::errors::io_reason(&e))))?;
    let mut out = None;
    machine
        .add_virtio_mmio(|mem, interrupt| {
            let t = MmioTransport::new(dev, mem, interrupt).map_err(|e| e.to_string())?;
            t.set_stop_event(stop);
            let kicks = t.queue_kicks().map_err(|e| crate::errors::io_reason(&e))?;
            let t = Arc::new(t);
            out = Some(t.clone());
            Ok::<_, String>((t as Arc<dyn super::bus::BusDevice>, kicks))
        })
        .map_err(VmError::from)?;
    out.ok_or_else(|| VmError::Setup("the device was not attached".into()))
}

/// The exports: the host root read-only, then each bind volume; and the
/// (tag, mount index) of each volume share.
type Exports = (Vec<(String, fs_share::Server)>, Vec<(String, usize)>);

fn open_exports(spec: &Spec) -> Result<Exports, VmError> {
    let mut shares = Vec::new();
    let mut servers = vec![(
        ports::ROOT_TAG.to_string(),
        fs_share::Server::open(std::path::Path::new("/"), true, Default::default())?,
    )];
    for (i, m) in spec.mounts.iter().enumerate() {
        if let MountSpec::Bind { src, readonly, .. } = m {
            let tag = ports::volume_tag(shares.len());
            servers.push((
                tag.clone(),
                fs_share::Server::open(src, *readonly, Default::default())?,
            ));
            shares.push((tag, i));
        }
    }
    Ok((servers, shares))
}

fn console() -> Result<Console, VmError> {
    Ok(match std::env::var_os("SANDBOX_VM_CONSOLE") {
        Some(v) if v == "stderr" => Console::Stderr,
        Some(v) if !v.is_empty() => Console::File(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&v)
                .map_err(|e| {
                    VmError::Setup(format!(
                        "SANDBOX_VM_CONSOLE={}: {}",
                        v.to_string_lossy(),
                        crate::errors::io_reason(&e)
                    ))
                })?,
        ),
        _ => Console::Discard,
    })
}

/// A started machine with what the launcher keeps of it.
struct Built {
    running: super::machine::RunningMachine,
    transports: Vec<Arc<MmioTransport>>,
    host_end: OwnedFd,
    vsock: super::virtio::vsock::VsockHandle,
    stop: EventFd,
}

/// The command's stdio for the vsock ports: the caller's, or /dev/null
/// while a snapshot is being made.
fn stdio(real: bool) -> Result<[OwnedFd; 3], VmError> {
    if real {
        return Ok([dup(0)?, dup(1)?, dup(2)?]);
    }
    let null = |write: bool| {
        std::fs::OpenOptions::new()
            .read(!write)
            .write(write)
            .open("/dev/null")
            .map(OwnedFd::from)
            .map_err(|e| VmError::Setup(format!("/dev/null: {}", crate::errors::io_reason(&e))))
    };
    Ok([null(false)?, null(true)?, null(true)?])
}

/// Add the devices (rng, vsock, the shares; this order is part of the
/// snapshot format), restore their saved state when resuming, start.
fn assemble(
    mut machine: Machine,
    servers: Vec<(String, fs_share::Server)>,
    io: [OwnedFd; 3],
    saved: Option<&[super::virtio::mmio::TransportState]>,
) -> Result<Built, VmError> {
    let (host_end, device_end) = crate::sys::socketpair()
        .map_err(|e| VmError::Setup(format!("socketpair: {}", crate::errors::io_reason(&e))))?;
    let [i0, o1, o2] = io;
    let mut vsock = Vsock::new(VsockConfig {
        guest_cid: ports::GUEST_CID as u64,
        ports: vec![
            (ports::CONTROL_PORT, Endpoint::Stream(device_end)),
            (ports::STDIN_PORT, Endpoint::Input(i0)),
            (ports::STDOUT_PORT, Endpoint::Output(o1)),
            (ports::STDERR_PORT, Endpoint::Output(o2)),
        ],
    })?;
    if saved.is_some() {
        vsock.set_resumed();
    }
    let vsock_handle = vsock.handle();
    let stop = EventFd::new(libc::EFD_NONBLOCK)
        .map_err(|e| VmError::Setup(format!("eventfd: {}", crate::errors::io_reason(&e))))?;
    let mut transports = vec![
        attach(&mut machine, Box::new(Rng::new()), &stop)?,
        attach(&mut machine, Box::new(vsock), &stop)?,
    ];
    for (tag, server) in servers {
        transports.push(attach(
            &mut machine,
            Box::new(P9::new(&tag, Box::new(server))?),
            &stop,
        )?);
    }
    if let Some(saved) = saved {
        if saved.len() != transports.len() {
            return Err(VmError::Snapshot(format!(
                "the snapshot has {} devices, this run {}",
                saved.len(),
                transports.len()
            )));
        }
        for (t, st) in transports.iter().zip(saved) {
            t.restore(st).map_err(VmError::Snapshot)?;
        }
    }
    let running = machine.start()?;
    if saved.is_some() {
        for t in &transports {
            t.resumed();
        }
    }
    Ok(Built {
        running,
        transports,
        host_end,
        vsock: vsock_handle,
        stop,
    })
}

/// A cold machine: kernel, initramfs with init, boot data.
fn cold_machine(
    kvm: &kvm_ioctls::Kvm,
    guest_kernel: &kernel::GuestKernel,
    vcpus: u8,
    memory_mib: u32,
) -> Result<Machine, VmError> {
    let init = initramfs::init_binary()?;
    let image = initramfs::build(&init)?;
    Ok(Machine::new(
        kvm,
        MachineConfig {
            kernel: guest_kernel.path.clone(),
            kernel_format: guest_kernel.format,
            cpus: vcpus,
            memory_mib,
            // Extra kernel arguments, for debugging (docs/vm.md).
            cmdline: std::env::var("SANDBOX_VM_CMDLINE").unwrap_or_default(),
            init_args: vec![ports::INIT_VM_ARG.to_string()],
            initramfs: image,
            console: console()?,
        },
    )?)
}

/// Identity of a file for a snapshot's shape: size, mtime, inode.
fn file_id(p: &std::path::Path) -> String {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(p) {
        Ok(m) => format!("{}:{}.{}:{}", m.size(), m.mtime(), m.mtime_nsec(), m.ino()),
        Err(_) => "missing".into(),
    }
}

/// The VM shape of this run (what a snapshot must match).
pub fn vm_shape(
    spec: &Spec,
    guest_kernel: &kernel::GuestKernel,
    vcpus: u8,
    memory_mib: u32,
) -> Shape {
    let init = std::env::var_os("SANDBOX_INIT")
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from)
        .or_else(|| {
            crate::initbin::candidates()
                .into_iter()
                .find(|c| c.is_file())
        });
    let volumes = spec
        .mounts
        .iter()
        .filter(|m| matches!(m, MountSpec::Bind { .. }))
        .count();
    Shape {
        cpus: vcpus,
        memory_mib,
        volumes: volumes.min(u16::MAX as usize) as u16,
        kernel: guest_kernel.path.display().to_string(),
        kernel_id: file_id(&guest_kernel.path),
        init_id: init.as_deref().map_or_else(|| "missing".into(), file_id),
        cmdline: std::env::var("SANDBOX_VM_CMDLINE").unwrap_or_default(),
        protocol: sandbox_proto::PROTOCOL_VERSION,
    }
}

/// How long a snapshot's cold boot may take to reach init's `Hello`.
const SNAPSHOT_BOOT_LIMIT: Duration = Duration::from_secs(60);

/// Boot cold to init's `Hello` and save the machine as `name`.
pub fn create_snapshot(
    kvm: &kvm_ioctls::Kvm,
    spec: &Spec,
    shape: &Shape,
    guest_kernel: &kernel::GuestKernel,
    root: &std::path::Path,
    name: &str,
) -> Result<std::path::PathBuf, VmError> {
    store::check_name(name)?;
    let (servers, _) = open_exports(spec)?;
    let machine = cold_machine(kvm, guest_kernel, shape.cpus, shape.memory_mib)?;
    let built = assemble(machine, servers, stdio(false)?, None)?;
    let mut chan = crate::chan::Channel::new(built.host_end);
    supervise::wait_hello(&mut chan, &built.running, SNAPSHOT_BOOT_LIMIT)
        .map_err(VmError::Snapshot)?;
    let vcpus = built.running.pause()?;
    let _ = built.stop.write(1);
    let devices = built
        .transports
        .iter()
        .map(|t| t.save())
        .collect::<Result<Vec<_>, _>>()
        .map_err(VmError::Snapshot)?;
    let state = built.running.save(kvm, &vcpus)?;
    let snap = Snapshot {
        shape: shape.clone(),
        created_ms: 0,
        memory_file: String::new(),
        memory_bytes: 0,
        vcpus: state.vcpus,
        vm: state.vm,
        serial: state.serial,
        devices,
    };
    let dir = store::save(root, name, snap, &built.running.memory())?;
    drop(vcpus);
    Ok(dir)
}

fn known_msrs(kvm: &kvm_ioctls::Kvm) -> Result<Vec<u32>, VmError> {
    kvm.get_msr_index_list()
        .map(|l| l.as_slice().to_vec())
        .map_err(|e| VmError::Setup(format!("KVM_GET_MSR_INDEX_LIST: {e}")))
}

/// The snapshot this run resumes, if any (see docs/snapshots.md):
/// `--from NAME`; none with `--cold`; else this shape's automatic one,
/// created on first use. A broken automatic snapshot is replaced; one
/// that cannot be made is reported and the run boots cold.
fn pick_snapshot(
    kvm: &kvm_ioctls::Kvm,
    spec: &Spec,
    shape: &Shape,
    guest_kernel: &kernel::GuestKernel,
    report: &mut VmReport,
) -> Result<Option<store::Loaded>, VmError> {
    if std::env::var_os("SANDBOX_VM_ALLOW_PVM").is_some_and(|v| v == "1") {
        // The start-up benchmark on a PVM host: nothing boots far enough.
        return Ok(None);
    }
    let msrs = known_msrs(kvm)?;
    let name = match &spec.vm_boot {
        VmBoot::Cold => return Ok(None),
        VmBoot::From(name) => {
            let l = store::load(&store::root()?, name, Some(&msrs))?;
            check_shape(name, &l.checked.snapshot.shape, shape)?;
            return Ok(Some(l));
        }
        VmBoot::Auto => shape.key(),
    };
    let root = match store::root() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sandbox: warning: {e}; booting cold");
            return Ok(None);
        }
    };
    match store::load(&root, &name, Some(&msrs)) {
        Ok(l) if l.checked.snapshot.shape == *shape => return Ok(Some(l)),
        Ok(_) | Err(store::StoreError::Missing(_)) => {}
        Err(e) => eprintln!("sandbox: warning: {e}; making it again"),
    }
    let t = Instant::now();
    match create_snapshot(kvm, spec, shape, guest_kernel, &root, &name) {
        Ok(_) => {
            report.snapshot_created_ms = Some(t.elapsed().as_secs_f64() * 1000.0);
            store::load(&root, &name, Some(&msrs))
                .map(Some)
                .or_else(|e| {
                    eprintln!("sandbox: warning: {e}; booting cold");
                    Ok(None)
                })
        }
        Err(e) => {
            eprintln!(
                "sandbox: warning: cannot make the warm snapshot of this VM shape ({e}); \
                 booting cold"
            );
            Ok(None)
        }
    }
}

/// `--from NAME` only runs in the shape the snapshot was made for.
fn check_shape(name: &str, saved: &Shape, this: &Shape) -> Result<(), VmError> {
    let diff = |what: &str, a: String, b: String| {
        Err(VmError::Unsupported(format!(
            "snapshot {name:?} was made with {what} {a}, this run has {b}; run with the same \
             options or make a snapshot for these (`sandbox snapshot create`)"
        )))
    };
    if saved.cpus != this.cpus {
        return diff("--cpus", saved.cpus.to_string(), this.cpus.to_string());
    }
    if saved.memory_mib != this.memory_mib {
        return diff(
            "--memory",
            format!("{}m", saved.memory_mib),
            format!("{}m", this.memory_mib),
        );
    }
    if saved.volumes != this.volumes {
        return diff(
            "volumes:",
            saved.volumes.to_string(),
            this.volumes.to_string(),
        );
    }
    if (&saved.kernel, &saved.kernel_id) != (&this.kernel, &this.kernel_id) {
        return diff("the kernel", saved.kernel.clone(), this.kernel.clone());
    }
    if saved != this {
        return diff(
            "another sandbox-init, protocol or SANDBOX_VM_CMDLINE:",
            format!("{}/{}", saved.init_id, saved.protocol),
            format!("{}/{}", this.init_id, this.protocol),
        );
    }
    Ok(())
}

pub fn open_kvm() -> Result<kvm_ioctls::Kvm, VmError> {
    Ok(match host::check() {
        Err(host::HostError::Pvm)
            if std::env::var_os("SANDBOX_VM_ALLOW_PVM").is_some_and(|v| v == "1") =>
        {
            eprintln!(
                "sandbox: warning: SANDBOX_VM_ALLOW_PVM=1: creating the VM on this PVM host to \
                 measure start-up; the guest cannot boot here"
            );
            host::check_allowing_pvm()?
        }
        r => r?,
    }
    .into_kvm())
}

/// The guest's shape: `--cpus`/`--memory`, or with `--from` and neither
/// given, the snapshot's.
fn run_shape(spec: &Spec) -> Result<(u8, u32), VmError> {
    if let VmBoot::From(name) = &spec.vm_boot {
        store::check_name(name)?;
        if spec.limits.cpus.is_none() && spec.limits.memory.is_none() {
            let s = store::read_state(name, &store::root()?.join(name))?;
            return Ok((s.shape.cpus, s.shape.memory_mib));
        }
    }
    shape(spec)
}

/// Run `spec` in a micro-VM; `sigfd` has the forwarded signals.
pub fn run(
    spec: &Spec,
    sigfd: &OwnedFd,
    report: &mut VmReport,
    live: Option<&mut crate::lifecycle::Live>,
) -> Result<Outcome, VmError> {
    let t0 = Instant::now();
    let kvm = open_kvm()?;
    let guest_kernel = kernel::find(spec.vm_kernel.as_deref())?;
    report.kernel = guest_kernel.path.display().to_string();
    report.not_enforced = check_supported(spec)?;
    let (vcpus, memory_mib) = run_shape(spec)?;
    report.vcpus = vcpus;
    report.memory_mib = memory_mib;
    let shape = vm_shape(spec, &guest_kernel, vcpus, memory_mib);
    let loaded = pick_snapshot(&kvm, spec, &shape, &guest_kernel, report)?;
    // The snapshot's creation is not part of this run's start-up.
    let t0 = if report.snapshot_created_ms.is_some() {
        Instant::now()
    } else {
        t0
    };

    let (servers, shares) = open_exports(spec)?;
    let mut init_spec = guest_init_spec(spec, &shares);
    init_spec.vm = Some(sandbox_proto::VmStart::default());

    let built = match loaded {
        Some(mut l) => {
            report.boot = if report.snapshot_created_ms.is_some() {
                "snapshot-created"
            } else {
                "resumed"
            };
            report.snapshot = Some(l.name.clone());
            let saved_vcpus = std::mem::take(&mut l.checked.vcpus);
            let c = &l.checked;
            let machine = Machine::resume(
                &kvm,
                ResumeConfig {
                    cpus: vcpus,
                    memory_mib,
                    memory_file: &l.memory,
                    vm: &c.vm,
                    vcpus: saved_vcpus,
                    serial: &c.snapshot.serial,
                    console: console()?,
                },
            )?;
            assemble(machine, servers, stdio(true)?, Some(&c.snapshot.devices))?
        }
        None => {
            report.boot = "cold";
            let machine = cold_machine(&kvm, &guest_kernel, vcpus, memory_mib)?;
            assemble(machine, servers, stdio(true)?, None)?
        }
    };
    let running = built.running;
    let t_machine_start = running.created_at();
    let outcome = supervise::run(supervise::Session {
        spec,
        init_spec,
        chan: crate::chan::Channel::new(built.host_end),
        vm: &running,
        vsock: &built.vsock,
        sigfd,
        t0,
        report,
        live,
        execs: Vec::new(),
    });
    running.stop();
    let _ = built.stop.write(1);
    drop(built.transports);
    report.stopped_ms = Some(t0.elapsed().as_secs_f64() * 1000.0);
    let timings = running.timings();
    if let (Some(total), Some(launcher_t0)) = (timings.total, report.launcher_t0) {
        let to_machine = t_machine_start.saturating_duration_since(launcher_t0);
        report.first_kvm_run_ms = Some((to_machine + total).as_secs_f64() * 1000.0);
    }
    report.timings = Some(timings);
    Ok(outcome)
}

/// How long to wait for the command's output to drain after it exited.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
