#!/usr/bin/env python3
"""Summarise rr_bench.sh output: per (in flight, rules) the median rate over
the repetitions, its ratio to "none" (no ruleset) and to "0" (the ruleset
skeleton without generated rules), and median p50/p99 latency.
Then the paired ratios: within each repetition (all configurations run
within ~30 s of each other) the rate of each configuration over that
repetition's "none" and "0", median over repetitions — less sensitive to
slow phases of a shared machine than a ratio of medians.
Usage: summarize.py RESULTS.txt [more.txt ...]"""
import re
import statistics
import sys

rows = {}
reps = {}
for path in sys.argv[1:]:
    for line in open(path):
        kv = dict(re.findall(r"(\w+)=(\S+)", line))
        if "rps" not in kv:
            print("no result:", line.strip(), file=sys.stderr)
            continue
        key = (int(kv["inflight"]), kv["rules"])
        reps.setdefault((path, kv["rep"], key[0]), {})[key[1]] = float(kv["rps"])
        rows.setdefault(key, []).append((float(kv["rps"]), float(kv["p50_us"]), float(kv["p99_us"])))

def order(r):
    return -1 if r == "none" else int(r)

print("| in flight | rules | runs | median req/s | min–max req/s | vs none | vs 0 rules | p50 µs | p99 µs |")
print("|---|---|---|---|---|---|---|---|---|")
for inflight in sorted({k[0] for k in rows}, reverse=True):
    med = {r: statistics.median(x[0] for x in v) for (i, r), v in rows.items() if i == inflight}
    for r in sorted(med, key=order):
        v = rows[(inflight, r)]
        rps = [x[0] for x in v]
        vs = lambda base: f"{med[r] / med[base]:.3f}" if base in med else "–"
        print(f"| {inflight} | {r} | {len(v)} | {med[r]:,.0f} | {min(rps):,.0f}–{max(rps):,.0f} | {vs('none')} | {vs('0')} "
              f"| {statistics.median(x[1] for x in v):.1f} | {statistics.median(x[2] for x in v):.1f} |")

print()
print("| in flight | rules | paired runs | median of per-repetition ratio vs none | vs 0 rules | min–max vs 0 rules |")
print("|---|---|---|---|---|---|")
for inflight in sorted({k[0] for k in rows}, reverse=True):
    cfgs = sorted({r for (i, r) in rows if i == inflight}, key=order)
    for r in cfgs:
        vn = [d[r] / d["none"] for (p, rep, i), d in reps.items() if i == inflight and r in d and "none" in d]
        v0 = [d[r] / d["0"] for (p, rep, i), d in reps.items() if i == inflight and r in d and "0" in d]
        f = lambda v: f"{statistics.median(v):.3f}" if v else "–"
        mm = f"{min(v0):.3f}–{max(v0):.3f}" if v0 else "–"
        print(f"| {inflight} | {r} | {len(vn)} | {f(vn)} | {f(v0)} | {mm} |")
