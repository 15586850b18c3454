#!/usr/bin/env bash
# The cost of joining a running sandbox: `sandbox exec NAME -- /bin/true`
# against `nsenter` into the same namespaces of the same sandbox's command
# (user, mount, pid, ipc, uts, net, cgroup), in ONE hyperfine invocation
# with interleaved blocks. Prints the medians and the ratio (target: exec at
# most 2x nsenter's median).
#
# What differs: nsenter only enters the namespaces. `sandbox exec` also
# applies the command's whole confinement (capabilities dropped, no_new_privs,
# Landlock, seccomp, its cgroup, its uid/gid, a new session) and goes through
# the supervisor's control socket and init, which spawns the process and
# reports its exit status back.
#
# Usage: bench/exec.sh   (root, or any user; the sandbox runs as the caller)
# Knobs: BENCH_RUNS (default 200), BENCH_ROUNDS (default 10),
#        SANDBOX_BIN (default: the release musl build, built if missing).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MUSL=x86_64-unknown-linux-musl
runs=${BENCH_RUNS:-200}
rounds=${BENCH_ROUNDS:-10}
per=$((runs / rounds))
((per >= 2)) || { echo "BENCH_RUNS/BENCH_ROUNDS must be >= 2" >&2; exit 1; }
command -v hyperfine >/dev/null || { echo "install hyperfine (apt-get install hyperfine)" >&2; exit 1; }
command -v nsenter >/dev/null || { echo "install util-linux (nsenter)" >&2; exit 1; }
if [[ -z ${SANDBOX_BIN:-} ]]; then
    (cd "$ROOT" && cargo build -q --release -p sandbox -p sandbox-init --target "$MUSL")
    SANDBOX_BIN="$ROOT/target/$MUSL/release/sandbox"
fi
S=$SANDBOX_BIN
out=$(mktemp -d /tmp/sandbox-exec-bench.XXXXXX)
export SANDBOX_STATE_DIR=$out/state SANDBOX_LOG_FILE=1
name=bench-exec-$$
cleanup() { "$S" kill "$name" >/dev/null 2>&1 || true; "$S" gc >/dev/null 2>&1 || true; rm -rf "$out"; }
trap cleanup EXIT
cd /
"$S" run -d --name "$name" -- sleep 1000000 >/dev/null
init=$("$S" inspect "$name" | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["init_pid"])')
cmd=$(pgrep -P "$init" | head -1)
[[ -n $cmd ]] || { echo "cannot find the sandbox's command (init $init)" >&2; exit 1; }
ns="-U -m -p -i -u -n -C --preserve-credentials"
# Pre-flight: both work, and both land in the same namespaces.
a=$("$S" exec "$name" -- readlink /proc/self/ns/pid /proc/self/ns/mnt /proc/self/ns/user)
b=$(nsenter -t "$cmd" $ns -- readlink /proc/self/ns/pid /proc/self/ns/mnt /proc/self/ns/user)
[[ $a == "$b" ]] || { echo "exec and nsenter see different namespaces: $a / $b" >&2; exit 1; }
names=(nsenter exec)
cmds=("nsenter -t $cmd $ns -- /bin/true" "$S exec $name -- /bin/true")
args=()
for ((r = 1; r <= rounds; r++)); do
    for k in "${!names[@]}"; do
        ((r % 2)) || k=$((${#names[@]} - 1 - k))
        args+=(-n "${names[$k]} #$r" "${cmds[$k]}")
    done
done
hyperfine -N --style none --warmup 5 --runs "$per" --export-json "$out/h.json" "${args[@]}" >/dev/null 2>"$out/hyperfine.err" || { cat "$out/hyperfine.err" >&2; exit 1; }
/usr/bin/python3 - "$out/h.json" <<'PY'
import json, statistics, sys
res = json.load(open(sys.argv[1]))["results"]
pooled = {}
for r in res:
    name = r["command"].rsplit(" #", 1)[0]
    pooled.setdefault(name, []).extend(r["times"])
med = {k: statistics.median(v) * 1000 for k, v in pooled.items()}
print(f"{'variant':<10} {'median ms':>10} {'runs':>6}")
for k, v in med.items():
    print(f"{k:<10} {v:>10.3f} {len(pooled[k]):>6}")
ratio = med["exec"] / med["nsenter"]
print()
print(f"sandbox exec vs nsenter  {ratio:.2f}x (target <= 2x: {'PASS' if ratio <= 2 else 'MISS'})")
PY
