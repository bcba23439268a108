#!/usr/bin/env bash
# root-install.sh ROOT LOCK RUST: install rballoon.lock's packages into a fresh trixie root
# (mmdebstrap's customize hook; the root's apt lists are current).
#
# For each package: the suite it comes from (suite "rust" is trixie for RUST=min, trixie-backports
# for RUST=latest) must serve it at a version the lock's glob matches, and at its least version or
# newer. Otherwise say what that suite serves instead and fail, before installing anything. After the install, record every package's
# exact version in ROOT/.rballoon-versions.
set -euo pipefail
root=$1 lock=$2 rust=$3
in_root() { chroot "$root" "$@"; }

case $rust in
min) rust_suite=trixie ;;
latest) rust_suite=trixie-backports ;;
*) echo "root-install: RUST=$rust: min or latest" >&2; exit 1 ;;
esac

# Versions of PKG that SUITE serves, newest first ("apt-cache madison" rows: pkg | version | source).
# Versions carry madison's padding: trimmed, for the glob.
served() { in_root apt-cache madison "$1" 2>/dev/null | awk -F' [|] ' -v s=" $2/" 'index($3, s) {gsub(/ /, "", $2); print $2}'; }

# Whether version $1 is one the lock allows: matches glob $2, and is at least $3 (if given).
allowed() {
	# shellcheck disable=SC2053 # the glob is meant to match as a pattern
	[[ $1 == $2 ]] && { [ -z "$3" ] || in_root dpkg --compare-versions "$1" ge "$3"; }
}

bad=0
declare -A by_suite=()
declare -a entries=()
while read -r pkg glob suite least; do
	case "$pkg" in ''|'#'*) continue ;; esac
	[ "$suite" = rust ] && suite=$rust_suite
	entries+=("$pkg $glob $suite $least")
	have=$(served "$pkg" "$suite" | head -n1)
	if [ -z "$have" ]; then
		stem=$(sed 's/-\?[0-9][0-9.]*$//' <<< "$pkg")
		instead=$(in_root apt-cache pkgnames "$stem" 2>/dev/null | sort | while read -r p; do
			v=$(served "$p" "$suite" | head -n1); [ -n "$v" ] && printf '%s %s; ' "$p" "$v"; done || true)
		echo "rballoon.lock: $suite no longer serves $pkg; it serves instead: ${instead:-nothing named $stem*}" | sed "s/; $//" >&2
		bad=1
	elif ! allowed "$have" "$glob" "$least"; then
		echo "rballoon.lock: $suite serves $pkg $have, not one that can work ($glob${least:+, at least $least})" >&2
		bad=1
	else
		by_suite[$suite]+="$pkg "
	fi
done < "$lock"
[ "$bad" = 0 ] || { echo "rballoon.lock: nothing installed (see above)" >&2; exit 1; }

export DEBIAN_FRONTEND=noninteractive
# trixie first, then what comes from backports with backports as the target release.
# shellcheck disable=SC2086 # word splitting of the package lists is wanted
in_root apt-get install -y -q ${by_suite[trixie]:-}
[ -z "${by_suite[trixie-backports]:-}" ] ||
	in_root apt-get install -y -q -t trixie-backports ${by_suite[trixie-backports]}

# Record what is there now; fail if apt resolved a version the lock does not allow.
: > "$root/.rballoon-versions"
for e in "${entries[@]}"; do
	read -r pkg glob suite least <<< "$e"
	have=$(in_root dpkg-query -W -f '${Version}' "$pkg" 2>/dev/null || true)
	if [ -z "$have" ]; then
		echo "rballoon.lock: $pkg did not get installed" >&2
		bad=1
	elif ! allowed "$have" "$glob" "$least"; then
		echo "rballoon.lock: $pkg $have installed, not one that can work ($glob${least:+, at least $least})" >&2
		bad=1
	fi
	echo "$pkg ${have:-missing} $suite" >> "$root/.rballoon-versions"
done
exit "$bad"
