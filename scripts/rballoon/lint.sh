#!/usr/bin/env bash
# make lint: the kernel's own Rust checks over the patched tree.
#  - rustfmtcheck: every Rust file formatted as rustfmt wants;
#  - CLIPPY=1: the kernel crate and the Rust driver built with clippy-driver, warnings are errors;
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
"$RB_REPO/scripts/rballoon/mktree.sh"
cmp -s "$guest/.config" "$out/.config" || cp "$guest/.config" "$out/.config"

K=("$RB_REPO/scripts/rballoon/in-root.sh" make -C "$RB_SRC" O="$out" LLVM=1 -j"$(nproc)" -s)
log=$RB_CACHE/logs/lint.log
mkdir -p "$RB_CACHE/logs"
: > "$log"
fail=0
check() { # <what> <make args>...
	local what=$1
	shift
	if rb_step "$what" "${K[@]}" "$@" >> "$log" 2>&1; then
		if grep -q '^warning' "$log"; then
			grep -A8 '^warning' "$log" | head -60
			rb_log "$what: warnings (see $log)"
			fail=1
		fi
	else
		tail -n 60 "$log"
		fail=1
	fi
	: > "$log.prev"; cat "$log" >> "$log.prev"; : > "$log"
}
"${K[@]}" olddefconfig > /dev/null
check "rustfmt check" rustfmtcheck
check "clippy (kernel crate and Rust driver)" CLIPPY=1 KRUSTFLAGS=-Dwarnings prepare drivers/virtio/
check "rustdoc" rustdoc
exit $fail
