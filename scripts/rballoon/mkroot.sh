#!/usr/bin/env bash
# Create the Debian trixie toolchain root (with trixie-backports) that builds the kernel and runs QEMU.
#
# The root is rebuilt only when rballoon.lock or this script changes. Mirrors come from mmdebstrap's
# default; the backports entry is derived from whatever main entry mmdebstrap wrote, so no host name
# is written here.
. "$(dirname "$0")/common.sh"

stamp_of() { cat "$RB_LOCK" "$0" | sha256sum | cut -d' ' -f1; }

# Compare what is installed in the root with the lock. Prints every mismatch; fails if any.
check_versions() {
	local root=$1 bad=0 pkg glob suite have
	while read -r pkg glob suite; do
		case "$pkg" in ''|'#'*) continue ;; esac
		have=$(chroot "$root" dpkg-query -W -f '${Version}' "$pkg" 2>/dev/null || true)
		if [ -z "$have" ]; then
			echo "rballoon.lock: $pkg is not installed (wanted $glob from $suite)" >&2
			bad=1
		# shellcheck disable=SC2053 # $glob is a glob on purpose
		elif [[ $have != $glob ]]; then
			echo "rballoon.lock: $pkg is $have, the lock wants $glob from $suite" >&2
			bad=1
		fi
	done < "$RB_LOCK"
	return $bad
}

want=$(stamp_of)
if [ -f "$RB_ROOT/.rballoon-stamp" ] && [ "$(cat "$RB_ROOT/.rballoon-stamp")" = "$want" ]; then
	check_versions "$RB_ROOT" || rb_die "the toolchain root does not match rballoon.lock"
	exit 0
fi

command -v mmdebstrap >/dev/null || {
	rb_log "installing mmdebstrap and bubblewrap on the host"
	apt-get update -qq && apt-get install -y -qq mmdebstrap bubblewrap >/dev/null
}
command -v bwrap >/dev/null || apt-get install -y -qq bubblewrap >/dev/null

# Split the lock into what comes from trixie and what from trixie-backports.
main_pkgs=$(awk '!/^#/ && NF==3 && $3=="trixie" {printf "%s,", $1}' "$RB_LOCK")
bpo_pkgs=$(awk '!/^#/ && NF==3 && $3=="trixie-backports" {printf "%s ", $1}' "$RB_LOCK")

mkdir -p "$RB_CACHE"
tmp=$RB_CACHE/root.new
rm -rf "$tmp"
rb_log "creating the trixie root (first time, or rballoon.lock changed)"
mmdebstrap --variant=apt --include="${main_pkgs%,}" \
	--setup-hook='sed -n "s/^\(deb .* \)trixie \(.*\)$/\1trixie-backports \2/p" "$1/etc/apt/sources.list" > "$1/etc/apt/sources.list.d/backports.list"' \
	--customize-hook="chroot \"\$1\" apt-get install -y -q -t trixie-backports $bpo_pkgs" \
	--customize-hook='chroot "$1" apt-get clean' \
	trixie "$tmp"

grep -q trixie-backports "$tmp/etc/apt/sources.list.d/backports.list" ||
	rb_die "could not derive the trixie-backports entry from the root's sources.list"
check_versions "$tmp" || { rm -rf "$tmp"; rb_die "installed versions differ from rballoon.lock (see above)"; }
echo "$want" > "$tmp/.rballoon-stamp"
rm -rf "$RB_ROOT"
mv "$tmp" "$RB_ROOT"
rb_log "toolchain root ready at $RB_ROOT"
