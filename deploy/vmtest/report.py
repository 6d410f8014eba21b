#!/usr/bin/env python3
"""The host's side of a vmtest run: one line per test of the subset (result,
time, and the lines that say why it failed or what it skipped), the probe's
missing features, the demo's path line, the wall time, and the exit code
(0 passed, 1 a test failed, 3 no verdict: the machine did not finish).

usage: report.py OUT KREL PACKAGE T_START T_BOOT T_END QEMU_RC LIMIT
"""
import json
import os
import re
import sys

out, krel, package = sys.argv[1:4]
t_start, t_boot, t_end = (float(x) for x in sys.argv[4:7])
qemu_rc, limit = int(sys.argv[7]), int(sys.argv[8])

# what explains a result: the tests' own skip lines, cmocka's failure lines
# with a forked child's verdict just above them, and the library's word on
# a missing feature
SKIP = re.compile(r"skipped: |^skip: ")
WHY = re.compile(
    r"skipped: |^skip: |^ERROR: |\[  FAILED  \] test_|\[   LINE   \]|"
    r"is required \(EVSTEER_TEST_REQUIRE\)|path \S+ required but|the kernel lacks"
)


def read(name):
    p = os.path.join(out, name)
    return open(p, errors="replace").read() if os.path.exists(p) else None


def why_lines(text, limit=8):
    seen, lines = set(), []
    all_lines = [l.strip() for l in (text or "").splitlines()]
    for i, line in enumerate(all_lines):
        picked = []
        if line.startswith("[  ERROR   ]"):
            picked = [l for l in all_lines[max(0, i - 2):i]
                      if l.startswith("child:")] + [line]
        elif WHY.search(line):
            picked = [line]
        for l in picked:
            if l not in seen:
                seen.add(l)
                lines.append(l)
    return lines[:limit]


def known_failures():
    """{case: why} for this kernel from deploy/vmtest/known-failures."""
    known = {}
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                        "known-failures")
    if os.environ.get("EVSTEER_VMTEST_KNOWN") == "none" or not os.path.exists(path):
        return known
    series = ".".join(krel.split(".")[:2])
    for line in open(path):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        kernel, case, *why = line.split(None, 2)
        if kernel == series:
            known[case] = why[0] if why else ""
    return known


def classify(r):
    """passed, skipped, known (the binary failed, without a crash or a
    timeout: every case it started ended, and every case that failed is
    listed for this kernel) or failed."""
    res = r["result"]
    if res in ("OK", "EXPECTEDFAIL"):
        return "passed"
    if res == "SKIP":
        return "skipped"
    text = (r.get("stdout") or "") + "\n" + (r.get("stderr") or "")
    cases = {f"{r['name']}:{c}" for c in FAILED_CASE.findall(text)}
    started = set(RUN_CASE.findall(text))
    ended = set(OK_CASE.findall(text) + FAILED_CASE.findall(text) +
                SKIPPED_CASE.findall(text))
    if res == "FAIL" and cases and all(c in known for c in cases) and \
            started <= ended:
        return "known"
    return "failed"


FAILED_CASE = re.compile(r"^\[  FAILED  \] (test_\w+)\s*$", re.M)
PATH_SKIPPED = re.compile(r"^\S+: path (\S+) skipped: ", re.M)
RUN_CASE = re.compile(r"^\[ RUN      \] (test_\w+)\s*$", re.M)
SKIPPED_CASE = re.compile(r"^\[  SKIPPED \] (test_\w+)\s*$", re.M)
OK_CASE = re.compile(r"^\[       OK \] (test_\w+)\s*$", re.M)

def load(text):
    """testlog.json's entries, each named as the suite names it: meson
    writes "evsteer / fallback" (project / test), known-failures and the
    guest's debug-TEST files say "fallback"."""
    rs = []
    for line in (text or "").splitlines():
        if line.strip():
            r = json.loads(line)
            r["name"] = r["name"].rsplit(" / ", 1)[-1]
            rs.append(r)
    return rs


results = load(read("testlog.json"))
known = known_failures()

print(f"\nvmtest: {krel} ({package})")
n = {"passed": 0, "failed": 0, "skipped": 0, "known": 0, "flaky": 0}
problems = []
for r in results:
    res = r["result"]
    text = (r.get("stdout") or "") + "\n" + (r.get("stderr") or "")
    word = ("passed" if res in ("OK", "EXPECTEDFAIL") else
            "skipped" if res == "SKIP" else "failed")
    cases = {f"{r['name']}:{c}" for c in FAILED_CASE.findall(text)}
    # a whole path skipped means the guest has no BPF or no io_uring at all,
    # which every kernel this runs has: the run would test too little
    whole = PATH_SKIPPED.findall(text)
    if whole and word == "passed":
        word = "failed"
        problems.append(f"{r['name']}: path {', '.join(whole)} skipped in the guest")
    # Under TCG a timing-bound case can miss its window now and then, so the
    # guest runs each failing test once more: failed, then passed or failed
    # only as known, is flaky (shown, not failed); failed twice is a failure.
    if word == "failed" and classify(r) == "known":
        word = "known"
    rerun = load(read(f"debug-{r['name']}.json"))
    if word == "failed" and rerun and all(classify(x) in ("passed", "known")
                                          for x in rerun):
        word = "flaky"
    for c in OK_CASE.findall(text):
        c = f"{r['name']}:{c}"
        if c in known:
            problems.append(f"{c} passes: take it off "
                            f"deploy/vmtest/known-failures")
    n[word] += 1
    label = {"known": "failed (known)",
             "flaky": "flaky (rerun passed)"}.get(word, word)
    if res not in ("OK", "SKIP", "FAIL"):
        label = f"{word} ({res})"
    print(f"  {r['name']:<12} {label:<20} {r['duration']:7.1f} s")
    lines = why_lines(text)
    if word in ("failed", "known", "flaky"):
        # the rerun with EVSTEER_LOG=debug says which path it took and why
        lines += [l for l in why_lines(read(f"debug-{r['name']}.txt"), 20)
                  if "the kernel lacks" in l and l not in lines]
        lines += [f"known: {c}: {known[c]}" for c in sorted(cases) if c in known]
    if word == "passed":
        lines = [l for l in lines if SKIP.search(l)]
    for w in lines:
        print(f"      {w}")

probe = read("probe.txt")
if probe:
    missing = [l for l in probe.splitlines() if re.search(r"\s+no\b", l)]
    print("  kernel features missing (probe.txt):" if missing else
          "  kernel features: the probe found every one it tries")
    for l in missing:
        print(f"      {l.strip()}")

demo = read("demo.txt")
if demo is not None:
    # the demo is a test too: a working path and no connection lost
    keep = [l for l in demo.splitlines() if re.match(
        r"(path:|  steering:|  accept engine:|client:|total accepted)", l)]
    m = re.search(r"total accepted (\d+) of (\d+)", demo)
    lost = int(m.group(2)) - int(m.group(1)) if m else None
    ok = "demo_rc=0" in demo and lost == 0
    n["passed" if ok else "failed"] += 1
    print(f"  {'demo':<12} {'passed' if ok else 'failed':<20} "
          f"(--connections 2000, lost: {lost if m else 'unknown'})")
    for l in keep:
        print(f"      {l.strip()}")

done = read("done")
if done is not None and read("meson.rc") is None:
    print(f"  wall time: {t_end - t_start:.0f} s")
    print(f"vmtest: no subset was asked (EVSTEER_VMTEST_TESTS empty) on {krel}")
    sys.exit(0)
print(f"  wall time: {t_end - t_start:.0f} s ({t_boot - t_start:.0f} s to "
      f"prepare, {t_end - t_boot:.0f} s in qemu from boot to power-off)")
for p in problems:
    print(f"  {p}")

if read("subset-started") is not None and (done is None or not results):
    # the guest was up and running tests: a hang or a crash of the machine
    # under a test is the code's verdict, not the boot's
    last = [l for l in (read("console.log") or "").splitlines()
            if re.match(r"\s*\d+/\d+ ", l)]
    print(f"vmtest: failed on {krel}: the subset started and did not finish "
          f"(qemu rc {qemu_rc}); last result: "
          f"{last[-1].strip() if last else 'none'}; see {out}/console.log")
    sys.exit(1)
if done is None or not results:
    why = (f"qemu was stopped after {limit} s" if qemu_rc == 124 else
           f"qemu exited with {qemu_rc}" if qemu_rc else
           "the guest powered off without finishing")
    print(f"vmtest: no verdict on {krel}: {why}; see {out}/console.log")
    sys.exit(3)
known_note = f", {n['known']} known failures" if n["known"] else ""
known_note += f", {n['flaky']} flaky" if n["flaky"] else ""
print(f"vmtest: {n['passed']} passed, {n['failed']} failed, "
      f"{n['skipped']} skipped{known_note} on {krel}")
sys.exit(1 if n["failed"] or problems else 0)
