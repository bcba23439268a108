#!/usr/bin/env bash
# make test: build everything from nothing if needed, then run every suite and say how it went.
#
# Stages: toolchain root, patched tree, guest kernel + initramfs, host harness, KUnit (kunit.py),
# harness tests against QEMU, the benchmark's and the stress suite's short forms. Each prints its
# time; the last line counts tests over all suites.
. "$(dirname "$0")/common.sh"
cd "$RB_REPO"

t0=$(date +%s)
passed=0 failed=0
mkdir -p "$RB_CACHE/logs"

rb_step "guest kernel and initramfs" make --no-print-directory guest
rb_step "host harness" make --no-print-directory harness

# KUnit: count what kunit.py ran.
klog=$RB_CACHE/logs/kunit.log
if make --no-print-directory kunit; then :; else rb_log "KUnit FAILED"; failed=$((failed + 1)); fi
if line=$(grep -E 'Testing complete\. Ran [0-9]+ tests' "$klog" | tail -n1); then
	kp=$(sed -n 's/.*passed: \([0-9]*\).*/\1/p' <<< "$line")
	kf=$(sed -n 's/.*failed: \([0-9]*\).*/\1/p' <<< "$line")
	kc=$(sed -n 's/.*crashed: \([0-9]*\).*/\1/p' <<< "$line")
	passed=$((passed + ${kp:-0})) failed=$((failed + ${kf:-0} + ${kc:-0}))
	rb_log "KUnit: $line"
fi

# rustfmt, clippy and rustdoc over the Rust code: a failure counts as a failed test.
if make --no-print-directory lint; then rb_log "lint: clean"; else rb_log "lint FAILED"; failed=$((failed + 1)); fi

# Harness tests: count what cargo test ran.
hlog=$RB_CACHE/logs/harness-test.log
if make --no-print-directory harness-test 2>&1 | tee "$hlog"; then :; else failed=$((failed + 1)); fi
while read -r p f; do
	passed=$((passed + p)) failed=$((failed + f))
done < <(sed -n 's/^test result: .* \([0-9]*\) passed; \([0-9]*\) failed.*/\1 \2/p' "$hlog")

# The benchmark's short form (1 round, 2 GiB, both drivers): it counts as one test that fails if a
# run fails or a table or plot is missing, never because of a figure.
if make --no-print-directory bench-short; then
	passed=$((passed + 1))
else
	rb_log "bench-short FAILED"
	failed=$((failed + 1))
fi

# The stress suite, short form: 60 s per driver on the normal guest; each driver's run is a test.
slog=$RB_CACHE/logs/stress-short.log
STRESS_SECONDS=${STRESS_SHORT_SECONDS:-60} STRESS_DRIVERS="rust c" "$RB_REPO/scripts/rballoon/stress.sh" 2>&1 |
	tee "$slog" || true
sp=$(grep -c '^stress: PASSED' "$slog" || true)
sf=$(grep -c '^stress: FAILED' "$slog" || true)
# A run that died before its verdict (harness error) counts as failed too.
[ $((sp + sf)) -lt 2 ] && sf=$((2 - sp))
passed=$((passed + sp)) failed=$((failed + sf))
rb_log "stress (short): $sp passed, $sf failed"

rb_log "make test took $(( $(date +%s) - t0 )) s"
echo "rballoon: $passed passed, $failed failed"
[ "$failed" = 0 ] && [ "$passed" -gt 0 ]
