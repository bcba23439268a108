# shellcheck shell=bash
# The stages make test and make check share, each counted into the closing line (tally.sh).
# Sourced after common.sh.
. "$RB_REPO/scripts/rballoon/tally.sh"

# Start a run (NAME: "make test", ...): from the repository, logs ready, the clock started; then
# the builds, KUnit and lint, which every run has.
suite_begin() { # NAME
	SUITE_NAME=$1 SUITE_T0=$(date +%s)
	cd "$RB_REPO"
	mkdir -p "$RB_LOGS"
	suite_builds
	suite_kunit "${1#make }"
	suite_lint
}

# End a run: how long it took, and the closing line; fails unless every test passed.
suite_end() {
	rb_log "$SUITE_NAME took $(( $(date +%s) - SUITE_T0 )) s"
	tally_end
}

# The guest and the harness: without them nothing else can run, so a failed build is counted as
# the one failure, the closing line printed, and the run stopped.
suite_builds() {
	local what rc
	for what in guest harness; do
		rc=0
		rb_step "build: $what" make --no-print-directory "$what" || rc=$?
		if [ "$rc" != 0 ]; then
			tally_one "$rc" "build of the $what"
			tally_end
			exit 1
		fi
	done
}

# KUnit through kunit.py, each test once; its totals go to a file of this run's own (NAME).
suite_kunit() { # NAME
	local rc=0
	export RB_KUNIT_COUNTS=$RB_LOGS/kunit-$1.counts
	make --no-print-directory kunit || rc=$?
	tally_kunit "$rc" "$RB_KUNIT_COUNTS"
}

# rustfmt, clippy, rustdoc and no unsafe code in the driver: one test.
suite_lint() {
	local rc=0
	make --no-print-directory lint || rc=$?
	tally_one "$rc" lint
}
