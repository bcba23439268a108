#!/usr/bin/env bash
# Bring Debian's busybox-static for arm64 into the cache, for the arm64 guest's initramfs
# (mkinitramfs.sh with RBALLOON_ARCH=aarch64): -> $RB_CACHE/arm64-userspace/busybox.
#
# The version is the root's own busybox-static (rballoon.lock), whatever binNMU suffix (+bN) the
# arm64 build carries: both guests then run the same busybox. The package is fetched, not
# installed: apt runs inside the root with a state of its own under the cache (lists for arm64
# only, the root's sources and keys), so the root's dpkg database, architectures and package lists
# stay as make test knows them. Idempotent: once the wanted version is there, nothing is fetched.
. "$(dirname "$0")/common.sh"

dir=$RB_CACHE/arm64-userspace
state=$dir/apt
mkdir -p "$state/lists/partial" "$state/cache/archives/partial" "$dir/deb"
exec 8> "$dir/.lock"
flock 8

in_root() { RB_CHDIR=$dir/deb TMPDIR=/var/tmp DEBIAN_FRONTEND=noninteractive "$RB_REPO/scripts/rballoon/in-root.sh" "$@"; }
# shellcheck disable=SC2016 # dpkg-query's format, not the shell's
have=$(in_root dpkg-query -W -f '${Version}' busybox-static 2>/dev/null) ||
	rb_die "the root has no busybox-static (rballoon.lock): run 'make root' first"
# The source version: the root's less its binNMU suffix.
want=${have%+b*}
if [ -x "$dir/busybox" ] && [ "$(cat "$dir/busybox.version" 2>/dev/null)" = "$want" ]; then
	exit 0
fi

# apt as if arm64 were the only architecture, its lists and downloads under $state; only the
# root's main sources.list (trixie and its updates), not backports. Run as root throughout: the
# _apt sandbox user may not write the cache.
apt_opts=(-q -o "Dir::State::Lists=$state/lists" -o "Dir::Cache=$state/cache"
	-o Dir::Etc::SourceParts=/nonexistent -o APT::Architecture=arm64 -o APT::Architectures::=arm64
	-o APT::Sandbox::User=root)
rb_log "fetching busybox-static $want for arm64"
in_root apt-get "${apt_opts[@]}" update >&2 ||
	rb_die "apt-get update for arm64 failed (is Debian's archive reachable?)"
# Versions served, newest first; the first of the root's source version.
ver=$(in_root apt-cache "${apt_opts[@]}" madison busybox-static |
	awk -F' [|] ' -v w="$want" '{gsub(/ /, "", $2)} $2 == w || index($2, w "+b") == 1 {print $2; exit}')
[ -n "$ver" ] || rb_die "trixie serves no busybox-static $want for arm64 (it serves: $(in_root apt-cache "${apt_opts[@]}" madison busybox-static | awk -F' [|] ' '{printf "%s ", $2}'))"
rm -f "$dir"/deb/*.deb
in_root apt-get "${apt_opts[@]}" download "busybox-static:arm64=$ver" >&2 ||
	rb_die "could not download busybox-static $ver for arm64"
rm -rf "$dir/x"
in_root dpkg-deb -x "$dir"/deb/busybox-static_*_arm64.deb "$dir/x"
# An aarch64 ELF: e_machine (bytes 18-19, little-endian) is 183.
[ "$(od -An -tu2 -j18 -N2 "$dir/x/usr/bin/busybox" | tr -d ' ')" = 183 ] ||
	rb_die "$dir/x/usr/bin/busybox is not an aarch64 program"
cp "$dir/x/usr/bin/busybox" "$dir/busybox.new"
mv "$dir/busybox.new" "$dir/busybox"
echo "$want" > "$dir/busybox.version"
rm -rf "$dir/x"
rb_log "busybox-static $ver (arm64): $dir/busybox"
