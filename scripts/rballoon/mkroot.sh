#!/usr/bin/env bash
# Create the Debian trixie toolchain root (with trixie-backports) that builds the kernel and runs QEMU.
#
# RUST=min (default) -> $RB_CACHE/root, Rust from trixie; RUST=latest -> $RB_CACHE/root-latest, Rust
# from trixie-backports. A root is rebuilt only when rballoon.lock or the scripts that make it change.
# Mirrors come from mmdebstrap's default; the backports entry is derived from whatever main entry
# mmdebstrap wrote, so no host name is written here.
. "$(dirname "$0")/common.sh"

install=$RB_REPO/scripts/rballoon/root-install.sh
stamp_of() { cat "$RB_LOCK" "$0" "$install" <(echo "$RB_RUST") | sha256sum | cut -d' ' -f1; }
versions() { # one line: what the builds run with
	awk '$1 ~ /^(rustc|bindgen|clang|qemu-system-x86|linux-source-7.3)$/ {printf "%s %s, ", $1, $2}' \
		"$RB_ROOT/.rballoon-versions" | sed 's/, $//'
}

want=$(stamp_of)
if [ -f "$RB_ROOT/.rballoon-stamp" ] && [ "$(cat "$RB_ROOT/.rballoon-stamp")" = "$want" ]; then
	rb_log "toolchain (RUST=$RB_RUST): $(versions)"
	exit 0
fi

command -v mmdebstrap >/dev/null || {
	rb_log "installing mmdebstrap and bubblewrap on the host"
	apt-get update -qq && apt-get install -y -qq mmdebstrap bubblewrap >/dev/null
}
command -v bwrap >/dev/null || apt-get install -y -qq bubblewrap >/dev/null

mkdir -p "$RB_CACHE"
tmp=$RB_ROOT.new
rm -rf "$tmp"
rb_log "creating the trixie root for RUST=$RB_RUST (first time, or rballoon.lock changed)"
# The customize hook checks every package of the lock against what the suites serve, installs them
# and records the versions; it fails naming what is missing or too old.
mmdebstrap --variant=apt \
	--setup-hook='sed -n "s/^\(deb .* \)trixie \(.*\)$/\1trixie-backports \2/p" "$1/etc/apt/sources.list" > "$1/etc/apt/sources.list.d/backports.list"' \
	--customize-hook="\"$install\" \"\$1\" \"$RB_LOCK\" \"$RB_RUST\"" \
	--customize-hook='chroot "$1" apt-get clean' \
	trixie "$tmp" || { rm -rf "$tmp"; rb_die "could not create the toolchain root (see above)"; }

echo "$want" > "$tmp/.rballoon-stamp"
rm -rf "$RB_ROOT"
mv "$tmp" "$RB_ROOT"
rb_log "toolchain root ready at $RB_ROOT; installed:"
column -t "$RB_ROOT/.rballoon-versions" | sed 's/^/    /' >&2
rb_log "toolchain (RUST=$RB_RUST): $(versions)"
