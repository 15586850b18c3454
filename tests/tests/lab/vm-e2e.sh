#!/bin/sh
# Run INSIDE the nested lab VM booted with --kvm (real nested KVM), as root,
# by lab_vm.rs. $1: the sandbox launcher. $2: uid of an unprivileged
# account. $3: "cold" (default: every run boots the kernel, as `sandbox
# run --vm` does by default) or "resume" (every run resumes its VM shape's
# automatic snapshot, made on first use: --warm); the checks are the same
# and must give the same results (docs/snapshots.md). The end-to-end cases of the namespace backend, against --vm:
# every `$S run --vm` below boots a micro-VM of our own VMM with our
# kernel. Prints "CHECK <name> ok" or "CHECK <name> FAIL ..." and DONE.
S=$1
U=$2
HERE=$(cd "$(dirname "$0")" && pwd)
T0=$(date +%s)
check() {
	t=$(($(date +%s) - T0))
	# One line per check: the harness keeps only CHECK lines, so a detail
	# with newlines would lose everything after its first line.
	if [ "$2" = ok ]; then echo "CHECK $1 ok"; else echo "CHECK $1 FAIL $(printf '%s' "$2" | tr '\n' '|')"; fi
	echo "  (${t}s)" >&2
}
# Every run has a watchdog, so a hung run fails its own check instead of
# the whole lab; VR is the bare launcher, for the signal tests.
VR="$S run --vm"
V="timeout --foreground -k 5 300 $S run --vm"
W=$(mktemp -d /tmp/vm-e2e.XXXXXX)
cd "$W" || exit 1
MODE=${3:-cold}
export SANDBOX_SNAPSHOT_DIR="$W/snaps"
# C always boots cold: the checks of the boot itself.
C="timeout --foreground -k 5 300 $S run --vm --cold"
case $MODE in
cold) ;;
resume) V="$V --warm"; VR="$VR --warm" ;;
*) echo "vm-e2e.sh: mode must be resume or cold, not $MODE" >&2; exit 2 ;;
esac
echo "vm-e2e.sh: mode $MODE"
# The unprivileged user keeps its snapshots in a directory of its own.
UD=$(mktemp -d /tmp/vm-e2e-u.XXXXXX); chown "$U" "$UD"

# Exit statuses.
out=$($V -- true 2>&1); rc=$?
[ $rc -eq 0 ] && check true-exits-0 ok || check true-exits-0 "rc=$rc $out"
$V -- sh -c 'exit 42' >/dev/null 2>&1; rc=$?
[ $rc -eq 42 ] && check exit-code-passes ok || check exit-code-passes "rc=$rc"
$V -- sh -c 'kill -TERM $$' >/dev/null 2>&1; rc=$?
[ $rc -eq 143 ] && check signal-status ok || check signal-status "rc=$rc"
out=$($V -- /nonexistent/cmd 2>&1); rc=$?
[ $rc -eq 127 ] && check not-found-127 ok || check not-found-127 "rc=$rc $out"
out=$($V -- /etc/passwd 2>&1); rc=$?
[ $rc -eq 126 ] && check not-executable-126 ok || check not-executable-126 "rc=$rc $out"

# The path the runs take.
$V --receipt boot.json -- true >/dev/null 2>&1
want=cold; [ "$MODE" = resume ] && want=resumed
grep -q "\"boot\": \"$want\"" boot.json && check "boot-path-$want" ok || check "boot-path-$want" "$(grep -E '"(boot|snapshot)"' boot.json)"

# The guest is ours: our kernel, sized as asked.
out=$($V -- uname -r 2>&1)
case "$out" in *sandbox*) check our-kernel ok ;; *) check our-kernel "$out" ;; esac
out=$($V --cpus 2 -- nproc 2>&1)
[ "$out" = 2 ] && check cpus-size-the-guest ok || check cpus-size-the-guest "$out"
out=$($V --memory 256m -- sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo 2>&1)
[ "$out" -gt 200000 ] 2>/dev/null && [ "$out" -le 262144 ] && check memory-sizes-the-guest ok || check memory-sizes-the-guest "$out"

# No nested virtualization inside the guest.
out=$($V -- sh -c 'grep -c -w -E "vmx|svm" /proc/cpuinfo; ls /dev/kvm 2>&1' 2>&1)
case "$out" in 0*"No such file"*) check no-kvm-inside ok ;; *) check no-kvm-inside "$out" ;; esac

# The guest kernel panics (no init to run): distinct status 122, promptly.
out=$(SANDBOX_VM_CMDLINE=rdinit=/nonexistent $C -- true 2>&1); rc=$?
case "$rc:$out" in 122:*panicked*) check guest-panic-122 ok ;; *) check guest-panic-122 "rc=$rc $out" ;; esac
# A guest that never gets to the command: --timeout still ends it.
out=$($C --timeout 1 -- true 2>&1); rc=$?
case "$rc:$out" in 124:*"before the command started"*) check timeout-during-boot ok ;; *) check timeout-during-boot "rc=$rc $out" ;; esac

# Stdio: separate streams, stdin, large output through the vsock device.
$V -- sh -c 'echo to-out; echo to-err >&2' >out.txt 2>err.txt
[ "$(cat out.txt)" = to-out ] && [ "$(cat err.txt)" = to-err ] && check stdout-stderr-separate ok || check stdout-stderr-separate "out=$(cat out.txt) err=$(cat err.txt)"
out=$(printf 'line1\nline2\n' | $V -- cat 2>&1)
[ "$out" = "line1
line2" ] && check stdin-passes ok || check stdin-passes "$out"
n=$($V --receipt big.json -- head -c 20000000 /dev/zero 2>big.err | wc -c)
[ "$n" -eq 20000000 ] && check large-output ok || check large-output "got $n bytes; stderr: $(tr '\n' ' ' <big.err | cut -c1-300); $(grep -E '"(boot|command_exited_ms|output_drained_ms|vm_stopped_ms)"' big.json | tr -d '\n ')"
n=$(head -c 5000000 /dev/zero | $V -- wc -c 2>&1)
[ "$n" -eq 5000000 ] && check large-input ok || check large-input "got $n"

# Environment, identity, working directory, hostname.
out=$(SECRET_TOKEN=x $V -e FOO=bar -- sh -c 'echo "$FOO:${SECRET_TOKEN:-unset}"' 2>&1)
[ "$out" = "bar:unset" ] && check env-allow-list ok || check env-allow-list "$out"
out=$($V -- pwd 2>&1)
[ "$out" = "$W" ] && check cwd-default ok || check cwd-default "$out"
out=$($V -w /tmp -- pwd 2>&1)
[ "$out" = /tmp ] && check workdir ok || check workdir "$out"
out=$($V --hostname vmhost -- hostname 2>&1)
[ "$out" = vmhost ] && check hostname ok || check hostname "$out"
out=$(setpriv --reuid="$U" --regid="$U" --clear-groups -- env SANDBOX_SNAPSHOT_DIR="$UD" $V -- id -u 2>&1)
[ "$out" = "$U" ] && check rootless-uid ok || check rootless-uid "$out"
out=$($V -u 1234:1234 -- id 2>&1)
case "$out" in "uid=1234 gid=1234"*) check user-option ok ;; *) check user-option "$out" ;; esac

# The host is read-only through the share, whatever the guest tries.
sum=$(md5sum /etc/passwd)
out=$($V -- sh -c 'echo x >> /etc/passwd' 2>&1); rc=$?
[ $rc -ne 0 ] && [ "$(md5sum /etc/passwd)" = "$sum" ] && check host-read-only ok || check host-read-only "rc=$rc $out"
out=$($V -- sh -c 'mount -o remount,rw / 2>&1 || echo refused' 2>&1)
case "$out" in *refused*) check no-remount ok ;; *) check no-remount "$out" ;; esac
out=$($V -- sh -c 'cat /proc/kcore >/dev/null 2>&1 && echo readable || echo masked' 2>&1)
[ "$out" = masked ] && check proc-masked ok || check proc-masked "$out"
out=$($V -- md5sum /etc/os-release /usr/bin/env 2>&1)
[ "$out" = "$(md5sum /etc/os-release /usr/bin/env)" ] && check host-files-visible ok || check host-files-visible "$out"

# Volumes.
mkdir -p "$W/vol"
$V -v "$W/vol:/mnt:rw" -- sh -c 'echo written > /mnt/f; mkdir /mnt/d; mv /mnt/f /mnt/d/g' 2>err.txt
[ "$(cat "$W/vol/d/g" 2>/dev/null)" = written ] && check rw-volume ok || check rw-volume "$(cat err.txt)"
owner=$(stat -c %u "$W/vol/d/g" 2>/dev/null)
[ "$owner" = 0 ] && check rw-volume-owner ok || check rw-volume-owner "owner $owner"
out=$($V -v "$W/vol:/mnt" -- sh -c 'echo x > /mnt/h 2>&1 || echo refused' 2>&1)
case "$out" in *refused*) [ ! -e "$W/vol/h" ] && check ro-volume ok || check ro-volume "created" ;; *) check ro-volume "$out" ;; esac
ln -s /etc "$W/vol/escape"
out=$($V -v "$W/vol:/mnt:rw" -- sh -c 'echo x > /mnt/escape/sandbox-vm-escape 2>&1 || echo refused' 2>&1)
[ ! -e /etc/sandbox-vm-escape ] && check symlink-no-escape ok || check symlink-no-escape "$out"
out=$($V --tmpfs /mnt -- sh -c 'echo y > /mnt/z && cat /mnt/z' 2>&1)
[ "$out" = y ] && check tmpfs ok || check tmpfs "$out"

# Timeouts and signals.
start=$(date +%s)
out=$($V --timeout 20 -- sleep 1000 2>&1); rc=$?
[ $rc -eq 124 ] && check timeout-124 ok || check timeout-124 "rc=$rc $out"
out=$($V --timeout 20 --kill-after 2 -- sh -c 'trap "" TERM; sleep 1000' 2>&1); rc=$?
case "$rc:$out" in 124:*"killed after the grace period"*) check timeout-kill-after ok ;; *) check timeout-kill-after "rc=$rc $out" ;; esac
$VR -- sh -c "trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 0.1; done" >sig.txt 2>&1 &
pid=$!
i=0; while [ $i -lt 600 ] && ! grep -q ready sig.txt; do sleep 0.1; i=$((i+1)); done
kill -TERM $pid; wait $pid; rc=$?
[ $rc -eq 7 ] && grep -q got-term sig.txt && check signal-forwarded ok || check signal-forwarded "rc=$rc $(cat sig.txt)"
out=$($V -- sh -c 'sleep 1000 & exit 3' 2>&1); rc=$?
[ $rc -eq 3 ] && check leftovers-killed ok || check leftovers-killed "rc=$rc $out"

# The terminal.
if command -v script >/dev/null; then
	out=$(script -qec "$V -- sh -c 'tty; stty size'" /dev/null 2>&1 </dev/null)
	case "$out" in */dev/pts/*) check tty ok ;; *) check tty "$out" ;; esac
fi

# Receipt and refusals.
$V --receipt r.json -- true >/dev/null 2>&1
grep -q '"backend": "vm"' r.json && check receipt-backend ok || check receipt-backend "$(cat r.json)"
out=$($V --network host -- true 2>&1); rc=$?
case "$rc:$out" in 125:*"--network host"*) check network-host-refused ok ;; *) check network-host-refused "rc=$rc $out" ;; esac
out=$($V --pids 10 -- true 2>&1); rc=$?
case "$rc:$out" in 125:*--pids*) check pids-refused ok ;; *) check pids-refused "rc=$rc $out" ;; esac
out=$($V --kernel /etc/passwd -- true 2>&1); rc=$?
case "$rc:$out" in 125:*/etc/passwd*) check bad-kernel ok ;; *) check bad-kernel "rc=$rc $out" ;; esac

# The launcher killed with SIGKILL: the VM is in its process, nothing stays.
$VR -- sleep 1000 >/dev/null 2>&1 &
pid=$!
sleep 8
kill -KILL $pid; wait $pid 2>/dev/null
sleep 0.5
left=$(ps -eo pid,args | grep -v grep | grep -c 'sandbox run --vm')
[ "$left" -eq 0 ] && check sigkill-leaves-nothing ok || check sigkill-leaves-nothing "$left processes"

# The escape suite of the namespace backend, inside the VM, for every
# shipped profile: host loopback and abstract-socket targets are the lab's.
CASES=$HERE/../escape/cases.py
PROFILES=$(cd "$HERE/../../../profiles" && ls *.toml | sed 's/\.toml$//')
/usr/bin/python3 -c '
import socket, sys, time
t = socket.socket(); t.bind(("127.0.0.1", 0)); t.listen(8)
a = socket.socket(socket.AF_UNIX); a.bind("\0sandbox-vm-escape"); a.listen(8)
print(t.getsockname()[1], flush=True)
time.sleep(600)' >port.txt &
lpid=$!
i=0; while [ $i -lt 50 ] && [ ! -s port.txt ]; do sleep 0.1; i=$((i+1)); done
port=$(cat port.txt)
for p in $PROFILES; do
	out=$($V -p "$p" -- /usr/bin/python3 "$CASES" "$port" sandbox-vm-escape 2>&1)
	n=$(printf '%s\n' "$out" | grep -c '^CASE ')
	held=$(printf '%s\n' "$out" | grep -c '^CASE .* HELD$')
	echo "escape suite in the VM [profile $p]: $held/$n cases held"
	[ "$n" -ge 50 ] && [ "$held" -eq "$n" ] && check "escape-suite-$p" ok || check "escape-suite-$p" "$(printf '%s\n' "$out" | grep '^CASE' | grep -v 'HELD$' | head -5) ($held/$n)"
done
kill $lpid 2>/dev/null

# Landlock and seccomp are applied inside the guest too.
$V --receipt ll.json -- true >/dev/null 2>&1
grep -q '"abi"' ll.json && check landlock-in-guest ok || check landlock-in-guest "$(grep -A3 landlock ll.json)"

# Several VMs at once do not collide.
# Each guest's kernel log is kept, to tell why one failed.
for i in 1 2 3 4; do SANDBOX_VM_CONSOLE="$W/console$i.txt" $V -- sh -c "echo vm-$i" >"c$i.txt" 2>&1 & done
wait
ok=0; for i in 1 2 3 4; do [ "$(cat c$i.txt)" = "vm-$i" ] && ok=$((ok+1)); done
[ $ok -eq 4 ] && check concurrent-vms ok || check concurrent-vms "$(cat c1.txt c2.txt c3.txt c4.txt) $(for i in 1 2 3 4; do [ "$(cat c$i.txt)" = "vm-$i" ] || { echo "[console $i:"; tail -n 15 "$W/console$i.txt" 2>/dev/null | tr '\n' '|'; echo "]"; }; done)"

# The lifecycle of a VM sandbox (docs/services.md): run -d, ps, exec,
# logs, inspect, kill, stop, --ready tcp, gc. The name of each sandbox
# ends in the mode so that both suites can share a state directory.
L="timeout --foreground -k 5 120 $S"
# state_of NAME: its state in `sandbox ps --json`, or "none".
state_of() {
	$L ps --json 2>/dev/null | /usr/bin/python3 -c '
import json, sys
rows = [r["state"] for r in json.load(sys.stdin) if r["name"] == sys.argv[1]]
print(rows[0] if rows else "none")' "$1"
}
# code_of NAME: its recorded exit code.
code_of() {
	$L ps --json 2>/dev/null | /usr/bin/python3 -c '
import json, sys
rows = [r["exit_code"] for r in json.load(sys.stdin) if r["name"] == sys.argv[1]]
print(rows[0] if rows else "none")' "$1"
}
# wait_ended NAME: until it is no longer running (at most 20 s).
wait_ended() {
	i=0; while [ $i -lt 100 ] && [ "$(state_of "$1")" = running ]; do sleep 0.2; i=$((i+1)); done
}
D="vmd-$MODE"
out=$($V -d --name "$D" -- sh -c 'trap "echo got-term; exit 7" TERM; echo started; while :; do sleep 1; done' 2>&1); rc=$?
[ "$rc:$out" = "0:$D" ] && check detach-returns-name ok || check detach-returns-name "rc=$rc $out"
out=$($L ps --json 2>&1)
printf '%s' "$out" | /usr/bin/python3 -c '
import json, sys
rows = [r for r in json.load(sys.stdin) if r["name"] == sys.argv[1]]
sys.exit(0 if rows and rows[0]["backend"] == "vm" and rows[0]["state"] == "running" else 1)' "$D" \
	&& check ps-shows-vm ok || check ps-shows-vm "$out"
out=$($L exec "$D" -- sh -c 'echo exec-out; echo exec-err >&2; exit 3' 2>err.txt); rc=$?
[ "$rc:$out:$(cat err.txt)" = "3:exec-out:exec-err" ] && check vm-exec-stdio-status ok || check vm-exec-stdio-status "rc=$rc out=$out err=$(cat err.txt)"
out=$(echo hello-in | $L exec -i "$D" -- cat 2>&1); rc=$?
[ "$rc:$out" = "0:hello-in" ] && check vm-exec-stdin ok || check vm-exec-stdin "rc=$rc $out"
out=$($L exec -e FOO=bar -w /tmp "$D" -- sh -c 'echo "$FOO $(pwd)"' 2>&1); rc=$?
[ "$rc:$out" = "0:bar /tmp" ] && check vm-exec-env-cwd ok || check vm-exec-env-cwd "rc=$rc $out"
n=$($L exec "$D" -- head -c 5000000 /dev/zero 2>/dev/null | wc -c)
[ "$n" -eq 5000000 ] && check vm-exec-output-before-status ok || check vm-exec-output-before-status "got $n of 5000000 bytes"
# The exec'd process has the command's confinement (seccomp, no caps,
# no_new_privs), compared with the command's own (pid 2 under init).
want=$($L exec "$D" -- sh -c 'grep -E "^(Seccomp|NoNewPrivs|CapEff|CapBnd):" /proc/self/status' 2>&1)
case "$want" in *"Seccomp:	2"*"CapEff:	0000000000000000"*|*"CapEff:	0000000000000000"*"Seccomp:	2"*) check vm-exec-confined ok ;; *) check vm-exec-confined "$want" ;; esac
for i in 1 2 3 4; do $L exec "$D" -- sh -c "echo exec-$i" >"e$i.txt" 2>&1 & done
wait
ok=0; for i in 1 2 3 4; do [ "$(cat e$i.txt)" = "exec-$i" ] && ok=$((ok+1)); done
[ $ok -eq 4 ] && check vm-exec-concurrent ok || check vm-exec-concurrent "$(cat e1.txt e2.txt e3.txt e4.txt)"
out=$($L exec "$D" -- /no/such/program 2>&1); rc=$?
case "$rc:$out" in 127:*"command not found"*) check vm-exec-not-found ok ;; *) check vm-exec-not-found "rc=$rc $out" ;; esac
# A terminal: script(1) gives the client one; the pty is in the guest.
out=$(script -qec "$S exec -t $D -- sh -c 'tty; stty size'" /dev/null 2>&1 | tr -d '\r'); rc=$?
case "$out" in *"/dev/pts/"*) check vm-exec-tty ok ;; *) check vm-exec-tty "rc=$rc $out" ;; esac
out=$($L logs "$D" 2>&1)
case "$out" in *started*) check vm-logs ok ;; *) check vm-logs "$out" ;; esac
out=$($L inspect "$D" 2>&1)
case "$out" in *'"backend": "vm"'*) check vm-inspect ok ;; *) check vm-inspect "$out" ;; esac
# stop returns 0 once the sandbox has ended; its status is in the record.
out=$($L stop "$D" --time 20s 2>&1); rc=$?
code=$(code_of "$D")
[ "$rc:$code" = "0:7" ] && check vm-stop-sigterm ok || check vm-stop-sigterm "rc=$rc exit_code=$code $out"
case "$($L logs "$D" 2>&1)" in *got-term*) check vm-stop-reached-command ok ;; *) check vm-stop-reached-command "$($L logs "$D" 2>&1)" ;; esac
out=$($L exec "$D" -- true 2>&1); rc=$?
case "$rc:$out" in 125:*"is not running: it exited with status 7"*) check vm-exec-exited-refused ok ;; *) check vm-exec-exited-refused "rc=$rc $out" ;; esac
# A command that ignores SIGTERM: stop kills it after the grace time.
I="vmi-$MODE"
o1=$($V -d --name "$I" -- sh -c 'trap "" TERM; echo trapped; while :; do sleep 1; done' 2>&1)
i=0; while [ $i -lt 100 ] && ! $L logs "$I" 2>/dev/null | grep -q trapped; do sleep 0.2; i=$((i+1)); done
t0=$(date +%s)
out=$($L stop "$I" --time 2s 2>&1); rc=$?
t=$(($(date +%s) - t0))
code=$(code_of "$I")
[ "$rc:$code" = "0:137" ] && [ $t -ge 2 ] && [ $t -lt 60 ] && check vm-stop-ignored-term ok || check vm-stop-ignored-term "rc=$rc exit_code=$code after ${t}s $o1 $out"
K="vmk-$MODE"
$V -d --name "$K" -- sleep 600 >/dev/null 2>&1
out=$($L kill "$K" KILL 2>&1); rc=$?
wait_ended "$K"
st=$(state_of "$K")
[ $rc -eq 0 ] && [ "$st" = exited ] && check vm-kill ok || check vm-kill "rc=$rc state=$st $out"
# --ready tcp: -d returns only once the port inside the guest accepts.
R2="vmr-$MODE"
out=$($V -d --name "$R2" --ready tcp:8080 -- sh -c 'sleep 2; exec /usr/bin/python3 -c "import socket,time; s=socket.socket(); s.bind((\"127.0.0.1\",8080)); s.listen(); time.sleep(600)"' 2>&1); rc=$?
o2=$($L exec "$R2" -- /usr/bin/python3 -c 'import socket; socket.create_connection(("127.0.0.1", 8080), timeout=5)' 2>&1); rc2=$?
[ "$rc:$rc2" = "0:0" ] && check vm-ready-tcp ok || check vm-ready-tcp "rc=$rc $out / probe rc=$rc2 $o2"
$L kill "$R2" KILL >/dev/null 2>&1
wait_ended "$R2"
# Bad names, and nothing left once the exited records are collected.
out=$($L exec "bad/name" -- true 2>&1); rc=$?
case "$rc:$out" in 125:*"invalid sandbox name"*) check vm-bad-name ok ;; *) check vm-bad-name "rc=$rc $out" ;; esac
$L gc >/dev/null 2>&1
left=$(ls /run/sandbox 2>/dev/null | grep -E -- "-$MODE\$" | tr '\n' ' ')
[ -z "$left" ] && check vm-gc-leaves-nothing ok || check vm-gc-leaves-nothing "left: $left"

# Snapshots (docs/snapshots.md): named ones, the state file checks, clone
# safety, crash-safe writes.
SN="timeout --foreground -k 5 300 $S snapshot"
R="timeout --foreground -k 5 300 $S run --vm"
SD=$SANDBOX_SNAPSHOT_DIR
out=$($SN create e2e --memory 256m 2>&1); rc=$?
[ $rc -eq 0 ] && [ -f "$SD/e2e/state" ] && check snapshot-create ok || check snapshot-create "rc=$rc $out"
out=$($SN list 2>&1)
printf '%s\n' "$out" | grep -q "^e2e	1	256MiB	0	" && check snapshot-list ok || check snapshot-list "$out"
out=$($R --from e2e --receipt rs.json -- sh -c 'echo resumed; sed -n "s/^MemTotal: *\([0-9]*\) kB/\1/p" /proc/meminfo' 2>&1)
mem=$(printf '%s\n' "$out" | sed -n 2p)
[ "$(printf '%s\n' "$out" | head -1)" = resumed ] && [ "$mem" -le 262144 ] 2>/dev/null && grep -q '"boot": "resumed"' rs.json && grep -q '"snapshot": "e2e"' rs.json && check snapshot-from-receipt ok || check snapshot-from-receipt "$out $(grep -E '"(boot|snapshot)"' rs.json)"
g=$($R --from e2e -- date +%s 2>&1); h=$(date +%s); d=$((h - g))
[ "${d#-}" -le 5 ] 2>/dev/null && check snapshot-wall-clock ok || check snapshot-wall-clock "guest $g host $h"
for i in 1 2; do
	$R --from e2e --hostname "clone$i" -- sh -c 'hostname; head -c 32 /dev/urandom | od -An -tx1 | tr -d " \n"; echo' >"rng$i.txt" 2>&1 &
done
wait
r1=$(sed -n 2p rng1.txt); r2=$(sed -n 2p rng2.txt)
[ ${#r1} -eq 64 ] && [ ${#r2} -eq 64 ] && [ "$r1" != "$r2" ] && [ "$(head -1 rng1.txt):$(head -1 rng2.txt)" = clone1:clone2 ] && check snapshot-clones-own-rng-and-name ok || check snapshot-clones-own-rng-and-name "$(cat rng1.txt rng2.txt)"
# Not under /tmp: the sandbox has its own /tmp. /var/tmp is the lab's
# writable tmpfs that the root share shows.
HF=$(mktemp /var/tmp/vm-e2e-hostfile.XXXXXX)
echo one >"$HF"
a=$($R --from e2e -- cat "$HF" 2>&1)
echo two >"$HF"
b=$($R --from e2e -- cat "$HF" 2>&1)
rm -f "$HF"
[ "$a:$b" = one:two ] && check snapshot-sees-changed-host-file ok || check snapshot-sees-changed-host-file "$a:$b"
out=$($R --from e2e -v "$W/vol:/mnt" -- true 2>&1); rc=$?
case "$rc:$out" in 125:*volumes*) check snapshot-shape-mismatch-refused ok ;; *) check snapshot-shape-mismatch-refused "rc=$rc $out" ;; esac
out=$($SN create e2ev --memory 256m -v /tmp 2>&1) && out=$($R --from e2ev -v "$W/vol:/mnt" -- cat /mnt/d/g 2>&1)
[ "$out" = written ] && check snapshot-volume-from-this-run ok || check snapshot-volume-from-this-run "$out"
# Killed while writing: the previous snapshot stays whole and usable.
cp "$SD/e2e/state" state.before
SANDBOX_SNAPSHOT_TEST_DELAY_MS=60000 $S snapshot create e2e --memory 256m >/dev/null 2>&1 &
kp=$!
i=0; while [ $i -lt 1200 ] && ! ls -A "$SD/e2e" | grep -q '^\.state\.tmp-'; do sleep 0.1; i=$((i + 1)); done
tmpseen=$(ls -A "$SD/e2e" | grep -c '^\.state\.tmp-')
kill -KILL $kp; wait $kp 2>/dev/null
out=$($R --from e2e -- echo still-good 2>&1)
[ "$tmpseen" -eq 1 ] && cmp -s state.before "$SD/e2e/state" && [ "$out" = still-good ] && check snapshot-kill-during-write ok || check snapshot-kill-during-write "tmp=$tmpseen $out"
# Damaged and tampered state files are refused before anything runs.
for kind in flip truncate version empty; do
	rm -rf "$SD/bad-$kind"; cp -r "$SD/e2e" "$SD/bad-$kind"
	/usr/bin/python3 - "$SD/bad-$kind/state" "$kind" <<'PY'
import sys
p, kind = sys.argv[1], sys.argv[2]
b = bytearray(open(p, "rb").read())
if kind == "flip":
    b[len(b) // 2] ^= 0x10
elif kind == "truncate":
    b = b[: len(b) // 3]
elif kind == "version":
    b[8:12] = (99).to_bytes(4, "little")
else:
    b = b""
open(p, "wb").write(b)
PY
	out=$($R --from "bad-$kind" -- echo ran 2>&1); rc=$?
	case "$rc:$out" in
	*ran* | *panick*) check "snapshot-$kind-refused" "rc=$rc $out" ;;
	125:*refused*) check "snapshot-$kind-refused" ok ;;
	*) check "snapshot-$kind-refused" "rc=$rc $out" ;;
	esac
done
out=$($SN rm bad-flip 2>&1); rc=$?
[ $rc -eq 0 ] && [ ! -e "$SD/bad-flip" ] && check snapshot-rm ok || check snapshot-rm "rc=$rc $out"
out=$($SN rm no-such-snapshot 2>&1); rc=$?
case "$rc:$out" in 125:*no-such-snapshot*) check snapshot-rm-missing ok ;; *) check snapshot-rm-missing "rc=$rc $out" ;; esac
out=$($R --from ../etc -- true 2>&1); rc=$?
case "$rc:$out" in 125:*"not accepted"*) check snapshot-bad-name ok ;; *) check snapshot-bad-name "rc=$rc $out" ;; esac

cd /
rm -rf "$W" "$UD"
echo DONE
