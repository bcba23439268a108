#!/usr/bin/env bash
# make lint: the kernel's own Rust checks over the patched tree.
#  - rustfmtcheck: every Rust file formatted as rustfmt wants;
#  - CLIPPY=1: the kernel crate, the Rust balloon core and the Rust driver built with clippy-driver;
#    a warning in a file of ours fails the check. Upstream files are not ours to fix: each clippy
#    flags different lines of them (1.85's undocumented_unsafe_blocks wants a comment where
#    newer ones do not), so their warnings are counted and shown, never failed on;
#  - rustdoc: the kernel crate's documentation builds without warnings;
#  - a registration leaked on data that lives shorter than its binding does not compile
#    (tools/testing/rballoon/compile-fail/);
#  - the driver has no unsafe code: `unsafe` belongs in the abstractions. rustc enforces it
#    (`#![forbid(unsafe_code)]`, checked to be there below);
#  - the series as `make patches` writes it: patches/ numbered in series order, the kernel's
#    checkpatch.pl --strict, a MAINTAINERS entry for every new file (checkpatch.sh).
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
# No unsafe code in the driver. rustc refuses it wherever the driver is built (the guest kernel this
# lint depends on, clippy below, KUnit), naming file and line: each crate root of the driver says
# `#![forbid(unsafe_code)]`, which no `allow` further in can lift; comments, doc comments and
# strings are not code to rustc. Checked here whatever the stamp says: the attribute is there, and
# every other .rs file is a module of a crate (one no crate compiles would be checked by nothing).
forbid_unsafe_in_driver() {
	local dir=$RB_REPO/drivers/virtio/rballoon f stem bad=0
	for f in "$dir"/*.rs; do
		stem=$(basename "$f" .rs)
		if grep -Eq "^obj-[^+]*\+= *(.* )?$stem\.o( |\$)" "$dir/Makefile"; then
			grep -qxF '#![forbid(unsafe_code)]' "$f" ||
				{ echo "${f#"$RB_REPO"/}: the crate root lacks #![forbid(unsafe_code)]"; bad=1; }
		elif ! grep -Eq "^ *(pub(\([a-z]+\))? )?mod $stem;" "$dir"/*.rs; then
			echo "${f#"$RB_REPO"/}: a module of no crate of the driver, so nothing compiles it"
			bad=1
		fi
	done
	return $bad
}
# Leaking a registration cannot let its callbacks outlive what they borrow (rust/kernel/binding.rs):
# where the type system can tell, the leak does not compile. Kernel doctests cannot be
# `compile_fail`, so tools/testing/rballoon/compile-fail/leak_borrowed.rs is built here with the
# driver's own rustc command line (kbuild's .cmd file of the clippy build above): it must be refused
# ("does not live long enough") with --cfg borrow_local, and build without it (the control: the same
# leaks on 'static data), so that a failure for any other reason is not taken for the proof.
compile_fail_leak() {
	local cmdfile=$out/drivers/virtio/rballoon/.rballoon.o.cmd log=$RB_LOGS/lint-compile-fail.log
	local src=$RB_SRC/tools/testing/rballoon/compile-fail/leak_borrowed.rs dir=$out/compile-fail cmd
	[ -f "$cmdfile" ] || { rb_log "compile-fail: no $cmdfile"; return 1; }
	cmd=$(sed -n 's/^savedcmd_[^ ]* := //p' "$cmdfile" | sed -e 's/ ; .*//' \
		-e "s| --out-dir .*| --crate-name leak_borrowed --out-dir $dir --emit=obj=$dir/leak.o $src|")
	mkdir -p "$dir"
	rc() { "$RB_REPO/scripts/rballoon/in-root.sh" bash -c "cd '$out' && RUSTC_BOOTSTRAP=1 $cmd $*" >> "$log" 2>&1; }
	: > "$log"
	if ! rc; then
		tail -n 30 "$log"
		rb_log "compile-fail: the control (leaks on 'static data) does not build (see $log)"
		return 1
	fi
	: > "$log"
	if rc --cfg borrow_local || ! grep -q 'does not live long enough' "$log"; then
		tail -n 30 "$log"
		rb_log "compile-fail: leaking a registration on borrowed data was not refused (see $log)"
		return 1
	fi
	rb_log "lint: leaking a registration on data shorter-lived than its binding does not compile"
}
forbid_unsafe_in_driver ||
	rb_die "lint: the driver's unsafe code is not forbidden (it belongs in rust/kernel/)"
rb_log "lint: drivers/virtio/rballoon/ forbids unsafe code"
"$RB_REPO/scripts/rballoon/checkpatch.sh" numbering || rb_die "lint: rename the patches as above"

# A clean result is remembered for the exact tree and config it was for: a warm `make test` with
# nothing changed does not redo minutes of rustdoc and clippy.
stamp=$(cat <(git -C "$RB_SRC" rev-parse HEAD) "$guest/.config" "$0" \
	"$RB_REPO"/scripts/rballoon/{checkpatch,export-patches}.sh \
	"$RB_REPO/patches/msg/cover-letter.txt" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$out/.lint-clean" 2>/dev/null)" = "$stamp" ]; then
	rb_log "lint: clean for this tree already ($(git -C "$RB_SRC" log --oneline -1 | cut -c1-60))"
	exit 0
fi
"${K[@]}" olddefconfig > /dev/null
check rustfmt "rustfmt check" rustfmtcheck
check_clippy "clippy (kernel crate, Rust balloon core and driver)" CLIPPY=1 prepare mm/balloon_rust.o drivers/virtio/
compile_fail_leak || fail=1
check rustdoc "rustdoc" rustdoc
rb_step "checkpatch --strict and MAINTAINERS (the series as make patches writes it)" \
	"$RB_REPO/scripts/rballoon/checkpatch.sh" || fail=1
[ "$fail" = 0 ] && echo "$stamp" > "$out/.lint-clean"
exit $fail
