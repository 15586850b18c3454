//! Everything x86_64-specific about the machine: where things live in
//! guest physical memory, the KVM VM setup (in-kernel irqchip and PIT,
//! the TSS and identity-map pages), loading the kernel with its zero
//! page, e820 map, command line and initramfs, the MP table, and the
//! initial vCPU state (long mode with identity page tables, MSRs, FPU,
//! CPUID, LAPIC).
//!
//! Nothing here reads guest-controlled state: it all runs before the
//! first `KVM_RUN`. Inputs are the kernel image (trusted as the user's
//! choice, but parsed by linux-loader with its bounds checks) and the
//! machine configuration.

pub mod boot;
pub mod cpu;
pub mod cpuid;
pub mod elf;
pub mod mptable;
pub mod state;

use kvm_bindings::{kvm_pit_config, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::VmFd;

/// The guest physical memory map.
pub mod layout {
    /// The GDT (4 entries) and a null IDT.
    pub const GDT_ADDR: u64 = 0x500;
    pub const IDT_ADDR: u64 = 0x520;
    /// The zero page (`struct boot_params`).
    pub const ZERO_PAGE: u64 = 0x7000;
    /// The initial stack pointer of the boot vCPU.
    pub const BOOT_STACK: u64 = 0x8ff0;
    /// Identity page tables: one PML4, one PDPT, one PD of 2 MiB pages
    /// (the first GiB).
    pub const PML4_ADDR: u64 = 0x9000;
    pub const PDPT_ADDR: u64 = 0xa000;
    pub const PD_ADDR: u64 = 0xb000;
    /// The kernel command line.
    pub const CMDLINE_ADDR: u64 = 0x20000;
    /// `COMMAND_LINE_SIZE` of x86 Linux, the terminating NUL included.
    pub const CMDLINE_MAX: usize = 2048;
    /// The `setup_data` list (the RNG seed), right after the command line.
    pub const SETUP_DATA_ADDR: u64 = CMDLINE_ADDR + CMDLINE_MAX as u64;
    /// The MP table, in the last KiB of base memory (where the kernel
    /// scans for the floating pointer), reserved up to 1 MiB.
    pub const MPTABLE_START: u64 = 0x9fc00;
    pub const MPTABLE_END: u64 = 0x10_0000;
    /// RAM above the legacy hole.
    pub const HIMEM_START: u64 = 0x10_0000;
    /// The 32-bit MMIO hole: virtio-mmio slots from its start, the I/O
    /// APIC and local APIC near its end. RAM beyond it continues at 4 GiB.
    pub const MMIO_START: u64 = 0xd000_0000;
    pub const MMIO_END: u64 = 0x1_0000_0000;
    pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
    pub const APIC_ADDR: u32 = 0xfee0_0000;
    /// The three pages KVM needs for the TSS of real-mode emulation
    /// (Intel) and the EPT identity map page, inside the hole.
    pub const TSS_ADDR: u64 = 0xfffb_d000;
    pub const IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;
}

/// The serial port (COM1) and its IRQ.
pub const SERIAL_PORT: u16 = 0x3f8;
pub const SERIAL_PORT_LEN: u64 = 8;
pub const SERIAL_IRQ: u32 = 4;
/// The first IRQ given to virtio-mmio devices, and the last.
pub const FIRST_DEVICE_IRQ: u32 = 5;
pub const LAST_DEVICE_IRQ: u32 = mptable::IOAPIC_PINS as u32 - 1;

/// Guest RAM ranges (start, length) for `size` bytes of memory: one range
/// below the MMIO hole when it fits, else a second one from 4 GiB.
pub fn ram_ranges(size: u64) -> Vec<(u64, u64)> {
    if size <= layout::MMIO_START {
        vec![(0, size)]
    } else {
        vec![
            (0, layout::MMIO_START),
            (layout::MMIO_END, size - layout::MMIO_START),
        ]
    }
}

/// VM-wide KVM setup, before any vCPU is created.
pub fn setup_vm(vm: &VmFd) -> Result<(), kvm_ioctls::Error> {
    vm.set_identity_map_address(layout::IDENTITY_MAP_ADDR)?;
    vm.set_tss_address(layout::TSS_ADDR as usize)?;
    vm.create_irq_chip()?;
    // The speaker port (0x61) is answered in the kernel as a dummy, so
    // PIT channel 2 users never exit to us.
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit)?;
    Ok(())
}
