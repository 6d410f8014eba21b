#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""evsteer-stat (issue 22) on real processes: xproc_server members of one
group on port 0, looked at from outside.

  stat_test.py CASE --stat evsteer-stat --server xproc_server

  prefork  two processes x 2 workers, 200 connections: --json shows both
           members, every worker, counters that add up to what the clients
           saw (per process); a third process is shown within 1 s
  stall    a worker whose loop does not run, with a connection pending, is
           shown stalled within 100 ms; retire: a restart in progress
  users    uid 65534 sees nothing of root's group and is told why, and
           cannot set its policy; its own group (ambient CAP_BPF) it sees,
           and root sees both
  set      set PORT policy / weight: applied, shown, logged by the group
  prom     --prometheus: the text exposition format, names by convention
  old      a group served by an older evsteer (a stand-in speaking only
           proto 1, as 0.2.0 did) is listed as not readable, with why

Skips (77) only when BPF cannot be loaded: without it no group is shared.
"""
import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from evtest import Server, base_env, check, skip, TIMEOUT  # noqa: E402

PROG = "stat_test"


def stat(tool, *args, user=None, env=None, timeout=TIMEOUT):
    cmd = [tool, *args]
    if user is not None:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"] + cmd
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env=env or base_env())


def look(tool, **kw):
    r = stat(tool, "--json", "--interval", "0", **kw)
    check(r.returncode == 0, f"evsteer-stat --json: {r.returncode}\n{r.stderr}")
    return json.loads(r.stdout), r


def group_of(doc, port):
    gs = [g for g in doc["groups"] if g["address"] == f"127.0.0.1:{port}"]
    return gs[0] if gs else None


def server(args, env=None, user=None, caps=False):
    cmd = [args.server, *user_args(args)]
    env = env or base_env()
    env["EVSTEER_LOG"] = "info"
    pre = []
    if user is not None:
        pre = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"]
        if caps:
            pre += ["--inh-caps=+bpf", "--ambient-caps=+bpf"]
    return Server(pre + cmd, env, stdin=subprocess.PIPE)


def user_args(args):
    return args.extra


def start(args, port=0, workers=2, extra=(), env=None, user=None, caps=False):
    args.extra = ["--port", str(port), "--workers", str(workers), *extra]
    s = server(args, env=env, user=user, caps=caps)
    m = s.wait_for(r"^ready (\d+) .*")
    return s, int(m.group(1)), m.group(0)


def leave(s):
    try:
        s.p.stdin.close()
    except OSError:
        pass
    s.wait()


def need_bpf(path_line):
    if "bpf" not in path_line:
        skip(PROG, "bpf", f"no BPF steering here ({path_line}): no group is shared")


def connect(port):
    """One connection; the pid line the server answers with."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as c:
        return int(c.makefile().readline())


def served(g):
    """Connections the group's callbacks got: each worker's own accepts,
    plus what it took from stuck siblings (counted apart, as stolen)."""
    return sum(w["accepted"] + w["stolen"] for w in g["workers"])


def until(what, fn, timeout=TIMEOUT, every=0.005):
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        check(time.monotonic() < deadline, f"no {what} in {timeout} s")
        time.sleep(every)


def case_prefork(args):
    a, port, line = start(args, workers=2)
    need_bpf(line)
    b, _, _ = start(args, port=port, workers=2)
    try:
        seen = {}
        for _ in range(200):
            pid = connect(port)
            seen[pid] = seen.get(pid, 0) + 1
        # a worker counts a connection when its callback returns, which
        # may be just after the client read the answer: wait for the count
        def counted():
            doc, _ = look(args.stat)
            g = group_of(doc, port)
            check(g, f"group 127.0.0.1:{port} not listed:\n{doc}")
            return g if served(g) >= 200 else None
        g = until("200 accepted", counted, timeout=10)
        check(g["path"] == "bpf" and g["policy"] == "least-pending", g)
        pids = sorted(m["pid"] for m in g["members"])
        check(pids == sorted([a.p.pid, b.p.pid]), f"members {pids}")
        check(len(g["workers"]) == 4, f"{len(g['workers'])} workers")
        by_pid = {}
        for w in g["workers"]:
            by_pid[w["pid"]] = by_pid.get(w["pid"], 0) + w["accepted"] + w["stolen"]
            check(w["live"] and w["state"] in ("ok", "held"), w)
            check(w["engine"] in ("event", "uring", "uring-direct"), w)
            check(w["tid"] > 0 or w["accepted"] == 0, f"no thread id: {w}")
            check(w["pending"] == 0, w)
        check(by_pid == seen, f"accepted per process {by_pid}, clients saw {seen}")
        # accepted/s over a window with traffic
        r = subprocess.Popen([args.stat, "--json", "--interval", "0.5"],
                             stdout=subprocess.PIPE, text=True, env=base_env())
        t0 = time.monotonic()
        while time.monotonic() - t0 < 0.6:
            connect(port)
        out, _ = r.communicate(timeout=TIMEOUT)
        g = group_of(json.loads(out), port)
        rate = sum(w["accepted_per_s"] or 0 for w in g["workers"])
        check(rate > 0, f"accepted/s {rate}")
        # a new member is shown within 1 s of being ready
        c, _, _ = start(args, port=port, workers=1)
        t0 = time.monotonic()
        until("third member", lambda: len(group_of(look(args.stat)[0], port)["members"]) == 3,
              timeout=5)
        dt = time.monotonic() - t0
        check(dt < 1.0, f"new member shown after {dt:.3f} s")
        print(f"prefork: 2 members x 2 workers, 200 connections {seen}; "
              f"{rate:.0f} accepted/s; a new member shown after {dt * 1000:.0f} ms")
        leave(c)
    finally:
        leave(a)
        leave(b)


def unfreeze(s):
    s.p.stdin.write("unfreeze\n")
    s.p.stdin.flush()
    s.wait_for(r"^unfrozen")


class Stream:
    """evsteer-stat --json --watch INTERVAL PORT: one document a line, each
    stamped with the monotonic time it arrived."""

    def __init__(self, tool, port, interval="0.01"):
        import threading
        self.p = subprocess.Popen([tool, "--json", "--watch", interval, str(port)],
                                  stdout=subprocess.PIPE, text=True, env=base_env())
        self.docs = []
        self.cv = threading.Condition()
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()

    def _read(self):
        for line in self.p.stdout:
            d = json.loads(line)
            with self.cv:
                self.docs.append((time.monotonic(), d))
                self.cv.notify_all()

    def first(self, what, pred, since, timeout=5):
        """The arrival time of the first document after `since` where pred."""
        deadline = time.monotonic() + timeout
        with self.cv:
            while True:
                for t, d in self.docs:
                    if t >= since and pred(d):
                        return t
                left = deadline - time.monotonic()
                check(left > 0 and self.p.poll() is None, f"no {what} in {timeout} s")
                self.cv.wait(left)

    def close(self):
        self.p.terminate()
        self.p.wait(TIMEOUT)


def case_stall(args):
    # a worker whose loop does not run (--frozen): what the program steers
    # to it stays pending and its heartbeat stops. Each try a fresh group
    # and the time from the client's connect to the first --watch frame
    # (every 10 ms) that shows the worker stalled.
    worst = 0.0
    for _ in range(3):
        a, port, line = start(args, workers=1, extra=["--frozen"])
        frozen = True
        need_bpf(line)
        w = Stream(args.stat, port)
        try:
            def one(d):
                g = group_of(d, port)
                return g["workers"][0] if g and g["workers"] else None
            w.first("the group", lambda d: one(d) and not one(d)["stalled"], 0)
            t0 = time.monotonic()
            c = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
            t1 = w.first("stalled worker", lambda d: one(d) and one(d)["stalled"]
                         and one(d)["state"] == "STALLED" and one(d)["pending"] == 1, t0)
            worst = max(worst, t1 - t0)
            # and a fresh run shows it too
            r = stat(args.stat, "--interval", "0", str(port))
            check(re.search(r"STALLED", r.stdout), r.stdout)
            unfreeze(a)
            frozen = False
            check(c.makefile().readline().strip() == str(a.p.pid), "answer")
            c.close()
            t2 = time.monotonic()
            w.first("recovery", lambda d: one(d) and not one(d)["stalled"], t2)
        finally:
            w.close()
            if frozen and a.p.poll() is None:
                unfreeze(a)
            leave(a)
    check(worst < 0.1, f"a stalled worker shown after {worst * 1000:.0f} ms")
    # a restart in progress: the group retired, its workers draining
    a, port, line = start(args, workers=2)
    try:
        a.p.stdin.write("retire\n")
        a.p.stdin.flush()
        a.wait_for(r"^retired 0")
        g = group_of(look(args.stat)[0], port)
        check(all(w["retired"] and not w["live"] and w["state"] == "retired"
                  for w in g["workers"]), g)
        r = stat(args.stat, "--interval", "0")
        check("RESTART" in r.stdout, r.stdout)
    finally:
        leave(a)
    print(f"stall: a stalled worker shown after at most {worst * 1000:.0f} ms "
          "(3 groups, --watch 0.01); a retired group shown as a restart")


def stage(top, args):
    """Copies another user can run (the build may be in a private dir)."""
    d = os.path.join(top, "stage")
    os.mkdir(d)
    os.chmod(top, 0o755)
    os.chmod(d, 0o755)
    out = {}
    for k in ("stat", "server"):
        dst = os.path.join(d, os.path.basename(getattr(args, k)))
        shutil.copy(getattr(args, k), dst)
        os.chmod(dst, 0o755)
        out[k] = dst
    lib = os.path.realpath(args.lib)
    shutil.copy(lib, os.path.join(d, "libevsteer.so.0"))
    os.chmod(os.path.join(d, "libevsteer.so.0"), 0o755)
    env = base_env()
    env["LD_LIBRARY_PATH"] = d
    return out, env


def case_users(args):
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        skip(PROG, "programs", "the second user needs root and setpriv")
    a, port, line = start(args, workers=2)
    need_bpf(line)
    with tempfile.TemporaryDirectory() as top:
        st, env = stage(top, args)
        other = None
        try:
            # uid 65534 sees nothing of root's group, and is told why
            r = stat(st["stat"], "--json", "--interval", "0", user=65534, env=env)
            check(r.returncode == 0, r.stderr)
            doc = json.loads(r.stdout)
            check(group_of(doc, port) is None, f"uid 65534 sees root's group: {doc}")
            check(any(n["uid"] == 0 for n in doc["not_shown"]), doc)
            check(str(port) not in r.stdout, "the address of another user's group")
            check("another user" in r.stderr, r.stderr)
            r = stat(st["stat"], "--interval", "0", user=65534, env=env)
            check("not shown: served by another user" in r.stdout, r.stdout)
            # and may not change it
            r = stat(st["stat"], "set", str(port), "policy", "hash", user=65534, env=env)
            check(r.returncode == 1 and "another user" in r.stderr, r.stderr)
            g = group_of(look(args.stat)[0], port)
            check(g["policy"] == "least-pending", g)
            # its own group it sees (it loads with an ambient CAP_BPF)
            args.server, saved = st["server"], args.server
            try:
                other, oport, oline = start(args, workers=1, env=env, user=65534,
                                            caps=True)
            finally:
                args.server = saved
            if "bpf" in oline:
                r = stat(st["stat"], "--json", "--interval", "0", user=65534, env=env)
                doc = json.loads(r.stdout)
                g = group_of(doc, oport)
                check(g and g["uid"] == 65534 and g["workers"][0]["pid"] == other.p.pid,
                      f"uid 65534 does not see its own group: {doc}")
                # root sees all
                doc, _ = look(args.stat)
                check(group_of(doc, oport) and group_of(doc, port), "root sees both")
                own = "its own group seen by it and by root"
            else:
                own = f"(its own group: no BPF for uid 65534 here: {oline})"
            print(f"users: uid 65534 is told root's group is not shown; {own}")
        finally:
            if other:
                leave(other)
            leave(a)


def case_set(args):
    a, port, line = start(args, workers=2)
    need_bpf(line)
    try:
        r = stat(args.stat, "set", str(port), "policy", "round-robin")
        check(r.returncode == 0, r.stderr)
        a.wait_for(r"policy least-pending -> round-robin, set by pid \d+ \(uid 0\) "
                   r"with evsteer-stat", stream="err")
        g = group_of(look(args.stat)[0], port)
        check(g["policy"] == "round-robin", g)
        slot = g["workers"][1]["slot"]
        r = stat(args.stat, "set", f"127.0.0.1:{port}", "weight", str(slot), "4")
        check(r.returncode == 0, r.stderr)
        a.wait_for(rf"slot {slot} \(pid {a.p.pid}\) weight 1 -> 4", stream="err")
        g = group_of(look(args.stat)[0], port)
        check(g["workers"][1]["weight"] == 4, g)
        # steering follows: round-robin over weights 1 and 4
        for _ in range(100):
            connect(port)
        g = until("100 served", lambda: (lambda g: g if served(g) == 100 else None)(
            group_of(look(args.stat)[0], port)))
        seen = [w["accepted"] + w["stolen"] for w in g["workers"]]
        check(seen[1] > seen[0], f"weight 4 got {seen[1]}, weight 1 got {seen[0]}")
        for bad in (["policy", "fastest"], ["weight", "63", "2"], ["weight", "0", "99"]):
            r = stat(args.stat, "set", str(port), *bad)
            check(r.returncode != 0, f"set {bad} succeeded")
        print(f"set: policy and weight applied and logged; 100 connections {seen}")
    finally:
        leave(a)


PROM_LINE = re.compile(r'^[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? (\d+(\.\d+)?|NaN)$')


def case_prom(args):
    a, port, line = start(args, workers=2)
    need_bpf(line)
    try:
        for _ in range(20):
            connect(port)
        g = until("20 served", lambda: (lambda g: g if served(g) == 20 else None)(
            group_of(look(args.stat)[0], port)))
        stolen = sum(w["stolen"] for w in g["workers"])
        r = stat(args.stat, "--prometheus")
        check(r.returncode == 0, r.stderr)
        types = {}
        for l in r.stdout.splitlines():
            if l.startswith("# TYPE "):
                _, _, name, kind = l.split()
                types[name] = kind
                check(kind != "counter" or name.endswith("_total"), l)
            elif l.startswith("# HELP") or not l:
                continue
            else:
                check(PROM_LINE.match(l), f"not exposition format: {l!r}")
                name = l.split("{")[0].split(" ")[0]
                base = re.sub(r"_(bucket|sum|count)$", "", name)
                check(name in types or types.get(base) == "histogram",
                      f"no TYPE for {l}")
        mine = [l for l in r.stdout.splitlines()
                if l.startswith("evsteer_connections_accepted_total{")
                and f'address="127.0.0.1:{port}"' in l]
        check(len(mine) == 2, mine)
        total = sum(int(l.split()[-1]) for l in mine)
        check(total + stolen == 20, f"accepted_total {total}, stolen {stolen}")
        check(f'pid="{a.p.pid}"' in mine[0], mine[0])
        # the queue-wait histogram: cumulative buckets ending in +Inf,
        # which equals _count; every connection timed (none queued behind
        # 32 others), whoever took it: 20 in all
        check(types.get("evsteer_queue_wait_seconds") == "histogram", types)
        count = 0
        for w in g["workers"]:
            sel = f'address="127.0.0.1:{port}",pid="{w["pid"]}",slot="{w["slot"]}"'
            b = [int(l.split()[-1]) for l in r.stdout.splitlines()
                 if l.startswith("evsteer_queue_wait_seconds_bucket{" + sel)]
            c = [int(l.split()[-1]) for l in r.stdout.splitlines()
                 if l.startswith("evsteer_queue_wait_seconds_count{" + sel)]
            check(len(b) == 24 and b == sorted(b) and c == [b[-1]], (b, c))
            check(w["queue_wait"]["count"] == c[0] and
                  sum(w["queue_wait"]["counts"]) == c[0], (w, c))
            count += c[0] + w["queue_wait"]["untimed"]
        check(count == 20, f"queue waits counted {count} of 20")
        print(f"prom: {len(types)} metrics, accepted_total {total}")
    finally:
        leave(a)


def case_old(args):
    """The rendezvous of 0.2.0: proto 1 only; anything else is answered
    with a join message carrying EPROTO and no descriptors."""
    import struct
    magic, eproto = 0x56525645, 71
    port = 1 + os.getpid() % 60000
    name = f"\0evsteer/0/127.0.0.9:{port}"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    srv.bind(name)
    srv.listen(4)
    answered = []

    def serve():
        for _ in range(2):
            c, _ = srv.accept()
            m = c.recv(20)  # the old server's buffer: longer requests truncate
            _, proto, layout, _, _ = struct.unpack("<IIIiI", m)
            answered.append(proto)
            c.send(struct.pack("<IIIiI", magic, 1, layout, 0 if proto == 1 else eproto,
                               os.getpid()))
            c.close()
    import threading
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        doc, _ = look(args.stat)
        nr = [n for n in doc["not_readable"] if n["address"] == f"127.0.0.9:{port}"]
        check(len(nr) == 1 and "another evsteer version" in nr[0]["reason"], doc)
        check(all(g["address"] != f"127.0.0.9:{port}" for g in doc["groups"]), doc)
        r = stat(args.stat, "set", f"127.0.0.9:{port}", "policy", "hash")
        check(r.returncode == 1 and "another evsteer version" in r.stderr, r.stderr)
        t.join(TIMEOUT)
        check(answered == [2, 2], f"requests seen by the old server: {answered}")
        print("old: a 0.2.0 rendezvous answers proto 2 with EPROTO; listed as not "
              "readable, set refused")
    finally:
        srv.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("case")
    ap.add_argument("--stat", required=True)
    ap.add_argument("--server", required=True)
    ap.add_argument("--lib", required=True)
    args = ap.parse_args()
    {"prefork": case_prefork, "stall": case_stall, "users": case_users,
     "set": case_set, "prom": case_prom, "old": case_old}[args.case](args)


if __name__ == "__main__":
    main()
