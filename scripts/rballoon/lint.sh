#!/usr/bin/env bash
# make lint: the kernel's own Rust checks over the patched tree.
#  - rustfmtcheck: every Rust file formatted as rustfmt wants;
#  - CLIPPY=1: the kernel crate, the Rust balloon core and the Rust driver built with clippy-driver, warnings are errors;
#  - rustdoc: the kernel crate's documentation builds without warnings.
# Clippy and rustdoc build in their own output directory ($RB_OUT/lint), configured like the guest,
# so the guest build is not rebuilt each time.
. "$(dirname "$0")/common.sh"

out=$RB_OUT/lint
guest=$RB_OUT/guest
[ -f "$guest/.config" ] || rb_die "configure the guest kernel first (make kernel)"
mkdir -p "$out"
exec 9> "$RB_CACHE/build.lock"
flock -n 9 || { rb_log "waiting for another build to finish"; flock 9; }
RB_TREE_LOCKED=1 "$RB_REPO/scripts/rballoon/mktree.sh"
cmp -s "$guest/.config" "$out/.config" || cp "$guest/.config" "$out/.config"

K=("$RB_REPO/scripts/rballoon/in-root.sh" make -C "$RB_SRC" O="$out" LLVM=1 -j"$(nproc)" -s)
mkdir -p "$RB_CACHE/logs"
fail=0
check() { # <name> <what> <make args>...
	local log=$RB_CACHE/logs/lint-$1.log what=$2
	shift 2
	logged() { "${K[@]}" "$@" > "$log" 2>&1; }
	if ! rb_step "$what" logged "$@"; then
		tail -n 60 "$log"
		fail=1
	elif grep -q '^warning' "$log"; then
		grep -A8 '^warning' "$log" | head -n 60
		rb_log "$what: warnings (see $log)"
		fail=1
	fi
}
# A clean result is remembered for the exact tree and config it was for: a warm `make test` with
# nothing changed does not redo minutes of rustdoc and clippy.
stamp=$(cat <(git -C "$RB_SRC" rev-parse HEAD) "$guest/.config" "$0" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$out/.lint-clean" 2>/dev/null)" = "$stamp" ]; then
	rb_log "lint: clean for this tree already ($(git -C "$RB_SRC" log --oneline -1 | cut -c1-60))"
	exit 0
fi
"${K[@]}" olddefconfig > /dev/null
check rustfmt "rustfmt check" rustfmtcheck
check clippy "clippy (kernel crate, Rust balloon core and driver)" CLIPPY=1 KRUSTFLAGS=-Dwarnings prepare mm/balloon_rust.o drivers/virtio/
check rustdoc "rustdoc" rustdoc
[ "$fail" = 0 ] && echo "$stamp" > "$out/.lint-clean"
exit $fail
