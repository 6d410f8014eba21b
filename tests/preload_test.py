#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The LD_PRELOAD shim on real programs (meson runs one CASE per test).

  run       evsteer-run: options, environment, LD_PRELOAD, programs without
            libevent, set-user-ID programs
  compat    tests/compat_prog built against libevent prints the same lines
            under the shim (the behaviour table)
  evhttp    an evhttp server built here against the system libevent answers
            the same with and without the shim; log line and EVSTEER_STATS
  ustreamer Debian's ustreamer (evhttp), curl
  coturn    Debian's turnserver (evconnlistener_new, two listeners on one
            port, one per relay thread), STUN over TCP, turnutils_uclient
  safety    pass-through: a libevent that is not 2.1, libevent loaded
            RTLD_LOCAL, the core missing

Exit 77 when a program is missing, unless EVSTEER_TEST_REQUIRE is "all" or
lists "programs" (then it is a failure). Every wait is bounded.
"""
import argparse
import hashlib
import json
import os
import random
import re
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time

import evtest
from evtest import Server, base_env, check, free_port, with_port

SKIP = 77
TIMEOUT = 60  # seconds, for anything that should take well under one
A = None      # parsed arguments
TMP = None


class Skip(Exception):
    pass


def need(feature, have, why):
    if have:
        return
    if evtest.required(feature):
        raise AssertionError(f"{feature} is required (EVSTEER_TEST_REQUIRE) but: {why}")
    raise Skip(f"{feature}: {why}")


def need_programs(*names):
    for n in names:
        need("programs", shutil.which(n), f"{n} is not installed "
             "(bash deploy/setup.sh test installs it)")


# ---- environments ---------------------------------------------------------

def shim_env(foreign=False):
    """The environment evsteer-run is started in (libasan first if needed)."""
    return evtest.shim_env(A.preload, foreign)


def run(cmd, env, **kw):
    kw.setdefault("timeout", TIMEOUT)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, **kw)


def evsteer_lines(stderr):
    return [l for l in stderr.splitlines() if l.startswith("evsteer:")]


def listener_lines(stderr):
    return [l for l in stderr.splitlines() if l.startswith("evsteer: info: listener ")]


# ---- servers --------------------------------------------------------------

def curl(url, unix=None):
    """(status, content type, body bytes) from the real curl."""
    cmd = ["curl", "-sS", "--max-time", "30", "-o", "-",
           "-w", "\n%{http_code} %{content_type}"]
    if unix:
        cmd += ["--unix-socket", unix]
    r = subprocess.run(cmd + [url], capture_output=True, timeout=TIMEOUT)
    check(r.returncode == 0, f"curl {url}: {r.stderr.decode(errors='replace')}")
    body, _, tail = r.stdout.rpartition(b"\n")
    code, _, ctype = tail.decode().partition(" ")
    return int(code), ctype, body


def read_stats(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]


def uring_reason(lines):
    """Why the io_uring engine was not used, from the path lines, or None."""
    for l in lines:
        m = re.search(r"path (?:bpf\+)?event \((.*)\)$", l)
        if m:
            return m.group(1)
    return None


# ---- run ------------------------------------------------------------------

def case_run():
    er = A.run
    env = shim_env()
    r = run([er], env)
    check(r.returncode == 2 and "usage:" in r.stderr, f"no program: {r}")
    r = run([er, "--help"], env)
    check(r.returncode == 0 and "usage:" in r.stdout, f"--help: {r}")
    for bad in (["--policy", "nope"], ["--accept", "x"], ["--bpf", "maybe"],
                ["--log", "loud"], ["--group", "80,"], ["--group", "http"],
                ["--frob"], ["--policy"]):
        r = run([er] + bad + ["true"], env)
        check(r.returncode == 2 and r.stderr.startswith("evsteer-run: "),
              f"{bad}: exit {r.returncode}, {r.stderr!r}")

    # the variables, LD_PRELOAD after what was there, once
    libc = next(l.split()[-1] for l in open("/proc/self/maps") if "/libc.so" in l)
    env2 = dict(env)
    env2["LD_PRELOAD"] = (env.get("LD_PRELOAD", "") + " " + libc).strip()
    r = run([er, "--policy", "round-robin", "--accept=event", "--bpf", "off",
             "--log", "debug", "--group", "80,443", "--group", "8080",
             "--stats", "rel.json", "--", er, "env"], env2, cwd=TMP)
    check(r.returncode == 0, f"env: {r}")
    got = dict(l.split("=", 1) for l in r.stdout.splitlines() if "=" in l)
    want = {"EVSTEER_POLICY": "round-robin", "EVSTEER_ACCEPT": "event",
            "EVSTEER_BPF": "off", "EVSTEER_LOG": "debug",
            "EVSTEER_GROUP_PORTS": "80,443,8080",
            "EVSTEER_STATS": os.path.join(os.path.realpath(TMP), "rel.json"),
            "LD_PRELOAD": env2["LD_PRELOAD"] + ":" + A.preload}
    for k, v in want.items():
        check(got.get(k) == v, f"{k}={got.get(k)!r}, expected {v!r}")

    # a program without libevent: the shim stays silent, even at debug
    r = run([er, "--log", "debug", "sh", "-c", "echo hi"], env)
    check(r.returncode == 0 and r.stdout == "hi\n" and r.stderr == "",
          f"sh under the shim: {r}")
    r = run([er, "no-such-program-evsteer"], env)
    check(r.returncode == 127, f"missing program: exit {r.returncode}")

    # set-user-ID: the loader will ignore LD_PRELOAD; say so
    suid = os.path.join(TMP, "suid-true")
    shutil.copy(shutil.which("true"), suid)
    os.chmod(suid, 0o4755)
    r = run([er, suid], env)
    check(r.returncode == 0 and "set-user/group-ID" in r.stderr, f"setuid: {r}")
    print("evsteer-run: options, environment, LD_PRELOAD, no-libevent and "
          "setuid programs ok")


# ---- compat ---------------------------------------------------------------

def case_compat():
    ref = run([A.compat], base_env())
    check(ref.returncode == 0, f"compat_prog under libevent: {ref}")
    for mode in ("auto", "uring"):
        r = run([A.run, "--log", "info", "--accept", mode, A.compat], shim_env())
        check(r.returncode == 0, f"under the shim ({mode}): {r}")
        if r.stdout != ref.stdout:
            raise AssertionError(f"--accept {mode}: the shim printed\n{r.stdout}\n"
                                 f"libevent printed\n{ref.stdout}")
        lines = listener_lines(r.stderr)
        # two listeners; the third call (new_bind, backlog 0) went to libevent
        check(len(lines) == 2, f"expected 2 listener lines, got:\n{r.stderr}")
        if mode == "uring":
            why = uring_reason(lines)
            need("uring", why is None, why)
            check(all(" path uring " in l for l in lines), "\n".join(lines))
        print(f"--accept {mode}: the behaviour table prints the same under the shim")
    print(lines[0])


# ---- evhttp ---------------------------------------------------------------

HTTP_PATHS = ["/hello", "/echo?a=1&b=two", "/peer", "/listener", "/missing"]


def http_session(prefix, env, stats=None):
    """Start preload_http, ask every path over TCP and one over unix, stop."""
    sock = os.path.join(TMP, "http.sock")
    cmd = prefix + [A.http, "--requests", str(len(HTTP_PATHS) + 1), "--unix", sock]
    s = Server(cmd, env)
    try:
        port = int(s.wait_for(r"^ready (\d+)$").group(1))
        answers = [curl(f"http://127.0.0.1:{port}{p}") for p in HTTP_PATHS]
        answers.append(curl("http://localhost/hello", unix=sock))
        rc = s.wait()
    finally:
        s.kill()
    check(rc == 0 and s.out[-1:] == ["done"], f"preload_http: exit {rc}\n{s.text()}")
    return port, answers, s


def case_evhttp():
    need_programs("curl")
    _, ref, _ = http_session([], base_env())
    check(ref[0] == (200, "text/plain", b"hello from evhttp\n"), f"reference: {ref[0]}")
    check(ref[2][2] == b"peer 127.0.0.1, port set\n", f"reference /peer: {ref[2]}")
    check(ref[3][2] == b"fd matches 1, base matches 1, bound fd 1\n", f"{ref[3]}")
    check(ref[4][0] == 404, f"reference /missing: {ref[4]}")

    for mode, path in (("auto", "event"), ("uring", "uring")):
        stats = os.path.join(TMP, f"stats-{mode}.json")
        port, got, s = http_session([A.run, "--log", "info", "--accept", mode,
                                     "--stats", stats], shim_env())
        check(got == ref, f"--accept {mode}: answers differ:\n{got}\nlibevent:\n{ref}")
        lines = listener_lines("\n".join(s.err))
        check(len(lines) == 2, f"expected 2 listener lines:\n{s.text()}")
        if mode == "uring":
            why = uring_reason(lines)
            need("uring", why is None, why)
        tcp = f"evsteer: info: listener 127.0.0.1:{port} fd "
        check(any(l.startswith(tcp) and f": path {path} (" in l for l in lines),
              f"no {path} line for 127.0.0.1:{port}:\n" + "\n".join(lines))
        check(any(l.startswith("evsteer: info: listener unix:" + os.path.join(TMP, "http.sock"))
                  for l in lines), "\n".join(lines))
        st = read_stats(stats)
        check(len(st) == 2 and all(x["event"] == "free" for x in st), f"stats: {st}")
        by = {x["address"]: x for x in st}
        t = by[f"127.0.0.1:{port}"]
        check(t["path"] == path and t["engine"] == path and t["accepted"] == len(HTTP_PATHS)
              and t["program"] == "preload_http" and t["pid"] == s.p.pid,
              f"tcp stats: {t}")
        check(by["unix:" + os.path.join(TMP, "http.sock")]["accepted"] == 1, f"{st}")
        print(f"--accept {mode}: same answers; " + lines[0])
        print(json.dumps(t))

    # out of descriptors: libevent spins (not asserted: it is libevent's),
    # the shim backs off, and both answer again afterwards
    share, nlines, answer = emfile_session([], base_env())
    print(f"at the fd limit, libevent: {share:.0%} CPU, {nlines} stderr lines in 2 s")
    share, nlines, answer = emfile_session([A.run], shim_env())
    print(f"at the fd limit, evsteer-run: {share:.0%} CPU, {nlines} stderr lines in 2 s")
    check(share < 0.3 and nlines <= 4 and answer[2] == b"hello from evhttp\n",
          f"under the shim at EMFILE: {share:.0%} CPU, {nlines} lines, then {answer}")


def fd_count(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def emfile_session(prefix, env):
    """preload_http at its descriptor limit (ulimit -n 24, 40 connections
    held open): the server's CPU share over 2 s, its stderr line count, and
    whether it answers once the connections are gone."""
    err_path = os.path.join(TMP, "emfile.err")
    with open(err_path, "w") as err:
        p = subprocess.Popen(["sh", "-c", 'ulimit -n 24 && exec "$@"', "sh"] +
                             prefix + [A.http], env=env, stdout=subprocess.PIPE,
                             stderr=err, text=True)
    try:
        ready, _, _ = select.select([p.stdout], [], [], TIMEOUT)
        line = p.stdout.readline() if ready else ""
        check(line.startswith("ready "), f"preload_http: {line!r}")
        port = int(line.split()[1])

        def cpu():
            f = open(f"/proc/{p.pid}/stat").read().rsplit(")", 1)[1].split()
            return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
        held = [socket.create_connection(("127.0.0.1", port), timeout=30)
                for _ in range(40)]
        # at the limit: all 24 descriptors in use, the rest queued
        deadline = time.monotonic() + TIMEOUT
        while fd_count(p.pid) < 24 and time.monotonic() < deadline:
            time.sleep(0.02)
        check(fd_count(p.pid) >= 24,
              f"preload_http never reached its fd limit ({fd_count(p.pid)} of 24)")
        c0, t0 = cpu(), time.monotonic()
        time.sleep(2)
        share = (cpu() - c0) / (time.monotonic() - t0)
        for h in held:
            h.close()
        answer = curl(f"http://127.0.0.1:{port}/hello")
    finally:
        p.kill()
        p.wait()
    with open(err_path) as f:
        lines = sum(1 for _ in f)
    return share, lines, answer


# ---- ustreamer ------------------------------------------------------------

def ustreamer_session(prefix, env):
    def start(port):
        s = Server(prefix + ["ustreamer", "--host", "127.0.0.1", "--port", str(port),
                             "--device", os.path.join(TMP, "no-camera")], env)
        try:
            s.wait_for(r"Listening HTTP on|Can't (bind|listen)", stream="err")
        except AssertionError:
            s.kill()
            raise
        if any("Can't" in l and "HTTP" in l for l in s.err):
            s.kill()
            return None
        s.port = port
        return s
    s = with_port(start)
    try:
        state = curl(f"http://127.0.0.1:{s.port}/state")
        snap = curl(f"http://127.0.0.1:{s.port}/snapshot")
        missing = curl(f"http://127.0.0.1:{s.port}/no-such-page")
        rc = s.stop()
    finally:
        s.kill()
    check(rc == 0, f"ustreamer exit {rc}\n{s.text()}")
    return s, state, snap, missing


def case_ustreamer():
    need_programs("ustreamer", "curl")
    _, state, snap, missing = ustreamer_session([], base_env(foreign=True))
    ref_state = json.loads(state[2])
    check(state[0] == 200 and ref_state["ok"] is True and
          ref_state["result"]["source"]["online"] is False, f"/state: {state}")
    check(snap[0] == 200 and snap[1] == "image/jpeg" and snap[2][:2] == b"\xff\xd8",
          f"/snapshot: {snap[:2]}")
    ref = (state[0], ref_state, snap[0], snap[1], hashlib.sha256(snap[2]).hexdigest(),
           missing[0])

    for mode, path in (("auto", "event"), ("uring", "uring")):
        stats = os.path.join(TMP, f"ustreamer-{mode}.json")
        s, state, snap, missing = ustreamer_session(
            [A.run, "--log", "info", "--accept", mode, "--stats", stats],
            shim_env(foreign=True))
        got = (state[0], json.loads(state[2]), snap[0], snap[1],
               hashlib.sha256(snap[2]).hexdigest(), missing[0])
        check(got == ref, f"--accept {mode}: answers differ: {got} vs {ref}")
        lines = listener_lines("\n".join(s.err))
        check(len(lines) == 1, f"expected one listener line:\n{s.text()}")
        if mode == "uring":
            why = uring_reason(lines)
            need("uring", why is None, why)
        check(lines[0].startswith(f"evsteer: info: listener 127.0.0.1:{s.port} fd ") and
              f": path {path} (" in lines[0], lines[0])
        st = read_stats(stats)
        check(len(st) == 1 and st[0]["event"] == "free" and st[0]["accepted"] == 3
              and st[0]["path"] == path and st[0]["program"] == "ustreamer", f"stats: {st}")
        print(f"--accept {mode}: /state, /snapshot ({len(snap[2])} bytes), 404 "
              f"as without the shim; " + lines[0])
        print(json.dumps(st[0]))


# ---- coturn ---------------------------------------------------------------

MAGIC = 0x2112A442


def stun_binding_tcp(port):
    """A STUN Binding request over TCP; True when the answer is a success
    carrying our own address in XOR-MAPPED-ADDRESS (RFC 5389)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        tid = os.urandom(12)
        s.sendall(struct.pack("!HHI", 0x0001, 0, MAGIC) + tid)

        def recv(n):
            b = b""
            while len(b) < n:
                c = s.recv(n - len(b))
                if not c:
                    raise AssertionError("connection closed mid-answer")
                b += c
            return b
        hdr = recv(20)
        typ, length, cookie = struct.unpack("!HHI", hdr[:8])
        body = recv(length)
        mapped, p = None, 0
        while p + 4 <= length:
            at, al = struct.unpack("!HH", body[p:p + 4])
            v = body[p + 4:p + 4 + al]
            if at == 0x0020 and v[1] == 1:
                mport = struct.unpack("!H", v[2:4])[0] ^ (MAGIC >> 16)
                maddr = socket.inet_ntoa(struct.pack("!I", struct.unpack("!I", v[4:8])[0] ^ MAGIC))
                mapped = (maddr, mport)
            p += 4 + al + (-al % 4)
        return (typ == 0x0101 and cookie == MAGIC and hdr[8:] == tid and
                mapped == s.getsockname())


def turnserver(prefix_for, relay_lo, extra_env=None):
    """turnserver under the shim on a free port; prefix_for(port) is the
    evsteer-run part of the command line. Ready once a TCP connect succeeds."""
    db = os.path.join(TMP, f"turndb-{relay_lo}")

    def start(port):
        s = Server(prefix_for(port) + [
            "turnserver", "-n", "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1",
            f"--listening-port={port}", "--no-tls", "--no-dtls", "--no-cli",
            "--relay-threads=2", f"--min-port={relay_lo}", f"--max-port={relay_lo + 199}",
            "--lt-cred-mech", "--user=evsteer:secret", "--realm=evsteer.test",
            "--allow-loopback-peers", f"--userdb={db}",
            f"--pidfile={os.path.join(TMP, 'turn.pid')}",
            "--log-file=stdout", "--simple-log", "-v"],
            dict(shim_env(foreign=True), **(extra_env or {})))
        deadline = time.monotonic() + TIMEOUT
        while True:
            if s.p.poll() is not None:
                s.wait()
                if any("Cannot bind" in l for l in s.out + s.err):
                    return None  # taken meanwhile: another port
                raise AssertionError("turnserver exited\n" + s.text())
            try:
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    s.kill()
                    raise AssertionError("turnserver never listened\n" + s.text())
                time.sleep(0.1)
        s.port = port
        return s
    return with_port(start, udp_too=True)


def uclient(port, relay_lo, tcp_relay):
    """coturn's own client over TCP: 2 sessions x 10 messages through a relay."""
    peer = None
    try:
        if tcp_relay:   # client to client through TCP relays (RFC 6062)
            extra = ["-T", "-y"]
        else:           # to coturn's UDP echo peer
            pport = free_port(udp_too=True)
            peer = Server(["turnutils_peer", "-L", "127.0.0.1", "-p", str(pport)],
                          base_env(foreign=True))
            extra = ["-e", "127.0.0.1", "-r", str(pport)]
        r = run(["turnutils_uclient", "-t", "-u", "evsteer", "-w", "secret", "-n", "10",
                 "-m", "2", "-l", "100", "-p", str(port)] + extra + ["127.0.0.1"],
                base_env(foreign=True), timeout=120)
    finally:
        if peer:
            peer.kill()
    out = r.stdout + r.stderr
    m = re.search(r"start_mclient: tot_send_msgs=(\d+), tot_recv_msgs=(\d+)$", out, re.M)
    lost = re.search(r"Total lost packets (\d+)", out)
    check(r.returncode == 0 and m and lost and int(m.group(1)) == 20 and
          int(m.group(2)) == 20 and lost.group(1) == "0", f"turnutils_uclient:\n{out}")
    return m.group(0)


def sessions_per_thread(s, n):
    """coturn logs each closed session with its relay thread in the first
    three digits of the session id: how many of the n STUN connections to
    the service port each thread served."""
    ms = s.wait_count(r"session (\d{3})\d+: closed \(2nd stage\).* local "
                      rf"127\.0\.0\.1:{s.port}, ", n)
    counts = {}
    for m in ms:
        counts[m.group(1)] = counts.get(m.group(1), 0) + 1
    return counts


def coturn_round(s, n, relay_lo, tcp_relay):
    """n STUN bindings over TCP to the running turnserver s, all answered
    right, then coturn's own client through a relay; s is stopped after.
    Returns the connections per relay thread and the client's summary."""
    try:
        ok = sum(stun_binding_tcp(s.port) for _ in range(n))
        check(ok == n, f"{ok} of {n} STUN binding answers over TCP were right")
        per_thread = sessions_per_thread(s, n)
        msgs = uclient(s.port, relay_lo, tcp_relay=tcp_relay)
    finally:
        s.stop()
    return per_thread, msgs


def case_coturn():
    need_programs("turnserver", "turnutils_uclient", "turnutils_peer")
    relay_lo = random.randrange(20000, 29000, 400)

    # 1. as it is: two lone listeners on coturn's own SO_REUSEPORT sockets
    s = turnserver(lambda port: [A.run, "--log", "info"], relay_lo)
    hashed, msgs = coturn_round(s, 50, relay_lo, tcp_relay=False)
    lines = listener_lines("\n".join(s.out + s.err))
    check(len(lines) == 2 and all(
        l.startswith(f"evsteer: info: listener 127.0.0.1:{s.port} fd ") and
        " path event (" in l and f"evsteer-run --group {s.port} " in l for l in lines),
        "expected two event-path lines with the --group hint:\n" + s.text())
    print(f"two listeners on port {s.port}: 50/50 STUN over TCP (relay threads: "
          f"{sorted(hashed.values())}, the kernel's hash), uclient {msgs}")
    print(lines[0])

    # 2. --group: the two per-thread listeners are one BPF-steered group;
    #    TCP relay allocations make (and free) listeners of their own.
    #    Stall avoidance off: it sends connections to whichever thread runs,
    #    which on a loaded machine is no even split (test_group covers it);
    #    without it least-pending alternates between idle members exactly.
    stats = os.path.join(TMP, "coturn.json")
    relay_lo += 200
    s = turnserver(lambda port: [A.run, "--log", "info", "--group", str(port),
                                 "--stats", stats], relay_lo,
                   {"EVSTEER_STALL_US": "-1"})
    steered, msgs = coturn_round(s, 200, relay_lo, tcp_relay=True)
    lines = listener_lines("\n".join(s.out + s.err))
    main = [l for l in lines if l.startswith(f"evsteer: info: listener 127.0.0.1:{s.port} ")]
    check(len(main) == 2, "expected two listener lines on the port:\n" + s.text())
    need("bpf", all(" path bpf+" in l for l in main), "\n".join(main))
    # one group: workers 0 and 1, on the default path (auto: accept4())
    check(sorted(re.search(r" path bpf\+event \(bpf steering, policy least-pending, "
                           r"worker (\d+); accept: auto mode accepts with accept4\(\)",
                           l).group(1) for l in main) == ["0", "1"],
          "\n".join(main))
    # one group: least-pending rotates ties, each relay thread gets half
    check(len(steered) == 2 and min(steered.values()) >= 95,
          f"connections per relay thread: {steered}\n" + "\n".join(main))
    relay = [x for x in read_stats(stats) if x["event"] == "free"]
    relay_ports = {int(x["address"].rsplit(":", 1)[1]) for x in relay}
    check(relay and all(relay_lo <= p < relay_lo + 200 for p in relay_ports),
          f"expected freed TCP relay listeners in EVSTEER_STATS: {relay}")
    check(sum(x["accepted"] for x in relay) >= 1, f"no relay listener accepted: {relay}")
    print(f"--group {s.port}: 200/200 STUN over TCP (relay threads: "
          f"{sorted(steered.values())}), TCP relays: uclient {msgs}, "
          f"{len(relay)} relay listeners freed")
    print(main[0])


# ---- safety ---------------------------------------------------------------

def case_safety():
    need_programs("curl")
    # 1. a libevent that is not 2.1: every call reaches it unchanged, said once
    ref = run([A.fake], base_env())
    r = run([A.run, A.fake], shim_env())
    check(ref.returncode == 0 and r.returncode == 0 and r.stdout == ref.stdout,
          f"fake libevent:\n{r.stdout}\nwithout the shim:\n{ref.stdout}")
    check(ref.stdout.count("fake ") == 10, ref.stdout)
    lines = evsteer_lines(r.stderr)
    check(len(lines) == 1 and "is libevent 2.0.22-fake, not the 2.1 ABI" in lines[0] and
          "pass through" in lines[0], f"expected one line:\n{r.stderr}")
    print("libevent 2.0 (fake): all 10 calls passed through; " + lines[0])

    # 2. libevent loaded RTLD_LOCAL: not in the global scope
    s = Server([A.run, A.local, "--requests", "2"], shim_env())
    try:
        port = int(s.wait_for(r"^ready (\d+)$").group(1))
        for _ in range(2):
            got = curl(f"http://127.0.0.1:{port}/")
            check(got[0] == 200 and got[2] == b"hello from evhttp\n", f"RTLD_LOCAL evhttp: {got}")
        rc = s.wait()
    finally:
        s.kill()
    lines = evsteer_lines("\n".join(s.err))
    check(rc == 0 and len(lines) == 1 and "not in the program's global scope" in lines[0],
          f"RTLD_LOCAL: exit {rc}\n{s.text()}")
    print("libevent RTLD_LOCAL: served through the caller's libevent; " + lines[0])

    # 3. the core missing next to the interposer
    lonely = os.path.join(TMP, "alone")
    os.mkdir(lonely)
    shutil.copy(A.preload, lonely)
    env = shim_env()
    env["LD_PRELOAD"] = " ".join(filter(None, [env.get("LD_PRELOAD"),
                                               os.path.join(lonely, os.path.basename(A.preload))]))
    _, ref, _ = http_session([], base_env())
    _, got, s = http_session([], env)
    lines = evsteer_lines("\n".join(s.err))
    check(got == ref, f"without the core: answers differ:\n{got}\n{ref}")
    check(len(lines) == 1 and "cannot load" in lines[0] and
          "libevsteer-preload-core.so" in lines[0], "\n".join(s.err))
    print("core missing: same answers as libevent; " + lines[0])


# ---- prefork ----------------------------------------------------------------

def case_prefork():
    """Two processes of an unmodified libevent server (the benchmark
    server's libevent build: evconnlistener_new_bind with
    LEV_OPT_REUSEABLE_PORT, one base per thread) on one port under
    evsteer-run --group: one steering group across both processes, every
    listener on the BPF path, each process its share, all served."""
    need("bench", A.server and os.path.exists(A.server),
         "the benchmark server is not built (needs liburing)")
    port = free_port()
    env = shim_env()
    cmd = [A.run, "--log", "info", "--group", str(port), "--",
           A.server, "--impl", "libevent", "--workers", "2",
           "--port", str(port)]
    procs = []
    try:
        for _ in range(2):
            s = Server(cmd, env)
            s.wait_for(r"^ready %d$" % port)
            s.wait_count(r"evsteer: info: listener 127\.0\.0\.1:%d .*path " % port, 2)
            procs.append(s)
        paths = [m.group(1) for s in procs for m in
                 s.wait_count(r"listener 127\.0\.0\.1:%d .*path (\S+)" % port, 2)]
        # a server that speaks first: its sockets are not evhttp's, so no
        # TCP_DEFER_ACCEPT by default (its clients send nothing and would
        # wait about 5 s each, past this case's bound)
        check(not any("TCP_DEFER_ACCEPT" in l for s in procs for l in s.err),
              "TCP_DEFER_ACCEPT set on a socket evhttp does not listen on")
        bpf = all(p.startswith("bpf+") for p in paths)
        need("bpf", bpf, "the listeners are not steered by BPF: "
             + "; ".join(listener_lines("\n".join(procs[0].err))))
        r = run([A.load, "closed", "--port", str(port), "--threads", "2",
                 "--max", "1000", "--seconds", "30"], base_env())
        check(r.returncode == 0, f"load: {r}")
        made = json.loads(r.stdout.strip().splitlines()[-1])
        check(made["errors"] == 0, f"load errors: {made}")
        got = []
        for s in procs:
            check(s.stop() == 0, "server exit:\n" + s.text())
            out = [l for l in s.out if l.startswith("{")]
            got.append(json.loads(out[-1])["accepted"])
        procs = []
        print(f"prefork: {made['connections']} connections, per process {got}; "
              f"paths {paths}")
        check(sum(got) == made["connections"],
              f"served {sum(got)} of {made['connections']}")
        check(min(got) >= made["connections"] // 4,
              f"one process got {min(got)} of {made['connections']}: not one group")
    finally:
        for s in procs:
            s.kill()


def main():
    global A, TMP
    ap = argparse.ArgumentParser()
    ap.add_argument("case")
    ap.add_argument("--run", required=True)
    ap.add_argument("--preload", required=True)
    ap.add_argument("--http")
    ap.add_argument("--compat")
    ap.add_argument("--fake")
    ap.add_argument("--local")
    ap.add_argument("--server")
    ap.add_argument("--load")
    A = ap.parse_args()
    for k in ("run", "preload", "http", "compat", "fake", "local", "server",
              "load"):
        if getattr(A, k):
            setattr(A, k, os.path.abspath(getattr(A, k)))
    case = globals().get("case_" + A.case)
    if not case:
        ap.error(f"unknown case {A.case}")
    TMP = tempfile.mkdtemp(prefix="evsteer-preload-")
    try:
        case()
    except Skip as e:
        print(f"SKIP: {e}")
        return SKIP
    finally:
        shutil.rmtree(TMP, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
