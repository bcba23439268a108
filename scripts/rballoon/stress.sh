#!/usr/bin/env bash
# make stress: the stress and fault suite (`rballoon stress`) for each driver in turn.
#
#   STRESS_DRIVERS  drivers to run, in order (default "rust c")
#   STRESS_SECONDS  random phase per driver (default 540: both drivers within 20 minutes)
#   STRESS_SEED     replay a run (default: the time, printed)
#   RBALLOON_FLAVOUR guest (default) or debug (KASAN, lockdep, fail_page_alloc, kmemleak)
#   TRANSPORT=mmio  virtio-mmio on microvm instead of PCI
#
# Prints each driver's counts per action and verdict; exits non-zero if one failed.
. "$(dirname "$0")/common.sh"
cd "$RB_REPO"

export STRESS_SECONDS=${STRESS_SECONDS:-540}
harness=${CARGO_TARGET_DIR:-$RB_CACHE/harness-target}/release/rballoon
[ -x "$harness" ] || rb_die "no harness at $harness: make harness first"
args=()
[ "${TRANSPORT:-pci}" = mmio ] && args+=(--mmio)

failed=()
for d in ${STRESS_DRIVERS:-rust c}; do
	rb_step "stress, $d driver, ${STRESS_SECONDS} s, ${RBALLOON_FLAVOUR:-guest} guest" \
		"$harness" stress --driver "$d" "${args[@]}" || failed+=("$d")
done
if [ "${#failed[@]}" -gt 0 ]; then
	rb_log "stress FAILED for: ${failed[*]}"
	exit 1
fi
rb_log "stress passed for: ${STRESS_DRIVERS:-rust c}"
