//! The micro-VM backend (`sandbox run --vm`): our own VMM on the rust-vmm
//! crates, in this process.
//!
//! | module | owns |
//! |--------|------|
//! | `host` | can this host boot our guest (`/dev/kvm`, API, PVM) |
//! | `kernel` | finding the guest kernel |
//! | `initramfs` | the in-memory initramfs holding the static init |
//! | `memory` | the guest memory layout |
//! | `arch` | everything x86_64-specific (boot protocol, MP table, CPUID, registers) |
//! | `machine` | the VM: KVM objects, devices on the buses, vCPU threads |
//! | `vcpu`, `serial`, `bus` | the vCPU run loop, the kernel-log UART, the buses |
//! | `virtio` | the virtio-mmio transport and the rng, vsock and 9p devices |
//! | `launch` | `sandbox run --vm` from spec to status (numbered steps) |
//! | `supervise` | the launcher's loop while the guest runs |
//!
//! See docs/vm.md.

pub mod arch;
pub mod bus;
pub mod host;
pub mod initramfs;
pub mod kernel;
pub mod launch;
pub mod machine;
pub mod memory;
pub mod serial;
pub mod snapshot;
pub mod supervise;
pub mod vcpu;
pub mod virtio;

use crate::spec::Spec;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(transparent)]
    Host(#[from] host::HostError),
    #[error(transparent)]
    Kernel(#[from] kernel::KernelError),
    #[error(transparent)]
    Initramfs(#[from] initramfs::InitramfsError),
    #[error(transparent)]
    Machine(#[from] machine::MachineError),
    #[error("host share: {0}")]
    Share(#[from] crate::fs_share::ShareError),
    #[error(transparent)]
    Vsock(#[from] virtio::vsock::VsockError),
    #[error(transparent)]
    P9(#[from] virtio::p9::P9Error),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Store(#[from] snapshot::store::StoreError),
    #[error("snapshot: {0}")]
    Snapshot(String),
}

/// Everything `--vm` can check before a VM would be created.
pub fn preflight(spec: &Spec) -> Result<(host::Kvm, kernel::GuestKernel), VmError> {
    let kvm = host::check()?;
    let kernel = kernel::find(spec.vm_kernel.as_deref())?;
    Ok((kvm, kernel))
}
