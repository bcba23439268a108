#!/usr/bin/env bash
# make lint: the kernel's own Rust checks over the patched tree.
#  - rustfmtcheck: every Rust file formatted as rustfmt wants;
#  - CLIPPY=1: the kernel crate, the Rust balloon core and the Rust driver built with clippy-driver;
#    a warning in a file of ours fails the check. Upstream files are not ours to fix: each clippy
#    flags different lines of them (1.85's undocumented_unsafe_blocks wants a comment where
#    newer ones do not), so their warnings are counted and shown, never failed on;
#  - rustdoc: the kernel crate's documentation builds without warnings;
#  - the driver has no unsafe code: `unsafe` belongs in the abstractions (comments may say it).
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
mkdir -p "$RB_LOGS"
fail=0
check() { # <name> <what> <make args>...
	local log=$RB_LOGS/lint-$1.log what=$2
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
# The repository's own Rust files, as paths in the kernel tree.
ours() { git -C "$RB_REPO" ls-files -- '*.rs' | grep -v '^tools/testing/rballoon/' | sed "s|^|$RB_SRC/|"; }
# Clippy: every diagnostic's location ("--> file:line:col") in a file of ours fails the check.
check_clippy() { # <what> <make args>...
	local log=$RB_LOGS/lint-clippy.log what=$1 at mine theirs
	shift
	# Warnings do not stop the build, so an object built with them would not be checked again:
	# check the crates with files of ours afresh every time.
	rm -f "$out/rust/kernel.o" "$out/mm/balloon_rust.o" "$out"/drivers/virtio/rballoon/*.o
	logged() { "${K[@]}" "$@" > "$log" 2>&1; }
	if ! rb_step "$what" logged "$@"; then
		grep -E -A12 '^error' "$log" | head -n 60
		fail=1
		return
	fi
	at=$(sed -n 's/^ *--> \([^:]*\):.*/\1/p' "$log" | sort -u)
	mine=$(grep -Fxf <(ours) <<< "$at" || true)
	theirs=$(grep -cvFxf <(ours) <<< "$at" || true)
	[ -z "$at" ] && theirs=0
	if [ -n "$mine" ]; then
		grep -E -B2 -A12 '^ *--> ('"$(paste -sd'|' <<< "$mine")"'):' "$log" | head -n 80
		rb_log "$what: warnings in files of ours (see $log)"
		fail=1
	fi
	[ "$theirs" = 0 ] || rb_log "$what: warnings in $theirs upstream file(s), not ours (see $log)"
}
# No unsafe code in the driver, whatever the stamp says (comments and doc comments excepted).
unsafe_in_driver() {
	local f hits
	for f in "$RB_REPO"/drivers/virtio/rballoon/*.rs; do
		hits=$(sed 's|//.*$||' "$f" | grep -nw unsafe || true)
		[ -z "$hits" ] || sed "s|^|${f#"$RB_REPO"/}:|" <<< "$hits"
	done
}
if hits=$(unsafe_in_driver) && [ -n "$hits" ]; then
	echo "$hits"
	rb_die "lint: unsafe code in the driver (it belongs in rust/kernel/)"
fi
rb_log "lint: no unsafe code in drivers/virtio/rballoon/"

# A clean result is remembered for the exact tree and config it was for: a warm `make test` with
# nothing changed does not redo minutes of rustdoc and clippy.
stamp=$(cat <(git -C "$RB_SRC" rev-parse HEAD) "$guest/.config" "$0" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$out/.lint-clean" 2>/dev/null)" = "$stamp" ]; then
	rb_log "lint: clean for this tree already ($(git -C "$RB_SRC" log --oneline -1 | cut -c1-60))"
	exit 0
fi
"${K[@]}" olddefconfig > /dev/null
check rustfmt "rustfmt check" rustfmtcheck
check_clippy "clippy (kernel crate, Rust balloon core and driver)" CLIPPY=1 prepare mm/balloon_rust.o drivers/virtio/
check rustdoc "rustdoc" rustdoc
[ "$fail" = 0 ] && echo "$stamp" > "$out/.lint-clean"
exit $fail
