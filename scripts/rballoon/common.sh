# shellcheck shell=bash
# Shared settings for the rballoon pipeline scripts. Sourced, never run.

set -euo pipefail

RB_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# Everything heavy (the trixie root, the kernel source, build output) lives here, outside the checkout.
RB_CACHE=${RBALLOON_CACHE:-/var/cache/rballoon}
# RUST=min (default): trixie's own Rust, the kernel's minimum; RUST=latest: trixie-backports' newest.
# Each has a toolchain root and build directories of its own, so switching rebuilds neither; the
# patched tree is shared.
RB_RUST=${RBALLOON_RUST:-min}
case $RB_RUST in
min) RB_ROOT=$RB_CACHE/root RB_OUT=$RB_CACHE/build ;;
latest) RB_ROOT=$RB_CACHE/root-latest RB_OUT=$RB_CACHE/build-latest ;;
*) printf '[rballoon] error: RUST=%s: min or latest\n' "$RB_RUST" >&2; exit 1 ;;
esac
RB_SRC=$RB_CACHE/linux
# Logs of builds and suites; each toolchain has its own, like its build directories.
RB_LOGS=$RB_CACHE/logs$([ "$RB_RUST" = min ] || echo "-$RB_RUST")
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
