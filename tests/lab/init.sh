#!/bin/busybox sh
# shellcheck shell=sh disable=SC2086,SC2013,SC2016
# (SC2086: $R, $LAB, $BB and $S never contain spaces; the others are intended.)
# Guest side of the nested lab (tests/lab/lab.sh). Runs with busybox sh.
#
#   /init                    stage 1, PID 1 in the initramfs: load modules,
#                            mount the host's / (9p, read-only) on /newroot,
#                            set up /proc /sys /dev /tmp /run and cgroups,
#                            then switch_root.
#   init.sh stage2           plain mode, PID 1 after switch_root: run the
#                            command, record its status, power off.
#   init.sh run              the command wrapper (plain and systemd modes).
#   init.sh stage2-init      stage2 again, after the SELinux switch to init_t.
#
# Contract with the host (files in the writable "labshare" 9p share, mounted
# at /run/lab/share):
#   cmd     POSIX sh script that runs the command (written by lab.sh)
#   env     KEY=VALUE lines for the command's environment (written by lab.sh)
#   status  the command's exit status (written here)
#   fatal   a one-line reason when the guest setup failed (written here)
#   booted  written when the command is about to start (for timeout messages)
#   heartbeat  touched every 5 s while the command runs (stall detection)
#
# The command's stdout and stderr are virtio-serial ports named lab.stdout
# and lab.stderr. They are plain character devices, not terminals.

LAB=/run/lab
BB=$LAB/bin/busybox

say() { echo "lab-init: $*" >/dev/console 2>/dev/null || true; }

# fatal REASON: tell the host why, then power off. The host turns a missing
# status into exit 97 and prints the reason.
fatal() {
	say "FATAL: $*"
	for f in /newroot$LAB/share/fatal $LAB/share/fatal; do
		if [ -d "${f%/fatal}" ]; then
			echo "$*" >"$f" 2>/dev/null && break
		fi
	done
	sync
	if [ -x $BB ]; then $BB poweroff -f; else /bin/busybox poweroff -f; fi
	sleep 5
	exit 1
}

cmdline_flag() { # cmdline_flag NAME -> value of lab.NAME= (empty if absent)
	for w in $(cat /proc/cmdline); do
		case $w in "lab.$1="*) echo "${w#*=}"; return ;; esac
	done
}

find_port() { # find_port NAME -> /dev/vportXpY
	for p in /sys/class/virtio-ports/*; do
		[ -r "$p/name" ] || continue
		if [ "$(cat "$p/name")" = "$1" ]; then
			echo "/dev/${p##*/}"
			return 0
		fi
	done
	return 1
}

load_modules() { # load_modules LISTFILE
	[ -f "$1" ] || return 0
	while read -r m; do
		[ -n "$m" ] || continue
		insmod "/lib/modules/$m" 2>/tmp/insmod.err ||
			fatal "insmod $m failed: $(cat /tmp/insmod.err)"
	done <"$1"
}

# Mount the cgroup hierarchies on $1/sys/fs/cgroup.
mount_cgroups() {
	cg=$1/sys/fs/cgroup
	if [ "$CGROUP2" = 1 ]; then
		mount -t cgroup2 -o nosuid,nodev,noexec,nsdelegate cgroup2 "$cg" ||
			fatal "cannot mount cgroup2 on /sys/fs/cgroup"
		return
	fi
	# Hybrid layout, like the CI host: v1 controllers plus cgroup2 on
	# /sys/fs/cgroup/unified.
	mount -t tmpfs -o nosuid,nodev,noexec,mode=755 cgroup "$cg"
	while read -r name _ _ enabled; do
		case $name in '#'*) continue ;; esac
		[ "$enabled" = 1 ] || continue
		mkdir -p "$cg/$name"
		mount -t cgroup -o nosuid,nodev,noexec,"$name" cgroup "$cg/$name" 2>/dev/null ||
			rmdir "$cg/$name"
	done <"$1/proc/cgroups"
	mkdir -p "$cg/unified"
	mount -t cgroup2 -o nosuid,nodev,noexec,nsdelegate cgroup2 "$cg/unified"
	mount -o remount,ro "$cg"
}

# Load the host's SELinux policy with the host's own load_policy -i (it reads
# /etc/selinux/config, honours enforcing= on the kernel command line and
# mounts selinuxfs), from a temporary mount of the host root.
selinux_load_policy() {
	[ -d /sys/fs/selinux ] || fatal "--selinux: the kernel did not enable SELinux (no /sys/fs/selinux)"
	t=/newroot
	mount -t 9p -o ro,trans=virtio,version=9p2000.L,msize=262144 hostroot $t ||
		fatal "cannot mount the host root (9p tag hostroot)"
	[ -x $t/usr/sbin/load_policy ] ||
		fatal "--selinux: /usr/sbin/load_policy is missing on the host (package policycoreutils)"
	mount -t proc proc $t/proc
	mount -t sysfs sysfs $t/sys
	chroot $t /usr/sbin/load_policy -i >/tmp/load_policy.log 2>&1 ||
		fatal "--selinux: load_policy -i failed: $(tr '\n' ' ' </tmp/load_policy.log)"
	enforce=$(cat $t/sys/fs/selinux/enforce 2>/dev/null)
	[ "$enforce" = 1 ] || fatal "--selinux: SELinux is not enforcing after load_policy -i (enforce=$enforce)"
	umount $t/sys/fs/selinux 2>/dev/null
	umount $t/sys
	umount $t/proc
	umount $t || fatal "--selinux: cannot unmount the temporary root"
}

# Stage 2 with SELinux, still kernel_t: label the fresh mounts as the host's
# file_contexts say (what udev/systemd would do), then re-exec as init_t
# (busybox labelled init_exec_t) so that the command gets a normal
# init_t -> user-domain transition.
selinux_stage2() {
	/usr/sbin/restorecon -RF /dev /run /tmp /var/tmp 2>/dev/null
	/usr/bin/chcon -t init_exec_t $BB || fatal "--selinux: chcon init_exec_t on $BB failed"
	exec $BB sh $LAB/init.sh stage2-init
}

stage1() {
	export PATH=/bin
	/bin/busybox --install -s /bin
	mkdir -p /dev /proc /sys /tmp /newroot
	mount -t devtmpfs devtmpfs /dev
	exec </dev/console >/dev/console 2>&1
	mount -t proc proc /proc
	mount -t sysfs sysfs /sys

	MODE=$(cmdline_flag mode)
	CGROUP2=$(cmdline_flag cgroup2)
	KVM=$(cmdline_flag kvm)
	SELINUX=$(cmdline_flag selinux)

	# All modules from the initramfs are loaded before an SELinux policy
	# exists: with it, kernel_t may not load modules labelled root_t.
	load_modules /lib/modules/base.list
	[ "$MODE" != systemd ] || load_modules /lib/modules/overlay.list
	if [ "$KVM" = 1 ]; then
		load_modules /lib/modules/kvm.list
		[ -c /dev/kvm ] || fatal "--kvm: modules loaded but /dev/kvm is missing"
		chmod 666 /dev/kvm # as udev does on Debian
	fi

	# With SELinux, the policy must be loaded before the final mounts: the
	# 9p root has no labels of its own and gets one with context=, which
	# the kernel accepts only once a policy is loaded.
	rootctx='' sharectx=''
	if [ "$SELINUX" = 1 ]; then
		selinux_load_policy
		rootctx=,context=$(cmdline_flag rootctx)
		sharectx=,context=system_u:object_r:tmp_t:s0
	fi

	R=/newroot
	if [ "$MODE" = systemd ]; then
		# systemd wants a writable /etc and /var: a throw-away overlay
		# (tmpfs upper) on the read-only 9p root.
		mkdir -p /lower /rw
		mount -t 9p -o ro,trans=virtio,version=9p2000.L,msize=262144,cache=loose$rootctx \
			hostroot /lower || fatal "cannot mount the host root (9p tag hostroot)"
		mount -t tmpfs -o mode=755,size=50% tmpfs /rw
		mkdir -p /rw/upper /rw/work
		mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work$rootctx overlay $R ||
			fatal "--systemd: cannot mount the overlay root"
		# The host's /.dockerenv would make systemd believe it runs in Docker.
		rm -f $R/.dockerenv
	else
		mount -t 9p -o ro,trans=virtio,version=9p2000.L,msize=262144,cache=loose$rootctx \
			hostroot $R || fatal "cannot mount the host root (9p tag hostroot${rootctx:+ with $rootctx})"
	fi
	if [ "$SELINUX" = 1 ]; then
		# Kernel modules must be modules_object_t to be loadable: mount
		# the host's /lib/modules (its own 9p export) with that label.
		mount -t 9p -o ro,trans=virtio,version=9p2000.L,msize=262144,cache=loose,context=system_u:object_r:modules_object_t:s0 \
			hostmods "$(realpath $R/lib/modules)" ||
			say "--selinux: cannot relabel /lib/modules; module loading will be denied"
	fi

	mount -t tmpfs -o nosuid,nodev,mode=755,size=50% tmpfs $R/run ||
		fatal "cannot mount tmpfs on /run"
	# /run/lab: a tmpfs of its own, without nosuid (an SELinux domain
	# transition on exec from a nosuid mount needs nosuid_transition).
	mkdir -p $R$LAB
	mount -t tmpfs -o nodev,mode=700,size=16m tmpfs $R$LAB || fatal "cannot mount tmpfs on $LAB"
	mkdir -p $R$LAB/bin $R$LAB/share
	mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,cache=mmap$sharectx \
		labshare $R$LAB/share || fatal "cannot mount the lab share (9p tag labshare)"
	cp /bin/busybox $R$LAB/bin/busybox
	cp /init $R$LAB/init.sh

	# Device nodes that load their module on first open (/dev/loop-control,
	# /dev/fuse, ...), as systemd-tmpfiles creates them from modules.devname.
	while read -r _ dev spec; do
		case $dev in '' | '#'*) continue ;; esac
		[ ! -e "/dev/$dev" ] || continue
		maj=${spec#?}
		mkdir -p "$(dirname "/dev/$dev")"
		mknod "/dev/$dev" "${spec%"$maj"}" "${maj%:*}" "${maj#*:}" 2>/dev/null
	done <"$R/lib/modules/$(uname -r)/modules.devname"

	mount --move /dev $R/dev
	mount --move /proc $R/proc
	mount --move /sys $R/sys
	[ "$SELINUX" != 1 ] || mount -t selinuxfs selinuxfs $R/sys/fs/selinux
	# busybox mount needs /proc/mounts; the new root's proc is that.
	ln -s $R/proc /proc.lab && rmdir /proc && mv /proc.lab /proc
	mkdir -p $R/dev/pts $R/dev/shm
	mount -t devpts -o nosuid,noexec,gid=5,mode=620,ptmxmode=666 devpts $R/dev/pts
	mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs $R/dev/shm
	mount -t tmpfs -o nosuid,nodev,mode=1777,size=50% tmpfs $R/tmp
	mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs $R/var/tmp
	if [ "$MODE" != systemd ]; then
		mount_cgroups $R
		mount -t securityfs securityfs $R/sys/kernel/security 2>/dev/null
		mount -t debugfs debugfs $R/sys/kernel/debug 2>/dev/null
		mount -t bpf bpf $R/sys/fs/bpf 2>/dev/null
	fi

	hostname lab
	ip link set lo up 2>/dev/null

	if [ "$MODE" = systemd ]; then
		setup_systemd $R
		exec switch_root $R /lib/systemd/systemd --unit=lab.service
	fi
	exec switch_root $R $LAB/bin/busybox sh $LAB/init.sh stage2
}

# systemd mode: generate lab.service into /run/systemd/system. systemd is
# started with systemd.unit=lab.service on the kernel command line.
setup_systemd() {
	R=$1
	[ -x $R/lib/systemd/systemd ] || fatal "--systemd: /lib/systemd/systemd is not installed on the host"
	mkdir -p $R/run/systemd/system
	cat >$R/run/systemd/system/lab.service <<-EOF
		[Unit]
		Description=nested lab command
		After=basic.target
		Requires=basic.target
		SuccessAction=poweroff-force
		FailureAction=poweroff-force

		[Service]
		Type=exec
		ExecStart=$LAB/bin/busybox sh $LAB/init.sh run
		StandardInput=null
		StandardOutput=null
		StandardError=null
	EOF
	if [ "$SELINUX" = 1 ]; then
		# systemd must start as init_t, which needs an init_exec_t file:
		# bind a copy on a tmpfs with that label over the host's binary.
		mkdir -p $R$LAB/initexec
		mount -t tmpfs -o mode=755,size=64m,context=system_u:object_r:init_exec_t:s0 tmpfs $R$LAB/initexec
		cp $R/lib/systemd/systemd $R$LAB/initexec/systemd
		mount --bind $R$LAB/initexec/systemd $R/lib/systemd/systemd ||
			fatal "--systemd --selinux: cannot relabel /lib/systemd/systemd"
	fi
	# Boot time under TCG: mask what is slow and useless here (no network,
	# no block devices, no consoles, no periodic jobs). Everything else of
	# basic.target runs as on a real host.
	mkdir -p $R/run/systemd/system-generators
	for g in systemd-gpt-auto-generator systemd-sysv-generator systemd-cryptsetup-generator \
		systemd-veritysetup-generator systemd-integritysetup-generator \
		systemd-hibernate-resume-generator systemd-bless-boot-generator systemd-getty-generator; do
		ln -sf /dev/null $R/run/systemd/system-generators/$g
	done
	for u in systemd-timesyncd.service systemd-update-utmp.service systemd-pstore.service \
		apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer \
		fstrim.timer man-db.timer; do
		ln -sf /dev/null $R/run/systemd/system/$u
	done
}

# The command wrapper: environment, stdio, status.
run_command() {
	S=$LAB/share
	out=$(find_port lab.stdout) || fatal "virtio port lab.stdout not found"
	err=$(find_port lab.stderr) || fatal "virtio port lab.stderr not found"
	echo running >$S/booted
	# The heartbeat: the host takes a lab whose heartbeat stops for long
	# for a frozen guest and stops it (lab.sh, LAB_STALL_SECONDS).
	(while :; do $BB touch $S/heartbeat; $BB sleep 5; done) </dev/null >/dev/null 2>&1 &
	hb=$!
	# A clean environment: only what lab.sh wrote into $S/env.
	set --
	while IFS= read -r kv; do
		set -- "$@" "$kv"
	done <$S/env
	# stdio is opened by the command's own shell, after any SELinux domain
	# change (fds of another domain could be closed at exec).
	if [ -s $S/selinux-context ]; then
		ctx=$(cat $S/selinux-context)
		/usr/bin/runcon "$ctx" /bin/true 2>/dev/null ||
			fatal "--selinux-context $ctx: initrc_t (the lab init's programs) may not start it$(
				/usr/bin/runcon "$ctx" /bin/true 2>&1 | sed -n '1s/.*: /: /p'); unconfined_t and init work"
		set -- "$@" /usr/bin/runcon "$ctx"
	fi
	status=0
	$BB env -i "$@" /bin/sh -c 'exec </dev/null >"$1" 2>"$2"; exec /bin/sh "$3"' \
		sh "$out" "$err" $S/cmd </dev/null || status=$?
	kill $hb 2>/dev/null
	echo "$status" >$S/status.tmp && mv $S/status.tmp $S/status
}

stage2() {
	export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
	if [ "$1" = stage2 ] && [ "$(cmdline_flag selinux)" = 1 ]; then
		selinux_stage2
	fi
	run_command
	sync
	$BB poweroff -f
}

case ${1:-} in
stage2 | stage2-init) stage2 "$1" ;;
run) run_command ;;
*) stage1 ;;
esac
