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

use super::machine::{Console, Machine, MachineConfig};
use super::virtio::mmio::MmioTransport;
use super::virtio::p9::P9;
use super::virtio::rng::Rng;
use super::virtio::vsock::{Endpoint, Vsock, VsockConfig};
use super::virtio::VirtioDevice;
use super::{host, initramfs, kernel, supervise, VmError};
use crate::fs_share;
use crate::session::Outcome;
use crate::spec::{MountSpec, Network, Spec};

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
}

/// How the guest is sized.
fn shape(spec: &Spec) -> Result<(u8, u32), VmError> {
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
/// then exits.
fn attach(
    machine: &mut Machine,
    dev: Box<dyn VirtioDevice>,
    stop: &EventFd,
) -> Result<(), VmError> {
    let stop = stop
        .try_clone()
        .map_err(|e| VmError::Setup(format!("eventfd: {}", crate::errors::io_reason(&e))))?;
    machine
        .add_virtio_mmio(move |mem, interrupt| {
            let t = MmioTransport::new(dev, mem, interrupt).map_err(|e| e.to_string())?;
            t.set_stop_event(stop);
            let kicks = t.queue_kicks().map_err(|e| crate::errors::io_reason(&e))?;
            Ok::<_, String>((Arc::new(t) as Arc<dyn super::bus::BusDevice>, kicks))
        })
        .map(|_slot| ())
        .map_err(VmError::from)
}

/// Run `spec` in a micro-VM; `sigfd` has the forwarded signals.
pub fn run(spec: &Spec, sigfd: &OwnedFd, report: &mut VmReport) -> Result<Outcome, VmError> {
    let t0 = Instant::now();
    let kvm = match host::check() {
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
    .into_kvm();
    let guest_kernel = kernel::find(spec.vm_kernel.as_deref())?;
    report.kernel = guest_kernel.path.display().to_string();
    report.not_enforced = check_supported(spec)?;
    let (vcpus, memory_mib) = shape(spec)?;
    report.vcpus = vcpus;
    report.memory_mib = memory_mib;

    let init = initramfs::init_binary()?;
    let image = initramfs::build(&init)?;

    // The exports: the host root read-only, then each bind volume.
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
    let init_spec = guest_init_spec(spec, &shares);

    let (host_end, device_end) = crate::sys::socketpair()
        .map_err(|e| VmError::Setup(format!("socketpair: {}", crate::errors::io_reason(&e))))?;
    let vsock = Vsock::new(VsockConfig {
        guest_cid: ports::GUEST_CID as u64,
        ports: vec![
            (ports::CONTROL_PORT, Endpoint::Stream(device_end)),
            (ports::STDIN_PORT, Endpoint::Input(dup(0)?)),
            (ports::STDOUT_PORT, Endpoint::Output(dup(1)?)),
            (ports::STDERR_PORT, Endpoint::Output(dup(2)?)),
        ],
    })?;
    let vsock_handle = vsock.handle();

    let console = match std::env::var_os("SANDBOX_VM_CONSOLE") {
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
    };
    let mut machine = Machine::new(
        &kvm,
        MachineConfig {
            kernel: guest_kernel.path.clone(),
            kernel_format: guest_kernel.format,
            cpus: vcpus,
            memory_mib,
            // Extra kernel arguments, for debugging (docs/vm.md).
            cmdline: std::env::var("SANDBOX_VM_CMDLINE").unwrap_or_default(),
            init_args: vec![ports::INIT_VM_ARG.to_string()],
            initramfs: image,
            console,
        },
    )?;
    let stop = EventFd::new(libc::EFD_NONBLOCK)
        .map_err(|e| VmError::Setup(format!("eventfd: {}", crate::errors::io_reason(&e))))?;
    attach(&mut machine, Box::new(Rng::new()), &stop)?;
    attach(&mut machine, Box::new(vsock), &stop)?;
    for (tag, server) in servers {
        attach(
            &mut machine,
            Box::new(P9::new(&tag, Box::new(server))?),
            &stop,
        )?;
    }
    let running = machine.start()?;
    let t_machine_start = running.created_at();
    let outcome = supervise::run(supervise::Session {
        spec,
        init_spec,
        chan: crate::chan::Channel::new(host_end),
        vm: &running,
        vsock: &vsock_handle,
        sigfd,
        t0,
        report,
    });
    running.stop();
    let _ = stop.write(1);
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
