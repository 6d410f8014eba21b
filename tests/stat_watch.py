#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""evsteer-stat --watch as a person sees it (issue 22): run in a tmux pane
of 132x40 on a private tmux server, read the screen with capture-pane.

  stat_watch.py --stat evsteer-stat --server xproc_server

A group of two processes appears with its address and column headings;
connections made meanwhile show up in ACCEPTED on a later frame; a stalled
worker (its loop frozen, a connection pending) shows STALLED; 'q' quits
and gives the terminal back (the alternate screen is left). Without tmux:
a skip (EVSTEER_TEST_REQUIRE=programs or all makes it a failure).
"""
import argparse
import os
import shutil
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from evtest import Server, base_env, check, skip, TIMEOUT  # noqa: E402

PROG = "stat_watch"


class Tmux:
    def __init__(self):
        self.sock = f"evsteer-stat-test-{os.getpid()}"
        self.env = base_env()
        self.env.pop("TMUX", None)
        self.env["TERM"] = "xterm-256color"

    def __call__(self, *args, check_rc=True):
        r = subprocess.run(["tmux", "-L", self.sock, "-f", "/dev/null", *args],
                           capture_output=True, text=True, timeout=TIMEOUT,
                           env=self.env)
        if check_rc:
            check(r.returncode == 0, f"tmux {args}: {r.stderr}")
        return r

    def screen(self):
        return self("capture-pane", "-p", "-t", "w").stdout

    def wait_screen(self, what, pred, timeout=10):
        deadline = time.monotonic() + timeout
        while True:
            s = self.screen()
            if pred(s):
                return s
            check(time.monotonic() < deadline,
                  f"no {what} on the screen in {timeout} s:\n{s}")
            time.sleep(0.05)

    def alive(self):
        return self("has-session", "-t", "w", check_rc=False).returncode == 0


def start(server, port, workers, extra=()):
    env = base_env()
    s = Server([server, "--port", str(port), "--workers", str(workers), *extra],
               env, stdin=subprocess.PIPE)
    m = s.wait_for(r"^ready (\d+) .*")
    return s, int(m.group(1)), m.group(0)


def leave(s):
    try:
        s.p.stdin.write("unfreeze\n")
        s.p.stdin.close()
    except OSError:
        pass
    s.wait()


def connect(port):
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as c:
        return c.makefile().readline()


def served(screen, pid):
    """ACCEPTED + STOLEN of pid's rows (what their callbacks got)."""
    out = []
    for l in screen.splitlines():
        f = l.split()
        # PID TID SLOT ENGINE STATE W ACCEPTED ACC/S PEND STALLS STOLEN ...
        if len(f) >= 14 and f[0] == str(pid) and f[6].isdigit() and f[10].isdigit():
            out.append(int(f[6]) + int(f[10]))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--stat", required=True)
    ap.add_argument("--server", required=True)
    args = ap.parse_args()
    if not shutil.which("tmux"):
        skip(PROG, "programs", "no tmux (apt-get install tmux)")
    a, port, line = start(args.server, 0, 2)
    if "bpf" not in line:
        leave(a)
        skip(PROG, "bpf", f"no BPF steering here ({line})")
    b, _, _ = start(args.server, port, 2)
    frozen = None
    t = Tmux()
    try:
        t("new-session", "-d", "-s", "w", "-x", "132", "-y", "40",
          f"{args.stat} --watch 0.2 --color")
        addr = f"127.0.0.1:{port}"
        # (a capture may fall in the middle of a redraw: wait for a whole one)
        def rows(s):
            return [l for l in s.splitlines()
                    if l.split()[:1] in ([str(a.p.pid)], [str(b.p.pid)])]
        s = t.wait_screen("the group and its 4 workers",
                          lambda s: addr in s and len(rows(s)) == 4)
        check("ACCEPTED" in s and not any("STALLED" in l for l in rows(s)),
              f"headings, no stall yet:\n{s}")
        check(s.startswith("evsteer-stat "), f"header line:\n{s}")
        for _ in range(40):
            connect(port)
        s = t.wait_screen("40 served", lambda s: sum(served(s, a.p.pid)) +
                          sum(served(s, b.p.pid)) == 40)
        # a third process, frozen: a connection steered to it waits
        frozen, _, _ = start(args.server, port, 1, ["--frozen"])
        t.wait_screen("the third member", lambda s: str(frozen.p.pid) in s)
        c = []
        deadline = time.monotonic() + 10
        while True:
            c.append(socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT))
            scr = t.screen()
            mine = [l for l in scr.splitlines() if l.split()[:1] == [str(frozen.p.pid)]]
            if mine and "STALLED" in mine[0]:
                break
            check(time.monotonic() < deadline, f"no STALLED row:\n{scr}")
            time.sleep(0.1)
        t("send-keys", "-t", "w", "q")
        deadline = time.monotonic() + 10
        while t.alive():
            check(time.monotonic() < deadline, "q did not quit")
            time.sleep(0.05)
        print(f"watch: the group, 40 connections and a STALLED worker shown; "
              f"q quits\n{scr.rstrip()}")
        leave(frozen)
        frozen = None
        for x in c:
            x.close()
    finally:
        t("kill-server", check_rc=False)
        if frozen:
            leave(frozen)
        leave(a)
        leave(b)


if __name__ == "__main__":
    main()
