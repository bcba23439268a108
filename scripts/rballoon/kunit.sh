#!/usr/bin/env bash
# Run the project's KUnit suites with the kernel's kunit.py (x86_64 under QEMU, LLVM=1), inside the
# toolchain root. /dev/kvm is hidden there (see in-root.sh), so kunit.py's QEMU falls back to TCG
# instead of hanging on nested KVM; ACCEL=kvm shows it again.
. "$(dirname "$0")/common.sh"
. "$(dirname "$0")/kunit-lib.sh"

# CORE=c runs the same suites against the C balloon core (mm/balloon.c) instead of the Rust one, in
# a build directory of its own so that switching does not rebuild either kernel.
case ${CORE:-rust} in
rust) kunitconfig=$RB_REPO/tools/testing/rballoon/kunitconfig out=$RB_OUT/kunit log=$RB_LOGS/kunit.log ;;
c) kunitconfig=$RB_REPO/tools/testing/rballoon/kunitconfig.c-core out=$RB_OUT/kunit-c-core log=$RB_LOGS/kunit-c-core.log ;;
*) rb_die "CORE=$CORE: rust or c" ;;
esac
extra=()
# KUNIT_FILTER: kunit.py's attribute filter, e.g. 'speed>slow' (make check leaves out the cases
# that wait out a silent host's 30 s timeouts; make test runs everything).
[ -n "${KUNIT_FILTER:-}" ] && extra+=(--filter="$KUNIT_FILTER")
# FLAVOUR=debug adds the debug guest's fragment (lockdep, KASAN, DEBUG_VM, ...): the same suites,
# any splat while they run fails the run (kunit.py reports a crash or a test's failure).
case ${RBALLOON_FLAVOUR:-guest} in
guest) ;;
debug)
	extra=(--kunitconfig="$RB_REPO/kernel/configs/rballoon-debug.config")
	out=$out-debug log=${log%.log}-debug.log
	;;
*) rb_die "FLAVOUR=$RBALLOON_FLAVOUR: guest or debug" ;;
esac
mkdir -p "$out" "$RB_LOGS"

# Same lock as the guest build: one kernel build at a time.
exec 9> "$RB_CACHE/build.lock"
flock -n 9 || { rb_log "waiting for another build to finish"; flock 9; }
RB_TREE_LOCKED=1 "$RB_REPO/scripts/rballoon/mktree.sh"

run() {
	RB_CHDIR=$RB_SRC "$RB_REPO/scripts/rballoon/in-root.sh" python3 tools/testing/kunit/kunit.py run \
		--arch=x86_64 --make_options LLVM=1 --jobs="$(nproc)" --build_dir="$out" \
		--kunitconfig="$kunitconfig" "${extra[@]}" --timeout="${KUNIT_TIMEOUT:-600}" "$@" > "$log" 2>&1
}
rc=0
# The totals go to RB_KUNIT_COUNTS when make test or make check asks for them. No stale log or count
# survives a run that never got to kunit.py.
counts=${RB_KUNIT_COUNTS:-$log.counts}
rm -f "$log" "$counts"
rb_step "KUnit (log: $log)" run "$@" || rc=$?
# kunit.py's own summary, then the totals for make test's closing line (scripts/rballoon/kunit-lib.sh).
kunit_summary "$log"
kunit_counts "$log" "$counts"
[ "$rc" = 0 ] || { tail -n 40 "$log"; exit "$rc"; }
# A splat does not fail a KUnit test by itself (lockdep and KASAN only report): it fails the run.
if kunit_splat "$out/test.log"; then
	rb_die "KUnit: a splat in the kernel log ($out/test.log)"
fi
