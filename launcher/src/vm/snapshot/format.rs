//! The snapshot state file: what it holds, its encoding, and the checks
//! that make it safe to read.
//!
//! Layout: a 24-byte header, then the payload.
//!
//! | bytes | field |
//! |-------|-------|
//! | 0..8 | magic `SBXSNAP\0` |
//! | 8..12 | format version, little-endian u32 ([`FORMAT_VERSION`]) |
//! | 12..20 | payload length, little-endian u64 (at most [`MAX_STATE_BYTES`]) |
//! | 20..24 | CRC-32 (IEEE) of the payload, little-endian |
//! | 24.. | the payload: [`Snapshot`], postcard-encoded serde data |
//!
//! The file is untrusted input (anyone who can write the snapshot
//! directory can hand it to us, and the guest wrote most of what it
//! holds): [`decode`] refuses a wrong magic, another version, a length
//! that is not the file's, a checksum mismatch and a payload that does
//! not decode or leaves bytes over; [`check`] then validates every field
//! the VMM (rather than KVM) acts on, before anything is created. The
//! checksum catches damage, not intent: a tampered file with a recomputed
//! checksum meets the same field checks as a damaged one.

use serde::{Deserialize, Serialize};

use crate::vm::arch::current::state::{self, CheckedVcpu, CheckedVm, VcpuState, VmState};
use crate::vm::serial::SerialSnap;
use crate::vm::virtio::device_type;
use crate::vm::virtio::mmio::TransportState;

pub const MAGIC: [u8; 8] = *b"SBXSNAP\0";
/// Bumped on every change of [`Snapshot`] or of what it means.
pub const FORMAT_VERSION: u32 = 1;
/// Largest payload accepted (32 vCPUs need well under 1 MiB).
pub const MAX_STATE_BYTES: u64 = 8 << 20;
pub const HEADER_LEN: usize = 24;
/// The UART's FIFO.
const MAX_SERIAL_INPUT: usize = 64;
/// Most queues a saved device may have.
const MAX_QUEUES: usize = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("it is {0} bytes long, shorter than the {HEADER_LEN}-byte header (truncated)")]
    Short(usize),
    #[error("it does not start with the snapshot magic (not a sandbox snapshot)")]
    Magic,
    #[error(
        "it has format version {0}; this sandbox reads version {FORMAT_VERSION} (create the \
         snapshot again with this version)"
    )]
    Version(u32),
    #[error("its header claims a {0}-byte payload; at most {MAX_STATE_BYTES} are accepted")]
    TooLarge(u64),
    #[error("its header claims a {claimed}-byte payload but {actual} bytes follow (truncated or extended)")]
    Length { claimed: u64, actual: u64 },
    #[error("its checksum does not match (the file is damaged)")]
    Checksum,
    #[error("its payload does not decode: {0}")]
    Decode(String),
    #[error("invalid field: {0}")]
    Field(String),
}

/// What makes two VMs interchangeable for a snapshot: a snapshot resumes
/// only into the shape it was taken from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    pub cpus: u8,
    pub memory_mib: u32,
    /// Number of volume shares (virtio-9p devices after the root).
    pub volumes: u16,
    /// The guest kernel: its path and identity (size, mtime, inode).
    pub kernel: String,
    pub kernel_id: String,
    /// The static init in the initramfs: its identity.
    pub init_id: String,
    /// Extra kernel arguments (`SANDBOX_VM_CMDLINE`).
    pub cmdline: String,
    /// The launcher <-> init protocol version.
    pub protocol: u32,
}

impl Shape {
    /// A short stable name for the shape (the automatic snapshot's name).
    pub fn key(&self) -> String {
        let bytes = postcard::to_allocvec(self).unwrap_or_default();
        // FNV-1a, 64 bits: a name, not a security boundary (the shape is
        // compared field by field before use).
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100_0000_01b3);
        }
        format!("auto-{h:016x}")
    }
}

/// Everything in a snapshot except guest memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub shape: Shape,
    /// Milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// The memory file's name in the snapshot's directory, and its length.
    pub memory_file: String,
    pub memory_bytes: u64,
    pub vcpus: Vec<VcpuState>,
    pub vm: VmState,
    pub serial: SerialSnap,
    /// In machine order: virtio-rng, virtio-vsock, the root share, the
    /// volume shares.
    pub devices: Vec<TransportState>,
}

const CRC_TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

/// CRC-32 (IEEE 802.3, as zlib computes it).
pub fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c = CRC_TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

/// The file's bytes.
pub fn encode(s: &Snapshot) -> Result<Vec<u8>, FormatError> {
    let payload = postcard::to_allocvec(s).map_err(|e| FormatError::Decode(e.to_string()))?;
    if payload.len() as u64 > MAX_STATE_BYTES {
        return Err(FormatError::TooLarge(payload.len() as u64));
    }
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Parse the file's bytes (header, checksum, payload); see the module
/// docs. No field is trusted yet: [`check`] follows.
pub fn decode(bytes: &[u8]) -> Result<Snapshot, FormatError> {
    if bytes.len() < HEADER_LEN {
        return Err(FormatError::Short(bytes.len()));
    }
    if bytes[0..8] != MAGIC {
        return Err(FormatError::Magic);
    }
    let word = |r: std::ops::Range<usize>| {
        let mut b = [0u8; 8];
        b[..r.len()].copy_from_slice(&bytes[r]);
        u64::from_le_bytes(b)
    };
    let version = word(8..12) as u32;
    if version != FORMAT_VERSION {
        return Err(FormatError::Version(version));
    }
    let claimed = word(12..20);
    if claimed > MAX_STATE_BYTES {
        return Err(FormatError::TooLarge(claimed));
    }
    let payload = &bytes[HEADER_LEN..];
    if payload.len() as u64 != claimed {
        return Err(FormatError::Length {
            claimed,
            actual: payload.len() as u64,
        });
    }
    if crc32(payload) != word(20..24) as u32 {
        return Err(FormatError::Checksum);
    }
    let (s, rest) = postcard::take_from_bytes::<Snapshot>(payload)
        .map_err(|e| FormatError::Decode(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FormatError::Decode(format!(
            "{} bytes follow the state",
            rest.len()
        )));
    }
    Ok(s)
}

/// A snapshot whose every field was checked.
#[derive(Debug)]
pub struct Checked {
    pub snapshot: Snapshot,
    pub vcpus: Vec<CheckedVcpu>,
    pub vm: CheckedVm,
}

/// Whether `name` is acceptable as a memory file name (no path).
pub fn memory_file_name_ok(name: &str) -> bool {
    name.len() <= 64
        && name.starts_with("memory-")
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn field(msg: String) -> FormatError {
    FormatError::Field(msg)
}

/// Validate everything the VMM acts on; `known_msrs` is this host's KVM
/// MSR list (`None`: not checked, for use without KVM).
pub fn check(s: Snapshot, known_msrs: Option<&[u32]>) -> Result<Checked, FormatError> {
    let sh = &s.shape;
    let max_cpus = crate::vm::launch::MAX_CPUS;
    if sh.cpus == 0 || sh.cpus > max_cpus {
        return Err(field(format!(
            "{} vCPUs; 1 to {max_cpus} are accepted",
            sh.cpus
        )));
    }
    if s.vcpus.len() != usize::from(sh.cpus) {
        return Err(field(format!(
            "{} vCPU states for a {}-vCPU shape",
            s.vcpus.len(),
            sh.cpus
        )));
    }
    let (lo, hi) = (
        crate::vm::launch::MIN_MEMORY_MIB,
        crate::vm::memory::MAX_MIB.min(crate::vm::arch::current::layout::MMIO_START as u32 >> 20),
    );
    if !(lo..=hi).contains(&sh.memory_mib) {
        return Err(field(format!(
            "{} MiB of memory; {lo} to {hi} MiB are accepted",
            sh.memory_mib
        )));
    }
    if s.memory_bytes != u64::from(sh.memory_mib) << 20 {
        return Err(field(format!(
            "a memory file of {} bytes for {} MiB",
            s.memory_bytes, sh.memory_mib
        )));
    }
    if !memory_file_name_ok(&s.memory_file) {
        return Err(field(format!(
            "memory file name {:?}; memory-[A-Za-z0-9-] is accepted",
            s.memory_file
        )));
    }
    if s.serial.in_buffer.len() > MAX_SERIAL_INPUT {
        return Err(field(format!(
            "{} bytes of serial input; at most {MAX_SERIAL_INPUT}",
            s.serial.in_buffer.len()
        )));
    }
    let mut want = vec![device_type::RNG, device_type::VSOCK, device_type::P9];
    want.extend(std::iter::repeat(device_type::P9).take(usize::from(sh.volumes)));
    let got: Vec<u32> = s.devices.iter().map(|d| d.device_type).collect();
    if got != want {
        return Err(field(format!(
            "devices {got:?}; this shape has {want:?} (rng, vsock, root share, volumes)"
        )));
    }
    for (i, d) in s.devices.iter().enumerate() {
        if d.queues.len() > MAX_QUEUES {
            return Err(field(format!("device {i} has {} queues", d.queues.len())));
        }
        d.check().map_err(|e| field(format!("device {i}: {e}")))?;
    }
    let vcpus = s
        .vcpus
        .iter()
        .enumerate()
        .map(|(i, v)| state::check_vcpu(v, known_msrs).map_err(|e| field(format!("vCPU {i}: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let vm = state::check_vm(&s.vm).map_err(|e| field(e.to_string()))?;
    Ok(Checked {
        snapshot: s,
        vcpus,
        vm,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::vm::arch::current::state::Blob;
    use crate::vm::virtio::mmio::QueueSnap;
    use crate::vm::virtio::QueuePos;

    fn blob<T: Default>() -> Blob {
        Blob(vec![0u8; std::mem::size_of::<T>()])
    }

    fn transport(ty: u32, queues: u16) -> TransportState {
        TransportState {
            device_type: ty,
            status: 0xf,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: crate::vm::virtio::F_VERSION_1,
            queue_sel: 0,
            config_generation: 0,
            interrupt_status: 0,
            queues: (0..queues)
                .map(|i| QueueSnap {
                    size: 256,
                    ready: true,
                    desc: 0x1000 * u64::from(i + 1),
                    driver: 0x1000 * u64::from(i + 1) + 0x800,
                    device: 0x1000 * u64::from(i + 1) + 0xa00,
                })
                .collect(),
            positions: (0..queues)
                .map(|index| QueuePos {
                    index,
                    next_avail: 7,
                    next_used: 7,
                })
                .collect(),
        }
    }

    /// A snapshot that passes every check (without KVM).
    pub(crate) fn sample() -> Snapshot {
        use kvm_bindings::*;
        let vcpu = VcpuState {
            cpuid: vec![blob::<kvm_cpuid_entry2>()],
            regs: blob::<kvm_regs>(),
            sregs: blob::<kvm_sregs>(),
            xsave: blob::<kvm_xsave>(),
            xcrs: blob::<kvm_xcrs>(),
            debugregs: blob::<kvm_debugregs>(),
            lapic: blob::<kvm_lapic_state>(),
            mp_state: blob::<kvm_mp_state>(),
            events: blob::<kvm_vcpu_events>(),
            msrs: vec![(0x10, 1234)],
        };
        Snapshot {
            shape: Shape {
                cpus: 1,
                memory_mib: 256,
                volumes: 1,
                kernel: "/k".into(),
                kernel_id: "1:2:3".into(),
                init_id: "4:5:6".into(),
                cmdline: String::new(),
                protocol: sandbox_proto::PROTOCOL_VERSION,
            },
            created_ms: 1,
            memory_file: "memory-1-2".into(),
            memory_bytes: 256 << 20,
            vcpus: vec![vcpu],
            vm: VmState {
                pic_master: blob::<kvm_irqchip>(),
                pic_slave: blob::<kvm_irqchip>(),
                ioapic: blob::<kvm_irqchip>(),
                pit: blob::<kvm_pit_state2>(),
                clock: blob::<kvm_clock_data>(),
            },
            serial: SerialSnap::default(),
            devices: vec![
                transport(device_type::RNG, 1),
                transport(device_type::VSOCK, 3),
                transport(device_type::P9, 1),
                transport(device_type::P9, 1),
            ],
        }
    }

    fn refused(s: Snapshot) -> String {
        match check(s, Some(&[0x10])) {
            Ok(_) => panic!("accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn round_trip() {
        let s = sample();
        let bytes = encode(&s).unwrap();
        assert_eq!(&bytes[..8], b"SBXSNAP\0");
        let back = decode(&bytes).unwrap();
        assert_eq!(back, s);
        check(back, Some(&[0x10])).unwrap();
    }

    #[test]
    fn truncation_at_every_length_is_refused() {
        let bytes = encode(&sample()).unwrap();
        for n in 0..bytes.len() {
            let e = decode(&bytes[..n]).unwrap_err();
            assert!(
                matches!(e, FormatError::Short(_) | FormatError::Length { .. }),
                "{n}: {e}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(decode(&longer), Err(FormatError::Length { .. })));
    }

    #[test]
    fn every_single_bit_flip_is_refused() {
        let bytes = encode(&sample()).unwrap();
        // Every bit of the header and a stride through the payload (all
        // of it would be ~1M decodes; CRC-32 catches every single-bit
        // error by construction).
        let stride = (bytes.len() / 4000).max(1);
        let mut i = 0;
        while i < bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                assert!(decode(&b).is_err(), "byte {i} bit {bit} accepted");
            }
            i += if i < HEADER_LEN { 1 } else { stride };
        }
    }

    #[test]
    fn header_errors_are_named() {
        let bytes = encode(&sample()).unwrap();
        let mut b = bytes.clone();
        b[0] = b'X';
        assert_eq!(decode(&b), Err(FormatError::Magic));
        let mut b = bytes.clone();
        b[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
        let e = decode(&b).unwrap_err();
        assert_eq!(e, FormatError::Version(FORMAT_VERSION + 1));
        assert!(e.to_string().contains("create the snapshot again"));
        let mut b = bytes.clone();
        b[12..20].copy_from_slice(&(MAX_STATE_BYTES + 1).to_le_bytes());
        assert_eq!(decode(&b), Err(FormatError::TooLarge(MAX_STATE_BYTES + 1)));
        assert!(decode(b"").is_err());
    }

    /// Re-encode with a correct checksum: what a tamperer would do.
    fn tampered(f: impl FnOnce(&mut Snapshot)) -> String {
        let mut s = sample();
        f(&mut s);
        let bytes = encode(&s).unwrap();
        let back = decode(&bytes).unwrap();
        refused(back)
    }

    #[test]
    fn tampered_fields_are_refused() {
        assert!(tampered(|s| s.shape.cpus = 0).contains("vCPUs"));
        assert!(tampered(|s| s.shape.cpus = 200).contains("vCPUs"));
        assert!(tampered(|s| s.shape.cpus = 2).contains("vCPU states"));
        assert!(tampered(|s| s.shape.memory_mib = 1).contains("MiB"));
        assert!(tampered(|s| s.memory_bytes += 4096).contains("memory file"));
        assert!(
            tampered(|s| s.memory_file = "../../etc/passwd".into()).contains("memory file name")
        );
        assert!(tampered(|s| s.serial.in_buffer = vec![0; 65]).contains("serial"));
        assert!(tampered(|s| s.devices.swap(0, 1)).contains("devices"));
        assert!(tampered(|s| {
            s.devices.pop();
        })
        .contains("devices"));
        assert!(tampered(|s| s.devices[0].status = 0x80).contains("status"));
        assert!(tampered(|s| s.devices[1].queues[0].size = 3).contains("size"));
        assert!(tampered(|s| s.devices[1].queues[0].size = 0).contains("size"));
        assert!(tampered(|s| s.devices[1].positions[0].next_used = 9).contains("in flight"));
        assert!(tampered(|s| {
            s.devices[1].positions.pop();
        })
        .contains("positions"));
        assert!(tampered(|s| s.devices[2].positions[0].index = 5).contains("positions"));
        assert!(tampered(|s| s.devices[0].interrupt_status = 4).contains("interrupt"));
        assert!(tampered(|s| s.devices[0].driver_features = 0).contains("VERSION_1"));
        assert!(tampered(|s| s.vcpus[0].msrs.push((0xdead, 1))).contains("0xdead"));
        assert!(
            tampered(|s| s.vcpus[0].sregs.0.pop().map(|_| ()).unwrap_or(()))
                .contains("special registers")
        );
        assert!(tampered(|s| s.vcpus[0].cpuid.clear()).contains("CPUID"));
        assert!(tampered(|s| s.vm.ioapic.0.push(0)).contains("I/O APIC"));
    }

    #[test]
    fn arbitrary_payloads_never_panic() {
        // Valid headers around garbage payloads.
        let mut seed = 0x1234_5678_u64;
        for len in [0usize, 1, 7, 64, 300, 5000] {
            for _ in 0..50 {
                let payload: Vec<u8> = (0..len)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        seed as u8
                    })
                    .collect();
                let mut b = MAGIC.to_vec();
                b.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
                b.extend_from_slice(&(len as u64).to_le_bytes());
                b.extend_from_slice(&crc32(&payload).to_le_bytes());
                b.extend_from_slice(&payload);
                if let Ok(s) = decode(&b) {
                    let _ = check(s, None);
                }
            }
        }
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn shape_keys_are_stable_names() {
        let a = sample().shape;
        let mut b = a.clone();
        assert_eq!(a.key(), b.key());
        b.memory_mib = 512;
        assert_ne!(a.key(), b.key());
        crate::vm::snapshot::store::check_name(&a.key()).unwrap();
    }
}
