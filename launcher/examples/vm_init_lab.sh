#!/bin/sh
# Proves `sandbox-init --vm` under QEMU (our kernel, vhost-vsock, virtio-9p)
# with examples/vm_init_peer.rs as the host side. Run inside the nested lab:
#   cargo build -p sandbox --example vm_init_peer
#   cargo build -p sandbox-init --target x86_64-unknown-linux-musl
#   tests/lab/lab.sh --kvm -- sh launcher/examples/vm_init_lab.sh [plain|tty] [quiet|loglevel=7]
# QEMU notes: auto-kernel-cmdline=off, because microvm appends its
# virtio_mmio.device= entries at the end, after `--`, where they become
# init's arguments; multidevs=remap, because the exported root spans several
# filesystems and colliding qids make the 9p client (cache=loose) merge
# directories such as /proc and /sys (the guest mounted sysfs on /proc).
W=$(cd "$(dirname "$0")/../.." && pwd)
set -x
modprobe vhost_vsock || exit 90
ls -l /dev/vhost-vsock /dev/kvm
export SANDBOX_INIT=$W/target/x86_64-unknown-linux-musl/debug/sandbox-init
PEER=$W/target/debug/examples/vm_init_peer
$PEER initramfs /tmp/init.cpio || exit 91
mkdir -p /tmp/vol && chmod 1777 /tmp/vol
MODE=${1:-plain}; GUESTLOG=${2:-quiet}
if [ "$MODE" = tty ]; then
  $PEER serve --tty -- /bin/sh -c 'stty size; read x; echo "read:$x"; stty size; tty' > /tmp/peer.out 2> /tmp/peer.err &
else
  $PEER serve --vol /tmp/vol -- /bin/sh -c 'read x; echo "stdin:$x"; id; hostname; cat /proc/1/cmdline | tr "\0" " "; echo; echo pid1=$(cat /proc/1/comm); mount | grep -E " / | /tmp/vol " ; echo written > /tmp/vol/from-guest; echo err-line >&2; touch /usr/x 2>&1; exit 7' > /tmp/peer.out 2> /tmp/peer.err &
fi
PP=$!
sleep 0.5
ACCEL="-enable-kvm -cpu host"
[ -e /dev/kvm ] || ACCEL="-accel tcg -cpu max"
date +%s.%N; timeout 150 qemu-system-x86_64 -M microvm,x-option-roms=off,rtc=off,isa-serial=on,acpi=off,auto-kernel-cmdline=off \
  $ACCEL -m 512 -smp 1 -nographic -nodefaults -serial file:/tmp/serial.log -no-reboot \
  -kernel /usr/local/share/sandbox/kernel/vmlinux -initrd /tmp/init.cpio \
  -append "console=ttyS0 ${GUESTLOG:-quiet} panic=-1 reboot=t virtio_mmio.device=512@0xfeb00e00:12 virtio_mmio.device=512@0xfeb00c00:11 virtio_mmio.device=512@0xfeb00a00:10 -- --vm" \
  -device vhost-vsock-device,guest-cid=3 \
  -fsdev local,id=r,path=/,security_model=none,readonly=on,multidevs=remap -device virtio-9p-device,fsdev=r,mount_tag=sandbox-root \
  -fsdev local,id=v,path=/tmp/vol,security_model=none -device virtio-9p-device,fsdev=v,mount_tag=vol0
echo "QEMU status $?"; date +%s.%N
sleep 2; kill $PP 2>/dev/null
wait $PP
echo "PEER status $?"
set +x
echo "--- peer stdout"; cat /tmp/peer.out
echo "--- peer stderr"; cat /tmp/peer.err
echo "--- serial"; cat /tmp/serial.log
echo "--- volume"; ls -ln /tmp/vol; cat /tmp/tmp/vol/from-guest 2>/dev/null
