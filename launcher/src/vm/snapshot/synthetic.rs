//! A tiny synthetic guest for the snapshot tests and the native resume
//! benchmark (this development host's PVM KVM cannot boot our kernel, but
//! it runs real-mode code): eight bytes at 0x1000 that increment the
//! 16-bit word at 0x2000 and write it to port 0x10, forever.
//!
//! [`make`] creates such a VM, runs it until the counter passed a given
//! value, pauses it and saves its memory and KVM state the way
//! `snapshot create` does (the same `arch::state` and `store` code);
//! [`resume`] brings it back through [`Machine::resume`], the path a real
//! snapshot takes.

use std::path::{Path, PathBuf};

use kvm_ioctls::{Kvm, VcpuExit};
use vm_memory::{Bytes, GuestAddress};

use crate::vm::arch::current::{self as arch, state};
use crate::vm::machine::{Console, Machine, MachineError, ResumeConfig, RunningMachine};
use crate::vm::memory;
use crate::vm::serial::SerialSnap;

/// `inc word [0x2000]; out 0x10, al; jmp $-8`.
const CODE: [u8; 8] = [0xff, 0x06, 0x00, 0x20, 0xe6, 0x10, 0xeb, 0xf8];
pub const CODE_ADDR: u64 = 0x1000;
pub const COUNTER_ADDR: u64 = 0x2000;

/// A saved synthetic guest.
#[derive(Debug)]
pub struct Saved {
    pub memory_file: PathBuf,
    pub memory_mib: u32,
    pub vcpu: state::VcpuState,
    pub vm: state::VmState,
    /// The counter when it was saved.
    pub counter: u16,
}

fn err(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> MachineError {
    move |err| MachineError::Kvm { what, err }
}

/// Boot the synthetic guest with `memory_mib` of RAM (`fill_mib` of it
/// written with non-zero data first, like a kernel and its page cache),
/// run it for `runs` port exits, and save it in `dir`.
pub fn make(
    kvm: &Kvm,
    memory_mib: u32,
    fill_mib: u32,
    runs: u32,
    dir: &Path,
) -> Result<Saved, MachineError> {
    let vm = kvm.create_vm().map_err(err("KVM_CREATE_VM"))?;
    let mem = memory::create(memory_mib)?;
    memory::register(&vm, &mem)?;
    arch::setup_vm(&vm).map_err(err("the VM setup"))?;
    let fill = vec![0xa5u8; 1 << 20];
    for i in 0..fill_mib.min(memory_mib) {
        let at = 0x10_0000 + (u64::from(i) << 20);
        if at + (1 << 20) <= u64::from(memory_mib) << 20 {
            let _ = mem.write_slice(&fill, GuestAddress(at));
        }
    }
    let w = |e: vm_memory::GuestMemoryError| MachineError::MemoryFile(e.to_string());
    mem.write_slice(&CODE, GuestAddress(CODE_ADDR)).map_err(w)?;
    mem.write_obj(0u16, GuestAddress(COUNTER_ADDR)).map_err(w)?;
    let mut vcpu = vm.create_vcpu(0).map_err(err("KVM_CREATE_VCPU"))?;
    let cpuid = arch::cpuid::supported(kvm)?;
    vcpu.set_cpuid2(&cpuid).map_err(err("KVM_SET_CPUID2"))?;
    let mut sregs = vcpu.get_sregs().map_err(err("KVM_GET_SREGS"))?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).map_err(err("KVM_SET_SREGS"))?;
    let regs = kvm_bindings::kvm_regs {
        rip: CODE_ADDR,
        rflags: 2,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(err("KVM_SET_REGS"))?;
    let mut seen = 0;
    while seen < runs {
        match vcpu.run().map_err(err("KVM_RUN"))? {
            VcpuExit::IoOut(0x10, _) => seen += 1,
            other => {
                return Err(MachineError::Pause(format!(
                    "the synthetic guest exited with {other:?}"
                )))
            }
        }
    }
    // Complete the OUT before saving, as a paused vCPU thread does.
    vcpu.set_kvm_immediate_exit(1);
    let _ = vcpu.run();
    vcpu.set_kvm_immediate_exit(0);
    let vcpu_state = state::save_vcpu(kvm, &vcpu, &cpuid)?;
    let vm_state = state::save_vm(&vm)?;
    let counter: u16 = mem.read_obj(GuestAddress(COUNTER_ADDR)).map_err(w)?;
    let (name, _) = super::store::write_memory(dir, "synthetic", &mem)
        .map_err(|e| MachineError::MemoryFile(e.to_string()))?;
    Ok(Saved {
        memory_file: dir.join(name),
        memory_mib,
        vcpu: vcpu_state,
        vm: vm_state,
        counter,
    })
}

/// Resume a saved synthetic guest through [`Machine::resume`] and start
/// its vCPU; the caller stops it.
pub fn resume(
    kvm: &Kvm,
    saved: &Saved,
    known_msrs: &[u32],
) -> Result<RunningMachine, MachineError> {
    let vcpus = vec![state::check_vcpu(&saved.vcpu, Some(known_msrs))?];
    let vm = state::check_vm(&saved.vm)?;
    let file = std::fs::File::open(&saved.memory_file)
        .map_err(|e| MachineError::MemoryFile(e.to_string()))?;
    let machine = Machine::resume(
        kvm,
        ResumeConfig {
            cpus: 1,
            memory_mib: saved.memory_mib,
            memory_file: &file,
            vm: &vm,
            vcpus,
            serial: &SerialSnap::default(),
            console: Console::Discard,
        },
    )?;
    machine.start()
}

/// The guest's counter in a running machine.
pub fn counter(m: &RunningMachine) -> u16 {
    m.memory().read_obj(GuestAddress(COUNTER_ADDR)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn kvm() -> Option<Kvm> {
        match Kvm::new() {
            Ok(k) => Some(k),
            Err(e) => {
                eprintln!("skipped: no /dev/kvm ({e})");
                None
            }
        }
    }

    /// The whole restore path with a real vCPU: the guest continues from
    /// the saved counter, its writes stay private to each machine, the
    /// file is untouched, and two machines from one file are independent.
    #[test]
    fn a_resumed_guest_continues_where_it_was_saved() {
        let Some(kvm) = kvm() else { return };
        let dir = std::env::temp_dir().join(format!("sb-synth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let saved = make(&kvm, 64, 4, 100, &dir).unwrap();
        assert_eq!(saved.counter, 100);
        let before = std::fs::read(&saved.memory_file).unwrap();
        let msrs: Vec<u32> = kvm.get_msr_index_list().unwrap().as_slice().to_vec();
        let a = resume(&kvm, &saved, &msrs).unwrap();
        let b = resume(&kvm, &saved, &msrs).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while (counter(&a) <= 100 || counter(&b) <= 100) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let (ca, cb) = (counter(&a), counter(&b));
        assert!(ca > 100 && cb > 100, "counters {ca} {cb}");
        assert!(a.timings().total.is_some());
        a.stop();
        // b runs on: its memory is its own.
        let (stopped, running) = (counter(&a), counter(&b));
        let deadline = Instant::now() + Duration::from_secs(10);
        while counter(&b) == running && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_ne!(counter(&b), running);
        assert_eq!(counter(&a), stopped);
        b.stop();
        assert_eq!(std::fs::read(&saved.memory_file).unwrap(), before);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A state refused by the checks never reaches KVM.
    #[test]
    fn a_bad_vcpu_state_is_refused_before_a_vm_exists() {
        let Some(kvm) = kvm() else { return };
        let dir = std::env::temp_dir().join(format!("sb-synth-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut saved = make(&kvm, 32, 0, 3, &dir).unwrap();
        saved.vcpu.regs.0.truncate(8);
        let msrs: Vec<u32> = kvm.get_msr_index_list().unwrap().as_slice().to_vec();
        let e = resume(&kvm, &saved, &msrs).unwrap_err();
        assert!(e.to_string().contains("general registers"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
