#!/usr/bin/env bash
# --network nat: TCP throughput and start-up cost, each against a peer in
# the same invocation (docs/network.md, bench/README.md).
#
# 1. Throughput (iperf3, TCP, one stream), interleaved rounds, medians:
#    - loopback: client and server on the host's own 127.0.0.1;
#    - veth:     host client -> server in a test network namespace made
#                here (10.214.0.2, behind a veth pair);
#    - nat:      the same server, client inside `sandbox run --network nat`
#                (through pasta).
#    Ratios: nat / loopback and nat / veth.
# 2. Start-up: `sandbox run -- /bin/true` with `--network none` and with
#    `--network nat`, interleaved; medians and the difference.
#
# Usage: bench/network.sh   (as root: it makes the test namespace)
# Knobs: BENCH_ROUNDS (throughput rounds, default 3), BENCH_SECONDS (per
#        iperf3 run, default 3), BENCH_RUNS (start-up runs each, default 30),
#        SANDBOX_BIN (default: target/debug/sandbox, built if missing).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
rounds=${BENCH_ROUNDS:-3}
secs=${BENCH_SECONDS:-3}
runs=${BENCH_RUNS:-30}
[[ $(id -u) -eq 0 ]] || { echo "run as root (it makes a test network namespace)" >&2; exit 1; }
for t in iperf3 pasta nft; do
    command -v "$t" >/dev/null || { echo "install $t (scripts/test.sh lists the packages)" >&2; exit 1; }
done
if [[ -z ${SANDBOX_BIN:-} ]]; then
    (cd "$ROOT" && cargo build -q -p sandbox -p sandbox-init)
    SANDBOX_BIN="$ROOT/target/debug/sandbox"
fi
S=$SANDBOX_BIN
ns=sbbench$$
veth=sbb$$h
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
}
trap cleanup EXIT
ip netns add "$ns"
ip link add "$veth" type veth peer name eth0 netns "$ns"
ip addr add 10.214.0.1/24 dev "$veth"
ip link set "$veth" up
ip -n "$ns" addr add 10.214.0.2/24 dev eth0
ip -n "$ns" link set eth0 up
ip -n "$ns" link set lo up
ip -n "$ns" route add default via 10.214.0.1
iperf3 -s -B 127.0.0.1 -p 5201 >/dev/null 2>&1 & pids+=($!)
ip netns exec "$ns" iperf3 -s -B 10.214.0.2 -p 5201 >/dev/null 2>&1 & pids+=($!)
sleep 0.5

gbps() { python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9)'; }
loop=() veth_r=() nat=()
for ((r = 1; r <= rounds; r++)); do
    loop+=("$(iperf3 -J -c 127.0.0.1 -p 5201 -t "$secs" | gbps)")
    veth_r+=("$(iperf3 -J -c 10.214.0.2 -p 5201 -t "$secs" | gbps)")
    nat+=("$("$S" run --network nat --allow 10.214.0.2:5201/tcp -- iperf3 -J -c 10.214.0.2 -p 5201 -t "$secs" | gbps)")
done

ms_now() { date +%s%N; }
none_ms=() nat_ms=()
for ((i = 0; i < runs; i++)); do
    t0=$(ms_now); "$S" run --network none -- /bin/true; t1=$(ms_now)
    "$S" run --network nat -- /bin/true; t2=$(ms_now)
    none_ms+=("$(( (t1 - t0) / 1000 ))") nat_ms+=("$(( (t2 - t1) / 1000 ))")
done

python3 - "${loop[*]}" "${veth_r[*]}" "${nat[*]}" "${none_ms[*]}" "${nat_ms[*]}" <<'EOF'
import statistics as st, sys
loop, veth, nat, none_us, nat_us = ([float(x) for x in a.split()] for a in sys.argv[1:6])
ml, mv, mn = st.median(loop), st.median(veth), st.median(nat)
print(f"TCP throughput, median of {len(loop)} (Gbit/s):")
print(f"  host loopback      {ml:8.2f}")
print(f"  host -> veth netns {mv:8.2f}")
print(f"  sandbox nat (pasta){mn:8.2f}   nat/loopback = {mn/ml:.2f}   nat/veth = {mn/mv:.2f}")
a, b = st.median(none_us) / 1000, st.median(nat_us) / 1000
print(f"start-up of `sandbox run -- /bin/true`, median of {len(none_us)} (ms):")
print(f"  --network none {a:7.1f}")
print(f"  --network nat  {b:7.1f}   added {b - a:.1f} ms, ratio {b / a:.2f}")
EOF
