#!/usr/bin/env bash
# make test: build everything from nothing if needed, then run every suite and say how it went.
#
# Stages: toolchain root, patched tree, guest kernel + initramfs, host harness, KUnit (kunit.py),
# lint, harness tests against QEMU, the benchmark's and the stress suite's short forms. Each prints
# its time; the last line counts every test once over all suites (scripts/rballoon/tally.sh).
. "$(dirname "$0")/common.sh"
. "$RB_REPO/scripts/rballoon/suites.sh"
suite_begin "make test"

# Harness tests: what cargo test ran.
hlog=$RB_LOGS/harness-test.log
rc=0
make --no-print-directory harness-test 2>&1 | tee "$hlog" || rc=$?
tally_cargo "$rc" "$hlog"

# The benchmark's short form (1 round, 2 GiB, both drivers): one test that fails if a run fails or
# a table or plot is missing, never because of a figure.
rc=0
make --no-print-directory bench-short || rc=$?
tally_one "$rc" bench-short

# The stress suite, short form: 50 s per driver on the normal guest; each driver's run is a test.
for d in rust c; do
	rc=0
	STRESS_SECONDS=${STRESS_SHORT_SECONDS:-50} STRESS_DRIVERS=$d "$RB_REPO/scripts/rballoon/stress.sh" || rc=$?
	tally_one "$rc" "stress (short), $d driver"
done

suite_end
