#!/bin/bash
# The nested lab: run one command as root inside a throw-away QEMU (TCG) VM
# whose root file system is this host's / (read-only, over 9p). For tests
# that need what the CI host lacks: cgroup v2, enforcing SELinux, systemd as
# PID 1, or a working /dev/kvm. See tests/lab/README.md.
#
#   tests/lab/lab.sh [OPTIONS] -- COMMAND [ARG]...
#
# Exit status: COMMAND's own status, or 97 when the lab itself failed (bad
# option, missing package, VM did not boot, timeout); then a one-line reason
# starting with "lab:" is printed on stderr.
set -euo pipefail

readonly LAB_FAIL=97
LAB_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
readonly LAB_DIR

usage() {
	cat <<'EOF'
usage: tests/lab/lab.sh [OPTIONS] -- COMMAND [ARG]...

Runs COMMAND as root in a QEMU TCG VM booted with Debian's kernel. The VM's
root file system is the host's / (read-only, 9p); /tmp, /var/tmp, /run and
/dev/shm are fresh tmpfs mounts. COMMAND's stdout and stderr are streamed
back, stdin is /dev/null, the working directory is the caller's. The exit
status is COMMAND's; 97 means the lab failed (reason on stderr).

options:
  --cgroup2          pure cgroup v2 (cgroup_no_v1=all), mounted on /sys/fs/cgroup
  --kvm              load kvm and kvm_amd so that /dev/kvm works (nested SVM)
  --selinux          SELinux in enforcing mode with Debian's default policy
  --selinux-context CONTEXT
                     the command's SELinux context (default
                     unconfined_u:unconfined_r:unconfined_t:s0-s0:c0.c1023;
                     "init" leaves it in initrc_t, where init's children run)
  --systemd          boot the host's systemd as PID 1; COMMAND runs as a service
  --mem MiB          guest memory (default 2048)
  --smp N            guest CPUs (default 2)
  --timeout SECONDS  stop the VM after SECONDS, exit 97 (default 600)
  -e, --env KEY[=VALUE]
                     set a variable for COMMAND (without =VALUE: the caller's)
  --console          print the guest's kernel console on stderr afterwards
  -h, --help         this text

environment: LAB_STALL_SECONDS (stop a lab whose guest stopped its heartbeat
for that long, default 120), LAB_MONITOR (a unix socket path for a QEMU monitor, to debug a
stuck lab), LAB_LOCK (the lock file that lets one lab VM run at a time,
default /tmp/sandbox-lab.lock; "none" to skip), LAB_CACHE_DIR (initramfs cache), LAB_KERNEL (a version from
/lib/modules to boot instead of the newest non-running one), LAB_APPEND
(extra kernel parameters, e.g. "loglevel=7" with --console),
LAB_SELINUX_ROOT_CONTEXT (the single SELinux label of every file of the 9p
root, default system_u:object_r:bin_t:s0).
EOF
}

fail() {
	echo "lab: $*" >&2
	exit "$LAB_FAIL"
}

# --- options -------------------------------------------------------------

opt_cgroup2=0 opt_selinux=0 opt_kvm=0 opt_systemd=0 opt_console=0
opt_mem=2048 opt_smp=2 opt_timeout=600
opt_secontext=unconfined_u:unconfined_r:unconfined_t:s0-s0:c0.c1023
user_env=()
while [ $# -gt 0 ]; do
	case $1 in
	--cgroup2) opt_cgroup2=1 ;;
	--selinux) opt_selinux=1 ;;
	--kvm) opt_kvm=1 ;;
	--systemd) opt_systemd=1 ;;
	--console) opt_console=1 ;;
	--mem | --smp | --timeout | -e | --env | --selinux-context)
		[ $# -ge 2 ] || fail "option $1 needs a value"
		case $1 in
		--mem) opt_mem=$2 ;;
		--selinux-context) opt_secontext=$2 ;;
		--smp) opt_smp=$2 ;;
		--timeout) opt_timeout=$2 ;;
		*) user_env+=("$2") ;;
		esac
		shift
		;;
	--mem=*) opt_mem=${1#*=} ;;
	--smp=*) opt_smp=${1#*=} ;;
	--timeout=*) opt_timeout=${1#*=} ;;
	--env=*) user_env+=("${1#*=}") ;;
	--selinux-context=*) opt_secontext=${1#*=} ;;
	-h | --help)
		usage
		exit 0
		;;
	--)
		shift
		break
		;;
	*) fail "unknown option '$1' (the command goes after --; see --help)" ;;
	esac
	shift
done
[ $# -gt 0 ] || fail "no command given (usage: lab.sh [OPTIONS] -- COMMAND...)"
for n in "$opt_mem" "$opt_smp" "$opt_timeout"; do
	[[ $n =~ ^[1-9][0-9]*$ ]] || fail "'$n' is not a positive integer"
done

# --- host packages -------------------------------------------------------

pkg_installed() {
	[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]
}

host_kernel_versions() { # Debian kernels usable as guest, newest first
	local f v running
	running=$(uname -r)
	for f in /boot/vmlinuz-*; do
		[ -e "$f" ] || continue
		v=${f#/boot/vmlinuz-}
		[ "$v" != "$running" ] || continue
		[ -f "/lib/modules/$v/modules.dep" ] || continue
		echo "$v"
	done | sort -V -r
}

ensure_packages() {
	local missing=() p
	command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
	pkg_installed busybox-static || missing+=(busybox-static)
	command -v cpio >/dev/null || missing+=(cpio)
	[ -n "$(host_kernel_versions)" ] || missing+=(linux-image-amd64)
	if [ "$opt_selinux" = 1 ]; then
		for p in selinux-policy-default policycoreutils selinux-utils; do
			pkg_installed "$p" || missing+=("$p")
		done
	fi
	[ ${#missing[@]} -gt 0 ] || return 0
	if [ "$(id -u)" != 0 ]; then
		fail "missing packages: ${missing[*]} (run once as root to install them)"
	fi
	echo "lab: installing ${missing[*]}" >&2
	local log
	log=$(mktemp)
	local apt=(apt-get install -y --no-install-recommends -o Dpkg::Use-Pty=0 "${missing[@]}")
	if ! DEBIAN_FRONTEND=noninteractive "${apt[@]}" >"$log" 2>&1; then
		if ! { apt-get update && DEBIAN_FRONTEND=noninteractive "${apt[@]}"; } >"$log" 2>&1; then
			local last
			last=$(grep -E '^E:' "$log" | tail -n 1)
			rm -f "$log"
			fail "apt-get install ${missing[*]} failed: ${last:-see apt-get output}"
		fi
	fi
	rm -f "$log"
}

ensure_packages

# --- kernel and initramfs ------------------------------------------------

if [ -n "${LAB_KERNEL:-}" ]; then
	kver=$LAB_KERNEL
else
	kver=$(host_kernel_versions | head -n 1)
fi
kernel=/boot/vmlinuz-$kver
moddir=/lib/modules/$kver
[ -r "$kernel" ] || fail "cannot read the guest kernel $kernel"
[ -r "$moddir/modules.dep" ] || fail "no modules for $kver in $moddir"

# Modules for the initramfs, each after its dependencies (modules.dep lists
# a module's whole dependency closure). Built-in modules need no file.
# Output: "GROUP PATH" lines, or "missing NAME".
order_modules() { # order_modules GROUP:NAME,NAME... ...
	awk -v groups="$*" -v builtin="$moddir/modules.builtin" '
	function key(s) { sub(/.*\//, "", s); sub(/\.ko.*$/, "", s); gsub(/-/, "_", s); return s }
	function visit(g, p,   a, n, i) {
		if (p in seen) return
		seen[p] = 1
		n = split(deps[p], a, " ")
		for (i = 1; i <= n; i++) visit(g, a[i])
		print g, p
	}
	{
		p = $1; sub(/:$/, "", p)
		path[key(p)] = p
		d = ""
		for (i = 2; i <= NF; i++) d = d " " $i
		deps[p] = d
	}
	END {
		while ((getline line < builtin) > 0) inkernel[key(line)] = 1
		ng = split(groups, gs, " ")
		for (j = 1; j <= ng; j++) {
			g = gs[j]; sub(/:.*/, "", g)
			names = gs[j]; sub(/^[^:]*:/, "", names)
			nn = split(names, ns, ",")
			for (i = 1; i <= nn; i++) {
				m = ns[i]; gsub(/-/, "_", m)
				if (m in path) visit(g, path[m])
				else if (!(m in inkernel)) print "missing", m
			}
		}
	}' "$moddir/modules.dep"
}
mod_list=$(order_modules base:virtio_pci,9pnet_virtio,9p,virtio_console kvm:kvm_amd overlay:overlay)
absent=$(awk '$1 == "missing" { printf " %s", $2 }' <<<"$mod_list")
[ -z "$absent" ] || fail "kernel $kver lacks the modules$absent"
base_mods=$(awk '$1 == "base" { print $2 }' <<<"$mod_list")
kvm_mods=$(awk '$1 == "kvm" { print $2 }' <<<"$mod_list")
overlay_mods=$(awk '$1 == "overlay" { print $2 }' <<<"$mod_list")

cache_dir=${LAB_CACHE_DIR:-}
if [ -z "$cache_dir" ]; then
	if [ "$(id -u)" = 0 ]; then
		cache_dir=/var/cache/sandbox-lab
	else
		cache_dir=${XDG_CACHE_HOME:-$HOME/.cache}/sandbox-lab
	fi
fi
mkdir -p "$cache_dir" || fail "cannot create the cache directory $cache_dir"

# The cache key covers every input of the initramfs.
key=$(
	{
		echo "format 1 $kver"
		echo "$mod_list"
		# shellcheck disable=SC2086 # lists of paths without spaces
		cd "$moddir" && sha256sum /bin/busybox "$LAB_DIR/init.sh" $base_mods $kvm_mods $overlay_mods
	} | sha256sum
)
key=${key:0:16}
initrd=$cache_dir/initrd-$kver-$key.cpio.gz

build_initrd() {
	local stage=$1 p dst list
	mkdir -p "$stage"/{bin,dev,proc,sys,tmp,newroot,lib/modules}
	cp /bin/busybox "$stage/bin/busybox"
	cp "$LAB_DIR/init.sh" "$stage/init"
	chmod 755 "$stage/init" "$stage/bin/busybox"
	for list in base kvm overlay; do
		local mods
		case $list in
		base) mods=$base_mods ;;
		kvm) mods=$kvm_mods ;;
		overlay) mods=$overlay_mods ;;
		esac
		: >"$stage/lib/modules/$list.list"
		for p in $mods; do
			dst=${p%.xz}
			dst=${dst%.zst}
			dst=${dst%.gz}
			mkdir -p "$stage/lib/modules/${dst%/*}"
			case $p in
			*.xz) xz -dc "$moddir/$p" >"$stage/lib/modules/$dst" ;;
			*.zst) zstd -qdc "$moddir/$p" >"$stage/lib/modules/$dst" ;;
			*.gz) gzip -dc "$moddir/$p" >"$stage/lib/modules/$dst" ;;
			*) cp "$moddir/$p" "$stage/lib/modules/$dst" ;;
			esac
			echo "$dst" >>"$stage/lib/modules/$list.list"
		done
	done
	(cd "$stage" && find . -print0 | LC_ALL=C sort -z |
		cpio --null --create --format=newc --owner=0:0 --quiet) | gzip -1
}

# The kernel: boot the uncompressed vmlinux through its PVH entry point. That
# skips the firmware's bzImage path and the decompression, both slow under
# TCG (about 4 s). Fall back to the bzImage if it cannot be extracted.
extract_vmlinux() { # extract_vmlinux BZIMAGE > VMLINUX
	local magic off tool
	for magic in 'xz:\xFD7zXZ\x00' 'zstd:\x28\xB5\x2F\xFD' 'gzip:\x1F\x8B\x08\x00'; do
		tool=${magic%%:*}
		off=$(LC_ALL=C grep -obUaP -m 1 "${magic#*:}" "$1" | head -n 1 | cut -d: -f1)
		[ -n "$off" ] || continue
		case $tool in
		xz) tail -c +$((off + 1)) "$1" | xz -dc --single-stream 2>/dev/null ;;
		zstd) tail -c +$((off + 1)) "$1" | zstd -qdc 2>/dev/null ;;
		gzip) tail -c +$((off + 1)) "$1" | gzip -dc 2>/dev/null ;;
		esac
		return 0
	done
	return 1
}

# --- the run -------------------------------------------------------------

# Remove what runs killed with SIGKILL left behind (their pid is gone).
for d in "${TMPDIR:-/tmp}"/sandbox-lab.*; do
	[ -f "$d/pid" ] || continue
	kill -0 "$(cat "$d/pid")" 2>/dev/null || rm -rf "$d"
done
tmp=$(mktemp -d "${TMPDIR:-/tmp}/sandbox-lab.XXXXXX")
echo $$ >"$tmp/pid"
qpid='' outpid='' errpid=''
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
	local p
	for p in $qpid $outpid $errpid; do
		kill "$p" 2>/dev/null || true
	done
	for p in $qpid $outpid $errpid; do
		wait "$p" 2>/dev/null || true
	done
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# Concurrent runs share the cache: build under a lock.
exec {lockfd}>"$cache_dir/.lock"
flock "$lockfd"
if [ ! -f "$initrd" ]; then
	# Drop initramfs images of older inputs for this kernel.
	rm -f "$cache_dir"/initrd-"$kver"-*.cpio.gz
	build_initrd "$tmp/initrd" >"$initrd.new" || fail "cannot build the initramfs"
	mv "$initrd.new" "$initrd"
	rm -rf "$tmp/initrd"
fi
vmlinux=$cache_dir/vmlinux-$kver-$(stat -c %s-%Y "$kernel")
if [ ! -f "$vmlinux" ]; then
	rm -f "$cache_dir/vmlinux-$kver-"*
	if extract_vmlinux "$kernel" >"$vmlinux.new" 2>/dev/null &&
		[ "$(head -c 4 "$vmlinux.new" | od -An -tx1 | tr -d ' ')" = 7f454c46 ] &&
		readelf -n "$vmlinux.new" 2>/dev/null | grep -q 'Xen.*0x00000012'; then
		mv "$vmlinux.new" "$vmlinux"
	else
		rm -f "$vmlinux.new"
		: >"$vmlinux" # remember the failure: boot the bzImage
	fi
fi
exec {lockfd}>&-
boot_kernel=$kernel
[ ! -s "$vmlinux" ] || boot_kernel=$vmlinux
bios=()
[ ! -r /usr/share/qemu/qboot.rom ] || bios=(-bios /usr/share/qemu/qboot.rom)

share=$tmp/share
mkdir "$share"

# The command, as a POSIX sh script: every word single-quoted.
squote() { printf "'%s'" "${1//\'/\'\\\'\'}"; }
{
	printf 'cd -- %s 2>/dev/null || {\n' "$(squote "$PWD")"
	printf '\techo "lab: note: "%s" does not exist in the VM (/tmp and /run are fresh there); running in /" >&2\n' "$(squote "$PWD")"
	printf '\tcd /\n}\nunset OLDPWD\nexec'
	for a in "$@"; do printf ' %s' "$(squote "$a")"; done
	printf '\n'
} >"$share/cmd"

{
	echo "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	echo "HOME=/root"
	echo "USER=root"
	echo "LOGNAME=root"
	echo "SHELL=/bin/sh"
	echo "SANDBOX_LAB=1"
	for kv in "${user_env[@]}"; do
		case $kv in
		*=*) ;;
		*)
			[ -n "${!kv+x}" ] || continue
			kv="$kv=${!kv}"
			;;
		esac
		[[ $kv != *$'\n'* ]] || fail "--env ${kv%%=*}: values cannot contain newlines"
		[[ ${kv%%=*} =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || fail "--env: bad variable name '${kv%%=*}'"
		echo "$kv"
	done
} >"$share/env"

append="console=ttyS0 quiet loglevel=0 panic=-1 mitigations=off rdinit=/init"
if [ "$opt_systemd" = 1 ]; then
	append+=" lab.mode=systemd systemd.unit=lab.service systemd.show_status=0"
else
	append+=" lab.mode=plain"
fi
if [ "$opt_cgroup2" = 1 ]; then
	append+=" lab.cgroup2=1 cgroup_no_v1=all systemd.unified_cgroup_hierarchy=1"
elif [ "$opt_systemd" = 1 ]; then
	append+=" systemd.unified_cgroup_hierarchy=0"
fi
[ "$opt_kvm" = 0 ] || append+=" lab.kvm=1"
if [ "$opt_selinux" = 1 ]; then
	rootctx=${LAB_SELINUX_ROOT_CONTEXT:-system_u:object_r:bin_t:s0}
	[[ $rootctx =~ ^[a-z0-9_]+:[a-z0-9_]+:[a-z0-9_]+:s0$ ]] ||
		fail "LAB_SELINUX_ROOT_CONTEXT must look like user:role:type:s0, not '$rootctx'"
	append+=" lab.selinux=1 lab.rootctx=$rootctx security=selinux enforcing=1"
	[ "$opt_secontext" = init ] || printf '%s\n' "$opt_secontext" >"$share/selinux-context"
fi
[ -z "${LAB_APPEND:-}" ] || append+=" $LAB_APPEND"

mkfifo "$tmp/out" "$tmp/err"
cat "$tmp/out" &
outpid=$!
cat "$tmp/err" >&2 &
errpid=$!

# shellcheck disable=SC2054 # the commas belong to qemu's option values
qemu=(
	qemu-system-x86_64
	-accel tcg -cpu max -smp "$opt_smp" -m "$opt_mem"
	-nodefaults -no-user-config -display none -no-reboot -nic none
	-serial "file:$tmp/console.log"
	"${bios[@]}" -kernel "$boot_kernel" -initrd "$initrd" -append "$append"
	-fsdev "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap"
	-device "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot"
	-fsdev "local,id=labshare,path=$share,security_model=none"
	-device "virtio-9p-pci,fsdev=labshare,mount_tag=labshare"
	-device virtio-serial-pci,id=vser
	-chardev "file,id=labout,path=$tmp/out"
	-device virtserialport,bus=vser.0,chardev=labout,name=lab.stdout
	-chardev "file,id=laberr,path=$tmp/err"
	-device virtserialport,bus=vser.0,chardev=laberr,name=lab.stderr
)
# A QEMU monitor for debugging a stuck lab (e.g. `info registers -a`):
# LAB_MONITOR=PATH makes it a unix socket there (socat - UNIX:PATH).
if [ -n "${LAB_MONITOR:-}" ]; then
	qemu+=(-monitor "unix:$LAB_MONITOR,server,nowait")
fi
if [ "$opt_selinux" = 1 ]; then
	qemu+=(
		-fsdev "local,id=hostmods,path=$(realpath /lib/modules),security_model=none,readonly=on"
		-device "virtio-9p-pci,fsdev=hostmods,mount_tag=hostmods"
	)
fi
# If this script is killed outright, the parent-death signals stop timeout
# and qemu too.
pdeath_term=() pdeath_kill=()
if setpriv --help 2>/dev/null | grep -q -- --pdeathsig; then
	pdeath_term=(setpriv --pdeathsig TERM --)
	pdeath_kill=(setpriv --pdeathsig KILL --)
fi
# One lab VM at a time on this machine: under TCG each lab wants every core,
# and two of them at once (nextest runs test binaries in parallel) slow each
# other down past their timeouts. The wait does not count against --timeout.
# LAB_LOCK=none skips it.
lab_lock=${LAB_LOCK:-/tmp/sandbox-lab.lock}
if [ "$lab_lock" != none ]; then
	exec {labfd}>>"$lab_lock"
	if ! flock -n "$labfd"; then
		echo "lab: waiting for another lab VM to finish ($lab_lock)" >&2
		flock "$labfd"
	fi
fi
"${pdeath_term[@]}" timeout --kill-after=5 "$opt_timeout" "${pdeath_kill[@]}" "${qemu[@]}" \
	</dev/null >"$tmp/qemu.log" 2>&1 &
qpid=$!
# Stall detection: once the command runs, the guest touches
# $share/heartbeat every 5 s. A nested guest frozen as a whole (seen
# under TCG, docs/snapshots.md "Known limitations") stops it, and every
# watchdog inside with it; stop such a lab after LAB_STALL_SECONDS
# instead of at --timeout.
stall=${LAB_STALL_SECONDS:-120}
[[ $stall =~ ^[0-9]+$ ]] && [ "$stall" -gt 0 ] || fail "LAB_STALL_SECONDS must be a positive number of seconds, not '$stall'"
stalled=''
while kill -0 "$qpid" 2>/dev/null; do
	if [ -e "$share/heartbeat" ] && [ ! -e "$share/status" ]; then
		age=$(($(date +%s) - $(stat -c %Y "$share/heartbeat" 2>/dev/null || date +%s)))
		if [ "$age" -gt "$stall" ]; then
			stalled=$age
			# qemu itself (its command line names this lab's console file),
			# then the timeout chain around it.
			pkill -KILL -f -- "file:$tmp/console.log" 2>/dev/null || true
			kill -KILL "$qpid" 2>/dev/null || true
			break
		fi
	fi
	sleep 2
done
qrc=0
wait "$qpid" || qrc=$?
qpid=''

# qemu is gone: end the readers (they may still wait in open() if qemu
# never opened the FIFOs), then let them drain.
for f in "$tmp/out" "$tmp/err"; do
	exec {fd}<>"$f"
	exec {fd}>&-
done
wait "$outpid" || true
wait "$errpid" || true
outpid='' errpid=''

if [ "$opt_console" = 1 ] && [ -s "$tmp/console.log" ]; then
	echo "lab: ---- guest console ----" >&2
	tr -d '\r' <"$tmp/console.log" >&2
	echo "lab: ---- end of guest console ----" >&2
fi

if [ -n "$stalled" ]; then
	fail "the lab VM stopped responding: no heartbeat for ${stalled}s while the command ran (stopped; LAB_STALL_SECONDS=$stall)"
fi
if [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then
	if [ -e "$share/booted" ]; then
		fail "timed out after ${opt_timeout}s while the command was running"
	fi
	fail "timed out after ${opt_timeout}s before the command started (the VM did not finish booting)"
fi
if [ -f "$share/status" ]; then
	status=$(cat "$share/status")
	[[ $status =~ ^[0-9]+$ ]] || fail "the guest wrote a bad status '$status'"
	exit "$status"
fi
if [ -s "$share/fatal" ]; then
	fail "guest setup failed: $(head -n 1 "$share/fatal")"
fi
reason=$(tr -d '\r' <"$tmp/console.log" 2>/dev/null | grep -E 'lab-init: FATAL|Kernel panic' | tail -n 1 || true)
[ -z "$reason" ] || fail "the VM failed: $reason"
if [ "$qrc" != 0 ]; then
	fail "qemu failed (exit $qrc): $(grep -v '^$' "$tmp/qemu.log" | head -n 1)"
fi
fail "the VM stopped before the command finished (run with --console to see the guest's messages)"
