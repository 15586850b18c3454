#!/bin/sh
# Run INSIDE the nested lab VM booted with --cgroup2 (pure cgroup v2), as
# root, by lab_cgroup2.rs. $1: the sandbox launcher. $2: uid of an
# unprivileged account. Prints "CHECK <name> ok" or "CHECK <name> FAIL ...".
S=$1
U=$2
PY=/usr/bin/python3
check() { if [ "$2" = ok ]; then echo "CHECK $1 ok"; else echo "CHECK $1 FAIL $(printf '%s' "$2" | tr '\n' '|')"; fi; }

out=$($S run --memory 64m --pids 50 --receipt /tmp/r.json -- sh -c 'cat /proc/self/cgroup; cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max' 2>&1)
case "$out" in *"0::/"*67108864*50*) check limits-visible-inside ok ;; *) check limits-visible-inside "$out" ;; esac
grep -q '"version": "v2"' /tmp/r.json && check receipt-says-v2 ok || check receipt-says-v2 "$(cat /tmp/r.json)"

out=$($S run --memory 32m -- sh -c "$PY -c 'x = bytearray(256 << 20)'; echo survived" 2>&1); rc=$?
case "$rc:$out" in 123:*survived*) check oom-kills-everything "survived: $out" ;; 123:*"out of memory"*) check oom-kills-everything ok ;; *) check oom-kills-everything "rc=$rc $out" ;; esac
case "$out" in *"died unexpectedly"*) check oom-one-message "$out" ;; *) check oom-one-message ok ;; esac

out=$($S run --pids 10 -- $PY -c '
import os
n = 0
for i in range(30):
    try:
        if os.fork() == 0:
            import time; time.sleep(2); os._exit(0)
        n += 1
    except OSError:
        pass
print(n)' 2>&1)
[ "$out" -lt 10 ] 2>/dev/null && check pids-limit ok || check pids-limit "forked $out"

out=$($S run --cpus 0.5 -- cat /sys/fs/cgroup/cpu.max 2>&1)
[ "$out" = "50000 100000" ] && check cpu-quota ok || check cpu-quota "$out"

out=$($S run --memory 64m -- sh -c 'echo max > /sys/fs/cgroup/memory.max' 2>&1); rc=$?
[ $rc -ne 0 ] && check cannot-raise-own-limit ok || check cannot-raise-own-limit "write succeeded"

left=$(ls /sys/fs/cgroup/sandbox 2>/dev/null | grep -v '^cgroup\.\|\.' ; true)
[ -z "$left" ] && check nothing-left ok || check nothing-left "$left"

# Unprivileged, no delegated subtree: refused with the reason.
out=$(setpriv --reuid="$U" --regid="$U" --clear-groups -- $S run --memory 64m -- true 2>&1); rc=$?
case "$rc:$out" in 125:*"delegated cgroup v2"*) check rootless-undelegated-refused ok ;; *) check rootless-undelegated-refused "rc=$rc $out" ;; esac

# Unprivileged inside a subtree delegated to it (as systemd would do).
mkdir -p /sys/fs/cgroup/deleg/leaf
echo "+memory +pids +cpu" > /sys/fs/cgroup/cgroup.subtree_control
echo "+memory +pids +cpu" > /sys/fs/cgroup/deleg/cgroup.subtree_control
chown -R "$U:$U" /sys/fs/cgroup/deleg
out=$(sh -c "echo \$\$ > /sys/fs/cgroup/deleg/leaf/cgroup.procs; exec setpriv --reuid=$U --regid=$U --clear-groups -- $S run --memory 48m --pids 20 -- cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max" 2>&1); rc=$?
case "$rc:$out" in 0:*50331648*20*) check rootless-delegated-limits ok ;; *) check rootless-delegated-limits "rc=$rc $out" ;; esac
out=$(sh -c "echo \$\$ > /sys/fs/cgroup/deleg/leaf/cgroup.procs; exec setpriv --reuid=$U --regid=$U --clear-groups -- $S run --memory 32m -- $PY -c 'x = bytearray(256 << 20)'" 2>&1); rc=$?
[ $rc -eq 123 ] && check rootless-delegated-oom ok || check rootless-delegated-oom "rc=$rc $out"
echo DONE
