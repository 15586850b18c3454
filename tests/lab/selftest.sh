#!/bin/bash
# shellcheck disable=SC2016 # the $(...) in single quotes are for the guest shell
# Checks that the nested lab works: tests/lab/selftest.sh [--all]
# Without --all it skips the slow --systemd checks. Prints one line per
# check and exits 1 if any failed.
set -euo pipefail
lab=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)/lab.sh
all=0
[ "${1:-}" != --all ] || all=1
failed=0

check() { # check NAME EXPECTED-STATUS EXPECTED-OUTPUT-REGEX -- LAB-ARGS...
	local name=$1 want=$2 regex=$3 out rc=0 t0 t1
	shift 4
	t0=$(date +%s.%N)
	out=$("$lab" "$@" 2>&1) || rc=$?
	t1=$(date +%s.%N)
	if [ "$rc" = "$want" ] && grep -Eq -- "$regex" <<<"$out"; then
		printf 'ok    %-22s %5.1fs\n' "$name" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')"
	else
		printf 'FAIL  %-22s status %s (want %s), output:\n%s\n' "$name" "$rc" "$want" "$out"
		failed=1
	fi
}

check plain 0 '^Linux lab .*-amd64' -- -- uname -a
check status 7 '' -- -- sh -c 'exit 7'
check stdio 0 '^out$' -- -- sh -c 'echo out; echo err >&2'
check not-found 127 'not found' -- -- no-such-command-here
check timeout 97 '^lab: timed out after 1s' -- --timeout 1 -- true
check cgroup2 0 'memory.*pids|pids.*memory' -- --cgroup2 -- cat /sys/fs/cgroup/cgroup.controllers
check kvm 0 '^kvm-smoke: ok' -- --kvm -- python3 "$(dirname "$lab")/kvm-smoke.py"
check selinux 0 '^Enforcing unconfined_u:unconfined_r:unconfined_t' -- --selinux -- sh -c 'echo $(getenforce) $(id -Z)'
if [ "$all" = 1 ]; then
	check systemd 0 '^systemd 0::/system.slice/lab.service$' -- --systemd --cgroup2 --timeout 300 -- \
		sh -c 'echo $(ps -o comm= -p 1) $(cat /proc/self/cgroup)'
	check systemd-selinux 0 '^system_u:system_r:init_t:s0 Enforcing$' -- --systemd --selinux --timeout 300 -- \
		sh -c 'echo $(ps -o label= -p 1) $(getenforce)'
fi
exit "$failed"
