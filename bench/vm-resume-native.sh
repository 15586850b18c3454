#!/usr/bin/env bash
# Snapshot resume benchmark, natively on this host (docs/snapshots.md,
# docs/performance.md): launcher/examples/vm-resume.rs saves a synthetic
# real-mode guest (this PVM host runs real-mode code but cannot boot our
# kernel) with MEMORY MiB of RAM, FILL MiB of it non-zero, and resumes it
# through Machine::resume, the path `sandbox run --vm` takes from a
# snapshot. It prints, medians over RUNS:
#   resume_to_first_kvm_run_us   state checks + Machine::resume + vCPU start,
#                                to vCPU 0 entering KVM_RUN (target < 2 ms)
#   cold_to_first_kvm_run_us     the peer in the same run: Machine::new with
#                                the installed vmlinux, same memory, to its
#                                first KVM_RUN; and the ratio
#   private_kib_per_extra_resume what each further machine resumed from the
#                                same memory file adds in private memory
#                                (its clean pages are the file's page cache)
#
# Usage:   bench/vm-resume-native.sh [RUNS]      (default 30)
# Environment: MEMORY (MiB, default 256), FILL (MiB, default 64), CLONES
# (default 8), VM_RESUME (a prebuilt example; skips the build).
# Exits 0 when it measured (a MISS is reported, not fatal), 1 when it could
# not (no /dev/kvm, a failed build or run).
set -euo pipefail
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
RUNS=${1:-30}
case $RUNS in '' | *[!0-9]* | 0) echo "vm-resume-native.sh: RUNS must be a positive number, not '$RUNS'" >&2; exit 1 ;; esac
[ -c /dev/kvm ] || { echo "vm-resume-native.sh: no /dev/kvm" >&2; exit 1; }
if [ -z "${VM_RESUME:-}" ]; then
	echo "vm-resume-native.sh: building the vm-resume example (release)..." >&2
	(cd "$ROOT" && cargo build --release -q -p sandbox --example vm-resume) || exit 1
	VM_RESUME=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps |
		python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/examples/vm-resume
fi
exec "$VM_RESUME" --memory "${MEMORY:-256}" --fill "${FILL:-64}" --runs "$RUNS" --clones "${CLONES:-8}"
