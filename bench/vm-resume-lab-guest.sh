#!/bin/sh
# Runs INSIDE the nested lab (bench/vm-resume-lab.sh): resume-to-command
# against cold-boot-to-command of `sandbox run --vm -- /bin/true`, RUNS
# pairs interleaved, in this one lab boot. $1: sandbox, $2: RUNS.
S=$1
RUNS=${2:-10}
export SANDBOX_SNAPSHOT_DIR=$(mktemp -d /tmp/vm-resume-bench.XXXXXX)
cd "$SANDBOX_SNAPSHOT_DIR" || exit 1
ms() { date +%s%N | sed 's/......$//'; }
one() { # $1: label, rest: run options
	l=$1; shift
	t=$(ms)
	timeout -k 5 300 "$S" run --vm "$@" --json-status-fd 3 -- /bin/true 3>r.json >/dev/null 2>err.txt
	rc=$?
	w=$(($(ms) - t))
	/usr/bin/python3 - "$l" "$rc" "$w" <<'PY'
import json, sys
l, rc, w = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
try:
    vm = json.load(open("r.json")).get("vm") or {}
except Exception:
    vm = {}
print("RUN", l, rc, w, vm.get("boot"), vm.get("init_ready_ms"), vm.get("command_started_ms"),
      vm.get("snapshot_created_ms"), flush=True)
PY
}
# The first automatic run makes this shape's snapshot.
one create --warm
i=0
while [ $i -lt "$RUNS" ]; do
	one cold --cold
	one resume --warm
	i=$((i + 1))
done
du -sh "$SANDBOX_SNAPSHOT_DIR" | sed 's/^/snapshot on disk: /'
rm -rf "$SANDBOX_SNAPSHOT_DIR"
echo DONE
