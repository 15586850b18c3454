//! Can this host boot our guest? `/dev/kvm` present, openable, the stable
//! KVM API, and not a paravirtual KVM that only runs patched guests.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

/// `KVM_GET_API_VERSION`: `_IO(0xAE, 0x00)`.
const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
/// The only stable KVM API version.
const KVM_API_VERSION: i32 = 12;

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(
        "no KVM on this host: /dev/kvm does not exist (enable virtualization in the firmware \
         and load kvm-intel or kvm-amd); the namespace backend (without --vm) needs no KVM"
    )]
    NoDevice,
    #[error(
        "no permission to use /dev/kvm: add your user to the group that owns it (usually \
         'kvm': `sudo usermod -aG kvm $USER`, then log in again)"
    )]
    NoPermission,
    #[error("cannot open /dev/kvm: {0}")]
    Open(String),
    #[error("/dev/kvm speaks KVM API {0}, but only API {KVM_API_VERSION} is supported")]
    Api(i32),
    #[error(
        "this host's KVM is PVM (paravirtualized KVM, /sys/module/kvm_pvm): it only boots \
         PVM-patched guest kernels, and the sandbox guest kernel is a standard one; run --vm \
         on a host with hardware virtualization (Intel VT-x or AMD-V), or inside the nested \
         lab: tests/lab/lab.sh --kvm -- sandbox run --vm ..."
    )]
    Pvm,
}

/// A usable KVM.
#[derive(Debug)]
pub struct Kvm {
    pub fd: OwnedFd,
    pub api_version: i32,
}

impl Kvm {
    /// The checked `/dev/kvm` as kvm-ioctls' handle.
    pub fn into_kvm(self) -> kvm_ioctls::Kvm {
        use std::os::fd::{FromRawFd, IntoRawFd};
        // SAFETY: `fd` is an open /dev/kvm descriptor that we own and hand
        // over; kvm-ioctls takes ownership and closes it.
        unsafe { kvm_ioctls::Kvm::from_raw_fd(self.fd.into_raw_fd()) }
    }
}

/// Check `/dev/kvm` for a standard guest.
pub fn check() -> Result<Kvm, HostError> {
    check_at(Path::new("/dev/kvm"), Path::new("/sys/module"))
}

/// [`check`] with the paths injectable (unit tests).
pub fn check_at(dev: &Path, modules: &Path) -> Result<Kvm, HostError> {
    let file = match std::fs::OpenOptions::new().read(true).write(true).open(dev) {
        Ok(f) => f,
        Err(e) => {
            return Err(match e.kind() {
                std::io::ErrorKind::NotFound => HostError::NoDevice,
                std::io::ErrorKind::PermissionDenied => HostError::NoPermission,
                _ => HostError::Open(crate::errors::io_reason(&e)),
            })
        }
    };
    let fd = OwnedFd::from(file);
    // SAFETY: KVM_GET_API_VERSION takes no argument and only returns an int.
    let api = unsafe { libc::ioctl(fd.as_raw_fd(), KVM_GET_API_VERSION as _, 0) };
    if api != KVM_API_VERSION {
        return Err(HostError::Api(api));
    }
    // A PVM host module answers the same ioctls, so it is recognised by
    // the module itself.
    if modules.join("kvm_pvm").exists() {
        return Err(HostError::Pvm);
    }
    Ok(Kvm {
        fd,
        api_version: api,
    })
}

/// `/dev/kvm` even on a PVM host, for the start-up benchmark only
/// (`SANDBOX_VM_ALLOW_PVM=1`, bench/vm-native.sh): the VM is created and
/// entered, but a standard guest cannot boot there.
pub fn check_allowing_pvm() -> Result<Kvm, HostError> {
    check_at(Path::new("/dev/kvm"), Path::new("/nonexistent-module-dir"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_device_is_reported() {
        let err = check_at(Path::new("/nonexistent/kvm"), Path::new("/sys/module")).unwrap_err();
        assert!(matches!(err, HostError::NoDevice));
        assert!(err.to_string().contains("without --vm"));
    }

    #[test]
    fn a_non_kvm_device_is_not_taken_for_kvm() {
        // /dev/null opens but answers no KVM ioctl.
        let err = check_at(Path::new("/dev/null"), Path::new("/sys/module")).unwrap_err();
        assert!(matches!(err, HostError::Api(_)), "{err}");
    }
}
