//! The CPUID each vCPU sees: what KVM supports (`KVM_GET_SUPPORTED_CPUID`),
//! with the per-vCPU APIC ids (leaf 1 and the x2APIC topology leaves 0xB
//! and 0x1F), the hypervisor bit, and the KVM paravirtual leaves
//! (0x4000_0000 signature, 0x4000_0001 features: kvmclock and friends)
//! made sure to be there, and the TSC-deadline timer advertised when KVM
//! emulates it (KVM reports it as a capability, not in the supported
//! CPUID): with it the guest kernel skips calibrating the local APIC timer
//! against the PIT, which takes about 100 ms of guest time.

use kvm_bindings::{
    kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::Kvm;

const KVM_SIGNATURE_LEAF: u32 = 0x4000_0000;
const KVM_FEATURES_LEAF: u32 = 0x4000_0001;
/// "KVMKVMKVM\0\0\0" as ebx, ecx, edx.
const KVM_SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d];
const ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 ECX: VMX (Intel virtualization). The sandbox guest gets no
/// nested virtualization: no guest hypervisor, no extra attack surface.
const ECX_VMX: u32 = 1 << 5;
/// Leaf 0x8000_0001 ECX: SVM (AMD virtualization).
const ECX_SVM: u32 = 1 << 2;
const EDX_HTT: u32 = 1 << 28;
/// Leaf 1 ECX: the local APIC timer has a TSC-deadline mode.
const ECX_TSC_DEADLINE: u32 = 1 << 24;

#[derive(Debug, thiserror::Error)]
pub enum CpuidError {
    #[error("KVM_GET_SUPPORTED_CPUID failed: {0}")]
    Get(kvm_ioctls::Error),
    #[error("the CPUID table is full ({KVM_MAX_CPUID_ENTRIES} entries); cannot add leaf {0:#x}")]
    Full(u32),
}

/// What KVM supports, with the KVM leaves present.
pub fn supported(kvm: &Kvm) -> Result<CpuId, CpuidError> {
    let mut c = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(CpuidError::Get)?;
    if !c
        .as_slice()
        .iter()
        .any(|e| e.function == KVM_SIGNATURE_LEAF)
    {
        let e = kvm_cpuid_entry2 {
            function: KVM_SIGNATURE_LEAF,
            eax: KVM_FEATURES_LEAF,
            ..Default::default()
        };
        c.push(e)
            .map_err(|_| CpuidError::Full(KVM_SIGNATURE_LEAF))?;
    }
    if !c.as_slice().iter().any(|e| e.function == KVM_FEATURES_LEAF) {
        let e = kvm_cpuid_entry2 {
            function: KVM_FEATURES_LEAF,
            ..Default::default()
        };
        c.push(e).map_err(|_| CpuidError::Full(KVM_FEATURES_LEAF))?;
    }
    if kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer) {
        advertise_tsc_deadline(c.as_mut_slice());
    }
    Ok(c)
}

/// Set the TSC-deadline bit in leaf 1 (only called when KVM emulates it).
fn advertise_tsc_deadline(entries: &mut [kvm_cpuid_entry2]) {
    for e in entries.iter_mut().filter(|e| e.function == 1) {
        e.ecx |= ECX_TSC_DEADLINE;
    }
}

/// Bits needed to number `n` items (x2APIC id shift width).
fn shift_for(n: u32) -> u32 {
    32 - n.saturating_sub(1).leading_zeros()
}

/// Make `entries` those of vCPU `id` of `cpus` (one core per vCPU, one
/// thread per core, one package).
pub fn patch(entries: &mut [kvm_cpuid_entry2], id: u8, cpus: u8) {
    let cpus = u32::from(cpus.max(1));
    let id32 = u32::from(id);
    for e in entries.iter_mut() {
        match e.function {
            1 => {
                // EBX: APIC id [31:24], logical processors [23:16],
                // CLFLUSH line size in 8-byte units [15:8].
                e.ebx = (id32 << 24) | (cpus.min(255) << 16) | (8 << 8) | (e.ebx & 0xff);
                e.ecx |= ECX_HYPERVISOR;
                e.ecx &= !ECX_VMX;
                if cpus > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            0x8000_0001 => e.ecx &= !ECX_SVM,
            // SVM feature leaf: nothing to advertise without SVM.
            0x8000_000a => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            4 => {
                // Cores per package - 1 [31:26]; threads sharing the cache - 1
                // [25:14] = 0 (one thread per core).
                e.eax = (e.eax & 0x3fff) | ((cpus - 1).min(63) << 26);
            }
            0xb | 0x1f => {
                // Level 0: SMT, one thread per core; level 1: cores.
                e.edx = id32;
                e.flags |= KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = 1 << 8;
                    }
                    1 => {
                        e.eax = shift_for(cpus);
                        e.ebx = cpus;
                        e.ecx = (2 << 8) | 1;
                    }
                    n => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = n & 0xff;
                    }
                }
            }
            KVM_SIGNATURE_LEAF => {
                e.eax = e.eax.max(KVM_FEATURES_LEAF);
                [e.ebx, e.ecx, e.edx] = KVM_SIGNATURE;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsc_deadline_goes_into_leaf_1_only() {
        let mut v = vec![leaf(1, 0), leaf(7, 0)];
        advertise_tsc_deadline(&mut v);
        assert_eq!(v[0].ecx & ECX_TSC_DEADLINE, ECX_TSC_DEADLINE);
        assert_eq!(v[1].ecx, 0);
    }

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ebx: 0x00ff_00aa,
            edx: EDX_HTT,
            ..Default::default()
        }
    }

    #[test]
    fn no_nested_virtualization_is_advertised() {
        let mut e = vec![
            kvm_cpuid_entry2 {
                function: 1,
                ecx: ECX_VMX | 1,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0x8000_0001,
                ecx: ECX_SVM | 1,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0x8000_000a,
                eax: 1,
                ebx: 0x8000,
                edx: 0xff,
                ..Default::default()
            },
        ];
        patch(&mut e, 0, 1);
        assert_eq!(e[0].ecx & ECX_VMX, 0);
        assert_eq!(e[0].ecx & 1, 1, "other bits stay");
        assert_eq!(e[1].ecx, 1);
        assert_eq!((e[2].eax, e[2].ebx, e[2].edx), (0, 0, 0));
    }

    #[test]
    fn apic_ids_and_topology() {
        let base = vec![
            leaf(1, 0),
            leaf(4, 0),
            leaf(0xb, 0),
            leaf(0xb, 1),
            leaf(0xb, 2),
            leaf(KVM_SIGNATURE_LEAF, 0),
        ];
        let mut e = base.clone();
        patch(&mut e, 3, 4);
        assert_eq!(e[0].ebx >> 24, 3);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_eq!(e[0].ebx & 0xff, 0xaa);
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e[0].edx & EDX_HTT, 0);
        assert_eq!(e[1].eax >> 26, 3);
        assert_eq!((e[2].edx, e[2].ebx, e[2].ecx), (3, 1, 1 << 8));
        assert_eq!((e[3].edx, e[3].eax, e[3].ebx, e[3].ecx), (3, 2, 4, 0x201));
        assert_eq!((e[4].ebx, e[4].ecx), (0, 2));
        assert_eq!([e[5].ebx, e[5].ecx, e[5].edx], KVM_SIGNATURE);
        assert_eq!(e[5].eax, KVM_FEATURES_LEAF);

        let mut one = base;
        patch(&mut one, 0, 1);
        assert_eq!(one[0].ebx >> 24, 0);
        assert_eq!(one[0].edx & EDX_HTT, 0);
        assert_eq!(one[3].eax, 0);
    }

    #[test]
    fn shifts() {
        assert_eq!(shift_for(1), 0);
        assert_eq!(shift_for(2), 1);
        assert_eq!(shift_for(3), 2);
        assert_eq!(shift_for(4), 2);
        assert_eq!(shift_for(5), 3);
    }
}
