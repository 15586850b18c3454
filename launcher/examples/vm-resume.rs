//! Snapshot resume benchmark, natively (bench/vm-resume-native.sh).
//!
//! ```text
//! cargo run --release --example vm-resume -- [--memory MIB] [--fill MIB] [--runs N] [--clones N]
//! ```
//!
//! Saves the synthetic guest of `sandbox::vm::snapshot::synthetic` (real
//! mode, which this PVM host runs) with `--memory` MiB of RAM, `--fill`
//! MiB of it non-zero (like a booted kernel with its page cache), then:
//!
//! 1. `--runs` times: resume it through `Machine::resume` (the path of
//!    `sandbox run --vm` from a snapshot: state checks, memory file mapped
//!    private, KVM state restored, vCPU created and restored, thread
//!    started) and time from the call to vCPU 0's first `KVM_RUN`; the
//!    peer, in the same run: a fresh VM of the same size made the cold way
//!    (`Machine::new` with the installed kernel) to its first `KVM_RUN`.
//! 2. `--clones` machines resumed from the same file at once, each left
//!    running 50 ms: the private memory (`Private_Clean + Private_Dirty`
//!    of `/proc/self/smaps_rollup`) each one adds.
//!
//! Prints `vm-resume: key=value` lines (µs, KiB) and PASS/MISS against the
//! 2 ms target.

use std::time::{Duration, Instant};

use sandbox::vm::machine::{Console, Machine, MachineConfig};
use sandbox::vm::snapshot::synthetic;

fn arg(args: &[String], name: &str, default: u32) -> u32 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn private_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap_or_default();
    s.lines()
        .filter(|l| l.starts_with("Private_Clean:") || l.starts_with("Private_Dirty:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

fn wait_first_run(m: &sandbox::vm::machine::RunningMachine) -> Option<Duration> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Some(t) = m.timings().total {
            return Some(t);
        }
        std::thread::yield_now();
    }
    None
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let memory = arg(&args, "--memory", 256);
    let fill = arg(&args, "--fill", 64);
    let runs = arg(&args, "--runs", 30).max(1);
    let clones = arg(&args, "--clones", 8).max(2);
    let kvm = match kvm_ioctls::Kvm::new() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("vm-resume: no /dev/kvm: {e}");
            std::process::exit(1);
        }
    };
    let dir = std::env::temp_dir().join(format!("vm-resume-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let saved = synthetic::make(&kvm, memory, fill, 1000, &dir).expect("make the snapshot");
    let msrs: Vec<u32> = kvm
        .get_msr_index_list()
        .expect("MSR list")
        .as_slice()
        .to_vec();
    let kernel = std::path::PathBuf::from("/usr/local/share/sandbox/kernel/vmlinux");

    let (mut resume, mut to_run, mut cold) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs + 3 {
        let t = Instant::now();
        let m = synthetic::resume(&kvm, &saved, &msrs).expect("resume");
        let first = wait_first_run(&m).expect("first KVM_RUN");
        // From the call to the instant vCPU 0 entered KVM_RUN (not to when
        // this thread noticed: the vCPU thread may hold the CPU).
        let whole = (m.created_at() + first).saturating_duration_since(t);
        if std::env::var_os("VM_RESUME_PHASES").is_some() {
            eprintln!("vm-resume: phases {}", m.timings());
        }
        m.stop();
        drop(m);
        if kernel.is_file() {
            let t = Instant::now();
            let c = Machine::new(
                &kvm,
                MachineConfig {
                    kernel: kernel.clone(),
                    kernel_format: sandbox::vm::kernel::Format::Elf,
                    cpus: 1,
                    memory_mib: memory,
                    cmdline: String::new(),
                    init_args: Vec::new(),
                    initramfs: Vec::new(),
                    console: Console::Discard,
                },
            )
            .and_then(|m| m.start());
            if let Ok(c) = c {
                if let Some(f) = wait_first_run(&c).filter(|_| i >= 3) {
                    let d = (c.created_at() + f).saturating_duration_since(t);
                    cold.push(d.as_secs_f64() * 1e6);
                }
                c.stop();
            }
        }
        if i >= 3 {
            // The first runs warm the page cache and the allocator.
            resume.push(whole.as_secs_f64() * 1e6);
            to_run.push(first.as_secs_f64() * 1e6);
        }
    }
    let r = median(resume);
    println!(
        "vm-resume: memory_mib={memory} fill_mib={fill} runs={runs} resume_to_first_kvm_run_us={r:.0} \
         machine_resume_to_first_kvm_run_us={:.0}",
        median(to_run)
    );
    if !cold.is_empty() {
        let c = median(cold);
        println!(
            "vm-resume: cold_to_first_kvm_run_us={c:.0} ratio_resume_over_cold={:.3}",
            r / c
        );
    }
    println!(
        "vm-resume: target resume < 2000 us: {}",
        if r < 2000.0 { "PASS" } else { "MISS" }
    );

    // Private memory per extra resumed machine.
    let base = private_kib();
    let mut machines = Vec::new();
    let mut marks = vec![base];
    for _ in 0..clones {
        let m = synthetic::resume(&kvm, &saved, &msrs).expect("resume");
        wait_first_run(&m);
        std::thread::sleep(Duration::from_millis(50));
        marks.push(private_kib());
        machines.push(m);
    }
    let deltas: Vec<f64> = marks
        .windows(2)
        .map(|w| w[1] as f64 - w[0] as f64)
        .collect();
    let ran = machines
        .iter()
        .all(|m| synthetic::counter(m) > saved.counter);
    println!(
        "vm-resume: clones={clones} private_kib_per_extra_resume_median={:.0} all_deltas_kib={deltas:?} \
         guest_memory_kib={} all_guests_ran={ran}",
        median(deltas[1..].to_vec()),
        u64::from(memory) << 10
    );
    for m in &machines {
        m.stop();
    }
    let _ = std::fs::remove_dir_all(&dir);
}
