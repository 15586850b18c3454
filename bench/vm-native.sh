#!/usr/bin/env bash
# Micro-VM start-up benchmark, natively on this host: how long our VMM
# (launcher/examples/vm-boot.rs, the same Machine code `sandbox run --vm`
# uses) takes from process start to vCPU 0's first KVM_RUN, per phase,
# with 256 MiB of guest memory and the installed vmlinux, and how much
# memory the VMM itself holds beside guest RAM at that point.
#
# Usage:   bench/vm-native.sh [RUNS]          (default 30)
#
# Each run: `vm-boot --skip-pvm-check --timing --stop-after-first-run`,
# spawned (posix_spawn, no shell) by a small Python timer that passes its
# CLOCK_MONOTONIC spawn time in VM_BOOT_T0_NS, so the example reports the
# time from exec as well as from main(). The VM is stopped as soon as
# KVM_RUN is entered: on a PVM host the guest cannot boot anyway.
#
# Environment: VM_BOOT (prebuilt example, skips the build), KERNEL (default
# the installed vmlinux), MEMORY (MiB, default 256), INITRAMFS (a cpio to
# load too; default none), BENCH_WARMUP (untimed runs first, default 3).
#
# Exits 0 when it could measure (a MISS is reported, not fatal), 1 when it
# could not (no /dev/kvm, no kernel, a failed build or run).

set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
RUNS=${1:-30}
KERNEL=${KERNEL:-/usr/local/share/sandbox/kernel/vmlinux}
MEMORY=${MEMORY:-256}
WARMUP=${BENCH_WARMUP:-3}
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3

case $RUNS in '' | *[!0-9]* | 0) echo "vm-native.sh: RUNS must be a positive number, not '$RUNS'" >&2; exit 1 ;; esac
[ -c /dev/kvm ] || { echo "vm-native.sh: no /dev/kvm" >&2; exit 1; }
[ -r "$KERNEL" ] || { echo "vm-native.sh: no kernel at $KERNEL (set KERNEL)" >&2; exit 1; }

if [ -z "${VM_BOOT:-}" ]; then
	echo "vm-native.sh: building the vm-boot example (release)..." >&2
	(cd "$ROOT" && cargo build --release -q -p sandbox --example vm-boot) || exit 1
	VM_BOOT=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps |
		"$PY" -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/examples/vm-boot
fi
[ -x "$VM_BOOT" ] || { echo "vm-native.sh: $VM_BOOT is not executable" >&2; exit 1; }

args=(--kernel "$KERNEL" --memory "$MEMORY" --skip-pvm-check --timing --stop-after-first-run)
[ -n "${INITRAMFS:-}" ] && args+=(--initramfs "$INITRAMFS")

"$PY" - "$RUNS" "$WARMUP" "$VM_BOOT" "${args[@]}" <<'PYEOF'
import os, statistics, subprocess, sys, time

runs, warmup, exe, args = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4:]
TARGET_MS, TARGET_VMM_MIB = 5.0, 10.0

def one():
    t0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    env = dict(os.environ, VM_BOOT_T0_NS=str(t0))
    r, w = os.pipe()
    pid = os.posix_spawn(exe, [exe] + args, env,
                         file_actions=[(os.POSIX_SPAWN_DUP2, w, 1),
                                       (os.POSIX_SPAWN_OPEN, 2, "/dev/null", os.O_WRONLY, 0)])
    os.close(w)
    out = b""
    while chunk := os.read(r, 65536):
        out += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    wall_us = (time.clock_gettime_ns(time.CLOCK_MONOTONIC) - t0) / 1e3
    text = out.decode(errors="replace")
    code = os.waitstatus_to_exitcode(status)
    line = next((l for l in text.splitlines() if l.startswith("vm-boot: bench ")), None)
    if code != 0 or line is None or "no-first-run" in line:
        sys.exit(f"vm-native.sh: run failed (exit {code}):\n{text}")
    d = {k: float(v) for k, v in (kv.split("=", 1) for kv in line.split()[2:])}
    d["exec_to_exit_us"] = wall_us
    return d

for _ in range(warmup):
    one()
samples = [one() for _ in range(runs)]
med = lambda k: statistics.median(s[k] for s in samples)
lo = lambda k: min(s[k] for s in samples)
hi = lambda k: max(s[k] for s in samples)

print(f"\nMicro-VM start, natively ({runs} runs after {warmup} warm-up; "
      f"{os.path.basename(args[1])}, {args[3]} MiB guest RAM)\n")
rows = [
    ("exec -> main()", "exec_to_main_us"),
    ("main() -> Machine::new", "main_to_new_us"),
    ("  KVM_CREATE_VM", "create_vm_us"),
    ("  map guest RAM", "memory_us"),
    ("  load phase (wall)", "load_phase_us"),
    ("    | memory slot", "memory_register_us"),
    ("    | + irqchip, PIT, TSS", "irqchip_us"),
    ("    || kernel, initramfs, tables", "load_kernel_us"),
    ("    || + KVM_GET_SUPPORTED_CPUID", "cpuid_us"),
    ("  serial port", "serial_us"),
    ("  devices (none here)", "devices_us"),
    ("  cmdline, zero page, RNG seed", "boot_data_us"),
    ("  vCPUs", "vcpus_us"),
    ("  threads -> first KVM_RUN", "first_run_us"),
    ("Machine::new -> first KVM_RUN", "new_to_first_run_us"),
]
print(f"{'phase':34} {'median ms':>10} {'min':>8} {'max':>8}")
for name, k in rows:
    if k in samples[0]:
        print(f"{name:34} {med(k)/1e3:10.3f} {lo(k)/1e3:8.3f} {hi(k)/1e3:8.3f}")
print()
verdict = lambda ok: "PASS" if ok else "MISS"
print(f"{'total':34} {'median':>10} {'target':>8} {'':>8}")
m = med("main_to_first_run_us") / 1e3
print(f"{'main() -> first KVM_RUN (ms)':34} {m:10.3f} {'< 5':>8} {verdict(m < TARGET_MS):>8}")
if "exec_to_first_run_us" in samples[0]:
    e = med("exec_to_first_run_us") / 1e3
    print(f"{'exec -> first KVM_RUN (ms)':34} {e:10.3f} {'< 5':>8} {verdict(e < TARGET_MS):>8}")
w = med("exec_to_exit_us") / 1e3
print(f"{'exec -> exit, wall (ms; info)':34} {w:10.3f} {'':>8} {'':>8}")
if "vmm_kib" in samples[0]:
    v = med("vmm_kib") / 1024
    g = med("guest_kib") / 1024
    print(f"{'VMM memory beside guest RAM (MiB)':34} {v:10.2f} {'< 10':>8} {verdict(v < TARGET_VMM_MIB):>8}")
    print(f"{'guest RAM touched (MiB; info)':34} {g:10.2f} {'':>8} {'':>8}")
print("\n(VMM memory: RSS minus the resident pages of the guest RAM mappings, at the "
      "first KVM_RUN.)")
PYEOF

# Part 2: the real launcher, `sandbox run --vm -- /bin/true`, from the
# start of `sandbox run` (spec, host check, initramfs with the static init,
# the 9p servers, vsock, the devices) to vCPU 0's first KVM_RUN, read from
# the receipt (vm.first_kvm_run_ms). SANDBOX_VM_ALLOW_PVM=1 lets it create
# the VM on this PVM host; the guest then cannot boot, so each run ends
# with a VMM error or its --timeout, which is expected here.
MUSL=x86_64-unknown-linux-musl
if [ -z "${SANDBOX:-}" ]; then
	echo "vm-native.sh: building the static launcher and init (release)..." >&2
	(cd "$ROOT" && cargo build --release -q -p sandbox -p sandbox-init --target $MUSL) || exit 1
	SANDBOX=$ROOT/target/$MUSL/release/sandbox
	export SANDBOX_INIT=$ROOT/target/$MUSL/release/sandbox-init
fi
"$PY" - "$RUNS" "$WARMUP" "$SANDBOX" "$MEMORY" <<'PYEOF'
import json, os, statistics, subprocess, sys, tempfile

runs, warmup, exe, mem = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
pvm = os.path.exists("/sys/module/kvm_pvm")
env = dict(os.environ, SANDBOX_VM_ALLOW_PVM="1") if pvm else dict(os.environ)
rec = os.path.join(tempfile.mkdtemp(prefix="vm-native."), "r.json")
def one():
    try:
        os.unlink(rec)
    except FileNotFoundError:
        pass
    subprocess.run([exe, "run", "--vm", "--memory", f"{mem}m", "--timeout", "3s",
                    "--receipt", rec, "--", "/bin/true"], env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(rec) as f:
        vm = json.load(f).get("vm") or {}
    if vm.get("first_kvm_run_ms") is None:
        sys.exit("vm-native.sh: the launcher reported no first KVM_RUN")
    return vm
for _ in range(warmup):
    one()
s = [one() for _ in range(runs)]
m = statistics.median(v["first_kvm_run_ms"] for v in s)
ph = lambda k: statistics.median(v["machine_phases_us"][k] for v in s) / 1e3
print(f"\nsandbox run --vm -- /bin/true, launcher start -> first KVM_RUN "
      f"({runs} runs, {mem} MiB{', PVM host: the guest cannot boot' if pvm else ''})\n")
print(f"{'  of which Machine::new -> first KVM_RUN':42} {ph('total'):8.3f} ms")
print(f"{'  of which loading the kernel':42} {ph('load_kernel'):8.3f} ms")
print(f"{'  of which adding the devices':42} {ph('devices'):8.3f} ms")
print(f"{'launcher start -> first KVM_RUN (median)':42} {m:8.3f} ms   target < 5   "
      f"{'PASS' if m < 5.0 else 'MISS'}")
PYEOF
