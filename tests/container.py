#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The demo in real runc containers: capabilities and seccomp profiles as a
container runtime applies them, and the path and reasons evsteer reports.

  container.py DEMO LIBEVSTEER SOURCE_DIR

No image: the rootfs is empty directories with the host's /usr and /etc
bind-mounted read-only, the demo and libevsteer staged into a fresh
world-readable directory (the build tree may sit under a 0700 directory
such as /root, which a non-root container user cannot enter) and mounted
read-only at /opt/evsteer; the host's network namespace. Docker-format
profiles are resolved for each container's capabilities with
deploy/seccomp/profile.py, as dockerd and podman do (runc reads only the
OCI form).

Exit 77 (skip) without root or runc, unless EVSTEER_TEST_REQUIRE is "all"
or names "container": then that is a failure.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import evtest

DEMO, LIB, SRC = sys.argv[1:4]
sys.path.insert(0, os.path.join(SRC, "deploy"))
import runc_bundle  # noqa: E402  (deploy/runc_bundle.py: shared with the bench)

OURS = os.path.join(SRC, "deploy", "seccomp", "evsteer.json")
DOCKER = os.path.join(SRC, "deploy", "seccomp", "docker-default.json")
TIMEOUT = 120  # seconds per container; a loaded 2-core box is slow


def skip(why):
    evtest.skip("container", "container", why)


def stage(top):
    """The demo and the library, in the build's layout ($ORIGIN/../src),
    readable by any uid."""
    d = os.path.join(top, "stage")
    for sub in ("", "examples", "src"):
        os.mkdir(os.path.join(d, sub))
        os.chmod(os.path.join(d, sub), 0o755)
    shutil.copy(DEMO, os.path.join(d, "examples", "evsteer-demo"))
    # under its soname (libevsteer.so.0), which is what the demo asks for
    base = os.path.basename(LIB)
    soname = base[:base.index(".so.") + 4] + base.split(".so.")[1].split(".")[0]
    shutil.copy(os.path.realpath(LIB), os.path.join(d, "src", soname))
    for f in ("examples/evsteer-demo", "src/" + soname):
        os.chmod(os.path.join(d, f), 0o755)
    return d


def rootfs(top):
    return runc_bundle.rootfs(top, dirs=("opt/evsteer",))


def seccomp(profile, caps, deny=()):
    return runc_bundle.seccomp(profile, caps, deny)


def config(stagedir, caps, uid, sec, extra):
    env = ["PATH=/usr/bin:/bin", "LD_LIBRARY_PATH=/opt/evsteer/src"] + extra
    for k in ("ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS"):
        if k in os.environ:
            env.append(f"{k}={os.environ[k]}")
    return runc_bundle.config(
        ["/opt/evsteer/examples/evsteer-demo", "--connections", "200"], env,
        caps, uid, "rootfs", [("/opt/evsteer", stagedir)], nofile=1024,
        no_new_privs=True, hostname="evsteer-test", sec=sec)


def workers(out):
    """connections each worker accepted, from the demo's report"""
    n = []
    for line in out.splitlines():
        s = line.strip().split()
        if len(s) >= 4 and s[0] == "worker" and s[2] == "accepted":
            n.append(int(s[3]))
    return n


def parse(out):
    """path name, steering reason, engine reason from the demo's report"""
    path, steer_why, engine_why, last = None, "", "", None
    for line in out.splitlines():
        s = line.strip()
        if s.startswith("path: "):
            path = s[6:]
        elif s.startswith("steering:"):
            last = "steer"
        elif s.startswith("accept engine:"):
            last = "engine"
        elif s.startswith("why: "):
            if last == "steer":
                steer_why = s[5:]
            elif last == "engine":
                engine_why = s[5:]
    return path, steer_why, engine_why


def run(top, n, name, caps, uid, sec, extra):
    b = os.path.join(top, f"bundle{n}")
    os.mkdir(b)
    cfg = config(os.path.join(top, "stage"), caps, uid, sec, extra)
    cfg["root"]["path"] = os.path.join(top, "rootfs")  # one for all
    with open(os.path.join(b, "config.json"), "w") as f:
        json.dump(cfg, f)
    cid = f"evsteer-test-{os.getpid()}-{n}"
    state = os.path.join(top, "state")
    try:
        p = subprocess.run(["runc", "--root", state, "run", "--bundle", b,
                            cid], capture_output=True, text=True,
                           timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    finally:
        subprocess.run(["runc", "--root", state, "delete", "--force", cid],
                       capture_output=True)
    print(f"--- {name}: exit {p.returncode}")
    sys.stdout.write(p.stdout)
    sys.stdout.write(p.stderr)
    return p.returncode, parse(p.stdout), p.stdout


def main():
    if os.geteuid() != 0:
        skip("needs root to run runc")
    if not shutil.which("runc"):
        skip("runc not installed (apt-get install runc)")
    # The real thing must work here first, or the expectations mean nothing.
    host = subprocess.run([DEMO, "--connections", "50"], capture_output=True,
                          text=True, timeout=TIMEOUT,
                          env={**os.environ, "EVSTEER_ACCEPT": "uring"})
    if parse(host.stdout)[0] != "bpf+uring":
        skip(f"the demo does not get bpf+uring on this host:\n{host.stdout}")

    failures = []

    def expect(cond, what):
        if not cond:
            failures.append(what)
            print(f"FAIL: {what}")

    top = tempfile.mkdtemp(prefix="evsteer-runc-", dir="/tmp")
    try:
        stage(top)
        rootfs(top)
        os.mkdir(os.path.join(top, "state"))
        bpf = ["CAP_BPF"]
        # the io_uring engine is asked for where the case is about it
        # (auto accepts with accept4(): listener.c, start_engine)
        uring = ["EVSTEER_ACCEPT=uring"]
        cases = [
            # (a) CAP_BPF only + our profile: BPF steering and, asked
            # for, io_uring
            ("a: CAP_BPF + evsteer.json", bpf, 0, seccomp(OURS, bpf), uring),
            # (a') the same as a non-root user: ambient capabilities
            ("a': uid 65534, ambient CAP_BPF + evsteer.json", bpf, 65534,
             seccomp(OURS, bpf), uring),
            # (A) the same, auto: the default path
            ("A: CAP_BPF + evsteer.json, auto", bpf, 0, seccomp(OURS, bpf),
             []),
            # (b) Docker 25+'s default profile refuses io_uring
            ("b: CAP_BPF + Docker's default", bpf, 0, seccomp(DOCKER, bpf),
             uring),
            # (c) no capabilities at all
            ("c: no capabilities + evsteer.json", [], 0, seccomp(OURS, []),
             []),
            ("c': no capabilities, no seccomp", [], 0, None, []),
            # (d) CAP_BPF held, bpf refused by the profile (podman's
            # default allows bpf only with CAP_SYS_ADMIN)
            ("d: CAP_BPF + a profile without bpf", bpf, 0,
             seccomp(OURS, bpf, deny=["bpf"]), []),
            # (e) what most containers get: Docker's default profile and
            # no CAP_BPF (issue 21): classic BPF steers
            ("e: no capabilities + Docker's default", [], 0,
             seccomp(DOCKER, []), []),
            ("e': uid 65534, no capabilities + Docker's default", [], 65534,
             seccomp(DOCKER, []), []),
        ]
        res, outs = {}, {}
        for n, (name, caps, uid, sec, extra) in enumerate(cases):
            rc, r, out = run(top, n, name, caps, uid, sec, extra)
            expect(rc == 0, f"{name}: the demo exited {rc}")
            res[name[:2].rstrip(":")] = r
            outs[name[:2].rstrip(":")] = workers(out)

        path, sw, ew = res["a"]
        expect(path == "bpf+uring", f"a: path {path}, want bpf+uring")
        path, sw, ew = res["a'"]
        expect(path == "bpf+uring", f"a': path {path}, want bpf+uring")
        path, sw, ew = res["A"]
        expect(path == "bpf+event", f"A: path {path}, want bpf+event")
        expect("auto mode accepts with accept4()" in ew,
               f"A: engine reason does not say why: {ew!r}")
        path, sw, ew = res["b"]
        expect(path == "bpf+event", f"b: path {path}, want bpf+event")
        expect("seccomp" in ew and "io_uring" in ew,
               f"b: engine reason does not name seccomp: {ew!r}")
        # eBPF refused: the next rung, a classic program (no capability)
        for k in ("c", "c'", "e", "e'"):
            path, sw, ew = res[k]
            expect(path == "cbpf+event", f"{k}: path {path}, want cbpf+event")
            expect("needs CAP_BPF" in sw,
                   f"{k}: steering reason does not name CAP_BPF: {sw!r}")
            expect("classic BPF program steers" in sw,
                   f"{k}: steering reason does not name classic BPF: {sw!r}")
        for k in ("e", "e'"):
            expect("seccomp" in res[k][1],
                   f"{k}: reason does not name the seccomp filter: {res[k][1]!r}")
            # the hash over both workers: each gets a fair part of 200
            n = outs[k]
            expect(len(n) == 2 and min(n) >= 50,
                   f"{k}: connections per worker {n}, want both >= 50")
        path, sw, ew = res["d"]
        expect(path == "cbpf+event", f"d: path {path}, want cbpf+event")
        expect("seccomp" in sw, f"d: reason does not name seccomp: {sw!r}")
        expect("needs CAP_BPF" not in sw and "lacks" not in sw,
               f"d: reason says CAP_BPF is missing: {sw!r}")
    finally:
        shutil.rmtree(top, ignore_errors=True)

    if failures:
        print(f"container: {len(failures)} failed")
        sys.exit(1)
    print(f"container: {len(cases)} containers, all as expected")


main()
