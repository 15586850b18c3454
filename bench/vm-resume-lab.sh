#!/usr/bin/env bash
# Snapshot resume in the nested lab (real nested KVM): resume-to-command
# against cold-boot-to-command of `sandbox run --vm -- /bin/true`, in ONE
# lab boot, RUNS pairs interleaved (bench/vm-resume-lab-guest.sh). The
# first run makes the VM shape's automatic snapshot (its cost is printed
# too). Figures, medians: the receipt's `vm.command_started_ms` (the
# launcher's VM setup start to init's `Started`, i.e. the command is
# running) and the wall time of the whole run; ratio resume/cold, target
# <= 0.10 (docs/snapshots.md, docs/performance.md).
#
#   bench/vm-resume-lab.sh [RUNS]        (default 10)
#
# Environment: SANDBOX_BIN / SANDBOX_INIT (prebuilt binaries; skip the
# release builds), LAB_TIMEOUT (seconds, default 1200).
set -euo pipefail
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
RUNS=${1:-10}
case $RUNS in '' | *[!0-9]* | 0) echo "vm-resume-lab.sh: RUNS must be a positive number, not '$RUNS'" >&2; exit 1 ;; esac
cd "$ROOT"
if [ -z "${SANDBOX_BIN:-}" ]; then
	echo "vm-resume-lab.sh: building release binaries..." >&2
	cargo build --release -q -p sandbox
	cargo build --release -q -p sandbox-init --target x86_64-unknown-linux-musl
	SANDBOX_BIN=$ROOT/target/release/sandbox
	SANDBOX_INIT=$ROOT/target/x86_64-unknown-linux-musl/release/sandbox-init
fi
export SANDBOX_INIT
out=$(tests/lab/lab.sh --kvm --timeout "${LAB_TIMEOUT:-1200}" -- env SANDBOX_INIT="$SANDBOX_INIT" \
	/bin/sh "$BENCH_DIR/vm-resume-lab-guest.sh" "$SANDBOX_BIN" "$RUNS")
printf '%s\n' "$out" | grep -v '^RUN ' || true
printf '%s\n' "$out" | python3 -c '
import statistics, sys
runs = [l.split() for l in sys.stdin if l.startswith("RUN ")]
def f(v):
    return None if v == "None" else float(v)
def col(label, i):
    return [f(r[i]) for r in runs if r[1] == label and r[2] == "0" and f(r[i]) is not None]
bad = [r for r in runs if r[2] != "0"]
if bad:
    print("failed runs:", bad)
c = [r for r in runs if r[1] == "create"]
if c:
    print("first run (makes the snapshot): wall %s ms, snapshot made in %s ms, boot %s" % (c[0][3], c[0][7], c[0][4]))
for what, i in (("to the command (receipt command_started_ms)", 6), ("whole run, wall", 3)):
    cold, res = col("cold", i), col("resume", i)
    if not cold or not res:
        print("no figures for", what); continue
    mc, mr = statistics.median(cold), statistics.median(res)
    print("%-45s cold %8.1f ms  resume %8.1f ms  ratio %.3f" % (what, mc, mr, mr / mc))
    if i == 6:
        print("target resume-to-command <= 0.10x cold-boot-to-command:", "PASS" if mr / mc <= 0.10 else "MISS")
boots = sorted(set(r[4] for r in runs if r[1] == "resume"))
print("resume runs took path:", boots)
'
