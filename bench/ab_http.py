#!/usr/bin/env python3
"""A/B of the evhttp server, plain and under evsteer-run, interleaved.

    bench/ab_http.py [--conns N] [--threads T] ROUNDS SECONDS NAME=SPEC ...

    SPEC: plain:BUILD                    BUILD's evsteer-http-server alone
          run:BUILD[:VAR=V,...[:ARGS]]   the same under BUILD's evsteer-run
                                         --group PORT ARGS, VAR=V in its
                                         environment

Each round runs every NAME once, in order: the evhttp server (T threads, 2
by default; built against libevent only) on a free port, driven by
`wrk -t2 -cN -dSECONDS -H 'Connection: close' --latency` (N = 32 by
default; -t1 at N = 1), so that every request is a new connection. The
server's CPU comes from /proc/PID/task/*/schedstat. Prints each round,
then per NAME the medians of requests/s, server CPU per request and wrk's
p99, and the medians of their ratios to the first NAME's run of the same
round.

This is the steady `http` scenario of evsteer-bench for comparing builds
and settings rather than implementations (bench/JOURNAL.md, "Steady evhttp
by policy"). Example:

    bench/ab_http.py 8 5 plain=plain:build run=run:build \\
        hash=run:build:EVSTEER_POLICY=hash
"""
import os, re, socket, statistics, subprocess, sys

# the server's CPU as the bench-server A/B reads it (this script's directory
# is first on sys.path when it is run)
from ab_builds import cpu_s


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def one(spec, secs, conns, threads):
    kind, build, *rest = spec.split(":")
    if kind not in ("plain", "run"):
        sys.exit(f"ab_http: {spec}: plain:BUILD or run:BUILD[:VAR=V,...[:ARGS]]")
    env = dict(os.environ)
    for kv in rest[0].split(",") if rest and rest[0] else []:
        k, v = kv.split("=", 1)
        env[k] = v
    port = free_port()
    cmd = [f"{build}/bench/evsteer-http-server", "--threads", str(threads),
           "--port", str(port)]
    if kind == "run":
        extra = rest[1].split() if len(rest) > 1 else []
        cmd = [f"{build}/preload/evsteer-run", "--group", str(port), *extra,
               "--", *cmd]
    srv = subprocess.Popen(cmd, stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        line = srv.stdout.readline().split()
        if line != ["ready", str(port)]:
            sys.exit(f"ab_http: {spec}: the server did not start")
        c0 = cpu_s(srv.pid)  # evsteer-run execs the server: same pid
        # wrk wants no more threads than connections
        out = subprocess.run(["wrk", f"-t{min(2, conns)}", f"-c{conns}", f"-d{secs}s", "-H",
                              "Connection: close", "--latency",
                              f"http://127.0.0.1:{port}/"],
                             capture_output=True, text=True,
                             timeout=float(secs) + 60, check=True).stdout
        c1 = cpu_s(srv.pid)
    finally:
        srv.terminate()
        srv.wait(timeout=30)
    m = re.search(r"(\d+) requests in", out)
    if not m or not int(m.group(1)):
        sys.exit(f"ab_http: {spec}: no request served")
    req = int(m.group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    m = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    p99 = float(m.group(1)) * {"us": 1e-3, "ms": 1, "s": 1e3}[m.group(2)]
    return rps, (c1 - c0) * 1e6 / req, p99


def main():
    args = sys.argv[1:]
    conns, threads = 32, 2
    while args and args[0].startswith("--"):
        opt = args.pop(0)
        if opt in ("--conns", "--threads") and args:
            v = int(args.pop(0))
            conns, threads = (v, threads) if opt == "--conns" else (conns, v)
        else:
            sys.exit(__doc__)
    if len(args) < 3 or any("=" not in a for a in args[2:]):
        sys.exit(__doc__)
    rounds, secs = int(args[0]), args[1]
    cfgs = [a.split("=", 1) for a in args[2:]]
    res = {n: [] for n, _ in cfgs}
    for r in range(rounds):
        for n, spec in cfgs:
            res[n].append(one(spec, secs, conns, threads))
            rps, cpu, p99 = res[n][-1]
            print(f"{r} {n} {rps:.0f} req/s {cpu:.2f} us/req p99 {p99:.2f} ms",
                  flush=True)
    base = cfgs[0][0]
    print(f"medians; ratios paired by round against {base}")
    for n, _ in cfgs:
        med = [statistics.median(x[i] for x in res[n]) for i in range(3)]
        rat = [statistics.median(res[n][k][i] / res[base][k][i]
                                 for k in range(rounds)) for i in range(3)]
        print(f"{n:14} {med[0]:8.0f} req/s {med[1]:6.2f} us/req "
              f"p99 {med[2]:6.2f} ms | ratios {rat[0]:.3f} {rat[1]:.3f} "
              f"{rat[2]:.3f}")


if __name__ == "__main__":
    main()
