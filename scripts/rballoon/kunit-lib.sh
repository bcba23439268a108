# shellcheck shell=bash
# What kunit.sh and matrix.sh read from a kunit.py run. Sourced after common.sh.

# kunit.py's own summary of LOG: the per-suite results and the totals line.
kunit_summary() { # LOG
	grep -E '^\[[0-9:]+\] (=+|\[(PASSED|FAILED|SKIPPED|CRASHED)\]|Testing complete|Elapsed)' "$1" | tail -n 60 || true
}

# The totals of LOG as "passed failed skipped crashed" into COUNTS, for make test's closing line
# (scripts/rballoon/tally.sh); no COUNTS when kunit.py never got to the totals.
kunit_counts() { # LOG COUNTS
	local total f n
	if total=$(grep -E 'Testing complete\. Ran [0-9]+ tests' "$1" | tail -n1); then
		for f in passed failed skipped crashed; do
			n=$(sed -n "s/.*[:,] $f: \([0-9]*\).*/\1/p" <<< "$total")
			printf '%s ' "${n:-0}"
		done > "$2"
		echo >> "$2"
	fi
}

# A splat in the kernel log TEST_LOG (kunit.py's test.log), printed with line numbers: true if one.
# A splat does not fail a KUnit test by itself (lockdep and KASAN only report): it fails the run.
kunit_splat() { # TEST_LOG
	grep -nE 'BUG:|WARNING:|KASAN|possible circular locking|inconsistent lock state|list_(add|del) corruption|sleeping function called' \
		"$1"
}
