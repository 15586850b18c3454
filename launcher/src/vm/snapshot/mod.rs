//! Snapshots of micro-VMs and resuming from them (docs/snapshots.md).
//!
//! | module | owns |
//! |--------|------|
//! | `format` | the state file: contents, encoding, every check on read |
//! | `store` | the snapshot directory: names, atomic writes, the memory file, list and remove |
//!
//! The machine side (pausing vCPUs, reading and restoring KVM state) is in
//! `machine`, `vcpu` and `arch::x86_64::state`; the devices' side in
//! `virtio::mmio` (`TransportState`) and each device's `pause`.

pub mod cmd;
pub mod format;
pub mod store;
pub mod synthetic;
