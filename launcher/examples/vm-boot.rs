//! Boot a kernel and an initramfs in the micro-VM, without devices, and
//! print how it ended and how long each phase took.
//!
//! ```text
//! cargo run --example vm-boot -- --kernel K --initramfs CPIO [--cpus N] [--memory MIB]
//!     [--timing] [--console | --log FILE] [--cmdline ARGS] [--marker TEXT]
//!     [--timeout SECS] [--skip-pvm-check] [--stop-after-first-run]
//! ```
//!
//! `--stop-after-first-run` stops the VM as soon as vCPU 0 has entered
//! `KVM_RUN` (for start-up benchmarks, and on the PVM host, where the
//! guest cannot boot); with `--timing` it then prints a `vm-boot: bench`
//! line of `key=value` figures (µs, KiB). When `VM_BOOT_T0_NS` holds the
//! `CLOCK_MONOTONIC` time (ns) at which the caller spawned us, the figures
//! include the time from exec (bench/vm-native.sh sets it).
//!
//! Exit status: 0 when the guest reset (or, with `--stop-after-first-run`,
//! reached `KVM_RUN`), 1 on a guest panic, 2 on any other end, 3 when the
//! machine could not be started, 64 on a usage error.

use std::os::fd::{FromRawFd, IntoRawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use sandbox::vm::machine::{Console, Machine, MachineConfig, VmExit};
use sandbox::vm::{host, kernel};
use vm_memory::GuestMemoryBackend;

struct Args {
    kernel: PathBuf,
    initramfs: Option<PathBuf>,
    cpus: u8,
    memory: u32,
    timing: bool,
    console: Option<String>,
    cmdline: String,
    marker: String,
    timeout: Option<f64>,
    skip_pvm_check: bool,
    stop_after_first_run: bool,
}

/// `CLOCK_MONOTONIC` in ns (the clock `Instant` uses on Linux).
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: one valid timespec on the stack.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn usage(msg: &str) -> ! {
    eprintln!("vm-boot: {msg}");
    eprintln!(
        "usage: vm-boot --kernel K [--initramfs CPIO] [--cpus N] [--memory MIB] [--timing] \
         [--console | --log FILE] [--cmdline ARGS] [--marker TEXT] [--timeout SECS] \
         [--skip-pvm-check] [--stop-after-first-run]"
    );
    std::process::exit(64)
}

fn parse() -> Args {
    let mut a = Args {
        kernel: PathBuf::new(),
        initramfs: None,
        cpus: 1,
        memory: 256,
        timing: false,
        console: None,
        cmdline: String::new(),
        marker: "VM-BOOT-OK".into(),
        timeout: None,
        skip_pvm_check: false,
        stop_after_first_run: false,
    };
    let mut it = std::env::args().skip(1);
    let mut kernel = None;
    while let Some(arg) = it.next() {
        let mut val = |name: &str| {
            it.next()
                .unwrap_or_else(|| usage(&format!("{name} needs a value")))
        };
        match arg.as_str() {
            "--kernel" => kernel = Some(PathBuf::from(val("--kernel"))),
            "--initramfs" => a.initramfs = Some(PathBuf::from(val("--initramfs"))),
            "--cpus" => {
                a.cpus = val("--cpus")
                    .parse()
                    .unwrap_or_else(|_| usage("--cpus: 1 to 254"))
            }
            "--memory" => {
                a.memory = val("--memory")
                    .parse()
                    .unwrap_or_else(|_| usage("--memory: a size in MiB"))
            }
            "--timing" => a.timing = true,
            "--console" => a.console = Some("-".into()),
            "--log" => a.console = Some(val("--log")),
            "--cmdline" => a.cmdline = val("--cmdline"),
            "--marker" => a.marker = val("--marker"),
            "--timeout" => {
                a.timeout = Some(
                    val("--timeout")
                        .parse()
                        .unwrap_or_else(|_| usage("--timeout: seconds")),
                )
            }
            "--skip-pvm-check" => a.skip_pvm_check = true,
            "--stop-after-first-run" => a.stop_after_first_run = true,
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    a.kernel = kernel.unwrap_or_else(|| usage("--kernel is required"));
    a
}

/// Resident memory of the process and of the guest mapping(s), in KiB,
/// from /proc/self/smaps.
fn rss_kib(guest_ranges: &[(u64, u64)]) -> Option<(u64, u64)> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let (mut total, mut guest) = (0u64, 0u64);
    let mut in_guest = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((lo, hi)) = first.split_once('-') {
            if let (Ok(lo), Ok(hi)) = (u64::from_str_radix(lo, 16), u64::from_str_radix(hi, 16)) {
                in_guest = guest_ranges.iter().any(|(s, l)| lo >= *s && hi <= s + l);
                continue;
            }
        }
        if let Some(rest) = line.strip_prefix("Rss:") {
            let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
            total += kib;
            if in_guest {
                guest += kib;
            }
        }
    }
    Some((total, guest))
}

fn main() {
    let t_main = Instant::now();
    let mono_main = monotonic_ns();
    let a = parse();
    let kvm = if a.skip_pvm_check {
        kvm_ioctls::Kvm::new().unwrap_or_else(|e| {
            eprintln!("vm-boot: cannot open /dev/kvm: {e}");
            std::process::exit(3)
        })
    } else {
        match host::check() {
            // SAFETY: the fd is an open /dev/kvm whose ownership moves to Kvm.
            Ok(k) => unsafe { kvm_ioctls::Kvm::from_raw_fd(k.fd.into_raw_fd()) },
            Err(e) => {
                eprintln!("vm-boot: {e}");
                std::process::exit(3)
            }
        }
    };
    let format = kernel::format_of(&a.kernel).unwrap_or_else(|e| {
        eprintln!("vm-boot: {e}");
        std::process::exit(3)
    });
    let initramfs = match &a.initramfs {
        Some(p) => std::fs::read(p).unwrap_or_else(|e| {
            eprintln!("vm-boot: cannot read {}: {e}", p.display());
            std::process::exit(3)
        }),
        None => Vec::new(),
    };
    let console = match a.console.as_deref() {
        Some("-") => Console::Stderr,
        Some(path) => Console::File(std::fs::File::create(path).unwrap_or_else(|e| {
            eprintln!("vm-boot: cannot create {path}: {e}");
            std::process::exit(3)
        })),
        None => Console::Discard,
    };
    let cfg = MachineConfig {
        kernel: a.kernel.clone(),
        kernel_format: format,
        cpus: a.cpus,
        memory_mib: a.memory,
        cmdline: a.cmdline.clone(),
        init_args: Vec::new(),
        initramfs,
        console,
    };
    let started = (|| {
        let m = Machine::new(&kvm, cfg)?;
        m.watch_serial(&a.marker);
        eprintln!("vm-boot: cmdline: {}", m.cmdline()?);
        m.start()
    })();
    let vm = match started {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!("vm-boot: {e}");
            std::process::exit(3)
        }
    };
    let guest_ranges: Vec<(u64, u64)> = vm
        .memory()
        .iter()
        .filter_map(|r| {
            use vm_memory::GuestMemoryRegion;
            let host = vm.memory().get_host_address(r.start_addr()).ok()? as u64;
            Some((host, r.len()))
        })
        .collect();
    if a.stop_after_first_run {
        let deadline = Instant::now() + Duration::from_secs_f64(a.timeout.unwrap_or(5.0));
        while vm.timings().first_run.is_none() && vm.exit().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_micros(200));
        }
        let mem = rss_kib(&guest_ranges);
        vm.stop();
        report(&a, &vm, t_main, mono_main, mem);
    } else if let Some(secs) = a.timeout {
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        while vm.exit().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if vm.exit().is_none() {
            eprintln!("vm-boot: timeout after {secs}s, stopping the VM");
        }
        // Measure before the threads are joined and memory is released.
        let mem = rss_kib(&guest_ranges);
        vm.stop();
        report(&a, &vm, t_main, mono_main, mem);
    } else {
        let exit = vm.wait();
        let mem = rss_kib(&guest_ranges);
        let _ = exit;
        report(&a, &vm, t_main, mono_main, mem);
    }
}

fn report(
    a: &Args,
    vm: &sandbox::vm::machine::RunningMachine,
    t_main: Instant,
    mono_main: u64,
    mem: Option<(u64, u64)>,
) {
    let exit = vm.exit().unwrap_or(VmExit::Stopped);
    let now = Instant::now();
    println!("vm-boot: exit: {exit:?}");
    if a.timing {
        println!("vm-boot: timings: {}", vm.timings());
        let ms = |t: Instant| (t - t_main).as_secs_f64() * 1e3;
        match vm.marker_seen() {
            Some(t) => println!("vm-boot: marker {:?} at {:.1} ms", a.marker, ms(t)),
            None => println!("vm-boot: marker {:?} not seen", a.marker),
        }
        if let Some(t) = vm.exited_at() {
            println!("vm-boot: exit at {:.1} ms", ms(t));
        }
        println!(
            "vm-boot: joined at {:.1} ms (from the example's start)",
            ms(now)
        );
        if let Some((total, guest)) = mem {
            println!(
                "vm-boot: rss {total} KiB, guest RAM touched {guest} KiB, VMM itself {} KiB",
                total - guest
            );
        }
    }
    if a.timing && a.stop_after_first_run {
        bench_line(vm, t_main, mono_main, mem);
    }
    if a.stop_after_first_run && vm.timings().first_run.is_some() {
        std::process::exit(0)
    }
    std::process::exit(match exit {
        VmExit::Reset => 0,
        VmExit::Panic(_) => 1,
        _ => 2,
    })
}

/// The `vm-boot: bench` line: the phases and totals in µs, memory in KiB.
fn bench_line(
    vm: &sandbox::vm::machine::RunningMachine,
    t_main: Instant,
    mono_main: u64,
    mem: Option<(u64, u64)>,
) {
    let t = vm.timings();
    let us = |d: Duration| d.as_micros();
    let Some(total) = t.total else {
        println!("vm-boot: bench no-first-run");
        return;
    };
    let to_new = vm.created_at() - t_main;
    let main_to_first = to_new + total;
    let mut line = format!(
        "vm-boot: bench main_to_new_us={} create_vm_us={} memory_us={} memory_register_us={} \
         irqchip_us={} load_kernel_us={} cpuid_us={} load_phase_us={} serial_us={} devices_us={} \
         boot_data_us={} vcpus_us={} first_run_us={} new_to_first_run_us={} \
         main_to_first_run_us={}",
        us(to_new),
        us(t.create_vm),
        us(t.memory),
        us(t.memory_register),
        us(t.irqchip),
        us(t.load_kernel),
        us(t.cpuid),
        us(t.load_phase),
        us(t.serial),
        us(t.devices),
        us(t.boot_data),
        us(t.vcpus),
        t.first_run.map_or(0, us),
        us(total),
        us(main_to_first),
    );
    let t0 = std::env::var("VM_BOOT_T0_NS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|t0| *t0 <= mono_main);
    if let Some(t0) = t0 {
        let exec_to_main = Duration::from_nanos(mono_main - t0);
        line += &format!(
            " exec_to_main_us={} exec_to_first_run_us={}",
            us(exec_to_main),
            us(exec_to_main + main_to_first)
        );
    }
    if let Some((total, guest)) = mem {
        line += &format!(
            " rss_kib={total} guest_kib={guest} vmm_kib={}",
            total.saturating_sub(guest)
        );
    }
    println!("{line}");
}
