# shellcheck shell=bash
# Shared settings for the rballoon pipeline scripts. Sourced, never run.

set -euo pipefail

RB_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# Everything heavy (the trixie root, the kernel source, build output) lives here, outside the checkout.
RB_CACHE=${RBALLOON_CACHE:-/var/cache/rballoon}
RB_ROOT=$RB_CACHE/root
RB_SRC=$RB_CACHE/linux
RB_OUT=$RB_CACHE/build
RB_RUN=$RB_CACHE/run
RB_LOCK=$RB_REPO/rballoon.lock

rb_log() { printf '[rballoon %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
rb_die() { printf '[rballoon] error: %s\n' "$*" >&2; exit 1; }

# Time a long step and say how long it took.
rb_step() {
	local what=$1 t0 rc=0
	shift
	rb_log "$what ..."
	t0=$(date +%s)
	"$@" || rc=$?
	if [ "$rc" = 0 ]; then
		rb_log "$what: $(( $(date +%s) - t0 )) s"
	else
		rb_log "$what: $(( $(date +%s) - t0 )) s, FAILED (exit $rc)"
	fi
	return "$rc"
}
