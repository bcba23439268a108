#!/usr/bin/env bash
# make matrix: the project's KUnit suites on other architectures, through the kernel's kunit.py
# under QEMU (TCG) in the toolchain root, one leg per architecture and page size. Not part of make
# test or make check (an arm64 leg takes 20-30 minutes on two cores).
#
# Legs (MATRIX_LEGS, or make matrix LEGS=..., default all):
#   arm64-4k    kunit.py --arch=arm64, LLVM=1, 4 KiB pages
#   arm64-64k   the same with CONFIG_ARM64_64K_PAGES=y
#   s390x       kunit.py --arch=s390, LLVM=1: big-endian; built with RUST=latest (the newest Rust
#               trixie-backports serves), as Linux 7.3 wants Rust 1.96 or newer for s390
#   harness-arm64  not KUnit: the host harness's smoke test on an aarch64 -M virt guest
#               (scripts/rballoon/smoke-arm64.sh: the inflate/deflate walk, free page reporting
#               and compaction, PCI and MMIO, both drivers compared in each test)
# Each leg runs the suites of tools/testing/rballoon/kunitconfig less its x86-only lines, plus the
# architecture's fragment (tools/testing/rballoon/kunitconfig.<arch>) and the leg's page size, in a
# build directory of its own ($RB_OUT/kunit-<leg>), with its log in $RB_LOGS/kunit-<leg>.log.
# QEMU for the architecture comes from rballoon-matrix.lock, installed into the root on demand
# (scripts/rballoon/matrix-root.sh).
#
# As in kunit.sh: the build holds $RB_CACHE/build.lock (one kernel build at a time) and assembles
# the patched tree first; a splat in the kernel log fails the leg. Unlike kunit.sh, the lock is let
# go once the kernel is built: the tests then run for minutes under TCG and build nothing.
# KUNIT_TIMEOUT (seconds, default 3600) bounds each leg's test run; KUNIT_FILTER is kunit.py's
# attribute filter (e.g. 'speed>slow'), as for make kunit.
#
# One line per leg, then "rballoon: N passed, N failed, N skipped" over all legs; fails if a leg
# failed to build, had a failing or crashed test, or a splat.
. "$(dirname "$0")/common.sh"
. "$(dirname "$0")/kunit-lib.sh"
. "$(dirname "$0")/tally.sh"

all_legs="arm64-4k arm64-64k s390x harness-arm64"
legs=${MATRIX_LEGS:-$all_legs}
timeout=${KUNIT_TIMEOUT:-3600}

# A leg: its architecture (kunit.py --arch), page size, the config line that picks it ("-" for
# none) and the toolchain it builds with (RUST=min or latest: a root and build directories each;
# make matrix RUST=latest moves the legs that can build with either).
leg_def() { # LEG -> "ARCH PAGES CONFIG RUST"
	case $1 in
	arm64-4k) echo "arm64 4K CONFIG_ARM64_4K_PAGES=y $RB_RUST" ;;
	arm64-64k) echo "arm64 64K CONFIG_ARM64_64K_PAGES=y $RB_RUST" ;;
	s390x) echo "s390 4K - latest" ;;
	harness-arm64) echo "arm64 4K - $RB_RUST" ;;
	*) return 1 ;;
	esac
}
# QEMU options added to kunit.py's own for the architecture (a later -cpu or -m wins). arm64:
# kunit.py runs '-M virt -cpu max -m 1024'; pointer authentication with QEMU's
# implementation-defined algorithm instead of QARMA5, which QEMU documents as much cheaper under
# TCG (the kernel signs return addresses with it); 5 GiB, so that memory above 4 GiB makes a
# ZONE_NORMAL beside ZONE_DMA (balloon_core migrates a page across zones) and free 512 MiB blocks
# exist for free page hinting with 64 KiB pages (1 GiB has none).
# s390: kunit.py runs '-machine s390-ccw-virtio -cpu qemu -m 1024'; 3 GiB, so that memory above
# 2 GiB makes a ZONE_NORMAL beside ZONE_DMA, as on arm64.
qemu_args_of() { # ARCH
	case $1 in
	arm64) echo "-cpu max,pauth-impdef=on -m 5120" ;;
	s390) echo "-m 3072" ;;
	esac
}
for leg in $legs; do
	leg_def "$leg" > /dev/null || rb_die "MATRIX_LEGS: no leg $leg (legs: $all_legs)"
done

kunit_py() { # RUST kunit.py SUBCOMMAND ARGS..., in that toolchain's root, from the patched tree
	RBALLOON_RUST=$1 RB_CHDIR=$RB_SRC "$RB_REPO/scripts/rballoon/in-root.sh" python3 tools/testing/kunit/kunit.py "${@:2}"
}
# A toolchain's build and log directories, as common.sh names them (one place says where they are).
dirs_of() { # RUST -> "RB_OUT RB_LOGS"
	# shellcheck disable=SC2016 # expanded by the inner shell, after it sourced common.sh
	RBALLOON_RUST=$1 bash -c '. "$1"; echo "$RB_OUT $RB_LOGS"' _ "$RB_REPO/scripts/rballoon/common.sh"
}

# The leg's kunitconfig: kunitconfig less the lines the arch's fragment drops ("# matrix-drop:"),
# the fragment, the page size.
write_kunitconfig() { # ARCH CONFIG FILE
	local base=$RB_REPO/tools/testing/rballoon/kunitconfig frag=$RB_REPO/tools/testing/rballoon/kunitconfig.$1
	local drop
	[ -f "$frag" ] || rb_die "no $frag"
	drop=$(sed -n 's/^# matrix-drop://p' "$frag" | xargs | tr ' ' '|')
	{
		echo "# Written by scripts/rballoon/matrix.sh: kunitconfig less ${drop:-nothing}, kunitconfig.$1, the page size."
		if [ -n "$drop" ]; then grep -vE "^($drop)=" "$base"; else cat "$base"; fi
		cat "$frag"
		echo "$2"
	} > "$3.new"
	# Replaced only when it changed (kunit.py compares contents; this keeps the file's date).
	if cmp -s "$3.new" "$3"; then rm -f "$3.new"; else mv "$3.new" "$3"; fi
}

# The cases kunit.py marked failed or crashed in LOG, as suite.case, on one line (kunit.py lists
# them itself only up to 10).
failed_cases() { # LOG
	awk '/^\[[0-9:]+\] =+ [^ []+ \([0-9]+ subtests?\) =+$/ {suite = $3}
		/^\[[0-9:]+\] \[(FAILED|CRASHED)\] [^ ]+$/ {printf "%s%s.%s", (n++ ? ", " : ""), suite, $3}
		END {if (n) print ""}' "$1"
}

# What a toolchain's root says its rustc is, for the summary.
rustc_of() { # RUST
	RBALLOON_RUST=$1 "$RB_REPO/scripts/rballoon/in-root.sh" rustc --version | cut -d' ' -f1,2
}

results=() failing=()
run_leg() { # LEG
	local leg=$1 arch pages config rust outs logs out log counts kcfg t0 t1 t2 t3 rc=0 why=
	local p=0 f=0 s=0 c=0 filter=() qemu_args
	read -r arch pages config rust <<< "$(leg_def "$leg")"
	read -r outs logs <<< "$(dirs_of "$rust")"
	out=$outs/kunit-$leg log=$logs/kunit-$leg.log counts=$logs/kunit-$leg.log.counts
	kcfg=$out/rballoon.kunitconfig
	mkdir -p "$out" "$logs"
	rm -f "$log" "$counts"
	write_kunitconfig "$arch" "$([ "$config" = - ] || echo "$config")" "$kcfg"
	[ -n "${KUNIT_FILTER:-}" ] && filter=(--filter="$KUNIT_FILTER")
	qemu_args=$(qemu_args_of "$arch")

	t0=$(date +%s)
	exec 9> "$RB_CACHE/build.lock"
	flock -n 9 || { rb_log "$leg: waiting for another build to finish"; flock 9; }
	t1=$(date +%s)
	rb_log "$leg: building ($arch, $pages pages, RUST=$rust; log: $log)"
	if ! RB_TREE_LOCKED=1 "$RB_REPO/scripts/rballoon/mktree.sh"; then
		rc=1 why="patched tree"
	elif ! kunit_py "$rust" build --arch="$arch" --make_options LLVM=1 --jobs="$(nproc)" --build_dir="$out" \
		--kunitconfig="$kcfg" >> "$log" 2>&1; then
		rc=1 why=build
	fi
	exec 9>&-
	t2=$(date +%s)
	if [ "$rc" = 0 ]; then
		rb_log "$leg: built in $((t2 - t1)) s; running the suites under QEMU (TCG)"
		kunit_py "$rust" exec --arch="$arch" --build_dir="$out" --kunitconfig="$kcfg" --timeout="$timeout" \
			${qemu_args:+--qemu_args="$qemu_args"} "${filter[@]}" >> "$log" 2>&1 || rc=$?
	fi
	t3=$(date +%s)

	kunit_summary "$log"
	kunit_counts "$log" "$counts"
	[ -s "$counts" ] && read -r p f s c < "$counts"
	if [ -n "$why" ]; then
		tail -n 40 "$log"
	elif [ "$rc" != 0 ]; then
		why="kunit.py exit $rc"
		[ -s "$counts" ] || { why="no results (kunit.py exit $rc)"; tail -n 40 "$log"; }
	fi
	if [ -z "$why" ] && kunit_splat "$out/test.log"; then
		why="splat in $out/test.log" rc=1
	fi
	[ -n "$why" ] && [ $((f + c)) -gt 0 ] && why="$((f + c)) failed; $why"
	tally_kunit "$rc" "$counts"
	results+=("$(printf '%s %s pages, %s: %s passed, %s failed, %s skipped, %s crashed; %s s (build %s s, run %s s%s): %s' \
		"$arch" "$pages" "$(rustc_of "$rust")" "$p" "$f" "$s" "$c" "$((t3 - t1))" "$((t2 - t1))" "$((t3 - t2))" \
		"$([ $((t1 - t0)) -lt 5 ] || echo ", after $((t1 - t0)) s waiting for the build lock")" \
		"${why:+FAILED, }${why:-ok}")")
	failing+=("$(failed_cases "$log" | sed "s/^./$arch $pages pages, failed: &/")")
}

# One make matrix at a time: the legs' build directories are its own.
exec 7> "$RB_CACHE/matrix.lock"
flock -n 7 || { rb_log "waiting for another make matrix to finish"; flock 7; }
# Each toolchain the legs build with: its root (make matrix depends on make root, which makes the
# RUST=min one; mkroot.sh does nothing when a root is up to date) and the matrix's packages in it.
rusts=$(for leg in $legs; do leg_def "$leg" | cut -d' ' -f4; done | sort -u)
for rust in $rusts; do
	RBALLOON_RUST=$rust "$RB_REPO/scripts/rballoon/mkroot.sh" ||
		rb_die "make matrix: no toolchain root for RUST=$rust (see above)"
	RBALLOON_RUST=$rust "$RB_REPO/scripts/rballoon/matrix-root.sh" ||
		rb_die "make matrix: the matrix's packages are not in the RUST=$rust root (see above)"
done

t_all=$(date +%s)
head=$(git -C "$RB_REPO" rev-parse --short HEAD)
dirty=$(git -C "$RB_REPO" status --porcelain -- rust drivers mm include kernel arch lib tools | wc -l)
rb_log "make matrix: legs $legs at $head$([ "$dirty" = 0 ] || echo ", uncommitted files in the kernel overlay: $dirty")"
# The harness leg: smoke-arm64.sh builds its guest (under the build lock) and runs six harness
# tests; cargo's result lines are tallied as make test tallies them.
run_harness_leg() { # LEG
	local leg=$1 rc=0 t0 log=$RB_LOGS/smoke-arm64.log p f s
	t0=$(date +%s)
	rb_log "$leg: the harness smoke test on an aarch64 guest (log: $log)"
	"$RB_REPO/scripts/rballoon/smoke-arm64.sh" > /dev/null 2>&1 || rc=$?
	read -r p f s <<< "$(sed -n 's/^test result: .* \([0-9]*\) passed; \([0-9]*\) failed; \([0-9]*\) ignored.*/\1 \2 \3/p' "$log" |
		awk '{p += $1; f += $2; s += $3} END {print p + 0, f + 0, s + 0}')"
	tally_cargo "$rc" "$log"
	results+=("$(printf 'arm64 4K pages, harness on -M virt (PCI, MMIO), %s: %s passed, %s failed, %s skipped; %s s: %s' \
		"$(rustc_of "$RB_RUST")" "$p" "$f" "$s" "$(($(date +%s) - t0))" \
		"$([ "$rc" = 0 ] && echo ok || echo "FAILED, exit $rc")")")
	failing+=("$(sed -n 's/^test \([^ ]*\) \.\.\. FAILED$/\1/p' "$log" | xargs | sed 's/^./arm64 harness, failed: &/')")
}

for leg in $legs; do
	case $leg in
	harness-*) run_harness_leg "$leg" ;;
	*) run_leg "$leg" ;;
	esac
done

{
	echo "make matrix at $head$([ "$dirty" = 0 ] || echo " (uncommitted files in the kernel overlay: $dirty)"), $(date -u '+%Y-%m-%d %H:%M UTC'), $(( $(date +%s) - t_all )) s:"
	printf '    %s\n' "${results[@]}"
	printf '    %s\n' "${failing[@]}" | grep -v '^ *$' || true
} | tee "$RB_LOGS/matrix.txt"
# The s390x leg skips the two freeze cases (no system sleep there), saying so: skips are printed,
# not failed on.
tally_end skips-ok
