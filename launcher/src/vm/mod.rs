//! The micro-VM backend (`sandbox run --vm`).
//!
//! This version has the host checks only: whether `/dev/kvm` can boot our
//! standard guest kernel here, and where that kernel is. The VMM itself
//! (rust-vmm based, virtio-mmio devices, in-process file share, vsock) is
//! being built next; until then `--vm` stops after the checks with exit
//! status 125 and says so. See docs/vm.md.

pub mod bus;
pub mod host;
pub mod kernel;
pub mod virtio;
// The machine (VMM core).
pub mod arch;
pub mod machine;
pub mod memory;
pub mod serial;
pub mod vcpu;

use crate::spec::Spec;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(transparent)]
    Host(#[from] host::HostError),
    #[error(transparent)]
    Kernel(#[from] kernel::KernelError),
    #[error(
        "the micro-VM backend is not implemented in this version (KVM {api} and the kernel \
         {kernel} are usable); run without --vm for the namespace backend"
    )]
    NotImplemented { api: i32, kernel: String },
}

/// Everything `--vm` can check before a VM would be created.
pub fn preflight(spec: &Spec) -> Result<(host::Kvm, kernel::GuestKernel), VmError> {
    let kvm = host::check()?;
    let kernel = kernel::find(spec.vm_kernel.as_deref())?;
    Ok((kvm, kernel))
}

/// Run `spec` in a micro-VM.
pub fn run(spec: &Spec) -> Result<std::convert::Infallible, VmError> {
    let (kvm, kernel) = preflight(spec)?;
    Err(VmError::NotImplemented {
        api: kvm.api_version,
        kernel: kernel.path.display().to_string(),
    })
}
