# SPDX-License-Identifier: MIT
"""A runc bundle without an image, shared by tests/container.py (the demo
under capabilities and seccomp profiles) and bench/in_runc.py (the bench
server as Docker starts a container): an empty rootfs whose /usr and /etc
are the host's, read-only, plus the bind mounts the caller names; the
host's network namespace (as `--network host`). Docker-format seccomp
profiles are resolved for the container's capabilities with profile.py,
as dockerd and podman do (runc reads only the OCI form)."""
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def rootfs(top, dirs=()):
    """top/rootfs: the mount points, the merged-/usr links of Debian 12,
    and `dirs` (paths inside the rootfs, made with their parents)."""
    r = os.path.join(top, "rootfs")
    for sub in ("", "usr", "etc", "proc", "dev", "sys", "tmp") + tuple(dirs):
        os.makedirs(os.path.join(r, sub.lstrip("/")), exist_ok=True)
    for link in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        if os.path.islink("/" + link):
            os.symlink(os.readlink("/" + link), os.path.join(r, link))
    os.chmod(top, 0o755)
    return r


def seccomp(profile, caps, deny=()):
    """The OCI form of a Docker-format profile for these capabilities,
    with the named system calls refused on top."""
    out = subprocess.run(
        [sys.executable, os.path.join(HERE, "seccomp", "profile.py"),
         "resolve", profile, "--caps", ",".join(caps), "--deny",
         ",".join(deny)],
        check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def config(args, env, caps, uid, root, binds, nofile, no_new_privs,
           hostname, sec=None, ambient=True):
    """config.json's content: `binds` is [(destination, source)], mounted
    read-only; `sec` an OCI seccomp section, or None for none."""
    ro = ["rbind", "ro", "nosuid", "nodev"]
    kinds = ["bounding", "effective", "permitted", "inheritable"]
    if ambient:
        kinds.append("ambient")
    cfg = {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": uid, "gid": uid},
            "args": list(args),
            "env": list(env),
            "cwd": "/",
            "capabilities": {k: list(caps) for k in kinds},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": nofile,
                         "soft": nofile}],
            "noNewPrivileges": no_new_privs,
        },
        "root": {"path": root, "readonly": True},
        "hostname": hostname,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "nodev", "mode=1777"]},
            {"destination": "/usr", "type": "bind", "source": "/usr",
             "options": ro},
            {"destination": "/etc", "type": "bind", "source": "/etc",
             "options": ro},
        ] + [{"destination": d, "type": "bind", "source": s, "options": ro}
             for d, s in binds],
        "linux": {
            # no network namespace: the host's, as in `--network host`
            "namespaces": [{"type": t} for t in
                           ("pid", "ipc", "uts", "mount")],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list",
                            "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq",
                              "/proc/sys", "/proc/sysrq-trigger"],
        },
    }
    if sec is not None:
        cfg["linux"]["seccomp"] = sec
    return cfg
