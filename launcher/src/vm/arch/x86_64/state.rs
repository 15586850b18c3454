//! Saving and restoring the x86_64 KVM state of a paused machine, for
//! snapshots (docs/snapshots.md): per vCPU the CPUID it was given, general
//! and special registers, the XSAVE area (FPU/SSE/AVX state), XCRs, debug
//! registers, MSRs, the local APIC, the MP state and the pending events;
//! per VM the two PICs, the I/O APIC, the PIT and kvmclock.
//!
//! KVM structures are kept as their raw bytes ([`Blob`]): they are plain C
//! structures of integers in which every bit pattern is a value KVM itself
//! checks on `KVM_SET_*` (a guest can put any of them in its own
//! registers). What the VMM must check itself is checked on restore: each
//! blob's exact size, the number of entries of the variable-length lists
//! (CPUID, MSRs), and that every MSR is one this host's KVM saves.
//!
//! Order of restore (as KVM needs it): VM-wide PIT, clock, irqchips
//! before the vCPUs; per vCPU CPUID, MP state, registers, special
//! registers, XSAVE, XCRs, debug registers, LAPIC, MSRs, events.

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid_entry2, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state,
    kvm_msr_entry, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
    CpuId, Msrs, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};

/// Most CPUID entries KVM accepts (`KVM_MAX_CPUID_ENTRIES`).
pub const MAX_CPUID_ENTRIES: usize = 256;
/// Most MSRs a vCPU state may carry.
pub const MAX_MSRS: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{what} failed: {err}")]
    Kvm {
        what: &'static str,
        err: kvm_ioctls::Error,
    },
    #[error("{what} is {got} bytes long; this build's KVM structure has {want}")]
    Size {
        what: &'static str,
        got: usize,
        want: usize,
    },
    #[error("{what} has {got} entries; at most {max} are accepted")]
    Count {
        what: &'static str,
        got: usize,
        max: usize,
    },
    #[error("MSR {0:#x} is not one this host's KVM saves and restores")]
    UnknownMsr(u32),
    #[error("KVM restored only {set} of {total} MSRs (the first refused is {first:#x})")]
    Msrs {
        set: usize,
        total: usize,
        first: u32,
    },
}

fn ioctl(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> StateError {
    move |err| StateError::Kvm { what, err }
}

/// KVM structures that are plain old data: every bit pattern is a value.
///
/// # Safety
/// Implementors must be `repr(C)` structures of integers, arrays of
/// integers and unions thereof, without padding that matters and without
/// pointers.
unsafe trait Pod: Default {}
// SAFETY: all of these are bindgen'd C structures of integers (and unions
// of them), with no pointers.
unsafe impl Pod for kvm_regs {}
// SAFETY: as above.
unsafe impl Pod for kvm_sregs {}
// SAFETY: as above.
unsafe impl Pod for kvm_xsave {}
// SAFETY: as above.
unsafe impl Pod for kvm_xcrs {}
// SAFETY: as above.
unsafe impl Pod for kvm_debugregs {}
// SAFETY: as above.
unsafe impl Pod for kvm_lapic_state {}
// SAFETY: as above.
unsafe impl Pod for kvm_mp_state {}
// SAFETY: as above.
unsafe impl Pod for kvm_vcpu_events {}
// SAFETY: as above.
unsafe impl Pod for kvm_irqchip {}
// SAFETY: as above.
unsafe impl Pod for kvm_pit_state2 {}
// SAFETY: as above.
unsafe impl Pod for kvm_clock_data {}
// SAFETY: as above.
unsafe impl Pod for kvm_cpuid_entry2 {}

/// The raw bytes of one KVM structure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Blob(pub Vec<u8>);

impl Blob {
    fn of<T: Pod>(v: &T) -> Blob {
        let size = std::mem::size_of::<T>();
        let mut out = vec![0u8; size];
        // SAFETY: `v` is a valid `T` of `size` bytes (Pod: no pointers);
        // the destination has exactly `size` bytes.
        unsafe {
            std::ptr::copy_nonoverlapping((v as *const T).cast::<u8>(), out.as_mut_ptr(), size)
        };
        Blob(out)
    }

    fn get<T: Pod>(&self, what: &'static str) -> Result<T, StateError> {
        let want = std::mem::size_of::<T>();
        if self.0.len() != want {
            return Err(StateError::Size {
                what,
                got: self.0.len(),
                want,
            });
        }
        let mut v = T::default();
        // SAFETY: exactly `want` bytes into a `T`, for which every bit
        // pattern is valid (Pod).
        unsafe {
            std::ptr::copy_nonoverlapping(self.0.as_ptr(), (&mut v as *mut T).cast::<u8>(), want)
        };
        Ok(v)
    }
}

/// One vCPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct VcpuState {
    pub cpuid: Vec<Blob>,
    pub regs: Blob,
    pub sregs: Blob,
    pub xsave: Blob,
    pub xcrs: Blob,
    pub debugregs: Blob,
    pub lapic: Blob,
    pub mp_state: Blob,
    pub events: Blob,
    /// (index, value).
    pub msrs: Vec<(u32, u64)>,
}

/// The VM-wide state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct VmState {
    pub pic_master: Blob,
    pub pic_slave: Blob,
    pub ioapic: Blob,
    pub pit: Blob,
    pub clock: Blob,
}

/// The MSRs to save: every one KVM lists, read in chunks (a refused MSR
/// is skipped).
pub fn save_msrs(kvm: &Kvm, vcpu: &VcpuFd) -> Result<Vec<(u32, u64)>, StateError> {
    let list = kvm
        .get_msr_index_list()
        .map_err(ioctl("KVM_GET_MSR_INDEX_LIST"))?;
    let mut indices: Vec<u32> = list.as_slice().to_vec();
    let mut out = Vec::with_capacity(indices.len());
    while !indices.is_empty() {
        let entries: Vec<kvm_msr_entry> = indices
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| StateError::Count {
            what: "the MSR list",
            got: entries.len(),
            max: MAX_MSRS,
        })?;
        let n = vcpu.get_msrs(&mut msrs).map_err(ioctl("KVM_GET_MSRS"))?;
        out.extend(msrs.as_slice()[..n].iter().map(|e| (e.index, e.data)));
        // The first one not read is refused: skip it, go on after it.
        indices.drain(..(n + 1).min(indices.len()));
    }
    Ok(out)
}

/// Read one paused vCPU's state (its thread has left `KVM_RUN` after
/// completing any pending I/O).
pub fn save_vcpu(kvm: &Kvm, vcpu: &VcpuFd, cpuid: &CpuId) -> Result<VcpuState, StateError> {
    Ok(VcpuState {
        cpuid: cpuid.as_slice().iter().map(Blob::of).collect(),
        mp_state: Blob::of(&vcpu.get_mp_state().map_err(ioctl("KVM_GET_MP_STATE"))?),
        regs: Blob::of(&vcpu.get_regs().map_err(ioctl("KVM_GET_REGS"))?),
        sregs: Blob::of(&vcpu.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?),
        xsave: Blob::of(&vcpu.get_xsave().map_err(ioctl("KVM_GET_XSAVE"))?),
        xcrs: Blob::of(&vcpu.get_xcrs().map_err(ioctl("KVM_GET_XCRS"))?),
        debugregs: Blob::of(&vcpu.get_debug_regs().map_err(ioctl("KVM_GET_DEBUGREGS"))?),
        lapic: Blob::of(&vcpu.get_lapic().map_err(ioctl("KVM_GET_LAPIC"))?),
        events: Blob::of(
            &vcpu
                .get_vcpu_events()
                .map_err(ioctl("KVM_GET_VCPU_EVENTS"))?,
        ),
        msrs: save_msrs(kvm, vcpu)?,
    })
}

/// A vCPU state whose parts all have the right sizes and counts, and
/// whose MSRs this host knows: ready for [`restore_vcpu`].
#[derive(Debug)]
pub struct CheckedVcpu {
    cpuid: CpuId,
    regs: kvm_regs,
    sregs: kvm_sregs,
    xsave: kvm_xsave,
    xcrs: kvm_xcrs,
    debugregs: kvm_debugregs,
    lapic: kvm_lapic_state,
    mp_state: kvm_mp_state,
    events: kvm_vcpu_events,
    msrs: Msrs,
}

impl CheckedVcpu {
    pub fn cpuid(&self) -> &CpuId {
        &self.cpuid
    }
}

/// Check everything [`restore_vcpu`] will hand to KVM. `known_msrs`:
/// this host's `KVM_GET_MSR_INDEX_LIST` (`None` skips that check, for
/// the file checks that run without KVM).
pub fn check_vcpu(s: &VcpuState, known_msrs: Option<&[u32]>) -> Result<CheckedVcpu, StateError> {
    if s.cpuid.is_empty() || s.cpuid.len() > MAX_CPUID_ENTRIES {
        return Err(StateError::Count {
            what: "the CPUID table",
            got: s.cpuid.len(),
            max: MAX_CPUID_ENTRIES,
        });
    }
    if s.msrs.len() > MAX_MSRS {
        return Err(StateError::Count {
            what: "the MSR list",
            got: s.msrs.len(),
            max: MAX_MSRS,
        });
    }
    let entries = s
        .cpuid
        .iter()
        .map(|b| b.get::<kvm_cpuid_entry2>("a CPUID entry"))
        .collect::<Result<Vec<_>, _>>()?;
    let cpuid = CpuId::from_entries(&entries).map_err(|_| StateError::Count {
        what: "the CPUID table",
        got: entries.len(),
        max: MAX_CPUID_ENTRIES,
    })?;
    if let Some(known) = known_msrs {
        let mut sorted = known.to_vec();
        sorted.sort_unstable();
        if let Some((i, _)) = s
            .msrs
            .iter()
            .find(|(i, _)| sorted.binary_search(i).is_err())
        {
            return Err(StateError::UnknownMsr(*i));
        }
    }
    let msr_entries: Vec<kvm_msr_entry> = s
        .msrs
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&msr_entries).map_err(|_| StateError::Count {
        what: "the MSR list",
        got: msr_entries.len(),
        max: MAX_MSRS,
    })?;
    Ok(CheckedVcpu {
        cpuid,
        regs: s.regs.get("the general registers")?,
        sregs: s.sregs.get("the special registers")?,
        xsave: s.xsave.get("the XSAVE area")?,
        xcrs: s.xcrs.get("the XCRs")?,
        debugregs: s.debugregs.get("the debug registers")?,
        lapic: s.lapic.get("the local APIC")?,
        mp_state: s.mp_state.get("the MP state")?,
        events: s.events.get("the vCPU events")?,
        msrs,
    })
}

/// Put a checked state into a fresh vCPU (before its first `KVM_RUN`).
pub fn restore_vcpu(vcpu: &VcpuFd, s: &CheckedVcpu) -> Result<(), StateError> {
    vcpu.set_cpuid2(&s.cpuid).map_err(ioctl("KVM_SET_CPUID2"))?;
    vcpu.set_mp_state(s.mp_state)
        .map_err(ioctl("KVM_SET_MP_STATE"))?;
    vcpu.set_regs(&s.regs).map_err(ioctl("KVM_SET_REGS"))?;
    vcpu.set_sregs(&s.sregs).map_err(ioctl("KVM_SET_SREGS"))?;
    // SAFETY: `xsave` is a whole kvm_xsave (4 KiB), the size KVM_SET_XSAVE
    // reads; CPUID was set first, so KVM knows the guest's XSAVE layout.
    unsafe { vcpu.set_xsave(&s.xsave) }.map_err(ioctl("KVM_SET_XSAVE"))?;
    vcpu.set_xcrs(&s.xcrs).map_err(ioctl("KVM_SET_XCRS"))?;
    vcpu.set_debug_regs(&s.debugregs)
        .map_err(ioctl("KVM_SET_DEBUGREGS"))?;
    vcpu.set_lapic(&s.lapic).map_err(ioctl("KVM_SET_LAPIC"))?;
    let set = vcpu.set_msrs(&s.msrs).map_err(ioctl("KVM_SET_MSRS"))?;
    let all = s.msrs.as_slice();
    if set != all.len() {
        return Err(StateError::Msrs {
            set,
            total: all.len(),
            first: all.get(set).map_or(0, |e| e.index),
        });
    }
    vcpu.set_vcpu_events(&s.events)
        .map_err(ioctl("KVM_SET_VCPU_EVENTS"))?;
    Ok(())
}

fn get_chip(vm: &VmFd, chip_id: u32) -> Result<Blob, StateError> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm.get_irqchip(&mut chip)
        .map_err(ioctl("KVM_GET_IRQCHIP"))?;
    Ok(Blob::of(&chip))
}

/// Read the VM-wide state (the vCPUs are paused).
pub fn save_vm(vm: &VmFd) -> Result<VmState, StateError> {
    Ok(VmState {
        pic_master: get_chip(vm, KVM_IRQCHIP_PIC_MASTER)?,
        pic_slave: get_chip(vm, KVM_IRQCHIP_PIC_SLAVE)?,
        ioapic: get_chip(vm, KVM_IRQCHIP_IOAPIC)?,
        pit: Blob::of(&vm.get_pit2().map_err(ioctl("KVM_GET_PIT2"))?),
        clock: Blob::of(&vm.get_clock().map_err(ioctl("KVM_GET_CLOCK"))?),
    })
}

/// The VM-wide state, checked.
#[derive(Debug)]
pub struct CheckedVm {
    chips: [kvm_irqchip; 3],
    pit: kvm_pit_state2,
    clock: kvm_clock_data,
}

pub fn check_vm(s: &VmState) -> Result<CheckedVm, StateError> {
    let chip = |b: &Blob, id: u32, what: &'static str| -> Result<kvm_irqchip, StateError> {
        let mut c: kvm_irqchip = b.get(what)?;
        // The chip id says which chip KVM_SET_IRQCHIP writes: it is ours
        // to choose, never the file's.
        c.chip_id = id;
        Ok(c)
    };
    let mut clock: kvm_clock_data = s.clock.get("kvmclock")?;
    // Only the clock value is restored (flags such as KVM_CLOCK_REALTIME
    // would make KVM adjust it from host time fields of the file).
    clock.flags = 0;
    Ok(CheckedVm {
        chips: [
            chip(&s.pic_master, KVM_IRQCHIP_PIC_MASTER, "the master PIC")?,
            chip(&s.pic_slave, KVM_IRQCHIP_PIC_SLAVE, "the slave PIC")?,
            chip(&s.ioapic, KVM_IRQCHIP_IOAPIC, "the I/O APIC")?,
        ],
        pit: s.pit.get("the PIT")?,
        clock,
    })
}

/// Restore the VM-wide state (after `setup_vm`, before the vCPUs).
pub fn restore_vm(vm: &VmFd, s: &CheckedVm) -> Result<(), StateError> {
    vm.set_pit2(&s.pit).map_err(ioctl("KVM_SET_PIT2"))?;
    vm.set_clock(&s.clock).map_err(ioctl("KVM_SET_CLOCK"))?;
    for c in &s.chips {
        vm.set_irqchip(c).map_err(ioctl("KVM_SET_IRQCHIP"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_round_trip_and_sizes_are_checked() {
        let r = kvm_regs {
            rip: 0x1234,
            rax: 7,
            ..Default::default()
        };
        let b = Blob::of(&r);
        assert_eq!(b.0.len(), std::mem::size_of::<kvm_regs>());
        let back: kvm_regs = b.get("regs").unwrap();
        assert_eq!(back.rip, 0x1234);
        let mut short = b.clone();
        short.0.pop();
        assert!(matches!(
            short.get::<kvm_regs>("regs"),
            Err(StateError::Size { .. })
        ));
    }

    #[test]
    fn vcpu_checks() {
        let good = VcpuState {
            cpuid: vec![Blob::of(&kvm_cpuid_entry2::default())],
            regs: Blob::of(&kvm_regs::default()),
            sregs: Blob::of(&kvm_sregs::default()),
            xsave: Blob::of(&kvm_xsave::default()),
            xcrs: Blob::of(&kvm_xcrs::default()),
            debugregs: Blob::of(&kvm_debugregs::default()),
            lapic: Blob::of(&kvm_lapic_state::default()),
            mp_state: Blob::of(&kvm_mp_state::default()),
            events: Blob::of(&kvm_vcpu_events::default()),
            msrs: vec![(0x10, 5)],
        };
        assert!(check_vcpu(&good, Some(&[0x10])).is_ok());
        let e = check_vcpu(&good, Some(&[0x11])).unwrap_err();
        assert!(matches!(e, StateError::UnknownMsr(0x10)), "{e}");
        let mut bad = good.clone();
        bad.cpuid.clear();
        assert!(check_vcpu(&bad, None).is_err());
        let mut bad = good.clone();
        bad.msrs = vec![(1, 1); MAX_MSRS + 1];
        assert!(check_vcpu(&bad, None).is_err());
        let mut bad = good;
        bad.lapic.0.truncate(10);
        let e = check_vcpu(&bad, None).unwrap_err();
        assert!(e.to_string().contains("local APIC"), "{e}");
    }
}
