#!/usr/bin/env bash
# matrix-root.sh [LOCK]: install the packages make matrix needs beyond rballoon.lock (default
# rballoon-matrix.lock) into the existing toolchain root, with apt inside the root (in-root.sh).
#
# Idempotent: when every package is installed at a version the lock allows, nothing is fetched.
# Otherwise, as root-install.sh does for rballoon.lock: each package's suite must serve it at a
# version its glob matches (and at its least version or newer), or the script says what the suite
# serves instead and installs nothing. The install takes no recommends and must only add packages:
# one that would upgrade or remove a package the root has (what make test runs with) is refused.
# The versions installed are recorded in <root>/.rballoon-matrix-versions.
. "$(dirname "$0")/common.sh"

lock=${1:-$RB_REPO/rballoon-matrix.lock}
record=$RB_ROOT/.rballoon-matrix-versions
[ -f "$lock" ] || rb_die "no $lock"
[ -x "$RB_ROOT/usr/bin/clang" ] || rb_die "no toolchain root at $RB_ROOT: run 'make root' first"
name=$(basename "$lock")

case $RB_RUST in
min) rust_suite=trixie ;;
latest) rust_suite=trixie-backports ;;
esac

# apt's download helpers run as _apt, which may not write the sandbox's /tmp.
in_root() { TMPDIR=/var/tmp DEBIAN_FRONTEND=noninteractive "$RB_REPO/scripts/rballoon/in-root.sh" "$@"; }
# Versions of PKG that SUITE serves, newest first (as in root-install.sh).
served() { in_root apt-cache madison "$1" 2>/dev/null | awk -F' [|] ' -v s=" $2/" 'index($3, s) {gsub(/ /, "", $2); print $2}'; }
# shellcheck disable=SC2016 # dpkg-query's format, not the shell's
installed() { in_root dpkg-query -W -f '${db:Status-Abbrev} ${Version}\n' "$1" 2>/dev/null | awk '$1 == "ii" {print $2}' || true; }
allowed() {
	# shellcheck disable=SC2053 # the glob is meant to match as a pattern
	[[ $1 == $2 ]] && { [ -z "$3" ] || in_root dpkg --compare-versions "$1" ge "$3"; }
}

entries=()
while read -r pkg glob suite least; do
	case "$pkg" in ''|'#'*) continue ;; esac
	[ "$suite" = rust ] && suite=$rust_suite
	entries+=("$pkg $glob $suite $least")
done < "$lock"

record_versions() {
	local e pkg glob suite least
	: > "$record"
	for e in "${entries[@]}"; do
		read -r pkg glob suite least <<< "$e"
		echo "$pkg $(installed "$pkg") $suite" >> "$record"
	done
}

# Two make matrix runs must not both run apt in the root.
exec 8> "$RB_CACHE/matrix-root.lock"
flock -n 8 || { rb_log "waiting for another make matrix to finish installing"; flock 8; }

missing=()
for e in "${entries[@]}"; do
	read -r pkg glob suite least <<< "$e"
	have=$(installed "$pkg")
	if [ -n "$have" ] && allowed "$have" "$glob" "$least"; then
		continue
	fi
	missing+=("$e")
done
if [ "${#missing[@]}" = 0 ]; then
	record_versions
	rb_log "matrix packages: $(awk '{printf "%s %s, ", $1, $2}' "$record" | sed 's/, $//')"
	exit 0
fi

rb_log "installing the matrix's packages into $RB_ROOT ($name)"
in_root apt-get update -q >&2 ||
	rb_die "could not update the root's package lists (is Debian's archive reachable?); nothing installed"

bad=0
declare -A by_suite=()
for e in "${missing[@]}"; do
	read -r pkg glob suite least <<< "$e"
	have=$(served "$pkg" "$suite" | head -n1)
	if [ -z "$have" ]; then
		# shellcheck disable=SC2001 # a regular expression, as in root-install.sh
		stem=$(sed 's/-\?[0-9][0-9.]*$//' <<< "$pkg")
		instead=$(in_root apt-cache pkgnames "$stem" 2>/dev/null | sort | while read -r p; do
			v=$(served "$p" "$suite" | head -n1); [ -n "$v" ] && printf '%s %s; ' "$p" "$v"; done || true)
		echo "$name: $suite no longer serves $pkg; it serves instead: ${instead:-nothing named $stem*}" | sed "s/; $//" >&2
		bad=1
	elif ! allowed "$have" "$glob" "$least"; then
		echo "$name: $suite serves $pkg $have, not one that can work ($glob${least:+, at least $least})" >&2
		bad=1
	else
		by_suite[$suite]+="$pkg "
	fi
done
[ "$bad" = 0 ] || rb_die "$name: nothing installed (see above)"

# apt-get install, without recommends, from SUITE (trixie: the default release).
apt_install() { # SIMULATE|REAL SUITE PKG...
	local mode=$1 suite=$2 t=()
	shift 2
	[ "$suite" = trixie ] || t=(-t "$suite")
	if [ "$mode" = SIMULATE ]; then
		in_root apt-get install -s -q --no-install-recommends "${t[@]}" "$@" 2>&1
	else
		in_root apt-get install -y -q --no-install-recommends "${t[@]}" "$@" >&2
	fi
}

# Only new packages: an "Inst pkg [old version] (...)" line is an upgrade, "Remv" a removal.
for suite in "${!by_suite[@]}"; do
	# shellcheck disable=SC2086 # word splitting of the package list is wanted
	plan=$(apt_install SIMULATE "$suite" ${by_suite[$suite]}) ||
		rb_die "$name: apt cannot install ${by_suite[$suite]}from $suite:$(printf '\n%s' "$plan" | tail -n 15)"
	changed=$(awk '$1 == "Remv" {print $2 " (removed)"} $1 == "Inst" && $3 ~ /^\[/ {print $2 " " $3 " (upgraded)"}' <<< "$plan")
	if [ -n "$changed" ]; then
		rb_die "$name: installing ${by_suite[$suite]}from $suite would change packages make test runs with:
$(awk '{print "    " $0}' <<< "$changed")
nothing installed. Rebuild the root with what the suites serve today (rm $RB_ROOT/.rballoon-stamp; make root), then make matrix again."
	fi
done
for suite in "${!by_suite[@]}"; do
	# shellcheck disable=SC2086
	apt_install REAL "$suite" ${by_suite[$suite]} || rb_die "$name: apt-get install failed (see above)"
done
in_root apt-get clean

# Check what is there now, as root-install.sh does.
for e in "${entries[@]}"; do
	read -r pkg glob suite least <<< "$e"
	have=$(installed "$pkg")
	if [ -z "$have" ]; then
		echo "$name: $pkg did not get installed" >&2
		bad=1
	elif ! allowed "$have" "$glob" "$least"; then
		echo "$name: $pkg $have installed, not one that can work ($glob${least:+, at least $least})" >&2
		bad=1
	fi
done
record_versions
[ "$bad" = 0 ] || rb_die "$name: see above"
rb_log "matrix packages: $(awk '{printf "%s %s, ", $1, $2}' "$record" | sed 's/, $//')"
