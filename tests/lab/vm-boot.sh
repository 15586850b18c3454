#!/bin/sh
# Boot the sandbox guest kernel in our own VMM (launcher/examples/vm-boot.rs)
# inside the nested lab, where /dev/kvm is real:
#
#   cargo build --release -p sandbox --example vm-boot
#   tests/lab/lab.sh --kvm -- sh tests/lab/vm-boot.sh [--console]
#
# Builds two initramfs images (newc cpio, static busybox as /bin/busybox):
# one whose /init prints VM-BOOT-OK on the console and reboots, one whose
# /init exits (the kernel panics: "Attempted to kill init"). Checks that
# the first ends with VmExit Reset and the marker on the serial, with
# vmlinux (1 and 2 vCPUs) and with bzImage, and that the second ends with
# VmExit Panic. Prints each boot's timings. Exit status 0 when all pass.
set -u

VM_BOOT=${VM_BOOT:-target/release/examples/vm-boot}
KDIR=${KDIR:-/usr/local/share/sandbox/kernel}
TIMEOUT=${TIMEOUT:-180}
CONSOLE=0
[ "${1:-}" = "--console" ] && CONSOLE=1

fail=0
pass=0
work=$(mktemp -d /tmp/vm-boot.XXXXXX)
trap 'rm -rf "$work"' EXIT

[ -x "$VM_BOOT" ] || { echo "vm-boot.sh: $VM_BOOT missing: cargo build --release -p sandbox --example vm-boot"; exit 2; }
[ -c /dev/kvm ] || { echo "vm-boot.sh: no /dev/kvm (run under tests/lab/lab.sh --kvm)"; exit 2; }

mkcpio() { # NAME INIT-BODY
	d=$work/$1
	mkdir -p "$d/bin" "$d/dev" "$d/proc"
	cp /bin/busybox "$d/bin/busybox"
	mknod "$d/dev/console" c 5 1 2>/dev/null || true
	printf '#!/bin/busybox sh\n%s\n' "$2" > "$d/init"
	chmod 755 "$d/init"
	(cd "$d" && find . | cpio -o -H newc 2>/dev/null) > "$work/$1.cpio"
}

mkcpio ok '/bin/busybox mount -t devtmpfs dev /dev 2>/dev/null
/bin/busybox echo VM-BOOT-OK > /dev/console
/bin/busybox reboot -f'
mkcpio panic '/bin/busybox echo init exits now > /dev/console
exit 1'

boot() { # LABEL EXPECT(Reset|Panic) KERNEL CPIO CPUS
	label=$1 expect=$2 kernel=$3 cpio=$4 cpus=$5
	log=$work/$label.log out=$work/$label.out
	start=$(date +%s.%N)
	timeout "$TIMEOUT" "$VM_BOOT" --kernel "$kernel" --initramfs "$cpio" --cpus "$cpus" \
		--memory 256 --timing --log "$log" --timeout "$TIMEOUT" > "$out" 2>&1
	rc=$?
	end=$(date +%s.%N)
	wall=$(echo "$end - $start" | bc)
	ok=1
	grep -q "vm-boot: exit: $expect" "$out" || ok=0
	if [ "$expect" = Reset ]; then
		grep -q VM-BOOT-OK "$log" || ok=0
	fi
	if [ $ok = 1 ]; then
		pass=$((pass + 1)); verdict=PASS
	else
		fail=$((fail + 1)); verdict=FAIL
	fi
	echo "== $verdict $label: expect $expect, rc $rc, wall ${wall}s"
	sed 's/^/   /' "$out"
	if [ $ok = 0 ] || [ $CONSOLE = 1 ]; then
		echo "   -- serial log:"
		sed 's/^/   | /' "$log" | tail -60
	fi
}

boot vmlinux-1cpu Reset "$KDIR/vmlinux" "$work/ok.cpio" 1
boot vmlinux-2cpu Reset "$KDIR/vmlinux" "$work/ok.cpio" 2
boot bzimage-1cpu Reset "$KDIR/bzImage" "$work/ok.cpio" 1
boot bzimage-2cpu Reset "$KDIR/bzImage" "$work/ok.cpio" 2
boot panic-1cpu Panic "$KDIR/vmlinux" "$work/panic.cpio" 1

echo "vm-boot: $pass passed, $fail failed"
[ $fail = 0 ]
