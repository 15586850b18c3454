#!/bin/bash
# The inside half of bench/vm-lab.sh: runs as root in the nested lab
# (tests/lab/lab.sh --kvm), where /dev/kvm is real. Do not run it by hand
# on a host unless that host has a /dev/kvm that boots Linux guests.
#
#   bash bench/vm-lab-guest.sh --sandbox BIN --init INIT --helper HELPER \
#       --bigroot FILE [--runs N] [--io-runs N] [--big-mib MIB] [--walk DIR]
#
# Prints "RAW ..." lines as it goes and a table at the end. See
# bench/README.md ("The micro-VM benchmark") for what is measured.
set -u

RUNS=10 IO_RUNS=3 BIG_MIB=128 WALK=/usr/lib/python3
SANDBOX='' INIT='' HELPER='' BIGROOT=''
KERNEL=${SANDBOX_KERNEL_IMAGE:-/usr/local/share/sandbox/kernel/vmlinux}
MEM_MIB=512
while [ $# -gt 0 ]; do
	case $1 in
	--runs) RUNS=$2 ;;
	--io-runs) IO_RUNS=$2 ;;
	--big-mib) BIG_MIB=$2 ;;
	--walk) WALK=$2 ;;
	--sandbox) SANDBOX=$2 ;;
	--init) INIT=$2 ;;
	--helper) HELPER=$2 ;;
	--bigroot) BIGROOT=$2 ;;
	*)
		echo "vm-lab-guest: unknown option $1" >&2
		exit 2
		;;
	esac
	shift 2
done

die() {
	echo "vm-lab-guest: $*" >&2
	exit 1
}
note() { echo "vm-lab-guest: $*" >&2; }

for f in "$SANDBOX" "$INIT" "$HELPER"; do
	[ -x "$f" ] || die "not executable: '$f'"
done
[ -r "$KERNEL" ] || die "no guest kernel at $KERNEL"
[ -c /dev/kvm ] || die "no /dev/kvm (run under tests/lab/lab.sh --kvm)"
command -v qemu-system-x86_64 >/dev/null || die "no qemu-system-x86_64"
export SANDBOX_INIT=$INIT
# Every timed run is killed after this many seconds (the helper does it).
export VM_LAB_TIMEOUT=${VM_LAB_TIMEOUT:-120}

work=$(mktemp -d /tmp/vm-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT

# --- small statistics helpers ------------------------------------------
median() { # values on stdin, one a line -> median (empty if none)
	sort -g | awk '{ v[NR] = $1 } END {
		if (NR == 0) exit
		if (NR % 2) printf "%.3f\n", v[(NR + 1) / 2]
		else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
minmax() { sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { if (NR) printf "%.1f-%.1f", lo, hi }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b == 0) print "n/a"; else printf "%.2f", a / b }'; }
# The helper's "vm-lab-time: ns=N status=S" line from FILE -> milliseconds.
time_ms() { sed -n 's/.*vm-lab-time: ns=\([0-9]*\) status=0.*/\1/p' "$1" | tail -n 1 | awk '{ printf "%.3f\n", $1 / 1e6 }'; }

# --- 1. start-up: ours against QEMU microvm ------------------------------
note "1/4 start-up, $RUNS runs each, interleaved"
# QEMU's initramfs: just /init = the helper (reboots at once as PID 1).
# Uncompressed, like the launcher's; the kernel adds /dev/console itself.
mkdir -p "$work/qinit"
cp "$HELPER" "$work/qinit/init"
(cd "$work/qinit" && echo init | cpio -o -H newc --owner=0:0 --quiet) >"$work/qemu-initrd.cpio" ||
	die "cannot build the QEMU initramfs"

qemu_vsock=()
qemu_vsock_note="left out: vhost-vsock-device (no /dev/vhost-vsock in the lab)"
if [ ! -c /dev/vhost-vsock ]; then modprobe vhost_vsock 2>/dev/null || true; fi
if [ -c /dev/vhost-vsock ]; then
	qemu_vsock=(-device vhost-vsock-device,guest-cid=3)
	qemu_vsock_note="included: vhost-vsock-device,guest-cid=3 (in-kernel vhost, not userspace like ours)"
fi
qemu_cmd() { # qemu_cmd VAR SERIAL EXTRA-APPEND: sets the array VAR
	# (the lab has no /dev/fd, so no process substitution)
	local -n cmd=$1
	shift
	# shellcheck disable=SC2054 # commas belong to QEMU's options
	cmd=(qemu-system-x86_64 \
		-M microvm,acpi=off,x-option-roms=off,pit=off,pic=off,isa-serial=on,rtc=off \
		-enable-kvm -cpu host -m "$MEM_MIB" -smp 1 \
		-nodefaults -no-user-config -nographic -monitor none -serial "$1" \
		-kernel "$KERNEL" -initrd "$work/qemu-initrd.cpio" \
		-append "console=ttyS0 quiet panic=-1 reboot=t${2:+ $2}" -no-reboot \
		-device virtio-rng-device \
		-fsdev local,id=root,path=/,readonly=on,security_model=none \
		-device virtio-9p-device,fsdev=root,mount_tag=sandbox-root \
		"${qemu_vsock[@]}")
}
qemu_cmd QEMU null ""
echo "RAW qemu-version $(qemu-system-x86_64 --version | head -n 1)"
echo "RAW qemu-cmd ${QEMU[*]}"
echo "RAW qemu-vsock $qemu_vsock_note"

ours_once() { # ours_once OUTFILE RECEIPT [sandbox args...] -- CMD
	local out=$1 rcpt=$2
	shift 2
	# --cold: the comparison is boot against boot (QEMU boots cold); the
	# resumed path is bench/vm-resume-lab.sh's.
	"$HELPER" time "$SANDBOX" run --vm --cold --receipt "$rcpt" "$@" >"$out.stdout" 2>"$out"
}
qemu_once() { # qemu_once OUTFILE
	"$HELPER" time "${QEMU[@]}" </dev/null >"$1.stdout" 2>"$1"
}

# Pre-flight, untimed: both must work, and serve as warm-up (page cache
# of the kernel image and binaries).
ours_once "$work/pre-ours" "$work/pre.json" -- /bin/true ||
	{ cat "$work/pre-ours" >&2; die "sandbox run --vm -- /bin/true failed"; }
qemu_once "$work/pre-qemu" ||
	{ cat "$work/pre-qemu" "$work/pre-qemu.stdout" >&2; die "QEMU microvm failed"; }

: >"$work/ours.ms" >"$work/qemu.ms" >"$work/ready.ms" >"$work/started.ms"
jnum() { sed -n "s/.*\"$1\": *\([0-9.]*\).*/\1/p" "$2" | head -n 1; }
ours_fail=0 qemu_fail=0
for i in $(seq 1 "$RUNS"); do
	o='' q='' r='' s=''
	if ours_once "$work/o$i" "$work/r$i.json" -- /bin/true; then
		o=$(time_ms "$work/o$i")
		r=$(jnum init_ready_ms "$work/r$i.json") s=$(jnum command_started_ms "$work/r$i.json")
		echo "$o" >>"$work/ours.ms"
		[ -z "$r" ] || echo "$r" >>"$work/ready.ms"
		[ -z "$s" ] || echo "$s" >>"$work/started.ms"
	else
		ours_fail=$((ours_fail + 1))
		echo "RAW start run=$i ours FAILED: $(tr '\n' ' ' <"$work/o$i" | cut -c1-400)"
	fi
	if qemu_once "$work/q$i"; then
		q=$(time_ms "$work/q$i")
		echo "$q" >>"$work/qemu.ms"
	else
		qemu_fail=$((qemu_fail + 1))
		echo "RAW start run=$i qemu FAILED: $(tr '\n' ' ' <"$work/q$i" | cut -c1-400)"
	fi
	echo "RAW start run=$i ours_ms=$o qemu_ms=$q init_ready_ms=$r command_started_ms=$s"
done
ours_med=$(median <"$work/ours.ms") qemu_med=$(median <"$work/qemu.ms")
ready_med=$(median <"$work/ready.ms") started_med=$(median <"$work/started.ms")
start_ratio=$(ratio "$ours_med" "$qemu_med")
start_verdict=$(awk -v r="$start_ratio" 'BEGIN { print (r != "n/a" && r <= 0.70) ? "PASS" : "MISS" }')

# --- 2. the guest kernel's own time to /init -----------------------------
note "2/4 kernel time to /init"
# "Run /init as init process" is KERN_INFO: loglevel=7 after quiet shows it;
# printk.time=1 stamps it (CONFIG_PRINTK_TIME is on anyway).
init_stamp() { sed -n 's/^\[ *\([0-9.]*\)\] Run \/init as init process.*/\1/p' "$1" | head -n 1 | awk '{ printf "%.1f\n", $1 * 1000 }'; }
SANDBOX_VM_CMDLINE="loglevel=7 printk.time=1" SANDBOX_VM_CONSOLE="$work/ours-console.log" \
	ours_once "$work/k-ours" "$work/k.json" -- /bin/true || note "console boot (ours) failed"
qemu_cmd QEMU_LOG "file:$work/qemu-console.log" "loglevel=7 printk.time=1"
"$HELPER" time "${QEMU_LOG[@]}" </dev/null >/dev/null 2>"$work/k-qemu" || note "console boot (qemu) failed"
kinit_ours=$(init_stamp "$work/ours-console.log")
kinit_qemu=$(init_stamp "$work/qemu-console.log")
echo "RAW kernel-to-init ours_ms=$kinit_ours qemu_ms=$kinit_qemu"
echo "RAW qemu-guest-cmdline $(grep -m 1 'Command line:' "$work/qemu-console.log" 2>/dev/null)"
echo "RAW ours-guest-cmdline $(grep -m 1 'Command line:' "$work/ours-console.log" 2>/dev/null)"
echo "RAW qemu-guest-virtio $(grep -c 'virtio' "$work/qemu-console.log" 2>/dev/null) virtio lines; ours $(grep -c 'virtio' "$work/ours-console.log" 2>/dev/null)"
for l in ours qemu; do
	grep -q 'Run /init' "$work/$l-console.log" 2>/dev/null ||
		{ note "no 'Run /init' line in the $l console log; its tail:"; tail -n 5 "$work/$l-console.log" >&2 2>/dev/null; }
done

# --- 3. host-share throughput --------------------------------------------
note "3/4 host-share throughput, $IO_RUNS runs"
# The lab's own / is itself a 9p mount from the outer QEMU (cache=loose);
# its /var/tmp is a tmpfs. Ours reads through our in-process 9p server,
# which itself reads the lab's file systems.
drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }
mbs() { awk -v mib="$1" -v ms="$2" 'BEGIN { if (ms == "" || ms == 0) print "n/a"; else printf "%.0f", mib * 1048576 / 1e6 / (ms / 1000) }'; }
secs() { awk -v ms="$1" 'BEGIN { if (ms == "") print "n/a"; else printf "%.2f", ms / 1000 }'; }

data=/var/tmp/bench
mkdir -p "$data" && touch "$data/.w" 2>/dev/null || die "/var/tmp is not writable in the lab"
dd if=/dev/zero of="$data/big" bs=1M count="$BIG_MIB" status=none || die "cannot write $data/big"
big_bytes=$(stat -c %s "$data/big")
[ -r "$BIGROOT" ] || die "no file $BIGROOT on the shared root (vm-lab.sh creates it)"
root_mib=$(($(stat -c %s "$BIGROOT") / 1048576))

: >"$work/io-tmpfs-lab" >"$work/io-tmpfs-ours" >"$work/io-root-lab" >"$work/io-root-ours"
: >"$work/walk-lab" >"$work/walk-ours"
# Warm the lab's dentry cache for the walk: both sides then walk a lab
# whose own 9p metadata is cached; only ours adds its 9p hop.
find "$WALK" >/dev/null 2>&1
# io KEY CMD...: run CMD (its stderr holds the helper's time line), append
# the milliseconds to $work/KEY, or say why it failed.
io() {
	local key=$1
	shift
	if VM_LAB_TIMEOUT=900 "$@" 2>"$work/t" && [ -n "$(time_ms "$work/t")" ]; then
		time_ms "$work/t" >>"$work/$key"
	else
		echo "RAW io $key FAILED: $(tr '\n' ' ' <"$work/t" | cut -c1-400)"
	fi
}
for i in $(seq 1 "$IO_RUNS"); do
	# tmpfs file: lab direct vs ours through a volume (the destination must
	# exist in the guest: below its /tmp tmpfs).
	io io-tmpfs-lab "$HELPER" time dd if="$data/big" of=/dev/null bs=1M status=none
	io io-tmpfs-ours timeout 600 "$SANDBOX" run --vm -v "$data:/tmp/data:ro" -- \
		"$HELPER" time dd if=/tmp/data/big of=/dev/null bs=1M status=none
	# root-share file (on the lab's 9p root), lab caches dropped before each.
	drop
	io io-root-lab "$HELPER" time dd if="$BIGROOT" of=/dev/null bs=1M status=none
	drop
	io io-root-ours timeout 600 "$SANDBOX" run --vm -- \
		"$HELPER" time dd if="$BIGROOT" of=/dev/null bs=1M status=none
	# metadata walk through the root share
	io walk-lab "$HELPER" time sh -c "find '$WALK' 2>/dev/null | wc -l >'$work/walk-count-lab'"
	io walk-ours timeout 600 "$SANDBOX" run --vm -- \
		"$HELPER" time sh -c "find '$WALK' 2>/dev/null | wc -l" >"$work/walk-count-ours"
	echo "RAW io run=$i tmpfs_lab_ms=$(tail -n 1 "$work/io-tmpfs-lab") tmpfs_ours_ms=$(tail -n 1 "$work/io-tmpfs-ours")" \
		"root_lab_ms=$(tail -n 1 "$work/io-root-lab") root_ours_ms=$(tail -n 1 "$work/io-root-ours")" \
		"walk_lab_ms=$(tail -n 1 "$work/walk-lab") walk_ours_ms=$(tail -n 1 "$work/walk-ours")"
done
for k in io-tmpfs-lab io-tmpfs-ours io-root-lab io-root-ours walk-lab walk-ours; do
	[ -s "$work/$k" ] || note "no successful $k measurement (see RAW lines)"
done
t_lab=$(median <"$work/io-tmpfs-lab") t_ours=$(median <"$work/io-tmpfs-ours")
r_lab=$(median <"$work/io-root-lab") r_ours=$(median <"$work/io-root-ours")
w_lab=$(median <"$work/walk-lab") w_ours=$(median <"$work/walk-ours")
wc_lab=$(tr -d ' ' <"$work/walk-count-lab") wc_ours=$(grep -E '^ *[0-9]+ *$' "$work/walk-count-ours" 2>/dev/null | tr -d ' ')
big_mib=$((big_bytes / 1048576))

# --- 4. VMM memory beside guest RAM --------------------------------------
note "4/4 memory"
# Rss of the whole process (smaps_rollup) minus the Rss of the guest RAM
# mapping, sampled once a second while the guest sleeps (the peak kept).
mem_of() { # mem_of PID -> "total_kib guest_kib guest_size_kib"
	# The guest RAM: the largest mapping of at least half the guest's size
	# (QEMU's anonymous RAM; ours, or the snapshot's memory file when
	# resumed), grown by the mappings adjacent to it as long as the whole
	# stays within the guest's size: our VMM maps the kernel's segments
	# from the vmlinux file into the middle of the anonymous RAM, which
	# splits it into pieces. timeout: a process stuck in the kernel with
	# its mmap lock held would block the read.
	local total
	total=$(timeout -s KILL 20 awk '/^Rss:/ { print $2 }' "/proc/$1/smaps_rollup" 2>/dev/null)
	timeout -s KILL 20 awk -v total="$total" -v mem=$((MEM_MIB * 1024)) '
		function hex(h,   i, v) { v = 0; h = tolower(h)
			for (i = 1; i <= length(h); i++) v = v * 16 + index("0123456789abcdef", substr(h, i, 1)) - 1
			return v }
		/^[0-9a-f]+-[0-9a-f]+ / { split($1, a, "-"); n++; lo[n] = hex(a[1]); hi[n] = hex(a[2]) }
		/^Size:/ { size[n] = $2 }
		/^Rss:/ { rss[n] = $2 }
		END {
			b = 0
			for (i = 1; i <= n; i++) if (size[i] >= mem / 2 && (b == 0 || size[i] > size[b])) b = i
			if (b == 0) { printf "%s  \n", total; exit }
			sum = size[b]; r = rss[b]; l = b; h = b
			while (l > 1 && hi[l - 1] == lo[l] && sum + size[l - 1] <= mem) { l--; sum += size[l]; r += rss[l] }
			while (h < n && lo[h + 1] == hi[h] && sum + size[h + 1] <= mem) { h++; sum += size[h]; r += rss[h] }
			printf "%s %s %s\n", total, r, sum
		}' "/proc/$1/smaps" 2>/dev/null
}
wait_bounded() { # wait_bounded PID SECONDS NAME: never hang the benchmark
	local n=0
	while kill -0 "$1" 2>/dev/null; do
		n=$((n + 1))
		if [ "$n" -gt "$2" ]; then
			note "$3 (pid $1) still alive after $2 s: $(tr '\0' ' ' <"/proc/$1/cmdline" | cut -c1-80); state $(awk '/^State:/ { print $2 }' "/proc/$1/status"); wchan $(cat "/proc/$1/wchan" 2>/dev/null)"
			echo "RAW mem $3 did not exit in $2 s"
			return 1
		fi
		sleep 1
	done
	wait "$1" 2>/dev/null
}
# sample PID NAME: sample once a second until PID exits (at most 100 s);
# keeps the sample with the largest total Rss in S_TOTAL S_GUEST S_SIZE.
sample() {
	local n=0 t g z
	S_TOTAL='' S_GUEST='' S_SIZE=''
	while kill -0 "$1" 2>/dev/null; do
		read -r t g z <<<"$(mem_of "$1")"
		if [ -n "$g" ] && [ "${t:-0}" -gt "${S_TOTAL:-0}" ]; then
			S_TOTAL=$t S_GUEST=$g S_SIZE=$z
		fi
		n=$((n + 1))
		[ "$n" -le 100 ] || break
		sleep 1
	done
	wait_bounded "$1" 10 "$2"
}
"$SANDBOX" run --vm -- sleep 8 >/dev/null 2>&1 &
opid=$!
(sleep 90 && kill -9 "$opid") >/dev/null 2>&1 &
sample "$opid" ours
o_total=$S_TOTAL o_guest=$S_GUEST o_size=$S_SIZE
qemu_cmd QEMU_SLEEP null "BENCH_SLEEP=8"
"${QEMU_SLEEP[@]}" </dev/null >/dev/null 2>&1 &
qpid=$!
(sleep 90 && kill -9 "$qpid") >/dev/null 2>&1 &
sample "$qpid" qemu
q_total=$S_TOTAL q_guest=$S_GUEST q_size=$S_SIZE
o_vmm=$(awk -v a="${o_total:-}" -v b="${o_guest:-}" 'BEGIN { if (a == "" || b == "") print "n/a"; else printf "%.1f", (a - b) / 1024 }')
q_vmm=$(awk -v a="${q_total:-}" -v b="${q_guest:-}" 'BEGIN { if (a == "" || b == "") print "n/a"; else printf "%.1f", (a - b) / 1024 }')
echo "RAW mem ours total_kib=${o_total:-} guest_rss_kib=${o_guest:-} guest_map_kib=${o_size:-}"
echo "RAW mem qemu total_kib=${q_total:-} guest_rss_kib=${q_guest:-} guest_map_kib=${q_size:-}"

# --- the table -----------------------------------------------------------
kib_mib() { awk -v k="$1" 'BEGIN { if (k == "") print "n/a"; else printf "%.1f", k / 1024 }'; }
cat <<EOF

== micro-VM benchmark (one lab boot, $(nproc) lab vCPUs, nested KVM) ==
vm-start:   ours $ours_med ms, qemu $qemu_med ms, ratio ${start_ratio}x (target <= 0.70x) $start_verdict   [N=$RUNS interleaved, failed: ours $ours_fail, qemu $qemu_fail; ours $(minmax <"$work/ours.ms") ms, qemu $(minmax <"$work/qemu.ms") ms]
            ours = sandbox run --vm -- /bin/true (exec to exit); qemu = microvm, same kernel, /init reboots at once
            qemu devices: virtio-rng-device, virtio-9p-device (/); vsock $qemu_vsock_note
vm-phases:  ours init_ready (Hello) median $ready_med ms, command_started median $started_med ms (receipt, from launcher VM setup start)
kernel:     time to 'Run /init' (printk, one boot each): ours ${kinit_ours:-n/a} ms, qemu ${kinit_qemu:-n/a} ms
read tmpfs: ${big_mib} MiB, lab direct $(secs "$t_lab") s ($(mbs "$big_mib" "$t_lab") MB/s), ours via -v volume $(secs "$t_ours") s ($(mbs "$big_mib" "$t_ours") MB/s), ours/lab throughput $(ratio "$t_lab" "$t_ours")x
read root:  ${root_mib} MiB on the lab's 9p root (caches dropped), lab direct $(secs "$r_lab") s ($(mbs "$root_mib" "$r_lab") MB/s), ours via root share $(secs "$r_ours") s ($(mbs "$root_mib" "$r_ours") MB/s), ours/lab throughput $(ratio "$r_lab" "$r_ours")x
walk:       find $WALK | wc -l: lab direct (9p root, warm) $(secs "$w_lab") s [$wc_lab entries], ours $(secs "$w_ours") s [${wc_ours:-?} entries], ours/lab time $(ratio "$w_ours" "$w_lab")x
memory:     ours Rss $(kib_mib "${o_total:-}") MiB = guest RAM $(kib_mib "${o_guest:-}") MiB + VMM $o_vmm MiB; qemu Rss $(kib_mib "${q_total:-}") MiB = guest RAM $(kib_mib "${q_guest:-}") MiB + VMM $q_vmm MiB (guest mapping ${o_size:-?} / ${q_size:-?} KiB)
            (IO: median of $IO_RUNS; ours timed inside the guest, boot not included)
EOF
