//! Boot a kernel and an initramfs in the micro-VM, without devices, and
//! print how it ended and how long each phase took.
//!
//! ```text
//! cargo run --example vm-boot -- --kernel K --initramfs CPIO [--cpus N] [--memory MIB]
//!     [--timing] [--console | --log FILE] [--cmdline ARGS] [--marker TEXT]
//!     [--timeout SECS] [--skip-pvm-check]
//! ```
//!
//! Exit status: 0 when the guest reset, 1 on a guest panic, 2 on any other
//! end, 3 when the machine could not be started, 64 on a usage error.

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
}

fn usage(msg: &str) -> ! {
    eprintln!("vm-boot: {msg}");
    eprintln!(
        "usage: vm-boot --kernel K [--initramfs CPIO] [--cpus N] [--memory MIB] [--timing] \
         [--console | --log FILE] [--cmdline ARGS] [--marker TEXT] [--timeout SECS] \
         [--skip-pvm-check]"
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
    if let Some(secs) = a.timeout {
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
        report(&a, &vm, t_main, mem);
    } else {
        let exit = vm.wait();
        let mem = rss_kib(&guest_ranges);
        let _ = exit;
        report(&a, &vm, t_main, mem);
    }
}

fn report(
    a: &Args,
    vm: &sandbox::vm::machine::RunningMachine,
    t_main: Instant,
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
    std::process::exit(match exit {
        VmExit::Reset => 0,
        VmExit::Panic(_) => 1,
        _ => 2,
    })
}
