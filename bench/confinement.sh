#!/usr/bin/env bash
# The cost of confinement: `sandbox run -- /bin/true` with seccomp, Landlock
# and cgroup limits off, with the defaults (seccomp + Landlock), and with
# limits on top, against bubblewrap, all in ONE hyperfine invocation with
# interleaved blocks (see bench/README.md for why). Prints the median of
# each and the difference each layer adds.
#
# Usage: bench/confinement.sh   (as root: cgroup limits need root on v1 hosts)
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
command -v bwrap >/dev/null || { echo "install bubblewrap (apt-get install bubblewrap)" >&2; exit 1; }
if [[ -z ${SANDBOX_BIN:-} ]]; then
    (cd "$ROOT" && cargo build -q --release -p sandbox -p sandbox-init --target "$MUSL")
    SANDBOX_BIN="$ROOT/target/$MUSL/release/sandbox"
fi
S=$SANDBOX_BIN
limits=()
if [[ $(id -u) -eq 0 ]] || "$S" run --memory 1g -- /bin/true 2>/dev/null; then
    limits=(--memory 1g --pids 1000 --cpus 2)
else
    echo "note: cgroup limits unavailable for this user; the 'limits' variant is skipped" >&2
fi
names=(bwrap off default)
cmds=("bwrap --unshare-all --die-with-parent --ro-bind / / --dev /dev --proc /proc --tmpfs /tmp -- /bin/true"
      "$S run --seccomp off --landlock off -- /bin/true"
      "$S run -- /bin/true")
if ((${#limits[@]})); then
    names+=(limits)
    cmds+=("$S run ${limits[*]} -- /bin/true")
fi
args=()
for ((r = 1; r <= rounds; r++)); do
    for k in "${!names[@]}"; do
        ((r % 2)) || k=$((${#names[@]} - 1 - k))
        args+=(-n "${names[$k]} #$r" "${cmds[$k]}")
    done
done
out=$(mktemp -d /tmp/sandbox-confine.XXXXXX)
trap 'rm -rf "$out"' EXIT
cd /
hyperfine -N --style none --warmup 3 --runs "$per" --export-json "$out/h.json" "${args[@]}" >/dev/null
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
print()
print(f"seccomp + Landlock add   {med['default'] - med['off']:+.3f} ms (target < 1 ms)")
if "limits" in med:
    print(f"cgroup limits add        {med['limits'] - med['default']:+.3f} ms")
    print(f"all confinement adds     {med['limits'] - med['off']:+.3f} ms")
print(f"default vs bubblewrap    {med['default'] / med['bwrap']:.2f}x")
PY
