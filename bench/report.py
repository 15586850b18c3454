#!/usr/bin/python3
"""Turn one bench/run.sh results directory into a readable report.

usage: /usr/bin/python3 bench/report.py bench/results/<timestamp>

Reads from that directory:
  hyperfine.json  hyperfine --export-json output (times in seconds); each
                  command was run in blocks named "<name> #<round>"
  pairs.tsv       label <TAB> sandbox name <TAB> bwrap name <TAB> control name
                  (names without the " #<round>" suffix; the control, a second
                  copy of the bwrap command, may be empty)
  rss.tsv         header line, then label <TAB> tool <TAB> max RSS in KiB
  env.txt         "key: value" lines copied into the summary (optional)
  notes.txt       free-form warnings copied into the summary (optional)

Prints tables and a summary block on stdout. The targets are informational:
the exit status is 0 whether they are met or missed, and non-zero only when
the input cannot be read.
"""

import json
import random
import re
import statistics
import sys
from pathlib import Path

LATENCY_TARGET = 1.00  # sandbox median / bwrap median must be <= this
RSS_TARGET_MIB = 10.0  # launcher peak RSS must be < this
BOOTSTRAP_ROUNDS = 2000
BOOTSTRAP_SEED = 20240601  # fixed, so re-running the report gives the same CI


def read_lines(path):
    try:
        return [l for l in path.read_text().splitlines() if l.strip()]
    except FileNotFoundError:
        return []


def ms(seconds):
    return f"{seconds * 1000:.3f}"


def verdict(ok):
    return "PASS" if ok else "MISS"


def median_ratio_ci(num, den, rng):
    """Percentile-bootstrap 95% interval for median(num) / median(den)."""
    if len(num) < 2 or len(den) < 2:
        return None
    ratios = []
    for _ in range(BOOTSTRAP_ROUNDS):
        a = statistics.median(rng.choices(num, k=len(num)))
        b = statistics.median(rng.choices(den, k=len(den)))
        if b > 0:
            ratios.append(a / b)
    if not ratios:
        return None
    ratios.sort()
    lo = ratios[int(0.025 * (len(ratios) - 1))]
    hi = ratios[int(0.975 * (len(ratios) - 1))]
    return lo, hi


def table(header, rows, align):
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]

    def fmt(row):
        cells = []
        for cell, w, a in zip(row, widths, align):
            cells.append(str(cell).ljust(w) if a == "<" else str(cell).rjust(w))
        return "  ".join(cells).rstrip()

    out = [fmt(header), fmt(["-" * w for w in widths])]
    out += [fmt(r) for r in rows]
    return "\n".join(out)


def main(argv):
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    d = Path(argv[1])

    with open(d / "hyperfine.json") as f:
        blocks = json.load(f)["results"]

    # Pool the blocks of each command; keep each block's median per round.
    pooled, per_round = {}, {}
    for b in blocks:
        m = re.fullmatch(r"(.*) #(\d+)", b["command"])
        name, rnd = (m.group(1), int(m.group(2))) if m else (b["command"], 1)
        pooled.setdefault(name, []).extend(b["times"])
        per_round.setdefault(name, {})[rnd] = b["median"]

    pairs = []
    for line in read_lines(d / "pairs.tsv"):
        fields = line.split("\t") + [""]
        pairs.append(fields[:4])
    rss = {}
    for line in read_lines(d / "rss.tsv")[1:]:
        label, tool, kib = line.split("\t")
        rss.setdefault((label, tool), []).append(int(kib))
    env = read_lines(d / "env.txt")
    notes = read_lines(d / "notes.txt")

    rng = random.Random(BOOTSTRAP_SEED)
    summary = []
    n_rounds = max((len(v) for v in per_round.values()), default=0)

    # --- latency -----------------------------------------------------------
    print(f"Start-up latency of /bin/true (hyperfine -N; all blocks of a command pooled, "
          f"{n_rounds} interleaved block(s))")
    print()
    rows = []
    for name, t in pooled.items():
        rows.append([name, str(len(t)), ms(statistics.median(t)), ms(statistics.fmean(t)),
                     ms(statistics.stdev(t) if len(t) > 1 else 0.0), ms(min(t)), ms(max(t))])
    print(table(["command", "runs", "median ms", "mean ms", "stddev ms", "min ms", "max ms"],
                rows, "<>>>>>>"))
    print()

    def compare(num_name, den_name):
        """Median ratio, bootstrap CI and per-block ratios of two commands."""
        num, den = pooled[num_name], pooled[den_name]
        ratio = statistics.median(num) / statistics.median(den)
        ci = median_ratio_ci(num, den, rng)
        ci_txt = f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else ""
        rounds = sorted(set(per_round[num_name]) & set(per_round[den_name]))
        block = [per_round[num_name][r] / per_round[den_name][r] for r in rounds]
        return ratio, ci, ci_txt, block

    def block_line(block):
        return (f"    per-block ratios: min {min(block):.3f}, median {statistics.median(block):.3f}, "
                f"max {max(block):.3f}; {sum(x <= LATENCY_TARGET for x in block)}/{len(block)}"
                f" blocks <= {LATENCY_TARGET:.2f}x")

    for label, sb_name, bw_name, ctl_name in pairs:
        if sb_name not in pooled or bw_name not in pooled:
            line = f"latency [{label}]: n/a (missing from hyperfine.json)"
            print(line)
            summary.append(line)
            continue
        ratio, _, ci_txt, block = compare(sb_name, bw_name)
        mark = verdict(ratio <= LATENCY_TARGET)
        print(f"ratio [{label}] sandbox/bwrap median: {ratio:.3f}x{ci_txt}"
              f"   target <= {LATENCY_TARGET:.2f}x   {mark}")
        if len(block) > 1:
            print(block_line(block))
        summary.append(
            f"latency [{label}]: sandbox median {ms(statistics.median(pooled[sb_name]))} ms, "
            f"bwrap median {ms(statistics.median(pooled[bw_name]))} ms, "
            f"ratio {ratio:.3f}x{ci_txt}, target <= {LATENCY_TARGET:.2f}x: {mark}")
        if ctl_name and ctl_name in pooled:
            # bwrap against an identical bwrap: anything but 1.000 is noise.
            # Take the farthest of the estimate and its CI bounds from 1.
            c_ratio, c_ci, c_ci_txt, c_block = compare(ctl_name, bw_name)
            noise = max(abs(x - 1) for x in (c_ratio,) + (c_ci or ())) * 100
            print(f"control [{label}] bwrap/bwrap (A/A) median: {c_ratio:.3f}x{c_ci_txt}"
                  f"   noise ~ +/-{noise:.1f}%")
            if len(c_block) > 1:
                print(block_line(c_block))
            summary.append(
                f"noise [{label}]: A/A bwrap/bwrap ratio {c_ratio:.3f}x{c_ci_txt};"
                f" ratios within +/-{noise:.1f}% of 1.00 are not distinguishable")
    print()

    # --- peak RSS ----------------------------------------------------------
    print("Peak RSS (/usr/bin/time %M = max over the measured process and the children it reaped)")
    print()
    rows = []
    for label, *_ in pairs:
        for tool in ("sandbox", "bwrap"):
            samples = rss.get((label, tool), [])
            if not samples:
                rows.append([f"{tool} [{label}]", "n/a", "n/a", "0", ""])
                continue
            peak = max(samples)
            mib = peak / 1024
            target = (f"< {RSS_TARGET_MIB:g} MiB  {verdict(mib < RSS_TARGET_MIB)}"
                      if tool == "sandbox" else "(reference)")
            rows.append([f"{tool} [{label}]", str(peak), f"{mib:.2f}", str(len(samples)), target])
    print(table(["command", "max KiB", "max MiB", "samples", "target"], rows, "<>>><"))
    print()
    for label, *_ in pairs:
        sb, bw = rss.get((label, "sandbox")), rss.get((label, "bwrap"))
        if not sb:
            summary.append(f"peak RSS [{label}]: n/a")
            continue
        mib = max(sb) / 1024
        bw_txt = f", bwrap {max(bw) / 1024:.2f} MiB" if bw else ""
        summary.append(
            f"peak RSS [{label}]: sandbox {mib:.2f} MiB ({max(sb)} KiB){bw_txt}, "
            f"target < {RSS_TARGET_MIB:g} MiB: {verdict(mib < RSS_TARGET_MIB)}")

    # --- pasteable block ---------------------------------------------------
    print("----- BEGIN BENCH SUMMARY -----")
    for line in env + summary:
        print(line)
    for line in notes:
        print(f"note: {line}")
    print("----- END BENCH SUMMARY -----")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
