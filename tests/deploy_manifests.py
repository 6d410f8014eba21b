#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""What can be checked of deploy/ without a container engine, a cluster or
systemd as init: the manifests parse and say what the README promises, the
files they name exist, the image's runtime packages cover what the service
links against, the seccomp profile is Docker's plus io_uring, and systemd
accepts the units (systemd-analyze verify).

  deploy_manifests.py SOURCE_DIR BUILD_DIR EVSTEER_SERVICE
"""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile

import evtest

SRC, BUILD, SERVICE = sys.argv[1:4]
DEPLOY = os.path.join(SRC, "deploy")
failures = []


def expect(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures.append(what)


def missing(what):
    """a tool this check needs is not installed: skip it, or fail in CI"""
    if evtest.required("deploy"):
        expect(False, f"{what} (required: EVSTEER_TEST_REQUIRE)")
    else:
        print(f"skip {what}")


# ---- Kubernetes

def check_kubernetes():
    try:
        import yaml
    except ImportError:
        missing("python3-yaml is not installed (apt-get install python3-yaml)")
        return
    path = os.path.join(DEPLOY, "kubernetes", "evsteer-service.yaml")
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    kinds = {d["kind"]: d for d in docs}
    expect(set(kinds) == {"Deployment", "Service"},
           f"kubernetes: a Deployment and a Service ({sorted(kinds)})")
    dep, svc = kinds.get("Deployment"), kinds.get("Service")
    if not dep or not svc:
        return
    pod = dep["spec"]["template"]["spec"]
    expect(dep["spec"]["selector"]["matchLabels"].items()
           <= dep["spec"]["template"]["metadata"]["labels"].items(),
           "kubernetes: the selector matches the pod's labels")
    expect(svc["spec"]["selector"].items()
           <= dep["spec"]["template"]["metadata"]["labels"].items(),
           "kubernetes: the Service selects the pods")
    sp = pod.get("securityContext", {}).get("seccompProfile", {})
    expect(sp.get("type") == "Localhost",
           "kubernetes: seccompProfile type Localhost")
    prof = os.path.join(DEPLOY, "seccomp",
                        os.path.basename(sp.get("localhostProfile", "")))
    expect(os.path.isfile(prof),
           f"kubernetes: localhostProfile names a file in deploy/seccomp "
           f"({sp.get('localhostProfile')})")
    expect(pod.get("hostUsers", True) is True,
           "kubernetes: host user namespace (CAP_BPF counts only there)")
    (c,) = pod["containers"]
    sc = c.get("securityContext", {})
    caps = sc.get("capabilities", {})
    expect(caps.get("drop") == ["ALL"], "kubernetes: capabilities drop ALL")
    ports = [p["containerPort"] for p in c.get("ports", [])]
    want_add = ["BPF"] + (["NET_BIND_SERVICE"]
                          if any(p < 1024 for p in ports) else [])
    expect(sorted(caps.get("add", [])) == sorted(want_add),
           f"kubernetes: capabilities add {want_add} (ports {ports})")
    expect(sc.get("readOnlyRootFilesystem") is True,
           "kubernetes: readOnlyRootFilesystem")
    lim = c.get("resources", {}).get("limits", {})
    expect("cpu" in lim and "memory" in lim,
           "kubernetes: cpu and memory limits")
    expect("readinessProbe" in c, "kubernetes: a readiness probe")
    names = {p.get("name") for p in c.get("ports", [])} | set(ports)
    probe = c.get("readinessProbe", {}).get("tcpSocket", {}).get("port")
    expect(probe in names, f"kubernetes: the probe's port {probe} is declared")
    for p in svc["spec"]["ports"]:
        expect(p["targetPort"] in names,
               f"kubernetes: Service targetPort {p['targetPort']} exists")
    # non-root: capabilities need file capabilities, which no_new_privs
    # would switch off
    nonroot = pod.get("securityContext", {}).get("runAsNonRoot") or \
        sc.get("runAsNonRoot")
    if nonroot:
        expect(sc.get("allowPrivilegeEscalation") is True,
               "kubernetes: non-root with file capabilities needs "
               "allowPrivilegeEscalation: true")
        expect("setcap cap_bpf=ep" in open(CONTAINERFILE).read(),
               "kubernetes: the image gives the binary cap_bpf (setcap)")
    args = c.get("args", [])
    if "--port" in args:
        expect(int(args[args.index("--port") + 1]) in ports,
               "kubernetes: the service listens on the declared port")


# ---- the Containerfile

CONTAINERFILE = os.path.join(DEPLOY, "container", "Containerfile")


def instructions(path):
    """(INSTRUCTION, rest) with continuation lines joined, comments out"""
    out, cur = [], ""
    for line in open(path):
        s = line.rstrip("\n")
        if not cur and (not s.strip() or s.lstrip().startswith("#")):
            continue
        if s.endswith("\\"):
            cur += s[:-1] + " "
            continue
        cur += s
        word, _, rest = cur.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        cur = ""
    return out


def runtime_packages(ins):
    """packages the final stage installs"""
    last = max(i for i, (w, _) in enumerate(ins) if w == "FROM")
    pkgs = []
    for w, rest in ins[last:]:
        if w == "RUN" and "apt-get install" in rest:
            seg = rest.split("apt-get install", 1)[1].split("&&")[0]
            pkgs += [t for t in shlex.split(seg) if not t.startswith("-")]
    return pkgs


def deps_closure(pkgs):
    """the packages plus what they depend on, as installed here"""
    seen, todo = set(), list(pkgs)
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        r = subprocess.run(["dpkg-query", "-W", "-f=${Depends},${Pre-Depends}",
                            p], capture_output=True, text=True)
        for alt in re.split(r"[,|]", r.stdout):
            name = alt.strip().split(" ")[0].split(":")[0]
            if name:
                todo.append(name)
    return seen


def owner(path):
    for p in (path, re.sub(r"^/usr(/lib)", r"\1", path)):
        r = subprocess.run(["dpkg", "-S", p], capture_output=True, text=True)
        if r.returncode == 0:
            return r.stdout.split(":")[0]
    return None


def check_containerfile():
    ins = instructions(CONTAINERFILE)
    froms = [rest for w, rest in ins if w == "FROM"]
    expect(len(froms) == 2 and re.search(r"debian:12\b", froms[0]) and
           "AS build" in froms[0] and re.search(r"debian:12-slim", froms[1]),
           f"container: build on Debian 12, run on slim Debian 12 ({froms})")
    for w, rest in ins:
        if w == "COPY" and "--from=" not in rest:
            for src in shlex.split(rest)[:-1]:
                expect(os.path.exists(os.path.join(SRC, src)),
                       f"container: COPY source {src} exists")
    user = [rest for w, rest in ins if w == "USER"]
    expect(user and not user[-1].startswith("0") and user[-1] != "root",
           f"container: runs as a non-root user ({user})")
    entry = [json.loads(rest) for w, rest in ins if w == "ENTRYPOINT"]
    installed = json.loads(subprocess.run(
        ["meson", "introspect", "--installed", BUILD], check=True,
        capture_output=True, text=True).stdout)
    dest = {os.path.realpath(k): v for k, v in installed.items()}.get(
        os.path.realpath(SERVICE))
    expect(entry and dest and dest == entry[-1][0],
           f"container: ENTRYPOINT is where meson installs the service "
           f"({entry[-1][0] if entry else None} vs {dest})")
    copied = [shlex.split(rest) for w, rest in ins
              if w == "COPY" and "--from=build" in rest]
    expect(any(c[-1] == (entry[-1][0] if entry else None) for c in copied),
           "container: the final stage copies the service there")

    # the runtime stage's packages must cover what the binary links against
    ldd = subprocess.run(["ldd", SERVICE], capture_output=True,
                         text=True).stdout
    if re.search(r"lib(a|ub|t)san", ldd):
        print("skip container: runtime libraries (sanitizer build)")
        return
    allowed = deps_closure(runtime_packages(ins))
    libs = re.findall(r"=> (\S+) \(", ldd)
    owners = {lib: owner(os.path.realpath(lib)) for lib in libs}
    for lib, pkg in sorted(owners.items()):
        expect(pkg in allowed,
               f"container: {os.path.basename(lib)} ({pkg}) is in the "
               f"runtime image")


# ---- seccomp

def check_seccomp():
    d = os.path.join(DEPLOY, "seccomp")
    r = subprocess.run([sys.executable, os.path.join(d, "profile.py"),
                        "check"], capture_output=True, text=True)
    expect(r.returncode == 0,
           f"seccomp: evsteer.json is derived from docker-default.json "
           f"{r.stdout.strip()} {r.stderr.strip()}")

    def allowed(profile, caps):
        out = subprocess.run([sys.executable, os.path.join(d, "profile.py"),
                              "resolve", os.path.join(d, profile),
                              "--caps", ",".join(caps)], check=True,
                             capture_output=True, text=True).stdout
        return {n for rule in json.loads(out)["syscalls"]
                if rule["action"] == "SCMP_ACT_ALLOW" and "args" not in rule
                for n in rule["names"]}

    ours, docker = (allowed("evsteer.json", ["CAP_BPF"]),
                    allowed("docker-default.json", ["CAP_BPF"]))
    uring = {"io_uring_setup", "io_uring_enter", "io_uring_register"}
    expect(uring <= ours and "bpf" in ours,
           "seccomp: evsteer.json allows io_uring, and bpf with CAP_BPF")
    expect(not uring & docker, "seccomp: Docker's default refuses io_uring")
    expect(ours - docker == uring,
           f"seccomp: io_uring is all evsteer.json adds ({ours - docker})")
    expect("bpf" not in allowed("evsteer.json", []),
           "seccomp: no bpf without CAP_BPF")
    for f in ("NOTICE", "LICENSE.Apache-2.0", "README.md"):
        expect(os.path.isfile(os.path.join(d, f)), f"seccomp: {f} exists")


# ---- systemd

def unit(path):
    keys = {}
    for line in open(path):
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            k, v = line.split("=", 1)
            keys.setdefault(k.strip(), []).append(v.strip())
    return keys


def check_systemd():
    d = os.path.join(DEPLOY, "systemd")
    sock = unit(os.path.join(d, "evsteer-service.socket"))
    svc = unit(os.path.join(d, "evsteer-service.service"))
    listen = sock.get("ListenStream", [])
    expect(len(listen) >= 2 and len(set(listen)) == 1,
           f"systemd: one ListenStream= per worker on one address ({listen})")
    expect(sock.get("ReusePort") == ["yes"], "systemd: ReusePort=yes")
    exe = shlex.split(svc["ExecStart"][0])
    name = sock.get("FileDescriptorName", [None])[0]
    expect(name and "--fdname" in exe and exe[exe.index("--fdname") + 1]
           == name, "systemd: the service asks for the socket's fd name")
    expect(svc.get("AmbientCapabilities") == ["CAP_BPF"],
           "systemd: AmbientCapabilities=CAP_BPF")
    expect(svc.get("CapabilityBoundingSet") == ["CAP_BPF"],
           "systemd: CapabilityBoundingSet=CAP_BPF")
    expect(svc.get("NoNewPrivileges") == ["yes"], "systemd: NoNewPrivileges")
    filt = " ".join(svc.get("SystemCallFilter", [])).split()
    expect({"bpf", "io_uring_setup", "io_uring_enter",
            "io_uring_register"} <= set(filt),
           "systemd: SystemCallFilter allows bpf and io_uring")
    expect(svc.get("PrivateUsers", ["no"]) == ["no"],
           "systemd: no PrivateUsers (a user namespace voids CAP_BPF)")

    tool = shutil.which("systemd-analyze")
    if not tool:
        missing("systemd-analyze is not installed (apt-get install systemd)")
        return
    # verify also checks that ExecStart exists: point it at the build
    with tempfile.TemporaryDirectory() as t:
        for f in ("evsteer-service.socket", "evsteer-service.service"):
            text = open(os.path.join(d, f)).read().replace(
                exe[0], os.path.realpath(SERVICE))
            with open(os.path.join(t, f), "w") as o:
                o.write(text)
        r = subprocess.run([tool, "verify", "./evsteer-service.socket",
                            "./evsteer-service.service"], cwd=t,
                           capture_output=True, text=True)
        out = (r.stdout + r.stderr).strip()
        expect(r.returncode == 0 and not out,
               f"systemd: systemd-analyze verify is silent (rc "
               f"{r.returncode}{': ' + out if out else ''})")


check_kubernetes()
check_containerfile()
check_seccomp()
check_systemd()
if failures:
    print(f"deploy: {len(failures)} failed")
    sys.exit(1)
print("deploy: all checks passed (image builds and clusters are not run "
      "here: no container engine)")
