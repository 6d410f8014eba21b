#!/usr/bin/env python3
"""A/B of evsteer-bench-server builds, interleaved, by CPU per connection.

    bench/ab_builds.py ROUNDS SECONDS IN_FLIGHT WORK_US NAME=BUILD:IMPL[:VAR=V,...] ...

Each round runs every NAME once, in order: BUILD's evsteer-bench-server
(--impl IMPL, 2 workers, --work-us WORK_US, VAR=V in its environment) under
BUILD's closed loop with IN_FLIGHT connections for SECONDS. The server's
CPU comes from /proc/PID/task/*/schedstat. Prints each round, then per NAME
the median CPU per connection and the median of its ratios to the first
NAME's run of the same round (with every round's ratio, sorted), and the
median of the client's p99 latency.

evsteer-bench compares implementations of one build; this compares builds
(before and after a change) and environment settings. Example:

    bench/ab_builds.py 6 3 1 0 libevent=$B:libevent before=$A:evsteer-bpf-event \\
        after=$B:evsteer-bpf-event
"""
import json, os, statistics, subprocess, sys


def cpu_s(pid):
    t = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                t += int(f.read().split()[0])
        except OSError:  # a thread gone meanwhile
            pass
    return t / 1e9


def one(spec, secs, inflight, work):
    build, impl, *var = spec.split(":")
    env = dict(os.environ)
    for kv in var[0].split(",") if var and var[0] else []:
        k, v = kv.split("=", 1)
        env[k] = v
    srv = subprocess.Popen([f"{build}/bench/evsteer-bench-server", "--impl", impl,
                            "--workers", "2", "--work-us", work],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                           text=True, env=env)
    try:
        line = srv.stdout.readline().split()
        if len(line) != 2 or line[0] != "ready":
            sys.exit(f"ab_builds: {spec}: the server did not start")
        c0 = cpu_s(srv.pid)
        out = subprocess.run([f"{build}/bench/evsteer-bench-load", "closed",
                              "--port", line[1], "--threads", inflight,
                              "--seconds", secs], capture_output=True,
                             text=True, timeout=float(secs) + 60, check=True)
        c1 = cpu_s(srv.pid)
    finally:
        srv.terminate()
        srv.wait(timeout=30)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    if not res["connections"]:
        sys.exit(f"ab_builds: {spec}: no connection served")
    return (c1 - c0) * 1e6 / res["connections"], res["p99_ms"]


def main():
    if len(sys.argv) < 6 or "=" not in sys.argv[5]:
        sys.exit(__doc__)
    rounds, secs, inflight, work = int(sys.argv[1]), *sys.argv[2:5]
    cfgs = [a.split("=", 1) for a in sys.argv[5:]]
    res = {n: [] for n, _ in cfgs}
    p99 = {n: [] for n, _ in cfgs}
    for r in range(rounds):
        for n, spec in cfgs:
            cpu, p = one(spec, secs, inflight, work)
            res[n].append(cpu)
            p99[n].append(p)
        print(r, " ".join(f"{n} {res[n][-1]:.2f}" for n, _ in cfgs),
              flush=True)
    base = cfgs[0][0]
    for n, _ in cfgs:
        rat = sorted(res[n][k] / res[base][k] for k in range(rounds))
        print(f"{n:14} median {statistics.median(res[n]):.2f} us/conn, "
              f"against {base} {statistics.median(rat):.3f}x "
              f"({' '.join(f'{x:.2f}' for x in rat)}), "
              f"p99 {statistics.median(p99[n]):.2f} ms")


if __name__ == "__main__":
    main()
