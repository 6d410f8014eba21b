#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""evsteer-bench: evsteer against libevent and a bare io_uring floor, side by side.

Starts the servers itself (build/bench/evsteer-bench-server), drives them with
build/bench/evsteer-bench-load over loopback, runs the implementations
interleaved (A B A B ...), takes medians over repeats, and reports ratios
against libevent measured in the same run.

  evsteer-bench [--scenario NAME[,NAME...]|all] [--repeat N] [--quick]
                [--json FILE] [--out DIR] [--impl a,b,...] [--profile]
                [--work-us N] [--work-mode spin|sleep] [--read-first]
                [--conns N] [--sweep] [--sweep-conc N,N,...]
                [--sweep-work US,US,...] [--sweep-http]

Work per connection (issue 18: every scenario must run with work > 0 before
a figure is called a result; the report's header says which settings it had):
  --work-us N      every server spends N us on each connection before it
                   replies (default 0: the accept path alone)
  --work-mode M    spin (default: burn CPU) or sleep (nanosleep: a blocking
                   call)
  --read-first     the bench server reads a request before replying (a read
                   event in the worker's event_base; evsteer_uring_recv() for
                   evsteer-direct; an io_uring recv for the floor), and the
                   load generator sends one right after connect (--send),
                   held connections included (drain, emfile)
  e.g. the figures issue 18 asks for:
    evsteer-bench --work-us 50 --read-first

Scenarios on the bench server (implementations: libevent, evsteer,
evsteer-event (no BPF), evsteer-direct, floor; named with --impl only:
evsteer-cbpf, evsteer-runc, evsteer-bpf-event (the default path named),
evsteer-bpf-uring (BPF and the io_uring engine)): rate, latency, stall, balance, drain,
drain-running, emfile, restart. End to end (http, http-stall,
http-stall-open):
build/bench/evsteer-http-server, an evhttp server built against libevent
only, with 2 threads, run plain (libevent) and under build/preload/evsteer-run
--group PORT as evsteer (auto: bpf+event), evsteer-uring (--accept uring),
evsteer-uring-nobpf (--bpf off --accept uring), evsteer-nobpf (--bpf off),
and, when --impl names them, evsteer-event (--accept event: the default
path named) and evsteer-nodefer (--defer-accept 0), on a free
port, driven by wrk (Debian package wrk; skipped, not failed, where it is
missing):
  http        wrk -t2 -c32 -dSs -H "Connection: close" --latency
              -s bench/wrk_report.lua http://127.0.0.1:PORT/
  http-stall  the same with -c8, while a Python http.client GETs /stall (its
              handler sleeps 50 ms in its thread) every 200 ms; those
              requests are left out of the figures
  http-stall-open  the same stalls under evsteer-bench-load's open loop
              (--rate 3000 --send: a new connection due every 1/3000 s,
              latency from that moment to the reply, every sample and none
              added: wrk corrects its histogram with samples no client made)
reporting requests/s, server CPU per request (utime+stime of the server
from /proc over the run / requests), p50/p99/p99.9/max, each thread's share
(max/mean of the requests each served) and, under evsteer, the connections
stolen from a stalled thread, and held_10ms: the requests the server held
over 10 ms from accept to reply on its own clock. --work-us and --work-mode go to that server
too (it always reads its request). S: 10 s, 2 s with --quick. --conns N
sets wrk's -c in both (e.g. --scenario http --conns 8 for a lighter point).

The sweep (issue 23; --scenario sweep or --sweep, not part of "all"): the
rate scenario's closed loop on the bench server with 2 workers at each
number of connections in flight (--sweep-conc, default 1,2,4,8,16,32,64)
and each work setting (--sweep-work, default 0,50 us; --work-mode and
--read-first apply), every implementation interleaved at each point,
medians of --repeat runs: server CPU, system calls (perf) and voluntary
context switches per connection, conn/s, and the client's p50/p99/p99.9
(socket() to the reply). Tables per work setting and figure, and plots of
CPU per connection and p99 against concurrency (sweep_cpu_wUS.png,
sweep_p99_wUS.png), one line per implementation.

The real program's sweep (--sweep-http; with --sweep or alone, not part
of "all"): the http scenario's evhttp server, plain and under evsteer-run
(--impl: its http implementations, default libevent,evsteer), driven by
wrk with a new connection per request at each --sweep-conc (wrk -t1 at
one connection, -t2 above), --work-us applying, every implementation
interleaved at each point, medians of --repeat runs: requests/s, server
CPU per request, p50 and p99; tables, and plots of CPU per request and p99
against the connections (http_sweep_cpu.png, http_sweep_p99.png).

Writes latest.json, latest.md and PNG plots (gnuplot) into --out
(default: bench/results/ in the source tree): the latency scenarios' CDFs
(*_cdf.png) and their percentile plots (*_tail.png: latency against p on a
log scale of 1/(1-p), HdrHistogram style, p50 to p99.99 evenly spread, as
far as the samples reach). The rate scenario also counts
the server's system calls per connection (perf stat, when perf is
installed) and its voluntary context switches per connection
(/proc/PID/task/*/status). --profile records `perf record -g` of the server
during one more rate run per implementation and writes its folded stacks
(profile-IMPL.folded) and a flame graph (profile-IMPL.html: perf's
flamegraph script with the d3-flame-graph template from npm, see
deploy/setup.sh bench) next to the report. Benchmarks, not tests: nothing
here fails on a figure.
"""
import argparse
import datetime
import http.client
import json
import os
import platform
import re
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER = os.path.join(HERE, "evsteer-bench-server")
LOAD = os.path.join(HERE, "evsteer-bench-load")
HTTP_SERVER = os.path.join(HERE, "evsteer-http-server")
EVSTEER_RUN = os.path.join(HERE, "..", "preload", "evsteer-run")
SRCDIR = "@SRCDIR@"  # filled in by meson
IMPLS = ["libevent", "evsteer", "evsteer-event", "evsteer-direct", "floor"]
# only when named with --impl: evsteer in a process whose seccomp filter
# refuses bpf() (a container's default profile): classic BPF steering;
# evsteer in a real runc container with Docker's default seccomp profile
# and capabilities (in_runc.py; root and runc needed; its CPU figures are
# not the server's, only latency and counts are); and two more floors, bare
# io_uring loops (server_floor.c): asleep in epoll_wait() on the ring's
# eventfd as inside an event loop, and accepting into direct descriptors
OPT_IMPLS = ["evsteer-cbpf", "evsteer-runc", "evsteer-bpf-event",
             "evsteer-bpf-uring",
             "floor-epoll", "floor-direct"]
# the sweep measures the server's own CPU: not in a container's wrapper
SWEEP_IMPLS = IMPLS + ["evsteer-cbpf", "evsteer-bpf-event",
                       "evsteer-bpf-uring", "floor-epoll",
                       "floor-direct"]
IN_RUNC = os.path.join(SRCDIR, "bench", "in_runc.py")
# The end-to-end scenarios' implementations: evsteer-http-server (libevent
# only) run plain, or under evsteer-run with these options, one per path.
HTTP_IMPLS = {
    "libevent": None,
    "evsteer": [],  # auto: bpf+event
    "evsteer-uring": ["--accept", "uring"],
    "evsteer-uring-nobpf": ["--bpf", "off", "--accept", "uring"],
    "evsteer-nobpf": ["--bpf", "off"],
}
# named with --impl only: the default path's engine asked for by name,
# and the default path without the TCP_DEFER_ACCEPT evsteer-run sets on
# evhttp's group sockets after a thread's block (--defer-accept 0)
HTTP_OPT_IMPLS = {
    "evsteer-event": ["--accept", "event"],
    "evsteer-nodefer": ["--defer-accept", "0"],
}
HTTP_ALL = {**HTTP_IMPLS, **HTTP_OPT_IMPLS}

# scenario -> settings; (quick, full) where they differ
SCENARIOS = {
    "rate": dict(workers=2, seconds=(1.0, 3.0), threads=4),
    "latency": dict(workers=2, seconds=(1.0, 3.0), rate=3000),
    "stall": dict(workers=2, seconds=(1.5, 5.0), rate=3000,
                  server=["--stall-worker", "0", "--stall-ms", "50",
                          "--stall-every-ms", "250"]),
    "balance": dict(workers=4, count=(4000, 20000), threads=4,
                    policy="round-robin"),
    "drain": dict(workers=2, count=(100, 500)),
    # the leaving worker runs (its accepts armed, connections in its ring
    # as well as on its socket) and frees its own listener from a callback
    "drain-running": dict(workers=2, count=(100, 500), policy="cpu",
                          server=["--slow-worker", "0", "--slow-us", "1000",
                                  "--cpu-to", "0"]),
    "emfile": dict(workers=2, seconds=(1.0, 2.0), rate=200),
    # process A serves under an open loop, B starts on the same port, A
    # leaves (SIGTERM: each implementation's graceful leave) while one of
    # its workers is busy 50 ms of every 250 ms, so that it has a queue
    "restart": dict(workers=2, seconds=(3.0, 6.0), rate=3000,
                    server=["--stall-worker", "0", "--stall-ms", "50",
                            "--stall-every-ms", "250"]),
    # end to end: evsteer-http-server, 2 threads, wrk with a new
    # connection per request (whole seconds: wrk's -d takes no fraction)
    "http": dict(http=True, threads=2, conns=32, seconds=(2, 10)),
    # the same at -c8 on / while another client asks for /stall (its
    # handler sleeps 50 ms in its thread) every 200 ms
    "http-stall": dict(http=True, threads=2, conns=8, seconds=(2, 10),
                       stall_every_s=0.2, stall_ms=50),
    # the same stalls under an open loop instead of wrk: a connection due
    # every 1/rate s, its latency from that moment to the first byte of the
    # reply, every sample kept and none added (wrk "corrects" its histogram
    # with samples no client made; see bench/JOURNAL.md)
    "http-stall-open": dict(http=True, threads=2, rate=3000,
                            seconds=(2, 10), stall_every_s=0.2, stall_ms=50),
}
# issue 23's sweep (--scenario sweep, or --sweep): the rate scenario's
# closed loop at each concurrency (--sweep-conc) and work (--sweep-work);
# not part of "all" (7 x 2 x 5 x 3 runs: ~15 minutes)
SWEEP = dict(workers=2, seconds=(1.0, 3.0), conc=[1, 2, 4, 8, 16, 32, 64],
             work_us=[0, 50])
SWEEP_KEYS = ["conn_per_s", "server_cpu_us_per_conn", "syscalls_per_conn",
              "vcs_per_conn", "p50_ms", "p99_ms", "p999_ms", "errors"]
# keys reported per scenario, and which way is better (for the ratio line)
KEYS = {
    # errors: connections that got no reply; the percentiles are of the
    # answered ones only, so a server that stops answering shows here
    "rate": ["conn_per_s", "server_cpu_us_per_conn", "syscalls_per_conn",
             "vcs_per_conn", "errors"],
    "latency": ["p50_ms", "p99_ms", "p999_ms", "max_ms", "errors"],
    "stall": ["p50_ms", "p99_ms", "p999_ms", "max_ms", "errors"],
    "balance": ["max_over_mean"],
    "drain": ["queued", "served", "reset", "connect_failed"],
    "drain-running": ["served", "reset", "other", "connect_failed"],
    "emfile": ["server_cpu_pct", "recovered", "lost", "connect_failed"],
    "restart": ["sent", "served", "reset", "refused", "closed", "timed_out",
                "p99_ms", "max_ms", "a_leave_s"],
    # held_10ms: requests the server held over 10 ms from accept to reply
    # (its own clock; what a blocked thread had already taken)
    "http": ["req_per_s", "server_cpu_us_per_req", "p50_ms", "p99_ms",
             "p999_ms", "max_ms", "share", "errors", "held_10ms", "stolen"],
    "http-stall": ["req_per_s", "server_cpu_us_per_req", "p50_ms", "p99_ms",
                   "p999_ms", "max_ms", "share", "errors", "stalls",
                   "stolen", "held_10ms", "held_per_stall"],
    "http-stall-open": ["req_per_s", "server_cpu_us_per_req", "p50_ms",
                        "p99_ms", "p999_ms", "max_ms", "share", "errors",
                        "stalls", "stolen", "held_10ms", "held_per_stall"],
}


class Work:
    """What each connection costs the server, the same in every
    implementation and scenario (issue 18: a figure measured without work
    is not a result): --work-us of CPU (or of nanosleep), after reading
    the client's request first with --read-first (the load then sends
    one)."""

    def __init__(self, us=0, mode="spin", read_first=False, pin=False):
        self.us, self.mode, self.read_first = us, mode, read_first
        # --pin: the bench server's worker i on CPU i, and the evhttp
        # server's thread i (bench/pin.h), in every implementation
        self.pin = pin

    def server_args(self):
        return (["--work-us", str(self.us), "--work-mode", self.mode] +
                (["--read-first"] if self.read_first else []) +
                (["--pin"] if self.pin else []))

    def load_args(self):
        return ["--send"] if self.read_first else []

    def http_args(self):
        # an HTTP server always reads its request first
        return (["--work-us", str(self.us), "--work-mode", self.mode] +
                (["--pin"] if self.pin else []))

    def as_dict(self):
        return {"work_us": self.us, "work_mode": self.mode,
                "read_first": self.read_first, "pin": self.pin}

    def flags(self):
        return " ".join(["--work-us", str(self.us), "--work-mode", self.mode] +
                        (["--read-first"] if self.read_first else []) +
                        (["--pin"] if self.pin else []))


def log(msg):
    print(f"evsteer-bench: {msg}", file=sys.stderr, flush=True)


def clk_tck():
    return os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid):
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / clk_tck()


class Server:
    def __init__(self, impl, workers, extra, work):
        args = ([SERVER, "--impl", impl, "--workers", str(workers)] + extra +
                work.server_args())
        if impl == "evsteer-runc":
            args = ([sys.executable, IN_RUNC, "--", SERVER, "--impl",
                     "evsteer"] + args[3:])
        # libevent logs every failed accept at EMFILE: keep that out
        self.p = subprocess.Popen(args, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True)
        line = self.p.stdout.readline().split()
        if len(line) != 2 or line[0] != "ready":
            self.p.kill()
            raise RuntimeError(f"{impl}: server did not start ({line})")
        self.port = int(line[1])

    def cpu(self):
        return proc_cpu_s(self.p.pid)

    def signal(self, sig):
        self.p.send_signal(sig)

    def readline(self):
        return self.p.stdout.readline()

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        # a sanitizer build leaves slower (tests/meson.build sets the scale)
        wait = 20 * float(os.environ.get("EVSTEER_BENCH_TIME_SCALE", "1"))
        try:
            out, _ = self.p.communicate(timeout=wait)
        except subprocess.TimeoutExpired:
            self.p.kill()
            out, _ = self.p.communicate()
            raise RuntimeError(f"server did not exit within {wait:.0f} s "
                               f"of SIGTERM (killed)")
        if self.p.returncode != 0:
            # a sanitizer build reports there; a crash is not a figure
            raise RuntimeError(f"server exited with {self.p.returncode}")
        lines = [l for l in out.splitlines() if l.startswith("{")]
        return json.loads(lines[-1]) if lines else {}


def voluntary_switches(pid):
    """Voluntary context switches of every thread of a process."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for t in tasks:
        try:
            with open(f"/proc/{pid}/task/{t}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        total += int(line.split()[1])
        except OSError:
            pass  # a thread that just ended
    return total


class SyscallCounter:
    """perf stat -e raw_syscalls:sys_enter on a running process, if perf
    can (linux-perf installed, tracepoints readable)."""

    def __init__(self, pid, out):
        self.out = out
        self.p = None
        perf = shutil.which("perf")
        if not perf:
            return
        self.p = subprocess.Popen(
            [perf, "stat", "-e", "raw_syscalls:sys_enter", "-x", ",",
             "-o", out, "-p", str(pid)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.2)  # perf attaches

    def stop(self):
        if not self.p:
            return None
        self.p.send_signal(signal.SIGINT)
        try:
            self.p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.p.kill()
            return None
        try:
            for line in open(self.out):
                f = line.strip().split(",")
                if len(f) > 2 and f[2] == "raw_syscalls:sys_enter":
                    return int(f[0]) if f[0].isdigit() else None
        except OSError:
            return None
        finally:
            try:
                os.unlink(self.out)
            except OSError:
                pass
        return None


def profile_rate(impl, out, quick, work):
    """One more rate run with perf record -g on the server: folded stacks
    and, where perf's flamegraph script and the d3-flame-graph template
    are there, an HTML flame graph."""
    perf = shutil.which("perf")
    if not perf:
        log("profile: perf not found (apt-get install linux-perf)")
        return {}
    s = SCENARIOS["rate"]
    srv = Server(impl, s["workers"], [], work)
    # perf's report scripts read ./perf.data: one folder a profile
    work = os.path.join(out, f".profile-{impl}")
    os.makedirs(work, exist_ok=True)
    data = os.path.join(work, "perf.data")
    rec = subprocess.Popen([perf, "record", "-g", "-F", "999", "-o", data,
                            "-p", str(srv.p.pid)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    try:
        load("closed", srv.port, work, "--threads", s["threads"],
             "--seconds", pick(s["seconds"], quick))
    finally:
        rec.send_signal(signal.SIGINT)
        rec.wait(timeout=60)
        srv.stop()
    made = {}
    folded = os.path.join(out, f"profile-{impl}.folded")
    r = subprocess.run([perf, "script", "report", "stackcollapse"], cwd=work,
                       capture_output=True, text=True, timeout=300)
    if r.returncode == 0 and r.stdout:
        with open(folded, "w") as f:
            f.write(r.stdout)
        made["folded"] = os.path.basename(folded)
    else:
        log(f"profile: stackcollapse failed: {r.stderr.strip()[:200]}")
    template = find_flamegraph_template()
    html = os.path.abspath(os.path.join(out, f"profile-{impl}.html"))
    if template:
        r = subprocess.run([perf, "script", "report", "flamegraph",
                            "--template", template, "-o", html], cwd=work,
                           capture_output=True, text=True, timeout=300)
        if r.returncode == 0 and os.path.exists(html):
            made["flamegraph"] = os.path.basename(html)
        else:
            log(f"profile: flamegraph failed: {(r.stderr or r.stdout).strip()[:200]}")
    else:
        log("profile: no d3-flame-graph template (deploy/setup.sh bench "
            "installs it from npm): folded stacks only")
    shutil.rmtree(work, ignore_errors=True)
    return made


def find_flamegraph_template():
    """d3-flame-graph's HTML template: from npm (deploy/setup.sh bench puts
    it under build/npm), or where perf looks by default."""
    cands = [os.environ.get("EVSTEER_FLAMEGRAPH_TEMPLATE", ""),
             os.path.join(HERE, "..", "npm", "node_modules", "d3-flame-graph",
                          "dist", "templates", "d3-flamegraph-base.html"),
             os.path.join(SRCDIR, "build", "npm", "node_modules",
                          "d3-flame-graph", "dist", "templates",
                          "d3-flamegraph-base.html"),
             "/usr/share/d3-flame-graph/d3-flamegraph-base.html"]
    for c in cands:
        if c and os.path.isfile(c):
            return os.path.abspath(c)
    return None


def last_json(out):
    """The load generator's result: the JSON on its last line."""
    return json.loads(out.strip().splitlines()[-1])


def load(mode, port, work, *args, timeout=120):
    cmd = ([LOAD, mode, "--port", str(port)] + [str(a) for a in args] +
           work.load_args())
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                         check=True).stdout
    return last_json(out)


def pick(v, quick):
    return v[0 if quick else 1] if isinstance(v, tuple) else v


def closed_rate(srv, threads, seconds, work):
    """The closed loop on a running server: `threads` connections in
    flight for `seconds`; the server's CPU, system calls (perf) and
    voluntary context switches per connection, and the load's latency
    percentiles (socket() to the reply)."""
    sc = SyscallCounter(srv.p.pid, f"/tmp/evsteer-bench-perf.{os.getpid()}")
    c0, v0 = srv.cpu(), voluntary_switches(srv.p.pid)
    try:
        r = load("closed", srv.port, work, "--threads", threads,
                 "--seconds", seconds)
    finally:
        cpu = srv.cpu() - c0
        vcs = voluntary_switches(srv.p.pid) - v0
        calls = sc.stop()
    n = max(r["connections"], 1)
    return {"conn_per_s": r["conn_per_s"],
            "server_cpu_us_per_conn": cpu * 1e6 / n,
            "syscalls_per_conn": calls / n if calls is not None else None,
            "vcs_per_conn": vcs / n,
            "errors": r["errors"],
            "p50_ms": r.get("p50_ms"), "p99_ms": r.get("p99_ms"),
            "p999_ms": r.get("p999_ms"), "max_ms": r.get("max_ms")}


def run_sweep_point(impl, conc, seconds, work):
    """One point of the sweep: the bench server with 2 workers, the closed
    loop with `conc` connections in flight."""
    srv = Server(impl, SWEEP["workers"], [], work)
    res = {}
    try:
        res = closed_rate(srv, conc, seconds, work)
    finally:
        info = srv.stop() if srv.p.poll() is None else {}
    res["path"] = info.get("path")
    return res


def point_medians(runs, keys):
    """A sweep point's figures: per implementation that ran, the medians
    of keys over its runs, its path, and each run's figures."""
    out = {}
    for i, r in runs.items():
        if not r:
            continue
        m = {k: median_of(r, k) for k in keys}
        m["path"] = r[-1].get("path")
        m["repeats"] = len(r)
        m["runs"] = [{k: x.get(k) for k in keys} for x in r]
        out[i] = m
    return out


def run_sweep(impls, concs, works_us, repeat, quick, base, failed_runs):
    """Issue 23's sweep: for each --work-us, for each concurrency, every
    implementation interleaved (A B A B ...) `repeat` times; medians."""
    secs = pick(SWEEP["seconds"], quick)
    points = []
    for us in works_us:
        work = Work(us, base.mode, base.read_first, base.pin)
        for conc in concs:
            runs = {i: [] for i in impls}
            for rep in range(repeat):
                for impl in impls:
                    log(f"sweep: work {us} us, {conc} in flight: {impl} "
                        f"(repeat {rep + 1}/{repeat})")
                    try:
                        runs[impl].append(run_sweep_point(impl, conc, secs,
                                                          work))
                    except Exception as e:  # reported, not fatal
                        log(f"sweep: {impl}: failed: {e}")
                        failed_runs.append(f"sweep/work{us}/conc{conc}/"
                                           f"{impl}: {e}")
            points.append({"work_us": us, "conc": conc,
                           "impls": point_medians(runs, SWEEP_KEYS)})
    return {"workers": SWEEP["workers"], "seconds": secs, "repeats": repeat,
            "conc": concs, "work_us": works_us,
            "work_mode": base.mode, "read_first": base.read_first,
            "pin": base.pin,
            "points": points}


# --sweep-http: the http scenario at each --sweep-conc; whole seconds (wrk)
HTTP_SWEEP = dict(seconds=(1, 3), impls=["libevent", "evsteer"])
HTTP_SWEEP_KEYS = ["req_per_s", "server_cpu_us_per_req", "p50_ms", "p99_ms",
                   "errors"]
HTTP_SWEEP_TABLES = [("server_cpu_us_per_req", "server CPU us per request"),
                     ("req_per_s", "requests/s"),
                     ("p50_ms", "p50 ms (wrk)"), ("p99_ms", "p99 ms (wrk)")]


def run_http_sweep(impls, concs, repeat, quick, work, failed_runs):
    """The real program's sweep: for each concurrency, every http
    implementation interleaved `repeat` times; medians."""
    secs = pick(HTTP_SWEEP["seconds"], quick)
    points = []
    for conc in concs:
        runs = {i: [] for i in impls}
        for rep in range(repeat):
            for impl in impls:
                log(f"http sweep: {conc} connections: {impl} "
                    f"(repeat {rep + 1}/{repeat})")
                try:
                    runs[impl].append(run_http("http", impl, quick, work,
                                               conns=conc, secs=secs))
                except Exception as e:  # reported, not fatal
                    log(f"http sweep: {impl}: failed: {e}")
                    failed_runs.append(f"http-sweep/conc{conc}/{impl}: {e}")
        points.append({"conc": conc,
                       "impls": point_medians(runs, HTTP_SWEEP_KEYS)})
    return {"threads": SCENARIOS["http"]["threads"], "seconds": secs,
            "repeats": repeat, "conc": concs, "work": work.as_dict(),
            "points": points}


def run_one(scen, impl, quick, work):
    s = SCENARIOS[scen]
    extra = list(s.get("server", []))
    if s.get("policy") and impl.startswith("evsteer"):
        extra += ["--policy", s["policy"]]
    if scen == "drain":
        extra += ["--freeze-worker", "0"]
    if scen == "emfile":
        extra += ["--fd-limit", "256"]
    srv = Server(impl, s["workers"], extra, work)
    res = {}
    b = None
    try:
        if scen == "rate":
            res = closed_rate(srv, s["threads"], pick(s["seconds"], quick),
                              work)
        elif scen in ("latency", "stall"):
            r = load("open", srv.port, work, "--rate", s["rate"],
                     "--seconds", pick(s["seconds"], quick))
            res = {k: r.get(k) for k in ("p50_ms", "p99_ms", "p999_ms",
                                         "max_ms", "completed", "errors",
                                         "cdf", "tail")}
        elif scen == "balance":
            r = load("closed", srv.port, work, "--threads", s["threads"],
                     "--seconds", 60, "--max", pick(s["count"], quick))
        elif scen in ("drain", "drain-running"):
            n = pick(s["count"], quick)
            # with --read-first the held connections have sent their
            # request: the frozen worker's queue holds it with them
            lp = subprocess.Popen([LOAD, "hold", "--port", str(srv.port),
                                   "--count", str(n)] + work.load_args(),
                                  stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
            held = lp.stdout.readline().split()
            srv.signal(signal.SIGUSR1)
            drop = json.loads(srv.readline())
            out, _ = lp.communicate("go\n", timeout=60)
            r = last_json(out)
            res = {"queued": int(held[1]) - drop["taken_by_others_before"],
                   "served": r["served"], "reset": r["reset"],
                   "other": r["other"], "connect_failed": int(held[2])}
            if scen == "drain-running":
                res["dropped_in_callback"] = drop.get("in_callback")
        elif scen == "restart":
            secs = pick(s["seconds"], quick)
            lp = subprocess.Popen([LOAD, "open", "--port", str(srv.port),
                                   "--rate", str(s["rate"]),
                                   "--seconds", str(secs)] + work.load_args(),
                                  stdout=subprocess.PIPE, text=True)
            time.sleep(secs / 3)
            # the new version: same port, no busy worker
            b = Server(impl, s["workers"], ["--port", str(srv.port)], work)
            time.sleep(secs / 3)
            a_info = srv.stop()  # the old one leaves gracefully
            out, _ = lp.communicate(timeout=secs + 60)
            r = last_json(out)
            res = {"sent": r["sent"], "served": r["completed"],
                   "reset": r["reset"], "refused": r["refused"],
                   "closed": r["closed"], "timed_out": r["timed_out"],
                   "other": r["other"], "p99_ms": r["p99_ms"],
                   "max_ms": r["max_ms"],
                   "a_accepted": a_info.get("accepted"),
                   "a_leave_s": a_info.get("leave_s")}
        elif scen == "emfile":
            secs = pick(s["seconds"], quick)
            srv.signal(signal.SIGUSR2)  # the server uses up its descriptors
            time.sleep(0.05)
            c0, t0 = srv.cpu(), time.monotonic()
            lp = subprocess.Popen([LOAD, "hold", "--port", str(srv.port),
                                   "--count", str(int(s["rate"] * secs)),
                                   "--rate", str(s["rate"])] + work.load_args(),
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True)
            held = lp.stdout.readline().split()
            cpu, dt = srv.cpu() - c0, time.monotonic() - t0
            srv.signal(signal.SIGUSR2)  # descriptors free up again
            out, _ = lp.communicate("go\n", timeout=60)
            r = last_json(out)
            opened = int(held[1])
            res = {"server_cpu_pct": 100.0 * cpu / dt,
                   "recovered": r["served"] == opened,
                   "lost": opened - r["served"], "opened": opened,
                   "connect_failed": int(held[2])}
    finally:
        info = srv.stop() if srv.p.poll() is None else {}
        if b is not None:
            binfo = b.stop()
            res["b_accepted"] = binfo.get("accepted")
            info = info or binfo
    res["path"] = info.get("path")
    if scen == "balance":
        pw = info.get("per_worker", [])
        mean = statistics.mean(pw) if pw else 0
        res["per_worker"] = pw
        res["max_over_mean"] = max(pw) / mean if mean else None
    return res


def free_port():
    """A loopback port nothing listens on now (evsteer-run --group needs
    the port before the server starts)."""
    with socket.socket() as t:
        t.bind(("127.0.0.1", 0))
        return t.getsockname()[1]


def preload_env():
    """evsteer-run's environment: in a sanitizer build the preload needs
    libasan first in LD_PRELOAD (the program is started before it)."""
    env = dict(os.environ)
    try:
        m = re.search(r"^preload='([^']*)'", open(EVSTEER_RUN).read(), re.M)
        with open(m.group(1), "rb") as f:
            asan = b"libasan.so" in f.read()
    except (OSError, AttributeError):
        return env
    if asan:
        cc = os.environ.get("CC", "cc")
        rt = subprocess.run([cc, "-print-file-name=libasan.so"],
                            capture_output=True, text=True,
                            timeout=30).stdout.strip()
        if rt:
            env["LD_PRELOAD"] = os.path.realpath(rt)
    return env


def wrk_script():
    for c in (os.path.join(HERE, "wrk_report.lua"),
              os.path.join(SRCDIR, "bench", "wrk_report.lua")):
        if os.path.isfile(c):
            return c
    return None


def http_missing(impls):
    """Why the end-to-end scenarios cannot run here, or None."""
    if not shutil.which("wrk"):
        return "wrk not installed (apt-get install wrk; deploy/setup.sh bench)"
    if not os.access(HTTP_SERVER, os.X_OK):
        return "evsteer-http-server not built (needs libevent_pthreads)"
    if not wrk_script():
        return "bench/wrk_report.lua not found"
    if any(HTTP_ALL.get(i) is not None for i in impls) and \
            not os.access(EVSTEER_RUN, os.X_OK):
        return "evsteer-run not built"
    return None


class HttpServer:
    """evsteer-http-server on a free port, plain (libevent) or under
    evsteer-run on one path; its stderr and evsteer's stats go to tmp."""

    def __init__(self, impl, threads, work, tmp):
        self.stats = os.path.join(tmp, "stats.json")
        for _ in range(5):  # a port taken between the probe and the bind
            port = free_port()
            cmd = [HTTP_SERVER, "--threads", str(threads),
                   "--port", str(port)] + work.http_args()
            env = None
            if HTTP_ALL[impl] is not None:
                cmd = [EVSTEER_RUN, "--group", str(port), "--stats",
                       self.stats] + HTTP_ALL[impl] + ["--"] + cmd
                env = preload_env()
            self.err = open(os.path.join(tmp, "stderr"), "w+")
            # evsteer-run execs the server: this pid is the server's
            self.p = subprocess.Popen(cmd, stdout=subprocess.PIPE,
                                      stderr=self.err, env=env, bufsize=0)
            line = self._readline(10.0)
            if line.split() == ["ready", str(port)]:
                self.port = port
                return
            self.kill()
            self.err.seek(0)
            err = self.err.read()
            self.err.close()
            if "in use" not in err:
                raise RuntimeError(f"{impl}: http server did not start "
                                   f"({line!r}): {err.strip()[-300:]}")
        raise RuntimeError(f"{impl}: no free port in 5 tries")

    def _readline(self, timeout):
        """One line of the server's stdout, bounded in time."""
        buf = b""
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self.p.stdout, selectors.EVENT_READ)
            while b"\n" not in buf:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    break
                chunk = os.read(self.p.stdout.fileno(), 4096)
                if not chunk:
                    break
                buf += chunk
        return buf.decode(errors="replace").split("\n")[0]

    def cpu(self):
        return proc_cpu_s(self.p.pid)

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait(timeout=20)

    def stop(self):
        """SIGTERM; the server's last JSON line (served per thread,
        cpu_s) and, under evsteer-run, its listeners' stats lines."""
        self.p.send_signal(signal.SIGTERM)
        try:
            out, _ = self.p.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError("http server did not stop on SIGTERM")
        finally:
            self.err.close()
        if self.p.returncode != 0:
            raise RuntimeError(f"http server exited with {self.p.returncode}")
        lines = [l for l in out.decode().splitlines() if l.startswith("{")]
        info = json.loads(lines[-1]) if lines else {}
        stats = []
        try:
            stats = [json.loads(l) for l in open(self.stats) if l.strip()]
        except (OSError, ValueError):
            pass
        return info, stats


class StallLoop(threading.Thread):
    """GET /stall every `every` seconds with a real HTTP client, a new
    connection each; counts which thread stalled (the reply says), so that
    the shares leave these requests out."""

    def __init__(self, port, every):
        super().__init__(daemon=True)
        self.port, self.every = port, every
        self.stop_ev = threading.Event()
        self.by_thread, self.done, self.failed = {}, 0, 0

    def run(self):
        due = time.monotonic()
        while not self.stop_ev.is_set():
            c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            try:
                c.request("GET", "/stall", headers={"Connection": "close"})
                body = c.getresponse().read().decode().split()
                t = int(body[1])
                self.by_thread[t] = self.by_thread.get(t, 0) + 1
                self.done += 1
            except (OSError, ValueError, IndexError,
                    http.client.HTTPException):
                self.failed += 1
            finally:
                c.close()
            due += self.every
            self.stop_ev.wait(max(0.0, due - time.monotonic()))

    def stop(self):
        self.stop_ev.set()
        self.join(10)  # a request in flight ends within its 5 s time-out


def run_http(scen, impl, quick, work, conns=None, secs=None):
    s = SCENARIOS[scen]
    secs = secs or pick(s["seconds"], quick)
    conns = conns or s.get("conns")
    tmp = tempfile.mkdtemp(prefix="evsteer-bench-http.")
    try:
        srv = HttpServer(impl, s["threads"], work, tmp)
        stall = None
        try:
            if s.get("stall_every_s"):
                stall = StallLoop(srv.port, s["stall_every_s"])
                stall.start()
            c0 = srv.cpu()
            if s.get("rate"):
                # the open loop: evsteer-bench-load's GET / HTTP/1.0
                r = subprocess.run(
                    [LOAD, "open", "--port", str(srv.port), "--rate",
                     str(s["rate"]), "--seconds", str(secs), "--send"],
                    capture_output=True, text=True, timeout=secs + 60)
            else:
                # wrk wants no more threads than connections
                r = subprocess.run(
                    ["wrk", f"-t{min(2, conns)}", f"-c{conns}", f"-d{secs}s",
                     "-H", "Connection: close", "--latency", "-s",
                     wrk_script(), f"http://127.0.0.1:{srv.port}/"],
                    capture_output=True, text=True, timeout=secs + 60)
            cpu = srv.cpu() - c0
        finally:
            if stall:
                stall.stop()
            if srv.p.poll() is None:
                info, stats = srv.stop()
            else:
                srv.kill()
                raise RuntimeError(f"http server died ({srv.p.returncode})")
        if r.returncode != 0:
            raise RuntimeError(f"load failed: {r.stderr.strip()[-300:]}")
        w = last_json(r.stdout)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if s.get("rate"):  # the open loop's figures in wrk's shape
        w = {"requests": w["completed"], "duration_us": secs * 1e6,
             "errors": {k: w[k] for k in ("reset", "refused", "closed",
                                          "timed_out", "other")},
             "latency_us": {"p50": w["p50_ms"] * 1e3, "p90": None,
                            "p99": w["p99_ms"] * 1e3,
                            "p999": w["p999_ms"] * 1e3,
                            "max": w["max_ms"] * 1e3},
             "tail": w.get("tail")}
    n = max(w["requests"], 1)
    lat = w["latency_us"]
    # each thread's share of the requests wrk made (not of the stalls)
    served = [v - (stall.by_thread.get(i, 0) if stall else 0)
              for i, v in enumerate(info.get("served", []))]
    mean = statistics.mean(served) if served else 0
    res = {"req_per_s": w["requests"] / (w["duration_us"] / 1e6),
           "server_cpu_us_per_req": cpu * 1e6 / n,
           "p50_ms": lat["p50"] / 1e3,
           "p90_ms": lat["p90"] / 1e3 if lat["p90"] is not None else None,
           "p99_ms": lat["p99"] / 1e3, "p999_ms": lat["p999"] / 1e3,
           "max_ms": lat["max"] / 1e3,
           "share": max(served) / mean if mean else None,
           "per_thread": served, "requests": w["requests"],
           "errors": sum(w["errors"].values()),
           "errors_by_kind": w["errors"], "server_cpu_s": info.get("cpu_s")}
    held = info.get("held") or {}
    res["held"] = held
    res["held_10ms"] = held.get("over_10ms")
    if w.get("tail"):
        res["tail"] = w["tail"]
    if stall:
        res["stalls"] = stall.done
        res["stalls_failed"] = stall.failed
        if stall.done and res["held_10ms"] is not None:
            res["held_per_stall"] = res["held_10ms"] / stall.done
    if stats:
        st = stats[0]
        res["path"] = {"name": st.get("path"), "steering": st.get("steering"),
                       "engine": st.get("engine"), "policy": st.get("policy")}
        res["stolen"] = sum((x.get("group") or {}).get("stolen", 0)
                            for x in stats)
    else:
        res["path"] = {"steering": "kernel-hash", "engine": "event",
                       "policy": None}
    return res


def median_of(runs, key):
    vals = [r[key] for r in runs if r.get(key) is not None]
    if not vals:
        return None
    if isinstance(vals[0], bool):
        return all(vals)
    return statistics.median(vals)


def summarize(scen, runs):
    out = {k: median_of(runs, k) for k in KEYS[scen]}
    out["path"] = runs[-1].get("path")
    out["repeats"] = len(runs)
    # each repeat's figures too, so that a reader sees the spread behind
    # a median (the CDFs stay out: one per scenario, below)
    extra = ["per_thread", "errors_by_kind"] if scen.startswith("http") else []
    out["runs"] = [{k: r.get(k) for k in KEYS[scen] + extra} for r in runs]
    if scen == "balance":
        out["per_worker"] = runs[-1].get("per_worker")
    if scen.startswith("http"):
        out["per_thread"] = runs[-1].get("per_thread")
    if scen in ("latency", "stall"):
        # the CDF of the run whose p99 is the median one
        srt = sorted(runs, key=lambda r: r["p99_ms"])
        out["cdf"] = srt[len(srt) // 2]["cdf"]
        out["tail"] = srt[len(srt) // 2].get("tail")
    return out


def syscall_ns():
    """About what one system call costs here: os.getppid() against a
    Python call that makes none, best of 5 x 100,000. Every ratio that
    saves system calls follows it: direct descriptors were 0.70x
    libevent's CPU at 64 in flight on a PVM guest and 0.95x on a KVM
    guest of the same kind of machine (bench/JOURNAL.md, "Two hosts")."""
    def per(f, n=100000):
        best = float("inf")
        for _ in range(5):
            t = time.perf_counter_ns()
            for _ in range(n):
                f()
            best = min(best, (time.perf_counter_ns() - t) / n)
        return best
    return max(0.0, per(os.getppid) - per(int))


def machine():
    model, virt = "", False
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                virt = "hypervisor" in line.split()
                break
    except OSError:
        pass
    try:
        with open("/sys/devices/system/clocksource/clocksource0/"
                  "current_clocksource") as f:
            clock = f.read().strip()
    except OSError:
        clock = "?"
    return {"kernel": platform.release(), "cpus": os.cpu_count(),
            "cpu_model": model, "virtual": virt, "clocksource": clock,
            "syscall_ns": round(syscall_ns()),
            "date": datetime.datetime.now(datetime.timezone.utc)
            .strftime("%Y-%m-%d %H:%M UTC")}


def fmt(v):
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


# what a reader of the report needs to know about a scenario's table
CAPTIONS = {
    "http": "evsteer-http-server --threads 2 (libevent only; plain = libevent, "
            "the others under evsteer-run --group PORT on one path each), "
            "`wrk -t2 -c{conns} -d{secs}s -H 'Connection: close' --latency` on /. "
            "share = max/mean of the requests each thread served; CPU = the "
            "server's utime+stime over the run / requests.",
    "http-stall": "As http with `-c{conns}`, while another client GETs /stall "
                  "(its handler sleeps 50 ms in its thread) every 200 ms; "
                  "those requests are left out of every figure. stalls = "
                  "/stall requests answered; stolen = connections evsteer's "
                  "siblings took from a stalled thread; held_10ms = requests "
                  "the server itself held over 10 ms from accept to reply "
                  "(what a thread had taken before it blocked).",
    "http-stall-open": "The stalls of http-stall under an open loop instead of "
                       "wrk: `evsteer-bench-load open --rate {rate} --send` "
                       "(GET / HTTP/1.0, a new connection due every 1/rate "
                       "s); latency from each connection's due time to the "
                       "first byte, every sample, none added.",
}


def work_line(w):
    """The report's header line on the work each connection cost: whether
    a figure had work > 0 must be plain to a reader."""
    us, rf = w.get("work_us", 0), w.get("read_first", False)
    flags = (f"`--work-us {us} --work-mode {w.get('work_mode', 'spin')}"
             + (" --read-first`" if rf else "`"))
    if not us and not rf:
        return (f"Work per connection: **none** ({flags}): the bench server "
                "replies at once, so its figures measure the accept path "
                "alone; not a result. (The http scenarios' server reads and "
                "parses each request, with no work added.)" + pin_line(w))
    what = (f"{us} us of {'CPU' if w.get('work_mode') != 'sleep' else 'nanosleep'}"
            if us else "no work")
    return (f"Work per connection: {what}"
            + (", after reading the request" if rf else ", no request read")
            + f" ({flags}). The http scenarios' server always reads its "
            "request, and spends the same work on /." + pin_line(w))


def pin_line(w):
    return (" The servers' workers were pinned, worker (or evhttp thread) "
            "i to CPU i (`--pin`); the load generator was not."
            if w.get("pin") else "")


def path_name(p):
    """The path a server reported, as the report shows it."""
    if isinstance(p, str):
        return p
    p = p or {}
    return p.get("name") or f"{p.get('steering', '?')}+{p.get('engine', '?')}"


def markdown(report):
    m = report["machine"]
    lines = [f"# evsteer benchmarks", "",
             f"Machine: {m['cpus']} CPUs ({m['cpu_model']}"
             + (", a virtual machine" if m.get("virtual") else "")
             + f"), kernel {m['kernel']}"
             + (f", clocksource {m['clocksource']}, a system call "
                f"(getppid) ~{m['syscall_ns']} ns"
                if "syscall_ns" in m else "")
             + f", {m['date']}. Medians of {report['repeats']} "
             f"interleaved repeats; ratio = impl / libevent in the same run.",
             ""]
    if report["scenarios"] or not report.get("sweep"):
        lines += [work_line(report.get("work") or {}), ""]
    if report.get("sweep"):
        sw = report["sweep"]
        lines += [f"The sweep's work per connection: --work-us "
                  f"{', '.join(map(str, sw['work_us']))} "
                  f"({sw.get('work_mode', 'spin')}), "
                  + ("after reading the request" if sw.get("read_first")
                     else "no request read")
                  + " (--sweep-work); 0 measures the accept path alone."
                  + pin_line(sw),
                  ""]
    for scen, impls in report["scenarios"].items():
        lines += [f"## {scen}", ""]
        if scen in CAPTIONS:
            lines += [CAPTIONS[scen].format(
                secs=pick(SCENARIOS[scen]["seconds"], report.get("quick")),
                conns=SCENARIOS[scen].get("conns"),
                rate=SCENARIOS[scen].get("rate")),
                ""]
        keys = KEYS[scen]
        lines.append("| impl | " + " | ".join(keys) + " | path |")
        lines.append("|---" * (len(keys) + 2) + "|")
        base = impls.get("libevent", {})
        for impl, r in impls.items():
            cells = []
            for k in keys:
                v, b = r.get(k), base.get(k)
                cell = fmt(v)
                if (impl != "libevent" and isinstance(v, (int, float)) and
                        not isinstance(v, bool) and
                        isinstance(b, (int, float)) and b):
                    cell += f" ({v / b:.2f}x)"
                cells.append(cell)
            path = path_name(r.get("path"))
            lines.append(f"| {impl} | " + " | ".join(cells) + f" | {path} |")
        lines.append("")
    if report.get("sweep"):
        lines += sweep_markdown(report["sweep"])
    if report.get("http_sweep"):
        lines += http_sweep_markdown(report["http_sweep"])
    for scen, why in (report.get("skipped") or {}).items():
        lines += [f"## {scen}", "", f"Skipped: {why}.", ""]
    if report.get("profiles"):
        lines += ["## profiles (rate scenario, perf record -g)", ""]
        for impl, files in report["profiles"].items():
            got = ", ".join(f"[{k}]({v})" for k, v in files.items()) or "none"
            lines.append(f"- {impl}: {got}")
        lines.append("")
    return "\n".join(lines)


SWEEP_TABLES = [("server_cpu_us_per_conn", "server CPU us per connection"),
                ("syscalls_per_conn", "system calls per connection"),
                ("p99_ms", "p99 ms (socket() to the reply, at the client)")]


def sweep_markdown(sw):
    """One table per work setting and figure: a row per concurrency, a
    column per implementation, ratios against libevent at that point."""
    lines = ["## sweep", "",
             f"The bench server with {sw['workers']} workers, the closed "
             f"loop with N connections in flight (connect"
             + (", send a request" if sw.get("read_first") else "")
             + f", read the reply, close) for {sw['seconds']:g} s a run; "
             f"medians of {sw['repeats']} interleaved repeats at each point; "
             "ratio = impl / libevent at the same point.", ""]
    impls = point_impls(sw["points"])
    for us in sw["work_us"]:
        pts = [p for p in sw["points"] if p["work_us"] == us]
        for key, title in SWEEP_TABLES:
            lines += [f"### --work-us {us} ({sw.get('work_mode', 'spin')}): "
                      f"{title}", ""]
            lines += ratio_table(pts, impls, key, "in flight")
    return lines + paths_line(sw["points"])


def point_impls(points):
    """The implementations of a sweep's points, in the order they ran."""
    impls = []
    for p in points:
        impls += [i for i in p["impls"] if i not in impls]
    return impls


def ratio_table(points, impls, key, first):
    """A row per point (its concurrency under `first`), a column per
    implementation, each cell with its ratio to libevent's at that point."""
    lines = [f"| {first} | " + " | ".join(impls) + " |",
             "|---" * (len(impls) + 1) + "|"]
    for p in points:
        base = (p["impls"].get("libevent") or {}).get(key)
        cells = []
        for i in impls:
            v = (p["impls"].get(i) or {}).get(key)
            cell = fmt(v)
            if (i != "libevent" and isinstance(v, (int, float)) and
                    isinstance(base, (int, float)) and base):
                cell += f" ({v / base:.2f}x)"
            cells.append(cell)
        lines.append(f"| {p['conc']} | " + " | ".join(cells) + " |")
    return lines + [""]


def paths_line(points):
    paths = {}
    for p in points:
        for i, r in p["impls"].items():
            paths.setdefault(i, path_name(r.get("path")))
    return ["Paths: " + ", ".join(f"{i} `{v}`" for i, v in paths.items()),
            ""]


def http_sweep_markdown(hs):
    """One table per figure: a row per concurrency, a column per
    implementation, ratios against libevent at that point."""
    lines = ["## http sweep", "",
             f"evsteer-http-server --threads {hs['threads']} (libevent only; "
             "plain = libevent, the others under evsteer-run), "
             f"`wrk -cN -d{hs['seconds']}s -H 'Connection: close' --latency` "
             "(-t1 at one connection, -t2 above): a new connection per "
             f"request, --work-us {(hs.get('work') or {}).get('work_us', 0)} in "
             f"the handler. Medians of {hs['repeats']} interleaved repeats "
             "at each point; ratio = impl / libevent at the same point.", ""]
    impls = point_impls(hs["points"])
    for key, title in HTTP_SWEEP_TABLES:
        lines += [f"### {title}", ""]
        lines += ratio_table(hs["points"], impls, key, "connections")
    return lines + paths_line(hs["points"])


def _terminal(gp, size="900,540"):
    return (f"set terminal pngcairo size {size} noenhanced" if _has_cairo(gp)
            else f"set terminal png size {size} noenhanced")


def tail_plots(report, out, gp):
    """Latency against percentile on a log scale of 1/(1-p), HdrHistogram
    style: p50, p90, p99, p99.9, p99.99 evenly spread, the tail not
    squeezed into a CDF's top edge."""
    made = []
    sc = report["scenarios"]
    for scen in ("latency", "stall"):
        if scen not in sc:
            continue
        series = [(i, r["tail"]) for i, r in sc[scen].items()
                  if r.get("tail")]
        if not series:
            continue
        dat = os.path.join(out, f"{scen}_tail.dat")
        with open(dat, "w") as f:
            for i, tail in series:
                f.write(f"# {i}: percentile, 1/(1-p), latency ms\n")
                for q, ms in tail:
                    f.write(f"{100 * q:.4f} {1 / (1 - q):.6g} "
                            f"{max(ms, 1e-3)}\n")
                f.write("\n\n")
        png = os.path.join(out, f"{scen}_tail.png")
        cmds = [_terminal(gp), f"set output '{png}'",
                f"set title '{scen}: latency by percentile (scheduled start "
                "to first byte)'",
                "set logscale x", "set logscale y", "set xrange [1:*]",
                "set xtics ('0%%' 1, '50%%' 2, '90%%' 10, '99%%' 100, "
                "'99.9%%' 1000, '99.99%%' 10000, '99.999%%' 100000)",
                "set xlabel 'percentile (log scale of 1/(1-p))'",
                "set ylabel 'latency (ms, log)'",
                "set key top left", "set grid",
                "plot " + ", ".join(
                    f"'{dat}' index {k} using 2:3 with linespoints lw 2 "
                    f"pt 7 ps 0.5 title '{i}'"
                    for k, (i, _) in enumerate(series))]
        if _gnuplot(gp, cmds):
            made.append(png)
    return made


def conc_plots(gp, points, impls, cols, dat, png, title, xlabel, cpu_label,
               concs):
    """Write dat (a row per point: its concurrency, then each
    implementation's figures; cols: the first column's name, then (key,
    name) pairs), and plot CPU (the first key) and p99 (the last) against
    the concurrency (log 2), one line per implementation: the PNGs made,
    png being the name with a {} for cpu / p99."""
    first, cols = cols[0], cols[1:]
    keys = [k for k, _ in cols]
    with open(dat, "w") as f:
        f.write(f"# {first} " + " ".join(
            f"{i}_{n}" for i in impls for _, n in cols) + "\n")
        for p in points:
            row = [str(p["conc"])]
            for i in impls:
                r = p["impls"].get(i) or {}
                row += [fmt_dat(r.get(k)) for k in keys]
            f.write(" ".join(row) + "\n")
    made = []
    for col, key, ylabel, log_y in (
            (0, "cpu", cpu_label, False),
            (len(keys) - 1, "p99", "p99 latency (ms, log)", True)):
        out = png.format(key)
        cmds = [_terminal(gp), f"set output '{out}'", f"set title '{title}'",
                "set logscale x 2",
                f"set xrange [{min(concs) / 1.3}:{max(concs) * 1.3}]",
                "set xtics (" + ", ".join(f"'{c}' {c}" for c in concs) + ")",
                f"set xlabel '{xlabel}'", f"set ylabel '{ylabel}'",
                "set key outside right", "set grid",
                "set datafile missing 'nan'"]
        cmds += (["set logscale y"] if log_y else ["set yrange [0:*]"])
        cmds.append("plot " + ", ".join(
            f"'{dat}' using 1:{2 + len(keys) * k + col} with linespoints "
            f"lw 2 pt 7 title '{i}'" for k, i in enumerate(impls)))
        if _gnuplot(gp, cmds):
            made.append(out)
    return made


def sweep_plots(sw, out, gp):
    """Per work setting: server CPU per connection and p99 against the
    connections in flight (log 2), one line per implementation."""
    made = []
    impls = point_impls(sw["points"])
    for us in sw["work_us"]:
        made += conc_plots(
            gp, [p for p in sw["points"] if p["work_us"] == us], impls,
            ["in_flight", ("server_cpu_us_per_conn", "cpu_us"),
             ("syscalls_per_conn", "syscalls"), ("p99_ms", "p99_ms")],
            os.path.join(out, f"sweep_w{us}.dat"),
            os.path.join(out, "sweep_{}_w%d.png" % us),
            f"sweep, --work-us {us}, {sw['workers']} workers",
            "connections in flight (closed loop)",
            "server CPU per connection (us)", sw["conc"])
    return made


def http_sweep_plots(hs, out, gp):
    """Server CPU per request and wrk's p99 against the connections (log
    2), one line per implementation."""
    return conc_plots(
        gp, hs["points"], point_impls(hs["points"]),
        ["connections", ("server_cpu_us_per_req", "cpu_us"),
         ("p99_ms", "p99_ms")],
        os.path.join(out, "http_sweep.dat"),
        os.path.join(out, "http_sweep_{}.png"),
        f"evhttp server, {hs['threads']} threads, a new connection per "
        "request", "wrk connections", "server CPU per request (us)",
        hs["conc"])


def fmt_dat(v):
    return "nan" if v is None else f"{v:.6g}"


def plots(report, out):
    gp = shutil.which("gnuplot")
    if not gp:
        log("gnuplot not found: no plots (apt-get install gnuplot-nox)")
        return []
    made = []
    sc = report["scenarios"]
    for scen in ("latency", "stall"):
        if scen not in sc:
            continue
        series = [(i, r["cdf"]) for i, r in sc[scen].items() if r.get("cdf")]
        if not series:
            continue
        dat = os.path.join(out, f"{scen}.dat")
        with open(dat, "w") as f:
            for i, cdf in series:
                f.write(f"# {i}\n")
                for ms, q in cdf:
                    f.write(f"{max(ms, 1e-3)} {q}\n")
                f.write("\n\n")
        png = os.path.join(out, f"{scen}_cdf.png")
        cmds = [f"set terminal pngcairo size 900,540 noenhanced" if _has_cairo(gp)
                else "set terminal png size 900,540 noenhanced",
                f"set output '{png}'", "set logscale x",
                f"set title '{scen}: connection latency CDF (scheduled start to first byte)'",
                "set xlabel 'latency (ms, log)'", "set ylabel 'fraction'",
                "set key bottom right", "set grid",
                "plot " + ", ".join(
                    f"'{dat}' index {k} using 1:2 with lines lw 2 title '{i}'"
                    for k, (i, _) in enumerate(series))]
        if _gnuplot(gp, cmds):
            made.append(png)
    if "balance" in sc:
        dat = os.path.join(out, "balance.dat")
        impls = [i for i, r in sc["balance"].items() if r.get("per_worker")]
        if impls:
            n = max(len(sc["balance"][i]["per_worker"]) for i in impls)
            with open(dat, "w") as f:
                f.write("worker " + " ".join(impls) + "\n")
                for w in range(n):
                    f.write(f"{w} " + " ".join(
                        str(sc["balance"][i]["per_worker"][w]) for i in impls) + "\n")
            png = os.path.join(out, "balance.png")
            cmds = ["set terminal png size 900,540 noenhanced",
                    f"set output '{png}'",
                    "set title 'balance: connections per worker'",
                    "set style data histograms", "set style fill solid 0.8",
                    "set key outside", "set ylabel 'connections'",
                    "set xlabel 'worker'", "set yrange [0:*]",
                    "plot " + ", ".join(
                        f"'{dat}' using {k + 2}:xtic(1) title '{i}'"
                        for k, i in enumerate(impls))]
            if _gnuplot(gp, cmds):
                made.append(png)
    if "rate" in sc:
        dat = os.path.join(out, "rate.dat")
        with open(dat, "w") as f:
            for i, r in sc["rate"].items():
                v = r.get("server_cpu_us_per_conn")
                if v is not None:
                    f.write(f"{i} {v}\n")
        png = os.path.join(out, "rate_cpu.png")
        cmds = ["set terminal png size 900,540 noenhanced", f"set output '{png}'",
                "set title 'rate: server CPU per connection'",
                "set style data histograms", "set style fill solid 0.8",
                "set ylabel 'us per connection'", "set yrange [0:*]",
                "unset key", f"plot '{dat}' using 2:xtic(1)"]
        if _gnuplot(gp, cmds):
            made.append(png)
    made += tail_plots(report, out, gp)
    if report.get("sweep"):
        made += sweep_plots(report["sweep"], out, gp)
    if report.get("http_sweep"):
        made += http_sweep_plots(report["http_sweep"], out, gp)
    return made


def _has_cairo(gp):
    try:
        out = subprocess.run([gp, "-e", "set terminal"], capture_output=True,
                             text=True, timeout=10)
        return "pngcairo" in (out.stdout + out.stderr)
    except (OSError, subprocess.TimeoutExpired):
        return False


def _gnuplot(gp, cmds):
    r = subprocess.run([gp], input="\n".join(cmds) + "\n", text=True,
                       capture_output=True, timeout=60)
    if r.returncode != 0:
        log(f"gnuplot failed: {r.stderr.strip()[:200]}")
    return r.returncode == 0


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", default=None,
                    help="one or more of " + ", ".join(SCENARIOS) +
                         ", sweep; or all (every one but sweep)")
    ap.add_argument("--repeat", type=int, default=None)
    ap.add_argument("--quick", action="store_true",
                    help="short runs, one repeat (a smoke test)")
    ap.add_argument("--json", help="also write the JSON report here")
    ap.add_argument("--out", default=None, help="results folder")
    ap.add_argument("--impl", default=None,
                    help="comma-separated; each scenario runs those of its "
                         "own (default: all): " + ", ".join(IMPLS) +
                         "; http scenarios: " + ", ".join(HTTP_IMPLS) +
                         " (named only: " + ", ".join(HTTP_OPT_IMPLS) + ")")
    ap.add_argument("--strict", action="store_true",
                    help="exit 1 if any run failed (a crash, a server that "
                         "did not start): the test suite's smoke run")
    ap.add_argument("--work-us", type=int, default=0, metavar="N",
                    help="every server spends N us on each connection before "
                         "it replies (default 0: the accept path alone, "
                         "not a result)")
    ap.add_argument("--work-mode", choices=["spin", "sleep"], default="spin",
                    help="that work burns CPU (spin, default) or blocks "
                         "in nanosleep (sleep)")
    ap.add_argument("--read-first", action="store_true",
                    help="the bench server reads a request before it "
                         "replies; the load sends one (--send)")
    ap.add_argument("--pin", action="store_true",
                    help="the bench server's worker i (and the evhttp "
                         "server's thread i) runs on CPU i only, in every "
                         "implementation")
    ap.add_argument("--profile", action="store_true",
                    help="perf record -g of the server in the rate scenario, "
                         "per implementation: folded stacks and flame graphs")
    ap.add_argument("--conns", type=int, default=None, metavar="N",
                    help="wrk's connections in the http scenarios (default: "
                         "32 for http, 8 for http-stall)")
    ap.add_argument("--sweep", action="store_true",
                    help="run the sweep: alone, or with the scenarios "
                         "--scenario names")
    ap.add_argument("--sweep-conc", default=None, metavar="N,N,...",
                    help="the sweep's connections in flight (default "
                         + ",".join(map(str, SWEEP["conc"])) + "; 1-64)")
    ap.add_argument("--sweep-http", action="store_true",
                    help="run the real program's sweep: the evhttp server "
                         "at each --sweep-conc (wrk connections)")
    ap.add_argument("--sweep-work", default=None, metavar="US,US,...",
                    help="the sweep's --work-us settings (default "
                         + ",".join(map(str, SWEEP["work_us"])) + ")")
    a = ap.parse_args()
    try:
        concs = ([int(x) for x in a.sweep_conc.split(",")] if a.sweep_conc
                 else SWEEP["conc"])
        works_us = ([int(x) for x in a.sweep_work.split(",")]
                    if a.sweep_work else SWEEP["work_us"])
    except ValueError:
        ap.error("--sweep-conc and --sweep-work take comma-separated "
                 "integers")
    if any(c < 1 or c > 64 for c in concs):
        ap.error("--sweep-conc: 1 to 64 connections in flight")
    if any(w < 0 for w in works_us):
        ap.error("--sweep-work must be >= 0")
    if a.work_us < 0:
        ap.error("--work-us must be >= 0")
    if a.conns is not None:
        if a.conns < 1:
            ap.error("--conns must be >= 1")
        for s in SCENARIOS.values():
            if s.get("http") and "conns" in s:
                s["conns"] = a.conns
    work = Work(a.work_us, a.work_mode, a.read_first, a.pin)

    if a.scenario is None:
        a.scenario = "sweep" if a.sweep else "" if a.sweep_http else "all"
    scens = (list(SCENARIOS) if a.scenario == "all" else
             [x for x in a.scenario.split(",") if x])
    sweep = a.sweep or "sweep" in scens
    scens = [s for s in scens if s != "sweep"]
    for s in scens:
        if s not in SCENARIOS:
            ap.error(f"unknown scenario {s}")
    impls = a.impl.split(",") if a.impl else None
    for i in impls or []:
        if i not in IMPLS and i not in HTTP_ALL and i not in OPT_IMPLS:
            ap.error(f"unknown implementation {i}")
    repeat = a.repeat or (1 if a.quick else 3)
    out = a.out or os.environ.get("EVSTEER_BENCH_OUT") or os.path.join(
        SRCDIR, "bench", "results")
    os.makedirs(out, exist_ok=True)

    report = {"machine": machine(), "repeats": repeat, "quick": a.quick,
              "work": work.as_dict(),
              "http_conns": {k: s["conns"] for k, s in SCENARIOS.items()
                             if s.get("http") and "conns" in s},
              "scenarios": {}}
    failed_runs = report.setdefault("failed_runs", [])
    for scen in scens:
        http = SCENARIOS[scen].get("http", False)
        own = list(HTTP_IMPLS) if http else IMPLS
        simpls = [i for i in (impls or own)
                  if i in own or (not http and i in OPT_IMPLS)
                  or (http and i in HTTP_OPT_IMPLS)]
        # the floors have no listener to drop or leave: the drains and
        # restart do not apply to them
        simpls = [i for i in simpls
                  if not ((scen.startswith("drain") or scen == "restart")
                          and i.startswith("floor"))]
        why = http_missing(simpls) if http else None
        if why:
            # not a failed run: the machine lacks a tool
            log(f"{scen}: skipped: {why}")
            report.setdefault("skipped", {})[scen] = why
            continue
        runner = run_http if http else run_one
        runs = {i: [] for i in simpls}
        for rep in range(repeat):
            for impl in simpls:  # interleaved: A B A B ...
                log(f"{scen}: {impl} (repeat {rep + 1}/{repeat})")
                try:
                    runs[impl].append(runner(scen, impl, a.quick, work))
                except Exception as e:  # a failed run is reported, not fatal
                    log(f"{scen}: {impl}: failed: {e}")
                    failed_runs.append(f"{scen}/{impl}: {e}")
        report["scenarios"][scen] = {
            i: summarize(scen, r) for i, r in runs.items() if r}
    if sweep:
        report["sweep"] = run_sweep([i for i in (impls or IMPLS)
                                     if i in SWEEP_IMPLS],
                                    concs, works_us, repeat, a.quick, work,
                                    failed_runs)
    if a.sweep_http:
        himpls = [i for i in (impls or HTTP_SWEEP["impls"]) if i in HTTP_ALL]
        why = http_missing(himpls)
        if why:
            log(f"http sweep: skipped: {why}")
            report.setdefault("skipped", {})["http-sweep"] = why
        else:
            report["http_sweep"] = run_http_sweep(himpls, concs, repeat,
                                                  a.quick, work, failed_runs)
    if a.profile:
        report["profiles"] = {}
        for impl in [i for i in (impls or IMPLS) if i in IMPLS]:
            log(f"profile: {impl}")
            try:
                report["profiles"][impl] = profile_rate(impl, out, a.quick,
                                                        work)
            except Exception as e:
                log(f"profile: {impl}: failed: {e}")
    path = os.path.join(out, "latest.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1)
    md = markdown(report)
    with open(os.path.join(out, "latest.md"), "w") as f:
        f.write(md + "\n")
    made = plots(report, out)
    print(md)
    log(f"wrote {path}, latest.md" + (", " + ", ".join(
        os.path.basename(p) for p in made) if made else ""))
    if a.strict and report.get("failed_runs"):
        log(f"{len(report['failed_runs'])} runs failed: "
            + "; ".join(report["failed_runs"]))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
