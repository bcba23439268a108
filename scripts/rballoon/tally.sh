# shellcheck shell=bash
# The closing line of make test and make check: every test once, whatever ran it. Sourced.
#
#   tally_kunit RC COUNTS   kunit.sh's exit code and its counts file ("passed failed skipped crashed")
#   tally_cargo RC LOG      cargo test's exit code and output ("test result:" lines)
#   tally_one RC WHAT       a stage that is one test (lint, bench-short, a stress run)
#   tally_end [skips-ok]    print "rballoon: N passed, N failed, N skipped"; fail unless all passed
#                           and, without skips-ok, none was skipped
#
# A failing test counts once: a suite's own failure count is taken, and its non-zero exit adds one
# failure only when the suite counted none (it never ran, did not build, or a splat failed the run).

T_PASSED=0 T_FAILED=0 T_SKIPPED=0

tally_kunit() {
	local rc=$1 counts=$2 p=0 f=0 s=0 c=0
	[ -s "$counts" ] && read -r p f s c < "$counts"
	T_PASSED=$((T_PASSED + p)) T_SKIPPED=$((T_SKIPPED + s))
	T_FAILED=$((T_FAILED + f + c))
	if [ "$rc" != 0 ] && [ $((f + c)) = 0 ]; then
		rb_log "KUnit failed without a failing test (build, time-out or splat): counted as 1 failed"
		T_FAILED=$((T_FAILED + 1))
	fi
	rb_log "KUnit: $p passed, $((f + c)) failed, $s skipped"
}

tally_cargo() {
	local rc=$1 log=$2 p=0 f=0 s=0 a b c
	while read -r a b c; do
		p=$((p + a)) f=$((f + b)) s=$((s + c))
	done < <(sed -n 's/^test result: .* \([0-9]*\) passed; \([0-9]*\) failed; \([0-9]*\) ignored.*/\1 \2 \3/p' "$log")
	T_PASSED=$((T_PASSED + p)) T_FAILED=$((T_FAILED + f)) T_SKIPPED=$((T_SKIPPED + s))
	if [ "$rc" != 0 ] && [ "$f" = 0 ]; then
		rb_log "harness tests failed without a failing test (build or harness error): counted as 1 failed"
		T_FAILED=$((T_FAILED + 1))
	fi
	rb_log "harness tests: $p passed, $f failed, $s skipped"
}

tally_one() {
	local rc=$1 what=$2
	if [ "$rc" = 0 ]; then
		T_PASSED=$((T_PASSED + 1))
	else
		rb_log "$what FAILED"
		T_FAILED=$((T_FAILED + 1))
	fi
}

# A skipped test proved nothing (a KUnit case that found the C driver bound, no free block to hint
# with, no PM_SLEEP; an ignored harness test): on x86_64, where every case can run, the run fails
# as if it had failed, and says so. make matrix passes skips-ok: s390 has no system sleep, and its
# leg skips the freeze cases, saying so.
tally_end() { # [skips-ok]
	echo "rballoon: $T_PASSED passed, $T_FAILED failed, $T_SKIPPED skipped"
	local skips_ok=0
	[ "${1:-}" = skips-ok ] && skips_ok=1
	if [ "$T_SKIPPED" != 0 ] && [ "$skips_ok" = 0 ]; then
		rb_log "$T_SKIPPED skipped: a skipped test proves nothing, so the run fails (the logs say why each was skipped)"
		return 1
	fi
	[ "$T_FAILED" = 0 ] && [ "$T_PASSED" -gt 0 ]
}
