#!/usr/bin/env bash
# Run a command inside the trixie toolchain root.
#
# bubblewrap gives the command a private mount namespace: nothing stays mounted when a run dies.
# Its /dev is a fresh minimal one, so /dev/kvm is not visible unless ACCEL=kvm asks for it; that is
# what makes kunit.py and our runner fall back to TCG (nested KVM stalls on these machines).
. "$(dirname "$0")/common.sh"

[ -x "$RB_ROOT/usr/bin/clang" ] || rb_die "no toolchain root at $RB_ROOT: run 'make root' first"

# Keep the caller's directory when it is visible inside (the repo or the cache), else start at /.
dir=${RB_CHDIR:-$PWD}
case "$dir/" in "$RB_REPO"/*|"$RB_CACHE"/*) ;; *) dir=/ ;; esac
args=(--bind "$RB_ROOT" / --dev /dev --proc /proc --tmpfs /tmp
	--bind "$RB_CACHE" "$RB_CACHE" --bind "$RB_REPO" "$RB_REPO"
	--die-with-parent --setenv HOME /tmp --setenv PATH /usr/sbin:/usr/bin:/sbin:/bin
	--setenv LANG C.UTF-8 --chdir "$dir")
if [ "${ACCEL:-tcg}" = kvm ] && [ -e /dev/kvm ]; then
	args+=(--dev-bind /dev/kvm /dev/kvm)
fi
exec bwrap "${args[@]}" "$@"
