#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The exported symbols of libevsteer.so, the version script and the header
agree, name by name.

usage: symbols_check.py LIBEVSTEER_SO MAP HEADER [COMPAT_PROGRAM]

- the map lists each symbol by name (no glob in a global: section) under a
  version node, and hides everything else (local: *);
- the library exports exactly the symbols the map lists, each with the
  version of the node that lists it (nm -D --defined-only);
- every EVSTEER_API declaration of the header is listed (a new function
  missing from the map would otherwise be silently unexported), and nothing
  else is;
- no evconnlistener_* name is exported or listed: <evsteer/compat.h> maps
  them with static inline wrappers, so that libevent and evsteer link into
  one program; COMPAT_PROGRAM (built through compat.h) must not need one.
"""
import os
import re
import subprocess
import sys


def fail(problems):
    print("symbols: the library, src/libevsteer.map and evsteer.h disagree:")
    for p in problems:
        print("  - " + p)
    print("To export a new function: declare it EVSTEER_API in "
          "include/evsteer/evsteer.h and list it in a new version node of "
          "src/libevsteer.map (see the comment there), then regenerate the "
          "ABI baseline (abi/README.md).")
    sys.exit(1)


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return re.sub(r"#[^\n]*|//[^\n]*", " ", text)


def parse_map(path, problems):
    """{symbol: node}; the nodes in order."""
    text = strip_comments(open(path).read())
    listed, nodes = {}, []
    for m in re.finditer(r"([A-Za-z_][\w.]*)\s*\{(.*?)\}\s*([\w.]*)\s*;", text,
                         flags=re.S):
        node, body, parent = m.group(1), m.group(2), m.group(3)
        if parent and parent not in nodes:
            problems.append(f"node {node} inherits {parent}, which is not "
                            "an earlier node")
        nodes.append(node)
        section = None
        for tok in re.split(r"\s*;\s*|\s+", body):
            if not tok:
                continue
            if tok.endswith(":"):
                section = tok[:-1]
                continue
            if section == "global":
                if re.search(r"[*?\[]", tok):
                    problems.append(f"{node}: glob '{tok}' in global: list "
                                    "each symbol by name")
                elif tok in listed:
                    problems.append(f"{tok} listed in {listed[tok]} and "
                                    f"again in {node}")
                else:
                    listed[tok] = node
            elif section == "local":
                if tok != "*":
                    problems.append(f"{node}: local: should be '*', not "
                                    f"'{tok}'")
            else:
                problems.append(f"{node}: '{tok}' outside global:/local:")
    if not nodes:
        problems.append(f"{path}: no version node found")
    return listed, nodes


def exported(lib, problems):
    """{symbol: version} of the library's defined dynamic symbols."""
    out = subprocess.run(["nm", "-D", "--defined-only", lib], check=True,
                         capture_output=True, text=True).stdout
    syms = {}
    for line in out.splitlines():
        f = line.split()
        if len(f) < 3:
            continue
        kind, name = f[1], f[2]
        if kind == "A" and "@" not in name:
            continue  # a version node's own definition
        name, _, version = name.partition("@")
        version = version.lstrip("@")
        if not version:
            problems.append(f"{name} is exported without a version")
        syms[name] = version
    return syms


def declared(header):
    text = strip_comments(open(header).read())
    names = set()
    for m in re.finditer(r"\bEVSTEER_API\b([^;{]*?)\(", text, flags=re.S):
        ids = re.findall(r"[A-Za-z_]\w*", m.group(1))
        if ids:
            names.add(ids[-1])
    return names


def main():
    if len(sys.argv) not in (4, 5):
        print(__doc__)
        sys.exit(2)
    lib, mapfile, header = sys.argv[1:4]
    problems = []
    listed, nodes = parse_map(mapfile, problems)
    syms = exported(lib, problems)
    api = declared(header)
    header = os.path.basename(header)

    for s in sorted(set(syms) - set(listed)):
        problems.append(f"{s} is exported but not listed in the map")
    for s in sorted(set(listed) - set(syms)):
        problems.append(f"{s} is listed in the map ({listed[s]}) but the "
                        "library does not define it")
    for s in sorted(set(syms) & set(listed)):
        if syms[s] and syms[s] != listed[s]:
            problems.append(f"{s} is exported as {s}@{syms[s]} but listed "
                            f"in {listed[s]}")
    for s in sorted(api - set(listed)):
        problems.append(f"{s} is declared EVSTEER_API in {header} but not "
                        "listed in the map (so not exported)")
    for s in sorted(set(listed) - api):
        problems.append(f"{s} is listed in the map but not declared "
                        f"EVSTEER_API in {header}")
    for s in sorted(n for n in set(syms) | set(listed)
                    if n.startswith("evconnlistener")):
        problems.append(f"{s}: compat names are inline wrappers, never "
                        "symbols of libevsteer (they would clash with "
                        "libevent's)")
    if len(sys.argv) == 5:
        undef = subprocess.run(["nm", "-D", "--undefined-only", sys.argv[4]],
                               check=True, capture_output=True,
                               text=True).stdout
        for line in undef.splitlines():
            name = line.split()[-1].partition("@")[0]
            if name.startswith("evconnlistener"):
                problems.append(f"{sys.argv[4]} (built through compat.h) "
                                f"needs the symbol {name}")
    if problems:
        fail(problems)
    print(f"symbols: {len(syms)} exported, all listed by name in "
          f"{', '.join(nodes)}; they match the header's {len(api)} "
          "EVSTEER_API declarations; no evconnlistener_* symbol")


if __name__ == "__main__":
    main()
