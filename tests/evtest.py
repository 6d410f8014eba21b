# SPDX-License-Identifier: MIT
"""What the Python tests share: EVSTEER_TEST_REQUIRE, skipping, environments
for programs run under the preload, servers in the background, free ports."""
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

SKIP = 77  # meson's exit code for a skipped test
TIMEOUT = 60  # seconds, for anything that should take well under one


def required(feature):
    """Does EVSTEER_TEST_REQUIRE name this feature (or "all")?"""
    req = os.environ.get("EVSTEER_TEST_REQUIRE", "")
    return req == "all" or feature in req.split(",")


def skip(prog, feature, why):
    """Skip the whole test, or fail it when the feature is required."""
    if required(feature):
        print(f"{prog}: required (EVSTEER_TEST_REQUIRE) but: {why}")
        sys.exit(1)
    print(f"{prog}: skipped: {why}")
    sys.exit(SKIP)


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def asan_runtime(preload):
    """In a sanitizer build the preload needs libasan first in LD_PRELOAD."""
    with open(preload, "rb") as f:
        if b"libasan.so" not in f.read():
            return None
    cc = os.environ.get("CC", "cc")
    out = subprocess.run([cc, "-print-file-name=libasan.so"], capture_output=True,
                         text=True, timeout=TIMEOUT).stdout.strip()
    return os.path.realpath(out)


def base_env(foreign=False):
    env = dict(os.environ)
    for k in list(env):
        if k.startswith("EVSTEER_") and k != "EVSTEER_TEST_REQUIRE":
            del env[k]
    env.pop("LD_PRELOAD", None)
    if foreign:
        # leaks of Debian's programs are not ours
        env["ASAN_OPTIONS"] = "detect_leaks=0:abort_on_error=1"
    return env


def shim_env(preload, foreign=False):
    """The environment evsteer-run is started in (libasan first if needed)."""
    env = base_env(foreign)
    rt = asan_runtime(preload)
    if rt:
        env["LD_PRELOAD"] = rt
    return env


class Server:
    """A background process; stdout and stderr collected by threads."""

    def __init__(self, cmd, env, **popen):
        self.cmd = cmd
        self.p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True,
                                  start_new_session=True, **popen)
        self.out, self.err = [], []
        self.cv = threading.Condition()
        self.threads = [threading.Thread(target=self._pump, args=(s, buf), daemon=True)
                        for s, buf in ((self.p.stdout, self.out), (self.p.stderr, self.err))]
        for t in self.threads:
            t.start()

    def _pump(self, stream, buf):
        for line in stream:
            with self.cv:
                buf.append(line.rstrip("\n"))
                self.cv.notify_all()
        with self.cv:
            self.cv.notify_all()

    def wait_for(self, pattern, stream="out", timeout=TIMEOUT):
        """The first line matching pattern (a regex); fails on exit or time-out."""
        buf = self.out if stream == "out" else self.err
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.cv:
            while True:
                for l in buf:
                    m = rx.search(l)
                    if m:
                        return m
                left = deadline - time.monotonic()
                if self.p.poll() is not None and not any(t.is_alive() for t in self.threads):
                    raise AssertionError(f"{self.cmd[0]} exited ({self.p.returncode}) before "
                                         f"printing /{pattern}/:\n" + self.text())
                check(left > 0, f"no /{pattern}/ from {self.cmd} in {timeout} s:\n" + self.text())
                self.cv.wait(min(left, 0.5))

    def wait_count(self, pattern, n, timeout=TIMEOUT):
        """Wait for n lines (stdout and stderr) matching pattern; their matches."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.cv:
            while True:
                ms = [m for m in map(rx.search, self.out + self.err) if m]
                if len(ms) >= n:
                    return ms
                left = deadline - time.monotonic()
                check(left > 0 and self.p.poll() is None,
                      f"{len(ms)} of {n} lines /{pattern}/ from {self.cmd[0]}")
                self.cv.wait(min(left, 0.5))

    def stop(self, sig=signal.SIGTERM, timeout=TIMEOUT):
        if self.p.poll() is None:
            self.p.send_signal(sig)
        try:
            self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            raise AssertionError(f"{self.cmd[0]} did not stop on {sig!r}")
        for t in self.threads:
            t.join(TIMEOUT)
        return self.p.returncode

    def wait(self, timeout=TIMEOUT):
        try:
            rc = self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            raise AssertionError(f"{self.cmd[0]} did not exit:\n" + self.text())
        for t in self.threads:
            t.join(TIMEOUT)
        return rc

    def kill(self):
        if self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGKILL)
            self.p.wait()

    def text(self):
        return "stdout:\n" + "\n".join(self.out) + "\nstderr:\n" + "\n".join(self.err)


def free_port(udp_too=False):
    """A loopback port nothing listens on now (TCP, and UDP if asked)."""
    for _ in range(100):
        t = socket.socket()
        t.bind(("127.0.0.1", 0))
        port = t.getsockname()[1]
        ok = True
        if udp_too:
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                u.bind(("127.0.0.1", port))
            except OSError:
                ok = False
            u.close()
        t.close()
        if ok:
            return port
    raise AssertionError("no free port")


def with_port(start, udp_too=False, tries=5):
    """start(port) -> Server or None when the port was taken meanwhile."""
    for _ in range(tries):
        s = start(free_port(udp_too))
        if s:
            return s
    raise AssertionError("could not start the server on a free port")
