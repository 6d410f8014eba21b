#!/usr/bin/env python3
"""Where a request held by a blocked thread comes from, and what wrk makes of it.

    bench/held_trace.py wire PCAP PORT [WRK_JSON [CONNECTIONS]]
    bench/held_trace.py perf PERF_SCRIPT_TXT

Made for the http-stall scenario (bench/JOURNAL.md, "Where http-stall's
p99.9 goes"): the evhttp server under evsteer-run, wrk -t2 -c8 with
`Connection: close`, and a client that GETs /stall (a handler that sleeps
50 ms) every 200 ms. Capture beside a run, for example:

    tcpdump -i lo -s 100 --time-stamp-precision nano -w run.pcap "tcp port PORT" &
    perf record -k CLOCK_MONOTONIC -o run.perf -p SERVER_PID -e \\
      syscalls:sys_enter_accept4,syscalls:sys_exit_accept4,\\
      syscalls:sys_enter_clock_nanosleep,syscalls:sys_exit_clock_nanosleep,\\
      syscalls:sys_enter_epoll_wait,syscalls:sys_exit_epoll_wait,\\
      syscalls:sys_enter_readv,syscalls:sys_enter_writev,syscalls:sys_enter_close &
    perf script -i run.perf -F tid,time,event,trace --ns > run.txt

wire: each connection's packets on loopback over IPv4 (client port, split
at each SYN): the '/' requests' latency from the request's packet to the client's
FIN (wrk's own measure: it timestamps the write and the parsed response,
then closes), and the same samples after wrk 4.1's correction for
coordinated omission (stats_correct(): for a sample over twice the mean
interval of one connection's requests, the samples a client on schedule
would have seen, one per interval below it; the interval from wrk's -c,
CONNECTIONS, 8 by default as in http-stall). With wrk's JSON line
(bench/wrk_report.lua) given, its own p99/p99.9 beside them.

perf: for each /stall handler's sleep (a clock_nanosleep of 10 ms or more)
on a server thread, the connections that thread had accepted and not yet
answered when it began (the /stall one among them): held, each by where it
came from (the thread's own listening socket, or a sibling's: stolen) and
how many the same pass took from there (its batch). The event engine only
(`evsteer-run --accept event`, the default path): the io_uring engine's
own accepts make no accept4() call to see.
"""
import collections
import json
import math
import re
import struct
import sys


def connections(pcap, port):
    f = open(pcap, "rb")
    gh = f.read(24)
    nano = struct.unpack("<I", gh[:4])[0] == 0xA1B23C4D
    link = struct.unpack("<I", gh[20:24])[0]
    off = {1: 14, 113: 16}.get(link, 4)
    conns, cur = [], {}
    while True:
        h = f.read(16)
        if len(h) < 16:
            break
        ts, frac, incl, _ = struct.unpack("<IIII", h)
        d = f.read(incl)
        t = ts + frac * (1e-9 if nano else 1e-6)
        ip = d[off:]
        if not ip or ip[0] >> 4 != 4:
            continue
        ihl = (ip[0] & 15) * 4
        tot = struct.unpack(">H", ip[2:4])[0]
        tcp = ip[ihl:]
        sp, dp = struct.unpack(">HH", tcp[:4])
        doff = (tcp[12] >> 4) * 4
        fl = tcp[13]
        plen = tot - ihl - doff
        to_server = dp == port
        cp = sp if to_server else dp
        if to_server and fl & 2 and not fl & 16:
            cur[cp] = {"port": cp, "syn": t}
            conns.append(cur[cp])
            continue
        c = cur.get(cp)
        if c is None:
            continue
        if to_server and plen > 0 and "req" not in c:
            c["req"] = t
            c["path"] = tcp[doff:doff + 12]
        if not to_server and plen > 0:
            c.setdefault("resp", t)
        if to_server and fl & 1:
            c.setdefault("fin_c", t)
    return conns


def pct(hist, p):
    total = sum(hist.values())
    rank = math.floor(p / 100 * total + 0.5 + 0.5)  # wrk: C's round()
    run = 0
    for v in sorted(hist):
        run += hist[v]
        if run >= rank:
            return v
    return 0


def wrk_correct(hist, interval):
    out = collections.Counter(hist)
    for n in sorted(k for k in hist if k >= 2 * interval):
        m = n - interval
        while m > interval:
            out[m] += hist[n]
            m -= interval
    return out


def wire(pcap, port, wrk_json=None, nconns="8"):
    conns = connections(pcap, int(port))
    slash = [c for c in conns if c.get("path", b"").startswith(b"GET / ")
             and "fin_c" in c]
    if not slash:
        sys.exit("held_trace: no '/' request to port %s over IPv4 in %s" %
                 (port, pcap))
    nconns = int(nconns)
    hist = collections.Counter(int((c["fin_c"] - c["req"]) * 1e6) for c in slash)
    slow = [c for c in slash if "resp" in c and c["resp"] - c["req"] > 0.010]
    print("'/' requests %d; answered over 10 ms after the request: %d" %
          (len(slash), len(slow)))
    print("from the wire: p99 %d us, p99.9 %d us" % (pct(hist, 99), pct(hist, 99.9)))
    wrk = None
    if wrk_json:
        wrk = json.loads(open(wrk_json).read().strip().splitlines()[-1])
        # wrk's interval: its run time over the requests of one connection
        interval = int(wrk["duration_us"] / (wrk["requests"] // nconns))
    else:
        span = max(c["fin_c"] for c in slash) - min(c["req"] for c in slash)
        interval = int(span * 1e6 / (len(slash) // nconns))
    fixed = wrk_correct(hist, interval)
    print("with wrk's correction (interval %d us, %d samples -> %d): p99 %d us, "
          "p99.9 %d us" % (interval, sum(hist.values()), sum(fixed.values()),
                           pct(fixed, 99), pct(fixed, 99.9)))
    if wrk:
        print("wrk said: p99 %d us, p99.9 %d us" %
              (wrk["latency_us"]["p99"], wrk["latency_us"]["p999"]))


def perf(path):
    ev = collections.defaultdict(list)
    for line in open(path):
        p = line.split(None, 3)
        if len(p) < 3 or ":" not in p[2]:
            continue
        name = p[2].rstrip(":").split(":")[1]
        ev[int(p[0])].append((float(p[1].rstrip(":")), name,
                              p[3].strip() if len(p) > 3 else ""))
    fdarg = re.compile(r"fd: (0x[0-9a-f]+)")
    tally = collections.Counter()
    sleeps = 0
    for tid, evs in ev.items():
        froms = collections.Counter(fdarg.search(a).group(1) for _, n, a in evs
                                    if n == "sys_enter_accept4")
        if not froms:
            continue  # not a loop thread
        own = int(froms.most_common(1)[0][0], 16)
        unanswered, batch, npass, last_from = {}, collections.Counter(), 0, None
        began, snapshot = 0.0, None
        for t, n, a in evs:
            if n == "sys_exit_epoll_wait":
                npass += 1
            elif n == "sys_enter_accept4":
                last_from = int(fdarg.search(a).group(1), 16)
            elif n == "sys_exit_accept4" and int(a, 16) < 1 << 31:
                src = "own" if last_from == own else "stolen"
                unanswered[int(a, 16)] = (src, npass)
                batch[(npass, src)] += 1
            elif n in ("sys_enter_writev", "sys_enter_close"):
                unanswered.pop(int(fdarg.search(a).group(1), 16), None)
            elif n == "sys_enter_clock_nanosleep":
                began, snapshot = t, [(src, batch[(p, src)])
                                      for src, p in unanswered.values()]
            elif n == "sys_exit_clock_nanosleep" and snapshot is not None:
                # a /stall handler's sleep, not --work-mode sleep's 50 us
                if t - began >= 0.010:
                    sleeps += 1
                    for k in snapshot:
                        tally[k] += 1
                snapshot = None
    held = sum(tally.values()) - sleeps
    print("sleeps %d; connections unanswered when one began %d (the /stall "
          "ones among them), so held %d" % (sleeps, sum(tally.values()), held))
    for (src, b), k in sorted(tally.items()):
        print("  %-6s in a batch of %2d: %d" % (src, b, k))


if __name__ == "__main__":
    if 4 <= len(sys.argv) <= 6 and sys.argv[1] == "wire":
        wire(*sys.argv[2:6])
    elif len(sys.argv) == 3 and sys.argv[1] == "perf":
        perf(sys.argv[2])
    else:
        sys.exit(__doc__)
