//! The Intel MultiProcessor table (MP specification 1.4), the only
//! description of CPUs and interrupt routing our guest gets (no ACPI):
//! a floating pointer structure the kernel finds by scanning the last KiB
//! of base memory, and a configuration table after it with one processor
//! entry per vCPU, the ISA bus, the I/O APIC, one I/O interrupt entry per
//! I/O APIC pin (ISA IRQ n -> pin n, as KVM's default GSI routing wires
//! them) and the two local interrupts (ExtINT on LINT0, NMI on LINT1).
//!
//! Built as bytes by this module (no copied structure definitions); the
//! parser is for the tests and for checking what was written.

use super::layout::{APIC_ADDR, IOAPIC_ADDR, MPTABLE_END, MPTABLE_START};

/// I/O APIC pins (and so ISA/legacy IRQs routed through it).
pub const IOAPIC_PINS: u8 = 24;
/// Version of KVM's in-kernel local APIC.
const LAPIC_VERSION: u8 = 0x14;
/// Version of KVM's in-kernel I/O APIC (82093AA).
const IOAPIC_VERSION: u8 = 0x11;
const SPEC_REV: u8 = 4;
const BUS_ISA: u8 = 0;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IOINT: u8 = 3;
const ENTRY_LINT: u8 = 4;

const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;

const CPU_ENABLED: u8 = 1;
const CPU_BOOTSTRAP: u8 = 2;

const FLOATING_LEN: usize = 16;
const HEADER_LEN: usize = 44;
const PROCESSOR_LEN: usize = 20;
const SMALL_ENTRY_LEN: usize = 8;

/// Most vCPUs one table can describe: APIC ids are bytes and the I/O
/// APIC takes the id after the last CPU (0xff is the broadcast id).
pub const MAX_CPUS: u8 = 254;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MpTableError {
    #[error("{0} vCPUs cannot be described in an MP table (1 to {MAX_CPUS} are accepted)")]
    Cpus(u8),
    #[error("the MP table needs {need} bytes but only {have} are reserved for it")]
    TooLarge { need: usize, have: usize },
}

fn checksum(bytes: &[u8]) -> u8 {
    let sum = bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    0u8.wrapping_sub(sum)
}

/// The table's bytes, to be written at guest physical `base`
/// (the floating pointer first, the configuration table right after it).
pub fn build(cpus: u8, base: u64) -> Result<Vec<u8>, MpTableError> {
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(MpTableError::Cpus(cpus));
    }
    let ioapic_id = cpus;
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for id in 0..cpus {
        let mut e = [0u8; PROCESSOR_LEN];
        e[0] = ENTRY_PROCESSOR;
        e[1] = id;
        e[2] = LAPIC_VERSION;
        e[3] = CPU_ENABLED | if id == 0 { CPU_BOOTSTRAP } else { 0 };
        // CPU signature: family 6; feature flags: FPU and APIC.
        e[4..8].copy_from_slice(&0x600u32.to_le_bytes());
        e[8..12].copy_from_slice(&0x201u32.to_le_bytes());
        entries.extend_from_slice(&e);
        count += 1;
    }
    let mut bus = [0u8; SMALL_ENTRY_LEN];
    bus[0] = ENTRY_BUS;
    bus[1] = BUS_ISA;
    bus[2..8].copy_from_slice(b"ISA   ");
    entries.extend_from_slice(&bus);
    count += 1;
    let mut io = [0u8; SMALL_ENTRY_LEN];
    io[0] = ENTRY_IOAPIC;
    io[1] = ioapic_id;
    io[2] = IOAPIC_VERSION;
    io[3] = 1; // enabled
    io[4..8].copy_from_slice(&IOAPIC_ADDR.to_le_bytes());
    entries.extend_from_slice(&io);
    count += 1;
    for irq in 0..IOAPIC_PINS {
        // Flags 0: polarity and trigger "conform to the bus" (ISA: edge,
        // active high).
        entries.extend_from_slice(&[
            ENTRY_IOINT,
            INT_TYPE_INT,
            0,
            0,
            BUS_ISA,
            irq,
            ioapic_id,
            irq,
        ]);
        count += 1;
    }
    // ExtINT (the 8259) on LINT0 of the bootstrap CPU, NMI on LINT1 of all.
    entries.extend_from_slice(&[ENTRY_LINT, INT_TYPE_EXTINT, 0, 0, BUS_ISA, 0, 0, 0]);
    entries.extend_from_slice(&[ENTRY_LINT, INT_TYPE_NMI, 0, 0, BUS_ISA, 0, 0xff, 1]);
    count += 2;

    let table_len = HEADER_LEN + entries.len();
    let need = FLOATING_LEN + table_len;
    let have = (MPTABLE_END - MPTABLE_START) as usize;
    if need > have {
        return Err(MpTableError::TooLarge { need, have });
    }
    let table_addr = base + FLOATING_LEN as u64;

    let mut out = vec![0u8; need];
    // Floating pointer structure.
    {
        let f = &mut out[..FLOATING_LEN];
        f[0..4].copy_from_slice(b"_MP_");
        f[4..8].copy_from_slice(&(table_addr as u32).to_le_bytes());
        f[8] = 1; // length in 16-byte units
        f[9] = SPEC_REV;
        // f[11..16]: feature bytes all 0 = a configuration table is present.
        f[10] = checksum(f);
    }
    // Configuration table header.
    {
        let t = &mut out[FLOATING_LEN..];
        t[0..4].copy_from_slice(b"PCMP");
        t[4..6].copy_from_slice(&(table_len as u16).to_le_bytes());
        t[6] = SPEC_REV;
        t[8..16].copy_from_slice(b"SANDBOX ");
        t[16..28].copy_from_slice(b"MICROVM     ");
        t[34..36].copy_from_slice(&count.to_le_bytes());
        t[36..40].copy_from_slice(&APIC_ADDR.to_le_bytes());
        t[HEADER_LEN..].copy_from_slice(&entries);
        t[7] = checksum(t);
    }
    Ok(out)
}

/// What a parsed table says (tests, and a self-check after writing).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    pub cpu_apic_ids: Vec<u8>,
    pub bootstrap: Option<u8>,
    pub buses: Vec<(u8, [u8; 6])>,
    pub ioapics: Vec<(u8, u32)>,
    /// (type, source bus irq, dest I/O APIC id, pin)
    pub io_interrupts: Vec<(u8, u8, u8, u8)>,
    /// (type, dest local APIC id, LINT pin)
    pub local_interrupts: Vec<(u8, u8, u8)>,
    pub lapic_addr: u32,
}

/// Parse a table built for guest physical `base`; `None` on any
/// malformation (bad signature, checksum, length or entry).
pub fn parse(bytes: &[u8], base: u64) -> Option<Parsed> {
    let f = bytes.get(..FLOATING_LEN)?;
    if &f[0..4] != b"_MP_" || f[8] != 1 || checksum(f) != 0 {
        return None;
    }
    let table_addr = u64::from(u32::from_le_bytes(f[4..8].try_into().ok()?));
    let off = usize::try_from(table_addr.checked_sub(base)?).ok()?;
    let hdr = bytes.get(off..off.checked_add(HEADER_LEN)?)?;
    if &hdr[0..4] != b"PCMP" || hdr[6] != SPEC_REV {
        return None;
    }
    let len = usize::from(u16::from_le_bytes([hdr[4], hdr[5]]));
    let table = bytes.get(off..off.checked_add(len)?)?;
    if checksum(table) != 0 {
        return None;
    }
    let count = u16::from_le_bytes([hdr[34], hdr[35]]);
    let mut p = Parsed {
        lapic_addr: u32::from_le_bytes(hdr[36..40].try_into().ok()?),
        ..Parsed::default()
    };
    let mut at = HEADER_LEN;
    for _ in 0..count {
        let kind = *table.get(at)?;
        let elen = if kind == ENTRY_PROCESSOR {
            PROCESSOR_LEN
        } else {
            SMALL_ENTRY_LEN
        };
        let e = table.get(at..at + elen)?;
        match kind {
            ENTRY_PROCESSOR => {
                p.cpu_apic_ids.push(e[1]);
                if e[3] & CPU_BOOTSTRAP != 0 {
                    p.bootstrap = Some(e[1]);
                }
            }
            ENTRY_BUS => p.buses.push((e[1], e[2..8].try_into().ok()?)),
            ENTRY_IOAPIC => p
                .ioapics
                .push((e[1], u32::from_le_bytes(e[4..8].try_into().ok()?))),
            ENTRY_IOINT => p.io_interrupts.push((e[1], e[5], e[6], e[7])),
            ENTRY_LINT => p.local_interrupts.push((e[1], e[6], e[7])),
            _ => return None,
        }
        at += elen;
    }
    (at == len).then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_checksums() {
        for cpus in [1u8, 2, 8, MAX_CPUS] {
            let t = build(cpus, MPTABLE_START).unwrap();
            assert_eq!(checksum(&t[..16]), 0);
            let p = parse(&t, MPTABLE_START).unwrap();
            assert_eq!(p.cpu_apic_ids, (0..cpus).collect::<Vec<_>>());
            assert_eq!(p.bootstrap, Some(0));
            assert_eq!(p.buses, vec![(0, *b"ISA   ")]);
            assert_eq!(p.ioapics, vec![(cpus, IOAPIC_ADDR)]);
            assert_eq!(p.io_interrupts.len(), 24);
            for (i, e) in p.io_interrupts.iter().enumerate() {
                assert_eq!(*e, (INT_TYPE_INT, i as u8, cpus, i as u8));
            }
            assert_eq!(
                p.local_interrupts,
                vec![(INT_TYPE_EXTINT, 0, 0), (INT_TYPE_NMI, 0xff, 1)]
            );
            assert_eq!(p.lapic_addr, APIC_ADDR);
            // The floating pointer points right behind itself.
            let ptr = u32::from_le_bytes(t[4..8].try_into().unwrap());
            assert_eq!(u64::from(ptr), MPTABLE_START + 16);
        }
    }

    #[test]
    fn corruption_is_detected() {
        let mut t = build(2, MPTABLE_START).unwrap();
        assert!(parse(&t, MPTABLE_START).is_some());
        t[60] ^= 1;
        assert!(parse(&t, MPTABLE_START).is_none());
        let mut t = build(2, MPTABLE_START).unwrap();
        t[3] = b'X';
        assert!(parse(&t, MPTABLE_START).is_none());
    }

    #[test]
    fn cpu_count_is_bounded() {
        assert_eq!(build(0, MPTABLE_START), Err(MpTableError::Cpus(0)));
        assert_eq!(build(255, MPTABLE_START), Err(MpTableError::Cpus(255)));
    }
}
