//! The initial state of the vCPUs: the GDT and identity page tables in
//! guest memory, segment and control registers for 64-bit long mode,
//! general registers (entry point, stack, zero page in `rsi`), FPU, the
//! boot MSRs, and the local APIC's LINT0 (ExtINT) and LINT1 (NMI).
//!
//! Only the bootstrap vCPU gets the boot registers: with the in-kernel
//! LAPIC, the others wait for INIT/SIPI from the guest, which resets them.

use kvm_bindings::{
    kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, Msrs,
};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};

use super::layout::*;
use crate::vm::virtio::Mem;

#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    #[error("cannot write {what} to guest memory: {reason}")]
    Write { what: &'static str, reason: String },
    #[error("vCPU {vcpu}: {what} failed: {err}")]
    Kvm {
        vcpu: u8,
        what: &'static str,
        err: kvm_ioctls::Error,
    },
    #[error("vCPU {vcpu}: KVM accepted only {set} of the {total} boot MSRs (the first refused is {first:#x})")]
    Msrs {
        vcpu: u8,
        set: usize,
        total: usize,
        first: u32,
    },
}

/// GDT access/flags words (the high 16 bits of a descriptor's second
/// dword, without base and limit): 64-bit code, data, 64-bit TSS.
const CODE64: u16 = 0xa09b;
const DATA: u16 = 0xc093;
const TSS: u16 = 0x808b;

/// One GDT descriptor from its flags, base and 20-bit limit.
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let (flags, base, limit) = (u64::from(flags), u64::from(base), u64::from(limit));
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// The descriptor as KVM wants it in `kvm_sregs`.
pub fn segment(entry: u64, index: u16) -> kvm_segment {
    let access = (entry >> 40) as u8;
    let nibble = ((entry >> 52) & 0xf) as u8;
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let g = nibble >> 3 & 1;
    kvm_segment {
        base: ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: index * 8,
        type_: access & 0xf,
        s: (access >> 4) & 1,
        dpl: (access >> 5) & 3,
        present: (access >> 7) & 1,
        avl: nibble & 1,
        l: (nibble >> 1) & 1,
        db: (nibble >> 2) & 1,
        g,
        unusable: 0,
        padding: 0,
    }
}

/// The GDT: null, code, data, TSS.
pub fn gdt() -> [u64; 4] {
    [
        0,
        gdt_entry(CODE64, 0, 0xfffff),
        gdt_entry(DATA, 0, 0xfffff),
        gdt_entry(TSS, 0, 0xfffff),
    ]
}

/// PML4, PDPT and PD identity-mapping the first GiB with 2 MiB pages.
pub fn page_tables() -> ([u64; 512], [u64; 512], [u64; 512]) {
    const PRESENT_RW: u64 = 0x3;
    const HUGE: u64 = 0x80;
    let mut pml4 = [0u64; 512];
    let mut pdpt = [0u64; 512];
    let mut pd = [0u64; 512];
    pml4[0] = PDPT_ADDR | PRESENT_RW;
    pdpt[0] = PD_ADDR | PRESENT_RW;
    for (i, e) in pd.iter_mut().enumerate() {
        *e = ((i as u64) << 21) | PRESENT_RW | HUGE;
    }
    (pml4, pdpt, pd)
}

fn words(v: &[u64]) -> Vec<u8> {
    v.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// Write the GDT, the (empty) IDT and the page tables.
pub fn write_tables(mem: &Mem) -> Result<(), CpuError> {
    let w = |what, addr, bytes: &[u8]| {
        mem.write_slice(bytes, GuestAddress(addr))
            .map_err(|e| CpuError::Write {
                what,
                reason: e.to_string(),
            })
    };
    w("the GDT", GDT_ADDR, &words(&gdt()))?;
    w("the IDT", IDT_ADDR, &[0u8; 8])?;
    let (pml4, pdpt, pd) = page_tables();
    w("the PML4", PML4_ADDR, &words(&pml4))?;
    w("the PDPT", PDPT_ADDR, &words(&pdpt))?;
    w("the PD", PD_ADDR, &words(&pd))
}

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NW: u64 = 1 << 29;
const CR0_CD: u64 = 1 << 30;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Long mode with paging on, flat segments from our GDT.
pub fn long_mode_sregs(mut s: kvm_sregs) -> kvm_sregs {
    let g = gdt();
    let code = segment(g[1], 1);
    let data = segment(g[2], 2);
    s.cs = code;
    s.ds = data;
    s.es = data;
    s.fs = data;
    s.gs = data;
    s.ss = data;
    s.tr = segment(g[3], 3);
    s.gdt.base = GDT_ADDR;
    s.gdt.limit = (g.len() * 8 - 1) as u16;
    s.idt.base = IDT_ADDR;
    s.idt.limit = 7;
    s.cr0 = (s.cr0 | CR0_PE | CR0_ET | CR0_PG) & !(CR0_CD | CR0_NW);
    s.cr3 = PML4_ADDR;
    s.cr4 |= CR4_PAE;
    s.efer |= EFER_LME | EFER_LMA;
    s
}

/// General registers at the kernel's 64-bit entry.
pub fn boot_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: BOOT_STACK,
        rbp: BOOT_STACK,
        rsi: ZERO_PAGE,
        ..Default::default()
    }
}

/// MSRs zeroed (syscall entry points) or set (fast strings) at boot.
pub fn boot_msrs() -> Vec<(u32, u64)> {
    vec![
        (0x174, 0),       // IA32_SYSENTER_CS
        (0x175, 0),       // IA32_SYSENTER_ESP
        (0x176, 0),       // IA32_SYSENTER_EIP
        (0xc000_0081, 0), // STAR
        (0xc000_0082, 0), // LSTAR
        (0xc000_0083, 0), // CSTAR
        (0xc000_0084, 0), // SYSCALL_MASK
        (0xc000_0102, 0), // KERNEL_GS_BASE
        (0x10, 0),        // TSC
        (0x1a0, 1),       // IA32_MISC_ENABLE: fast strings
    ]
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const DELIVERY_EXTINT: u32 = 7;
const DELIVERY_NMI: u32 = 4;

fn lapic_reg(l: &kvm_lapic_state, off: usize) -> u32 {
    let b = |i: usize| l.regs[off + i] as u8;
    u32::from_le_bytes([b(0), b(1), b(2), b(3)])
}

fn set_lapic_reg(l: &mut kvm_lapic_state, off: usize, v: u32) {
    for (i, b) in v.to_le_bytes().iter().enumerate() {
        l.regs[off + i] = *b as _;
    }
}

/// LINT0 as ExtINT (the 8259's output), LINT1 as NMI.
pub fn set_lints(l: &mut kvm_lapic_state) {
    let with_mode = |v: u32, mode: u32| (v & !0x700) | (mode << 8);
    let v0 = lapic_reg(l, APIC_LVT0);
    set_lapic_reg(l, APIC_LVT0, with_mode(v0, DELIVERY_EXTINT));
    let v1 = lapic_reg(l, APIC_LVT1);
    set_lapic_reg(l, APIC_LVT1, with_mode(v1, DELIVERY_NMI));
}

/// Everything but CPUID: MSRs, LAPIC for every vCPU; registers, segment
/// registers and FPU for the bootstrap one.
pub fn configure(vcpu: &VcpuFd, id: u8, entry: Option<u64>) -> Result<(), CpuError> {
    let kvm = |what| {
        move |err| CpuError::Kvm {
            vcpu: id,
            what,
            err,
        }
    };
    let list = boot_msrs();
    let entries: Vec<kvm_msr_entry> = list
        .iter()
        .map(|(index, data)| kvm_msr_entry {
            index: *index,
            data: *data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|_| CpuError::Msrs {
        vcpu: id,
        set: 0,
        total: entries.len(),
        first: list[0].0,
    })?;
    let set = vcpu.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
    if set != entries.len() {
        return Err(CpuError::Msrs {
            vcpu: id,
            set,
            total: entries.len(),
            first: list.get(set).map_or(0, |m| m.0),
        });
    }
    let mut lapic = vcpu.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?;
    set_lints(&mut lapic);
    vcpu.set_lapic(&lapic).map_err(kvm("KVM_SET_LAPIC"))?;
    if let Some(entry) = entry {
        let fpu = kvm_fpu {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        vcpu.set_fpu(&fpu).map_err(kvm("KVM_SET_FPU"))?;
        let sregs = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
        vcpu.set_sregs(&long_mode_sregs(sregs))
            .map_err(kvm("KVM_SET_SREGS"))?;
        vcpu.set_regs(&boot_regs(entry))
            .map_err(kvm("KVM_SET_REGS"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_descriptors() {
        let g = gdt();
        // The well-known encodings of flat 64-bit code and data.
        assert_eq!(g[1], 0x00af_9b00_0000_ffff);
        assert_eq!(g[2], 0x00cf_9300_0000_ffff);
        assert_eq!(g[3], 0x008f_8b00_0000_ffff);
        let cs = segment(g[1], 1);
        assert_eq!(
            (cs.selector, cs.l, cs.db, cs.g, cs.present, cs.s, cs.type_),
            (8, 1, 0, 1, 1, 1, 0xb)
        );
        assert_eq!(cs.limit, 0xffff_ffff);
        assert_eq!(cs.base, 0);
        let ds = segment(g[2], 2);
        assert_eq!((ds.selector, ds.l, ds.db, ds.type_), (0x10, 0, 1, 3));
        let tr = segment(g[3], 3);
        assert_eq!((tr.selector, tr.s, tr.type_, tr.g), (0x18, 0, 0xb, 1));
        let odd = gdt_entry(0xc093, 0x1234_5678, 0xabcde);
        let s = segment(odd, 5);
        assert_eq!(s.base, 0x1234_5678);
        assert_eq!(s.limit, 0xabcd_efff);
    }

    #[test]
    fn page_tables_identity_map_one_gib() {
        let (pml4, pdpt, pd) = page_tables();
        assert_eq!(pml4[0], PDPT_ADDR | 3);
        assert!(pml4[1..].iter().all(|e| *e == 0));
        assert_eq!(pdpt[0], PD_ADDR | 3);
        assert_eq!(pd[0], 0x83);
        assert_eq!(pd[1], 0x20_0000 | 0x83);
        assert_eq!(pd[511], (511 << 21) | 0x83);
        // The tables do not overlap each other, the zero page or the stack.
        for a in [PML4_ADDR, PDPT_ADDR, PD_ADDR] {
            assert_eq!(a % 4096, 0);
            assert!(!(ZERO_PAGE..ZERO_PAGE + 4096).contains(&a));
            assert!(BOOT_STACK < a);
        }
    }

    #[test]
    fn sregs_for_long_mode() {
        let s = long_mode_sregs(kvm_sregs {
            cr0: 0x6000_0010,
            ..Default::default()
        });
        assert_eq!(s.cr0, 0x8000_0011);
        assert_eq!(s.cr3, PML4_ADDR);
        assert_eq!(s.cr4 & CR4_PAE, CR4_PAE);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!((s.gdt.base, s.gdt.limit), (GDT_ADDR, 31));
        let r = boot_regs(0x100_0000);
        assert_eq!((r.rip, r.rsi, r.rflags), (0x100_0000, ZERO_PAGE, 2));
    }

    #[test]
    fn lints() {
        let mut l = kvm_lapic_state::default();
        set_lapic_reg(&mut l, APIC_LVT0, 0x0001_0000);
        set_lints(&mut l);
        assert_eq!(lapic_reg(&l, APIC_LVT0), 0x0001_0700);
        assert_eq!(lapic_reg(&l, APIC_LVT1), 0x400);
    }
}
