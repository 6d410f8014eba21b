#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""evsteer-service under systemd's socket activation, for real:
systemd-socket-activate passes on the sockets it inherits (LISTEN_FDS), so
this test hands it two SO_REUSEPORT sockets on one port named "web" (what a
.socket unit with ReusePort=yes and two ListenStream= lines gives) and one
named "admin" on another port. The service must make its group of the two
"web" sockets only, steer (round-robin: exactly half each with BPF) and
serve every connection.

  socket_activation.py EVSTEER_SERVICE
"""
import os
import re
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import evtest

SERVICE = sys.argv[1]
N = 200
TIMEOUT = 60


def skip(why):
    evtest.skip("socket-activation", "systemd", why)


def listener(port, reuseport):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if reuseport:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", port))
    s.listen(128)
    return s


def reader(p):
    """the service's stdout, line by line, through a queue: waits are
    bounded (select on a buffered pipe would miss buffered lines)"""
    q = queue.Queue()

    def run():
        for line in p.stdout:
            q.put(line)
        q.put("")
    threading.Thread(target=run, daemon=True).start()
    return q


def readline(q, deadline):
    try:
        return q.get(timeout=max(0.0, deadline - time.monotonic()))
    except queue.Empty:
        return ""


def scenario(label, tool, service, prefix):
    """one activation; returns the failed checks"""
    print(f"--- {label}")
    web0 = listener(0, True)
    port = web0.getsockname()[1]
    web1 = listener(port, True)
    admin = listener(0, False)
    socks = [web0, web1, admin]
    # high numbers first, so that moving them to 3.. cannot clobber one
    high = [os.dup2(s.fileno(), 100 + i, inheritable=False)
            for i, s in enumerate(socks)]

    def to_3():
        for i, fd in enumerate(high):
            os.dup2(fd, 3 + i)  # inheritable

    env = dict(os.environ, LISTEN_FDS=str(len(socks)))
    env.pop("LISTEN_FDNAMES", None)
    # systemd-socket-activate passes a fresh environment: only -E variables
    # round-robin is exact only without stall avoidance: on a loaded
    # machine a worker that has not run for 2 ms is skipped, rightly
    setenv = ["-E", "EVSTEER_POLICY=round-robin", "-E", "EVSTEER_STALL_US=-1",
              "-E", "EVSTEER_LOG=info"]
    for k in ("ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS"):
        if k in os.environ:
            setenv += ["-E", k]
    # LISTEN_PID is the pid that execs systemd-socket-activate: sh's own
    cmd = ["sh", "-c", 'LISTEN_PID=$$ exec "$@"', "sh"] + prefix + [
           tool, "--fdname=web:web:admin"] + setenv + [
           service, "--fdname", "web", "--exit-after", str(N)]
    p = subprocess.Popen(cmd, env=env, preexec_fn=to_3, close_fds=False,
                         stdout=subprocess.PIPE, text=True,
                         stdin=subprocess.DEVNULL)
    for s in socks:
        s.close()
    for fd in high:
        os.close(fd)

    failures = []

    def expect(cond, what):
        if not cond:
            failures.append(f"{label}: {what}")
            print(f"FAIL: {label}: {what}")

    def client():
        with socket.create_connection(("127.0.0.1", port),
                                      timeout=TIMEOUT) as c:
            return c.recv(8) == b"ok\n"

    deadline = time.monotonic() + TIMEOUT
    out = []
    try:
        # Like systemd, it starts the service on the first connection,
        # which waits in the socket's queue meanwhile and must be served.
        served = int(client())
        lines = reader(p)
        while True:
            line = readline(lines, deadline)
            if not line:
                break
            out.append(line)
            sys.stdout.write(line)
            if line.strip() == "ready":
                break
        head = "".join(out)
        expect("ready" in head, "the service did not get ready")
        expect(f"2 workers on 127.0.0.1 port {port}, sockets passed in "
               "LISTEN_FDS" in head,
               "the group is not the two 'web' sockets")
        path = re.search(r"^path: (\S+)", head, re.M)
        path = path.group(1) if path else None
        for _ in range(N - 1 if "ready" in head else 0):
            served += client()
        expect(served == N, f"{served} of {N} connections answered")
        p.wait(timeout=TIMEOUT)
        rest = ""
        while (line := readline(lines, deadline)):
            rest += line
        sys.stdout.write(rest)
        expect(p.returncode == 0, f"the service exited {p.returncode}")
        rows = re.findall(r"^worker \d+ accepted (\d+) \(steered (\d+)", rest,
                          re.M)
        counts = [int(a) for a, _ in rows]
        steered = [int(b) for _, b in rows]
        expect(sum(counts) == N and len(counts) == 2,
               f"workers accepted {counts}, want 2 workers, {N} in all")
        if path and path.startswith("bpf"):
            # The first connection came before the program was attached
            # (it started the service); the rest are steered in turn.
            expect(sorted(steered) == [(N - 1) // 2, N // 2],
                   f"round-robin over the passed sockets steered {steered}")
        if prefix:
            expect(path == "bpf+event",
                   f"path {path}: CAP_BPF as ambient capability must do")
        print(f"{label}: path {path}, accepted {counts}, steered {steered}")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return failures


def main():
    tool = shutil.which("systemd-socket-activate")
    if not tool:
        skip("systemd-socket-activate not installed (apt-get install systemd)")
    failures = scenario("as the caller", tool, SERVICE, [])
    # What deploy/systemd/evsteer-service.service gives the service: a
    # non-root user, CAP_BPF as ambient capability and the only one in the
    # bounding set, no_new_privs. The binary is staged where that user can
    # reach it (the build tree may be under /root).
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        if failures:  # a skip must not hide them
            print(f"socket-activation: {len(failures)} failed")
            sys.exit(1)
        skip("the unit's privileges need root and setpriv")
    top = tempfile.mkdtemp(prefix="evsteer-sa-", dir="/tmp")
    try:
        os.chmod(top, 0o755)
        staged = os.path.join(top, "evsteer-service")
        shutil.copy(SERVICE, staged)
        os.chmod(staged, 0o755)
        failures += scenario(
            "as the unit runs it: uid 65534, ambient CAP_BPF only", tool,
            staged, ["setpriv", "--reuid=65534", "--regid=65534",
                     "--clear-groups", "--inh-caps=-all,+bpf",
                     "--ambient-caps=-all,+bpf", "--bounding-set=-all,+bpf",
                     "--no-new-privs", "--"])
    finally:
        shutil.rmtree(top, ignore_errors=True)
    if failures:
        print(f"socket-activation: {len(failures)} failed")
        sys.exit(1)


main()
