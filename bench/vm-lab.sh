#!/usr/bin/env bash
# Micro-VM benchmark, host side: `sandbox run --vm` against QEMU's microvm
# machine booting the same kernel, plus kernel time to /init, host-share
# throughput and VMM memory. Everything is measured inside ONE boot of the
# nested lab (tests/lab/lab.sh --kvm), where /dev/kvm can boot Linux.
#
#   bench/vm-lab.sh [--runs N] [--io-runs N] [--big-mib MIB] [--walk DIR]
#
#   --runs N      start-up runs per side, interleaved (default 10)
#   --io-runs N   runs of each throughput measurement (default 3)
#   --big-mib MIB size of the files read sequentially (default 128)
#   --walk DIR    the tree walked by `find DIR | wc -l` (default /usr/lib/python3)
#
# Environment: SANDBOX_BIN / SANDBOX_INIT (prebuilt binaries; skip the
# builds), LAB_TIMEOUT (seconds, default 900).
#
# Builds release binaries, both static musl (as `make install` ships them);
# the QEMU guest's /init is bench/vm-lab-helper.c (static, gcc). Output:
# the lab's report on stdout, also saved under bench/results/vm-<UTC>/.
# See bench/README.md ("The micro-VM benchmark").
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
MUSL_TARGET=x86_64-unknown-linux-musl
log() { printf '==> %s\n' "$*" >&2; }
die() {
	printf 'vm-lab: %s\n' "$*" >&2
	exit 1
}

guest_args=()
big_mib=128
while [ $# -gt 0 ]; do
	case $1 in
	--runs | --io-runs | --big-mib)
		[ $# -ge 2 ] || die "$1 needs a value"
		[[ $2 =~ ^[1-9][0-9]*$ ]] || die "$1 $2: not a positive integer"
		[ "$1" != --big-mib ] || big_mib=$2
		guest_args+=("$1" "$2")
		shift
		;;
	--walk)
		[ $# -ge 2 ] || die "$1 needs a value"
		[ -d "$2" ] || die "--walk $2: not a directory"
		guest_args+=("$1" "$2")
		shift
		;;
	-h | --help)
		sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
		exit 0
		;;
	*) die "unknown option '$1' (see --help)" ;;
	esac
	shift
done

cd "$ROOT"
out=$ROOT/target/bench-vm
mkdir -p "$out"

# --- binaries --------------------------------------------------------------
if [ -n "${SANDBOX_BIN:-}" ]; then
	sandbox=$SANDBOX_BIN
else
	log "cargo build --release -p sandbox -p sandbox-init --target $MUSL_TARGET"
	cargo build --release -p sandbox -p sandbox-init --target "$MUSL_TARGET" >&2 ||
		die "the release musl build failed (see above)"
	sandbox=$ROOT/target/$MUSL_TARGET/release/sandbox
fi
if [ -n "${SANDBOX_INIT:-}" ]; then
	init=$SANDBOX_INIT
elif [ -x "$(dirname "$sandbox")/sandbox-init" ] && ! readelf -l "$(dirname "$sandbox")/sandbox-init" 2>/dev/null | grep -q INTERP; then
	init=$(dirname "$sandbox")/sandbox-init
else
	[ -n "${SANDBOX_BIN:-}" ] && cargo build --release -p sandbox-init --target "$MUSL_TARGET" >&2
	init=$ROOT/target/$MUSL_TARGET/release/sandbox-init
fi
for f in "$sandbox" "$init"; do
	[ -x "$f" ] || die "missing binary $f"
done
readelf -l "$init" 2>/dev/null | grep -q INTERP && die "$init is not static (the guest needs a static sandbox-init)"
readelf -l "$sandbox" 2>/dev/null | grep -q INTERP && log "note: $sandbox is dynamically linked (not the shipped static musl build)"

helper=$out/vm-lab-helper
if [ ! -x "$helper" ] || [ "$BENCH_DIR/vm-lab-helper.c" -nt "$helper" ]; then
	log "gcc -O2 -static -o $helper bench/vm-lab-helper.c"
	gcc -O2 -Wall -static -o "$helper.new" "$BENCH_DIR/vm-lab-helper.c" || die "cannot build the helper (gcc, static glibc)"
	mv "$helper.new" "$helper"
fi

# The big file of the root-share read: on the host's disk, which the lab
# sees through its own 9p root (the lab's /var/tmp is a tmpfs).
bigroot=$out/big-$big_mib.bin
if [ ! -f "$bigroot" ] || [ "$(stat -c %s "$bigroot")" != $((big_mib * 1048576)) ]; then
	log "creating $bigroot ($big_mib MiB)"
	rm -f "$out"/big-*.bin
	dd if=/dev/zero of="$bigroot" bs=1M count="$big_mib" status=none
fi

# --- the lab -----------------------------------------------------------------
stamp=$(date -u +%Y%m%dT%H%M%SZ)
res=$BENCH_DIR/results/vm-$stamp
mkdir -p "$res"
log "tests/lab/lab.sh --kvm (one boot; expect ~5 minutes)"
set +e
"$ROOT/tests/lab/lab.sh" --kvm --timeout "${LAB_TIMEOUT:-900}" -- \
	bash "$BENCH_DIR/vm-lab-guest.sh" --sandbox "$sandbox" --init "$init" \
	--helper "$helper" --bigroot "$bigroot" "${guest_args[@]}" 2> >(tee "$res/stderr.txt" >&2) | tee "$res/output.txt"
rc=${PIPESTATUS[0]}
set -e
if [ "$rc" != 0 ]; then
	die "the lab run failed (status $rc); output in $res"
fi
log "saved to $res"
