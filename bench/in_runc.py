#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Run one command in a runc container as `docker run --network host` would
by default: Docker's default seccomp profile and capability set (no
CAP_BPF, no CAP_SYS_ADMIN), root in the container, the host's network.
For the bench (issue 21): `EVSTEER_BENCH_WRAP="python3 bench/in_runc.py --"`
makes evsteer-bench start its servers this way.

  in_runc.py [--no-seccomp] -- COMMAND [ARG...]

No image: an empty rootfs with the host's /usr and /etc read-only, the
command's build tree (the directory two levels above it, so that the
binaries' $ORIGIN/../src finds libevsteer) mounted read-only at the same
path. stdin/stdout/stderr pass through; SIGTERM, SIGINT, SIGHUP, SIGUSR1
and SIGUSR2 are forwarded to the container (runc run passes them on), and
the exit status is the command's.
"""
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(HERE) if os.path.isdir(
    os.path.join(os.path.dirname(HERE), "deploy")) else None
# Docker's default capabilities (moby oci/caps/defaults.go)
DOCKER_CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER",
               "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID",
               "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
               "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"]


def source_dir(cmd0):
    """deploy/seccomp lives in the source tree: beside this file when run
    from it, else named by the build's meson-info."""
    for d in (SRC, os.environ.get("EVSTEER_SRC")):
        if d and os.path.isdir(os.path.join(d, "deploy", "seccomp")):
            return d
    info = os.path.join(os.path.dirname(os.path.dirname(cmd0)), "meson-info",
                        "meson-info.json")
    with open(info) as f:
        return json.load(f)["directories"]["source"]


def main():
    argv = sys.argv[1:]
    use_seccomp = True
    if argv and argv[0] == "--no-seccomp":
        use_seccomp, argv = False, argv[1:]
    if not argv or argv[0] != "--" or len(argv) < 2:
        sys.exit(__doc__)
    cmd = [os.path.abspath(argv[1])] + argv[2:]
    if os.geteuid() != 0 or not shutil.which("runc"):
        sys.exit("in_runc.py: needs root and runc (apt-get install runc)")
    src = source_dir(cmd[0])
    tree = os.path.dirname(os.path.dirname(cmd[0]))
    top = tempfile.mkdtemp(prefix="evsteer-bench-runc-", dir="/tmp")
    sys.path.insert(0, os.path.join(src, "deploy"))
    import runc_bundle  # deploy/runc_bundle.py: shared with the tests
    root = runc_bundle.rootfs(top, dirs=(tree,))
    env = ["PATH=/usr/bin:/bin"] + [f"{k}={v}" for k, v in os.environ.items()
                                    if k.startswith("EVSTEER_")
                                    and k != "EVSTEER_BENCH_WRAP"]
    sec = None
    if use_seccomp:
        sec = runc_bundle.seccomp(
            os.path.join(src, "deploy", "seccomp", "docker-default.json"),
            DOCKER_CAPS)
    cfg = runc_bundle.config(
        cmd, env, DOCKER_CAPS, 0, root, [(tree, tree)],
        nofile=resource.getrlimit(resource.RLIMIT_NOFILE)[1],
        no_new_privs=False, hostname="evsteer-bench", sec=sec,
        ambient=False)
    with open(os.path.join(top, "config.json"), "w") as f:
        json.dump(cfg, f)
    cid = f"evsteer-bench-{os.getpid()}"
    state = os.path.join(top, "state")
    p = subprocess.Popen(["runc", "--root", state, "run", "--bundle", top,
                          cid])
    # what the harness sends (leave, drain one worker, exhaust descriptors)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1,
                signal.SIGUSR2):
        signal.signal(sig, lambda s, f: p.send_signal(s))
    rc = p.wait()
    subprocess.run(["runc", "--root", state, "delete", "--force", cid],
                   capture_output=True)
    shutil.rmtree(top, ignore_errors=True)
    sys.exit(rc if rc >= 0 else 128 - rc)


if __name__ == "__main__":
    main()
