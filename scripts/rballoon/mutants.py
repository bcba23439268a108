#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""make mutants: break one feature at a time and check that the tests claiming it fail.

Each mutant in tools/testing/rballoon/mutants.json is one literal replacement in one file (refused
unless the old text occurs exactly once). For each, in a scratch clone of the repository at HEAD
(under the cache, reset between mutants), the replacement is made, then the KUnit cases the
mutant names run one by one through scripts/rballoon/kunit.sh (only what the change touches is
rebuilt), and with MUTANTS_HARNESS=1 also the harness tests it names, on a guest built from the
scratch tree. A mutant is

  caught    a named test failed or crashed (a skip does not count),
  survived  every named test passed, or it names no test at all: a claim no test proves,
  invalid   it did not build (the mutant is wrong, not the tests),
  not run   it names only harness tests and MUTANTS_HARNESS=1 was not given.

The named tests first run once on the unmodified tree: one that fails there proves nothing. The run
fails if a mutant survived or is invalid. MUTANTS=id,id runs only those.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE = os.environ.get("RBALLOON_CACHE", "/var/cache/rballoon")
SCRATCH = os.path.join(CACHE, "mutants", "repo")
LOGS = os.path.join(CACHE, "mutants", "logs")
KUNIT_LOG = os.path.join(CACHE, "logs", "kunit.log")


def log(msg):
    print(f"[rballoon {time.strftime('%H:%M:%S')}] mutants: {msg}", flush=True)


def git(*args, cwd=SCRATCH):
    subprocess.run(["git", *args], cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def head():
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, check=True,
                          capture_output=True, text=True).stdout.strip()


def fresh_scratch():
    """A clone of the repository at its HEAD, without local changes."""
    if not os.path.isdir(os.path.join(SCRATCH, ".git")):
        shutil.rmtree(SCRATCH, ignore_errors=True)
        os.makedirs(os.path.dirname(SCRATCH), exist_ok=True)
        git("clone", "-q", "--no-hardlinks", REPO, SCRATCH, cwd=REPO)
    git("fetch", "-q", REPO, "HEAD")
    git("reset", "-q", "--hard", "FETCH_HEAD")
    git("clean", "-q", "-fdx", "-e", "tools/testing/rballoon/target")


def apply(m):
    path = os.path.join(SCRATCH, m["file"])
    with open(path) as f:
        text = f.read()
    n = text.count(m["old"])
    if n != 1:
        raise SystemExit(f"mutant {m['id']}: its old text occurs {n} times in {m['file']}")
    with open(path, "w") as f:
        f.write(text.replace(m["old"], m["new"]))


def kunit_run(glob, tag):
    """Runs the KUnit cases of the scratch tree that `glob` names (all without one); returns
    kunit.sh's exit code and kunit.py's log."""
    env = dict(os.environ)
    env.pop("KUNIT_FILTER", None)  # slow cases included: some mutants only show there
    args = [os.path.join(SCRATCH, "scripts/rballoon/kunit.sh")] + ([glob] if glob else [])
    r = subprocess.run(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    text = open(KUNIT_LOG, errors="replace").read() if os.path.exists(KUNIT_LOG) else ""
    with open(os.path.join(LOGS, f"{tag}.kunit.log"), "a") as f:
        f.write(text)
    return r.returncode, text


def kunit(case, tag, run=None):
    """The result of one KUnit case, run alone unless `run` (an exit code and log) has it:
    'passed', 'failed', 'skipped', 'missing' or 'nobuild'."""
    rc, text = run if run else kunit_run(case, tag)
    name = case.split(".", 1)[-1]
    for verdict, word in (("failed", "FAILED"), ("failed", "CRASHED"), ("skipped", "SKIPPED"),
                          ("passed", "PASSED")):
        if re.search(rf"\[{word}\] {re.escape(name)}\s*$", text, re.M):
            # A case that passed in a run kunit.sh failed all the same (a splat in the kernel
            # log: lockdep, KASAN, a warning) did not pass.
            if verdict == "passed" and rc != 0:
                return "failed"
            return verdict
    if "Testing complete" not in text and rc != 0:
        # kunit.py never ran the tests: the build failed (or the kernel did not boot).
        return "nobuild" if re.search(r"error(\[E\d+\])?:", text) else "failed"
    return "missing"


def build_guest():
    env = dict(os.environ)
    r = subprocess.run(["make", "-C", SCRATCH, "guest", "harness"], env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return r.returncode == 0


def harness(test, tag):
    """Runs one harness test (`stem::name`) on the scratch tree's guest: 'passed' or 'failed'."""
    stem, name = test.split("::")
    env = dict(os.environ, RBALLOON_REPO=SCRATCH,
               CARGO_TARGET_DIR=os.path.join(CACHE, "harness-target"))
    with open(os.path.join(LOGS, f"{tag}.harness.log"), "a") as out:
        r = subprocess.run(["cargo", "test", "--release", "--features", "rust-driver",
                            "--manifest-path",
                            os.path.join(SCRATCH, "tools/testing/rballoon/Cargo.toml"),
                            "--test", stem, "--", "--exact", name, "--test-threads=1"],
                           env=env, stdout=out, stderr=subprocess.STDOUT)
    return "passed" if r.returncode == 0 else "failed"


def run_tests(m, tag, with_harness):
    """The results of the mutant's tests on the scratch tree as it is."""
    results = {}
    for case in m["kunit"]:
        results[case] = kunit(case, tag)
        if results[case] == "nobuild":
            return results
    if with_harness and m["harness"]:
        if not build_guest():
            results["guest"] = "nobuild"
            return results
        for test in m["harness"]:
            results[test] = harness(test, tag)
    return results


def main():
    mutants = json.load(open(os.path.join(REPO, "tools/testing/rballoon/mutants.json")))
    only = [x for x in os.environ.get("MUTANTS", "").split(",") if x]
    unknown = set(only) - {m["id"] for m in mutants}
    if unknown:
        raise SystemExit(f"unknown mutants: {', '.join(sorted(unknown))}")
    if only:
        mutants = [m for m in mutants if m["id"] in only]
    with_harness = os.environ.get("MUTANTS_HARNESS") == "1"
    shutil.rmtree(LOGS, ignore_errors=True)
    os.makedirs(LOGS)
    start = time.time()
    commit = head()
    log(f"{len(mutants)} mutants at {commit}{' with harness tests' if with_harness else ''}")

    # The baseline: every named test passes on the unmodified tree (one run of all suites).
    fresh_scratch()
    run = kunit_run(None, "baseline")
    base = {}
    for m in mutants:
        for case in m["kunit"]:
            base[case] = kunit(case, "baseline", run)
    bad = {c: v for c, v in base.items() if v != "passed"}
    if bad:
        for c, v in bad.items():
            log(f"baseline: {c} {v} without any mutant")
        raise SystemExit(1)
    log(f"baseline: {len(base)} KUnit cases pass unmodified")

    verdicts = {}
    for m in mutants:
        t0 = time.time()
        fresh_scratch()
        apply(m)
        if not m["kunit"] and not m["harness"]:
            verdict, detail = "survived", "no test claims it"
        elif not m["kunit"] and not with_harness:
            verdict, detail = "not run", "harness only: " + ", ".join(m["harness"])
        else:
            results = run_tests(m, m["id"], with_harness)
            detail = ", ".join(f"{t} {v}" for t, v in results.items())
            if "nobuild" in results.values():
                verdict = "invalid"
            elif "missing" in results.values():
                verdict = "invalid"
            elif "failed" in results.values():
                verdict = "caught"
            else:
                verdict = "survived"
        verdicts[m["id"]] = verdict
        log(f"{m['id']}: {verdict} ({detail}; {time.time() - t0:.0f} s)")

    fresh_scratch()
    counts = {v: sum(1 for x in verdicts.values() if x == v)
              for v in ("caught", "survived", "invalid", "not run")}
    log(f"at {commit}: " + ", ".join(f"{n} {v}" for v, n in counts.items()) +
        f" ({time.time() - start:.0f} s; logs in {LOGS})")
    if counts["survived"] or counts["invalid"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
