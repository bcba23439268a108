#!/usr/bin/env bash
# make bench / make bench-short: the C balloon driver against ours, same kernel, QEMU and guest.
#
#   bench.sh full    5 rounds (ROUNDS=), 4096 MiB guests (BENCH_MEM=), every workload
#                    (WORKLOADS=1,3,4,5 picks some) -> out/bench/
#   bench.sh short   1 round, 2048 MiB, workloads 1-2 and 5 -> out/bench-short/ (part of make test)
#
# Writes bench.md (the table), bench.csv (every sample), summary.csv, traces.csv and the PNG plots
# (BENCH_OUT= moves them). Fails if a run failed or a file is missing; never because of a figure.
. "$(dirname "$0")/common.sh"

mode=${1:-full}
harness=${CARGO_TARGET_DIR:-$RB_CACHE/harness-target}/release/rballoon
[ -x "$harness" ] || rb_die "no harness at $harness: run 'make harness' first"

args=()
case "$mode" in
full)
	out=${BENCH_OUT:-$RB_REPO/out/bench}
	[ -n "${ROUNDS:-}" ] && args+=(--rounds "$ROUNDS")
	[ -n "${BENCH_MEM:-}" ] && args+=(--mem "$BENCH_MEM")
	[ -n "${WORKLOADS:-}" ] && args+=(--workloads "$WORKLOADS")
	;;
short)
	out=${BENCH_OUT:-$RB_REPO/out/bench-short}
	args+=(--short)
	;;
*) rb_die "usage: bench.sh full|short" ;;
esac

# The plots need one TrueType font; Debian's DejaVu is the usual one. Nothing is bundled.
if [ -z "${RBALLOON_FONT:-}" ] &&
	! { find /usr/share/fonts /usr/local/share/fonts "$RB_ROOT/usr/share/fonts" -name '*.ttf' 2>/dev/null || true; } | grep -q .; then
	rb_log "installing fonts-dejavu-core on the host for the plots"
	apt-get update -qq && apt-get install -y -qq fonts-dejavu-core >/dev/null
fi

rm -rf "$out"
mkdir -p "$out" "$RB_LOGS"
log=$RB_LOGS/bench-$mode.log
rc=0
run() { "$harness" bench --out "$out" "${args[@]}" 2>&1 | tee "$log"; }
rb_step "benchmark ($mode, output in $out)" run || rc=$?

# Every file the benchmark promises must be there, and every PNG must be a PNG.
missing=0
want=(bench.md bench.csv summary.csv traces.csv balloon-size.png ratios.png)
grep -q ',rss,' "$out/traces.csv" 2>/dev/null && want+=(reporting-rss.png)
for f in "${want[@]}"; do
	if [ ! -s "$out/$f" ]; then
		rb_log "missing: $out/$f"
		missing=1
	elif [[ $f == *.png ]] && [ "$(head -c 8 "$out/$f" | od -An -tx1 | tr -d ' \n')" != 89504e470d0a1a0a ]; then
		rb_log "not a PNG: $out/$f"
		missing=1
	fi
done
[ "$rc" = 0 ] || rb_log "benchmark: a run failed (see $log)"
[ "$missing" = 0 ] || rb_log "benchmark: files missing in $out"
[ "$rc" = 0 ] && [ "$missing" = 0 ] && rb_log "benchmark: table $out/bench.md, plots $out/*.png"
[ "$rc" = 0 ] && [ "$missing" = 0 ]
