#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""stall_phases.py STALLS SAMPLES [--over MS]

Where in a stall the slow connections are. STALLS is the bench server's
--stall-log (each stall's start, CLOCK_MONOTONIC seconds), SAMPLES the open
loop's --samples (each answered connection's due time on the same clock and
its latency in ms). Each connection is placed by its due time against the
last stall that started before it, and the table gives, per phase bin, the
connections due there, how many waited longer than --over ms (default 2),
and their median and largest latency:

  evsteer-bench-server --impl evsteer --workers 2 --stall-worker 0 \\
      --stall-ms 50 --stall-every-ms 250 --stall-log stalls.txt ...
  evsteer-bench-load open --port P --rate 3000 --seconds 5 --send \\
      --samples samples.txt
  bench/stall_phases.py stalls.txt samples.txt

bench/JOURNAL.md ("The stall scenario's floor") reads one.
"""
import bisect
import sys

EDGES = [0, 1, 2, 3, 5, 10, 20, 50, 55, 100, 250]


def main():
    args = sys.argv[1:]
    over = 2.0
    if "--over" in args:
        i = args.index("--over")
        over = float(args[i + 1])
        del args[i:i + 2]
    if len(args) != 2:
        sys.exit(__doc__)
    starts = sorted(float(l) for l in open(args[0]) if l.strip())
    samples = [tuple(map(float, l.split())) for l in open(args[1])
               if l.strip()]
    if not starts or not samples:
        sys.exit("stall_phases.py: no stalls or no samples")
    bins = {}
    before = []
    for due, ms in samples:
        i = bisect.bisect_right(starts, due) - 1
        if i < 0:
            before.append(ms)
            continue
        phase = (due - starts[i]) * 1000.0
        k = bisect.bisect_right(EDGES, phase) - 1
        bins.setdefault(k, []).append(ms)
    print(f"phase after a stall's start | due | over {over:g} ms | "
          f"median ms | max ms")
    rows = [("before the first", before)] + [
        (f"{EDGES[k]}-{EDGES[k + 1]} ms" if k + 1 < len(EDGES)
         else f">= {EDGES[k]} ms", bins[k]) for k in sorted(bins)]
    total_over = 0
    for name, v in rows:
        if not v:
            continue
        v.sort()
        n_over = sum(1 for x in v if x > over)
        total_over += n_over
        print(f"{name:>16} | {len(v):5d} | {n_over:5d} | "
              f"{v[len(v) // 2]:8.3f} | {v[-1]:7.2f}")
    print(f"{len(samples)} connections, {len(starts)} stalls, "
          f"{total_over} over {over:g} ms "
          f"({100.0 * total_over / len(samples):.2f}%)")


if __name__ == "__main__":
    main()
