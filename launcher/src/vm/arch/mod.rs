//! The architecture-specific part of the machine. Only x86_64 exists;
//! an aarch64 module would provide the same items (`layout`, `ram_ranges`,
//! `setup_vm`, the boot loader, the vCPU setup, the serial location, the
//! device IRQ range) under `arch::aarch64`, and `current` would name it.

#[cfg(target_arch = "x86_64")]
pub mod x86_64;
#[cfg(target_arch = "x86_64")]
pub use self::x86_64 as current;
