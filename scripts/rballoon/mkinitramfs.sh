#!/usr/bin/env bash
# Build the guest initramfs: busybox, the init script, the guest-side test helpers (static C programs
# under tools/testing/rballoon/guest/) and the kernel's modules.
#
#   mkinitramfs.sh [guest|debug]  ->  $RB_OUT/<flavour>/initramfs.cpio
#
# The archive is written by the kernel's own usr/gen_init_cpio from a list, so /dev/console exists
# without mknod and the file is reproducible.
#
# RBALLOON_ARCH=aarch64 (scripts/rballoon/guest-arch.sh): for the arm64 guest in
# $RB_OUT/<flavour>-arm64/, with Debian's arm64 busybox (fetch-busybox-arm64.sh) and the helpers
# cross-compiled.
. "$(dirname "$0")/common.sh"
. "$(dirname "$0")/guest-arch.sh"

flavour=${1:-guest}
out=$(rb_guest_dir "$flavour")
guest=$RB_REPO/tools/testing/rballoon/guest
ls "$out"/modules-install/lib/modules/*/modules.dep >/dev/null 2>&1 ||
	rb_die "no modules in $out/modules-install: build the $flavour kernel first"

stage=$out/initramfs.d
rm -rf "$stage"
mkdir -p "$stage"/{bin,usr/bin,lib}
[ -x "$RB_BUSYBOX" ] || rb_die "no busybox for $RB_GUEST_ARCH at $RB_BUSYBOX (scripts/rballoon/fetch-busybox-arm64.sh)"
cp "$RB_BUSYBOX" "$stage/bin/busybox"
cp "$guest/init" "$stage/init"
cp -a "$out"/modules-install/lib/modules "$stage/lib/"

# Guest helpers: static, built with the root's clang (for the guest's architecture).
for src in "$guest"/*.c; do
	[ -e "$src" ] || continue
	"$RB_REPO/scripts/rballoon/in-root.sh" clang "${RB_CC_TARGET[@]}" -O2 -static -Wall -Werror -o "$stage/usr/bin/$(basename "$src" .c)" "$src"
done

list=$out/initramfs.list
{
	echo "dir /dev 0755 0 0"
	echo "nod /dev/console 0600 0 0 c 5 1"
	(cd "$stage" && find . -mindepth 1 | sort) | while read -r p; do
		p=${p#.}
		if [ -L "$stage$p" ]; then
			echo "slink $p $(readlink "$stage$p") 0777 0 0"
		elif [ -d "$stage$p" ]; then
			echo "dir $p 0755 0 0"
		else
			mode=0644; [ -x "$stage$p" ] && mode=0755
			echo "file $p $stage$p $mode 0 0"
		fi
	done
} > "$list"
"$RB_REPO/scripts/rballoon/in-root.sh" "$out/usr/gen_init_cpio" "$list" > "$out/initramfs.cpio.new"
mv "$out/initramfs.cpio.new" "$out/initramfs.cpio"
rb_log "initramfs: $out/initramfs.cpio ($(( $(stat -c %s "$out/initramfs.cpio") / 1024 )) KiB)"
