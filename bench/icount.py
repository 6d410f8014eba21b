#!/usr/bin/env python3
"""evsteer-icount: user-space instructions per connection, counted, not timed.

The bench server runs under valgrind's callgrind, which counts the
instructions each function executes in user space (not the kernel's, not
time): the same binary and load give the same count whatever else the
machine does (within 1% for evsteer's paths; up to 15% where an accept
loop's last accept4() finds EAGAIN or not, by timing: hence --repeat),
where CPU time on a shared 2-vCPU VM moves by more than the differences
looked for (bench/JOURNAL.md, "Instructions per connection"). Each implementation serves --conns connections and a
fifth of that, one in flight (closed loop, the load generator outside
valgrind); the difference of the two totals over the difference of the
counts is the cost per connection, start-up and exit cancelled out.
Threads are serialised under valgrind and everything runs ~50x slower, so
a wake-up carries what it would at low concurrency: one connection.

Reported per implementation: instructions per connection, and against the
first implementation named, the functions that make the difference, and
the calls per connection of the system call wrappers (an epoll_wait that
returns EINTR counts as one; io_uring_enter() as the calls of liburing's
functions that make it).

With --http the server is evsteer-http-server (an evhttp program built
against libevent only, 2 threads), run plain (libevent) or under
evsteer-run on one path (evsteer: the default, bpf+event; evsteer-uring:
--accept uring; evsteer-event: --accept event; evsteer-nobpf: --bpf off),
each connection one HTTP/1.0 request read to its end by a client of this
script's own.

  evsteer-icount [--http] [--impl libevent,evsteer,...] [--conns N]
                 [--work-us U] [--read-first] [--top K] [--repeat R]
                 [--out DIR]
"""
import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
HTTP_SERVER = os.path.join(HERE, "evsteer-http-server")
EVSTEER_RUN = os.path.join(HERE, "..", "preload", "evsteer-run")
# --http: plain, or under evsteer-run with these options
HTTP_IMPLS = {"libevent": None, "evsteer": [],
              "evsteer-uring": ["--accept", "uring"],
              "evsteer-event": ["--accept", "event"],
              "evsteer-nobpf": ["--bpf", "off"]}
# libc's system call wrappers; liburing makes its io_uring_enter() inline,
# so it is counted as the calls of liburing's functions that make one
# (io_uring_submit() only when something is queued: an upper bound)
SYSCALLS = {"epoll_wait": ("epoll_wait",), "accept4": ("accept4",),
            "io_uring_enter": ("io_uring_submit", "io_uring_submit_and_wait",
                               "io_uring_submit_and_get_events",
                               "io_uring_get_events"),
            "read": ("read",), "readv": ("readv",), "write": ("write",),
            "writev": ("writev",), "close": ("close",)}


def parse(out_file):
    """Self instructions per function, and calls into each function."""
    ann = subprocess.run(["callgrind_annotate", "--threshold=100",
                          "--tree=caller", out_file],
                         capture_output=True, text=True, check=True).stdout
    total, self_ir, calls = 0, {}, {}
    block = []
    for line in ann.splitlines():
        m = re.match(r"\s*([\d,]+) \(.*\)\s+PROGRAM TOTALS", line)
        if m:
            total = int(m.group(1).replace(",", ""))
            continue
        if not line.strip():
            block = []
            continue
        m = re.match(r"\s*([\d,]+) \([^)]*\)\s+\*\s+(\S+)(?: \[(\S+)\])?",
                     line)
        if m:
            name = m.group(2).split(":")[-1].split("@")[0]
            obj = os.path.basename(m.group(3) or "")
            # a named function is one whatever object valgrind says it
            # ran from (its preload redirects some); an address is not
            key = f"{name} ({obj})" if obj and name.startswith("0x") else name
            self_ir[key] = self_ir.get(key, 0) + int(m.group(1).replace(",", ""))
            n = 0
            for b in block:
                c = re.search(r"\(([\d,]+)x\)", b)
                if c:
                    n += int(c.group(1).replace(",", ""))
            calls[name] = calls.get(name, 0) + n
            block = []
            continue
        if re.match(r"\s*[\d,]+ \([^)]*\)\s+<", line):
            block.append(line)
    return total, self_ir, calls


def free_port():
    with socket.socket() as t:
        t.bind(("127.0.0.1", 0))
        return t.getsockname()[1]


def http_load(port, conns):
    """conns HTTP/1.0 requests one after another, each read to its end."""
    for _ in range(conns):
        with socket.create_connection(("127.0.0.1", port), timeout=60) as c:
            c.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            reply = b""
            while True:
                b = c.recv(65536)
                if not b:
                    break
                reply += b
        if not reply.startswith(b"HTTP/1.") or b" 200 " not in reply[:16]:
            raise RuntimeError(f"a request was answered {reply[:40]!r}")


def run(impl, conns, args, tmp):
    """One server under callgrind serving conns connections: its profile."""
    out = os.path.join(tmp, f"cg.{impl}.{conns}")
    vg = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
    if args.http:
        port = free_port()
        cmd = vg + [HTTP_SERVER, "--threads", "2", "--port", str(port),
                    "--work-us", str(args.work_us)]
        if HTTP_IMPLS[impl] is not None:
            cmd = [EVSTEER_RUN, "--group", str(port)] + HTTP_IMPLS[impl] + \
                ["--"] + cmd
    else:
        cmd = vg + [os.path.join(HERE, "evsteer-bench-server"), "--impl",
                    impl, "--workers", "2", "--port", "0", "--work-us",
                    str(args.work_us)]
        if args.read_first:
            cmd.append("--read-first")
    srv = subprocess.Popen(cmd, stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True)
    try:
        line = srv.stdout.readline().split()
        if len(line) != 2 or line[0] != "ready":
            raise RuntimeError(f"{impl}: the server did not start")
        if args.http:
            try:
                http_load(int(line[1]), conns)
            except OSError as e:
                raise RuntimeError(f"{impl}: {e}") from e
        else:
            bench_load(impl, line[1], conns)
    finally:
        # the profile is written when the server exits
        if srv.poll() is None:
            srv.terminate()
            srv.wait(timeout=120)
    return parse(out)


def bench_load(impl, port, conns):
    """conns connections one after another from evsteer-bench-load."""
    load = subprocess.run(
        [os.path.join(HERE, "evsteer-bench-load"), "closed", "--port",
         port, "--threads", "1", "--seconds", "600", "--max", str(conns),
         "--send"],
        capture_output=True, text=True, timeout=900)
    if load.returncode != 0 or f'"connections": {conns},' not in load.stdout:
        raise RuntimeError(f"{impl}: the load did not finish: "
                           f"{load.stdout.strip()} {load.stderr.strip()}")
    if '"errors": 0,' not in load.stdout:
        raise RuntimeError(f"{impl}: connections failed: {load.stdout}")


def per_conn(impl, args, tmp):
    """Marginal counts per connection: (N - N/5) connections apart."""
    lo = max(args.conns // 5, 1)
    t1, s1, c1 = run(impl, lo, args, tmp)
    t2, s2, c2 = run(impl, args.conns, args, tmp)
    d = args.conns - lo
    fn = {k: (s2.get(k, 0) - s1.get(k, 0)) / d for k in set(s1) | set(s2)}
    calls = {k: sum(c2.get(f, 0) - c1.get(f, 0) for f in fs) / d
             for k, fs in SYSCALLS.items()}
    return (t2 - t1) / d, fn, calls


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--http", action="store_true",
                    help="the evhttp server, plain and under evsteer-run")
    ap.add_argument("--impl", help="default: libevent,evsteer,evsteer-bpf-uring,"
                    "evsteer-direct (--http: libevent,evsteer,evsteer-uring)")
    ap.add_argument("--conns", type=int, default=2500)
    ap.add_argument("--work-us", type=int, default=0)
    ap.add_argument("--read-first", action="store_true")
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs per implementation; the median total is reported")
    ap.add_argument("--out", help="also write the report here (markdown)")
    args = ap.parse_args()
    if args.conns < 10:
        ap.error("--conns: at least 10")
    if args.repeat < 1 or args.top < 0:
        ap.error("--repeat: at least 1; --top: 0 or more")
    if args.http and args.read_first:
        ap.error("--read-first is the bench server's (evhttp always reads)")
    if not shutil.which("valgrind") or not shutil.which("callgrind_annotate"):
        print("evsteer-icount: valgrind is not installed (apt-get install "
              "valgrind)", file=sys.stderr)
        return 77  # the test suite's skip
    impls = (args.impl or ("libevent,evsteer,evsteer-uring" if args.http
                           else "libevent,evsteer,evsteer-bpf-uring,evsteer-direct")
             ).split(",")
    if args.http:
        bad = [i for i in impls if i not in HTTP_IMPLS]
        if bad:
            ap.error(f"--http --impl: {','.join(bad)}: one of "
                     f"{','.join(HTTP_IMPLS)}")
        for f in (HTTP_SERVER, EVSTEER_RUN):
            if not os.access(f, os.X_OK):
                print(f"evsteer-icount: {f} is not built", file=sys.stderr)
                return 77
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeat):
            for impl in impls:  # interleaved, as the harness runs them
                try:
                    res.setdefault(impl, []).append(per_conn(impl, args, tmp))
                except (RuntimeError, subprocess.SubprocessError) as e:
                    print(f"evsteer-icount: {e}", file=sys.stderr)
                    return 1
    what = "evsteer-http-server (2 threads), one HTTP/1.0 request per " \
        "connection" if args.http else "evsteer-bench-server (2 workers)"
    pick = {}
    for impl in impls:
        runs = sorted(res[impl], key=lambda x: x[0])
        pick[impl] = runs[len(runs) // 2]
    # the wrappers some implementation calls (a count of 0.00 everywhere
    # says nothing)
    cols = [k for k in SYSCALLS
            if any(abs(pick[i][2][k]) >= 0.005 for i in impls)]
    lines = [f"User-space instructions per connection (callgrind), {what}, "
             f"{args.conns} connections, 1 in flight, --work-us {args.work_us}"
             f"{' --read-first' if args.read_first else ''}, median of "
             f"{args.repeat}:", "",
             "| implementation | instructions | against " + impls[0] + " | "
             + " | ".join(cols) + " |",
             "|---" * (3 + len(cols)) + "|"]
    base = pick[impls[0]][0]
    for impl in impls:
        t, _, calls = pick[impl]
        lines.append(f"| {impl} | {t:,.0f} | {t / base:.2f}x | "
                     + " | ".join(f"{max(calls[s], 0.0):.2f}" for s in cols)
                     + " |")
    for impl in impls[1:]:
        _, fn, _ = pick[impl]
        _, bfn, _ = pick[impls[0]]
        diff = sorted(set(fn) | set(bfn),
                      key=lambda k: -abs(fn.get(k, 0) - bfn.get(k, 0)))
        lines += ["", f"{impl} against {impls[0]}, the functions that differ "
                  "most (instructions per connection):", "",
                  f"| function | {impl} | {impls[0]} | difference |",
                  "|---|---|---|---|"]
        for k in diff[:args.top]:
            lines.append(f"| `{k}` | {fn.get(k, 0):.0f} | {bfn.get(k, 0):.0f} | "
                         f"{fn.get(k, 0) - bfn.get(k, 0):+.0f} |")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "icount.md"), "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
