#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Seccomp profiles for evsteer, in Docker's JSON format.

  profile.py derive  [DOCKER_DEFAULT] [OUT]
      evsteer.json from Docker's default profile: the same rules plus
      io_uring_setup/enter/register (Docker 25+ dropped them). bpf is
      already allowed there for a container that has CAP_BPF.
  profile.py check   [DOCKER_DEFAULT] [EVSTEER_JSON]
      exit 1 unless EVSTEER_JSON is exactly what derive makes.
  profile.py resolve PROFILE --caps CAP_BPF,... [--deny SYSCALL,...]
                     [--arch amd64] [--kernel 6.18]
      the OCI runtime-spec "linux.seccomp" object for one container:
      Docker's includes/excludes (capabilities, architectures, minimum
      kernel) evaluated as dockerd, podman and containerd's CRI do, since
      runc and crun read only the OCI form. --deny drops syscalls from
      every allow rule (e.g. a profile that allows bpf only with
      CAP_SYS_ADMIN, as podman's does).
"""
import argparse
import copy
import json
import os
import platform
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
URING = ["io_uring_enter", "io_uring_register", "io_uring_setup"]
URING_COMMENT = ("evsteer: io_uring accept engine. Docker 25+ removed "
                 "io_uring from its default profile; evsteer falls back to "
                 "epoll without it.")

# Python's machine names to the names Docker's "arches" filters use
ARCH = {"x86_64": "amd64", "aarch64": "arm64", "i686": "x86", "i386": "x86",
        "armv7l": "arm", "s390x": "s390x", "ppc64le": "ppc64le",
        "mips64": "mips64", "riscv64": "riscv64"}
# ... and to the libseccomp names of archMap
SECCOMP_ARCH = {"amd64": "SCMP_ARCH_X86_64", "arm64": "SCMP_ARCH_AARCH64",
                "x86": "SCMP_ARCH_X86", "arm": "SCMP_ARCH_ARM",
                "s390x": "SCMP_ARCH_S390X", "ppc64le": "SCMP_ARCH_PPC64LE",
                "mips64": "SCMP_ARCH_MIPS64", "riscv64": "SCMP_ARCH_RISCV64"}


def load(path):
    with open(path) as f:
        return json.load(f)


def dump(obj):
    # Docker's own layout: tabs, one name per line
    return json.dumps(obj, indent="\t")  # (no final newline, as Docker's)


def derive(docker):
    prof = copy.deepcopy(docker)
    calls = prof["syscalls"]
    if any(set(URING) & set(c.get("names", [])) for c in calls):
        sys.exit("derive: the input already mentions io_uring")
    bpf_rule = [c for c in calls if "bpf" in c.get("names", [])
                and c["action"] == "SCMP_ACT_ALLOW"
                and c.get("includes", {}).get("caps") == ["CAP_BPF"]]
    if not bpf_rule:
        sys.exit("derive: expected Docker's rule allowing bpf with CAP_BPF")
    # right after the unconditional allow list, where Docker had them
    calls.insert(1, {"names": URING, "action": "SCMP_ACT_ALLOW",
                     "comment": URING_COMMENT})
    return prof


def kernel_ge(have, want):
    h = tuple(int(x) for x in have.split(".")[:2])
    w = tuple(int(x) for x in want.split(".")[:2])
    return h >= w


def resolve(prof, caps, deny, arch, kernel):
    out = {"defaultAction": prof["defaultAction"]}
    if "defaultErrnoRet" in prof:
        out["defaultErrnoRet"] = prof["defaultErrnoRet"]
    native = SECCOMP_ARCH.get(arch)
    for a in prof.get("archMap", []):
        if a["architecture"] == native:
            out["architectures"] = [a["architecture"]] + a.get(
                "subArchitectures", [])
    if "architectures" in prof:
        out["architectures"] = prof["architectures"]
    rules = []
    for c in prof["syscalls"]:
        exc, inc = c.get("excludes", {}), c.get("includes", {})
        if arch in exc.get("arches", []):
            continue
        if any(x in caps for x in exc.get("caps", [])):
            continue
        if "minKernel" in exc and kernel_ge(kernel, exc["minKernel"]):
            continue
        if inc.get("arches") and arch not in inc["arches"]:
            continue
        if any(x not in caps for x in inc.get("caps", [])):
            continue
        if "minKernel" in inc and not kernel_ge(kernel, inc["minKernel"]):
            continue
        names = c.get("names") or [c["name"]]
        if c["action"] == "SCMP_ACT_ALLOW":
            names = [n for n in names if n not in deny]
            if not names:
                continue
        r = {"names": names, "action": c["action"]}
        for k in ("errnoRet", "args"):
            if k in c:
                r[k] = c[k]
        rules.append(r)
    out["syscalls"] = rules
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("derive")
    d.add_argument("docker", nargs="?",
                   default=os.path.join(HERE, "docker-default.json"))
    d.add_argument("out", nargs="?", default=os.path.join(HERE, "evsteer.json"))
    c = sub.add_parser("check")
    c.add_argument("docker", nargs="?",
                   default=os.path.join(HERE, "docker-default.json"))
    c.add_argument("ours", nargs="?", default=os.path.join(HERE, "evsteer.json"))
    r = sub.add_parser("resolve")
    r.add_argument("profile")
    r.add_argument("--caps", default="",
                   help="the container's (bounding) capabilities, CAP_X,...")
    r.add_argument("--deny", default="", help="syscalls to refuse anyway")
    r.add_argument("--arch", default=ARCH.get(platform.machine(),
                                              platform.machine()))
    r.add_argument("--kernel", default=platform.release())
    a = ap.parse_args()
    if a.cmd == "derive":
        with open(a.out, "w") as f:
            f.write(dump(derive(load(a.docker))))
    elif a.cmd == "check":
        want = dump(derive(load(a.docker)))
        with open(a.ours) as f:
            if f.read() != want:
                sys.exit(f"{a.ours} is not what `profile.py derive` makes "
                         f"from {a.docker}: regenerate it")
        print(f"{os.path.basename(a.ours)}: Docker's default profile plus "
              f"{', '.join(URING)}")
    else:
        caps = [x for x in a.caps.split(",") if x]
        deny = [x for x in a.deny.split(",") if x]
        sys.stdout.write(dump(resolve(load(a.profile), caps, deny, a.arch,
                                      a.kernel)))


if __name__ == "__main__":
    main()
